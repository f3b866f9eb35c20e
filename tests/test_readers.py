"""Corpus readers on tiny fixture trees in each release's exact layout (see corpus_fixtures.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from corpus_fixtures import (
    make_emodb,
    make_iemocap,
    make_manifest,
    make_meld,
    make_mosi,
    make_ravdess,
    make_savee,
    write_wav,
)
from emomix.data.readers import emodb, iemocap, manifest, meld, mosi, ravdess, read_corpus, savee
from emomix.data.schema import COLUMNS
from emomix.errors import CorpusFormatError, MissingDataError


def _row(corpus, utt_id):
    rows = corpus.table[corpus.table["utt_id"] == utt_id]
    assert len(rows) == 1, f"{utt_id} should be read exactly once"
    return rows.iloc[0]


def _words(row):
    return [(w["token"], round(w["start"], 6), round(w["end"], 6)) for w in row["words"]]


# ----------------------------------------------------------------------------------------- IEMOCAP


def test_iemocap_fields_turns_text_words_and_video(tmp_path):
    root = make_iemocap(tmp_path)
    corpus = iemocap.read(root)
    table = corpus.table
    assert tuple(table.columns) == COLUMNS
    assert corpus.name == "iemocap" and len(table) == 7
    assert sorted(table["label"]) == ["ang", "exc", "fru", "hap", "neu", "sad", "xxx"]
    assert (table["label"] == table["raw_label"]).all()

    f000 = _row(corpus, "Ses01F_impro01_F000")
    assert f000["speaker"] == "Ses01_F" and f000["session"] == "Session1"
    assert f000["dialogue_id"] == "Ses01F_impro01"
    assert f000["text"] == "Excuse me."
    assert f000["audio_path"] == str(root / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav")
    assert Path(f000["audio_path"]).is_absolute()
    assert f000["video_path"] == str(root / "Session1/dialog/avi/DivX/Ses01F_impro01.avi")
    # the video is the whole dialogue: the label-file times locate the utterance inside it
    assert (f000["video_start"], f000["video_end"]) == (6.2901, 8.2357)
    # the wav is already cut: label-file times must not become a span
    assert math.isnan(f000["start"]) and math.isnan(f000["end"])
    assert _words(f000) == [("excuse", 0.15, 0.52), ("me", 0.61, 0.95)]
    assert f000["alignment"] == "corpus"

    m000 = _row(corpus, "Ses01F_impro01_M000")
    assert m000["speaker"] == "Ses01_M"
    assert [w[0] for w in _words(m000)] == ["do", "you", "have", "your", "forms"]
    assert _row(corpus, "Ses01F_impro01_F001")["words"] is None
    assert _row(corpus, "Ses01F_impro01_F001")["alignment"] is None

    # label lines are written in reverse time order; turns follow start time
    turns = {
        u: _row(corpus, u)["turn"]
        for u in ("Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses01F_impro01_F001", "Ses01F_impro01_M001")
    }
    assert turns == {
        "Ses01F_impro01_F000": 0,
        "Ses01F_impro01_M000": 1,
        "Ses01F_impro01_F001": 2,
        "Ses01F_impro01_M001": 3,
    }
    script = _row(corpus, "Ses02M_script01_1_F001")
    assert (script["speaker"], script["session"], script["dialogue_id"], script["turn"]) == (
        "Ses02_F",
        "Session2",
        "Ses02M_script01_1",
        2,
    )
    assert script["text"] == "Well, maybe."
    assert set(table["speaker"]) == {"Ses01_F", "Ses01_M", "Ses02_F", "Ses02_M"}
    assert corpus.report.skipped == []


def test_iemocap_missing_wav_is_skipped_and_reported_unless_text_only(tmp_path):
    root = make_iemocap(tmp_path, missing_wav=["Ses01F_impro01_F001"])
    corpus = iemocap.read(root)
    assert len(corpus.table) == 6
    assert corpus.report.skipped == [{"item": "Ses01F_impro01_F001", "reason": "audio missing"}]
    # a skipped utterance leaves a gap in the turns instead of renumbering the dialog
    assert _row(corpus, "Ses01F_impro01_M001")["turn"] == 3

    text_only = iemocap.read(root, require_audio=False)
    assert len(text_only.table) == 7 and text_only.report.skipped == []
    kept = _row(text_only, "Ses01F_impro01_F001")
    assert kept["audio_path"] is None and kept["text"] == "Yeah."


def test_iemocap_malformed_label_line_names_file_and_line(tmp_path):
    root = make_iemocap(tmp_path, sessions=(1,))
    label_file = root / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    lines = label_file.read_text().splitlines()
    lines.insert(7, "[16.2901 - 18.2357]\tSes01F_impro01_F009\tneu")  # the [V, A, D] part is missing
    label_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusFormatError) as caught:
        iemocap.read(root)
    assert caught.value.path == str(label_file) and caught.value.line == 8
    assert f"{label_file}:8" in str(caught.value) and "Ses01F_impro01_F009" in str(caught.value)


def test_iemocap_malformed_wdseg_names_file_and_line(tmp_path):
    root = make_iemocap(tmp_path, sessions=(1,))
    wdseg = root / "Session1/sentences/ForcedAlignment/Ses01F_impro01/Ses01F_impro01_F000.wdseg"
    wdseg.write_text(" SFrm  EFrm    SegAScr Word\n    0    14    -117458 <s>\n   15   xx    -174917 EXCUSE\n")
    with pytest.raises(CorpusFormatError, match=rf"{wdseg.name}:3"):
        iemocap.read(root)


def test_iemocap_missing_sessions_noted_and_none_is_an_error(tmp_path):
    root = make_iemocap(tmp_path, sessions=(2,))
    corpus = iemocap.read(root)
    assert set(corpus.table["session"]) == {"Session2"} and len(corpus.table) == 3
    assert any("Session1" in note and "Session5" in note for note in corpus.report.notes)
    # the parent folder of IEMOCAP_full_release is accepted too
    assert len(iemocap.read(tmp_path).table) == 3

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingDataError, match="Session1"):
        iemocap.read(empty)


def test_iemocap_4_scheme_maps_excited_to_happy_and_counts_drops(tmp_path):
    root = make_iemocap(tmp_path)
    corpus = read_corpus("iemocap", root)  # default scheme iemocap-4
    assert corpus.default_scheme == "iemocap-4"
    assert sorted(corpus.table["label"]) == ["angry", "happy", "happy", "neutral", "sad"]
    assert _row(corpus, "Ses01F_impro01_F001")["label"] == "happy"
    assert _row(corpus, "Ses01F_impro01_F001")["raw_label"] == "exc"
    assert corpus.report.dropped_by_label == {"fru": 1, "xxx": 1}
    raw = read_corpus("iemocap", root, scheme=None)
    assert len(raw.table) == 7 and raw.report.dropped_by_label == {}


# -------------------------------------------------------------------------------------------- MELD


def test_meld_with_media(tmp_path):
    root = make_meld(tmp_path)
    corpus = meld.read(root)
    table = corpus.table
    assert len(table) == 7
    assert table.groupby("split").size().to_dict() == {"dev": 2, "test": 2, "train": 3}
    first = _row(corpus, "train_dia0_utt0")
    assert first["text"] == "also I was the point person on my company\u2019s transition from the KL-5 to GR-6 system."
    assert (first["speaker"], first["dialogue_id"], first["turn"], first["label"]) == (
        "Chandler",
        "train_0",
        0,
        "neutral",
    )
    assert first["audio_path"] == first["video_path"] == str(root / "train_splits/dia0_utt0.mp4")
    assert math.isnan(first["start"])
    multi = _row(corpus, "train_dia1_utt0")
    assert multi["text"] == "Oh, wait,\nwhat?" and multi["label"] == "surprise" and multi["raw_label"] == "surprise"
    assert _row(corpus, "dev_dia0_utt1")["video_path"].endswith("dev_splits_complete/dia0_utt1.mp4")
    assert _row(corpus, "test_dia0_utt1")["video_path"].endswith("output_repeated_splits_test/dia0_utt1.mp4")
    assert _row(corpus, "test_dia0_utt1")["speaker"] == "Rachel"
    assert corpus.report.skipped == [] and corpus.report.notes == []


def test_meld_text_only_and_missing_clip(tmp_path):
    text_only = meld.read(make_meld(tmp_path / "a", media=False))
    assert len(text_only.table) == 7
    assert text_only.table["audio_path"].isna().all() and text_only.table["video_path"].isna().all()
    assert any("text only" in note for note in text_only.report.notes)

    partial = meld.read(make_meld(tmp_path / "b", missing_media=["dev/dia0_utt1"]))
    assert len(partial.table) == 6
    assert partial.report.skipped == [{"item": "dev_dia0_utt1", "reason": "media missing"}]


def test_meld_missing_value_names_file_and_line(tmp_path):
    root = make_meld(tmp_path, media=False)
    path = root / "train_sent_emo.csv"
    text = path.read_text(encoding="utf-8")
    # the multi-line utterance spans lines 4-5, so the row after it starts on line 6
    text += '4,"Fine.",,neutral,neutral,1,1,8,21,"00:16:20,000","00:16:21,000"\r\n'
    path.write_bytes(text.encode("utf-8"))
    with pytest.raises(CorpusFormatError) as caught:
        meld.read(root)
    assert caught.value.line == 6 and "Speaker" in str(caught.value) and str(path) in str(caught.value)


def test_meld_missing_split_noted_and_none_is_an_error(tmp_path):
    root = make_meld(tmp_path, media=False, splits=("train", "test"))
    corpus = meld.read(root)
    assert set(corpus.table["split"]) == {"train", "test"}
    assert any("dev_sent_emo.csv" in note for note in corpus.report.notes)
    with pytest.raises(MissingDataError, match="train_sent_emo.csv"):
        meld.read(tmp_path)


# -------------------------------------------------------------------------------------------- MOSI


def test_mosi_fields_turns_splits_and_labels(tmp_path):
    root = make_mosi(tmp_path)
    corpus = mosi.read(root)
    assert len(corpus.table) == 5
    by_id = {r["utt_id"]: r for _, r in corpus.table.iterrows()}
    assert {u: by_id[u]["turn"] for u in ("03bSnISJMiM_1", "03bSnISJMiM_2", "03bSnISJMiM_10")} == {
        "03bSnISJMiM_1": 0,
        "03bSnISJMiM_2": 1,
        "03bSnISJMiM_10": 2,
    }
    clip = by_id["03bSnISJMiM_10"]
    assert (clip["speaker"], clip["dialogue_id"], clip["split"], clip["score"], clip["label"]) == (
        "03bSnISJMiM",
        "03bSnISJMiM",
        "train",
        2.4,
        "positive",
    )
    assert clip["audio_path"] == clip["video_path"] == str(root / "Raw/03bSnISJMiM/10.mp4")
    assert clip["text"] == "and it was really good"
    assert by_id["03bSnISJMiM_2"]["label"] == "negative"
    assert by_id["03bSnISJMiM_1"]["label"] == "neutral" and by_id["03bSnISJMiM_1"]["score"] == 0.0
    assert by_id["0h-zjBukYpk_1"]["split"] == "dev" and by_id["0h-zjBukYpk_3"]["split"] == "test"
    binary = read_corpus("mosi", root)
    assert len(binary.table) == 4 and binary.report.dropped_by_label == {"neutral": 1}


def test_mosi_missing_media_and_text_only(tmp_path):
    partial = mosi.read(make_mosi(tmp_path / "a", missing_media=["0h-zjBukYpk_3"]))
    assert partial.report.skipped == [{"item": "0h-zjBukYpk_3", "reason": "media missing"}]
    text_only = mosi.read(make_mosi(tmp_path / "b", media=False))
    assert len(text_only.table) == 5 and text_only.table["audio_path"].isna().all()
    assert any("text only" in note for note in text_only.report.notes)
    with pytest.raises(MissingDataError, match="label.csv"):
        mosi.read(tmp_path)


def test_mosi_bad_score_names_line(tmp_path):
    root = make_mosi(tmp_path)
    path = root / "label.csv"
    path.write_text(path.read_text() + "abc,1,hello,lots,0,0,0,Positive,train\n")
    with pytest.raises(CorpusFormatError, match=r"label.csv:7: column 'label' should be a number"):
        mosi.read(root)


# ------------------------------------------------------------------------------------------- EmoDB


def test_emodb_names_texts_labels_and_syllables(tmp_path):
    root = make_emodb(tmp_path)
    corpus = emodb.read(root)
    table = corpus.table
    assert sorted(table["utt_id"]) == ["03a01Fa", "03a04Wc", "08b10Lb", "16b01Tb"]
    happy = _row(corpus, "03a01Fa")
    assert (happy["label"], happy["speaker"], happy["session"]) == ("happiness", "emodb_03", "emodb_03")
    assert happy["text"] == "Der Lappen liegt auf dem Eisschrank."
    assert happy["audio_path"] == str(root / "wav/03a01Fa.wav")
    words = _words(happy)
    assert len(words) == 8 and words[0] == ("der", 0.0, 0.08008) and words[1] == ("la", 0.08008, 0.244195)
    assert words[-1] == ("schrank", 1.146357, 1.404778)  # the final "." pause is not a token
    assert happy["alignment"] == "corpus"

    anger = _row(corpus, "03a04Wc")
    assert anger["label"] == "anger" and anger["text"] == "Heute abend k\u00f6nnte ich es ihm sagen."
    tokens = _words(anger)
    assert ("k\u00f6nn", 0.450916, 0.604612) in tokens  # latin-1 bytes decoded
    assert tokens[-1] == ("ich", 0.9, 1.0)  # "(" is a breath pause: it takes time, it is not a token
    assert _row(corpus, "08b10Lb")["label"] == "boredom" and _row(corpus, "08b10Lb")["words"] is None
    sad = _row(corpus, "16b01Tb")
    assert sad["label"] == "sadness" and sad["words"] is None and sad["alignment"] is None
    assert sad["text"] == "Was sind denn das f\u00fcr T\u00fcten, die da unter dem Tisch stehen?"
    reasons = {Path(s["item"]).name: s["reason"] for s in corpus.report.skipped}
    assert reasons == {"03a99Wa.wav": "unknown sentence code 'a99'", "readme.wav": "file name is not SSTTTEV.wav"}
    assert any("2 utterance(s)" in note for note in corpus.report.notes)


def test_emodb_malformed_silb_and_missing_wav_folder(tmp_path):
    root = make_emodb(tmp_path)
    (root / "silb/03a01Fa.silb").write_bytes(b"0.080080\tder\nlater\tla\n")
    with pytest.raises(CorpusFormatError, match=r"03a01Fa.silb:2"):
        emodb.read(root)
    with pytest.raises(MissingDataError, match="wav"):
        emodb.read(tmp_path)


def test_emodb_sentence_codes_are_the_ten_of_the_release():
    assert sorted(emodb.SENTENCES) == ["a01", "a02", "a04", "a05", "a07", "b01", "b02", "b03", "b09", "b10"]


# ------------------------------------------------------------------------------------------- SAVEE


def test_savee_names_labels_and_skips(tmp_path):
    root = make_savee(tmp_path)
    corpus = savee.read(root)
    table = corpus.table
    assert len(table) == 7 and table["speaker"].nunique() == 4 and table["label"].nunique() == 7
    row = _row(corpus, "JE_sa03")
    assert (row["label"], row["speaker"], row["text"]) == ("sadness", "savee_JE", None)
    assert row["audio_path"] == str(root / "JE_sa03.wav")
    assert _row(corpus, "JK_su01")["label"] == "surprise" and _row(corpus, "KL_h15")["label"] == "happiness"
    reasons = {Path(s["item"]).name: s["reason"] for s in corpus.report.skipped}
    assert set(reasons) == {"DC_zz01.wav", "XY_a01.wav", "info.wav"}
    assert "unknown emotion code 'zz'" in reasons["DC_zz01.wav"]
    assert "unknown speaker code 'XY'" in reasons["XY_a01.wav"]
    assert reasons["info.wav"].startswith("file name is not SS_Enn.wav")


def test_savee_speaker_folder_layout(tmp_path):
    root = tmp_path / "AudioData"
    write_wav(root / "DC" / "a01.wav")
    write_wav(root / "KL" / "su12.wav")
    corpus = savee.read(root)
    assert sorted(corpus.table["utt_id"]) == ["DC_a01", "KL_su12"]
    assert _row(corpus, "KL_su12")["speaker"] == "savee_KL"


# ----------------------------------------------------------------------------------------- RAVDESS


def test_ravdess_codes_statements_and_skips(tmp_path):
    root = make_ravdess(tmp_path)
    corpus = ravdess.read(root)
    assert sorted(corpus.table["utt_id"]) == [
        "03-01-01-01-02-02-01",
        "03-01-02-02-02-01-02",
        "03-01-05-01-01-01-01",
        "03-01-08-02-01-01-02",
    ]
    angry = _row(corpus, "03-01-05-01-01-01-01")
    assert (angry["label"], angry["speaker"], angry["text"]) == ("angry", "ravdess_01", "Kids are talking by the door")
    calm = _row(corpus, "03-01-02-02-02-01-02")
    assert (calm["label"], calm["speaker"], calm["text"]) == ("calm", "ravdess_02", "Dogs are sitting by the door")
    assert _row(corpus, "03-01-08-02-01-01-02")["label"] == "surprised"
    reasons = {Path(s["item"]).name: s["reason"] for s in corpus.report.skipped}
    assert reasons["03-02-03-01-01-01-01.wav"].startswith("song")
    assert reasons["03-01-09-01-01-01-02.wav"] == "unknown emotion code 09"
    assert reasons["notes.wav"] == "file name is not MM-VV-EE-II-SS-RR-AA.wav"
    with_song = ravdess.read(root, include_song=True)
    assert _row(with_song, "03-02-03-01-01-01-01")["label"] == "happy"
    assert len(read_corpus("ravdess", root).table) == 4


# ---------------------------------------------------------------------------------------- manifest


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifest_formats(tmp_path, fmt):
    path = make_manifest(tmp_path, fmt=fmt)
    corpus = manifest.read(path)
    assert corpus.name == "mycorpus"
    assert sorted(corpus.table["utt_id"]) == ["s1_u0", "s1_u1", "s1_u3"]
    assert corpus.report.skipped == [{"item": "s1_u2", "reason": "audio missing"}]
    assert any("x_source" in note for note in corpus.report.notes)
    first = _row(corpus, "s1_u0")
    assert first["audio_path"] == str(path.parent / "audio/s1_u0.wav")
    assert (first["label"], first["raw_label"], first["speaker"], first["turn"], first["split"]) == (
        "happy",
        "happy",
        "spk1",
        0,
        "train",
    )
    assert _words(first) == [("hello", 0.0, 0.4), ("there", 0.5, 0.9)] and first["alignment"] == "corpus"
    second = _row(corpus, "s1_u1")
    assert (second["start"], second["end"], second["score"]) == (0.001, 0.009, -1.5)
    assert _row(corpus, "s1_u3")["audio_path"] is None
    assert corpus.default_scheme is None
    # a folder holding the manifest reads the same
    assert sorted(manifest.read(path.parent).table["utt_id"]) == ["s1_u0", "s1_u1", "s1_u3"]
    assert len(manifest.read(path, check_audio=False).table) == 4


def test_manifest_scheme_yaml_becomes_the_default(tmp_path):
    scheme = {"classes": ["negative", "positive"], "map": {"happy": "positive", "angry": "negative", "sad": "negative"}}
    path = make_manifest(tmp_path, fmt="csv", scheme=scheme)
    default = manifest.read(path).default_scheme
    assert default["classes"] == ["negative", "positive"] and default["name"] == "mycorpus-2"
    corpus = read_corpus("synthetic", path.parent)
    assert sorted(corpus.table["label"]) == ["negative", "positive"]
    assert corpus.report.dropped_by_label == {"neutral": 1}


def test_a_manifest_corpus_and_its_scheme_are_reported_by_their_own_names(tmp_path):
    """Issue 13: a manifest corpus showed as "manifest" and its scheme.yaml as "scheme"."""
    from emomix.data.summary import corpus_summary, format_summary

    scheme = {"classes": ["negative", "positive"], "map": {"happy": "positive", "angry": "negative", "sad": "negative"}}
    path = make_manifest(tmp_path, fmt="csv", scheme=scheme)
    summary = corpus_summary(read_corpus("manifest", path))
    assert (summary["corpus"], summary["scheme"]) == ("mycorpus", "mycorpus-2")
    assert format_summary(summary).startswith("corpus mycorpus  scheme mycorpus-2")
    assert corpus_summary(read_corpus("manifest", path, scheme=None))["scheme"] is None  # raw labels
    (path.parent / "scheme.yaml").write_text("name: sentiment-2\n" + (path.parent / "scheme.yaml").read_text())
    assert corpus_summary(read_corpus("manifest", path))["scheme"] == "sentiment-2"  # its own name wins
    renamed = path.rename(path.parent / "calls.csv")
    assert read_corpus("manifest", renamed, scheme=None).name == "calls"  # a named file names the corpus


# -------------------------------------------------------------------------------------------- MELD-like


def _meld_like(root: Path) -> Path:
    """Almost MELD: ``friends_<split>.csv``, the dialogue in ``Scene_ID`` (text), speakers as list strings."""
    import csv

    root.mkdir(parents=True)
    rows = {
        "train": [
            ("Hi there", "['Joey']", "Joy", "s01e01", 0),
            ("Oh no", "['Ross', 'Rachel']", "Sadness", "s01e01", 1),
            ("Fine", "['Monica']", "Neutral", "s01e02", 0),
        ],
        "test": [("What?", "['Chandler']", "Surprise", "s02e01", 0)],
    }
    for split, items in rows.items():
        with (root / f"friends_{split}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["Sr No.", "Utterance", "Speakers", "Emotion", "Scene_ID", "Utterance_ID"])
            for number, row in enumerate(items, start=1):
                writer.writerow([number, *row])
    return root


def test_a_meld_like_corpus_reads_with_a_column_map_and_a_file_pattern(tmp_path):
    root = _meld_like(tmp_path / "friends")
    with pytest.raises(MissingDataError, match=r"train_sent_emo\.csv.*pattern"):
        meld.read(root)
    options = {"pattern": "friends_{split}.csv", "columns": {"Dialogue_ID": "Scene_ID", "Speaker": "Speakers"}}
    corpus = read_corpus("meld", root, **options)
    table = corpus.table.set_index("utt_id")
    assert sorted(table.index) == [
        "test_dias02e01_utt0",
        "train_dias01e01_utt0",
        "train_dias01e01_utt1",
        "train_dias01e02_utt0",
    ]
    row = table.loc["train_dias01e01_utt1"]
    assert (row["speaker"], row["label"], row["dialogue_id"], row["turn"], row["split"]) == (
        "Ross & Rachel",
        "sadness",
        "train_s01e01",
        1,
        "train",
    )
    assert table.loc["train_dias01e01_utt0", "speaker"] == "Joey"
    assert any("dev" in note and "not read" in note for note in corpus.report.notes)
    # a column the map names but the file lacks, and an option the reader does not have
    with pytest.raises(CorpusFormatError, match=r"missing column\(s\) \['Dialog'\]"):
        read_corpus(
            "meld", root, pattern="friends_{split}.csv", columns={"Dialogue_ID": "Dialog", "Speaker": "Speakers"}
        )
    from emomix.errors import ConfigError

    with pytest.raises(ConfigError, match=r"no option 'patern' \(did you mean 'pattern'\?\)"):
        read_corpus("meld", root, patern="x")
    with pytest.raises(ConfigError, match=r"\['Scene'\] are not MELD columns"):
        read_corpus("meld", root, pattern="friends_{split}.csv", columns={"Scene": "Scene_ID"})


def test_meld_like_options_reach_the_reader_from_the_command_line_and_a_recipe(tmp_path):
    from typer.testing import CliRunner

    from emomix.cli import app
    from emomix.data.readers._common import reader_options
    from emomix.train.recipe import Recipe

    root = _meld_like(tmp_path / "friends")
    result = CliRunner().invoke(
        app,
        [
            "corpus",
            "info",
            "meld",
            str(root),
            "--set",
            "pattern=friends_{split}.csv",
            "--set",
            "columns.Dialogue_ID=Scene_ID",
            "--set",
            "columns.Speaker=Speakers",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "4 utterances, 4 speakers, 0 sessions, 3 dialogues" in result.output
    assert reader_options(["columns.Speaker=Speakers", "splits=[train]"]) == {
        "columns": {"Speaker": "Speakers"},
        "splits": ["train"],
    }
    recipe = Recipe.from_dict(
        {
            "corpus": {
                "reader": "meld",
                "root": str(root),
                "options": {
                    "pattern": "friends_{split}.csv",
                    "columns": {"Dialogue_ID": "Scene_ID", "Speaker": "Speakers"},
                },
            },
            "features": {"text": {"encoder": "minilm"}},
            "model": "early_fusion_text",
        }
    )
    corpus = read_corpus(recipe.corpus.reader, recipe.corpus.root, **recipe.corpus.options)
    assert len(corpus.table) == 4


def test_manifest_misspelt_column_is_named(tmp_path):
    rows = [{"utt_id": "a", "speeker": "s1", "text": "hi"}]
    csv_path = make_manifest(tmp_path / "c", fmt="csv", rows=rows)
    with pytest.raises(CorpusFormatError) as caught:
        manifest.read(csv_path)
    assert caught.value.line == 1 and "'speeker'" in str(caught.value) and "'speaker'" in str(caught.value)
    rows = [{"utt_id": "a", "speaker": "s1"}, {"utt_id": "b", "speaker": "s1", "lable": "sad"}]
    jsonl_path = make_manifest(tmp_path / "j", fmt="jsonl", rows=rows)
    with pytest.raises(CorpusFormatError, match=r"manifest.jsonl:2: unknown column\(s\) \['lable'\]"):
        manifest.read(jsonl_path)


def test_manifest_missing_required_and_bad_values(tmp_path):
    with pytest.raises(CorpusFormatError, match=r"missing required column\(s\) \['speaker'\]"):
        manifest.read(make_manifest(tmp_path / "a", rows=[{"utt_id": "a", "text": "hi"}]))
    with pytest.raises(CorpusFormatError, match=r"manifest.jsonl:2: no value in required column 'utt_id'"):
        manifest.read(
            make_manifest(tmp_path / "b", fmt="jsonl", rows=[{"utt_id": "a", "speaker": "s"}, {"speaker": "s"}])
        )
    path = make_manifest(tmp_path / "c", rows=[{"utt_id": "a", "speaker": "s", "words": "x"}])
    path.write_text('utt_id,speaker,words\na,s,"[{""token"": ""hi""}]"\n')
    with pytest.raises(CorpusFormatError, match=r"manifest.csv:2: each entry of 'words' needs token, start and end"):
        manifest.read(path)
    path.write_text("utt_id,speaker,turn\na,s,1\na,s,2\n")
    with pytest.raises(CorpusFormatError, match=r"manifest.csv:3: utt_id 'a' already used on line 2"):
        manifest.read(path)
    path.write_text("utt_id,speaker,start\na,s,soon\n")
    with pytest.raises(CorpusFormatError, match=r"manifest.csv:2: column 'start' should be a number"):
        manifest.read(path)
    with pytest.raises(MissingDataError):
        manifest.read(tmp_path / "nothing-here")


def test_manifest_words_json_string_round_trip(tmp_path):
    rows = [{"utt_id": "a", "speaker": "s", "words": [{"token": "\u00e9t\u00e9", "start": 0, "end": 0.25}]}]
    path = make_manifest(tmp_path, rows=rows)
    assert '""token""' in path.read_text(encoding="utf-8")  # stored as a JSON string inside the CSV
    corpus = manifest.read(path)
    assert _row(corpus, "a")["words"] == [{"token": "\u00e9t\u00e9", "start": 0.0, "end": 0.25}]


def test_iemocap_empty_transcript_line_gives_no_text(tmp_path):
    root = make_iemocap(tmp_path, sessions=(2,))
    path = root / "Session2/dialog/transcriptions/Ses02M_script01_1.txt"
    lines = [
        line if not line.startswith("Ses02M_script01_1_F000") else "Ses02M_script01_1_F000 [003.2000-005.0000]:"
        for line in path.read_text().splitlines()
    ]
    path.write_text("\n".join(lines) + "\n")
    corpus = iemocap.read(root)
    assert _row(corpus, "Ses02M_script01_1_F000")["text"] is None
    assert _row(corpus, "Ses02M_script01_1_M000")["text"] == "Stop it."
    assert any("no transcription line" in note for note in corpus.report.notes)
