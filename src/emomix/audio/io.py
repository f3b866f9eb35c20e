"""Loading audio: any supported file (or uploaded bytes) to a 16 kHz mono float32 waveform.

WAV, FLAC, OGG, AIFF and the other formats of libsndfile are read with :mod:`soundfile`, which
reads only the frames of the asked span. MP3, AAC/M4A, Opus and the audio track of MP4, MOV,
AVI, MKV and WebM files are decoded with PyAV (FFmpeg), seeking to the span's start. Whatever the
source rate and channel count, the result is the mean of the channels resampled (soxr, the
resampler librosa uses) to ``target_rate``.

Errors a user can cause: a missing file raises :class:`~emomix.errors.MissingDataError`; an
empty file, a corrupt header, a file without an audio stream, an unsupported extension or a
span outside the file raise :class:`~emomix.errors.AudioError` naming the file. Silence-only audio
loads like any other (deciding what to do with it is the VAD's business).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf

from emomix.constants import SAMPLE_RATE
from emomix.errors import AudioError, MissingDataError

TARGET_RATE = SAMPLE_RATE
"""Alias of :data:`emomix.constants.SAMPLE_RATE`, kept for code that imports it from here."""

SOUNDFILE_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".aifc", ".au", ".snd", ".w64", ".rf64", ".caf"}
)
PYAV_EXTENSIONS = frozenset(
    {".mp3", ".m4a", ".aac", ".opus", ".wma", ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".flv"}
)
SUPPORTED_EXTENSIONS = SOUNDFILE_EXTENSIONS | PYAV_EXTENSIONS

SPAN_TOLERANCE_S = 0.1
"""How far a span's end may run past the end of the file before it is an error.

Corpus time stamps are rounded (often to 10 ms) and encoders pad their last frame, so an end a
few milliseconds past the last sample is clipped to the file; anything further points at a wrong
file or wrong times and raises.
"""

SEEK_PREROLL_S = 0.25
"""Audio decoded before a span's start after a seek, and discarded (decoder warm-up)."""

DEFAULT_LOUDNESS_DBFS = -23.0
"""Target of the optional loudness normalisation (the EBU R128 programme level, in dBFS)."""


# ---------------------------------------------------------------------------------------------
# Pure helpers on arrays
# ---------------------------------------------------------------------------------------------


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Mean over channels of a ``samples × channels`` (or 1-D) array, as float32."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise ValueError(f"expected samples × channels, got shape {samples.shape}")
    if samples.shape[1] == 1:
        return np.ascontiguousarray(samples[:, 0])
    return samples.mean(axis=1, dtype=np.float32)


def resample(wave: np.ndarray, orig_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a mono waveform with soxr (high quality), or scipy's polyphase filter without it."""
    wave = np.asarray(wave, dtype=np.float32)
    if orig_rate == target_rate or wave.size == 0:
        return wave
    if orig_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} → {target_rate}")
    try:
        import soxr
    except ImportError:  # soxr comes with librosa, but keep loading possible without it
        from scipy.signal import resample_poly

        common = math.gcd(int(orig_rate), int(target_rate))
        out = resample_poly(wave, int(target_rate) // common, int(orig_rate) // common)
        return out.astype(np.float32)
    return soxr.resample(wave, orig_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def loudness_dbfs(wave: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    """Gated RMS level of a waveform in dBFS (``-inf`` for silence).

    The gating follows ITU-R BS.1770 / EBU R128 without its K-weighting filter: the mean power of
    400 ms blocks (75 % overlap) that are above -70 dBFS and above the ungated mean minus 10 dB,
    so pauses and silence do not drag the level of speech down.
    """
    wave = np.asarray(wave, dtype=np.float64)
    if wave.size == 0:
        return float("-inf")
    block = max(1, int(round(0.4 * rate)))
    hop = max(1, block // 4)
    if wave.size <= block:
        powers = np.array([np.mean(wave**2)])
    else:
        starts = np.arange(0, wave.size - block + 1, hop)
        squared = np.concatenate([[0.0], np.cumsum(wave**2)])
        powers = (squared[starts + block] - squared[starts]) / block
    with np.errstate(divide="ignore"):
        levels = 10.0 * np.log10(powers)
    kept = powers[levels > -70.0]
    if kept.size == 0:
        return float("-inf")
    relative_gate = 10.0 * np.log10(kept.mean()) - 10.0
    with np.errstate(divide="ignore"):
        kept = kept[10.0 * np.log10(kept) > relative_gate]
    return float(10.0 * np.log10(kept.mean()))


def normalise_loudness(
    wave: np.ndarray, rate: int = SAMPLE_RATE, target_dbfs: float = DEFAULT_LOUDNESS_DBFS, peak_limit: float = 0.99
) -> np.ndarray:
    """Scale a waveform so its gated RMS level (:func:`loudness_dbfs`) is ``target_dbfs``.

    The gain is lowered where reaching the target would push a sample past ``peak_limit`` (no
    clipping, so very peaky audio may stay below the target). Silence (every block under
    -70 dBFS) is returned unchanged rather than amplified into noise.
    """
    wave = np.asarray(wave, dtype=np.float32)
    level = loudness_dbfs(wave, rate)
    if not math.isfinite(level):
        return wave
    gain = 10.0 ** ((target_dbfs - level) / 20.0)
    peak = float(np.max(np.abs(wave)))
    if peak * gain > peak_limit:
        gain = peak_limit / peak
    return (wave * gain).astype(np.float32)


def _check_span(name: str, start: float | None, end: float | None) -> None:
    if start is not None and (not math.isfinite(start) or start < 0):
        raise AudioError(f"{name}: span start {start} s is invalid; give a start ≥ 0 seconds")
    if end is not None and not math.isfinite(end):
        raise AudioError(f"{name}: span end {end} s is invalid; give a finite end in seconds")
    if start is not None and end is not None and end <= start:
        raise AudioError(f"{name}: span end {end} s is not after its start {start} s")
    if start is None and end is not None and end <= 0:
        raise AudioError(f"{name}: span end {end} s is not after the file's start")


def _check_span_inside(name: str, start: float | None, end: float | None, duration: float) -> None:
    if start is not None and start >= duration:
        raise AudioError(
            f"{name}: span starts at {start:.3f} s but the file is only {duration:.3f} s long; "
            "check the utterance's start/end times and its audio file"
        )
    if end is not None and end > duration + SPAN_TOLERANCE_S:
        raise AudioError(
            f"{name}: span ends at {end:.3f} s but the file is only {duration:.3f} s long; "
            "check the utterance's start/end times and its audio file"
        )


def _finish(wave: np.ndarray, rate: int, target_rate: int, normalise: bool, target_dbfs: float) -> np.ndarray:
    wave = resample(wave, rate, target_rate)
    if normalise:
        wave = normalise_loudness(wave, target_rate, target_dbfs)
    return np.ascontiguousarray(wave, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Decoders
# ---------------------------------------------------------------------------------------------


# libsndfile's major formats behind SOUNDFILE_EXTENSIONS (its MP3 support is not used: FFmpeg
# decodes MP3 for paths, and uploads must decode exactly like paths).
_SOUNDFILE_FORMATS = frozenset({"WAV", "WAVEX", "FLAC", "OGG", "AIFF", "AU", "W64", "RF64", "CAF"})


class _UnreadableFormat(AudioError):
    """libsndfile does not recognise the content (another decoder may)."""


class _FFmpegFormat(_UnreadableFormat):
    """libsndfile recognises the content as a format FFmpeg decodes for the project (MP3)."""


def _read_soundfile(
    source: str | BinaryIO, name: str, start: float | None, end: float | None
) -> tuple[np.ndarray, int]:
    """Read a span with libsndfile, reading only the frames inside it."""
    try:
        with sf.SoundFile(source) as handle:
            if handle.format not in _SOUNDFILE_FORMATS:
                # e.g. MP3, which load_audio decodes with FFmpeg: an upload must decode the same way.
                raise _FFmpegFormat(f"{name}: {handle.format} is decoded with FFmpeg")
            rate = handle.samplerate
            frames = handle.frames
            if frames <= 0:
                raise AudioError(f"{name}: holds no audio samples (the header declares 0 frames)")
            _check_span_inside(name, start, end, frames / rate)
            first = 0 if start is None else int(round(start * rate))
            last = frames if end is None else min(frames, int(round(end * rate)))
            if first:
                handle.seek(first)
            data = handle.read(max(0, last - first), dtype="float32", always_2d=True)
    except sf.LibsndfileError as exc:
        raise _UnreadableFormat(
            f"{name}: cannot be read as audio ({exc}); the file is corrupt or not in the format its name says"
        ) from exc
    if data.shape[0] == 0:
        raise AudioError(f"{name}: the span {start}–{end} s holds no samples")
    return to_mono(data), rate


def _read_pyav(source: str | BinaryIO, name: str, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with PyAV; seek to ``start`` and stop after ``end``."""
    import av

    errors = av.error.FFmpegError
    try:
        container = av.open(source, mode="r")
    except errors as exc:
        raise AudioError(f"{name}: cannot be decoded ({exc}); the file is corrupt or not a media file") from exc
    with container:
        if not container.streams:
            raise AudioError(f"{name}: holds no media stream; the file is corrupt or truncated")
        if not container.streams.audio:
            raise AudioError(f"{name}: has no audio stream (a video without sound?); give a file with an audio track")
        stream = container.streams.audio[0]
        rate = int(stream.rate or stream.codec_context.sample_rate or 0)
        if rate <= 0:
            raise AudioError(f"{name}: its audio stream declares no sample rate")
        duration = _pyav_stream_duration(container, stream)
        if duration is not None:
            _check_span_inside(name, start, end, duration)
        # Times are relative to the stream's own start (MP3 encoders delay it by their priming),
        # so that a span equals the same slice of the whole file.
        time_base = stream.time_base
        if time_base is None:
            raise AudioError(f"{name}: its audio stream declares no time base; the file is corrupt or truncated")
        origin = float(stream.start_time * time_base) if stream.start_time is not None else 0.0
        try:
            if start and start > SEEK_PREROLL_S:
                # Seek to a key point before ``start`` less a pre-roll (decoders of MP3/AAC need a
                # frame or two of history after a seek); the surplus is trimmed below.
                target = origin + start - SEEK_PREROLL_S
                container.seek(int(target / time_base), stream=stream, backward=True, any_frame=False)
            resampler = av.AudioResampler(format="fltp")
            pieces: list[np.ndarray] = []
            first_sample: int | None = None
            decoded = 0
            for frame in container.decode(stream):
                if first_sample is None:
                    first_sample = int(round((float(frame.time) - origin) * rate)) if frame.time is not None else 0
                for converted in resampler.resample(frame):
                    pieces.append(converted.to_ndarray().astype(np.float32, copy=False))
                    decoded += converted.samples
                if end is not None and first_sample + decoded >= end * rate:
                    break
        except errors as exc:
            raise AudioError(f"{name}: decoding failed ({exc}); the file is corrupt or truncated") from exc
    if not pieces:
        raise AudioError(f"{name}: its audio stream holds no samples")
    channels = max(p.shape[0] for p in pieces)
    data = np.concatenate([p if p.shape[0] == channels else np.repeat(p[:1], channels, 0) for p in pieces], axis=1)
    wave = data.mean(axis=0, dtype=np.float32) if channels > 1 else data[0]
    assert first_sample is not None
    # Positions in samples of the stream, rounded like the soundfile path rounds them; the first
    # frame's time has the container's precision (1 ms in Matroska).
    offset = max(0, (0 if start is None else int(round(start * rate))) - first_sample)
    stop = wave.size if end is None else int(round(end * rate)) - first_sample
    wave = wave[offset:stop]
    if wave.size == 0:
        raise AudioError(f"{name}: the span {start}–{end} s holds no samples (the audio track is shorter)")
    return wave, rate


def _pyav_stream_duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        import av

        return container.duration / av.time_base
    return None


# ---------------------------------------------------------------------------------------------
# Public IO
# ---------------------------------------------------------------------------------------------


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise MissingDataError(f"audio file {path} does not exist; check the corpus root and the table's audio_path")
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: is empty (0 bytes); re-export or drop this recording")
    extension = path.suffix.lower()
    if extension not in SUPPORTED_EXTENSIONS:
        raise AudioError(
            f"{path}: unsupported audio extension {extension or '(none)'!r}; supported: "
            f"{', '.join(sorted(SUPPORTED_EXTENSIONS))} (convert the file, e.g. with ffmpeg)"
        )
    return path


def load_audio(
    path: str | Path,
    start: float | None = None,
    end: float | None = None,
    target_rate: int = SAMPLE_RATE,
    normalise_loudness: bool = False,
    target_dbfs: float = DEFAULT_LOUDNESS_DBFS,
) -> np.ndarray:
    """Load a file (or the span ``start``–``end`` seconds of it) as a mono float32 waveform.

    Channels are averaged, the rate converted to ``target_rate`` (16 kHz by default). With
    ``normalise_loudness`` the waveform is scaled to ``target_dbfs`` of gated RMS level (see
    :func:`normalise_loudness`). A span end up to :data:`SPAN_TOLERANCE_S` past the end of the
    file is clipped to it.

    Raises :class:`MissingDataError` for a missing file and :class:`AudioError` for an empty,
    corrupt or unsupported file, a file without an audio stream, or a span outside the file.
    """
    path = _check_path(path)
    name = str(path)
    _check_span(name, start, end)
    try:
        if path.suffix.lower() not in SOUNDFILE_EXTENSIONS:
            raise _FFmpegFormat(f"{name}: decoded with FFmpeg by its extension")
        wave, rate = _read_soundfile(name, name, start, end)
    except _FFmpegFormat:  # also MP3 data behind a .wav name
        wave, rate = _read_pyav(name, name, start, end)
    return _finish(wave, rate, target_rate, normalise_loudness, target_dbfs)


def decode_audio_bytes(
    data: bytes,
    start: float | None = None,
    end: float | None = None,
    target_rate: int = SAMPLE_RATE,
    normalise_loudness: bool = False,
    target_dbfs: float = DEFAULT_LOUDNESS_DBFS,
    name: str = "<uploaded audio>",
) -> np.ndarray:
    """Decode an in-memory file (an HTTP upload) exactly as :func:`load_audio` decodes a path.

    The format is detected from the content: libsndfile first (WAV, FLAC, OGG, …), then FFmpeg
    (MP3, M4A, WebM, MP4, …). ``name`` is used in error messages.
    """
    if not data:
        raise AudioError(f"{name}: is empty (0 bytes)")
    _check_span(name, start, end)
    try:
        if Path(name).suffix.lower() in PYAV_EXTENSIONS:
            raise _UnreadableFormat(f"{name}: decoded with FFmpeg by its extension")
        wave, rate = _read_soundfile(io.BytesIO(data), name, start, end)
    except _UnreadableFormat as soundfile_error:
        try:
            wave, rate = _read_pyav(io.BytesIO(data), name, start, end)
        except AudioError as pyav_error:
            raise AudioError(
                f"{name}: not a readable audio file (libsndfile: {soundfile_error}; FFmpeg: {pyav_error})"
            ) from pyav_error
    return _finish(wave, rate, target_rate, normalise_loudness, target_dbfs)


def audio_duration(path: str | Path) -> float:
    """Duration of a file's (first) audio stream in seconds, read from its header where possible."""
    path = _check_path(path)
    name = str(path)
    if path.suffix.lower() in SOUNDFILE_EXTENSIONS:
        try:
            info = sf.info(name)
        except sf.LibsndfileError as exc:
            raise AudioError(
                f"{name}: cannot be read as audio ({exc}); the file is corrupt or not in the format its name says"
            ) from exc
        if info.frames <= 0:
            raise AudioError(f"{name}: holds no audio samples (the header declares 0 frames)")
        return info.frames / info.samplerate
    import av

    try:
        container = av.open(name, mode="r")
    except av.error.FFmpegError as exc:
        raise AudioError(f"{name}: cannot be decoded ({exc}); the file is corrupt or not a media file") from exc
    with container:
        if not container.streams.audio:
            raise AudioError(f"{name}: has no audio stream (a video without sound?); give a file with an audio track")
        duration = _pyav_stream_duration(container, container.streams.audio[0])
    if duration is None:  # no duration in the header: decode and count
        wave, rate = _read_pyav(name, name, None, None)
        duration = wave.size / rate
    return float(duration)
