"""RAVDESS audio: ``Actor_XX/MM-VV-EE-II-SS-RR-AA.wav``, everything in the seven name fields.

MM modality (03 audio-only), VV vocal channel (01 speech, 02 song), EE emotion, II intensity
(01 normal, 02 strong), SS statement (01 "Kids are talking by the door", 02 "Dogs are sitting
by the door"), RR repetition, AA actor (odd male, even female). The transcript is the statement.
"""

from __future__ import annotations

import re
from pathlib import Path

from emomix.data.readers._common import absolute, build_corpus, match_files
from emomix.data.schema import Corpus, ReadReport, Utterance

CORPUS = "ravdess"
EMOTIONS: dict[str, str] = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
STATEMENTS: dict[str, str] = {
    "01": "Kids are talking by the door",
    "02": "Dogs are sitting by the door",
}

_NAME = re.compile(
    r"(?P<modality>\d\d)-(?P<channel>\d\d)-(?P<emotion>\d\d)-(?P<intensity>\d\d)-"
    r"(?P<statement>\d\d)-(?P<repetition>\d\d)-(?P<actor>\d\d)\.wav"
)


def read(root: Path, include_song: bool = False) -> Corpus:
    """Read RAVDESS from ``root`` (the folder holding ``Actor_01`` .. ``Actor_24``, searched recursively).

    Song files (vocal channel 02) are skipped with the reason unless ``include_song=True``; names
    that do not follow the seven-field pattern, or hold unknown codes, are skipped with the reason.
    """
    root = Path(root)
    report = ReadReport()
    records: list[Utterance] = []
    seen: dict[str, str] = {}
    matched = match_files(root, ".wav", _NAME, report, "file name is not MM-VV-EE-II-SS-RR-AA.wav", recursive=True)
    for found in matched:
        fields = found.match
        if fields["modality"] != "03":
            report.skip(str(found.path), f"modality {fields['modality']} is not 03 (audio-only)")
            continue
        if fields["channel"] == "02" and not include_song:
            report.skip(str(found.path), "song (vocal channel 02); pass include_song=True to read songs")
            continue
        if fields["channel"] not in ("01", "02"):
            report.skip(str(found.path), f"unknown vocal channel {fields['channel']}")
            continue
        if fields["emotion"] not in EMOTIONS:
            report.skip(str(found.path), f"unknown emotion code {fields['emotion']}")
            continue
        if fields["statement"] not in STATEMENTS:
            report.skip(str(found.path), f"unknown statement code {fields['statement']}")
            continue
        utt_id = found.path.stem
        if utt_id in seen:
            report.skip(str(found.path), f"duplicate of {seen[utt_id]}")
            continue
        seen[utt_id] = str(found.path)
        label = EMOTIONS[fields["emotion"]]
        speaker = f"ravdess_{fields['actor']}"
        records.append(
            Utterance(
                utt_id=utt_id,
                corpus=CORPUS,
                speaker=speaker,
                session=speaker,
                audio_path=absolute(found.path),
                text=STATEMENTS[fields["statement"]],
                label=label,
                raw_label=label,
            )
        )
    return build_corpus(CORPUS, records, report, root)
