"""IEMOCAP, read from the full release's own layout (``IEMOCAP_full_release/Session1..5``).

Per session::

    SessionN/dialog/EmoEvaluation/<dialog>.txt       labels: "[start - end]<TAB>utt<TAB>emo<TAB>[V, A, D]"
    SessionN/dialog/transcriptions/<dialog>.txt      text:   "utt [start-end]: words"
    SessionN/dialog/avi/DivX/<dialog>.avi            video of the whole dialog
    SessionN/sentences/wav/<dialog>/<utt>.wav        audio, already cut per utterance
    SessionN/sentences/ForcedAlignment/<dialog>/<utt>.wdseg   word alignment (100 frames/s)

The label file is the list of utterances; transcripts, audio, alignment and video are attached
to it. The label-file times locate the utterance inside the dialog, not inside its own wav, so
they are not written to ``start``/``end``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from emomix.data.readers._common import absolute, build_corpus, is_hidden, read_lines
from emomix.data.schema import Corpus, ReadReport, Utterance, Word
from emomix.errors import CorpusFormatError, MissingDataError

CORPUS = "iemocap"
SESSIONS = tuple(f"Session{i}" for i in range(1, 6))
FRAMES_PER_SECOND = 100.0

_LABEL_LINE = re.compile(
    r"\[\s*(?P<start>\d+(?:\.\d+)?)\s*-\s*(?P<end>\d+(?:\.\d+)?)\s*\]\s+"
    r"(?P<utt>Ses\d\d[FM]_\S+_[FM]\d+)\s+(?P<emo>[A-Za-z]+)\s+"
    r"\[\s*(?P<v>[-\d.]+)\s*,\s*(?P<a>[-\d.]+)\s*,\s*(?P<d>[-\d.]+)\s*\]\s*"
)
_TRANSCRIPT_LINE = re.compile(r"(?P<utt>\S+)\s+\[[^\]]*\]:\s?(?P<text>.*)")
_UTT_ID = re.compile(r"(?P<session>Ses\d\d)[FM]_.+_(?P<gender>[FM])\d+")
_VARIANT = re.compile(r"\(\d+\)$")
# lines in EmoEvaluation files that carry no utterance label
_IGNORED_PREFIXES = ("%", "C-", "A-")


def read(root: Path, require_audio: bool = True) -> Corpus:
    """Read IEMOCAP from ``root`` (the ``IEMOCAP_full_release`` folder holding ``Session1..5``).

    ``require_audio=False`` keeps utterances whose wav is missing (text-only use); otherwise they
    are skipped with reason "audio missing". A missing session folder is noted when others exist.
    """
    root = Path(root)
    if not any((root / s).is_dir() for s in SESSIONS) and (root / "IEMOCAP_full_release").is_dir():
        root = root / "IEMOCAP_full_release"
    present = [s for s in SESSIONS if (root / s).is_dir()]
    if not present:
        raise MissingDataError(
            f"IEMOCAP: none of {', '.join(SESSIONS)} exists in {root}; "
            "pass the IEMOCAP_full_release folder that holds the session folders"
        )
    report = ReadReport()
    missing = [s for s in SESSIONS if s not in present]
    if missing:
        report.notes.append(f"session folder(s) {', '.join(missing)} missing in {root}; read {', '.join(present)} only")
    records: list[Utterance] = []
    for session in present:
        records.extend(_read_session(root / session, session, report, require_audio))
    return build_corpus(CORPUS, records, report, root)


def _read_session(folder: Path, session: str, report: ReadReport, require_audio: bool) -> list[Utterance]:
    label_dir = folder / "dialog" / "EmoEvaluation"
    if not label_dir.is_dir():
        report.notes.append(f"{session}: no dialog/EmoEvaluation folder, so no labelled utterances read from it")
        return []
    label_files = sorted(p for p in label_dir.glob("*.txt") if p.is_file() and not is_hidden(p))
    if not label_files:
        report.notes.append(f"{session}: dialog/EmoEvaluation holds no label files")
    records: list[Utterance] = []
    without_text = without_words = 0
    for label_file in label_files:
        dialog = label_file.stem
        labels = parse_label_file(label_file)
        texts = _read_transcripts(folder / "dialog" / "transcriptions" / f"{dialog}.txt")
        video = folder / "dialog" / "avi" / "DivX" / f"{dialog}.avi"
        video_path = absolute(video) if video.is_file() else None
        ordered = sorted(labels, key=lambda item: (item["start"], item["utt"]))
        # turns number the whole dialog, so a skipped utterance leaves a gap instead of
        # renumbering its neighbours (turns stay the same whatever media a copy holds)
        for turn, item in enumerate(ordered):
            utt = item["utt"]
            wav_file = folder / "sentences" / "wav" / dialog / f"{utt}.wav"
            wav: Path | None = wav_file
            if not wav_file.is_file():
                if require_audio:
                    report.skip(utt, "audio missing")
                    continue
                wav = None
            ids = _UTT_ID.fullmatch(utt)
            if ids is None:  # the label regex already guarantees the shape; this is a guard for edits
                raise CorpusFormatError(
                    label_file, f"utterance id {utt!r} does not name session and speaker", line=item["line"]
                )
            wdseg = folder / "sentences" / "ForcedAlignment" / dialog / f"{utt}.wdseg"
            # an alignment of silence only is no alignment
            words = (parse_wdseg(wdseg) or None) if wdseg.is_file() else None
            if words is None:
                without_words += 1
            text = texts.get(utt)
            if text is None:
                without_text += 1
            label = item["emo"].lower()
            records.append(
                Utterance(
                    utt_id=utt,
                    corpus=CORPUS,
                    speaker=f"{ids['session']}_{ids['gender']}",
                    audio_path=absolute(wav) if wav is not None else None,
                    text=text,
                    label=label,
                    raw_label=label,
                    session=session,
                    dialogue_id=dialog,
                    turn=turn,
                    video_path=video_path,
                    video_start=item["start"] if video_path else None,
                    video_end=item["end"] if video_path else None,
                    words=words,
                    alignment="corpus" if words is not None else None,
                )
            )
    if without_text:
        report.notes.append(f"{session}: {without_text} utterance(s) have no transcription line (text left empty)")
    if without_words:
        report.notes.append(
            f"{session}: {without_words} utterance(s) have no .wdseg word alignment (or one of silence only)"
        )
    return records


def parse_label_file(path: Path) -> list[dict[str, Any]]:
    """The utterance label lines of one EmoEvaluation file.

    Returns dicts with ``utt``, ``emo``, ``start``, ``end``, ``vad`` (valence, activation,
    dominance) and ``line``. Header, evaluator (``C-``/``A-``) and blank lines are ignored; a line
    that starts like a label line but does not parse raises :class:`CorpusFormatError` with the
    file and line number.
    """
    items = []
    for number, raw in read_lines(path):
        line = raw.strip()
        if not line or line.startswith(_IGNORED_PREFIXES):
            continue
        if not line.startswith("[") and not re.search(r"\bSes\d\d[FM]_", line):
            continue
        match = _LABEL_LINE.fullmatch(line)
        if match is None:
            raise CorpusFormatError(
                path,
                f"malformed label line {line!r}; expected '[START - END]<TAB>UTTERANCE_ID<TAB>EMOTION<TAB>[V, A, D]'",
                line=number,
            )
        start, end = float(match["start"]), float(match["end"])
        if end < start:
            raise CorpusFormatError(path, f"label line ends ({end}) before it starts ({start})", line=number)
        items.append(
            {
                "utt": match["utt"],
                "emo": match["emo"],
                "start": start,
                "end": end,
                "vad": (float(match["v"]), float(match["a"]), float(match["d"])),
                "line": number,
            }
        )
    return items


def _read_transcripts(path: Path) -> dict[str, str]:
    """Utterance id -> text from a transcription file (lines with no text are left out).

    Lines of non-utterance ids (overlap markers such as ``..._MXX0``, ``M: ...``) are parsed or
    passed over without harm: only ids from the label file are ever looked up.
    """
    if not path.is_file():
        return {}
    texts: dict[str, str] = {}
    for _, raw in read_lines(path):
        match = _TRANSCRIPT_LINE.fullmatch(raw.strip())
        if match is not None and match["text"].strip():
            texts[match["utt"]] = match["text"].strip()
    return texts


def parse_wdseg(path: Path) -> list[Word]:
    """Words of a ``.wdseg`` forced alignment, in seconds from the utterance start.

    Rows are ``start_frame end_frame score word`` at 100 frames per second; the end frame is
    inclusive, so a word ends at ``(end_frame + 1) / 100``. Silence and noise tokens (``<s>``,
    ``</s>``, ``<sil>``, ``++NOISE++``) are not words; pronunciation variants ``WORD(2)`` lose their
    suffix; tokens are lower-cased (the alignment writes them in capitals).
    """
    words: list[Word] = []
    for number, raw in read_lines(path):
        fields = raw.split()
        if not fields or fields[0] == "SFrm" or fields[0].lower().startswith("total"):
            continue
        if len(fields) != 4:
            raise CorpusFormatError(path, f"expected 'SFrm EFrm SegAScr Word', got {raw.strip()!r}", line=number)
        try:
            first, last = int(fields[0]), int(fields[1])
            int(fields[2])
        except ValueError:
            raise CorpusFormatError(
                path, f"frame numbers and score must be integers, got {raw.strip()!r}", line=number
            ) from None
        token = fields[3]
        if token.startswith("<") or token.startswith("++"):
            continue
        token = _VARIANT.sub("", token).lower()
        words.append(Word(token=token, start=first / FRAMES_PER_SECOND, end=(last + 1) / FRAMES_PER_SECOND))
    return words
