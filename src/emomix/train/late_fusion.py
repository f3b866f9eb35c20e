"""Training of late-fusion models: separately trained parts, fused per class on validation data.

A registered model whose registry entry names ``late_fusion_of`` (e.g. Complementary Fusion: the
cross-attention MoE and the sum-product MoE) is not trained end to end: :func:`train_late_fusion`
trains each named part on the fold like any model, fits the per-class fusion weights on the
fold's validation part with :func:`fit_fusion_weights` (equal weights when the fold has none) and
builds the fused model with its class's ``from_submodels``. Applying the saved weights at
inference is the fused model's own forward pass (in :mod:`emomix.models`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from emomix.constants import IGNORE_INDEX
from emomix.errors import ConfigError, LabelError
from emomix.metrics_core import unweighted_accuracy
from emomix.models import model_info
from emomix.models.saved import TrainedModel, predict_rows

#: Trains one registered model on a fold: ``(context, name, parts, seed, directory, weights_name=…)``
#: → (task with its best weights, data module, epoch summary); :func:`emomix.train.run.fit_model`.
FitPart = Callable[..., tuple[Any, Any, dict[str, Any]]]


def train_late_fusion(
    context: Any, model_name: str, parts: Mapping[str, Sequence[str]], seed: int, directory: Path, fit_part: FitPart
) -> tuple[TrainedModel, Any, dict[str, Any]]:
    """Train the parts of ``model_name`` (each saved as ``<part>.safetensors``), fit the fusion
    weights, save the fused model as ``model.safetensors``; return it, the first part's data
    module and the summary (each part's epochs and the fitted weights)."""
    info = model_info(model_name)
    names = tuple(info.late_fusion_of)
    if len(names) != 2:
        raise ConfigError(
            f"{model_name} is registered as the late fusion of {len(names)} models; per-class fusion "
            "weights are fitted for exactly two"
        )
    if context.recipe.training.standardise:
        raise ConfigError(
            f"training.standardise is not supported for the composite {context.recipe.model.name}; drop it"
        )
    trained, summaries, datamodule = [], {}, None
    for name in names:
        task, module, summary = fit_part(context, name, parts, seed, directory, weights_name=f"{name}.safetensors")
        datamodule = module if datamodule is None else datamodule
        trained.append(task)
        summaries[name] = summary
    weights = None
    if datamodule is None:  # unreachable: names holds at least two parts
        raise ConfigError(f"{model_name}: late fusion needs its parts")
    if datamodule.parts.get("validation"):
        loader = datamodule.val_dataloader()
        _, first, labels, _ = predict_rows(trained[0], loader)
        _, second, _, _ = predict_rows(trained[1], loader)
        weights = fit_fusion_weights(first, second, labels)
    # register_model checked that a late-fusion class provides from_submodels
    fused = TrainedModel(cast(Any, info.cls).from_submodels(*(task.model for task in trained), weights))
    fused.save(directory)
    rounded = None if weights is None else [round(float(w), 4) for w in np.asarray(weights).reshape(-1)]
    return fused, datamodule, {**summaries, "fusion_weights": rounded}


def fit_fusion_weights(
    p_ca: np.ndarray | torch.Tensor,
    p_spl: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    step: float = 0.05,
    sweeps: int = 5,
) -> np.ndarray:
    """Fit the per-class weights ``w_c`` of a two-part late fusion on validation data.

    ``p_ca``, ``p_spl``: ``N × C`` class probabilities of the two parts (for Complementary Fusion
    the cross-attention and the sum-product model); ``labels``: ``N`` (entries -100 are ignored).
    Fused probabilities are ``p_c ∝ w_c·p^CA_c + (1−w_c)·p^SPL_c``. Coordinate ascent over classes:
    for each class in turn, every ``w_c`` on the grid ``{0, step, …, 1}`` is tried with the other
    weights fixed and the one maximising UA (mean per-class recall over the classes present) is
    kept; ties go to the lower negative log-likelihood of the fused probabilities, then to the
    value nearest the current one. Sweeps repeat until no weight changes (at most ``sweeps``).
    Starts from 0.5 everywhere. Returns ``C`` float weights (the first part's share).
    """
    p_ca = np.asarray(p_ca.detach().cpu() if isinstance(p_ca, torch.Tensor) else p_ca, dtype=np.float64)
    p_spl = np.asarray(p_spl.detach().cpu() if isinstance(p_spl, torch.Tensor) else p_spl, dtype=np.float64)
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    if p_ca.shape != p_spl.shape or p_ca.ndim != 2 or p_ca.shape[0] != y.shape[0]:
        raise ConfigError(
            f"fit_fusion_weights needs two N × C probability arrays and N labels; got "
            f"{p_ca.shape}, {p_spl.shape} and {y.shape}"
        )
    if not 0 < step <= 1:
        raise ConfigError(f"step must be in (0, 1]; got {step}")
    keep = y != IGNORE_INDEX
    p_ca, p_spl, y = p_ca[keep], p_spl[keep], y[keep]
    num_classes = p_ca.shape[1]
    if y.size == 0:
        raise ConfigError("fit_fusion_weights got no labelled rows")
    if y.min() < 0 or y.max() >= num_classes:
        raise LabelError(f"labels must lie in 0..{num_classes - 1}; got {y.min()}..{y.max()}")
    grid = np.round(np.arange(0.0, 1.0 + 1e-9, step), 6)
    if grid[-1] < 1.0:
        grid = np.append(grid, 1.0)
    weights = np.full(num_classes, 0.5)

    def score(w: np.ndarray) -> tuple[float, float]:
        mixed = w * p_ca + (1 - w) * p_spl
        mixed = mixed / np.clip(mixed.sum(axis=1, keepdims=True), 1e-12, None)
        ua = unweighted_accuracy(y, mixed.argmax(axis=1))
        nll = float(-np.mean(np.log(np.clip(mixed[np.arange(y.size), y], 1e-12, None))))
        return ua, nll

    for _ in range(sweeps):
        changed = False
        for c in range(num_classes):
            best: tuple[tuple[float, float, float], float] | None = None
            for value in grid:
                trial = weights.copy()
                trial[c] = value
                ua, nll = score(trial)
                key = (ua, -round(nll, 9), -abs(value - weights[c]))
                if best is None or key > best[0]:
                    best = (key, value)
            if best is not None and best[1] != weights[c]:
                weights[c] = best[1]
                changed = True
        if not changed:
            break
    return weights.astype(np.float32)
