"""The shared building blocks every model file is assembled from.

Each block is written and tested once here; a model file names the blocks its paper uses and
wires them together. Conventions shared by all blocks:

- masks are bool tensors with True on valid positions (frames, tokens, utterances);
- padded positions never change an output: they are excluded from attention keys, from pooling,
  from graphs and from recurrent passes (the tests check this by filling padding with random
  values);
- gates and routers return probabilities that sum to 1 per row.

Contents: pooling (:func:`masked_mean`, :class:`AttentionPooling`), feed-forward parts
(:class:`MLP`, :class:`Expert`), routing (:class:`TwoExpertRouter`, :class:`TopKGate`,
:func:`load_balance_loss`, :class:`MixtureOfExperts`), cross-modal attention
(:class:`CrossAttentionLayer`, :class:`BidirectionalCrossAttention`,
:class:`PairwiseSigmoidAttention`), the time-aligned token–frame graph
(:func:`valid_bipartite_edges`, :func:`bipartite_edges_to_graph`, :class:`BipartiteGAT`) and
conversation context (:class:`DialogueContext`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from emomix.errors import ConfigError

__all__ = [
    "AttentionPooling",
    "BidirectionalCrossAttention",
    "BipartiteGAT",
    "CrossAttentionLayer",
    "DialogueContext",
    "Expert",
    "MLP",
    "MixtureOfExperts",
    "PairwiseSigmoidAttention",
    "TopKGate",
    "TwoExpertRouter",
    "bipartite_edges_to_graph",
    "load_balance_loss",
    "masked_mean",
    "valid_bipartite_edges",
]


# ---------------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------------

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


def _key_padding_mask(mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
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
        padding, empty = _key_padding_mask(mask)
        attended, _ = self.attention(x, x, x, key_padding_mask=padding, need_weights=False)
        if empty is not None:
            attended = attended.masked_fill(empty[:, None, None], 0.0)
        return masked_mean(self.norm(x + self.dropout(attended)), mask)


# ---------------------------------------------------------------------------------------------
# Feed-forward parts
# ---------------------------------------------------------------------------------------------

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; use one of {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


class MLP(nn.Module):
    """``num_layers`` linear layers with activation and dropout between them (none after the last).

    ``num_layers=1`` is a single linear map ``in_dim → out_dim``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2,
                 dropout: float = 0.1, activation: str = "gelu"):
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"MLP needs at least one layer, got num_layers={num_layers}")
        sizes = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for index, (size_in, size_out) in enumerate(zip(sizes[:-1], sizes[1:])):
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

    def __init__(self, in_dim: int, out_dim: int, kind: str = "mlp", dropout: float = 0.1,
                 num_classes: int | None = None):
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


# ---------------------------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------------------------

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

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None
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

    def forward(self, gate_input: torch.Tensor, *expert_args: torch.Tensor, gate_mask: torch.Tensor | None = None
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


# ---------------------------------------------------------------------------------------------
# Cross-modal attention
# ---------------------------------------------------------------------------------------------

class CrossAttentionLayer(nn.Module):
    """Queries attend to another sequence (post-norm transformer layer without self-attention).

    ``h = LayerNorm(q + Dropout(MHA(q, kv, kv)))``; ``out = LayerNorm(h + Dropout(FFN(h)))`` with
    ``FFN = Linear(D, ffn_mult·D) → GELU → Dropout → Linear(ffn_mult·D, D)``. Masked keys get no
    attention; a query row whose keys are all masked receives a zero attention update.
    """

    def __init__(self, dim: int, heads: int = 4, dropout: float = 0.1, ffn_mult: int = 2):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"CrossAttentionLayer: dim {dim} must be divisible by heads {heads}")
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.attention_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_mult * dim, dim))
        self.ffn_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``query`` ``B × Tq × D``, ``key_value`` ``B × Tk × D``, ``key_mask`` ``B × Tk`` (True = valid) → ``B × Tq × D``."""
        padding, empty = _key_padding_mask(key_mask)
        attended, _ = self.attention(query, key_value, key_value, key_padding_mask=padding, need_weights=False)
        if empty is not None:
            attended = attended.masked_fill(empty[:, None, None], 0.0)
        hidden = self.attention_norm(query + self.dropout(attended))
        return self.ffn_norm(hidden + self.dropout(self.ffn(hidden)))


class BidirectionalCrossAttention(nn.Module):
    """Audio→text and text→audio cross-attention, ``num_layers`` deep, each direction its own weights.

    Layers are interleaved: at layer ``l`` the audio queries attend over the text states of layer
    ``l−1`` and the text queries over the audio states of layer ``l−1`` (both updated at once), so
    the second layer attends to a modality that has already seen the other one.
    ``forward(a, a_mask, t, t_mask) -> (a2t B × Ta × D, t2a B × Tt × D)``.
    """

    def __init__(self, dim: int, heads: int = 4, num_layers: int = 2, dropout: float = 0.1):
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"BidirectionalCrossAttention needs at least one layer, got {num_layers}")
        self.audio_to_text = nn.ModuleList(CrossAttentionLayer(dim, heads, dropout) for _ in range(num_layers))
        self.text_to_audio = nn.ModuleList(CrossAttentionLayer(dim, heads, dropout) for _ in range(num_layers))

    def forward(self, a: torch.Tensor, a_mask: torch.Tensor | None, t: torch.Tensor, t_mask: torch.Tensor | None
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


# ---------------------------------------------------------------------------------------------
# The time-aligned token–frame graph
# ---------------------------------------------------------------------------------------------

def valid_bipartite_edges(edges: torch.Tensor | None, text_mask: torch.Tensor, audio_mask: torch.Tensor
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


class BipartiteGAT(nn.Module):
    """A graph attention network over the time-aligned token–frame graph of each utterance.

    Token states and frame states are projected to ``hidden_dim`` (separate projections, so node
    type is part of the features); an edge joins token ``i`` and frame ``j`` when the frame lies
    inside the token's time span, in both directions, plus a self loop on every node (an
    utterance without edges still gets an embedding). ``num_layers`` ``GATConv`` layers with
    ``heads`` concatenated heads of ``hidden_dim / heads`` each, ELU and dropout between layers;
    the embedding is the mean over all nodes of the graph → ``B × hidden_dim``.
    """

    def __init__(self, text_dim: int, audio_dim: int, hidden_dim: int, heads: int = 4, num_layers: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        from torch_geometric.nn import GATConv

        if hidden_dim % heads:
            raise ConfigError(f"BipartiteGAT: hidden_dim {hidden_dim} must be divisible by heads {heads}")
        if num_layers < 1:
            raise ConfigError(f"BipartiteGAT needs at least one layer, got {num_layers}")
        self.text_projection = nn.Linear(text_dim, hidden_dim)
        self.audio_projection = nn.Linear(audio_dim, hidden_dim)
        self.layers = nn.ModuleList(
            GATConv(hidden_dim, hidden_dim // heads, heads=heads, dropout=dropout, add_self_loops=True)
            for _ in range(num_layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.hidden_dim = hidden_dim

    def forward(self, text_states: torch.Tensor, text_mask: torch.Tensor, audio_states: torch.Tensor,
                audio_mask: torch.Tensor, edges: Sequence[torch.Tensor | None] | None) -> torch.Tensor:
        """Graph embeddings ``B × hidden_dim``; ``edges[b]`` is utterance ``b``'s ``2 × E``
        (token position, frame position) tensor (None or empty: no edges)."""
        from torch_geometric.data import Batch as GraphBatch
        from torch_geometric.nn import global_mean_pool

        batch_size = text_states.shape[0]
        if edges is not None and len(edges) != batch_size:
            raise ValueError(f"BipartiteGAT got {len(edges)} edge tensors for a batch of {batch_size} utterances")
        text_nodes = self.text_projection(text_states)
        audio_nodes = self.audio_projection(audio_states)
        graphs = []
        for row in range(batch_size):
            tokens, frames, node_edges = valid_bipartite_edges(None if edges is None else edges[row],
                                                               text_mask[row], audio_mask[row])
            graphs.append(bipartite_edges_to_graph(text_nodes[row, tokens], audio_nodes[row, frames], node_edges))
        graph = GraphBatch.from_data_list(graphs)
        x = graph.x
        for index, layer in enumerate(self.layers):
            x = layer(self.dropout(x), graph.edge_index)
            if index < len(self.layers) - 1:
                x = F.elu(x)
        return global_mean_pool(x, graph.batch, size=batch_size)


# ---------------------------------------------------------------------------------------------
# Conversation context
# ---------------------------------------------------------------------------------------------

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
        packed = nn.utils.rnn.pack_padded_sequence(hidden, lengths.clamp_min(1).cpu(), batch_first=True,
                                                   enforce_sorted=False)
        output, _ = self.gru(packed)
        output, _ = nn.utils.rnn.pad_packed_sequence(output, batch_first=True, total_length=length)
        return output.masked_fill(~mask.unsqueeze(-1), 0.0)
