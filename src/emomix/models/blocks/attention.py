"""Cross-modal attention: one cross-attention layer, its bidirectional pair and MPAF-Net's
pairwise sigmoid attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emomix.errors import ConfigError
from emomix.models.blocks.feedforward import MLP
from emomix.models.blocks.pooling import key_padding_mask


class CrossAttentionLayer(nn.Module):
    """Queries attend to another sequence (post-norm transformer layer without self-attention).

    ``h = LayerNorm(q + Dropout(MHA(q, kv, kv)))``; with ``ffn=True`` (the default)
    ``out = LayerNorm(h + Dropout(FFN(h)))`` with
    ``FFN = Linear(D, ffn_mult·D) → GELU → Dropout → Linear(ffn_mult·D, D)``; with ``ffn=False``
    the layer is the attention sublayer alone (``out = h``, no FFN parameters). Masked keys get no
    attention; a query row whose keys are all masked receives a zero attention update.
    """

    def __init__(self, dim: int, heads: int = 4, dropout: float = 0.1, ffn_mult: int = 2, ffn: bool = True):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"CrossAttentionLayer: dim {dim} must be divisible by heads {heads}")
        if ffn and ffn_mult < 1:
            raise ConfigError(f"CrossAttentionLayer: ffn_mult must be at least 1, got {ffn_mult}")
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.attention_norm = nn.LayerNorm(dim)
        self.ffn: nn.Module | None = None
        self.ffn_norm: nn.Module | None = None
        if ffn:
            self.ffn = nn.Sequential(
                nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_mult * dim, dim)
            )
            self.ffn_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, query: torch.Tensor, key_value: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``query`` ``B × Tq × D``, ``key_value`` ``B × Tk × D``, ``key_mask`` ``B × Tk`` (True = valid)
        → ``B × Tq × D``."""
        padding, empty = key_padding_mask(key_mask)
        attended, _ = self.attention(query, key_value, key_value, key_padding_mask=padding, need_weights=False)
        if empty is not None:
            attended = attended.masked_fill(empty[:, None, None], 0.0)
        hidden = self.attention_norm(query + self.dropout(attended))
        if self.ffn is None or self.ffn_norm is None:
            return hidden
        return self.ffn_norm(hidden + self.dropout(self.ffn(hidden)))


class BidirectionalCrossAttention(nn.Module):
    """Audio→text and text→audio cross-attention, ``num_layers`` deep, each direction its own weights.

    Layers are interleaved: at layer ``l`` the audio queries attend over the text states of layer
    ``l−1`` and the text queries over the audio states of layer ``l−1`` (both updated at once), so
    the second layer attends to a modality that has already seen the other one.
    ``ffn`` / ``ffn_mult``: whether each layer has its feed-forward sublayer (see
    :class:`CrossAttentionLayer`). ``forward(a, a_mask, t, t_mask) -> (a2t B × Ta × D, t2a B × Tt × D)``.
    """

    def __init__(
        self, dim: int, heads: int = 4, num_layers: int = 2, dropout: float = 0.1, ffn: bool = True, ffn_mult: int = 2
    ):
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"BidirectionalCrossAttention needs at least one layer, got {num_layers}")
        self.audio_to_text = nn.ModuleList(
            CrossAttentionLayer(dim, heads, dropout, ffn_mult, ffn) for _ in range(num_layers)
        )
        self.text_to_audio = nn.ModuleList(
            CrossAttentionLayer(dim, heads, dropout, ffn_mult, ffn) for _ in range(num_layers)
        )

    def forward(
        self, a: torch.Tensor, a_mask: torch.Tensor | None, t: torch.Tensor, t_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio queries over text keys, text queries over audio keys."""
        for a_layer, t_layer in zip(self.audio_to_text, self.text_to_audio):
            a, t = a_layer(a, t, t_mask), t_layer(t, a, a_mask)
        return a, t


class PairwiseSigmoidAttention(nn.Module):
    """MPAF-Net's pairwise cross-modal attention between two feature vectors.

    ``p_i = Dropout(ReLU(W_i f_i + b_i))`` (``project1``/``project2`` then ``dropout``);
    ``s = score([f1; f2; p1; p2])`` with a two-layer ReLU MLP giving one scalar;
    ``α = sigmoid(s)``; ``fused = α·p1 + (1−α)·p2``. ``forward(f1, f2) -> (fused B × out_dim, α B × 1)``.
    """

    def __init__(self, dim1: int, dim2: int, out_dim: int, hidden_dim: int = 128, dropout: float = 0.2):
        super().__init__()
        self.project1 = nn.Linear(dim1, out_dim)
        self.project2 = nn.Linear(dim2, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.score = MLP(dim1 + dim2 + 2 * out_dim, hidden_dim, 1, num_layers=2, dropout=0.0, activation="relu")

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse ``f1`` (``B × dim1``) and ``f2`` (``B × dim2``)."""
        p1 = self.dropout(F.relu(self.project1(f1)))
        p2 = self.dropout(F.relu(self.project2(f2)))
        alpha = torch.sigmoid(self.score(torch.cat([f1, f2, p1, p2], dim=-1)))
        return alpha * p1 + (1 - alpha) * p2, alpha
