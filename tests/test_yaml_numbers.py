"""Numbers written with an exponent and no dot (``5e-5``) are numbers everywhere a user types YAML.

PyYAML (YAML 1.1) reads ``5e-5`` as the string ``"5e-5"``; before emomix.yamlio a learning rate
given that way in a recipe or through ``--set`` reached torch's scheduler as text and the run died
with ``can't multiply sequence by non-int of type 'float'`` after the features were built.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emomix.cli._common import parse_overrides
from emomix.data.readers._common import reader_options
from emomix.errors import ConfigError
from emomix.features import feature_block_from_text
from emomix.train.recipe import load_recipe, parse_override
from emomix.yamlio import load_yaml, load_yaml_value

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "synthetic" / "baselines.yaml"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5e-5", 5e-5), ("1E3", 1000.0), ("-2e4", -2e4), ("+3e-1", 0.3), ("1.0e-5", 1e-5), ("2.5", 2.5)],
)
def test_exponent_numbers_are_floats(text, expected):
    value = load_yaml(f"x: {text}")["x"]
    assert isinstance(value, float) and value == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "expected"), [("3", 3), ("'5e-5'", "5e-5"), ("e5", "e5"), ("1e", "1e"), ("abc", "abc")]
)
def test_everything_else_reads_as_before(text, expected):
    assert load_yaml(f"x: {text}")["x"] == expected


def test_command_line_values_share_the_reader():
    assert parse_override("optimiser.encoder_lr=5e-5") == ("optimiser.encoder_lr", 5e-5)
    assert parse_overrides(["training.epochs=3", "optimiser.lr=1e-3"]) == {"training.epochs": 3, "optimiser.lr": 1e-3}
    assert reader_options(["min_duration=5e-1"]) == {"min_duration": 0.5}
    assert load_yaml_value("[a, b") == "[a, b"  # not YAML: kept as text


def test_a_recipe_and_its_overrides_give_the_optimiser_floats(tmp_path):
    text = RECIPE.read_text().replace("optimiser:", "optimiser:\n  weight_decay: 1e-2", 1)
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    recipe = load_recipe(path, dict([parse_override("optimiser.encoder_lr=5e-5"), parse_override("optimiser.lr=2e-3")]))
    optimiser = recipe.optimiser
    assert (optimiser.lr, optimiser.encoder_lr, optimiser.weight_decay) == (2e-3, 5e-5, 1e-2)
    assert all(isinstance(v, float) for v in (optimiser.lr, optimiser.encoder_lr, optimiser.weight_decay))
    # what failed: a LambdaLR over a parameter group built from these values
    group = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=optimiser.encoder_lr)
    torch.optim.lr_scheduler.LambdaLR(group, lambda step: 0.5)
    assert group.param_groups[0]["lr"] == pytest.approx(2.5e-5)


def test_a_quoted_number_is_coerced_and_text_is_a_clear_error():
    recipe = load_recipe(RECIPE, {"optimiser.lr": "1e-3"})
    assert recipe.optimiser.lr == 1e-3 and isinstance(recipe.optimiser.lr, float)
    with pytest.raises(ConfigError, match=r"optimiser\.encoder_lr must be a number, got 'fast'"):
        load_recipe(RECIPE, {"optimiser.encoder_lr": "fast"})


def test_feature_spec_files_read_exponents(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("encoder: mfcc\npreprocess: {min_speech_s: 5e-1}\n")
    assert feature_block_from_text(str(spec))["preprocess"]["min_speech_s"] == 0.5
