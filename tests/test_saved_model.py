"""The plain saved model (emomix.models.saved): checkpoints written before it existed load and give
the same logits; save/load round trips; the floors import one way (no trainer below inference)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from emomix.errors import ConfigError, MissingDataError
from emomix.models import create_model, model_info
from emomix.models.base import EmotionModel, ModelConfig, register_model
from emomix.models.inputs import Batch, DialogueBatch, modality_input, pad_sequences
from emomix.models.saved import TrainedModel, predict_rows, read_model_card

FIXTURES = Path(__file__).parent / "fixtures" / "saved_model_v1"
DIMS = ("audio", "text")


def fixture_batch(folder: Path, dialogue: bool) -> Batch | DialogueBatch:
    """The batch generate.py fed the old task, rebuilt from ``inputs.safetensors``."""
    stored = load_file(str(folder / "inputs.safetensors"))
    count = 1 + max(int(key.split(".")[0]) for key in stored)
    rows = [
        {
            m: {key.split(".")[2]: value.numpy() for key, value in stored.items() if key.startswith(f"{i}.{m}.")}
            for m in DIMS
        }
        for i in range(count)
    ]
    if dialogue:
        vectors = {m: [torch.as_tensor(r[m]["states"].mean(axis=0)) for r in rows] for m in DIMS}
        padded = {m: pad_sequences([torch.stack(vectors[m][:3]), torch.stack(vectors[m][3:])]) for m in DIMS}
        return DialogueBatch(inputs={m: padded[m][0] for m in DIMS}, mask=padded["audio"][1])
    return Batch(inputs={m: modality_input([r[m] for r in rows]) for m in DIMS})


@pytest.mark.parametrize("name", ["dual_routing", "complementary", "mister_e"])
def test_a_checkpoint_saved_by_the_old_task_gives_the_same_logits(name):
    folder = FIXTURES / name
    expected = load_file(str(folder / "expected.safetensors"))["logits"]
    loaded = TrainedModel.from_pretrained(folder)
    assert not loaded.training and loaded.classes == ["angry", "happy", "neutral", "sad"]
    assert loaded.metadata["model"] == name and "format" not in loaded.metadata
    with torch.no_grad():
        logits = loaded(fixture_batch(folder, loaded.model.batch_kind == "dialogue")).logits
    assert torch.allclose(logits, expected, atol=1e-6, rtol=0)
    if name == "dual_routing":  # the fixture's standardisation came back from the weights file
        assert torch.equal(loaded.standardise["audio"][1], torch.full((6,), 3.0))


def test_save_then_from_pretrained_round_trips(tmp_path):
    source = FIXTURES / "dual_routing"
    original = TrainedModel.from_pretrained(source)
    original.save(tmp_path / "copy")
    card = json.loads((tmp_path / "copy" / "model.json").read_text())
    assert card["format"] == "emomix.model/1" and card["classes"] == original.classes
    assert read_model_card(tmp_path / "copy")["model"] == "dual_routing"
    copy = TrainedModel.from_pretrained(tmp_path / "copy")
    batch = fixture_batch(source, dialogue=False)
    with torch.no_grad():
        assert torch.equal(copy(batch).logits, original(batch).logits)
    assert set(load_file(str(tmp_path / "copy" / "model.safetensors"))) == set(
        load_file(str(source / "model.safetensors"))
    )


def test_predict_rows_reads_a_plain_module_and_flattens_dialogues():
    loaded = TrainedModel.from_pretrained(FIXTURES / "mister_e")
    batch = fixture_batch(FIXTURES / "mister_e", dialogue=True)
    batch.utt_ids = [["a", "b", "c"], ["d", "e"]]
    ids, probs, labels, aux = predict_rows(loaded, [batch])
    assert ids == ["a", "b", "c", "d", "e"] and probs.shape == (5, 4) and labels.tolist() == [-100] * 5
    assert aux["gate_weights"].shape == (5, 3)


def test_broken_checkpoint_folders_say_what_is_wrong(tmp_path):
    with pytest.raises(MissingDataError, match="model.json does not exist"):
        TrainedModel.from_pretrained(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"format": "something/2"}))
    with pytest.raises(ConfigError, match="not an emomix model card"):
        TrainedModel.from_pretrained(tmp_path)
    card = json.loads((FIXTURES / "dual_routing" / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps(card))
    with pytest.raises(MissingDataError, match="no model.safetensors"):
        TrainedModel.from_pretrained(tmp_path)


def test_late_fusion_is_registry_metadata():
    assert model_info("complementary").late_fusion_of == ("complementary_ca", "complementary_spl")
    assert model_info("dual_routing").late_fusion_of == ()

    class Plain(EmotionModel):
        config_class = ModelConfig

    with pytest.raises(ValueError, match="no from_submodels"):
        register_model("h1_test_not_a_fusion", late_fusion_of=("a", "b"))(Plain)
    assert create_model("complementary", {"hidden_dim": 8, "ca_heads": 2, "graph_heads": 2}, {"audio": 4, "text": 4}, 3)


def test_the_floors_import_one_way():
    """Inference and serving load without the trainer; the model card never imports the predictor."""
    code = (
        "import sys\n"
        "import emomix.infer.card\n"
        "assert 'emomix.infer.predictor' not in sys.modules, 'card imports the predictor'\n"
        "import emomix.models, emomix.models.saved, emomix.models.collate, emomix.models.losses\n"
        "import emomix.infer.predictor, emomix.infer.checkpoint, emomix.serve.app\n"
        "loaded = sorted(m for m in sys.modules if m == 'emomix.train' or m.startswith('emomix.train.'))\n"
        "assert not loaded, loaded\n"
        "assert 'lightning' not in sys.modules, 'inference imports Lightning'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
