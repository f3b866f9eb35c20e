"""Timelines of long recordings: a generated minute of synthetic-corpus utterances separated by
silences is segmented near the right places, predicted through the Predictor, summarised,
written as JSON and drawn; timed transcripts reach their segments; silence and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import typer
from typer.testing import CliRunner

from emomix.infer.predictor import AUDIO_ONLY_NOTE, Predictor
from emomix.infer.timeline import plot_timeline, predict_timeline, timeline_json

RATE = 16000
LENGTH_S = 60.0


# Torch on one thread for the whole module (the one_thread fixture in conftest).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def predictor(trained_synthetic_run):
    return Predictor.from_run(trained_synthetic_run, asr=False)


@pytest.fixture(scope="module")
def recording(synthetic_features, tmp_path_factory):
    """60 s: silence, then utterances of the synthetic corpus each followed by 2.5–4 s of silence.
    Returns the path and the placed utterances (start, end, text)."""
    rng = np.random.default_rng(7)
    wave = np.zeros(int(LENGTH_S * RATE), dtype=np.float32)
    placed = []
    position = 1.5
    for row in synthetic_features.table.itertuples(index=False):
        samples, rate = sf.read(str(synthetic_features.root / row.audio_path), dtype="float32")
        assert rate == RATE
        if position + samples.size / RATE > LENGTH_S - 1.0:
            break
        first = int(round(position * RATE))
        wave[first : first + samples.size] = samples
        placed.append((first / RATE, (first + samples.size) / RATE, row.text))
        position = (first + samples.size) / RATE + float(rng.uniform(2.5, 4.0))
    path = tmp_path_factory.mktemp("timeline") / "minute.wav"
    sf.write(str(path), wave, RATE, subtype="PCM_16")
    return path, placed


def test_a_minute_of_utterances_becomes_a_timeline_written_as_json_and_png(predictor, recording, tmp_path):
    path, placed = recording
    assert len(placed) >= 8
    result = predict_timeline(predictor, path, batch_size=4)
    segments = result["segments"]
    # every placed utterance is found, near its own edges (padding 0.1 s, 30 ms VAD frames)
    for start, end, _ in placed:
        inside = [s for s in segments if s["start"] < end and s["end"] > start]
        assert inside, f"no segment for the utterance at {start:.2f}–{end:.2f} s"
        assert min(s["start"] for s in inside) == pytest.approx(start, abs=0.4)
        assert max(s["end"] for s in inside) == pytest.approx(end, abs=0.5)
    # and nothing is found in the silences
    for segment in segments:
        assert any(segment["start"] < end and segment["end"] > start for start, end, _ in placed), segment
    assert [s["index"] for s in segments] == list(range(len(segments)))
    for segment in segments:
        assert segment["label"] in predictor.classes and sum(segment["probabilities"].values()) == pytest.approx(
            1.0, abs=1e-5
        )
        assert set(segment["aux"]) == {"route_audio", "vad_fallback"}
    summary = result["summary"]
    assert summary["segments"] == len(segments) and summary["failed"] == 0
    assert sum(summary["shares"].values()) == pytest.approx(1.0, abs=1e-5)
    assert sum(summary["counts"].values()) == len(segments) and summary["dominant"] in predictor.classes
    # the two measures of speech time have distinct names and add up as documented
    assert summary["predicted_s"] == pytest.approx(sum(s["end"] - s["start"] for s in segments), abs=1e-3)
    assert summary["failed_s"] == 0.0
    segmentation = result["segmentation"]
    assert "speech_s" not in summary and "speech_s" not in segmentation
    assert segmentation["segments_s"] == pytest.approx(summary["predicted_s"] + summary["failed_s"], abs=2e-3)
    speech = sum(end - start for start, end, _ in placed)
    assert segmentation["vad_speech_s"] == pytest.approx(speech, rel=0.25)
    assert segmentation["vad_speech_s"] < segmentation["segments_s"], (
        "segments add padding and pauses to the VAD's speech"
    )
    assert result["duration_s"] == pytest.approx(LENGTH_S, abs=0.01)
    assert AUDIO_ONLY_NOTE in result["notes"]  # no transcript, no recogniser: shared by every segment
    assert all(AUDIO_ONLY_NOTE not in s["notes"] for s in segments)
    written = tmp_path / "timeline.json"
    written.write_text(timeline_json(result))
    assert json.loads(written.read_text())["segments"] == segments
    lines = written.read_text().splitlines()
    assert len(lines) > 10 * len(segments) and max(map(len, lines)) < 200, "indented: no 13 KB line"
    png = plot_timeline(result, tmp_path / "plot" / "timeline.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_timed_transcripts_reach_their_segments_through_the_predictor(predictor, recording):
    from emomix.audio.segment import segment_recording

    path, placed = recording
    result = predict_timeline(predictor, path, text=placed, speaker="nobody", batch_size=8)
    for segment in result["segments"]:
        middle = (segment["start"] + segment["end"]) / 2
        utterance = next(p for p in placed if p[0] - 0.5 <= middle <= p[1] + 0.5)
        assert segment["transcript"] == utterance[2] and segment["transcript_source"] == "given"
    # a segment's prediction is the predictor's prediction of that segment's samples
    first = next(iter(segment_recording(path)))
    alone = predictor.predict(audio=first.samples, sample_rate=RATE, text=placed[0][2], speaker="nobody")
    got = result["segments"][0]["probabilities"]
    assert [got[c] for c in predictor.classes] == pytest.approx(
        [alone["probabilities"][c] for c in predictor.classes], abs=1e-6
    )


def test_a_silent_recording_has_no_segments_and_says_so(predictor, tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(str(path), np.zeros(5 * RATE, dtype=np.float32), RATE)
    result = predict_timeline(predictor, path)
    assert result["segments"] == [] and result["summary"]["dominant"] is None
    assert any("no speech found" in note for note in result["notes"])


def test_cli_timeline_writes_json_and_a_plot(trained_synthetic_run, recording, tmp_path):
    from emomix.cli.predict import register

    app = typer.Typer()
    register(app)

    @app.callback()
    def main() -> None:
        pass

    path, _ = recording
    out, plot = tmp_path / "timeline.json", tmp_path / "timeline.png"
    result = CliRunner().invoke(
        app,
        ["predict", str(trained_synthetic_run), str(path), "--timeline", "--plot", str(plot), "--out", str(out), "-q"],
    )
    assert result.exit_code == 0, result.output
    [written] = json.loads(out.read_text())
    assert written["input"] == str(path) and written["plot"] == str(plot) and plot.exists() and written["segments"]
    printed = CliRunner().invoke(app, ["predict", str(trained_synthetic_run), str(path), "--timeline", "-q"])
    assert printed.exit_code == 0, printed.output
    document = printed.stdout
    assert json.loads(document)["segments"] == written["segments"]
    assert max(map(len, document.splitlines())) < 200, "a timeline on stdout is indented, not one long line"
    csv_out = tmp_path / "segments.csv"
    result = CliRunner().invoke(
        app, ["predict", str(trained_synthetic_run), str(path), "--timeline", "--out", str(csv_out), "-q"]
    )
    assert result.exit_code == 0, result.output
    header = csv_out.read_text().splitlines()[0].split(",")
    assert header[:4] == ["input", "start", "end", "label"] and "prob_angry" in header
    assert len(csv_out.read_text().splitlines()) == len(written["segments"]) + 1
