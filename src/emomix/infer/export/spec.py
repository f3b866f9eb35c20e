"""The exported graph's input/output contract: flat tensors in a fixed order, and the I/O spec.

:func:`input_specs` names the inputs of a batch, :func:`flatten_batch` and :class:`BatchWrapper`
turn a batch into flat tensors and back, :func:`batch_feed` builds an onnxruntime feed from the
JSON spec written next to the model (:func:`spec_path_for`, :func:`load_spec`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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


def length_axis(modality: str) -> str:
    return f"{modality}_length"


def input_specs(batch: Batch | DialogueBatch) -> list[TensorSpec]:
    """The graph inputs for batches shaped like ``batch``, in the fixed order (module docstring)."""
    specs: list[TensorSpec] = []
    if isinstance(batch, DialogueBatch):
        for modality in batch.modalities:
            dim = int(batch.inputs[modality].shape[-1])
            specs.append(
                TensorSpec(f"{modality}_states", "float32", (BATCH_AXIS, UTTERANCE_AXIS, dim), modality, "states")
            )
        specs.append(TensorSpec(DIALOGUE_MASK, "bool", (BATCH_AXIS, UTTERANCE_AXIS), None, "mask"))
        return specs
    for modality in batch.modalities:
        source = batch.inputs[modality]
        length = length_axis(modality)
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
            raise ConfigError(
                f"the exported model takes input {spec.name!r} but the batch has no "
                f"{spec.modality or 'dialogue'} {spec.field}; build batches with the same "
                "modalities and extras as the export example"
            )
        if tensor.dim() != len(spec.shape):
            raise ConfigError(
                f"input {spec.name!r} needs {len(spec.shape)} dimensions {list(spec.shape)}, "
                f"got shape {tuple(tensor.shape)}"
            )
        for axis, size in enumerate(spec.shape):
            if isinstance(size, int) and int(tensor.shape[axis]) != size:
                raise ConfigError(
                    f"input {spec.name!r} has size {int(tensor.shape[axis])} on axis {axis} but the "
                    f"exported model was built for {size} (shape {list(spec.shape)})"
                )
        tensors.append(tensor.detach().cpu().to(torch.bool if spec.dtype == "bool" else torch.float32))
    return tuple(tensors)


def batch_feed(batch: Batch | DialogueBatch, spec: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The onnxruntime input dict for ``batch`` under a loaded I/O spec (:func:`load_spec`)."""
    specs = [_spec_from_json(item) for item in spec["inputs"]]
    kind = "dialogue" if isinstance(batch, DialogueBatch) else "utterance"
    if kind != spec["batch_kind"]:
        raise ConfigError(
            f"the exported model {spec['model']!r} takes {spec['batch_kind']} batches, got a {kind} batch"
        )
    return {s.name: t.numpy() for s, t in zip(specs, flatten_batch(batch, specs))}


class BatchWrapper(nn.Module):
    """Takes the flat tensors of :func:`input_specs` (in order), rebuilds the batch, calls the
    model and returns ``(logits, *aux)`` with the aux tensors named in ``aux_keys``."""

    def __init__(
        self,
        model: EmotionModel,
        specs: Sequence[TensorSpec],
        aux_keys: Sequence[str],
        frame_rates: Mapping[str, float | None],
        dialogue: bool,
    ):
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
            if spec.modality is not None and spec.field is not None:  # only a dialogue's mask has none
                fields.setdefault(spec.modality, {})[spec.field] = tensor
        return Batch(
            inputs={m: ModalityInput(**values, frame_rate=self.frame_rates.get(m)) for m, values in fields.items()}
        )

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(self.rebuild(tensors))
        return (output.logits, *(output.aux[key] for key in self.aux_keys))


def aux_output_keys(output_aux: Mapping[str, Any], batch_size: int) -> list[str]:
    """Aux entries that are per-row tensors (first dimension B), in the model's order."""
    return [
        key
        for key, value in output_aux.items()
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and int(value.shape[0]) == batch_size
    ]


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def output_specs(outputs: Sequence[torch.Tensor], aux_keys: Sequence[str], utterances: int | None) -> list[TensorSpec]:
    specs = []
    for index, tensor in enumerate(outputs):
        shape: list[int | str] = [BATCH_AXIS, *(int(s) for s in tensor.shape[1:])]
        if utterances is not None and len(shape) >= 2 and shape[1] == utterances:
            shape[1] = UTTERANCE_AXIS
        name = "logits" if index == 0 else f"aux_{aux_keys[index - 1]}"
        specs.append(
            TensorSpec(name, _dtype_name(tensor), tuple(shape), None, None if index == 0 else aux_keys[index - 1])
        )
    return specs


def dynamic_axes(specs: Iterable[TensorSpec]) -> dict[str, dict[int, str]]:
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
        raise ConfigError(
            f"{path} does not exist: an emomix ONNX model needs the I/O spec export_onnx writes "
            "beside it; re-export the model with emomix.infer.export.export_onnx"
        )
    spec = json.loads(path.read_text())
    if spec.get("format") != SPEC_FORMAT:
        raise ConfigError(f"{path}: unknown I/O spec format {spec.get('format')!r}; expected {SPEC_FORMAT}")
    return spec


def spec_json(spec: TensorSpec) -> dict[str, Any]:
    item = asdict(spec)
    item["shape"] = list(spec.shape)
    return {k: v for k, v in item.items() if v is not None}
