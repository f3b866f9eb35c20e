"""Streaming segmentation of long recordings into utterance-sized pieces.

A model is trained on utterances of a few seconds; a recording of a meeting or a call is an hour
long. :func:`segment_recording` reads such a file block by block (libsndfile via
:mod:`soundfile`), converts each block to 16 kHz mono (the mean of the channels, then soxr's
streaming resampler when the rate differs, which gives exactly the samples of a one-shot
resampling), runs the WebRTC VAD on it frame by frame, and yields :class:`Segment` objects as
soon as each is complete. It is a generator: only the speech region being collected, a little
context and one block are held in memory, never the whole file.

The rule, on the VAD's frames (``frame_ms`` = 30 ms, frame ``i`` covering
``[i·frame_s, (i+1)·frame_s)``, the last partial frame zero-padded, as in
:mod:`emomix.audio.vad`):

1. **Regions.** Consecutive speech frames form a region; a pause shorter than ``min_silence_s``
   does not end it (the region closes once ``min_silence_s`` of non-speech has passed). A frame
   of digital silence (every 16-bit sample within ±``SILENCE_PEAK`` = 4, −78 dBFS) is never
   speech: after a long utterance the WebRTC VAD's hangover can call a second or more of exact
   zeros speech, which would stretch the segment into the silence after it.
2. **Too short.** A region whose speech extent is shorter than ``min_segment_s`` is dropped
   (a click, a cough) and counted in :attr:`SegmentationStats.dropped_short`.
3. **Padding.** The region is widened by ``pad_s`` on both sides, clipped to the file and to the
   end of the previous segment, so segments never overlap.
4. **Too long.** A padded region longer than ``max_segment_s`` is cut into the fewest equal
   pieces no longer than it (the rule of :func:`emomix.audio.chunking.chunk_bounds`), so every
   segment fits what encoders and models were trained on.
5. **Bounded memory.** A region that keeps going (continuous speech, or noise the VAD takes for
   speech) is cut before it holds more than ``max_held_s`` (default 8 × ``max_segment_s``), and
   the next region starts exactly there, without padding and exempt from ``min_segment_s`` (it
   is the rest of the same speech); this bounds the memory whatever the file.

A recording without speech yields nothing; :class:`SegmentationStats` (pass one in, it is filled
while iterating) says so (``silent``) and counts frames, speech, segments, dropped and cut
regions, so the caller can report it. Errors a user can cause raise
:class:`~emomix.errors.AudioError` naming the file: a missing file (the error is also a
:class:`~emomix.errors.MissingDataError`, as :func:`~emomix.audio.io.load_audio` raises), a
folder, an empty or undecodable file, or one that breaks off in the middle. Formats are those of
libsndfile (WAV, FLAC, OGG/Vorbis, AIFF, CAF, …); convert others with ffmpeg.

:func:`segment_waveform` applies the same rule to a waveform already in memory (an upload).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from emomix.audio.chunking import chunk_bounds
from emomix.audio.io import resample, to_mono
from emomix.constants import SAMPLE_RATE
from emomix.errors import AudioError, ConfigError, MissingDataError

DEFAULT_MIN_SILENCE_S = 0.5
DEFAULT_PAD_S = 0.1
DEFAULT_MAX_SEGMENT_S = 8.0
DEFAULT_MIN_SEGMENT_S = 0.3
DEFAULT_BLOCK_S = 2.0
# A frame whose 16-bit samples all lie within ±SILENCE_PEAK is digital silence, never speech.
SILENCE_PEAK = 4
HELD_SEGMENTS = 8
"""A still-open region is cut once it holds this many ``max_segment_s`` (the memory bound)."""


class MissingAudioError(AudioError, MissingDataError):
    """The recording to segment does not exist (both an audio and a missing-data error)."""


@dataclass(frozen=True)
class Segment:
    """One utterance-sized piece of a recording.

    ``start``/``end``: seconds from the start of the file (padding included); ``samples``: the
    16 kHz mono float32 waveform of ``[start, end)``; ``index``: 0, 1, … in file order.
    """

    start: float
    end: float
    samples: np.ndarray
    index: int

    @property
    def duration(self) -> float:
        return self.samples.size / SAMPLE_RATE


@dataclass
class SegmentationStats:
    """What a segmentation saw, filled while its generator runs (final once it is exhausted).

    ``frames``/``speech_frames`` count VAD frames; ``dropped_short`` regions shorter than
    ``min_segment_s``; ``split`` regions cut into several pieces by ``max_segment_s``;
    ``held_cuts`` regions cut at the ``max_held_s`` memory bound.
    """

    path: str = ""
    source_rate: int = 0
    channels: int = 0
    duration_s: float = 0.0
    frame_s: float = 0.0
    frames: int = 0
    speech_frames: int = 0
    segments: int = 0
    segment_s: float = 0.0
    dropped_short: int = 0
    split: int = 0
    held_cuts: int = 0

    @property
    def silent(self) -> bool:
        """True when no segment came out (silence, noise the VAD rejects, or only short clicks)."""
        return self.segments == 0

    @property
    def speech_s(self) -> float:
        return self.speech_frames * self.frame_s


class _SampleBuffer:
    """16 kHz samples addressed by absolute position, keeping only a recent window."""

    def __init__(self) -> None:
        self.data = np.zeros(0, dtype=np.float32)
        self.start = 0  # absolute position of data[0]

    @property
    def end(self) -> int:
        return self.start + self.data.size

    def append(self, samples: np.ndarray) -> None:
        self.data = np.concatenate([self.data, samples]) if self.data.size else np.asarray(samples, dtype=np.float32)

    def get(self, first: int, last: int) -> np.ndarray:
        if first < self.start or last > self.end:
            raise RuntimeError(
                f"samples {first}–{last} are no longer held ({self.start}–{self.end})"
            )  # a bug, not user error
        return self.data[first - self.start : last - self.start].copy()

    def drop_before(self, position: int) -> None:
        if position > self.start:
            cut = min(position, self.end) - self.start
            self.data = self.data[cut:].copy()  # copy: let the old array go
            self.start += cut


class StreamSegmenter:
    """The segmentation rule (module docstring) over 16 kHz mono samples fed in any chunk sizes.

    ``feed(samples)`` and ``finish()`` yield the segments completed so far; the VAD keeps its
    state across chunks, so the result does not depend on how the stream is cut.
    """

    def __init__(
        self,
        min_silence_s: float = DEFAULT_MIN_SILENCE_S,
        pad_s: float = DEFAULT_PAD_S,
        max_segment_s: float = DEFAULT_MAX_SEGMENT_S,
        min_segment_s: float = DEFAULT_MIN_SEGMENT_S,
        aggressiveness: int = 2,
        frame_ms: int = 30,
        max_held_s: float | None = None,
        stats: SegmentationStats | None = None,
    ):
        import webrtcvad

        _check_options(min_silence_s, pad_s, max_segment_s, min_segment_s, aggressiveness, frame_ms, max_held_s)
        rate = SAMPLE_RATE
        self.frame_len = rate * frame_ms // 1000
        self.min_silence = int(math.ceil(min_silence_s * rate / self.frame_len))  # in frames
        self.pad = int(round(pad_s * rate))
        self.max_segment_s = max_segment_s
        self.min_segment = int(round(min_segment_s * rate))
        held = max_held_s if max_held_s is not None else HELD_SEGMENTS * max_segment_s
        self.held = int(round(held * rate))
        self.detector = webrtcvad.Vad(int(aggressiveness))
        self.stats = stats if stats is not None else SegmentationStats()
        self.stats.frame_s = frame_ms / 1000.0
        self.buffer = _SampleBuffer()
        self.vad_pos = 0  # samples consumed by the VAD (a multiple of frame_len until the end)
        self.frame = 0  # index of the next VAD frame
        self.open_start: int | None = None  # first speech frame of the open region
        self.open_end = 0  # frame after the region's last speech frame
        self.boundary = 0  # end sample of the last segment: the next one's padding stops here
        self.cut_frame = -1  # frame at which the last max_held_s cut happened
        self.pending: list[tuple[int, int]] = []  # closed regions (start, end sample) awaiting samples
        self.finished = False
        self.count = 0

    # -- the region rule, one frame at a time --

    def _step(self, is_speech: bool) -> None:
        i = self.frame
        self.frame += 1
        self.stats.frames += 1
        if is_speech:
            self.stats.speech_frames += 1
            if self.open_start is None:
                self.open_start = i
            self.open_end = i + 1
        elif self.open_start is not None and i + 1 - self.open_end >= self.min_silence:
            self._close(self.open_start, self.open_end * self.frame_len, pad_end=True)
            self.open_start = None
            return
        if self.open_start is not None:
            start = max(self.open_start * self.frame_len - self.pad, self.boundary)
            if (i + 2) * self.frame_len - start > self.held:
                # one more frame would pass max_held_s: cut here; speech going on starts a new
                # region at this very sample (no padding, and never dropped as too short)
                self.stats.held_cuts += 1
                self._close(self.open_start, (i + 1) * self.frame_len, pad_end=False)
                self.open_start = None
                self.cut_frame = i + 1

    def _close(self, first_frame: int, end: int, pad_end: bool) -> None:
        speech_start = first_frame * self.frame_len
        continuation = first_frame == self.cut_frame  # the rest of a region cut at max_held_s
        if self.open_end * self.frame_len - speech_start < self.min_segment and not continuation:
            self.stats.dropped_short += 1
            return
        start = max(speech_start - self.pad, self.boundary, 0)
        end = end + self.pad if pad_end else end
        self.boundary = end
        self.pending.append((start, end))

    # -- feeding and emitting --

    def _run_vad(self) -> None:
        count = (self.buffer.end - self.vad_pos) // self.frame_len
        if count <= 0:
            return
        self._classify(_pcm16(self.buffer.get(self.vad_pos, self.vad_pos + count * self.frame_len)), count)
        self.vad_pos += count * self.frame_len

    def _classify(self, pcm: bytes, count: int) -> None:
        """Step through ``count`` frames of 16-bit PCM: speech when the VAD says so and the frame is
        not digital silence. The detector sees every frame, so its state evolves as it would."""
        audible = _audible(pcm, count)
        width = 2 * self.frame_len  # bytes per frame
        for k in range(count):
            said = self.detector.is_speech(pcm[k * width : (k + 1) * width], SAMPLE_RATE)
            self._step(bool(said and audible[k]))

    def _emit(self) -> Iterator[Segment]:
        total = self.buffer.end
        while self.pending and (self.pending[0][1] <= total or self.finished):
            start, end = self.pending.pop(0)
            end = min(end, total)
            bounds = chunk_bounds(end - start, SAMPLE_RATE, max_s=self.max_segment_s, min_s=0.0)
            if len(bounds) > 1:
                self.stats.split += 1
            for first, last in bounds:
                samples = self.buffer.get(start + first, start + last)
                self.stats.segments += 1
                self.stats.segment_s += samples.size / SAMPLE_RATE
                yield Segment((start + first) / SAMPLE_RATE, (start + last) / SAMPLE_RATE, samples, self.count)
                self.count += 1
        self._trim()

    def _trim(self) -> None:
        keep = self.vad_pos - self.pad
        if self.open_start is not None:
            keep = min(keep, max(self.open_start * self.frame_len - self.pad, self.boundary))
        if self.pending:
            keep = min(keep, self.pending[0][0])
        self.buffer.drop_before(max(keep, 0))

    def feed(self, samples: np.ndarray) -> Iterator[Segment]:
        """Add 16 kHz mono samples; yield the segments they complete."""
        if self.finished:
            raise RuntimeError("feed() after finish()")
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"StreamSegmenter takes mono 16 kHz samples, got shape {samples.shape}")
        self.buffer.append(samples)
        self.stats.duration_s = self.buffer.end / SAMPLE_RATE
        self._run_vad()
        yield from self._emit()

    def finish(self) -> Iterator[Segment]:
        """End of the stream: the last partial frame (zero-padded), the open region, the rest."""
        if self.finished:
            return
        leftover = self.buffer.end - self.vad_pos
        if leftover > 0:
            frame = np.zeros(self.frame_len, dtype=np.float32)
            frame[:leftover] = self.buffer.get(self.vad_pos, self.buffer.end)
            self._classify(_pcm16(frame), 1)
            self.vad_pos = self.buffer.end
        if self.open_start is not None:
            self._close(self.open_start, self.open_end * self.frame_len, pad_end=True)
            self.open_start = None
        self.finished = True
        yield from self._emit()


def _audible(pcm: bytes, count: int) -> np.ndarray:
    """Per frame of ``count`` equal frames of 16-bit PCM: does any sample pass ±``SILENCE_PEAK``?"""
    samples = np.frombuffer(pcm, dtype="<i2").reshape(count, -1).astype(np.int32)
    return np.abs(samples).max(axis=1) > SILENCE_PEAK


def _pcm16(frame: np.ndarray) -> bytes:
    """16-bit little-endian PCM bytes of a float frame, rounded as :func:`~emomix.audio.vad.webrtc_vad_mask` does."""
    return np.round(np.clip(frame, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def _check_options(
    min_silence_s: float,
    pad_s: float,
    max_segment_s: float,
    min_segment_s: float,
    aggressiveness: int,
    frame_ms: int,
    max_held_s: float | None,
) -> None:
    if frame_ms not in (10, 20, 30):
        raise ConfigError(f"webrtc VAD frame_ms must be 10, 20 or 30, got {frame_ms!r}")
    if not isinstance(aggressiveness, (int, np.integer)) or not 0 <= aggressiveness <= 3:
        raise ConfigError(f"webrtc VAD aggressiveness must be an integer 0–3, got {aggressiveness!r}")
    for name, value in (("min_silence_s", min_silence_s), ("pad_s", pad_s), ("min_segment_s", min_segment_s)):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"segmentation {name} must be a number of seconds ≥ 0, got {value!r}")
    if not math.isfinite(max_segment_s) or max_segment_s <= 0:
        raise ConfigError(f"segmentation max_segment_s must be positive, got {max_segment_s!r}")
    if min_segment_s > max_segment_s:
        raise ConfigError(
            f"segmentation min_segment_s ({min_segment_s}) must not exceed max_segment_s ({max_segment_s})"
        )
    if max_held_s is not None and not max_held_s >= max_segment_s:
        raise ConfigError(f"segmentation max_held_s ({max_held_s}) must be at least max_segment_s ({max_segment_s})")


def _open_info(path: Path) -> sf._SoundFileInfo:
    if not path.exists():
        raise MissingAudioError(f"{path}: the recording does not exist; check the path")
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: is empty (0 bytes)")
    try:
        info = sf.info(str(path))
    except sf.LibsndfileError as exc:
        raise AudioError(
            f"{path}: cannot be read as audio ({exc}); long recordings are read with libsndfile "
            "(WAV, FLAC, OGG, AIFF, …): convert the file, e.g. ffmpeg -i IN -ac 1 -ar 16000 OUT.flac"
        ) from exc
    if info.frames == 0:
        raise AudioError(f"{path}: holds no audio samples (the header declares 0 frames)")
    return info


def segment_recording(
    path: str | Path,
    *,
    min_silence_s: float = DEFAULT_MIN_SILENCE_S,
    pad_s: float = DEFAULT_PAD_S,
    max_segment_s: float = DEFAULT_MAX_SEGMENT_S,
    min_segment_s: float = DEFAULT_MIN_SEGMENT_S,
    aggressiveness: int = 2,
    frame_ms: int = 30,
    block_s: float = DEFAULT_BLOCK_S,
    max_held_s: float | None = None,
    stats: SegmentationStats | None = None,
) -> Iterator[Segment]:
    """Yield the utterance-sized :class:`Segment` pieces of a long recording (module docstring).

    The file is read ``block_s`` seconds at a time. The options are checked and the file opened
    now (:class:`ConfigError`, :class:`AudioError` naming the file); the reading happens while
    iterating. Pass a :class:`SegmentationStats` to learn, once the generator is exhausted, how
    much speech there was and whether the recording was silent.
    """
    _check_options(min_silence_s, pad_s, max_segment_s, min_segment_s, aggressiveness, frame_ms, max_held_s)
    if not math.isfinite(block_s) or block_s <= 0:
        raise ConfigError(f"segmentation block_s must be positive, got {block_s!r}")
    path = Path(path)
    info = _open_info(path)
    stats = stats if stats is not None else SegmentationStats()
    stats.path, stats.source_rate, stats.channels = str(path), int(info.samplerate), int(info.channels)
    segmenter = StreamSegmenter(
        min_silence_s, pad_s, max_segment_s, min_segment_s, aggressiveness, frame_ms, max_held_s, stats
    )
    return _read_and_segment(path, info.samplerate, max(1, int(round(block_s * info.samplerate))), segmenter)


def _read_and_segment(path: Path, rate: int, block_frames: int, segmenter: StreamSegmenter) -> Iterator[Segment]:
    resampler = None
    if rate != SAMPLE_RATE:
        import soxr

        resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    try:
        handle = sf.SoundFile(str(path))
    except (sf.LibsndfileError, OSError) as exc:
        raise AudioError(f"{path}: cannot be opened ({exc})") from exc
    with handle:
        blocks = handle.blocks(blocksize=block_frames, dtype="float32", always_2d=True)
        while True:
            try:
                block = next(blocks)
            except StopIteration:
                break
            except sf.LibsndfileError as exc:  # only the reading: the segmenter's own errors pass through
                raise AudioError(
                    f"{path}: reading failed after {segmenter.stats.duration_s:.1f} s ({exc}); "
                    "the file is corrupt or truncated"
                ) from exc
            mono = to_mono(block)
            if resampler is not None:
                mono = resampler.resample_chunk(mono)
            yield from segmenter.feed(mono)
    if resampler is not None:
        yield from segmenter.feed(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    yield from segmenter.finish()


def segment_waveform(
    wave: np.ndarray,
    rate: int = SAMPLE_RATE,
    *,
    min_silence_s: float = DEFAULT_MIN_SILENCE_S,
    pad_s: float = DEFAULT_PAD_S,
    max_segment_s: float = DEFAULT_MAX_SEGMENT_S,
    min_segment_s: float = DEFAULT_MIN_SEGMENT_S,
    aggressiveness: int = 2,
    frame_ms: int = 30,
    max_held_s: float | None = None,
    stats: SegmentationStats | None = None,
) -> list[Segment]:
    """The segments of a waveform in memory (mono, or ``samples × channels``), by the same rule."""
    wave = to_mono(np.asarray(wave, dtype=np.float32))
    wave = resample(wave, rate, SAMPLE_RATE)
    stats = stats if stats is not None else SegmentationStats()
    stats.source_rate = int(rate)
    segmenter = StreamSegmenter(
        min_silence_s, pad_s, max_segment_s, min_segment_s, aggressiveness, frame_ms, max_held_s, stats
    )
    return [*segmenter.feed(wave), *segmenter.finish()]
