"""Fine-tuning a text encoder's top layers under a dialogue model (MiSTER-E): the dialogue batch
carries each utterance's boundary token states, the layers run and each utterance is pooled as
the frozen path pools it, and the fine-tuned layers save and load with the model."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest
import torch

from emomix.encoders.text import TextEncoder
from emomix.errors import ConfigError
from emomix.models import create_model
from emomix.models.collate import DialogueCollator, utterance_vector
from emomix.models.saved import TrainedModel
from emomix.train.data import EmotionDataModule
from emomix.train.recipe import OptimiserConfig
from emomix.train.task import EmotionTask

TEXTS = [
    "I am so happy today",
    "no",
    "why would you say that to me",
    "fine, whatever you want",
    "that is wonderful news for all of us",
    "ok",
]
DIALOGUES = [["u0", "u1", "u2", "u3"], ["u4", "u5"]]  # unequal lengths: the batch pads the second
AUDIO_DIM, CLASSES = 5, 3


def _tiny_config():
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=160,
    )


def _encoder(trainable: int = 1) -> TextEncoder:
    return TextEncoder.from_config(_tiny_config(), trainable_top_layers=trainable)


@pytest.fixture(scope="module")
def stored() -> dict[str, dict[str, np.ndarray]]:
    """Per utterance: the tiny encoder's final token states, its layer-1 states (the boundary for
    k = 1) and an audio frame matrix, unpadded, as the feature store returns them."""
    encoder = _encoder(0).eval()
    rng = np.random.default_rng(0)
    out = {}
    with torch.no_grad():
        for index, text in enumerate(TEXTS):
            encoded = encoder.encode([text], output_hidden_states=True)
            out[f"u{index}"] = {
                "final": encoded.states[0].numpy(),
                "layer_1": encoded.hidden_states[1][0].numpy(),
                "audio": rng.standard_normal((4 + index, AUDIO_DIM)).astype(np.float32),
            }
    return out


def _features(stored, text_field: str) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    return {u: {"text": {"states": v[text_field]}, "audio": {"states": v["audio"]}} for u, v in stored.items()}


def _labels() -> dict[str, int]:
    return {f"u{i}": i % CLASSES for i in range(len(TEXTS))}


def _model(name: str = "mister_e", **config):
    torch.manual_seed(0)
    model = create_model(
        name,
        {"hidden_dim": 16, "gate_hidden": 16, "cross_heads": 2, **config},
        {"audio": AUDIO_DIM, "text": 32},
        CLASSES,
    )
    return model.eval()


def _frozen_batch(features):
    vectors = {u: {m: utterance_vector(f[m]) for m in f} for u, f in features.items()}
    return DialogueCollator(vectors, DIALOGUES, _labels(), ["audio", "text"])(range(len(DIALOGUES)))


def _token_batch(features):
    vectors = {u: {"audio": utterance_vector(f["audio"])} for u, f in features.items()}
    return DialogueCollator(
        vectors, DIALOGUES, _labels(), ["audio", "text"], tokens=features, token_modalities=["text"]
    )(range(len(DIALOGUES)))


def test_k0_and_recomputed_top_layer_give_the_frozen_logits(stored):
    """Zero layers above the boundary (k = 0) pools exactly the frozen vectors; the top layer run
    on stored layer-1 states (k = 1, untrained) reproduces them up to float error."""
    model = _model()
    frozen = model(_frozen_batch(_features(stored, "final"))).logits
    batch = _token_batch(_features(stored, "final"))
    assert "text" not in batch.inputs and batch.tokens["text"].states.shape[0] == 6
    k0 = TrainedModel(model, fine_tune={"text": (_encoder(0), 2, [])}).eval()
    with torch.no_grad():
        torch.testing.assert_close(k0(batch).logits, frozen, rtol=0, atol=1e-6)
        k1 = TrainedModel(model, fine_tune={"text": (_encoder(1), 1, [])}).eval()
        torch.testing.assert_close(k1(_token_batch(_features(stored, "layer_1"))).logits, frozen, rtol=0, atol=1e-5)


def test_with_k1_the_loss_reaches_the_top_layer_only(stored):
    encoder = _encoder(1)
    task = EmotionTask(_model(), OptimiserConfig(), fine_tune={"text": (encoder, 1, [])})
    task.train()
    batch = _token_batch(_features(stored, "layer_1"))
    total, _ = task.model.loss(task(batch), batch.labels)
    total.backward()
    layers = encoder.model.encoder.layer
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in layers[1].parameters())
    assert all(p.grad is None for p in layers[0].parameters())
    assert all(p.grad is None for p in encoder.model.embeddings.parameters())
    keys = [k for k in task.trainable_state() if k.startswith("encoders.text.")]
    assert keys and all(".layer.1." in k for k in keys)


def test_a_saved_fine_tuned_dialogue_model_reloads_to_the_same_logits(stored, tmp_path):
    encoder = _encoder(1)
    net = TrainedModel(_model(), fine_tune={"text": (encoder, 1, [])})
    with torch.no_grad():  # as if trained: the top layer differs from its initial weights
        for parameter in encoder.model.encoder.layer[1].parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    net.eval()
    batch = _token_batch(_features(stored, "layer_1"))
    with torch.no_grad():
        expected = net(batch).logits
    card = {
        "model": "mister_e",
        "classes": ["a", "b", "c"],
        "input_dims": {"audio": AUDIO_DIM, "text": 32},
        "config": {"hidden_dim": 16, "gate_hidden": 16, "cross_heads": 2},
        "features": {"text": {"encoder": "tiny", "trainable_top_layers": 1}, "audio": {"encoder": "frames"}},
    }
    net.save(tmp_path, metadata=card)
    loaded = TrainedModel.from_pretrained(tmp_path, encoders={"text": _encoder(0)})
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).logits, expected, rtol=0, atol=0)
        fresh = TrainedModel.from_pretrained(tmp_path, encoders={"text": _encoder(0)})
        fresh.encoders["text"].load_state_dict(_encoder(0).state_dict())  # the pretrained layer again
        assert not torch.allclose(fresh(batch).logits, expected)


def test_the_data_module_sends_token_states_for_fine_tuned_modalities(stored):
    features = _features(stored, "layer_1")
    table = pd.DataFrame(
        {
            "utt_id": list(features),
            "label": [["a", "b", "c"][i % 3] for i in range(6)],
            "dialogue_id": ["d0"] * 4 + ["d1"] * 2,
            "turn": [0, 1, 2, 3, 0, 1],
        }
    )
    feature_set = types.SimpleNamespace(
        features=features, specs={"audio": None, "text": None}, boundary={"text": (_encoder(1), 1)}
    )
    module = EmotionDataModule(
        feature_set,
        table,
        ["a", "b", "c"],
        {"train": list(features)},
        batch_kind="dialogue",
        batch_size=2,
        modalities=["audio", "text"],
    )
    batch = next(iter(module.train_dataloader()))
    assert set(batch.inputs) == {"audio"} and set(batch.tokens) == {"text"} and batch.modalities == ("audio", "text")
    assert batch.tokens["text"].states.shape[0] == int(batch.mask.sum()) == 6


def test_a_dialogue_model_reading_a_stored_pooled_vector_cannot_fine_tune_that_encoder():
    model = create_model(
        "mister_e",
        {"hidden_dim": 16, "gate_hidden": 16, "cross_heads": 2, "speech_source": "pooled"},
        {"audio": 7, "audio_pooled": AUDIO_DIM, "text": 32},
        CLASSES,
    )
    with pytest.raises(ConfigError, match="cannot fine-tune the audio encoder.*trainable_top_layers: 0"):
        TrainedModel(model, fine_tune={"audio": (torch.nn.Linear(2, 2), 1, [])})
    TrainedModel(model, fine_tune={"text": (_encoder(1), 1, [])})  # its text is a mean of the states: allowed
