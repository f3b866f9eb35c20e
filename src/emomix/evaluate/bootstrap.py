"""A paired bootstrap over test items, for comparisons a fold-level test cannot make.

A corpus with one official split (MELD) gives one fold, so the paired tests over folds in
:mod:`emomix.evaluate.compare` are undefined. What can still be asked is whether the difference
between two trained runs on *these* test utterances is larger than resampling the test set would
produce: resample the test items with replacement (whole dialogues when the predictions carry a
``dialogue_id``, since the utterances of one dialogue are not independent), score both runs on
every resample, and read the distribution of the difference. The trained models stay fixed, so
this says nothing about training variance (seeds do that).

The metrics are computed from weighted confusion matrices and agree with
:mod:`emomix.evaluate.metrics` (UA over the classes present, macro-F1 over the classes present or
predicted, weighted-F1 by support); with every weight 1 they are the runs' pooled figures.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

RESAMPLES = 2000


def confusion_metric(confusion: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` of ``R × C × C`` confusion matrices (rows true, columns predicted; real-valued
    counts allowed): one value per matrix, NaN where no utterance is counted."""
    support = confusion.sum(axis=2)
    predicted = confusion.sum(axis=1)
    hits = np.diagonal(confusion, axis1=1, axis2=2)
    total = support.sum(axis=1)
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "wa":
            return hits.sum(axis=1) / total
        if metric == "ua":
            recall = np.where(present, hits / np.where(present, support, 1.0), 0.0)
            return recall.sum(axis=1) / present.sum(axis=1)
        denominator = support + predicted
        f1 = np.where(denominator > 0, 2.0 * hits / np.where(denominator > 0, denominator, 1.0), 0.0)
        if metric == "macro_f1":
            scored = present | (predicted > 0)
            return np.where(present.any(axis=1), (f1 * scored).sum(axis=1) / scored.sum(axis=1), np.nan)
        if metric == "weighted_f1":
            return (f1 * support).sum(axis=1) / total
    raise ValueError(f"unknown metric {metric!r}")


def paired_bootstrap(
    reference: pd.DataFrame,
    other: pd.DataFrame,
    classes: list[str],
    metric: str,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """The paired bootstrap of ``metric(other) − metric(reference)`` over their shared test items.

    Both tables are predictions (``fold``, ``seed``, ``utt_id``, ``label``, ``pred``, optionally
    ``dialogue_id``); a run's value on a resample is its metric averaged over its seeds, as the
    pooled figure is. Returns ``delta`` (on the full test set), ``ci_low``/``ci_high`` (the 2.5 and
    97.5 % points), ``p_bootstrap`` (two-sided: twice the smaller share of resamples on either side
    of 0, at least ``1 / resamples``), ``n_items``, ``n_units`` and ``unit`` (``dialogue`` or
    ``utterance``).
    """
    index = {c: i for i, c in enumerate(classes)}
    labelled = [t[t["label"].notna()] for t in (reference, other)]
    keys = [set(zip(t["fold"].astype(str), t["utt_id"].astype(str), strict=True)) for t in labelled]
    items = sorted(keys[0] & keys[1])
    if not items:
        raise ValueError("the two runs share no labelled test utterance")
    position = {k: i for i, k in enumerate(items)}
    first = labelled[0].drop_duplicates(["fold", "utt_id"]).set_index(["fold", "utt_id"])
    unit = "utterance"
    units = np.arange(len(items))
    if "dialogue_id" in first.columns:
        dialogues = first["dialogue_id"].reindex(pd.MultiIndex.from_tuples(items))
        if dialogues.notna().all() and dialogues.astype(str).str.len().gt(0).all():
            pairs = [f"{fold}\x1f{d}" for (fold, _), d in zip(items, dialogues.astype(str), strict=True)]
            units = pd.factorize(pd.Series(pairs))[0]
            unit = "dialogue"
    n_units = int(units.max()) + 1
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=resamples).astype(float)
    weights = np.vstack([np.ones((1, len(items))), counts[:, units]])  # row 0: the test set itself

    def values(table: pd.DataFrame) -> np.ndarray:
        per_seed = []
        for _, part in table.groupby("seed", sort=True):
            rows = pd.Series(
                [position.get(k) for k in zip(part["fold"].astype(str), part["utt_id"].astype(str), strict=True)]
            )
            truth = part["label"].astype(str).map(index).reset_index(drop=True)
            guess = part["pred"].astype(str).map(index).reset_index(drop=True)
            keep = (rows.notna() & truth.notna() & guess.notna()).to_numpy()
            cells = (truth[keep] * len(classes) + guess[keep]).to_numpy(dtype=int)
            onehot = np.zeros((len(items), len(classes) ** 2))
            onehot[rows[keep].to_numpy(dtype=int), cells] = 1.0
            confusion = (weights @ onehot).reshape(len(weights), len(classes), len(classes))
            per_seed.append(confusion_metric(confusion, metric))
        return np.nanmean(np.vstack(per_seed), axis=0)

    difference = values(labelled[1]) - values(labelled[0])
    observed, spread = float(difference[0]), difference[1:]
    spread = spread[np.isfinite(spread)]
    share_low, share_high = float(np.mean(spread <= 0)), float(np.mean(spread >= 0))
    return {
        "delta": observed,
        "ci_low": float(np.quantile(spread, 0.025)) if spread.size else math.nan,
        "ci_high": float(np.quantile(spread, 0.975)) if spread.size else math.nan,
        "p_bootstrap": min(1.0, max(2.0 * min(share_low, share_high), 1.0 / resamples)),
        "n_items": len(items),
        "n_units": n_units,
        "unit": unit,
        "resamples": resamples,
    }
