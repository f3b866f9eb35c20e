"""Benchmark: prediction throughput (utterances/s) on a folder of 100 synthetic clips.

The clips are utterances of the built-in synthetic corpus (``write_synthetic_corpus``, seed 0,
100 utterances of about 2–4 s, with transcripts), predicted by a random-weight Dual Routing head
on openSMILE eGeMAPSv02 LLDs + MiniLM (the offline encoders, from a checkpoint folder as a user
loads one; see ``bench.predict_latency``). Paths, interleaved with the same torch threads:

* **bare loop**: file by file, load + VAD, the two encoders' ``encode``, the head (batch 1);
* **predict_many, batch 16**: ``Predictor.predict_many(items, batch_size=16)`` with the transcripts
  (one ``build_features`` call per 16 files: openSMILE runs file by file, MiniLM on batches of 8);
* **predict, one by one**: ``Predictor.predict`` per file;
* **emomix predict FOLDER** (once, after the others): the command on the folder (no transcripts,
  so the audio-only path), CSV out, in-process; the model loading is timed apart.

Run: ``python -m bench.folder_throughput [--quick] [--threads 1]`` (``--quick``: 12 clips).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._util import Stopwatch, format_table, interleaved, machine_info, parse_args, set_threads, write_results
from bench.predict_latency import build_predictor, make_bare, one_thread_unless_asked, write_offline_checkpoint

NAME = "folder_throughput"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and write ``bench/results/folder_throughput.json``."""
    import soundfile as sf

    from emomix.data.readers import read_corpus
    from emomix.data.synthetic import SyntheticConfig, write_synthetic_corpus

    args = parse_args(__doc__.splitlines()[0], argv)
    threads = set_threads(one_thread_unless_asked(args, argv))
    count, repeats = (12, 1) if args.quick else (100, 2)
    work = Path(tempfile.mkdtemp(prefix="emomix-bench-folder-"))
    try:
        write_synthetic_corpus(work / "corpus", SyntheticConfig(seed=0, size=count))
        table = read_corpus("synthetic", work / "corpus").table
        folder = work / "clips"
        folder.mkdir()
        items = []
        for row in table.itertuples(index=False):
            target = folder / Path(row.audio_path).name
            shutil.copy(work / "corpus" / row.audio_path, target)
            items.append({"audio": str(target), "text": row.text})
        audio_s = sum(sf.info(i["audio"]).duration for i in items)
        print(f"{len(items)} clips, {audio_s:.1f} s of audio; torch threads {threads}", flush=True)
        checkpoint = write_offline_checkpoint(work / "checkpoint")
        predictor = build_predictor("offline", folder=work / "checkpoint")
        for run in paths(predictor, items[:2]).values():  # warm-up on two files
            run()
        timings = interleaved(paths(predictor, items), repeats)
        errors = [r for r in predictor.predict_many(items, batch_size=16) if "error" in r]
        cli = time_cli(checkpoint, folder, work / "out.csv")
        results: dict[str, Any] = {
            "name": NAME,
            "machine": machine_info(threads),
            "clips": len(items),
            "audio_s": round(audio_s, 2),
            "encoders": "opensmile:eGeMAPSv02 (VAD mask, stride 4) + minilm",
            "failed_items": len(errors),
            "paths": {},
        }
        for name, timing in timings.items():
            results["paths"][name] = {
                **timing.to_dict(),
                "cpu_best_s": round(min(timing.cpu_seconds), 3),
                "utt_per_s": round(len(items) / timing.best, 2),
                "audio_s_per_s": round(audio_s / timing.best, 2),
                "vs_bare": round(timings["bare_loop"].best / timing.best, 3),
            }
        results["paths"]["cli_folder"] = {
            **cli,
            "utt_per_s": round(len(items) / cli["predict_s"], 2),
            "audio_s_per_s": round(audio_s / cli["predict_s"], 2),
        }
        print()
        print(render(results))
        path = write_results(NAME, results, args.quick, args.out)
        print(f"\nwrote {path}")
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def paths(predictor: Any, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The timed paths over ``items``."""
    bare = make_bare(predictor)
    return {
        "bare_loop": lambda: [bare(i["audio"], i["text"]) for i in items],
        "predict_many_16": lambda: predictor.predict_many(items, batch_size=16),
        "predict_one_by_one": lambda: [predictor.predict(**i) for i in items],
    }


def time_cli(checkpoint: Path, folder: Path, out: Path) -> dict[str, Any]:
    """``emomix predict CHECKPOINT FOLDER --out out.csv -q`` in this process: load and predict timed apart."""
    from emomix.infer.batch import collect_inputs, run_predictions
    from emomix.infer.batch import write_results as write_rows
    from emomix.infer.predictor import Predictor

    with Stopwatch() as load:
        predictor = Predictor.from_run(checkpoint)
    items = collect_inputs(folder)
    with Stopwatch() as run:
        rows = run_predictions(predictor, items, batch_size=16, progress=False)
        write_rows(rows, out, predictor.classes)
    failed = sum(1 for r in rows if "error" in r)
    notes = sorted({n for r in rows for n in r.get("notes", [])})
    return {
        "load_s": round(load.wall, 3),
        "predict_s": round(run.wall, 3),
        "cpu_s": round(run.cpu, 3),
        "failed": failed,
        "notes": notes,
    }


def render(results: dict[str, Any]) -> str:
    rows = [
        [
            name,
            r.get("best_s", r.get("predict_s")),
            r.get("cpu_best_s", r.get("cpu_s")),
            r["utt_per_s"],
            r["audio_s_per_s"],
            r.get("vs_bare", ""),
        ]
        for name, r in results["paths"].items()
    ]
    return format_table(["path", "wall s", "CPU s", "utt/s", "audio s/s", "speed vs bare"], rows)


if __name__ == "__main__":
    main()
