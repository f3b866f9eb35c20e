"""The utterance table: one record type for an utterance, a corpus as a table of them.

A corpus is a :class:`pandas.DataFrame` with exactly the columns of :data:`COLUMNS`, saved and
loaded as Parquet. Every reader, the synthetic generator, the feature store and the protocols
speak this table, so a new corpus only has to produce it.

Columns
-------
``utt_id``           unique id of the utterance inside its corpus (str, required)
``corpus``           corpus name (str, required)
``audio_path``       path of the audio (or media) file, absolute or relative to the table (str or None)
``start``, ``end``   seconds inside ``audio_path`` when the utterance is a span of a longer file
``text``             transcript (str or None when the corpus has none)
``label``            emotion label (str or None at inference)
``raw_label``        the label as the corpus wrote it, before any label scheme (str or None)
``score``            a continuous label where the corpus has one (MOSI sentiment, float or NaN)
``speaker``          speaker id, unique across the corpus (str, required)
``session``          recording session (str or None)
``dialogue_id``      conversation id (str or None)
``turn``             0-based position inside the dialogue (int or None)
``split``            official split name where the corpus defines one ("train", "dev", "test")
``video_path``       path of a video file (str or None)
``video_start``, ``video_end``  seconds inside ``video_path`` when the utterance is a span of a longer
                     video (IEMOCAP's videos are whole dialogues; its audio is cut per utterance)
``words``            word/syllable alignment: list of ``{"token", "start", "end"}`` in seconds
                     relative to the utterance start (or None)
``alignment``        where ``words`` came from: "corpus", "asr", "vad-spread", "synthetic" or None
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from emomix.atomic import write_parquet_atomic
from emomix.errors import CorpusFormatError, MissingDataError

COLUMNS: tuple[str, ...] = (
    "utt_id",
    "corpus",
    "audio_path",
    "start",
    "end",
    "text",
    "label",
    "raw_label",
    "score",
    "speaker",
    "session",
    "dialogue_id",
    "turn",
    "split",
    "video_path",
    "video_start",
    "video_end",
    "words",
    "alignment",
)

REQUIRED: tuple[str, ...] = ("utt_id", "corpus", "speaker")

_WORD_TYPE = pa.struct([("token", pa.string()), ("start", pa.float64()), ("end", pa.float64())])

ARROW_SCHEMA = pa.schema(
    [
        ("utt_id", pa.string()),
        ("corpus", pa.string()),
        ("audio_path", pa.string()),
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("text", pa.string()),
        ("label", pa.string()),
        ("raw_label", pa.string()),
        ("score", pa.float64()),
        ("speaker", pa.string()),
        ("session", pa.string()),
        ("dialogue_id", pa.string()),
        ("turn", pa.int64()),
        ("split", pa.string()),
        ("video_path", pa.string()),
        ("video_start", pa.float64()),
        ("video_end", pa.float64()),
        ("words", pa.list_(_WORD_TYPE)),
        ("alignment", pa.string()),
    ]
)


@dataclass
class Word:
    """One aligned token: seconds relative to the utterance start."""

    token: str
    start: float
    end: float


@dataclass
class Utterance:
    """One utterance; a row of the utterance table."""

    utt_id: str
    corpus: str
    speaker: str
    audio_path: str | None = None
    start: float | None = None
    end: float | None = None
    text: str | None = None
    label: str | None = None
    raw_label: str | None = None
    score: float | None = None
    session: str | None = None
    dialogue_id: str | None = None
    turn: int | None = None
    split: str | None = None
    video_path: str | None = None
    video_start: float | None = None
    video_end: float | None = None
    words: list[Word] | None = None
    alignment: str | None = None

    def to_row(self) -> dict[str, Any]:
        """The record as a plain dict in column order (words as a list of dicts)."""
        row = asdict(self)
        return {name: row[name] for name in COLUMNS}


def is_missing(value: Any) -> bool:
    """None, NaN, ``pd.NA`` or ``NaT`` (a cell with no value); a list or dict never is."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:
        return bool(pd.isna(value)) if not isinstance(value, (list, tuple, dict)) else False
    except (TypeError, ValueError):
        return False


def _clean_words(value: Any) -> list[dict[str, Any]] | None:
    if value is None or (not isinstance(value, (list, tuple)) and is_missing(value)):
        return None
    words = []
    for item in list(value):
        if isinstance(item, Word):
            item = asdict(item)
        words.append({"token": str(item["token"]), "start": float(item["start"]), "end": float(item["end"])})
    return words


def make_table(records: Iterable[Utterance | dict[str, Any]]) -> pd.DataFrame:
    """Build a validated utterance table from :class:`Utterance` records or dicts.

    Dict keys outside :data:`COLUMNS` are rejected (a typo must not vanish silently); missing
    optional keys become None.
    """
    rows = []
    for record in records:
        row = record.to_row() if isinstance(record, Utterance) else dict(record)
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise CorpusFormatError(
                "<records>", f"unknown utterance field(s) {sorted(unknown)}; known: {list(COLUMNS)}"
            )
        rows.append({name: row.get(name) for name in COLUMNS})
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return normalise_table(table)


def normalise_table(table: pd.DataFrame) -> pd.DataFrame:
    """Return ``table`` with exactly the utterance columns, in order, with canonical dtypes."""
    # Columns are built in a dict and assembled once: assigning them one by one into a frame costs
    # more than the conversions themselves for the one-row tables of inference.
    count = len(table)

    def values(name: str) -> list[Any]:
        return list(table[name]) if name in table.columns else [None] * count

    columns: dict[str, Any] = {}
    for name in COLUMNS:
        if name in ("start", "end", "score", "video_start", "video_end"):
            column = table[name] if name in table.columns else pd.Series([None] * count, dtype=object)
            columns[name] = pd.to_numeric(column, errors="raise").astype("float64").to_numpy()
        elif name == "turn":
            columns[name] = pd.array([None if is_missing(v) else int(v) for v in values(name)], dtype="Int64")
        elif name == "words":
            columns[name] = pd.Series([_clean_words(v) for v in values(name)], dtype=object)
        else:
            columns[name] = pd.Series([None if is_missing(v) else str(v) for v in values(name)], dtype=object)
    normalised = pd.DataFrame(columns, columns=list(COLUMNS))
    validate_table(normalised)
    return normalised


def validate_table(table: pd.DataFrame) -> None:
    """Check the invariants every consumer relies on; raise :class:`CorpusFormatError` if broken."""
    missing_cols = [c for c in COLUMNS if c not in table.columns]
    if missing_cols:
        raise CorpusFormatError("<table>", f"missing column(s) {missing_cols}")
    for name in REQUIRED:
        bad = table[name].isna()
        if bad.any():
            first = table.index[bad][0]
            raise CorpusFormatError("<table>", f"column {name!r} is empty in row {first}")
    duplicated = table["utt_id"].duplicated()
    if duplicated.any():
        raise CorpusFormatError("<table>", f"duplicate utt_id {table['utt_id'][duplicated].iloc[0]!r}")
    spans = table["start"].notna() & table["end"].notna()
    inverted = spans & (table["end"] <= table["start"])
    if inverted.any():
        row = table[inverted].iloc[0]
        raise CorpusFormatError(
            "<table>", f"utterance {row['utt_id']!r} ends ({row['end']}) before it starts ({row['start']})"
        )
    video_spans = table["video_start"].notna() & table["video_end"].notna()
    inverted = video_spans & (table["video_end"] <= table["video_start"])
    if inverted.any():
        row = table[inverted].iloc[0]
        raise CorpusFormatError("<table>", f"utterance {row['utt_id']!r}: video span ends before it starts")


def save_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the table as Parquet atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = normalise_table(table)
    arrow = pa.Table.from_pandas(table, schema=ARROW_SCHEMA, preserve_index=False)
    return write_parquet_atomic(path, arrow)


def load_table(path: str | Path) -> pd.DataFrame:
    """Read an utterance table written by :func:`save_table` (or any Parquet with its columns)."""
    path = Path(path)
    if not path.exists():
        raise MissingDataError(f"utterance table {path} does not exist")
    try:
        table = pq.read_table(path).to_pandas()
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorpusFormatError(path, f"not a readable Parquet file ({exc})") from exc
    table["words"] = [None if v is None else [dict(w) for w in v] for v in table["words"]]
    return normalise_table(table)


@dataclass
class ReadReport:
    """What a reader skipped and why, and what a label scheme dropped; printed by ``corpus info``."""

    skipped: list[dict[str, str]] = field(default_factory=list)
    dropped_by_label: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def skip(self, item: str, reason: str) -> None:
        """Record an item (utterance id or file) that was not read, with the reason."""
        self.skipped.append({"item": str(item), "reason": reason})

    def skipped_by_reason(self) -> dict[str, int]:
        """Counts of skipped items per reason."""
        counts: dict[str, int] = {}
        for entry in self.skipped:
            counts[entry["reason"]] = counts.get(entry["reason"], 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "skipped": list(self.skipped),
            "dropped_by_label": dict(self.dropped_by_label),
            "notes": list(self.notes),
        }


@dataclass
class Corpus:
    """A read corpus: the utterance table, the scheme its labels follow, and the read report."""

    name: str
    table: pd.DataFrame
    report: ReadReport = field(default_factory=ReadReport)
    default_scheme: str | Mapping[str, Any] | None = None  # a scheme name, YAML path or spec
    root: str | None = None
    scheme: Any = None  # the LabelScheme applied by read_corpus (its classes give the index order)

    def __len__(self) -> int:
        return len(self.table)
