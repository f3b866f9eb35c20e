"""The training losses the four designs combine, as plain functions on tensors.

Every function that takes class targets ignores targets equal to ``IGNORE_INDEX`` (-100: padded
utterances of dialogue batches, unlabelled rows) and accepts logits of shape ``… × C`` with
targets of shape ``…`` (utterance batches ``B × C`` / ``B``, dialogue batches ``B × N × C`` /
``B × N``). When no target is valid, a loss is a zero that still carries the graph, so a training
step on an all-padding batch does nothing instead of producing NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from emomix.constants import IGNORE_INDEX
from emomix.errors import ConfigError, LabelError
from emomix.models.blocks import load_balance_loss

__all__ = [
    "branch_losses",
    "focal_loss",
    "inverse_frequency_alpha",
    "kl_to_gate",
    "load_balance_loss",
    "multiclass_hinge",
    "routing_entropy_loss",
    "supervised_contrastive_loss",
]

# probabilities are clamped before log so a gate that saturates at exactly 0 gives a finite loss
_EPS = 1e-8


def _flatten(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not match "
            f"(expected logits = targets' shape × C)"
        )
    return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).long()


def _zero(reference: torch.Tensor) -> torch.Tensor:
    return reference.sum() * 0.0


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: torch.Tensor | None = None,
    gamma: float = 2.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Focal loss ``−α_y (1 − p_y)^γ log p_y`` (Lin et al.) with per-class weights ``alpha``.

    ``reduction="mean"`` divides by the sum of the valid rows' ``α_y`` (by the row count when
    ``alpha`` is None), exactly as ``F.cross_entropy(weight=alpha)`` does, so ``gamma=0`` is
    weighted cross-entropy. ``"sum"`` adds the rows; ``"none"`` returns the per-row losses in the
    targets' shape with 0 at ignored rows.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ConfigError(f"focal_loss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if gamma < 0:
        raise ConfigError(f"focal_loss: gamma must be >= 0, got {gamma}")
    shape = targets.shape
    flat_logits, flat_targets = _flatten(logits, targets)
    valid = flat_targets != IGNORE_INDEX
    safe_targets = torch.where(valid, flat_targets, torch.zeros_like(flat_targets))
    log_p = F.log_softmax(flat_logits, dim=-1).gather(1, safe_targets.unsqueeze(1)).squeeze(1)
    modulation = (1 - log_p.exp()).clamp_min(0).pow(gamma) if gamma else torch.ones_like(log_p)
    weight = valid.to(log_p.dtype)
    if alpha is not None:
        alpha = alpha.to(device=log_p.device, dtype=log_p.dtype)
        if alpha.shape != (flat_logits.shape[-1],):
            raise ConfigError(
                f"focal_loss: alpha has shape {tuple(alpha.shape)}, "
                f"expected ({flat_logits.shape[-1]},) — one weight per class"
            )
        weight = weight * alpha[safe_targets]
    per_row = -weight * modulation * log_p
    if reduction == "none":
        return per_row.reshape(shape)
    if reduction == "sum":
        return per_row.sum()
    if not bool(valid.any()):
        return _zero(flat_logits)
    return per_row.sum() / weight.sum().clamp_min(_EPS)


def inverse_frequency_alpha(
    labels: torch.Tensor | np.ndarray | Sequence[int], num_classes: int, normalise: bool = True
) -> torch.Tensor:
    """Per-class weights inversely proportional to class frequency in ``labels``.

    With ``normalise`` the weights are ``n / (K · n_c)`` (``n`` labelled rows, ``K`` classes
    present), scikit-learn's "balanced" weights: the mean weight over the rows is 1, so the loss
    keeps the scale of an unweighted one. Without it they are ``1 / n_c``. A class absent from
    ``labels`` gets weight 0 (it never is a training target). Labels equal to -100 are ignored.
    """
    values = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).reshape(-1).long()
    values = values[values != IGNORE_INDEX]
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.numel():
        raise LabelError(
            f"inverse_frequency_alpha: label {int(bad[0])} is outside 0..{num_classes - 1}; "
            f"check num_classes against the label scheme"
        )
    counts = torch.bincount(values, minlength=num_classes).double()
    present = counts > 0
    if not bool(present.any()):
        raise LabelError("inverse_frequency_alpha: no labelled rows to count; the training fold has no labels")
    alpha = torch.zeros(num_classes, dtype=torch.float64)
    alpha[present] = 1.0 / counts[present]
    if normalise:
        alpha = alpha * counts.sum() / present.sum()
    return alpha.float()


def routing_entropy_loss(probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Minus the mean entropy of routing distributions ``… × E`` (``B × 2`` or ``B × E``).

    Minimising it maximises routing entropy, keeping both experts in use (the Dual Routing
    balance term); a uniform 2-way router gives ``−log 2``. ``mask`` (True = valid row) leaves
    out padded rows.
    """
    flat = probs.reshape(-1, probs.shape[-1])
    if mask is not None:
        flat = flat[mask.reshape(-1).to(torch.bool)]
    if flat.shape[0] == 0:
        return _zero(probs)
    entropy = -(flat * flat.clamp_min(_EPS).log()).sum(dim=-1)
    return -entropy.mean()


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    flat_logits, flat_targets = _flatten(logits, targets)
    if not bool((flat_targets != IGNORE_INDEX).any()):
        return _zero(flat_logits)
    return F.cross_entropy(flat_logits, flat_targets, weight=weight, ignore_index=IGNORE_INDEX)


def branch_losses(
    logits_list: Sequence[torch.Tensor], targets: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum of the cross-entropies of several branch (per-expert) classifiers on the same targets.

    ``weight`` (optional per-class weights) is passed to each cross-entropy.
    """
    if not logits_list:
        raise ValueError("branch_losses needs at least one branch's logits")
    return torch.stack([_cross_entropy(logits, targets, weight) for logits in logits_list]).sum()


def supervised_contrastive_loss(
    a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """Cross-modal supervised contrastive loss between paired embeddings (e.g. speech ``a``, text ``b``).

    Embeddings are L2-normalised; for each anchor ``a_i`` the candidates are every ``b_j`` and the
    positives those with ``labels_j == labels_i`` (its own pair included), and symmetrically for
    anchors ``b_i`` over ``a``. Per anchor the loss is the mean over positives of
    ``−log softmax_j(a_i·b_j / τ)``; the result is the mean over anchors of both directions.
    Rows labelled -100 are neither anchors nor candidates. Shapes: ``… × D`` with labels ``…``.
    """
    if temperature <= 0:
        raise ConfigError(f"supervised_contrastive_loss: temperature must be > 0, got {temperature}")
    if a.shape != b.shape:
        raise ValueError(f"paired embeddings must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    flat_a, flat_labels = _flatten(a, labels)
    flat_b = b.reshape(-1, b.shape[-1])
    valid = flat_labels != IGNORE_INDEX
    if not bool(valid.any()):
        return _zero(a) + _zero(b)
    flat_a, flat_b, flat_labels = flat_a[valid], flat_b[valid], flat_labels[valid]
    similarity = F.normalize(flat_a, dim=-1) @ F.normalize(flat_b, dim=-1).T / temperature
    positives = (flat_labels.unsqueeze(0) == flat_labels.unsqueeze(1)).to(similarity.dtype)
    loss = torch.zeros((), dtype=similarity.dtype, device=similarity.device)
    for logits in (similarity, similarity.T):
        log_prob = F.log_softmax(logits, dim=-1)
        loss = loss + (-(positives * log_prob).sum(dim=-1) / positives.sum(dim=-1)).mean()
    return loss / 2


def kl_to_gate(
    expert_probs: Sequence[torch.Tensor], gated_probs: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean ``KL(gated ‖ expert_e)`` over experts and rows: pulls each expert's class distribution
    towards the gated prediction (zero when every expert equals the gate).

    Inputs are probabilities ``… × C``; ``mask`` (True = valid row, e.g. ``labels != -100`` or a
    dialogue mask) leaves out padded rows. Detach ``gated_probs`` to make the gate a fixed teacher.
    """
    if not expert_probs:
        raise ValueError("kl_to_gate needs at least one expert's probabilities")
    gate = gated_probs.reshape(-1, gated_probs.shape[-1])
    keep = None if mask is None else mask.reshape(-1).to(torch.bool)
    if keep is not None:
        gate = gate[keep]
    if gate.shape[0] == 0:
        return _zero(gated_probs) + sum(_zero(p) for p in expert_probs)
    log_gate = gate.clamp_min(_EPS).log()
    divergences = []
    for probs in expert_probs:
        flat = probs.reshape(-1, probs.shape[-1])
        if keep is not None:
            flat = flat[keep]
        divergences.append((gate * (log_gate - flat.clamp_min(_EPS).log())).sum(dim=-1).mean())
    return torch.stack(divergences).mean()


def multiclass_hinge(
    scores: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor | None = None,
    margin: float = 1.0,
    squared: bool = True,
) -> torch.Tensor:
    """Weston–Watkins multi-class hinge ``Σ_{j≠y} max(0, margin − s_y + s_j)^p / C`` (p = 2 when
    ``squared``), each row weighted by ``weight[y]`` and the sum divided by the rows' total weight
    (as weighted cross-entropy is); rows labelled ``IGNORE_INDEX`` are left out. This is
    :func:`torch.nn.functional.multi_margin_loss` with that normalisation."""
    scores, labels = _flatten(scores, labels)
    valid = labels != IGNORE_INDEX
    if not bool(valid.any()):
        return scores.sum() * 0.0
    scores, labels = scores[valid], labels[valid]
    per_row = F.multi_margin_loss(scores, labels, p=2 if squared else 1, margin=margin, reduction="none")
    if weight is None:
        return per_row.mean()
    row_weight = weight.to(scores.dtype)[labels]
    return (per_row * row_weight).sum() / row_weight.sum().clamp_min(1e-12)
