"""Helpers every corpus reader shares: decoding text files, walking media files, building the corpus.

Corpus releases are old and inconsistent (latin-1 label files, CRLF csv files, macOS ``._``
resource forks beside the real files), so the readers never open text or walk folders themselves:
they go through these functions, which decode the way the releases need and record every file
they pass over in the :class:`~emomix.data.schema.ReadReport`.
"""

from __future__ import annotations

import csv
import difflib
import inspect
import io
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emomix.data.schema import Corpus, ReadReport, Utterance, make_table
from emomix.errors import ConfigError, CorpusFormatError, MissingDataError
from emomix.yamlio import load_yaml_value

# utf-8 first (with or without BOM); cp1252 is what Windows tools wrote for latin text and
# covers latin-1's printable range; latin-1 decodes any byte, so reading never fails on encoding.
ENCODINGS: tuple[str, ...] = ("utf-8-sig", "cp1252", "latin-1")


def decode_bytes(data: bytes, path: str | Path, encodings: Iterable[str] = ENCODINGS) -> tuple[str, str]:
    """Decode ``data`` with the first encoding that fits; return ``(text, encoding)``."""
    for encoding in encodings:
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    raise CorpusFormatError(path, f"cannot decode the file as any of {list(encodings)}")


def read_text(path: str | Path, encodings: Iterable[str] = ENCODINGS) -> str:
    """The whole text of a file, decoded with :func:`decode_bytes`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MissingDataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return decode_bytes(data, path, encodings)[0]


def read_lines(path: str | Path, encodings: Iterable[str] = ENCODINGS) -> list[tuple[int, str]]:
    """``(line number, line)`` pairs (1-based, line endings removed) of a text file."""
    return list(enumerate(read_text(path, encodings).splitlines(), start=1))


def read_csv_rows(path: str | Path, required: Iterable[str] = ()) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Rows of a CSV file as ``(line number, {column: value})`` with the header's columns.

    Quoted fields may span lines; the line number is the one where the record starts, so an
    error message points where a user would look. Columns in ``required`` must be in the header.
    """
    path = Path(path)
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise CorpusFormatError(path, "the file is empty; expected a header line", line=1) from None
    except csv.Error as exc:
        raise CorpusFormatError(path, f"not a readable CSV header ({exc})", line=1) from exc
    missing = [name for name in required if name not in header]
    if missing:
        raise CorpusFormatError(path, f"missing column(s) {missing} in the header; found {header}", line=1)
    rows: list[tuple[int, dict[str, str]]] = []
    start_line = reader.line_num + 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise CorpusFormatError(path, f"not a readable CSV record ({exc})", line=start_line) from exc
        if values and any(v.strip() for v in values):
            if len(values) > len(header):
                raise CorpusFormatError(
                    path, f"{len(values)} fields but the header has {len(header)} columns", line=start_line
                )
            values = values + [""] * (len(header) - len(values))
            rows.append((start_line, dict(zip(header, values))))
        start_line = reader.line_num + 1
    return header, rows


def require_values(row: dict[str, str], columns: Iterable[str], path: str | Path, line: int) -> None:
    """Raise :class:`CorpusFormatError` naming the file and line when a required cell is empty."""
    empty = [name for name in columns if not str(row.get(name, "") or "").strip()]
    if empty:
        raise CorpusFormatError(path, f"no value in column(s) {empty}; every row needs them", line=line)


def parse_int(value: str, column: str, path: str | Path, line: int) -> int:
    """An integer cell (``"3"`` or ``"3.0"``), or :class:`CorpusFormatError` naming file and line."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        raise CorpusFormatError(path, f"column {column!r} should be an integer, got {text!r}", line=line) from None
    if not number.is_integer():
        raise CorpusFormatError(path, f"column {column!r} should be an integer, got {text!r}", line=line)
    return int(number)


def parse_float(value: str, column: str, path: str | Path, line: int) -> float:
    """A float cell, or :class:`CorpusFormatError` naming file and line."""
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        raise CorpusFormatError(path, f"column {column!r} should be a number, got {text!r}", line=line) from None


def is_hidden(path: Path) -> bool:
    """True for dot files such as macOS ``._name`` resource forks, which copy tools leave beside data."""
    return path.name.startswith(".")


@dataclass(frozen=True)
class MatchedFile:
    """A file whose name matched a reader's pattern, with the regex match of its name."""

    path: Path
    match: re.Match[str]


def match_files(
    folder: Path,
    suffix: str,
    pattern: re.Pattern[str],
    report: ReadReport,
    reason: str,
    recursive: bool = False,
) -> list[MatchedFile]:
    """Files under ``folder`` ending in ``suffix`` whose name matches ``pattern``, sorted by path.

    Files with the suffix whose name does not match are recorded in ``report`` with ``reason``
    (a user must see that a file was passed over, not lose it silently); dot files are ignored
    and counted in a note.
    """
    found = folder.rglob(f"*{suffix}") if recursive else folder.glob(f"*{suffix}")
    matched: list[MatchedFile] = []
    hidden = 0
    for path in sorted(p for p in found if p.is_file()):
        if is_hidden(path):
            hidden += 1
            continue
        match = pattern.fullmatch(path.name)
        if match is None:
            report.skip(str(path), reason)
            continue
        matched.append(MatchedFile(path, match))
    if hidden:
        report.notes.append(f"ignored {hidden} hidden file(s) (names starting with '.') under {folder}")
    return matched


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else :class:`MissingDataError` saying what was expected there."""
    if not path.is_dir():
        raise MissingDataError(f"{what}: folder {path} does not exist")
    return path


def absolute(path: Path) -> str:
    """The absolute path string the utterance table stores."""
    return str(path.resolve())


def build_corpus(
    name: str,
    records: list[Utterance],
    report: ReadReport,
    root: Path,
    default_scheme: str | Mapping[str, Any] | None = None,
) -> Corpus:
    """The :class:`Corpus` of ``records`` (raw labels), validated through :func:`make_table`;
    ``default_scheme`` is a scheme name, YAML path or spec (what :func:`read_corpus` applies)."""
    table = make_table(records)
    return Corpus(name=name, table=table, report=report, default_scheme=default_scheme, root=absolute(root))


def reader_options(pairs: Mapping[str, Any] | Iterable[str]) -> dict[str, Any]:
    """``--set key=value`` texts (values read as YAML, else kept as text, so ``{split}.csv``
    stays a string) or a mapping as reader keyword options, dotted keys nested:
    ``columns.Dialogue_ID=Scene_ID`` → ``{"columns": {"Dialogue_ID": "Scene_ID"}}``."""
    if not isinstance(pairs, Mapping):
        parsed: dict[str, Any] = {}
        for text in pairs:
            if "=" not in text:
                raise ConfigError(f"--set expects key=value for a reader option, got {text!r}")
            key, raw = text.split("=", 1)
            parsed[key.strip()] = load_yaml_value(raw)
        pairs = parsed
    options: dict[str, Any] = {}
    for dotted, value in pairs.items():
        keys = str(dotted).split(".")
        node = options
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"reader option {dotted!r}: {key!r} is already set to a value, not a block")
            node = child
        node[keys[-1]] = value
    return options


def check_options(read: Callable[..., Any], options: Mapping[str, Any], reader: str) -> None:
    """:class:`ConfigError` naming an option the reader's ``read`` does not take (with the nearest one)."""
    names = [n for n in inspect.signature(read).parameters if n != "root"]
    unknown = [k for k in options if k not in names]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), names, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(
            f"the {reader} reader has no option {', '.join(hints)}; its options are {', '.join(names) or 'none'}"
        )
