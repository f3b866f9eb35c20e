"""Benchmark 3: fine-tuning the top layers from stored boundary states vs the full forward.

Speech: a randomly initialised WavLM-Base-sized model (12 layers, 768 dims) with ``freeze(4)``.
One training step on a batch of 8 utterances of about 4 s (masked mean pooling + linear head,
cross-entropy, AdamW over the top 4 layers and the head):

* **full**: ``encoder(waveforms)`` (CNN, projection, all 12 layers; the frozen part builds no
  graph) + backward through the top 4 layers;
* **boundary**: the states entering layer 9 (``hidden_states[8]``), written once to a feature
  store as float16 like ``emomix extract --boundary-layer -4``, read back and padded each step,
  then ``encoder.forward_from_layer(states, mask, start_layer=8)`` + backward.

Two batches: 8 × exactly 4.0 s (one model call in the full path), and 8 × 3.5-4.5 s (the full
path runs each distinct length alone, see docs/encoders.md; the boundary path pads with a mask).
Text: the bundled MiniLM (6 layers, top 2 trainable, start layer 4) and a BERT-base-sized random
model (12 layers, top 4 trainable, start layer 8) on 32 MELD dev transcripts (or built-in
sentences when the corpus is absent).

Before timing, each case checks that in eval mode ``forward_from_layer`` on the float32 boundary
states gives the full forward's output (the speed-up is only worth having if it is the same model).
Run: ``python -m bench.partial_finetune [--quick]``.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench._util import (
    bert_base_config,
    format_table,
    interleaved,
    machine_info,
    parse_args,
    set_threads,
    shared_corpus,
    synthetic_wave,
    wavlm_config,
    write_results,
)

NAME = "partial_finetune"

FALLBACK_TEXTS = [
    "I can't believe you did that!",
    "Okay.",
    "Where were you last night?",
    "That's the best news I've heard all week.",
    "Oh my God, are you serious?",
    "Fine, whatever you say.",
    "I just don't think it's a good idea right now.",
    "Could you please pass me the salt?",
    "No way.",
    "We need to talk about what happened at the party.",
]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and write ``bench/results/partial_finetune.json``."""
    args = parse_args(__doc__.splitlines()[0], argv)
    threads = set_threads(args.threads)
    repeats = 1 if args.quick else 3
    work = Path(tempfile.mkdtemp(prefix="emomix-bench-finetune-"))
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {"name": NAME, "machine": machine_info(threads), "repeats": repeats, "cases": {}}
    try:
        import torch

        from emomix.encoders.speech_ssl import SpeechSSLEncoder
        from emomix.encoders.text import TextEncoder

        speech = SpeechSSLEncoder.from_config(wavlm_config(args.quick), trainable_top_layers=4, seed=0)
        size = "tiny" if args.quick else "base"
        batches = {
            "8 x 4.0 s": [synthetic_wave(4.0, rng) for _ in range(8)],
            "8 x 3.5-4.5 s": [synthetic_wave(float(s), rng) for s in rng.uniform(3.5, 4.5, 8)],
        }
        for name, waves in batches.items():
            results["cases"][f"wavlm-{size}-random top 4/12, {name}"] = run_case(
                speech, waves, 8, repeats, work / f"speech-{len(results['cases'])}"
            )
        texts, text_source = meld_texts(32)
        minilm = TextEncoder(trainable_top_layers=2)
        results["cases"]["minilm (bundled) top 2/6, 32 texts"] = run_case(minilm, texts, 4, repeats, work / "minilm")
        bert = TextEncoder.from_config(bert_base_config(args.quick), trainable_top_layers=4, seed=0)
        results["cases"][f"bert-{size}-random top 4/12, 32 texts"] = run_case(bert, texts, 8, repeats, work / "bert")
        results["text_source"] = text_source
        results["torch"] = torch.__version__
        print()
        print(render(results))
        path = write_results(NAME, results, args.quick, args.out)
        print(f"\nwrote {path}")
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_case(encoder: Any, inputs: list[Any], start_layer: int, repeats: int, store_dir: Path) -> dict[str, Any]:
    """Check equivalence, store the boundary states, time both training steps (interleaved)."""
    import torch
    from torch import nn

    from emomix.cache import FeatureStore

    output = encoder.encode(inputs, output_hidden_states=True)
    boundary = output.hidden_states[start_layer]
    check = encoder.encode(inputs)  # eval mode: no dropout
    encoder.eval()
    with torch.no_grad():
        resumed = encoder.forward_from_layer(boundary, output.mask, start_layer)
    valid = output.mask.unsqueeze(-1)
    max_diff = float(((resumed.states - check.states).abs() * valid).max())

    with FeatureStore(store_dir) as store:
        keys = [f"{i:064x}" for i in range(len(inputs))]
        store.put_many(
            {
                key: {f"layer_{start_layer}": boundary[i, : int(output.mask[i].sum())].numpy()}
                for i, key in enumerate(keys)
            },
            namespace="boundary",
        )
    reader = FeatureStore(store_dir, create=False)

    head = nn.Linear(encoder.output_size, 4)
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable + list(head.parameters()), lr=1e-5)
    labels = torch.arange(len(inputs)) % 4

    def train_step(forward: Callable[[], Any]) -> None:
        encoder.train()
        out = forward()
        mask = out.mask.unsqueeze(-1).to(out.states.dtype)
        pooled = (out.states * mask).sum(1) / mask.sum(1)
        loss = nn.functional.cross_entropy(head(pooled), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    def full() -> None:
        train_step(lambda: encoder(inputs))

    # The store's mmap views are read-only; torch warns when wrapping them, but .float() copies them.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    # WavLM layers get a bool padding mask next to a float position bias (forward_from_layer with
    # padding); torch deprecates that mix but computes it correctly (see max_abs_diff_eval).
    warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")

    def from_boundary() -> None:
        def forward() -> Any:
            arrays = reader.get_many(keys, mmap=True)
            states = [torch.from_numpy(arrays[k][f"layer_{start_layer}"]).float() for k in keys]
            lengths = torch.tensor([s.shape[0] for s in states])
            padded = nn.utils.rnn.pad_sequence(states, batch_first=True)
            mask = torch.arange(padded.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
            return encoder.forward_from_layer(padded, mask, start_layer)

        train_step(forward)

    full()  # warm-up both
    from_boundary()
    timings = interleaved({"full": full, "boundary": from_boundary}, repeats)
    reader.close()
    ratio = timings["full"].best / timings["boundary"].best
    result = {
        "layers": encoder.num_layers,
        "trainable_top_layers": encoder.trainable_top_layers,
        "start_layer": start_layer,
        "batch": len(inputs),
        "frames_or_tokens": int(output.mask.shape[1]),
        "trainable_parameters": int(sum(p.numel() for p in trainable)),
        "parameters": int(sum(p.numel() for p in encoder.parameters())),
        "max_abs_diff_eval": max_diff,
        "full": timings["full"].to_dict(),
        "boundary": timings["boundary"].to_dict(),
        "speedup": round(ratio, 2),
    }
    print(
        f"{type(encoder).__name__} start {start_layer}: full {timings['full'].best:.3f} s, boundary "
        f"{timings['boundary'].best:.3f} s -> {ratio:.1f}x; eval max |diff| {max_diff:.2e}"
    )
    return result


def meld_texts(count: int) -> tuple[list[str], str]:
    """The first ``count`` transcripts of MELD dev (or built-in sentences when MELD is absent), and which."""
    root = shared_corpus("meld-text")
    if root is None:
        return [FALLBACK_TEXTS[i % len(FALLBACK_TEXTS)] for i in range(count)], "built-in sentences"
    from emomix.data.readers import read_corpus

    table = read_corpus("meld", root, scheme=None).table
    return [str(t) for t in table[table["split"] == "dev"]["text"].head(count)], f"MELD dev (first {count} utterances)"


def render(results: dict[str, Any]) -> str:
    """The summary table of a result dict."""
    rows = []
    for name, case in results["cases"].items():
        rows.append(
            [
                name,
                case["frames_or_tokens"],
                f"{case['trainable_parameters'] / 1e6:.1f} M",
                case["full"]["best_s"],
                case["boundary"]["best_s"],
                case["speedup"],
                f"{case['max_abs_diff_eval']:.1e}",
            ]
        )
    return format_table(
        ["case", "max T", "trainable", "full step s", "boundary step s", "speed-up", "eval |diff|"], rows
    )


if __name__ == "__main__":
    main()
