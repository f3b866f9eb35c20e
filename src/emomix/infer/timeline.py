"""Emotion over time in a long recording: segment it as it streams, predict every segment.

:func:`predict_timeline` reads the file with :func:`emomix.audio.segment.segment_recording`
(block by block; only the open speech region is held), collects ``batch_size`` segments, predicts
them with :meth:`Predictor.predict_many` and keeps only the small per-segment results, so memory
stays bounded whatever the file's length. :func:`plot_timeline` draws the result.

Transcripts: a recording rarely comes with per-segment text, so ``text`` may be

* None — each segment is transcribed by the predictor's local speech recogniser if it has one,
  otherwise predicted audio-only (the predictor's own rule; its note is in the result);
* a list of timed entries ``(start, end, text)`` (or dicts with those keys, e.g. from a subtitle
  file) — each segment gets the words of the entries whose middle falls inside it;
* a function ``(start, end) -> str | None``;
* one string — the same transcript for every segment (said in the result's notes).

The result is plain JSON: ``segments`` (start, end, label, probabilities, aux, and transcript,
notes or an error where they apply), ``summary`` (segments, failed, the seconds predicted and
failed, per class the share of the predicted time and the duration-weighted mean probability, the
dominant class), ``segmentation`` (what the segmenter saw: the VAD's speech seconds, the seconds
cut into segments, ...) and ``notes`` shared by every segment. :func:`timeline_json` writes it
indented, for a file a person may open.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emomix.constants import SAMPLE_RATE
from emomix.errors import ConfigError


def predict_timeline(
    predictor: Any,
    path: str | Path,
    text: Any = None,
    speaker: str | None = None,
    batch_size: int = 16,
    progress: bool = False,
    **segmentation: Any,
) -> dict[str, Any]:
    """Segment ``path`` as it streams and predict every speech segment (see the module doc).

    ``segmentation``: options of :func:`~emomix.audio.segment.segment_recording`
    (``min_silence_s``, ``pad_s``, ``max_segment_s``, ``min_segment_s``, ``aggressiveness``,
    ``block_s``...). Raises the segmenter's errors for a missing or unreadable file.
    """
    import soundfile as sf
    from tqdm.auto import tqdm

    from emomix.audio.segment import SegmentationStats, segment_recording

    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    transcript_of, shared_text_note = _transcript_source(text)
    started = time.perf_counter()
    stats = SegmentationStats()
    stream = segment_recording(path, stats=stats, **segmentation)  # checks the options and opens the file now
    total = float(sf.info(str(path)).duration)
    segments: list[dict[str, Any]] = []
    pending: list[Any] = []
    bar = tqdm(
        total=round(total, 1),
        unit="s",
        desc=f"timeline {Path(path).name}",
        disable=not progress,
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]",
    )

    def flush() -> None:
        items = [
            {"audio": s.samples, "sample_rate": SAMPLE_RATE, "text": transcript_of(s.start, s.end), "speaker": speaker}
            for s in pending
        ]
        for segment, result in zip(pending, predictor.predict_many(items, batch_size=len(items))):
            segments.append(segment_result(segment, result))
        bar.update(round(pending[-1].end - bar.n, 1))
        pending.clear()  # the samples go; only the small results stay

    try:
        for segment in stream:
            pending.append(segment)
            if len(pending) >= batch_size:
                flush()
        if pending:
            flush()
    finally:
        bar.close()
    notes = _shared_notes(segments)
    if shared_text_note:
        notes.insert(0, shared_text_note)
    if stats.silent:
        notes.append("no speech found: the recording is silent or the voice activity detector rejected it all")
    return {
        "input": str(path),
        "model": predictor.info()["name"],
        "classes": list(predictor.classes),
        "duration_s": round(float(stats.duration_s or total), 3),
        "segments": segments,
        "summary": summarise(segments, predictor.classes),
        "segmentation": {
            "vad_speech_s": round(stats.speech_s, 3),
            "segments_s": round(stats.segment_s, 3),
            "segments": stats.segments,
            "dropped_short": stats.dropped_short,
            "split": stats.split,
            "held_cuts": stats.held_cuts,
            "source_rate": stats.source_rate,
            "channels": stats.channels,
        },
        "notes": notes,
        "wall_s": round(time.perf_counter() - started, 3),
    }


def timeline_json(result: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
    """A timeline result (or a list of them) as indented JSON: one key per line, not 13 KB on one."""
    return json.dumps(result if isinstance(result, Mapping) else list(result), indent=1, ensure_ascii=False) + "\n"


def segment_result(segment: Any, result: Mapping[str, Any]) -> dict[str, Any]:
    """One segment's row: its span and the prediction (or the error) for it."""
    row: dict[str, Any] = {
        "index": int(segment.index),
        "start": round(float(segment.start), 3),
        "end": round(float(segment.end), 3),
    }
    if "error" in result:
        row.update(label=None, error=result["error"], error_type=result.get("error_type"))
        return row
    row.update(label=result["label"], probabilities=result["probabilities"], aux=result["aux"])
    if result.get("transcript") is not None:
        row.update(transcript=result["transcript"], transcript_source=result["transcript_source"])
    row["notes"] = list(result.get("notes") or [])
    return row


def summarise(segments: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    """Per class: the share of predicted speech time and the duration-weighted mean probability.

    ``predicted_s`` is the time covered by the segments that got a prediction (padding and short
    pauses included), ``failed_s`` that of the segments that failed; together they make the
    segmentation's ``segments_s``. The segmentation's ``vad_speech_s`` is a different measure:
    the frames the voice activity detector marked as speech (no padding or pauses, but counting
    regions dropped as too short)."""
    done = [s for s in segments if s.get("label") is not None]
    durations = np.array([s["end"] - s["start"] for s in done], dtype=np.float64)
    total = float(durations.sum())
    failed_s = float(sum(s["end"] - s["start"] for s in segments if s.get("label") is None))
    shares = {c: 0.0 for c in classes}
    mean = {c: 0.0 for c in classes}
    if total > 0:
        for segment, weight in zip(done, durations):
            shares[segment["label"]] += weight / total
            for c in classes:
                mean[c] += weight / total * float(segment["probabilities"][c])
    counts = {c: sum(1 for s in done if s["label"] == c) for c in classes}
    return {
        "segments": len(segments),
        "failed": len(segments) - len(done),
        "predicted_s": round(total, 3),
        "failed_s": round(failed_s, 3),
        "shares": {c: round(float(v), 6) for c, v in shares.items()},
        "counts": counts,
        "mean_probabilities": {c: round(float(v), 6) for c, v in mean.items()},
        "dominant": max(classes, key=lambda c: shares[c]) if total > 0 else None,
    }


def plot_timeline(result: Mapping[str, Any], png_path: str | Path) -> Path:
    """Draw a timeline result: a band coloured by each segment's label over the probability of
    every class per segment, against time (minutes beyond ten minutes). Returns the PNG path."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    classes = list(result["classes"])
    segments = [s for s in result["segments"] if s.get("label") is not None]
    duration = max(
        float(result.get("duration_s") or 0.0), max((s["end"] for s in result["segments"]), default=0.0), 1e-3
    )
    scale, unit = (60.0, "min") if duration > 600 else (1.0, "s")
    colours = matplotlib.colormaps["tab10"]
    colour = {c: colours(i % 10) for i, c in enumerate(classes)}
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    band, lines = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 3]})
    for segment in segments:
        band.broken_barh(
            [(segment["start"] / scale, (segment["end"] - segment["start"]) / scale)],
            (0, 1),
            facecolors=colour[segment["label"]],
        )
    for segment in result["segments"]:
        if segment.get("label") is None:
            band.broken_barh(
                [(segment["start"] / scale, (segment["end"] - segment["start"]) / scale)],
                (0, 1),
                facecolors="none",
                edgecolors="red",
                hatch="//",
            )
    band.set_yticks([])
    band.set_xlim(0, duration / scale)
    band.set_title(
        f"{Path(str(result.get('input', ''))).name} — {result.get('model', '')}: "
        f"{len(segments)} segment(s), dominant {result.get('summary', {}).get('dominant')}"
    )
    band.legend(
        handles=[Patch(facecolor=colour[c], label=c) for c in classes],
        loc="upper left",
        ncol=len(classes),
        fontsize="small",
        bbox_to_anchor=(0, -0.05),
        frameon=False,
    )
    for c in classes:
        xs, ys = [], []
        for segment in segments:
            xs += [segment["start"] / scale, segment["end"] / scale, np.nan]
            ys += [segment["probabilities"][c]] * 2 + [np.nan]
        lines.plot(xs, ys, color=colour[c], linewidth=1.5, label=c)
    lines.set_ylim(0, 1)
    lines.set_ylabel("probability")
    lines.set_xlabel(f"time ({unit})")
    lines.grid(alpha=0.3)
    path = Path(png_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", format="png")
    return path


# ---------------------------------------------------------------------------------------------
# Plain helpers
# ---------------------------------------------------------------------------------------------


def _transcript_source(text: Any) -> tuple[Callable[[float, float], str | None], str | None]:
    """A function (start, end) → transcript for a segment, and a note when one text serves all."""
    if text is None:
        return (lambda start, end: None), None
    if isinstance(text, str):
        if not text.strip():
            raise ConfigError("the transcript is empty; pass text=None to predict without one")
        return (lambda start, end: text), "one transcript was given for the whole recording: every segment reads it"
    if callable(text):
        return (lambda start, end: _clean(text(start, end))), None
    if isinstance(text, Iterable):
        entries = [_entry(e) for e in text]
        return (lambda start, end: _words_inside(entries, start, end)), None
    raise ConfigError(
        f"text must be None, a string, timed entries (start, end, text) or a function, got {type(text).__name__}"
    )


def _entry(entry: Any) -> tuple[float, float, str]:
    try:
        if isinstance(entry, Mapping):
            return float(entry["start"]), float(entry["end"]), str(entry["text"])
        start, end, words = entry
        return float(start), float(end), str(words)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"a timed transcript entry must be (start, end, text) or a dict with those keys, got {entry!r}"
        ) from exc


def _words_inside(entries: Sequence[tuple[float, float, str]], start: float, end: float) -> str | None:
    words = [t for s, e, t in entries if start <= (s + e) / 2.0 < end and t.strip()]
    return " ".join(words) if words else None


def _clean(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _shared_notes(segments: list[dict[str, Any]]) -> list[str]:
    """Notes every predicted segment carries move to the result; the segments keep the others."""
    done = [s for s in segments if "notes" in s]
    if not done:
        return []
    shared = [n for n in done[0]["notes"] if all(n in s["notes"] for s in done[1:])]
    for segment in done:
        segment["notes"] = [n for n in segment["notes"] if n not in shared]
    return shared
