"""Corpus readers on the real corpora in ../shared/datasets (slow; skipped when they are absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from emomix.data.paths import shared_datasets_dir
from emomix.data.readers import read_corpus

pytestmark = pytest.mark.slow


def _corpus_dir(name: str) -> Path:
    base = shared_datasets_dir()
    if base is None or not (base / name).is_dir():
        pytest.skip(f"real corpus folder {name}/ not found (set $EMOMIX_DATASETS or place it in ../shared/datasets)")
    return base / name


def test_emodb_real_counts_and_syllables():
    corpus = read_corpus("emodb", _corpus_dir("emodb"))
    table = corpus.table
    assert len(table) == 535
    assert table["speaker"].nunique() == 10
    assert sorted(table["label"].unique()) == ["anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness"]
    assert table["label"].value_counts().to_dict() == {
        "anger": 127,
        "boredom": 81,
        "neutral": 79,
        "happiness": 71,
        "fear": 69,
        "sadness": 62,
        "disgust": 46,
    }
    assert table["text"].notna().all() and corpus.report.skipped == []
    # one silb file of the release (13a01Wb) is empty; every other utterance has syllables
    assert table["words"].notna().sum() == 534
    assert table.loc[table["words"].isna(), "utt_id"].tolist() == ["13a01Wb"]
    first = table[table["utt_id"] == "03a01Fa"].iloc[0]
    assert [w["token"] for w in first["words"]] == ["der", "la", "pen", "liegt", "auf", "dem", "eis", "schrank"]
    tokens = {w["token"] for words in table["words"].dropna() for w in words}
    assert "könnte" in tokens or "könn" in tokens  # latin-1 umlauts decoded
    assert not tokens & {".", "("}


def test_savee_real_counts():
    corpus = read_corpus("savee", _corpus_dir("savee"))
    table = corpus.table
    assert (len(table), table["speaker"].nunique(), table["label"].nunique()) == (480, 4, 7)
    assert table["text"].isna().all() and corpus.report.skipped == []


def test_meld_text_real_counts():
    corpus = read_corpus("meld", _corpus_dir("meld-text"))
    table = corpus.table
    assert table.groupby("split").size().to_dict() == {"train": 9989, "dev": 1109, "test": 2610}
    assert table.groupby("split")["dialogue_id"].nunique().to_dict() == {"train": 1038, "dev": 114, "test": 280}
    assert sorted(table["label"].unique()) == ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
    assert table["audio_path"].isna().all() and any("text only" in n for n in corpus.report.notes)
    first = table[table["utt_id"] == "train_dia0_utt0"].iloc[0]
    assert first["speaker"] == "Chandler" and "company\u2019s" in first["text"]


def test_cli_corpus_info_emodb(capsys):
    from emomix.cli import main

    root = _corpus_dir("emodb")
    with pytest.raises(SystemExit) as exited:
        main(["corpus", "info", "emodb", str(root)])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "corpus emodb  scheme emodb-7" in out
    assert "535 utterances, 10 speakers" in out and "7 labels" in out
    assert "with audio 535, text 535, video 0, words 534" in out
