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
* validation UA/WA/weighted F1/loss per epoch (``val_ua``, ``val_wa``, ``val_weighted_f1``,
  ``val_loss``) for early stopping and the learning curves.

:class:`BestWeights` keeps the best epoch's weights as safetensors (never pickle) and
:class:`HistoryWriter` appends one CSV row per epoch.
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

import lightning as L
import numpy as np
import torch
from torch import nn

from emomix.constants import IGNORE_INDEX
from emomix.errors import ConfigError
from emomix.metrics_core import unweighted_accuracy, weighted_f1
from emomix.models.base import EmotionModel
from emomix.models.collate import batch_rows, flat_logits
from emomix.models.inputs import Batch, DialogueBatch, ModelOutput
from emomix.models.saved import TrainedModel, save_weights
from emomix.train.recipe import OptimiserConfig

_NO_DECAY = ("bias", "norm", "LayerNorm")


class EmotionTask(L.LightningModule):
    """Training and evaluation steps for one model (see module doc).

    ``model``: a registered model, or a :class:`~emomix.models.saved.TrainedModel` to train on.
    ``fine_tune`` (with a bare model): per modality ``(encoder, boundary_layer, layers)``: the
    encoder whose layers above ``boundary_layer`` train, and the hidden layers to stack as
    ``layer_states``. The forward pass, weights and standardisation are the wrapped
    :class:`TrainedModel`'s (``self.net``); this class adds the optimiser, schedules and logging.
    """

    def __init__(
        self,
        model: EmotionModel[Any] | TrainedModel,
        optimiser: OptimiserConfig,
        monitor: str = "val_ua",
        fine_tune: Mapping[str, tuple[Any, int, list[int]]] | None = None,
        warmup_epochs: float | None = None,
    ):
        super().__init__()
        self.net = model if isinstance(model, TrainedModel) else TrainedModel(model, fine_tune=fine_tune)
        self.optimiser_config = optimiser
        self.monitor = monitor
        self._validation: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def model(self) -> EmotionModel[Any]:
        """The registered fusion model being trained."""
        return self.net.model

    @property
    def encoders(self) -> nn.ModuleDict:
        """The encoders whose top layers train (empty for frozen features)."""
        return self.net.encoders

    def set_standardisation(
        self, modality: str, mean: torch.Tensor | np.ndarray, std: torch.Tensor | np.ndarray
    ) -> None:
        """Z-score ``modality``'s input states with statistics of the fold's training part
        (``training.standardise``); saved with the weights, so inference applies the same."""
        self.net.set_standardisation(modality, mean, std)

    def forward(self, batch: Batch | DialogueBatch) -> ModelOutput:
        return self.net(batch)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resume checkpoints (``last-*.ckpt``) written before the task wrapped a
        :class:`TrainedModel` name the model's keys ``model.*`` / ``encoders.*``; map them to ``net.*``."""
        state = checkpoint.get("state_dict") or {}
        if state and not any(key.startswith("net.") for key in state):
            checkpoint["state_dict"] = {
                f"net.{key}" if key.startswith(("model.", "encoders.")) else key: value for key, value in state.items()
            }

    # -- steps --------------------------------------------------------------------------------

    def training_step(self, batch: Batch | DialogueBatch, batch_index: int) -> torch.Tensor:
        if batch.labels is None:
            raise ConfigError("every training batch needs labels; the training part holds unlabelled utterances")
        output = self(batch)
        total, parts = self.model.loss(output, batch.labels)
        if not torch.isfinite(total):
            raise ConfigError(
                f"the training loss became {float(total)} at epoch {self.current_epoch + 1}; lower the "
                f"learning rate (lr={self.optimiser_config.lr}) or check the features for extreme values"
            )
        size = batch_rows(batch)
        self.log("train_loss", total, on_step=False, on_epoch=True, batch_size=size, prog_bar=True)
        for name, value in parts.items():
            self.log(f"train_{name}", float(value), on_step=False, on_epoch=True, batch_size=size)
        return total

    def validation_step(self, batch: Batch | DialogueBatch, batch_index: int) -> None:
        logits, labels = flat_logits(self(batch).logits, batch)
        self._validation.append((logits.detach().float().cpu(), labels.detach().cpu()))

    def on_validation_epoch_start(self) -> None:
        self._validation = []

    def on_validation_epoch_end(self) -> None:
        if not self._validation:
            return
        logits = torch.cat([scores for scores, _ in self._validation])
        labels = torch.cat([y for _, y in self._validation])
        keep = labels != IGNORE_INDEX
        if not keep.any():
            return
        truth, predictions = labels[keep].numpy(), logits[keep].argmax(dim=-1).numpy()
        self.log("val_ua", unweighted_accuracy(truth, predictions), prog_bar=True, sync_dist=True)
        self.log("val_wa", float(np.mean(predictions == truth)), sync_dist=True)
        self.log("val_weighted_f1", weighted_f1(truth, predictions), sync_dist=True)
        self.log("val_loss", float(nn.functional.cross_entropy(logits[keep], labels[keep])), sync_dist=True)
        self._validation = []

    # -- optimiser ----------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        config = self.optimiser_config
        groups: list[dict[str, Any]] = []
        for name, module, lr in (("head", self.model, config.lr), ("encoder", self.encoders, config.encoder_lr)):
            decay: list[nn.Parameter] = []
            plain: list[nn.Parameter] = []
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
        beta1, beta2 = config.betas  # a list when the recipe came from YAML
        optimiser = optimiser_class(groups, betas=(float(beta1), float(beta2)))
        if config.schedule == "none":
            return optimiser
        total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        if config.schedule == "plateau":
            mode: Literal["min", "max"] = "min" if self.monitor == "val_loss" else "max"
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimiser, mode=mode, factor=config.plateau_factor, patience=config.plateau_patience
            )
            return {
                "optimizer": optimiser,
                "lr_scheduler": {"scheduler": plateau, "monitor": self.monitor, "interval": "epoch", "strict": False},
            }
        scheduler: torch.optim.lr_scheduler.LRScheduler
        if config.schedule == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimiser, max_lr=[g["lr"] for g in groups], total_steps=total_steps
            )
        else:
            epochs = max(int(self.trainer.max_epochs or 1), 1)
            warmup = int(round(config.warmup_epochs * total_steps / epochs))
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimiser, lambda step: warmup_cosine(step, warmup, total_steps)
            )
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- weights ------------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What ``model.safetensors`` holds (see :meth:`TrainedModel.trainable_state`)."""
        return self.net.trainable_state()

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self.net.load_trainable_state(state)


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

    def on_train_epoch_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        value = trainer.callback_metrics.get(self.monitor)
        score = None if value is None else float(value)
        better = (
            self.best_score is None
            or score is None
            or (score > self.best_score if self.mode == "max" else score < self.best_score)
        )
        if better:
            self.best_score, self.best_epoch = score, int(trainer.current_epoch) + 1
            save_weights(cast(EmotionTask, task).trainable_state(), self.path)  # the module Lightning trains

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_score, self.best_epoch = state.get("best_score"), int(state.get("best_epoch", 0))


class HistoryWriter(L.Callback):
    """One CSV row per epoch: losses, validation metrics, learning rates, seconds."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._started = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
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
