"""Dialogue context inside the text encoder's input (``features.text.context``): each transcript
followed by its preceding turns, keyed in the store as inputs of their own, applied the same way
by training, ``emomix extract`` and inference."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emomix.cache.distributed import EncoderRun
from emomix.cache.extract import context_separator, with_text_context
from emomix.cache.memory import MemoryStore
from emomix.data.dialogue import UNKNOWN_SPEAKER, DialogueContext, with_dialogue_context
from emomix.data.schema import make_table
from emomix.errors import ConfigError
from emomix.features import FeatureSpec, build_features
from synthetic_features import fold_test_items, with_context_card

SEP = " [SEP] "


def _table(rows):
    return make_table([{"corpus": "t", **row} for row in rows])


@pytest.fixture()
def dialogue():
    # rows deliberately out of turn order, two dialogues interleaved
    return _table(
        [
            {"utt_id": "a2", "speaker": "Ross", "dialogue_id": "A", "turn": 2, "text": "Or the bank."},
            {"utt_id": "b0", "speaker": "Joey", "dialogue_id": "B", "turn": 0, "text": "How you doin?"},
            {"utt_id": "a0", "speaker": "Phoebe", "dialogue_id": "A", "turn": 0, "text": " He lost it. "},
            {"utt_id": "a1", "speaker": "Monica", "dialogue_id": "A", "turn": 1, "text": "What?"},
            {"utt_id": "a3", "speaker": "Ross", "dialogue_id": "A", "turn": 3, "text": "   "},
            {"utt_id": "a4", "speaker": "Monica", "dialogue_id": "A", "turn": 4, "text": "No."},
            {"utt_id": "solo", "speaker": UNKNOWN_SPEAKER, "text": "Alone."},
        ]
    )


def test_each_turn_is_followed_by_its_predecessors_most_recent_first(dialogue):
    out = with_dialogue_context(dialogue, DialogueContext(turns=2, speakers=True), SEP)
    text = dict(zip(out["utt_id"], out["text"]))
    assert text["a0"] == "Phoebe: He lost it."
    assert text["a1"] == "Monica: What? [SEP] Phoebe: He lost it."
    assert text["a2"] == "Ross: Or the bank. [SEP] Monica: What? [SEP] Phoebe: He lost it."
    # a blank turn keeps its (blank) text, so empty-text handling still applies, and is no one's context
    assert text["a3"] == "   "
    assert text["a4"] == "Monica: No. [SEP] Ross: Or the bank. [SEP] Monica: What?"
    assert text["b0"] == "Joey: How you doin?"  # the other dialogue does not leak in
    assert text["solo"] == "Alone."  # no dialogue: its own text; an unknown speaker is never named
    # only the text changed, and the input table is untouched
    assert list(out["utt_id"]) == list(dialogue["utt_id"])
    assert out.drop(columns="text").equals(dialogue.drop(columns="text"))
    assert dialogue.loc[dialogue["utt_id"] == "a1", "text"].item() == "What?"


def test_without_speakers_and_with_one_turn(dialogue):
    out = with_dialogue_context(dialogue, DialogueContext(turns=1, speakers=False), SEP)
    text = dict(zip(out["utt_id"], out["text"]))
    assert text["a0"] == "He lost it."
    assert text["a2"] == "Or the bank. [SEP] What?"
    assert text["a4"] == "No. [SEP] Or the bank."


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"turns": 0}, "at least 1"),
        ({"turns": 2.5}, "whole number"),
        ({"turns": True}, "whole number"),
        ({"turns": 2, "speaker": True}, "unknown key"),
        ({"turns": 2, "speakers": "yes"}, "true or false"),
        ("two", "must be a mapping"),
    ],
)
def test_a_bad_context_block_is_named(block, message):
    with pytest.raises(ConfigError, match=message) as caught:
        FeatureSpec.from_dict("text", {"encoder": "minilm", "context": block})
    assert "features.text.context" in str(caught.value)


def test_context_belongs_to_text_only():
    with pytest.raises(ConfigError, match="set it under features.text"):
        FeatureSpec.from_dict("audio", {"encoder": "mfcc", "context": {"turns": 2}})
    spec = FeatureSpec.from_dict(
        "text", {"encoder": "minilm", "context": {"turns": 3}, "utterance": {"name": "minilm", "pool": "sentence"}}
    )
    assert spec.dialogue_context() == DialogueContext(turns=3, speakers=True)
    # emomix extract applies it to the token encoder; the utterance vector reads the plain transcript
    runs = spec.extractions(object())
    assert [run["context"] for run in runs] == [{"turns": 3}, None]
    assert [EncoderRun(**run).context for run in runs] == [{"turns": 3}, None]
    assert FeatureSpec.from_dict("text", spec.to_dict()).dialogue_context() == spec.dialogue_context()  # card


def test_the_separator_is_the_tokenizers_own():
    class Tok:
        sep_token = "</s>"

    assert context_separator(type("E", (), {"tokenizer": Tok()})()) == " </s> "
    assert context_separator(object()) == " | "
    with pytest.raises(ConfigError, match="separator"):
        with_dialogue_context(_table([{"utt_id": "x", "speaker": "s", "text": "hi"}]), DialogueContext(), "  ")


@pytest.fixture(scope="module")
def minilm():
    from emomix.encoders.registry import create_encoder

    return create_encoder("minilm")


def test_build_features_encodes_the_context_and_the_store_keys_it_apart(minilm):
    table = _table(
        [
            {"utt_id": f"u{t}", "speaker": s, "dialogue_id": "d", "turn": t, "text": x}
            for t, (s, x) in enumerate([("Ann", "I got the job!"), ("Bob", "Oh."), ("Ann", "You could sound happier.")])
        ]
    )
    store = MemoryStore()
    plain = build_features(
        table,
        {"text": FeatureSpec.from_dict("text", {"encoder": "minilm"})},
        store,
        encoders={"text": minilm},
        progress=False,
    )
    spec = FeatureSpec.from_dict("text", {"encoder": "minilm", "context": {"turns": 2, "speakers": False}})
    first = build_features(table, {"text": spec}, store, encoders={"text": minilm}, progress=False)
    assert first.summaries["text"]["computed"] == 2  # turn 0 has no context: its plain entry is reused
    states = {u: first.features[u]["text"]["states"] for u in first.utt_ids}
    assert np.array_equal(states["u0"], plain.features["u0"]["text"]["states"])
    for later in ("u1", "u2"):
        assert states[later].shape[0] > plain.features[later]["text"]["states"].shape[0]  # more tokens
    again = build_features(table, {"text": spec}, store, encoders={"text": minilm}, progress=False)
    assert again.summaries["text"]["cached"] == 3 and again.summaries["text"]["computed"] == 0
    expected = with_text_context(table, spec.dialogue_context(), minilm)
    assert expected.loc[2, "text"] == "You could sound happier. [SEP] Oh. [SEP] I got the job!"
    # the utterance vector is the utterance's own: equal with and without context
    sentence = {"name": "minilm", "pool": "sentence"}
    with_vector = {
        name: build_features(
            table,
            {"text": FeatureSpec.from_dict("text", {"encoder": "minilm", "utterance": sentence, **extra})},
            store,
            encoders={"text": minilm, "text_pooled": minilm},
            progress=False,
        )
        for name, extra in (("plain", {}), ("context", {"context": {"turns": 2}}))
    }
    for u in ("u1", "u2"):
        pooled = [with_vector[name].features[u]["text"]["pooled"] for name in ("plain", "context")]
        assert np.array_equal(*pooled)
        assert not np.array_equal(
            with_vector["plain"].features[u]["text"]["states"], with_vector["context"].features[u]["text"]["states"]
        )


def test_pool_turn_leaves_only_the_turns_own_tokens_as_content(minilm):
    """``context: {pool: turn}``: the stored states are the same context input's, but every token
    after the turn's own (its speaker's name included) is marked special, so a model pooling the
    content tokens reads the turn alone; a turn without predecessors keeps every content token."""
    table = _table(
        [
            {"utt_id": f"u{t}", "speaker": s, "dialogue_id": "d", "turn": t, "text": x}
            for t, (s, x) in enumerate([("Ann", "I got the job!"), ("Bob", "Oh."), ("Ann", "You could sound happier.")])
        ]
    )
    store = MemoryStore()

    def built(pool):
        spec = FeatureSpec.from_dict("text", {"encoder": "minilm", "context": {"turns": 2, "pool": pool}})
        return build_features(table, {"text": spec}, store, encoders={"text": minilm}, progress=False).features

    whole, turn = built("all"), built("turn")
    for u, own in (("u0", "Ann: I got the job!"), ("u1", "Bob: Oh."), ("u2", "Ann: You could sound happier.")):
        assert np.array_equal(whole[u]["text"]["states"], turn[u]["text"]["states"])  # one store entry
        content = ~turn[u]["text"]["special_tokens"].astype(bool)
        assert content.sum() == len(minilm.tokenizer(own, add_special_tokens=False)["input_ids"])
        assert np.flatnonzero(content).tolist() == list(range(1, content.sum() + 1))  # right after [CLS]
    assert (~whole["u2"]["text"]["special_tokens"].astype(bool)).sum() > (
        ~turn["u2"]["text"]["special_tokens"].astype(bool)
    ).sum()
    with pytest.raises(ConfigError, match="context.pool must be one of all, turn"):
        FeatureSpec.from_dict("text", {"encoder": "minilm", "context": {"turns": 2, "pool": "own"}})


@pytest.fixture(scope="module")
def context_run(trained_synthetic_run, tmp_path_factory):
    """The trained synthetic run with its text features declared with dialogue context (the
    weights are the run's own: what is tested is which text reaches the encoder)."""
    return with_context_card(trained_synthetic_run, tmp_path_factory.mktemp("context") / "run")


def test_inference_gives_context_to_a_dialogues_turns_only(context_run, synthetic_features):
    from emomix.infer.predictor import Predictor

    predictor = Predictor.from_run(context_run, asr=False)
    items, _ = fold_test_items(context_run, synthetic_features, "ses01", 3)
    alone = [predictor.predict(**item) for item in items]
    many = predictor.predict_many(items)
    conversation = predictor.predict_dialogue(items)

    def p(result):
        return np.array([result["probabilities"][c] for c in predictor.classes])

    for single, batched in zip(alone, many):  # a batch of separate utterances is not a dialogue
        assert np.allclose(p(single), p(batched), atol=1e-6)
    assert np.allclose(p(conversation[0]), p(alone[0]), atol=1e-6)  # the first turn has no predecessor
    assert not np.allclose(p(conversation[2]), p(alone[2]), atol=1e-6)  # later turns read their context
    assert predictor.info()["features"]["text"]["context"] == {"turns": 2, "speakers": True}


def test_emomix_extract_with_a_context_block_stores_what_training_looks_up(tmp_path, capsys):
    """`emomix extract` given a text block with context fills the entries build_features reads:
    the token states of the context inputs and the utterance vectors of the plain transcripts."""
    import yaml

    from emomix.cache.store import FeatureStore
    from emomix.data.readers import read_corpus
    from emomix.features import parse_feature_specs
    from test_extract import run_cli

    turns = ["I got the job!", "Oh.", "You could sound happier.", "Sorry. Congratulations!"]
    lines = ["utt_id,speaker,text,dialogue_id,turn,label"]
    lines += [f"u{t},{'AB'[t % 2]},{text},d0,{t},neutral" for t, text in enumerate(turns)]
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    block = {
        "encoder": "minilm",
        "trainable_top_layers": 2,
        "context": {"turns": 2, "speakers": True},
        "utterance": {"name": "minilm", "pool": "sentence"},
    }
    (tmp_path / "text.yaml").write_text(yaml.safe_dump(block))
    store = tmp_path / "store"
    argv = ["extract", "manifest", str(tmp_path / "manifest.csv"), "--encoder", str(tmp_path / "text.yaml")]
    code, out, err = run_cli([*argv, "--store", str(store), "--no-progress", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["computed"], summary["utterance"]["computed"]) == (4, 4)
    corpus = read_corpus("manifest", tmp_path / "manifest.csv")
    with FeatureStore(store) as opened:
        features = build_features(corpus.table, parse_feature_specs({"text": block}), opened, progress=False)
    for role in ("text", "text_pooled"):
        assert (features.summaries[role]["cached"], features.summaries[role]["computed"]) == (4, 0), role


# -- emomix predict on a manifest of conversations ------------------------------------------------


def _predict_cli(run, manifest, out):
    import typer
    from typer.testing import CliRunner

    from emomix.cli.predict import register

    app = typer.Typer()
    register(app)

    @app.callback()
    def main() -> None:  # a group, so the command is called by name as in `emomix predict`
        pass

    result = CliRunner().invoke(app, ["predict", str(run), str(manifest), "--out", str(out), "-q"])
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return result, rows


def _manifest(path, rows):
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["audio_path", "text", "speaker", "dialogue_id", "turn"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _probabilities(result, classes):
    return np.array([result["probabilities"][c] for c in classes])


def test_emomix_predict_gives_a_manifests_dialogues_their_context(context_run, synthetic_features, tmp_path):
    """A manifest's dialogue_id/turn columns reach a context model as conversations: rows in any
    order are predicted in turn order, each as predict_dialogue would, and come back in the
    manifest's order with their dialogue and turn; a row without a dialogue is predicted alone,
    and a dialogue with a missing recording fails as a whole while the others go on."""
    from emomix.infer.predictor import Predictor

    predictor = Predictor.from_run(context_run, asr=False)
    items, _ = fold_test_items(context_run, synthetic_features, "ses01", 5)
    conversation = predictor.predict_dialogue(items[:3])
    alone = predictor.predict(**items[3])
    rows = [
        {**items[2], "dialogue_id": "d1", "turn": 2},
        {**items[0], "dialogue_id": "d1", "turn": 0},
        {**items[3]},  # no dialogue: predicted on its own
        {**items[1], "dialogue_id": "d1", "turn": 1},
        {**items[4], "dialogue_id": "d2", "turn": 0},
        {**items[0], "audio": str(tmp_path / "gone.wav"), "dialogue_id": "d2", "turn": 1},
    ]
    manifest = _manifest(
        tmp_path / "talk.csv", [{"audio_path": r.pop("audio"), "dialogue_id": "", "turn": "", **r} for r in rows]
    )
    result, out = _predict_cli(context_run, manifest, tmp_path / "talk.jsonl")
    assert result.exit_code == 0, result.output
    assert "4 predicted, 2 failed" in result.output
    assert [(r.get("dialogue_id"), r.get("turn")) for r in out] == [
        ("d1", 2),
        ("d1", 0),
        (None, None),
        ("d1", 1),
        ("d2", 0),
        ("d2", 1),
    ]
    for row, expected in zip([out[1], out[3], out[0]], conversation):  # turns 0, 1, 2
        assert np.allclose(
            _probabilities(row, predictor.classes), _probabilities(expected, predictor.classes), atol=1e-5
        )
    assert np.allclose(_probabilities(out[2], predictor.classes), _probabilities(alone, predictor.classes), atol=1e-5)
    assert all("gone.wav" in r["error"] and "dialogue 'd2'" in r["error"] for r in out[4:])


def test_emomix_predict_says_when_the_conversation_is_not_used(
    trained_synthetic_run, context_run, synthetic_features, tmp_path
):
    from emomix.infer.predictor import Predictor

    items, _ = fold_test_items(context_run, synthetic_features, "ses01", 2)
    rows = [{"audio_path": item["audio"], "text": item["text"], "speaker": item["speaker"]} for item in items]
    plain = _manifest(tmp_path / "plain.csv", [{**r, "dialogue_id": "", "turn": ""} for r in rows])
    result, _ = _predict_cli(context_run, plain, tmp_path / "plain.jsonl")
    assert result.exit_code == 0 and "reads the conversation, but the inputs name no dialogue" in result.output
    grouped = _manifest(tmp_path / "grouped.csv", [{**r, "dialogue_id": "d", "turn": t} for t, r in enumerate(rows)])
    result, out = _predict_cli(trained_synthetic_run, grouped, tmp_path / "grouped.jsonl")
    assert result.exit_code == 0 and "predicts each utterance on its own" in result.output
    single = Predictor.from_run(trained_synthetic_run, asr=False).predict(**items[1])
    assert out[1]["probabilities"] == pytest.approx(single["probabilities"], abs=1e-5)
    assert Predictor.from_run(trained_synthetic_run, asr=False).reads_dialogue is False


@pytest.mark.parametrize(
    "turns, message",
    [
        (["0", ""], "1 of its 2 rows give a turn"),
        (["1", "1"], "turn 1 appears more than once"),
        (["0", "one"], "turn must be a whole number"),
    ],
)
def test_an_ambiguous_turn_order_is_an_error(context_run, synthetic_features, tmp_path, turns, message):
    items, _ = fold_test_items(context_run, synthetic_features, "ses01", 2)
    rows = [
        {"audio_path": item["audio"], "text": item["text"], "speaker": item["speaker"], "dialogue_id": "d", "turn": t}
        for item, t in zip(items, turns)
    ]
    result, out = _predict_cli(context_run, _manifest(tmp_path / "bad.csv", rows), tmp_path / "bad.jsonl")
    assert isinstance(result.exception, ConfigError) and message in str(result.exception)
    assert out == []  # nothing written


def test_one_turn_order_for_conversation_batches_and_context():
    """dialogue_order is the one rule: by turn, a missing turn last, ties by utt_id, rows without a
    dialogue left out; MiSTER-E's batches (dialogues_of) and the context builder both follow it."""
    from emomix.data.dialogue import dialogue_order
    from emomix.train.data import dialogues_of

    table = _table(
        [
            {"utt_id": "b2", "speaker": "B", "text": "second", "dialogue_id": "d2", "turn": 1},
            {"utt_id": "a1", "speaker": "A", "text": "later", "dialogue_id": "d1", "turn": 5},
            {"utt_id": "a0", "speaker": "A", "text": "first", "dialogue_id": "d1", "turn": 0},
            {"utt_id": "b1", "speaker": "B", "text": "tie, later id", "dialogue_id": "d2", "turn": 0},
            {"utt_id": "b0", "speaker": "B", "text": "tie, earlier id", "dialogue_id": "d2", "turn": 0},
            {"utt_id": "x", "speaker": "C", "text": "alone"},
        ]
    )
    assert dialogue_order(table) == [[2, 1], [4, 3, 0]]
    ids = list(table["utt_id"])
    assert dialogues_of(table[table["dialogue_id"].notna()], ids) == [["a0", "a1"], ["b0", "b1", "b2"]]
    texts = dict(zip(ids, with_dialogue_context(table, DialogueContext(turns=1, speakers=False), SEP)["text"]))
    assert texts["b1"] == "tie, later id" + SEP + "tie, earlier id"  # the tie follows utt_id, as the batches do
    assert texts["b0"] == "tie, earlier id" and texts["x"] == "alone"
