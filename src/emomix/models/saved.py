"""A trained model as one plain ``nn.Module``, saved and loaded without the trainer.

:class:`TrainedModel` holds what a prediction needs besides the features: the registered fusion
model, the input standardisation fitted on the training part (``training.standardise``), any
fine-tuned top layers of an encoder (``trainable_top_layers``), and the model card
(``model.json``: name, config, classes, input sizes, feature specs, training summary). The
Lightning task of the training floor wraps one (optimiser, schedules, logging); the predictor
loads one with :meth:`TrainedModel.from_pretrained`, without the trainer.

On disk a checkpoint folder (``folds/<fold>/seed-<k>/`` of a run) holds

* ``model.safetensors``: ``model.<name>`` (the fusion model's full state),
  ``encoders.<modality>.<name>`` (the trainable encoder parameters only, not their frozen rest)
  and ``standardise.<modality>.mean`` / ``.std``;
* ``model.json``: the card, format ``emomix.model/1``.

A dialogue model with fine-tuned layers receives, per such modality, the stored boundary token
states of each utterance (``DialogueBatch.tokens``); :meth:`TrainedModel.pool_top_layers` runs
the layers and pools each utterance as the frozen path pools it (mean over valid tokens), so the
model reads the same ``B × N × D`` vectors either way.

This is the format every run has written since training moved to Lightning, so older run
folders load unchanged. :func:`predict_rows` is the batched prediction over collated rows shared
by evaluation (the run's ``predictions.parquet``) and the predictor.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from emomix.atomic import write_json_atomic
from emomix.encoders.base import EncoderOutput
from emomix.encoders.registry import create_encoder
from emomix.errors import ConfigError, MissingDataError
from emomix.models.base import EmotionModel, create_model, model_info
from emomix.models.collate import flat_logits, flat_rows
from emomix.models.inputs import Batch, DialogueBatch, ModelOutput

__all__ = [
    "CARD_FILE",
    "MODEL_FORMAT",
    "WEIGHTS_FILE",
    "TrainedModel",
    "load_weights",
    "predict_rows",
    "read_model_card",
    "save_weights",
]

MODEL_FORMAT = "emomix.model/1"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"

#: Per modality: (encoder, boundary layer, hidden layers to stack as ``layer_states``).
FineTune = Mapping[str, tuple[Any, int, list[int]]]


class LayerwiseEncoder(Protocol):
    """An encoder that runs its layers above a stored boundary state (speech SSL, text)."""

    def forward_from_layer(
        self, hidden: torch.Tensor, mask: torch.Tensor, start_layer: int, output_hidden_states: bool = False
    ) -> EncoderOutput: ...


class TrainedModel(nn.Module):
    """A registered model plus its input standardisation, fine-tuned encoder layers and card.

    ``fine_tune``: per modality ``(encoder, boundary_layer, layers)``: the encoder whose layers
    above ``boundary_layer`` run on the stored boundary states before the model, and the hidden
    layers to stack as ``layer_states``. ``metadata``: the model card (``model.json``).
    """

    def __init__(
        self, model: EmotionModel[Any], fine_tune: FineTune | None = None, metadata: Mapping[str, Any] | None = None
    ):
        super().__init__()
        self.model = model
        self.encoders = nn.ModuleDict({m: spec[0] for m, spec in (fine_tune or {}).items()})
        self.boundaries = {m: (int(spec[1]), list(spec[2])) for m, spec in (fine_tune or {}).items()}
        #: a dialogue model's per-utterance pooling of each fine-tuned modality (as its frozen path pools)
        self.token_pooling = (
            {m: dialogue_token_pooling(model, m) for m in self.boundaries}
            if getattr(model, "batch_kind", "utterance") == "dialogue"
            else {}
        )
        self.standardise: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.metadata: dict[str, Any] = dict(metadata or {})

    @property
    def classes(self) -> list[str]:
        """Class names in logit order (from the card)."""
        return [str(c) for c in self.metadata.get("classes") or []]

    def set_standardisation(
        self, modality: str, mean: torch.Tensor | np.ndarray, std: torch.Tensor | np.ndarray
    ) -> None:
        """Z-score ``modality``'s input states with statistics of the fold's training part; saved
        with the weights, so inference applies the same."""
        self.standardise[modality] = (
            torch.as_tensor(mean, dtype=torch.float32),
            torch.as_tensor(std, dtype=torch.float32),
        )

    # -- forward ------------------------------------------------------------------------------

    def forward(self, batch: Batch | DialogueBatch) -> ModelOutput:
        if self.boundaries and isinstance(batch, Batch):
            batch = self.run_top_layers(batch)
        if self.boundaries and isinstance(batch, DialogueBatch):
            batch = self.pool_top_layers(batch)
        if self.standardise and isinstance(batch, Batch):
            batch = self._standardised(batch)
        return self.model(batch)

    def run_top_layers(self, batch: Batch) -> Batch:
        """``batch`` with the fine-tuned encoder layers applied to the stored boundary states
        (unchanged for modalities without fine-tuned layers)."""
        inputs = dict(batch.inputs)
        for modality, (boundary, layers) in self.boundaries.items():
            given = inputs[modality]
            encoder = cast(LayerwiseEncoder, self.encoders[modality])
            out = encoder.forward_from_layer(given.states, given.mask, boundary, output_hidden_states=bool(layers))
            layer_states = None
            if layers:
                assert out.hidden_states is not None  # asked for with output_hidden_states
                layer_states = torch.stack([out.hidden_states[k] for k in layers], dim=1)
            inputs[modality] = replace(given, states=out.states, layer_states=layer_states)
        return Batch(inputs=inputs, labels=batch.labels, edges=batch.edges, utt_ids=batch.utt_ids)

    def pool_top_layers(self, batch: DialogueBatch) -> DialogueBatch:
        """A dialogue batch whose fine-tuned modalities' ``tokens`` (boundary states of its real
        utterances) went through the encoder's top layers and were pooled per utterance into the
        ``B × N × D`` vectors the model reads; the other modalities are unchanged."""
        inputs, tokens = dict(batch.inputs), dict(batch.tokens)
        for modality, (boundary, _layers) in self.boundaries.items():
            given = tokens.pop(modality, None)
            if given is None:
                raise MissingDataError(
                    f"the dialogue batch carries no {modality} token states for the fine-tuned "
                    f"{modality} encoder layers; collate it with token_modalities=[{modality!r}]"
                )
            encoder: Any = self.encoders[modality]  # a layerwise encoder (text or speech SSL)
            out = encoder.forward_from_layer(given.states, given.mask, boundary)
            pooled = pool_tokens(out.states, given.mask, self.token_pooling.get(modality, "mean"))
            vectors = pooled.new_zeros((*batch.mask.shape, pooled.shape[-1]))
            vectors[batch.mask] = pooled
            inputs[modality] = vectors
        return DialogueBatch(inputs=inputs, mask=batch.mask, labels=batch.labels, utt_ids=batch.utt_ids, tokens=tokens)

    def _standardised(self, batch: Batch) -> Batch:
        inputs = dict(batch.inputs)
        for modality, (mean, std) in self.standardise.items():
            if modality.endswith("_pooled"):  # an utterance vector declared beside the frames
                given = inputs[modality[: -len("_pooled")]]
                if given.pooled is not None:
                    pooled = (given.pooled - mean.to(given.pooled.device)) / std.to(given.pooled.device)
                    inputs[modality[: -len("_pooled")]] = replace(given, pooled=pooled)
                continue
            given = inputs[modality]
            states = (given.states - mean.to(given.states.device)) / std.to(given.states.device)
            inputs[modality] = replace(
                given, states=torch.where(given.mask.unsqueeze(-1), states, torch.zeros_like(states))
            )
        return Batch(inputs=inputs, labels=batch.labels, edges=batch.edges, utt_ids=batch.utt_ids)

    # -- weights ------------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The model's full state plus the fine-tuned encoder parameters (not their frozen rest)
        and the standardisation statistics, on the CPU: what ``model.safetensors`` holds."""
        state = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for modality, encoder in self.encoders.items():
            for name, parameter in encoder.named_parameters():
                if parameter.requires_grad:
                    state[f"encoders.{modality}.{name}"] = parameter
        for modality, (mean, std) in self.standardise.items():
            state[f"standardise.{modality}.mean"], state[f"standardise.{modality}.std"] = mean, std
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load what :meth:`trainable_state` returned (or ``model.safetensors`` holds)."""
        for key in state:
            if key.startswith("standardise.") and key.endswith(".mean"):
                modality = key.split(".")[1]
                self.set_standardisation(modality, state[key], state[f"standardise.{modality}.std"])
        model_state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        self.model.load_state_dict(model_state)
        encoder_state = {k[len("encoders.") :]: v for k, v in state.items() if k.startswith("encoders.")}
        if encoder_state:
            missing = self.encoders.load_state_dict(encoder_state, strict=False)
            if missing.unexpected_keys:
                raise ConfigError(
                    f"the checkpoint has encoder weights this model does not have: {missing.unexpected_keys[:3]}; "
                    "its model.json and model.safetensors come from different runs"
                )

    # -- files --------------------------------------------------------------------------------

    def save(self, folder: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write ``model.safetensors`` and (when there is a card) ``model.json`` into ``folder``,
        each atomically; ``metadata`` replaces the card first. Returns the folder."""
        folder = Path(folder)
        if metadata is not None:
            self.metadata = dict(metadata)
        save_weights(self.trainable_state(), folder / WEIGHTS_FILE)
        if self.metadata:
            write_json_atomic(folder / CARD_FILE, {"format": MODEL_FORMAT, **self.metadata})
        return folder

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, encoders: Mapping[str, Any] | None = None, device: str | torch.device = "cpu"
    ) -> TrainedModel:
        """Load a checkpoint folder (``model.json`` + ``model.safetensors``), in eval mode on ``device``.

        ``encoders``: per modality, the encoder object to fine-tune-load into (the predictor
        passes the ones it extracts features with, so both share one set of layers); a modality
        whose spec has ``trainable_top_layers`` and no given encoder gets one built from the card.
        """
        folder = Path(folder)
        card = read_model_card(folder)
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise MissingDataError(f"{folder} has no {WEIGHTS_FILE}; the fold did not finish training")
        name = str(card["model"])
        info = model_info(name)
        config = dict(card.get("config") or {})
        modalities = tuple(config.get("modalities") or info.modalities)
        dims = {k: int(v) for k, v in dict(card["input_dims"]).items() if k.split("_")[0] in modalities}
        model = create_model(name, config, dims, len(card["classes"]))
        fine_tune = {}
        for modality, spec in dict(card.get("features") or {}).items():
            top = int((spec or {}).get("trainable_top_layers") or 0)
            if modality not in modalities or not top:
                continue
            encoder = (encoders or {}).get(modality) or create_encoder(spec["encoder"])
            count = int(getattr(encoder, "num_layers", 0) or 0)
            encoder.freeze(top)
            fine_tune[modality] = (encoder, count - top, [int(k) for k in spec.get("layers") or ()])
        loaded = cls(model, fine_tune=fine_tune, metadata={k: v for k, v in card.items() if k != "format"})
        loaded.load_trainable_state(load_weights(weights))
        loaded.eval()
        return loaded.to(device)


def dialogue_token_pooling(model: Any, modality: str) -> str:
    """How a dialogue model's ``modality`` vector is pooled from token states (``mean`` or
    ``mean_std``, its ``dialogue_pooling``); a model that reads a stored ``pooled`` vector
    there cannot fine-tune that encoder, and saying so is a ConfigError."""
    pooling = dict(getattr(model, "dialogue_pooling", None) or {}).get(modality, "mean")
    if pooling not in ("mean", "mean_std"):
        name = getattr(model, "name", type(model).__name__)
        raise ConfigError(
            f"{name} reads the stored {pooling!r} {modality} utterance vector, not a pooling of the "
            f"encoder's states, so it cannot fine-tune the {modality} encoder's layers; set "
            f"features.{modality}.trainable_top_layers: 0 (or pool the states, e.g. speech_source: mean)"
        )
    return pooling


def pool_tokens(states: torch.Tensor, mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """``M × T × D`` states → ``M × D`` (``mean`` over valid positions) or ``M × 2D`` (``mean_std``:
    mean and population standard deviation), as :func:`~emomix.models.collate.utterance_vector` pools."""
    weights = mask.to(states.dtype).unsqueeze(-1)
    count = weights.sum(dim=1).clamp_min(1.0)
    mean = (states * weights).sum(dim=1) / count
    if pooling == "mean":
        return mean
    variance = (((states - mean.unsqueeze(1)) ** 2) * weights).sum(dim=1) / count
    return torch.cat([mean, variance.sqrt()], dim=-1)


def read_model_card(folder: str | Path) -> dict[str, Any]:
    """``model.json`` of a checkpoint folder, checked for the fields loading needs."""
    path = Path(folder) / CARD_FILE
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingDataError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); restore it from the run or retrain the fold") from exc
    if not isinstance(card, dict) or card.get("format") != MODEL_FORMAT:
        found = card.get("format") if isinstance(card, dict) else None
        raise ConfigError(f"{path}: not an emomix model card (format {found!r}, expected {MODEL_FORMAT!r})")
    absent = [k for k in ("model", "classes", "input_dims", "features") if k not in card]
    if absent:
        raise ConfigError(f"{path}: the model card lacks {', '.join(absent)}")
    return card


def save_weights(
    state: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write tensors as safetensors (never pickle) through a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(temporary), metadata=dict(metadata or {}))
    os.replace(temporary, path)
    return path


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (on the CPU); a damaged file is a ConfigError naming it."""
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) for a damaged file
        raise ConfigError(
            f"{path} is damaged ({type(exc).__name__}); copy the checkpoint again or retrain the fold"
        ) from None


def predict_rows(
    module: nn.Module, batches: Iterable[Batch | DialogueBatch]
) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Ids, probabilities ``N × C``, label indices and per-row aux arrays over ``batches``, in eval mode.

    ``module`` is anything that maps a batch to a :class:`ModelOutput` (a :class:`TrainedModel`,
    the Lightning task). Dialogue batches are flattened over their real utterances.
    """
    was_training = module.training
    if was_training:
        module.eval()
    device = _device_of(module)
    ids: list[str] = []
    probs, labels = [], []
    aux: dict[str, list[np.ndarray]] = {}
    try:
        with torch.no_grad():
            for batch in batches:
                batch = batch.to(device)
                output = module(batch)
                if isinstance(batch, DialogueBatch):
                    ids.extend(u for dialogue in batch.utt_ids for u in dialogue)
                else:
                    ids.extend(batch.utt_ids)
                logits, truth = flat_logits(output.logits.float(), batch)
                probs.append(torch.softmax(logits, dim=-1).cpu().numpy())
                labels.append(truth.cpu().numpy().astype(np.int64))
                for name, value in output.aux.items():
                    if isinstance(value, torch.Tensor) and (picked := flat_rows(value, batch)) is not None:
                        aux.setdefault(name, []).append(picked.detach().float().cpu().numpy())
    finally:
        if was_training:
            module.train(True)
    count = len(ids)
    joined = {name: np.concatenate(parts) for name, parts in aux.items()}
    return (
        ids,
        np.concatenate(probs) if probs else np.zeros((0, 0)),
        np.concatenate(labels) if labels else np.zeros(0, np.int64),
        {name: value for name, value in joined.items() if len(value) == count},
    )


def _device_of(module: nn.Module) -> torch.device:
    """Where ``module`` computes: its own ``device`` (Lightning) or that of its first tensor."""
    device = getattr(module, "device", None)
    if isinstance(device, torch.device):
        return device
    for tensor in module.parameters():
        return tensor.device
    for buffer in module.buffers():
        return buffer.device
    return torch.device("cpu")
