"""Benchmark: parameters and CPU forward time per utterance of every registered model.

Every model of ``emomix.models.list_models()`` is built with its default config (the paper's
sizes) for 768-d audio and text states (the base-size encoders the papers use) and 4 classes, and
run in eval mode without gradients on IEMOCAP-like utterances: 225 audio frames (4.5 s at
50 frames/s, the first and last 10 % marked non-speech by the VAD mask), 40 text tokens (first and
last special) with the last four layers' states, and token–frame edges that spread the content
tokens evenly over the frames. Dialogue models get dialogues of 8 utterance vectors; their time
per utterance is the dialogue's time / 8.

Measured per model: parameters; forward time per utterance at batch size 1 (one utterance or one
dialogue: latency) and at batch size 8 (time / 8: throughput). The heads are only part of the cost:
the encoders are timed on the same utterance too, a randomly initialised WavLM-Base-sized speech
encoder (``SpeechSSLEncoder.from_config(WavLMConfig())``, 4.5 s of audio) and a RoBERTa-base-sized
text encoder (``TextEncoder.from_config(RobertaConfig())``, the same 40 tokens), so the table also
gives the end-to-end time per utterance (encoders + head at batch size 1).

Times are the fastest of the timed repeats after a warm-up (the least disturbed by other
processes), with the same torch thread count everywhere; both wall-clock and process CPU time are
recorded. On a shared machine, run with ``--threads 1``: the CPU time of one thread then measures
the work itself and hardly moves with other processes' load, while the wall time can. Run:
``python -m bench.model_costs [--quick] [--threads N]`` (``--quick``: tiny sizes, seconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from bench._util import format_table, machine_info, parse_args, set_threads, wavlm_config, write_results

NAME = "model_costs"
SIZES = {
    "full": {
        "dim": 768,
        "frames": 225,
        "tokens": 40,
        "text_layers": 4,
        "dialogue": 8,
        "audio_seconds": 4.5,
        "repeats": 5,
        "encoder_repeats": 5,
        "classes": 4,
    },
    "quick": {
        "dim": 32,
        "frames": 50,
        "tokens": 12,
        "text_layers": 4,
        "dialogue": 4,
        "audio_seconds": 1.0,
        "repeats": 1,
        "encoder_repeats": 1,
        "classes": 4,
    },
}
FRAME_RATE = 50.0


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and write ``bench/results/model_costs.json``."""
    args = parse_args(__doc__.splitlines()[0], argv)
    threads = set_threads(args.threads)
    sizes = SIZES["quick" if args.quick else "full"]
    from emomix.models import create_model, list_models

    results: dict[str, Any] = {"machine": machine_info(threads), "sizes": sizes, "models": {}, "encoders": {}}
    for name, info in list_models().items():
        dims = {m: sizes["dim"] for m in info.modalities}
        torch.manual_seed(0)
        model = create_model(name, {}, dims, sizes["classes"]).eval()
        record: dict[str, Any] = {
            "inputs": list(info.modalities),
            "batch_kind": info.batch_kind,
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        for batch_size in (1, 8):
            batch = (
                dialogue_batch(info.modalities, batch_size, sizes)
                if info.batch_kind == "dialogue"
                else utterance_batch(info.modalities, batch_size, sizes)
            )
            utterances = batch_size * (sizes["dialogue"] if info.batch_kind == "dialogue" else 1)
            wall, cpu = _time(lambda model=model, batch=batch: model(batch), sizes["repeats"])
            record[f"ms_per_utterance_batch{batch_size}"] = round(wall * 1000 / utterances, 3)
            record[f"cpu_ms_per_utterance_batch{batch_size}"] = round(cpu * 1000 / utterances, 3)
        results["models"][name] = record
        print(
            f"{name:26s} {record['parameters']:>11,d} params  {record['ms_per_utterance_batch1']:8.2f} ms "
            f"(CPU {record['cpu_ms_per_utterance_batch1']:.2f}) batch 1  "
            f"{record['ms_per_utterance_batch8']:8.2f} ms/utt "
            f"(CPU {record['cpu_ms_per_utterance_batch8']:.2f}) batch 8",
            flush=True,
        )
    results["encoders"] = time_encoders(args.quick, sizes)
    for record in results["models"].values():
        used = [results["encoders"][m] for m in record["inputs"] if m in results["encoders"]]
        record["ms_per_utterance_with_encoders"] = round(
            sum(e["ms_per_utterance"] for e in used) + record["ms_per_utterance_batch1"], 1
        )
        record["cpu_ms_per_utterance_with_encoders"] = round(
            sum(e["cpu_ms_per_utterance"] for e in used) + record["cpu_ms_per_utterance_batch1"], 1
        )
    print()
    print(render(results))
    path = write_results(NAME, results, args.quick, args.out)
    print(f"\nwrote {path}")
    return results


def render(results: dict[str, Any]) -> str:
    """The Markdown tables of a result (models, then encoders)."""
    rows = [
        (
            name,
            "+".join(r["inputs"]),
            r["batch_kind"],
            f"{r['parameters'] / 1e6:.2f} M",
            r["cpu_ms_per_utterance_batch1"],
            r["cpu_ms_per_utterance_batch8"],
            r["ms_per_utterance_batch1"],
            r["cpu_ms_per_utterance_with_encoders"],
        )
        for name, r in results["models"].items()
    ]
    models = format_table(
        (
            "model",
            "inputs",
            "batch",
            "parameters",
            "CPU ms/utt, batch 1",
            "CPU ms/utt, batch 8",
            "wall ms/utt, batch 1",
            "CPU ms/utt with encoders",
        ),
        rows,
    )
    encoders = format_table(
        ("encoder", "parameters", "positions", "CPU ms/utterance", "wall ms/utterance"),
        [
            (
                e["label"],
                f"{e['parameters'] / 1e6:.1f} M",
                e["positions"],
                e["cpu_ms_per_utterance"],
                e["ms_per_utterance"],
            )
            for e in results["encoders"].values()
        ],
    )
    return models + "\n\n" + encoders


def time_encoders(quick: bool, sizes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Forward time of a random WavLM-Base-sized and RoBERTa-base-sized encoder on one utterance."""
    from emomix.encoders.speech_ssl import SpeechSSLEncoder
    from emomix.encoders.text import TextEncoder

    speech = SpeechSSLEncoder.from_config(wavlm_config(quick), seed=0)
    wave = np.random.default_rng(0).normal(0.0, 0.1, int(sizes["audio_seconds"] * 16000)).astype(np.float32)
    text = TextEncoder.from_config(roberta_config(quick), seed=0)
    sentence = sentence_of(text, sizes["tokens"])
    out = {}
    for modality, label, encoder, inputs in (
        ("audio", "WavLM-Base-sized (random)", speech, [wave]),
        ("text", "RoBERTa-base-sized (random)", text, [sentence]),
    ):
        wall, cpu = _time(lambda encoder=encoder, inputs=inputs: encoder.encode(inputs), sizes["encoder_repeats"])
        frames = int(encoder.encode(inputs).mask.sum())
        out[modality] = {
            "label": label,
            "parameters": sum(p.numel() for p in encoder.parameters()),
            "ms_per_utterance": round(wall * 1000, 1),
            "cpu_ms_per_utterance": round(cpu * 1000, 1),
            "positions": frames,
        }
        print(
            f"{label:30s} {out[modality]['parameters']:>12,d} params {wall * 1000:9.1f} ms (CPU {cpu * 1000:.1f}; "
            f"{frames} positions)",
            flush=True,
        )
    return out


def roberta_config(quick: bool) -> Any:
    """``RobertaConfig()`` (RoBERTa-base size: 12 layers, 768 dims); tiny with 12 layers for ``--quick``."""
    from transformers import RobertaConfig

    if not quick:
        return RobertaConfig()
    return RobertaConfig(hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64)


def sentence_of(encoder: Any, tokens: int) -> str:
    """A transcript that the encoder's tokenizer turns into exactly ``tokens`` tokens (special included)."""
    words = [
        "well",
        "i",
        "really",
        "did",
        "not",
        "expect",
        "to",
        "see",
        "you",
        "here",
        "today",
        "and",
        "honestly",
        "it",
        "makes",
        "me",
        "very",
        "happy",
    ]
    text = ""
    for index in range(1000):
        candidate = (text + " " + words[index % len(words)]).strip()
        if len(encoder.tokenizer(candidate)["input_ids"]) > tokens:
            break
        text = candidate
    return text


def utterance_batch(modalities: Sequence[str], batch_size: int, sizes: dict[str, Any]) -> Any:
    """A batch of identical-length synthetic utterances with every extra a model may read."""
    from emomix.models.inputs import Batch, ModalityInput

    generator = torch.Generator().manual_seed(0)
    dim, frames, tokens = sizes["dim"], sizes["frames"], sizes["tokens"]
    inputs = {}
    if "audio" in modalities:
        speech = torch.ones(batch_size, frames, dtype=torch.bool)
        edge = max(1, frames // 10)
        speech[:, :edge] = False
        speech[:, -edge:] = False
        inputs["audio"] = ModalityInput(
            states=torch.randn(batch_size, frames, dim, generator=generator),
            mask=torch.ones(batch_size, frames, dtype=torch.bool),
            speech_mask=speech,
            frame_rate=FRAME_RATE,
        )
    if "text" in modalities:
        special = torch.zeros(batch_size, tokens, dtype=torch.bool)
        special[:, 0] = special[:, -1] = True
        inputs["text"] = ModalityInput(
            states=torch.randn(batch_size, tokens, dim, generator=generator),
            mask=torch.ones(batch_size, tokens, dtype=torch.bool),
            special_tokens=special,
            layer_states=torch.randn(batch_size, sizes["text_layers"], tokens, dim, generator=generator),
        )
    if "video" in modalities:
        inputs["video"] = ModalityInput(
            states=torch.randn(batch_size, 45, dim, generator=generator),
            mask=torch.ones(batch_size, 45, dtype=torch.bool),
            frame_rate=10.0,
        )
    edges = None
    if "audio" in modalities and "text" in modalities:
        edges = [spread_edges(tokens, frames)] * batch_size
    return Batch(inputs=inputs, labels=None, edges=edges, utt_ids=[f"u{i}" for i in range(batch_size)])


def dialogue_batch(modalities: Sequence[str], batch_size: int, sizes: dict[str, Any]) -> Any:
    """``batch_size`` dialogues of ``sizes["dialogue"]`` utterance vectors."""
    from emomix.models.inputs import DialogueBatch

    generator = torch.Generator().manual_seed(0)
    length = sizes["dialogue"]
    inputs = {m: torch.randn(batch_size, length, sizes["dim"], generator=generator) for m in modalities}
    return DialogueBatch(inputs=inputs, mask=torch.ones(batch_size, length, dtype=torch.bool))


def spread_edges(tokens: int, frames: int) -> torch.Tensor:
    """Edges linking each content token (not the first or last) to an equal share of the frames."""
    content = tokens - 2
    pairs = [(1 + i, f) for i in range(content) for f in range(i * frames // content, (i + 1) * frames // content)]
    return torch.tensor(pairs, dtype=torch.long).T


def _time(run: Any, repeats: int) -> tuple[float, float]:
    """(fastest wall-clock seconds, fastest process CPU seconds) of ``repeats`` calls after one warm-up."""
    import time

    with torch.inference_mode():
        run()
        walls, cpus = [], []
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


if __name__ == "__main__":
    main()
