"""The LightningModule: one registered model, its losses, its optimiser recipe.

:class:`EmotionTask` wraps any :class:`~emomix.models.base.EmotionModel` (utterance or dialogue
batches) and, when a recipe fine-tunes an encoder's top layers, those layers too: the batch then
carries the stored boundary states and the task runs ``forward_from_layer`` before the model.
Lightning supplies the loop, devices, DDP, precision, accumulation, clipping and checkpoints;
this file only says what a step computes and how parameters are optimised:

* parameter groups: the fusion head at ``optimiser.lr``, encoder layers at ``optimiser.encoder_lr``
  (both with ``weight_decay``, except biases and norms);
* schedules: ``warmup_cosine`` (linear warm-up over ``warmup_epochs`` then cosine to zero, per
  step), ``onecycle`` (PyTorch's OneCycleLR peaking at each group's rate), ``plateau``
  (ReduceLROnPlateau on the monitored metric, per epoch) or ``none``;
* validation UA/WA/loss per epoch (``val_ua``, ``val_wa``, ``val_loss``) for early stopping and
  the learning curves.

:class:`BestWeights` keeps the best epoch's weights as safetensors (never pickle) and
:class:`HistoryWriter` appends one CSV row per epoch.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import numpy as np
import torch
from torch import nn

from emomix.errors import ConfigError
from emomix.models.inputs import Batch, DialogueBatch, ModelOutput
from emomix.train.fit import IGNORE_INDEX, unweighted_accuracy, weighted_accuracy
from emomix.train.recipe import OptimiserConfig

_NO_DECAY = ("bias", "norm", "LayerNorm")


class EmotionTask(L.LightningModule):
    """Training and evaluation steps for one model (see module doc).

    ``fine_tune``: per modality ``(encoder, boundary_layer, layers)``: the encoder whose layers
    above ``boundary_layer`` train, and the hidden layers to stack as ``layer_states``.
    """

    def __init__(self, model: nn.Module, optimiser: OptimiserConfig, monitor: str = "val_ua",
                 fine_tune: Mapping[str, tuple[Any, int, list[int]]] | None = None, warmup_epochs: float | None = None):
        super().__init__()
        self.model = model
        self.optimiser_config = optimiser
        self.monitor = monitor
        self.encoders = nn.ModuleDict({m: spec[0] for m, spec in (fine_tune or {}).items()})
        self.boundaries = {m: (int(spec[1]), list(spec[2])) for m, spec in (fine_tune or {}).items()}
        self.standardise: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._validation: list[tuple[torch.Tensor, torch.Tensor]] = []

    def set_standardisation(self, modality: str, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Z-score ``modality``'s input states with statistics of the fold's training part
        (``training.standardise``); saved with the weights, so inference applies the same."""
        self.standardise[modality] = (torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32))

    # -- forward ------------------------------------------------------------------------------

    def forward(self, batch: Batch | DialogueBatch) -> ModelOutput:
        if self.boundaries and isinstance(batch, Batch):
            batch = self._run_top_layers(batch)
        if self.standardise and isinstance(batch, Batch):
            batch = self._standardised(batch)
        return self.model(batch)

    def _standardised(self, batch: Batch) -> Batch:
        inputs = dict(batch.inputs)
        for modality, (mean, std) in self.standardise.items():
            given = inputs[modality]
            states = (given.states - mean.to(given.states.device)) / std.to(given.states.device)
            inputs[modality] = replace(given, states=torch.where(given.mask.unsqueeze(-1), states, torch.zeros_like(states)))
        return Batch(inputs=inputs, labels=batch.labels, edges=batch.edges, utt_ids=batch.utt_ids)

    def _run_top_layers(self, batch: Batch) -> Batch:
        inputs = dict(batch.inputs)
        for modality, (boundary, layers) in self.boundaries.items():
            given = inputs[modality]
            out = self.encoders[modality].forward_from_layer(given.states, given.mask, boundary,
                                                             output_hidden_states=bool(layers))
            layer_states = None
            if layers:
                layer_states = torch.stack([out.hidden_states[k] for k in layers], dim=1)
            inputs[modality] = replace(given, states=out.states, layer_states=layer_states)
        return Batch(inputs=inputs, labels=batch.labels, edges=batch.edges, utt_ids=batch.utt_ids)

    # -- steps --------------------------------------------------------------------------------

    def training_step(self, batch: Batch | DialogueBatch, batch_index: int) -> torch.Tensor:
        output = self(batch)
        total, parts = self.model.loss(output, batch.labels)
        if not torch.isfinite(total):
            raise ConfigError(f"the training loss became {float(total)} at epoch {self.current_epoch + 1}; lower the "
                              f"learning rate (lr={self.optimiser_config.lr}) or check the features for extreme values")
        size = _rows(batch)
        self.log("train_loss", total, on_step=False, on_epoch=True, batch_size=size, prog_bar=True)
        for name, value in parts.items():
            self.log(f"train_{name}", float(value), on_step=False, on_epoch=True, batch_size=size)
        return total

    def validation_step(self, batch: Batch | DialogueBatch, batch_index: int) -> None:
        logits, labels = _flat_logits(self(batch).logits, batch)
        self._validation.append((logits.detach().float().cpu(), labels.detach().cpu()))

    def on_validation_epoch_start(self) -> None:
        self._validation = []

    def on_validation_epoch_end(self) -> None:
        if not self._validation:
            return
        logits = torch.cat([l for l, _ in self._validation])
        labels = torch.cat([y for _, y in self._validation])
        keep = labels != IGNORE_INDEX
        if not keep.any():
            return
        predictions = logits.argmax(dim=-1).numpy()
        self.log("val_ua", unweighted_accuracy(labels.numpy(), predictions), prog_bar=True, sync_dist=True)
        self.log("val_wa", weighted_accuracy(labels.numpy(), predictions), sync_dist=True)
        self.log("val_loss", float(nn.functional.cross_entropy(logits[keep], labels[keep])), sync_dist=True)
        self._validation = []

    # -- optimiser ----------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        config = self.optimiser_config
        groups = []
        for name, module, lr in (("head", self.model, config.lr), ("encoder", self.encoders, config.encoder_lr)):
            decay, plain = [], []
            for parameter_name, parameter in module.named_parameters():
                if parameter.requires_grad:
                    (plain if any(t in parameter_name for t in _NO_DECAY) else decay).append(parameter)
            if decay:
                groups.append({"params": decay, "lr": lr, "weight_decay": config.weight_decay, "name": name})
            if plain:
                groups.append({"params": plain, "lr": lr, "weight_decay": 0.0, "name": f"{name}_no_decay"})
        if not groups:
            raise ConfigError(f"{type(self.model).__name__} has no trainable parameters")
        optimiser_class = torch.optim.AdamW if config.name == "adamw" else torch.optim.Adam
        optimiser = optimiser_class(groups, betas=tuple(config.betas))
        if config.schedule == "none":
            return optimiser
        total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        if config.schedule == "plateau":
            mode = "min" if self.monitor == "val_loss" else "max"
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, mode=mode, factor=config.plateau_factor,
                                                                   patience=config.plateau_patience)
            return {"optimizer": optimiser, "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor,
                                                             "interval": "epoch", "strict": False}}
        if config.schedule == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=[g["lr"] for g in groups], total_steps=total_steps)
        else:
            epochs = max(int(self.trainer.max_epochs or 1), 1)
            warmup = int(round(config.warmup_epochs * total_steps / epochs))
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: warmup_cosine(step, warmup, total_steps))
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- weights ------------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The model's full state plus the fine-tuned encoder parameters (not their frozen rest)."""
        state = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for modality, encoder in self.encoders.items():
            for name, parameter in encoder.named_parameters():
                if parameter.requires_grad:
                    state[f"encoders.{modality}.{name}"] = parameter
        for modality, (mean, std) in self.standardise.items():
            state[f"standardise.{modality}.mean"], state[f"standardise.{modality}.std"] = mean, std
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        for key in state:
            if key.startswith("standardise.") and key.endswith(".mean"):
                modality = key.split(".")[1]
                self.set_standardisation(modality, state[key], state[f"standardise.{modality}.std"])
        model_state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        self.model.load_state_dict(model_state)
        encoder_state = {k[len("encoders."):]: v for k, v in state.items() if k.startswith("encoders.")}
        if encoder_state:
            missing = self.encoders.load_state_dict(encoder_state, strict=False)
            if missing.unexpected_keys:
                raise ConfigError(f"checkpoint has encoder weights this task does not have: {missing.unexpected_keys[:3]}")


class BestWeights(L.Callback):
    """Save the weights of the best epoch (by ``monitor``) as safetensors, atomically.

    Without a validation metric the latest epoch is the best. Its state (best score and epoch)
    travels in Lightning's checkpoint, so a resumed run keeps comparing against the right score.
    """

    def __init__(self, path: str | Path, monitor: str = "val_ua"):
        self.path = Path(path)
        self.monitor = monitor
        self.mode = "min" if monitor == "val_loss" else "max"
        self.best_score: float | None = None
        self.best_epoch = 0

    def on_train_epoch_end(self, trainer: L.Trainer, task: EmotionTask) -> None:
        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        value = trainer.callback_metrics.get(self.monitor)
        score = None if value is None else float(value)
        better = (self.best_score is None or score is None
                  or (score > self.best_score if self.mode == "max" else score < self.best_score))
        if better:
            self.best_score, self.best_epoch = score, int(trainer.current_epoch) + 1
            save_weights(task.trainable_state(), self.path)

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_score, self.best_epoch = state.get("best_score"), int(state.get("best_epoch", 0))


class HistoryWriter(L.Callback):
    """One CSV row per epoch: losses, validation metrics, learning rates, seconds."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._started = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, task: EmotionTask) -> None:
        import time

        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, task: EmotionTask) -> None:
        import time

        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        row: dict[str, Any] = {"epoch": int(trainer.current_epoch) + 1}
        for name, value in sorted(trainer.callback_metrics.items()):
            if name.startswith(("train_", "val_")):
                row[name.replace("train_loss", "loss")] = round(float(value), 6)
        for group in trainer.optimizers[0].param_groups:
            row[f"lr_{group.get('name', 'group')}"] = float(group["lr"])
        row["seconds"] = round(time.perf_counter() - self._started, 3)
        append_csv_row(self.path, row)


# ---------------------------------------------------------------------------------------------
# Plain functions
# ---------------------------------------------------------------------------------------------


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear from ~0 to 1 over ``warmup_steps``, then cosine down to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def save_weights(state: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Write tensors as safetensors through a temporary file renamed into place."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(temporary), metadata=dict(metadata or {}))
    os.replace(temporary, path)
    return path


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def append_csv_row(path: Path, row: Mapping[str, Any], key: str = "epoch") -> None:
    """Add a row, replacing an earlier row with the same ``key`` value (an epoch repeated after
    a resume); the file is rewritten with the union of columns (rows are few)."""
    rows: list[dict[str, Any]] = []
    if path.exists():
        with open(path, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if str(r.get(key)) != str(row.get(key))]
    rows.append(dict(row))
    rows.sort(key=lambda r: float(r.get(key) or 0))
    columns: list[str] = []
    for item in rows:
        columns.extend(c for c in item if c not in columns)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)


def _rows(batch: Batch | DialogueBatch) -> int:
    if isinstance(batch, DialogueBatch):
        return int(batch.mask.sum())
    return batch.batch_size


def _flat_logits(logits: torch.Tensor, batch: Batch | DialogueBatch) -> tuple[torch.Tensor, torch.Tensor]:
    labels = batch.labels if batch.labels is not None else torch.full(logits.shape[:-1], IGNORE_INDEX)
    if isinstance(batch, DialogueBatch):
        return logits[batch.mask], labels[batch.mask]
    return logits, labels


def predict_rows(task: EmotionTask, loader: Any) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Ids, probabilities ``N × C``, label indices and per-row aux arrays over a loader, in eval mode."""
    was_training = task.training
    if was_training:
        task.eval()
    ids: list[str] = []
    probs, labels = [], []
    aux: dict[str, list[np.ndarray]] = {}
    try:
        with torch.no_grad():
            for batch in loader:
                batch = batch.to(task.device)
                output = task(batch)
                if isinstance(batch, DialogueBatch):
                    mask = batch.mask
                    ids.extend(u for dialogue in batch.utt_ids for u in dialogue)
                    select = lambda t: t[mask] if t.dim() >= 2 and tuple(t.shape[:2]) == tuple(mask.shape) else None  # noqa: E731
                else:
                    rows = batch.batch_size
                    ids.extend(batch.utt_ids)
                    select = lambda t: t if t.dim() >= 1 and t.shape[0] == rows else None  # noqa: E731
                logits, truth = _flat_logits(output.logits.float(), batch)
                probs.append(torch.softmax(logits, dim=-1).cpu().numpy())
                labels.append(truth.cpu().numpy().astype(np.int64))
                for name, value in output.aux.items():
                    if isinstance(value, torch.Tensor) and (picked := select(value)) is not None:
                        aux.setdefault(name, []).append(picked.detach().float().cpu().numpy())
    finally:
        if was_training:
            task.train(True)
    count = len(ids)
    joined = {name: np.concatenate(parts) for name, parts in aux.items()}
    return (ids, np.concatenate(probs) if probs else np.zeros((0, 0)), np.concatenate(labels) if labels else np.zeros(0, np.int64),
            {name: value for name, value in joined.items() if len(value) == count})
