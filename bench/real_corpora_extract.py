"""Benchmark 4: extract the real corpora into a feature store, twice (cold, then pure cache hits).

Jobs (the shared corpora from ``emomix.data.paths.shared_datasets_dir()``):

* EmoDB and SAVEE through openSMILE **eGeMAPSv02** (LLD frames + functionals, ``level="both"``)
  and **ComParE_2016** (the 6,373 functionals, ``level="functionals"``, the classic SVM recipe);
* MELD transcripts (train + dev + test) through the bundled **MiniLM**.

Each job runs twice into the same store; the second run must compute nothing (asserted). Recorded
per run: counts (total, cached, computed, failed, entries written), fallbacks and failures by
kind, wall time, real-time factor, utterances/s and the namespace's size on disk. The store goes
to ``--store``, else ``$EMOMIX_BENCH_STORE``, else a temporary folder; a fresh sub-folder is used
so the first run is cold, and it is deleted afterwards unless ``--keep``.

Run: ``python -m bench.real_corpora_extract [--quick]`` (``--quick``: 20 utterances per job).
The MiniLM job equals ``emomix extract meld ../shared/datasets/meld-text --encoder minilm
--batch-size 32 --scheme none``; the openSMILE jobs need an encoder option (``level``) that
``emomix extract --encoder`` cannot pass yet, so they call ``extract_features`` directly.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._util import format_table, machine_info, parse_args, set_threads, shared_corpus, write_results

NAME = "real_corpora_extract"

#: (job label, reader, corpus folder, encoder spec, batch size)
JOBS = [
    ("emodb / eGeMAPSv02 lld+functionals", "emodb", "emodb", {"name": "opensmile:eGeMAPSv02", "level": "both"}, 8),
    ("savee / eGeMAPSv02 lld+functionals", "savee", "savee", {"name": "opensmile:eGeMAPSv02", "level": "both"}, 8),
    (
        "emodb / ComParE_2016 functionals",
        "emodb",
        "emodb",
        {"name": "opensmile:ComParE_2016", "level": "functionals"},
        8,
    ),
    (
        "savee / ComParE_2016 functionals",
        "savee",
        "savee",
        {"name": "opensmile:ComParE_2016", "level": "functionals"},
        8,
    ),
    ("meld train+dev+test / minilm", "meld", "meld-text", "minilm", 32),
]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every job twice, print the table and write ``bench/results/real_corpora_extract.json``."""
    args = parse_args(__doc__.splitlines()[0], argv, extra=_options)
    threads = set_threads(args.threads)
    base = Path(args.store or os.environ.get("EMOMIX_BENCH_STORE") or tempfile.gettempdir())
    store_root = base / f"emomix-bench-real-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    results: dict[str, Any] = {
        "name": NAME,
        "machine": machine_info(threads),
        "store": str(store_root),
        "jobs": {},
        "limit": 20 if args.quick else None,
    }
    try:
        for label, reader, folder, spec, batch_size in JOBS:
            root = shared_corpus(folder)
            if root is None:
                print(f"skip {label}: ../shared/datasets/{folder} is absent (set EMOMIX_DATASETS)")
                results["jobs"][label] = {"skipped": f"{folder} absent"}
                continue
            results["jobs"][label] = run_job(
                reader, root, spec, batch_size, store_root, results["limit"], args.num_workers
            )
        print()
        print(render(results))
        path = write_results(NAME, results, args.quick, args.out)
        print(f"\nwrote {path}")
        return results
    finally:
        if not args.keep:
            shutil.rmtree(store_root, ignore_errors=True)


def _options(parser: Any) -> None:
    parser.add_argument(
        "--store", type=Path, default=None, help="folder to create the store in (default $EMOMIX_BENCH_STORE or /tmp)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the store afterwards")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader processes for audio loading (default 0)")


def run_job(
    reader: str, root: Path, spec: Any, batch_size: int, store_root: Path, limit: int | None, num_workers: int
) -> dict[str, Any]:
    """Extract one corpus with one encoder twice; assert the second run is pure cache hits."""
    from emomix.cache import FeatureStore, extract_features
    from emomix.data.readers import read_corpus
    from emomix.encoders import create_encoder

    corpus = read_corpus(reader, root, scheme=None)
    table = corpus.table if limit is None else corpus.table.head(limit)
    encoder = create_encoder(spec)
    runs = []
    for attempt in ("cold", "warm"):
        with FeatureStore(store_root) as store:
            summary = extract_features(
                table,
                encoder,
                store,
                batch_size=batch_size,
                num_workers=num_workers,
                progress=False,
                base_dir=corpus.root,
            )
            namespace = store.stats()["namespaces"].get(summary.namespace, {})
        runs.append(summarise(attempt, summary, namespace))
        print(
            f"{reader} {summary.namespace} {attempt}: {summary.computed} computed, {summary.cached} cached, "
            f"{summary.failed} failed in {summary.wall_seconds:.1f} s"
        )
    first, second = runs
    assert second["computed"] == 0 and second["entries_written"] == 0, f"the second run computed {second['computed']}"
    assert second["cached"] == first["computed"] + first["cached"], "every utterance of the first run is a cache hit"
    return {
        "reader": reader,
        "encoder": spec,
        "batch_size": batch_size,
        "utterances": len(table),
        "unique_inputs": first["entries_written"],
        "runs": runs,
        "second_run_pure_cache_hits": True,
    }


def summarise(attempt: str, summary: Any, namespace: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one run (no utterance → key map: the result JSON stays small)."""
    return {
        "run": attempt,
        "total": summary.total,
        "cached": summary.cached,
        "computed": summary.computed,
        "failed": summary.failed,
        "failures_by_reason": summary.failures_by_reason(),
        "failed_ids": [f["utt_id"] for f in summary.failures][:20],
        "fallbacks": {kind: len(ids) for kind, ids in sorted(summary.fallbacks.items())},
        "fallback_ids": {kind: ids[:10] for kind, ids in sorted(summary.fallbacks.items())},
        "entries_written": summary.entries_written,
        "shards_written": summary.shards_written,
        "wall_s": round(summary.wall_seconds, 2),
        "audio_s": round(summary.audio_seconds, 1),
        "real_time_factor": None if summary.real_time_factor is None else round(summary.real_time_factor, 4),
        "utt_per_s": round(summary.total / summary.wall_seconds, 1) if summary.wall_seconds else None,
        "namespace": summary.namespace,
        "namespace_entries": namespace.get("entries"),
        "namespace_bytes": namespace.get("bytes"),
    }


def render(results: dict[str, Any]) -> str:
    """The summary table of a result dict."""
    rows = []
    for label, job in results["jobs"].items():
        if "skipped" in job:
            rows.append([label, "skipped", "-", "-", "-", "-", "-", "-", "-", "-"])
            continue
        for run in job["runs"]:
            fallbacks = ", ".join(f"{k}: {v}" for k, v in run["fallbacks"].items()) or "-"
            rows.append(
                [
                    label,
                    run["run"],
                    run["total"],
                    run["computed"],
                    run["cached"],
                    run["failed"],
                    fallbacks,
                    run["wall_s"],
                    "-" if run["real_time_factor"] is None else run["real_time_factor"],
                    f"{(run['namespace_bytes'] or 0) / 2**20:.1f} MiB",
                ]
            )
    return format_table(
        ["job", "run", "utts", "computed", "cached", "failed", "fallbacks", "wall s", "RTF", "size"], rows
    )


if __name__ == "__main__":
    main()
