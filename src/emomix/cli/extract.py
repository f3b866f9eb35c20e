"""``emomix extract`` and ``emomix store info|verify|merge|clean``: fill the feature store from a corpus, inspect it.

The work lives in :mod:`emomix.cache` (:mod:`emomix.cache.workers` runs local worker processes).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from emomix.errors import ConfigError

DEFAULT_STORE = Path("cache") / "features"

store_app = typer.Typer(
    help="Inspect, verify, merge and clean a feature store.", no_args_is_help=True, rich_markup_mode=None
)


def register(app: typer.Typer) -> None:
    """Add ``extract`` and the ``store`` command group to the ``emomix`` app."""
    app.command("extract")(extract)
    app.add_typer(store_app, name="store")


def extract(
    reader: str = typer.Argument(
        ..., help="Reader name: iemocap, meld, mosi, emodb, savee, ravdess, manifest, synthetic."
    ),
    root: Path = typer.Argument(..., help="The corpus folder (or manifest file)."),
    encoder: str = typer.Option(
        ..., "--encoder", help="Encoder spec, e.g. mfcc, opensmile:eGeMAPSv02, minilm, wavlm-base, speech:<folder>."
    ),
    layers: str = typer.Option("", help="Hidden layers to store as layer_<k> fields, comma separated (e.g. 4,8,12)."),
    boundary_layer: int | None = typer.Option(
        None,
        help="Store the states entering this layer (negative: from the top, -2 = "
        "the top two layers run at training time via forward_from_layer).",
    ),
    store: Path = typer.Option(DEFAULT_STORE, help="Feature store folder."),
    batch_size: int = typer.Option(8, help="Utterances encoded together (sorted by length, so padding is small)."),
    num_workers: int = typer.Option(0, help="DataLoader processes that load and preprocess audio."),
    dtype: str = typer.Option("float16", help="Storage type of float arrays: float16 or float32."),
    scheme: str = typer.Option("default", help="Label scheme ('none' keeps every utterance with its raw label)."),
    limit: int | None = typer.Option(None, help="Only the first N utterances of the table."),
    flush_every: int = typer.Option(256, help="Write a shard every N computed utterances (a kill loses at most one)."),
    vad: str | None = typer.Option(None, help="Voice activity detection: webrtc or silero (default: none)."),
    vad_mode: str = typer.Option("mask", help="mask: store a speech_mask per frame; trim: cut to the speech regions."),
    normalise_loudness: bool = typer.Option(
        False, "--normalise-loudness", help="Scale audio to -23 dBFS gated RMS first."
    ),
    chunk_max_s: float | None = typer.Option(None, help="Cut longer audio into pieces of at most this many seconds."),
    text_normalisation: str = typer.Option(
        "strip", help="Transcript normalisation before hashing and encoding: strip or none."
    ),
    shard_index: int | None = typer.Option(
        None, help="Process only this share of the corpus (0-based; with --num-shards)."
    ),
    num_shards: int = typer.Option(
        1,
        help="Split the corpus into this many shares; without --shard-index, run them all here "
        "as parallel processes and merge.",
    ),
    devices: str = typer.Option(
        "cpu", help="Device(s) for the encoder, comma separated (cuda:0,cuda:1 runs one process each)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    summary_json: Path | None = typer.Option(None, help="Also write the summary as JSON to this file."),
) -> None:
    """Extract encoder features for a corpus into the feature store, computing only what is missing."""
    from emomix.cache.extract import ExtractSummary
    from emomix.cache.workers import extract_corpus, extract_with_workers, format_combined

    device_list = [d.strip() for d in devices.split(",") if d.strip()] or ["cpu"]
    if len(device_list) > 1 and num_shards == 1 and shard_index is None:
        num_shards = len(device_list)
    if num_shards < 1:
        raise ConfigError(f"--num-shards must be at least 1, got {num_shards}")
    if shard_index is not None and not 0 <= shard_index < num_shards:
        raise ConfigError(f"--shard-index {shard_index} is outside 0..{num_shards - 1} (--num-shards {num_shards})")
    layer_list = _parse_layers(layers)
    options = dict(
        encoder=encoder,
        layers=layers,
        boundary_layer=boundary_layer,
        store=store,
        batch_size=batch_size,
        num_workers=num_workers,
        dtype=dtype,
        scheme=scheme,
        limit=limit,
        flush_every=flush_every,
        vad=vad,
        vad_mode=vad_mode,
        normalise_loudness=normalise_loudness,
        chunk_max_s=chunk_max_s,
        text_normalisation=text_normalisation,
    )
    preprocess = dict(
        vad=vad,
        vad_mode=vad_mode,
        normalise_loudness=normalise_loudness,
        chunk_max_s=chunk_max_s,
        text_normalisation=text_normalisation,
    )
    if num_shards > 1 and shard_index is None:
        summary = extract_with_workers(reader, root, options, num_shards, device_list)
    else:
        summary = extract_corpus(
            reader,
            root,
            encoder,
            layer_list,
            boundary_layer,
            store,
            batch_size,
            num_workers,
            dtype,
            scheme,
            limit,
            flush_every,
            preprocess,
            shard_index or 0,
            num_shards,
            device_list[0],
            progress,
        )
    data = summary if isinstance(summary, dict) else summary.to_dict()
    if summary_json is not None:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(data, indent=2))
    if as_json:
        typer.echo(json.dumps({k: v for k, v in data.items() if k != "keys"}, indent=2))
    else:
        typer.echo(summary.format() if isinstance(summary, ExtractSummary) else format_combined(data))
        if num_shards > 1 and shard_index is not None:
            typer.echo(
                f"this was worker {shard_index} of {num_shards}; when every worker has finished, "
                f"run `emomix store merge {store}`"
            )


def _parse_layers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as exc:
        raise ConfigError(f"--layers expects comma-separated integers such as 4,8,12, got {text!r}") from exc


# ---------------------------------------------------------------------- emomix store ...


@store_app.command("info")
def store_info(
    path: Path = typer.Argument(DEFAULT_STORE, help="Feature store folder."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Entries, shards and bytes per namespace, orphan files and unmerged worker parts."""
    from emomix.cache.store import FeatureStore

    with FeatureStore(path, create=False) as store:
        stats = store.stats()
    if as_json:
        typer.echo(json.dumps(stats, indent=2, default=str))
        return
    typer.echo(f"{stats['root']}: {stats['entries']} entries in {stats['shards']} shards, {stats['bytes']} bytes")
    for namespace, info in sorted(stats["namespaces"].items()):
        typer.echo(f"  {namespace}: {info['entries']} entries, {info['shards']} shards, {info['bytes']} bytes")
    if stats["orphans"]:
        typer.echo(f"  {stats['orphans']} orphan file(s) from interrupted runs (`emomix store clean` removes them)")
    if stats["pending_parts"]:
        typer.echo(f"  {stats['pending_parts']} worker index part(s) not merged (`emomix store merge`)")


@store_app.command("verify")
def store_verify(
    path: Path = typer.Argument(DEFAULT_STORE, help="Feature store folder."),
    repair: bool = typer.Option(
        False, "--repair", help="Drop bad entries from the index so the next extraction recomputes them."
    ),
) -> None:
    """Read every entry and check its checksum; exit status 1 when any is bad."""
    from emomix.cache.store import FeatureStore

    with FeatureStore(path, create=False) as store:
        report = store.verify(repair=repair)
    for key, reason in report.bad[:20]:
        typer.echo(f"bad {key}: {reason}")
    if len(report.bad) > 20:
        typer.echo(f"... and {len(report.bad) - 20} more")
    typer.echo(
        f"checked {report.checked} entries: {len(report.bad)} bad" + (f", {report.removed} removed" if repair else "")
    )
    if report.bad and not repair:
        raise typer.Exit(1)


@store_app.command("merge")
def store_merge(path: Path = typer.Argument(DEFAULT_STORE, help="Feature store folder.")) -> None:
    """Merge the index parts of finished scale-out workers into the main index."""
    from emomix.cache.store import merge_indexes

    report = merge_indexes(path)
    typer.echo(
        f"merged {len(report.merged)} part(s), {report.entries_added} new entries"
        + (f"; still running: {', '.join(report.busy)}" if report.busy else "")
    )


@store_app.command("clean")
def store_clean(path: Path = typer.Argument(DEFAULT_STORE, help="Feature store folder.")) -> None:
    """Remove temporary files and adopt or remove orphan shards of writers that are not running."""
    from emomix.cache.store import FeatureStore

    with FeatureStore(path, create=False) as store:
        report = store.cleanup(all_writers=True)
    typer.echo(
        f"removed {len(report.temp_removed)} temporary file(s), adopted {len(report.adopted)} and removed "
        f"{len(report.orphans_removed)} orphan shard(s)"
    )
