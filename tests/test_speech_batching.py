"""The speech encoder's batching policies give every utterance the states it gets alone.

``SpeechSSLEncoder`` chooses per config: ``cnn_alone`` for group-normalised CNNs (the CNN on each
waveform unpadded, the transformer on the padded batch with a frame mask) and ``padded`` for
layer-normalised ones (the whole model on the zero-padded batch with the sample mask). The
reference here is the ``transformers`` model itself on each waveform alone, unpadded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emomix.encoders.speech_ssl import SpeechSSLEncoder

# WavLM hands torch a bool padding mask next to its float position bias (same result; torch warns).
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")

SR = 16000
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16, 16, 16, 16, 16, 16, 16),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)
# ragged: two of the same length (they share a CNN call), one under a frame (400 samples)
DURATIONS = [(1.0, 0), (0.37, 1), (1.0, 2), (0.613, 3), (0.02, 4)]

CONFIGS = {
    "wavlm-group": ("wavlm", {}, "cnn_alone"),
    "hubert-group": ("hubert", {}, "cnn_alone"),
    "wav2vec2-group": ("wav2vec2", {}, "cnn_alone"),
    "wavlm-layer": ("wavlm", {"feat_extract_norm": "layer", "do_stable_layer_norm": True}, "padded"),
    "wav2vec2-layer": ("wav2vec2", {"feat_extract_norm": "layer", "do_stable_layer_norm": True}, "padded"),
    # layer-normalised CNN without the stable layer norm (post-LN transformer)
    "hubert-layer-postln": ("hubert", {"feat_extract_norm": "layer"}, "padded"),
}


def _config(kind: str, **extra):
    from transformers import HubertConfig, Wav2Vec2Config, WavLMConfig

    classes = {"wavlm": WavLMConfig, "hubert": HubertConfig, "wav2vec2": Wav2Vec2Config}
    return classes[kind](**{**TINY, **extra})


def _wave(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * (120 + 40 * seed) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _waves() -> list[np.ndarray]:
    return [_wave(seconds, seed) for seconds, seed in DURATIONS]


def _alone(encoder: SpeechSSLEncoder, wave: np.ndarray) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The transformers model on one unpadded waveform: last state and every hidden state."""
    if wave.size < encoder.min_samples:
        wave = np.pad(wave, (0, encoder.min_samples - wave.size))
    values = encoder.feature_extractor(wave, sampling_rate=SR, return_tensors="pt")["input_values"]
    with torch.no_grad():
        out = encoder.model(values, output_hidden_states=True)
    return out.last_hidden_state[0], tuple(h[0] for h in out.hidden_states)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_batch_gives_each_utterance_its_states_alone(name):
    kind, extra, policy = CONFIGS[name]
    encoder = SpeechSSLEncoder.from_config(_config(kind, **extra))
    assert encoder.batching == policy
    waves = _waves()
    batch = encoder.encode(waves, output_hidden_states=True)
    assert batch.extras["padded_short"] == [False, False, False, False, True]
    assert len(batch.hidden_states) == encoder.num_layers + 1
    for index, wave in enumerate(waves):
        last, hidden = _alone(encoder, wave)
        n = int(batch.lengths()[index])
        assert n == last.shape[0] == int(encoder.output_lengths([max(wave.size, encoder.min_samples)])[0])
        torch.testing.assert_close(batch.states[index, :n], last, atol=1e-4, rtol=1e-4)
        assert torch.all(batch.states[index, n:] == 0)
        for layer, states in enumerate(batch.hidden_states):
            torch.testing.assert_close(states[index, :n], hidden[layer], atol=1e-4, rtol=1e-4)
            assert torch.all(states[index, n:] == 0)


@pytest.mark.parametrize("name", ["wavlm-group", "wavlm-layer"])
def test_a_lower_layer_selection_and_its_boundary_states_match_the_utterance_alone(name):
    kind, extra, _ = CONFIGS[name]
    encoder = SpeechSSLEncoder.from_config(_config(kind, **extra), layers=[1])
    waves = _waves()
    batch = encoder.encode(waves, output_hidden_states=True)
    # the top layer, run from the stored boundary state (the input of layer 2) as partial fine-tuning does
    top = SpeechSSLEncoder.from_config(_config(kind, **extra))
    with torch.no_grad():
        resumed = top.forward_from_layer(batch.hidden_states[1], batch.mask, 1)
    for index, wave in enumerate(waves):
        last, hidden = _alone(encoder, wave)
        n = int(batch.lengths()[index])
        torch.testing.assert_close(batch.states[index, :n], hidden[1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(resumed.states[index, :n], last, atol=1e-4, rtol=1e-4)


def test_a_layer_normalised_cnn_pads_even_when_its_extractor_has_no_attention_mask():
    """The policy follows the CNN, not the feature extractor's flag: with the sample mask passed,
    a layer-normalised model's valid frames never see the padding."""
    from transformers import Wav2Vec2FeatureExtractor

    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SR, do_normalize=True, return_attention_mask=False
    )
    encoder = SpeechSSLEncoder.from_config(
        _config("wav2vec2", feat_extract_norm="layer", do_stable_layer_norm=True), feature_extractor=extractor
    )
    assert encoder.batching == "padded" and not encoder.uses_attention_mask
    waves = _waves()
    batch = encoder.encode(waves)
    for index, wave in enumerate(waves):
        last, _ = _alone(encoder, wave)
        torch.testing.assert_close(batch.states[index, : last.shape[0]], last, atol=1e-4, rtol=1e-4)


def test_cnn_alone_runs_the_cnn_per_distinct_length_and_the_transformer_once():
    encoder = SpeechSSLEncoder.from_config(_config("wavlm"))
    calls = {"cnn": [], "layer": 0}

    def on_cnn(module, args, output):
        calls["cnn"].append(tuple(args[0].shape))

    def on_layer(module, args, output):
        calls["layer"] += 1

    handles = [
        encoder.model.feature_extractor.register_forward_hook(on_cnn),
        encoder.model.encoder.layers[0].register_forward_hook(on_layer),
    ]
    try:
        encoder.encode(_waves())
    finally:
        for handle in handles:
            handle.remove()
    lengths = {max(int(seconds * SR), encoder.min_samples) for seconds, _ in DURATIONS}
    assert sorted(calls["cnn"]) == sorted([(2, SR)] + [(1, n) for n in lengths if n != SR])
    assert calls["layer"] == 1


def test_cnn_alone_does_not_depend_on_the_batch_order_or_company():
    encoder = SpeechSSLEncoder.from_config(_config("wavlm"))
    waves = _waves()
    forward = encoder.encode(waves, output_hidden_states=True)
    backward = encoder.encode(waves[::-1], output_hidden_states=True)
    pair = encoder.encode(waves[1:3], output_hidden_states=True)
    for index in range(len(waves)):
        n = int(forward.lengths()[index])
        back = len(waves) - 1 - index
        torch.testing.assert_close(forward.states[index, :n], backward.states[back, :n], atol=1e-5, rtol=1e-5)
    for row, index in enumerate((1, 2)):
        n = int(forward.lengths()[index])
        torch.testing.assert_close(forward.states[index, :n], pair.states[row, :n], atol=1e-5, rtol=1e-5)
