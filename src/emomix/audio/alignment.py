"""Word timings for time-aligned models (the token–frame bipartite graph).

:func:`word_timings` gives each word of an utterance a ``[start, end]`` in seconds relative to the
utterance start, from the best source available, in this order (``backend="auto"``):

1. ``words`` of the utterance table (a corpus alignment such as EmoDB's syllable files, or the
   synthetic corpus's exact timings); the source is the table's ``alignment`` value, else
   ``"corpus"``;
2. Whisper word time stamps (``faster-whisper`` or ``openai-whisper``) when one is installed *and*
   ``whisper_model`` names a model already on disk (a folder, a ``.pt`` file, or a size name found
   in the local cache). Nothing is ever downloaded: when a model is missing, the reason is
   returned in the note and the next source is used. Source ``"asr"``; the words are the
   recogniser's, which may differ from the transcript;
3. ``"vad-spread"``: the transcript's words spread over the VAD's speech regions in proportion to
   their length in letters — an approximation that keeps word order and pauses. If the VAD finds
   no speech, the words are spread over the whole utterance and the note says so.

An empty or whitespace-only transcript (or none) gives an empty word list, source None, and a
note: there is nothing to align, and a model sees an utterance without text tokens.

:func:`words_to_frame_edges` turns timings into graph edges between tokens and encoder frames.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from emomix.audio.io import resample
from emomix.audio.vad import default_frame_ms, speech_regions, vad_mask
from emomix.constants import SAMPLE_RATE
from emomix.data.schema import Word
from emomix.errors import ConfigError, MissingDataError

ALIGNMENT_BACKENDS = ("auto", "corpus", "whisper", "vad-spread")


class WordTimings(NamedTuple):
    """Result of :func:`word_timings`: the words, where their times came from, and why (a note)."""

    words: list[Word]
    source: str | None
    note: str | None = None


def _field(row: Any, name: str) -> Any:
    value = row.get(name) if isinstance(row, Mapping) else getattr(row, name, None)
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def as_word(item: Word | Mapping[str, Any]) -> Word:
    """A :class:`Word` from a Word or a ``{"token", "start", "end"}`` mapping (a table cell)."""
    if isinstance(item, Word):
        return item
    return Word(token=str(item["token"]), start=float(item["start"]), end=float(item["end"]))


def _table_words(row: Any) -> list[Word] | None:
    words = _field(row, "words")
    if words is None:
        return None
    words = [as_word(item) for item in list(words)]
    return words or None


# ---------------------------------------------------------------------------------------------
# VAD spread (pure)
# ---------------------------------------------------------------------------------------------


def _letters(token: str) -> int:
    return max(1, sum(ch.isalnum() for ch in token))


def spread_words(tokens: Sequence[str], regions: Sequence[tuple[float, float]]) -> list[Word]:
    """Lay ``tokens`` end to end over the speech ``regions``, each as long as its share of letters.

    The regions are treated as one continuous speech timeline; a word that crosses the end of a
    region continues at the start of the next (so its span covers the pause). Punctuation does
    not count as letters; every token gets at least one letter's share.
    """
    regions = [(float(a), float(b)) for a, b in regions if b > a]
    if not tokens:
        return []
    if not regions:
        raise ValueError("spread_words needs at least one region of positive length")
    lengths = np.array([b - a for a, b in regions])
    region_ends = np.cumsum(lengths)
    total = float(region_ends[-1])
    weights = np.array([_letters(token) for token in tokens], dtype=np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(weights) / weights.sum()]) * total

    def to_time(position: float, at_end: bool) -> float:
        # A position on a region boundary is the region's end for a word ending there and the
        # next region's start for a word starting there.
        index = int(np.searchsorted(region_ends, position, side="left" if at_end else "right"))
        index = min(index, len(regions) - 1)
        before = region_ends[index] - lengths[index]
        return regions[index][0] + (position - before)

    return [
        Word(
            token=token,
            start=round(float(to_time(cumulative[i], False)), 6),
            end=round(float(to_time(cumulative[i + 1], True)), 6),
        )
        for i, token in enumerate(tokens)
    ]


def vad_spread_words(
    text: str,
    wave: np.ndarray,
    rate: int = SAMPLE_RATE,
    vad_backend: str = "webrtc",
    min_speech_s: float = 0.15,
    merge_gap_s: float = 0.2,
    **vad_options: Any,
) -> WordTimings:
    """The ``"vad-spread"`` timings of ``text`` over the speech regions of ``wave``.

    Regions are the VAD's runs of speech frames, with pauses of at most ``merge_gap_s`` bridged
    (stops and short gaps inside a phrase) and blips shorter than ``min_speech_s`` dropped (the
    WebRTC VAD often flags its first frames while it adapts to the noise floor).
    """
    tokens = text.split()
    if not tokens:
        return WordTimings([], None, "the transcript is empty: no words to align")
    duration = len(wave) / rate
    if duration <= 0:
        raise MissingDataError("cannot spread words over an empty waveform")
    frame_s = (
        default_frame_ms(vad_backend) / 1000.0 if "frame_ms" not in vad_options else vad_options["frame_ms"] / 1000.0
    )
    mask = vad_mask(wave, backend=vad_backend, rate=rate, **vad_options)
    regions = speech_regions(mask, frame_s, min_speech_s=min_speech_s, merge_gap_s=merge_gap_s)
    regions = [(start, min(end, duration)) for start, end in regions]
    regions = [(start, end) for start, end in regions if end > start]
    note = None
    if not regions:
        regions = [(0.0, duration)]
        note = "the VAD found no speech; words spread over the whole utterance"
    return WordTimings(spread_words(tokens, regions), "vad-spread", note)


# ---------------------------------------------------------------------------------------------
# Whisper (only with a model on disk)
# ---------------------------------------------------------------------------------------------


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@functools.lru_cache(maxsize=2)
def _load_faster_whisper(model: str) -> Any:
    from faster_whisper import WhisperModel

    # local_files_only: a size name resolves only from the local Hugging Face cache, never a download.
    return WhisperModel(model, device="cpu", compute_type="int8", local_files_only=True)


@functools.lru_cache(maxsize=2)
def _load_openai_whisper(model: str) -> Any:
    import whisper

    return whisper.load_model(model, device="cpu")


def _openai_whisper_checkpoint(model: str) -> str | None:
    """The local checkpoint path openai-whisper would use for ``model``, if it is on disk."""
    if Path(model).is_file():
        return model
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper" / f"{model}.pt"
    return str(cache) if cache.is_file() else None


def whisper_words(
    wave: np.ndarray, rate: int, whisper_model: str | None, language: str | None = None
) -> tuple[list[Word] | None, str | None]:
    """Word time stamps from a locally available Whisper model: ``(words, None)`` or ``(None, why not)``."""
    if not whisper_model:
        return None, "no whisper_model given (ASR alignment never downloads a model)"
    audio = resample(np.asarray(wave, dtype=np.float32), rate, SAMPLE_RATE)
    if _installed("faster_whisper"):
        try:
            model = _load_faster_whisper(str(whisper_model))
        except Exception as exc:
            return (
                None,
                f"faster-whisper model {whisper_model!r} is not available locally ({type(exc).__name__}: {exc})",
            )
        segments, _info = model.transcribe(audio, word_timestamps=True, language=language)
        words = [
            Word(w.word.strip(), float(w.start), float(w.end)) for segment in segments for w in (segment.words or [])
        ]
    elif _installed("whisper"):
        checkpoint = _openai_whisper_checkpoint(str(whisper_model))
        if checkpoint is None:
            return None, f"whisper model {whisper_model!r} is not on disk (give a .pt file or a cached size name)"
        model = _load_openai_whisper(checkpoint)
        result = model.transcribe(audio, word_timestamps=True, language=language, fp16=False)
        words = [
            Word(str(w["word"]).strip(), float(w["start"]), float(w["end"]))
            for segment in result.get("segments", [])
            for w in segment.get("words", [])
        ]
    else:
        return None, "neither faster-whisper nor whisper is installed (pip install 'emomix[asr]')"
    words = [word for word in words if word.token]
    if not words:
        return None, f"whisper model {whisper_model!r} recognised no words"
    return words, None


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------


def word_timings(
    utterance_row: Any,
    wave: np.ndarray | None = None,
    rate: int = SAMPLE_RATE,
    backend: str = "auto",
    whisper_model: str | None = None,
    vad_backend: str = "webrtc",
    language: str | None = None,
) -> WordTimings:
    """Word timings of one utterance (a table row, a dict or an :class:`~emomix.data.schema.Utterance`).

    ``backend``: ``"auto"`` (the module's order of sources), ``"corpus"`` (the table's words or
    :class:`MissingDataError`), ``"whisper"`` (ASR or :class:`ConfigError` saying why not) or
    ``"vad-spread"``. ``wave`` is the utterance's waveform at ``rate``; it is needed by every
    source but the table's. Returns :class:`WordTimings` ``(words, source, note)``.
    """
    if backend not in ALIGNMENT_BACKENDS:
        raise ConfigError(f"unknown alignment backend {backend!r}; choose one of {', '.join(ALIGNMENT_BACKENDS)}")
    utt_id = _field(utterance_row, "utt_id") or "<utterance>"
    if backend in ("auto", "corpus"):
        words = _table_words(utterance_row)
        if words is not None:
            return WordTimings(words, _field(utterance_row, "alignment") or "corpus")
        if backend == "corpus":
            raise MissingDataError(
                f"utterance {utt_id!r} has no word alignment in the table; use backend='auto' or 'vad-spread'"
            )
    text = _field(utterance_row, "text")
    if text is None or not str(text).strip():
        return WordTimings([], None, "no transcript" if text is None else "the transcript is empty: no words to align")
    if wave is None:
        raise MissingDataError(f"utterance {utt_id!r}: aligning its words needs its waveform (load it with load_audio)")
    wave = np.asarray(wave, dtype=np.float32)
    notes = []
    if backend in ("auto", "whisper"):
        words, why_not = whisper_words(wave, rate, whisper_model, language)
        if words is not None:
            return WordTimings(words, "asr")
        if backend == "whisper":
            raise ConfigError(f"utterance {utt_id!r}: Whisper alignment is not possible: {why_not}")
        notes.append(f"ASR skipped: {why_not}")
    spread = vad_spread_words(str(text), wave, rate, vad_backend=vad_backend)
    if spread.note:
        notes.append(spread.note)
    return WordTimings(spread.words, spread.source, "; ".join(notes) or None)


def words_to_frame_edges(
    words: Sequence[Word | Mapping[str, Any]], frame_rate: float, num_frames: int, nearest_if_empty: bool = False
) -> np.ndarray:
    """Edges ``2 × E`` (int64) of the token–frame graph: row 0 token index, row 1 frame index.

    Frame ``j`` (centre ``(j + 0.5) / frame_rate`` seconds) is linked to token ``i`` when the centre
    lies inside the token's ``[start, end]``. A word shorter than a frame may cover no centre; with
    ``nearest_if_empty`` it is linked to the frame whose centre is nearest its midpoint instead
    of staying isolated. Edges are sorted by token, then frame.
    """
    if frame_rate <= 0:
        raise ConfigError(f"frame_rate must be positive, got {frame_rate!r}")
    timed = [as_word(word) for word in words]
    if not timed or num_frames <= 0:
        return np.zeros((2, 0), dtype=np.int64)
    starts = np.array([word.start for word in timed])[:, None]
    ends = np.array([word.end for word in timed])[:, None]
    centres = (np.arange(num_frames) + 0.5) / frame_rate
    inside = (centres[None, :] >= starts - 1e-9) & (centres[None, :] <= ends + 1e-9)
    if nearest_if_empty:
        for i in np.flatnonzero(~inside.any(axis=1)):
            middle = (timed[i].start + timed[i].end) / 2.0
            nearest = int(np.clip(np.floor(middle * frame_rate), 0, num_frames - 1))
            inside[i, nearest] = True
    tokens, frames = np.nonzero(inside)
    return np.stack([tokens, frames]).astype(np.int64)


def words_as_dicts(words: Sequence[Word]) -> list[dict[str, Any]]:
    """Words as the ``{"token", "start", "end"}`` dicts the utterance table's ``words`` column holds."""
    return [asdict(as_word(word)) for word in words]
