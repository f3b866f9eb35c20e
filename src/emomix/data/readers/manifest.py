"""Any corpus as a manifest: one row per utterance with the utterance table's own columns.

``root`` is a ``manifest.csv``, ``manifest.jsonl`` or ``manifest.parquet`` file, or a folder
holding exactly one of them. Columns are those of :data:`emomix.data.schema.COLUMNS`; ``utt_id``
and ``speaker`` are required. A column the table does not know is an error (a misspelt
``speeker`` must not vanish) unless its name starts with ``x_`` (kept out of the table, noted).
Relative ``audio_path``/``video_path`` are resolved against the manifest's folder; in CSV,
``words`` is a JSON string. A ``scheme.yaml`` beside the manifest becomes the corpus's default
label scheme (the synthetic corpus writes one); without a ``name`` it is named
``<corpus>-<number of classes>`` like the built-in schemes (``emodb-7``). The corpus is named
by the manifest's ``corpus`` column, else its folder (or, for a file named other than
``manifest.*``, the file's stem).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from emomix.data.readers._common import absolute, build_corpus, read_csv_rows, read_text
from emomix.data.schema import COLUMNS, REQUIRED, Corpus, ReadReport, Utterance, Word
from emomix.errors import CorpusFormatError, MissingDataError, yaml_problem
from emomix.yamlio import load_yaml

FORMATS = (".csv", ".jsonl", ".parquet")
EXTRA_PREFIX = "x_"
SCHEME_FILE = "scheme.yaml"
_MANIFEST_REQUIRED = tuple(c for c in REQUIRED if c != "corpus")  # corpus falls back to the folder name
_FLOATS = ("start", "end", "score")
_MEDIA = ("audio_path", "video_path")


def find_manifest(root: Path) -> Path:
    """The manifest file ``root`` names: the file itself, or the one ``manifest.*`` in a folder."""
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() not in FORMATS:
            raise CorpusFormatError(root, f"a manifest must be one of {', '.join(FORMATS)}")
        return root
    if not root.is_dir():
        raise MissingDataError(f"manifest {root} does not exist")
    found = [root / f"manifest{suffix}" for suffix in FORMATS if (root / f"manifest{suffix}").is_file()]
    if not found:
        raise MissingDataError(f"no manifest.csv, manifest.jsonl or manifest.parquet in {root}")
    if len(found) > 1:
        raise CorpusFormatError(
            root, f"holds {len(found)} manifests ({', '.join(p.name for p in found)}); pass the file to read"
        )
    return found[0]


def read(root: Path, check_audio: bool = True) -> Corpus:
    """Read the manifest at ``root`` (file or folder).

    ``check_audio=True`` skips, with reason "audio missing" (or "video missing"), rows whose media
    file does not exist; ``False`` keeps them (text-only use, or media mounted later).
    """
    path = find_manifest(Path(root))
    folder = path.parent
    report = ReadReport()
    rows = list(_rows(path))
    columns: set[str] = set()
    for where, row in rows:
        _check_columns(path, where, row)
        columns.update(row)
    if not rows:
        raise CorpusFormatError(path, "the manifest holds no utterances")
    extras = sorted(c for c in columns if c.startswith(EXTRA_PREFIX))
    if extras:
        report.notes.append(f"extra column(s) {extras} ignored (not part of the utterance table)")
    fallback_name = (path.stem if not path.stem.startswith("manifest") else folder.name) or "manifest"
    records: list[Utterance] = []
    seen: dict[str, str] = {}
    for where, row in rows:
        record = _record(path, folder, where, row, fallback_name)
        if record.utt_id in seen:
            raise CorpusFormatError(
                path, f"utt_id {record.utt_id!r} already used {seen[record.utt_id]}", line=where.line
            )
        seen[record.utt_id] = where.text
        missing_media = [
            c for c in _MEDIA if check_audio and getattr(record, c) and not Path(getattr(record, c)).exists()
        ]
        if missing_media:
            report.skip(record.utt_id, "audio missing" if "audio_path" in missing_media else "video missing")
            continue
        records.append(record)
    names = sorted({r.corpus for r in records})
    name = names[0] if len(names) == 1 else fallback_name
    scheme = folder / SCHEME_FILE
    default = _named_scheme(scheme, name) if scheme.is_file() else None
    return build_corpus(name, records, report, path, default_scheme=default)


def _named_scheme(path: Path, corpus: str) -> dict[str, Any]:
    """The ``scheme.yaml`` beside a manifest as a scheme spec with a name (its own, else
    ``<corpus>-<classes>``), so reports do not call it "scheme" after the file."""
    import yaml

    try:
        spec = load_yaml(read_text(path))
    except yaml.YAMLError as exc:
        raise CorpusFormatError(path, f"not valid YAML ({yaml_problem(exc)})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("classes"), list):
        raise CorpusFormatError(path, "a label scheme must hold a mapping with 'classes' (a list) and 'map'")
    spec = dict(spec)
    spec.setdefault("name", f"{corpus}-{len(spec['classes'])}")
    spec.setdefault("corpus", corpus)
    return spec


class _Where:
    """Where a row sits in its file: a line (csv, jsonl) or a row number (parquet)."""

    def __init__(self, line: int | None = None, row: int | None = None):
        self.line = line
        self.row = row

    @property
    def text(self) -> str:
        return f"on line {self.line}" if self.line is not None else f"in row {self.row}"

    def error(self, path: Path, message: str) -> CorpusFormatError:
        if self.line is None and self.row:
            message = f"row {self.row}: {message}"
        return CorpusFormatError(path, message, line=self.line)


def _rows(path: Path) -> Iterable[tuple[_Where, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        header, rows = read_csv_rows(path)
        _check_columns(path, _Where(line=1), dict.fromkeys(header))
        missing = [c for c in _MANIFEST_REQUIRED if c not in header]
        if missing:
            raise CorpusFormatError(path, f"missing required column(s) {missing}; the header has {header}", line=1)
        for line, row in rows:
            yield _Where(line=line), {k: (v if v.strip() != "" else None) for k, v in row.items()}
    elif suffix == ".jsonl":
        for number, text in enumerate(read_text(path).splitlines(), start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise CorpusFormatError(path, f"not valid JSON ({exc.msg})", line=number) from None
            if not isinstance(row, dict):
                raise CorpusFormatError(path, "each line must be a JSON object", line=number)
            yield _Where(line=number), row
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise CorpusFormatError(path, f"not a readable Parquet file ({exc})") from exc
        _check_columns(path, _Where(row=0), dict.fromkeys(table.column_names))
        missing = [c for c in _MANIFEST_REQUIRED if c not in table.column_names]
        if missing:
            raise CorpusFormatError(path, f"missing required column(s) {missing}; the file has {table.column_names}")
        for index, row in enumerate(table.to_pylist(), start=1):
            yield _Where(row=index), row


def _check_columns(path: Path, where: _Where, row: dict[str, Any]) -> None:
    unknown = sorted(c for c in row if c not in COLUMNS and not c.startswith(EXTRA_PREFIX))
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, COLUMNS, n=1)
            if close:
                hints.append(f"{close[0]!r} for {name!r}")
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise where.error(
            path,
            f"unknown column(s) {unknown}{hint}; known columns are {list(COLUMNS)}, "
            f"and extra columns must start with {EXTRA_PREFIX!r}",
        )


def _empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _record(path: Path, folder: Path, where: _Where, row: dict[str, Any], fallback_name: str) -> Utterance:
    values: dict[str, Any] = {c: (None if _empty(row.get(c)) else row.get(c)) for c in COLUMNS}
    for name in _MANIFEST_REQUIRED:
        if values[name] is None:
            raise where.error(path, f"no value in required column {name!r}")
    for name in ("utt_id", "corpus", "speaker", "session", "dialogue_id", "split", "text", "alignment"):
        if values[name] is not None:
            values[name] = str(values[name]).strip() if name != "text" else str(values[name])
    values["corpus"] = values["corpus"] or fallback_name
    for name in _FLOATS:
        if values[name] is not None:
            try:
                values[name] = float(values[name])
            except (TypeError, ValueError):
                raise where.error(path, f"column {name!r} should be a number, got {values[name]!r}") from None
    if values["turn"] is not None:
        try:
            turn = float(values["turn"])
        except (TypeError, ValueError):
            turn = math.nan
        if not turn.is_integer():
            raise where.error(path, f"column 'turn' should be an integer, got {values['turn']!r}")
        values["turn"] = int(turn)
    for name in ("label", "raw_label"):
        if values[name] is not None:
            values[name] = str(values[name]).strip().lower()
    values["raw_label"] = values["raw_label"] or values["label"]
    for name in _MEDIA:
        if values[name] is not None:
            media = Path(str(values[name]).strip()).expanduser()
            values[name] = absolute(media if media.is_absolute() else folder / media)
    values["words"] = _words(path, where, values["words"])
    return Utterance(**values)


def _words(path: Path, where: _Where, value: Any) -> list[Word] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise where.error(path, f"column 'words' is not a JSON list ({exc.msg})") from None
    if not isinstance(value, (list, tuple)):
        raise where.error(path, "column 'words' must be a list of {token, start, end}")
    words = []
    for item in value:
        if not isinstance(item, dict) or not {"token", "start", "end"} <= set(item):
            raise where.error(path, f"each entry of 'words' needs token, start and end; got {item!r}")
        try:
            words.append(Word(token=str(item["token"]), start=float(item["start"]), end=float(item["end"])))
        except (TypeError, ValueError):
            raise where.error(path, f"word times must be numbers; got {item!r}") from None
    return words
