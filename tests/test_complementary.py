"""Complementary Fusion: the CA and SPL MoE models, the graph front end, the late fusion and
its weight fitting, and the graph-MLP baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emomix.errors import ConfigError, LabelError, MissingDataError
from emomix.models import create_model
from emomix.models.blocks import edges_to_adjacency
from emomix.models.complementary import (
    ComplementaryFusion,
    arousal_split_weights,
    fuse_probabilities,
    pool_frames,
    remap_edges,
    remapped_adjacency,
    spread_adjacency,
    spread_token_edges,
)
from emomix.models.inputs import Batch, ModalityInput, pad_sequences
from emomix.train.late_fusion import fit_fusion_weights

# Torch on one thread for the whole module (the one_thread fixture in conftest).
pytestmark = pytest.mark.usefixtures("one_thread")


TEXT_DIM, AUDIO_DIM, CLASSES = 24, 16, 3
DIMS = {"text": TEXT_DIM, "audio": AUDIO_DIM}
SMALL = {"hidden_dim": 16, "max_frames": 12, "num_experts": 4, "top_k": 2}
TEXT_LENGTHS = (5, 9, 3, 7)
AUDIO_LENGTHS = (10, 30, 6, 12)  # the 30-frame row is pooled to max_frames=12


def _edges(text_lengths, audio_lengths, generator):
    """Each token joined to a contiguous run of frames, as an aligner would give."""
    edges = []
    for n_tok, n_frm in zip(text_lengths, audio_lengths):
        pairs = []
        for token in range(n_tok):
            start = int(torch.randint(0, n_frm, (1,), generator=generator))
            pairs += [(token, f) for f in range(start, min(start + 3, n_frm))]
        edges.append(torch.tensor(pairs, dtype=torch.long).T)
    return edges


def make_batch(
    seed=0,
    text_lengths=TEXT_LENGTHS,
    audio_lengths=AUDIO_LENGTHS,
    pad_text=0,
    pad_audio=0,
    with_edges=True,
    modalities=("audio", "text"),
):
    """A random batch; ``pad_*`` extra padded positions are filled with random values."""
    generator = torch.Generator().manual_seed(seed)
    texts = [torch.randn(n, TEXT_DIM, generator=generator) for n in text_lengths]
    audios = [torch.randn(n, AUDIO_DIM, generator=generator) for n in audio_lengths]
    edges = _edges(text_lengths, audio_lengths, generator) if with_edges else None
    inputs = {}
    if "text" in modalities:
        t, tm = pad_sequences(texts)
        if pad_text:
            t = torch.cat([t, torch.randn(t.shape[0], pad_text, TEXT_DIM)], dim=1)
            tm = torch.cat([tm, torch.zeros(tm.shape[0], pad_text, dtype=torch.bool)], dim=1)
            t[~tm] = torch.randn(int((~tm).sum()), TEXT_DIM)
        inputs["text"] = ModalityInput(t, tm)
    if "audio" in modalities:
        a, am = pad_sequences(audios)
        if pad_audio:
            a = torch.cat([a, torch.randn(a.shape[0], pad_audio, AUDIO_DIM)], dim=1)
            am = torch.cat([am, torch.zeros(am.shape[0], pad_audio, dtype=torch.bool)], dim=1)
            a[~am] = torch.randn(int((~am).sum()), AUDIO_DIM)
        inputs["audio"] = ModalityInput(a, am, frame_rate=50.0)
    labels = torch.arange(len(text_lengths)) % CLASSES
    return Batch(inputs=inputs, labels=labels, edges=edges)


def build(name, seed=0, **overrides):
    torch.manual_seed(seed)
    config = {k: v for k, v in SMALL.items() if name != "graph_mlp" or k not in ("num_experts", "top_k")}
    return create_model(name, {**config, **overrides}, DIMS, CLASSES)


MODELS = ["complementary_ca", "complementary_spl", "complementary", "graph_mlp"]


@pytest.mark.parametrize("name", ["complementary_ca", "complementary_spl"])
def test_moe_gate_weights_are_top_k_and_sum_to_one(name):
    model = build(name).eval()
    out = model(make_batch())
    assert out.logits.shape == (4, CLASSES)
    weights, probs = out.aux["gate_weights"], out.aux["gate_probs"]
    assert weights.shape == probs.shape == (4, 4)
    assert torch.allclose(weights.sum(-1), torch.ones(4), atol=1e-6)
    assert torch.allclose(probs.sum(-1), torch.ones(4), atol=1e-6)
    assert ((weights > 0).sum(-1) == 2).all()
    assert torch.equal(out.aux["graph_approximate"], torch.zeros(4))
    assert out.aux_losses["load_balance"].dim() == 0


@pytest.mark.parametrize("name", MODELS)
def test_padding_never_changes_outputs(name):
    model = build(name).eval()
    with torch.no_grad():
        plain = model(make_batch(seed=3))
        padded = model(make_batch(seed=3, pad_text=5, pad_audio=9))
    assert torch.allclose(plain.logits, padded.logits, atol=1e-5)
    for key, value in plain.aux.items():
        assert torch.allclose(value, padded.aux[key], atol=1e-5), key


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_outputs(name):
    first = build(name, seed=7)(make_batch(seed=1)).logits
    second = build(name, seed=7)(make_batch(seed=1)).logits
    assert torch.equal(first, second)
    other = build(name, seed=8)(make_batch(seed=1)).logits
    assert not torch.allclose(first, other)


def _unused_experts(aux, prefix=""):
    """Experts no row routed to have no gradient from this batch (top-k)."""
    weights = aux[f"{prefix}gate_weights"]
    return {int(e) for e in torch.nonzero(weights.sum(0) == 0).flatten()}


@pytest.mark.parametrize("name", MODELS)
def test_every_trainable_parameter_gets_a_gradient(name):
    model = build(name, dropout=0.0).train()
    out = model(make_batch(seed=2))
    total, parts = model.loss(out, make_batch(seed=2).labels)
    total.backward()
    assert parts["total"] == pytest.approx(float(total.detach()))
    unused = {}
    for prefix, sub in (("", "moe"), ("ca_", "ca.moe"), ("spl_", "spl.moe")):
        if f"{prefix}gate_weights" in out.aux:
            unused[sub] = _unused_experts(out.aux, prefix)
    missing = []
    for pname, param in model.named_parameters():
        tolerated = any(pname.startswith(f"{sub}.experts.{e}.") for sub, experts in unused.items() for e in experts)
        if not tolerated and (param.grad is None or float(param.grad.abs().sum()) == 0.0):
            missing.append(pname)
    assert not missing


@pytest.mark.parametrize("name", ["complementary_ca", "complementary", "graph_mlp"])
@pytest.mark.parametrize("modality", ["text", "audio"])
def test_designs_needing_both_modalities_fail_clearly_with_one(name, modality):
    config = {"hidden_dim": 16, "modalities": [modality]}
    with pytest.raises(ConfigError, match="needs both audio and text.*complementary_spl_text"):
        create_model(name, config, {modality: DIMS[modality]}, CLASSES)


@pytest.mark.parametrize("modality", ["text", "audio"])
def test_sum_product_runs_on_one_modality(modality):
    torch.manual_seed(0)
    model = create_model(f"complementary_spl_{modality}", SMALL, {modality: DIMS[modality]}, CLASSES).eval()
    assert model.config.modalities == (modality,)
    assert model.graph is None
    # one pooled vector → Linear per expert: input size hidden_dim, not 4·hidden_dim
    assert model.moe.experts[0].linear.body.in_features == SMALL["hidden_dim"]
    batch = make_batch(modalities=(modality,), with_edges=False)
    out = model(batch)
    assert out.logits.shape == (4, CLASSES)
    assert "graph_approximate" not in out.aux
    assert torch.allclose(out.aux["gate_weights"].sum(-1), torch.ones(4), atol=1e-6)


def test_batch_missing_a_modality_is_a_clear_error():
    model = build("complementary_spl")
    with pytest.raises(MissingDataError, match="lacks audio"):
        model(make_batch(modalities=("text",)))


def test_graph_uses_the_edges_and_flags_the_uniform_fallback():
    model = build("complementary_spl").eval()
    batch = make_batch(seed=4)
    with torch.no_grad():
        aligned = model(batch)
        # same tokens, frames in reverse order: a different alignment
        shuffled = model(
            Batch(batch.inputs, batch.labels, edges=[torch.stack([e[0], e[1].flip(0)]) for e in batch.edges])
        )
        spread = model(Batch(batch.inputs, batch.labels, edges=None))
    assert not torch.allclose(aligned.logits, shuffled.logits, atol=1e-4)
    assert torch.equal(spread.aux["graph_approximate"], torch.ones(4))
    assert torch.equal(aligned.aux["graph_approximate"], torch.zeros(4))
    forced = build("complementary_spl", graph="spread").eval()
    forced.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(forced(batch).logits, spread.logits, atol=1e-6)
    strict = build("complementary_spl", graph="edges")
    with pytest.raises(MissingDataError, match="graph='edges'.*no token–frame edges"):
        strict(Batch(batch.inputs, batch.labels, edges=None))


def test_no_graph_ablation_has_no_graph_inputs():
    model = build("complementary_ca", graph="none")
    assert model.graph is None
    assert model.moe.gate.linear.in_features == 2 * SMALL["hidden_dim"]
    out = model(make_batch())
    assert "graph_approximate" not in out.aux


def test_pooling_inside_the_model_equals_pooling_by_hand():
    """A row of 2M frames is pooled to M frames by averaging pairs, and its edges move to f // 2."""
    generator = torch.Generator().manual_seed(5)
    text = torch.randn(1, 6, TEXT_DIM, generator=generator)
    audio = torch.randn(1, 24, AUDIO_DIM, generator=generator)
    edges = [torch.tensor([[0, 0, 1, 2, 3, 5], [0, 1, 7, 12, 13, 23]])]
    long_batch = Batch(
        {
            "text": ModalityInput(text, torch.ones(1, 6, dtype=torch.bool)),
            "audio": ModalityInput(audio, torch.ones(1, 24, dtype=torch.bool)),
        },
        edges=edges,
    )
    pooled_audio = audio.reshape(1, 12, 2, AUDIO_DIM).mean(2)
    short_batch = Batch(
        {
            "text": ModalityInput(text, torch.ones(1, 6, dtype=torch.bool)),
            "audio": ModalityInput(pooled_audio, torch.ones(1, 12, dtype=torch.bool)),
        },
        edges=[torch.tensor([[0, 1, 2, 3, 5], [0, 3, 6, 6, 11]])],
    )
    model = build("complementary_ca").eval()
    with torch.no_grad():
        assert torch.allclose(model(long_batch).logits, model(short_batch).logits, atol=1e-5)


def test_pool_frames_pools_each_row_over_its_own_valid_frames():
    states = torch.full((2, 10, 1), 99.0)
    states[0, :8, 0] = torch.arange(8.0)
    states[1, :3, 0] = torch.tensor([1.0, 2.0, 3.0])
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, :8] = True
    mask[1, :3] = True
    pooled, pooled_mask = pool_frames(states, mask, 4)
    assert pooled.shape == (2, 4, 1)
    assert pooled[0, :, 0].tolist() == [0.5, 2.5, 4.5, 6.5]
    assert pooled[1, :3, 0].tolist() == [1.0, 2.0, 3.0]
    assert pooled_mask.tolist() == [[True] * 4, [True, True, True, False]]
    # nothing to pool: only cut the padding beyond max_frames
    cut, cut_mask = pool_frames(states, mask & (torch.arange(10) < 4), 4)
    assert cut.shape == (2, 4, 1) and cut_mask[0].all()


def pooled_by_rows(states, mask, max_frames):
    """The per-row reference: a row's valid frames, adaptive-average-pooled when there are more than ``max_frames``."""
    width = min(states.shape[1], max_frames)
    out, out_mask = (
        torch.zeros(states.shape[0], width, states.shape[2]),
        torch.zeros(states.shape[0], width, dtype=torch.bool),
    )
    for row in range(states.shape[0]):
        valid = states[row][mask[row]]
        if valid.shape[0] > max_frames:
            valid = F.adaptive_avg_pool1d(valid.T.unsqueeze(0), max_frames).squeeze(0).T
        out[row, : valid.shape[0]], out_mask[row, : valid.shape[0]] = valid, True
    return out, out_mask


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pool_frames_equals_adaptive_pooling_row_by_row(seed):
    generator = torch.Generator().manual_seed(seed)
    max_frames = int(torch.randint(3, 12, (1,), generator=generator))
    width = int(torch.randint(max_frames - 2, 4 * max_frames, (1,), generator=generator))
    lengths = torch.randint(1, width + 1, (6,), generator=generator)
    mask = torch.arange(width) < lengths[:, None]
    if seed == 3:  # holes inside rows: the valid frames are taken in order
        mask &= torch.rand(6, width, generator=generator) < 0.8
        mask[:, 0] = True
    states = torch.randn(6, width, 5, generator=generator) * 100
    states[~mask] = float("nan")  # padding never enters a pooled frame
    pooled, pooled_mask = pool_frames(states, mask, max_frames)
    expected, expected_mask = pooled_by_rows(states, mask, max_frames)
    assert torch.equal(pooled_mask, expected_mask)
    torch.testing.assert_close(pooled, expected, atol=1e-4, rtol=1e-6)


def test_dense_graph_edges_equal_the_per_utterance_edges():
    generator = torch.Generator().manual_seed(11)
    for _ in range(5):
        tokens, frames, max_frames = 9, 30, 12
        token_mask = torch.arange(tokens) < torch.randint(1, tokens + 1, (4, 1), generator=generator)
        content = token_mask & (torch.rand(4, tokens, generator=generator) < 0.8)
        lengths = torch.randint(1, frames + 1, (4,), generator=generator)
        frame_mask = torch.arange(frames) < lengths[:, None]
        _, pooled_mask = pool_frames(torch.zeros(4, frames, 1), frame_mask, max_frames)
        spread = [spread_token_edges(content[row], pooled_mask[row]) for row in range(4)]
        assert torch.equal(spread_adjacency(content, pooled_mask), edges_to_adjacency(spread, token_mask, pooled_mask))
        edges = [
            torch.stack(
                [
                    torch.randint(0, tokens + 2, (20,), generator=generator),
                    torch.randint(0, frames + 2, (20,), generator=generator),
                ]
            )
            for _ in range(4)
        ]
        per_row = [
            remap_edges(edges[row], int(token_mask[row].sum()), int(lengths[row]), max_frames) for row in range(4)
        ]
        assert torch.equal(
            remapped_adjacency(edges, token_mask, lengths, pooled_mask, max_frames),
            edges_to_adjacency(per_row, token_mask, pooled_mask),
        )
    with pytest.raises(ConfigError, match="negative"):
        remapped_adjacency([torch.tensor([[0], [-1]])], token_mask[:1], lengths[:1], pooled_mask[:1], max_frames)
    with pytest.raises(ConfigError, match="2 × E"):
        remapped_adjacency([torch.zeros(3, 2, dtype=torch.long)], token_mask[:1], lengths[:1], pooled_mask[:1], 12)


def test_remap_edges_moves_frames_drops_cut_positions_and_duplicates():
    edges = torch.tensor([[0, 0, 1, 2, 7], [4, 5, 255, 100, 3]])
    remapped = remap_edges(edges, num_tokens=5, num_frames=256, max_frames=128)
    assert remapped.tolist() == [[0, 1, 2], [2, 127, 50]]
    # no pooling: only out-of-range positions drop
    assert remap_edges(edges, num_tokens=3, num_frames=101, max_frames=128).tolist() == [[0, 0, 2], [4, 5, 100]]
    with pytest.raises(ConfigError, match="negative"):
        remap_edges(torch.tensor([[0], [-1]]), 3, 10, 128)
    with pytest.raises(ConfigError, match="2 × E"):
        remap_edges(torch.zeros(3, 2, dtype=torch.long), 3, 10, 128)


def test_spread_token_edges_covers_frames_in_order():
    tokens = torch.tensor([False, True, True, True, False])  # CLS ... SEP left out
    frames = torch.tensor([True] * 6 + [False] * 2)
    assert spread_token_edges(tokens, frames).tolist() == [[1, 1, 2, 2, 3, 3], [0, 1, 2, 3, 4, 5]]
    many = spread_token_edges(torch.ones(5, dtype=torch.bool), torch.tensor([True, True, False]))
    assert sorted(set(many[0].tolist())) == [0, 1, 2, 3, 4]  # every token gets a frame
    assert int(many[1].max()) == 1
    assert spread_token_edges(torch.zeros(3, dtype=torch.bool), frames).shape == (2, 0)


# ---------------------------------------------------------------------------------------------
# Late fusion
# ---------------------------------------------------------------------------------------------


def _constructed_case(seed=0, per_class=40):
    """CA is right on class 0 and wrong on class 1; SPL the reverse; both right on class 2."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), per_class)
    ca = np.empty((labels.size, 3))
    spl = np.empty((labels.size, 3))
    ca_pattern = {0: [0.7, 0.1, 0.2], 1: [0.1, 0.2, 0.7], 2: [0.2, 0.1, 0.7]}
    spl_pattern = {0: [0.1, 0.2, 0.7], 1: [0.1, 0.7, 0.2], 2: [0.2, 0.1, 0.7]}
    for i, y in enumerate(labels):
        ca[i] = rng.dirichlet(np.array(ca_pattern[y]) * 40)
        spl[i] = rng.dirichlet(np.array(spl_pattern[y]) * 40)
    return ca, spl, labels


def _ua(probs, labels):
    predictions = probs.argmax(1)
    return np.mean([np.mean(predictions[labels == c] == c) for c in np.unique(labels)])


def test_fit_fusion_weights_gives_each_class_to_the_model_right_on_it():
    ca, spl, labels = _constructed_case()
    weights = fit_fusion_weights(ca, spl, labels)
    assert weights.shape == (3,) and weights.dtype == np.float32
    assert weights[0] >= 0.9
    assert weights[1] <= 0.1
    fused = fuse_probabilities(torch.tensor(ca), torch.tensor(spl), torch.tensor(weights)).numpy()
    assert _ua(fused, labels) > max(_ua(ca, labels), _ua(spl, labels))
    assert _ua(fused, labels) >= 0.95
    # ignored rows change nothing; grid points only
    padded = fit_fusion_weights(
        np.vstack([ca, spl[:5]]), np.vstack([spl, ca[:5]]), np.concatenate([labels, np.full(5, -100)])
    )
    assert np.allclose(padded, weights)
    assert np.allclose(weights * 20, np.round(weights * 20))


def test_fit_fusion_weights_rejects_bad_inputs():
    ca, spl, labels = _constructed_case(per_class=3)
    with pytest.raises(ConfigError, match="N × C"):
        fit_fusion_weights(ca, spl[:, :2], labels)
    with pytest.raises(LabelError, match="0..2"):
        fit_fusion_weights(ca, spl, labels + 1)
    with pytest.raises(ConfigError, match="no labelled rows"):
        fit_fusion_weights(ca, spl, np.full(labels.size, -100))


def test_arousal_split_follows_the_paper():
    assert arousal_split_weights(["angry", "happy", "neutral", "sad"]).tolist() == [0.0, 0.0, 1.0, 1.0]
    meld = arousal_split_weights(["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"])
    assert meld.tolist() == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    with pytest.raises(LabelError, match="positive.*fit_fusion_weights"):
        arousal_split_weights(["negative", "positive"])


def test_fusion_combines_the_sub_models_per_class():
    ca, spl = build("complementary_ca", seed=1).eval(), build("complementary_spl", seed=2).eval()
    batch = make_batch(seed=6)
    with torch.no_grad():
        p_ca, p_spl = ca(batch).logits.softmax(-1), spl(batch).logits.softmax(-1)
        fusion = ComplementaryFusion.from_submodels(ca, spl, [1.0, 1.0, 1.0]).eval()
        assert torch.allclose(fusion(batch).logits, p_ca.log(), atol=1e-5)
        fusion.set_fusion_weights([0.0, 0.0, 0.0])
        assert torch.allclose(fusion(batch).logits, p_spl.log(), atol=1e-5)
        fusion.set_fusion_weights([1.0, 0.0, 0.5])
        out = fusion(batch)
    mixed = torch.stack([p_ca[:, 0], p_spl[:, 1], (p_ca[:, 2] + p_spl[:, 2]) / 2], dim=1)
    assert torch.allclose(out.logits.exp(), mixed / mixed.sum(1, keepdim=True), atol=1e-5)
    assert torch.allclose(out.logits.exp().sum(-1), torch.ones(4), atol=1e-5)
    assert {"expert_logits_ca", "expert_logits_spl", "ca_gate_weights", "spl_gate_weights", "ca_gate_probs"} <= set(
        out.aux
    )
    assert set(out.aux_losses) == {"ca_load_balance", "spl_load_balance"}
    # the weights are saved with the model
    assert fusion.state_dict()["fusion_weights"].tolist() == [1.0, 0.0, 0.5]
    with pytest.raises(ConfigError, match="3 values in \\[0, 1\\]"):
        fusion.set_fusion_weights([1.2, 0.0, 0.0])
    with pytest.raises(ConfigError, match="complementary_ca model and a complementary_spl"):
        ComplementaryFusion.from_submodels(spl, ca)


def test_fusion_loss_is_the_sum_of_the_sub_models_losses():
    fusion = build("complementary", fusion_weights=[0.2, 0.5, 0.9]).eval()
    assert fusion.fusion_weights.tolist() == pytest.approx([0.2, 0.5, 0.9])
    batch = make_batch(seed=8)
    with torch.no_grad():
        out = fusion(batch)
        total, parts = fusion.loss(out, batch.labels)
        ca_total, _ = fusion.ca.loss(fusion.ca(batch), batch.labels)
        spl_total, _ = fusion.spl.loss(fusion.spl(batch), batch.labels)
    assert float(total) == pytest.approx(float(ca_total + spl_total), rel=1e-5)
    assert parts["fused_nll"] == pytest.approx(float(F.nll_loss(out.logits, batch.labels)), rel=1e-5)


def test_loss_is_weighted_cross_entropy_plus_load_balance():
    model = build("complementary_ca", load_balance_weight=0.5).eval()
    batch = make_batch(seed=9)
    with torch.no_grad():
        out = model(batch)
        total, parts = model.loss(out, batch.labels)
        expected = F.cross_entropy(out.logits, batch.labels) + 0.5 * out.aux_losses["load_balance"]
        assert float(total) == pytest.approx(float(expected), rel=1e-5)
        weights = torch.tensor([1.0, 3.0, 0.5])
        model.set_class_weights(weights)
        weighted, _ = model.loss(out, batch.labels)
        assert parts["ce"] != pytest.approx(float(weighted) - 0.5 * parts["load_balance"])
        assert float(weighted) == pytest.approx(
            float(F.cross_entropy(out.logits, batch.labels, weight=weights) + 0.5 * out.aux_losses["load_balance"]),
            rel=1e-5,
        )
    with pytest.raises(ConfigError, match="3 values"):
        model.set_class_weights(torch.ones(4))


@pytest.mark.parametrize(
    "values, message",
    [
        ({"top_k": 6}, "top_k must be between 1 and num_experts"),
        ({"graph": "aligned"}, "graph must be one of"),
        ({"hidden_dim": 18}, "divisible by ca_heads"),
        ({"num_expert": 3}, "did you mean 'num_experts'"),
    ],
)
def test_config_errors_name_the_field(values, message):
    with pytest.raises(ConfigError, match=message):
        create_model("complementary_ca", values, DIMS, CLASSES)


def test_ablation_recipes_differ_from_the_main_recipe_in_one_setting_that_reaches_both_parts():
    """configs/synthetic/complementary_{top1,no_graph}.yaml: the paper's top-1 and no-graph comparisons."""
    from pathlib import Path

    from emomix.train.recipe import load_recipe

    configs = Path(__file__).resolve().parents[1] / "configs" / "synthetic"
    main = load_recipe(configs / "complementary.yaml").to_dict()
    for stem, setting in (("complementary_top1", {"top_k": 1}), ("complementary_no_graph", {"graph": "none"})):
        recipe = load_recipe(configs / f"{stem}.yaml")
        data = recipe.to_dict()
        assert data["model"]["name"] == "complementary"
        assert data["model"]["config"] == {**main["model"]["config"], **setting}, stem
        assert {k: v for k, v in data.items() if k not in ("model", "name", "description")} == {
            k: v for k, v in main.items() if k not in ("model", "name", "description")
        }, stem
        # each part honours the setting (the late-fusion trainer passes model.config to both)
        for part in ("complementary_ca", "complementary_spl"):
            model = build(part, **setting).eval()
            out = model(make_batch())
            if "top_k" in setting:
                assert ((out.aux["gate_weights"] > 0).sum(-1) == 1).all()
            else:
                assert model.graph is None and "graph_approximate" not in out.aux
