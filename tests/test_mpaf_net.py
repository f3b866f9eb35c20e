"""MPAF-Net (``mpaf_net`` and its variants) and the ``concat_fusion`` baseline."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from emomix.errors import ConfigError
from emomix.models import Batch, ModalityInput, create_model, list_models
from emomix.models.mpaf_net import ConcatFusionModel, LastStateLSTM, MPAFConfig, MPAFNetModel

TEXT_DIM, MFCC_DIM, VIDEO_DIM, CLASSES = 24, 40, 16, 5  # VIDEO_DIM: the side of the face crops
SMALL = {
    "audio_hidden": 16,
    "video_hidden": 20,
    "pair_dim": 8,
    "pair_hidden": 8,
    "classifier_hidden": 16,
    "video_cnn_channels": [4, 8],
    "video_frame_dim": 8,
}
DIMS = {"text": TEXT_DIM, "audio": MFCC_DIM, "video": VIDEO_DIM}


def make_batch(seed: int = 0, batch: int = 6, frames: int = 15, tokens: int = 7, video_frames: int = 10) -> Batch:
    generator = torch.Generator().manual_seed(seed)

    def modality(lengths: list[int], steps: int, dim: int) -> ModalityInput:
        mask = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]
        states = torch.randn(batch, steps, dim, generator=generator) * mask[..., None]
        return ModalityInput(states=states, mask=mask)

    def faces(lengths: list[int], steps: int) -> ModalityInput:
        """Face crops as the ``faces`` encoder stores them: ``B × T × S × S``, values 0–255."""
        mask = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]
        states = torch.randint(0, 256, (batch, steps, VIDEO_DIM, VIDEO_DIM), generator=generator).float()
        return ModalityInput(states=states * mask[..., None, None], mask=mask)

    return Batch(
        inputs={
            "text": modality([7, 4, 6, 2, 5, 3][:batch], tokens, TEXT_DIM),
            "audio": modality([15, 9, 3, 12, 1, 7][:batch], frames, MFCC_DIM),
            "video": faces([10, 6, 8, 2, 9, 4][:batch], video_frames),
        },
        labels=torch.arange(batch) % CLASSES,
    )


def only(batch: Batch, *modalities: str) -> Batch:
    return Batch(inputs={m: batch.inputs[m] for m in modalities}, labels=batch.labels)


def pad_more(batch: Batch, extra: int = 6, seed: int = 5) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    inputs = {}
    for name, item in batch.inputs.items():
        rows, _, *tail = item.states.shape
        inputs[name] = replace(
            item,
            states=torch.cat([item.states, torch.randn(rows, extra, *tail, generator=generator) * 10], dim=1),
            mask=torch.cat([item.mask, torch.zeros(rows, extra, dtype=torch.bool)], dim=1),
        )
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


@pytest.mark.parametrize(
    "name,modalities",
    [
        ("mpaf_net", TRIMODAL),
        ("mpaf_net", ("audio", "text")),
        ("mpaf_net_audio", ("audio",)),
        ("concat_fusion", TRIMODAL),
    ],
)
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
        _, (hidden, _) = encoder.lstm(audio.states[row : row + 1, :length])
        assert torch.allclose(result[row], hidden[-1, 0], atol=1e-6)


def test_text_vector_is_the_first_token_or_the_pooled_vector():
    model = build("mpaf_net_text").eval()
    batch = make_batch()
    output = model(batch)
    assert torch.equal(output.aux["h_text"], batch.inputs["text"].states[:, 0])
    batch.inputs["text"].pooled = torch.randn(6, 10)
    pooled_model = create_model(
        "mpaf_net_text", {**SMALL, "text_source": "pooled"}, {"text": TEXT_DIM, "text_pooled": 10}, CLASSES
    ).eval()
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


@pytest.mark.parametrize(
    "name,modalities",
    [
        ("mpaf_net", TRIMODAL),
        ("mpaf_net", ("audio", "text")),
        ("mpaf_net_text", ("text",)),
        ("concat_fusion", TRIMODAL),
    ],
)
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
        create_model(
            "mpaf_net", {"modalities": ["text", "audio", "video"]}, {"text": TEXT_DIM, "audio": MFCC_DIM}, CLASSES
        )
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
    forget, input_gate = total[hidden : 2 * hidden], total[:hidden]
    assert torch.all(forget >= 0) and torch.all(forget <= torch.log(torch.tensor(49.0)) + 1e-6)
    torch.testing.assert_close(input_gate, -forget)
    assert torch.count_nonzero(total[2 * hidden :]) == 0
    assert LastStateLSTM(5, 16, init="pytorch").lstm.bias_ih_l0.abs().sum() > 0
    with pytest.raises(ConfigError, match="lstm_init"):
        MPAFConfig.from_dict({"lstm_init": "xavier"})


# ---------------------------------------------------------------------------------------------
# The video path: face crops → CNN → LSTM, trained with the model, with rotate/crop augmentation
# ---------------------------------------------------------------------------------------------


def mouth_faces(labels: torch.Tensor, frames: int = 4, seed: int = 0) -> ModalityInput:
    """Noisy 16×16 "faces" whose only class cue is where the bright mouth bar sits (high or low)."""
    generator = torch.Generator().manual_seed(seed)
    states = torch.randint(40, 120, (len(labels), frames, VIDEO_DIM, VIDEO_DIM), generator=generator).float()
    for row, label in enumerate(labels.tolist()):
        top = 9 if label == 0 else 12
        states[row, :, top : top + 2, 4:12] = 230.0
    lengths = torch.randint(1, frames + 1, (len(labels),), generator=generator)
    mask = torch.arange(frames)[None, :] < lengths[:, None]
    return ModalityInput(states=states * mask[..., None, None], mask=mask)


def test_the_video_cnn_and_lstm_learn_a_mouth_cue_in_a_few_steps():
    torch.manual_seed(0)
    model = create_model(
        "mpaf_net",
        {**SMALL, "modalities": ["video"], "video_augment": False, "classifier_dropout": 0.0, "feature_dropout": 0.0},
        {"video": VIDEO_DIM},
        2,
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    labels = torch.arange(32) % 2
    for step in range(15):
        batch = Batch(inputs={"video": mouth_faces(labels, seed=step)}, labels=labels)
        loss, _ = model.loss(model(batch), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    held_out = torch.arange(40) % 2
    with torch.no_grad():
        predicted = model(Batch(inputs={"video": mouth_faces(held_out, seed=999)})).logits.argmax(1)
    assert float((predicted == held_out).float().mean()) >= 0.95


@pytest.mark.parametrize("name", ["mpaf_net", "concat_fusion"])
def test_gradients_reach_the_video_cnn_of_a_trimodal_batch(name):
    model = build(name, modalities=TRIMODAL)
    batch = make_batch()
    total, _ = model.loss(model(batch), batch.labels)
    total.backward()
    cnn = model.encoders["video"].cnn
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cnn.parameters())
    assert model(batch).aux["h_video"].shape == (6, 20)


def test_video_augmentation_applies_in_training_only_and_is_seeded(monkeypatch):
    import emomix.models.mpaf_net as mpaf

    calls = []
    original = mpaf.random_rotate_crop
    monkeypatch.setattr(mpaf, "random_rotate_crop", lambda *a, **k: calls.append(a[0].shape) or original(*a, **k))
    batch = only(make_batch(), "video", "text", "audio")
    model = build(modalities=TRIMODAL, feature_dropout=0.0, pair_dropout=0.0, classifier_dropout=0.0)
    valid_frames = int(batch.inputs["video"].mask.sum())

    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return model(batch).aux["h_video"]

    first, again, other = run(1), run(1), run(2)
    assert calls == [(valid_frames, VIDEO_DIM, VIDEO_DIM)] * 3  # valid frames only, every training step
    assert torch.equal(first, again) and not torch.allclose(first, other)
    model.eval()
    calls.clear()
    assert torch.equal(run(1), run(2)) and calls == []  # evaluation and inference see the crops as they are
    plain = build(modalities=TRIMODAL, video_augment=False)
    plain.train()
    assert torch.equal(*(plain(batch).aux["h_video"] for _ in range(2))) and calls == []


def test_rotate_crop_keeps_the_frame_without_change_moves_it_otherwise_and_treats_a_clip_alike():
    from emomix.encoders.video import random_rotate_crop

    frames = torch.rand(5, VIDEO_DIM, VIDEO_DIM)
    rows = torch.tensor([0, 0, 0, 1, 1])
    same = random_rotate_crop(frames, rows, 2, max_degrees=0.0, min_scale=1.0)
    torch.testing.assert_close(same, frames, atol=1e-5, rtol=0)
    repeated = frames[:1].expand(5, -1, -1).clone()
    moved = random_rotate_crop(
        repeated, rows, 2, max_degrees=20.0, min_scale=0.7, generator=torch.Generator().manual_seed(0)
    )
    assert moved.shape == frames.shape and not torch.allclose(moved[0], repeated[0], atol=1e-3)
    torch.testing.assert_close(moved[0], moved[2])  # one transform per utterance
    assert not torch.allclose(moved[0], moved[3], atol=1e-3)  # another for the next utterance
    assert float(moved.min()) >= float(repeated.min()) - 1e-5 and float(moved.max()) <= float(repeated.max()) + 1e-5
    again = random_rotate_crop(
        repeated, rows, 2, max_degrees=20.0, min_scale=0.7, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(moved, again)


def test_video_input_errors_name_the_faces_encoder():
    model = build(modalities=TRIMODAL).eval()
    batch = make_batch()
    video = batch.inputs["video"]
    batch.inputs["video"] = replace(video, states=video.states[..., 0])  # B × T × D vectors, not crops
    with pytest.raises(ConfigError, match="'faces' encoder"):
        model(batch)
    frames = build(modalities=TRIMODAL, video_frontend="frames").eval()  # per-frame vectors: LSTM only
    assert frames(batch).logits.shape == (6, CLASSES)
    with pytest.raises(ConfigError, match="multiple of 4"):
        create_model("mpaf_net", {**SMALL, "modalities": list(TRIMODAL)}, {**DIMS, "video": 18}, CLASSES)
    with pytest.raises(ConfigError, match="video_rotate_degrees"):
        MPAFConfig.from_dict({"video_rotate_degrees": 90})
