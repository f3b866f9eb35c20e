"""``emomix predict``: a trained run on audio files, a folder of them, or a manifest.

The work happens in :class:`emomix.infer.predictor.Predictor` and :mod:`emomix.infer.batch`
(:func:`emomix.infer.timeline.predict_timeline` for ``--timeline``). One output row per input; an
input that fails gets a row with its error and the others go on. The exit status is 0 unless every
input failed. Every note the predictions carry is printed once on stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from emomix.errors import ConfigError, MissingDataError

HUMAN_SUMMARY_MAX = 10
"""Up to this many inputs, each prediction is also summarised in words on stderr."""


def human_summary(results: list[dict[str, Any]]) -> list[str]:
    """``clip.wav: happy (0.62)`` and one indented line per aux reading in words
    (e.g. ``audio routing: local 0.250 / global 0.750``), for the person at the terminal."""
    from emomix.infer.describe import describe_aux

    lines = []
    for row in results:
        if "error" in row:
            lines.append(f"{row.get('input')}: failed: {row['error']}")
            continue
        probability = (row.get("probabilities") or {}).get(row.get("label"))
        score = f" ({probability:.2f})" if isinstance(probability, (int, float)) else ""
        lines.append(f"{row.get('input')}: {row.get('label')}{score}")
        lines.extend(f"  {line}" for line in describe_aux(row.get("aux") or {}))
    return lines


def dialogue_notes(model: str, reads_dialogue: bool, grouped: bool, timeline: bool, inputs: int) -> list[str]:
    """What the user should know when the inputs' conversations and the model disagree."""
    if grouped and timeline:
        return ["--timeline predicts each recording on its own: the manifest's dialogue_id is not used"]
    if grouped and not reads_dialogue:
        return [
            f"{model} predicts each utterance on its own: the manifest's dialogue_id does not change its predictions"
        ]
    if reads_dialogue and not grouped and inputs > 1 and not timeline:
        return [
            f"{model} reads the conversation, but the inputs name no dialogue: each is predicted "
            "as a one-turn dialogue, without context (a manifest's dialogue_id[,turn] columns group them)"
        ]
    return []


def register(app: typer.Typer) -> None:
    """Add the ``predict`` command to the ``emomix`` app."""
    app.command("predict")(predict)


def predict(
    run: Path = typer.Argument(
        ..., help="A run folder (emomix train's --out) or a checkpoint folder folds/<fold>/seed-<k>."
    ),
    source: Path | None = typer.Argument(
        None,
        help="An audio file, a folder of audio files (wav/flac/ogg/mp3), or a CSV manifest "
        "with audio_path[,text,speaker] (text[,speaker] alone for a text-only model; "
        "dialogue_id[,turn] group rows into conversations for a model that reads them). "
        "Leave it out to predict one --text with a text-only model.",
    ),
    text: str | None = typer.Option(
        None,
        "--text",
        help="The transcript (of a single audio file, or alone for a text-only model; a manifest has a text column).",
    ),
    speaker: str | None = typer.Option(
        None, "--speaker", help="The speaker id for speaker-normalised features (single file)."
    ),
    video: Path | None = typer.Option(
        None,
        "--video",
        help="The utterance's video file, for a model that reads video "
        "(single file; a manifest has a video_path column).",
    ),
    fold: str | None = typer.Option(
        None, "--fold", help="Use this fold's model (default: the fold/seed with the best validation score)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Use this seed's model."),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Write results to .jsonl, .csv (or .json with --timeline) (default: JSON lines on stdout).",
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Inputs per feature-extraction batch."),
    timeline: bool = typer.Option(
        False, "--timeline", help="Treat each input as a long recording: segment it and predict every speech segment."
    ),
    plot: Path | None = typer.Option(None, "--plot", help="With --timeline: draw the timeline to this PNG."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Predict the emotion of every input with a trained model."""
    from emomix.infer.batch import (
        collect_inputs,
        dialogue_groups,
        distinct_notes,
        has_dialogues,
        run_predictions,
        run_timelines,
        write_results,
    )
    from emomix.infer.predictor import Predictor

    if plot is not None and not timeline:
        raise ConfigError("--plot draws a timeline: add --timeline")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if source is None:
        if text is None:
            raise ConfigError(
                "give a SOURCE (an audio file, a folder or a manifest CSV), or --text for a text-only model"
            )
        if timeline or video is not None:
            raise ConfigError("--timeline and --video need a recording: give it as SOURCE")
        items: list[dict[str, Any]] = [{"text": text, **({"speaker": speaker} if speaker is not None else {})}]
    else:
        items = collect_inputs(source, text=text, speaker=speaker, video=video)
    dialogue_groups(items)  # an ambiguous turn order is refused before the model loads
    predictor = Predictor.from_run(run, fold=fold, seed=seed)
    card = predictor.info()
    typer.echo(
        f"model {card['name']} (fold {card['training'].get('fold')}, seed {card['training'].get('seed')}) "
        f"from {predictor.checkpoint}; {len(items)} input(s)",
        err=True,
    )
    for note in dialogue_notes(card["name"], predictor.reads_dialogue, has_dialogues(items), timeline, len(items)):
        typer.echo(f"note: {note}", err=True)
    if timeline:
        results = run_timelines(predictor, items, batch_size, plot, progress=not quiet)
    else:
        results = run_predictions(predictor, items, batch_size, progress=not quiet)
    failed = [r for r in results if "error" in r]
    where = write_results(results, out, predictor.classes, timeline=timeline)
    if not timeline and not quiet and len(results) <= HUMAN_SUMMARY_MAX:
        for line in human_summary(results):
            typer.echo(line, err=True)
    for note, count in distinct_notes(results):
        scope = "" if count == len(results) else f" ({count} of {len(results)} inputs)"
        typer.echo(f"note: {note}{scope}", err=True)
    typer.echo(f"{len(results) - len(failed)} predicted, {len(failed)} failed; results: {where}", err=True)
    if results and len(failed) == len(results):
        raise MissingDataError(f"every input failed ({len(failed)}); first error: {failed[0]['error']}")
