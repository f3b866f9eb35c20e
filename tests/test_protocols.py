"""Cross-validation protocols: fold counts, disjointness, validation options, storage, errors."""

from __future__ import annotations

import importlib.util
import json

import pytest

from emomix.data.protocols import (
    PROTOCOLS,
    Fold,
    FoldPlan,
    leave_one_session_out,
    leave_one_speaker_out,
    make_fold_plan,
    official_split,
    speaker_split,
    stratified_kfold,
)
from emomix.data.schema import make_table
from emomix.errors import MissingDataError, ProtocolError

LABELS = ("angry", "happy", "neutral", "sad")


def iemocap_like(sessions=5, per_speaker=12, labels=LABELS):
    """Sessions of two speakers (F, M), labels cycling, official split by session."""
    rows = []
    for s in range(1, sessions + 1):
        for gender in "FM":
            for i in range(per_speaker):
                rows.append(
                    dict(
                        utt_id=f"Ses{s:02d}{gender}_{i:03d}",
                        corpus="toy",
                        speaker=f"Ses{s:02d}{gender}",
                        session=f"Session{s}",
                        label=labels[i % len(labels)],
                    )
                )
    return make_table(rows)


def speakers_only(n_speakers, per_speaker=8, labels=LABELS):
    """An EmoDB/SAVEE-like table: speakers, no sessions."""
    rows = [
        dict(utt_id=f"spk{s:02d}_{i:02d}", corpus="toy", speaker=f"spk{s:02d}", label=labels[i % len(labels)])
        for s in range(n_speakers)
        for i in range(per_speaker)
    ]
    return make_table(rows)


def speakers_of(table, ids):
    lookup = dict(zip(table["utt_id"], table["speaker"]))
    return {lookup[u] for u in ids}


def assert_parts_disjoint(plan):
    for fold in plan.folds:
        train, validation, test = set(fold.train), set(fold.validation), set(fold.test)
        assert not train & validation and not train & test and not validation & test, fold.name
        for part in (fold.train, fold.validation, fold.test):
            assert part == sorted(part)


# ---- leave one session / speaker out ---------------------------------------------------------


def test_loso_one_fold_per_session_with_next_session_as_validation():
    table = iemocap_like()
    plan = make_fold_plan(table, "loso")
    assert [f.name for f in plan.folds] == [f"Session{i}" for i in range(1, 6)]
    assert [f.validation_groups for f in plan.folds] == [
        ["Session2"],
        ["Session3"],
        ["Session4"],
        ["Session5"],
        ["Session1"],
    ]
    session_of = dict(zip(table["utt_id"], table["session"]))
    for fold in plan.folds:
        assert {session_of[u] for u in fold.test} == {fold.name} and len(fold.test) == 24
        assert {session_of[u] for u in fold.validation} == set(fold.validation_groups) and len(fold.validation) == 24
        assert len(fold.train) == 72 and fold.name not in {session_of[u] for u in fold.train}
        assert not speakers_of(table, fold.train) & speakers_of(table, fold.test)
    assert_parts_disjoint(plan)
    assert sorted(u for f in plan.folds for u in f.test) == sorted(table["utt_id"])
    assert plan.group_column == "session" and plan.speaker_independent and plan.params == {"validation": "group"}


def test_sessions_sort_naturally():
    rows = [
        dict(utt_id=f"u{s}_{i}", corpus="toy", speaker=f"s{s}", session=f"Session{s}", label=LABELS[i])
        for s in (1, 2, 10)
        for i in range(4)
    ]
    plan = leave_one_session_out(make_table(rows))
    assert [f.name for f in plan.folds] == ["Session1", "Session2", "Session10"]
    assert plan.folds[1].validation_groups == ["Session10"] and plan.folds[2].validation_groups == ["Session1"]


@pytest.mark.parametrize("n_speakers", [10, 4])
def test_loso_speaker_one_fold_per_speaker(n_speakers):
    table = speakers_only(n_speakers)
    plan = make_fold_plan(table, "loso-speaker")
    assert len(plan.folds) == n_speakers
    for fold in plan.folds:
        assert speakers_of(table, fold.test) == {fold.name} == set(fold.test_groups)
        assert speakers_of(table, fold.validation) == set(fold.validation_groups) and len(fold.validation_groups) == 1
        assert fold.name not in speakers_of(table, fold.train) | speakers_of(table, fold.validation)
        assert len(fold.train) == (n_speakers - 2) * 8
    assert_parts_disjoint(plan)


def test_validation_speaker_holds_out_one_training_speaker_chosen_by_seed():
    table = iemocap_like()
    plan = make_fold_plan(table, "loso", validation="speaker", seed=3)
    for fold in plan.folds:
        assert len(fold.validation_groups) == 1
        (held,) = fold.validation_groups
        assert speakers_of(table, fold.validation) == {held}
        assert held not in speakers_of(table, fold.train) and held not in speakers_of(table, fold.test)
        assert len(fold.train) + len(fold.validation) == 96
    again = make_fold_plan(table, "loso", validation="speaker", seed=3)
    assert again.to_dict() == plan.to_dict()
    chosen = {
        tuple(f.validation_groups[0] for f in make_fold_plan(table, "loso", validation="speaker", seed=s).folds)
        for s in range(6)
    }
    assert len(chosen) > 1, "the seed must influence which speaker validates"


def test_validation_random_is_a_stratified_seeded_share():
    table = iemocap_like(per_speaker=40)
    plan = make_fold_plan(table, "loso", validation="random", validation_fraction=0.25, seed=1)
    label_of = dict(zip(table["utt_id"], table["label"]))
    for fold in plan.folds:
        counts = {label: sum(label_of[u] == label for u in fold.validation) for label in LABELS}
        assert counts == {label: 20 for label in LABELS}  # 80 training utterances per label, a quarter each
        assert not fold.validation_groups
        # documented caveat: a random share takes speakers that also train
        assert speakers_of(table, fold.validation) & speakers_of(table, fold.train)
        assert not speakers_of(table, fold.validation) & speakers_of(table, fold.test)
    assert plan.params == {"validation": "random", "validation_fraction": 0.25}
    assert (
        make_fold_plan(table, "loso", validation="random", validation_fraction=0.25, seed=1).to_dict() == plan.to_dict()
    )
    other = make_fold_plan(table, "loso", validation="random", validation_fraction=0.25, seed=2)
    assert other.folds[0].validation != plan.folds[0].validation


def test_validation_none_gives_empty_validation():
    table = iemocap_like(sessions=2)
    plan = make_fold_plan(table, "loso", validation="none")
    assert len(plan.folds) == 2
    for fold in plan.folds:
        assert fold.validation == [] and fold.validation_groups == [] and len(fold.train) == 24


# ---- speaker split, official split, k-fold ---------------------------------------------------


def test_speaker_split_eight_one_one():
    table = speakers_only(10)
    plan = make_fold_plan(table, "speaker-split", seed=7)
    (fold,) = plan.folds
    train, validation, test = (speakers_of(table, ids) for ids in (fold.train, fold.validation, fold.test))
    assert (len(train), len(validation), len(test)) == (8, 1, 1)
    assert not train & validation and not train & test and not validation & test
    assert set(fold.test_groups) == test and set(fold.validation_groups) == validation
    assert len(fold.train) + len(fold.validation) + len(fold.test) == len(table)
    assert make_fold_plan(table, "speaker-split", seed=7).fingerprint() == plan.fingerprint()
    assert len({make_fold_plan(table, "speaker-split", seed=s).fingerprint() for s in range(5)}) > 1
    assert plan.params == {"ratios": [8, 1, 1]} and plan.seed == 7


def test_speaker_split_without_validation_and_bad_ratios():
    table = speakers_only(4)
    plan = speaker_split(table, ratios=[3, 0, 1])
    assert plan.folds[0].validation == [] and len(speakers_of(table, plan.folds[0].test)) == 1
    with pytest.raises(ProtocolError, match="three numbers"):
        speaker_split(table, ratios=(8, 1))
    with pytest.raises(ProtocolError, match="positive train and test"):
        speaker_split(table, ratios=(8, 1, 0))
    with pytest.raises(ProtocolError, match="at least 3 speakers"):
        speaker_split(speakers_only(2), ratios=(8, 1, 1))


def test_official_split_uses_dev_as_validation():
    rows = []
    for split, n in (("train", 6), ("dev", 2), ("test", 3)):
        rows += [
            dict(
                utt_id=f"{split}_{i}",
                corpus="meld",
                speaker=["Joey", "Rachel"][i % 2],
                label=LABELS[i % 4],
                split=split,
            )
            for i in range(n)
        ]
    table = make_table(rows)
    plan = make_fold_plan(table, "official")
    (fold,) = plan.folds
    assert fold.train == [f"train_{i}" for i in range(6)]
    assert fold.validation == ["dev_0", "dev_1"] and fold.test == ["test_0", "test_1", "test_2"]
    # MELD's characters speak in every split: the plan says so instead of failing its own check
    assert not plan.speaker_independent and "not speaker-independent" in plan.notes[0]
    plan.check(table)
    assert make_fold_plan(table, "official", validation="none").folds[0].validation == []


def test_official_split_errors():
    table = iemocap_like(sessions=2)
    with pytest.raises(ProtocolError, match="'split' column, which is empty"):
        make_fold_plan(table, "official")
    rows = [
        dict(utt_id="a", corpus="c", speaker="s", split="train"),
        dict(utt_id="b", corpus="c", speaker="s"),
        dict(utt_id="c", corpus="c", speaker="t", split="test"),
    ]
    with pytest.raises(ProtocolError, match=r"1 utterance\(s\) have no split, e\.g\. 'b'"):
        make_fold_plan(make_table(rows), "official")
    rows[1]["split"] = "valid"
    with pytest.raises(ProtocolError, match=r"\['valid'\] are not train/dev/test"):
        make_fold_plan(make_table(rows), "official")


def test_group_kfold_keeps_speakers_in_one_fold():
    table = speakers_only(10, per_speaker=12)
    plan = make_fold_plan(table, "kfold", k=5, seed=0)
    assert [f.name for f in plan.folds] == [f"fold{i}" for i in range(1, 6)]
    test_speakers = [speakers_of(table, f.test) for f in plan.folds]
    for i, fold in enumerate(plan.folds):
        assert set(fold.test_groups) == test_speakers[i]
        assert not speakers_of(table, fold.train) & test_speakers[i]
        # validation="group": the next fold's test part
        assert fold.validation == plan.folds[(i + 1) % 5].test
        assert len(fold.train) + len(fold.validation) + len(fold.test) == len(table)
    assert sum(len(s) for s in test_speakers) == 10
    assert sorted(u for f in plan.folds for u in f.test) == sorted(table["utt_id"])
    assert plan.speaker_independent and plan.group_column == "speaker"
    assert_parts_disjoint(plan)


def test_plain_kfold_is_stratified_by_label():
    table = speakers_only(3, per_speaker=20)  # 15 utterances per label
    plan = stratified_kfold(table, k=5, group=None, validation="none", seed=4)
    label_of = dict(zip(table["utt_id"], table["label"]))
    for fold in plan.folds:
        assert sorted(label_of[u] for u in fold.test) == sorted(LABELS * 3)
        assert fold.validation == [] and len(fold.train) == 48
    assert not plan.speaker_independent and plan.group_column is None
    assert make_fold_plan(table, "kfold", group="none", validation="none", seed=4).fingerprint() == plan.fingerprint()


def test_kfold_errors():
    table = speakers_only(4)
    with pytest.raises(ProtocolError, match="needs at least k=5 speakers, the table has 4"):
        make_fold_plan(table, "kfold", k=5)
    with pytest.raises(ProtocolError, match="k >= 3"):
        make_fold_plan(table, "kfold", k=2)
    assert len(make_fold_plan(table, "kfold", k=2, validation="none").folds) == 2
    with pytest.raises(ProtocolError, match="k must be an integer of at least 2"):
        make_fold_plan(table, "kfold", k=1)
    unlabelled = make_table(
        [dict(utt_id=f"u{i}", corpus="c", speaker=f"s{i % 5}", label=None if i == 3 else "sad") for i in range(20)]
    )
    with pytest.raises(ProtocolError, match=r"needs a label on every utterance; 1 have none, e\.g\. 'u3'"):
        make_fold_plan(unlabelled, "kfold")


# ---- bad inputs --------------------------------------------------------------------------------


def test_unknown_protocol_and_parameter():
    table = iemocap_like(sessions=3)
    with pytest.raises(ProtocolError, match="unknown protocol 'leave-one-out'; available: loso, loso-speaker"):
        make_fold_plan(table, "leave-one-out")
    with pytest.raises(ProtocolError, match=r"does not take parameter\(s\) \['folds'\]; it accepts \['validation'"):
        make_fold_plan(table, "loso", folds=3)
    with pytest.raises(ProtocolError, match="unknown validation 'dev'"):
        make_fold_plan(table, "loso", validation="dev")
    with pytest.raises(ProtocolError, match="validation_fraction applies only to validation='random'"):
        make_fold_plan(table, "loso", validation_fraction=0.2)
    with pytest.raises(ProtocolError, match="between 0 and 1"):
        make_fold_plan(table, "loso", validation="random", validation_fraction=1.5)
    with pytest.raises(ProtocolError, match="seed must be an integer"):
        make_fold_plan(table, "loso", seed="abc")


def test_too_few_groups():
    with pytest.raises(ProtocolError, match=r"loso needs at least 3 sessions .* has 1 .*'speaker-split', 'kfold'"):
        make_fold_plan(iemocap_like(sessions=1), "loso")
    with pytest.raises(ProtocolError, match=r"has 2 .*use validation='speaker', 'random' or 'none'"):
        make_fold_plan(iemocap_like(sessions=2), "loso")
    with pytest.raises(ProtocolError, match="loso-speaker needs at least 2 speakers"):
        make_fold_plan(speakers_only(1), "loso-speaker", validation="none")
    with pytest.raises(ProtocolError, match="'session' column, which is empty.*'loso-speaker'"):
        make_fold_plan(speakers_only(4), "loso")
    with pytest.raises(ProtocolError, match="validation='speaker' needs at least 2 training speakers"):
        make_fold_plan(speakers_only(2), "loso-speaker", validation="speaker")


def test_random_validation_needs_labels():
    table = iemocap_like(sessions=3)
    table.loc[5, "label"] = None
    with pytest.raises(ProtocolError, match="validation='random' .* 1 have none"):
        make_fold_plan(table, "loso", validation="random")
    assert len(make_fold_plan(table, "loso").folds) == 3  # no stratification, no need for labels


def test_speakers_crossing_sessions_are_reported():
    rows = [
        dict(utt_id=f"u{s}{i}", corpus="c", speaker=f"spk{i % 2}", session=f"S{s}", label="sad")
        for s in range(3)
        for i in range(4)
    ]
    table = make_table(rows)
    plan = make_fold_plan(table, "loso")
    assert not plan.speaker_independent
    assert "appear in more than one session" in plan.notes[0]
    assert "NOT speaker-independent" in plan.format(table)


# ---- determinism, storage, checks, printing -------------------------------------------------


@pytest.mark.parametrize(
    "protocol,params",
    [
        ("loso", {"validation": "speaker", "seed": 2}),
        ("loso", {"validation": "random", "seed": 2}),
        ("loso-speaker", {}),
        ("speaker-split", {"seed": 5}),
        ("kfold", {"seed": 1}),
        ("kfold", {"group": None, "validation": "random"}),
    ],
)
def test_plan_does_not_depend_on_row_order(protocol, params):
    table = iemocap_like(per_speaker=16)
    shuffled = table.sample(frac=1.0, random_state=11).reset_index(drop=True)
    assert make_fold_plan(shuffled, protocol, **params).to_dict() == make_fold_plan(table, protocol, **params).to_dict()


def test_json_round_trip(tmp_path):
    table = iemocap_like()
    plan = make_fold_plan(table, "loso", validation="random", validation_fraction=0.2, seed=9)
    path = plan.save(tmp_path / "plans" / "loso.json")
    assert not list(path.parent.glob("*.tmp"))
    loaded = FoldPlan.load(path)
    assert loaded == plan and loaded.fingerprint() == plan.fingerprint()
    stored = json.loads(path.read_text())
    assert stored["fingerprint"] == plan.fingerprint() and stored["protocol"] == "loso" and stored["seed"] == 9
    loaded.check(table)
    assert FoldPlan.from_dict(json.loads(json.dumps(make_fold_plan(table, "kfold").to_dict()))).protocol == "kfold"


def test_load_reports_missing_and_malformed_files(tmp_path):
    with pytest.raises(MissingDataError, match="missing.json does not exist"):
        FoldPlan.load(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{\n "protocol": "loso",\n "folds": [\n')
    with pytest.raises(ProtocolError, match=r"broken\.json:4: not valid JSON"):
        FoldPlan.load(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"protocol": "loso", "folds": [{"name": "S1", "train": ["a"], "test": "b"}]}))
    with pytest.raises(ProtocolError, match=r"wrong\.json: folds\[0\]: missing key\(s\) \['validation'\]"):
        FoldPlan.load(wrong)
    wrong.write_text(
        json.dumps({"protocol": "loso", "folds": [{"name": "S1", "train": ["a"], "validation": [], "test": "b"}]})
    )
    with pytest.raises(ProtocolError, match="'test' must be a list of strings"):
        FoldPlan.load(wrong)


def test_edited_file_is_caught_by_its_fingerprint(tmp_path):
    table = iemocap_like(sessions=3)
    path = make_fold_plan(table, "loso").save(tmp_path / "plan.json")
    data = json.loads(path.read_text())
    moved = data["folds"][0]["test"].pop()
    data["folds"][0]["train"].append(moved)
    path.write_text(json.dumps(data))
    with pytest.raises(ProtocolError, match="does not match the folds"):
        FoldPlan.load(path)
    del data["fingerprint"]
    path.write_text(json.dumps(data))
    edited = FoldPlan.load(path)  # a deliberate edit is accepted once the fingerprint is gone …
    with pytest.raises(
        ProtocolError, match=r"fold 'Session1': .*session \['Session1'\] is held out for test but appears in train"
    ):
        edited.check(table)  # … and check() still finds what it broke


def tampered(plan, **changes):
    data = plan.to_dict()
    del data["fingerprint"]
    for fold_index, key, value in changes.get("edits", []):
        data["folds"][fold_index][key] = value
    return FoldPlan.from_dict(data)


def test_check_catches_tampered_plans():
    table = speakers_only(4)
    plan = make_fold_plan(table, "loso-speaker", validation="none")
    plan.check(table)
    first = plan.folds[0]
    with pytest.raises(
        ProtocolError, match=r"fold 'spk00': 1 utterance\(s\) in both train and test, e\.g\. 'spk01_00'"
    ):
        tampered(plan, edits=[(0, "test", [*first.test, "spk01_00"])]).check(table)
    with pytest.raises(ProtocolError, match="not in the table, e.g. 'ghost'"):
        tampered(plan, edits=[(0, "train", [*first.train, "ghost"])]).check(table)
    with pytest.raises(ProtocolError, match="listed twice in test"):
        tampered(plan, edits=[(0, "test", first.test + first.test[:1])]).check(table)
    # a speaker moved wholesale: groups say spk00, speakers disagree
    swapped = tampered(plan, edits=[(0, "test", first.test[:-1]), (0, "train", first.train + first.test[-1:])])
    with pytest.raises(ProtocolError, match="speaker \\['spk00'\\] is held out for test but appears in train"):
        swapped.check(table)
    dropped = tampered(plan, edits=[(0, "test", first.test[:-1])])
    with pytest.raises(ProtocolError, match=r"never tests 1 utterance\(s\) of the table, e\.g\. 'spk00_07'"):
        dropped.check(table)
    with pytest.raises(ProtocolError, match="the test part is empty"):
        tampered(plan, edits=[(0, "test", [])]).check(table)
    second = plan.folds[1]
    no_groups = tampered(
        plan,
        edits=[
            (1, "test_groups", []),
            (1, "test", [*second.test, "spk02_00"]),
            (1, "train", [u for u in second.train if u != "spk02_00"]),
        ],
    )
    with pytest.raises(ProtocolError, match="speaker\\(s\\) 'spk02' appear in both train and test"):
        no_groups.check(table)


def test_fingerprint_is_stable_and_content_based():
    plan = FoldPlan("loso", {"validation": "none"}, [Fold("S1", ["b", "a"], [], ["c"], ["S1"], [])], seed=0)
    assert plan.fingerprint() == "6d0c575dc592a6aa"  # a change here invalidates every stored report: do not
    same_folds = FoldPlan("custom", {"x": 1}, [Fold("S1", ["a", "b"], [], ["c"])], seed=5)
    assert same_folds.fingerprint() == plan.fingerprint()
    assert FoldPlan("loso", {}, [Fold("S1", ["a"], ["b"], ["c"])]).fingerprint() != plan.fingerprint()


def test_format_names_each_held_out_group_and_counts():
    table = iemocap_like()
    plan = make_fold_plan(table, "loso")
    text = plan.format(table)
    assert plan.fingerprint() in text and "loso (validation=group, seed=0)" in text
    lines = text.splitlines()
    header = lines[2]
    assert "test groups" in header and "train utt/spk" in header and "test:angry" in header
    for fold in plan.folds:
        (line,) = [row for row in lines if row.startswith(fold.name + " ")]
        cells = line.split()
        assert cells[:3] == [fold.name, fold.name, fold.validation_groups[0]]
        assert cells[3:6] == ["72/6", "24/2", "24/2"] and cells[6:] == ["6", "6", "6", "6"]


def test_every_protocol_has_a_docstring_and_entry():
    assert set(PROTOCOLS) == {"loso", "loso-speaker", "speaker-split", "official", "kfold"}
    assert PROTOCOLS["loso"] is leave_one_session_out and PROTOCOLS["loso-speaker"] is leave_one_speaker_out
    assert PROTOCOLS["official"] is official_split
    assert all(fn.__doc__ for fn in PROTOCOLS.values())


# ---- the command line ------------------------------------------------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("emomix.data.readers.manifest") is None,
    reason="emomix.data.readers.manifest (the manifest reader) is not written yet",
)
def test_cli_folds_from_a_manifest(tmp_path, capsys):
    from emomix.cli import main

    manifest = tmp_path / "manifest.csv"
    lines = ["utt_id,speaker,session,label,text"]
    for s in range(1, 4):
        for gender in "FM":
            for i in range(4):
                lines.append(f"Ses{s:02d}{gender}_{i},Ses{s:02d}{gender},Session{s},{LABELS[i]},hello there")
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "plan.json"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "folds",
                "manifest",
                str(manifest),
                "--protocol",
                "loso",
                "--set",
                "validation=speaker",
                "--set",
                "seed=4",
                "--out",
                str(out),
            ]
        )
    printed = capsys.readouterr().out
    assert exc.value.code == 0, printed
    plan = FoldPlan.load(out)
    assert [f.name for f in plan.folds] == ["Session1", "Session2", "Session3"]
    assert plan.params == {"validation": "speaker"} and plan.seed == 4
    assert plan.fingerprint() in printed and "fold plan written to" in printed
    for fold in plan.folds:
        assert any(line.startswith(f"{fold.name} ") for line in printed.splitlines())
    with pytest.raises(SystemExit) as exc:
        main(["folds", "manifest", str(manifest), "--protocol", "loso", "--set", "folds=3"])
    assert exc.value.code == 2 and "does not take parameter(s) ['folds']" in capsys.readouterr().err


# ---- real corpora (slow) ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("reader,folds", [("emodb", 10), ("savee", 4)])
def test_leave_one_speaker_out_on_real_corpora(reader, folds):
    from emomix.data.paths import shared_datasets_dir
    from emomix.data.readers import read_corpus

    root = shared_datasets_dir()
    if root is None or not (root / reader).is_dir():
        pytest.skip(f"{reader} is not in the shared datasets folder (set EMOMIX_DATASETS)")
    if importlib.util.find_spec(f"emomix.data.readers.{reader}") is None:
        pytest.skip(f"the {reader} reader is not written yet")
    table = read_corpus(reader, root / reader).table
    plan = make_fold_plan(table, "loso-speaker")
    assert len(plan.folds) == folds
    assert sorted(u for f in plan.folds for u in f.test) == sorted(table["utt_id"])
    assert all(not speakers_of(table, f.train) & speakers_of(table, f.test) for f in plan.folds)
