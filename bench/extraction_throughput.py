"""Benchmark 1: feature extraction through the store vs a bare batched loop with the same encoder.

Encoders: a randomly initialised WavLM-Base-sized model (``transformers.WavLMConfig()`` defaults,
built with ``SpeechSSLEncoder.from_config``) and openSMILE LLDs (eGeMAPSv02, ComParE_2016).

* **bare loop**: files read with soundfile, batched in the same longest-first order with the same
  batch size, the Hugging Face model called as ``model(input_values)`` under
  ``torch.inference_mode()`` on zero-padded batches (its own feature extractor normalises), or
  ``opensmile.Smile.process_signal`` per file; nothing is stored.
* **encoder alone** (WavLM only): ``SpeechSSLEncoder.encode`` on the same batches (files read
  with soundfile, outputs dropped), no store. Its batching policy for group-normalised CNNs such
  as WavLM-base's (the CNN on each waveform unpadded, then the projection and transformer on the
  padded batch with a frame mask) is what the project runs; the gap to **project** is the
  store's own cost. The largest difference on valid frames between the encoder's batched
  outputs and the model run on each utterance alone is recorded.
* **project**: ``extract_features`` into a fresh temporary store (cold cache, file hashes
  included), same batch size, ``num_workers=0`` (loading in the main process, like the bare loop).
* **warm re-run**: ``extract_features`` again on the filled store (pure cache hits).

Every path uses the same torch thread count and is warmed up first; the timed repeats are
interleaved (bare, project, bare, project, ...) so load from other processes hits both alike, and
the fastest repeat is reported (WavLM: two timed repeats per path in the full run, to stay near
five minutes; the CPU seconds are reported too, as they depend less on the machine's load).
Run: ``python -m bench.extraction_throughput [--quick] [--corpus savee|emodb|synthetic]``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._util import (
    benchmark_audio_table,
    format_table,
    interleaved,
    machine_info,
    parse_args,
    set_threads,
    wavlm_config,
    write_results,
)

NAME = "extraction_throughput"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and write ``bench/results/extraction_throughput.json``."""
    args = parse_args(
        __doc__.splitlines()[0],
        argv,
        extra=lambda parser: parser.add_argument(
            "--corpus", default="auto", help="auto (SAVEE if present, else synthetic), savee, emodb or synthetic"
        ),
    )
    name = NAME if args.corpus == "auto" else f"{NAME}-{args.corpus}"
    threads = set_threads(args.threads)
    sizes = (
        {"utterances": 4, "repeats_ssl": 1, "repeats_smile": 1, "wavlm": "tiny (32 dims, 12 layers)"}
        if args.quick
        else {"utterances": 64, "repeats_ssl": 2, "repeats_smile": 3, "wavlm": "base (WavLMConfig() defaults)"}
    )
    batch_size = 8
    work = Path(tempfile.mkdtemp(prefix="emomix-bench-extract-"))
    try:
        table, source = benchmark_audio_table(sizes["utterances"], 2.0, 4.0, work / "audio", corpus=args.corpus)
        order = _project_order(table)
        audio_seconds = float(sum(_frames(p) for p in order) / 16000)
        print(
            f"corpus: {source}; {len(order)} utterances, {audio_seconds:.1f} s of audio; batch size {batch_size}; "
            f"torch threads {threads}"
        )
        results = {
            "name": name,
            "machine": machine_info(threads),
            "corpus": {
                "source": source,
                "utterances": len(order),
                "audio_seconds": round(audio_seconds, 2),
                "durations_s": [2.0, 4.0],
            },
            "batch_size": batch_size,
            "padding": _padding_stats(order, batch_size),
            "encoders": {},
        }
        from emomix.encoders import create_encoder
        from emomix.encoders.speech_ssl import SpeechSSLEncoder

        # --quick: a tiny WavLM (same 12 layers and CNN strides), so the smoke run takes seconds.
        ssl = SpeechSSLEncoder.from_config(wavlm_config(args.quick), seed=0)
        label = "wavlm-tiny-random" if args.quick else "wavlm-base-random"
        results["encoders"][label] = _compare(
            label, ssl, table, order, batch_size, sizes["repeats_ssl"], work, audio_seconds, encoder_alone=True
        )
        for feature_set in ("eGeMAPSv02", "ComParE_2016"):
            smile = create_encoder(f"opensmile:{feature_set}")
            results["encoders"][f"opensmile-{feature_set}-lld"] = _compare(
                f"opensmile-{feature_set}-lld",
                smile,
                table,
                order,
                batch_size,
                sizes["repeats_smile"],
                work,
                audio_seconds,
            )
        results["sizes"] = sizes
        print()
        print(render(results))
        path = write_results(name, results, args.quick, args.out)
        print(f"\nwrote {path}")
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _compare(
    label: str,
    encoder: Any,
    table: Any,
    order: list[str],
    batch_size: int,
    repeats: int,
    work: Path,
    audio_seconds: float,
    encoder_alone: bool = False,
) -> dict[str, Any]:
    """Bare loop(s) vs ``extract_features`` into a cold store, then the warm re-run."""
    from emomix.cache import FeatureStore, extract_features, utterance_keys

    print(f"\n== {label}")
    stores: list[FeatureStore] = []

    def fresh_store() -> None:
        for old in stores:
            old.close()
            shutil.rmtree(old.root, ignore_errors=True)
        stores[:] = [FeatureStore(work / f"store-{label}-{time.perf_counter_ns()}")]

    def project() -> Any:
        return extract_features(table, encoder, stores[0], batch_size=batch_size, num_workers=0, progress=False)

    bare = (
        _bare_ssl(encoder, order, batch_size) if hasattr(encoder, "feature_extractor") else _bare_smile(encoder, order)
    )
    alone = _encoder_ssl(encoder, order, batch_size) if encoder_alone else None

    # Warm-up: model first calls (allocator, oneDNN kernels), imports of the store path.
    _bare_ssl(encoder, order[:2], 2)() if hasattr(encoder, "feature_extractor") else _bare_smile(encoder, order[:2])()
    fresh_store()
    extract_features(table.head(2), encoder, stores[0], batch_size=batch_size, progress=False)
    runs = {"bare": bare, "project": project}
    if alone is not None:
        alone()  # its own first call (oneDNN kernels for the transformer's padded shapes)
        runs = {"bare": bare, "encoder_alone": alone, "project": project}
    timings = interleaved(runs, repeats, before={"project": fresh_store})
    # The last project repeat filled stores[0] from cold: re-run it warm.
    last = project()
    assert last.computed == 0 and last.cached == len(table), "the warm re-run must be pure cache hits"
    warm = interleaved({"warm": project}, max(1, repeats))["warm"]
    # Hashing alone, for the breakdown: a fresh store re-reads every file once.
    fresh_store()
    started = time.perf_counter()
    utterance_keys(table, encoder, stores[0])
    hashing = time.perf_counter() - started
    fresh_store()
    cold = project()  # a last cold run for the summary's counts and bytes
    stores[0].close()

    out: dict[str, Any] = {}
    for name, timing in timings.items():
        out[name] = {
            **timing.to_dict(),
            "cpu_best_s": round(min(timing.cpu_seconds), 3),
            "utt_per_s": round(len(order) / timing.best, 3),
            "audio_s_per_s": round(audio_seconds / timing.best, 3),
        }
    out["warm_rerun"] = {**warm.to_dict(), "cached": last.cached, "computed": last.computed}
    out["hashing_s"] = round(hashing, 4)
    out["ratio_project_to_bare"] = round(timings["bare"].best / timings["project"].best, 3)
    cpu = {name: min(timing.cpu_seconds) for name, timing in timings.items()}
    out["cpu_ratio_project_to_bare"] = round(cpu["bare"] / cpu["project"], 3)
    if "encoder_alone" in timings:
        out["ratio_project_to_encoder_alone"] = round(timings["encoder_alone"].best / timings["project"].best, 3)
        out["cpu_ratio_project_to_encoder_alone"] = round(cpu["encoder_alone"] / cpu["project"], 3)
    out["summary"] = {
        "computed": cold.computed,
        "failed": cold.failed,
        "entries_written": cold.entries_written,
        "shards_written": cold.shards_written,
        "bytes_on_disk": cold.bytes_on_disk,
        "audio_seconds": round(cold.audio_seconds, 2),
        "fallbacks": {k: len(v) for k, v in cold.fallbacks.items()},
    }
    if hasattr(encoder, "feature_extractor"):
        out["batching"] = encoder.batching
        out["project_cnn_calls"] = _distinct_length_groups(order, batch_size)
        out["project_transformer_calls"] = -(-len(order) // batch_size)
    if alone is not None:
        out["batched_vs_alone_max_abs_diff"] = _batched_difference(encoder, order[:batch_size])
    print(
        format_table(
            ["path", "best s", "median s", "cpu s (min)", "utt/s", "audio s/s"],
            [
                [
                    n,
                    out[n]["best_s"],
                    out[n]["median_s"],
                    out[n]["cpu_best_s"],
                    out[n]["utt_per_s"],
                    out[n]["audio_s_per_s"],
                ]
                for n in timings
            ],
        )
    )
    print(f"ratio project/bare {out['ratio_project_to_bare']}; warm re-run {warm.best:.3f} s")
    return out


def _bare_ssl(encoder: Any, order: list[str], batch_size: int):
    """The plain Hugging Face loop: read, pad, ``model(input_values)``; outputs are dropped."""
    import soundfile
    import torch

    model, extractor = encoder.model, encoder.feature_extractor

    def run() -> None:
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                waves = [soundfile.read(path, dtype="float32")[0] for path in order[start : start + batch_size]]
                inputs = extractor(waves, sampling_rate=16000, padding=True, return_tensors="pt")
                model(inputs["input_values"]).last_hidden_state.numpy()

    return run


def _encoder_ssl(encoder: Any, order: list[str], batch_size: int):
    """``SpeechSSLEncoder.encode`` on the bare loop's batches (its own batching policy); outputs dropped."""
    import soundfile

    def run() -> None:
        for start in range(0, len(order), batch_size):
            waves = [soundfile.read(path, dtype="float32")[0] for path in order[start : start + batch_size]]
            encoder.encode(waves).states.numpy()

    return run


def _batched_difference(encoder: Any, paths: list[str]) -> float:
    """Largest |difference| on valid frames between the encoder on one batch and the Hugging Face
    model on each utterance alone, unpadded."""
    import soundfile
    import torch

    waves = [soundfile.read(path, dtype="float32")[0] for path in paths]
    batch = encoder.encode(waves)
    largest = 0.0
    with torch.inference_mode():
        for row, wave in enumerate(waves):
            values = encoder.feature_extractor(wave, sampling_rate=16000, return_tensors="pt")["input_values"]
            alone = encoder.model(values).last_hidden_state[0]
            largest = max(largest, float((batch.states[row, : alone.shape[0]] - alone).abs().max()))
    return largest


def _bare_smile(encoder: Any, order: list[str]):
    """The plain openSMILE loop: read, ``process_signal`` per file; outputs are dropped."""
    import opensmile
    import soundfile

    smile = opensmile.Smile(
        feature_set=getattr(opensmile.FeatureSet, encoder.feature_set),
        feature_level=opensmile.FeatureLevel.LowLevelDescriptors,
    )

    def run() -> None:
        for path in order:
            wave, rate = soundfile.read(path, dtype="float32")
            smile.process_signal(wave, rate)

    return run


# ---------------------------------------------------------------------- plain helpers


def _frames(path: str) -> int:
    import soundfile

    return soundfile.info(path).frames


def _project_order(table: Any) -> list[str]:
    """Audio paths in the order extraction encodes them: longest first, then by utterance id."""
    rows = sorted(
        table[["utt_id", "audio_path"]].itertuples(index=False), key=lambda r: (-_frames(r.audio_path), r.utt_id)
    )
    return [row.audio_path for row in rows]


def _padding_stats(order: list[str], batch_size: int) -> dict[str, float]:
    """Share of padded samples in the bare loop's batches, sorted (as run) and in file order."""

    def share(paths: list[str]) -> float:
        lengths = [_frames(p) for p in paths]
        padded = total = 0
        for start in range(0, len(lengths), batch_size):
            batch = lengths[start : start + batch_size]
            padded += max(batch) * len(batch) - sum(batch)
            total += max(batch) * len(batch)
        return round(padded / total, 4) if total else 0.0

    return {"sorted_by_length": share(order), "file_order": share(sorted(order))}


def _distinct_length_groups(order: list[str], batch_size: int) -> int:
    """CNN calls the project makes: one per distinct sample count inside each batch."""
    return sum(len({_frames(p) for p in order[i : i + batch_size]}) for i in range(0, len(order), batch_size))


def render(results: dict[str, Any]) -> str:
    """The summary table of a result dict."""
    rows = []
    for label, out in results["encoders"].items():
        for name in ("bare", "encoder_alone", "project"):
            if name in out:
                ratio = round(out["bare"]["best_s"] / out[name]["best_s"], 3)
                cpu_ratio = round(out["bare"]["cpu_best_s"] / out[name]["cpu_best_s"], 3)
                rows.append(
                    [
                        label,
                        name,
                        out[name]["best_s"],
                        out[name]["median_s"],
                        out[name]["cpu_best_s"],
                        out[name]["utt_per_s"],
                        out[name]["audio_s_per_s"],
                        ratio,
                        cpu_ratio,
                    ]
                )
        rows.append(
            [label, "warm re-run", out["warm_rerun"]["best_s"], out["warm_rerun"]["median_s"], "-", "-", "-", "-", "-"]
        )
    return format_table(
        ["encoder", "path", "best s", "median s", "cpu s", "utt/s", "audio s/s", "speed vs bare (wall)", "(cpu)"], rows
    )


if __name__ == "__main__":
    main()
