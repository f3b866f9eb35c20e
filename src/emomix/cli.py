"""The ``emomix`` command.

Each command is a thin shell over library functions: parse options, call, print. Errors a user can
cause (:class:`emomix.errors.EmomixError`) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from emomix.errors import ConfigError, EmomixError

app = typer.Typer(
    name="emomix",
    help="Emotion recognition from speech and transcript with mixture-of-experts fusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
corpus_app = typer.Typer(help="Inspect and export corpora.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")


def _parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` with YAML typing of the values."""
    import yaml

    result: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        result[key.strip()] = yaml.safe_load(value)
    return result


def _scheme_option(scheme: str) -> Any:
    return None if scheme.lower() in {"none", "raw"} else scheme


@corpus_app.command("info")
def corpus_info(
    reader: str = typer.Argument(..., help="Reader name: iemocap, meld, mosi, emodb, savee, ravdess, manifest, synthetic."),
    root: Path = typer.Argument(..., help="The corpus folder (or manifest file for `manifest`)."),
    scheme: str = typer.Option("default", help="Label scheme: 'default' (the reader's), 'none' (raw labels), a built-in name or a YAML file."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Print utterances per label, speaker, session and split, and what was skipped or dropped."""
    from emomix.data.readers import read_corpus
    from emomix.data.summary import corpus_summary, format_summary

    corpus = read_corpus(reader, root, scheme=_scheme_option(scheme))
    summary = corpus_summary(corpus)
    typer.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


@corpus_app.command("export")
def corpus_export(
    reader: str = typer.Argument(..., help="Reader name (see `emomix corpus info --help`)."),
    root: Path = typer.Argument(..., help="The corpus folder (or manifest file)."),
    out: Path = typer.Argument(..., help="The Parquet file to write."),
    scheme: str = typer.Option("default", help="Label scheme: 'default', 'none', a built-in name or a YAML file."),
) -> None:
    """Write a corpus's utterance table as Parquet."""
    from emomix.data.readers import read_corpus
    from emomix.data.schema import save_table

    corpus = read_corpus(reader, root, scheme=_scheme_option(scheme))
    save_table(corpus.table, out)
    dropped = sum(corpus.report.dropped_by_label.values())
    typer.echo(f"wrote {len(corpus.table)} utterances to {out} ({dropped} dropped by the label scheme, {len(corpus.report.skipped)} skipped by the reader)")


@corpus_app.command("schemes")
def corpus_schemes() -> None:
    """List the built-in label schemes and their classes."""
    from emomix.data.labels import get_scheme, list_schemes

    for name in list_schemes():
        scheme = get_scheme(name)
        typer.echo(f"{name:12s} {', '.join(scheme.classes)}")


@app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="Folder to write the synthetic corpus into."),
    seed: int = typer.Option(0, help="Random seed; the same seed writes the same corpus."),
    overrides: list[str] = typer.Option([], "--set", help="Generator setting as key=value (see docs/synthetic.md), repeatable."),
) -> None:
    """Write the built-in synthetic corpus (16 kHz WAV + manifest) for a seed."""
    from emomix.data.synthetic import SyntheticConfig, write_synthetic_corpus

    settings = _parse_overrides(overrides)
    if "seed" in settings:
        raise ConfigError("give the seed with --seed, not --set seed=...")
    config = SyntheticConfig.from_overrides(seed=seed, **settings)
    manifest = write_synthetic_corpus(out, config)
    typer.echo(f"wrote the synthetic corpus to {out} (manifest {manifest})")


@app.command("folds")
def folds(
    reader: str = typer.Argument(..., help="Reader name."),
    root: Path = typer.Argument(..., help="The corpus folder (or manifest file)."),
    protocol: str = typer.Option(..., help="loso (leave-one-session-out), loso-speaker, speaker-split, official, kfold."),
    scheme: str = typer.Option("default", help="Label scheme."),
    out: Optional[Path] = typer.Option(None, help="Write the fold plan as JSON here."),
    overrides: list[str] = typer.Option([], "--set", help="Protocol parameter as key=value (e.g. validation=speaker), repeatable."),
) -> None:
    """Build a cross-validation fold plan for a corpus and print it."""
    from emomix.data.protocols import make_fold_plan
    from emomix.data.readers import read_corpus

    corpus = read_corpus(reader, root, scheme=_scheme_option(scheme))
    plan = make_fold_plan(corpus.table, protocol, **_parse_overrides(overrides))
    typer.echo(plan.format(corpus.table))
    if out is not None:
        plan.save(out)
        typer.echo(f"fold plan written to {out}")


from emomix.cli_extract import register; register(app)  # noqa: E402,E702  (emomix extract, emomix store)
from emomix.cli_models import register as _register_models; _register_models(app)  # noqa: E402,E702  (emomix models)
from emomix.cli_train import register as _register_train; _register_train(app)  # noqa: E402,E702  (emomix train)
from emomix.evaluate.cli import register as _register_evaluate; _register_evaluate(app)  # noqa: E402,E702  (emomix evaluate, compare)
from emomix.cli_infer import register as _register_infer; _register_infer(app)  # noqa: E402,E702  (emomix predict)
from emomix.cli_serve import register as _register_serve; _register_serve(app)  # noqa: E402,E702  (emomix serve)
from emomix.cli_export import register as _register_export; _register_export(app)  # noqa: E402,E702  (emomix export)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: run the app, turning user errors into one line."""
    try:
        app(args=argv, standalone_mode=False)
    except EmomixError as exc:
        typer.echo(f"emomix: error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # click's own usage errors
        import click

        if isinstance(exc, click.exceptions.Abort):
            typer.echo("emomix: aborted", err=True)
            sys.exit(130)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(0)


if __name__ == "__main__":
    main()
