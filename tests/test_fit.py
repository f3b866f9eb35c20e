"""The in-memory training loop and batch builders (emomix.train.fit) on tiny hand-made features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from emomix.errors import ConfigError, LabelError, MissingDataError
from emomix.models import create_model
from emomix.models.base import EmotionModel, ModelConfig
from emomix.models.collate import utterance_vector
from emomix.models.inputs import DialogueBatch, ModelOutput
from emomix.models.losses import inverse_frequency_alpha
from emomix.train.fit import (
    fit,
    make_batches,
    make_dialogue_batches,
    predict,
    unweighted_accuracy,
    weighted_accuracy,
)

CLASSES = ("neg", "neu", "pos")


def toy_corpus(count: int = 6, seed: int = 0):
    """Features and a table: audio frames (with speech mask), text tokens (with 2 layers), edges."""
    rng = np.random.default_rng(seed)
    rows, features = [], {}
    for i in range(count):
        utt = f"u{i}"
        frames, tokens = 3 + 2 * i, 2 + i
        features[utt] = {
            "audio": {
                "states": rng.normal(size=(frames, 6)).astype(np.float32),
                "speech_mask": (rng.random(frames) > 0.3).astype(np.uint8),
            },
            "text": {
                "states": rng.normal(size=(tokens, 8)).astype(np.float32),
                "special_tokens": np.array([1] + [0] * (tokens - 2) + [1], dtype=np.uint8),
                "layer_1": rng.normal(size=(tokens, 8)).astype(np.float32),
                "layer_2": rng.normal(size=(tokens, 8)).astype(np.float32),
            },
            "edges": {"token_frame": np.array([[1, 1, tokens - 2], [0, 1, frames - 1]], dtype=np.int64)},
        }
        rows.append(
            {
                "utt_id": utt,
                "label": CLASSES[i % 3] if i != 4 else None,
                "speaker": f"s{i % 2}",
                "dialogue_id": f"d{i // 3}",
                "turn": 2 - i % 3,
            }
        )
    return features, pd.DataFrame(rows)


def test_make_batches_pads_labels_and_keeps_table_order():
    features, table = toy_corpus()
    batches = make_batches(
        features, table, CLASSES, batch_size=4, shuffle=False, frame_rates={"audio": 25.0}, layers={"text": [1, 2]}
    )
    assert [b.utt_ids for b in batches] == [["u0", "u1", "u2", "u3"], ["u4", "u5"]]
    first = batches[0]
    assert first.modalities == ("audio", "text")
    assert first.labels.tolist() == [0, 1, 2, 0]
    assert batches[1].labels.tolist() == [-100, 2]  # u4 has no label
    audio, text = first.inputs["audio"], first.inputs["text"]
    assert audio.states.shape == (4, 9, 6) and audio.mask.sum(dim=1).tolist() == [3, 5, 7, 9]
    assert audio.frame_rate == 25.0 and text.frame_rate is None
    assert torch.equal(audio.states[1, :5], torch.as_tensor(features["u1"]["audio"]["states"]))
    assert text.layer_states.shape == (4, 2, 5, 8)
    assert torch.equal(text.layer_states[2, 1, :4], torch.as_tensor(features["u2"]["text"]["layer_2"]))
    assert text.special_tokens[0].tolist() == [True, True, True, True, True]  # 2 tokens + padding
    assert len(first.edges) == 4 and first.edges[3].tolist() == [[1, 1, 3], [0, 1, 8]]


def test_make_batches_shuffles_by_seed_and_cuts_edges_with_max_length():
    features, table = toy_corpus()
    one = [u for b in make_batches(features, table, CLASSES, batch_size=4, seed=1) for u in b.utt_ids]
    again = [u for b in make_batches(features, table, CLASSES, batch_size=4, seed=1) for u in b.utt_ids]
    other = [u for b in make_batches(features, table, CLASSES, batch_size=4, seed=2) for u in b.utt_ids]
    assert one == again and sorted(one) == sorted(table["utt_id"]) and one != other
    cut = make_batches(features, table, CLASSES, batch_size=6, shuffle=False, max_length={"audio": 4})
    assert cut[0].inputs["audio"].states.shape[1] == 4
    # u5 has 13 frames: its edge to frame 12 is dropped, the others stay
    assert cut[0].edges[5].tolist() == [[1, 1], [0, 1]]
    only_text = make_batches(features, table, CLASSES, modalities=["text"], shuffle=False)
    assert only_text[0].modalities == ("text",) and only_text[0].edges is None


def test_make_batches_errors_name_the_problem():
    features, table = toy_corpus()
    del features["u3"]["audio"]
    with pytest.raises(MissingDataError, match="no audio features.*u3"):
        make_batches(features, table, CLASSES, modalities=["audio", "text"])
    assert make_batches(features, table, CLASSES)[0].modalities == ("text",)  # default: what all have
    del features["u2"]
    with pytest.raises(MissingDataError, match="1 utterance.*no features.*u2"):
        make_batches(features, table, CLASSES)
    features, table = toy_corpus()
    table.loc[0, "label"] = "angry"
    with pytest.raises(LabelError, match="'u0' has label 'angry'.*not a class"):
        make_batches(features, table, CLASSES)
    with pytest.raises(ConfigError, match="unknown modality 'speech'"):
        make_batches(features, toy_corpus()[1], CLASSES, modalities=["speech"])
    with pytest.raises(ConfigError, match="batch_size"):
        make_batches(features, toy_corpus()[1], CLASSES, batch_size=0)


def test_dialogue_batches_order_turns_and_pad_with_ignore_labels():
    features, table = toy_corpus(count=5)  # d0: u0-u2 (turns 2, 1, 0), d1: u3, u4 (turns 2, 1)
    batches = make_dialogue_batches(
        features, table.sample(frac=1.0, random_state=3), CLASSES, batch_size=2, shuffle=False
    )
    assert len(batches) == 1
    batch = batches[0]
    assert batch.utt_ids == [["u2", "u1", "u0"], ["u4", "u3"]]
    assert batch.mask.tolist() == [[True, True, True], [True, True, False]]
    assert batch.labels.tolist() == [[2, 1, 0], [-100, 0, -100]]
    assert batch.inputs["audio"].shape == (2, 3, 6)
    assert np.allclose(batch.inputs["audio"][0, 0].numpy(), features["u2"]["audio"]["states"].mean(axis=0), atol=1e-6)
    wide = make_dialogue_batches(features, table, CLASSES, pooling="mean_std", modalities=["text"])
    assert wide[0].inputs["text"].shape[-1] == 16 and wide[0].modalities == ("text",)


def test_utterance_vector_poolings_and_dialogue_errors():
    arrays = {"states": np.array([[1.0, 2.0], [3.0, 6.0]], dtype=np.float32), "pooled": np.array([7.0, 8.0, 9.0])}
    assert utterance_vector(arrays).tolist() == [2.0, 4.0]
    assert utterance_vector(arrays, "mean_std").tolist() == [2.0, 4.0, 1.0, 2.0]
    assert utterance_vector(arrays, "pooled").tolist() == [7.0, 8.0, 9.0]
    with pytest.raises(MissingDataError, match="x/audio has no 'pooled' field"):
        utterance_vector({"states": arrays["states"]}, "pooled", "x/audio")
    features, table = toy_corpus()
    with pytest.raises(ConfigError, match="pooling must be one of"):
        make_dialogue_batches(features, table, CLASSES, pooling="max")
    table.loc[1, "dialogue_id"] = None
    with pytest.raises(ConfigError, match="dialogue_id for every utterance.*u1"):
        make_dialogue_batches(features, table, CLASSES)


def separable_batches(count: int, seed: int, imbalance: bool = False):
    """Audio/text features whose mean carries the class: an easy problem every model should learn."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=count)
    if imbalance:
        labels[: count // 2] = 0
    features = {}
    for i, label in enumerate(labels):
        centre = np.eye(3)[label].repeat(2) * 2.0
        features[f"u{i}"] = {
            "audio": {"states": (centre + rng.normal(size=(int(rng.integers(3, 9)), 6))).astype(np.float32)},
            "text": {"states": rng.normal(size=(4, 5)).astype(np.float32)},
        }
    table = pd.DataFrame({"utt_id": list(features), "label": [CLASSES[k] for k in labels]})
    return features, table


def test_fit_learns_restores_the_best_epoch_and_stops_early():
    features, table = separable_batches(96, seed=0)
    val_features, val_table = separable_batches(48, seed=1)
    train = make_batches(features, table, CLASSES, batch_size=16, seed=0)
    val = make_batches(val_features, val_table, CLASSES, batch_size=16, shuffle=False)
    torch.manual_seed(0)
    model = create_model("early_fusion", {"hidden_dim": 16}, {"audio": 6, "text": 5}, 3)
    result = fit(model, train, val, epochs=60, lr=1e-2, seed=0, patience=3)
    assert result.stopped_early and len(result.history) == result.best_epoch + 3 < 60
    assert result.best_val_ua == max(h["val_ua"] for h in result.history) >= 0.9
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert {"epoch", "loss", "ce", "val_ua", "val_wa", "seconds"} <= set(result.history[0])
    for key, value in model.state_dict().items():
        assert torch.equal(value, result.best_state[key])
    probs, labels = predict(model, val)
    assert probs.shape == (48, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert unweighted_accuracy(labels, probs.argmax(axis=1)) == pytest.approx(result.best_val_ua)
    assert not model.training


def test_fit_is_deterministic_and_sets_class_weights():
    features, table = separable_batches(60, seed=2, imbalance=True)
    train = make_batches(features, table, CLASSES, batch_size=8, seed=0)
    histories = []
    for _ in range(2):
        torch.manual_seed(3)
        model = create_model("late_fusion", {"hidden_dim": 8}, {"audio": 6, "text": 5}, 3)
        result = fit(model, train, epochs=3, seed=5)
        histories.append([h["loss"] for h in result.history])
    assert histories[0] == histories[1]
    assert result.best_epoch == 3 and result.best_val_ua is None  # no validation: the last epoch
    expected = inverse_frequency_alpha(torch.as_tensor([CLASSES.index(x) for x in table["label"]]), 3)
    assert torch.allclose(model.class_weights, expected) and result.class_weights == pytest.approx(expected.tolist())
    torch.manual_seed(3)
    plain = create_model("late_fusion", {"hidden_dim": 8}, {"audio": 6, "text": 5}, 3)
    assert fit(plain, train, epochs=1, class_weights=None).class_weights is None and plain.class_weights is None
    with pytest.raises(ConfigError, match=r"class_weights has shape \(2,\), expected \(3,\)"):
        fit(plain, train, epochs=1, class_weights=torch.ones(2))
    with pytest.raises(ConfigError, match="epochs must be at least 1"):
        fit(plain, train, epochs=0)
    unlabelled = make_batches(features, table.drop(columns=["label"]), CLASSES, batch_size=8)
    with pytest.raises(ConfigError, match="validation batches hold no labels"):
        fit(plain, train, unlabelled, epochs=1)


class _ToyDialogueModel(EmotionModel):
    """A per-utterance linear classifier over dialogue batches, with a per-utterance aux tensor."""

    name = "toy_dialogue"
    batch_kind = "dialogue"

    def __init__(self):
        super().__init__(ModelConfig(modalities=("audio",)), {"audio": 6}, 3)
        self.linear = nn.Linear(6, 3)

    def forward(self, batch: DialogueBatch) -> ModelOutput:
        logits = self.linear(batch.inputs["audio"])
        return ModelOutput(logits=logits, aux={"gate": logits.softmax(-1), "per_dialogue": logits.mean(dim=(1, 2))})

    def loss(self, output, labels):
        total = nn.functional.cross_entropy(output.logits.reshape(-1, 3), labels.reshape(-1), ignore_index=-100)
        return total, {"ce": float(total.detach())}


def test_predict_flattens_dialogues_with_their_aux():
    features, table = toy_corpus(count=5)
    batches = make_dialogue_batches(features, table, CLASSES, batch_size=2, shuffle=False, modalities=["audio"])
    torch.manual_seed(0)
    model = _ToyDialogueModel()
    fit(model, batches, batches, epochs=2, patience=None)
    probs, labels, aux = predict(model, batches, with_aux=True)
    assert probs.shape == (5, 3) and labels.tolist() == [2, 1, 0, -100, 0]
    assert set(aux) == {"gate"} and np.allclose(aux["gate"], probs, atol=1e-6)  # per-dialogue values are left out


def test_accuracies_ignore_padding():
    labels = np.array([0, 0, 0, 1, -100, 2])
    predictions = np.array([0, 0, 1, 1, 2, 0])
    assert unweighted_accuracy(labels, predictions) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert weighted_accuracy(labels, predictions) == pytest.approx(3 / 5)
