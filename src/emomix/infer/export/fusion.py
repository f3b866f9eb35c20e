"""Export of the fusion models: :func:`export_onnx` traces a model behind :class:`BatchWrapper`,
swaps the modules that do not trace well, makes the graph onnxruntime-compatible and verifies it
on other shapes than the example (see the package doc).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import json
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emomix.errors import ConfigError
from emomix.infer.export.parity import (
    check_parity,
    describe_failure,
    frozen_hint,
    ort_session,
    remove_files,
    short_path,
    verification_batches,
)
from emomix.infer.export.spec import (
    DEFAULT_OPSET,
    SPEC_FORMAT,
    BatchWrapper,
    TensorSpec,
    aux_output_keys,
    dynamic_axes,
    flatten_batch,
    input_specs,
    output_specs,
    spec_json,
    spec_path_for,
)
from emomix.models.base import EmotionModel
from emomix.models.inputs import Batch, DialogueBatch


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


def _traceable_attention(
    self: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    need_weights: bool = True,
    attn_mask: torch.Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``nn.MultiheadAttention.forward`` in plain tensor ops whose shapes the tracer keeps dynamic.

    PyTorch's own implementation unpacks sizes into Python ints, which the tracer freezes (a
    self-attention graph then only runs at the example's length). Eval mode only (no dropout);
    configurations this does not cover fall back to the original forward.
    """
    if (
        attn_mask is not None
        or is_causal
        or not self._qkv_same_embed_dim
        or self.bias_k is not None
        or self.add_zero_attn
        or query.dim() != 3
        or self.training
    ):
        return _ORIGINAL_FORWARD[nn.MultiheadAttention](
            self,
            query,
            key,
            value,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
        )
    if not self.batch_first:
        query, key, value = (x.transpose(0, 1) for x in (query, key, value))
    dim, heads = self.embed_dim, self.num_heads
    weight, bias = self.in_proj_weight, self.in_proj_bias
    parts = [
        (weight[i * dim : (i + 1) * dim], None if bias is None else bias[i * dim : (i + 1) * dim]) for i in range(3)
    ]
    q, k, v = (
        torch.nn.functional.linear(x, w, b).unflatten(-1, (heads, dim // heads)).transpose(1, 2)
        for x, (w, b) in zip((query, key, value), parts)
    )
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(dim // heads))
    if key_padding_mask is not None:
        padding = key_padding_mask[:, None, None, :]
        scores = (
            scores.masked_fill(padding, float("-inf"))
            if padding.dtype == torch.bool
            else scores + padding.to(scores.dtype)
        )
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


_ORIGINAL_FORWARD: dict[type[nn.Module], Any] = {cls: cls.forward for cls in (nn.MultiheadAttention, nn.LSTM, nn.GRU)}


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
            cls.forward = forward


def _export_torchscript(
    wrapper: BatchWrapper,
    args: tuple[torch.Tensor, ...],
    path: Path,
    specs: list[TensorSpec],
    outputs: list[TensorSpec],
    opset: int,
) -> None:
    torch.onnx.export(
        wrapper,
        args,
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=[s.name for s in specs],
        output_names=[o.name for o in outputs],
        dynamic_axes={**dynamic_axes(specs), **dynamic_axes(outputs)},
        do_constant_folding=True,
    )


def _export_dynamo(
    wrapper: BatchWrapper,
    args: tuple[torch.Tensor, ...],
    path: Path,
    specs: list[TensorSpec],
    outputs: list[TensorSpec],
    opset: int,
) -> None:
    if importlib.util.find_spec("onnxscript") is None:
        raise ConfigError("the dynamo exporter needs the onnxscript package (pip install onnxscript)")
    # one named Dim per axis name, shared by every input that has that axis; the wrapper's
    # ``*tensors`` takes a list of per-input specs
    dims: dict[str, Any] = {}
    per_input = [
        {
            axis: dims.setdefault(size, torch.export.Dim(size))
            for axis, size in enumerate(s.shape)
            if isinstance(size, str)
        }
        for s in specs
    ]
    program = torch.onnx.export(
        wrapper,
        args,
        dynamo=True,
        opset_version=opset,
        input_names=[s.name for s in specs],
        output_names=[o.name for o in outputs],
        dynamic_shapes=(tuple(per_input),),
        external_data=False,
    )
    if program is None:  # only the legacy exporter (dynamo=False) returns nothing
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNX program")
    program.save(str(path))


_EXPORTERS = {"torchscript": _export_torchscript, "dynamo": _export_dynamo}


def export_onnx(
    model: EmotionModel,
    example_batch: Batch | DialogueBatch,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    classes: Sequence[str] | None = None,
    verify: bool = True,
    atol: float = 1e-4,
    exporters: Sequence[str] = ("torchscript", "dynamo"),
    name: str | None = None,
) -> ExportResult:
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
    if isinstance(example_batch, Batch) and example_batch.edges is not None:
        raise ConfigError(
            f"model {name!r}: ONNX export takes no token–frame edges (per-utterance tensors of varying "
            "size); give an example batch without edges (graph models then use their spread fallback, "
            "if they export at all) or serve the PyTorch model"
        )
    num_classes = getattr(model, "num_classes", None)
    if classes is not None and num_classes is not None and len(classes) != num_classes:
        raise ConfigError(f"model {name!r} has {num_classes} classes but {len(classes)} class names were given")
    unknown = [e for e in exporters if e not in _EXPORTERS]
    if unknown or not exporters:
        raise ConfigError(f"unknown exporter(s) {unknown}; choose from {', '.join(_EXPORTERS)}")

    module = copy.deepcopy(model).cpu().eval()
    specs = input_specs(example_batch)
    args = flatten_batch(example_batch, specs)
    frame_rates = {m: x.frame_rate for m, x in example_batch.inputs.items()} if isinstance(example_batch, Batch) else {}
    with torch.no_grad():
        probe = module(BatchWrapper(module, specs, [], frame_rates, dialogue).rebuild(args))
    aux_keys = aux_output_keys(probe.aux, example_batch.batch_size)
    wrapper = BatchWrapper(module, specs, aux_keys, frame_rates, dialogue).eval()
    with torch.no_grad():
        example_outputs = wrapper(*args)
    outputs = output_specs(
        example_outputs,
        aux_keys,
        int(example_batch.mask.shape[1]) if isinstance(example_batch, DialogueBatch) else None,
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for exporter in exporters:
        # write beside the target under a temporary name: a failed export leaves an earlier file alone
        scratch = path.with_name(f".{path.stem}.{os.getpid()}.{exporter}.onnx")
        document = functools.partial(
            _spec_document,
            name=name,
            kind=kind,
            opset=opset,
            exporter=exporter,
            outputs=outputs,
            frame_rates=frame_rates,
            classes=classes,
            model=module,
        )
        outcome: tuple[list[TensorSpec], list[str], list[str], float | None] | str = "interrupted"
        try:
            outcome = _export_and_verify(
                exporter,
                wrapper,
                args,
                scratch,
                specs,
                outputs,
                opset,
                example_batch if verify else None,
                atol,
                document,
            )
        finally:
            if not isinstance(outcome, tuple):
                remove_files(scratch, spec_path_for(scratch))
        if isinstance(outcome, str):
            failures.append(f"{exporter}: {outcome}")
            continue
        used, ignored, messages, verified = outcome
        os.replace(scratch, path)
        os.replace(spec_path_for(scratch), spec_path_for(path))
        return ExportResult(
            name,
            path,
            spec_path_for(path),
            used,
            outputs,
            ignored,
            opset,
            exporter,
            verified,
            messages,
            time.perf_counter() - started,
        )
    raise ConfigError(
        f"model {name!r} cannot be exported to ONNX: " + " | ".join(failures) + "; serve the PyTorch model instead"
    )


def _export_and_verify(
    exporter: str,
    wrapper: BatchWrapper,
    args: tuple[torch.Tensor, ...],
    path: Path,
    specs: list[TensorSpec],
    outputs: list[TensorSpec],
    opset: int,
    example: Batch | DialogueBatch | None,
    atol: float,
    document: Any,
) -> tuple[list[TensorSpec], list[str], list[str], float | None] | str:
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
        return describe_failure(exc)
    messages = sorted(
        {
            f"{short_path(w.filename)}:{w.lineno}: {str(w.message).splitlines()[0]}"
            for w in caught
            if issubclass(w.category, torch.jit.TracerWarning)
        }
    )
    _make_ort_compatible(path)
    graph_inputs = _graph_input_names(path)
    used = [s for s in specs if s.name in graph_inputs]
    ignored = [s.name for s in specs if s.name not in graph_inputs]
    spec_path_for(path).write_text(json.dumps(document(used, ignored, messages), indent=2) + "\n")
    try:
        ort_session(path)
    except Exception as exc:  # onnxruntime rejects the graph: an operator or type it has no kernel for
        return f"onnxruntime rejects the exported graph ({describe_failure(exc)})" + frozen_hint(messages)
    if example is None:
        return used, ignored, messages, None
    try:
        report = check_parity(wrapper, path, verification_batches(example), atol=atol)
    except Exception as exc:  # e.g. a reshape to a size the tracer froze
        return (
            f"the exported graph fails in onnxruntime on other batch sizes or lengths ({describe_failure(exc)})"
            + frozen_hint(messages)
        )
    if not report.ok:
        return (
            f"the exported graph does not reproduce PyTorch on other batch sizes or lengths ({report.summary()})"
            + frozen_hint(messages)
        )
    return used, ignored, messages, max(report.max_abs_logits, report.max_abs_probs)


def _make_ort_compatible(path: Path) -> int:
    """Rewrite ``Where`` nodes that select between bool tensors (``torch.where`` on masks) as
    ``Cast(uint8) → Where → Cast(bool)``: ONNX allows bool there, onnxruntime's CPU kernel does
    not. Returns the number of nodes rewritten (the file is only written when there are any)."""
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    }
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


def _spec_document(
    inputs: list[TensorSpec],
    ignored: list[str],
    trace_warnings: Sequence[str],
    *,
    name: str,
    kind: str,
    opset: int,
    exporter: str,
    outputs: list[TensorSpec],
    frame_rates: Mapping[str, float | None],
    classes: Sequence[str] | None,
    model: nn.Module,
) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return {
        "format": SPEC_FORMAT,
        "model": name,
        "batch_kind": kind,
        "opset": opset,
        "exporter": exporter,
        "mask_dtype": "bool",
        "inputs": [spec_json(s) for s in inputs],
        "ignored_inputs": ignored,
        "outputs": [spec_json(s) for s in outputs],
        "frame_rates": dict(frame_rates),
        "classes": list(classes) if classes is not None else None,
        "num_classes": getattr(model, "num_classes", None),
        "input_dims": dict(getattr(model, "input_dims", {})),
        "model_config": config.to_dict() if config is not None and hasattr(config, "to_dict") else None,
        "frozen_by_tracer": [m.split(": ", 1)[0] for m in trace_warnings],
    }
