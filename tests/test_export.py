"""ONNX export: parity with PyTorch on other shapes than the example, the I/O spec, clear errors."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from emomix.errors import ConfigError, MissingDataError
from emomix.infer.export import (
    OnnxModel,
    check_all,
    check_parity,
    example_batch_for,
    export_onnx,
    format_check_table,
    load_spec,
    random_batch_like,
    spec_path_for,
)
from emomix.models import create_model, list_models
from emomix.models.base import EmotionModel, ModelConfig
from emomix.models.inputs import Batch, DialogueBatch, ModelOutput

DIMS = {"audio": 12, "text": 16}
CLASSES = ["angry", "happy", "neutral", "sad"]
EXPORTABLE = ["dual_routing", "mpaf_net", "early_fusion", "mister_e", "tfn"]


# Torch on one thread for the whole module (the one_thread fixture in conftest).
pytestmark = pytest.mark.usefixtures("one_thread")


def build(name: str, seed: int = 0, **config):
    torch.manual_seed(seed)
    return create_model(name, config, {m: DIMS[m] for m in list_models()[name].modalities}, len(CLASSES))


def other_batches(example):
    """Two batches whose batch sizes and lengths both differ from the example's."""
    if isinstance(example, DialogueBatch):
        return [random_batch_like(example, 5, 11, seed=21), random_batch_like(example, 1, 2, seed=22)]
    longer = {m: int(x.states.shape[1]) * 3 for m, x in example.inputs.items()}
    shorter = {m: 4 for m in example.inputs}
    return [random_batch_like(example, 6, longer, seed=21), random_batch_like(example, 1, shorter, seed=22)]


@pytest.mark.parametrize("name", EXPORTABLE)
def test_exported_model_matches_pytorch_on_other_shapes(name, tmp_path):
    model = build(name)
    example = example_batch_for(name, DIMS)
    result = export_onnx(model, example, tmp_path / f"{name}.onnx", classes=CLASSES, name=name)
    assert result.path.exists() and result.spec_path.exists()
    assert result.exporter == "torchscript"
    report = check_parity(model, result.path, other_batches(example), atol=1e-4)
    assert report.ok, report.summary()
    assert report.max_abs_logits <= 1e-4 and report.max_abs_probs <= 1e-4
    assert [b.batch_size for b in report.batches] == ([5, 1] if name == "mister_e" else [6, 1])
    assert all(b.argmax_agreement == 1.0 for b in report.batches)
    assert report.max_abs_aux <= 1e-4


def test_spec_names_inputs_in_order_with_symbolic_axes(tmp_path):
    model = build("dual_routing")
    example = example_batch_for("dual_routing", DIMS)
    result = export_onnx(model, example, tmp_path / "dr.onnx", classes=CLASSES)
    spec = json.loads(spec_path_for(tmp_path / "dr.onnx").read_text())
    assert spec_path_for(tmp_path / "dr.onnx").name == "dr.onnx_io_spec.json"
    assert [i["name"] for i in spec["inputs"]] == [
        "audio_states",
        "audio_mask",
        "audio_speech_mask",
        "text_states",
        "text_mask",
        "text_special_tokens",
        "text_layer_states",
    ]
    by_name = {i["name"]: i for i in spec["inputs"]}
    assert by_name["audio_states"]["shape"] == ["batch", "audio_length", 12]
    assert by_name["audio_mask"] == {
        "name": "audio_mask",
        "dtype": "bool",
        "shape": ["batch", "audio_length"],
        "modality": "audio",
        "field": "mask",
    }
    assert by_name["text_layer_states"]["shape"] == ["batch", 4, "text_length", 16]
    outputs = {o["name"]: o for o in spec["outputs"]}
    assert spec["outputs"][0]["name"] == "logits" and outputs["logits"]["shape"] == ["batch", 4]
    assert outputs["aux_route_audio"]["shape"] == ["batch", 2]
    assert outputs["aux_vad_fallback"]["dtype"] == "bool"
    assert spec["classes"] == CLASSES and spec["batch_kind"] == "utterance" and spec["mask_dtype"] == "bool"
    assert spec["frame_rates"] == {"audio": 50.0, "text": None}
    assert [o.name for o in result.outputs] == [o["name"] for o in spec["outputs"]]


def test_onnx_outputs_keep_their_meaning(tmp_path):
    model = build("dual_routing")
    example = example_batch_for("dual_routing", DIMS)
    export_onnx(model, example, tmp_path / "dr.onnx")
    batch = random_batch_like(example, 4, {"audio": 30, "text": 5}, seed=3)
    batch.inputs["audio"].speech_mask[2] = False  # the VAD kept nothing: the model falls back to all frames
    out = OnnxModel(tmp_path / "dr.onnx").run(batch)
    np.testing.assert_allclose(out["aux_route_audio"].sum(axis=1), 1.0, atol=1e-6)
    assert out["aux_vad_fallback"].tolist() == [False, False, True, False]
    with torch.no_grad():
        expected = model.eval()(batch)
    np.testing.assert_allclose(out["logits"], expected.logits.numpy(), atol=1e-4)


def test_inputs_the_graph_does_not_read_are_listed_and_not_fed(tmp_path):
    model = build("early_fusion")
    example = example_batch_for("early_fusion", DIMS)
    result = export_onnx(model, example, tmp_path / "ef.onnx")
    assert set(result.ignored_inputs) == {"audio_speech_mask", "text_special_tokens", "text_layer_states"}
    assert [s.name for s in result.inputs] == ["audio_states", "audio_mask", "text_states", "text_mask"]
    # a batch without the ignored extras runs as well
    batch = random_batch_like(example, 2, 5, seed=1)
    for item in batch.inputs.values():
        item.speech_mask = item.special_tokens = item.layer_states = None
    assert OnnxModel(tmp_path / "ef.onnx").run(batch)["logits"].shape == (2, 4)


class _AudioModel(EmotionModel):
    """Test models that do not export: audio states → a linear layer → mean over frames."""

    config_class: ClassVar[type[ModelConfig]] = ModelConfig

    def __init__(self):
        super().__init__(ModelConfig(modalities=("audio",)), {"audio": DIMS["audio"]}, len(CLASSES))
        self.linear = nn.Linear(DIMS["audio"], len(CLASSES))

    def scores(self, batch: Batch) -> torch.Tensor:
        audio = batch.inputs["audio"]
        return self.linear(audio.states).masked_fill(~audio.mask[..., None], 0.0)


class _SpectrumModel(_AudioModel):
    """Uses an operator the ONNX exporter has no symbolic for (``aten::fft_fft``)."""

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=torch.fft.fft(self.scores(batch), dim=1).abs().mean(1))


class _FrozenBranchModel(_AudioModel):
    """Branches in Python on the longest row: a trace keeps the example's branch."""

    def forward(self, batch: Batch) -> ModelOutput:
        scores = self.scores(batch)
        if int(batch.inputs["audio"].mask.sum(1).max()) > 50:
            scores = scores * 2.0
        return ModelOutput(logits=scores.sum(1))


def test_a_model_that_cannot_export_names_itself_and_the_operator(tmp_path):
    with pytest.raises(ConfigError) as error:
        export_onnx(_SpectrumModel(), example_batch_for("speech_cnn", DIMS), tmp_path / "x.onnx", name="spectrum")
    message = str(error.value)
    assert "model 'spectrum' cannot be exported to ONNX" in message
    assert "unsupported operator aten::fft_fft" in message and "serve the PyTorch model instead" in message
    assert list(tmp_path.iterdir()) == []  # no half-written model or spec


def test_a_graph_specialised_to_the_example_is_refused(tmp_path):
    # the branch on the longest row is a Python value: frozen by the tracer, wrong at 300 frames
    with pytest.raises(
        ConfigError,
        match=r"does not reproduce PyTorch.*audio_length=300.*froze Python values at .*test_export.py:\d+",
    ):
        export_onnx(_FrozenBranchModel(), example_batch_for("speech_cnn", DIMS), tmp_path / "frozen.onnx")


def test_a_failed_export_keeps_an_earlier_file(tmp_path):
    path = tmp_path / "model.onnx"
    export_onnx(build("tfn"), example_batch_for("tfn", DIMS), path)
    before = path.read_bytes()
    with pytest.raises(ConfigError):
        export_onnx(_FrozenBranchModel(), example_batch_for("speech_cnn", DIMS), path)
    assert path.read_bytes() == before and load_spec(path)["model"] == "tfn"


# The Complementary family with limits small enough that the parity batches are cut (tokens) and
# pooled (frames) and that some rows of a batch are pooled while others are not.
SMALL_COMPLEMENTARY = {
    "hidden_dim": 16,
    "ca_heads": 2,
    "graph_heads": 2,
    "num_experts": 3,
    "max_frames": 16,
    "max_tokens": 8,
}
COMPLEMENTARY_CASES = [
    ("complementary", {}),
    ("complementary_ca", {}),
    ("complementary_spl", {}),
    ("complementary_spl_audio", {}),
    ("complementary_spl_text", {}),
    ("graph_mlp", {}),
    ("complementary", {"graph": "none"}),  # configs/synthetic/complementary_no_graph.yaml
    ("complementary", {"top_k": 1}),  # configs/synthetic/complementary_top1.yaml
    ("complementary_ca", {"graph": "spread", "ca_layers": 2}),
]


@pytest.mark.parametrize(("name", "overrides"), COMPLEMENTARY_CASES)
def test_the_complementary_family_exports_with_dynamic_batch_tokens_and_frames(name, overrides, tmp_path):
    config = {**SMALL_COMPLEMENTARY, **overrides}
    if name == "graph_mlp":
        config = {k: v for k, v in config.items() if k not in ("ca_heads", "num_experts")}
    model = build(name, **config)
    example = example_batch_for(name, DIMS)  # 3 rows, 20 frames, 9 tokens
    result = export_onnx(model, example, tmp_path / f"{name}.onnx", classes=CLASSES, name=name)
    assert result.exporter == "torchscript" and result.verified_max_abs_diff <= 1e-4
    frozen = load_spec(result.path)["frozen_by_tracer"]
    assert all(
        line.startswith(("emomix/models/blocks/pooling.py", "emomix/models/blocks/routing.py")) for line in frozen
    ), frozen
    lengths = {m: int(x.states.shape[1]) for m, x in example.inputs.items()}
    batches = [
        random_batch_like(example, 7, {m: 5 * n for m, n in lengths.items()}, seed=31),  # 100 frames, 45 tokens
        random_batch_like(example, 2, {m: n + 3 for m, n in lengths.items()}, seed=32),
        random_batch_like(example, 1, 3, seed=33),
    ]
    if "audio" in example.inputs:  # rows on both sides of max_frames (16) in one batch
        audio = batches[0].inputs["audio"]
        audio.mask[:3] &= torch.arange(audio.mask.shape[1]) < torch.tensor([[5], [12], [16]])
        audio.speech_mask &= audio.mask
        frames = audio.mask.sum(1)
        assert bool((frames > 16).any()) and frames[:3].tolist() == [5, 12, 16], frames.tolist()
    report = check_parity(model, result.path, batches, atol=1e-4)
    assert report.ok, report.summary()
    assert [b.batch_size for b in report.batches] == [7, 2, 1]
    assert report.max_abs_aux <= 1e-4 and all(b.argmax_agreement == 1.0 for b in report.batches)
    outputs = OnnxModel(result.path).run(batches[0])
    approximate = [k for k in outputs if k.endswith("graph_approximate")]
    assert len(approximate) == (
        0 if overrides.get("graph") == "none" or name.endswith(("_audio", "_text")) else 1 + (name == "complementary")
    )
    for key in approximate:  # no edges in an exported graph: the uniform spread, flagged
        assert outputs[key].tolist() == [1.0] * 7


def test_a_model_that_needs_real_edges_cannot_be_exported_without_them(tmp_path):
    model = build("complementary_spl", **{**SMALL_COMPLEMENTARY, "graph": "edges"})
    with pytest.raises(MissingDataError, match="graph='edges'"):
        export_onnx(model, example_batch_for("complementary_spl", DIMS), tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_parity_check_sees_a_different_model(tmp_path):
    example = example_batch_for("tfn", DIMS)
    export_onnx(build("tfn", seed=0), example, tmp_path / "tfn.onnx")
    report = check_parity(build("tfn", seed=1), tmp_path / "tfn.onnx", other_batches(example))
    assert not report.ok and report.max_abs_logits > 1e-3
    assert "MISMATCH" in report.summary()


def test_batches_that_do_not_fit_the_graph_are_refused(tmp_path):
    example = example_batch_for("tfn", DIMS)
    export_onnx(build("tfn"), example, tmp_path / "tfn.onnx")
    runner = OnnxModel(tmp_path / "tfn.onnx")
    text_only = Batch(inputs={"text": example.inputs["text"]})
    with pytest.raises(ConfigError, match="takes input 'audio_states' but the batch has no audio states"):
        runner.run(text_only)
    wide = random_batch_like(example, 2, seed=4)
    wide.inputs["audio"].states = torch.zeros(2, 20, 13)
    with pytest.raises(
        ConfigError, match="'audio_states' has size 13 on axis 2 but the exported model was built for 12"
    ):
        runner.run(wide)
    dialogue = example_batch_for("mister_e", DIMS)
    with pytest.raises(ConfigError, match="takes utterance batches, got a dialogue batch"):
        runner.run(dialogue)


def test_example_errors_are_clear(tmp_path):
    model = build("tfn")
    with pytest.raises(ConfigError, match="takes utterance batches but the example is a dialogue batch"):
        export_onnx(model, example_batch_for("mister_e", DIMS), tmp_path / "x.onnx")
    example = example_batch_for("tfn", DIMS)
    example.edges = [torch.zeros(2, 0, dtype=torch.long)] * example.batch_size
    with pytest.raises(ConfigError, match="no token–frame edges"):
        export_onnx(model, example, tmp_path / "x.onnx")
    with pytest.raises(ConfigError, match="4 classes but 2 class names"):
        export_onnx(model, example_batch_for("tfn", DIMS), tmp_path / "x.onnx", classes=["a", "b"])
    with pytest.raises(ConfigError, match="needs the I/O spec"):
        load_spec(tmp_path / "missing.onnx")


def test_export_leaves_the_callers_model_alone(tmp_path):
    model = build("dual_routing").train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, example_batch_for("dual_routing", DIMS), tmp_path / "dr.onnx")
    assert model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    # the exporter's temporary swaps of PyTorch modules are undone
    assert torch.nn.MultiheadAttention.forward.__module__ == "torch.nn.modules.activation"
    assert torch.nn.LSTM.forward.__module__ == "torch.nn.modules.rnn"


@pytest.mark.slow
def test_every_registered_model_exports():
    rows = check_all()
    assert {r.model for r in rows} == set(list_models())
    table = format_check_table(rows)
    assert all(r.exports for r in rows), table
    for row in rows:
        assert row.max_abs_logits <= 1e-4 and row.max_abs_probs <= 1e-4, row
