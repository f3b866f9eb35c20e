"""Berlin EmoDB, read from the release layout: ``wav/SSTTTEV.wav`` and ``silb/SSTTTEV.silb``.

A file name holds everything: SS speaker (03, 08 .. 16), TTT the sentence code (a01 .. b10, ten
sentences), E the emotion letter (German initials), V a version letter. The transcript is the
sentence behind the code. ``silb/`` gives syllable timings (``<end seconds> <syllable>`` per
line, latin-1): each syllable spans from the previous end to its own, so the words list here
holds **syllables**, with alignment "corpus".
"""

from __future__ import annotations

import re
from pathlib import Path

from emomix.data.readers._common import absolute, build_corpus, match_files, read_lines, require_dir
from emomix.data.schema import Corpus, ReadReport, Utterance, Word
from emomix.errors import CorpusFormatError

CORPUS = "emodb"

EMOTIONS: dict[str, str] = {
    "W": "anger",  # Wut
    "L": "boredom",  # Langeweile
    "E": "disgust",  # Ekel
    "A": "fear",  # Angst
    "F": "happiness",  # Freude
    "T": "sadness",  # Trauer
    "N": "neutral",
}

# The ten sentences as the actors speak them (the silb files spell them syllable by syllable).
# a05: some descriptions of the corpus write "Stück Papier"; every recording says "Blatt Papier".
SENTENCES: dict[str, str] = {
    "a01": "Der Lappen liegt auf dem Eisschrank.",
    "a02": "Das will sie am Mittwoch abgeben.",
    "a04": "Heute abend könnte ich es ihm sagen.",
    "a05": "Das schwarze Blatt Papier befindet sich da oben neben dem Holzstück.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
    "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
    "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}

# "." marks a pause and "(" a breath pause inside the sentence: time passes, nothing is said
PAUSE_MARKS = frozenset({".", "("})

_NAME = re.compile(r"(?P<speaker>\d\d)(?P<sentence>[ab]\d\d)(?P<emotion>[A-Z])(?P<version>[a-z])\.wav")


def read(root: Path) -> Corpus:
    """Read EmoDB from ``root`` (the folder holding ``wav/`` and, optionally, ``silb/``).

    Files whose name is not ``SSTTTEV.wav`` with a known sentence code and emotion letter are
    skipped with the reason; a missing or empty ``.silb`` file leaves ``words`` empty (noted).
    """
    root = Path(root)
    wav_dir = require_dir(root / "wav", "EmoDB: expected the release's wav/ folder")
    silb_dir = root / "silb"
    report = ReadReport()
    if not silb_dir.is_dir():
        report.notes.append(f"no silb/ folder in {root}: no syllable alignment")
    records: list[Utterance] = []
    without_words = 0
    for found in match_files(wav_dir, ".wav", _NAME, report, "file name is not SSTTTEV.wav"):
        name = found.path.stem
        speaker, sentence, emotion = found.match["speaker"], found.match["sentence"], found.match["emotion"]
        if sentence not in SENTENCES:
            report.skip(str(found.path), f"unknown sentence code {sentence!r}")
            continue
        if emotion not in EMOTIONS:
            report.skip(str(found.path), f"unknown emotion letter {emotion!r}")
            continue
        words = None
        silb = silb_dir / f"{name}.silb"
        if silb.is_file():
            words = parse_silb(silb)
        if not words:
            words = None
            without_words += 1
        label = EMOTIONS[emotion]
        records.append(
            Utterance(
                utt_id=name,
                corpus=CORPUS,
                speaker=f"emodb_{speaker}",
                session=f"emodb_{speaker}",
                audio_path=absolute(found.path),
                text=SENTENCES[sentence],
                label=label,
                raw_label=label,
                words=words,
                alignment="corpus" if words else None,
            )
        )
    if without_words and silb_dir.is_dir():
        report.notes.append(
            f"{without_words} utterance(s) have no (or an empty) silb file: no syllable alignment for them"
        )
    return build_corpus(CORPUS, records, report, root)


def parse_silb(path: Path) -> list[Word]:
    """Syllables of a ``.silb`` file, each from the previous end time (0 at first) to its own.

    Pause marks (``.`` and ``(``) advance the time but are not tokens. A line that is not
    ``<seconds> <syllable>`` raises :class:`CorpusFormatError` with file and line.
    """
    words: list[Word] = []
    previous = 0.0
    # the release's files are latin-1 (or plain ASCII); utf-8 first so a re-encoded copy reads too
    for number, raw in read_lines(path, encodings=("utf-8", "latin-1")):
        fields = raw.split(None, 1)
        if not fields:
            continue
        if len(fields) != 2:
            raise CorpusFormatError(path, f"expected '<end seconds> <syllable>', got {raw.strip()!r}", line=number)
        try:
            end = float(fields[0])
        except ValueError:
            raise CorpusFormatError(path, f"end time {fields[0]!r} is not a number", line=number) from None
        if end < previous:
            raise CorpusFormatError(path, f"end time {end} is before the previous one ({previous})", line=number)
        token = fields[1].strip()
        if token not in PAUSE_MARKS:
            words.append(Word(token=token, start=previous, end=end))
        previous = end
    return words
