"""MPAF-Net (``mpaf_net`` and its variants) and the ``concat_fusion`` baseline."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from emomix.errors import ConfigError
from emomix.models import Batch, ModalityInput, create_model, list_models
from emomix.models.mpaf_net import ConcatFusionModel, LastStateLSTM, MPAFConfig, MPAFNetModel

TEXT_DIM, MFCC_DIM, VIDEO_DIM, CLASSES = 24, 40, 12, 5
SMALL = {"audio_hidden": 16, "video_hidden": 20, "pair_dim": 8, "pair_hidden": 8, "classifier_hidden": 16}
DIMS = {"text": TEXT_DIM, "audio": MFCC_DIM, "video": VIDEO_DIM}


def make_batch(seed: int = 0, batch: int = 6, frames: int = 15, tokens: int = 7, video_frames: int = 10) -> Batch:
    generator = torch.Generator().manual_seed(seed)

    def modality(lengths: list[int], steps: int, dim: int) -> ModalityInput:
        mask = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]
        states = torch.randn(batch, steps, dim, generator=generator) * mask[..., None]
        return ModalityInput(states=states, mask=mask)

    return Batch(inputs={
        "text": modality([7, 4, 6, 2, 5, 3][:batch], tokens, TEXT_DIM),
        "audio": modality([15, 9, 3, 12, 1, 7][:batch], frames, MFCC_DIM),
        "video": modality([10, 6, 8, 2, 9, 4][:batch], video_frames, VIDEO_DIM),
    }, labels=torch.arange(batch) % CLASSES)


def only(batch: Batch, *modalities: str) -> Batch:
    return Batch(inputs={m: batch.inputs[m] for m in modalities}, labels=batch.labels)


def pad_more(batch: Batch, extra: int = 6, seed: int = 5) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    inputs = {}
    for name, item in batch.inputs.items():
        rows, _, dim = item.states.shape
        inputs[name] = replace(
            item,
            states=torch.cat([item.states, torch.randn(rows, extra, dim, generator=generator) * 10], dim=1),
            mask=torch.cat([item.mask, torch.zeros(rows, extra, dtype=torch.bool)], dim=1))
    return Batch(inputs=inputs, labels=batch.labels)


def build(name: str = "mpaf_net", seed: int = 0, **config) -> MPAFNetModel:
    torch.manual_seed(seed)
    modalities = config.get("modalities") or list_models()[name].modalities
    return create_model(name, {**SMALL, **config}, {m: DIMS[m] for m in modalities}, CLASSES)


TRIMODAL = ("audio", "text", "video")


def test_registered_names_and_defaults():
    models = list_models()
    assert models["mpaf_net"].cls is MPAFNetModel
    assert models["mpaf_net"].modalities == ("audio", "text")
    assert models["mpaf_net_text"].modalities == ("text",)
    assert models["mpaf_net_audio"].modalities == ("audio",)
    assert models["concat_fusion"].cls is ConcatFusionModel
    config = MPAFConfig()
    assert (config.audio_hidden, config.video_hidden, config.focal_gamma) == (128, 256, 2.0)
    baseline = create_model("concat_fusion", {}, {"audio": MFCC_DIM, "text": TEXT_DIM}, CLASSES)
    assert (baseline.config.fusion, baseline.config.focal_gamma) == ("concat", 0.0)


def test_alphas_are_in_the_open_unit_interval_for_every_pair():
    model = build(modalities=TRIMODAL).eval()
    output = model(make_batch())
    assert output.logits.shape == (6, CLASSES)
    assert {k for k in output.aux if k.startswith("alpha_")} == {"alpha_ta", "alpha_tv", "alpha_av"}
    for key in ("alpha_ta", "alpha_tv", "alpha_av"):
        alpha = output.aux[key]
        assert alpha.shape == (6,)
        assert torch.all((alpha > 0) & (alpha < 1))


def test_fused_vector_holds_the_paths_of_the_available_modalities():
    width = lambda model: model.classifier.net[0].in_features  # noqa: E731
    trimodal = build(modalities=TRIMODAL)
    assert width(trimodal) == TEXT_DIM + 16 + 20 + 3 * 8
    bimodal = build()  # no video: only h_t, h_a and f_ta remain
    assert width(bimodal) == TEXT_DIM + 16 + 8
    assert list(bimodal.pair_modules) == ["ta"]
    assert width(build("mpaf_net_text")) == TEXT_DIM
    assert width(build("mpaf_net_audio")) == 16
    assert width(build("concat_fusion", modalities=TRIMODAL)) == TEXT_DIM + 16 + 20
    assert len(build("concat_fusion").pair_modules) == 0


def test_missing_video_runs_without_a_video_input():
    model = build().eval()
    output = model(only(make_batch(), "text", "audio"))
    assert set(output.aux) == {"h_text", "h_audio", "alpha_ta"}


@pytest.mark.parametrize("name,modalities", [("mpaf_net", TRIMODAL), ("mpaf_net", ("audio", "text")),
                                             ("mpaf_net_audio", ("audio",)), ("concat_fusion", TRIMODAL)])
def test_padded_frames_never_change_the_output(name, modalities):
    model = build(name, modalities=modalities).eval()
    batch = only(make_batch(), *modalities)
    reference = model(batch)
    padded = model(pad_more(batch))
    assert torch.allclose(reference.logits, padded.logits, atol=1e-5)
    for key, value in reference.aux.items():
        assert torch.allclose(value, padded.aux[key], atol=1e-5), key


def test_changing_padded_mfcc_frames_changes_nothing_but_a_valid_frame_does():
    model = build().eval()
    batch = make_batch()
    reference = model(batch).logits
    audio = batch.inputs["audio"]
    audio.states[~audio.mask] = torch.randn(int((~audio.mask).sum()), MFCC_DIM) * 100
    assert torch.allclose(reference, model(batch).logits, atol=1e-5)
    last = audio.mask.sum(dim=1) - 1
    audio.states[torch.arange(6), last] += 3.0
    assert not torch.allclose(reference, model(batch).logits, atol=1e-4)


def test_lstm_reads_the_state_after_the_last_valid_frame():
    torch.manual_seed(0)
    encoder = LastStateLSTM(MFCC_DIM, 16).eval()
    audio = make_batch().inputs["audio"]
    result = encoder(audio.states, audio.mask)
    for row, length in enumerate(audio.mask.sum(dim=1).tolist()):
        _, (hidden, _) = encoder.lstm(audio.states[row:row + 1, :length])
        assert torch.allclose(result[row], hidden[-1, 0], atol=1e-6)


def test_text_vector_is_the_first_token_or_the_pooled_vector():
    model = build("mpaf_net_text").eval()
    batch = make_batch()
    output = model(batch)
    assert torch.equal(output.aux["h_text"], batch.inputs["text"].states[:, 0])
    batch.inputs["text"].pooled = torch.randn(6, 10)
    pooled_model = create_model("mpaf_net_text", {**SMALL, "text_source": "pooled"},
                                {"text": TEXT_DIM, "text_pooled": 10}, CLASSES).eval()
    assert torch.equal(pooled_model(batch).aux["h_text"], batch.inputs["text"].pooled)
    with pytest.raises(ConfigError, match="text_pooled"):
        create_model("mpaf_net_text", {"text_source": "pooled"}, {"text": TEXT_DIM}, CLASSES)
    batch.inputs["text"].pooled = None
    with pytest.raises(ConfigError, match="no pooled"):
        pooled_model(batch)


def test_pairwise_fusion_mixes_the_projections_by_alpha():
    model = build().eval()
    batch = make_batch()
    captured = {}
    model.pair_modules["ta"].register_forward_hook(lambda module, args, out: captured.update(inputs=args, out=out))
    output = model(batch)
    text_vector, audio_vector = captured["inputs"]
    assert torch.equal(text_vector, output.aux["h_text"])
    assert torch.equal(audio_vector, output.aux["h_audio"])
    module = model.pair_modules["ta"]
    p1, p2 = F.relu(module.project1(text_vector)), F.relu(module.project2(audio_vector))
    alpha = output.aux["alpha_ta"][:, None]
    assert torch.allclose(captured["out"][0], alpha * p1 + (1 - alpha) * p2, atol=1e-6)


@pytest.mark.parametrize("name,modalities", [("mpaf_net", TRIMODAL), ("concat_fusion", ("audio", "text"))])
def test_same_seed_gives_identical_outputs(name, modalities):
    batch = make_batch()
    outputs = []
    for _ in range(2):
        model = build(name, seed=11, modalities=modalities)
        torch.manual_seed(2)
        outputs.append(model(batch).logits)
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("name,modalities", [("mpaf_net", TRIMODAL), ("mpaf_net", ("audio", "text")),
                                             ("mpaf_net_text", ("text",)), ("concat_fusion", TRIMODAL)])
def test_every_parameter_gets_a_gradient(name, modalities):
    model = build(name, modalities=modalities)
    batch = make_batch()
    total, _ = model.loss(model(batch), batch.labels)
    total.backward()
    without = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without == []


def test_losses_focal_for_mpaf_and_weighted_cross_entropy_for_the_baseline():
    batch = make_batch()
    weights = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])
    model = build().eval()
    model.set_class_weights(weights)
    with torch.no_grad():
        output = model(batch)
        total, parts = model.loss(output, batch.labels)
    probs = output.logits.softmax(dim=1)[torch.arange(6), batch.labels]
    alpha = weights[batch.labels]
    assert float(total) == pytest.approx(float(-(alpha * (1 - probs) ** 2 * probs.log()).sum() / alpha.sum()), rel=1e-5)
    assert set(parts) == {"focal", "total"}
    baseline = build("concat_fusion").eval()
    baseline.set_class_weights(weights)
    with torch.no_grad():
        output = baseline(batch)
        total, parts = baseline.loss(output, batch.labels)
    assert float(total) == pytest.approx(float(F.cross_entropy(output.logits, batch.labels, weight=weights)), rel=1e-5)
    assert set(parts) == {"cross_entropy", "total"}
    with pytest.raises(ConfigError, match="5 values"):
        baseline.set_class_weights(torch.ones(2))


def test_config_and_input_errors_are_clear():
    with pytest.raises(ConfigError, match="fusion must be one of"):
        MPAFConfig.from_dict({"fusion": "tensor"})
    with pytest.raises(ConfigError, match="classifier_dropout"):
        MPAFConfig.from_dict({"classifier_dropout": 1.0})
    with pytest.raises(ConfigError, match="video missing"):
        create_model("mpaf_net", {"modalities": ["text", "audio", "video"]}, {"text": TEXT_DIM, "audio": MFCC_DIM}, CLASSES)
    model = build().eval()
    with pytest.raises(ConfigError, match="no audio input"):
        model(only(make_batch(), "text"))


def test_chrono_initialisation_sets_forget_and_input_gate_biases():
    """Forget-gate bias log U(1, T−1) per unit, input gate its negative, the rest 0 (summed over
    PyTorch's two bias vectors); the "pytorch" choice keeps PyTorch's own initialisation."""
    from emomix.models.mpaf_net import chrono_init

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 16, batch_first=True)
    chrono_init(lstm, 50.0)
    total = lstm.bias_ih_l0 + lstm.bias_hh_l0
    hidden = 16
    forget, input_gate = total[hidden:2 * hidden], total[:hidden]
    assert torch.all(forget >= 0) and torch.all(forget <= torch.log(torch.tensor(49.0)) + 1e-6)
    torch.testing.assert_close(input_gate, -forget)
    assert torch.count_nonzero(total[2 * hidden:]) == 0
    assert LastStateLSTM(5, 16, init="pytorch").lstm.bias_ih_l0.abs().sum() > 0
    with pytest.raises(ConfigError, match="lstm_init"):
        MPAFConfig.from_dict({"lstm_init": "xavier"})
