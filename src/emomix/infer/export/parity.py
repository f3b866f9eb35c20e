"""Running an exported graph and checking it against PyTorch, shared by every export.

onnxruntime sessions, random batches shaped like an example (:func:`random_batch_like`), the
:class:`OnnxModel` runner, :func:`check_parity` and its report, and the messages of a failed
export or check (the unsupported operator, the source lines the tracer froze).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emomix.errors import ConfigError
from emomix.infer.export.spec import (
    UTTERANCE_AXIS,
    BatchWrapper,
    batch_feed,
    length_axis,
    load_spec,
)
from emomix.models.base import EmotionModel
from emomix.models.inputs import Batch, DialogueBatch, ModalityInput

LONG_VERIFICATION_LENGTH = 300
"""Frames/tokens of the long verification batch (6 s of 50 Hz frames, past ``max_frames=128``)."""


@dataclass
class ParityBatchResult:
    """Differences on one batch: shapes, max abs differences, argmax agreement."""

    batch_size: int
    lengths: dict[str, int]
    max_abs_logits: float
    max_abs_probs: float
    max_abs_aux: dict[str, float]
    argmax_agreement: float


@dataclass
class ParityReport:
    """PyTorch versus onnxruntime on several batches; ``ok`` when logits and probabilities agree
    within ``atol`` on every batch (aux differences are reported, not judged)."""

    onnx_path: Path
    atol: float
    batches: list[ParityBatchResult]

    @property
    def max_abs_logits(self) -> float:
        return max((b.max_abs_logits for b in self.batches), default=0.0)

    @property
    def max_abs_probs(self) -> float:
        return max((b.max_abs_probs for b in self.batches), default=0.0)

    @property
    def max_abs_aux(self) -> float:
        return max((v for b in self.batches for v in b.max_abs_aux.values()), default=0.0)

    @property
    def ok(self) -> bool:
        return bool(self.batches) and self.max_abs_logits <= self.atol and self.max_abs_probs <= self.atol

    def summary(self) -> str:
        """One line: verdict, then per batch its shape and max differences."""
        verdict = "ok" if self.ok else "MISMATCH"
        rows = "; ".join(
            f"B={b.batch_size} "
            + " ".join(f"{k}={v}" for k, v in b.lengths.items())
            + f": |Δlogits| {b.max_abs_logits:.1e}, |Δprobs| {b.max_abs_probs:.1e}"
            for b in self.batches
        )
        return f"{verdict} (atol {self.atol:g}): {rows}"


def _prefix_mask(lengths: Sequence[int], width: int) -> torch.Tensor:
    return torch.arange(width).unsqueeze(0) < torch.tensor(list(lengths)).unsqueeze(1)


def random_batch_like(
    example: Batch | DialogueBatch, batch_size: int, lengths: Mapping[str, int] | int | None = None, seed: int = 0
) -> Batch | DialogueBatch:
    """A batch with the example's modalities, extras and fixed sizes but ``batch_size`` rows
    padded to ``lengths`` (per modality, or one number for all; for a dialogue batch, the number
    of utterances), with random states and random valid lengths of 1…length per row (one row
    uses the full length). Speech masks are random inside the valid frames; special tokens mark
    the first and last valid token and the padding, as the feature store's batches do."""
    generator = torch.Generator().manual_seed(seed)

    def size_of(name: str, default: int) -> int:
        if lengths is None:
            return default
        return int(lengths) if isinstance(lengths, int) else int(lengths.get(name, default))

    def row_lengths(width: int) -> list[int]:
        values = torch.randint(1, width + 1, (batch_size,), generator=generator).tolist()
        values[int(torch.randint(0, batch_size, (1,), generator=generator))] = width
        return values

    if isinstance(example, DialogueBatch):
        width = size_of("utterances", int(example.mask.shape[1]))
        mask = _prefix_mask(row_lengths(width), width)
        inputs = {
            m: torch.randn(batch_size, width, int(x.shape[-1]), generator=generator) for m, x in example.inputs.items()
        }
        return DialogueBatch(inputs=inputs, mask=mask)
    items: dict[str, ModalityInput] = {}
    for modality, source in example.inputs.items():
        width = size_of(modality, int(source.states.shape[1]))
        valid = row_lengths(width)
        mask = _prefix_mask(valid, width)
        item = ModalityInput(
            states=torch.randn(batch_size, width, source.dim, generator=generator),
            mask=mask,
            frame_rate=source.frame_rate,
        )
        if source.speech_mask is not None:
            item.speech_mask = (torch.rand(batch_size, width, generator=generator) < 0.6) & mask
        if source.special_tokens is not None:
            special = ~mask
            special[:, 0] = True
            special[torch.arange(batch_size), torch.tensor(valid) - 1] = True
            item.special_tokens = special
        if source.layer_states is not None:
            item.layer_states = torch.randn(
                batch_size, int(source.layer_states.shape[1]), width, source.dim, generator=generator
            )
        if source.pooled is not None:
            item.pooled = torch.randn(batch_size, int(source.pooled.shape[-1]), generator=generator)
        items[modality] = item
    return Batch(inputs=items)


def verification_batches(example: Batch | DialogueBatch) -> list[Batch | DialogueBatch]:
    """Three batches with other batch sizes and lengths than the example: a little larger, a
    little smaller, and a long one (at least :data:`LONG_VERIFICATION_LENGTH` positions, past the
    length limits some models switch behaviour at, e.g. frame pooling beyond ``max_frames``)."""
    size = example.batch_size
    if isinstance(example, DialogueBatch):
        width = int(example.mask.shape[1])
        return [
            random_batch_like(example, size + 2, width + 3, seed=1001),
            random_batch_like(example, max(1, size - 1), max(1, width - 1), seed=1002),
            random_batch_like(example, 2, max(4 * width, 40), seed=1003),
        ]
    lengths = {m: int(x.states.shape[1]) for m, x in example.inputs.items()}
    return [
        random_batch_like(example, size + 2, {m: n + 5 for m, n in lengths.items()}, seed=1001),
        random_batch_like(example, max(1, size - 1), {m: max(1, n - 2) for m, n in lengths.items()}, seed=1002),
        random_batch_like(example, 2, {m: max(4 * n, LONG_VERIFICATION_LENGTH) for m, n in lengths.items()}, seed=1003),
    ]


_OPERATOR_PATTERNS = (
    re.compile(r"'((?:aten|prim|onnx)::[\w.]+)'"),  # exporter: Exporting the operator 'aten::x'
    re.compile(r"\b((?:aten|prim)::\w+)"),
    re.compile(r"of operator \((\w+)\)"),  # onnxruntime: type error of operator (X)
    re.compile(r"implementation for (\w+)\(\d+\) node"),  # onnxruntime: no kernel for X(opset)
)


def describe_failure(exc: BaseException) -> str:
    """The unsupported operator if the message names one, else the exception's first line."""
    while exc.__cause__ is not None and type(exc).__name__ == "TorchExportError":  # the dynamo exporter's wrapper
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    message = text.splitlines()[0] if text else type(exc).__name__
    for pattern in _OPERATOR_PATTERNS:
        match = pattern.search(text)
        if match:
            return f"unsupported operator {match.group(1)} ({type(exc).__name__}: {message[:300]})"
    return f"{type(exc).__name__}: {message[:300]}"


def short_path(filename: str) -> str:
    """``.../site-packages/torch_geometric/utils/x.py`` → ``torch_geometric/utils/x.py``."""
    parts = Path(filename).parts
    for root in ("emomix", "torch_geometric", "torch"):
        if root in parts:
            return "/".join(parts[len(parts) - 1 - parts[::-1].index(root) :])
    return Path(filename).name


def _frozen_lines(messages: Sequence[str]) -> str:
    """The source lines the tracer froze into constants, from its warnings."""
    lines = [m.split(": ", 1)[0] for m in messages if not m.startswith("torch/")]  # emomix's or the user's code
    return "; ".join(lines[:3])


def ort_session(path: Path, threads: int | None = 1) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: shape-inference notes on dynamic outputs are noise
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def frozen_hint(messages: Sequence[str]) -> str:
    frozen = _frozen_lines(messages)
    return f"; the tracer froze Python values at {frozen}" if frozen else ""


def remove_files(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


class OnnxModel:
    """An exported model run by onnxruntime (CPUExecutionProvider), fed :class:`Batch` /
    :class:`DialogueBatch` objects like the PyTorch model."""

    def __init__(self, path: str | Path, threads: int | None = 1):
        self.path = Path(path)
        if not self.path.exists():
            raise ConfigError(f"{self.path} does not exist; export the model with emomix.infer.export.export_onnx")
        self.spec = load_spec(self.path)
        self.session = ort_session(self.path, threads)
        self.output_names = [o["name"] for o in self.spec["outputs"]]

    def run(self, batch: Batch | DialogueBatch) -> dict[str, np.ndarray]:
        """Every output by name (``logits``, ``aux_<name>``) for one batch."""
        values = self.session.run(self.output_names, batch_feed(batch, self.spec))
        return dict(zip(self.output_names, values))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _lengths(batch: Batch | DialogueBatch) -> dict[str, int]:
    if isinstance(batch, DialogueBatch):
        return {UTTERANCE_AXIS: int(batch.mask.shape[1])}
    return {length_axis(m): int(x.states.shape[1]) for m, x in batch.inputs.items()}


def check_parity(
    model: EmotionModel | BatchWrapper,
    onnx_path: str | Path,
    batches: Sequence[Batch | DialogueBatch],
    atol: float = 1e-4,
) -> ParityReport:
    """Run PyTorch and onnxruntime (CPUExecutionProvider) on the same batches and report the max
    abs differences of logits, softmax probabilities and every aux output (for a bool output,
    the fraction of values that differ).

    The batches should differ from the export example in batch size and lengths, so that a graph
    specialised to the example's shapes shows up. For dialogue models only real utterances
    (mask True) are compared; padded utterances' logits are undefined.
    """
    runner = OnnxModel(onnx_path)
    aux_keys = [o["field"] for o in runner.spec["outputs"][1:]]
    module = model.model if isinstance(model, BatchWrapper) else copy.deepcopy(model).cpu().eval()
    results = []
    for batch in batches:
        with torch.no_grad():
            output = module(batch.to("cpu"))
        expected = [t.detach().cpu().numpy() for t in (output.logits, *(output.aux[k] for k in aux_keys))]
        got = runner.run(batch)
        torch_logits, onnx_logits = expected[0], got["logits"]
        aux_diffs = {name: _output_diff(value, got[name]) for name, value in zip(runner.output_names[1:], expected[1:])}
        if torch_logits.shape != onnx_logits.shape:
            results.append(ParityBatchResult(batch.batch_size, _lengths(batch), math.inf, math.inf, aux_diffs, 0.0))
            continue
        if isinstance(batch, DialogueBatch):  # padded utterances' logits are undefined
            keep = batch.mask.cpu().numpy().astype(bool)
            torch_logits, onnx_logits = torch_logits[keep], onnx_logits[keep]
        torch_logits, onnx_logits = torch_logits.astype(np.float64), onnx_logits.astype(np.float64)
        results.append(
            ParityBatchResult(
                batch_size=batch.batch_size,
                lengths=_lengths(batch),
                max_abs_logits=max_abs(torch_logits, onnx_logits),
                max_abs_probs=max_abs(_softmax(torch_logits), _softmax(onnx_logits)),
                max_abs_aux=aux_diffs,
                argmax_agreement=float(np.mean(torch_logits.argmax(-1) == onnx_logits.argmax(-1)))
                if torch_logits.size
                else 1.0,
            )
        )
    return ParityReport(Path(onnx_path), atol, results)


def _output_diff(expected: np.ndarray, got: np.ndarray) -> float:
    """Max abs difference of a float output; for a bool output the fraction of values that differ."""
    if expected.shape != got.shape:
        return math.inf
    if expected.dtype == np.bool_ or got.dtype == np.bool_:
        return float(np.mean(expected != got)) if expected.size else 0.0
    return max_abs(expected.astype(np.float64), got.astype(np.float64))


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Max abs difference, with equal infinities (log of a clamped zero) counted as equal."""
    if a.size == 0:
        return 0.0
    same = a == b
    diff = np.where(same, 0.0, np.abs(a.astype(np.float64) - b.astype(np.float64)))
    diff = np.where(np.isnan(diff), math.inf, diff)
    return float(diff.max())
