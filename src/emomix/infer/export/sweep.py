"""The check-all sweep: which registered model exports (``emomix export --check-all``)."""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from emomix.errors import ConfigError
from emomix.infer.export.fusion import export_onnx
from emomix.infer.export.parity import check_parity, random_batch_like
from emomix.models.inputs import Batch, DialogueBatch, ModalityInput

CHECK_DIMS = {"audio": 12, "text": 16, "video": 8}
"""Tiny input widths of :func:`check_all` (the models' own default widths are kept)."""


def example_batch_for(
    model_name: str, dims: Mapping[str, int] | None = None, batch_size: int = 3, seed: int = 0
) -> Batch | DialogueBatch:
    """A random example batch for a registered model with every extra a feature-store batch can
    carry: audio with a VAD ``speech_mask`` (50 frames/s), text with ``special_tokens`` and the
    last 4 layers' ``layer_states``; a dialogue batch for conversation models."""
    from emomix.models.base import model_info

    info = model_info(model_name)
    dims = {**CHECK_DIMS, **dict(dims or {})}
    if info.batch_kind == "dialogue":
        proto = DialogueBatch(
            inputs={m: torch.zeros(1, 1, dims[m]) for m in info.modalities}, mask=torch.ones(1, 1, dtype=torch.bool)
        )
        return random_batch_like(proto, batch_size, 6, seed=seed)
    lengths = {"audio": 20, "text": 9, "video": 10}
    inputs = {}
    for modality in info.modalities:
        length = lengths[modality]
        item = ModalityInput(
            states=torch.zeros(1, length, dims[modality]),
            mask=torch.ones(1, length, dtype=torch.bool),
            frame_rate=50.0 if modality == "audio" else None,
        )
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


def check_all(
    names: Sequence[str] | None = None,
    workdir: str | Path | None = None,
    atol: float = 1e-4,
    exporters: Sequence[str] = ("torchscript", "dynamo"),
    seed: int = 0,
) -> list[CheckRow]:
    """Export every registered model (or ``names``) with tiny inputs, then check parity on two
    fresh batches of other shapes (:func:`check_parity`); a row per model with the verdict."""
    from emomix.models.base import create_model, list_models

    registry = list_models()
    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for model_name in names or list(registry):
            info = registry.get(model_name)
            if info is None:
                raise ConfigError(f"unknown model {model_name!r}; available: {', '.join(registry)}")
            torch.manual_seed(seed)
            dims = {m: CHECK_DIMS[m] for m in info.modalities}
            model = create_model(model_name, {}, dims, 4)
            example = example_batch_for(model_name, seed=seed)
            started = time.perf_counter()
            row = CheckRow(model_name, info.batch_kind, exports=False)
            try:
                result = export_onnx(
                    model, example, Path(tmp) / f"{model_name}.onnx", atol=atol, exporters=exporters, name=model_name
                )
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
        return [
            random_batch_like(example, 5, 2 * width + 3, seed=seed + 7),
            random_batch_like(example, 1, max(1, width // 2), seed=seed + 8),
        ]
    lengths = {m: int(x.states.shape[1]) for m, x in example.inputs.items()}
    return [
        random_batch_like(example, 5, {m: 2 * n + 3 for m, n in lengths.items()}, seed=seed + 7),
        random_batch_like(example, 1, {m: max(1, n // 2) for m, n in lengths.items()}, seed=seed + 8),
    ]


def _reason_summary(reason: str) -> str:
    """The short cause of a failure for the table: the operator and what was frozen."""
    operator = re.search(r"unsupported operator (\S+)", reason)
    frozen = re.search(r"froze Python values at ([^|;]+(?:; emomix[^|;]+)*)", reason)
    parts = []
    if operator:
        parts.append(f"unsupported operator {operator.group(1)}")
    if "does not reproduce" in reason:
        parts.append("graph specialised to the example's shapes")
    if frozen:
        parts.append(f"frozen at {frozen.group(1).strip()}")
    return "; ".join(parts) or reason[:200]


def format_check_table(rows: Sequence[CheckRow]) -> str:
    """A Markdown table of :func:`check_all` rows."""
    lines = [
        "| model | batch | exports | max abs Δ logits | max abs Δ probs | MB | inputs the graph ignores | why not |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def diff(v: float | None) -> str:
        return "—" if v is None else f"{v:.1e}"

    for row in rows:
        lines.append(
            f"| `{row.model}` | {row.batch_kind} | {'yes' if row.exports else '**no**'} | "
            f"{diff(row.max_abs_logits)} | {diff(row.max_abs_probs)} | "
            f"{'—' if row.megabytes is None else f'{row.megabytes:.2f}'} | "
            f"{', '.join(f'`{n}`' for n in row.ignored_inputs) or '—'} | "
            f"{'' if row.exports else _reason_summary(row.reason)} |"
        )
    return "\n".join(lines)
