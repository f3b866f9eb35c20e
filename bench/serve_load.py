"""Benchmark: the HTTP service under load, with and without dynamic batching — one request at a
time, then 200 requests 8 at a time, against a real server, the services side by side in one run.

Each service is ``emomix.serve`` (uvicorn, one process, the real Predictor) in a **separate
process** on a free port, so the load generator does not share its interpreter. It serves a
trained synthetic run: Dual Routing (openSMILE eGeMAPS LLDs + MiniLM) trained on fold ``ses01``
of a small synthetic corpus for two epochs (written and trained under ``--work`` the first time,
reused afterwards), or any run given with ``--run``.

The services are measured side by side in one run: **one at a time**
(``--max-batch-size 1``: every request predicted alone under the predictor lock, the service
before dynamic batching) and **batched** (``--max-batch-size 8 --max-wait-ms 10`` by default:
concurrent requests predicted together through ``predict_many``). For each, the client
(``httpx.AsyncClient``) posts the WAV files of 16 test utterances of the corpus, with their
transcripts and speakers, round robin: first ``--sequential`` requests one after the other (the
**one-at-a-time throughput** and service time), then the load run with at most ``--concurrency``
in flight. Reported per service and run: latency p50/p95/p99/max, throughput, error count (any
non-200 answer), the server process's CPU seconds per request, and the sizes of the batches the
server formed. The goal of issue #14: the batched service under load serves at least 1.5 times
the one-at-a-time throughput of the unbatched service (``speedup``), with no errors.

The services are measured interleaved, round after round (``--rounds``, default 2): each one at a
time, then each under load; the figures pool the rounds (and list each round's throughput).
Several ``--max-wait-ms`` values measure one batched service each; the first is the headline.

Run: ``python -m bench.serve_load [--quick] [--run RUN] [--requests 200] [--concurrency 8]
[--sequential 32] [--rounds 2] [--max-batch-size 8] [--max-wait-ms 10 [30 ...]] [--worker-threads 1]
[--threads 1] [--opensmile-threads N]``. ``--threads`` is each service's torch thread count and, as
``emomix serve`` does, the openSMILE encoder's threads (a batch's files extracted in parallel),
unless ``--opensmile-threads`` says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
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
GOAL = 1.5
"""Issue #14: batched throughput with 8 in flight / one-at-a-time throughput without batching."""


def _extra(parser: Any) -> None:
    parser.add_argument(
        "--run", type=Path, default=None, help="a trained run folder to serve (default: train a small synthetic run)"
    )
    parser.add_argument(
        "--work", type=Path, default=ROOT / "runs" / "bench-serve", help="where the synthetic corpus and run are kept"
    )
    parser.add_argument(
        "--requests", type=int, default=None, help="requests in each load run (default 200; 24 with --quick)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    parser.add_argument(
        "--sequential", type=int, default=None, help="requests sent one at a time (default 32; 16 with --quick)"
    )
    parser.add_argument("--worker-threads", type=int, default=1, help="the service's worker threads (default 1)")
    parser.add_argument(
        "--opensmile-threads",
        type=int,
        default=None,
        help="the openSMILE encoder's threads (default: --threads, as emomix serve does)",
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=8, help="the batched service's --max-batch-size (default 8)"
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        nargs="+",
        default=[10.0],
        help="the batched service's --max-wait-ms; several values: one batched service each (default 10)",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="interleaved rounds; the figures pool them (default 2; 1 with --quick)"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and write ``bench/results/serve_load.json``."""
    args = parse_args(__doc__.splitlines()[0], argv, extra=_extra)
    load_at_start = machine_load()
    requests = args.requests or (24 if args.quick else 200)
    sequential_count = args.sequential or (16 if args.quick else 32)
    rounds = 1 if args.quick else args.rounds
    run = args.run or train_synthetic_run(args.work, args.threads)
    opensmile_threads = args.opensmile_threads or args.threads
    clips = benchmark_clips(run)
    print(
        f"serving {run} ({len(clips)} clips, mean {np.mean([c['seconds'] for c in clips]):.2f} s of audio); "
        f"per round {sequential_count} requests one at a time, then {requests} with {args.concurrency} in flight; "
        f"{rounds} round(s); {args.worker_threads} worker thread(s), {args.threads} torch thread(s), "
        f"{opensmile_threads} openSMILE thread(s)"
    )
    services = {"one at a time": {"max_batch_size": 1, "max_wait_ms": 0.0}}
    for wait in args.max_wait_ms:
        services[f"batched, wait {wait:g} ms"] = {"max_batch_size": args.max_batch_size, "max_wait_ms": wait}
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {label: {"sequential": [], "load": []} for label in services}
    with contextlib.ExitStack() as stack:
        servers = {
            label: stack.enter_context(
                ServerProcess(run, args.threads, args.worker_threads, opensmile_threads, **batching)
            )
            for label, batching in services.items()
        }
        for server in servers.values():  # warm-up: first-call costs are not service time
            asyncio.run(load(server.url, clips, 2, 1))
        # interleaved (each service one at a time, then each under load, round after round) so a
        # change in the machine's load does not favour one service; idle services use no CPU meanwhile
        for _ in range(rounds):
            for key, count, in_flight in (("sequential", sequential_count, 1), ("load", requests, args.concurrency)):
                for label, server in servers.items():
                    raw[label][key].append(measure(server, clips, count, in_flight))
    summaries = {
        label: {**batching, **{key: pooled(raw[label][key]) for key in ("sequential", "load")}}
        for label, batching in services.items()
    }
    unbatched = summaries["one at a time"]
    alone_rps = unbatched["sequential"]["throughput_rps"]
    alone_cpu = unbatched["sequential"]["server_cpu_s_per_request"]
    for result in summaries.values():
        result["speedup"] = round(result["load"]["throughput_rps"] / alone_rps, 3)
        result["cpu_speedup"] = round(alone_cpu / result["load"]["server_cpu_s_per_request"], 3)
    headline = summaries[next(label for label in services if label != "one at a time")]
    summary = {
        "requests": requests,
        "sequential_requests": sequential_count,
        "rounds": rounds,
        "concurrency": args.concurrency,
        "worker_threads": args.worker_threads,
        "torch_threads": args.threads,
        "opensmile_threads": opensmile_threads,
        "clip_seconds_mean": round(float(np.mean([c["seconds"] for c in clips])), 3),
        "services": summaries,
        "speedup": headline["speedup"],
        "load_average_1min_start_end": [load_at_start, machine_load()],
        "goal": GOAL,
        "goal_met": bool(headline["speedup"] >= GOAL and headline["load"]["errors"] == 0),
    }
    rows = []
    for label, result in summaries.items():
        for run_name, key in (("one at a time", "sequential"), (f"{args.concurrency} in flight", "load")):
            part = result[key]
            rows.append(
                [
                    label,
                    run_name,
                    part["requests"],
                    *(part["latency_ms"][k] for k in ("p50", "p95", "p99", "max")),
                    part["throughput_rps"],
                    "/".join(f"{r:g}" for r in part["throughput_rps_rounds"]),
                    part["errors"],
                    round(part["server_cpu_s_per_request"] * 1000),
                    result["speedup"] if key == "load" else "",
                ]
            )
    print(
        format_table(
            [
                "service",
                "run",
                "requests",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "max ms",
                "req/s",
                "req/s by round",
                "errors",
                "CPU ms/req",
                "x alone",
            ],
            rows,
        )
    )
    for label, result in summaries.items():
        print(
            f"{label}: batches formed under load (size: count) {result['load']['batch_sizes']}; "
            f"server CPU per request {result['load']['server_cpu_s_per_request'] * 1000:.0f} ms under load, "
            f"{alone_cpu * 1000:.0f} ms one at a time without batching ({result['cpu_speedup']:.2f}x)"
        )
    print(
        f"1-min load average at the start {load_at_start}, at the end {machine_load()}; "
        f"{args.concurrency} in flight with batching / one at a time without: {summary['speedup']:.2f}x "
        f"(goal {GOAL}x: {'met' if summary['goal_met'] else 'missed'})"
    )
    payload = {"machine": machine_info(args.threads), "run": str(run), "summary": summary}
    print(f"results: {write_results(NAME, payload, args.quick, args.out)}")
    return payload


def measure(server: ServerProcess, clips: list[dict[str, Any]], count: int, in_flight: int) -> dict[str, Any]:
    """``count`` requests with at most ``in_flight`` at once: the answers, wall and server CPU
    seconds, and the batches the server formed meanwhile."""
    batches_before = server.batch_sizes()
    cpu_before = server.cpu_seconds()
    started = time.perf_counter()
    answers = asyncio.run(load(server.url, clips, count, in_flight))
    wall = time.perf_counter() - started
    cpu = server.cpu_seconds() - cpu_before
    batches = {k: v - batches_before.get(k, 0) for k, v in server.batch_sizes().items()}
    return {"answers": answers, "wall_s": wall, "cpu_s": cpu, "batches": batches, "in_flight": in_flight}


def pooled(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds of one service and run pooled: latencies over every request, throughput and CPU
    per request over the total time, and each round's throughput."""
    answers = [a for part in parts for a in part["answers"]]
    wall = sum(part["wall_s"] for part in parts)
    failed = [a for a in answers if a["status"] != 200]
    batches: dict[str, int] = {}
    for part in parts:
        for size, count in part["batches"].items():
            batches[size] = batches.get(size, 0) + count
    return {
        "requests": len(answers),
        "in_flight": parts[0]["in_flight"],
        "errors": len(failed),
        "statuses": _count(a["status"] for a in answers),
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(answers) / wall, 3),
        "throughput_rps_rounds": [round(len(part["answers"]) / part["wall_s"], 2) for part in parts],
        "latency_ms": percentiles([a["ms"] for a in answers]),
        "server_cpu_s_per_request": round(sum(part["cpu_s"] for part in parts) / len(answers), 4),
        "batch_sizes": {k: v for k, v in sorted(batches.items(), key=lambda kv: int(kv[0])) if v},
        "first_errors": failed[:3],
    }


def machine_load() -> float:
    """The 1-minute load average now."""
    return round(os.getloadavg()[0], 2)


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
    """``create_app(Predictor.from_run(run))`` under uvicorn in a child process on a free port.

    The child adds one route of its own, ``GET /bench/batches``: how many batches of each size the
    service's batcher has run (:meth:`batch_sizes`)."""

    def __init__(
        self,
        run: Path,
        threads: int,
        worker_threads: int,
        opensmile_threads: int,
        max_batch_size: int = 8,
        max_wait_ms: float = 10.0,
    ):
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
            predictor.set_threads({int(opensmile_threads)})  # openSMILE's threads
            limits = ServiceLimits(
                worker_threads={int(worker_threads)}, timeout_s=300, max_pending=1000,
                max_batch_size={int(max_batch_size)}, max_wait_ms={float(max_wait_ms)!r},
            )
            app = create_app(predictor, limits)

            @app.get("/bench/batches")
            def batches():
                return {{str(k): v for k, v in sorted(app.state.service.batcher.batch_sizes.items())}}

            run_server(app, port={self.port}, log_level="warning")
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

    def batch_sizes(self) -> dict[str, int]:
        """How many batches of each size (as a string) the service has run so far."""
        import httpx

        return dict(httpx.get(self.url + "/bench/batches", timeout=10).json())

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
