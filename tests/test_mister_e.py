"""MiSTER-E: dialogue context, the three experts and their gate, the losses, missing modalities."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from emomix.errors import ConfigError, MissingDataError
from emomix.models import create_model
from emomix.models.inputs import Batch, DialogueBatch, ModalityInput
from emomix.models.losses import kl_to_gate, supervised_contrastive_loss

# Torch on one thread for the whole module (the one_thread fixture in conftest).
pytestmark = pytest.mark.usefixtures("one_thread")


AUDIO_DIM, TEXT_DIM, CLASSES = 16, 24, 4
DIMS = {"audio": AUDIO_DIM, "text": TEXT_DIM}
LENGTHS = (6, 3, 5)


def make_batch(seed=0, lengths=LENGTHS, extra=0, modalities=("audio", "text")):
    """Dialogues of the given lengths; ``extra`` padded utterances of random values appended."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    inputs = {m: torch.randn(len(lengths), width, DIMS[m], generator=generator) for m in modalities}
    labels = torch.randint(0, CLASSES, (len(lengths), width), generator=generator)
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    if extra:
        inputs = {
            m: torch.cat([x, torch.randn(x.shape[0], extra, x.shape[2], generator=generator)], dim=1)
            for m, x in inputs.items()
        }
        labels = torch.cat([labels, torch.zeros(len(lengths), extra, dtype=torch.long)], dim=1)
        mask = torch.cat([mask, torch.zeros(len(lengths), extra, dtype=torch.bool)], dim=1)
    for m in inputs:  # padded positions hold noise, never zeros, so a leak would show
        inputs[m][~mask] = torch.randn(int((~mask).sum()), inputs[m].shape[2], generator=generator)
    labels = labels.masked_fill(~mask, -100)
    return DialogueBatch(inputs=inputs, mask=mask, labels=labels)


def build(name="mister_e", seed=0, dims=DIMS, **overrides):
    torch.manual_seed(seed)
    return create_model(name, {"hidden_dim": 16, "gate_hidden": 16, **overrides}, dims, CLASSES)


VARIANTS = ["mister_e", "mister_e_no_context", "mister_e_text", "mister_e_audio"]


def test_outputs_and_gate_weights():
    model = build().eval()
    batch = make_batch()
    out = model(batch)
    assert out.logits.shape == (3, 6, CLASSES)
    gate = out.aux["gate_weights"]
    assert gate.shape == (3, 6, 3)
    assert torch.allclose(gate.sum(-1), torch.ones(3, 6), atol=1e-6)
    assert (gate > 0).all()
    # the prediction is the gate-weighted mixture of the experts' probabilities
    experts = torch.stack([out.aux[f"expert_logits_{n}"].softmax(-1) for n in ("speech", "text", "cross")], dim=-2)
    assert torch.allclose(out.logits.exp(), (gate.unsqueeze(-1) * experts).sum(-2), atol=1e-6)
    assert torch.allclose(out.logits.exp().sum(-1), torch.ones(3, 6), atol=1e-5)
    assert out.aux["embedding_speech"].shape == out.aux["embedding_text"].shape == (3, 6, 16)
    assert torch.equal(out.aux["utterance_mask"], batch.mask)


@pytest.mark.parametrize("name", VARIANTS)
def test_padded_utterances_change_nothing_for_real_ones(name):
    model = build(name).eval()
    modalities = model.config.modalities
    with torch.no_grad():
        plain = model(make_batch(seed=1, modalities=modalities))
        padded = model(make_batch(seed=1, extra=4, modalities=modalities))
        plain_loss, plain_parts = model.loss(plain, make_batch(seed=1, modalities=modalities).labels)
        padded_loss, padded_parts = model.loss(padded, make_batch(seed=1, extra=4, modalities=modalities).labels)
    mask = make_batch(seed=1).mask
    real = padded.logits[:, :6][mask]
    assert torch.allclose(plain.logits[mask], real, atol=1e-5)
    for key in plain.aux:
        if key != "utterance_mask":
            assert torch.allclose(plain.aux[key][mask], padded.aux[key][:, :6][mask], atol=1e-5), key
    assert float(plain_loss) == pytest.approx(float(padded_loss), rel=1e-5, abs=1e-6)
    assert plain_parts.keys() == padded_parts.keys()


@pytest.mark.parametrize("context", [True, False])
def test_context_lets_utterances_see_each_other(context):
    model = build(context=context).eval()
    batch = make_batch(seed=2)
    changed = make_batch(seed=2)
    for m in changed.inputs:
        changed.inputs[m][0, 4] += 3.0 * torch.randn(changed.inputs[m].shape[2])
    with torch.no_grad():
        before, after = model(batch).logits, model(changed).logits
    neighbours = [0, 1, 2, 3, 5]
    if context:
        assert not torch.allclose(before[0, neighbours], after[0, neighbours], atol=1e-4)
    else:
        assert torch.allclose(before[0, neighbours], after[0, neighbours], atol=1e-6)
    assert not torch.allclose(before[0, 4], after[0, 4], atol=1e-4)
    # other dialogues never see it
    assert torch.allclose(before[1:], after[1:], atol=1e-6)


@pytest.mark.parametrize("name", VARIANTS)
def test_same_seed_same_outputs(name):
    first = build(name, seed=4)
    batch = make_batch(seed=3, modalities=first.config.modalities)
    out = first(batch).logits
    assert torch.equal(out, build(name, seed=4)(batch).logits)
    assert not torch.allclose(out, build(name, seed=5)(batch).logits)


@pytest.mark.parametrize("name", VARIANTS)
def test_every_parameter_gets_a_gradient(name):
    model = build(name, dropout=0.0).train()
    batch = make_batch(seed=5, modalities=model.config.modalities)
    total, parts = model.loss(model(batch), batch.labels)
    total.backward()
    assert parts["total"] == pytest.approx(float(total.detach()))
    missing = [n for n, p in model.named_parameters() if p.grad is None or float(p.grad.abs().sum()) == 0.0]
    assert not missing


@pytest.mark.parametrize("modality, expert", [("text", "text"), ("audio", "speech")])
def test_one_modality_runs_its_expert_alone(modality, expert):
    model = build(f"mister_e_{modality}", dims={modality: DIMS[modality]})
    assert model.gate is None and model.expert_names == (expert,)
    batch = make_batch(seed=6, modalities=(modality,))
    out = model(batch)
    gate = out.aux["gate_weights"]
    column = {"speech": 0, "text": 1}[expert]
    assert torch.equal(gate[..., column], torch.ones(3, 6))
    assert float(gate.sum()) == 18.0
    assert not any(k.startswith("expert_logits_") and not k.endswith(expert) for k in out.aux)
    assert torch.allclose(out.logits, out.aux[f"expert_logits_{expert}"].log_softmax(-1), atol=1e-5)
    _, parts = model.loss(out, batch.labels)
    assert "scl" not in parts and "kl" not in parts


def test_missing_inputs_and_wrong_batch_kind_are_clear_errors():
    model = build()
    with pytest.raises(MissingDataError, match="lacks audio"):
        model(make_batch(modalities=("text",)))
    utterances = Batch({"text": ModalityInput(torch.zeros(2, 3, TEXT_DIM), torch.ones(2, 3, dtype=torch.bool))})
    with pytest.raises(ConfigError, match="dialogue batches"):
        model(utterances)
    with pytest.raises(ConfigError, match="drop 'video'"):
        create_model("mister_e", {"modalities": ["audio", "text", "video"]}, {**DIMS, "video": 8}, CLASSES)
    with pytest.raises(ConfigError, match="hidden_dim must be even"):
        create_model("mister_e", {"hidden_dim": 15}, DIMS, CLASSES)


def test_loss_combines_the_four_terms_with_their_weights():
    model = build(lambda_expert=0.5, lambda_scl=0.2, lambda_kl=0.3).eval()
    batch = make_batch(seed=7)
    with torch.no_grad():
        out = model(batch)
        total, parts = model.loss(out, batch.labels)
    labels, mask = batch.labels, batch.mask
    nll = F.nll_loss(out.logits[mask], labels[mask])
    expert = sum(
        F.cross_entropy(out.aux[f"expert_logits_{n}"][mask], labels[mask]) for n in ("speech", "text", "cross")
    )
    scl = supervised_contrastive_loss(out.aux["embedding_speech"][mask], out.aux["embedding_text"][mask], labels[mask])
    kl = kl_to_gate(
        [out.aux[f"expert_logits_{n}"][mask].softmax(-1) for n in ("speech", "text", "cross")], out.logits[mask].exp()
    )
    assert parts["nll"] == pytest.approx(float(nll), rel=1e-5)
    assert parts["expert_ce"] == pytest.approx(float(expert), rel=1e-5)
    assert parts["scl"] == pytest.approx(float(scl), rel=1e-5)
    assert parts["kl"] == pytest.approx(float(kl), rel=1e-4, abs=1e-7)
    assert float(total) == pytest.approx(float(nll + 0.5 * expert + 0.2 * scl + 0.3 * kl), rel=1e-5)
    weights = torch.tensor([1.0, 2.0, 0.5, 3.0])
    model.set_class_weights(weights)
    with torch.no_grad():
        _, weighted = model.loss(out, labels)
    assert weighted["nll"] == pytest.approx(float(F.nll_loss(out.logits[mask], labels[mask], weight=weights)), rel=1e-5)


def test_kl_term_trains_experts_not_the_gate_by_default():
    batch = make_batch(seed=8)
    for detach, gate_moves in ((True, False), (False, True)):
        model = build(dropout=0.0, lambda_expert=0.0, lambda_scl=0.0, kl_detach_gate=detach)
        out = model(batch)
        total, _parts = model.loss(out, batch.labels)
        kl_only = (total - F.nll_loss(out.logits[batch.mask], batch.labels[batch.mask])) / model.config.lambda_kl
        kl_only.backward()
        gate_grad = sum(float(p.grad.abs().sum()) for p in model.gate.parameters())
        head_grad = sum(float(p.grad.abs().sum()) for p in model.heads.parameters())
        assert head_grad > 0
        assert (gate_grad > 0) == gate_moves


# -- ablations -------------------------------------------------------------------------------

ABLATIONS = {
    "mister_e_no_supcon": {"lambda_scl": 0.0},
    "mister_e_no_kl": {"lambda_kl": 0.0},
    "mister_e_uniform_gate": {"gate": "uniform"},
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_each_ablation_changes_only_its_own_setting(name):
    from emomix.models import list_models

    info = list_models()[name]
    assert dict(info.default_overrides) == ABLATIONS[name]
    full, ablation = build().config.to_dict(), build(name).config.to_dict()
    assert {k for k in full if full[k] != ablation[k]} == set(ABLATIONS[name])


@pytest.mark.parametrize("name,absent,present", [("mister_e_no_supcon", "scl", "kl"), ("mister_e_no_kl", "kl", "scl")])
def test_loss_ablations_drop_exactly_their_term(name, absent, present):
    batch = make_batch()
    full, ablation = build().eval(), build(name).eval()  # same seed, same weights
    out_full, out_ablation = full(batch), ablation(batch)
    assert torch.equal(out_full.logits, out_ablation.logits)
    total_full, parts_full = full.loss(out_full, batch.labels)
    total_ablation, parts_ablation = ablation.loss(out_ablation, batch.labels)
    assert absent not in parts_ablation and present in parts_ablation and absent in parts_full
    weight = full.config.lambda_scl if absent == "scl" else full.config.lambda_kl
    assert parts_full[absent] > 0
    difference = float((total_full - total_ablation).detach())
    assert difference == pytest.approx(weight * parts_full[absent], rel=1e-4, abs=1e-7)


def test_uniform_gate_mixes_the_three_experts_equally():
    batch = make_batch()
    model = build("mister_e_uniform_gate").eval()
    assert model.gate is None
    full = build()
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in full.gate.parameters()
    )
    out = model(batch)
    assert torch.equal(out.aux["gate_weights"][batch.mask], torch.full((int(batch.mask.sum()), 3), 1 / 3))
    experts = torch.stack([out.aux[f"expert_logits_{n}"].softmax(-1) for n in ("speech", "text", "cross")], dim=-2)
    assert torch.allclose(out.logits.exp()[batch.mask], experts.mean(dim=-2)[batch.mask], atol=1e-5)
    _, parts = model.loss(out, batch.labels)
    assert {"nll", "expert_ce", "scl", "kl"} <= set(parts)
    with pytest.raises(ConfigError, match="gate"):
        build(gate="fixed")


# -- no speaker identity: training statistics instead of per-speaker ones ---------------------------


def test_input_standardise_uses_training_statistics_and_ignores_padding():
    batch = make_batch(extra=2)
    model = build(input_standardise=True)
    model.train()
    model(batch)
    norm = model.standardise["speech"].norm
    valid = batch.inputs["audio"][batch.mask]
    assert torch.allclose(norm.running_mean, valid.mean(dim=0), atol=1e-5)  # padding not counted
    model.eval()
    x = model.standardise["speech"](batch.inputs["audio"], batch.mask)
    expected = (valid - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
    assert torch.allclose(x[batch.mask], expected, atol=1e-5)
    assert torch.equal(x[~batch.mask], torch.zeros_like(x[~batch.mask]))
    # a model saved before the field existed (no standardise.* weights) loads and computes as saved
    plain = build()
    loaded = build(input_standardise=True, seed=3)
    loaded.load_state_dict(plain.state_dict())
    assert loaded.standardise is None and loaded.config.input_standardise is False
    assert torch.allclose(loaded.eval()(batch).logits, plain.eval()(batch).logits, atol=1e-6)


def _shipped_recipes():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    return sorted(root.rglob("*.yaml"))


def test_no_shipped_recipe_gives_a_speaker_free_model_speaker_statistics():
    from emomix.models import model_info
    from emomix.train.recipe import load_recipe

    speaker_free = 0
    for path in _shipped_recipes():
        recipe = load_recipe(path)  # the loader itself refuses the combination
        if getattr(model_info(recipe.model.name).cls, "uses_speaker_identity", True):
            continue
        speaker_free += 1
        assert not any(spec.speaker_normalisation for spec in recipe.feature_specs().values()), path
    assert speaker_free >= 4  # the MiSTER-E recipes: synthetic, the three papers, MELD-text


@pytest.mark.parametrize("name", ["mister_e", "mister_e_text", "mister_e_uniform_gate"])
def test_recipe_loader_refuses_speaker_normalisation_for_mister_e(name):
    from emomix.train.recipe import load_recipe

    path = next(p for p in _shipped_recipes() if p.name == "mister_e.yaml")
    with pytest.raises(ConfigError, match="uses no speaker identity.*speaker_normalisation"):
        load_recipe(path, {"model.name": name, "features.audio.speaker_normalisation": True})
    # the same recipe with another model may normalise per speaker
    load_recipe(path, {"model.name": "early_fusion", "model.config": {}, "features.audio.speaker_normalisation": True})
