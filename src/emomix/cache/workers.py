"""Feature extraction for a whole corpus: one share in this process, or several local worker
processes (``emomix extract --num-shards N``) whose index parts are merged at the end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from emomix.errors import EmomixError


def extract_corpus(
    reader: str,
    root: Path,
    encoder_spec: str,
    layers: list[int],
    boundary_layer: int | None,
    store_path: Path,
    batch_size: int,
    num_workers: int,
    dtype: str,
    scheme: str,
    limit: int | None,
    flush_every: int,
    preprocess: dict[str, Any],
    shard_index: int,
    num_shards: int,
    device: str,
    progress: bool,
) -> Any:
    """Extract one share (``shard_index`` of ``num_shards``) of a corpus in this process; the
    :class:`~emomix.cache.extract.ExtractSummary`."""
    from emomix.cache.extract import extract_features
    from emomix.cache.store import FeatureStore
    from emomix.data.readers import read_corpus
    from emomix.encoders.registry import create_encoder

    corpus = read_corpus(reader, root, scheme=None if scheme.lower() in {"none", "raw"} else scheme)
    table = corpus.table if limit is None else corpus.table.head(limit)
    model = create_encoder(encoder_spec)
    if device != "cpu":
        model = model.to(device)
    worker = f"shard-{shard_index}-of-{num_shards}" if num_shards > 1 else None
    with FeatureStore(store_path, dtype=dtype, worker=worker) as store:
        return extract_features(
            table,
            model,
            store,
            preprocess=preprocess,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
            layers=layers,
            boundary_layer=boundary_layer,
            flush_every=flush_every,
            base_dir=corpus.root,
            shard_index=shard_index,
            num_shards=num_shards,
        )


def extract_with_workers(
    reader: str, root: Path, options: dict[str, Any], num_shards: int, devices: list[str]
) -> dict[str, Any]:
    """Run ``num_shards`` ``emomix extract --shard-index i`` worker processes on this machine (the
    ``options`` are the command's own, as ``--name=value``), wait, merge their index parts; the
    combined summary as a dict."""
    from emomix.cache.store import merge_indexes

    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="emomix-extract-"))
    processes = []
    for index in range(num_shards):
        argv = [
            sys.executable,
            "-m",
            "emomix.cli",
            "extract",
            reader,
            str(root),
            "--no-progress",
            "--shard-index",
            str(index),
            "--num-shards",
            str(num_shards),
            "--devices",
            devices[index % len(devices)],
            "--summary-json",
            str(folder / f"{index}.json"),
        ]
        for name, value in options.items():
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                argv += [flag] if value else []
            elif value is not None and value != "":
                argv.append(f"{flag}={value}")  # '=' keeps a negative --boundary-layer a value
        log = open(folder / f"{index}.log", "w")  # noqa: SIM115 - the worker writes it; closed once it exits
        processes.append((subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for index, (process, log) in enumerate(processes):
        if process.wait() != 0:
            lines = (folder / f"{index}.log").read_text().strip().splitlines()
            failed.append(f"worker {index}: {lines[-1] if lines else 'exit status ' + str(process.returncode)}")
        log.close()
    if failed:
        raise EmomixError(
            f"extraction workers failed (logs in {folder}; finished work is kept, re-run to resume): "
            + "; ".join(failed)
        )
    merge_indexes(options["store"])
    parts = [json.loads((folder / f"{i}.json").read_text()) for i in range(num_shards)]
    shutil.rmtree(folder, ignore_errors=True)
    combined = combine_summaries(parts)
    combined["wall_seconds"] = time.perf_counter() - started
    combined["real_time_factor"] = (
        combined["wall_seconds"] / combined["audio_seconds"] if combined["audio_seconds"] else None
    )
    from emomix.cache.store import FeatureStore

    with FeatureStore(options["store"], create=False) as store:
        combined["bytes_on_disk"] = int(store.stats()["bytes"])
    return combined


def combine_summaries(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' summary dicts as one (counts summed, fallbacks, failures and keys joined)."""
    combined: dict[str, Any] = {
        "namespace": parts[0]["namespace"],
        "store": parts[0]["store"],
        "workers": len(parts),
        "layers": parts[0]["layers"],
        "boundary_layer": parts[0]["boundary_layer"],
        "fallbacks": {},
        "failures": [],
        "keys": {},
    }
    for name in ("total", "cached", "computed", "entries_written", "shards_written", "failed", "audio_seconds"):
        combined[name] = sum(part[name] for part in parts)
    for part in parts:
        for kind, ids in part["fallbacks"].items():
            combined["fallbacks"].setdefault(kind, []).extend(ids)
        combined["failures"].extend(part["failures"])
        combined["keys"].update(part["keys"])
    return combined


def format_combined(data: dict[str, Any]) -> str:
    """A combined summary as :meth:`ExtractSummary.format` prints it, plus the worker count."""
    from emomix.cache.extract import ExtractSummary

    fields = {k: data[k] for k in ExtractSummary.__dataclass_fields__ if k in data}
    summary = ExtractSummary(**fields)
    text = summary.format()
    return text + f"\nworkers        {data.get('workers', 1)} processes, index parts merged"
