"""``emomix export``: a trained checkpoint as ONNX (checked on the run's own test utterances) with its
model card; ``emomix export-check``: every registered model exported with tiny inputs and checked.

The work happens in :mod:`emomix.infer.run_export` and :func:`emomix.infer.export.check_all`.

**Decision: a format flag is required.** ``emomix export RUN`` alone is an error that names the
two choices, ``--onnx`` (graph + card) and ``--card-only`` (the card alone, which needs neither
the corpus nor onnxruntime). A bare command that silently wrote only a card would look like a
finished export.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import typer

from emomix.errors import ConfigError


def register(app: typer.Typer) -> None:
    """Add the ``export`` and ``export-check`` commands to the ``emomix`` app."""
    app.command("export")(export)
    app.command("export-check")(export_check)


def export(
    run: Path = typer.Argument(
        ..., help="A run folder (emomix train's --out) or a checkpoint folder folds/<fold>/seed-<k>."
    ),
    onnx: bool = typer.Option(
        False,
        "--onnx",
        help="Export the model to ONNX (checked on the run's test utterances) and write its model card.",
    ),
    card_only: bool = typer.Option(
        False, "--card-only", help="Write only the model card (model_card.json, MODEL_CARD.md)."
    ),
    fold: str | None = typer.Option(
        None, "--fold", help="Export this fold's model (default: the fold/seed with the best validation score)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Export this seed's model."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder to write into (default: <checkpoint>/export)."),
    encoders: bool = typer.Option(
        False,
        "--encoders/--no-encoders",
        help="Also export the text encoder when it is a transformers model (default: no).",
    ),
    atol: float = typer.Option(
        1e-4, "--atol", help="Largest allowed abs difference of logits and probabilities (default 1e-4)."
    ),
    corpus_root: Path | None = typer.Option(
        None,
        "--corpus-root",
        help="Where the run's corpus is now, when it moved since training (parity reads its test utterances).",
    ),
) -> None:
    """Export a trained model to ONNX with its model card, checked against PyTorch on real test utterances."""
    if onnx == card_only:
        raise ConfigError(
            "choose what to export: --onnx (the ONNX graph, checked on the run's test utterances, and "
            "the model card) or --card-only (the model card alone)"
            if not onnx
            else "--onnx already writes the model card; drop --card-only"
        )
    if encoders and not onnx:
        raise ConfigError("--encoders exports encoders to ONNX: add --onnx")
    if not math.isfinite(atol) or atol <= 0:
        raise ConfigError(f"--atol must be a positive number, got {atol}")
    if card_only:
        from emomix.infer.card import model_card, write_model_card

        card = model_card(run, fold=fold, seed=seed)
        folder = out if out is not None else Path(card["checkpoint"]) / "export"
        json_path, markdown_path = write_model_card(folder, card)
        typer.echo(
            f"model card of {card['name']} (fold {card['training'].get('fold')}, seed "
            f"{card['training'].get('seed')}): {json_path}, {markdown_path}"
        )
        return
    from emomix.infer.run_export import export_run

    export_run(
        run, out=out, fold=fold, seed=seed, encoders=encoders, atol=atol, corpus_root=corpus_root, echo=typer.echo
    )


def export_check(
    models: str = typer.Option("", "--models", help="Comma-separated model names (default: every registered model)."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the rows as JSON to this file."),
    threads: int = typer.Option(1, "--threads", help="torch threads (default 1)."),
) -> None:
    """Export every registered model (or --models) to ONNX with tiny inputs and check parity on other shapes.

    Replaces `python -m emomix.infer.export --check-all`. Prints a Markdown table and why each
    model that does not export fails.
    """
    import torch

    from emomix.atomic import write_text_atomic
    from emomix.infer.export import check_all, format_check_table

    if threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    rows = check_all([n.strip() for n in models.split(",") if n.strip()] or None)
    typer.echo(format_check_table(rows))
    exported = sum(r.exports for r in rows)
    typer.echo(f"\n{exported} of {len(rows)} models export with parity; total {sum(r.seconds for r in rows):.0f} s")
    for row in rows:
        if not row.exports:
            typer.echo(f"\n{row.model}: {row.reason}")
    if json_path is not None:
        write_text_atomic(json_path, json.dumps([asdict(r) for r in rows], indent=2) + "\n")
