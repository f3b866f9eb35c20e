"""Minority-class augmentation: SNR and pitch renditions, deterministic files, copies only in training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from emomix.errors import AudioError, ConfigError
from emomix.train.augment import (
    add_noise,
    augment_table,
    augmented_classes,
    is_augmented,
    render,
    source_of,
    training_ids_with_copies,
)
from emomix.train.recipe import AugmentConfig


def tone(seconds=0.5, rate=16000, hz=220.0):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_noise_has_the_requested_snr():
    clean = tone()
    noisy = add_noise(clean, 10.0, np.random.default_rng(0))
    noise = noisy - clean
    snr = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))
    assert abs(snr - 10.0) < 0.3


def test_pitch_shift_moves_the_fundamental():
    rate = 16000
    shifted = render(
        tone(1.0, rate, 200.0),
        rate,
        "pitch",
        AugmentConfig(kinds=("pitch",), pitch_semitones=12.0),
        np.random.default_rng(3),
    )
    spectrum = np.abs(np.fft.rfft(shifted * np.hanning(len(shifted))))
    peak = np.fft.rfftfreq(len(shifted), 1 / rate)[spectrum.argmax()]
    assert abs(peak - 400.0) < 15 or abs(peak - 100.0) < 10  # one octave up or down


def test_silent_audio_is_refused():
    with pytest.raises(AudioError, match="silent"):
        render(np.zeros(1600, np.float32), 16000, "noise", AugmentConfig(), np.random.default_rng(0))


def test_minority_classes_and_unknown_classes():
    table = pd.DataFrame({"label": ["a"] * 5 + ["b"] * 2 + ["c"] * 4})
    assert augmented_classes(table, "minority") == ["b"]
    with pytest.raises(ConfigError, match="does not have"):
        augmented_classes(table, ["zzz"])


def test_augment_table_renders_copies_once_and_deterministically(tmp_path):
    rows = []
    for index, label in enumerate(["a", "a", "a", "b"]):
        path = tmp_path / f"u{index}.wav"
        sf.write(path, tone(0.3, hz=150 + 40 * index), 16000)
        rows.append(
            {
                "utt_id": f"u{index}",
                "audio_path": path.name,
                "start": None,
                "end": None,
                "label": label,
                "speaker": "s1",
                "text": "hello",
            }
        )
    table = pd.DataFrame(rows)
    config = AugmentConfig(kinds=("noise", "pitch"), classes="minority", copies=2)
    out = augment_table(table, config, tmp_path / "aug", base_dir=tmp_path)
    copies = out[out["utt_id"].map(is_augmented)]
    assert len(copies) == 4 and set(copies["utt_id"].map(source_of)) == {"u3"} and set(copies["label"]) == {"b"}
    first = {p: sf.read(p)[0] for p in copies["audio_path"]}
    again = augment_table(table, config, tmp_path / "aug2", base_dir=tmp_path)
    for old, new in zip(copies["audio_path"], again[again["utt_id"].map(is_augmented)]["audio_path"]):
        np.testing.assert_array_equal(first[old], sf.read(new)[0])
    assert training_ids_with_copies(["u0", "u3"], list(out["utt_id"])) == ["u0", "u3", *copies["utt_id"]]
    assert training_ids_with_copies(["u0", "u1"], list(out["utt_id"])) == ["u0", "u1"]


def test_copies_are_found_when_the_store_is_relative_and_the_corpus_elsewhere(tmp_path, monkeypatch):
    """A recipe's store is usually relative (``runs/<corpus>/features``) and its corpus root
    elsewhere: the copies' paths must not be resolved against the corpus root."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    sf.write(corpus / "u0.wav", tone(0.3), 16000)
    table = pd.DataFrame(
        [{"utt_id": "u0", "audio_path": "u0.wav", "start": None, "end": None, "label": "b", "speaker": "s1"}]
    )
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out = augment_table(table, AugmentConfig(kinds=("noise",), classes=["b"]), Path("runs/features/augmented"), corpus)
    copy = out[out["utt_id"].map(is_augmented)]["audio_path"].item()
    assert Path(copy).is_absolute() and Path(copy).exists()
    assert Path(copy).parent == work / "runs" / "features" / "augmented"


def test_a_failed_copy_stops_the_run_and_a_failed_corpus_file_is_announced():
    from emomix.errors import MissingDataError
    from emomix.train.run import check_feature_failures

    table = pd.DataFrame({"utt_id": ["u0", "u1", "u1@aug-noise-0", "u1@aug-noise-1"]})
    lines: list[str] = []
    check_feature_failures([], table, lines.append)
    assert lines == []
    corrupt = {"utt_id": "u0", "reason": "unreadable", "message": "cannot read u0.wav"}
    check_feature_failures([corrupt], table, lines.append)
    assert len(lines) == 1 and "1 utterance(s) left out" in lines[0] and "cannot read u0.wav" in lines[0]
    copy = {"utt_id": "u1@aug-noise-1", "reason": "missing file", "message": "cannot read u1@aug-noise-1.wav"}
    with pytest.raises(MissingDataError, match=r"1 of 2 augmented copies have no features .*u1@aug-noise-1"):
        check_feature_failures([corrupt, copy], table, lines.append)
