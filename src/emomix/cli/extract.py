"""``emomix extract`` and ``emomix store info|verify|merge|clean``: fill the feature store from a corpus, inspect it.

The work lives in :mod:`emomix.cache` (:mod:`emomix.cache.distributed` runs the extraction in this
process or as the ranks of a Lightning Fabric DDP job). ``--encoder`` takes the encoder specs a
recipe takes (:func:`emomix.features.feature_block_from_text`), so a command-line extraction
stores exactly the entries a training run with the same spec looks up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from emomix.errors import ConfigError

DEFAULT_STORE = Path("cache") / "features"

#: The command line's preprocessing defaults (PreprocessConfig's): a value other than these was given.
_PREPROCESS_DEFAULTS: dict[str, Any] = {
    "vad": None,
    "vad_mode": "mask",
    "normalise_loudness": False,
    "chunk_max_s": None,
    "text_normalisation": "strip",
}

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
        ...,
        "--encoder",
        help="Encoder spec as a recipe writes it: a name (mfcc, minilm, wavlm-base, speech:<folder>, "
        "opensmile:eGeMAPSv02), name@level (opensmile:ComParE_2016@functionals), a JSON object "
        '(\'{"name": "opensmile:ComParE_2016", "level": "functionals"}\') or a .yaml/.json file holding '
        "one, or holding a recipe's whole features.<modality> block (encoder, preprocess, layers, "
        "utterance, ...).",
    ),
    layers: str = typer.Option("", help="Hidden layers to store as layer_<k> fields, comma separated (e.g. 4,8,12)."),
    boundary_layer: int | None = typer.Option(
        None,
        help="Store the states entering this layer (negative: from the top, -2 = "
        "the top two layers run at training time via forward_from_layer).",
    ),
    store: Path = typer.Option(DEFAULT_STORE, help="Feature store folder."),
    batch_size: int | None = typer.Option(
        None, help="Utterances encoded together, sorted by length (default: the spec's batch_size, else 8)."
    ),
    num_workers: int = typer.Option(0, help="DataLoader processes that load and preprocess audio (per rank)."),
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
    processes: int = typer.Option(
        1,
        help="Extraction processes per machine: Lightning DDP ranks (gloo on CPU), each owning a share of the "
        "corpus; 1 extracts in this process.",
    ),
    num_nodes: int = typer.Option(
        1,
        help="Machines in the job (with MASTER_ADDR, MASTER_PORT and NODE_RANK set on each, or under "
        "torchrun / SLURM; see docs/feature-store.md).",
    ),
    devices: str = typer.Option(
        "cpu",
        help="Where the encoder runs: cpu, cuda (GPUs 0..processes-1), or cuda:0,cuda:1 (one rank per listed GPU).",
    ),
    shard_index: int | None = typer.Option(
        None,
        help="For jobs you start yourself without a process group (a SLURM array): extract only this "
        "share (0-based) of --num-shards, then `emomix store merge`.",
    ),
    num_shards: int | None = typer.Option(None, help="The number of shares, with --shard-index."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    summary_json: Path | None = typer.Option(None, help="Also write the summary as JSON to this file."),
) -> None:
    """Extract encoder features for a corpus into the feature store, computing only what is missing."""
    from emomix.cache.distributed import format_combined

    accelerator, device_ids = _parse_devices(devices)
    if device_ids:
        if processes not in (1, len(device_ids)):
            raise ConfigError(
                f"--devices {devices} names {len(device_ids)} GPU(s) but --processes is {processes}; "
                "one rank runs per listed GPU"
            )
        processes = len(device_ids)
    if processes < 1 or num_nodes < 1:
        raise ConfigError(f"--processes and --num-nodes must be at least 1, got {processes} and {num_nodes}")
    distributed = processes * num_nodes > 1
    if (shard_index is None) != (num_shards is None):
        raise ConfigError(
            "--shard-index and --num-shards go together (a job you start yourself per share); "
            "to run N processes here use --processes N"
        )
    if num_shards is not None and shard_index is not None:
        if num_shards < 1 or not 0 <= shard_index < num_shards:
            raise ConfigError(f"--shard-index {shard_index} is outside 0..{num_shards - 1} (--num-shards {num_shards})")
        if distributed:
            raise ConfigError("--shard-index/--num-shards cannot be combined with --processes/--num-nodes")
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and not distributed:
        raise ConfigError(
            f"this process is one of {launched} ranks started by a launcher (WORLD_SIZE={launched}); pass "
            "--processes (ranks per machine) and --num-nodes to match"
        )

    results = _extract_results(
        reader,
        root,
        encoder,
        layers,
        boundary_layer,
        store,
        batch_size,
        num_workers,
        dtype,
        scheme,
        limit,
        flush_every,
        dict(
            vad=vad,
            vad_mode=vad_mode,
            normalise_loudness=normalise_loudness,
            chunk_max_s=chunk_max_s,
            text_normalisation=text_normalisation,
        ),
        progress,
        distributed,
        processes,
        num_nodes,
        accelerator,
        device_ids,
        shard_index,
        num_shards,
    )
    if results is None:
        return  # a rank other than 0: rank 0 prints the summary
    data = dict(results[0])
    if len(results) > 1:
        data["utterance"] = results[1]  # a spec's `utterance` encoder (a recipe's <modality>_pooled)
    if summary_json is not None:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(data, indent=2))
    if as_json:
        shown = {k: v for k, v in data.items() if k != "keys"}
        if "utterance" in shown:
            shown["utterance"] = {k: v for k, v in shown["utterance"].items() if k != "keys"}
        typer.echo(json.dumps(shown, indent=2))
    else:
        for result in results:
            if len(results) > 1:
                typer.echo(f"[{result['role']}]")
            typer.echo(format_combined(result))
        if num_shards is not None and num_shards > 1:
            typer.echo(
                f"this was share {shard_index} of {num_shards}; when every share has finished, "
                f"run `emomix store merge {store}`"
            )


def _extract_results(
    reader: str,
    root: Path,
    encoder: str,
    layers: str,
    boundary_layer: int | None,
    store: Path,
    batch_size: int | None,
    num_workers: int,
    dtype: str,
    scheme: str,
    limit: int | None,
    flush_every: int,
    preprocess: dict[str, Any],
    progress: bool,
    distributed: bool,
    processes: int,
    num_nodes: int,
    accelerator: str,
    device_ids: list[int] | None,
    shard_index: int | None,
    num_shards: int | None,
) -> list[dict[str, Any]] | None:
    """Run the extraction; the summaries (one per encoder run), None on a rank other than 0."""
    from emomix.cache.distributed import CorpusJob, extract_corpus, extract_distributed, summary_dict

    runs, built = _encoder_runs(encoder, _parse_layers(layers), boundary_layer, batch_size, preprocess)
    job = CorpusJob(
        reader=reader,
        root=root,
        runs=runs,
        store=store,
        dtype=dtype,
        scheme=scheme,
        limit=limit,
        num_workers=num_workers,
        flush_every=flush_every,
        progress=progress,
    )
    if distributed:
        built.clear()  # every rank builds its own
        outcome = extract_distributed(
            job, processes=processes, num_nodes=num_nodes, accelerator=accelerator, devices=device_ids
        )
        if outcome["global_rank"] != 0:
            typer.echo(
                f"rank {outcome['global_rank']} of {outcome['world_size']} done; rank 0 prints the summary", err=True
            )
            for failure in outcome["failures"]:
                typer.echo(f"failed: {failure} (rank 0 reports it and exits with status 2)", err=True)
            return None
        return list(outcome["summaries"])
    device = f"cuda:{device_ids[0]}" if device_ids else ("cuda" if accelerator == "cuda" else "cpu")
    summaries = extract_corpus(
        job,
        shard_index=shard_index or 0,
        num_shards=num_shards or 1,
        device=device,
        encoders=[built.get(i) for i in range(len(runs))],
    )
    return [summary_dict(summary, run.role) for summary, run in zip(summaries, runs, strict=True)]


def _parse_devices(text: str) -> tuple[str, list[int] | None]:
    """``cpu`` -> ("cpu", None); ``cuda`` -> ("cuda", None); ``cuda:0,cuda:1`` -> ("cuda", [0, 1])."""
    parts = [p.strip().lower() for p in text.split(",") if p.strip()] or ["cpu"]
    if parts == ["cpu"]:
        return "cpu", None
    if parts in (["cuda"], ["gpu"]):
        return "cuda", None
    ids = []
    for part in parts:
        kind, _, index = part.partition(":")
        if kind not in ("cuda", "gpu") or not index.isdigit():
            raise ConfigError(f"--devices expects cpu, cuda or a list such as cuda:0,cuda:1, got {text!r}")
        ids.append(int(index))
    return "cuda", ids


def _encoder_runs(
    text: str,
    layers: list[int],
    boundary_layer: int | None,
    batch_size: int | None,
    preprocess: dict[str, Any],
) -> tuple[list[Any], dict[int, Any]]:
    """The encoder runs a spec asks for, as a recipe with that spec would extract them
    (:meth:`emomix.features.FeatureSpec.extractions`), with the command line's options merged in;
    also the encoders built on the way, by run index."""
    from emomix.cache.distributed import EncoderRun
    from emomix.constants import MODALITIES
    from emomix.encoders.registry import create_encoder
    from emomix.features import FeatureSpec, feature_block_from_text

    block = feature_block_from_text(text)
    own = block.get("preprocess") or {}
    if not isinstance(own, dict):
        raise ConfigError(f"the encoder spec's preprocess must be a mapping, got {own!r}")
    given = {k: v for k, v in preprocess.items() if v != _PREPROCESS_DEFAULTS[k]}
    for key, value in given.items():
        if key in own and own[key] != value:
            raise ConfigError(
                f"--{key.replace('_', '-')} {value!r} disagrees with the spec's preprocess.{key} {own[key]!r}; "
                "set it in one place"
            )
    block["preprocess"] = {**own, **given}
    if layers:
        if block.get("layers") and sorted(int(k) for k in block["layers"]) != sorted(layers):
            raise ConfigError(f"--layers {layers} disagrees with the spec's layers {block['layers']}; set one")
        block["layers"] = layers
    if batch_size is not None:
        block["batch_size"] = batch_size
    model = create_encoder(block["encoder"])
    modality = getattr(model, "modality", None)
    if modality not in MODALITIES:
        raise ConfigError(
            f"encoder {block['encoder']!r} has modality {modality!r}; `emomix extract` runs audio, text and "
            "video encoders (a recipe copies a feature file into the store by itself)"
        )
    spec = FeatureSpec.from_dict(modality, block)
    runs = [EncoderRun(**run) for run in spec.extractions(model)]
    if boundary_layer is not None:
        if runs[0].boundary_layer is not None:
            raise ConfigError("--boundary-layer and the spec's trainable_top_layers both choose the boundary; keep one")
        runs[0].boundary_layer = boundary_layer
    return runs, {0: model}


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
