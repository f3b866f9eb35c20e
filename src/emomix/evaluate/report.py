"""The report of a run: ``report/metrics.json``, ``report/figures/*.png`` and ``report/report.md``.

:func:`write_report` reads a run directory (layout in ``docs/training.md``): ``run.json``
(classes, model, seeds), ``folds.json`` (the fold plan), ``data.json`` (counts; optional),
``predictions.parquet`` (required) and ``folds/<fold>/seed-<k>/history.csv`` (optional), and
recomputes everything from the saved predictions, so ``emomix evaluate`` can be run again at any
time. Missing optional inputs only drop their section. The pure parts (:func:`build_results`,
:func:`render_markdown`) take loaded data and return values; file IO lives in the ``load_*`` and
``write_*`` functions.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emomix.atomic import write_json_atomic, write_text_atomic
from emomix.data.protocols import confounding_sentence
from emomix.errors import ConfigError, EmomixError, MissingDataError
from emomix.faults import pause as fault_pause
from emomix.jsonutil import to_jsonable

PREDICTIONS = "predictions.parquet"
REPORT_DIR = "report"
METRICS_FORMAT = "emomix-metrics"
METRICS_VERSION = 1

REQUIRED_COLUMNS: tuple[str, ...] = ("utt_id", "fold", "seed", "label", "pred", "speaker", "session", "dialogue_id")
PROB_PREFIX = "prob_"
# the tolerance on Σ prob_<class> = 1 per row (float32 softmax outputs are within 1e-6)
PROB_SUM_TOLERANCE = 1e-3


class PredictionsError(EmomixError):
    """A predictions file does not follow the schema of ``docs/training.md``."""


# --------------------------------------------------------------------------------------------
# Loading


@dataclass
class RunData:
    """Everything a report is made from, loaded from a run directory."""

    run_dir: Path
    run: dict[str, Any]
    classes: list[str]
    predictions: pd.DataFrame
    plan: Any = None  # emomix.data.protocols.FoldPlan, or None without folds.json
    data: dict[str, Any] | None = None  # data.json
    config: dict[str, Any] | None = None  # config.yaml
    histories: pd.DataFrame | None = None  # every history.csv with fold and seed columns
    notes: list[str] = field(default_factory=list)


def load_predictions(path: str | Path, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a ``predictions.parquet`` and check it against the schema of ``docs/training.md``.

    Checked: the required columns exist; there is one ``prob_<class>`` column per class of
    ``classes`` (run.json's) and no other; ``seed`` holds integers; ``pred`` is never null and,
    like ``label``, a known class; probabilities are finite and each row sums to 1; no
    (``utt_id``, ``fold``, ``seed``) row appears twice. :class:`MissingDataError` when the file
    does not exist, :class:`PredictionsError` naming the problem otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(
            f"predictions file {path} does not exist; run `emomix train` first "
            "(it writes the pooled test predictions of every fold and seed there)"
        )
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise PredictionsError(
            f"{path}: not a readable Parquet file ({exc}); re-run `emomix train` to rewrite it"
        ) from exc
    return validate_predictions(df, classes, source=str(path))


def validate_predictions(
    df: pd.DataFrame, classes: Sequence[str] | None = None, source: str = "predictions"
) -> pd.DataFrame:
    """The checks of :func:`load_predictions` on a table in memory; returns it with ``fold`` as
    str and ``seed`` as int."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    prob_columns = [str(c) for c in df.columns if str(c).startswith(PROB_PREFIX)]
    if missing:
        raise PredictionsError(
            f"{source}: missing column(s) {', '.join(missing)}; see 'Predictions schema' in docs/training.md"
        )
    if not prob_columns:
        raise PredictionsError(
            f"{source}: no {PROB_PREFIX}<class> columns; see 'Predictions schema' in docs/training.md"
        )
    if classes is not None:
        expected = [PROB_PREFIX + c for c in classes]
        lacking = [c for c in expected if c not in prob_columns]
        extra = [c for c in prob_columns if c not in expected]
        if lacking or extra:
            parts = []
            if lacking:
                parts.append(f"lacks {', '.join(lacking)}")
            if extra:
                parts.append(f"has {', '.join(extra)} for classes run.json does not list")
            raise PredictionsError(
                f"{source}: the probability columns do not match run.json's classes {list(classes)}: "
                f"it {' and '.join(parts)}; the predictions and run.json come from different runs"
            )
    df = df.copy()
    try:
        seeds = pd.to_numeric(df["seed"], errors="raise")
    except (TypeError, ValueError) as exc:
        raise PredictionsError(f"{source}: column 'seed' must hold integers ({exc})") from exc
    if seeds.isna().any() or not np.all(np.equal(np.mod(seeds.to_numpy(dtype=float), 1), 0)):
        raise PredictionsError(
            f"{source}: column 'seed' must hold integers, found {sorted(set(seeds[seeds.notna()]))[:5]} and/or nulls"
        )
    df["seed"] = seeds.astype(np.int64)
    if df["fold"].isna().any():
        raise PredictionsError(f"{source}: {int(df['fold'].isna().sum())} row(s) have no fold")
    df["fold"] = df["fold"].astype(str)
    if df["pred"].isna().any():
        raise PredictionsError(f"{source}: {int(df['pred'].isna().sum())} row(s) have no prediction ('pred' is null)")
    if classes is not None:
        for column in ("label", "pred"):
            values = df[column].dropna().astype(str)
            unknown = sorted(set(values) - set(classes))
            if unknown:
                raise PredictionsError(
                    f"{source}: {column} value(s) {unknown[:5]} are not among run.json's classes {list(classes)}"
                )
    probs = df[prob_columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    if probs.size and not np.isfinite(probs).all():
        bad = int((~np.isfinite(probs)).any(axis=1).sum())
        raise PredictionsError(f"{source}: {bad} row(s) have missing or non-numeric probabilities")
    if len(df):
        error = np.abs(probs.sum(axis=1) - 1.0)
        if (error > PROB_SUM_TOLERANCE).any():
            row = int(np.argmax(error))
            raise PredictionsError(
                f"{source}: the {PROB_PREFIX}* columns of {int((error > PROB_SUM_TOLERANCE).sum())} row(s) "
                f"do not sum to 1 (e.g. row {row}: {probs[row].sum():.4f}); store softmax probabilities"
            )
    duplicated = df.duplicated(subset=["utt_id", "fold", "seed"])
    if duplicated.any():
        first = df.loc[duplicated, ["utt_id", "fold", "seed"]].iloc[0].tolist()
        raise PredictionsError(f"{source}: {int(duplicated.sum())} duplicate (utt_id, fold, seed) row(s), e.g. {first}")
    return df


def load_run(run_dir: str | Path) -> RunData:
    """Read the inputs of a report from a run directory (see the module docstring)."""
    from emomix.data.protocols import FoldPlan

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingDataError(f"run directory {run_dir} does not exist; run `emomix train RECIPE` first")
    run_path = run_dir / "run.json"
    if not run_path.is_file():
        raise MissingDataError(
            f"{run_path} does not exist; {run_dir} is not a finished run directory — run `emomix train` first"
        )
    run = _read_json(run_path)
    if not isinstance(run, dict):
        raise ConfigError(f"{run_path}: expected a JSON object")
    classes = run.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ConfigError(f"{run_path}: 'classes' must be a non-empty list of class names (in index order)")
    predictions = load_predictions(run_dir / PREDICTIONS, classes)
    notes: list[str] = []
    plan = FoldPlan.load(run_dir / "folds.json") if (run_dir / "folds.json").is_file() else None
    if plan is None:
        notes.append("folds.json is missing: the fold plan is not shown")
    data = _read_json(run_dir / "data.json") if (run_dir / "data.json").is_file() else None
    config = None
    if (run_dir / "config.yaml").is_file():
        import yaml

        try:
            loaded = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else None
        except yaml.YAMLError:
            notes.append("config.yaml is not valid YAML: ignored")
    histories = load_histories(run_dir)
    if histories is not None and plan is not None:
        # the plan's fold order (Ses2 before Ses10), not the file system's
        order = {f.name: i for i, f in enumerate(plan.folds)}
        histories = histories.sort_values(
            "fold", key=lambda col: col.map(lambda f: order.get(f, len(order))), kind="stable"
        )
        histories = histories.reset_index(drop=True)
    return RunData(
        run_dir=run_dir,
        run=run,
        classes=list(classes),
        predictions=predictions,
        plan=plan,
        data=data,
        config=config,
        histories=histories,
        notes=notes,
    )


def load_histories(run_dir: str | Path) -> pd.DataFrame | None:
    """Every ``folds/<fold>/seed-<k>/history*.csv`` as one table with ``fold``, ``seed`` and
    ``part`` columns added (``part`` is ``""`` for ``history.csv`` and ``<name>`` for
    ``history-<name>.csv``, the sub-models a composite model trains one after the other); None when
    there is none. An unreadable file is skipped."""
    frames = []
    for path in sorted(Path(run_dir).glob("folds/*/seed-*/history*.csv")):
        seed_match = re.fullmatch(r"seed-(-?\d+)", path.parent.name)
        part_match = re.fullmatch(r"history(?:-(.+))?\.csv", path.name)
        if not seed_match or not part_match:
            continue
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
        if frame.empty or "epoch" not in frame.columns:
            continue
        frames.append(
            frame.assign(fold=path.parent.parent.name, seed=int(seed_match.group(1)), part=part_match.group(1) or "")
        )
    return pd.concat(frames, ignore_index=True) if frames else None


# --------------------------------------------------------------------------------------------
# Results (pure)


def describe_run(run: Mapping[str, Any], config: Mapping[str, Any] | None = None, plan: Any = None) -> dict[str, Any]:
    """Model, corpus, protocol and seeds of a run as short strings, from run.json, falling back on
    config.yaml and the fold plan."""
    config = config or {}
    model = run.get("model") or config.get("model")
    if isinstance(model, Mapping):
        model = model.get("name")
    corpus = run.get("corpus") or config.get("corpus")
    if isinstance(corpus, Mapping):
        name = corpus.get("name") or corpus.get("reader") or corpus.get("corpus")
        scheme = corpus.get("scheme")
        corpus = f"{name}" + (f" (scheme {scheme})" if scheme and scheme != "default" else "")
    elif corpus and isinstance(run.get("scheme"), str):  # run.json names the corpus and its scheme
        corpus = f"{corpus} (scheme {run['scheme']})"
    protocol = run.get("protocol") or config.get("protocol")
    if isinstance(protocol, Mapping):
        protocol = protocol.get("name") or protocol.get("protocol")
    if not protocol and plan is not None:
        protocol = plan.protocol
    seeds = run.get("seeds")
    return {
        "model": str(model) if model else "unknown",
        "corpus": str(corpus) if corpus else "unknown",
        "protocol": str(protocol) if protocol else "unknown",
        "seeds": [int(s) for s in seeds] if isinstance(seeds, list) else None,
    }


def plan_summary(plan: Any, run: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The fold plan as plain values for the report: protocol, parameters, fingerprint,
    speaker independence, notes, speaker–label confounding (with the run's normalisation
    warnings) and per fold the held-out groups and part sizes."""
    if plan is None:
        return None
    return {
        "confounding": getattr(plan, "confounding", None),
        "normalisation_warnings": list((run or {}).get("feature_warnings") or []),
        "protocol": plan.protocol,
        "params": plan.params,
        "seed": plan.seed,
        "fingerprint": plan.fingerprint(),
        "group_column": plan.group_column,
        "speaker_independent": bool(plan.speaker_independent),
        "notes": list(plan.notes),
        "folds": [
            {
                "name": f.name,
                "test_groups": list(f.test_groups),
                "validation_groups": list(f.validation_groups),
                "train": len(f.train),
                "validation": len(f.validation),
                "test": len(f.test),
            }
            for f in plan.folds
        ],
    }


MONITOR_NAMES = {"val_ua": "val UA", "val_wa": "val WA", "val_weighted_f1": "val weighted F1", "val_loss": "val loss"}


def run_monitor(config: Mapping[str, Any] | None) -> str:
    """The validation metric the run chose its saved epoch by (``training.monitor``, default ``val_ua``)."""
    training = (config or {}).get("training") or {}
    monitor = training.get("monitor") if isinstance(training, Mapping) else None
    return str(monitor) if monitor else "val_ua"


def history_summary(histories: pd.DataFrame | None, monitor: str = "val_ua") -> list[dict[str, Any]]:
    """Per fold and seed: epochs run, the best epoch by the run's ``monitor`` (its mode: lowest
    ``val_loss``, highest UA/WA; the first on ties, as training saved it) with ``best_<monitor>``,
    and the last training loss."""
    if histories is None or histories.empty:
        return []
    rows = []
    histories = histories if "part" in histories.columns else histories.assign(part="")
    for (fold, seed, name), part in histories.groupby(["fold", "seed", "part"], sort=False):
        part = part.sort_values("epoch")
        record: dict[str, Any] = {
            "fold": str(fold),
            "seed": int(seed),
            "part": str(name),
            "epochs": int(part["epoch"].nunique()),
        }
        if monitor in part.columns and part[monitor].notna().any():
            values = pd.to_numeric(part[monitor], errors="coerce")
            best = part.loc[values.idxmin() if monitor == "val_loss" else values.idxmax()]
            record["monitor"] = monitor
            record[f"best_{monitor}"] = float(best[monitor])
            record["best_epoch"] = int(best["epoch"])
        if "loss" in part.columns and part["loss"].notna().any():
            record["last_loss"] = float(pd.to_numeric(part["loss"], errors="coerce").dropna().iloc[-1])
        rows.append(record)
    return rows


def build_results(data: RunData) -> dict[str, Any]:
    """Metrics, routing tables and run description of loaded run data (no IO).

    ``metrics`` is :func:`emomix.evaluate.metrics.metrics_from_predictions`; ``routing`` is
    :func:`emomix.evaluate.routing.routing_analysis` (DataFrames, possibly empty).
    """
    from emomix.evaluate.metrics import metrics_from_predictions, seed_ensemble_metrics
    from emomix.evaluate.routing import routing_analysis

    description = describe_run(data.run, data.config, data.plan)
    metrics = metrics_from_predictions(data.predictions, data.classes)
    metrics["seed_ensemble"] = seed_ensemble_metrics(data.predictions, data.classes)
    notes = list(data.notes)
    if data.plan is not None:
        planned = [f.name for f in data.plan.folds]
        missing = [f for f in planned if f not in metrics["folds"]]
        stray = [f for f in metrics["folds"] if f not in planned]
        if missing:
            notes.append(f"no predictions for fold(s) {', '.join(missing)} of the plan: the run is incomplete")
        if stray:
            notes.append(f"predictions name fold(s) {', '.join(stray)} that the fold plan does not have")
    if description["seeds"] is not None:
        absent = sorted(set(description["seeds"]) - set(metrics["seeds"]))
        if absent:
            notes.append(f"no predictions for seed(s) {', '.join(map(str, absent))} listed in run.json")
    return {
        "run": {**description, "classes": list(data.classes), "run_dir": str(data.run_dir)},
        "fold_plan": plan_summary(data.plan, data.run),
        "data": data.data,
        "metrics": metrics,
        "routing": routing_analysis(data.predictions, model=description["model"]),
        "histories": history_summary(data.histories, run_monitor(data.config)),
        "notes": notes,
    }


# --------------------------------------------------------------------------------------------
# Markdown (pure)


def headline_lines(metrics: Mapping[str, Any]) -> list[str]:
    """One line per metric: pooled value, mean ± SD [95 % CI] across folds and across seeds."""
    from emomix.evaluate.metrics import METRIC_NAMES, METRICS, format_summary

    lines = []
    for m in METRICS:
        folds = format_summary(metrics["across_folds"][m])
        seeds = format_summary(metrics["across_seeds"][m])
        lines.append(
            f"{METRIC_NAMES[m]:<12} pooled {_num(metrics['headline'][m])}   "
            f"folds {folds} (n={metrics['across_folds'][m]['n']})   seeds {seeds} (n={metrics['across_seeds'][m]['n']})"
        )
    ensemble = metrics.get("seed_ensemble")
    if ensemble:
        lines.append(
            f"seed ensemble ({ensemble['seeds']} seeds): "
            + ", ".join(f"{METRIC_NAMES[m]} {_num(ensemble[m])}" for m in METRICS)
        )
    return lines


def render_markdown(results: Mapping[str, Any], figures: Mapping[str, str] | None = None) -> str:
    """The report as Markdown; ``figures`` maps figure names to paths relative to the report."""
    from emomix.evaluate.metrics import METRIC_NAMES, METRICS, format_summary

    figures = dict(figures or {})
    run = results["run"]
    metrics = results["metrics"]
    plan = results["fold_plan"]
    out: list[str] = [f"# {run['model']} on {run['corpus']}", ""]
    seed_list = metrics["seeds"]
    seeds = f"{len(seed_list)} ({'seed' if len(seed_list) == 1 else 'seeds'} {', '.join(map(str, seed_list))})"
    out += [
        f"- **model**: `{run['model']}`",
        f"- **corpus**: {run['corpus']}",
        f"- **protocol**: {run['protocol']}" + (f" ({_params(plan['params'])})" if plan and plan["params"] else ""),
        f"- **classes**: {', '.join(run['classes'])}",
        f"- **seeds**: {seeds}",
        f"- **test predictions**: {metrics['n_rows']} rows ({metrics['n_labelled']} labelled, "
        f"{metrics['n_unlabelled']} without a label)",
        f"- **run directory**: `{run['run_dir']}`",
        "",
    ]

    if plan is not None:
        independence = "speaker-independent" if plan["speaker_independent"] else "**not speaker-independent**"
        out += [
            "## Fold plan",
            "",
            f"{len(plan['folds'])} fold(s), {independence}, "
            f"held out by {plan['group_column'] or 'nothing (stratified)'}; "
            f"fingerprint `{plan['fingerprint']}`.",
            "",
        ]
        out += _table(
            ["fold", "test groups", "validation groups", "train", "validation", "test"],
            [
                [
                    f["name"],
                    _groups(f["test_groups"]),
                    _groups(f["validation_groups"]),
                    f["train"],
                    f["validation"],
                    f["test"],
                ]
                for f in plan["folds"]
            ],
            right=[3, 4, 5],
        )
        for note in plan["notes"]:
            out.append(f"\n> note: {note}")
        if plan.get("confounding"):
            sentence = confounding_sentence(plan["confounding"])
            out.append(f"\n{sentence[0].upper()}{sentence[1:]}.")
        for warning in plan.get("normalisation_warnings") or []:
            out.append(f"\n> warning: {warning}")
        out.append("")

    if results.get("data"):
        out += ["## Data", "", *data_section(results["data"]), ""]

    out += [
        "## Results",
        "",
        "Pooled: all folds' predictions scored together (mean over seeds). Across folds: the metric of each "
        "fold, averaged over seeds, then mean ± SD [95 % CI, t-distribution]. Across seeds: the pooled metric "
        "of each seed, summarised the same way. UA averages the recall of the classes present in the truth; "
        "macro-F1 averages the F1 of the classes present in the truth or the predictions (a class predicted "
        "in a fold without it scores F1 0), per fold and pooled alike.",
        "",
    ]
    rows = []
    for m in METRICS:
        folds = metrics["across_folds"][m]
        seeds_summary = metrics["across_seeds"][m]
        rows.append(
            [
                METRIC_NAMES[m],
                _num(metrics["headline"][m]),
                f"{format_summary(folds)} (n={folds['n']})",
                f"{format_summary(seeds_summary)} (n={seeds_summary['n']})",
            ]
        )
    out += _table(["metric", "pooled", "across folds", "across seeds"], rows, right=[1])
    out.append("")
    ensemble = metrics.get("seed_ensemble")
    if ensemble:
        out += [
            f"Seed ensemble (the {ensemble['seeds']} seeds' probabilities averaged per utterance, pooled over "
            f"folds, {ensemble['n']} utterances): "
            + ", ".join(f"{METRIC_NAMES[m]} {_num(ensemble[m])}" for m in METRICS),
            "",
        ]
    all_notes = list(results.get("notes", [])) + list(metrics["notes"])
    for note in all_notes:
        out.append(f"> note: {note}  ")
    if all_notes:
        out.append("")

    fold_means = metrics["fold_means"]
    if len(fold_means):
        several = len(metrics["seeds"]) > 1
        out += ["### Per fold", ""]
        if several:
            out += [f"Values are the mean over {len(metrics['seeds'])} seeds.", ""]
        out += _table(
            ["fold", "test utterances", "seeds", *(METRIC_NAMES[m] for m in METRICS)],
            [
                [r["fold"], int(r["n"]), int(r["seeds"]), *(_num(r[m]) for m in METRICS)]
                for r in fold_means.to_dict(orient="records")
            ],
            right=list(range(1, 3 + len(METRICS))),
        )
        out.append("")

    per_class = metrics["per_class"]
    out += [
        "### Per class",
        "",
        "Pooled over folds; precision/recall/F1 averaged over seeds (± SD of F1 across seeds).",
        "",
    ]
    out += _table(
        ["class", "support", "precision", "recall", "F1"],
        [
            [
                r["class"],
                _count(r["support"]),
                _num(r["precision"]),
                _num(r["recall"]),
                _num(r["f1"]) + (f" ± {r['f1_sd']:.3f}" if _finite(r["f1_sd"]) else ""),
            ]
            for r in per_class.to_dict(orient="records")
        ],
        right=[1, 2, 3, 4],
    )
    out.append("")

    out += ["### Confusion matrix", ""]
    if "confusion" in figures:
        out += [f"![confusion matrix]({figures['confusion']})", ""]
    counts = np.asarray(metrics["confusion"])
    n_seeds = len(metrics["seeds"])
    out += [
        f"Counts (rows true, columns predicted{', summed over ' + str(n_seeds) + ' seeds' if n_seeds > 1 else ''}):",
        "",
    ]
    out += _table(
        ["true \\ predicted", *run["classes"]],
        [[c, *(int(v) for v in counts[i])] for i, c in enumerate(run["classes"])],
        right=list(range(1, len(run["classes"]) + 1)),
    )
    out.append("")

    histories = results.get("histories") or []
    if histories or "learning_curves" in figures:
        out += ["## Learning curves", ""]
        if "learning_curves" in figures:
            out += [f"![learning curves]({figures['learning_curves']})", ""]
        if histories:
            parts = any(h.get("part") for h in histories)
            monitor = next((h["monitor"] for h in histories if h.get("monitor")), None)
            label = MONITOR_NAMES.get(monitor or "", monitor or "validation")
            if monitor:
                mode = "lowest" if monitor == "val_loss" else "highest"
                out += [f"Best epoch: the {mode} {label}, the metric the run monitored to keep its weights.", ""]
            out += _table(
                [
                    "fold",
                    "seed",
                    *(["model part"] if parts else []),
                    "epochs",
                    f"best {label}",
                    "best epoch",
                    "last train loss",
                ],
                [
                    [
                        h["fold"],
                        h["seed"],
                        *([h.get("part") or "–"] if parts else []),
                        h["epochs"],
                        _num(h.get(f"best_{monitor}"), 4 if monitor == "val_loss" else 3),
                        h.get("best_epoch", "–"),
                        _num(h.get("last_loss"), 4),
                    ]
                    for h in histories
                ],
                right=list(range(1, 7 if parts else 6)),
            )
            out.append("")

    routing = results["routing"]
    out += _routing_lines(routing, figures, run["classes"])
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).rstrip() + "\n"


def _routing_lines(routing: Mapping[str, pd.DataFrame], figures: Mapping[str, str], classes: list[str]) -> list[str]:
    out: list[str] = []
    shares = routing["routing"]
    if len(shares):
        out += [
            "## Routing (local vs global)",
            "",
            "Mean router probability of the local and the global expert per modality (rows of every seed "
            "pooled); `local top-1` is the share of rows whose router preferred the local expert.",
            "",
        ]
        overall = shares[shares["by"] == "all"]
        out += _table(
            ["modality", "rows", "local", "global", "local top-1"],
            [
                [r["modality"], int(r["n"]), _num(r["local"]), _num(r["global"]), _num(r["local_top1"])]
                for r in overall.to_dict(orient="records")
            ],
            right=[1, 2, 3, 4],
        )
        out.append("")
        by_label = shares[shares["by"] == "label"]
        if len(by_label):
            modalities = list(dict.fromkeys(by_label["modality"]))
            wide = by_label.pivot(index="group", columns="modality", values="local")
            groups = [c for c in classes if c in wide.index] + [g for g in wide.index if g not in classes]
            out += ["Local share by true emotion:", ""]
            out += _table(
                ["emotion", *modalities],
                [[g, *(_num(wide.loc[g, m]) for m in modalities)] for g in groups],
                right=list(range(1, len(modalities) + 1)),
            )
            out.append("")
        for by in ("label", "session", "speaker"):
            key = f"routing_{by}"
            if key in figures:
                out += [f"![routing by {by}]({figures[key]})", ""]
    experts = routing["experts"]
    if len(experts):
        out += [
            "## Expert shares",
            "",
            "Mean gate weight of every expert (for MPAF-Net's pairwise weights α of the pair's first modality "
            "and 1 − α of the second), rows of every seed pooled.",
            "",
        ]
        overall = experts[experts["by"] == "all"]
        out += _table(
            ["gate", "expert", "rows", "share"],
            [[r["source"], r["expert"], int(r["n"]), _num(r["share"])] for r in overall.to_dict(orient="records")],
            right=[2, 3],
        )
        out.append("")
        by_label = experts[experts["by"] == "label"]
        for source in dict.fromkeys(by_label["source"]):
            part = by_label[by_label["source"] == source]
            names = list(dict.fromkeys(part["expert"]))
            wide = part.pivot(index="group", columns="expert", values="share")
            groups = [c for c in classes if c in wide.index] + [g for g in wide.index if g not in classes]
            out += [f"`{source}` by true emotion:", ""]
            out += _table(
                ["emotion", *names],
                [[g, *(_num(wide.loc[g, e]) for e in names)] for g in groups],
                right=list(range(1, len(names) + 1)),
            )
            out.append("")
        for by in ("label", "session"):
            key = f"experts_{by}"
            if key in figures:
                out += [f"![expert shares by {by}]({figures[key]})", ""]
    flags = routing.get("flags")
    if flags is not None and len(flags):
        out += [
            "## Other per-row model outputs",
            "",
            "Mean over test rows (for a 0/1 flag, the share of rows flagged).",
            "",
        ]
        out += _table(
            ["output", "rows", "mean"],
            [[f"`{r['name']}`", int(r["n"]), _num(r["mean"], 4)] for r in flags.to_dict(orient="records")],
            right=[1, 2],
        )
        out.append("")
    return out


# --------------------------------------------------------------------------------------------
# Writing


def write_figures(results: Mapping[str, Any], histories: pd.DataFrame | None, figure_dir: Path) -> dict[str, Path]:
    """Draw every figure the results allow into ``figure_dir``; ``{name: path}``."""
    from emomix.evaluate import plots

    figure_dir.mkdir(parents=True, exist_ok=True)
    classes = results["run"]["classes"]
    written = {
        "confusion": plots.plot_confusion(results["metrics"]["confusion"], classes, figure_dir / "confusion.png")
    }
    if histories is not None and not histories.empty:
        written["learning_curves"] = plots.plot_learning_curves(histories, figure_dir / "learning_curves.png")
    routing = results["routing"]["routing"]
    for by in ("label", "session", "speaker"):
        if len(routing) and (routing["by"] == by).any():
            written[f"routing_{by}"] = plots.plot_routing(
                routing, by, figure_dir / f"routing_by_{by}.png", order=classes if by == "label" else None
            )
    experts = results["routing"]["experts"]
    for by in ("label", "session"):
        if len(experts) and (experts["by"] == by).any():
            written[f"experts_{by}"] = plots.plot_expert_shares(
                experts, by, figure_dir / f"experts_by_{by}.png", order=classes if by == "label" else None
            )
    return written


def write_report(run_dir: str | Path) -> Path:
    """Recompute the report of a run from its saved predictions; returns ``report/report.md``.

    Writes ``report/metrics.json`` (atomically), ``report/figures/*.png`` and
    ``report/report.md``. :class:`MissingDataError` when ``run.json`` or the predictions are
    missing (run ``emomix train`` first).
    """
    data = load_run(run_dir)
    results = build_results(data)
    report_dir = data.run_dir / REPORT_DIR
    figure_dir = report_dir / "figures"
    for stale in figure_dir.glob("*.png") if figure_dir.is_dir() else []:
        stale.unlink()  # a figure whose section vanished must not linger from an earlier report
    figures = write_figures(results, data.histories, figure_dir)
    relative = {name: path.relative_to(report_dir).as_posix() for name, path in figures.items()}
    payload = {"format": METRICS_FORMAT, "version": METRICS_VERSION, **results, "figures": relative}
    write_json_atomic(report_dir / "metrics.json", to_jsonable(payload))
    fault_pause("run.report")  # fault injection only (emomix.faults)
    return write_text_atomic(report_dir / "report.md", render_markdown(results, relative))


# --------------------------------------------------------------------------------------------
# Helpers


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason})") from exc


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _num(value: Any, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if _finite(value) else "–"


def _count(value: Any) -> str:
    if not _finite(value):
        return "–"
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:.1f}"


def _groups(groups: Sequence[str], limit: int = 4) -> str:
    if not groups:
        return "–"
    shown = ", ".join(groups[:limit])
    return shown + (f" +{len(groups) - limit} more" if len(groups) > limit else "")


def _params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in params.items())


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> list[str]:
    """A Markdown pipe table; columns listed in ``right`` are right-aligned."""
    align = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _total(value: Any) -> Any:
    """``value["total"]``, else the sum of its numbers ("" when there is nothing to count)."""
    if not isinstance(value, Mapping):
        return ""
    if "total" in value:
        return value["total"]
    numbers = [v for v in value.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(numbers) if numbers else ""


def data_section(data: Any) -> list[str]:
    """``data.json`` (what :func:`emomix.train.run.data_summary` writes) in words and tables:
    the corpus in one line, utterances per class, per fold and part, what the reader skipped and
    the label scheme dropped, what feature extraction did. Keys it does not know go through
    :func:`_data_lines`."""
    if not isinstance(data, Mapping):
        return _data_lines(data)
    data = dict(data)
    out: list[str] = []
    head = []
    if data.get("corpus") is not None:
        head.append(f"corpus **{data.pop('corpus')}**")
    else:
        data.pop("corpus", None)
    for key, word in (("utterances", "labelled utterances"), ("speakers", "speakers")):
        value = data.pop(key, None)
        if value is not None:
            head.append(f"{value} {word}")
    if head:
        out += [", ".join(head) + ".", ""]
    classes = data.pop("classes", None)
    if isinstance(classes, Mapping) and classes:
        total = sum(v for v in classes.values() if isinstance(v, (int, float))) or 1
        out += [
            *_table(
                ["class", "utterances", "share"],
                [[c, n, f"{100 * n / total:.1f} %"] for c, n in classes.items()],
                right=[1, 2],
            ),
            "",
        ]
    folds = data.pop("folds", None)
    if isinstance(folds, Mapping) and folds:
        parts = list(dict.fromkeys(k for v in folds.values() if isinstance(v, Mapping) for k in v))
        out += ["Utterances per fold and part:", ""]
        out += [
            *_table(
                ["fold", *parts],
                [
                    [name, *(_total(inner.get(p)) if isinstance(inner, Mapping) else "" for p in parts)]
                    for name, inner in folds.items()
                ],
                right=list(range(1, len(parts) + 1)),
            ),
            "",
        ]
    read = data.pop("read_report", None)
    if isinstance(read, Mapping):
        skipped = list(read.get("skipped") or [])
        reasons: dict[str, int] = {}
        for entry in skipped:
            reason = entry.get("reason", "?") if isinstance(entry, Mapping) else str(entry)
            reasons[reason] = reasons.get(reason, 0) + 1
        dropped = dict(read.get("dropped_by_label") or {})
        out.append(
            "- skipped by the reader: " + (", ".join(f"{n} ({r})" for r, n in reasons.items()) if reasons else "none")
        )
        out.append(
            "- dropped by the label scheme: "
            + (", ".join(f"{n} {label}" for label, n in dropped.items()) if dropped else "none")
        )
        for note in read.get("notes") or []:
            out.append(f"- reader note: {note}")
        out.append("")
    extraction = data.pop("extraction", None)
    if isinstance(extraction, Mapping) and extraction:
        rows = []
        for modality, summary in extraction.items():
            summary = summary if isinstance(summary, Mapping) else {}
            fallbacks = summary.get("fallbacks") or {}
            rows.append(
                [
                    modality,
                    summary.get("namespace", "–"),
                    summary.get("total", "–"),
                    summary.get("cached", "–"),
                    summary.get("computed", "–"),
                    summary.get("failed", len(summary.get("failures") or [])),
                    ", ".join(f"{k} {len(v)}" for k, v in fallbacks.items()) or "none",
                ]
            )
        out += ["Feature extraction:", ""]
        out += [
            *_table(
                ["modality", "features", "utterances", "from the store", "computed", "failed", "fallbacks"],
                rows,
                right=[2, 3, 4, 5],
            ),
            "",
        ]
    failures = data.pop("feature_failures", None)
    if failures:
        listed = [f"{f.get('utt_id')} ({f.get('reason')})" if isinstance(f, Mapping) else str(f) for f in failures]
        out += [
            f"- {len(listed)} utterance(s) without features, left out: {', '.join(listed[:5])}"
            + (f" and {len(listed) - 5} more" if len(listed) > 5 else ""),
            "",
        ]
    elif failures is not None:
        out += ["- every utterance has features", ""]
    if data:
        out += _data_lines(data)
    while out and out[-1] == "":
        out.pop()
    return out


def _data_lines(data: Any) -> list[str]:
    """data.json as readable Markdown: scalars as bullets, flat dicts on one line, dicts of flat
    dicts as tables, three-level dicts as tables of totals, anything else as compact JSON."""
    if not isinstance(data, Mapping):
        return [f"`{json.dumps(to_jsonable(data))[:500]}`"]
    bullets: list[str] = []
    tables: list[str] = []
    for key, value in data.items():
        if not isinstance(value, (Mapping, list)):
            bullets.append(f"- {key}: {value}")
        elif isinstance(value, Mapping) and all(not isinstance(v, (Mapping, list)) for v in value.values()):
            bullets.append(f"- {key}: " + ", ".join(f"{k} {v}" for k, v in value.items()))
        elif (
            isinstance(value, Mapping)
            and value
            and all(
                isinstance(v, Mapping) and all(not isinstance(x, (Mapping, list)) for x in v.values())
                for v in value.values()
            )
        ):
            columns = list(dict.fromkeys(k for v in value.values() for k in v))
            tables += [f"{key}:", ""]
            tables += _table(
                ["", *columns],
                [[row, *(inner.get(c, "") for c in columns)] for row, inner in value.items()],
                right=list(range(1, len(columns) + 1)),
            )
            tables.append("")
        elif (
            isinstance(value, Mapping)
            and value
            and all(
                isinstance(v, Mapping) and v and all(isinstance(x, Mapping) for x in v.values()) for v in value.values()
            )
        ):
            # e.g. {fold: {part: {"total": n, class: n}}}: one column per part with its total
            columns = list(dict.fromkeys(k for v in value.values() for k in v))
            tables += [f"{key} (totals):", ""]
            tables += _table(
                ["", *columns],
                [[row, *(_total(inner.get(c)) for c in columns)] for row, inner in value.items()],
                right=list(range(1, len(columns) + 1)),
            )
            tables.append("")
        else:
            text = json.dumps(to_jsonable(value), ensure_ascii=False)
            bullets.append(f"- {key}: `{text[:300]}{'…' if len(text) > 300 else ''}`")
    return bullets + ([""] if bullets and tables else []) + tables
