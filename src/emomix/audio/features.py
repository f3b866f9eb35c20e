"""Hand-crafted frame features on waveforms: MFCC and frame energy (librosa).

Both use the same framing: ``win_ms`` windows every ``hop_ms`` with centred frames, so frame
``t`` is centred at ``t·hop_ms`` and a waveform of ``n`` samples gives ``1 + n // hop`` frames
(100 frames per second with the default 10 ms hop).
"""

from __future__ import annotations

import warnings

import numpy as np

from emomix.constants import SAMPLE_RATE
from emomix.errors import ConfigError


def _framing(rate: int, win_ms: float, hop_ms: float) -> tuple[int, int, int]:
    if win_ms <= 0 or hop_ms <= 0:
        raise ConfigError(f"win_ms and hop_ms must be positive, got {win_ms!r} and {hop_ms!r}")
    win = int(round(rate * win_ms / 1000.0))
    hop = int(round(rate * hop_ms / 1000.0))
    n_fft = 1 << max(0, (win - 1).bit_length())
    return win, hop, n_fft


def num_frames(num_samples: int, rate: int = SAMPLE_RATE, hop_ms: float = 10.0) -> int:
    """Frames :func:`mfcc` and :func:`frame_energy` give for ``num_samples`` (0 for an empty wave)."""
    hop = int(round(rate * hop_ms / 1000.0))
    return 0 if num_samples == 0 else 1 + num_samples // hop


def mfcc(
    wave: np.ndarray,
    rate: int = SAMPLE_RATE,
    n_mfcc: int = 40,
    win_ms: float = 25.0,
    hop_ms: float = 10.0,
    n_mels: int = 40,
    fmin: float = 20.0,
    fmax: float | None = None,
) -> np.ndarray:
    """MFCCs of a mono waveform as a ``T × n_mfcc`` float32 array.

    A ``win_ms`` Hann window (zero-padded to the next power of two), ``n_mels`` mel bands between
    ``fmin`` and ``fmax`` (default: half the rate), log power (dB), DCT-II; ``T = 1 + n // hop``.
    An empty waveform gives a ``0 × n_mfcc`` array.
    """
    import librosa

    if n_mfcc <= 0 or n_mels < n_mfcc:
        raise ConfigError(f"need 0 < n_mfcc ≤ n_mels, got n_mfcc={n_mfcc}, n_mels={n_mels}")
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"mfcc expects a mono 1-D waveform, got shape {wave.shape}")
    if wave.size == 0:
        return np.zeros((0, n_mfcc), dtype=np.float32)
    win, hop, n_fft = _framing(rate, win_ms, hop_ms)
    with warnings.catch_warnings():
        # A wave shorter than one FFT is zero-padded by the centred framing, which is what we want.
        warnings.filterwarnings("ignore", message="n_fft=.* is too large")
        features = librosa.feature.mfcc(
            y=wave,
            sr=rate,
            n_mfcc=n_mfcc,
            n_fft=n_fft,
            win_length=win,
            hop_length=hop,
            n_mels=n_mels,
            fmin=fmin,
            fmax=fmax,
            center=True,
            pad_mode="constant",
        )
    return np.ascontiguousarray(features.T, dtype=np.float32)


def frame_energy(
    wave: np.ndarray, rate: int = SAMPLE_RATE, win_ms: float = 25.0, hop_ms: float = 10.0, floor_db: float = -100.0
) -> np.ndarray:
    """RMS level of each frame in dBFS (``T`` float32, same framing as :func:`mfcc`), floored at ``floor_db``."""
    import librosa

    wave = np.asarray(wave, dtype=np.float32)
    if wave.size == 0:
        return np.zeros(0, dtype=np.float32)
    win, hop, _ = _framing(rate, win_ms, hop_ms)
    rms = librosa.feature.rms(y=wave, frame_length=win, hop_length=hop, center=True, pad_mode="constant")[0]
    with np.errstate(divide="ignore"):
        level = 20.0 * np.log10(rms)
    return np.maximum(level, floor_db).astype(np.float32)
