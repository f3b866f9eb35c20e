"""The baselines (early/late fusion, TFN, EF-/LF-LSTM, text BiLSTM, speech CNN) on small random batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from emomix.errors import ConfigError
from emomix.models import create_model, list_models
from emomix.models.baselines import LSTMEncoder, masked_adaptive_pool
from emomix.models.inputs import Batch, ModalityInput, pad_sequences

DIMS = {"audio": 16, "text": 24, "video": 12}
CLASSES = 4
BASELINES = sorted(name for name, info in list_models().items() if info.cls.__module__ == "emomix.models.baselines")
EXPECTED = {
    "early_fusion",
    "early_fusion_audio",
    "early_fusion_text",
    "late_fusion",
    "tfn",
    "ef_lstm",
    "lf_lstm",
    "text_bilstm",
    "speech_cnn",
    "linear_svm",
    "linear_svm_audio",
    "linear_svm_text",
}


def make_batch(
    seed: int = 0,
    lengths: dict[str, list[int]] | None = None,
    extra: int = 0,
    modalities: tuple[str, ...] = ("audio", "text"),
) -> Batch:
    """A batch of 4 utterances; ``extra`` appends that many padded positions of random values."""
    generator = torch.Generator().manual_seed(seed)
    lengths = lengths or {"audio": [20, 7, 13, 1], "text": [5, 9, 2, 6], "video": [3, 8, 5, 4]}
    inputs = {}
    for modality in modalities:
        sequences = [torch.randn(n, DIMS[modality], generator=generator) for n in lengths[modality]]
        states, mask = pad_sequences(sequences)
        if extra:
            garbage = torch.Generator().manual_seed(seed + 99)  # its own stream: the real values stay the same
            noise = torch.randn(states.shape[0], extra, states.shape[2], generator=garbage) * 50
            states = torch.cat([states, noise], dim=1)
            mask = torch.cat([mask, torch.zeros(mask.shape[0], extra, dtype=torch.bool)], dim=1)
            # garbage also inside the existing padding
            states = torch.where(mask.unsqueeze(-1), states, torch.randn(states.shape, generator=garbage) * 50)
        inputs[modality] = ModalityInput(states=states, mask=mask)
    return Batch(inputs=inputs, labels=torch.tensor([0, 1, 2, 3]))


def build(name: str, **overrides) -> torch.nn.Module:
    info = list_models()[name]
    dims = {m: DIMS[m] for m in info.modalities}
    return create_model(name, overrides, dims, CLASSES)


def test_every_baseline_the_papers_compare_is_registered():
    assert set(BASELINES) >= EXPECTED
    info = list_models()
    assert info["early_fusion_audio"].modalities == ("audio",)
    assert info["early_fusion_text"].modalities == ("text",)
    assert info["text_bilstm"].modalities == ("text",)
    assert info["speech_cnn"].modalities == ("audio",)
    assert all(info[name].batch_kind == "utterance" and info[name].paper for name in BASELINES)


@pytest.mark.parametrize("name", BASELINES)
def test_output_shape_and_loss(name):
    torch.manual_seed(0)
    model = build(name)
    output = model(make_batch())
    assert output.logits.shape == (4, CLASSES)
    assert torch.isfinite(output.logits).all()
    total, parts = model.loss(output, torch.tensor([0, 1, 2, 3]))
    assert total.dim() == 0 and torch.isfinite(total)
    assert parts["total"] == pytest.approx(float(total.detach()))


@pytest.mark.parametrize("name", BASELINES)
def test_padding_never_changes_the_output(name):
    torch.manual_seed(0)
    model = build(name).eval()
    with torch.no_grad():
        plain = model(make_batch(seed=3)).logits
        padded = model(make_batch(seed=3, extra=11)).logits
    assert torch.allclose(plain, padded, atol=1e-5), (plain - padded).abs().max()


@pytest.mark.parametrize("name", BASELINES)
def test_same_seed_same_output(name):
    outputs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = build(name)
        outputs.append(model(make_batch(seed=1)).logits)  # train mode: dropout draws follow the seed too
    assert torch.equal(outputs[0], outputs[1])
    torch.manual_seed(8)
    assert not torch.equal(outputs[0], build(name)(make_batch(seed=1)).logits)


@pytest.mark.parametrize("name", BASELINES)
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = build(name)
    model.set_class_weights(torch.tensor([1.0, 2.0, 0.5, 1.5]))
    total, _ = model.loss(model(make_batch()), torch.tensor([0, 1, 2, 3]))
    total.backward()
    without = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert without == []


def test_single_modality_variant_ignores_the_other_modality():
    torch.manual_seed(0)
    model = build("early_fusion_audio").eval()
    batch = make_batch(seed=2)
    other = make_batch(seed=2)
    other.inputs["text"] = make_batch(seed=5).inputs["text"]
    assert torch.equal(model(batch).logits, model(other).logits)
    del other.inputs["text"]
    assert torch.equal(model(batch).logits, model(other).logits)


def test_missing_or_unsupported_modalities_fail_clearly():
    with pytest.raises(ConfigError, match="text missing"):
        create_model("early_fusion", {}, {"audio": 16}, CLASSES)
    with pytest.raises(ConfigError, match="does not take audio"):
        create_model("text_bilstm", {"modalities": ["audio", "text"]}, DIMS, CLASSES)
    with pytest.raises(ConfigError, match="does not take text"):
        create_model("speech_cnn", {"modalities": ["text"]}, DIMS, CLASSES)
    model = build("early_fusion")
    batch = make_batch()
    del batch.inputs["text"]
    with pytest.raises(ConfigError, match="has no text input"):
        model(batch)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="hiden_dim.*did you mean 'hidden_dim'"):
        build("early_fusion", hiden_dim=8)
    with pytest.raises(ConfigError, match="kernel_size must be odd"):
        build("speech_cnn", kernel_size=4)
    with pytest.raises(ConfigError, match="dropout must be in"):
        build("tfn", dropout=1.5)
    with pytest.raises(ConfigError, match="class weights need 4 values"):
        build("late_fusion").set_class_weights(torch.ones(3))


def test_weighted_cross_entropy_matches_torch():
    torch.manual_seed(0)
    model = build("early_fusion")
    weights = torch.tensor([1.0, 3.0, 0.5, 2.0])
    model.set_class_weights(weights)
    output = model(make_batch())
    labels = torch.tensor([0, 1, -100, 1])  # -100 (padding in dialogue batches) is ignored
    total, _ = model.loss(output, labels)
    assert torch.allclose(total, F.cross_entropy(output.logits, labels, weight=weights, ignore_index=-100))


def test_late_fusion_averages_the_unimodal_probabilities():
    torch.manual_seed(0)
    model = build("late_fusion").eval()
    output = model(make_batch())
    audio = output.aux["expert_logits_audio"].softmax(-1)
    text = output.aux["expert_logits_text"].softmax(-1)
    assert torch.allclose(output.logits.exp(), (audio + text) / 2, atol=1e-6)
    total, parts = model.loss(output, torch.tensor([0, 1, 2, 3]))
    branch = F.cross_entropy(output.aux["expert_logits_audio"], torch.tensor([0, 1, 2, 3])) + F.cross_entropy(
        output.aux["expert_logits_text"], torch.tensor([0, 1, 2, 3])
    )
    assert parts["branch"] == pytest.approx(float(branch.detach()), rel=1e-5)
    assert float(total.detach()) == pytest.approx(parts["ce"] + parts["branch"], rel=1e-5)


def test_tfn_fuses_the_outer_product_of_augmented_vectors():
    torch.manual_seed(0)
    two = build("tfn", proj_dim=5)
    assert two.classifier.net[0].in_features == 6 * 6
    three = create_model("tfn", {"proj_dim": 5, "modalities": ["audio", "text", "video"]}, DIMS, CLASSES)
    assert three.classifier.net[0].in_features == 6**3
    assert three(make_batch(modalities=("audio", "text", "video"))).logits.shape == (4, CLASSES)


def test_early_fusion_takes_video_too():
    torch.manual_seed(0)
    model = create_model("early_fusion", {"modalities": ["audio", "text", "video"]}, DIMS, CLASSES)
    assert model.classifier.net[0].in_features == sum(DIMS.values())
    assert model(make_batch(modalities=("audio", "text", "video"))).logits.shape == (4, CLASSES)


def test_masked_adaptive_pool_matches_torch_on_each_row():
    generator = torch.Generator().manual_seed(0)
    lengths = [40, 7, 32, 1]
    states, mask = pad_sequences([torch.randn(n, 3, generator=generator) for n in lengths])
    states = torch.where(mask.unsqueeze(-1), states, torch.full_like(states, 1e6))
    pooled = masked_adaptive_pool(states, mask, 8)
    assert pooled.shape == (4, 8, 3)
    for row, n in enumerate(lengths):
        expected = F.adaptive_avg_pool1d(states[row, :n].T.unsqueeze(0), 8)[0].T
        assert torch.allclose(pooled[row], expected, atol=1e-6)
    assert torch.allclose(pooled[3], states[3, :1].expand(8, 3))


def test_lstm_encoder_packs_padding_away():
    torch.manual_seed(0)
    encoder = LSTMEncoder(3, 5, bidirectional=True)
    sequences = [torch.randn(n, 3) for n in (6, 2, 4)]
    states, mask = pad_sequences(sequences)
    out = encoder(states, mask)
    assert out.shape == (3, 10)
    for row, sequence in enumerate(sequences):
        alone = encoder(sequence.unsqueeze(0), None)
        assert torch.allclose(out[row], alone[0], atol=1e-6)
    assert LSTMEncoder(3, 5, num_layers=2, bidirectional=False)(states, mask).shape == (3, 5)


def test_linear_svm_learns_a_separable_problem_and_rejects_a_bad_margin():
    """Utterance vectors whose class is a linear function of the features: the SVM fits them
    perfectly and its hinge loss goes to (near) zero; margin must be positive."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(CLASSES, DIMS["audio"], generator=generator) * 3
    labels = torch.arange(64) % CLASSES
    vectors = centres[labels] + 0.3 * torch.randn(64, DIMS["audio"], generator=generator)
    batch = Batch(inputs={"audio": ModalityInput(states=vectors.unsqueeze(1), mask=None)}, labels=labels)
    model = build("linear_svm_audio")
    assert model.loss(model(batch), labels)[1].keys() == {"hinge", "total"}
    optimiser = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=1e-3)
    first = None
    for _ in range(150):
        optimiser.zero_grad()
        total, _ = model.loss(model(batch), labels)
        first = float(total.detach()) if first is None else first
        total.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        predicted = model(batch).logits.argmax(-1)
    assert torch.equal(predicted, labels)
    assert float(model.loss(model(batch), labels)[0].detach()) < 0.05 * first
    plain = build("linear_svm_audio", squared_hinge=False)
    assert plain.loss(plain(batch), labels)[0] > 0
    with pytest.raises(ConfigError, match="margin"):
        build("linear_svm_audio", margin=0)


def _noisy_problem(rows: int = 60, dims: int = 200, seed: int = 0):
    """More dimensions than rows and overlapping classes: the regime of openSMILE functionals."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, dims, generator=generator) * 0.3
    labels = torch.arange(rows) % CLASSES
    return centres[labels] + torch.randn(rows, dims, generator=generator), labels


def svm(dims: int, **overrides) -> torch.nn.Module:
    return create_model("linear_svm_audio", overrides, {"audio": dims}, CLASSES)


@torch.no_grad()
def _svm_objective(model, features, labels, c=1.0):
    scores = features.double() @ model.scores.weight.double().T + model.scores.bias.double()
    per_row = F.multi_margin_loss(scores, labels, p=2, margin=1.0, reduction="none") * CLASSES
    return float(c * per_row.sum() + 0.5 * (model.scores.weight.double() ** 2).sum())


def test_the_linear_svm_is_solved_to_the_minimum_of_its_objective():
    """solver="lbfgs" (the default) puts W, b at the minimum of c·Σ hinge² + ½‖W‖²: no small
    step away from the solution lowers the objective, and epochs of AdamW end far above it."""
    features, labels = _noisy_problem()
    model = svm(features.shape[1])
    assert model.fits_by_solver and model.solver_layer() is model.scores
    report = model.solve(features, labels)
    assert report["converged"] and report["iterations"] > 0
    solved = _svm_objective(model, features, labels)
    assert report["objective"] == pytest.approx(solved, rel=1e-4)
    generator = torch.Generator().manual_seed(1)
    weight, bias = model.scores.weight.detach().clone(), model.scores.bias.detach().clone()
    for _ in range(5):
        with torch.no_grad():
            model.scores.weight.copy_(weight + 1e-3 * torch.randn(weight.shape, generator=generator))
            model.scores.bias.copy_(bias + 1e-3 * torch.randn(bias.shape, generator=generator))
        assert _svm_objective(model, features, labels) > solved
    trained = svm(features.shape[1], solver="epochs")
    assert not trained.fits_by_solver
    optimiser = torch.optim.AdamW(trained.parameters(), lr=1e-3, weight_decay=0.0)
    batch = Batch(inputs={"audio": ModalityInput(states=features.unsqueeze(1), mask=None)}, labels=labels)
    for _ in range(25):
        optimiser.zero_grad()
        trained.loss(trained(batch), labels)[0].backward()
        optimiser.step()
    assert _svm_objective(trained, features, labels) > 1.5 * solved
    # the class weights the trainer sets count in the objective: a class weighted up is fitted harder
    weighted = svm(features.shape[1])
    weighted.set_class_weights(torch.tensor([4.0] + [1.0] * (CLASSES - 1)))
    weighted.solve(features, labels)
    with torch.no_grad():
        recall_0 = lambda m: float((m.scores(features).argmax(-1)[labels == 0] == 0).float().mean())  # noqa: E731
    assert recall_0(weighted) >= recall_0(model)
    with pytest.raises(ConfigError, match="solver must be one of lbfgs, epochs"):
        svm(features.shape[1], solver="sgd")
    with pytest.raises(ConfigError, match="needs N×D features and N labels"):
        model.solve(features, labels[:-1])


def test_fit_solves_a_solved_model_in_one_step():
    """emomix.train.fit: a model that fits by its solver gets one history row (the solve) and the
    solution, not epochs; its validation UA is recorded."""
    from emomix.train.fit import fit

    features, labels = _noisy_problem(rows=80, dims=40, seed=2)
    batches = [
        Batch(
            inputs={"audio": ModalityInput(states=features[i : i + 16].unsqueeze(1), mask=None)},
            labels=labels[i : i + 16],
        )
        for i in range(0, 64, 16)
    ]
    held_out = [
        Batch(inputs={"audio": ModalityInput(states=features[64:].unsqueeze(1), mask=None)}, labels=labels[64:])
    ]
    model = svm(features.shape[1])
    result = fit(model, batches, held_out, epochs=30, seed=0)
    assert len(result.history) == 1 and result.best_epoch == 1
    assert {"objective", "iterations", "converged", "val_ua", "seconds"} <= set(result.history[0])
    reference = svm(features.shape[1])
    reference.set_class_weights(torch.tensor(result.class_weights))
    reference.solve(features[:64], labels[:64])
    assert torch.allclose(model.scores.weight, reference.scores.weight, atol=1e-5)


def test_a_solve_stopped_by_its_caps_is_not_reported_converged():
    """L-BFGS stops at max_iter iterations or 1.25 × max_iter evaluations; either is a cap."""
    features, labels = _noisy_problem()
    report = svm(features.shape[1], max_iter=3).solve(features, labels)
    assert report["iterations"] <= 3 and not report["converged"]
    assert svm(features.shape[1]).solve(features, labels)["converged"]
