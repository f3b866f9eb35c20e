"""``emomix export``: the trained synthetic run as ONNX (checked on its own test utterances), the
text encoder as ONNX, the model card; what cannot be exported and bad folders fail clearly."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from emomix.cli.export import register
from emomix.errors import ConfigError, MissingDataError
from emomix.infer.card import model_card
from emomix.infer.export import OnnxModel, OnnxTextEncoder
from emomix.infer.predictor import Predictor
from emomix.infer.run_export import ParityError
from synthetic_features import fold_test_items

FOLD = "ses01"


# Torch on one thread for the whole module (the one_thread fixture in conftest).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cli():
    app = typer.Typer()
    register(app)

    @app.callback()
    def main() -> None:  # a group, so the command is called by name as in `emomix export`
        pass

    return app


@pytest.fixture(scope="module")
def exported(cli, trained_synthetic_run, tmp_path_factory):
    """`emomix export RUN --onnx --encoders --out DIR` on the trained run: (DIR, output, card)."""
    out = tmp_path_factory.mktemp("export") / "dual"
    result = CliRunner().invoke(cli, ["export", str(trained_synthetic_run), "--onnx", "--encoders", "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, result.output, json.loads((out / "model_card.json").read_text())


@pytest.fixture(scope="module")
def predictor(trained_synthetic_run):
    return Predictor.from_run(trained_synthetic_run, fold=FOLD, seed=0, asr=False)


@pytest.fixture(scope="module")
def test_items(trained_synthetic_run, synthetic_features):
    """The fold's first test utterances as predictor items, with the run's predictions for them."""
    return fold_test_items(trained_synthetic_run, synthetic_features, FOLD, 4)


def softmax(logits):
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_export_writes_the_graphs_and_the_card_and_reports_parity(exported):
    out, output, card = exported
    for name in (
        "model.onnx",
        "model.onnx_io_spec.json",
        "text_encoder.onnx",
        "text_encoder.onnx_io_spec.json",
        "text_encoder_tokenizer/tokenizer.json",
        "model_card.json",
        "MODEL_CARD.md",
        "normaliser-audio.json",
    ):
        assert (out / name).is_file(), name
    # the printed parity lines: two real batches of other sizes, then end to end
    diffs = [float(v) for v in re.findall(r"max \|Δ(?:logits|probs)\| ([0-9.e+-]+)", output)]
    assert len(diffs) == 4 and max(diffs) <= 1e-4
    assert re.search(r"B=4 audio_length=\d+ text_length=\d+", output) and re.search(r"B=1 audio_length=\d+", output)
    assert "parity on 5 test utterances of fold ses01" in output and "parity ok" in output
    parity = card["export"]["onnx"]["parity"]
    assert parity["ok"] and parity["max_abs_logits"] <= 1e-4 and parity["max_abs_probs"] <= 1e-4
    assert parity["end_to_end_utterances"] == 5 and parity["end_to_end_max_abs_probs"] <= 1e-4
    assert [b["batch_size"] for b in parity["batches"]] == [4, 1]
    spec = json.loads((out / "model.onnx_io_spec.json").read_text())
    assert spec["classes"] == card["classes"] and spec["model"] == "dual_routing"


def test_onnx_on_the_predictors_batch_gives_predicts_probabilities(exported, predictor, test_items):
    out = exported[0]
    items, predictions = test_items
    runner = OnnxModel(out / "model.onnx")
    classes = predictor.classes
    for index in (0, 3):
        item = items[index]
        batch, _ = predictor.model_batch([item])
        onnx_probs = softmax(runner.run(predictor.model_input(batch))["logits"])[0]
        from_wav = predictor.predict(**item)
        expected = np.array([from_wav["probabilities"][c] for c in classes])
        assert np.abs(onnx_probs - expected).max() <= 1e-4
        # and the run's own test prediction for that utterance
        written = predictions[[f"prob_{c}" for c in classes]].to_numpy()[index]
        assert np.abs(onnx_probs - written).max() <= 1e-4
        assert classes[int(np.argmax(onnx_probs))] == predictions["pred"].iloc[index]


def test_the_card_holds_classes_corpus_protocol_and_metrics(exported, trained_synthetic_run, predictor):
    out, _, card = exported
    run = json.loads((trained_synthetic_run / "run.json").read_text())
    report = json.loads((trained_synthetic_run / "report" / "metrics.json").read_text())["metrics"]
    assert (
        card["format"] == "emomix-model-card/1" and card["name"] == "dual_routing" and "Dual Routing" in card["paper"]
    )
    assert card["classes"] == run["classes"] and card["inputs"] == ["audio", "text"]
    assert card["corpus"] == "synthetic" and card["protocol"] == "loso" and card["fold_plan"] == run["fold_plan"]
    assert card["training"]["fold"] == FOLD and card["training"]["seed"] == 0 and card["training"]["epochs_run"] == 2
    assert card["features"]["text"]["layers"] == [3, 4, 5, 6] and card["speaker_normalisation"] == ["audio"]
    metrics = card["metrics"]
    assert metrics["status"] == "evaluated" and metrics["pooled"] == report["headline"]
    assert metrics["across_folds"]["ua"]["mean"] == pytest.approx(report["across_folds"]["ua"]["mean"])
    assert metrics["this_checkpoint"]["fold"] == FOLD
    assert card["emomix_version"] and card["created"].endswith("+00:00")
    markdown = (out / "MODEL_CARD.md").read_text()
    assert "angry, happy, neutral, sad" in markdown and "| UA |" in markdown and "text_encoder.onnx" in markdown
    # Predictor.info() exposes the same card (all but its creation time and the export block)
    info = predictor.info()
    for key, value in card.items():
        if key not in ("created", "export"):
            assert info[key] == value, key


def test_the_text_encoder_graph_matches_pytorch_on_real_transcripts(exported, predictor, test_items):
    out, _, card = exported
    entries = card["export"]["encoders"]
    assert entries["text"]["exported"] and entries["text"]["parity"]["max_abs"] <= 1e-4
    assert entries["text"]["outputs"] == ["states", "layer_3", "layer_4", "layer_5", "layer_6"]
    assert not entries["audio"]["exported"] and "C++" in entries["audio"]["reason"]
    graph = OnnxTextEncoder(out / "text_encoder.onnx")  # with the tokenizer saved beside it
    encoder = predictor.encoders["text"]
    transcripts = [item["text"] for item in test_items[0]]
    for texts in (transcripts[:1], [*transcripts, ""]):  # dynamic batch and sequence axes
        got = graph.run(texts)
        expected = encoder.encode(texts, output_hidden_states=True)
        mask = expected.mask.numpy()
        assert np.array_equal(got["mask"], mask)
        assert np.array_equal(got["special_tokens"], expected.special_tokens.numpy())
        assert np.abs(got["states"] - expected.states.numpy())[mask].max() <= 1e-4
        for layer in (3, 6):
            assert np.abs(got[f"layer_{layer}"] - expected.hidden_states[layer].numpy())[mask].max() <= 1e-4


def test_a_format_flag_is_required_and_card_only_writes_the_card(cli, trained_synthetic_run, tmp_path):
    runner = CliRunner()
    bare = runner.invoke(cli, ["export", str(trained_synthetic_run)])
    assert (
        isinstance(bare.exception, ConfigError)
        and "--onnx" in str(bare.exception)
        and "--card-only" in str(bare.exception)
    )
    encoders_alone = runner.invoke(cli, ["export", str(trained_synthetic_run), "--card-only", "--encoders"])
    assert isinstance(encoders_alone.exception, ConfigError) and "add --onnx" in str(encoders_alone.exception)
    result = runner.invoke(cli, ["export", str(trained_synthetic_run), "--card-only", "--out", str(tmp_path / "card")])
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "card" / "model_card.json").read_text())
    assert card["classes"] == model_card(trained_synthetic_run)["classes"] and "export" not in card
    assert not (tmp_path / "card" / "model.onnx").exists()
    # a run without its report: the card says so
    copy = tmp_path / "unevaluated"
    shutil.copytree(trained_synthetic_run, copy, ignore=shutil.ignore_patterns("report"))
    metrics = model_card(copy)["metrics"]
    assert metrics["status"] == "not evaluated" and "emomix evaluate" in metrics["reason"]


def test_a_bad_run_folder_is_a_clear_error(cli, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(cli, ["export", str(tmp_path / "absent"), "--onnx"])
    assert isinstance(missing.exception, MissingDataError) and "does not exist" in str(missing.exception)
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(cli, ["export", str(tmp_path / "empty"), "--onnx"])
    assert isinstance(empty.exception, MissingDataError) and "neither a run folder" in str(empty.exception)
    assert not (tmp_path / "empty" / "export").exists()


def test_a_parity_failure_fails_the_command_and_removes_the_graph(cli, trained_synthetic_run, tmp_path, monkeypatch):
    from emomix.infer import run_export

    real = run_export.check_parity

    def against_another_model(model, path, batches, atol=1e-4):
        changed = __import__("copy").deepcopy(model)
        with torch.no_grad():
            for parameter in changed.parameters():
                parameter.add_(0.05)
        return real(changed, path, batches, atol=atol)

    monkeypatch.setattr(run_export, "check_parity", against_another_model)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["export", str(trained_synthetic_run), "--onnx", "--out", str(out)])
    assert isinstance(result.exception, ParityError)
    assert "does not reproduce PyTorch on the run's test utterances" in str(result.exception)
    assert "parity FAILED" in result.output
    assert not (out / "model.onnx").exists() and not (out / "model_card.json").exists()


def test_a_complementary_checkpoint_exports_with_parity_on_the_runs_utterances(cli, trained_synthetic_run, tmp_path):
    """The Complementary late fusion (both MoE models and the token–frame graph) from a checkpoint:
    its graph must reproduce PyTorch and the predictor on the run's real test utterances."""
    from emomix.models import create_model
    from emomix.train.recipe import OptimiserConfig
    from emomix.train.task import EmotionTask, save_weights

    run = tmp_path / "complementary"
    run.mkdir()
    for name in ("config.yaml", "folds.json", "run.json", "normaliser-audio.json"):
        shutil.copy(trained_synthetic_run / name, run / name)
    card = json.loads((trained_synthetic_run / "folds" / FOLD / "seed-0" / "model.json").read_text())
    torch.manual_seed(0)
    config = {"hidden_dim": 16, "ca_heads": 2, "graph_heads": 2, "num_experts": 3, "max_frames": 32}
    model = create_model("complementary", config, card["input_dims"], len(card["classes"]))
    folder = run / "folds" / FOLD / "seed-0"
    folder.mkdir(parents=True)
    save_weights(EmotionTask(model, OptimiserConfig()).trainable_state(), folder / "model.safetensors")
    card.update(model="complementary", config=model.config.to_dict())
    (folder / "model.json").write_text(json.dumps(card))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["export", str(run), "--onnx", "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "parity ok" in result.output
    exported = json.loads((out / "model_card.json").read_text())
    parity = exported["export"]["onnx"]["parity"]
    assert parity["ok"] and parity["max_abs_logits"] <= 1e-4 and parity["max_abs_probs"] <= 1e-4
    assert parity["end_to_end_max_abs_probs"] <= 1e-4
    # the real batches are longer than max_frames: the graph pooled them as PyTorch does
    frames = [int(n) for n in re.findall(r"audio_length=(\d+)", result.output)]
    assert frames and max(frames) > 32, result.output
    spec = json.loads((out / "model.onnx_io_spec.json").read_text())
    assert "aux_ca_graph_approximate" in [o["name"] for o in spec["outputs"]]
