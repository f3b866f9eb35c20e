"""``emomix evaluate`` and ``emomix compare``: the report of a run, and runs side by side.

The work is done by
:func:`emomix.evaluate.report.write_report` and :func:`emomix.evaluate.compare.compare_runs`;
this module parses options and prints.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` and ``compare`` commands to the ``emomix`` app."""
    app.command("evaluate")(evaluate)
    app.command("compare")(compare)


def evaluate(
    run_dir: Path = typer.Argument(
        ..., help="A run directory written by `emomix train` (holds run.json and predictions.parquet)."
    ),
) -> None:
    """Recompute a run's report (metrics.json, figures, report.md) from its saved predictions."""
    from emomix.evaluate.report import headline_lines, write_report

    path = write_report(run_dir)
    metrics = json.loads((path.parent / "metrics.json").read_text(encoding="utf-8"))
    typer.echo(
        f"{metrics['run']['model']} on {metrics['run']['corpus']} ({metrics['run']['protocol']}, "
        f"{len(metrics['metrics']['folds'])} fold(s), {len(metrics['metrics']['seeds'])} seed(s))"
    )
    for line in headline_lines(metric_summaries(metrics["metrics"])):
        typer.echo(f"  {line}")
    typer.echo(f"report written to {path}")


def compare(
    runs: list[Path] = typer.Argument(..., help="Two or more run directories; every run is compared with the first."),
    out: Path | None = typer.Option(None, "--out", help="Also write the Markdown table to this file."),
    metric: str = typer.Option("ua", "--metric", help="Metric of the paired tests: ua, wa, macro_f1, weighted_f1."),
    allow_different_folds: bool = typer.Option(
        False, "--allow-different-folds", help="Compare runs whose fold plans differ (pairs the folds sharing a name)."
    ),
) -> None:
    """Runs side by side (pooled, and mean ± SD across folds) with paired t and Wilcoxon tests over
    folds against the first; runs sharing one fold (an official split) get a paired bootstrap over
    the test dialogues instead."""
    from emomix.atomic import write_text_atomic
    from emomix.evaluate.compare import compare_runs, format_comparison

    table = compare_runs(runs, metric=metric.lower(), allow_different_folds=allow_different_folds)
    text = format_comparison(table)
    typer.echo(text, nl=False)
    if out is not None:
        write_text_atomic(out, text)
        typer.echo(f"comparison written to {out}")


def metric_summaries(metrics: dict) -> dict:
    """metrics.json's metric block with JSON nulls back as NaN, as :func:`headline_lines` expects."""
    nan = float("nan")

    def fix(summary: dict) -> dict:
        return {k: (nan if v is None else v) for k, v in summary.items()}

    return {
        "headline": {k: (nan if v is None else v) for k, v in metrics["headline"].items()},
        "across_folds": {k: fix(v) for k, v in metrics["across_folds"].items()},
        "across_seeds": {k: fix(v) for k, v in metrics["across_seeds"].items()},
        "seed_ensemble": metrics.get("seed_ensemble"),
    }
