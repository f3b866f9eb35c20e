"""Feature extraction for a whole corpus: in this process, or as ranks of a Lightning Fabric DDP
job (``emomix extract --processes N [--num-nodes M]``) on one machine or many.

Every rank reads the same utterance table and owns the utterances whose input locator hashes to
its global rank (:func:`emomix.cache.keys.locator_shard`, the split ``extract_features`` does
with ``shard_index``/``num_shards``). It writes through its own worker store
(``FeatureStore(root, worker="rank-<r>-of-<w>")``: its own shards and index part, so ranks never
contend for the index). When every rank has finished, their outcomes are gathered
(``torch.distributed.all_gather_object``, gloo on CPU), rank 0 merges the index parts into the
main index, and the combined summary is returned. A rank that fails does not stop the others:
its error is gathered with the rest, rank 0 still merges what every rank finished, and the job
raises one :class:`~emomix.errors.EmomixError` naming the ranks that failed. Re-running the same
command resumes: entries already stored are cache hits.

Fabric starts the processes: on one machine (or on each machine of a job started by hand with
``MASTER_ADDR``/``MASTER_PORT``/``NODE_RANK``) it starts ``--processes`` ranks itself, forked or
spawned (:func:`rank_start_method`); under ``torchrun``, SLURM (``srun``) and the other cluster
environments Lightning detects, the launcher has already started one process per rank and this
module only joins the process group (``ddp``).
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emomix.errors import ConfigError, EmomixError


@dataclass
class EncoderRun:
    """One encoder to run over the corpus (plain data, so it pickles into spawned ranks).

    ``encoder``: a :func:`~emomix.encoders.registry.create_encoder` spec; ``preprocess``:
    :class:`~emomix.cache.extract.PreprocessConfig` fields; ``layers``/``boundary_layer`` as
    :func:`~emomix.cache.extract.extract_features` takes them; ``role``: a label for the summary
    (a recipe's ``audio`` or ``audio_pooled``); ``context``: a text spec's dialogue context
    (:class:`~emomix.data.dialogue.DialogueContext` fields), applied to the transcripts first.
    """

    encoder: Any
    preprocess: dict[str, Any] = field(default_factory=dict)
    layers: list[int] = field(default_factory=list)
    boundary_layer: int | None = None
    batch_size: int = 8
    role: str = ""
    context: dict[str, Any] | None = None


@dataclass
class CorpusJob:
    """What to extract: a corpus (``reader``, ``root``, label ``scheme``, first ``limit`` rows),
    the encoders to run over it, and where and how to store the features."""

    reader: str
    root: Path
    runs: list[EncoderRun]
    store: Path
    dtype: str = "float16"
    scheme: str = "default"
    limit: int | None = None
    num_workers: int = 0
    flush_every: int = 256
    progress: bool = True


def extract_corpus(
    job: CorpusJob,
    shard_index: int = 0,
    num_shards: int = 1,
    worker: str | None = None,
    device: Any = "cpu",
    progress: bool | None = None,
    encoders: Sequence[Any] | None = None,
) -> list[Any]:
    """Extract share ``shard_index`` of ``num_shards`` of the corpus in this process, one
    :class:`~emomix.cache.extract.ExtractSummary` per encoder run. ``worker`` names the worker
    store to write through (needed when ``num_shards > 1``); ``encoders``: already built
    encoders, one per run (built from the specs otherwise)."""
    from emomix.cache.extract import extract_features, with_text_context
    from emomix.cache.store import FeatureStore
    from emomix.data.dialogue import DialogueContext
    from emomix.data.readers import read_corpus
    from emomix.encoders.registry import create_encoder

    corpus = read_corpus(job.reader, job.root, scheme=None if job.scheme.lower() in {"none", "raw"} else job.scheme)
    table = corpus.table if job.limit is None else corpus.table.head(job.limit)
    if num_shards > 1 and worker is None:
        worker = f"shard-{shard_index}-of-{num_shards}"
    summaries = []
    built: dict[str, Any] = {}
    with FeatureStore(job.store, dtype=job.dtype, worker=worker) as store:
        for i, run in enumerate(job.runs):
            spec_key = json.dumps(run.encoder, sort_keys=True, default=str)
            model = encoders[i] if encoders is not None and encoders[i] is not None else built.get(spec_key)
            if model is None:
                model = create_encoder(run.encoder)
            built[spec_key] = model  # a recipe's utterance encoder equal to its frame encoder is built once
            if str(device) != "cpu":
                model = model.to(device)
            summaries.append(
                extract_features(
                    with_text_context(table, DialogueContext.from_dict(run.context), model),
                    model,
                    store,
                    preprocess=run.preprocess,
                    batch_size=run.batch_size,
                    num_workers=job.num_workers,
                    progress=job.progress if progress is None else progress,
                    layers=run.layers,
                    boundary_layer=run.boundary_layer,
                    flush_every=job.flush_every,
                    base_dir=corpus.root,
                    shard_index=shard_index,
                    num_shards=num_shards,
                )
            )
    return summaries


def extract_distributed(
    job: CorpusJob,
    processes: int = 2,
    num_nodes: int = 1,
    accelerator: str = "cpu",
    devices: list[int] | None = None,
) -> dict[str, Any]:
    """Extract ``job`` with ``processes`` ranks per node on ``num_nodes`` nodes (Lightning Fabric,
    DDP); the combined outcome: ``global_rank`` of the rank whose result this is, ``world_size``,
    ``summaries`` (one combined summary dict per encoder run, as :func:`combine_summaries`
    builds it; empty on ranks other than 0) and ``failures`` (``rank: error`` lines).

    ``accelerator``: ``cpu`` (gloo) or ``cuda`` (NCCL; ``devices`` are the GPU indices, one rank
    each). Raises :class:`EmomixError` on rank 0 when any rank failed, after merging what the
    others finished.
    """
    from lightning.fabric import Fabric

    if processes < 1 or num_nodes < 1:
        raise ConfigError(f"--processes and --num-nodes must be at least 1, got {processes} and {num_nodes}")
    settings: dict[str, Any] = dict(
        accelerator=accelerator, devices=devices if devices else processes, num_nodes=num_nodes
    )
    fabric = Fabric(strategy="ddp", **settings)
    environment = fabric.strategy.cluster_environment  # type: ignore[attr-defined]
    try:  # torchrun/SLURM started some number of ranks: the command must ask for as many
        environment.validate_settings(num_devices=len(devices) if devices else processes, num_nodes=num_nodes)
    except ValueError as exc:
        raise ConfigError(f"{exc} (Lightning's devices is --processes, num_nodes is --num-nodes)") from None
    if not environment.creates_processes_externally:
        # Nobody started the ranks (no torchrun/srun): start them from this process.
        fabric = Fabric(strategy=rank_start_method(accelerator, processes), **settings)
    try:
        outcome: dict[str, Any] = fabric.launch(functools.partial(_rank_main, job=job))
    except EmomixError:
        raise
    except Exception as exc:  # a rank died outside the guarded extraction (killed, lost its peers)
        first = str(exc).strip().splitlines()
        raise EmomixError(
            f"distributed extraction stopped: {first[-1] if first else type(exc).__name__}; finished shards "
            "are kept: run the same command again to resume (it merges the ranks' index parts first)"
        ) from exc
    if outcome["failures"] and outcome["global_rank"] == 0:
        raise EmomixError(
            f"{len(outcome['failures'])} of {outcome['world_size']} extraction ranks failed ("
            + "; ".join(outcome["failures"])
            + "); what every rank finished is merged into the store, run the same command again to resume"
        )
    return outcome


def rank_threads(processes: int) -> int:
    """Torch threads of each of ``processes`` CPU ranks on this machine: ``$OMP_NUM_THREADS``, else
    the cores shared out (as Lightning does)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return max(1, (os.cpu_count() or 1) // max(1, processes))


def rank_start_method(accelerator: str, processes: int) -> str:
    """The Fabric strategy that starts ``processes`` local ranks: ``ddp_fork`` when they run on CPU
    with one thread each, else ``ddp_spawn``.

    A forked rank starts in well under a second; a spawned one imports torch, Lightning and the
    encoder's libraries again (seconds, tens of seconds on a busy machine). But an OpenMP thread
    pool the parent has started does not survive fork: a forked rank that runs torch on several
    threads can hang. With one thread per rank (``OMP_NUM_THREADS=1``, or as many processes as
    cores) no pool is used, so fork is safe whatever the parent did; CUDA always needs spawn.
    """
    forkable = "fork" in multiprocessing.get_all_start_methods()
    if accelerator == "cpu" and forkable and rank_threads(processes) == 1:
        return "ddp_fork"
    return "ddp_spawn"


def _rank_main(fabric: Any, job: CorpusJob) -> dict[str, Any]:
    """One rank: its share of the corpus through its own worker store, then the gather and (rank
    0) the merge of every rank's index part."""
    import torch
    import torch.distributed as dist

    from emomix.cache.store import FeatureStore, merge_indexes

    started = time.perf_counter()
    rank, world = int(fabric.global_rank), int(fabric.world_size)
    if fabric.device.type == "cpu":  # Lightning's share of the cores, or the user's OMP_NUM_THREADS
        torch.set_num_threads(rank_threads(fabric.strategy.num_processes))
    if rank == 0:
        # Parts left by an interrupted earlier run become visible to every rank before it starts.
        FeatureStore(job.store, dtype=job.dtype).close()
        merge_indexes(job.store)
    fabric.barrier()
    outcome: dict[str, Any]
    try:
        summaries = extract_corpus(
            job,
            shard_index=rank,
            num_shards=world,
            worker=f"rank-{rank}-of-{world}",
            device=fabric.device,
            progress=job.progress and rank == 0,
        )
        outcome = {"rank": rank, "summaries": [s.to_dict() for s in summaries]}
    except Exception as exc:  # reported by rank 0 once every rank has finished; the others carry on
        message = str(exc) if isinstance(exc, EmomixError) else f"{type(exc).__name__}: {exc}"
        outcome = {"rank": rank, "error": message}
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, outcome)  # every rank has closed its store: its part is complete
    failures = [f"rank {o['rank']}: {o['error']}" for o in gathered if "error" in o]
    combined: list[dict[str, Any]] = []
    if rank == 0:
        merge_indexes(job.store)
        done = [o["summaries"] for o in gathered if "summaries" in o]
        with FeatureStore(job.store, create=False) as store:
            stored_bytes = int(store.stats()["bytes"])
        for i in range(len(job.runs)):
            parts = [summaries[i] for summaries in done]
            if not parts:
                continue
            summary = combine_summaries(parts)
            summary["workers"] = world
            summary["wall_seconds"] = time.perf_counter() - started
            summary["real_time_factor"] = (
                summary["wall_seconds"] / summary["audio_seconds"] if summary["audio_seconds"] else None
            )
            summary["bytes_on_disk"] = stored_bytes
            summary["role"] = job.runs[i].role
            combined.append(summary)
    fabric.barrier()  # no rank exits (and no launcher tears the job down) before the merge
    return {"global_rank": rank, "world_size": world, "summaries": combined, "failures": failures}


def combine_summaries(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The ranks' summary dicts of one encoder as one (counts summed, fallbacks, failures and keys joined)."""
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


def summary_dict(summary: Any, role: str = "") -> dict[str, Any]:
    """An in-process :class:`~emomix.cache.extract.ExtractSummary` in the combined summaries' form."""
    data: dict[str, Any] = summary.to_dict()
    data["workers"] = 1
    data["role"] = role
    return data


def format_combined(data: dict[str, Any]) -> str:
    """A (combined) summary dict as :meth:`ExtractSummary.format` prints it, plus the rank count."""
    from emomix.cache.extract import ExtractSummary

    fields = {k: data[k] for k in ExtractSummary.__dataclass_fields__ if k in data}
    text = ExtractSummary(**fields).format()
    workers = int(data.get("workers", 1))
    if workers > 1:
        text += f"\nranks          {workers} processes, index parts merged"
    return text
