"""ONNX export of emomix models, the exported graph's input/output contract, and a parity check.

A model takes a :class:`~emomix.models.inputs.Batch` (or a ``DialogueBatch``), a dataclass that
ONNX cannot carry, so :func:`export_onnx` wraps it in a thin module that takes flat tensors in a
fixed order and rebuilds the batch before calling the model. The order, names, dtypes and
shapes are written to a JSON file next to the model (the *I/O spec*, :func:`spec_path_for`), and
:func:`batch_feed` turns a batch into the input dict of an onnxruntime session from it.

Inputs of an utterance model, per modality present in the example batch (audio, text, video, in
that order), then per field present (in this order):

==========================  ===============================  =======
name                        shape                            dtype
==========================  ===============================  =======
``<m>_states``              batch × ``<m>_length`` × D       float32
``<m>_mask``                batch × ``<m>_length``           bool
``<m>_speech_mask``         batch × ``<m>_length``           bool
``<m>_special_tokens``      batch × ``<m>_length``           bool
``<m>_layer_states``        batch × K × ``<m>_length`` × D   float32
``<m>_pooled``              batch × P                        float32
==========================  ===============================  =======

A dialogue model takes ``<m>_states`` (batch × utterances × D, float32) per modality and
``dialogue_mask`` (batch × utterances, bool). ``batch``, ``<m>_length`` and ``utterances`` are
dynamic axes; D, K and P are fixed by the model. Masks are ONNX ``bool`` tensors (onnxruntime
takes numpy ``bool`` arrays; no uint8 conversion is needed). An input the exported graph never
reads (e.g. ``audio_speech_mask`` for ``early_fusion``) is dropped by the exporter; the spec
lists it under ``ignored_inputs`` and :func:`batch_feed` does not send it.

Outputs: ``logits`` (batch × C, or batch × utterances × C) and one ``aux_<name>`` per tensor of
``ModelOutput.aux`` whose first dimension is the batch (routing probabilities, gate weights,
expert logits, fallback flags), in the order the model returns them. ``aux_losses`` are training
terms and are not exported. Token–frame ``edges`` (a list of per-utterance tensors of varying
size) are not an input: a batch with edges cannot be the example.

How export works: :func:`torch.onnx.export` with the TorchScript tracer (``dynamo=False``),
which keeps the padded axes of these models dynamic. Three PyTorch pieces do not trace well and
are swapped, during export only, for the same maths in plain tensor ops: ``nn.MultiheadAttention``
(its own forward freezes the sequence length into reshapes), and ``nn.LSTM``/``nn.GRU`` on packed
sequences (the exporter crashes when only the final state of a packed RNN is used). ``Where``
nodes that select between bool masks are rewritten through uint8, which onnxruntime's CPU kernel
needs. Then the graph is *verified*: onnxruntime and the unpatched PyTorch model run three random
batches with other batch sizes and lengths than the example (one of them 300 positions long),
and the outputs must agree within ``atol``.

The tracer records Python control flow and Python numbers computed from tensor values as
constants. Where such a value is fixed by the batch contract (every row has at least one valid
position, so "is any row empty?" is always False) the graph is still right; where it is not (the
Complementary models' frame pooling beyond ``max_frames`` and their per-utterance torch_geometric
graphs), verification fails and :class:`ConfigError` names the model, the unsupported operator
and the source lines the tracer froze. The spec lists those lines under ``frozen_by_tracer``.
With ``onnxscript`` installed the ``dynamo`` exporter (``torch.export``) is tried next; it
refuses data-dependent control flow outright.

Encoders: :func:`export_text_encoder` exports a transformers text encoder on its own
(``input_ids``, ``attention_mask`` → ``states`` and the stored hidden layers ``layer_<k>``, batch
and sequence axes dynamic, the tokenizer saved beside it) and checks it on real texts
(:func:`check_text_encoder_parity`); :class:`OnnxTextEncoder` runs it. Other encoders are not
graphs emomix can trace (:func:`encoder_export_blocker` says why).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import json
import math
import os
import re
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from emomix.errors import ConfigError
from emomix.models.base import EmotionModel
from emomix.models.inputs import Batch, DialogueBatch, ModalityInput

SPEC_FORMAT = "emomix-onnx-io/1"
DEFAULT_OPSET = 17
MODALITY_FIELDS = ("states", "mask", "speech_mask", "special_tokens", "layer_states", "pooled")
"""The :class:`ModalityInput` tensor fields, in the order of the exported inputs."""
MASK_FIELDS = frozenset({"mask", "speech_mask", "special_tokens"})
DIALOGUE_MASK = "dialogue_mask"
BATCH_AXIS = "batch"
UTTERANCE_AXIS = "utterances"
LONG_VERIFICATION_LENGTH = 300
"""Frames/tokens of the long verification batch (6 s of 50 Hz frames, past ``max_frames=128``)."""


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the exported graph.

    ``shape`` holds ints for fixed sizes and axis names for dynamic ones; ``modality`` and
    ``field`` say where an input comes from in the batch (``field`` ``"mask"`` with modality
    None is the dialogue mask); for an aux output ``field`` is its key in ``ModelOutput.aux``.
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    modality: str | None = None
    field: str | None = None


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and how: the model and spec paths, the graph's inputs and
    outputs, the exporter that succeeded, what was verified, and the tracer's warnings."""

    model_name: str
    path: Path
    spec_path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    ignored_inputs: list[str]
    opset: int
    exporter: str
    verified_max_abs_diff: float | None
    trace_warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


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
            f"B={b.batch_size} " + " ".join(f"{k}={v}" for k, v in b.lengths.items())
            + f": |Δlogits| {b.max_abs_logits:.1e}, |Δprobs| {b.max_abs_probs:.1e}" for b in self.batches)
        return f"{verdict} (atol {self.atol:g}): {rows}"


# ---------------------------------------------------------------------------------------------
# The flat-tensor contract
# ---------------------------------------------------------------------------------------------

def _length_axis(modality: str) -> str:
    return f"{modality}_length"


def input_specs(batch: Batch | DialogueBatch) -> list[TensorSpec]:
    """The graph inputs for batches shaped like ``batch``, in the fixed order (module docstring)."""
    specs: list[TensorSpec] = []
    if isinstance(batch, DialogueBatch):
        for modality in batch.modalities:
            dim = int(batch.inputs[modality].shape[-1])
            specs.append(TensorSpec(f"{modality}_states", "float32", (BATCH_AXIS, UTTERANCE_AXIS, dim), modality, "states"))
        specs.append(TensorSpec(DIALOGUE_MASK, "bool", (BATCH_AXIS, UTTERANCE_AXIS), None, "mask"))
        return specs
    for modality in batch.modalities:
        source = batch.inputs[modality]
        length = _length_axis(modality)
        for name in MODALITY_FIELDS:
            tensor = getattr(source, name)
            if tensor is None:
                continue
            if name in MASK_FIELDS:
                shape: tuple[int | str, ...] = (BATCH_AXIS, length)
                dtype = "bool"
            elif name == "states":
                shape, dtype = (BATCH_AXIS, length, int(tensor.shape[-1])), "float32"
            elif name == "layer_states":
                shape, dtype = (BATCH_AXIS, int(tensor.shape[1]), length, int(tensor.shape[-1])), "float32"
            else:  # pooled
                shape, dtype = (BATCH_AXIS, int(tensor.shape[-1])), "float32"
            specs.append(TensorSpec(f"{modality}_{name}", dtype, shape, modality, name))
    return specs


def _tensor_of(batch: Batch | DialogueBatch, spec: TensorSpec) -> torch.Tensor | None:
    if isinstance(batch, DialogueBatch):
        return batch.mask if spec.modality is None else batch.inputs.get(spec.modality)
    source = batch.inputs.get(spec.modality or "")
    return None if source is None else getattr(source, spec.field or "")


def flatten_batch(batch: Batch | DialogueBatch, specs: Sequence[TensorSpec]) -> tuple[torch.Tensor, ...]:
    """The batch's tensors in ``specs`` order, masks as bool and states as float32.

    :class:`ConfigError` names an input the batch lacks or whose fixed size differs.
    """
    tensors = []
    for spec in specs:
        tensor = _tensor_of(batch, spec)
        if tensor is None:
            raise ConfigError(f"the exported model takes input {spec.name!r} but the batch has no "
                              f"{spec.modality or 'dialogue'} {spec.field}; build batches with the same "
                              "modalities and extras as the export example")
        if tensor.dim() != len(spec.shape):
            raise ConfigError(f"input {spec.name!r} needs {len(spec.shape)} dimensions {list(spec.shape)}, "
                              f"got shape {tuple(tensor.shape)}")
        for axis, size in enumerate(spec.shape):
            if isinstance(size, int) and int(tensor.shape[axis]) != size:
                raise ConfigError(f"input {spec.name!r} has size {int(tensor.shape[axis])} on axis {axis} but the "
                                  f"exported model was built for {size} (shape {list(spec.shape)})")
        tensors.append(tensor.detach().cpu().to(torch.bool if spec.dtype == "bool" else torch.float32))
    return tuple(tensors)


def batch_feed(batch: Batch | DialogueBatch, spec: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The onnxruntime input dict for ``batch`` under a loaded I/O spec (:func:`load_spec`)."""
    specs = [_spec_from_json(item) for item in spec["inputs"]]
    kind = "dialogue" if isinstance(batch, DialogueBatch) else "utterance"
    if kind != spec["batch_kind"]:
        raise ConfigError(f"the exported model {spec['model']!r} takes {spec['batch_kind']} batches, got a {kind} batch")
    return {s.name: t.numpy() for s, t in zip(specs, flatten_batch(batch, specs))}


class BatchWrapper(nn.Module):
    """Takes the flat tensors of :func:`input_specs` (in order), rebuilds the batch, calls the
    model and returns ``(logits, *aux)`` with the aux tensors named in ``aux_keys``."""

    def __init__(self, model: EmotionModel, specs: Sequence[TensorSpec], aux_keys: Sequence[str],
                 frame_rates: Mapping[str, float | None], dialogue: bool):
        super().__init__()
        self.model = model
        self.specs = list(specs)
        self.aux_keys = list(aux_keys)
        self.frame_rates = dict(frame_rates)
        self.dialogue = dialogue

    def rebuild(self, tensors: Sequence[torch.Tensor]) -> Batch | DialogueBatch:
        """The batch the flat tensors stand for."""
        if self.dialogue:
            inputs = {s.modality: t for s, t in zip(self.specs, tensors) if s.modality is not None}
            mask = next(t for s, t in zip(self.specs, tensors) if s.modality is None)
            return DialogueBatch(inputs=inputs, mask=mask)
        fields: dict[str, dict[str, torch.Tensor]] = {}
        for spec, tensor in zip(self.specs, tensors):
            fields.setdefault(spec.modality, {})[spec.field] = tensor
        return Batch(inputs={m: ModalityInput(**values, frame_rate=self.frame_rates.get(m)) for m, values in fields.items()})

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(self.rebuild(tensors))
        return (output.logits, *(output.aux[key] for key in self.aux_keys))


def _aux_keys(output_aux: Mapping[str, Any], batch_size: int) -> list[str]:
    """Aux entries that are per-row tensors (first dimension B), in the model's order."""
    return [key for key, value in output_aux.items()
            if isinstance(value, torch.Tensor) and value.dim() >= 1 and int(value.shape[0]) == batch_size]


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _output_specs(outputs: Sequence[torch.Tensor], aux_keys: Sequence[str], utterances: int | None) -> list[TensorSpec]:
    specs = []
    for index, tensor in enumerate(outputs):
        shape: list[int | str] = [BATCH_AXIS, *(int(s) for s in tensor.shape[1:])]
        if utterances is not None and len(shape) >= 2 and shape[1] == utterances:
            shape[1] = UTTERANCE_AXIS
        name = "logits" if index == 0 else f"aux_{aux_keys[index - 1]}"
        specs.append(TensorSpec(name, _dtype_name(tensor), tuple(shape), None, None if index == 0 else aux_keys[index - 1]))
    return specs


def _dynamic_axes(specs: Iterable[TensorSpec]) -> dict[str, dict[int, str]]:
    return {s.name: {axis: size for axis, size in enumerate(s.shape) if isinstance(size, str)} for s in specs}


def spec_path_for(onnx_path: str | Path) -> Path:
    """Where the I/O spec of ``model.onnx`` lives: ``model.onnx_io_spec.json`` beside it."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.stem + ".onnx_io_spec.json")


def _spec_from_json(item: Mapping[str, Any]) -> TensorSpec:
    return TensorSpec(item["name"], item["dtype"], tuple(item["shape"]), item.get("modality"), item.get("field"))


def load_spec(onnx_path: str | Path) -> dict[str, Any]:
    """The I/O spec written beside an exported model (:class:`ConfigError` when it is missing)."""
    path = spec_path_for(onnx_path)
    if not path.exists():
        raise ConfigError(f"{path} does not exist: an emomix ONNX model needs the I/O spec export_onnx writes "
                          "beside it; re-export the model with emomix.infer.export.export_onnx")
    spec = json.loads(path.read_text())
    if spec.get("format") != SPEC_FORMAT:
        raise ConfigError(f"{path}: unknown I/O spec format {spec.get('format')!r}; expected {SPEC_FORMAT}")
    return spec


# ---------------------------------------------------------------------------------------------
# Random batches shaped like an example (verification, tests, --check-all)
# ---------------------------------------------------------------------------------------------

def _prefix_mask(lengths: Sequence[int], width: int) -> torch.Tensor:
    return torch.arange(width).unsqueeze(0) < torch.tensor(list(lengths)).unsqueeze(1)


def random_batch_like(example: Batch | DialogueBatch, batch_size: int, lengths: Mapping[str, int] | int | None = None,
                      seed: int = 0) -> Batch | DialogueBatch:
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
        inputs = {m: torch.randn(batch_size, width, int(x.shape[-1]), generator=generator) for m, x in example.inputs.items()}
        return DialogueBatch(inputs=inputs, mask=mask)
    inputs = {}
    for modality, source in example.inputs.items():
        width = size_of(modality, int(source.states.shape[1]))
        valid = row_lengths(width)
        mask = _prefix_mask(valid, width)
        item = ModalityInput(states=torch.randn(batch_size, width, source.dim, generator=generator), mask=mask,
                             frame_rate=source.frame_rate)
        if source.speech_mask is not None:
            item.speech_mask = (torch.rand(batch_size, width, generator=generator) < 0.6) & mask
        if source.special_tokens is not None:
            special = ~mask
            special[:, 0] = True
            special[torch.arange(batch_size), torch.tensor(valid) - 1] = True
            item.special_tokens = special
        if source.layer_states is not None:
            item.layer_states = torch.randn(batch_size, int(source.layer_states.shape[1]), width, source.dim,
                                            generator=generator)
        if source.pooled is not None:
            item.pooled = torch.randn(batch_size, int(source.pooled.shape[-1]), generator=generator)
        inputs[modality] = item
    return Batch(inputs=inputs)


def _verification_batches(example: Batch | DialogueBatch) -> list[Batch | DialogueBatch]:
    """Three batches with other batch sizes and lengths than the example: a little larger, a
    little smaller, and a long one (at least :data:`LONG_VERIFICATION_LENGTH` positions, past the
    length limits some models switch behaviour at, e.g. frame pooling beyond ``max_frames``)."""
    size = example.batch_size
    if isinstance(example, DialogueBatch):
        width = int(example.mask.shape[1])
        return [random_batch_like(example, size + 2, width + 3, seed=1001),
                random_batch_like(example, max(1, size - 1), max(1, width - 1), seed=1002),
                random_batch_like(example, 2, max(4 * width, 40), seed=1003)]
    lengths = {m: int(x.states.shape[1]) for m, x in example.inputs.items()}
    return [random_batch_like(example, size + 2, {m: n + 5 for m, n in lengths.items()}, seed=1001),
            random_batch_like(example, max(1, size - 1), {m: max(1, n - 2) for m, n in lengths.items()}, seed=1002),
            random_batch_like(example, 2, {m: max(4 * n, LONG_VERIFICATION_LENGTH) for m, n in lengths.items()},
                              seed=1003)]


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------

_OPERATOR_PATTERNS = (
    re.compile(r"'((?:aten|prim|onnx)::[\w.]+)'"),               # exporter: Exporting the operator 'aten::x'
    re.compile(r"\b((?:aten|prim)::\w+)"),
    re.compile(r"of operator \((\w+)\)"),                        # onnxruntime: type error of operator (X)
    re.compile(r"implementation for (\w+)\(\d+\) node"),           # onnxruntime: no kernel for X(opset)
)


def _describe_failure(exc: BaseException) -> str:
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


def _short_path(filename: str) -> str:
    """``.../site-packages/torch_geometric/utils/x.py`` → ``torch_geometric/utils/x.py``."""
    parts = Path(filename).parts
    for root in ("emomix", "torch_geometric", "torch"):
        if root in parts:
            return "/".join(parts[len(parts) - 1 - parts[::-1].index(root):])
    return Path(filename).name


def _frozen_lines(messages: Sequence[str]) -> str:
    """The source lines the tracer froze into constants, from its warnings."""
    lines = [m.split(": ", 1)[0] for m in messages if m.startswith(("emomix/", "torch_geometric/"))]
    return "; ".join(lines[:3])


def _traceable_attention(self: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                          attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                          is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``nn.MultiheadAttention.forward`` in plain tensor ops whose shapes the tracer keeps dynamic.

    PyTorch's own implementation unpacks sizes into Python ints, which the tracer freezes (a
    self-attention graph then only runs at the example's length). Eval mode only (no dropout);
    configurations this does not cover fall back to the original forward.
    """
    if (attn_mask is not None or is_causal or not self._qkv_same_embed_dim or self.bias_k is not None
            or self.add_zero_attn or query.dim() != 3 or self.training):
        return _ORIGINAL_FORWARD[nn.MultiheadAttention](self, query, key, value, key_padding_mask=key_padding_mask,
                                                        need_weights=need_weights, attn_mask=attn_mask,
                                                        average_attn_weights=average_attn_weights, is_causal=is_causal)
    if not self.batch_first:
        query, key, value = (x.transpose(0, 1) for x in (query, key, value))
    dim, heads = self.embed_dim, self.num_heads
    weight, bias = self.in_proj_weight, self.in_proj_bias
    parts = [(weight[i * dim:(i + 1) * dim], None if bias is None else bias[i * dim:(i + 1) * dim]) for i in range(3)]
    q, k, v = (torch.nn.functional.linear(x, w, b).unflatten(-1, (heads, dim // heads)).transpose(1, 2)
               for x, (w, b) in zip((query, key, value), parts))
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(dim // heads))
    if key_padding_mask is not None:
        padding = key_padding_mask[:, None, None, :]
        scores = (scores.masked_fill(padding, float("-inf")) if padding.dtype == torch.bool
                  else scores + padding.to(scores.dtype))
    weights = torch.softmax(scores, dim=-1)
    out = self.out_proj(torch.matmul(weights, v).transpose(1, 2).flatten(2))
    if not self.batch_first:
        out = out.transpose(0, 1)
    if not need_weights:
        return out, None
    return out, weights.mean(dim=1) if average_attn_weights else weights


def _tie_packed_output(original: Any) -> Any:
    """Wrap ``nn.LSTM``/``nn.GRU.forward``: on a packed input, make the final state depend on the
    unpacked output (``+ 0·sum``, exact for the finite outputs of an RNN). The TorchScript
    exporter crashes (``vector::_M_range_check`` in its peephole pass) on a packed RNN whose
    output sequence is unused, which is how models read only the final state."""

    def forward(self: nn.RNNBase, input: Any, hx: Any = None) -> Any:
        output, hidden = original(self, input, hx)
        if isinstance(input, nn.utils.rnn.PackedSequence):
            padded, _ = nn.utils.rnn.pad_packed_sequence(output, batch_first=self.batch_first)
            tie = padded.sum() * 0.0
            hidden = tuple(h + tie for h in hidden) if isinstance(hidden, tuple) else hidden + tie
        return output, hidden

    return forward


_ORIGINAL_FORWARD: dict[type, Any] = {cls: cls.forward for cls in (nn.MultiheadAttention, nn.LSTM, nn.GRU)}


@contextlib.contextmanager
def _export_friendly_modules() -> Iterator[None]:
    """Swap in trace-friendly forwards of ``nn.MultiheadAttention``, ``nn.LSTM`` and ``nn.GRU``
    while exporting (the same maths; the verification compares against the unpatched model)."""
    current = {cls: cls.forward for cls in _ORIGINAL_FORWARD}
    try:
        nn.MultiheadAttention.forward = _traceable_attention  # type: ignore[method-assign]
        nn.LSTM.forward = _tie_packed_output(_ORIGINAL_FORWARD[nn.LSTM])  # type: ignore[method-assign]
        nn.GRU.forward = _tie_packed_output(_ORIGINAL_FORWARD[nn.GRU])  # type: ignore[method-assign]
        yield
    finally:
        for cls, forward in current.items():
            cls.forward = forward  # type: ignore[method-assign]


def _session(path: Path, threads: int | None = 1) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: shape-inference notes on dynamic outputs are noise
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _export_torchscript(wrapper: BatchWrapper, args: tuple[torch.Tensor, ...], path: Path, specs: list[TensorSpec],
                        outputs: list[TensorSpec], opset: int) -> None:
    torch.onnx.export(
        wrapper, args, str(path), dynamo=False, opset_version=opset,
        input_names=[s.name for s in specs], output_names=[o.name for o in outputs],
        dynamic_axes={**_dynamic_axes(specs), **_dynamic_axes(outputs)}, do_constant_folding=True,
    )


def _export_dynamo(wrapper: BatchWrapper, args: tuple[torch.Tensor, ...], path: Path, specs: list[TensorSpec],
                   outputs: list[TensorSpec], opset: int) -> None:
    if importlib.util.find_spec("onnxscript") is None:
        raise ConfigError("the dynamo exporter needs the onnxscript package (pip install onnxscript)")
    # one named Dim per axis name, shared by every input that has that axis; the wrapper's
    # ``*tensors`` takes a list of per-input specs
    dims: dict[str, Any] = {}
    per_input = [{axis: dims.setdefault(size, torch.export.Dim(size)) for axis, size in enumerate(s.shape)
                  if isinstance(size, str)} for s in specs]
    program = torch.onnx.export(
        wrapper, args, dynamo=True, opset_version=opset,
        input_names=[s.name for s in specs], output_names=[o.name for o in outputs],
        dynamic_shapes=(tuple(per_input),), external_data=False,
    )
    program.save(str(path))


_EXPORTERS = {"torchscript": _export_torchscript, "dynamo": _export_dynamo}


def export_onnx(model: EmotionModel, example_batch: Batch | DialogueBatch, path: str | Path, opset: int = DEFAULT_OPSET,
                classes: Sequence[str] | None = None, verify: bool = True, atol: float = 1e-4,
                exporters: Sequence[str] = ("torchscript", "dynamo"), name: str | None = None) -> ExportResult:
    """Export ``model``'s forward pass to ``path`` (ONNX) and write its I/O spec beside it.

    ``example_batch`` fixes which inputs the graph takes (its modalities and extras) and their
    fixed sizes; batch size and lengths stay dynamic. The model is copied to CPU in eval mode
    (the caller's model is untouched). With ``verify`` the graph must reproduce PyTorch within
    ``atol`` on two batches of other sizes (see the module docstring); exporters are tried in
    order until one passes. ``classes`` (names, in logit order) are stored in the spec; ``name``
    (default: the model class's registry name) names the model in the spec and in errors.

    Raises :class:`ConfigError` naming the model and the unsupported operator (or the source
    line the tracer froze) when no exporter gives a working graph; nothing is left at ``path``.
    """
    started = time.perf_counter()
    path = Path(path)
    name = name or getattr(model, "name", "") or type(model).__name__
    dialogue = isinstance(example_batch, DialogueBatch)
    kind = "dialogue" if dialogue else "utterance"
    expected = getattr(model, "batch_kind", kind)
    if expected != kind:
        raise ConfigError(f"model {name!r} takes {expected} batches but the example is a {kind} batch")
    if not dialogue and example_batch.edges is not None:
        raise ConfigError(f"model {name!r}: ONNX export takes no token–frame edges (per-utterance tensors of varying "
                          "size); give an example batch without edges (graph models then use their spread fallback, "
                          "if they export at all) or serve the PyTorch model")
    num_classes = getattr(model, "num_classes", None)
    if classes is not None and num_classes is not None and len(classes) != num_classes:
        raise ConfigError(f"model {name!r} has {num_classes} classes but {len(classes)} class names were given")
    unknown = [e for e in exporters if e not in _EXPORTERS]
    if unknown or not exporters:
        raise ConfigError(f"unknown exporter(s) {unknown}; choose from {', '.join(_EXPORTERS)}")

    module = copy.deepcopy(model).cpu().eval()
    specs = input_specs(example_batch)
    args = flatten_batch(example_batch, specs)
    frame_rates = {} if dialogue else {m: x.frame_rate for m, x in example_batch.inputs.items()}
    with torch.no_grad():
        probe = module(BatchWrapper(module, specs, [], frame_rates, dialogue).rebuild(args))
    aux_keys = _aux_keys(probe.aux, example_batch.batch_size)
    wrapper = BatchWrapper(module, specs, aux_keys, frame_rates, dialogue).eval()
    with torch.no_grad():
        example_outputs = wrapper(*args)
    outputs = _output_specs(example_outputs, aux_keys, int(example_batch.mask.shape[1]) if dialogue else None)

    path.parent.mkdir(parents=True, exist_ok=True)
    geometric = any(type(m).__module__.startswith("torch_geometric") for m in module.modules())
    failures: list[str] = []
    for exporter in exporters:
        # write beside the target under a temporary name: a failed export leaves an earlier file alone
        scratch = path.with_name(f".{path.stem}.{os.getpid()}.{exporter}.onnx")
        document = functools.partial(_spec_document, name=name, kind=kind, opset=opset, exporter=exporter,
                                     outputs=outputs, frame_rates=frame_rates, classes=classes, model=module)
        outcome: tuple[list[TensorSpec], list[str], list[str], float | None] | str = "interrupted"
        try:
            outcome = _export_and_verify(exporter, wrapper, args, scratch, specs, outputs, opset,
                                         example_batch if verify else None, atol, document)
        finally:
            if not isinstance(outcome, tuple):
                _remove(scratch, spec_path_for(scratch))
        if isinstance(outcome, str):
            failures.append(f"{exporter}: {outcome}")
            continue
        used, ignored, messages, verified = outcome
        os.replace(scratch, path)
        os.replace(spec_path_for(scratch), spec_path_for(path))
        return ExportResult(name, path, spec_path_for(path), used, outputs, ignored, opset, exporter, verified,
                            messages, time.perf_counter() - started)
    hint = (" (the model builds per-utterance torch_geometric graphs from Python lists of edges, which a traced "
            "graph cannot follow)" if geometric else "")
    raise ConfigError(f"model {name!r} cannot be exported to ONNX{hint}: " + " | ".join(failures)
                      + "; serve the PyTorch model instead")


def _export_and_verify(exporter: str, wrapper: BatchWrapper, args: tuple[torch.Tensor, ...], path: Path,
                       specs: list[TensorSpec], outputs: list[TensorSpec], opset: int,
                       example: Batch | DialogueBatch | None, atol: float,
                       document: Any) -> tuple[list[TensorSpec], list[str], list[str], float | None] | str:
    """One exporter: export to ``path``, make the graph onnxruntime-compatible, write its spec,
    load it in onnxruntime and (with an ``example``) verify it on other shapes.

    Returns ``(inputs used, inputs ignored, tracer warnings, verified max diff)`` or the reason
    it failed.
    """
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # with gradients enabled, an nn.MultiheadAttention left to PyTorch's forward skips
            # its fused inference kernel (aten::_native_multi_head_attention, no ONNX symbolic)
            with torch.enable_grad(), _export_friendly_modules():
                _EXPORTERS[exporter](wrapper, args, path, specs, outputs, opset)
    except Exception as exc:  # the exporters raise many types; every one means "this exporter failed"
        return _describe_failure(exc)
    messages = sorted({f"{_short_path(w.filename)}:{w.lineno}: {str(w.message).splitlines()[0]}"
                       for w in caught if issubclass(w.category, torch.jit.TracerWarning)})
    _make_ort_compatible(path)
    graph_inputs = _graph_input_names(path)
    used = [s for s in specs if s.name in graph_inputs]
    ignored = [s.name for s in specs if s.name not in graph_inputs]
    spec_path_for(path).write_text(json.dumps(document(used, ignored, messages), indent=2) + "\n")
    try:
        _session(path)
    except Exception as exc:  # onnxruntime rejects the graph: an operator or type it has no kernel for
        return f"onnxruntime rejects the exported graph ({_describe_failure(exc)})" + _frozen_hint(messages)
    if example is None:
        return used, ignored, messages, None
    try:
        report = check_parity(wrapper, path, _verification_batches(example), atol=atol)
    except Exception as exc:  # e.g. a reshape to a size the tracer froze
        return (f"the exported graph fails in onnxruntime on other batch sizes or lengths ({_describe_failure(exc)})"
                + _frozen_hint(messages))
    if not report.ok:
        return (f"the exported graph does not reproduce PyTorch on other batch sizes or lengths ({report.summary()})"
                + _frozen_hint(messages))
    return used, ignored, messages, max(report.max_abs_logits, report.max_abs_probs)


def _frozen_hint(messages: Sequence[str]) -> str:
    frozen = _frozen_lines(messages)
    return f"; the tracer froze Python values at {frozen}" if frozen else ""


def _remove(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def _make_ort_compatible(path: Path) -> int:
    """Rewrite ``Where`` nodes that select between bool tensors (``torch.where`` on masks) as
    ``Cast(uint8) → Where → Cast(bool)``: ONNX allows bool there, onnxruntime's CPU kernel does
    not. Returns the number of nodes rewritten (the file is only written when there are any)."""
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    nodes = []
    rewritten = 0
    for node in proto.graph.node:
        if node.op_type != "Where" or types.get(node.input[1]) != TensorProto.BOOL:
            nodes.append(node)
            continue
        rewritten += 1
        prefix = node.name or f"where_{rewritten}"
        x8, y8, out8 = (f"{prefix}/x_u8", f"{prefix}/y_u8", f"{prefix}/out_u8")
        nodes += [
            helper.make_node("Cast", [node.input[1]], [x8], name=f"{prefix}/cast_x", to=TensorProto.UINT8),
            helper.make_node("Cast", [node.input[2]], [y8], name=f"{prefix}/cast_y", to=TensorProto.UINT8),
            helper.make_node("Where", [node.input[0], x8, y8], [out8], name=prefix),
            helper.make_node("Cast", [out8], [node.output[0]], name=f"{prefix}/cast_out", to=TensorProto.BOOL),
        ]
    if rewritten:
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        onnx.save(proto, str(path))
    return rewritten


def _graph_input_names(path: Path) -> set[str]:
    import onnx

    return {i.name for i in onnx.load(str(path), load_external_data=False).graph.input}


def _spec_document(inputs: list[TensorSpec], ignored: list[str], trace_warnings: Sequence[str], *, name: str, kind: str,
                   opset: int, exporter: str, outputs: list[TensorSpec], frame_rates: Mapping[str, float | None],
                   classes: Sequence[str] | None, model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return {
        "format": SPEC_FORMAT,
        "model": name,
        "batch_kind": kind,
        "opset": opset,
        "exporter": exporter,
        "mask_dtype": "bool",
        "inputs": [_spec_json(s) for s in inputs],
        "ignored_inputs": ignored,
        "outputs": [_spec_json(s) for s in outputs],
        "frame_rates": dict(frame_rates),
        "classes": list(classes) if classes is not None else None,
        "num_classes": getattr(model, "num_classes", None),
        "input_dims": dict(getattr(model, "input_dims", {})),
        "model_config": config.to_dict() if hasattr(config, "to_dict") else None,
        "frozen_by_tracer": [m.split(": ", 1)[0] for m in trace_warnings],
    }


def _spec_json(spec: TensorSpec) -> dict[str, Any]:
    item = asdict(spec)
    item["shape"] = list(spec.shape)
    return {k: v for k, v in item.items() if v is not None}


# ---------------------------------------------------------------------------------------------
# Running an exported model, parity
# ---------------------------------------------------------------------------------------------

class OnnxModel:
    """An exported model run by onnxruntime (CPUExecutionProvider), fed :class:`Batch` /
    :class:`DialogueBatch` objects like the PyTorch model."""

    def __init__(self, path: str | Path, threads: int | None = 1):
        self.path = Path(path)
        if not self.path.exists():
            raise ConfigError(f"{self.path} does not exist; export the model with emomix.infer.export.export_onnx")
        self.spec = load_spec(self.path)
        self.session = _session(self.path, threads)
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
    return {_length_axis(m): int(x.states.shape[1]) for m, x in batch.inputs.items()}


def check_parity(model: EmotionModel | BatchWrapper, onnx_path: str | Path, batches: Sequence[Batch | DialogueBatch],
                 atol: float = 1e-4) -> ParityReport:
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
        results.append(ParityBatchResult(
            batch_size=batch.batch_size, lengths=_lengths(batch),
            max_abs_logits=_max_abs(torch_logits, onnx_logits),
            max_abs_probs=_max_abs(_softmax(torch_logits), _softmax(onnx_logits)),
            max_abs_aux=aux_diffs,
            argmax_agreement=float(np.mean(torch_logits.argmax(-1) == onnx_logits.argmax(-1))) if torch_logits.size else 1.0,
        ))
    return ParityReport(Path(onnx_path), atol, results)


def _output_diff(expected: np.ndarray, got: np.ndarray) -> float:
    """Max abs difference of a float output; for a bool output the fraction of values that differ."""
    if expected.shape != got.shape:
        return math.inf
    if expected.dtype == np.bool_ or got.dtype == np.bool_:
        return float(np.mean(expected != got)) if expected.size else 0.0
    return _max_abs(expected.astype(np.float64), got.astype(np.float64))


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Max abs difference, with equal infinities (log of a clamped zero) counted as equal."""
    if a.size == 0:
        return 0.0
    same = (a == b)
    diff = np.where(same, 0.0, np.abs(a.astype(np.float64) - b.astype(np.float64)))
    diff = np.where(np.isnan(diff), math.inf, diff)
    return float(diff.max())


# ---------------------------------------------------------------------------------------------
# Encoders: a transformers text encoder as its own graph (emomix export --encoders)
# ---------------------------------------------------------------------------------------------

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
        return ("openSMILE is a C++ library (the opensmile package calls its native engine); its features are not a "
                "PyTorch graph, so there is nothing to trace: compute them with openSMILE and the same feature set")
    if isinstance(encoder, MFCCEncoder):
        return ("MFCCs are computed by librosa in NumPy, not by a PyTorch graph: compute them with "
                "emomix.audio.features.mfcc (or librosa with the same settings)")
    if isinstance(encoder, SpeechSSLEncoder):
        return ("emomix exports transformers text encoders only; a speech SSL encoder (waveform in, VAD and frame "
                "stride around it) is not attempted: run it in PyTorch")
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
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **extra).hidden_states
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
        rows = "; ".join(f"B={b.batch_size} {SEQUENCE_AXIS}={b.sequence_length}: |Δ| {max(b.max_abs.values()):.1e}"
                         for b in self.batches)
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
            raise ConfigError(f"{self.path} (with {spec_path.name}) does not exist; export the encoder with "
                              "emomix.infer.export.export_text_encoder or `emomix export --encoders`")
        self.spec = json.loads(spec_path.read_text())
        if self.spec.get("format") != TEXT_ENCODER_FORMAT:
            raise ConfigError(f"{spec_path}: not a text encoder spec (format {self.spec.get('format')!r})")
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(self.path.parent / self.spec["tokenizer"]))
        self.tokenizer = tokenizer
        self.session = _session(self.path, threads)
        self.output_names = [o["name"] for o in self.spec["outputs"]]

    def tokenize(self, texts: Sequence[str | None]) -> dict[str, np.ndarray]:
        """``input_ids``, ``attention_mask`` and ``special_tokens_mask`` as the encoder tokenises."""
        cleaned = ["" if t is None or not str(t).strip() else str(t) for t in texts]
        return dict(self.tokenizer(cleaned, padding=True, truncation=True, max_length=int(self.spec["max_length"]),
                                   return_special_tokens_mask=True, return_tensors="np"))

    def run(self, texts: Sequence[str | None]) -> dict[str, np.ndarray]:
        """Every output by name, with ``mask`` (valid tokens) and ``special_tokens`` (bool)."""
        encoded = self.tokenize(texts)
        feed = {name: encoded[name].astype(np.int64) for name in ("input_ids", "attention_mask")}
        values = dict(zip(self.output_names, self.session.run(self.output_names, feed)))
        mask = encoded["attention_mask"].astype(bool)
        values["mask"] = mask
        values["special_tokens"] = encoded["special_tokens_mask"].astype(bool) & mask
        return values


def export_text_encoder(encoder: Any, path: str | Path, layers: Sequence[int] = (), texts: Sequence[str] = (),
                        check_batches: Sequence[Sequence[str]] | None = None, opset: int = DEFAULT_OPSET,
                        atol: float = 1e-4) -> TextEncoderExport:
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
        raise ConfigError(f"encoder {getattr(encoder, 'name', type(encoder).__name__)!r} cannot be exported to ONNX: {reason}")
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
            torch.onnx.export(graph, args, str(scratch), dynamo=False, opset_version=opset,
                              input_names=["input_ids", "attention_mask"], output_names=names,
                              dynamic_axes={n: {0: BATCH_AXIS, 1: SEQUENCE_AXIS} for n in ["input_ids", "attention_mask", *names]},
                              do_constant_folding=True)
        messages = sorted({f"{_short_path(w.filename)}:{w.lineno}: {str(w.message).splitlines()[0]}"
                           for w in caught if issubclass(w.category, torch.jit.TracerWarning)})
        spec = _text_spec(encoder, graph, opset, tokenizer_dir.name, messages)
        spec_path_for(scratch).write_text(json.dumps(spec, indent=2) + "\n")
        batches = [list(b) for b in check_batches] if check_batches else [texts, texts[:1]]
        parity = check_text_encoder_parity(encoder, scratch, batches, atol=atol)
    except ConfigError:
        _remove(scratch, spec_path_for(scratch))
        raise
    except Exception as exc:  # the exporter and onnxruntime raise many types; each means "did not export"
        _remove(scratch, spec_path_for(scratch))
        raise ConfigError(f"text encoder '{encoder.name}' cannot be exported to ONNX ({_describe_failure(exc)})") from exc
    finally:
        encoder.model.to(device)
    if not parity.ok:
        _remove(scratch, spec_path_for(scratch))
        raise ConfigError(f"the exported text encoder '{encoder.name}' does not reproduce PyTorch ({parity.summary()})"
                          + _frozen_hint(messages) + "; run the encoder in PyTorch instead")
    encoder.tokenizer.save_pretrained(str(tokenizer_dir))
    os.replace(scratch, path)
    os.replace(spec_path_for(scratch), spec_path_for(path))
    parity.onnx_path = path
    return TextEncoderExport(path, spec_path_for(path), tokenizer_dir, names, parity, messages, time.perf_counter() - started)


def check_text_encoder_parity(encoder: Any, onnx_path: str | Path, text_batches: Sequence[Sequence[str]],
                              atol: float = 1e-4) -> TextParityReport:
    """Run the PyTorch encoder (``encode``, with hidden states) and the ONNX graph on each batch
    of texts and report the max abs difference of every output over the valid tokens."""
    runner = OnnxTextEncoder(onnx_path, tokenizer=encoder.tokenizer)
    results = []
    for texts in text_batches:
        expected = encoder.encode(list(texts), output_hidden_states=True)
        got = runner.run(list(texts))
        mask = expected.mask.cpu().numpy().astype(bool)
        reference = {"states": expected.states}
        reference.update({name: expected.hidden_states[int(name.split("_", 1)[1])]
                          for name in runner.output_names if name.startswith("layer_")})
        diffs = {}
        for name in runner.output_names:
            want = reference[name].detach().cpu().float().numpy()
            have = got[name]
            diffs[name] = math.inf if want.shape != have.shape or not np.array_equal(got["mask"], mask) \
                else _max_abs(want[mask], have[mask])
        results.append(TextParityBatch(len(texts), int(mask.shape[1]), diffs))
    return TextParityReport(Path(onnx_path), atol, results)


def _text_spec(encoder: Any, graph: TextEncoderGraph, opset: int, tokenizer_dir: str,
               messages: Sequence[str]) -> dict[str, Any]:
    dim = int(encoder.output_size)
    outputs = [{"name": "states", "dtype": "float32", "shape": [BATCH_AXIS, SEQUENCE_AXIS, dim], "layer": graph.state_layer}]
    outputs += [{"name": f"layer_{k}", "dtype": "float32", "shape": [BATCH_AXIS, SEQUENCE_AXIS, dim], "layer": k}
                for k in graph.layers]
    return {
        "format": TEXT_ENCODER_FORMAT,
        "encoder": encoder.config(),
        "opset": opset,
        "exporter": "torchscript",
        "inputs": [{"name": name, "dtype": "int64", "shape": [BATCH_AXIS, SEQUENCE_AXIS]}
                   for name in ("input_ids", "attention_mask")],
        "outputs": outputs,
        "tokenizer": tokenizer_dir,
        "max_length": int(encoder.max_length),
        "outside_the_graph": list(TEXT_OUTSIDE_THE_GRAPH),
        "frozen_by_tracer": [m.split(": ", 1)[0] for m in messages],
    }


# ---------------------------------------------------------------------------------------------
# Every registered model: which export (python -m emomix.infer.export --check-all)
# ---------------------------------------------------------------------------------------------

CHECK_DIMS = {"audio": 12, "text": 16, "video": 8}
"""Tiny input widths of :func:`check_all` (the models' own default widths are kept)."""


def example_batch_for(model_name: str, dims: Mapping[str, int] | None = None, batch_size: int = 3,
                      seed: int = 0) -> Batch | DialogueBatch:
    """A random example batch for a registered model with every extra a feature-store batch can
    carry: audio with a VAD ``speech_mask`` (50 frames/s), text with ``special_tokens`` and the
    last 4 layers' ``layer_states``; a dialogue batch for conversation models."""
    from emomix.models.base import model_info

    info = model_info(model_name)
    dims = {**CHECK_DIMS, **dict(dims or {})}
    if info.batch_kind == "dialogue":
        proto = DialogueBatch(inputs={m: torch.zeros(1, 1, dims[m]) for m in info.modalities},
                              mask=torch.ones(1, 1, dtype=torch.bool))
        return random_batch_like(proto, batch_size, 6, seed=seed)
    lengths = {"audio": 20, "text": 9, "video": 10}
    inputs = {}
    for modality in info.modalities:
        length = lengths[modality]
        item = ModalityInput(states=torch.zeros(1, length, dims[modality]), mask=torch.ones(1, length, dtype=torch.bool),
                             frame_rate=50.0 if modality == "audio" else None)
        if modality == "audio":
            item.speech_mask = item.mask.clone()
        if modality == "text":
            item.special_tokens = item.mask.clone()
            item.layer_states = torch.zeros(1, 4, length, dims[modality])
        inputs[modality] = item
    return random_batch_like(Batch(inputs=inputs), batch_size, seed=seed)


@dataclass
class CheckRow:
    """One model in :func:`check_all`."""

    model: str
    batch_kind: str
    exports: bool
    exporter: str | None = None
    max_abs_logits: float | None = None
    max_abs_probs: float | None = None
    ignored_inputs: list[str] = field(default_factory=list)
    megabytes: float | None = None
    seconds: float = 0.0
    reason: str = ""


def check_all(names: Sequence[str] | None = None, workdir: str | Path | None = None, atol: float = 1e-4,
              exporters: Sequence[str] = ("torchscript", "dynamo"), seed: int = 0) -> list[CheckRow]:
    """Export every registered model (or ``names``) with tiny inputs, then check parity on two
    fresh batches of other shapes (:func:`check_parity`); a row per model with the verdict."""
    from emomix.models.base import create_model, list_models

    registry = list_models()
    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for model_name in names or list(registry):
            info = registry[model_name] if model_name in registry else None
            if info is None:
                raise ConfigError(f"unknown model {model_name!r}; available: {', '.join(registry)}")
            torch.manual_seed(seed)
            dims = {m: CHECK_DIMS[m] for m in info.modalities}
            model = create_model(model_name, {}, dims, 4)
            example = example_batch_for(model_name, seed=seed)
            started = time.perf_counter()
            row = CheckRow(model_name, info.batch_kind, exports=False)
            try:
                result = export_onnx(model, example, Path(tmp) / f"{model_name}.onnx", atol=atol, exporters=exporters,
                                     name=model_name)
            except ConfigError as exc:
                row.reason = str(exc)
            else:
                others = _other_shapes(example, seed)
                report = check_parity(model, result.path, others, atol=atol)
                row.exports = report.ok
                row.exporter = result.exporter
                row.max_abs_logits, row.max_abs_probs = report.max_abs_logits, report.max_abs_probs
                row.ignored_inputs = result.ignored_inputs
                row.megabytes = result.path.stat().st_size / 1e6
                if not report.ok:
                    row.reason = report.summary()
            row.seconds = time.perf_counter() - started
            rows.append(row)
    return rows


def _other_shapes(example: Batch | DialogueBatch, seed: int) -> list[Batch | DialogueBatch]:
    """Two fresh batches for :func:`check_all`: 5 rows about twice as long, 1 row about half."""
    if isinstance(example, DialogueBatch):
        width = int(example.mask.shape[1])
        return [random_batch_like(example, 5, 2 * width + 3, seed=seed + 7),
                random_batch_like(example, 1, max(1, width // 2), seed=seed + 8)]
    lengths = {m: int(x.states.shape[1]) for m, x in example.inputs.items()}
    return [random_batch_like(example, 5, {m: 2 * n + 3 for m, n in lengths.items()}, seed=seed + 7),
            random_batch_like(example, 1, {m: max(1, n // 2) for m, n in lengths.items()}, seed=seed + 8)]


def _reason_summary(reason: str) -> str:
    """The short cause of a failure for the table: the operator and what was frozen."""
    operator = re.search(r"unsupported operator (\S+)", reason)
    frozen = re.search(r"froze Python values at ([^|;]+(?:; emomix[^|;]+)*)", reason)
    parts = []
    if "torch_geometric" in reason:
        parts.append("torch_geometric graph")
    if operator:
        parts.append(f"unsupported operator {operator.group(1)}")
    if "does not reproduce" in reason:
        parts.append("graph specialised to the example's shapes")
    if frozen:
        parts.append(f"frozen at {frozen.group(1).strip()}")
    return "; ".join(parts) or reason[:200]


def format_check_table(rows: Sequence[CheckRow]) -> str:
    """A Markdown table of :func:`check_all` rows."""
    lines = ["| model | batch | exports | max abs Δ logits | max abs Δ probs | MB | inputs the graph ignores | why not |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        diff = (lambda v: "—" if v is None else f"{v:.1e}")
        lines.append(f"| `{row.model}` | {row.batch_kind} | {'yes' if row.exports else '**no**'} | "
                     f"{diff(row.max_abs_logits)} | {diff(row.max_abs_probs)} | "
                     f"{'—' if row.megabytes is None else f'{row.megabytes:.2f}'} | "
                     f"{', '.join(f'`{n}`' for n in row.ignored_inputs) or '—'} | "
                     f"{'' if row.exports else _reason_summary(row.reason)} |")
    return "\n".join(lines)

