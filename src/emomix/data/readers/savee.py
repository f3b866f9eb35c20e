"""SAVEE audio: ``SS_Enn.wav`` files (four male speakers, seven emotions), audio only.

The flat layout (all files in one folder, speaker in the name) is what the shared copy holds;
the release's ``AudioData/SS/Enn.wav`` layout (speaker as the folder) is read too. SAVEE's
sentences come from TIMIT prompts that the audio release does not list, so ``text`` is empty.
"""

from __future__ import annotations

import re
from pathlib import Path

from emomix.data.readers._common import absolute, build_corpus, is_hidden
from emomix.data.schema import Corpus, ReadReport, Utterance

CORPUS = "savee"
SPEAKERS = ("DC", "JE", "JK", "KL")
EMOTIONS: dict[str, str] = {
    "a": "anger",
    "d": "disgust",
    "f": "fear",
    "h": "happiness",
    "n": "neutral",
    "sa": "sadness",
    "su": "surprise",
}

_FLAT = re.compile(r"(?P<speaker>[A-Z]{2})_(?P<emotion>[a-z]{1,2})(?P<number>\d\d)\.wav")
_NESTED = re.compile(r"(?P<emotion>[a-z]{1,2})(?P<number>\d\d)\.wav")


def read(root: Path) -> Corpus:
    """Read SAVEE from ``root``; file names that do not follow ``SS_Enn.wav`` are skipped with the reason."""
    root = Path(root)
    report = ReadReport()
    records: list[Utterance] = []
    seen: dict[str, str] = {}
    hidden = 0
    for path in sorted(p for p in root.rglob("*.wav") if p.is_file()):
        if is_hidden(path):
            hidden += 1
            continue
        parsed = _parse_name(path)
        if isinstance(parsed, str):
            report.skip(str(path), parsed)
            continue
        speaker, emotion, number = parsed
        utt_id = f"{speaker}_{emotion}{number}"
        if utt_id in seen:
            # both layouts in one tree would give the same utterance twice
            report.skip(str(path), f"duplicate of utterance {utt_id} ({seen[utt_id]})")
            continue
        seen[utt_id] = str(path)
        label = EMOTIONS[emotion]
        records.append(
            Utterance(
                utt_id=utt_id,
                corpus=CORPUS,
                speaker=f"savee_{speaker}",
                session=f"savee_{speaker}",
                audio_path=absolute(path),
                label=label,
                raw_label=label,
            )
        )
    if hidden:
        report.notes.append(f"ignored {hidden} hidden file(s) (names starting with '.') under {root}")
    report.notes.append("SAVEE ships no transcripts with its audio: text is empty")
    return build_corpus(CORPUS, records, report, root)


def _parse_name(path: Path) -> tuple[str, str, str] | str:
    """``(speaker, emotion code, number)`` of a SAVEE file, or the reason it is not one."""
    flat = _FLAT.fullmatch(path.name)
    if flat is not None:
        speaker, emotion, number = flat["speaker"], flat["emotion"], flat["number"]
    else:
        nested = _NESTED.fullmatch(path.name)
        if nested is None or path.parent.name not in SPEAKERS:
            return "file name is not SS_Enn.wav (nor SS/Enn.wav)"
        speaker, emotion, number = path.parent.name, nested["emotion"], nested["number"]
    if speaker not in SPEAKERS:
        return f"unknown speaker code {speaker!r} (SAVEE has {', '.join(SPEAKERS)})"
    if emotion not in EMOTIONS:
        return f"unknown emotion code {emotion!r} (SAVEE has {', '.join(EMOTIONS)})"
    return speaker, emotion, number
