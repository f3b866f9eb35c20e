"""The ``emomix`` command: one Typer app, one module per command group.

Each module (:mod:`~emomix.cli.data`, :mod:`~emomix.cli.extract`, :mod:`~emomix.cli.models`,
:mod:`~emomix.cli.train`, :mod:`~emomix.cli.evaluate`, :mod:`~emomix.cli.predict`,
:mod:`~emomix.cli.serve`, :mod:`~emomix.cli.export`) defines its commands as plain functions and a
``register(app)`` that adds them; the modules parse options, call the library and print.

:func:`main` (the console script) turns every error a user can cause into one line on stderr:
usage errors and :class:`emomix.errors.EmomixError` exit with status 2, Ctrl-C with 130.
``emomix`` alone prints the help and exits 0, like ``emomix --help``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer

from emomix import __version__
from emomix.cli import data, evaluate, export, extract, models, predict, serve, train
from emomix.cli._errors import run_app

__all__ = ["app", "main"]

app = typer.Typer(
    name="emomix",
    help="Emotion recognition from speech and transcript with mixture-of-experts fusion models. "
    "Run `emomix COMMAND --help` for a command's options; `emomix` alone prints this help.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"emomix {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool | None = typer.Option(
        None, "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
    ),
) -> None:
    """Emotion recognition from speech and transcript with mixture-of-experts fusion models."""


for _group in (data, extract, models, train, evaluate, predict, serve, export):
    _group.register(app)


def main(argv: Sequence[str] | None = None) -> Any:
    """Entry point of the console script: run the app and exit with its status (see the module doc)."""
    sys.exit(run_app(app, list(argv) if argv is not None else None))
