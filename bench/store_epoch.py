"""Benchmark 2: one training epoch read from the feature store vs recomputing the frozen encoder.

A 5,000-utterance corpus of IEMOCAP-like lengths (log-normal durations with a 4.5 s mean, clipped
to 0.5-30 s; WavLM's frame count ``⌊(samples − 400) / 320⌋ + 1``, about 50 frames/s) at D = 768:
synthetic float16 states are written straight into a :class:`FeatureStore` with ``put_many``
(250 utterances per call, like extraction's flushes), not through an encoder. One epoch then
reads every utterance in shuffled mini-batches of 32 (``get_many(mmap=True)``), pads them into a
``B × T × 768`` float32 tensor with a mask, and trains a small head (masked mean pooling +
linear, AdamW) forward + backward. The epoch runs twice: first with the shards dropped from the
OS page cache (``posix_fadvise(DONTNEED)``, read from disk), then warm.

Against it: the frozen encoder recomputed for one epoch. A randomly initialised WavLM-Base-sized
model encodes a sample of utterances (random waveforms with durations from the same
distribution); its time is extrapolated to the corpus by audio duration. Audio loading is left
out of the recompute estimate, so the real recompute cost is higher.

Run: ``python -m bench.store_epoch [--quick]``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench._util import (
    Stopwatch,
    directory_bytes,
    format_table,
    machine_info,
    parse_args,
    set_threads,
    synthetic_wave,
    wavlm_config,
    write_results,
)

NAME = "store_epoch"
RATE = 16_000
MEAN_SECONDS = 4.5
SIGMA = 0.55  # log-normal spread: about 1.0-12 s for the central 99 %, as in IEMOCAP


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and write ``bench/results/store_epoch.json``."""
    args = parse_args(__doc__.splitlines()[0], argv)
    threads = set_threads(args.threads)
    sizes = (
        {"utterances": 200, "dim": 768, "batch": 32, "encoder_sample": 4, "put_many_chunk": 50}
        if args.quick
        else {"utterances": 5000, "dim": 768, "batch": 32, "encoder_sample": 32, "put_many_chunk": 250}
    )
    rng = np.random.default_rng(0)
    seconds = corpus_durations(sizes["utterances"], rng)
    frames = np.array([wavlm_frames(s) for s in seconds])
    work = Path(os.environ.get("EMOMIX_BENCH_STORE") or tempfile.gettempdir()) / f"emomix-bench-epoch-{os.getpid()}"
    print(
        f"{sizes['utterances']} utterances, {seconds.sum() / 3600:.2f} h of audio (mean {seconds.mean():.2f} s), "
        f"{frames.sum():,} frames (mean {frames.mean():.0f}) x {sizes['dim']}; torch threads {threads}; store {work}"
    )
    results: dict[str, Any] = {
        "name": NAME,
        "machine": machine_info(threads),
        "sizes": sizes,
        "corpus": {
            "seconds_total": round(float(seconds.sum()), 1),
            "seconds_mean": round(float(seconds.mean()), 3),
            "seconds_p50_p95_max": [round(float(np.percentile(seconds, q)), 2) for q in (50, 95, 100)],
            "frames_total": int(frames.sum()),
            "frames_mean": round(float(frames.mean()), 1),
            "durations": f"log-normal, mean {MEAN_SECONDS} s, sigma {SIGMA}, clipped to 0.5-30 s",
        },
    }
    try:
        from emomix.cache import FeatureStore

        with FeatureStore(work, dtype="float16") as store:
            keys = [hashlib.sha256(f"bench-utt-{i}".encode()).hexdigest() for i in range(len(frames))]
            with Stopwatch() as write:
                write_states(store, keys, frames, sizes["dim"], sizes["put_many_chunk"], rng)
            size = directory_bytes(work)
            results["write"] = {
                "seconds": round(write.wall, 2),
                "bytes_on_disk": size,
                "mb_per_s": round(size / 1e6 / write.wall, 1),
                "shards": store.stats()["shards"],
            }
            print(f"wrote {size / 1e9:.2f} GB in {write.wall:.1f} s ({size / 1e6 / write.wall:.0f} MB/s)")
            epochs = []
            for label, cold in (("cold (page cache dropped)", True), ("warm (page cache)", False)):
                store.close()
                if cold:
                    dropped = drop_page_cache(work)
                with FeatureStore(work, create=False) as reader:
                    epoch = run_epoch(reader, keys, sizes["dim"], sizes["batch"], seed=len(epochs))
                epoch["label"] = label
                if cold:
                    epoch["page_cache_dropped_files"] = dropped
                epochs.append(epoch)
                print(
                    f"epoch {label}: {epoch['seconds']:.2f} s (lookup {epoch['lookup_s']:.2f}, read+pad "
                    f"{epoch['read_pad_s']:.2f}, head {epoch['head_s']:.2f})"
                )
            results["epochs"] = epochs

        recompute = encoder_epoch_estimate(sizes["encoder_sample"], float(seconds.sum()), rng, args.quick)
        results["recompute"] = recompute
        best_epoch = min(e["seconds"] for e in epochs)
        results["ratio_recompute_to_store_epoch"] = round(recompute["extrapolated_epoch_s"] / best_epoch, 1)
        results["ratio_recompute_to_cold_store_epoch"] = round(
            recompute["extrapolated_epoch_s"] / epochs[0]["seconds"], 1
        )
        print()
        print(render(results))
        path = write_results(NAME, results, args.quick, args.out)
        print(f"\nwrote {path}")
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_states(
    store: Any, keys: list[str], frames: np.ndarray, dim: int, chunk: int, rng: np.random.Generator
) -> None:
    """Put random float16 ``T × dim`` states for every key, ``chunk`` entries per ``put_many``.

    The values are slices of one random pool at random offsets: the content does not change read
    speed, and drawing 10⁹ fresh normals would take longer than the benchmark itself.
    """
    longest = int(frames.max()) * dim
    pool = rng.standard_normal(longest + (1 << 22), dtype=np.float32).astype(np.float16)
    for start in range(0, len(keys), chunk):
        items = {}
        for index in range(start, min(start + chunk, len(keys))):
            count = int(frames[index]) * dim
            offset = int(rng.integers(0, pool.size - count))
            items[keys[index]] = {"states": pool[offset : offset + count].reshape(int(frames[index]), dim)}
        store.put_many(items, namespace="bench-random-states")


def run_epoch(store: Any, keys: list[str], dim: int, batch: int, seed: int) -> dict[str, Any]:
    """One shuffled pass: read, pad to ``B × T × dim`` with a mask, head forward + backward + step.

    ``lookup_s``: ``get_many(mmap=True)`` (index query, views into the mapped shards);
    ``read_pad_s``: copying the views into the float32 batch tensor, which is when the bytes are
    actually read (page faults); ``head_s``: forward, backward and optimiser step.
    """
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Linear(dim, 4)
    optimiser = torch.optim.AdamW(head.parameters(), lr=1e-3)
    labels = torch.randint(0, 4, (len(keys),), generator=generator)
    order = torch.randperm(len(keys), generator=generator).tolist()
    read_s = pad_s = head_s = 0.0
    frames = 0
    # The mmap views are read-only; torch warns when wrapping them, but they are only copied from.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    with Stopwatch() as total:
        for start in range(0, len(order), batch):
            chosen = order[start : start + batch]
            with Stopwatch() as read:
                arrays = store.get_many([keys[i] for i in chosen], mmap=True)
            with Stopwatch() as pad:
                states = [arrays[keys[i]]["states"] for i in chosen]
                lengths = torch.tensor([s.shape[0] for s in states])
                padded = torch.zeros(len(states), int(lengths.max()), dim)
                for row, item in enumerate(states):
                    padded[row, : item.shape[0]] = torch.from_numpy(item)  # float16 view -> float32 copy
                mask = torch.arange(padded.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
            with Stopwatch() as step:
                pooled = (padded * mask.unsqueeze(-1)).sum(1) / lengths.unsqueeze(1)
                loss = nn.functional.cross_entropy(head(pooled), labels[chosen])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            read_s, pad_s, head_s = read_s + read.wall, pad_s + pad.wall, head_s + step.wall
            frames += int(lengths.sum())
    return {
        "seconds": round(total.wall, 3),
        "cpu_s": round(total.cpu, 3),
        "lookup_s": round(read_s, 3),
        "read_pad_s": round(pad_s, 3),
        "head_s": round(head_s, 3),
        "batches": -(-len(order) // batch),
        "utt_per_s": round(len(order) / total.wall, 1),
        "frames": frames,
    }


def encoder_epoch_estimate(sample: int, corpus_seconds: float, rng: np.random.Generator, quick: bool) -> dict[str, Any]:
    """Time the frozen WavLM on ``sample`` utterances and extrapolate to ``corpus_seconds`` of audio."""
    from emomix.encoders.speech_ssl import SpeechSSLEncoder

    encoder = SpeechSSLEncoder.from_config(wavlm_config(quick), seed=0)
    seconds = corpus_durations(sample, rng)
    waves = [synthetic_wave(float(s), rng) for s in seconds]
    encoder.encode([synthetic_wave(2.0, rng)])  # warm-up
    with Stopwatch() as watch:
        for start in range(0, len(waves), 8):  # extraction's default batch size
            encoder.encode(waves[start : start + 8])
    rate = watch.wall / float(seconds.sum())
    return {
        "model": "WavLM " + ("tiny (quick)" if quick else "base size, random weights (WavLMConfig())"),
        "sample_utterances": sample,
        "sample_audio_s": round(float(seconds.sum()), 1),
        "sample_wall_s": round(watch.wall, 2),
        "sample_cpu_s": round(watch.cpu, 2),
        "real_time_factor": round(rate, 4),
        "extrapolated_epoch_s": round(rate * corpus_seconds, 1),
        "note": f"measured on {sample} utterances, extrapolated by audio duration to {corpus_seconds:.0f} s; "
        "audio loading not included",
    }


# ---------------------------------------------------------------------- plain helpers


def corpus_durations(count: int, rng: np.random.Generator) -> np.ndarray:
    """Log-normal utterance durations in seconds with mean :data:`MEAN_SECONDS`, clipped to 0.5-30 s."""
    mu = np.log(MEAN_SECONDS) - SIGMA**2 / 2
    return np.clip(rng.lognormal(mu, SIGMA, size=count), 0.5, 30.0)


def wavlm_frames(seconds: float) -> int:
    """Frames of a WavLM/HuBERT/wav2vec 2.0 CNN for ``seconds`` of 16 kHz audio."""
    return (int(round(seconds * RATE)) - 400) // 320 + 1


def drop_page_cache(folder: Path) -> int:
    """Ask the kernel to evict the shard files from the page cache (no root needed); returns the count."""
    count = 0
    if not hasattr(os, "posix_fadvise"):
        return 0
    for path in folder.rglob("*.safetensors"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            count += 1
        finally:
            os.close(fd)
    return count


def render(results: dict[str, Any]) -> str:
    """The summary table of a result dict."""
    rows = [["write (put_many)", results["write"]["seconds"], "-", "-", "-", "-"]]
    for epoch in results["epochs"]:
        rows.append(
            [
                f"epoch from store, {epoch['label']}",
                epoch["seconds"],
                epoch["lookup_s"],
                epoch["read_pad_s"],
                epoch["head_s"],
                epoch["utt_per_s"],
            ]
        )
    recompute = results["recompute"]
    rows.append(
        [
            f"encoder recompute, {recompute['sample_utterances']} utt measured",
            recompute["sample_wall_s"],
            "-",
            "-",
            "-",
            round(recompute["sample_utterances"] / recompute["sample_wall_s"], 2),
        ]
    )
    rows.append(
        [
            "encoder recompute, extrapolated epoch",
            recompute["extrapolated_epoch_s"],
            "-",
            "-",
            "-",
            round(results["sizes"]["utterances"] / recompute["extrapolated_epoch_s"], 2),
        ]
    )
    table = format_table(["step", "seconds", "lookup s", "read+pad s", "head s", "utt/s"], rows)
    return table + (
        f"\nrecompute / store epoch: {results['ratio_recompute_to_store_epoch']}x (warm), "
        f"{results['ratio_recompute_to_cold_store_epoch']}x (cold)"
    )


if __name__ == "__main__":
    main()
