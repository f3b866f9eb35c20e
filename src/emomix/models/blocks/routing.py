"""Routing: the two-expert router, the top-k gate, its load-balance loss and the mixture of experts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from emomix.errors import ConfigError


class TwoExpertRouter(nn.Module):
    """Soft router between a local and a global expert: Linear → GELU → Linear(2) → softmax.

    ``forward(x) -> B × 2`` probabilities ``(p_local, p_global)``; ``x`` is the gate input
    (Dual Routing uses ``[l; g]``).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Routing probabilities, one row per input row, summing to 1."""
        return torch.softmax(self.net(x), dim=-1)


def load_balance_loss(probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Switch/Shazeer load-balancing loss ``E · Σ_e f_e · P_e`` of gate probabilities ``… × E``.

    ``f_e`` is the fraction of rows whose top-1 expert is ``e`` (not differentiable), ``P_e`` the
    mean gate probability of ``e`` (differentiable). It equals 1 when routing is perfectly
    balanced and grows towards ``E`` as one expert takes every row. ``mask`` (bool, True = valid,
    the shape of ``probs`` without the last dimension) leaves out padded rows.
    """
    num_experts = probs.shape[-1]
    flat = probs.reshape(-1, num_experts)
    if mask is not None:
        flat = flat[mask.reshape(-1).to(torch.bool)]
    if flat.shape[0] == 0:
        return probs.sum() * 0.0
    top1 = F.one_hot(flat.argmax(dim=-1), num_experts).to(flat.dtype)
    fraction = top1.mean(dim=0)
    mean_prob = flat.mean(dim=0)
    return num_experts * (fraction * mean_prob).sum()


class TopKGate(nn.Module):
    """A softmax gate over ``num_experts`` experts that keeps the ``k`` largest weights per row.

    ``forward(x) -> (weights, probs, load_balance_loss)``: ``probs`` the full softmax
    (``B × E``), ``weights`` zero outside each row's top ``k`` and renormalised to sum to 1, and
    the scalar :func:`load_balance_loss` of ``probs``. With ``noise_std > 0``, Gaussian noise is
    added to the gate logits in training only (Shazeer's noisy gating) so that rarely chosen
    experts still get tried.
    """

    def __init__(self, in_dim: int, num_experts: int, k: int = 2, noise_std: float = 0.0):
        super().__init__()
        if num_experts < 1 or not 1 <= k <= num_experts:
            raise ConfigError(f"TopKGate: k must be between 1 and the number of experts ({num_experts}), got k={k}")
        if noise_std < 0:
            raise ConfigError(f"TopKGate: noise_std must be >= 0, got {noise_std}")
        self.linear = nn.Linear(in_dim, num_experts)
        self.num_experts = num_experts
        self.k = k
        self.noise_std = noise_std

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x``: ``… × in_dim``; ``mask`` (optional, True = valid row) only affects the
        load-balancing loss."""
        logits = self.linear(x)
        if self.training and self.noise_std > 0:
            logits = logits + torch.randn_like(logits) * self.noise_std
        probs = torch.softmax(logits, dim=-1)
        top_values, top_index = probs.topk(self.k, dim=-1)
        weights = torch.zeros_like(probs).scatter(-1, top_index, top_values)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights, probs, load_balance_loss(probs, mask)


class MixtureOfExperts(nn.Module):
    """A gated mixture: ``output = Σ_e weights_e · expert_e(*expert_args)``.

    Experts return a tensor (or a tuple whose first element is mixed, e.g. an :class:`Expert`'s
    ``(z, logits)``); all experts share the output shape ``B × …``. Every expert is computed
    (selecting only the top-k is a speed-up this project does not need at its sizes); experts
    outside a row's top ``k`` have weight 0 there and get no gradient from that row.
    """

    def __init__(self, experts: Sequence[nn.Module], gate: TopKGate):
        super().__init__()
        if len(experts) != gate.num_experts:
            raise ConfigError(f"MixtureOfExperts: {len(experts)} experts but the gate routes over {gate.num_experts}")
        self.experts = nn.ModuleList(experts)
        self.gate = gate

    def forward(
        self, gate_input: torch.Tensor, *expert_args: torch.Tensor, gate_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """→ ``(output, {"gate_weights" B×E, "gate_probs" B×E, "expert_outputs" B×E×…}, load_balance_loss)``."""
        weights, probs, balance = self.gate(gate_input, gate_mask)
        outputs = []
        for expert in self.experts:
            result = expert(*expert_args)
            outputs.append(result[0] if isinstance(result, tuple) else result)
        stacked = torch.stack(outputs, dim=1)
        shaped = weights.reshape(*weights.shape, *([1] * (stacked.dim() - weights.dim())))
        output = (shaped * stacked).sum(dim=1)
        aux = {"gate_weights": weights, "gate_probs": probs, "expert_outputs": stacked}
        return output, aux, balance
