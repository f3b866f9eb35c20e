"""The time-aligned token–frame graph: edge filtering, conversion to a node graph, the GAT over it."""

from __future__ import annotations

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


class BipartiteGAT(nn.Module):
    """A graph attention network over the time-aligned token–frame graph of each utterance.

    Token states and frame states are projected to ``hidden_dim`` (separate projections, so node
    type is part of the features); an edge joins token ``i`` and frame ``j`` when the frame lies
    inside the token's time span, in both directions, plus a self loop on every node (an
    utterance without edges still gets an embedding). ``num_layers`` ``GATConv`` layers with
    ``heads`` concatenated heads of ``hidden_dim / heads`` each, ELU and dropout between layers;
    the embedding is the mean over all nodes of the graph → ``B × hidden_dim``.
    """

    def __init__(
        self, text_dim: int, audio_dim: int, hidden_dim: int, heads: int = 4, num_layers: int = 2, dropout: float = 0.1
    ):
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

    def forward(
        self,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
        audio_states: torch.Tensor,
        audio_mask: torch.Tensor,
        edges: Sequence[torch.Tensor | None] | None,
    ) -> torch.Tensor:
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
            tokens, frames, node_edges = valid_bipartite_edges(
                None if edges is None else edges[row], text_mask[row], audio_mask[row]
            )
            graphs.append(bipartite_edges_to_graph(text_nodes[row, tokens], audio_nodes[row, frames], node_edges))
        graph = GraphBatch.from_data_list(graphs)
        x = graph.x
        for index, layer in enumerate(self.layers):
            x = layer(self.dropout(x), graph.edge_index)
            if index < len(self.layers) - 1:
                x = F.elu(x)
        return global_mean_pool(x, graph.batch, size=batch_size)
