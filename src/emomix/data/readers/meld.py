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
"""

from __future__ import annotations

from pathlib import Path

from emomix.data.readers._common import absolute, build_corpus, parse_int, read_csv_rows, require_values
from emomix.data.schema import Corpus, ReadReport, Utterance
from emomix.errors import CorpusFormatError, MissingDataError

CORPUS = "meld"
SPLITS: dict[str, str] = {
    "train": "train_splits",
    "dev": "dev_splits_complete",
    "test": "output_repeated_splits_test",
}
REQUIRED_COLUMNS = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")


def read(root: Path, splits: tuple[str, ...] = ("train", "dev", "test")) -> Corpus:
    """Read MELD from ``root`` (the folder holding ``{split}_sent_emo.csv``).

    ``splits`` chooses which official splits to read. A split whose csv is missing is noted
    (an error if none exists). Without any media folder the corpus is text-only (noted); with
    one, a missing clip skips its utterance with reason "media missing".
    """
    root = Path(root)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise MissingDataError(f"MELD has no split(s) {unknown}; choose among {list(SPLITS)}")
    csvs = {split: root / f"{split}_sent_emo.csv" for split in splits}
    present = [split for split, path in csvs.items() if path.is_file()]
    if not present:
        raise MissingDataError(
            f"MELD: none of {', '.join(p.name for p in csvs.values())} exists in {root}; "
            "pass the folder that holds the MELD csv files"
        )
    report = ReadReport()
    for split in splits:
        if split not in present:
            report.notes.append(f"{csvs[split].name} missing in {root}; split {split!r} not read")
    media = {split: _media_folder(root, split) for split in present}
    if all(folder is None for folder in media.values()):
        report.notes.append("no media folders (train_splits/, dev_splits_complete/, output_repeated_splits_test/): text only")
    else:
        for split, folder in media.items():
            if folder is None:
                report.notes.append(f"media folder {SPLITS[split]}/ missing: split {split!r} is text only")
    records: list[Utterance] = []
    for split in present:
        records.extend(_read_split(csvs[split], split, media[split], report))
    return build_corpus(CORPUS, records, report, root)


def _media_folder(root: Path, split: str) -> Path | None:
    for candidate in (root / SPLITS[split], root / split / SPLITS[split]):
        if candidate.is_dir():
            return candidate
    return None


def _read_split(path: Path, split: str, media: Path | None, report: ReadReport) -> list[Utterance]:
    _, rows = read_csv_rows(path, required=REQUIRED_COLUMNS)
    records = []
    seen: dict[str, int] = {}
    for line, row in rows:
        require_values(row, REQUIRED_COLUMNS, path, line)
        dialogue = parse_int(row["Dialogue_ID"], "Dialogue_ID", path, line)
        turn = parse_int(row["Utterance_ID"], "Utterance_ID", path, line)
        utt_id = f"{split}_dia{dialogue}_utt{turn}"
        if utt_id in seen:
            raise CorpusFormatError(path, f"Dialogue_ID {dialogue} / Utterance_ID {turn} already given on line {seen[utt_id]}", line=line)
        seen[utt_id] = line
        media_path = None
        if media is not None:
            clip = media / f"dia{dialogue}_utt{turn}.mp4"
            if not clip.is_file():
                report.skip(utt_id, "media missing")
                continue
            media_path = absolute(clip)
        label = row["Emotion"].strip().lower()
        records.append(Utterance(
            utt_id=utt_id, corpus=CORPUS, speaker=row["Speaker"].strip(), text=row["Utterance"].strip(),
            label=label, raw_label=label, dialogue_id=f"{split}_{dialogue}", turn=turn, split=split,
            audio_path=media_path, video_path=media_path,
        ))
    return records
