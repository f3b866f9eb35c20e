"""Classification metrics of emotion predictions: per fold, pooled over folds, across folds and seeds.

Plain functions on arrays and one function on the predictions table (the schema of
``docs/training.md``). Nothing here reads or writes files.

Metrics (``classes`` fixes the class order everywhere):

``ua``           unweighted accuracy = macro recall: the mean of the per-class recalls
``wa``           weighted accuracy = plain accuracy (each utterance counts once)
``macro_f1``     the mean of the per-class F1 scores
``weighted_f1``  the per-class F1 scores weighted by the class's support (true count)

**Classes absent from the truth.** A fold of a leave-one-speaker-out plan may hold no utterance
of some class. Its recall is then 0/0, undefined; counting it as 0 (scikit-learn's default
``zero_division=0``) would punish the model for the fold's composition. We leave such a class
out of that fold's UA (the mean recall over the classes with support > 0) and record the class
in ``absent_classes`` so the report can say so. Macro-F1 averages the F1 of every class of the
scheme that appears in the truth **or** the predictions — per fold and pooled alike, the classes
scikit-learn's ``f1_score(average="macro")`` uses without ``labels=``. A class predicted in a fold
that holds none of it has F1 = 0 (every such prediction is a false positive) and counts; leaving
it out would score a one-class fold by that class alone (UA 0.167 but macro-F1 0.286 when a sixth
of its utterances are right). Per-class precision of a class that was never predicted is NaN
(``null`` in JSON); its F1, ``2·TP / (2·TP + FP + FN)``, is defined whenever the class was
present or predicted.

**Summaries.** :func:`summarise` gives mean, sample SD (``ddof=1``), ``n`` and the 95 %
confidence interval of the mean from Student's t with ``n − 1`` degrees of freedom
(``mean ± t₀.₉₇₅ · SD / √n``). NaN values are dropped first; with one value SD and CI are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from emomix.constants import IGNORE_INDEX
from emomix.errors import LabelError
from emomix.metrics_core import unweighted_accuracy as unweighted_accuracy_of_indices
from emomix.metrics_core import weighted_f1 as weighted_f1_of_indices

METRICS: tuple[str, ...] = ("ua", "wa", "macro_f1", "weighted_f1")
METRIC_NAMES: dict[str, str] = {"ua": "UA", "wa": "WA", "macro_f1": "macro-F1", "weighted_f1": "weighted-F1"}


# --------------------------------------------------------------------------------------------
# Metrics on arrays


def confusion_counts(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """``C × C`` integer counts: row = true class, column = predicted class, in ``classes`` order."""
    from sklearn.metrics import confusion_matrix

    classes = list(classes)
    if len(y_true) == 0:
        return np.zeros((len(classes), len(classes)), dtype=np.int64)
    return confusion_matrix(np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object), labels=classes).astype(
        np.int64
    )


def normalise_rows(counts: np.ndarray) -> np.ndarray:
    """Row-normalised confusion matrix (each row sums to 1); a row with no true utterance is NaN."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / np.where(totals > 0, totals, 1.0), np.nan)


def per_class_metrics(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support of every class (rows in ``classes`` order).

    Undefined values (precision of a never-predicted class, recall of an absent class) are NaN.
    """
    from sklearn.metrics import precision_recall_fscore_support

    classes = list(classes)
    if len(y_true) == 0:
        nan = np.full(len(classes), np.nan)
        return pd.DataFrame(
            {
                "class": classes,
                "precision": nan,
                "recall": nan,
                "f1": nan,
                "support": np.zeros(len(classes), dtype=np.int64),
            }
        )
    precision, recall, f1, support = precision_recall_fscore_support(
        np.asarray(y_true, dtype=object),
        np.asarray(y_pred, dtype=object),
        labels=classes,
        average=None,
        zero_division=np.nan,
    )
    return pd.DataFrame(
        {
            "class": classes,
            "precision": precision.astype(float),
            "recall": recall.astype(float),
            "f1": f1.astype(float),
            "support": support.astype(np.int64),
        }
    )


def unweighted_accuracy(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> float:
    """UA: the mean recall over the classes present in ``y_true`` (NaN when ``y_true`` is empty).

    Labels are mapped to their index in ``classes`` (a true label outside ``classes`` is
    skipped) and handed to :func:`emomix.metrics_core.unweighted_accuracy`.
    """
    truth, predicted = _indices(y_true, y_pred, classes)
    return unweighted_accuracy_of_indices(truth, predicted)


def _indices(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Labels as class indices: a true label outside ``classes`` is ignored, a prediction outside
    them is wrong for every class."""
    index = {c: i for i, c in enumerate(classes)}
    truth = np.array([index.get(c, IGNORE_INDEX) for c in y_true], dtype=np.int64)
    predicted = np.array([index.get(c, -1) for c in y_pred], dtype=np.int64)
    return truth, predicted


def weighted_accuracy(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    """WA: the share of utterances predicted correctly (NaN when empty)."""
    from sklearn.metrics import accuracy_score

    if len(y_true) == 0:
        return math.nan
    return float(accuracy_score(np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)))


def macro_f1(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> float:
    """The mean F1 over the classes that appear in ``y_true`` or ``y_pred`` (NaN when ``y_true``
    is empty); see the module doc."""
    table = per_class_metrics(y_true, y_pred, classes)
    return _macro_f1(table, y_pred)


def _macro_f1(table: pd.DataFrame, y_pred: Sequence[str]) -> float:
    predicted = set(map(str, y_pred))
    scored = (table["support"] > 0) | table["class"].astype(str).isin(predicted)
    if not (table["support"] > 0).any():
        return math.nan
    return float(table.loc[scored, "f1"].fillna(0.0).mean())


def weighted_f1(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> float:
    """F1 averaged over classes weighted by support (NaN when ``y_true`` is empty); labels mapped
    to indices as for :func:`unweighted_accuracy`, then :func:`emomix.metrics_core.weighted_f1`
    (the definition training monitors too)."""
    truth, predicted = _indices(y_true, y_pred, classes)
    return weighted_f1_of_indices(truth, predicted)


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """Every metric of one set of predictions.

    Returns ``n``, ``ua``, ``wa``, ``macro_f1``, ``weighted_f1``, ``absent_classes`` (classes
    with no true utterance, left out of UA; out of macro-F1 too unless predicted), ``per_class`` (DataFrame of
    :func:`per_class_metrics`) and ``confusion`` (counts, ``C × C``).
    """
    classes = list(classes)
    y_true = list(y_true)
    y_pred = list(y_pred)
    _check_known(y_true, classes, "label")
    _check_known(y_pred, classes, "pred")
    table = per_class_metrics(y_true, y_pred, classes)
    support = table["support"].to_numpy()
    present = support > 0
    counts = confusion_counts(y_true, y_pred, classes)
    n = len(y_true)
    return {
        "n": n,
        "ua": unweighted_accuracy(y_true, y_pred, classes),
        "wa": float(np.trace(counts) / n) if n else math.nan,
        "macro_f1": _macro_f1(table, y_pred),
        "weighted_f1": weighted_f1(y_true, y_pred, classes),
        "absent_classes": [c for c, p in zip(classes, present) if not p],
        "per_class": table,
        "confusion": counts,
    }


# --------------------------------------------------------------------------------------------
# Summaries


def summarise(values: Iterable[float], confidence: float = 0.95) -> dict[str, float | int]:
    """Mean, sample SD (ddof=1), n and the t-distribution confidence interval of the mean.

    NaN values are dropped (``n`` counts the rest). ``sd``, ``ci_low`` and ``ci_high`` are NaN
    when ``n < 2``; everything is NaN when ``n == 0``. With ``n ≥ 2`` values all equal the CI
    collapses to the mean.
    """
    from scipy import stats

    array = np.asarray([float(v) for v in values], dtype=np.float64)
    array = array[np.isfinite(array)]
    n = int(array.size)
    if n == 0:
        return {"mean": math.nan, "sd": math.nan, "n": 0, "ci_low": math.nan, "ci_high": math.nan}
    mean = float(array.mean())
    if n == 1:
        return {"mean": mean, "sd": math.nan, "n": 1, "ci_low": math.nan, "ci_high": math.nan}
    sd = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df=n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "ci_low": mean - half, "ci_high": mean + half}


# --------------------------------------------------------------------------------------------
# The predictions table


def metrics_from_predictions(df: pd.DataFrame, classes: Sequence[str]) -> dict[str, Any]:
    """All metrics of a predictions table (columns ``fold``, ``seed``, ``label``, ``pred``).

    Returns a dict of plain values and DataFrames:

    ``classes``, ``n_rows``, ``n_labelled``, ``n_unlabelled`` (rows with a null label, ignored),
    ``folds`` and ``seeds`` (in order of appearance / sorted);
    ``per_fold``: DataFrame, one row per (fold, seed): ``n``, ``n_unlabelled``, the four metrics,
    ``absent_classes``;
    ``fold_means``: DataFrame, one row per fold, the metrics averaged over seeds (``seeds`` = how many);
    ``pooled``: DataFrame, one row per seed, the metrics of all folds' predictions together;
    ``pooled_per_class``: DataFrame, one row per (seed, class);
    ``per_class``: DataFrame, one row per class: precision/recall/F1 averaged over seeds (NaN
    ignored), ``support`` of one seed (the mean over seeds), ``f1_sd`` across seeds;
    ``confusion``: counts summed over seeds (``C × C``; each utterance counted once per seed);
    ``confusion_normalised``: its rows normalised;
    ``across_folds``: ``{metric: summarise(fold_means[metric])}`` — the per-fold metric averaged
    over seeds first, so ``n`` is the number of folds;
    ``across_seeds``: ``{metric: summarise(pooled[metric])}`` — ``n`` is the number of seeds;
    ``headline``: ``{metric: mean of pooled[metric] over seeds}``;
    ``notes``: sentences about unlabelled rows and absent classes.
    """
    classes = list(classes)
    missing = [c for c in ("fold", "seed", "label", "pred") if c not in df.columns]
    if missing:
        raise LabelError(f"predictions lack column(s) {missing}; see 'Predictions schema' in docs/training.md")
    notes: list[str] = []
    labelled_mask = df["label"].notna().to_numpy()
    n_unlabelled = int((~labelled_mask).sum())
    frame = df.loc[labelled_mask, ["fold", "seed", "label", "pred"]].copy()
    frame["fold"] = frame["fold"].astype(str)
    frame["label"] = frame["label"].astype(str)
    frame["pred"] = frame["pred"].astype(str)
    frame["seed"] = frame["seed"].astype(int)
    _check_known(frame["label"], classes, "label")
    _check_known(frame["pred"], classes, "pred")
    if n_unlabelled:
        notes.append(f"{n_unlabelled} of {len(df)} prediction rows have no label and are not scored")
    fold_order = list(dict.fromkeys(df["fold"].astype(str)))
    seeds = sorted({int(s) for s in df["seed"]})
    keys = list(zip(df["fold"].astype(str), (int(s) for s in df["seed"])))
    run_pairs = set(keys)
    unlabelled_by: dict[tuple[str, int], int] = {}
    for key, labelled in zip(keys, labelled_mask):
        if not labelled:
            unlabelled_by[key] = unlabelled_by.get(key, 0) + 1

    per_fold_rows = []
    for fold in fold_order:
        for seed in seeds:
            if (fold, seed) not in run_pairs:
                continue  # this fold was not run with this seed
            part = frame[(frame["fold"] == fold) & (frame["seed"] == seed)]
            skipped = unlabelled_by.get((fold, seed), 0)
            result = classification_metrics(part["label"], part["pred"], classes)
            per_fold_rows.append(
                {
                    "fold": fold,
                    "seed": seed,
                    "n": result["n"],
                    "n_unlabelled": skipped,
                    **{m: result[m] for m in METRICS},
                    "absent_classes": result["absent_classes"],
                }
            )
    per_fold = pd.DataFrame(per_fold_rows, columns=["fold", "seed", "n", "n_unlabelled", *METRICS, "absent_classes"])

    notes.extend(_absent_class_notes(per_fold_rows))
    empty = [f"{r['fold']}/seed {r['seed']}" for r in per_fold_rows if r["n"] == 0]
    if empty:
        notes.append(f"no labelled test utterance in {', '.join(empty)}: its metrics are undefined (NaN)")

    fold_means = (
        (
            per_fold.groupby("fold", sort=False)
            .agg(n=("n", "first"), seeds=("seed", "nunique"), **{m: (m, "mean") for m in METRICS})
            .reset_index()
        )
        if not per_fold.empty
        else pd.DataFrame(columns=["fold", "n", "seeds", *METRICS])
    )

    pooled_rows, class_rows = [], []
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for seed in seeds:
        part = frame[frame["seed"] == seed]
        result = classification_metrics(part["label"], part["pred"], classes)
        pooled_rows.append(
            {
                "seed": seed,
                "n": result["n"],
                **{m: result[m] for m in METRICS},
                "absent_classes": result["absent_classes"],
            }
        )
        per_class = result["per_class"].assign(seed=seed)
        class_rows.append(per_class)
        confusion += result["confusion"]
    pooled = pd.DataFrame(pooled_rows, columns=["seed", "n", *METRICS, "absent_classes"])
    pooled_per_class = (
        pd.concat(class_rows, ignore_index=True)[["seed", "class", "precision", "recall", "f1", "support"]]
        if class_rows
        else pd.DataFrame(columns=["seed", "class", "precision", "recall", "f1", "support"])
    )
    per_class = _per_class_over_seeds(pooled_per_class, classes)

    return {
        "classes": classes,
        "n_rows": int(len(df)),
        "n_labelled": int(labelled_mask.sum()),
        "n_unlabelled": n_unlabelled,
        "folds": fold_order,
        "seeds": seeds,
        "per_fold": per_fold,
        "fold_means": fold_means,
        "pooled": pooled,
        "pooled_per_class": pooled_per_class,
        "per_class": per_class,
        "confusion": confusion,
        "confusion_normalised": normalise_rows(confusion),
        "across_folds": {m: summarise(fold_means[m]) for m in METRICS},
        "across_seeds": {m: summarise(pooled[m]) for m in METRICS},
        "headline": {m: _nanmean(pooled[m]) for m in METRICS},
        "notes": notes,
    }


def format_summary(summary: dict[str, float | int], digits: int = 3, scale: float = 1.0) -> str:
    """``mean ± SD [low, high]`` (parts that are NaN are left out; ``–`` when there is no value)."""
    mean = summary.get("mean", math.nan)
    if not _finite(mean):
        return "–"
    text = f"{mean * scale:.{digits}f}"
    if _finite(summary.get("sd", math.nan)):
        text += f" ± {summary['sd'] * scale:.{digits}f}"
    if _finite(summary.get("ci_low", math.nan)) and _finite(summary.get("ci_high", math.nan)):
        text += f" [{summary['ci_low'] * scale:.{digits}f}, {summary['ci_high'] * scale:.{digits}f}]"
    return text


# --------------------------------------------------------------------------------------------
# Helpers


def _per_class_over_seeds(pooled_per_class: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Per-class metrics averaged over seeds, with the SD of F1 across seeds."""
    columns = ["class", "precision", "recall", "f1", "f1_sd", "support"]
    if pooled_per_class.empty:
        return pd.DataFrame({"class": classes}).reindex(columns=columns)
    grouped = pooled_per_class.groupby("class", sort=False)
    table = pd.DataFrame(
        {
            "precision": grouped["precision"].mean(),
            "recall": grouped["recall"].mean(),
            "f1": grouped["f1"].mean(),
            "f1_sd": grouped["f1"].std(ddof=1),
            "support": grouped["support"].mean(),
        }
    ).reindex(classes)
    table.index.name = "class"
    return table.reset_index()[columns]


def _absent_class_notes(per_fold_rows: list[dict[str, Any]]) -> list[str]:
    """One note per fold lacking some class (per fold and seed when the seeds disagree)."""
    by_fold: dict[str, list[dict[str, Any]]] = {}
    for row in per_fold_rows:
        if row["n"]:
            by_fold.setdefault(row["fold"], []).append(row)
    notes = []
    tail = "left out of that fold's UA (and of its macro-F1 unless predicted there)"
    for fold, rows in by_fold.items():
        sets = {tuple(r["absent_classes"]) for r in rows}
        if sets == {()}:
            continue
        if len(sets) == 1:
            notes.append(f"fold {fold}: no test utterance of {', '.join(rows[0]['absent_classes'])}; {tail}")
            continue
        for r in rows:
            if r["absent_classes"]:
                notes.append(
                    f"fold {fold}, seed {r['seed']}: no labelled test utterance of "
                    f"{', '.join(r['absent_classes'])}; {tail}"
                )
    return notes


def _check_known(values: Iterable[Any], classes: list[str], column: str) -> None:
    unknown = sorted({str(v) for v in values} - set(classes))
    if unknown:
        raise LabelError(
            f"predictions: {column} value(s) {unknown[:5]} are not among the run's classes {classes}; "
            "the predictions and run.json come from different runs or label schemes"
        )


def _nanmean(values: Iterable[float]) -> float:
    array = np.asarray(list(values), dtype=np.float64)
    array = array[np.isfinite(array)]
    return float(array.mean()) if array.size else math.nan


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def seed_ensemble_metrics(df: pd.DataFrame, classes: Sequence[str]) -> dict[str, Any] | None:
    """Metrics of the seed ensemble: each utterance's class probabilities averaged over the seeds
    that predicted it, then the argmax; pooled over folds. None with fewer than two seeds or
    without ``prob_<class>`` columns.

    An ensemble of the seeds' models is itself a model (one prediction per utterance); its numbers
    are reported beside, never instead of, the per-seed mean ± SD.
    """
    columns = [f"prob_{c}" for c in classes]
    if df["seed"].nunique() < 2 or any(c not in df.columns for c in columns):
        return None
    labelled = df[df["label"].notna()]
    averaged = labelled.groupby("utt_id", sort=False).agg(
        {**{c: "mean" for c in columns}, "label": "first", "seed": "nunique"}
    )
    predicted = [classes[i] for i in averaged[columns].to_numpy().argmax(axis=1)]
    result = classification_metrics(averaged["label"].astype(str), predicted, classes)
    return {"seeds": int(df["seed"].nunique()), "n": int(len(averaged)), **{m: result[m] for m in METRICS}}
