"""Counts that describe a corpus: per label, speaker, session and split, plus what was dropped."""

from __future__ import annotations

from typing import Any

import pandas as pd

from emomix.data.schema import Corpus


def _counts(series: pd.Series) -> dict[str, int]:
    values = series.dropna()
    return {str(k): int(v) for k, v in values.value_counts().sort_index().items()}


def scheme_name(corpus: Corpus) -> str | None:
    """The name of the label scheme the corpus's labels follow (None for raw labels)."""
    scheme = getattr(corpus, "scheme", None)
    if scheme is not None:
        return str(scheme.name)
    default = corpus.default_scheme
    if not isinstance(default, str):
        return None  # none, or a scheme spec that read_corpus did not apply: the labels are raw
    return default


def corpus_summary(corpus: Corpus) -> dict[str, Any]:
    """A JSON-serialisable description of a read corpus."""
    table = corpus.table
    modalities = {
        "audio": int(table["audio_path"].notna().sum()),
        "text": int(table["text"].notna().sum()),
        "video": int(table["video_path"].notna().sum()),
        "words": int(table["words"].notna().sum()),
    }
    return {
        "corpus": corpus.name,
        "root": corpus.root,
        "scheme": scheme_name(corpus),
        "utterances": int(len(table)),
        "speakers": int(table["speaker"].nunique()),
        "sessions": int(table["session"].nunique()),
        "dialogues": int(table["dialogue_id"].nunique()),
        "labels": _counts(table["label"]),
        "by_speaker": _counts(table["speaker"]),
        "by_session": _counts(table["session"]),
        "by_split": _counts(table["split"]),
        "with_modality": modalities,
        "dropped_by_label": dict(corpus.report.dropped_by_label),
        "skipped_by_reason": corpus.report.skipped_by_reason(),
        "skipped_examples": corpus.report.skipped[:10],
        "notes": list(corpus.report.notes),
    }


def _block(title: str, counts: dict[str, int], limit: int = 40) -> list[str]:
    if not counts:
        return []
    lines = [f"{title}:"]
    items = list(counts.items())
    for key, value in items[:limit]:
        lines.append(f"  {key:<28s} {value:>7d}")
    if len(items) > limit:
        lines.append(f"  … and {len(items) - limit} more ({sum(v for _, v in items[limit:])} utterances)")
    return lines


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as the plain text that ``emomix corpus info`` prints."""
    lines = [
        f"corpus {summary['corpus']}  scheme {summary['scheme'] or 'raw labels'}",
        f"{summary['utterances']} utterances, {summary['speakers']} speakers, {summary['sessions']} sessions, "
        f"{summary['dialogues']} dialogues, {len(summary['labels'])} labels",
        "with " + ", ".join(f"{k} {v}" for k, v in summary["with_modality"].items()),
    ]
    lines += _block("labels", summary["labels"])
    lines += _block("splits", summary["by_split"])
    lines += _block("sessions", summary["by_session"])
    lines += _block("speakers", summary["by_speaker"], limit=20)
    dropped = summary["dropped_by_label"]
    lines += (
        _block(f"dropped by the label scheme ({sum(dropped.values())})", dropped)
        if dropped
        else ["dropped by the label scheme: none"]
    )
    skipped = summary["skipped_by_reason"]
    lines += (
        _block(f"skipped by the reader ({sum(skipped.values())})", skipped)
        if skipped
        else ["skipped by the reader: none"]
    )
    for note in summary["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)
