"""Label schemes: built-ins, user-defined mappings, and counted drops."""

import pytest

from emomix.data.labels import LabelScheme, apply_scheme, get_scheme, list_schemes
from emomix.data.schema import make_table
from emomix.errors import LabelError


def _table(labels):
    return make_table(
        [{"utt_id": f"u{i}", "corpus": "c", "speaker": "s", "label": label} for i, label in enumerate(labels)]
    )


def test_builtin_schemes_are_the_published_ones():
    assert {"iemocap-4", "iemocap-6", "iemocap-8", "meld-7", "emodb-7", "savee-7", "ravdess-8", "mosi-2"} <= set(
        list_schemes()
    )
    assert get_scheme("iemocap-4").classes == ("angry", "happy", "neutral", "sad")
    assert get_scheme("IEMOCAP-8").num_classes == 8
    assert "dis" not in get_scheme("iemocap-8").mapping


def test_iemocap4_merges_excited_into_happy_and_counts_drops():
    kept, dropped = apply_scheme(_table(["hap", "exc", "ang", "fru", "xxx", "neu", "sad", "fru", None]), "iemocap-4")
    assert kept["label"].tolist() == ["happy", "happy", "angry", "neutral", "sad"]
    assert kept["raw_label"].tolist() == ["hap", "exc", "ang", "neu", "sad"]
    assert dropped == {"<missing>": 1, "fru": 2, "xxx": 1}


def test_iemocap6_keeps_excited_separate():
    kept, _ = apply_scheme(_table(["hap", "exc", "fru"]), "iemocap-6")
    assert kept["label"].tolist() == ["happy", "excited", "frustrated"]


def test_user_defined_mapping_from_dict_and_yaml(tmp_path):
    scheme = get_scheme({"name": "arousal", "classes": ["high", "low"], "map": {"ang": "high", "SAD": "low"}})
    kept, dropped = apply_scheme(_table(["ang", "sad", "neu"]), scheme)
    assert kept["label"].tolist() == ["high", "low"] and dropped == {"neu": 1}
    path = tmp_path / "valence.yaml"
    path.write_text("classes: [pos, neg]\nmap: {hap: pos, ang: neg}\n")
    assert get_scheme(str(path)).mapping == {"hap": "pos", "ang": "neg"}


def test_scheme_errors_are_specific():
    with pytest.raises(LabelError, match="unknown label scheme 'iemocap-5'"):
        get_scheme("iemocap-5")
    with pytest.raises(LabelError, match="not among its classes"):
        LabelScheme.from_dict("bad", {"classes": ["a"], "map": {"x": "b"}})
    with pytest.raises(LabelError, match="unknown key"):
        LabelScheme.from_dict("bad", {"classes": ["a"], "mapping": {}})
    with pytest.raises(LabelError, match="not a class"):
        get_scheme("mosi-2").index("neutral")
