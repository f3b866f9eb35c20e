"""Conversation context over a dialogue's utterance sequence."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emomix.errors import ConfigError


class DialogueContext(nn.Module):
    """Context over a dialogue's utterance sequence: 1-D convolution then a bidirectional GRU.

    ``x`` ``B × N × in_dim`` (utterance vectors), ``mask`` ``B × N`` (True on real utterances,
    which must come first in each row). Padded utterances are zeroed before the convolution
    (same padding, ReLU, dropout) and skipped by the GRU (packed by lengths), so they change
    nothing. Output ``B × N × out_dim`` with ``out_dim = 2 · hidden_dim`` (forward and backward
    states concatenated, not projected back), zero at padded positions.
    """

    def __init__(self, in_dim: int, hidden_dim: int, kernel_size: int = 3, dropout: float = 0.1):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"DialogueContext: kernel_size must be odd (same padding), got {kernel_size}")
        self.conv = nn.Conv1d(in_dim, hidden_dim, kernel_size, padding=kernel_size // 2)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(hidden_dim, hidden_dim, batch_first=True, bidirectional=True)
        self.out_dim = 2 * hidden_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Context-enriched utterance states ``B × N × 2·hidden_dim``."""
        batch_size, length = x.shape[:2]
        if mask is None:
            mask = torch.ones((batch_size, length), dtype=torch.bool, device=x.device)
        mask = mask.to(torch.bool)
        lengths = mask.sum(dim=1)
        prefix = torch.arange(length, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
        if not torch.equal(prefix, mask):
            raise ValueError("DialogueContext: each row's valid utterances must come first (padding at the end)")
        x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        hidden = self.dropout(F.relu(self.conv(x.transpose(1, 2)).transpose(1, 2)))
        # an empty dialogue still needs one step for packing; its output is zeroed below
        packed = nn.utils.rnn.pack_padded_sequence(
            hidden, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False
        )
        output, _ = self.gru(packed)
        output, _ = nn.utils.rnn.pad_packed_sequence(output, batch_first=True, total_length=length)
        return output.masked_fill(~mask.unsqueeze(-1), 0.0)
