"""Feature extraction into the store: counts, fallbacks, failures, layers, VAD, chunking, workers,
kill-and-resume with a real process, scale-out shards with merge, and the CLI.

Run as a script (``python tests/test_extract.py TABLE STORE FLUSH DELAY``) it is the extraction
process the kill-and-resume test starts and kills.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from emomix.cache.extract import PreprocessConfig, extract_features
from emomix.cache.store import FeatureStore
from emomix.data.schema import load_table, make_table, save_table
from emomix.encoders.base import Encoder, EncoderOutput
from emomix.errors import ConfigError

RATE = 16000
HOP = 160


class FrameStatsEncoder(Encoder):
    """Deterministic audio encoder: per 10 ms frame (mean, std, peak, energy) × scale.

    Hidden state k is the frame features × (k + 1) × scale; ``states`` is the last one; ``pooled``
    the mean of the valid frames. ``delay`` seconds per input make it slow (not in the config: it
    does not change the output).
    """

    modality = "audio"
    frame_rate = RATE / HOP
    output_size = 4
    num_layers = 2

    def __init__(self, scale: float = 1.0, delay: float = 0.0):
        super().__init__()
        self.scale = scale
        self.delay = delay

    def config(self):
        return {"name": "frame-stats", "scale": self.scale}

    def forward(self, inputs, output_hidden_states=False):
        if self.delay:
            time.sleep(self.delay * len(inputs))
        feats = [frame_features(np.asarray(w, dtype=np.float32)) * self.scale for w in inputs]
        length = max(len(f) for f in feats)
        base = torch.zeros(len(inputs), length, 4)
        mask = torch.zeros(len(inputs), length, dtype=torch.bool)
        for i, f in enumerate(feats):
            base[i, : len(f)] = torch.from_numpy(f)
            mask[i, : len(f)] = True
        hidden = tuple(base * (k + 1) for k in range(self.num_layers + 1))
        pooled = torch.stack([base[i, : len(f)].mean(0) for i, f in enumerate(feats)])
        return EncoderOutput(
            states=hidden[-1], mask=mask, hidden_states=hidden if output_hidden_states else None, pooled=pooled
        )

    def forward_from_layer(self, hidden, mask, start_layer, output_hidden_states=False):
        factor = (self.num_layers + 1) / (start_layer + 1)
        return EncoderOutput(states=hidden * factor, mask=mask)


class NoResumeEncoder(FrameStatsEncoder):
    forward_from_layer = None  # type: ignore[assignment]

    def __getattribute__(self, name):
        if name == "forward_from_layer":
            raise AttributeError(name)
        return super().__getattribute__(name)


class CharEncoder(Encoder):
    """Deterministic text encoder: [CLS] + one token per character; fails on the bomb character."""

    modality = "text"
    output_size = 2
    num_layers = 0

    def config(self):
        return {"name": "chars"}

    def forward(self, inputs, output_hidden_states=False):
        if any("\N{BOMB}" in text for text in inputs):
            raise ValueError("cannot encode a bomb")
        length = max(len(text) for text in inputs) + 1
        states = torch.zeros(len(inputs), length, 2)
        mask = torch.zeros(len(inputs), length, dtype=torch.bool)
        special = torch.zeros(len(inputs), length, dtype=torch.bool)
        for i, text in enumerate(inputs):
            values = [0.0] + [ord(c) / 128.0 for c in text]
            states[i, : len(values), 0] = torch.tensor(values)
            states[i, : len(values), 1] = torch.arange(len(values), dtype=torch.float32)
            mask[i, : len(values)] = True
            special[i, 0] = True
        return EncoderOutput(
            states=states,
            mask=mask,
            special_tokens=special,
            extras={"empty_text": [not text.strip() for text in inputs]},
        )


def frame_features(wave: np.ndarray) -> np.ndarray:
    count = max(1, len(wave) // HOP)
    frames = np.zeros(count * HOP, np.float32)
    frames[: min(len(wave), count * HOP)] = wave[: count * HOP]
    frames = frames.reshape(count, HOP)
    return np.stack([frames.mean(1), frames.std(1), np.abs(frames).max(1), (frames**2).mean(1)], axis=1).astype(
        np.float32
    )


def tone(seconds: float, freq: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * RATE))) / RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def vowel(seconds: float, pitch: float = 130.0) -> np.ndarray:
    """A voiced, speech-like sound (harmonics with a 4 Hz envelope) that WebRTC's VAD accepts as speech."""
    t = np.arange(int(round(seconds * RATE))) / RATE
    wave = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 30))
    return (0.2 * wave / np.abs(wave).max() * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def make_audio_corpus(folder: Path, count: int, seed: int = 0):
    """``count`` distinct short tones (0.05–0.2 s) and their utterance table."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        path = folder / f"utt{i:03d}.wav"
        sf.write(path, tone(float(rng.uniform(0.05, 0.2)), 100.0 + 7.0 * i), RATE)
        rows.append({"utt_id": f"utt{i:03d}", "corpus": "tones", "speaker": f"s{i % 3}", "audio_path": str(path)})
    return make_table(rows)


def store_contents(root: Path) -> dict[str, dict[str, np.ndarray]]:
    with FeatureStore(root, create=False) as store:
        keys = store.keys()
        return store.get_many(keys)


def run_script(table: Path, store: Path, flush: int, delay: float) -> subprocess.Popen:
    """Start this file as an extraction process (see :func:`_main`)."""
    argv = [sys.executable, __file__, str(table), str(store), str(flush), str(delay)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---------------------------------------------------------------------------- in-process extraction


def test_counts_arrays_fallbacks_and_failures(tmp_path):
    table = make_audio_corpus(tmp_path / "wav", 8)
    sf.write(tmp_path / "silent.wav", np.zeros(3200, np.float32), RATE)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
    rows = [
        *table.to_dict("records"),
        {"utt_id": "silent", "corpus": "tones", "speaker": "s0", "audio_path": "silent.wav"},  # relative to base_dir
        {"utt_id": "corrupt", "corpus": "tones", "speaker": "s0", "audio_path": str(tmp_path / "corrupt.wav")},
        {"utt_id": "absent", "corpus": "tones", "speaker": "s0", "audio_path": str(tmp_path / "absent.wav")},
        {
            "utt_id": "span",
            "corpus": "tones",
            "speaker": "s1",
            "audio_path": table["audio_path"][0],
            "start": 0.01,
            "end": 0.04,
        },
        {"utt_id": "nopath", "corpus": "tones", "speaker": "s1"},
    ]
    table = make_table(rows)
    encoder = FrameStatsEncoder()
    with FeatureStore(tmp_path / "store") as store:
        summary = extract_features(
            table, encoder, store, batch_size=3, progress=False, base_dir=tmp_path, flush_every=4
        )
        assert (summary.total, summary.cached, summary.computed, summary.failed) == (13, 0, 10, 3)
        assert summary.entries_written == 10 and summary.shards_written == store.stats()["shards"] >= 2
        assert summary.failures_by_reason() == {"unreadable audio": 1, "missing file": 1, "no audio path": 1}
        by_id = {f["utt_id"]: f for f in summary.failures}
        assert "corrupt.wav" in by_id["corrupt"]["message"] and "absent.wav" in by_id["absent"]["message"]
        assert summary.fallbacks == {"silence-only audio": ["silent"]}
        assert set(summary.keys) == set(table["utt_id"]) - {"corrupt", "absent", "nopath"}
        expected_seconds = sum(sf.info(p).duration for p in table["audio_path"][:8]) + 0.2 + 0.03
        assert summary.audio_seconds == pytest.approx(expected_seconds, abs=1e-3)
        assert summary.real_time_factor == pytest.approx(summary.wall_seconds / summary.audio_seconds)
        assert summary.bytes_on_disk == store.stats()["bytes"] > 0
        for row in table.to_dict("records")[:8]:
            wave, _ = sf.read(row["audio_path"], dtype="float32")
            got = store.get(summary.keys[row["utt_id"]])
            assert set(got) == {"states", "pooled"}
            assert got["states"].shape == (len(wave) // HOP, 4), "stored without padding"
            np.testing.assert_array_equal(got["states"], (frame_features(wave) * 3).astype(np.float16))
        span = store.get(summary.keys["span"])["states"]
        assert span.shape == (3, 4)
        text = summary.format()
        assert "13: 0 cached, 10 computed, 3 failed" in text and "silence-only audio: 1 (silent)" in text
        assert "unreadable audio: 1" in text and "corrupt:" in text

        again = extract_features(table, encoder, store, batch_size=3, progress=False, base_dir=tmp_path)
        assert (again.cached, again.computed, again.failed, again.entries_written) == (10, 0, 3, 0)
        assert again.keys == summary.keys


def test_dataloader_workers_give_the_same_features(tmp_path):
    table = make_audio_corpus(tmp_path / "wav", 10)
    with FeatureStore(tmp_path / "a") as one, FeatureStore(tmp_path / "b") as two:
        first = extract_features(table, FrameStatsEncoder(), one, batch_size=4, num_workers=0, progress=False)
        second = extract_features(table, FrameStatsEncoder(), two, batch_size=4, num_workers=2, progress=False)
    assert first.keys == second.keys and second.computed == 10
    a, b = store_contents(tmp_path / "a"), store_contents(tmp_path / "b")
    for key in a:
        for name in a[key]:
            np.testing.assert_array_equal(a[key][name], b[key][name])


def test_layers_and_boundary_layer(tmp_path):
    table = make_audio_corpus(tmp_path / "wav", 3)
    with FeatureStore(tmp_path / "store", dtype="float32") as store:
        summary = extract_features(table, FrameStatsEncoder(), store, layers=[0], boundary_layer=-1, progress=False)
        assert summary.layers == [0, 1] and summary.boundary_layer == 1
        got = store.get(summary.keys["utt000"])
        assert set(got) == {"states", "layer_0", "layer_1", "pooled"}
        np.testing.assert_allclose(got["layer_1"], 2 * got["layer_0"])
        np.testing.assert_allclose(got["states"], 3 * got["layer_0"])
        plain = extract_features(table, FrameStatsEncoder(), store, progress=False, batch_size=1, flush_bytes=1)
        assert plain.computed == 3, "a different layer selection is a different key"
        assert plain.shards_written == 3, "flush_bytes flushes as soon as the pending arrays reach it"
        with pytest.raises(ConfigError, match=r"layer\(s\) \[5\] out of range"):
            extract_features(table, FrameStatsEncoder(), store, layers=[5], progress=False)
        with pytest.raises(ConfigError, match="boundary layer -3 out of range"):
            extract_features(table, FrameStatsEncoder(), store, boundary_layer=-3, progress=False)
        with pytest.raises(ConfigError, match="no forward_from_layer"):
            extract_features(table, NoResumeEncoder(), store, boundary_layer=1, progress=False)


def test_vad_mask_trim_and_chunking(tmp_path):
    speech = np.concatenate([np.zeros(8000, np.float32), vowel(1.0), np.zeros(8000, np.float32)])
    sf.write(tmp_path / "speech.wav", speech, RATE)
    sf.write(tmp_path / "silent.wav", np.zeros(8000, np.float32), RATE)
    sf.write(tmp_path / "long.wav", tone(7.0, 180.0), RATE)
    table = make_table(
        [
            {"utt_id": n, "corpus": "c", "speaker": "s", "audio_path": str(tmp_path / f"{n}.wav")}
            for n in ("speech", "silent", "long")
        ]
    )
    encoder = FrameStatsEncoder()
    with FeatureStore(tmp_path / "store") as store:
        masked = extract_features(table, encoder, store, preprocess={"vad": "webrtc"}, progress=False)
        assert masked.fallbacks == {"silence-only audio": ["silent"]}, (masked.failures, masked.cached)
        got = store.get(masked.keys["speech"])
        mask = got["speech_mask"]
        assert mask.dtype == np.uint8 and mask.shape == (got["states"].shape[0],) == (200,)
        assert mask[:40].sum() == 0 and mask[60:140].all() and mask[170:].sum() == 0
        assert store.get(masked.keys["silent"])["speech_mask"].all(), "no speech found: every frame is kept"

        trimmed = extract_features(
            table, encoder, store, preprocess={"vad": "webrtc", "vad_mode": "trim"}, progress=False
        )
        frames = store.get(trimmed.keys["speech"])["states"].shape[0]
        assert 95 <= frames <= 120 and "speech_mask" not in store.get(trimmed.keys["speech"])
        assert trimmed.audio_seconds < masked.audio_seconds

        chunked = extract_features(table, encoder, store, preprocess=PreprocessConfig(chunk_max_s=3.0), progress=False)
        long = store.get(chunked.keys["long"])
        assert long["chunk_frames"].tolist() == [233, 233, 233] and long["states"].shape == (699, 4)
        assert long["pooled"].shape == (3, 4)
        assert store.get(chunked.keys["speech"])["chunk_frames"].tolist() == [200]

    class Utterancewise(FrameStatsEncoder):
        frame_rate = None

    with (
        FeatureStore(tmp_path / "other") as store,
        pytest.raises(ConfigError, match="vad_mode='mask' needs an encoder with frames"),
    ):
        extract_features(table, Utterancewise(), store, preprocess={"vad": "webrtc"}, progress=False)
    with pytest.raises(ConfigError, match="cannot be combined with chunking"):
        PreprocessConfig(vad="webrtc", chunk_max_s=3.0)
    with pytest.raises(ConfigError, match=r"unknown webrtc VAD option\(s\) \['threshold'\]"):
        PreprocessConfig(vad="webrtc", vad_options={"threshold": 0.5})
    with pytest.raises(ConfigError, match=r"unknown preprocess setting\(s\) \['vad_backend'\]"):
        PreprocessConfig.from_dict({"vad_backend": "webrtc"})


def test_ctrl_c_keeps_the_finished_batches(tmp_path):
    class Interrupted(FrameStatsEncoder):
        calls = 0

        def forward(self, inputs, output_hidden_states=False):
            Interrupted.calls += 1
            if Interrupted.calls == 3:
                raise KeyboardInterrupt
            return super().forward(inputs, output_hidden_states)

    table = make_audio_corpus(tmp_path / "wav", 10)
    with FeatureStore(tmp_path / "store") as store:
        with pytest.raises(KeyboardInterrupt):
            extract_features(table, Interrupted(), store, batch_size=2, flush_every=100, progress=False)
        assert len(store) == 4 and store.verify().ok
        resumed = extract_features(table, Interrupted(), store, batch_size=2, progress=False)  # same identity
    assert (resumed.cached, resumed.computed) == (4, 6)


def test_text_fallbacks_duplicates_and_encoder_errors(tmp_path):
    texts = ["hello", "  hello ", "", "   ", None, "boom \N{BOMB}", "why?", "no", "why?"]
    table = make_table([{"utt_id": f"t{i}", "corpus": "c", "speaker": "s", "text": t} for i, t in enumerate(texts)])
    with FeatureStore(tmp_path / "store") as store:
        summary = extract_features(table, CharEncoder(), store, batch_size=4, progress=False)
        assert summary.failures_by_reason() == {"no transcript": 1, "encoder error": 1}
        assert [f["utt_id"] for f in summary.failures] == ["t4", "t5"]
        assert "cannot encode a bomb" in summary.failures[1]["message"]
        assert sorted(summary.fallbacks) == ["empty text"] and sorted(summary.fallbacks["empty text"]) == ["t2", "t3"]
        assert summary.computed == 7 and summary.entries_written == 4, "hello/why?/empty each computed once"
        assert summary.keys["t0"] == summary.keys["t1"] and summary.keys["t2"] == summary.keys["t3"]
        got = store.get(summary.keys["t6"])
        assert got["states"].shape == (5, 2) and got["special_tokens"].tolist() == [1, 0, 0, 0, 0]
        assert store.get(summary.keys["t2"])["states"].shape == (1, 2)


# ---------------------------------------------------------------------------- real processes


def test_kill_and_resume_with_a_real_process(tmp_path):
    count = 200
    table = make_audio_corpus(tmp_path / "wav", count)
    save_table(table, tmp_path / "table.parquet")
    with FeatureStore(tmp_path / "reference") as reference:
        clean = extract_features(table, FrameStatsEncoder(), reference, batch_size=4, progress=False)

    process = run_script(tmp_path / "table.parquet", tmp_path / "store", flush=10, delay=0.01)
    index = tmp_path / "store" / "index.sqlite"
    deadline = time.monotonic() + 60
    landed = 0
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with closing(sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=0.1)) as db:
                landed = db.execute("SELECT COUNT(*) FROM shards").fetchone()[0]
        except sqlite3.Error:
            landed = 0
        if landed:
            break
        time.sleep(0.01)
    assert landed, f"no shard landed before the process ended: {process.communicate()[1][-2000:]}"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    with FeatureStore(tmp_path / "store") as store:
        store.acquire_writer()  # what every resumed run does first: clean/adopt the killed run's leftovers
        assert store.stats()["orphans"] == 0
        done = len(store)
    assert 0 < done < count, "the kill must interrupt the run part-way"

    with FeatureStore(tmp_path / "store") as store:
        resumed = extract_features(table, FrameStatsEncoder(), store, batch_size=4, progress=False, flush_every=10)
        assert (resumed.cached, resumed.computed, resumed.failed) == (done, count - done, 0)
        assert resumed.keys == clean.keys
        report = store.verify()
        assert report.ok and report.checked == count
    got, want = store_contents(tmp_path / "store"), store_contents(tmp_path / "reference")
    assert set(got) == set(want)
    for key in want:
        for name in want[key]:
            np.testing.assert_array_equal(got[key][name], want[key][name])

    with FeatureStore(tmp_path / "store") as store:
        third = extract_features(table, FrameStatsEncoder(), store, batch_size=4, progress=False)
    assert (third.cached, third.computed, third.entries_written) == (count, 0, 0)


# ---------------------------------------------------------------------------- the command line


def run_cli(args, capsys):
    from emomix.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def make_manifest_corpus(folder: Path, count: int, bad: bool = False) -> Path:
    folder.mkdir()
    lines = ["utt_id,speaker,audio_path,label"]
    for i in range(count):
        sf.write(folder / f"a{i}.wav", tone(0.3 + 0.1 * (i % 4), 200.0 + 50 * i), RATE)
        lines.append(f"a{i},s{i % 2},a{i}.wav,happy")
    if bad:
        (folder / "bad.wav").write_bytes(b"not audio at all")
        lines.append("bad,s0,bad.wav,sad")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def test_cli_extract_with_mfcc_and_store_commands(tmp_path, capsys):
    manifest = make_manifest_corpus(tmp_path / "corpus", 4, bad=True)
    store = tmp_path / "features"
    argv = [
        "extract",
        "manifest",
        str(manifest),
        "--encoder",
        "mfcc",
        "--store",
        str(store),
        "--no-progress",
        "--batch-size",
        "2",
        "--dtype",
        "float32",
    ]

    code, out, _ = run_cli([*argv, "--json"], capsys)
    assert code == 0, out
    summary = json.loads(out)
    assert (summary["total"], summary["computed"], summary["failed"]) == (5, 4, 1)
    assert summary["failures"][0]["utt_id"] == "bad" and summary["failures"][0]["reason"] == "unreadable audio"
    assert summary["namespace"].startswith("mfcc-") and summary["real_time_factor"] > 0
    with FeatureStore(store, create=False) as opened:
        shapes = sorted(v["states"].shape for v in opened.get_many(opened.keys()).values())
    assert shapes == [(31, 40), (41, 40), (51, 40), (61, 40)], "100 frames/s, one row per frame, no padding"

    code, out, _ = run_cli(argv, capsys)
    assert code == 0 and "5: 4 cached, 0 computed, 1 failed" in out and "unreadable audio: 1" in out
    code, out, _ = run_cli(["store", "info", str(store)], capsys)
    assert code == 0 and "4 entries in 1 shards" in out
    code, out, _ = run_cli(["store", "verify", str(store)], capsys)
    assert code == 0 and "checked 4 entries: 0 bad" in out
    code, _, err = run_cli([*argv, "--layers", "4,x"], capsys)
    assert code == 2 and "--layers expects comma-separated integers" in err
    code, _, err = run_cli([*argv, "--shard-index", "2", "--num-shards", "2"], capsys)
    assert code == 2 and "--shard-index 2 is outside 0..1" in err
    code, _, err = run_cli(["store", "info", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "does not exist" in err


@pytest.mark.slow
def test_real_corpora_extract_and_resume(tmp_path, capsys):
    """EmoDB through openSMILE and MELD transcripts through the bundled MiniLM, then pure cache hits."""
    from emomix.data.paths import shared_datasets_dir

    datasets = shared_datasets_dir()
    if datasets is None or not (datasets / "emodb").is_dir() or not (datasets / "meld-text").is_dir():
        pytest.skip("needs ../shared/datasets/emodb and meld-text (set EMOMIX_DATASETS)")
    store = str(tmp_path / "features")
    emodb = [
        "extract",
        "emodb",
        str(datasets / "emodb"),
        "--encoder",
        "opensmile:eGeMAPSv02",
        "--store",
        store,
        "--limit",
        "60",
        "--num-workers",
        "2",
        "--no-progress",
        "--json",
    ]
    code, out, err = run_cli(emodb, capsys)
    assert code == 0, err
    first = json.loads(out)
    assert (first["total"], first["computed"], first["failed"]) == (60, 60, 0)
    assert first["real_time_factor"] < 1.0 and first["audio_seconds"] > 60
    meld = [
        "extract",
        "meld",
        str(datasets / "meld-text"),
        "--encoder",
        "minilm",
        "--store",
        store,
        "--limit",
        "300",
        "--batch-size",
        "32",
        "--no-progress",
        "--json",
    ]
    code, out, err = run_cli(meld, capsys)
    assert code == 0, err
    text = json.loads(out)
    assert (text["total"], text["computed"], text["failed"]) == (300, 300, 0)
    assert text["entries_written"] < 300, "repeated MELD lines ('Okay.', 'Yeah.') are encoded once"
    for argv, count in ((emodb, 60), (meld, 300)):
        code, out, _ = run_cli(argv, capsys)
        assert code == 0 and (json.loads(out)["cached"], json.loads(out)["computed"]) == (count, 0)
    with FeatureStore(store, create=False) as opened:
        assert opened.verify().ok and len(opened.stats()["namespaces"]) == 2


def _main(argv: list[str]) -> None:
    table_path, store_path, flush, delay = argv
    with FeatureStore(store_path) as store:
        summary = extract_features(
            load_table(table_path),
            FrameStatsEncoder(delay=float(delay)),
            store,
            batch_size=4,
            flush_every=int(flush),
            progress=False,
        )
    print(json.dumps(summary.to_dict()))


if __name__ == "__main__":
    _main(sys.argv[1:])
