"""The utterance table: construction, validation and the Parquet round trip."""

import pandas as pd
import pytest

from emomix.data.schema import COLUMNS, Utterance, Word, load_table, make_table, save_table
from emomix.errors import CorpusFormatError, MissingDataError


def _records():
    return [
        Utterance(
            utt_id="u1",
            corpus="c",
            speaker="s1",
            audio_path="/a.wav",
            start=1.0,
            end=2.5,
            text="hello there",
            label="ang",
            raw_label="ang",
            session="S1",
            dialogue_id="d1",
            turn=0,
            words=[Word("hello", 0.0, 0.4), Word("there", 0.5, 0.9)],
            alignment="corpus",
        ),
        Utterance(utt_id="u2", corpus="c", speaker="s2", text=None, label=None, score=-1.5, turn=1, dialogue_id="d1"),
    ]


def test_make_table_has_exact_columns_and_types():
    table = make_table(_records())
    assert tuple(table.columns) == COLUMNS
    assert table.loc[0, "words"] == [
        {"token": "hello", "start": 0.0, "end": 0.4},
        {"token": "there", "start": 0.5, "end": 0.9},
    ]
    assert table.loc[1, "words"] is None
    assert table.loc[1, "text"] is None
    assert table["turn"].tolist() == [0, 1]
    assert table.loc[1, "score"] == -1.5
    assert pd.isna(table.loc[0, "score"])


def test_parquet_round_trip_preserves_everything(tmp_path):
    table = make_table(_records())
    path = save_table(table, tmp_path / "sub" / "corpus.parquet")
    loaded = load_table(path)
    pd.testing.assert_frame_equal(loaded, table)
    assert not list(tmp_path.glob("sub/*.tmp")), "the temporary file must be renamed away"


def test_unknown_field_is_rejected_with_its_name():
    with pytest.raises(CorpusFormatError, match="spekaer"):
        make_table([{"utt_id": "u", "corpus": "c", "spekaer": "x"}])


def test_required_fields_and_duplicates_and_spans():
    with pytest.raises(CorpusFormatError, match="speaker"):
        make_table([{"utt_id": "u", "corpus": "c"}])
    with pytest.raises(CorpusFormatError, match="duplicate utt_id 'u'"):
        make_table([{"utt_id": "u", "corpus": "c", "speaker": "s"}] * 2)
    with pytest.raises(CorpusFormatError, match="ends"):
        make_table([{"utt_id": "u", "corpus": "c", "speaker": "s", "start": 2.0, "end": 1.0}])


def test_load_missing_and_corrupt(tmp_path):
    with pytest.raises(MissingDataError):
        load_table(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(CorpusFormatError, match="bad.parquet"):
        load_table(bad)
