"""``emomix synth``, ``emomix corpus info|export|schemes`` and ``emomix folds``: corpora and fold plans."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from emomix.cli._common import parse_overrides, scheme_option
from emomix.errors import ConfigError

corpus_app = typer.Typer(help="Inspect and export corpora.", no_args_is_help=True, rich_markup_mode=None)


def register(app: typer.Typer) -> None:
    """Add ``synth``, ``folds`` and the ``corpus`` group to the ``emomix`` app."""
    app.command("synth")(synth)
    app.add_typer(corpus_app, name="corpus")
    app.command("folds")(folds)


@corpus_app.command("info")
def corpus_info(
    reader: str = typer.Argument(
        ..., help="Reader name: iemocap, meld, mosi, emodb, savee, ravdess, manifest, synthetic."
    ),
    root: Path = typer.Argument(..., help="The corpus folder (or manifest file for `manifest`)."),
    scheme: str = typer.Option(
        "default", help="Label scheme: 'default' (the reader's), 'none' (raw labels), a built-in name or a YAML file."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    options: list[str] = typer.Option(
        [],
        "--set",
        help="Reader option as key=value, e.g. --set pattern={split}.csv "
        "--set columns.Dialogue_ID=Scene_ID (repeatable; docs/corpora.md).",
    ),
) -> None:
    """Print utterances per label, speaker, session and split, and what was skipped or dropped."""
    from emomix.data.readers import read_corpus
    from emomix.data.readers._common import reader_options
    from emomix.data.summary import corpus_summary, format_summary

    corpus = read_corpus(reader, root, scheme=scheme_option(scheme), **reader_options(options))
    summary = corpus_summary(corpus)
    typer.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


@corpus_app.command("export")
def corpus_export(
    reader: str = typer.Argument(..., help="Reader name (see `emomix corpus info --help`)."),
    root: Path = typer.Argument(..., help="The corpus folder (or manifest file)."),
    out: Path = typer.Argument(..., help="The Parquet file to write."),
    scheme: str = typer.Option("default", help="Label scheme: 'default', 'none', a built-in name or a YAML file."),
    options: list[str] = typer.Option(
        [], "--set", help="Reader option as key=value (see `emomix corpus info --help`)."
    ),
) -> None:
    """Write a corpus's utterance table as Parquet."""
    from emomix.data.readers import read_corpus
    from emomix.data.readers._common import reader_options
    from emomix.data.schema import save_table

    corpus = read_corpus(reader, root, scheme=scheme_option(scheme), **reader_options(options))
    save_table(corpus.table, out)
    dropped = sum(corpus.report.dropped_by_label.values())
    typer.echo(
        f"wrote {len(corpus.table)} utterances to {out} ({dropped} dropped by the label scheme, "
        f"{len(corpus.report.skipped)} skipped by the reader)"
    )


@corpus_app.command("schemes")
def corpus_schemes() -> None:
    """List the built-in label schemes and their classes."""
    from emomix.data.labels import get_scheme, list_schemes

    for name in list_schemes():
        scheme = get_scheme(name)
        typer.echo(f"{name:12s} {', '.join(scheme.classes)}")


def synth(
    out: Path = typer.Argument(..., help="Folder to write the synthetic corpus into."),
    seed: int = typer.Option(0, help="Random seed; the same seed writes the same corpus."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Generator setting as key=value (see docs/synthetic.md), repeatable."
    ),
) -> None:
    """Write the built-in synthetic corpus (16 kHz WAV + manifest) for a seed."""
    from emomix.data.synthetic import SyntheticConfig, write_synthetic_corpus

    settings = parse_overrides(overrides)
    if "seed" in settings:
        raise ConfigError("give the seed with --seed, not --set seed=...")
    config = SyntheticConfig.from_overrides(seed=seed, **settings)
    manifest = write_synthetic_corpus(out, config)
    typer.echo(f"wrote the synthetic corpus to {out} (manifest {manifest})")


def folds(
    reader: str = typer.Argument(..., help="Reader name."),
    root: Path = typer.Argument(..., help="The corpus folder (or manifest file)."),
    protocol: str = typer.Option(
        ..., help="loso (leave-one-session-out), loso-speaker, speaker-split, official, kfold."
    ),
    scheme: str = typer.Option("default", help="Label scheme."),
    out: Path | None = typer.Option(None, help="Write the fold plan as JSON here."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Protocol parameter as key=value (e.g. validation=speaker), repeatable."
    ),
) -> None:
    """Build a cross-validation fold plan for a corpus and print it."""
    from emomix.data.protocols import make_fold_plan
    from emomix.data.readers import read_corpus

    corpus = read_corpus(reader, root, scheme=scheme_option(scheme))
    plan = make_fold_plan(corpus.table, protocol, **parse_overrides(overrides))
    typer.echo(plan.format(corpus.table))
    if out is not None:
        plan.save(out)
        typer.echo(f"fold plan written to {out}")
