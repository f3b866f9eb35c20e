"""Dual Routing MoE (``dual_routing`` and its registered variants)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from emomix.errors import ConfigError
from emomix.models import Batch, ModalityInput, create_model, list_models
from emomix.models.dual_routing import DualRoutingConfig, DualRoutingModel

AUDIO_DIM, TEXT_DIM, LAYERS, CLASSES = 16, 24, 4, 4
VARIANTS = (
    "dual_routing",
    "dual_routing_local",
    "dual_routing_global",
    "dual_routing_concat",
    "dual_routing_audio",
    "dual_routing_text",
)


def make_batch(seed: int = 0, batch: int = 5, audio_frames: int = 12, text_tokens: int = 9) -> Batch:
    """Variable-length audio (with VAD speech masks) and text (with CLS/SEP special tokens and
    the last ``LAYERS`` layers' states)."""
    generator = torch.Generator().manual_seed(seed)
    audio_lengths = torch.tensor([12, 7, 10, 4, 9])[:batch]
    text_lengths = torch.tensor([9, 5, 7, 3, 6])[:batch]
    audio_mask = torch.arange(audio_frames)[None, :] < audio_lengths[:, None]
    text_mask = torch.arange(text_tokens)[None, :] < text_lengths[:, None]
    speech = (torch.rand(batch, audio_frames, generator=generator) > 0.4) & audio_mask
    speech[:, 1] = True  # every row has speech unless a test removes it
    special = ~text_mask.clone()
    special[:, 0] = True
    special[torch.arange(batch), text_lengths - 1] = True
    audio = ModalityInput(
        states=torch.randn(batch, audio_frames, AUDIO_DIM, generator=generator) * audio_mask[..., None],
        mask=audio_mask,
        speech_mask=speech,
        frame_rate=50.0,
    )
    text = ModalityInput(
        states=torch.randn(batch, text_tokens, TEXT_DIM, generator=generator) * text_mask[..., None],
        mask=text_mask,
        special_tokens=special,
        layer_states=torch.randn(batch, LAYERS, text_tokens, TEXT_DIM, generator=generator)
        * text_mask[:, None, :, None],
    )
    return Batch(inputs={"audio": audio, "text": text}, labels=torch.arange(batch) % CLASSES)


def pad_more(batch: Batch, extra: int = 5, seed: int = 99) -> Batch:
    """The same batch with ``extra`` more padded positions per modality, filled with random values."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {}
    for name, item in batch.inputs.items():
        rows, _length, dim = item.states.shape
        pad_mask = torch.zeros(rows, extra, dtype=torch.bool)
        padded = replace(
            item,
            states=torch.cat([item.states, torch.randn(rows, extra, dim, generator=generator) * 10], dim=1),
            mask=torch.cat([item.mask, pad_mask], dim=1),
        )
        if item.speech_mask is not None:
            padded.speech_mask = torch.cat([item.speech_mask, pad_mask], dim=1)
        if item.special_tokens is not None:
            padded.special_tokens = torch.cat([item.special_tokens, ~pad_mask], dim=1)
        if item.layer_states is not None:
            noise = torch.randn(rows, item.layer_states.shape[1], extra, dim, generator=generator) * 10
            padded.layer_states = torch.cat([item.layer_states, noise], dim=2)
        inputs[name] = padded
    return Batch(inputs=inputs, labels=batch.labels)


def build(name: str = "dual_routing", seed: int = 0, **config) -> DualRoutingModel:
    torch.manual_seed(seed)
    modalities = config.get("modalities") or list_models()[name].modalities
    dims = {m: {"audio": AUDIO_DIM, "text": TEXT_DIM}[m] for m in modalities}
    return create_model(name, config, dims, CLASSES)


def only(batch: Batch, *modalities: str) -> Batch:
    return Batch(inputs={m: batch.inputs[m] for m in modalities}, labels=batch.labels)


def test_every_variant_is_registered_with_its_routing_and_modalities():
    models = list_models()
    expected = {
        "dual_routing": ("routed", ("audio", "text")),
        "dual_routing_local": ("local", ("audio", "text")),
        "dual_routing_global": ("global", ("audio", "text")),
        "dual_routing_concat": ("concat", ("audio", "text")),
        "dual_routing_audio": ("routed", ("audio",)),
        "dual_routing_text": ("routed", ("text",)),
    }
    for name, (routing, modalities) in expected.items():
        assert models[name].cls is DualRoutingModel
        model = build(name)
        assert model.config.routing == routing
        assert model.modalities == modalities
        output = model.eval()(make_batch())
        assert output.logits.shape == (5, CLASSES)


def test_route_weights_are_probabilities_summing_to_one_per_modality():
    model = build().eval()
    output = model(make_batch())
    for modality in ("audio", "text"):
        route = output.aux[f"route_{modality}"]
        assert route.shape == (5, 2)
        assert torch.all((route > 0) & (route < 1))
        assert torch.allclose(route.sum(dim=1), torch.ones(5), atol=1e-6)
    # each modality has its own router: the two routes differ
    assert not torch.allclose(output.aux["route_audio"], output.aux["route_text"])


@pytest.mark.parametrize("name", VARIANTS)
def test_padding_never_changes_the_output(name):
    model = build(name).eval()
    batch = make_batch()
    modalities = model.modalities
    reference = model(only(batch, *modalities))
    padded = model(only(pad_more(batch), *modalities))
    assert torch.allclose(reference.logits, padded.logits, atol=1e-5)
    for key, value in reference.aux.items():
        assert torch.allclose(value.float(), padded.aux[key].float(), atol=1e-5), key


def test_vad_fallback_flags_rows_without_speech_and_pools_over_all_valid_frames():
    model = build().eval()
    batch = make_batch()
    batch.inputs["audio"].speech_mask[2] = False
    output = model(batch)
    assert output.aux["vad_fallback"].tolist() == [False, False, True, False, False]
    # the fallback row behaves exactly as if every valid frame had been marked as speech
    all_speech = make_batch()
    all_speech.inputs["audio"].speech_mask[2] = all_speech.inputs["audio"].mask[2]
    expected = model(all_speech)
    assert torch.allclose(output.logits[2], expected.logits[2], atol=1e-6)
    assert not expected.aux["vad_fallback"].any()


def test_without_speech_mask_every_valid_frame_is_speech():
    model = build().eval()
    batch = make_batch()
    batch.inputs["audio"].speech_mask = None
    output = model(batch)
    assert not output.aux["vad_fallback"].any()
    reference = make_batch()
    reference.inputs["audio"].speech_mask = reference.inputs["audio"].mask.clone()
    assert torch.allclose(output.logits, model(reference).logits, atol=1e-6)


def test_local_audio_reads_only_speech_frames():
    model = build("dual_routing_local").eval()
    batch = make_batch()
    output = model(batch)
    audio = batch.inputs["audio"]
    non_speech = audio.mask & ~audio.speech_mask
    assert non_speech.any()
    changed = make_batch()
    changed.inputs["audio"].states[non_speech] += 5.0
    assert torch.allclose(output.logits, model(changed).logits, atol=1e-6)
    changed.inputs["audio"].states[audio.speech_mask] += 5.0
    assert not torch.allclose(output.logits, model(changed).logits, atol=1e-3)


def test_local_text_skips_special_tokens():
    model = build("dual_routing_local").eval()
    batch = make_batch()
    reference = model(batch).logits
    text = batch.inputs["text"]
    changed = make_batch()
    changed.inputs["text"].states[text.special_tokens & text.mask] += 5.0
    assert torch.allclose(reference, model(changed).logits, atol=1e-6)
    changed.inputs["text"].states[text.mask & ~text.special_tokens] += 5.0
    assert not torch.allclose(reference, model(changed).logits, atol=1e-3)


def test_text_row_without_content_tokens_falls_back_to_all_tokens():
    model = build().eval()
    batch = make_batch()
    text = batch.inputs["text"]
    text.special_tokens[3] = True
    output = model(batch)
    assert output.aux["text_content_fallback"].tolist() == [False, False, False, True, False]
    assert torch.isfinite(output.logits).all()


def test_local_routing_does_not_depend_on_global_inputs():
    batch, perturbed = make_batch(), make_batch()
    perturbed.inputs["text"].layer_states += torch.randn_like(perturbed.inputs["text"].layer_states)
    local_model = build("dual_routing_local").eval()
    assert torch.allclose(local_model(batch).logits, local_model(perturbed).logits, atol=1e-6)
    assert "route_text" not in local_model(batch).aux
    # the full model does read them, so the comparison above can fail
    full = build().eval()
    assert not torch.allclose(full(batch).logits, full(perturbed).logits, atol=1e-3)


def test_global_routing_does_not_depend_on_local_inputs():
    batch, perturbed = make_batch(), make_batch()
    # local-only inputs: the text token states (the global text vector reads layer_states) and the VAD mask
    perturbed.inputs["text"].states += torch.randn_like(perturbed.inputs["text"].states)
    perturbed.inputs["audio"].speech_mask = ~perturbed.inputs["audio"].speech_mask & perturbed.inputs["audio"].mask
    global_model = build("dual_routing_global").eval()
    assert torch.allclose(global_model(batch).logits, global_model(perturbed).logits, atol=1e-6)
    full = build().eval()
    assert not torch.allclose(full(batch).logits, full(perturbed).logits, atol=1e-3)


ROUTING_VARIANTS = ("dual_routing", "dual_routing_local", "dual_routing_global", "dual_routing_concat")


def _count(module: torch.nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


@pytest.mark.parametrize("name", ROUTING_VARIANTS)
def test_cross_attention_attends_over_three_distinct_tokens_per_modality(name):
    model = build(name).eval()
    seen = []
    model.fusion.register_forward_hook(lambda module, args, out: seen.append((args[0], args[2])))
    model(make_batch())
    ((audio, text),) = seen
    assert audio.shape == text.shape == (5, 3, TEXT_DIM)
    # the experts' tokens differ, so attention is never a softmax over identical keys
    assert not torch.allclose(audio[:, 1], audio[:, 2]) and not torch.allclose(text[:, 1], text[:, 2])


def test_ablations_keep_the_routed_models_fusion_capacity():
    models = {name: build(name) for name in ROUTING_VARIANTS}
    full = models["dual_routing"]
    for name, model in models.items():
        # the same cross-attention and classifier, the same two experts with their heads per modality
        assert _count(model.fusion) == _count(full.fusion) > 0, name
        assert _count(model.classifier) == _count(full.classifier), name
        for m in ("audio", "text"):
            moe, ref = model.moe[m], full.moe[m]
            assert moe.expert_slots == ("local", "global"), name
            experts, ref_experts = (_count(x.local_expert) + _count(x.global_expert) for x in (moe, ref))
            assert experts == ref_experts, name
        # only the routing part differs: the router (routed) or the combining MLP (concat)
        extra = sum(_count(model.moe[m].router) + _count(model.moe[m].combine) for m in ("audio", "text"))
        assert (extra > 0) == (name in ("dual_routing", "dual_routing_concat")), name
        slots = {f"expert_logits_{m}_{s}" for m in ("audio", "text") for s in ("local", "global")}
        assert set(model.branch_keys) == slots, name


@pytest.mark.parametrize("routing", ["local", "global"])
def test_single_scale_ablation_routes_everything_to_its_scale(routing):
    model = build(f"dual_routing_{routing}").eval()
    captured = {}
    model.moe["audio"].register_forward_hook(lambda module, args, out: captured.update(out=out, args=args))
    model(make_batch())
    local_in, global_in = captured["args"]
    # only the scale in use was computed; both expert slots read it
    assert (local_in is None) == (routing == "global") and (global_in is None) == (routing == "local")
    tokens = captured["out"]["tokens"]
    slot = 1 if routing == "local" else 2  # p fixed to (1, 0) or (0, 1)
    assert torch.equal(tokens[:, 0], tokens[:, slot])
    assert not torch.allclose(tokens[:, 0], tokens[:, 3 - slot])


def test_cross_attention_ffn_is_a_config_field_off_by_default():
    plain, with_ffn = build(), build(cross_attention_ffn=True, cross_ffn_mult=3)
    assert plain.config.cross_attention_ffn is False  # the paper's cross-attention has no FFN sublayer
    layers = list(plain.fusion.audio_to_text) + list(plain.fusion.text_to_audio)
    assert all(layer.ffn is None and layer.ffn_norm is None for layer in layers)
    ffn_layers = list(with_ffn.fusion.audio_to_text) + list(with_ffn.fusion.text_to_audio)
    assert all(layer.ffn[0].out_features == 3 * TEXT_DIM for layer in ffn_layers)
    per_layer_ffn = 2 * 3 * TEXT_DIM * TEXT_DIM + 3 * TEXT_DIM + TEXT_DIM + 2 * TEXT_DIM  # two linears + LayerNorm
    assert _count(with_ffn.fusion) - _count(plain.fusion) == 4 * per_layer_ffn
    # without the FFN a layer's output is exactly LayerNorm(q + attention)
    layer = plain.fusion.audio_to_text[0].eval()
    q, kv = torch.randn(2, 3, TEXT_DIM), torch.randn(2, 3, TEXT_DIM)
    attended, _ = layer.attention(q, kv, kv, need_weights=False)
    assert torch.allclose(layer(q, kv), layer.attention_norm(q + attended), atol=1e-6)
    for model in (plain, with_ffn):
        assert model.eval()(make_batch()).logits.shape == (5, CLASSES)
    with pytest.raises(ConfigError, match="cross_ffn_mult"):
        build(cross_ffn_mult=0)


def _legacy_state(model: DualRoutingModel, ffn: bool, single_token: bool) -> dict:
    """A state dict in the layout models had before the FFN field and the three-token ablations."""
    from emomix.models.dual_routing import DualRoutingMoE

    torch.manual_seed(1)
    config = model.config
    if ffn:
        model.fusion = type(model.fusion)(
            model.model_dim, heads=config.cross_heads, num_layers=config.cross_layers, dropout=config.dropout, ffn=True
        )
    if single_token:
        for m in model.modalities:
            model.moe[m] = DualRoutingMoE(model.model_dim, CLASSES, routing=config.routing, single_token=True)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["dual_routing", "dual_routing_local", "dual_routing_global"])
def test_checkpoints_of_the_earlier_layout_still_load(name):
    legacy = build(name)
    state = _legacy_state(legacy, ffn=True, single_token=name != "dual_routing")
    batch = make_batch()
    expected = legacy.eval()(batch).logits
    fresh = build(name, seed=5).eval()  # built from a card without the new fields
    fresh.load_state_dict(state)
    assert fresh.config.cross_attention_ffn is True
    assert torch.allclose(fresh.eval()(batch).logits, expected, atol=1e-6)
    if name != "dual_routing":
        assert fresh(batch).aux.keys() >= {f"expert_logits_audio_{name.split('_')[-1]}"}
        assert len(fresh.branch_keys) == 2


def test_routed_vector_is_the_route_weighted_sum_of_the_experts():
    model = build().eval()
    batch = make_batch()
    captured = {}
    model.moe["audio"].register_forward_hook(lambda module, args, out: captured.update(out))
    model(batch)
    route, tokens = captured["route"], captured["tokens"]
    z, local, global_ = tokens[:, 0], tokens[:, 1], tokens[:, 2]
    assert torch.allclose(z, route[:, :1] * local + route[:, 1:] * global_, atol=1e-6)


def test_text_global_needs_layer_states_unless_cls_fallback():
    batch = make_batch()
    batch.inputs["text"].layer_states = None
    with pytest.raises(ConfigError, match=r"layer_states.*text_global='cls'"):
        build().eval()(batch)
    cls_model = build(text_global="cls").eval()
    output = cls_model(batch)
    assert torch.isfinite(output.logits).all()
    # the fallback repeats the last layer's first token: same parameter shapes, checkpoints interchangeable
    layered = build()
    assert {k: v.shape for k, v in cls_model.state_dict().items()} == {
        k: v.shape for k, v in layered.state_dict().items()
    }
    too_few = make_batch()
    too_few.inputs["text"].layer_states = too_few.inputs["text"].layer_states[:, -2:]
    with pytest.raises(ConfigError, match="only 2 text layer"):
        build().eval()(too_few)


def test_cls_fallback_reads_the_first_token_only():
    model = build(text_global="cls", routing="global").eval()
    batch = make_batch()
    reference = model(batch).logits
    batch.inputs["text"].states[:, 1:] += 3.0
    assert torch.allclose(reference, model(batch).logits, atol=1e-6)
    batch.inputs["text"].states[:, 0] += 3.0
    assert not torch.allclose(reference, model(batch).logits, atol=1e-3)


def test_encoders_of_different_widths_are_projected_to_the_model_width():
    model = build()
    assert model.model_dim == max(AUDIO_DIM, TEXT_DIM)
    assert isinstance(model.encoders["text"].project, torch.nn.Identity)
    assert model.encoders["audio"].project.in_features == AUDIO_DIM
    # a width the heads do not divide (25 openSMILE LLDs) is rounded up to the next multiple of 4
    torch.manual_seed(0)
    odd = create_model("dual_routing_audio", {}, {"audio": 25}, CLASSES)
    assert odd.model_dim == 28
    wide = build(model_dim=32)
    assert wide.model_dim == 32
    assert wide.encoders["audio"].project.out_features == 32
    assert wide(make_batch()).logits.shape == (5, CLASSES)


@pytest.mark.parametrize("name", VARIANTS)
def test_same_seed_gives_identical_outputs(name):
    batch = make_batch()
    outputs = []
    for _ in range(2):
        model = build(name, seed=7)
        torch.manual_seed(3)
        outputs.append(model(only(batch, *model.modalities)).logits)  # train mode: dropout draws from the seed
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("name", (*VARIANTS, "concat_mean"))
def test_every_parameter_gets_a_gradient(name):
    config = {"routing": "concat", "concat_mode": "mean"} if name == "concat_mean" else {}
    model = build("dual_routing" if name == "concat_mean" else name, **config)
    batch = make_batch()
    total, _ = model.loss(model(only(batch, *model.modalities)), batch.labels)
    total.backward()
    without = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without == []


def test_loss_combines_focal_branch_and_routing_entropy_with_the_configured_weights():
    model = build().eval()
    batch = make_batch()
    with torch.no_grad():
        output = model(batch)
        total, parts = model.loss(output, batch.labels)
    branch = sum(
        F.cross_entropy(output.aux[f"expert_logits_{m}_{s}"], batch.labels)
        for m in ("audio", "text")
        for s in ("local", "global")
    )
    assert parts["branch"] == pytest.approx(float(branch), rel=1e-5)
    entropies = [-(r * r.log()).sum(dim=1).mean() for r in (output.aux["route_audio"], output.aux["route_text"])]
    assert parts["routing_entropy"] == pytest.approx(-float(sum(entropies)) / 2, rel=1e-5)
    probs = output.logits.softmax(dim=1)[torch.arange(5), batch.labels]
    focal = -(((1 - probs) ** 2) * probs.log()).mean()
    assert parts["focal"] == pytest.approx(float(focal), rel=1e-5)
    assert float(total) == pytest.approx(
        parts["focal"] + 0.3 * parts["branch"] + 0.01 * parts["routing_entropy"], rel=1e-5
    )
    assert parts["total"] == pytest.approx(float(total))


def test_class_weights_set_the_focal_alpha():
    model = build().eval()
    batch = make_batch()
    weights = torch.tensor([4.0, 1.0, 1.0, 1.0])
    model.set_class_weights(weights)
    with torch.no_grad():
        output = model(batch)
        _, parts = model.loss(output, batch.labels)
    probs = output.logits.softmax(dim=1)[torch.arange(5), batch.labels]
    alpha = weights[batch.labels]
    expected = -(alpha * (1 - probs) ** 2 * probs.log()).sum() / alpha.sum()
    assert parts["focal"] == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ConfigError, match="4 values"):
        model.set_class_weights(torch.ones(3))


def test_ablations_have_no_router_or_balance_term():
    batch = make_batch()
    for name in ("dual_routing_local", "dual_routing_global", "dual_routing_concat"):
        model = build(name).eval()
        output = model(batch)
        assert not [k for k in output.aux if k.startswith("route_")]
        assert output.aux_losses == {}
        _, parts = model.loss(output, batch.labels)
        assert "routing_entropy" not in parts
        assert all(module.router is None for module in model.moe.values())


def test_single_modality_variants_run_on_their_modality_alone():
    batch = make_batch()
    audio_model = build("dual_routing_audio").eval()
    assert audio_model.fusion is None
    output = audio_model(only(batch, "audio"))
    assert set(k for k in output.aux if k.startswith("route_")) == {"route_audio"}
    text_model = build("dual_routing_text", single_modality_pooling="z").eval()
    assert text_model.single_pooling is None
    assert text_model(only(batch, "text")).logits.shape == (5, CLASSES)


def test_missing_modality_fails_clearly():
    with pytest.raises(ConfigError, match="text missing"):
        create_model("dual_routing", {}, {"audio": AUDIO_DIM}, CLASSES)
    model = build().eval()
    with pytest.raises(ConfigError, match="no text input"):
        model(only(make_batch(), "audio"))
    with pytest.raises(ConfigError, match="audio and text only"):
        DualRoutingConfig.from_dict({"modalities": ["audio", "video"]})


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="routing must be one of"):
        DualRoutingConfig.from_dict({"routing": "sparse"})
    with pytest.raises(ConfigError, match="did you mean 'routing'"):
        DualRoutingConfig.from_dict({"routng": "local"})
    with pytest.raises(ConfigError, match="expert_dropout"):
        DualRoutingConfig.from_dict({"expert_dropout": 1.5})
    with pytest.raises(ConfigError, match="cross_heads=5"):
        build(model_dim=24, cross_heads=5)


def test_linear_experts_flag():
    model = build(expert_kind="linear")
    assert isinstance(model.moe["audio"].local_expert.body, torch.nn.Linear)
    assert model(make_batch()).logits.shape == (5, CLASSES)
