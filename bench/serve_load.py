"""Benchmark: the HTTP service under load — 200 requests, 8 at a time, against a real server.

The server is ``emomix.serve`` (uvicorn, one process, the real Predictor) in a **separate
process** on a free port, so the load generator does not share its interpreter. It serves a
trained synthetic run: Dual Routing (openSMILE eGeMAPS LLDs + MiniLM) trained on fold ``ses01``
of a small synthetic corpus for two epochs (written and trained under ``--work`` the first time,
reused afterwards), or any run given with ``--run``.

The client (``httpx.AsyncClient``, at most ``--concurrency`` requests in flight) posts the WAV
files of 16 test utterances of the corpus, with their transcripts and speakers, round robin.
First each clip is sent alone, one after the other (the **service time** without queueing), then
the load run. Reported: latency p50/p95/p99/max of the load run, throughput, error count, the
server process's CPU seconds per request, and the sequential latency for comparison. Any non-200
answer counts as an error.

Run: ``python -m bench.serve_load [--quick] [--run RUN] [--requests 200] [--concurrency 8]
[--worker-threads 1] [--threads 1]``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench._util import format_table, machine_info, parse_args, write_results

NAME = "serve_load"
ROOT = Path(__file__).resolve().parent.parent
CLIPS = 16


def _extra(parser: Any) -> None:
    parser.add_argument(
        "--run", type=Path, default=None, help="a trained run folder to serve (default: train a small synthetic run)"
    )
    parser.add_argument(
        "--work", type=Path, default=ROOT / "runs" / "bench-serve", help="where the synthetic corpus and run are kept"
    )
    parser.add_argument(
        "--requests", type=int, default=None, help="requests in the load run (default 200; 24 with --quick)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    parser.add_argument("--worker-threads", type=int, default=1, help="the service's worker threads (default 1)")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and write ``bench/results/serve_load.json``."""
    args = parse_args(__doc__.splitlines()[0], argv, extra=_extra)
    requests = args.requests or (24 if args.quick else 200)
    run = args.run or train_synthetic_run(args.work, args.threads)
    clips = benchmark_clips(run)
    print(
        f"serving {run} ({len(clips)} clips, mean {np.mean([c['seconds'] for c in clips]):.2f} s of audio); "
        f"{requests} requests, {args.concurrency} at a time, {args.worker_threads} worker thread(s), "
        f"{args.threads} torch thread(s)"
    )
    with ServerProcess(run, args.threads, args.worker_threads) as server:
        sequential = asyncio.run(load(server.url, clips, len(clips), 1))
        cpu_before = server.cpu_seconds()
        started = time.perf_counter()
        loaded = asyncio.run(load(server.url, clips, requests, args.concurrency))
        wall = time.perf_counter() - started
        cpu = server.cpu_seconds() - cpu_before
    summary = {
        "requests": requests,
        "concurrency": args.concurrency,
        "worker_threads": args.worker_threads,
        "torch_threads": args.threads,
        "errors": sum(1 for r in loaded if r["status"] != 200),
        "statuses": _count(r["status"] for r in loaded),
        "wall_s": round(wall, 3),
        "throughput_rps": round(requests / wall, 3),
        "latency_ms": percentiles([r["ms"] for r in loaded]),
        "sequential_latency_ms": percentiles([r["ms"] for r in sequential]),
        "sequential_errors": sum(1 for r in sequential if r["status"] != 200),
        "server_cpu_s_per_request": round(cpu / requests, 4),
        "clip_seconds_mean": round(float(np.mean([c["seconds"] for c in clips])), 3),
        "first_errors": [r for r in loaded if r["status"] != 200][:3],
    }
    rows = [
        [
            "alone, one at a time",
            len(clips),
            1,
            *(summary["sequential_latency_ms"][k] for k in ("p50", "p95", "max")),
            "",
            summary["sequential_errors"],
        ],
        [
            f"load, {args.concurrency} at a time",
            requests,
            args.concurrency,
            *(summary["latency_ms"][k] for k in ("p50", "p95", "max")),
            summary["throughput_rps"],
            summary["errors"],
        ],
    ]
    print(format_table(["run", "requests", "in flight", "p50 ms", "p95 ms", "max ms", "req/s", "errors"], rows))
    print(
        f"server CPU per request: {summary['server_cpu_s_per_request'] * 1000:.0f} ms; "
        f"p99 {summary['latency_ms']['p99']} ms"
    )
    payload = {"machine": machine_info(args.threads), "run": str(run), "summary": summary}
    print(f"results: {write_results(NAME, payload, args.quick, args.out)}")
    return payload


# ---------------------------------------------------------------------- the run and its clips


def train_synthetic_run(work: Path, threads: int) -> Path:
    """A small trained run (reused when already finished): Dual Routing on fold ses01 of a
    120-utterance synthetic corpus, two epochs — the recipe of the tests' trained run."""
    out = work / "run"
    if (out / "folds" / "ses01" / "seed-0" / "done.json").exists():
        return out
    from emomix.train.recipe import Recipe
    from emomix.train.run import train_recipe

    recipe = Recipe.from_dict(
        {
            "name": "bench-serve",
            "corpus": {"reader": "synthetic", "root": str(work / "corpus"), "generate": {"seed": 0, "size": 120}},
            "protocol": {"name": "loso", "params": {"validation": "group"}},
            "features": {
                "store": str(work / "features"),
                "audio": {
                    "encoder": "opensmile:eGeMAPSv02",
                    "preprocess": {"vad": "webrtc", "vad_mode": "mask"},
                    "frame_stride": 4,
                    "speaker_normalisation": True,
                },
                "text": {"encoder": "minilm", "layers": [3, 4, 5, 6]},
            },
            "model": {
                "name": "dual_routing",
                "config": {"model_dim": 32, "router_hidden": 32, "classifier_hidden": 64},
            },
            "optimiser": {"lr": 2e-3, "schedule": "warmup_cosine", "warmup_epochs": 1},
            "training": {"epochs": 2, "batch_size": 16, "patience": 3, "threads": threads},
            "seeds": [0],
        }
    )
    print(f"training a small synthetic run into {out} (first time only)")
    train_recipe(recipe, out, folds=["ses01"], progress=False, log=None)
    return out


def benchmark_clips(run: Path) -> list[dict[str, Any]]:
    """The first :data:`CLIPS` test utterances of the run's first fold: WAV bytes, text, speaker."""
    import soundfile

    from emomix.data.protocols import FoldPlan
    from emomix.data.readers import read_corpus
    from emomix.train.recipe import load_recipe

    recipe = load_recipe(run / "config.yaml")
    corpus = read_corpus(recipe.corpus.reader, recipe.corpus.root, scheme=recipe.corpus.scheme)
    trained = sorted(p.parent.parent.name for p in (run / "folds").glob("*/seed-*/done.json"))
    fold = next(f for f in FoldPlan.load(run / "folds.json").folds if f.name == trained[0])
    table = corpus.table[corpus.table["utt_id"].isin(set(fold.test))].sort_values("utt_id").head(CLIPS)
    root = Path(recipe.corpus.root)
    clips = []
    for row in table.itertuples():
        path = Path(row.audio_path) if Path(row.audio_path).is_absolute() else root / row.audio_path
        clips.append(
            {
                "name": path.name,
                "data": path.read_bytes(),
                "text": row.text,
                "speaker": row.speaker,
                "seconds": soundfile.info(str(path)).duration,
            }
        )
    return clips


# ---------------------------------------------------------------------- server and client


class ServerProcess:
    """``create_app(Predictor.from_run(run))`` under uvicorn in a child process on a free port."""

    def __init__(self, run: Path, threads: int, worker_threads: int):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.code = textwrap.dedent(f"""
            import torch
            torch.set_num_threads({int(threads)})
            from emomix.infer.predictor import Predictor
            from emomix.serve.app import ServiceLimits, create_app
            from emomix.serve.server import run_server
            predictor = Predictor.from_run({str(run)!r}, asr=False)
            limits = ServiceLimits(worker_threads={int(worker_threads)}, timeout_s=300, max_pending=1000)
            run_server(create_app(predictor, limits), port={self.port}, log_level="warning")
        """)

    def __enter__(self) -> ServerProcess:
        self.process = subprocess.Popen([sys.executable, "-c", self.code], cwd=ROOT)
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with status {self.process.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.process.kill()
        raise SystemExit("the server did not answer /health within 300 s")

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: Any) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def load(url: str, clips: list[dict[str, Any]], count: int, concurrency: int) -> list[dict[str, Any]]:
    """Send ``count`` requests (clips round robin), at most ``concurrency`` in flight; per request
    its status and latency in ms."""
    import httpx

    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def one(index: int) -> dict[str, Any]:
            clip = clips[index % len(clips)]
            async with gate:
                started = time.perf_counter()
                try:
                    response = await client.post(
                        "/predict",
                        files={"file": (clip["name"], clip["data"], "audio/wav")},
                        data={"text": clip["text"], "speaker": clip["speaker"]},
                    )
                    status, detail = (
                        response.status_code,
                        (None if response.status_code == 200 else response.text[:300]),
                    )
                except httpx.HTTPError as error:
                    status, detail = -1, f"{type(error).__name__}: {error}"
                return {
                    "index": index,
                    "status": status,
                    "ms": (time.perf_counter() - started) * 1000,
                    "detail": detail,
                }

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50, p95, p99, mean and max of latencies in ms (linear interpolation)."""
    array = np.asarray(values, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(array, 50)), 1),
        "p95": round(float(np.percentile(array, 95)), 1),
        "p99": round(float(np.percentile(array, 99)), 1),
        "mean": round(float(statistics.fmean(array)), 1),
        "max": round(float(array.max()), 1),
    }


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[str(value)] = counts.get(str(value), 0) + 1
    return counts


if __name__ == "__main__":
    main()
