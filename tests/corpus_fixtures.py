"""Tiny corpus trees in the releases' exact layouts and file formats, for tests.

Each ``make_*`` function writes one corpus under a folder (usually pytest's ``tmp_path``) and
returns the folder a reader expects as its root. Audio files are valid 16 kHz mono WAVs a few
milliseconds long; video files are placeholders (only their existence matters to the readers).
The contents are fixed, so tests can assert exact ids, labels, texts, times and turns; each
function's docstring lists what it writes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16_000


def write_wav(path: Path, seconds: float = 0.01, frequency: float = 220.0) -> Path:
    """A short 16 kHz mono 16-bit sine tone at ``path`` (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    sf.write(path, 0.1 * np.sin(2 * np.pi * frequency * t), SAMPLE_RATE, subtype="PCM_16")
    return path


def write_placeholder(path: Path) -> Path:
    """An empty-content media placeholder (mp4/avi) where only the file's existence matters."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    return path


def _write_text(path: Path, lines: Iterable[str], encoding: str = "utf-8", newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(newline.join(lines).encode(encoding) + newline.encode(encoding))
    return path


# --------------------------------------------------------------------------------------- IEMOCAP

# (dialog, utt, start, end, emotion, text, wdseg rows or None)
IEMOCAP_UTTERANCES: dict[int, list[tuple]] = {
    1: [
        (
            "Ses01F_impro01",
            "Ses01F_impro01_F000",
            6.2901,
            8.2357,
            "neu",
            "Excuse me.",
            [
                (0, 14, -117458, "<s>"),
                (15, 51, -174917, "EXCUSE"),
                (52, 60, -3000, "<sil>"),
                (61, 94, -290829, "ME"),
                (95, 193, -503395, "</s>"),
            ],
        ),
        (
            "Ses01F_impro01",
            "Ses01F_impro01_M000",
            7.5712,
            10.4750,
            "fru",
            "Do you have your forms?",
            [
                (0, 9, -1, "<s>"),
                (10, 29, -2, "DO"),
                (30, 44, -3, "YOU(2)"),
                (45, 70, -4, "HAVE"),
                (71, 80, -5, "++BREATH++"),
                (81, 95, -6, "YOUR"),
                (96, 140, -7, "FORMS"),
                (141, 150, -8, "</s>"),
            ],
        ),
        ("Ses01F_impro01", "Ses01F_impro01_F001", 10.0100, 11.3925, "exc", "Yeah.", None),
        ("Ses01F_impro01", "Ses01F_impro01_M001", 12.0000, 13.5000, "xxx", "Okay, let's see.", None),
    ],
    2: [
        ("Ses02M_script01_1", "Ses02M_script01_1_M000", 1.5000, 3.0000, "ang", "Stop it.", None),
        ("Ses02M_script01_1", "Ses02M_script01_1_F000", 3.2000, 5.0000, "sad", "I can't.", None),
        ("Ses02M_script01_1", "Ses02M_script01_1_F001", 5.5000, 7.0000, "hap", "Well, maybe.", None),
    ],
}


def make_iemocap(base: Path, sessions: Iterable[int] = (1, 2), missing_wav: Iterable[str] = ()) -> Path:
    """An ``IEMOCAP_full_release`` tree under ``base``; returns that folder.

    Session 1 holds dialog ``Ses01F_impro01`` (F000 neu, M000 fru, F001 exc, M001 xxx; label lines
    written out of time order, evaluator lines between them); session 2 holds ``Ses02M_script01_1``
    (M000 ang, F000 sad, F001 hap). F000 and M000 of session 1 have ``.wdseg`` alignments; every
    dialog has a DivX avi; transcription files carry extra overlap lines of non-utterance ids.
    Utterance ids in ``missing_wav`` get no wav.
    """
    root = base / "IEMOCAP_full_release"
    missing = set(missing_wav)
    for number in sessions:
        session = root / f"Session{number}"
        by_dialog: dict[str, list[tuple]] = {}
        for item in IEMOCAP_UTTERANCES[number]:
            by_dialog.setdefault(item[0], []).append(item)
        for dialog, items in by_dialog.items():
            label_lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            # the release does not keep label lines in time order; the reader must sort
            for _, utt, start, end, emo, _, _ in reversed(items):
                label_lines += [
                    f"[{start:.4f} - {end:.4f}]\t{utt}\t{emo}\t[2.5000, 3.0000, 2.0000]",
                    "C-E2:\tNeutral;\t()",
                    "C-F1:\tNeutral;\t(curious)",
                    "A-E3:\tval 3; act 2; dom  2;\t()",
                    "",
                ]
            _write_text(session / "dialog" / "EmoEvaluation" / f"{dialog}.txt", label_lines)
            transcript = []
            for _, utt, start, end, _, text, _ in items:
                transcript.append(f"{utt} [{start:08.4f}-{end:08.4f}]: {text}")
            transcript.append(f"{dialog}_MXX0 [014.0000-015.0000]: [LAUGHTER]")
            transcript.append("M: [BREATHING]")
            _write_text(session / "dialog" / "transcriptions" / f"{dialog}.txt", transcript)
            write_placeholder(session / "dialog" / "avi" / "DivX" / f"{dialog}.avi")
            for _, utt, _, _, _, _, wdseg in items:
                if utt not in missing:
                    write_wav(session / "sentences" / "wav" / dialog / f"{utt}.wav")
                if wdseg is not None:
                    rows = [" SFrm  EFrm    SegAScr Word"]
                    rows += [f"{a:5d} {b:5d} {score:10d} {word}" for a, b, score, word in wdseg]
                    rows.append(f" Total score:    {sum(r[2] for r in wdseg)}")
                    _write_text(session / "sentences" / "ForcedAlignment" / dialog / f"{utt}.wdseg", rows)
    root.mkdir(parents=True, exist_ok=True)
    return root


# ------------------------------------------------------------------------------------------ MELD

MELD_HEADER = [
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
]

# split -> rows of (Utterance, Speaker, Emotion, Sentiment, Dialogue_ID, Utterance_ID)
MELD_ROWS: dict[str, list[tuple]] = {
    "train": [
        (
            "also I was the point person on my company\u2019s transition from the KL-5 to GR-6 system.",
            "Chandler",
            "neutral",
            "neutral",
            0,
            0,
        ),
        ("You must\u2019ve had your hands full.", "The Interviewer", "neutral", "neutral", 0, 1),
        ("Oh, wait,\nwhat?", "Joey", "Surprise", "positive", 1, 0),
    ],
    "dev": [
        ("Oh my God, he\u2019s lost it. He\u2019s totally lost it.", "Phoebe", "sadness", "negative", 0, 0),
        ("What?", "Monica", "surprise", "negative", 0, 1),
    ],
    "test": [
        ("Why do all you\u2019re coffee mugs have numbers on the bottom?", "Mark", "surprise", "positive", 0, 0),
        ("Oh. That\u2019s so Monica can keep track.", "Rachel", "anger", "negative", 0, 1),
    ],
}

MELD_MEDIA = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}


def make_meld(
    base: Path, media: bool = True, missing_media: Iterable[str] = (), splits: Iterable[str] = ("train", "dev", "test")
) -> Path:
    """A ``MELD.Raw`` folder under ``base`` with the three csv files (CRLF, utf-8, quoted fields,
    one multi-line utterance: train dia1 utt0 "Oh, wait,\\nwhat?" with Emotion "Surprise") and,
    when ``media``, the per-split mp4 folders. Clips named in ``missing_media`` (``"dev/dia0_utt1"``)
    are left out. Returns the folder.
    """
    root = base / "MELD.Raw"
    root.mkdir(parents=True, exist_ok=True)
    missing = set(missing_media)
    for split in splits:
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(MELD_HEADER)
        for number, (text, speaker, emotion, sentiment, dialogue, utt) in enumerate(MELD_ROWS[split], start=1):
            writer.writerow(
                [
                    number,
                    text,
                    speaker,
                    emotion,
                    sentiment,
                    dialogue,
                    utt,
                    8,
                    21,
                    f"00:16:{10 + number:02d},059",
                    f"00:16:{11 + number:02d},731",
                ]
            )
            if media and f"{split}/dia{dialogue}_utt{utt}" not in missing:
                write_placeholder(root / MELD_MEDIA[split] / f"dia{dialogue}_utt{utt}.mp4")
        (root / f"{split}_sent_emo.csv").write_bytes(buffer.getvalue().encode("utf-8"))
    return root


# ------------------------------------------------------------------------------------------ MOSI

# (video_id, clip_id, text, label, mode)
MOSI_ROWS = [
    ("03bSnISJMiM", 10, "and it was really good", 2.4, "train"),
    ("03bSnISJMiM", 2, "i did not like it", -1.8, "train"),
    ("03bSnISJMiM", 1, "so this movie", 0.0, "train"),
    ("0h-zjBukYpk", 1, "it was okay i guess", 0.6, "valid"),
    ("0h-zjBukYpk", 3, "terrible acting", -2.8, "test"),
]


def make_mosi(base: Path, media: bool = True, missing_media: Iterable[str] = ()) -> Path:
    """A CMU-MOSI folder in the MMSA-FET layout (``label.csv`` + ``Raw/<video>/<clip>.mp4``).

    Clip ids 10, 2, 1 of the first video test numeric ordering (turns 2, 1, 0); one score is 0.0
    (raw label "neutral"); ``valid`` maps to split "dev". Clips ``"<video>_<clip>"`` in
    ``missing_media`` get no mp4. Returns the folder.
    """
    root = base / "MOSI"
    root.mkdir(parents=True, exist_ok=True)
    missing = set(missing_media)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode"])
    for video, clip, text, score, mode in MOSI_ROWS:
        annotation = "Positive" if score > 0 else "Negative" if score < 0 else "Neutral"
        writer.writerow([video, clip, text, score, score, score, score, annotation, mode])
        if media and f"{video}_{clip}" not in missing:
            write_placeholder(root / "Raw" / video / f"{clip}.mp4")
    (root / "label.csv").write_text(buffer.getvalue(), encoding="utf-8")
    return root


# ----------------------------------------------------------------------------------------- EmoDB

# name -> silb rows (end seconds, syllable); latin-1 on disk like the release
EMODB_FILES: dict[str, list[tuple[float, str]] | None] = {
    "03a01Fa": [
        (0.080080, "der"),
        (0.244195, "la"),
        (0.427094, "pen"),
        (0.643428, "liegt"),
        (0.865570, "auf"),
        (0.981748, "dem"),
        (1.146357, "eis"),
        (1.404778, "schrank"),
        (1.841390, "."),
    ],
    "03a04Wc": [
        (0.059771, "heu"),
        (0.200000, "te"),
        (0.289909, "A"),
        (0.450916, "bend"),
        (0.604612, "k\u00f6nn"),
        (0.770055, "te"),
        (0.900000, "("),
        (1.000000, "ich"),
        (1.200000, "."),
    ],
    "08b10Lb": [],  # the release has one empty silb file
    "16b01Tb": None,  # no silb file at all
}


def make_emodb(base: Path) -> Path:
    """An EmoDB folder: ``wav/`` with four utterances (speakers 03, 08, 16; F, W, L, T) plus two
    files that must be skipped (``03a99Wa.wav`` unknown sentence, ``readme.wav`` bad name), and
    ``silb/`` in latin-1 with tab- and space-separated lines ("könn" in 03a04Wc, an empty file
    for 08b10Lb, none for 16b01Tb). Returns the folder.
    """
    root = base / "emodb"
    for name, silb in EMODB_FILES.items():
        write_wav(root / "wav" / f"{name}.wav")
        if silb is not None:
            # the release mixes tab and space separators; write both
            separators = ("\t", "    ")
            lines = [f"{end:.6f}{separators[i % 2]}{syllable}" for i, (end, syllable) in enumerate(silb)]
            path = root / "silb" / f"{name}.silb"
            if lines:
                _write_text(path, lines, encoding="latin-1")
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"")
    write_wav(root / "wav" / "03a99Wa.wav")
    write_wav(root / "wav" / "readme.wav")
    return root


# ----------------------------------------------------------------------------------------- SAVEE

SAVEE_FILES = ("DC_a01.wav", "DC_n02.wav", "JE_sa03.wav", "JK_su01.wav", "KL_h15.wav", "KL_d07.wav", "JE_f11.wav")


def make_savee(base: Path) -> Path:
    """A flat SAVEE folder with the seven files of :data:`SAVEE_FILES` (all four speakers, all
    seven emotions) plus ``DC_zz01.wav`` (unknown emotion), ``XY_a01.wav`` (unknown speaker) and
    ``info.wav`` (not ``SS_Enn``), which must be skipped. Returns the folder.
    """
    root = base / "savee"
    for name in (*SAVEE_FILES, "DC_zz01.wav", "XY_a01.wav", "info.wav"):
        write_wav(root / name)
    return root


# --------------------------------------------------------------------------------------- RAVDESS

RAVDESS_FILES = (
    "Actor_01/03-01-05-01-01-01-01.wav",  # speech, angry, normal, "Kids ...", actor 01
    "Actor_01/03-01-01-01-02-02-01.wav",  # speech, neutral, "Dogs ...", repetition 2
    "Actor_02/03-01-02-02-02-01-02.wav",  # speech, calm, strong, "Dogs ...", actor 02
    "Actor_02/03-01-08-02-01-01-02.wav",  # speech, surprised
    "Actor_01/03-02-03-01-01-01-01.wav",  # song (skipped unless include_song)
    "Actor_02/03-01-09-01-01-01-02.wav",  # unknown emotion 09
    "Actor_02/notes.wav",  # not the seven-field pattern
)


def make_ravdess(base: Path) -> Path:
    """A RAVDESS speech folder (``Actor_01``, ``Actor_02``) with the files of :data:`RAVDESS_FILES`."""
    root = base / "ravdess"
    for name in RAVDESS_FILES:
        write_wav(root / name)
    return root


# -------------------------------------------------------------------------------------- manifest

MANIFEST_ROWS = [
    {
        "utt_id": "s1_u0",
        "speaker": "spk1",
        "audio_path": "audio/s1_u0.wav",
        "text": "hello there",
        "label": "Happy",
        "session": "A",
        "dialogue_id": "d1",
        "turn": 0,
        "split": "train",
        "x_source": "studio",
        "words": [{"token": "hello", "start": 0.0, "end": 0.4}, {"token": "there", "start": 0.5, "end": 0.9}],
        "alignment": "corpus",
    },
    {
        "utt_id": "s1_u1",
        "speaker": "spk2",
        "audio_path": "audio/s1_u1.wav",
        "text": "go away",
        "label": "angry",
        "session": "A",
        "dialogue_id": "d1",
        "turn": 1,
        "split": "test",
        "start": 0.001,
        "end": 0.009,
        "score": -1.5,
    },
    {"utt_id": "s1_u2", "speaker": "spk2", "audio_path": "audio/missing.wav", "text": "gone", "label": "sad"},
    {"utt_id": "s1_u3", "speaker": "spk1", "text": "text only", "label": "neutral"},
]


def make_manifest(base: Path, fmt: str = "csv", scheme: dict | None = None, rows: list[dict] | None = None) -> Path:
    """A folder ``mycorpus`` with a ``manifest.<fmt>`` (csv, jsonl or parquet) of :data:`MANIFEST_ROWS`
    (or ``rows``), the two wavs it names under ``audio/`` (``audio/missing.wav`` is not written), and
    ``scheme.yaml`` when ``scheme`` is given. Returns the manifest file.
    """
    import pandas as pd
    import yaml

    root = base / "mycorpus"
    rows = MANIFEST_ROWS if rows is None else rows
    for row in rows:
        audio = row.get("audio_path")
        if audio and "missing" not in audio:
            write_wav(root / audio)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    path = root / f"manifest.{fmt}"
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: json.dumps(v) if k == "words" else v for k, v in row.items()})
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif fmt == "parquet":
        pd.DataFrame(rows, columns=columns).to_parquet(path, index=False)
    else:
        raise ValueError(f"unknown manifest format {fmt!r}")
    if scheme is not None:
        (root / "scheme.yaml").write_text(yaml.safe_dump(scheme), encoding="utf-8")
    return path
