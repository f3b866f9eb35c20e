"""The model registry and the config checks every model's validate() shares."""

import pytest

from emomix.errors import ConfigError
from emomix.models import create_model, list_models


@pytest.mark.parametrize(
    "name,values,message",
    [
        ("dual_routing", {"dropout": 1.5}, r"DualRoutingConfig.dropout must be in \[0, 1\); got 1.5"),
        ("dual_routing", {"routing": "both"}, "DualRoutingConfig.routing must be one of routed, local, global, concat"),
        ("mpaf_net", {"pair_dim": 0}, "MPAFConfig.pair_dim must be at least 1; got 0"),
        ("complementary_ca", {"gate_noise_std": -1}, "ComplementaryConfig.gate_noise_std must be non-negative"),
        ("mister_e", {"lambda_kl": -0.5}, "MisterEConfig.lambda_kl must be non-negative"),
        ("dual_routing", {"dropot": 0.1}, "unknown key.*'dropot' \\(did you mean 'dropout'\\?\\)"),
    ],
)
def test_config_errors_name_the_field_and_value(name, values, message):
    with pytest.raises(ConfigError, match=message):
        create_model(name, values, {"audio": 8, "text": 8}, 4)


def test_optional_widths_accept_none_but_not_zero():
    create_model("dual_routing", {"model_dim": None}, {"audio": 8, "text": 8}, 4)
    with pytest.raises(ConfigError, match="model_dim must be at least 1; got 0"):
        create_model("dual_routing", {"model_dim": 0}, {"audio": 8, "text": 8}, 4)


def test_unknown_model_and_missing_modality_are_clear():
    assert "dual_routing" in list_models()
    with pytest.raises(ConfigError, match="did you mean dual_routing"):
        create_model("dual_routng", {}, {"audio": 8, "text": 8}, 4)
    with pytest.raises(ConfigError, match="text missing"):
        create_model("dual_routing", {}, {"audio": 8}, 4)


def test_class_weights_are_checked_once_for_every_model():
    model = create_model("early_fusion", {}, {"audio": 8, "text": 8}, 4)
    model.set_class_weights([1.0, 2.0, 1.0, 0.5])
    assert model.class_weights.tolist() == [1.0, 2.0, 1.0, 0.5]
    with pytest.raises(ConfigError, match="class weights need 4 values"):
        model.set_class_weights([1.0, 2.0])
