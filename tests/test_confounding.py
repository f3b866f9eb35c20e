"""Speaker–label confounding: measured by the fold plan, reported, and per-speaker normalisation
falls back to global statistics (with a warning) when a speaker's mean would be its label."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from emomix.cache.memory import MemoryStore
from emomix.data.protocols import (
    CONFOUNDING_V_THRESHOLD,
    FoldPlan,
    confounding_sentence,
    make_fold_plan,
    speaker_label_confounding,
)
from emomix.data.schema import make_table
from emomix.features import build_features, parse_feature_specs


def corpus(confounded: bool, speakers: int = 6, per_speaker: int = 20, seed: int = 0) -> pd.DataFrame:
    """A table whose speakers each hold one emotion (confounded) or all emotions evenly."""
    rng = np.random.default_rng(seed)
    labels = ["angry", "sad", "happy"]
    rows = []
    for s in range(speakers):
        for i in range(per_speaker):
            label = labels[s % 3] if confounded else labels[i % 3]
            rows.append(
                {
                    "utt_id": f"s{s}_{i:02d}",
                    "speaker": f"s{s}",
                    "session": f"s{s}",
                    "label": label,
                    "corpus": "toy",
                    "audio_path": None,
                    "text": None,
                }
            )
    rng.shuffle(rows)
    return make_table(rows)


def test_confounded_table_measures_high_and_balanced_low():
    high = speaker_label_confounding(corpus(True))
    low = speaker_label_confounding(corpus(False))
    assert high["high"] and high["cramers_v"] > CONFOUNDING_V_THRESHOLD and high["dominated_share"] == 1.0
    assert high["nmi"] > 0.9
    assert not low["high"] and low["cramers_v"] < 0.1 and low["dominated"] == 0 and low["nmi"] < 0.05


def test_speakers_with_few_utterances_are_not_counted():
    table = corpus(False)
    singles = make_table(
        [
            {
                "utt_id": f"x{i}",
                "speaker": f"x{i}",
                "session": "x",
                "label": "sad",
                "corpus": "toy",
                "audio_path": None,
                "text": None,
            }
            for i in range(30)
        ]
    )
    measured = speaker_label_confounding(pd.concat([table, singles], ignore_index=True))
    assert measured["speakers"] == 6 and not measured["high"]  # thirty one-utterance speakers ignored


def test_fold_plan_measures_each_training_part_and_round_trips(tmp_path):
    plan = make_fold_plan(corpus(True), "loso-speaker", validation="none")
    assert plan.confounding["high"] and set(plan.confounding["folds"]) == {f.name for f in plan.folds}
    assert all(f["speakers"] == 5 for f in plan.confounding["folds"].values())  # the test speaker is left out
    plan.save(tmp_path / "folds.json")
    again = FoldPlan.load(tmp_path / "folds.json")
    assert again.confounding == plan.confounding and again.fingerprint() == plan.fingerprint()
    assert "HIGH" in plan.format(corpus(True)) and "HIGH" in confounding_sentence(plan.confounding)
    assert "low" in confounding_sentence(make_fold_plan(corpus(False), "loso-speaker", validation="none").confounding)


def _features(table: pd.DataFrame, tmp_path, seed: int = 0) -> str:
    """One 4-d vector per utterance whose mean depends on the label only."""
    rng = np.random.default_rng(seed)
    offset = {"angry": 2.0, "sad": -2.0, "happy": 0.0}
    arrays = {
        u: (rng.normal(size=4) + offset[label]).astype(np.float32) for u, label in zip(table["utt_id"], table["label"])
    }
    path = tmp_path / "vectors.npz"
    np.savez(path, **arrays)
    return str(path)


def _label_gap(feature_set, table) -> float:
    labels = table.set_index("utt_id").loc[feature_set.utt_ids, "label"].to_numpy()
    states = np.stack([feature_set.features[u]["audio"]["states"][0] for u in feature_set.utt_ids])
    return float(states[labels == "angry"].mean() - states[labels == "sad"].mean())


@pytest.mark.parametrize("statistics", ["auto", "speaker", "global"])
def test_confounded_corpus_falls_back_to_global_statistics_with_a_warning(tmp_path, statistics):
    table = corpus(True)
    plan = make_fold_plan(table, "loso-speaker", validation="none")
    specs = parse_feature_specs(
        {
            "audio": {
                "encoder": {"name": "file", "path": _features(table, tmp_path)},
                "speaker_normalisation": True,
                "speaker_statistics": statistics,
            }
        }
    )
    built = build_features(table, specs, MemoryStore(), confounding=plan.confounding, progress=False)
    if statistics == "speaker":  # forced: the label is erased, as the user asked
        assert built.statistics == {"audio": "speaker"} and not built.warnings
        assert abs(_label_gap(built, table)) < 1e-4
    else:
        assert built.statistics == {"audio": "global"} and _label_gap(built, table) > 2.0
        assert bool(built.warnings) == (statistics == "auto")
        assert not built.normalisers["audio"].speakers  # every speaker (and inference) gets the global statistics
    if statistics == "auto":
        assert "confounded" in built.warnings[0] and "speaker_statistics: speaker" in built.warnings[0]


def test_balanced_corpus_keeps_per_speaker_statistics(tmp_path):
    table = corpus(False)
    plan = make_fold_plan(table, "loso-speaker", validation="none")
    specs = parse_feature_specs(
        {"audio": {"encoder": {"name": "file", "path": _features(table, tmp_path)}, "speaker_normalisation": True}}
    )
    built = build_features(table, specs, MemoryStore(), confounding=plan.confounding, progress=False)
    assert built.statistics == {"audio": "speaker"} and not built.warnings
    assert len(built.normalisers["audio"].speakers) == 6
