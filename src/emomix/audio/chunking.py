"""Cutting waveforms to the lengths models were trained on.

:func:`chunk_waveform` splits a long utterance into 2–3 s pieces (the segment-level recipes);
:func:`pad_or_cut` gives every utterance one fixed length (MPAF-Net's 8 s).

The chunking rule: an utterance of ``n`` samples longer than ``max_s`` is cut into
``k = ceil(n / max_len)`` consecutive pieces of equal length (they differ by at most one
sample). This ``k`` is the fewest pieces that respect ``max_s``, so the pieces are as long as
possible; it also gives pieces of at least ``min_s`` whenever any split into ``min_s``–``max_s``
pieces exists (that is, when ``n ≥ k·min_len``). Between ``max_s`` and ``2·min_s`` no such split
exists (3.5 s cannot be two pieces of 2–3 s), and the two halves are shorter than ``min_s``:
``max_s`` is the hard limit, because encoders and models were trained on pieces no longer than it.
Utterances of at most ``max_s`` stay whole.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from emomix.constants import SAMPLE_RATE
from emomix.errors import ConfigError


def chunk_bounds(
    num_samples: int, rate: int = SAMPLE_RATE, max_s: float = 3.0, min_s: float = 2.0
) -> list[tuple[int, int]]:
    """Sample bounds ``(start, end)`` of the pieces :func:`chunk_waveform` cuts (the module's rule)."""
    if max_s <= 0 or min_s < 0 or min_s > max_s:
        raise ConfigError(f"chunk lengths need 0 ≤ min_s ≤ max_s and max_s > 0, got min_s={min_s}, max_s={max_s}")
    max_len = max(1, int(round(max_s * rate)))
    if num_samples <= max_len:
        return [(0, num_samples)]
    count = math.ceil(num_samples / max_len)
    edges = np.linspace(0, num_samples, count + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def chunk_waveform(
    wave: np.ndarray, rate: int = SAMPLE_RATE, max_s: float = 3.0, min_s: float = 2.0
) -> list[np.ndarray]:
    """Cut ``wave`` into consecutive equal pieces no longer than ``max_s`` (see the module's rule).

    Pieces are views of ``wave``; concatenated they give it back. An utterance of at most
    ``max_s`` (also an empty one) is returned whole, as one piece.
    """
    wave = np.asarray(wave)
    return [wave[start:end] for start, end in chunk_bounds(wave.shape[0], rate, max_s, min_s)]


def pad_or_cut(wave: np.ndarray, length_s: float = 8.0, rate: int = SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """Give ``wave`` exactly ``length_s`` seconds: keep its beginning, or pad zeros at its end.

    Returns ``(wave, valid_samples)``, where ``valid_samples`` counts the original samples kept
    (so a model can mask the padding).
    """
    if length_s <= 0:
        raise ConfigError(f"length_s must be positive, got {length_s!r}")
    wave = np.asarray(wave)
    length = int(round(length_s * rate))
    valid = min(wave.shape[0], length)
    out = np.zeros((length, *wave.shape[1:]), dtype=wave.dtype if wave.dtype.kind == "f" else np.float32)
    out[:valid] = wave[:valid]
    return out, valid
