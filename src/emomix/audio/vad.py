"""Voice activity detection: which frames of a waveform hold speech.

Two backends give a boolean mask with one value per fixed-length frame (frame ``i`` covers
``[i·frame_s, (i+1)·frame_s)``; the last, partial frame is zero-padded so the mask covers every
sample):

- ``webrtc``: the WebRTC GMM detector (``webrtcvad-wheels``), 10/20/30 ms frames, aggressiveness
  0 (keeps most) to 3 (keeps least). Fast, no model; fooled by steady noise and music.
- ``silero``: the Silero neural VAD shipped inside the ``silero-vad`` package (no download),
  scoring 32 ms windows and smoothing them into speech segments; the segments are then drawn
  onto frames of ``frame_ms``.

Helpers turn masks into time regions, map a mask onto any encoder's frame rate, and implement the
project's documented fallback for audio in which the VAD finds no speech at all: *use every
frame*, and report that it happened so a run can count it.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from emomix.audio.io import resample
from emomix.constants import SAMPLE_RATE
from emomix.errors import ConfigError

VAD_BACKENDS = ("webrtc", "silero")
DEFAULT_FRAME_MS = {"webrtc": 30, "silero": 32}
WEBRTC_RATES = (8000, 16000, 32000, 48000)
SILENCE_DBFS = -60.0
"""Level under which :func:`is_silence` calls a waveform silent (16-bit dither sits near -90)."""


def default_frame_ms(backend: str) -> int:
    """Frame length in ms of a backend's mask when ``frame_ms`` is not given."""
    _check_backend(backend)
    return DEFAULT_FRAME_MS[backend]


def _check_backend(backend: str) -> None:
    if backend not in VAD_BACKENDS:
        raise ConfigError(f"unknown VAD backend {backend!r}; choose one of {', '.join(VAD_BACKENDS)}")


def _mono(wave: np.ndarray) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"VAD expects a mono 1-D waveform, got shape {wave.shape} (load it with load_audio)")
    return wave


def _frame_count(num_samples: int, frame_len: int) -> int:
    return int(math.ceil(num_samples / frame_len)) if num_samples else 0


def webrtc_vad_mask(
    wave: np.ndarray, rate: int = SAMPLE_RATE, frame_ms: int = 30, aggressiveness: int = 2
) -> np.ndarray:
    """Speech mask of ``wave`` from the WebRTC VAD, one bool per ``frame_ms`` frame.

    ``frame_ms`` must be 10, 20 or 30 and ``aggressiveness`` 0–3 (:class:`ConfigError` otherwise).
    Rates the detector does not take (it takes 8, 16, 32 and 48 kHz) are resampled to 16 kHz
    first; the frames keep their length in time.
    """
    import webrtcvad

    if frame_ms not in (10, 20, 30):
        raise ConfigError(f"webrtc VAD frame_ms must be 10, 20 or 30, got {frame_ms!r}")
    if not isinstance(aggressiveness, (int, np.integer)) or not 0 <= aggressiveness <= 3:
        raise ConfigError(f"webrtc VAD aggressiveness must be an integer 0–3, got {aggressiveness!r}")
    wave = _mono(wave)
    if rate not in WEBRTC_RATES:
        wave = resample(wave, rate, SAMPLE_RATE)
        rate = SAMPLE_RATE
    frame_len = rate * frame_ms // 1000
    count = _frame_count(wave.size, frame_len)
    pcm = np.zeros(count * frame_len, dtype="<i2")
    pcm[: wave.size] = np.round(np.clip(wave, -1.0, 1.0) * 32767.0).astype("<i2")
    detector = webrtcvad.Vad(int(aggressiveness))
    frames = pcm.reshape(count, frame_len)
    return np.array([detector.is_speech(frame.tobytes(), rate) for frame in frames], dtype=bool)


@functools.lru_cache(maxsize=1)
def _silero() -> tuple[Any, Any]:
    """The bundled Silero model (ONNX, run by onnxruntime) and its ``get_speech_timestamps``, loaded once."""
    import torch

    # Importing silero_vad calls torch.set_num_threads(1) for the whole process; keep the
    # caller's setting so encoders running next are not slowed down.
    threads = torch.get_num_threads()
    try:
        from silero_vad import get_speech_timestamps, load_silero_vad

        # The ONNX build: ~20× faster than TorchScript on CPU and independent of torch threads.
        model = load_silero_vad(onnx=True)
    finally:
        torch.set_num_threads(threads)
    return model, get_speech_timestamps


def silero_speech_segments(
    wave: np.ndarray,
    rate: int = SAMPLE_RATE,
    threshold: float = 0.5,
    min_speech_ms: int = 250,
    min_silence_ms: int = 100,
    speech_pad_ms: int = 30,
) -> list[tuple[float, float]]:
    """Speech segments ``(start_s, end_s)`` found by the bundled Silero VAD model.

    ``threshold`` is the speech probability that opens a segment (it closes 0.15 below);
    segments shorter than ``min_speech_ms`` are dropped, pauses shorter than ``min_silence_ms``
    do not end one, and each is widened by ``speech_pad_ms`` (Silero's own defaults).
    """
    import torch

    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"silero VAD threshold must be between 0 and 1, got {threshold!r}")
    wave = _mono(wave)
    if rate not in (8000, 16000):
        wave = resample(wave, rate, SAMPLE_RATE)
        rate = SAMPLE_RATE
    if wave.size == 0:
        return []
    model, get_speech_timestamps = _silero()
    threads = torch.get_num_threads()
    try:
        with torch.no_grad():
            stamps = get_speech_timestamps(
                torch.from_numpy(np.ascontiguousarray(wave)),
                model,
                threshold=threshold,
                sampling_rate=rate,
                min_speech_duration_ms=min_speech_ms,
                min_silence_duration_ms=min_silence_ms,
                speech_pad_ms=speech_pad_ms,
                return_seconds=False,
            )
    finally:
        torch.set_num_threads(threads)
    return [(stamp["start"] / rate, stamp["end"] / rate) for stamp in stamps]


def silero_vad_mask(
    wave: np.ndarray, rate: int = SAMPLE_RATE, frame_ms: int = 32, threshold: float = 0.5, **options: Any
) -> np.ndarray:
    """Speech mask of ``wave`` from the Silero VAD, one bool per ``frame_ms`` frame.

    A frame is speech when its centre lies inside a segment of :func:`silero_speech_segments`
    (``options`` are passed on to it).
    """
    if frame_ms <= 0:
        raise ConfigError(f"silero VAD frame_ms must be positive, got {frame_ms!r}")
    wave = _mono(wave)
    segments = silero_speech_segments(wave, rate, threshold=threshold, **options)
    frame_s = frame_ms / 1000.0
    count = _frame_count(wave.size, int(round(rate * frame_s)))
    return segments_to_mask(segments, frame_s, count)


def vad_mask(
    wave: np.ndarray, backend: str = "webrtc", rate: int = SAMPLE_RATE, frame_ms: int | None = None, **options: Any
) -> np.ndarray:
    """Speech mask from the named backend (``"webrtc"`` or ``"silero"``).

    ``frame_ms`` defaults to the backend's (:data:`DEFAULT_FRAME_MS`: 30 and 32 ms); ``options``
    go to :func:`webrtc_vad_mask` (``aggressiveness``) or :func:`silero_vad_mask`
    (``threshold``, ``min_speech_ms``, …).
    """
    _check_backend(backend)
    frame_ms = DEFAULT_FRAME_MS[backend] if frame_ms is None else frame_ms
    if backend == "webrtc":
        unknown = set(options) - {"aggressiveness"}
        if unknown:
            raise ConfigError(f"unknown webrtc VAD option(s) {sorted(unknown)}; known: aggressiveness")
        return webrtc_vad_mask(wave, rate, frame_ms=frame_ms, **options)
    unknown = set(options) - {"threshold", "min_speech_ms", "min_silence_ms", "speech_pad_ms"}
    if unknown:
        raise ConfigError(
            f"unknown silero VAD option(s) {sorted(unknown)}; "
            "known: threshold, min_speech_ms, min_silence_ms, speech_pad_ms"
        )
    return silero_vad_mask(wave, rate, frame_ms=frame_ms, **options)


def segments_to_mask(segments: list[tuple[float, float]], frame_s: float, num_frames: int) -> np.ndarray:
    """Mask of ``num_frames`` frames of ``frame_s`` seconds, True where a frame's centre is in a segment."""
    centres = (np.arange(num_frames) + 0.5) * frame_s
    mask = np.zeros(num_frames, dtype=bool)
    for start, end in segments:
        mask |= (centres >= start) & (centres < end)
    return mask


def speech_regions(
    mask: np.ndarray, frame_s: float, min_speech_s: float = 0.0, merge_gap_s: float = 0.0
) -> list[tuple[float, float]]:
    """Runs of True frames as ``(start_s, end_s)`` regions.

    Regions separated by a pause of at most ``merge_gap_s`` are merged first; then regions
    shorter than ``min_speech_s`` are dropped.
    """
    mask = np.asarray(mask, dtype=bool)
    if frame_s <= 0:
        raise ConfigError(f"frame_s must be positive, got {frame_s!r}")
    if mask.size == 0 or not mask.any():
        return []
    padded = np.concatenate([[False], mask, [False]])
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = changes[0::2], changes[1::2]
    regions: list[list[float]] = []
    for start, end in zip(starts, ends):
        start_s, end_s = start * frame_s, end * frame_s
        if regions and start_s - regions[-1][1] <= merge_gap_s + 1e-9:
            regions[-1][1] = end_s
        else:
            regions.append([start_s, end_s])
    return [(start, end) for start, end in regions if end - start >= min_speech_s - 1e-9]


def map_mask_to_frames(
    mask: np.ndarray, mask_frame_s: float, target_frame_s: float, num_target_frames: int
) -> np.ndarray:
    """Resample a VAD mask onto another frame grid (e.g. 30 ms VAD frames onto 20 ms WavLM frames).

    Target frame ``j`` is speech when the mask frame covering its centre ``(j + 0.5)·target_frame_s``
    is speech. Centres past the end of the mask (an encoder that pads its last frame) take the
    mask's last value; an empty mask maps to all False.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask_frame_s <= 0 or target_frame_s <= 0:
        raise ConfigError(f"frame lengths must be positive, got {mask_frame_s!r} and {target_frame_s!r}")
    if num_target_frames <= 0:
        return np.zeros(0, dtype=bool)
    if mask.size == 0:
        return np.zeros(num_target_frames, dtype=bool)
    centres = (np.arange(num_target_frames) + 0.5) * target_frame_s
    index = np.minimum(np.floor(centres / mask_frame_s + 1e-9).astype(np.int64), mask.size - 1)
    return mask[index]


def is_silence(wave: np.ndarray, rate: int = SAMPLE_RATE, threshold_dbfs: float = SILENCE_DBFS) -> bool:
    """True when no 25 ms frame of ``wave`` is louder than ``threshold_dbfs`` RMS (or it is empty)."""
    wave = np.asarray(wave, dtype=np.float64)
    if wave.size == 0:
        return True
    frame_len = max(1, int(round(0.025 * rate)))
    count = _frame_count(wave.size, frame_len)
    padded = np.zeros(count * frame_len)
    padded[: wave.size] = wave
    power = (padded.reshape(count, frame_len) ** 2).mean(axis=1)
    return bool(power.max() <= 10.0 ** (threshold_dbfs / 10.0))


def speech_mask_or_all(mask: np.ndarray) -> tuple[np.ndarray, bool]:
    """The documented fallback: if the VAD kept no frame, keep every frame.

    Returns ``(mask, fell_back)``; ``fell_back`` is True when the all-True mask replaced an
    all-False one, so the caller can count such utterances in its report. An empty mask stays
    empty (and is not a fallback: there is nothing to keep).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.size and not mask.any():
        return np.ones_like(mask), True
    return mask, False
