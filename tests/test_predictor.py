"""Predictor: a trained run on files, arrays and bytes gives the run's own test predictions;
batches with failing items, missing transcripts, dialogue models, checkpoint choice, and
``emomix predict`` on a folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import typer
from typer.testing import CliRunner

from emomix.cache.extract import _records
from emomix.data.schema import make_table
from emomix.errors import AudioError, ConfigError, EmomixError, MissingDataError
from emomix.infer.asr import StaticTranscriber
from emomix.infer.checkpoint import checkpoint_score, choose_checkpoint
from emomix.infer.predictor import AUDIO_ONLY_NOTE, Predictor, audio_only_prediction, inference_table
from synthetic_features import fold_test_items

FOLD = "ses01"


# Torch on one thread for the whole module (the one_thread fixture in conftest).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def predictor(trained_synthetic_run):
    return Predictor.from_run(trained_synthetic_run, fold=FOLD, seed=0, asr=False)


@pytest.fixture(scope="module")
def test_part(trained_synthetic_run, synthetic_features):
    """The fold's first test utterances as predictor items, with the run's predictions for them."""
    return fold_test_items(trained_synthetic_run, synthetic_features, FOLD, 10)


def probs(result, classes):
    return np.array([result["probabilities"][c] for c in classes])


def test_predict_equals_the_runs_test_predictions(predictor, test_part):
    items, predictions = test_part
    classes = predictor.classes
    expected = predictions[[f"prob_{c}" for c in classes]].to_numpy()
    for index in range(3):  # one at a time, as the brief's API call
        result = predictor.predict(**items[index])
        assert np.abs(probs(result, classes) - expected[index]).max() < 1e-5
        assert result["label"] == predictions["pred"].iloc[index]
    batch = predictor.predict_many(items, batch_size=4)
    got = np.stack([probs(r, classes) for r in batch])
    assert np.abs(got - expected).max() < 1e-5
    # the routing weights are the ones the run wrote
    routes = np.array([r["aux"]["route_audio"] for r in batch])
    assert np.abs(routes - predictions[["aux_route_audio_0", "aux_route_audio_1"]].to_numpy()).max() < 1e-5
    first = batch[0]
    assert first["modalities"] == ["audio", "text"] and first["transcript_source"] == "given"
    assert first["transcript"] == items[0]["text"] and first["duration_s"] > 0.5
    json.dumps(batch)  # plain JSON


def test_a_path_an_array_and_bytes_give_the_same_prediction(predictor, test_part):
    item = test_part[0][0]
    from_path = predictor.predict(**item)
    samples, rate = sf.read(item["audio"], dtype="float32")
    as_int16, _ = sf.read(item["audio"], dtype="int16")
    stereo = np.stack([samples, samples])  # channels × samples
    with open(item["audio"], "rb") as handle:
        data = handle.read()
    others = [
        predictor.predict(audio=samples, sample_rate=rate, text=item["text"], speaker=item["speaker"]),
        predictor.predict(audio=as_int16, sample_rate=rate, text=item["text"], speaker=item["speaker"]),
        predictor.predict(audio=stereo, sample_rate=rate, text=item["text"], speaker=item["speaker"]),
        predictor.predict(audio=data, text=item["text"], speaker=item["speaker"]),
    ]
    for other in others:
        assert np.abs(probs(other, predictor.classes) - probs(from_path, predictor.classes)).max() < 1e-6
        assert other["duration_s"] == pytest.approx(from_path["duration_s"], abs=1e-3)


def test_info_is_the_model_card(predictor, trained_synthetic_run):
    info = predictor.info()
    assert (
        info["name"] == "dual_routing" and info["classes"] == predictor.classes and info["inputs"] == ["audio", "text"]
    )
    assert info["features"]["audio"]["encoder"] == "opensmile:eGeMAPSv02" and info["features"]["text"]["layers"] == [
        3,
        4,
        5,
        6,
    ]
    assert info["training"]["fold"] == FOLD and info["training"]["seed"] == 0 and info["training"]["epochs_run"] == 2
    assert info["corpus"] == "synthetic" and info["protocol"] == "loso"
    headline = json.loads((trained_synthetic_run / "report" / "metrics.json").read_text())["metrics"]["headline"]
    assert info["metrics"]["headline"] == headline
    assert info["speaker_normalisation"] == ["audio"] and info["without_transcript"].startswith("audio-only")
    json.dumps(info)


def test_predict_many_reports_failing_items_in_their_slots(predictor, test_part, tmp_path):
    good = test_part[0][1]
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wave file")
    results = predictor.predict_many(
        [
            {"audio": b"these bytes are no audio", "text": "hello"},
            good,
            {"audio": str(broken), "text": "hello"},
            {"audio": str(tmp_path / "absent.wav"), "text": "hello"},
            {"audio": np.zeros(16000, dtype=np.float32), "sample_rate": 16000, "text": "hello"},
            {"audio": good["audio"], "text": "   "},
            {"audio": good["audio"], "txt": "typo"},
        ]
    )
    kinds = [r.get("error_type") for r in results]
    assert kinds == ["AudioError", None, "AudioError", "MissingDataError", "AudioError", "ConfigError", "ConfigError"]
    assert "not a readable audio file" in results[0]["error"] and results[0]["input"]["audio"].startswith("<")
    assert str(broken) in results[2]["error"] and results[2]["input"]["audio"] == str(broken)
    assert "silent" in results[4]["error"] and "empty" in results[5]["error"] and "'txt'" in results[6]["error"]
    alone = predictor.predict(**good)
    assert np.abs(probs(results[1], predictor.classes) - probs(alone, predictor.classes)).max() < 1e-6
    json.dumps(results)


def test_predict_raises_clear_errors(predictor, test_part):
    good = test_part[0][0]
    with pytest.raises(AudioError, match="not a readable audio file"):
        predictor.predict(audio=b"\x00\x01corrupt", text="hello")
    with pytest.raises(AudioError, match="silent"):
        predictor.predict(audio=np.zeros(8000), sample_rate=8000, text="hello")
    with pytest.raises(ConfigError, match="transcript is empty"):
        predictor.predict(audio=good["audio"], text="")
    with pytest.raises(ConfigError, match="sample_rate"):
        predictor.predict(audio=np.ones(100, dtype=np.float32), text="hello")
    with pytest.raises(ConfigError, match="reads audio"):
        predictor.predict(text="hello")


def test_without_transcript_the_model_runs_audio_only_and_says_so(predictor, trained_synthetic_run, test_part):
    item = dict(test_part[0][0])
    text = item.pop("text")
    audio_only = predictor.predict(**item)
    assert AUDIO_ONLY_NOTE in audio_only["notes"] and audio_only["modalities"] == ["audio"]
    assert audio_only["transcript"] is None and audio_only["transcript_source"] is None
    assert set(audio_only["aux"]) == {"route_audio", "vad_fallback"}
    assert sum(audio_only["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    # a recogniser that hears nothing falls back the same way; one that hears words is used as text
    silent_asr = Predictor.from_run(trained_synthetic_run, fold=FOLD, seed=0, asr=StaticTranscriber(""))
    fallback = silent_asr.predict(**item)
    assert probs(fallback, predictor.classes) == pytest.approx(probs(audio_only, predictor.classes), abs=1e-7)
    assert any("found no words" in note for note in fallback["notes"])
    silent_asr._asr = StaticTranscriber(text, backend="fake")
    heard = silent_asr.predict(**item)
    assert (
        heard["transcript"] == text
        and heard["transcript_source"] == "asr:fake"
        and heard["modalities"] == ["audio", "text"]
    )
    given = predictor.predict(**test_part[0][0])
    assert probs(heard, predictor.classes) == pytest.approx(probs(given, predictor.classes), abs=1e-7)


def test_audio_only_prediction_mixes_the_audio_experts_by_their_route():
    local, global_ = np.array([2.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])
    aux = {
        "expert_logits_audio_local": local,
        "expert_logits_audio_global": global_,
        "route_audio": np.array([0.25, 0.75]),
        "route_text": np.array([0.5, 0.5]),
        "vad_fallback": np.array(0.0),
    }
    p, kept = audio_only_prediction("dual_routing", aux, None)
    soft = lambda z: np.exp(z) / np.exp(z).sum()  # noqa: E731
    assert p == pytest.approx(0.25 * soft(local) + 0.75 * soft(global_))
    assert "route_text" not in kept and "route_audio" in kept
    p, kept = audio_only_prediction(
        "mister_e", {"expert_logits_speech": local, "gate_weights": np.array([0.2, 0.3, 0.5])}, None
    )
    assert p == pytest.approx(soft(local)) and kept["gate_weights"].tolist() == [1.0, 0.0, 0.0]


def test_a_checkpoint_folder_loads_like_its_run(predictor, trained_synthetic_run, test_part):
    folder = trained_synthetic_run / "folds" / FOLD / "seed-0"
    direct = Predictor.from_run(folder, asr=False)
    assert direct.run_dir == trained_synthetic_run.resolve() and direct.metrics is not None
    item = test_part[0][0]
    assert probs(direct.predict(**item), predictor.classes) == pytest.approx(
        probs(predictor.predict(**item), predictor.classes)
    )
    with pytest.raises(ConfigError, match="available: ses01/seed-0"):
        Predictor.from_run(trained_synthetic_run, fold="ses09")
    with pytest.raises(MissingDataError, match="neither a run folder"):
        Predictor.from_run(trained_synthetic_run / "report")


def _fake_checkpoint(run, fold, seed, training):
    folder = run / "folds" / fold / f"seed-{seed}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "model.json").write_text(
        json.dumps(
            {
                "format": "emomix.model/1",
                "model": "dual_routing",
                "classes": ["a", "b"],
                "input_dims": {},
                "features": {},
                "training": training,
            }
        )
    )
    return folder


def test_the_best_validation_score_chooses_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    a = _fake_checkpoint(run, "f1", 0, {"best_score": 0.6, "monitor": "val_ua"})
    b = _fake_checkpoint(run, "f2", 0, {"best_score": 0.8, "monitor": "val_ua"})
    c = _fake_checkpoint(run, "f2", 1, {"best_score": None, "monitor": None})
    assert choose_checkpoint(run) == b
    assert choose_checkpoint(run, fold="f1") == a and choose_checkpoint(run, seed=1) == c
    loss = tmp_path / "loss"
    low = _fake_checkpoint(loss, "f1", 0, {"best_score": 0.4, "monitor": "val_loss"})
    _fake_checkpoint(loss, "f2", 0, {"best_score": 0.9, "monitor": "val_loss"})
    assert choose_checkpoint(loss) == low
    composite = {
        "complementary_ca": {"best_score": 0.5, "monitor": "val_ua"},
        "complementary_spl": {"best_score": 0.7, "monitor": "val_ua"},
        "fusion_weights": [0.5, 0.5],
    }
    assert checkpoint_score({"training": composite}) == (pytest.approx(0.6), "val_ua")


@pytest.fixture(scope="module")
def mister_e_checkpoint(trained_synthetic_run, tmp_path_factory):
    """An untrained MiSTER-E checkpoint on the run's features (dialogue batches)."""
    from emomix.models import create_model
    from emomix.models.saved import TrainedModel, save_weights

    card = json.loads((trained_synthetic_run / "folds" / FOLD / "seed-0" / "model.json").read_text())
    torch.manual_seed(0)
    model = create_model("mister_e", {"hidden_dim": 16, "gate_hidden": 16}, card["input_dims"], len(card["classes"]))
    run = tmp_path_factory.mktemp("mister") / "run"
    folder = run / "folds" / FOLD / "seed-0"
    folder.mkdir(parents=True)
    shutil.copy(trained_synthetic_run / "normaliser-audio.json", run / "normaliser-audio.json")
    save_weights(TrainedModel(model).trainable_state(), folder / "model.safetensors")
    card.update(model="mister_e", config=model.config.to_dict(), batch_kind="dialogue")
    (folder / "model.json").write_text(json.dumps(card))
    return run


def test_a_dialogue_model_predicts_one_utterance_or_a_conversation(mister_e_checkpoint, test_part):
    predictor = Predictor.from_run(mister_e_checkpoint, asr=False)
    assert predictor.info()["batch_kind"] == "dialogue"
    items = test_part[0][:3]
    alone = [predictor.predict(**item) for item in items]
    many = predictor.predict_many(items)
    conversation = predictor.predict_dialogue(items)
    assert len(conversation) == 3
    for single, batched in zip(alone, many):
        assert probs(batched, predictor.classes) == pytest.approx(probs(single, predictor.classes), abs=1e-6)
        assert len(single["aux"]["gate_weights"]) == 3 and sum(single["aux"]["gate_weights"]) == pytest.approx(1.0)
    # in a conversation each turn sees the others (the context model is bidirectional)
    assert any(
        np.abs(probs(c, predictor.classes) - probs(s, predictor.classes)).max() > 1e-6
        for c, s in zip(conversation, alone)
    )
    assert probs(predictor.predict_dialogue(items[:1])[0], predictor.classes) == pytest.approx(
        probs(alone[0], predictor.classes), abs=1e-6
    )
    no_text = predictor.predict(audio=items[0]["audio"])
    assert AUDIO_ONLY_NOTE in no_text["notes"] and no_text["aux"]["gate_weights"] == [1.0, 0.0, 0.0]
    with pytest.raises(EmomixError, match="turn 1"):
        predictor.predict_dialogue([items[0], {"audio": b"junk", "text": "x"}])


# ---------------------------------------------------------------------------------------------
# emomix predict


@pytest.fixture()
def cli():
    from emomix.cli.predict import register

    app = typer.Typer()
    register(app)

    @app.callback()
    def main() -> None:  # a group, so the command is called by name as in `emomix predict`
        pass

    return app


def test_cli_predicts_a_folder_and_reports_a_corrupt_file_in_its_row(cli, trained_synthetic_run, test_part, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    for index, item in enumerate(test_part[0][:2]):
        shutil.copy(item["audio"], folder / f"clip{index}.wav")
    (folder / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt broken")
    (folder / "notes.txt").write_text("not audio")
    out = tmp_path / "results.csv"
    result = CliRunner().invoke(cli, ["predict", str(trained_synthetic_run), str(folder), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert f"2 predicted, 1 failed; results: {out}" in result.output
    rows = pd.read_csv(out)
    assert [p.split("/")[-1] for p in rows["input"]] == ["clip0.wav", "clip1.wav", "corrupt.wav"]
    assert rows["error_type"].fillna("").tolist() == ["", "", "AudioError"]
    assert rows.loc[:1, [f"prob_{c}" for c in ("angry", "happy", "neutral", "sad")]].sum(axis=1).round(5).tolist() == [
        1.0,
        1.0,
    ]
    assert rows.loc[0, "notes"].startswith(AUDIO_ONLY_NOTE)  # a folder has no transcripts
    jsonl = tmp_path / "results.jsonl"
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        f"audio_path,text,speaker\nclips/clip0.wav,{test_part[0][0]['text']},{test_part[0][0]['speaker']}\n"
    )
    result = CliRunner().invoke(cli, ["predict", str(trained_synthetic_run), str(manifest), "--out", str(jsonl), "-q"])
    assert result.exit_code == 0, result.output
    line = json.loads(jsonl.read_text().splitlines()[0])
    assert line["transcript_source"] == "given" and line["input"] == str(folder / "clip0.wav")
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.wav").write_bytes(b"junk")
    failed = CliRunner().invoke(cli, ["predict", str(trained_synthetic_run), str(only_bad), "-q"])
    assert isinstance(failed.exception, MissingDataError) and "every input failed (1)" in str(failed.exception)
    assert '"error_type": "AudioError"' in failed.output  # the row was still written (stdout)


def test_the_inference_table_equals_make_table_and_its_records_equal_pandas():
    """The predictor's fast paths: its table is the one make_table builds (columns, dtypes, values),
    and extraction's row dicts are DataFrame.to_dict("records")."""
    rows = [
        {
            "utt_id": "item-000000",
            "corpus": "inference",
            "audio_path": "/clips/a.wav",
            "text": "well hello",
            "speaker": "<unknown speaker>",
            "dialogue_id": "inference",
            "turn": 0,
            "video_path": None,
        },
        {
            "utt_id": "item-000001",
            "corpus": "inference",
            "audio_path": None,
            "text": "",
            "speaker": "spk-7",
            "dialogue_id": "inference",
            "turn": 1,
            "video_path": "/clips/b.mp4",
        },
    ]
    for chosen in (rows[:1], rows[1:], rows, rows[::-1] * 2):
        chosen = [dict(row, utt_id=f"{row['utt_id']}-{i}") for i, row in enumerate(chosen)]
        table = inference_table(chosen)
        pd.testing.assert_frame_equal(table, make_table(chosen))
        # a second call does not see the first one's values (the template stays untouched)
        pd.testing.assert_frame_equal(inference_table(chosen[:1]), make_table(chosen[:1]))
    corpus_like = make_table(
        [
            {"utt_id": "a", "corpus": "c", "speaker": "s", "start": 1.5, "end": 2.0, "turn": 3, "text": "x"},
            {
                "utt_id": "b",
                "corpus": "c",
                "speaker": "s",
                "label": "ang",
                "score": 0.5,
                "words": [{"token": "hi", "start": 0.0, "end": 0.2}],
            },
        ]
    ).iloc[::-1]
    for table in (corpus_like, inference_table(rows)):
        expected, got = table.to_dict("records"), _records(table)
        assert [list(r) for r in got] == [list(r) for r in expected]
        for want, have in zip(expected, got):
            for name, value in want.items():
                assert type(have[name]) is type(value), name
                assert repr(have[name]) == repr(value), name


def test_cli_predicts_a_transcripts_only_manifest_with_a_text_model(
    cli, text_only_checkpoint, trained_synthetic_run, tmp_path
):
    manifest = tmp_path / "lines.csv"
    manifest.write_text(
        'text,speaker\n"I got the job, this is the best day ever!",joey\n,\n"Why would you do that?",\n'
    )
    out = tmp_path / "lines.jsonl"
    result = CliRunner().invoke(cli, ["predict", str(text_only_checkpoint), str(manifest), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "2 predicted, 0 failed" in result.output  # the row with neither audio nor text is skipped
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["transcript"] for r in rows] == ["I got the job, this is the best day ever!", "Why would you do that?"]
    assert all(sum(r["probabilities"].values()) == pytest.approx(1.0) for r in rows)
    assert rows[1]["input"] == "text: Why would you do that?"
    alone = CliRunner().invoke(cli, ["predict", str(text_only_checkpoint), "--text", "Why would you do that?", "-q"])
    assert alone.exit_code == 0, alone.output
    single = json.loads(next(line for line in alone.stdout.splitlines() if line.startswith("{")))
    assert single["probabilities"] == pytest.approx(rows[1]["probabilities"], abs=1e-5)  # batch padding
    neither = CliRunner().invoke(cli, ["predict", str(text_only_checkpoint), "-q"])
    assert isinstance(neither.exception, ConfigError) and "or --text for a text-only model" in str(neither.exception)
    # an audio model given transcripts only: each row says it needs audio, none is guessed
    failed = CliRunner().invoke(cli, ["predict", str(trained_synthetic_run), str(manifest), "-q"])
    assert isinstance(failed.exception, MissingDataError) and "reads audio" in str(failed.exception)
