"""Tests of the shared model blocks: shapes, padding invariance, routing sums, hand-checked parts."""

from __future__ import annotations

import pytest
import torch

from emomix.errors import ConfigError
from emomix.models.blocks import (
    MLP,
    AttentionPooling,
    BidirectionalCrossAttention,
    BipartiteGAT,
    BipartiteGATLayer,
    CrossAttentionLayer,
    DialogueContext,
    Expert,
    MixtureOfExperts,
    PairwiseSigmoidAttention,
    TopKGate,
    TwoExpertRouter,
    bipartite_edges_to_graph,
    edges_to_adjacency,
    load_balance_loss,
    masked_mean,
    pairs_to_adjacency,
    valid_bipartite_edges,
)

ATOL = 1e-5


def lengths_mask(lengths: list[int], total: int) -> torch.Tensor:
    return torch.arange(total).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


def pad_more(x: torch.Tensor, mask: torch.Tensor, extra: int, seed: int = 99) -> tuple[torch.Tensor, torch.Tensor]:
    """The same batch with its padding refilled by random values and ``extra`` more masked positions."""
    generator = torch.Generator().manual_seed(seed)
    batch, length = mask.shape
    noise = torch.randn((batch, length + extra, *x.shape[2:]), generator=generator) * 10
    padded = noise.clone()
    padded[:, :length] = torch.where(mask.reshape(batch, length, *([1] * (x.dim() - 2))), x, noise[:, :length])
    new_mask = torch.cat([mask, torch.zeros((batch, extra), dtype=torch.bool)], dim=1)
    return padded, new_mask


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------------- pooling


def test_masked_mean_averages_only_valid_positions_even_with_inf_padding():
    x = torch.randn(3, 5, 4)
    mask = lengths_mask([5, 2, 1], 5)
    x[1, 2:] = float("inf")
    x[2, 1:] = float("nan")
    pooled = masked_mean(x, mask)
    assert torch.allclose(pooled[0], x[0].mean(0))
    assert torch.allclose(pooled[1], x[1, :2].mean(0))
    assert torch.allclose(pooled[2], x[2, 0])


def test_masked_mean_row_without_valid_positions_is_zero():
    pooled = masked_mean(torch.randn(2, 3, 4), torch.tensor([[True, False, False], [False, False, False]]))
    assert torch.all(pooled[1] == 0)


def test_attention_pooling_ignores_padding():
    pool = AttentionPooling(16, heads=4).eval()
    x = torch.randn(4, 6, 16)
    mask = lengths_mask([6, 3, 1, 4], 6)
    padded, padded_mask = pad_more(x, mask, extra=5)
    out = pool(x, mask)
    assert out.shape == (4, 16)
    assert torch.allclose(out, pool(padded, padded_mask), atol=ATOL)
    # but valid content matters
    changed = x.clone()
    changed[1, 0] += 1.0
    assert not torch.allclose(out[1], pool(changed, mask)[1], atol=1e-3)


def test_attention_pooling_row_without_valid_frames_is_finite():
    pool = AttentionPooling(8, heads=2).eval()
    out = pool(torch.randn(2, 3, 8), torch.tensor([[True, True, False], [False, False, False]]))
    assert torch.isfinite(out).all()


# --------------------------------------------------------------------------------- feed-forward


def test_mlp_layer_count_and_activation():
    mlp = MLP(8, 16, 3, num_layers=3, activation="relu")
    linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(8, 16), (16, 16), (16, 3)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in mlp.modules()) == 2
    assert MLP(8, 16, 3)(torch.randn(5, 8)).shape == (5, 3)
    with pytest.raises(ConfigError, match="activation 'tanh'"):
        MLP(8, 16, 3, activation="tanh")


def test_expert_kinds_and_head():
    z, logits = Expert(8, 6)(torch.randn(2, 8))
    assert z.shape == (2, 6) and logits is None
    expert = Expert(8, 6, kind="linear", num_classes=4).eval()
    x = torch.randn(2, 8)
    z, logits = expert(x)
    assert isinstance(expert.body, torch.nn.Linear)
    assert torch.allclose(logits, expert.head(expert.body(x)))
    with pytest.raises(ConfigError, match="expert kind 'conv'"):
        Expert(8, 6, kind="conv")


# --------------------------------------------------------------------------------- routing


def test_two_expert_router_probabilities_sum_to_one():
    probs = TwoExpertRouter(10, hidden_dim=8)(torch.randn(7, 10))
    assert probs.shape == (7, 2)
    assert (probs > 0).all()
    assert torch.allclose(probs.sum(-1), torch.ones(7))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_gate_keeps_exactly_k_renormalised_weights(k):
    gate = TopKGate(12, num_experts=5, k=k)
    weights, probs, balance = gate(torch.randn(9, 12))
    assert torch.allclose(weights.sum(-1), torch.ones(9), atol=ATOL)
    assert torch.allclose(probs.sum(-1), torch.ones(9), atol=ATOL)
    assert ((weights > 0).sum(-1) == k).all()
    top_values, top_index = probs.topk(k, dim=-1)
    assert torch.allclose(weights.gather(-1, top_index), top_values / top_values.sum(-1, keepdim=True), atol=ATOL)
    assert balance.dim() == 0 and 1.0 - 1e-6 <= balance.item() <= 5.0


def test_top_k_gate_rejects_bad_k():
    with pytest.raises(ConfigError, match="k must be between 1 and the number of experts \\(3\\), got k=4"):
        TopKGate(4, num_experts=3, k=4)


def test_top_k_gate_noise_only_in_training():
    gate = TopKGate(6, num_experts=4, k=2, noise_std=1.0)
    x = torch.randn(5, 6)
    gate.eval()
    assert torch.equal(gate(x)[1], gate(x)[1])
    gate.train()
    assert not torch.equal(gate(x)[1], gate(x)[1])


def test_load_balance_loss_is_one_when_balanced_and_grows_with_imbalance():
    experts = 4
    balanced = torch.eye(experts)
    assert float(load_balance_loss(balanced)) == pytest.approx(1.0)
    assert float(load_balance_loss(torch.full((6, experts), 1 / experts))) == pytest.approx(1.0)
    values = []
    for share in (0.25, 0.5, 0.75, 1.0):
        # `share` of the rows go to expert 0, the rest spread evenly
        rows = 8
        to_first = int(share * rows)
        probs = torch.cat([balanced[0].repeat(to_first, 1), balanced[torch.arange(rows - to_first) % 3 + 1]])
        values.append(float(load_balance_loss(probs)))
    assert values == sorted(values) and values[0] < values[-1]
    assert values[-1] == pytest.approx(experts)


def test_load_balance_loss_mask_leaves_out_rows():
    probs = torch.cat([torch.eye(2), torch.tensor([[1.0, 0.0]] * 4)])
    mask = torch.tensor([True, True, False, False, False, False])
    assert float(load_balance_loss(probs, mask)) == pytest.approx(1.0)
    # unmasked, 5 of 6 rows go to expert 0: 2 · (5/6 · 5/6 + 1/6 · 1/6)
    assert float(load_balance_loss(probs)) == pytest.approx(2 * (25 + 1) / 36)


def test_mixture_of_experts_is_weighted_sum_and_unselected_experts_get_no_gradient():
    experts = [Expert(6, 4, kind="linear") for _ in range(4)]
    moe = MixtureOfExperts(experts, TopKGate(6, 4, k=1)).eval()
    gate_input, x = torch.randn(1, 6), torch.randn(1, 6)
    output, aux, _balance = moe(gate_input, x)
    manual = sum(aux["gate_weights"][:, e : e + 1] * experts[e](x)[0] for e in range(4))
    assert torch.allclose(output, manual, atol=ATOL)
    assert aux["expert_outputs"].shape == (1, 4, 4)
    assert aux["gate_probs"].shape == (1, 4)
    chosen = int(aux["gate_weights"].argmax())
    output.sum().backward()
    for e, expert in enumerate(experts):
        has_grad = expert.body.weight.grad is not None and expert.body.weight.grad.abs().sum() > 0
        assert has_grad == (e == chosen)
    with pytest.raises(ConfigError, match="3 experts but the gate routes over 4"):
        MixtureOfExperts(experts[:3], TopKGate(6, 4))


def test_mixture_of_experts_over_sequences_broadcasts_weights():
    experts = [CrossAttentionLayer(8, heads=2) for _ in range(3)]
    moe = MixtureOfExperts(experts, TopKGate(8, 3, k=2)).eval()
    q, kv = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    output, aux, _ = moe(q.mean(1), q, kv, lengths_mask([5, 2], 5))
    assert output.shape == (2, 3, 8)
    manual = (aux["gate_weights"][:, :, None, None] * aux["expert_outputs"]).sum(1)
    assert torch.allclose(output, manual, atol=ATOL)


# --------------------------------------------------------------------------------- cross-attention


def test_cross_attention_ignores_masked_keys():
    layer = CrossAttentionLayer(16, heads=4).eval()
    query, keys = torch.randn(3, 4, 16), torch.randn(3, 6, 16)
    key_mask = lengths_mask([6, 3, 2], 6)
    out = layer(query, keys, key_mask)
    assert out.shape == (3, 4, 16)
    padded, padded_mask = pad_more(keys, key_mask, extra=3)
    assert torch.allclose(out, layer(query, padded, padded_mask), atol=ATOL)
    # a valid key does change the result
    changed = keys.clone()
    changed[1, 0] += 2.0
    assert not torch.allclose(out[1], layer(query, changed, key_mask)[1], atol=1e-3)


def test_cross_attention_without_valid_keys_is_finite():
    layer = CrossAttentionLayer(8, heads=2).eval()
    out = layer(torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.tensor([[True] * 4, [False] * 4]))
    assert torch.isfinite(out).all()


def test_bidirectional_cross_attention_shapes_padding_and_separate_weights():
    block = BidirectionalCrossAttention(16, heads=4, num_layers=2).eval()
    a, t = torch.randn(4, 7, 16), torch.randn(4, 5, 16)
    a_mask, t_mask = lengths_mask([7, 4, 2, 1], 7), lengths_mask([5, 5, 3, 2], 5)
    a2t, t2a = block(a, a_mask, t, t_mask)
    assert a2t.shape == (4, 7, 16) and t2a.shape == (4, 5, 16)
    a_pad, a_pad_mask = pad_more(a, a_mask, extra=3, seed=1)
    t_pad, t_pad_mask = pad_more(t, t_mask, extra=2, seed=2)
    a2t_p, t2a_p = block(a_pad, a_pad_mask, t_pad, t_pad_mask)
    assert torch.allclose(masked_mean(a2t, a_mask), masked_mean(a2t_p, a_pad_mask), atol=ATOL)
    assert torch.allclose(masked_mean(t2a, t_mask), masked_mean(t2a_p, t_pad_mask), atol=ATOL)
    audio_params = {id(p) for p in block.audio_to_text.parameters()}
    assert not audio_params & {id(p) for p in block.text_to_audio.parameters()}
    assert len(block.audio_to_text) == 2


def test_pairwise_sigmoid_attention_recomputed_from_its_parts():
    module = PairwiseSigmoidAttention(10, 6, 8, hidden_dim=12).eval()
    f1, f2 = torch.randn(5, 10), torch.randn(5, 6)
    fused, alpha = module(f1, f2)
    assert fused.shape == (5, 8) and alpha.shape == (5, 1)
    assert ((alpha > 0) & (alpha < 1)).all()
    p1, p2 = torch.relu(module.project1(f1)), torch.relu(module.project2(f2))
    expected_alpha = torch.sigmoid(module.score(torch.cat([f1, f2, p1, p2], dim=-1)))
    assert torch.allclose(alpha, expected_alpha, atol=ATOL)
    assert torch.allclose(fused, expected_alpha * p1 + (1 - expected_alpha) * p2, atol=ATOL)


# --------------------------------------------------------------------------------- graph


def test_valid_bipartite_edges_maps_positions_to_nodes_and_drops_padding():
    text_mask = torch.tensor([False, True, True, False])  # tokens 1, 2 are nodes 0, 1
    audio_mask = torch.tensor([True, True, True, False, False])  # frames 0..2 are nodes 2..4
    edges = torch.tensor([[1, 2, 2, 0, 1, 7], [0, 1, 2, 1, 4, 0]])
    tokens, frames, node_edges = valid_bipartite_edges(edges, text_mask, audio_mask)
    assert tokens.tolist() == [1, 2] and frames.tolist() == [0, 1, 2]
    assert node_edges.tolist() == [[0, 1, 1], [2, 3, 4]]
    with pytest.raises(ValueError, match="negative"):
        valid_bipartite_edges(torch.tensor([[-1], [0]]), text_mask, audio_mask)


def graph_inputs(batch: int = 3):
    text, audio = torch.randn(batch, 4, 12), torch.randn(batch, 6, 8)
    text_mask, audio_mask = lengths_mask([4, 3, 2][:batch], 4), lengths_mask([6, 5, 3][:batch], 6)
    edges = [
        torch.tensor([[0, 0, 1, 2, 3], [0, 1, 2, 3, 5]]),
        torch.tensor([[0, 1, 2], [0, 2, 4]]),
        torch.zeros((2, 0), dtype=torch.long),
    ][:batch]
    return text, text_mask, audio, audio_mask, edges


def test_bipartite_gat_embeddings_depend_on_edges_and_work_without_edges():
    gat = BipartiteGAT(12, 8, 16, heads=4, num_layers=2).eval()
    text, text_mask, audio, audio_mask, edges = graph_inputs()
    out = gat(text, text_mask, audio, audio_mask, edges)
    assert out.shape == (3, 16) and torch.isfinite(out).all()
    no_edges = gat(text, text_mask, audio, audio_mask, None)
    assert torch.isfinite(no_edges).all()
    assert torch.allclose(no_edges[2], out[2], atol=ATOL)  # utterance 2 had no edges anyway
    rewired = [edges[0], torch.tensor([[0, 1, 2], [4, 3, 0]]), edges[2]]
    out_rewired = gat(text, text_mask, audio, audio_mask, rewired)
    assert torch.allclose(out_rewired[0], out[0], atol=ATOL)
    assert not torch.allclose(out_rewired[1], out[1], atol=1e-4)
    assert not torch.allclose(no_edges[0], out[0], atol=1e-4)


def test_bipartite_gat_batch_equals_one_by_one_and_ignores_padding():
    gat = BipartiteGAT(12, 8, 16, heads=2, num_layers=2).eval()
    text, text_mask, audio, audio_mask, edges = graph_inputs()
    batched = gat(text, text_mask, audio, audio_mask, edges)
    for row in range(3):
        alone = gat(
            text[row : row + 1], text_mask[row : row + 1], audio[row : row + 1], audio_mask[row : row + 1], [edges[row]]
        )
        assert torch.allclose(batched[row], alone[0], atol=ATOL)
    text_p, text_mask_p = pad_more(text, text_mask, extra=3, seed=3)
    audio_p, audio_mask_p = pad_more(audio, audio_mask, extra=4, seed=4)
    assert torch.allclose(batched, gat(text_p, text_mask_p, audio_p, audio_mask_p, edges), atol=ATOL)


def test_bipartite_gat_trains_every_parameter():
    gat = BipartiteGAT(12, 8, 16, heads=4, num_layers=2)
    text, text_mask, audio, audio_mask, edges = graph_inputs()
    gat(text, text_mask, audio, audio_mask, edges).pow(2).sum().backward()
    for name, parameter in gat.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def sparse_reference(gat: BipartiteGAT, text, text_mask, audio, audio_mask, edges) -> torch.Tensor:
    """The scatter-based computation the dense GAT replaced: one torch_geometric graph per
    utterance, ``GATConv`` layers holding the same parameters, ``global_mean_pool``."""
    from torch_geometric.data import Batch as GraphBatch
    from torch_geometric.nn import GATConv, global_mean_pool

    layers = []
    for layer in gat.layers:
        conv = GATConv(gat.hidden_dim, layer.channels, heads=layer.heads, add_self_loops=True).eval()
        conv.load_state_dict(layer.state_dict())  # the same parameter names and shapes
        layers.append(conv)
    text_nodes, audio_nodes = gat.text_projection(text), gat.audio_projection(audio)
    graphs = []
    for row in range(text.shape[0]):
        tokens, frames, node_edges = valid_bipartite_edges(edges[row], text_mask[row], audio_mask[row])
        graphs.append(bipartite_edges_to_graph(text_nodes[row, tokens], audio_nodes[row, frames], node_edges))
    graph = GraphBatch.from_data_list(graphs)
    x = graph.x
    for index, conv in enumerate(layers):
        x = conv(x, graph.edge_index)
        if index < len(layers) - 1:
            x = torch.nn.functional.elu(x)
    return global_mean_pool(x, graph.batch, size=text.shape[0])


def ragged_graph_inputs(seed: int, batch: int = 5):
    """Random ragged rows (1..9 tokens of 12, 1..14 frames of 16), random edges that also point at
    padded and out-of-range positions, and padding filled with large random values."""
    generator = torch.Generator().manual_seed(seed)
    text_lengths = torch.randint(1, 10, (batch,), generator=generator).tolist()
    audio_lengths = torch.randint(1, 15, (batch,), generator=generator).tolist()
    text_mask, audio_mask = lengths_mask(text_lengths, 12), lengths_mask(audio_lengths, 16)
    text, audio = torch.randn(batch, 12, 12, generator=generator), torch.randn(batch, 16, 8, generator=generator)
    text, audio = text.masked_fill(~text_mask[..., None], 1e4), audio.masked_fill(~audio_mask[..., None], -1e4)
    edges = []
    for n_tok, n_frm in zip(text_lengths, audio_lengths):
        count = int(torch.randint(0, 3 * n_tok + 1, (1,), generator=generator))
        pairs = torch.stack(
            [
                torch.randint(0, n_tok + 2, (count,), generator=generator),
                torch.randint(0, n_frm + 3, (count,), generator=generator),
            ]
        )
        edges.append(torch.unique(pairs, dim=1))  # a graph is a set of edges
    return text, text_mask, audio, audio_mask, edges


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dense_bipartite_gat_equals_the_torch_geometric_graphs(seed):
    torch.manual_seed(seed)
    gat = BipartiteGAT(12, 8, 16, heads=4, num_layers=2).eval()
    text, text_mask, audio, audio_mask, edges = ragged_graph_inputs(seed)
    with torch.no_grad():
        dense = gat(text, text_mask, audio, audio_mask, edges)
        adjacency = gat(text, text_mask, audio, audio_mask, edges_to_adjacency(edges, text_mask, audio_mask))
        clean = [t.masked_fill(~m[..., None], 0.0) for t, m in ((text, text_mask), (audio, audio_mask))]
        reference = sparse_reference(gat, clean[0], text_mask, clean[1], audio_mask, edges)
    assert torch.isfinite(dense).all() and dense.shape == (5, 16)
    torch.testing.assert_close(dense, reference, atol=ATOL, rtol=1e-5)
    assert torch.equal(dense, adjacency)


def test_dense_gat_layer_has_gatconvs_parameters_and_initialisation():
    from torch_geometric.nn import GATConv

    torch.manual_seed(3)
    conv = GATConv(16, 4, heads=4, add_self_loops=True)
    after_conv = torch.rand(1)
    torch.manual_seed(3)
    layer = BipartiteGATLayer(16, 4)
    after_layer = torch.rand(1)
    assert list(conv.state_dict()) == list(layer.state_dict())
    for name, value in conv.state_dict().items():
        assert torch.equal(value, layer.state_dict()[name]), name
    assert torch.equal(after_conv, after_layer)  # the same number of random draws: a seed builds the same model


def test_edges_become_an_adjacency_without_padding_or_repeats():
    text_mask = torch.tensor([[True, True, False], [True, True, True]])
    audio_mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    edges = [torch.tensor([[0, 0, 1, 2, 1], [0, 0, 3, 1, 2]]), None]
    adjacency = edges_to_adjacency(edges, text_mask, audio_mask)
    expected = torch.zeros(2, 3, 4, dtype=torch.bool)
    expected[0, 0, 0] = expected[0, 1, 2] = True  # (1, 3) and (2, 1) touch padding
    assert torch.equal(adjacency, expected)
    pairs = pairs_to_adjacency(torch.tensor([[0, -1, 5]]), torch.tensor([[1, 1, 0]]), 3, 2)
    assert pairs.nonzero().tolist() == [[0, 0, 1]]


def test_bipartite_gat_rejects_indivisible_heads():
    with pytest.raises(ConfigError, match="hidden_dim 10 must be divisible by heads 4"):
        BipartiteGAT(4, 4, 10, heads=4)


# --------------------------------------------------------------------------------- dialogue context


def test_dialogue_context_ignores_padded_utterances():
    context = DialogueContext(10, 6, kernel_size=3).eval()
    x = torch.randn(3, 5, 10)
    mask = lengths_mask([5, 3, 1], 5)
    out = context(x, mask)
    assert out.shape == (3, 5, 12) and context.out_dim == 12
    assert (out[~mask] == 0).all()
    padded, padded_mask = pad_more(x, mask, extra=4)
    out_padded = context(padded, padded_mask)
    assert torch.allclose(out, out_padded[:, :5], atol=ATOL)
    assert (out_padded[:, 5:] == 0).all()


def test_dialogue_context_depends_on_order_and_neighbours():
    context = DialogueContext(10, 6).eval()
    x = torch.randn(1, 4, 10)
    out = context(x)
    reversed_out = context(x.flip(1)).flip(1)
    # the same utterance in a different order gets a different context state
    assert not torch.allclose(out, reversed_out, atol=1e-4)
    changed = x.clone()
    changed[0, 3] += 1.0
    assert not torch.allclose(out[0, 0], context(changed)[0, 0], atol=1e-5)


def test_dialogue_context_requires_padding_at_the_end():
    with pytest.raises(ValueError, match="must come first"):
        DialogueContext(4, 3)(torch.randn(1, 3, 4), torch.tensor([[True, False, True]]))
    with pytest.raises(ConfigError, match="kernel_size must be odd"):
        DialogueContext(4, 3, kernel_size=2)


def test_blocks_are_deterministic_under_a_seed():
    def build_and_run():
        torch.manual_seed(5)
        block = BidirectionalCrossAttention(8, heads=2)
        a, t = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
        return block(a, None, t, None)[0]

    assert torch.equal(build_and_run(), build_and_run())
