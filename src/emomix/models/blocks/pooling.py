"""Pooling over masked sequences: the masked mean and attention pooling.

:func:`key_padding_mask` converts a validity mask into ``nn.MultiheadAttention``'s key padding
mask; the attention blocks share it.
"""

from __future__ import annotations

import torch
from torch import nn

from emomix.errors import ConfigError


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x`` (``B × T × D``) over the valid positions of ``mask`` (``B × T``) → ``B × D``.

    Padded values are excluded with ``where`` rather than multiplied by zero, so even inf/NaN
    padding cannot leak in. A row without any valid position gives a zero vector.
    """
    if mask is None:
        return x.mean(dim=1)
    valid = mask.to(torch.bool).unsqueeze(-1)
    total = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=1)
    count = valid.sum(dim=1).clamp_min(1).to(x.dtype)
    return total / count


def key_padding_mask(mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``nn.MultiheadAttention``'s key padding mask (True = ignore) from a validity mask, and the
    rows that have no valid key at all.

    A row with no valid key would make the attention softmax NaN; such rows attend over every
    key instead and the caller zeroes their attention output.
    """
    if mask is None:
        return None, None
    valid = mask.to(torch.bool)
    empty = ~valid.any(dim=1)
    if bool(empty.any()):
        valid = valid | empty.unsqueeze(1)
        return ~valid, empty
    return ~valid, None


class AttentionPooling(nn.Module):
    """One multi-head self-attention layer over a masked sequence, then a masked mean → ``B × D``.

    ``y = LayerNorm(x + Dropout(MHSA(x)))`` with padded positions excluded as keys and from the
    mean (this is the "local" pooling of the Dual Routing design).
    """

    def __init__(self, dim: int, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"AttentionPooling: dim {dim} must be divisible by heads {heads}")
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``B × T × D``; ``mask``: ``B × T`` bool (True = valid) → ``B × D``."""
        padding, empty = key_padding_mask(mask)
        attended, _ = self.attention(x, x, x, key_padding_mask=padding, need_weights=False)
        if empty is not None:
            attended = attended.masked_fill(empty[:, None, None], 0.0)
        return masked_mean(self.norm(x + self.dropout(attended)), mask)
