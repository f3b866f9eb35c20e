"""MELD, read from the release's csv files and (when present) its per-utterance mp4 clips.

Layout (``root`` = the ``MELD.Raw`` folder)::

    train_sent_emo.csv  dev_sent_emo.csv  test_sent_emo.csv
    train_splits/dia{D}_utt{U}.mp4
    dev_splits_complete/dia{D}_utt{U}.mp4
    output_repeated_splits_test/dia{D}_utt{U}.mp4

The media folders may also sit one level down (``train/train_splits``), as the release's
per-split archives unpack. The clips are cut per utterance, so ``start``/``end`` stay empty
(the csv's StartTime/EndTime locate the clip in the episode); the mp4 is both the audio and
the video file (its audio track is decoded downstream).

A corpus that is almost MELD reads with two options (a recipe's ``corpus.options``, or
``emomix corpus info meld ROOT --set ...``): ``columns`` maps MELD's column names onto the
file's (``{Dialogue_ID: Scene_ID, Speaker: Speakers}``), and ``pattern`` names the csv files
(``"{split}.csv"``; without ``{split}`` one file holds every utterance, read as split
``train``). A speaker written as a list string (``"['Joey']"``, ``"['Joey', 'Ross']"``) becomes
the names joined by ``" & "``; a dialogue id that is not a number is kept as text.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from pathlib import Path

from emomix.data.readers._common import absolute, build_corpus, parse_int, read_csv_rows, require_values
from emomix.data.schema import Corpus, ReadReport, Utterance
from emomix.errors import ConfigError, CorpusFormatError, MissingDataError

CORPUS = "meld"
SPLITS: dict[str, str] = {
    "train": "train_splits",
    "dev": "dev_splits_complete",
    "test": "output_repeated_splits_test",
}
REQUIRED_COLUMNS = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")
DEFAULT_PATTERN = "{split}_sent_emo.csv"


def read(
    root: Path,
    splits: tuple[str, ...] = ("train", "dev", "test"),
    columns: Mapping[str, str] | None = None,
    pattern: str = DEFAULT_PATTERN,
) -> Corpus:
    """Read MELD from ``root`` (the folder holding ``{split}_sent_emo.csv``).

    ``splits`` chooses which official splits to read. A split whose csv is missing is noted
    (an error if none exists). Without any media folder the corpus is text-only (noted); with
    one, a missing clip skips its utterance with reason "media missing". ``columns`` and
    ``pattern`` read a MELD-like corpus (see the module doc).
    """
    root = Path(root)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise MissingDataError(f"MELD has no split(s) {unknown}; choose among {list(SPLITS)}")
    names = column_map(columns)
    csvs = split_files(root, splits, pattern)
    present = [split for split, path in csvs.items() if path.is_file()]
    if not present:
        raise MissingDataError(
            f"MELD: none of {', '.join(sorted({p.name for p in csvs.values()}))} exists in {root}; "
            "pass the folder that holds the MELD csv files, or name them with the reader option pattern "
            "(e.g. --set pattern={split}.csv)"
        )
    report = ReadReport()
    for split, path in csvs.items():
        if split not in present:
            report.notes.append(f"{path.name} missing in {root}; split {split!r} not read")
    media = {split: _media_folder(root, split) for split in present}
    if all(folder is None for folder in media.values()):
        report.notes.append(
            "no media folders (train_splits/, dev_splits_complete/, output_repeated_splits_test/): text only"
        )
    else:
        for split, folder in media.items():
            if folder is None:
                report.notes.append(f"media folder {SPLITS[split]}/ missing: split {split!r} is text only")
    if names != {c: c for c in REQUIRED_COLUMNS}:
        report.notes.append("columns read as " + ", ".join(f"{k}={v}" for k, v in names.items() if k != v))
    records: list[Utterance] = []
    for split in present:
        records.extend(_read_split(csvs[split], split, media[split], report, names))
    return build_corpus(CORPUS, records, report, root)


def column_map(columns: Mapping[str, str] | None) -> dict[str, str]:
    """MELD's column names → the file's, MELD's own where ``columns`` says nothing."""
    if columns is None:
        columns = {}
    if not isinstance(columns, Mapping):
        raise ConfigError(
            f"MELD reader option columns must map MELD column names to the file's, e.g. "
            f"{{Dialogue_ID: Scene_ID}}; got {columns!r}"
        )
    unknown = [k for k in columns if k not in REQUIRED_COLUMNS]
    if unknown:
        raise ConfigError(
            f"MELD reader option columns: {unknown} are not MELD columns; the keys are "
            f"{', '.join(REQUIRED_COLUMNS)} and the values the names in your files"
        )
    return {name: str(columns.get(name) or name) for name in REQUIRED_COLUMNS}


def split_files(root: Path, splits: tuple[str, ...], pattern: str) -> dict[str, Path]:
    """The csv file of each split: ``pattern`` with ``{split}`` filled in (one file for all when
    the pattern has no ``{split}``: its rows go to the first split)."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise ConfigError(f"MELD reader option pattern must be a file name such as '{{split}}.csv', got {pattern!r}")
    if "{split}" not in pattern:
        return {splits[0]: root / pattern} if splits else {}
    try:
        return {split: root / pattern.format(split=split) for split in splits}
    except (KeyError, IndexError, ValueError):
        raise ConfigError(
            f"MELD reader option pattern may hold only the placeholder {{split}}, got {pattern!r}"
        ) from None


def speaker_name(value: str) -> str:
    """``"Joey"`` → ``Joey``; a list string ``"['Joey', 'Ross']"`` → ``Joey & Ross``."""
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            items = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            items = [part.strip(" '\"") for part in text[1:-1].split(",")]
        if isinstance(items, (list, tuple)):
            names = [str(item).strip() for item in items if str(item).strip()]
            return " & ".join(names)
    return text


def _dialogue_key(value: str, column: str, path: Path, line: int) -> int | str:
    text = value.strip()
    if re.fullmatch(r"-?\d+(\.0+)?", text):
        return parse_int(text, column, path, line)
    return text


def _media_folder(root: Path, split: str) -> Path | None:
    for candidate in (root / SPLITS[split], root / split / SPLITS[split]):
        if candidate.is_dir():
            return candidate
    return None


def _read_split(
    path: Path, split: str, media: Path | None, report: ReadReport, names: Mapping[str, str] | None = None
) -> list[Utterance]:
    names = dict(names or {c: c for c in REQUIRED_COLUMNS})
    required = tuple(names[c] for c in REQUIRED_COLUMNS)
    _, rows = read_csv_rows(path, required=required)
    records = []
    seen: dict[str, int] = {}
    for line, row in rows:
        require_values(row, required, path, line)
        dialogue = _dialogue_key(row[names["Dialogue_ID"]], names["Dialogue_ID"], path, line)
        turn = parse_int(row[names["Utterance_ID"]], names["Utterance_ID"], path, line)
        utt_id = f"{split}_dia{dialogue}_utt{turn}"
        if utt_id in seen:
            raise CorpusFormatError(
                path,
                f"{names['Dialogue_ID']} {dialogue} / {names['Utterance_ID']} {turn} already "
                f"given on line {seen[utt_id]}",
                line=line,
            )
        seen[utt_id] = line
        media_path = None
        if media is not None:
            clip = media / f"dia{dialogue}_utt{turn}.mp4"
            if not clip.is_file():
                report.skip(utt_id, "media missing")
                continue
            media_path = absolute(clip)
        label = row[names["Emotion"]].strip().lower()
        records.append(
            Utterance(
                utt_id=utt_id,
                corpus=CORPUS,
                speaker=speaker_name(row[names["Speaker"]]),
                text=row[names["Utterance"]].strip(),
                label=label,
                raw_label=label,
                dialogue_id=f"{split}_{dialogue}",
                turn=turn,
                split=split,
                audio_path=media_path,
                video_path=media_path,
            )
        )
    return records
