"""The paired bootstrap over test items that `emomix compare` adds when runs share one fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tests.test_evaluate import make_run

from emomix.evaluate.bootstrap import confusion_metric, paired_bootstrap
from emomix.evaluate.compare import compare_runs, format_comparison
from emomix.evaluate.metrics import METRICS, metrics_from_predictions

CLASSES = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]


def predictions(accuracy: float, n: int = 600, seeds=(0,), dialogue_size: int = 6, seed: int = 0) -> pd.DataFrame:
    """One fold of ``n`` utterances in dialogues of ``dialogue_size``; each seed right on about
    ``accuracy`` of them, otherwise a random other class. 'surprise' is never the truth."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(CLASSES[:-1], size=n, p=[0.1, 0.05, 0.05, 0.15, 0.45, 0.2])
    rows = []
    for s in seeds:
        right = rng.random(n) < accuracy
        guess = np.where(right, truth, rng.choice(CLASSES, size=n))
        rows.append(
            pd.DataFrame(
                {
                    "utt_id": [f"u{i:04d}" for i in range(n)],
                    "fold": "official",
                    "seed": s,
                    "label": truth,
                    "pred": guess,
                    "dialogue_id": [f"d{i // dialogue_size}" for i in range(n)],
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def test_unit_weights_give_the_pooled_metrics_of_the_evaluator():
    table = predictions(0.55, seeds=(0, 1, 2))
    headline = metrics_from_predictions(table, CLASSES)["headline"]
    for metric in METRICS:
        per_seed = []
        for _, part in table.groupby("seed"):
            confusion = np.zeros((1, len(CLASSES), len(CLASSES)))
            for t, p in zip(part["label"], part["pred"], strict=True):
                confusion[0, CLASSES.index(t), CLASSES.index(p)] += 1
            per_seed.append(confusion_metric(confusion, metric)[0])
        assert np.mean(per_seed) == pytest.approx(headline[metric], abs=1e-12), metric


def test_identical_runs_differ_by_nothing():
    table = predictions(0.6)
    result = paired_bootstrap(table, table.copy(), CLASSES, "weighted_f1", resamples=300)
    assert result["delta"] == 0.0 and result["p_bootstrap"] == 1.0
    assert result["ci_low"] == result["ci_high"] == 0.0


def test_a_clearly_better_run_is_supported_and_a_tiny_difference_is_not():
    worse, better = predictions(0.4, seed=1), predictions(0.8, seed=1)
    result = paired_bootstrap(worse, better, CLASSES, "ua", resamples=500)
    headline = [metrics_from_predictions(t, CLASSES)["headline"]["ua"] for t in (worse, better)]
    assert result["delta"] == pytest.approx(headline[1] - headline[0])
    assert result["p_bootstrap"] <= 0.01 and result["ci_low"] > 0
    assert (result["unit"], result["n_units"], result["n_items"]) == ("dialogue", 100, 600)
    # one utterance flipped among 600: no evidence either way
    nudged = worse.copy()
    wrong = nudged.index[nudged["label"] != nudged["pred"]][0]
    nudged.loc[wrong, "pred"] = nudged.loc[wrong, "label"]
    assert paired_bootstrap(worse, nudged, CLASSES, "wa", resamples=500)["p_bootstrap"] > 0.5


def test_whole_dialogues_are_resampled_so_clustered_errors_widen_the_interval():
    reference = predictions(0.5, dialogue_size=20, seed=2)
    other = reference.copy()
    # the other run fixes every error of every second dialogue and none elsewhere: clustered gains
    dialogue = other["dialogue_id"].str[1:].astype(int)
    other.loc[dialogue % 2 == 0, "pred"] = other.loc[dialogue % 2 == 0, "label"]
    clustered = paired_bootstrap(reference, other, CLASSES, "wa", resamples=1000)
    flat = paired_bootstrap(
        reference.assign(dialogue_id=None), other.assign(dialogue_id=None), CLASSES, "wa", resamples=1000
    )
    assert flat["unit"] == "utterance" and clustered["unit"] == "dialogue" and clustered["n_units"] == 30
    assert clustered["delta"] == pytest.approx(flat["delta"])
    assert clustered["ci_high"] - clustered["ci_low"] > 1.2 * (flat["ci_high"] - flat["ci_low"])


def test_runs_sharing_no_utterance_are_refused():
    a = predictions(0.5)
    b = a.assign(utt_id=a["utt_id"] + "x")
    with pytest.raises(ValueError, match="share no labelled test utterance"):
        paired_bootstrap(a, b, CLASSES, "ua")


def test_compare_adds_the_bootstrap_when_runs_share_one_fold(tmp_path):
    a = make_run(tmp_path, "a", {("s1", 0): 1}, histories=False)
    b = make_run(tmp_path, "b", {("s1", 0): 4}, aux=False, histories=False)
    table = compare_runs([a, b])
    row = table.iloc[1]
    assert row["n_pairs"] == 1 and np.isnan(row["p_ttest"])
    assert 0 < row["p_bootstrap"] <= 1 and row["ci_low"] <= row["delta"] <= row["ci_high"]
    assert row["bootstrap_units"] == "4 test utterances"
    text = format_comparison(table)
    conclusion = text.split("## Conclusion", 1)[1].split("## Runs", 1)[0]
    assert "The paired bootstrap over 4 test utterances" in conclusion and "Wilcoxon p possible" not in conclusion
    # several shared folds: the fold-level tests, no bootstrap
    many = compare_runs(
        [make_run(tmp_path, "c", {("s1", 0): 1, ("s2", 0): 2}), make_run(tmp_path, "d", {("s1", 0): 3, ("s2", 0): 4})]
    )
    assert np.isnan(many.iloc[1]["p_bootstrap"]) and many.iloc[1]["n_pairs"] == 2
