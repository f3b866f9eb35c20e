"""Frames and an utterance vector at once: a modality's ``utterance`` encoder becomes its
``pooled`` field (own store identity, own speaker statistics), the batch carries it beside the
frames, Dual Routing's global expert reads it, and a run trains and predicts through it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from emomix.cache.memory import MemoryStore
from emomix.data.schema import make_table
from emomix.errors import ConfigError
from emomix.features import FeatureSpec, build_features, parse_feature_specs, utterance_vector_of
from emomix.models import create_model
from emomix.models.collate import UtteranceCollator, label_indices

LABELS = ("angry", "sad", "happy")


def rows(speakers: int = 3, per_speaker: int = 12) -> list[dict]:
    return [
        {
            "utt_id": f"s{s}_{i:02d}",
            "speaker": f"s{s}",
            "session": f"s{s}",
            "label": LABELS[i % 3],
            "corpus": "toy",
            "text": f"words {i}",
        }
        for s in range(speakers)
        for i in range(per_speaker)
    ]


def write_files(folder, table_rows, seed: int = 0) -> tuple[str, str]:
    """LLD-like frames (npz) and functional-like vectors (parquet): speaker offsets plus a label cue."""
    rng = np.random.default_rng(seed)
    frames, vectors = {}, {}
    for row in table_rows:
        cue = LABELS.index(row["label"])
        speaker = int(row["speaker"][1:])
        frames[row["utt_id"]] = (rng.normal(size=(int(rng.integers(4, 10)), 6)) + speaker + 0.5 * cue).astype(
            np.float32
        )
        vectors[row["utt_id"]] = (rng.normal(size=9) + 10 * speaker + 3 * cue).astype(np.float32)
    np.savez(folder / "lld.npz", **frames)
    pd.DataFrame({"utt_id": list(vectors), "features": [v.tolist() for v in vectors.values()]}).to_parquet(
        folder / "functionals.parquet"
    )
    return str(folder / "lld.npz"), str(folder / "functionals.parquet")


def test_old_specs_are_unchanged_and_utterance_block_is_validated():
    spec = FeatureSpec.from_dict("audio", {"encoder": "opensmile:eGeMAPSv02"})
    assert spec.utterance is None and spec.speaker_statistics == "auto"
    with pytest.raises(ConfigError, match="utterance.pool must be one of"):
        FeatureSpec.from_dict("text", {"encoder": "minilm", "utterance": {"name": "minilm", "pool": "max"}})
    with pytest.raises(ConfigError, match="utterance needs a 'name'"):
        FeatureSpec.from_dict("text", {"encoder": "minilm", "utterance": {"pool": "sentence"}})
    with pytest.raises(ConfigError, match="speaker_statistics must be one of"):
        FeatureSpec.from_dict("audio", {"encoder": "mfcc", "speaker_statistics": "label"})
    masked = FeatureSpec.from_dict(
        "audio",
        {
            "encoder": {"name": "opensmile:ComParE_2016", "level": "lld"},
            "preprocess": {"vad": "webrtc", "vad_mode": "mask"},
            "utterance": {"name": "opensmile:ComParE_2016", "level": "functionals"},
        },
    )
    assert masked.utterance_preprocess() == {}  # a speech mask marks frames; the vector has none
    assert masked.utterance_encoder_spec() == {"name": "opensmile:ComParE_2016", "level": "functionals"}


def test_utterance_pools():
    states = np.array([[3.0, 0.0], [1.0, 4.0]], dtype=np.float32)
    assert utterance_vector_of({"states": states}, "first").tolist() == [3.0, 0.0]
    assert utterance_vector_of({"states": states}, "mean").tolist() == [2.0, 2.0]
    np.testing.assert_allclose(utterance_vector_of({"states": states}, "sentence"), [2**-0.5, 2**-0.5], rtol=1e-6)
    assert utterance_vector_of({"states": states, "pooled": np.array([7.0, 8.0])}, "auto").tolist() == [7.0, 8.0]
    assert utterance_vector_of({"states": states, "pooled": np.array([[1.0, 2.0], [3.0, 4.0]])}).tolist() == [2.0, 3.0]


def test_frames_and_vector_normalised_each_with_its_own_statistics(tmp_path):
    table = make_table(rows())
    lld, functionals = write_files(tmp_path, rows())
    specs = parse_feature_specs(
        {
            "audio": {
                "encoder": {"name": "file", "path": lld, "frame_rate": 100},
                "utterance": {"name": "file", "path": functionals},
                "speaker_normalisation": True,
            }
        }
    )
    built = build_features(table, specs, MemoryStore(dtype="float32"), progress=False)
    assert set(built.normalisers) == {"audio", "audio_pooled"}
    assert built.statistics == {"audio": "speaker", "audio_pooled": "speaker"}
    assert built.input_dims == {"audio": 6, "audio_pooled": 9}
    for speaker in ("s0", "s2"):  # each speaker's vectors are z-scored with that speaker's own statistics
        ids = [u for u in built.utt_ids if u.startswith(speaker)]
        pooled = np.stack([built.features[u]["audio"]["pooled"] for u in ids])
        np.testing.assert_allclose(pooled.mean(axis=0), 0, atol=1e-4)
    # inference: the fitted normalisers are reused, not refitted on the new utterances
    one = table[table["utt_id"] == "s1_00"]
    again = build_features(one, specs, MemoryStore(dtype="float32"), normalisers=built.normalisers, progress=False)
    np.testing.assert_allclose(
        again.features["s1_00"]["audio"]["pooled"], built.features["s1_00"]["audio"]["pooled"], atol=1e-5
    )


def test_batch_carries_pooled_and_dual_routing_global_expert_reads_it(tmp_path):
    table = make_table(rows())
    lld, functionals = write_files(tmp_path, rows())
    specs = parse_feature_specs(
        {
            "audio": {
                "encoder": {"name": "file", "path": lld, "frame_rate": 100},
                "utterance": {"name": "file", "path": functionals},
            }
        }
    )
    built = build_features(table, specs, MemoryStore(), progress=False)
    collate = UtteranceCollator(
        built.features,
        built.utt_ids,
        label_indices(table, list(LABELS)),
        ["audio"],
        built.frame_rates,
        built.layers,
        {"audio": None},
    )
    batch = collate(range(5))
    assert batch.inputs["audio"].pooled.shape == (5, 9) and batch.inputs["audio"].states.shape[-1] == 6
    torch.manual_seed(0)
    model = create_model("dual_routing_audio", {"audio_global": "pooled"}, built.input_dims, 3).eval()
    base = model(batch).logits
    changed = batch.inputs["audio"].pooled.clone()
    changed[0] = torch.linspace(-3, 3, changed.shape[1])  # LayerNorm ignores a constant shift
    batch.inputs["audio"].pooled = changed
    after = model(batch).logits
    assert not torch.allclose(base[0], after[0]) and torch.allclose(base[1:], after[1:])
    frames_only = create_model("dual_routing_audio", {}, built.input_dims, 3).eval()
    assert torch.allclose(frames_only(batch).logits, frames_only(collate(range(5))).logits)  # ignores pooled


@pytest.mark.slow  # ~25 s on two shared cores (Lightning, report); the fast tests cover each part
def test_run_trains_with_file_features_and_predicts(tmp_path):
    """A recipe over a manifest corpus with bring-your-own frames + vectors: one fold, two epochs,
    standardised, speaker-normalised; the run records its statistics and the predictor rebuilds both."""
    from emomix.infer.predictor import Predictor
    from emomix.train.recipe import load_recipe
    from emomix.train.run import train_recipe

    table_rows = rows()
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pd.DataFrame([{k: r[k] for k in ("utt_id", "speaker", "session", "label", "text")} for r in table_rows]).to_csv(
        corpus / "manifest.csv", index=False
    )
    lld, functionals = write_files(tmp_path, table_rows)
    recipe = {
        "name": "scales_toy",
        "corpus": {"reader": "manifest", "root": str(corpus / "manifest.csv")},
        "protocol": {"name": "loso-speaker", "params": {"validation": "none"}},
        "features": {
            "store": str(tmp_path / "store"),
            "audio": {
                "encoder": {"name": "file", "path": lld, "frame_rate": 100},
                "utterance": {"name": "file", "path": functionals},
                "speaker_normalisation": True,
            },
        },
        "model": {"name": "dual_routing_audio", "config": {"audio_global": "pooled"}},
        "training": {"epochs": 2, "batch_size": 8, "patience": None, "standardise": True, "threads": 1},
        "seeds": [0],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = train_recipe(load_recipe(path), out=tmp_path / "run", folds=["s0"], progress=False, report=False, log=None)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["speaker_statistics"] == {"audio": "speaker", "audio_pooled": "speaker"}
    assert run["speaker_confounding"]["high"] is False and run["input_dims"]["audio_pooled"] == 9
    assert (tmp_path / "run" / "normaliser-audio_pooled.json").is_file()
    frame = pd.read_parquet(tmp_path / "run" / "folds" / "s0" / "seed-0" / "predictions.parquet")
    assert len(frame) == 12 and result.out == tmp_path / "run"
    from emomix.evaluate.report import write_report

    write_report(tmp_path / "run")
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "Speaker–label confounding (training part of each fold, worst fold)" in report and "— low" in report
    predictor = Predictor.from_run(tmp_path / "run")
    assert set(predictor.normalisers) == {"audio", "audio_pooled"}


@pytest.mark.parametrize(
    ("model", "config"),
    [
        ("mpaf_net_audio", {"audio_source": "pooled"}),
        ("complementary_spl", {"spl_audio_source": "pooled", "graph": "none"}),
        ("mister_e_audio", {"speech_source": "pooled"}),
    ],
)
def test_other_designs_read_the_utterance_vector_when_asked(model, config):
    dims = {"audio": 6, "audio_pooled": 9, "text": 8}
    with pytest.raises(ConfigError, match="utterance vector"):
        create_model(model, config, {"audio": 6, "text": 8}, 3)
    net = create_model(model, config, dims, 3)
    assert net.config.to_dict()[next(iter(config))] == "pooled"
    default = create_model(model, {k: v for k, v in config.items() if k == "graph"}, dims, 3)
    assert not getattr(default, "dialogue_pooling", None)  # off by default: the papers' inputs


def test_mister_e_speech_expert_gets_pooled_dialogue_vectors(tmp_path):
    from emomix.train.data import EmotionDataModule

    table = make_table(rows())
    lld, functionals = write_files(tmp_path, rows())
    specs = parse_feature_specs(
        {
            "audio": {
                "encoder": {"name": "file", "path": lld, "frame_rate": 100},
                "utterance": {"name": "file", "path": functionals},
            }
        }
    )
    built = build_features(table, specs, MemoryStore(dtype="float32"), progress=False)
    net = create_model("mister_e_audio", {"speech_source": "pooled"}, built.input_dims, 3)
    ids = list(table["utt_id"])
    module = EmotionDataModule(
        built,
        table,
        list(LABELS),
        {"train": ids[:24], "validation": [], "test": ids[24:]},
        batch_kind="dialogue",
        modalities=["audio"],
        dialogue_pooling=net.dialogue_pooling,
    )
    vectors = module._dialogue_vectors()
    np.testing.assert_allclose(vectors["s0_01"]["audio"], built.features["s0_01"]["audio"]["pooled"])


def test_partwise_map_normalises_and_projects_each_joined_part_on_its_own():
    from emomix.models.dual_routing import PartwiseVectorMap

    torch.manual_seed(0)
    mapping = PartwiseVectorMap((40, 4), 44, 8)
    vector = torch.randn(6, 44)
    out = mapping(vector)
    pieces = vector.split([40, 4], dim=-1)
    expected = sum(m(piece) for m, piece in zip(mapping.maps, pieces, strict=True))
    assert out.shape == (6, 8) and torch.allclose(out, expected)
    # the small part is normalised on its own: scaling it leaves the output unchanged
    scaled = torch.cat([pieces[0], 100.0 * pieces[1]], dim=-1)
    assert torch.allclose(mapping(scaled), out, atol=1e-4)
    # and both parts move the output (the 4-wide part is not drowned by the 40-wide one)
    small = torch.cat([pieces[0], pieces[1].flip(0)], dim=-1)
    assert (mapping(small) - out).abs().mean() > 0.1 * out.abs().mean()
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mapping.parameters())


def test_audio_global_parts_are_checked_against_the_vector():
    dims = {"audio": 6, "audio_pooled": 9}
    config = {"audio_global": "pooled", "audio_global_parts": [5, 4]}
    model = create_model("dual_routing_audio", config, dims, 3)
    assert type(model.encoders["audio"].pooled_map).__name__ == "PartwiseVectorMap"
    with pytest.raises(
        ConfigError, match=r"audio_global_parts \[5, 3\] add up to 8, but the audio utterance vector has 9"
    ):
        create_model("dual_routing_audio", {**config, "audio_global_parts": [5, 3]}, dims, 3)
    with pytest.raises(ConfigError, match="needs audio_global='pooled'"):
        create_model("dual_routing_audio", {"audio_global_parts": [5, 4]}, dims, 3)
    with pytest.raises(ConfigError, match="list of positive part widths"):
        create_model("dual_routing_audio", {**config, "audio_global_parts": [9, 0]}, dims, 3)
    # without parts: the one LayerNorm → Linear of before (saved models load unchanged)
    assert (
        type(
            create_model("dual_routing_audio", {"audio_global": "pooled"}, dims, 3).encoders["audio"].pooled_map
        ).__name__
        == "Sequential"
    )
