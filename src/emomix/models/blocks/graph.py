"""The time-aligned token–frame graph: edges as a dense adjacency, and the GAT over it.

The graph of an utterance is bipartite: its nodes are the valid text tokens and the valid speech
frames, an edge joins token ``i`` and frame ``j`` when the frame lies in the token's time span,
and every node has a self loop. The GAT runs on the whole padded batch at once, in dense form:
the edges are a ``B × T_tok × T_frame`` bool adjacency, and each layer's attention is a masked
softmax over ``[self; neighbours]`` followed by a matrix product (no per-utterance graph, no
scatter), which traces to ONNX with dynamic batch and lengths. It computes what
torch_geometric's ``GATConv`` computes on the same graph (the tests check both on ragged
batches), with the same parameters.

Edge lists (``2 × E`` per utterance, as the collator gives them) become an adjacency with
:func:`edges_to_adjacency`; :func:`valid_bipartite_edges` and :func:`bipartite_edges_to_graph`
give one utterance's graph in torch_geometric's sparse form (for inspection and as the tests'
reference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from emomix.errors import ConfigError


def valid_bipartite_edges(
    edges: torch.Tensor | None, text_mask: torch.Tensor, audio_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Map one utterance's ``2 × E`` (token position, frame position) edges onto node numbers.

    ``text_mask`` (``T_t``) and ``audio_mask`` (``T_a``) mark the valid positions of the padded
    rows; node ``i`` is the ``i``-th valid token, node ``n_t + j`` the ``j``-th valid frame.
    Edges touching a padded or cut-off position are dropped (features truncated to a maximum
    length cut their edges too). Returns ``(token_positions, frame_positions, edges 2 × E')``.
    """
    token_positions = text_mask.to(torch.bool).nonzero(as_tuple=True)[0]
    frame_positions = audio_mask.to(torch.bool).nonzero(as_tuple=True)[0]
    device = text_mask.device
    if edges is None or edges.numel() == 0:
        return token_positions, frame_positions, torch.zeros((2, 0), dtype=torch.long, device=device)
    edges = edges.to(device=device, dtype=torch.long)
    if edges.dim() != 2 or edges.shape[0] != 2:
        raise ValueError(f"edges must be a 2 × E tensor of (token, frame) positions, got shape {tuple(edges.shape)}")
    if bool((edges < 0).any()):
        raise ValueError("edges hold negative positions; they must index tokens and frames from 0")
    token_node = torch.full((text_mask.shape[0],), -1, dtype=torch.long, device=device)
    token_node[token_positions] = torch.arange(len(token_positions), device=device)
    frame_node = torch.full((audio_mask.shape[0],), -1, dtype=torch.long, device=device)
    frame_node[frame_positions] = torch.arange(len(frame_positions), device=device)
    inside = (edges[0] < token_node.shape[0]) & (edges[1] < frame_node.shape[0])
    edges = edges[:, inside]
    tokens, frames = token_node[edges[0]], frame_node[edges[1]]
    keep = (tokens >= 0) & (frames >= 0)
    return token_positions, frame_positions, torch.stack([tokens[keep], frames[keep] + len(token_positions)])


def bipartite_edges_to_graph(text_nodes: torch.Tensor, audio_nodes: torch.Tensor, edges: torch.Tensor):
    """One utterance's graph as a torch-geometric ``Data``: nodes ``[text_nodes; audio_nodes]``
    (same feature size) and every token–frame edge in both directions.

    ``edges`` is ``2 × E`` in node numbers (tokens first, frames offset by the token count), as
    :func:`valid_bipartite_edges` returns them. Self loops are added by the GAT layers.
    """
    from torch_geometric.data import Data

    undirected = torch.cat([edges, edges.flip(0)], dim=1)
    return Data(x=torch.cat([text_nodes, audio_nodes], dim=0), edge_index=undirected)


def pad_edges(
    edges: Sequence[torch.Tensor | None], device: torch.device | None = None, error: type[Exception] = ValueError
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-utterance ``2 × E_b`` (token, frame) edge tensors into ``B × E`` token and frame
    index tensors, padded with -1 (None or empty: no edges). Raises ``error`` on a tensor that is
    not ``2 × E`` or holds a negative index."""
    rows = []
    for item in edges:
        tensor = torch.zeros((2, 0), dtype=torch.long) if item is None else torch.as_tensor(item)
        tensor = tensor.to(device=device, dtype=torch.long)
        if tensor.dim() != 2 or tensor.shape[0] != 2:
            raise error(f"an edge tensor must be 2 × E (token index, frame index); got shape {tuple(tensor.shape)}")
        if tensor.numel() and int(tensor.min()) < 0:
            raise error("edge indices must not be negative")
        rows.append(tensor.T)
    if not rows:
        empty = torch.zeros((0, 0), dtype=torch.long, device=device)
        return empty, empty
    padded = nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=-1)
    return padded[..., 0], padded[..., 1]


def pairs_to_adjacency(tokens: torch.Tensor, frames: torch.Tensor, num_tokens: int, num_frames: int) -> torch.Tensor:
    """The ``B × num_tokens × num_frames`` bool adjacency of ``B × E`` (token, frame) index pairs,
    built as a product of one-hot comparisons (no scatter): a pair with an index outside
    ``[0, num_tokens) × [0, num_frames)`` (e.g. the -1 padding) adds nothing, a repeated pair
    counts once."""
    token_hot = (tokens.unsqueeze(-1) == torch.arange(num_tokens, device=tokens.device)).to(torch.float32)
    frame_hot = (frames.unsqueeze(-1) == torch.arange(num_frames, device=frames.device)).to(torch.float32)
    return torch.bmm(token_hot.transpose(1, 2), frame_hot) > 0


def edges_to_adjacency(
    edges: Sequence[torch.Tensor | None] | None, text_mask: torch.Tensor, audio_mask: torch.Tensor
) -> torch.Tensor:
    """Per-utterance ``2 × E`` (token position, frame position) edges → the ``B × T_t × T_a`` bool
    adjacency; edges touching a padded or out-of-range position are dropped (as
    :func:`valid_bipartite_edges` drops them), None gives no edges."""
    text_mask, audio_mask = text_mask.to(torch.bool), audio_mask.to(torch.bool)
    valid = text_mask.unsqueeze(2) & audio_mask.unsqueeze(1)
    if edges is None:
        return torch.zeros_like(valid)
    if len(edges) != text_mask.shape[0]:
        raise ValueError(f"got {len(edges)} edge tensors for a batch of {text_mask.shape[0]} utterances")
    tokens, frames = pad_edges(edges, device=text_mask.device)
    return pairs_to_adjacency(tokens, frames, text_mask.shape[1], audio_mask.shape[1]) & valid


def _glorot(parameter: torch.Tensor) -> None:
    bound = math.sqrt(6.0 / (parameter.size(-2) + parameter.size(-1)))
    with torch.no_grad():
        parameter.uniform_(-bound, bound)


class BipartiteGATLayer(nn.Module):
    """One graph attention layer (``GATConv``: concatenated heads, LeakyReLU 0.2 scores, a self
    loop on every node) over the bipartite token–frame graph, in dense form.

    A destination node attends over itself and its neighbours of the other side: scores
    ``LeakyReLU(a_srcᵀ W x_j + a_dstᵀ W x_i)``, a softmax over ``[self; neighbours]`` (non-edges
    masked out), dropout on the attention weights while training, then ``Σ α_ij W x_j`` per head,
    heads concatenated, plus a bias. Parameters and their initialisation are ``GATConv``'s
    (``lin.weight``, ``att_src``, ``att_dst``, ``bias``), so the checkpoints of the sparse version
    load unchanged and a seed draws the same weights.
    """

    negative_slope = 0.2

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"BipartiteGATLayer: dim {dim} must be divisible by heads {heads}")
        self.heads, self.channels, self.dropout = heads, dim // heads, dropout
        self.att_src = nn.Parameter(torch.empty(1, heads, dim // heads))
        self.att_dst = nn.Parameter(torch.empty(1, heads, dim // heads))
        self.bias = nn.Parameter(torch.empty(dim))
        self.lin = nn.utils.skip_init(nn.Linear, dim, dim, bias=False)
        _glorot(self.lin.weight)  # GATConv's Linear draws its weight once when built, once more on reset
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform ``lin.weight``, ``att_src`` and ``att_dst``, zero bias (as ``GATConv``)."""
        _glorot(self.lin.weight)
        _glorot(self.att_src)
        _glorot(self.att_dst)
        nn.init.zeros_(self.bias)

    def _attend(
        self,
        values: torch.Tensor,
        source: torch.Tensor,
        target: torch.Tensor,
        other_values: torch.Tensor,
        other_source: torch.Tensor,
        adjacency: torch.Tensor,
    ) -> torch.Tensor:
        """New states of one side's nodes (``B × N × H × C``) from themselves and the other side's
        nodes (``B × M × H × C``) they are joined to (``adjacency`` ``B × N × M``)."""
        target_h = target.transpose(1, 2).unsqueeze(-1)  # B × H × N × 1
        own = F.leaky_relu(source.transpose(1, 2).unsqueeze(-1) + target_h, self.negative_slope)
        cross = F.leaky_relu(target_h + other_source.transpose(1, 2).unsqueeze(-2), self.negative_slope)
        cross = cross.masked_fill(~adjacency.unsqueeze(1), float("-inf"))  # B × H × N × M
        weights = torch.softmax(torch.cat([own, cross], dim=-1), dim=-1)
        weights = F.dropout(weights, self.dropout, self.training)
        mixed = weights[..., :1] * values.transpose(1, 2) + torch.matmul(weights[..., 1:], other_values.transpose(1, 2))
        return mixed.transpose(1, 2)

    def forward(
        self, text: torch.Tensor, audio: torch.Tensor, adjacency: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token nodes ``B × T_t × D``, frame nodes ``B × T_a × D`` and the bool adjacency
        ``B × T_t × T_a`` → the new token and frame nodes (same shapes)."""
        text_h = self.lin(text).unflatten(-1, (self.heads, self.channels))
        audio_h = self.lin(audio).unflatten(-1, (self.heads, self.channels))
        text_src, text_dst = (text_h * self.att_src).sum(-1), (text_h * self.att_dst).sum(-1)
        audio_src, audio_dst = (audio_h * self.att_src).sum(-1), (audio_h * self.att_dst).sum(-1)
        new_text = self._attend(text_h, text_src, text_dst, audio_h, audio_src, adjacency)
        new_audio = self._attend(audio_h, audio_src, audio_dst, text_h, text_src, adjacency.transpose(1, 2))
        return new_text.flatten(2) + self.bias, new_audio.flatten(2) + self.bias


class BipartiteGAT(nn.Module):
    """A graph attention network over the time-aligned token–frame graph of each utterance.

    Token states and frame states are projected to ``hidden_dim`` (separate projections, so node
    type is part of the features); an edge joins token ``i`` and frame ``j`` when the frame lies
    inside the token's time span, in both directions, plus a self loop on every node (an
    utterance without edges still gets an embedding). ``num_layers`` :class:`BipartiteGATLayer`
    layers (``GATConv``) with ``heads`` concatenated heads of ``hidden_dim / heads`` each, ELU and
    dropout between layers; the embedding is the mean over all valid nodes → ``B × hidden_dim``.
    """

    def __init__(
        self, text_dim: int, audio_dim: int, hidden_dim: int, heads: int = 4, num_layers: int = 2, dropout: float = 0.1
    ):
        super().__init__()
        if hidden_dim % heads:
            raise ConfigError(f"BipartiteGAT: hidden_dim {hidden_dim} must be divisible by heads {heads}")
        if num_layers < 1:
            raise ConfigError(f"BipartiteGAT needs at least one layer, got {num_layers}")
        self.text_projection = nn.Linear(text_dim, hidden_dim)
        self.audio_projection = nn.Linear(audio_dim, hidden_dim)
        self.layers = nn.ModuleList(BipartiteGATLayer(hidden_dim, heads, dropout) for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self.hidden_dim = hidden_dim

    def forward(
        self,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
        audio_states: torch.Tensor,
        audio_mask: torch.Tensor,
        edges: torch.Tensor | Sequence[torch.Tensor | None] | None,
    ) -> torch.Tensor:
        """Graph embeddings ``B × hidden_dim``. ``edges`` is the ``B × T_t × T_a`` bool adjacency,
        or one ``2 × E`` (token position, frame position) tensor per utterance (None or empty:
        no edges), converted by :func:`edges_to_adjacency`. Edges to padded positions are ignored."""
        text_mask, audio_mask = text_mask.to(torch.bool), audio_mask.to(torch.bool)
        if isinstance(edges, torch.Tensor):
            adjacency = edges.to(torch.bool) & text_mask.unsqueeze(2) & audio_mask.unsqueeze(1)
        else:
            if edges is not None and len(edges) != text_states.shape[0]:
                raise ValueError(
                    f"BipartiteGAT got {len(edges)} edge tensors for a batch of {text_states.shape[0]} utterances"
                )
            adjacency = edges_to_adjacency(edges, text_mask, audio_mask)
        zero = torch.zeros((), dtype=text_states.dtype, device=text_states.device)
        # padded positions may hold anything (even NaN): zero them so they cannot reach a product
        text = self.text_projection(torch.where(text_mask.unsqueeze(-1), text_states, zero))
        audio = self.audio_projection(torch.where(audio_mask.unsqueeze(-1), audio_states, zero))
        for index, layer in enumerate(self.layers):
            text, audio = layer(self.dropout(text), self.dropout(audio), adjacency)
            if index < len(self.layers) - 1:
                text, audio = F.elu(text), F.elu(audio)
        total = torch.where(text_mask.unsqueeze(-1), text, zero).sum(1) + torch.where(
            audio_mask.unsqueeze(-1), audio, zero
        ).sum(1)
        count = (text_mask.sum(1) + audio_mask.sum(1)).clamp_min(1).unsqueeze(-1).to(total.dtype)
        return total / count
