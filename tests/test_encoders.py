"""Encoders: shapes, frame rates, masks, batching policy, partial fine-tuning, identity, offline
errors, degenerate inputs, registry and speaker normalisation.

Transformer encoders run on tiny randomly initialised configs (2 layers, 32 dims); the bundled
MiniLM is loaded once. Everything here takes seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from emomix.encoders import create_encoder, list_encoders
from emomix.encoders.base import EncoderOutput
from emomix.encoders.hub import folder_fingerprint
from emomix.encoders.mfcc import MFCCEncoder
from emomix.encoders.normalisation import SpeakerNormaliser
from emomix.encoders.opensmile_encoder import OpenSmileEncoder
from emomix.encoders.speech_ssl import SpeechSSLEncoder
from emomix.encoders.text import TextEncoder, cls_of_layer
from emomix.encoders.video import FaceCropEncoder
from emomix.errors import AudioError, ConfigError, MissingDataError

SR = 16_000
TINY_SPEECH = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)
TINY_TEXT = dict(
    vocab_size=30522,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=160,
)


def _wave(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _speech_config(kind: str, **extra):
    from transformers import HubertConfig, Wav2Vec2Config, WavLMConfig

    classes = {"wavlm": WavLMConfig, "hubert": HubertConfig, "wav2vec2": Wav2Vec2Config}
    return classes[kind](**{**TINY_SPEECH, **extra})


def _text_config(kind: str = "bert", **extra):
    from transformers import BertConfig, MPNetConfig, RobertaConfig

    if kind == "roberta":
        # The MiniLM (BERT) tokenizer pads with id 0; RoBERTa must agree to place its positions.
        return RobertaConfig(**{**TINY_TEXT, "pad_token_id": 0, **extra})
    if kind == "mpnet":
        # all-mpnet-base-v2's family: relative-position bias in every layer, positions after padding
        return MPNetConfig(**{**TINY_TEXT, "pad_token_id": 0, **extra})
    return BertConfig(**{**TINY_TEXT, **extra})


@pytest.fixture(scope="module")
def wavlm() -> SpeechSSLEncoder:
    return SpeechSSLEncoder.from_config(_speech_config("wavlm"))


@pytest.fixture(scope="module")
def tiny_bert() -> TextEncoder:
    return TextEncoder.from_config(_text_config("bert"))


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder()


def _per_layer_trainable(layers) -> list[bool]:
    flags = []
    for layer in layers:
        grads = {p.requires_grad for p in layer.parameters()}
        assert len(grads) == 1, "a layer is partly frozen"
        flags.append(grads.pop())
    return flags


# ---------------------------------------------------------------------------------------------
# Speech SSL
# ---------------------------------------------------------------------------------------------


def test_speech_shapes_frame_rate_and_hidden_states(wavlm):
    out = wavlm.encode([_wave(1.0), _wave(0.5, seed=1)], output_hidden_states=True)
    assert wavlm.frame_rate == 50.0 and wavlm.output_size == 32 and wavlm.num_layers == 2
    assert out.states.shape == (2, 49, 32)
    assert out.lengths().tolist() == [49, 24]  # T ≈ duration × 50 (the CNN drops one edge frame)
    assert abs(int(out.lengths()[0]) - 1.0 * wavlm.frame_rate) <= 1
    assert len(out.hidden_states) == wavlm.num_layers + 1
    assert torch.equal(out.hidden_states[-1], out.states)
    assert not out.mask[1, 24:].any() and torch.all(out.states[1, 24:] == 0)
    assert wavlm.encode([_wave(1.0)]).hidden_states is None


def test_speech_group_norm_cnn_runs_alone_so_batches_do_not_change_outputs(wavlm):
    # wavlm-base's convention: group-normalised CNN, feature extractor without attention mask.
    assert wavlm.uses_attention_mask is False and wavlm.batching == "cnn_alone"
    waves = [_wave(1.0), _wave(0.37, seed=2), _wave(1.0, seed=3)]
    batch = wavlm.encode(waves)
    for index, wave in enumerate(waves):
        alone = wavlm.encode([wave])
        n = int(alone.lengths()[0])
        assert int(batch.lengths()[index]) == n
        torch.testing.assert_close(batch.states[index, :n], alone.states[0, :n], atol=1e-5, rtol=1e-4)


def test_speech_with_attention_mask_pads_and_masks_so_batches_do_not_change_outputs():
    encoder = SpeechSSLEncoder.from_config(
        _speech_config("wav2vec2", feat_extract_norm="layer", do_stable_layer_norm=True)
    )
    assert encoder.uses_attention_mask is True and encoder.batching == "padded"
    waves = [_wave(1.0), _wave(0.41, seed=4)]
    batch = encoder.encode(waves)
    short = encoder.encode([waves[1]])
    n = int(short.lengths()[0])
    assert n == 20
    torch.testing.assert_close(batch.states[1, :n], short.states[0], atol=1e-5, rtol=1e-4)


def test_same_wave_in_a_padded_batch_without_grouping_would_differ(wavlm):
    """Why the CNN runs on each waveform alone: zero-padding really changes a group-norm model's frames."""
    wave = _wave(0.4, seed=5)
    padded = np.concatenate([wave, np.zeros(SR - wave.size, dtype=np.float32)])
    alone = wavlm.encode([wave])
    n = int(alone.lengths()[0])
    with_padding = wavlm.encode([padded]).states[0, :n]
    assert not torch.allclose(alone.states[0], with_padding, atol=1e-3)


@pytest.mark.parametrize(
    "kind,extra",
    [
        ("wavlm", {}),
        ("hubert", {}),
        ("wav2vec2", {}),
        ("wavlm", {"feat_extract_norm": "layer", "do_stable_layer_norm": True}),
        ("wav2vec2", {"feat_extract_norm": "layer", "do_stable_layer_norm": True}),
    ],
)
def test_speech_forward_from_layer_equals_full_forward(kind, extra):
    encoder = SpeechSSLEncoder.from_config(_speech_config(kind, **extra))
    full = encoder.encode([_wave(1.0), _wave(0.6, seed=6)], output_hidden_states=True)
    encoder.eval()
    with torch.no_grad():
        for start in range(encoder.num_layers + 1):
            partial = encoder.forward_from_layer(full.hidden_states[start], full.mask, start, output_hidden_states=True)
            valid = full.mask.unsqueeze(-1)
            torch.testing.assert_close(partial.states * valid, full.states * valid, atol=1e-5, rtol=1e-4)
            assert all(h is None for h in partial.hidden_states[:start])
            assert len(partial.hidden_states) == encoder.num_layers + 1


def test_speech_freeze_leaves_exactly_the_top_k_layers_trainable():
    encoder = SpeechSSLEncoder.from_config(_speech_config("wavlm", num_hidden_layers=3))
    layers = encoder.model.encoder.layers
    assert _per_layer_trainable(layers) == [False, False, False]
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.freeze(1)
    assert _per_layer_trainable(layers) == [False, False, True]
    encoder.freeze(2)
    assert _per_layer_trainable(layers) == [False, True, True]
    for module in (
        encoder.model.feature_extractor,
        encoder.model.feature_projection,
        encoder.model.encoder.pos_conv_embed,
    ):
        assert not any(p.requires_grad for p in module.parameters())
    trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for layer in layers[1:] for p in layer.parameters())
    # Frozen layers run without dropout while the encoder trains.
    encoder.train()
    assert not layers[0].training and layers[1].training and layers[2].training
    assert not encoder.model.feature_extractor.training
    with pytest.raises(ConfigError, match="between 0 and 3"):
        encoder.freeze(4)
    built = SpeechSSLEncoder.from_config(_speech_config("hubert"), trainable_top_layers=1)
    assert _per_layer_trainable(built.model.encoder.layers) == [False, True]


def test_speech_layer_selection(wavlm):
    chosen = SpeechSSLEncoder.from_config(_speech_config("wavlm"), layers=[1])
    out = chosen.encode([_wave(0.5)], output_hidden_states=True)
    torch.testing.assert_close(out.states, out.hidden_states[1])
    assert chosen.layers == (1,) and chosen.config()["layers"] == [1]
    stored = out.unpad(0, layers=[0, 1])
    assert set(stored) == {"states", "layer_0", "layer_1"}
    assert SpeechSSLEncoder.from_config(_speech_config("wavlm"), layers=[-1]).layers == (2,)
    with pytest.raises(ConfigError, match="hidden states 0..2"):
        SpeechSSLEncoder.from_config(_speech_config("wavlm"), layers=[3])


def test_speech_silence_short_and_bad_inputs(wavlm):
    out = wavlm.encode([np.zeros(SR, dtype=np.float32), _wave(0.005)])  # silence and 80 samples
    assert torch.isfinite(out.states).all()
    assert out.lengths().tolist() == [49, 1]
    assert out.extras["padded_short"] == [False, True]
    with pytest.raises(AudioError, match="waveform 1 of the batch is empty"):
        wavlm.encode([_wave(0.1), np.zeros(0, dtype=np.float32)])
    with pytest.raises(AudioError, match="1-D mono"):
        wavlm.encode([np.zeros((2, SR), dtype=np.float32)])
    assert torch.is_tensor(wavlm.encode([torch.from_numpy(_wave(0.2))]).states)


def test_speech_identity_follows_config_only(tmp_path):
    config = _speech_config("wavlm")
    a = SpeechSSLEncoder.from_config(config)
    b = SpeechSSLEncoder.from_config(config)
    assert a.identity() == b.identity()
    torch.testing.assert_close(a.encode([_wave(0.3)]).states, b.encode([_wave(0.3)]).states)
    assert SpeechSSLEncoder.from_config(config, trainable_top_layers=1).identity() == a.identity()
    assert SpeechSSLEncoder.from_config(config, layers=[1]).identity() != a.identity()
    assert SpeechSSLEncoder.from_config(config, seed=1).identity() != a.identity()
    assert SpeechSSLEncoder.from_config(_speech_config("wavlm", intermediate_size=48)).identity() != a.identity()

    # A local folder is identified by its content, not its path or modification time.
    folder = tmp_path / "tiny-wavlm"
    a.model.save_pretrained(folder)
    a.feature_extractor.save_pretrained(folder)
    loaded = SpeechSSLEncoder(str(folder))
    assert loaded.config()["name"] == "tiny-wavlm"
    assert loaded.config()["revision"].startswith("sha256:")
    moved = tmp_path / "elsewhere" / "tiny-wavlm"
    moved.parent.mkdir()
    folder.rename(moved)
    assert SpeechSSLEncoder(str(moved)).identity() == loaded.identity()
    torch.testing.assert_close(loaded.encode([_wave(0.3)]).states, a.encode([_wave(0.3)]).states)
    before = folder_fingerprint(moved)
    config_file = moved / "config.json"
    data = json.loads(config_file.read_text())
    data["layer_norm_eps"] = 1e-6
    config_file.write_text(json.dumps(data))
    assert folder_fingerprint(moved) != before
    assert SpeechSSLEncoder(str(moved)).identity() != loaded.identity()


def test_hub_model_from_the_cache_loads_offline_with_its_commit_as_revision(tmp_path, monkeypatch):
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--tiny-org--tiny-hubert"
    snapshot = repo / "snapshots" / commit
    source = SpeechSSLEncoder.from_config(_speech_config("hubert"))
    source.model.save_pretrained(snapshot)
    source.feature_extractor.save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = SpeechSSLEncoder("tiny-org/tiny-hubert")
    assert encoder.config()["revision"] == f"hf:{commit}"
    assert encoder.config()["name"] == "tiny-org/tiny-hubert"
    torch.testing.assert_close(encoder.encode([_wave(0.3)]).states, source.encode([_wave(0.3)]).states)


def test_missing_weights_offline_raise_missing_data_error_naming_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for build in (
        lambda: SpeechSSLEncoder("no-such-org/no-such-speech-model"),
        lambda: TextEncoder("no-such-org/no-such-text-model"),
        lambda: create_encoder("speech:no-such-org/no-such-speech-model"),
    ):
        with pytest.raises(MissingDataError) as caught:
            build()
        message = str(caught.value)
        assert "no-such-org/no-such-" in message
        assert "internet" in message and "HF_HOME" in message and "local folder" in message
    with pytest.raises(MissingDataError, match="does not exist"):
        TextEncoder("./no/such/folder")


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------


def test_text_states_masks_and_special_tokens(tiny_bert):
    out = tiny_bert.encode(["Hello there!", "I am really quite angry about this"], output_hidden_states=True)
    ids = out.extras["input_ids"]
    lengths = out.lengths().tolist()
    assert out.states.shape == (2, max(lengths), 32)
    assert tiny_bert.frame_rate is None and tiny_bert.modality == "text"
    assert len(out.hidden_states) == tiny_bert.num_layers + 1
    for row, length in enumerate(lengths):
        special = out.special_tokens[row].nonzero().flatten().tolist()
        assert special == [0, length - 1]
        assert ids[row, 0].item() == 101 and ids[row, length - 1].item() == 102  # [CLS] … [SEP]
    assert not out.special_tokens[0, lengths[0] :].any()  # padding is not a special token
    torch.testing.assert_close(cls_of_layer(out), out.states[:, 0])
    torch.testing.assert_close(cls_of_layer(out, 1), out.hidden_states[1][:, 0])
    with pytest.raises(ValueError, match="output_hidden_states"):
        cls_of_layer(tiny_bert.encode(["hi"]), 1)


def test_text_padding_in_a_batch_does_not_change_valid_outputs(tiny_bert):
    texts = ["ok", "this sentence is a good deal longer than the first one", "fine then"]
    batch = tiny_bert.encode(texts)
    for index, text in enumerate(texts):
        alone = tiny_bert.encode([text])
        n = int(alone.lengths()[0])
        assert int(batch.lengths()[index]) == n
        torch.testing.assert_close(batch.states[index, :n], alone.states[0], atol=1e-5, rtol=1e-4)


def test_empty_and_whitespace_text_encode_as_special_tokens_only(tiny_bert):
    out = tiny_bert.encode(["", "   \n", None, "words"])
    assert out.extras["empty_text"] == [True, True, True, False]
    assert out.lengths().tolist()[:3] == [2, 2, 2]  # [CLS] [SEP]
    assert out.special_tokens[0, :2].all()
    torch.testing.assert_close(out.states[0, :2], out.states[1, :2])
    assert torch.isfinite(out.states).all()
    with pytest.raises(TypeError, match="text 0"):
        tiny_bert.encode([3.5])


def test_text_truncates_long_input_and_flags_it():
    encoder = TextEncoder.from_config(_text_config("bert"), max_length=8)
    out = encoder.encode(["one two three four five six seven eight nine ten", "short"])
    assert out.lengths().tolist()[0] == 8
    assert out.extras["truncated"] == [True, False]
    with pytest.raises(ConfigError, match="max_length"):
        TextEncoder.from_config(_text_config("bert"), max_length=1000)


@pytest.mark.parametrize("kind", ["bert", "roberta", "mpnet"])
def test_text_forward_from_layer_equals_full_forward(kind):
    encoder = TextEncoder.from_config(_text_config(kind))
    full = encoder.encode(["a short one", "and a considerably longer sentence here"], output_hidden_states=True)
    encoder.eval()
    with torch.no_grad():
        for start in range(encoder.num_layers + 1):
            partial = encoder.forward_from_layer(full.hidden_states[start], full.mask, start)
            valid = full.mask.unsqueeze(-1)
            torch.testing.assert_close(partial.states * valid, full.states * valid, atol=1e-5, rtol=1e-4)


def test_text_freeze_leaves_exactly_the_top_k_layers_trainable():
    encoder = TextEncoder.from_config(_text_config("bert", num_hidden_layers=3))
    layers = encoder.model.encoder.layer
    assert _per_layer_trainable(layers) == [False, False, False]
    encoder.freeze(2)
    assert _per_layer_trainable(layers) == [False, True, True]
    assert not any(p.requires_grad for p in encoder.model.embeddings.parameters())
    assert getattr(encoder.model, "pooler", None) is None  # unused pooler dropped
    encoder.train()
    assert not encoder.model.embeddings.training and not layers[0].training and layers[2].training
    with pytest.raises(ConfigError, match="between 0 and 3"):
        encoder.freeze(-1)


def test_text_identity_follows_name_layers_and_max_length(tiny_bert):
    same = TextEncoder.from_config(_text_config("bert"))
    assert same.identity() == tiny_bert.identity()
    assert TextEncoder.from_config(_text_config("bert"), trainable_top_layers=2).identity() == tiny_bert.identity()
    assert TextEncoder.from_config(_text_config("bert"), max_length=64).identity() != tiny_bert.identity()
    assert TextEncoder.from_config(_text_config("bert"), layers=[1]).identity() != tiny_bert.identity()
    assert TextEncoder.from_config(_text_config("roberta")).identity() != tiny_bert.identity()


def test_bundled_minilm_is_the_offline_default(minilm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = minilm.config()
    assert config["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert config["revision"].startswith("sha256:")
    assert (minilm.output_size, minilm.num_layers) == (384, 6)
    out = minilm.encode(["I can't believe you did that!", ""], output_hidden_states=True)
    assert out.states.shape[-1] == 384 and len(out.hidden_states) == 7
    assert out.extras["empty_text"] == [False, True]
    # The bundled sentence encoder puts related sentences closer than unrelated ones.
    vectors = minilm.encode(["I am furious", "I am so angry", "The train leaves at noon"])
    pooled = (vectors.states * vectors.mask.unsqueeze(-1)).sum(1) / vectors.lengths().unsqueeze(-1)
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2]


# ---------------------------------------------------------------------------------------------
# openSMILE, MFCC, video
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("feature_set,lld,functionals", [("eGeMAPSv02", 25, 88), ("ComParE_2016", 65, 6373)])
def test_opensmile_dimensions_and_frame_rate(feature_set, lld, functionals):
    encoder = OpenSmileEncoder(feature_set, level="both")
    out = encoder.encode([_wave(1.0), _wave(2.0, seed=1)])
    assert encoder.frame_rate == 100.0 and encoder.output_size == lld
    assert out.states.shape[-1] == lld and out.pooled.shape == (2, functionals)
    assert abs(int(out.lengths()[0]) - 100) <= 5 and abs(int(out.lengths()[1]) - 200) <= 5
    assert torch.isfinite(out.states).all() and torch.isfinite(out.pooled).all()
    assert len(encoder.feature_names()) == lld and len(encoder.feature_names(pooled=True)) == functionals
    only = OpenSmileEncoder(feature_set, level="functionals").encode([_wave(1.0)])
    assert only.states.shape == (1, 1, functionals)
    torch.testing.assert_close(only.pooled, out.pooled[:1])
    assert OpenSmileEncoder(feature_set).encode([_wave(1.0)]).pooled is None


def test_opensmile_silence_and_too_short_input_do_not_crash():
    encoder = OpenSmileEncoder("eGeMAPSv02", level="both")
    out = encoder.encode([np.zeros(SR, dtype=np.float32), _wave(0.005), np.zeros(0, dtype=np.float32)])
    assert out.extras["too_short"] == [False, True, True]
    assert out.lengths().tolist()[1:] == [1, 1]
    assert torch.isfinite(out.states).all() and torch.isfinite(out.pooled).all()
    assert torch.all(out.pooled[1] == 0)


def test_opensmile_identity_and_bad_options():
    egemaps = OpenSmileEncoder("eGeMAPSv02")
    assert egemaps.identity() == OpenSmileEncoder("eGeMAPSv02").identity()
    assert egemaps.identity() != OpenSmileEncoder("ComParE_2016").identity()
    assert egemaps.identity() != OpenSmileEncoder("eGeMAPSv02", level="functionals").identity()
    assert egemaps.config()["revision"].startswith("opensmile-")
    assert not list(egemaps.parameters())
    with pytest.raises(ConfigError, match="eGeMAPSv02, ComParE_2016"):
        OpenSmileEncoder("GeMAPS")
    with pytest.raises(ConfigError, match="level"):
        OpenSmileEncoder("eGeMAPSv02", level="frames")


def test_mfcc_shapes_padding_and_identity():
    encoder = MFCCEncoder()
    out = encoder.encode([_wave(1.0), _wave(0.5, seed=1), np.zeros(0, dtype=np.float32)])
    assert encoder.frame_rate == 100.0 and out.states.shape == (3, 101, 40)
    assert out.lengths().tolist() == [101, 51, 1] and out.extras["empty"] == [False, False, True]
    fixed = MFCCEncoder(pad_seconds=2.0).encode([_wave(1.0), _wave(3.0, seed=2)])
    assert fixed.states.shape == (2, 201, 40)
    assert fixed.lengths().tolist() == [101, 201]
    torch.testing.assert_close(fixed.states[0, :90], out.states[0, :90])
    assert MFCCEncoder().identity() == encoder.identity()
    assert MFCCEncoder(n_mfcc=13).identity() != encoder.identity()
    assert MFCCEncoder(pad_seconds=8).identity() != encoder.identity()
    with pytest.raises(ConfigError):
        MFCCEncoder(n_mfcc=40, n_mels=20)


def test_face_crop_encoder_shapes_masks_and_identity():
    torch.manual_seed(0)
    encoder = FaceCropEncoder(out_dim=16)
    rng = np.random.default_rng(0)
    stacks = [rng.integers(0, 256, (5, 64, 64), dtype=np.uint8), rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)]
    out = encoder.encode([*stacks, np.zeros((0, 64, 64), dtype=np.uint8)])
    assert out.states.shape == (3, 5, 16) and out.lengths().tolist() == [5, 3, 1]
    assert out.extras["empty"] == [False, False, True]
    torch.testing.assert_close(out.states[1, :3], encoder.encode([stacks[1]]).states[0], atol=1e-5, rtol=1e-4)
    assert any(p.requires_grad for p in encoder.parameters())
    before = encoder.identity()
    assert FaceCropEncoder(out_dim=32).identity() != before
    with torch.no_grad():
        encoder.projection.bias.add_(1.0)
    assert encoder.identity() != before  # trained weights are part of the identity
    encoder.freeze()
    assert not any(p.requires_grad for p in encoder.parameters())
    with pytest.raises(AudioError, match="N × 64 × 64"):
        encoder.encode([np.zeros((2, 32, 32), dtype=np.uint8)])


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def test_registry_names_specs_and_errors(tmp_path, tiny_bert):
    names = list_encoders()
    for name in (
        "opensmile:eGeMAPSv02",
        "opensmile:ComParE_2016",
        "mfcc",
        "minilm",
        "wavlm-base",
        "hubert-base",
        "roberta-base",
        "bert-base-uncased",
        "text:<hub name or folder>",
        "speech:<hub name or folder>",
    ):
        assert name in names
    assert isinstance(create_encoder("opensmile:ComParE_2016"), OpenSmileEncoder)
    built = create_encoder({"name": "mfcc", "n_mfcc": 13, "pad_seconds": 8})
    assert isinstance(built, MFCCEncoder) and built.n_mfcc == 13 and built.pad_seconds == 8.0
    assert create_encoder({"name": "opensmile:eGeMAPSv02", "level": "functionals"}).level == "functionals"
    with pytest.raises(ConfigError, match="unknown encoder 'wavlm-bse'.*wavlm-base"):
        create_encoder("wavlm-bse")
    with pytest.raises(ConfigError, match="no option 'n_fft'"):
        create_encoder({"name": "mfcc", "n_fft": 512})
    with pytest.raises(ConfigError, match="'name'"):
        create_encoder({"n_mfcc": 13})
    folder = tmp_path / "tiny-bert"
    tiny_bert.model.save_pretrained(folder)
    tiny_bert.tokenizer.save_pretrained(folder)
    text = create_encoder({"name": f"text:{folder}", "max_length": 32})
    assert isinstance(text, TextEncoder) and text.max_length == 32 and text.config()["name"] == "tiny-bert"
    torch.testing.assert_close(text.encode(["hello"]).states, tiny_bert.encode(["hello"]).states)


# ---------------------------------------------------------------------------------------------
# Speaker normalisation
# ---------------------------------------------------------------------------------------------


def _speaker_data():
    rng = np.random.default_rng(0)
    features, rows = {}, []
    for speaker, (offset, scale) in {"s1": (5.0, 2.0), "s2": (-3.0, 0.5)}.items():
        for index in range(3):
            utt = f"{speaker}_u{index}"
            features[utt] = (offset + scale * rng.standard_normal((10 + index, 4))).astype(np.float32)
            rows.append({"utt_id": utt, "speaker": speaker, "label": ["ang", "hap", "neu"][index]})
    return features, pd.DataFrame(rows)


def test_speaker_normaliser_gives_each_speaker_mean_zero_sd_one():
    features, table = _speaker_data()
    normaliser = SpeakerNormaliser().fit(features, table)
    for speaker in ("s1", "s2"):
        utts = table.loc[table.speaker == speaker, "utt_id"]
        frames = np.concatenate([normaliser.transform(features[u], speaker) for u in utts])
        np.testing.assert_allclose(frames.mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(frames.std(axis=0), 1.0, atol=1e-5)
    # Labels are never used: other labels give the same statistics.
    relabelled = table.assign(label=["sad"] * len(table))
    other = SpeakerNormaliser().fit(features, relabelled)
    np.testing.assert_array_equal(other.mean["s1"], normaliser.mean["s1"])
    # Utterance vectors work the same way; a constant dimension maps to 0, not to inf.
    vectors = {u: np.array([f.mean(), 7.0]) for u, f in features.items()}
    by_vector = SpeakerNormaliser().fit(vectors, dict(zip(table.utt_id, table.speaker)))
    assert np.all(by_vector.transform(vectors["s1_u0"], "s1")[1] == 0)


def test_speaker_normaliser_unseen_speakers_and_round_trips(tmp_path):
    features, table = _speaker_data()
    normaliser = SpeakerNormaliser().fit(features, table)
    pooled = np.concatenate(list(features.values())).astype(np.float64)
    unseen = normaliser.transform(pooled, "newcomer")
    np.testing.assert_allclose(unseen.mean(axis=0), 0.0, atol=1e-5)  # global fallback
    strict = SpeakerNormaliser(unseen="error").fit(features, table)
    with pytest.raises(ConfigError, match="fit_speaker"):
        strict.transform(pooled, "newcomer")
    newcomer = [np.full((4, 4), 2.0) + np.arange(4)[:, None], np.full((2, 4), 9.0)]
    strict.fit_speaker("newcomer", newcomer)
    frames = strict.transform(np.concatenate(newcomer), "newcomer")
    np.testing.assert_allclose(frames.mean(axis=0), 0.0, atol=1e-6)
    for suffix in (".json", ".safetensors"):
        path = normaliser.save(tmp_path / f"normaliser{suffix}")
        loaded = SpeakerNormaliser.load(path)
        assert loaded.speakers == ["s1", "s2"] and loaded.count == normaliser.count
        np.testing.assert_array_equal(
            loaded.transform(features["s2_u1"], "s2"), normaliser.transform(features["s2_u1"], "s2")
        )
        np.testing.assert_array_equal(loaded.global_std, normaliser.global_std)
    assert json.loads((tmp_path / "normaliser.json").read_text())["format"].startswith("emomix.speaker_normaliser")
    with pytest.raises(ConfigError, match=".json or .safetensors"):
        normaliser.save(tmp_path / "normaliser.pkl")
    with pytest.raises(MissingDataError):
        SpeakerNormaliser.load(tmp_path / "absent.json")
    with pytest.raises(ConfigError, match="no speaker"):
        SpeakerNormaliser().fit({"x": np.zeros((2, 4))}, {})


def test_encoder_output_unpad_matches_mask(wavlm):
    out: EncoderOutput = wavlm.encode([_wave(1.0), _wave(0.3, seed=9)], output_hidden_states=True)
    stored = out.unpad(1, layers=[0])
    assert stored["states"].shape == (int(out.lengths()[1]), 32)
    assert stored["layer_0"].shape == stored["states"].shape


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_speaker_normaliser_round_trips_through_an_atomic_save(tmp_path, suffix):
    features, table = _speaker_data()
    normaliser = SpeakerNormaliser().fit(features, table)
    path = normaliser.save(tmp_path / f"normaliser{suffix}")
    loaded = SpeakerNormaliser.load(path)
    utt = table["utt_id"].iloc[0]
    np.testing.assert_allclose(loaded.transform(features[utt], "s1"), normaliser.transform(features[utt], "s1"))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left beside it
