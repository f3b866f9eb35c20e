"""Bring-your-own features: vectors or frame sequences keyed by utt_id from npz, parquet or HDF5
go through the store like extracted features, and a missing utt_id is a clear error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from emomix.cache.memory import MemoryStore
from emomix.cache.store import FeatureStore
from emomix.data.schema import make_table
from emomix.encoders.registry import create_encoder
from emomix.errors import ConfigError, MissingDataError
from emomix.features import build_features, parse_feature_specs
from emomix.models import create_model
from emomix.models.collate import UtteranceCollator, label_indices


def toy_table(n: int = 12) -> pd.DataFrame:
    return make_table(
        [
            {
                "utt_id": f"u{i:02d}",
                "speaker": f"s{i % 3}",
                "session": f"s{i % 3}",
                "label": ["angry", "sad"][i % 2],
                "corpus": "toy",
                "audio_path": None,
                "text": None,
            }
            for i in range(n)
        ]
    )


def frames_of(table: pd.DataFrame, dim: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {u: rng.normal(size=(int(rng.integers(3, 12)), dim)).astype(np.float32) for u in table["utt_id"]}


def test_npz_frames_and_parquet_vectors_go_through_the_store(tmp_path):
    table = toy_table()
    frames = frames_of(table)
    np.savez(tmp_path / "frames.npz", **frames)
    vectors = {u: np.arange(5, dtype=np.float32) + i for i, u in enumerate(table["utt_id"])}
    pd.DataFrame({"utt_id": list(vectors), "features": [v.tolist() for v in vectors.values()]}).to_parquet(
        tmp_path / "vectors.parquet"
    )
    specs = parse_feature_specs(
        {
            "audio": {
                "encoder": {"name": "file", "path": str(tmp_path / "frames.npz"), "frame_rate": 100},
                "utterance": f"features:{tmp_path / 'vectors.parquet'}",
            }
        }
    )
    with FeatureStore(tmp_path / "store") as store:
        built = build_features(table, specs, store, progress=False)
        again = build_features(table, specs, store, progress=False)
    assert built.input_dims == {"audio": 6, "audio_pooled": 5} and built.frame_rates == {"audio": 100.0}
    assert built.summaries["audio"]["computed"] == 12 and again.summaries["audio"]["cached"] == 12
    assert again.summaries["audio_pooled"]["computed"] == 0
    u = "u03"
    np.testing.assert_allclose(again.features[u]["audio"]["states"], frames[u], atol=1e-2)  # float16 store
    np.testing.assert_allclose(again.features[u]["audio"]["pooled"], vectors[u], atol=1e-2)


def test_identity_is_the_file_content(tmp_path):
    table = toy_table()
    np.savez(tmp_path / "a.npz", **frames_of(table))
    np.savez(tmp_path / "b.npz", **frames_of(table))  # same content, other name
    np.savez(tmp_path / "c.npz", **frames_of(table, seed=1))
    ids = {
        name: create_encoder({"name": "file", "path": str(tmp_path / f"{name}.npz"), "frame_rate": 50}).identity()
        for name in "abc"
    }
    assert ids["a"] == ids["b"] != ids["c"]


def test_missing_utt_id_names_it_and_counts(tmp_path):
    table = toy_table()
    frames = frames_of(table)
    del frames["u04"], frames["u07"]
    np.savez(tmp_path / "frames.npz", **frames)
    specs = parse_feature_specs(
        {"audio": {"encoder": {"name": "file", "path": str(tmp_path / "frames.npz"), "frame_rate": 100}}}
    )
    with pytest.raises(MissingDataError, match=r"no array for 2 of 12 utterance\(s\), e\.g\. 'u04', 'u07'"):
        build_features(table, specs, MemoryStore(), progress=False)


def test_bad_specs_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        create_encoder("features:nowhere.npz")
    (tmp_path / "x.csv").write_text("utt_id\n")
    with pytest.raises(ConfigError, match="suffix"):
        create_encoder({"name": "file", "path": str(tmp_path / "x.csv")})
    table = toy_table()
    np.savez(tmp_path / "f.npz", **frames_of(table))
    with pytest.raises(ConfigError, match="frame_rate must be"):
        create_encoder({"name": "file", "path": str(tmp_path / "f.npz"), "frame_rate": "fast"})
    specs = parse_feature_specs({"audio": {"encoder": f"features:{tmp_path / 'f.npz'}"}})  # sequences read as vectors
    with pytest.raises(ConfigError, match="one vector per utterance"):
        build_features(table, specs, MemoryStore(), progress=False)


def test_parquet_numeric_columns_form_the_vector(tmp_path):
    table = toy_table()
    frame = pd.DataFrame({"utt_id": table["utt_id"], "f0": np.arange(12.0), "f1": np.ones(12), "note": "x"})
    frame.to_parquet(tmp_path / "v.parquet")
    specs = parse_feature_specs({"text": {"encoder": f"features:{tmp_path / 'v.parquet'}"}})
    built = build_features(table, specs, MemoryStore(), progress=False)
    assert built.input_dims == {"text": 2, "text_pooled": 2} and built.frame_rates == {"text": None}
    np.testing.assert_allclose(built.features["u05"]["text"]["pooled"], [5.0, 1.0])


def test_hdf5_when_h5py_is_installed(tmp_path):
    h5py = pytest.importorskip("h5py")
    table = toy_table()
    frames = frames_of(table)
    with h5py.File(tmp_path / "f.h5", "w") as handle:
        group = handle.create_group("acoustic")
        for u, value in frames.items():
            group.create_dataset(u, data=value)
    specs = parse_feature_specs(
        {"audio": {"encoder": {"name": "file", "path": str(tmp_path / "f.h5"), "frame_rate": 100, "group": "acoustic"}}}
    )
    built = build_features(table, specs, MemoryStore(dtype="float32"), progress=False)
    np.testing.assert_array_equal(built.features["u01"]["audio"]["states"], frames["u01"])


@pytest.mark.parametrize("model", ["dual_routing_audio", "early_fusion_audio", "mpaf_net_audio"])
def test_file_features_feed_a_model(tmp_path, model):
    table = toy_table()
    np.savez(tmp_path / "frames.npz", **frames_of(table, dim=8))
    specs = parse_feature_specs(
        {
            "audio": {
                "encoder": {"name": "file", "path": str(tmp_path / "frames.npz"), "frame_rate": 100},
                "speaker_normalisation": True,
            }
        }
    )
    built = build_features(table, specs, MemoryStore(), progress=False)
    classes = ["angry", "sad"]
    collate = UtteranceCollator(
        built.features,
        built.utt_ids,
        label_indices(table, classes),
        ["audio"],
        built.frame_rates,
        built.layers,
        {"audio": None},
    )
    net = create_model(model, {}, built.input_dims, 2)
    output = net(collate(range(6)))
    assert output.logits.shape == (6, 2) and bool(output.logits.isfinite().all())
