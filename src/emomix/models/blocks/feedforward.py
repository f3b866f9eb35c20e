"""Feed-forward parts: the MLP and the expert (an MLP with its own classifier head)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from emomix.errors import ConfigError

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; use one of {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


class MLP(nn.Module):
    """``num_layers`` linear layers with activation and dropout between them (none after the last).

    ``num_layers=1`` is a single linear map ``in_dim → out_dim``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        dropout: float = 0.1,
        activation: str = "gelu",
    ):
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"MLP needs at least one layer, got num_layers={num_layers}")
        sizes = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for index, (size_in, size_out) in enumerate(itertools.pairwise(sizes)):
            if index > 0:
                layers += [_activation(activation), nn.Dropout(dropout)]
            layers.append(nn.Linear(size_in, size_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to the last dimension of ``x``."""
        return self.net(x)


class Expert(nn.Module):
    """One expert: ``kind="mlp"`` (Linear → GELU → Dropout → Linear, ``in_dim → out_dim → out_dim``)
    or ``kind="linear"`` (one Linear), optionally with its own linear classification head.

    ``forward(x) -> (z, logits)``; ``logits`` is None when the expert was built without
    ``num_classes`` (the Dual Routing branch losses use the heads).
    """

    def __init__(
        self, in_dim: int, out_dim: int, kind: str = "mlp", dropout: float = 0.1, num_classes: int | None = None
    ):
        super().__init__()
        if kind == "mlp":
            self.body: nn.Module = MLP(in_dim, out_dim, out_dim, num_layers=2, dropout=dropout, activation="gelu")
        elif kind == "linear":
            self.body = nn.Linear(in_dim, out_dim)
        else:
            raise ConfigError(f"unknown expert kind {kind!r}; use 'mlp' or 'linear'")
        self.kind = kind
        self.head = nn.Linear(out_dim, num_classes) if num_classes else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x``: ``B × in_dim`` → ``(z B × out_dim, logits B × C or None)``."""
        z = self.body(x)
        return z, (self.head(z) if self.head is not None else None)
