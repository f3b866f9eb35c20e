"""``emomix train``: run a recipe's cross-validation (every fold and seed), then write the report.

The work happens in :func:`emomix.train.run.train_recipe`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from emomix.cli.evaluate import metric_summaries
from emomix.errors import ConfigError


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to the ``emomix`` app."""
    app.command("train")(train)


def train(
    recipe: Path = typer.Argument(..., help="Recipe YAML (see configs/)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default: runs/<recipe name>)."),
    fold: list[str] | None = typer.Option(
        None, "--fold", help="Train only this fold (repeatable); default: every fold."
    ),
    seeds: str | None = typer.Option(
        None, "--seeds", help="A count N (seeds 0..N-1) or a comma list, e.g. 0,7 (one seed: 7,); overrides the recipe."
    ),
    overrides: list[str] | None = typer.Option(
        None, "--set", help="Override a recipe value, e.g. --set training.epochs=3 (repeatable)."
    ),
    restart: bool = typer.Option(False, "--restart", help="Delete the run folder first instead of resuming it."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write report/ after training."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train a recipe under its protocol, fold by fold and seed by seed, then evaluate.

    Re-running the same command resumes: finished folds are skipped and an interrupted fold
    continues from its last checkpoint.
    """
    from emomix.train.recipe import load_recipe, parse_override

    loaded = load_recipe(recipe, dict(parse_override(text) for text in overrides or []))
    chosen_seeds = parse_seeds(seeds) if seeds else None
    from emomix.train.run import remove_run, train_recipe  # the trainer loads only once the recipe is valid

    target = out or Path("runs") / loaded.name
    if restart:
        remove_run(target)
    result = train_recipe(loaded, target, folds=fold or None, seeds=chosen_seeds, progress=not quiet, log=typer.echo)
    typer.echo(
        f"trained {len(result.trained)} fold/seed(s), reused {len(result.skipped)} finished one(s) "
        f"in {result.seconds.get('total', 0):.0f} s (features {result.seconds.get('features', 0):.0f} s, "
        f"training {result.seconds.get('training', 0):.0f} s)"
    )
    if result.report is not None:
        headline = _headline(result.out)
        if headline:
            typer.echo(headline)
        typer.echo(f"report: {result.report}")
    typer.echo(f"run folder: {result.out}")


def parse_seeds(text: str) -> list[int]:
    """``"3"`` → [0, 1, 2]; ``"0,7"`` → [0, 7]. Seeds are whole numbers from 0, each given once."""
    try:
        if "," in text:
            seeds = [int(part) for part in text.split(",") if part.strip()]
            count = None
        else:
            count = int(text)
    except ValueError:
        raise ConfigError(f"--seeds takes a count or a comma list of integers, got {text!r}") from None
    if count is None:
        if not seeds:
            raise ConfigError(f"--seeds {text!r} names no seed; give a count (3) or a comma list (0,7)")
        if min(seeds) < 0:
            raise ConfigError(f"--seeds {text!r}: seeds are whole numbers from 0 (a negative seed is not one)")
        if len(set(seeds)) < len(seeds):
            raise ConfigError(f"--seeds {text!r} names a seed twice; each seed trains once")
        return seeds
    if count < 0:
        raise ConfigError(f"--seeds {count}: a number is a count of seeds (0..N-1) and cannot be negative")
    if count == 0:
        raise ConfigError(
            "--seeds 0: a number is a count of seeds (0..N-1) and must be at least 1; "
            "for seed 0 alone write it with a comma: --seeds 0,"
        )
    return list(range(count))


def _headline(out: Path) -> str | None:
    """The report's headline lines (pooled and across folds), as `emomix evaluate` prints them."""
    import json

    from emomix.evaluate.report import headline_lines

    path = out / "report" / "metrics.json"
    if not path.exists():
        return None
    metrics = json.loads(path.read_text(encoding="utf-8"))
    return "\n".join(f"  {line}" for line in headline_lines(metric_summaries(metrics["metrics"])))
