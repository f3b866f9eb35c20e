"""CMU-MOSI in the MMSA-FET layout: ``label.csv`` plus ``Raw/<video_id>/<clip_id>.mp4``.

``label.csv`` columns used: video_id, clip_id, text, label (sentiment in [-3, 3]), mode
(train/valid/test); others (label_T/A/V, annotation) are ignored. Each video is one speaker's
monologue, so the video is both the speaker and the dialogue, and clips are its turns.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from emomix.data.readers._common import absolute, build_corpus, parse_float, parse_int, read_csv_rows, require_values
from emomix.data.schema import Corpus, ReadReport, Utterance
from emomix.errors import CorpusFormatError, MissingDataError

CORPUS = "mosi"
REQUIRED_COLUMNS = ("video_id", "clip_id", "text", "label", "mode")
MODES = {"train": "train", "valid": "dev", "dev": "dev", "test": "test"}


def sentiment_label(score: float) -> str:
    """The raw label of a sentiment score: positive above 0, negative below, neutral at 0."""
    if score > 0:
        return "positive"
    if score < 0:
        return "negative"
    return "neutral"


def read(root: Path) -> Corpus:
    """Read CMU-MOSI from ``root`` (the folder holding ``label.csv`` and ``Raw/``).

    Without ``Raw/`` the corpus is text-only (noted); with it, a missing clip skips its utterance
    with reason "media missing".
    """
    root = Path(root)
    path = root / "label.csv"
    if not path.is_file():
        raise MissingDataError(f"MOSI: {path} does not exist; pass the MMSA-FET folder that holds label.csv and Raw/")
    raw_dir = root / "Raw"
    report = ReadReport()
    if not raw_dir.is_dir():
        report.notes.append(f"no media folder {raw_dir}: text only")
    _, rows = read_csv_rows(path, required=REQUIRED_COLUMNS)
    parsed = []
    seen: dict[str, int] = {}
    for line, row in rows:
        require_values(row, REQUIRED_COLUMNS, path, line)
        video = row["video_id"].strip()
        clip = row["clip_id"].strip()
        utt_id = f"{video}_{clip}"
        if utt_id in seen:
            raise CorpusFormatError(path, f"clip {utt_id!r} already given on line {seen[utt_id]}", line=line)
        seen[utt_id] = line
        mode = row["mode"].strip().lower()
        if mode not in MODES:
            raise CorpusFormatError(path, f"mode {row['mode']!r} is not one of train, valid, test", line=line)
        score = parse_float(row["label"], "label", path, line)
        order = parse_int(clip, "clip_id", path, line) if clip.lstrip("-").isdigit() else None
        parsed.append((video, clip, order, utt_id, row["text"].strip(), score, MODES[mode]))
    # clips are numbered within their video; the turn is the clip's rank there (0-based)
    by_video: dict[str, list[tuple]] = defaultdict(list)
    for item in parsed:
        by_video[item[0]].append(item)
    turns: dict[str, int] = {}
    for clips in by_video.values():
        # numeric clip ids sort as numbers (2 before 10); any other id after them, by name
        clips.sort(key=lambda p: (p[2] is None, p[2] if p[2] is not None else 0, p[1]))
        turns.update({p[3]: rank for rank, p in enumerate(clips)})
    records = []
    for video, clip, _, utt_id, text, score, split in parsed:
        media_path = None
        if raw_dir.is_dir():
            media = raw_dir / video / f"{clip}.mp4"
            if not media.is_file():
                report.skip(utt_id, "media missing")
                continue
            media_path = absolute(media)
        label = sentiment_label(score)
        records.append(
            Utterance(
                utt_id=utt_id,
                corpus=CORPUS,
                speaker=video,
                text=text,
                label=label,
                raw_label=label,
                score=score,
                dialogue_id=video,
                turn=turns[utt_id],
                split=split,
                audio_path=media_path,
                video_path=media_path,
            )
        )
    return build_corpus(CORPUS, records, report, root)
