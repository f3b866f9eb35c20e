"""A transformers text encoder as its own ONNX graph (``emomix export --encoders``).

:func:`export_text_encoder` writes the graph, its spec and the tokenizer,
:func:`check_text_encoder_parity` checks it on real texts and :class:`OnnxTextEncoder` runs it;
:func:`encoder_export_blocker` says why other encoders are not exported.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emomix.errors import ConfigError
from emomix.infer.export.parity import (
    describe_failure,
    frozen_hint,
    max_abs,
    ort_session,
    remove_files,
    short_path,
)
from emomix.infer.export.spec import BATCH_AXIS, DEFAULT_OPSET, spec_path_for

TEXT_ENCODER_FORMAT = "emomix-onnx-text-encoder/1"


SEQUENCE_AXIS = "sequence"


TEXT_OUTSIDE_THE_GRAPH = (
    "tokenisation: the tokenizer saved beside the graph, padding to the longest text, truncation to max_length; "
    "an empty transcript is the special tokens alone",
    "padding: outputs at padded positions (attention_mask 0) are not features; keep the valid tokens",
    "special tokens: the tokenizer's special_tokens_mask (return_special_tokens_mask=True)",
    "storage: emomix's feature store keeps states in float16 (MemoryStore at prediction); round the outputs to "
    "float16 to reproduce predict exactly",
    "speaker normalisation, when the features spec asks for it (normaliser-text.json)",
)


def encoder_export_blocker(encoder: Any) -> str | None:
    """Why :func:`export_text_encoder` cannot export ``encoder`` (None: it can)."""
    from emomix.encoders.mfcc import MFCCEncoder
    from emomix.encoders.opensmile_encoder import OpenSmileEncoder
    from emomix.encoders.speech_ssl import SpeechSSLEncoder
    from emomix.encoders.text import TextEncoder

    if isinstance(encoder, TextEncoder):
        return None
    if isinstance(encoder, OpenSmileEncoder):
        return (
            "openSMILE is a C++ library (the opensmile package calls its native engine); its features are not a "
            "PyTorch graph, so there is nothing to trace: compute them with openSMILE and the same feature set"
        )
    if isinstance(encoder, MFCCEncoder):
        return (
            "MFCCs are computed by librosa in NumPy, not by a PyTorch graph: compute them with "
            "emomix.audio.features.mfcc (or librosa with the same settings)"
        )
    if isinstance(encoder, SpeechSSLEncoder):
        return (
            "emomix exports transformers text encoders only; a speech SSL encoder (waveform in, VAD and frame "
            "stride around it) is not attempted: run it in PyTorch"
        )
    return f"{type(encoder).__name__} is not a transformers text encoder, the only kind emomix exports"


class TextEncoderGraph(nn.Module):
    """A :class:`~emomix.encoders.text.TextEncoder`'s transformer as a traceable module:
    ``(input_ids, attention_mask) → (states, layer_<k>…)`` where ``states`` is the encoder's state
    layer (the last hidden state unless the encoder selects another) and ``layer_<k>`` are the
    hidden layers a features spec stores (0 = embeddings). Token type ids, where the model takes
    them, are zeros (one segment), as the tokenizer gives for single texts."""

    def __init__(self, encoder: Any, layers: Sequence[int] = ()):
        super().__init__()
        self.model = encoder.model
        self.state_layer = int(encoder.state_layer)
        self.layers = [int(k) for k in layers]
        self.token_types = "token_type_ids" in getattr(encoder.tokenizer, "model_input_names", ())
        bad = [k for k in self.layers if not 0 <= k <= int(encoder.num_layers)]
        if bad:
            raise ConfigError(f"layers {bad} are outside 0…{encoder.num_layers} of '{encoder.name}'")

    @property
    def output_names(self) -> list[str]:
        return ["states", *(f"layer_{k}" for k in self.layers)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        extra = {"token_type_ids": torch.zeros_like(input_ids)} if self.token_types else {}
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **extra
        ).hidden_states
        return (hidden[self.state_layer], *(hidden[k] for k in self.layers))


@dataclass
class TextParityBatch:
    """Differences on one batch of texts, over valid (unpadded) tokens only."""

    batch_size: int
    sequence_length: int
    max_abs: dict[str, float]


@dataclass
class TextParityReport:
    """The PyTorch text encoder against its ONNX graph on batches of real texts; ``ok`` when
    every output agrees within ``atol`` on every valid token."""

    onnx_path: Path
    atol: float
    batches: list[TextParityBatch]

    @property
    def texts(self) -> int:
        return sum(b.batch_size for b in self.batches)

    @property
    def max_abs(self) -> float:
        return max((v for b in self.batches for v in b.max_abs.values()), default=0.0)

    @property
    def ok(self) -> bool:
        return bool(self.batches) and self.max_abs <= self.atol

    def summary(self) -> str:
        """One line: verdict, then per batch its shape and max difference over the outputs."""
        verdict = "ok" if self.ok else "MISMATCH"
        rows = "; ".join(
            f"B={b.batch_size} {SEQUENCE_AXIS}={b.sequence_length}: |Δ| {max(b.max_abs.values()):.1e}"
            for b in self.batches
        )
        return f"{verdict} (atol {self.atol:g}): {rows}"


@dataclass
class TextEncoderExport:
    """What :func:`export_text_encoder` wrote: the graph, its spec, the tokenizer folder, the
    outputs and the parity report on the given texts."""

    path: Path
    spec_path: Path
    tokenizer_dir: Path
    outputs: list[str]
    parity: TextParityReport
    trace_warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


class OnnxTextEncoder:
    """An exported text encoder run by onnxruntime: texts in, the graph's outputs plus the token
    ``mask`` and ``special_tokens`` out (tokenised with the tokenizer saved beside the graph, or
    ``tokenizer`` when given)."""

    def __init__(self, path: str | Path, tokenizer: Any = None, threads: int | None = 1):
        self.path = Path(path)
        spec_path = spec_path_for(self.path)
        if not self.path.exists() or not spec_path.exists():
            raise ConfigError(
                f"{self.path} (with {spec_path.name}) does not exist; export the encoder with "
                "emomix.infer.export.export_text_encoder or `emomix export --encoders`"
            )
        self.spec = json.loads(spec_path.read_text())
        if self.spec.get("format") != TEXT_ENCODER_FORMAT:
            raise ConfigError(f"{spec_path}: not a text encoder spec (format {self.spec.get('format')!r})")
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(self.path.parent / self.spec["tokenizer"]))
        self.tokenizer = tokenizer
        self.session = ort_session(self.path, threads)
        self.output_names = [o["name"] for o in self.spec["outputs"]]

    def tokenize(self, texts: Sequence[str | None]) -> dict[str, np.ndarray]:
        """``input_ids``, ``attention_mask`` and ``special_tokens_mask`` as the encoder tokenises."""
        cleaned = ["" if t is None or not str(t).strip() else str(t) for t in texts]
        return dict(
            self.tokenizer(
                cleaned,
                padding=True,
                truncation=True,
                max_length=int(self.spec["max_length"]),
                return_special_tokens_mask=True,
                return_tensors="np",
            )
        )

    def run(self, texts: Sequence[str | None]) -> dict[str, np.ndarray]:
        """Every output by name, with ``mask`` (valid tokens) and ``special_tokens`` (bool)."""
        encoded = self.tokenize(texts)
        feed = {name: encoded[name].astype(np.int64) for name in ("input_ids", "attention_mask")}
        values = dict(zip(self.output_names, self.session.run(self.output_names, feed)))
        mask = encoded["attention_mask"].astype(bool)
        values["mask"] = mask
        values["special_tokens"] = encoded["special_tokens_mask"].astype(bool) & mask
        return values


def export_text_encoder(
    encoder: Any,
    path: str | Path,
    layers: Sequence[int] = (),
    texts: Sequence[str] = (),
    check_batches: Sequence[Sequence[str]] | None = None,
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-4,
) -> TextEncoderExport:
    """Export a :class:`~emomix.encoders.text.TextEncoder` to ``path`` with dynamic batch and
    sequence axes, its spec beside it (``<name>.onnx_io_spec.json``) and its tokenizer in
    ``<stem>_tokenizer/``; then check it against the PyTorch encoder.

    ``layers``: hidden layers to output as ``layer_<k>`` (a features spec's ``layers``);
    ``texts``: real transcripts to trace with (an empty text is added, so the traced batch is
    padded and the trace follows the masked path whatever the transformers version's mask code
    decides in Python); ``check_batches``: batches of texts for
    the parity check (default: ``texts`` together and the first alone). Outputs must agree
    within ``atol`` on valid tokens, or :class:`ConfigError` is raised and nothing is left at
    ``path``. Encoders of other kinds raise :class:`ConfigError` with
    :func:`encoder_export_blocker`'s reason.
    """
    reason = encoder_export_blocker(encoder)
    if reason:
        raise ConfigError(
            f"encoder {getattr(encoder, 'name', type(encoder).__name__)!r} cannot be exported to ONNX: {reason}"
        )
    started = time.perf_counter()
    path = Path(path)
    texts = [str(t) for t in texts if t is not None and str(t).strip()] or ["a short example sentence"]
    graph = TextEncoderGraph(encoder, layers).eval()
    example, _, _ = encoder.tokenize([*texts[:3], ""])
    args = (example["input_ids"].cpu(), example["attention_mask"].cpu())
    names = graph.output_names
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.stem}.{os.getpid()}.text.onnx")
    tokenizer_dir = path.with_name(f"{path.stem}_tokenizer")
    device = next(encoder.model.parameters()).device
    try:
        encoder.model.cpu()
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            torch.onnx.export(
                graph,
                args,
                str(scratch),
                dynamo=False,
                opset_version=opset,
                input_names=["input_ids", "attention_mask"],
                output_names=names,
                dynamic_axes={n: {0: BATCH_AXIS, 1: SEQUENCE_AXIS} for n in ["input_ids", "attention_mask", *names]},
                do_constant_folding=True,
            )
        messages = sorted(
            {
                f"{short_path(w.filename)}:{w.lineno}: {str(w.message).splitlines()[0]}"
                for w in caught
                if issubclass(w.category, torch.jit.TracerWarning)
            }
        )
        spec = _text_spec(encoder, graph, opset, tokenizer_dir.name, messages)
        spec_path_for(scratch).write_text(json.dumps(spec, indent=2) + "\n")
        batches = [list(b) for b in check_batches] if check_batches else [texts, texts[:1]]
        parity = check_text_encoder_parity(encoder, scratch, batches, atol=atol)
    except ConfigError:
        remove_files(scratch, spec_path_for(scratch))
        raise
    except Exception as exc:  # the exporter and onnxruntime raise many types; each means "did not export"
        remove_files(scratch, spec_path_for(scratch))
        raise ConfigError(
            f"text encoder '{encoder.name}' cannot be exported to ONNX ({describe_failure(exc)})"
        ) from exc
    finally:
        encoder.model.to(device)
    if not parity.ok:
        remove_files(scratch, spec_path_for(scratch))
        raise ConfigError(
            f"the exported text encoder '{encoder.name}' does not reproduce PyTorch ({parity.summary()})"
            + frozen_hint(messages)
            + "; run the encoder in PyTorch instead"
        )
    encoder.tokenizer.save_pretrained(str(tokenizer_dir))
    os.replace(scratch, path)
    os.replace(spec_path_for(scratch), spec_path_for(path))
    parity.onnx_path = path
    return TextEncoderExport(
        path, spec_path_for(path), tokenizer_dir, names, parity, messages, time.perf_counter() - started
    )


def check_text_encoder_parity(
    encoder: Any, onnx_path: str | Path, text_batches: Sequence[Sequence[str]], atol: float = 1e-4
) -> TextParityReport:
    """Run the PyTorch encoder (``encode``, with hidden states) and the ONNX graph on each batch
    of texts and report the max abs difference of every output over the valid tokens."""
    runner = OnnxTextEncoder(onnx_path, tokenizer=encoder.tokenizer)
    results = []
    for texts in text_batches:
        expected = encoder.encode(list(texts), output_hidden_states=True)
        got = runner.run(list(texts))
        mask = expected.mask.cpu().numpy().astype(bool)
        reference = {"states": expected.states}
        reference.update(
            {
                name: expected.hidden_states[int(name.split("_", 1)[1])]
                for name in runner.output_names
                if name.startswith("layer_")
            }
        )
        diffs = {}
        for name in runner.output_names:
            want = reference[name].detach().cpu().float().numpy()
            have = got[name]
            diffs[name] = (
                math.inf
                if want.shape != have.shape or not np.array_equal(got["mask"], mask)
                else max_abs(want[mask], have[mask])
            )
        results.append(TextParityBatch(len(texts), int(mask.shape[1]), diffs))
    return TextParityReport(Path(onnx_path), atol, results)


def _text_spec(
    encoder: Any, graph: TextEncoderGraph, opset: int, tokenizer_dir: str, messages: Sequence[str]
) -> dict[str, Any]:
    dim = int(encoder.output_size)
    outputs = [
        {"name": "states", "dtype": "float32", "shape": [BATCH_AXIS, SEQUENCE_AXIS, dim], "layer": graph.state_layer}
    ]
    outputs += [
        {"name": f"layer_{k}", "dtype": "float32", "shape": [BATCH_AXIS, SEQUENCE_AXIS, dim], "layer": k}
        for k in graph.layers
    ]
    return {
        "format": TEXT_ENCODER_FORMAT,
        "encoder": encoder.config(),
        "opset": opset,
        "exporter": "torchscript",
        "inputs": [
            {"name": name, "dtype": "int64", "shape": [BATCH_AXIS, SEQUENCE_AXIS]}
            for name in ("input_ids", "attention_mask")
        ],
        "outputs": outputs,
        "tokenizer": tokenizer_dir,
        "max_length": int(encoder.max_length),
        "outside_the_graph": list(TEXT_OUTSIDE_THE_GRAPH),
        "frozen_by_tracer": [m.split(": ", 1)[0] for m in messages],
    }
