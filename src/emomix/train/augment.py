"""Minority-class audio augmentation for recipes that ask for it (``training.augment``).

Augmented copies are real audio files rendered once next to the feature store, so they go
through exactly the same preprocessing, encoders and cache as the originals:

* ``noise``: white noise at ``noise_snr_db`` relative to the utterance's own power;
* ``pitch``: a pitch shift of ± ``pitch_semitones`` (the sign drawn per copy) with librosa.

Each copy is a new row of the utterance table with id ``<utt_id>@aug-<kind>-<k>`` and the
original's label, text, speaker, session and words. A fold trains on the copies of its own
training utterances only; validation and test never see a copy, and speaker statistics are
fitted on originals. Which classes are augmented: a list, or ``"minority"`` — the classes whose
count in the labelled corpus is below the median class count (decided once for the corpus, not
per fold, so every fold trains on the same kinds of copies).

Rendering is deterministic: the noise and the shift direction derive from the utterance id and
copy index, so a re-run writes identical files (and hits the feature cache).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emomix.atomic import write_wav_atomic
from emomix.constants import SAMPLE_RATE
from emomix.errors import AudioError, ConfigError

AUGMENT_SEPARATOR = "@aug-"


def is_augmented(utt_id: str) -> bool:
    return AUGMENT_SEPARATOR in str(utt_id)


def source_of(utt_id: str) -> str:
    """The original utterance id of an augmented copy (the id itself otherwise)."""
    return str(utt_id).split(AUGMENT_SEPARATOR, 1)[0]


def augmented_classes(table: pd.DataFrame, classes: Any) -> list[str]:
    """The classes to augment: the given list (checked), or those below the median count."""
    counts = table["label"].value_counts()
    if classes == "minority":
        median = float(np.median(counts.to_numpy()))
        return sorted(str(c) for c, n in counts.items() if n < median)
    unknown = [c for c in classes if c not in counts.index]
    if unknown:
        raise ConfigError(
            f"training.augment.classes names {unknown}, which the corpus does not have "
            f"(classes: {', '.join(map(str, counts.index))})"
        )
    return [str(c) for c in classes]


def augment_table(
    table: pd.DataFrame, config: Any, out_dir: str | Path, base_dir: str | Path | None = None
) -> pd.DataFrame:
    """Render the augmented copies into ``out_dir`` (skipping files already there) and return the
    table with their rows appended; a copy's ``audio_path`` is absolute, so it is found whatever
    the corpus root."""
    from emomix.audio.io import load_audio

    # absolute: the feature pipeline resolves a relative audio_path against the corpus root, and
    # the copies live beside the feature store, not in the corpus
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = set(augmented_classes(table, config.classes))
    sources = table[table["label"].isin(chosen)]
    rows = []
    for row in sources.to_dict("records"):
        path = _resolve(row.get("audio_path"), base_dir)
        if path is None:
            raise ConfigError(f"augmentation needs audio; utterance {row['utt_id']!r} has no audio_path")
        waveform = None
        for kind in config.kinds:
            for copy in range(int(config.copies)):
                utt_id = f"{row['utt_id']}{AUGMENT_SEPARATOR}{kind}-{copy}"
                target = out_dir / f"{_safe(utt_id)}.wav"
                if not target.exists():
                    if waveform is None:
                        waveform = load_audio(
                            path, start=_span(row.get("start")), end=_span(row.get("end")), target_rate=SAMPLE_RATE
                        )
                    rng = np.random.default_rng(_seed(utt_id))
                    _write_wav(target, render(waveform, SAMPLE_RATE, kind, config, rng), SAMPLE_RATE)
                rows.append({**row, "utt_id": utt_id, "audio_path": str(target), "start": None, "end": None})
    if not rows:
        return table
    return pd.concat([table, pd.DataFrame(rows, columns=table.columns)], ignore_index=True)


def render(samples: np.ndarray, sample_rate: int, kind: str, config: Any, rng: np.random.Generator) -> np.ndarray:
    """One augmented rendition of a mono float waveform."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.size == 0 or not np.any(samples):
        raise AudioError("cannot augment silent or empty audio")
    if kind == "noise":
        return add_noise(samples, float(config.noise_snr_db), rng)
    if kind == "pitch":
        semitones = float(config.pitch_semitones) * (1.0 if rng.random() < 0.5 else -1.0)
        return pitch_shift(samples, sample_rate, semitones)
    raise ConfigError(f"unknown augmentation {kind!r}")


def add_noise(samples: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White noise at ``snr_db`` below the signal's mean power."""
    power = float(np.mean(samples.astype(np.float64) ** 2))
    noise = rng.standard_normal(samples.shape) * np.sqrt(power / (10.0 ** (snr_db / 10.0)))
    return np.clip(samples + noise, -1.0, 1.0).astype(np.float32)


def pitch_shift(samples: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    import librosa

    return np.clip(librosa.effects.pitch_shift(samples, sr=sample_rate, n_steps=semitones), -1.0, 1.0).astype(
        np.float32
    )


def training_ids_with_copies(train_ids: Sequence[str], all_ids: Sequence[str]) -> list[str]:
    """A fold's training ids plus the augmented copies of exactly those utterances."""
    train = set(train_ids)
    copies = [u for u in all_ids if is_augmented(u) and source_of(u) in train]
    return list(train_ids) + copies


def _write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    write_wav_atomic(path, samples, sample_rate, subtype="FLOAT")


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def _safe(utt_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in utt_id)


def _resolve(path: Any, base_dir: str | Path | None) -> str | None:
    if path is None or (isinstance(path, float) and np.isnan(path)):
        return None
    candidate = Path(str(path))
    if not candidate.is_absolute() and base_dir is not None:
        candidate = Path(base_dir) / candidate
    return str(candidate)


def _span(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return float(value)
