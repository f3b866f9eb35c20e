"""Compare runs: one row per run and, for every run against the first, a paired test over folds.

Each run's metrics are recomputed from its ``predictions.parquet`` (like ``emomix evaluate``).
A per-fold number is the fold's metric averaged over the run's seeds; two runs are paired fold
by fold, matched by fold name. Seeds are not paired across runs: seed ``k`` of one model and
seed ``k`` of another share nothing but a number.

For each run after the first: ``delta`` = mean over the common folds of (run − first), the
paired t-test (:func:`scipy.stats.ttest_rel`) and the Wilcoxon signed-rank test
(:func:`scipy.stats.wilcoxon`, two-sided) on those per-fold differences. With few folds the
Wilcoxon test cannot reach small p-values: with ``n`` folds its smallest two-sided exact p is
``2 / 2**n`` (0.0625 for 5 folds, so it can never pass 0.05 with fewer than 6 folds;
:func:`smallest_wilcoxon_p`). Every metric is shown twice: pooled (all folds' predictions scored
together, mean over seeds) and the mean ± SD over folds; the paired tests use the per-fold values.
:func:`conclusion_lines` says in words which run is ahead, by how much, and whether the tests
support it at 0.05.

With one shared fold (an official train/dev/test split such as MELD's) the fold-level tests are
undefined; the comparison then adds the paired bootstrap over the test items
(:func:`emomix.evaluate.bootstrap.paired_bootstrap`: whole dialogues resampled when the
predictions carry ``dialogue_id``), which asks whether the difference on these test utterances
exceeds what resampling them gives, with the trained models fixed.

Runs whose fold plans differ are not comparable fold by fold, so :func:`compare_runs` refuses
them (:class:`ConfigError` saying what differs) unless ``allow_different_folds=True``; it then
pairs the folds the runs share by name and says so in the notes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emomix.errors import ConfigError
from emomix.evaluate.metrics import METRIC_NAMES, METRICS, metrics_from_predictions

TEST_COLUMNS = ["delta", "n_pairs", "t_stat", "p_ttest", "w_stat", "p_wilcoxon"]
BOOTSTRAP_COLUMNS = ["p_bootstrap", "ci_low", "ci_high", "bootstrap_units"]
ALPHA = 0.05


def smallest_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p the exact Wilcoxon signed-rank test can give for ``n`` paired
    values (every difference of one sign): ``2 / 2**n``, capped at 1."""
    return min(1.0, 2.0 / 2 ** int(n)) if n >= 1 else 1.0


@dataclass
class _Run:
    """What a comparison needs of one run."""

    path: Path
    description: dict[str, Any]
    metrics: dict[str, Any]
    fingerprint: str | None
    test_sets: dict[str, frozenset[str]]
    predictions: pd.DataFrame
    classes: list[str]


def compare_runs(
    run_dirs: Sequence[str | Path], metric: str = "ua", allow_different_folds: bool = False
) -> pd.DataFrame:
    """One row per run: ``run``, ``model``, ``corpus``, ``protocol``, ``folds``, ``seeds``, the
    mean and SD across folds of every metric (``ua``, ``ua_sd``, ``wa``, ...), the pooled value
    (``ua_pooled``, ...: all folds scored together, mean over seeds), and against the first run for
    ``metric``: ``delta`` (mean over folds), ``delta_pooled``, ``n_pairs``, ``t_stat``, ``p_ttest``,
    ``w_stat``, ``p_wilcoxon`` (NaN for the first run) and ``note``; when the runs share fewer than
    two folds, the paired bootstrap over the test items: ``p_bootstrap``, ``ci_low``, ``ci_high``
    (the 95 % interval of the difference) and ``bootstrap_units`` (e.g. ``"280 dialogues"``).

    ``table.attrs["metric"]`` holds ``metric`` and ``table.attrs["notes"]`` sentences about the
    comparison. :class:`ConfigError` for fewer than two runs, an unknown metric, or runs whose
    fold plans differ (unless ``allow_different_folds``).
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if len(run_dirs) < 2:
        raise ConfigError(f"compare needs at least two run directories, got {len(run_dirs)}")
    runs = [_load(Path(p)) for p in run_dirs]
    notes = ["per-fold values are each fold's metric averaged over the run's seeds; runs are paired by fold name"]
    reference = runs[0]
    for other in runs[1:]:
        problem = plan_difference(reference, other)
        if problem is None:
            continue
        if not allow_different_folds:
            raise ConfigError(
                f"{other.path} and {reference.path} were not evaluated on the same folds: {problem}. "
                "A paired comparison needs the same test utterances in every fold; rerun with the same "
                "folds.json, or pass --allow-different-folds to pair the folds that share a name anyway"
            )
        notes.append(f"{_label(other, runs)}: fold plan differs from the first run's ({problem}); compared anyway")
    rows = []
    for run in runs:
        row: dict[str, Any] = {
            "run": _label(run, runs),
            "model": run.description["model"],
            "corpus": run.description["corpus"],
            "protocol": run.description["protocol"],
            "folds": len(run.metrics["fold_means"]),
            "seeds": len(run.metrics["seeds"]),
        }
        for m in METRICS:
            summary = run.metrics["across_folds"][m]
            row[m] = summary["mean"]
            row[f"{m}_sd"] = summary["sd"]
            row[f"{m}_pooled"] = run.metrics["headline"][m]
        if run is reference:
            row.update({c: math.nan for c in TEST_COLUMNS})
            row.update({c: math.nan for c in BOOTSTRAP_COLUMNS})
            row["n_pairs"] = 0
            row["delta_pooled"] = math.nan
            row["note"] = "reference"
        else:
            row.update(paired_test(_fold_values(reference, metric), _fold_values(run, metric)))
            row.update(
                _bootstrap(reference, run, metric) if row["n_pairs"] < 2 else dict.fromkeys(BOOTSTRAP_COLUMNS, math.nan)
            )
            row["delta_pooled"] = run.metrics["headline"][metric] - reference.metrics["headline"][metric]
        rows.append(row)
    columns = [
        "run",
        "model",
        "corpus",
        "protocol",
        "folds",
        "seeds",
        *(c for m in METRICS for c in (f"{m}_pooled", m, f"{m}_sd")),
        *TEST_COLUMNS,
        *BOOTSTRAP_COLUMNS,
        "delta_pooled",
        "note",
    ]
    table = pd.DataFrame(rows, columns=columns)
    table.attrs["metric"] = metric
    table.attrs["notes"] = notes
    return table


def paired_test(reference: pd.Series, other: pd.Series) -> dict[str, Any]:
    """Paired t-test and Wilcoxon signed-rank test of ``other − reference`` over the shared index
    (fold names). Returns ``delta``, ``n_pairs``, ``t_stat``, ``p_ttest``, ``w_stat``,
    ``p_wilcoxon`` and ``note`` (why a test is NaN, or '')."""
    from scipy import stats

    common = [f for f in reference.index if f in other.index]
    pairs = pd.DataFrame({"a": reference.reindex(common), "b": other.reindex(common)}).dropna()
    diff = (pairs["b"] - pairs["a"]).to_numpy(dtype=float)
    result: dict[str, Any] = {
        "delta": float(diff.mean()) if diff.size else math.nan,
        "n_pairs": int(diff.size),
        "t_stat": math.nan,
        "p_ttest": math.nan,
        "w_stat": math.nan,
        "p_wilcoxon": math.nan,
        "note": "",
    }
    if diff.size < 2:
        result["note"] = f"{diff.size} shared fold(s): a paired test needs at least 2"
        return result
    if np.allclose(diff, diff[0], rtol=0.0, atol=1e-12):
        result["note"] = (
            "identical results in every fold"
            if abs(diff[0]) <= 1e-12
            else "the same difference in every fold: the tests are undefined (no variance)"
        )
        return result
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        t = stats.ttest_rel(pairs["b"].to_numpy(dtype=float), pairs["a"].to_numpy(dtype=float))
        result["t_stat"], result["p_ttest"] = float(t.statistic), float(t.pvalue)
        try:
            w = stats.wilcoxon(diff, alternative="two-sided")
            result["w_stat"], result["p_wilcoxon"] = float(w.statistic), float(w.pvalue)
        except ValueError as exc:  # e.g. every difference is zero after dropping ties
            result["note"] = f"Wilcoxon test undefined ({exc})"
    return result


def plan_difference(a: _Run, b: _Run) -> str | None:
    """Why two runs' folds differ, or None when they are the same.

    Both runs have a fold plan: the plans' fingerprints must match. Otherwise the test
    utterances of each fold (from the plan, or from the predictions) must match.
    """
    if a.fingerprint is not None and b.fingerprint is not None and a.fingerprint == b.fingerprint:
        return None
    names_a, names_b = list(a.test_sets), list(b.test_sets)
    if set(names_a) != set(names_b):
        only_a = [n for n in names_a if n not in names_b]
        only_b = [n for n in names_b if n not in names_a]
        parts = []
        if only_a:
            parts.append(f"fold(s) {', '.join(only_a[:5])} only in the first")
        if only_b:
            parts.append(f"fold(s) {', '.join(only_b[:5])} only in the second")
        return "the fold names differ: " + "; ".join(parts)
    changed = [n for n in names_a if a.test_sets[n] != b.test_sets[n]]
    if changed:
        return f"the test utterances of fold(s) {', '.join(changed[:5])} differ"
    if a.fingerprint is not None and b.fingerprint is not None:
        return (
            f"fold plan fingerprints {a.fingerprint} and {b.fingerprint} differ although the test sets match "
            "(the training or validation parts differ)"
        )
    return None


def format_comparison(table: pd.DataFrame, metric: str | None = None) -> str:
    """The comparison as Markdown: a plain-language conclusion, the table of runs (every metric
    pooled and as mean ± SD over folds), the paired tests against the first run, then the notes."""
    metric = metric or table.attrs.get("metric", "ua")
    name = METRIC_NAMES[metric]
    header = [
        "run",
        "model",
        "corpus",
        "protocol",
        "folds",
        "seeds",
        *(h for m in METRICS for h in (f"{METRIC_NAMES[m]} pooled", f"{METRIC_NAMES[m]} mean ± SD over folds")),
        f"Δ{name} pooled",
        f"Δ{name} mean over folds",
        "folds paired",
        "paired t p",
        "Wilcoxon p",
        "bootstrap p (95 % interval of Δ)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(header) - 4)) + "|"]
    for row in table.to_dict(orient="records"):
        cells = [row["run"], f"`{row['model']}`", row["corpus"], row["protocol"], row["folds"], row["seeds"]]
        for m in METRICS:
            cells += [_value(row.get(f"{m}_pooled")), _mean_sd(row[m], row[f"{m}_sd"])]
        if row["note"] == "reference":
            cells += ["(reference)", "", "", "", "", ""]
        else:
            cells += [
                _signed(row.get("delta_pooled")),
                _signed(row["delta"]),
                row["n_pairs"],
                _p(row["p_ttest"]),
                _p(row["p_wilcoxon"]),
                _bootstrap_cell(row),
            ]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    out = [
        f"# Comparison ({name}, pooled and mean ± SD over folds)",
        "",
        "## Conclusion",
        "",
        *conclusion_lines(table, metric),
        "",
        "## Runs",
        "",
        "Pooled: all folds' test predictions scored together (mean over seeds). Mean ± SD over folds: each "
        "fold's metric (averaged over seeds), then summarised; the paired tests compare these per-fold values.",
        "",
        *lines,
        "",
    ]
    notes = list(table.attrs.get("notes", []))
    notes += [
        f"{row['run']}: {row['note']}"
        for row in table.to_dict(orient="records")
        if row["note"] and row["note"] != "reference"
    ]
    out += [f"- {n}" for n in notes]
    return "\n".join(out).rstrip() + "\n"


def conclusion_lines(table: pd.DataFrame, metric: str | None = None, alpha: float = ALPHA) -> list[str]:
    """In words, for every run against the first: which is ahead on ``metric``, by how much (mean
    over folds and pooled), whether the paired t-test and the Wilcoxon test support the difference
    at ``alpha``, and the smallest Wilcoxon p the number of folds allows."""
    metric = metric or table.attrs.get("metric", "ua")
    name = METRIC_NAMES[metric]
    rows = table.to_dict(orient="records")
    if len(rows) < 2:
        return []
    reference = rows[0]
    lines = []
    for row in rows[1:]:
        delta, n = row["delta"], int(row["n_pairs"])
        if not _finite(delta):
            lines.append(f"- {row['run']} and {reference['run']} share no fold with a score: no comparison on {name}.")
            continue
        pooled = row.get("delta_pooled")
        if abs(delta) < 5e-4:
            lead = f"{row['run']} and {reference['run']} are level on {name} (mean over {n} folds {delta:+.3f}"
            sign, first, second = 1.0, row["run"], reference["run"]
        else:
            ahead, behind = (row["run"], reference["run"]) if delta > 0 else (reference["run"], row["run"])
            lead = f"{ahead} is ahead of {behind} by {abs(delta):.3f} {name} (mean over {n} folds"
            # the pooled difference in the same direction as the sentence: ahead − behind
            sign, first, second = (1.0 if delta > 0 else -1.0), ahead, behind
        lead += f"; pooled {first} − {second} = {sign * pooled:+.3f})." if _finite(pooled) else ")."
        verdicts = []
        for test, key in (("the paired t-test", "p_ttest"), ("the Wilcoxon test", "p_wilcoxon")):
            p = row[key]
            if _finite(p):
                verdicts.append(
                    f"{test} {'supports' if p < alpha else 'does not support'} the difference at {alpha:g} "
                    f"({_p_phrase(p)})"
                )
        if _finite(row.get("p_bootstrap")):
            p = row["p_bootstrap"]
            verdicts.append(
                f"the paired bootstrap over {row['bootstrap_units']} {'supports' if p < alpha else 'does not support'} "
                f"the difference at {alpha:g} ({_p_phrase(p)}; 95 % interval of {row['run']} − {reference['run']}: "
                f"{row['ci_low']:+.3f} to {row['ci_high']:+.3f}; it resamples the test set with the trained models "
                "fixed, so it says nothing of training variance)"
            )
        if verdicts:
            tests = "; ".join(verdicts)
            tests = tests[0].upper() + tests[1:] + "."
        else:
            tests = f"No paired test is defined ({row['note'] or 'too few folds'})."
        floor = smallest_wilcoxon_p(n)
        limit = (
            (
                f" With {n} folds the smallest two-sided Wilcoxon p possible is 2/2^{n} = {floor:.4g}"
                + (f", so that test cannot reach {alpha:g} whatever the results." if floor >= alpha else ".")
            )
            if n >= 2
            else ""
        )
        lines.append(f"- {lead} {tests}{limit}")
    return lines


# --------------------------------------------------------------------------------------------
# Helpers


def _load(path: Path) -> _Run:
    from emomix.evaluate.report import describe_run, load_run

    data = load_run(path)
    metrics = metrics_from_predictions(data.predictions, data.classes)
    if data.plan is not None:
        fingerprint = data.plan.fingerprint()
        test_sets = {f.name: frozenset(f.test) for f in data.plan.folds}
    else:
        fingerprint = None
        test_sets = {
            str(f): frozenset(part["utt_id"].astype(str)) for f, part in data.predictions.groupby("fold", sort=False)
        }
    return _Run(
        path=path,
        description=describe_run(data.run, data.config, data.plan),
        metrics=metrics,
        fingerprint=fingerprint,
        test_sets=test_sets,
        predictions=data.predictions,
        classes=list(data.classes),
    )


def _bootstrap(reference: _Run, run: _Run, metric: str) -> dict[str, Any]:
    """The paired bootstrap columns for two runs that share fewer than two folds (NaN when they
    share no labelled test utterance or their classes differ)."""
    from emomix.evaluate.bootstrap import paired_bootstrap

    empty: dict[str, Any] = dict.fromkeys(BOOTSTRAP_COLUMNS, math.nan)
    if reference.classes != run.classes:
        return empty
    try:
        result = paired_bootstrap(reference.predictions, run.predictions, reference.classes, metric)
    except ValueError:
        return empty
    plural = "s" if result["n_units"] != 1 else ""
    return {
        "p_bootstrap": result["p_bootstrap"],
        "ci_low": result["ci_low"],
        "ci_high": result["ci_high"],
        "bootstrap_units": f"{result['n_units']:,} test {result['unit']}{plural}",
    }


def _bootstrap_cell(row: dict[str, Any]) -> str:
    if not _finite(row.get("p_bootstrap")):
        return "–"
    return f"{_p(row['p_bootstrap'])} ({row['ci_low']:+.3f} to {row['ci_high']:+.3f})"


def _fold_values(run: _Run, metric: str) -> pd.Series:
    means = run.metrics["fold_means"]
    return pd.Series(means[metric].to_numpy(dtype=float), index=means["fold"].astype(str))


def _label(run: _Run, runs: Sequence[_Run]) -> str:
    """The run's folder name, or its path when two runs share a folder name."""
    names = [r.path.name for r in runs]
    return run.path.name if names.count(run.path.name) == 1 else str(run.path)


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _p_phrase(value: float) -> str:
    return "p < 0.001" if value < 0.001 else f"p = {value:.3f}"


def _mean_sd(mean: Any, sd: Any) -> str:
    if not _finite(mean):
        return "–"
    return f"{mean:.3f} ± {sd:.3f}" if _finite(sd) else f"{mean:.3f}"


def _value(value: Any) -> str:
    return f"{float(value):.3f}" if _finite(value) else "–"


def _signed(value: Any) -> str:
    return f"{value:+.3f}" if _finite(value) else "–"


def _p(value: Any) -> str:
    if not _finite(value):
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"
