"""The feature store: content keys, unpadded shards, memory-mapped reads, checksums, atomic writes,
worker index parts and their merge."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open

from emomix.cache import keys as keys_module
from emomix.cache import store as store_module
from emomix.cache.extract import PreprocessConfig, utterance_keys
from emomix.cache.keys import audio_input, encoder_part, feature_key, normalise_text, text_input
from emomix.cache.store import FeatureStore, StoreError, merge_indexes
from emomix.data.schema import make_table
from emomix.encoders.base import Encoder, EncoderOutput
from emomix.errors import ConfigError, MissingDataError


class ScaledEncoder(Encoder):
    """Minimal encoder whose identity depends on ``scale`` (only the key logic is exercised)."""

    frame_rate = 100.0
    output_size = 1
    num_layers = 2

    def __init__(self, scale: float = 1.0, modality: str = "audio"):
        super().__init__()
        self.scale = scale
        self.modality = modality

    def config(self):
        return {"name": "scaled", "scale": self.scale}

    def forward(self, inputs, output_hidden_states=False):
        states = torch.ones(len(inputs), 1, 1) * self.scale
        return EncoderOutput(states=states, mask=torch.ones(len(inputs), 1, dtype=torch.bool))


def write_wav(path, seconds=0.2, freq=220.0, rate=16000, amplitude=0.3):
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)
    return str(path)


def audio_table(rows):
    return make_table([{"utt_id": f"u{i}", "corpus": "t", "speaker": "s", **row} for i, row in enumerate(rows)])


# ---------------------------------------------------------------------------- keys


def test_audio_key_changes_with_bytes_span_encoder_and_preprocessing(tmp_path):
    a = write_wav(tmp_path / "a.wav", freq=220.0)
    b = write_wav(tmp_path / "b.wav", freq=330.0)
    same_as_a = tmp_path / "moved" / "copy.wav"
    same_as_a.parent.mkdir()
    same_as_a.write_bytes(Path(a).read_bytes())
    table = audio_table(
        [
            {"audio_path": a},
            {"audio_path": b},
            {"audio_path": str(same_as_a)},
            {"audio_path": a, "start": 0.0, "end": 0.1},
            {"audio_path": a, "start": 0.0, "end": 0.15},
            {"audio_path": a, "start": 0.05, "end": 0.15},
            {"audio_path": a, "start": 0.05, "end": 0.15000000000000002},
        ]
    )
    with FeatureStore(tmp_path / "store") as store:
        base, failures = utterance_keys(table, ScaledEncoder(1.0), store)
        assert failures == []
        assert base["u0"] != base["u1"], "different audio bytes must give different keys"
        assert base["u0"] == base["u2"], "same bytes under another path must hit"
        assert len({base["u0"], base["u3"], base["u4"], base["u5"]}) == 4, "every span change must miss"
        assert base["u5"] == base["u6"], "float noise below a microsecond must not change the span"

        again, _ = utterance_keys(table, ScaledEncoder(1.0), store)
        assert again == base, "nothing changed -> same keys"

        variants = {
            "encoder config": utterance_keys(table, ScaledEncoder(2.0), store)[0],
            "stored layers": utterance_keys(table, ScaledEncoder(1.0), store, layers=[1])[0],
            "target rate": utterance_keys(table, ScaledEncoder(1.0), store, PreprocessConfig(target_rate=8000))[0],
            "loudness": utterance_keys(table, ScaledEncoder(1.0), store, PreprocessConfig(normalise_loudness=True))[0],
            "vad": utterance_keys(table, ScaledEncoder(1.0), store, PreprocessConfig(vad="webrtc"))[0],
            "vad option": utterance_keys(
                table, ScaledEncoder(1.0), store, PreprocessConfig(vad="webrtc", vad_options={"aggressiveness": 3})
            )[0],
            "chunking": utterance_keys(table, ScaledEncoder(1.0), store, PreprocessConfig(chunk_max_s=3.0))[0],
        }
        for what, changed in variants.items():
            assert all(changed[u] != base[u] for u in base), f"changing the {what} must change every key"
        # Text settings do not concern audio features.
        assert utterance_keys(table, ScaledEncoder(1.0), store, PreprocessConfig(text_normalisation="none"))[0] == base
    with FeatureStore(tmp_path / "store32", dtype="float32") as store32:
        assert utterance_keys(table, ScaledEncoder(1.0), store32)[0]["u0"] != base["u0"], "storage dtype is in the key"


def test_text_key_normalisation_and_independence_from_audio_settings(tmp_path):
    table = make_table(
        [
            {"utt_id": "a", "corpus": "t", "speaker": "s", "text": "Hello there"},
            {"utt_id": "b", "corpus": "t", "speaker": "s", "text": "  Hello there \n"},
            {"utt_id": "c", "corpus": "t", "speaker": "s", "text": "hello there"},
            {"utt_id": "d", "corpus": "t", "speaker": "s", "text": None},
        ]
    )
    encoder = ScaledEncoder(modality="text")
    with FeatureStore(tmp_path / "store") as store:
        strip, failures = utterance_keys(table, encoder, store)
        assert [f["utt_id"] for f in failures] == ["d"] and failures[0]["reason"] == "no transcript"
        assert strip["a"] == strip["b"] and strip["a"] != strip["c"]
        exact, _ = utterance_keys(table, encoder, store, PreprocessConfig(text_normalisation="none"))
        assert exact["a"] != exact["b"] and exact["a"] != strip["a"]
        audio_settings = PreprocessConfig(vad="webrtc", target_rate=8000, normalise_loudness=True)
        assert utterance_keys(table, encoder, store, audio_settings)[0] == strip
        assert utterance_keys(table, ScaledEncoder(3.0, modality="text"), store)[0]["a"] != strip["a"]


def test_key_functions_directly():
    spec = encoder_part("abc", layers=[8, 4, 4], dtype="float16")
    assert spec["layers"] == [4, 8]
    base = feature_key(text_input("x"), spec, {"text_normalisation": "strip"})
    assert len(base) == 64 and base == feature_key(text_input(" x "), spec, {"text_normalisation": "strip"})
    assert feature_key(audio_input("f" * 64, 1.0, 2.0), "abc", {}) != feature_key(
        audio_input("f" * 64, 1.0, 2.5), "abc", {}
    )
    # dict order never matters; values do
    assert feature_key(text_input("x"), spec, {"a": 1, "b": 2}) == feature_key(text_input("x"), spec, {"b": 2, "a": 1})
    assert feature_key(text_input("x"), spec, {"a": 1}) != feature_key(text_input("x"), spec, {"a": 2})
    assert normalise_text(" a ", "none") == " a "
    with pytest.raises(ConfigError, match="unknown text normalisation 'lower'"):
        normalise_text("a", "lower")
    with pytest.raises(ConfigError, match="not plain JSON"):
        feature_key(text_input("x"), spec, {"a": float("nan")})


def test_file_digests_are_cached_by_size_and_mtime(tmp_path, monkeypatch):
    path = write_wav(tmp_path / "a.wav")
    calls = []
    real = keys_module.sha256_file
    monkeypatch.setattr(store_module, "sha256_file", lambda p: calls.append(p) or real(p))
    with FeatureStore(tmp_path / "store") as store:
        first, errors = store.file_digests([path, str(tmp_path / "nope.wav")])
        assert len(calls) == 1 and "nope.wav" in errors[str(tmp_path / "nope.wav")]
        assert store.file_digests([path])[0] == first and len(calls) == 1, "unchanged file must not be re-read"
    with FeatureStore(tmp_path / "store") as store:  # the cache lives in the index, across runs
        assert store.file_digests([path])[0] == first and len(calls) == 1
        write_wav(path, freq=440.0)
        stat = os.stat(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        changed = store.file_digests([path])[0]
        assert len(calls) == 2 and changed[path] != first[path]


# ---------------------------------------------------------------------------- shards


def _entries(seed=0, count=6, dim=8):
    rng = np.random.default_rng(seed)
    return {
        f"key{i}": {
            "states": rng.normal(size=(3 + 2 * i, dim)).astype(np.float32),
            "layer_1": rng.normal(size=(3 + 2 * i, dim)).astype(np.float32),
            "pooled": rng.normal(size=(5,)),
            "special_tokens": (np.arange(3 + 2 * i) % 2).astype(np.uint8),
        }
        for i in range(count)
    }


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_keeps_shapes_without_padding(tmp_path, dtype):
    items = _entries()
    items["key0"]["flags"] = np.array([True, False, True])
    items["key0"]["empty"] = np.zeros((0, 4), np.float32)
    items["key0"]["scalar"] = np.float64(2.5)
    with FeatureStore(tmp_path, dtype=dtype) as store:
        assert store.put_many(items, namespace="enc-1") == len(items)
        assert store.put_many(items, namespace="enc-1") == 0, "existing keys are not written twice"
        got = store.get_many(list(items))
        for key, arrays in items.items():
            assert set(got[key]) == set(arrays)
            for name, expected in arrays.items():
                value = got[key][name]
                assert value.shape == np.shape(expected), (key, name)
                if np.asarray(expected).dtype.kind == "f":
                    assert value.dtype == np.dtype(dtype)
                    np.testing.assert_array_equal(value, np.asarray(expected).astype(dtype))
                else:
                    assert value.dtype == np.asarray(expected).dtype
                    np.testing.assert_array_equal(value, expected)
        stats = store.stats()
        assert stats["entries"] == 6 and stats["shards"] == 1 and stats["orphans"] == 0
        shard = next((tmp_path / "shards" / "enc-1").glob("*.safetensors"))
        assert stats["bytes"] == shard.stat().st_size
    # The shard is plain safetensors: one tensor per field, rows concatenated, no padding.
    with safe_open(str(shard), framework="numpy") as handle:
        shapes = {name.split(".", 1)[1]: handle.get_slice(name).get_shape() for name in handle.keys()}  # noqa: SIM118 - safe_open has keys() but is not iterable
        meta = handle.metadata()
    total_frames = sum(3 + 2 * i for i in range(6))
    assert shapes["states"] == [total_frames, 8] and shapes["layer_1"] == [total_frames, 8]
    assert shapes["special_tokens"] == [total_frames] and shapes["pooled"] == [30]
    assert meta["format"] == store_module.SHARD_FORMAT and set(json.loads(meta["entries"])) == set(items)


def test_float16_overflow_keeps_float32(tmp_path):
    big = np.array([[1e6, 1.0]], dtype=np.float32)
    with FeatureStore(tmp_path) as store:
        store.put("k", {"states": big, "small": np.ones((2, 2), np.float32)})
        got = store.get("k")
    assert got["states"].dtype == np.float32 and got["states"][0, 0] == 1e6
    assert got["small"].dtype == np.float16


def test_memory_mapped_reads(tmp_path):
    items = _entries(count=3)
    with FeatureStore(tmp_path, dtype="float32") as store:
        store.put_many(items)
        view = store.get("key2", mmap=True)["states"]
        copy = store.get("key2")["states"]
        assert isinstance(view, np.memmap) and not view.flags.writeable
        assert not isinstance(copy, np.memmap) and copy.flags.writeable
        np.testing.assert_array_equal(view, items["key2"]["states"])
        with pytest.raises(ValueError):
            view[0, 0] = 1.0


def test_missing_after_partial_work_and_missing_key_error(tmp_path):
    items = _entries(count=6)
    order = ["key5", "key0", "key3", "key1", "key4", "key2", "key0"]
    with FeatureStore(tmp_path) as store:
        store.put_many({k: items[k] for k in ("key0", "key1", "key2")})
        assert store.missing(order) == ["key5", "key3", "key4"]
        assert store.has("key1") and not store.has("key4") and "key2" in store
        with pytest.raises(MissingDataError, match="1 key\\(s\\) are not in the feature store.*first: key4"):
            store.get_many(["key1", "key4"])
        store.put_many({k: items[k] for k in ("key3", "key4", "key5")})
        assert store.missing(order) == [] and len(store) == 6 and store.stats()["shards"] == 2


def test_verify_catches_a_corrupted_and_a_truncated_shard(tmp_path):
    with FeatureStore(tmp_path) as store:
        store.put_many({k: v for k, v in _entries(count=3).items()}, namespace="a")
        store.put_many({k: v for k, v in _entries(seed=1, count=5).items() if k in ("key3", "key4")}, namespace="b")
        assert store.verify().ok and store.verify().checked == 5
    shard_a = next((tmp_path / "shards" / "a").glob("*.safetensors"))
    shard_b = next((tmp_path / "shards" / "b").glob("*.safetensors"))
    data = bytearray(shard_a.read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor of the data section
    shard_a.write_bytes(bytes(data))
    shard_b.write_bytes(shard_b.read_bytes()[:-10])
    with FeatureStore(tmp_path) as store:
        report = store.verify()
        assert not report.ok and report.checked == 5
        reasons = dict(report.bad)
        assert set(reasons) >= {"key3", "key4"} and "truncated" in reasons["key3"] and str(shard_b) in reasons["key3"]
        corrupt = [k for k in reasons if k.startswith("key") and "checksum" in reasons[k]]
        assert len(corrupt) == 1, "exactly one entry of shard a holds the flipped byte"
        with pytest.raises(StoreError, match="truncated"):
            store.get("key4")
        with pytest.raises(StoreError, match="checksum"):
            store.get(corrupt[0], verify=True)
        repaired = store.verify(repair=True)
        assert repaired.removed == 3
        assert sorted(store.missing(["key0", "key1", "key2", "key3", "key4"])) == sorted(["key3", "key4", corrupt[0]])
        assert store.verify().ok and not shard_b.exists(), "a shard without live entries is deleted"


# ---------------------------------------------------------------------------- atomicity


def test_crash_between_rename_and_commit_leaves_an_orphan_that_is_adopted(tmp_path, monkeypatch):
    items = _entries(count=4)
    store = FeatureStore(tmp_path)
    store.put_many({"key0": items["key0"]}, namespace="ns")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed after the rename")

    monkeypatch.setattr(FeatureStore, "_commit_shard", staticmethod(crash))
    with pytest.raises(KeyboardInterrupt):
        store.put_many({"key1": items["key1"], "key2": items["key2"]}, namespace="ns")
    monkeypatch.undo()
    assert store.missing(["key0", "key1", "key2"]) == ["key1", "key2"], "uncommitted entries are invisible"
    assert store.stats()["orphans"] == 1
    store.close()
    # Leftovers of a crash inside the shard write itself: a temp file and a truncated shard.
    folder = tmp_path / "shards" / "ns"
    (folder / ".main-0123456789abcdef.safetensors.tmp").write_bytes(b"partial")
    good_orphan = next(
        p
        for p in folder.glob("*.safetensors")
        if p.stem
        not in {r[0] for r in store_module._connect(tmp_path / "index.sqlite").execute("SELECT shard FROM shards")}
    )
    (folder / "main-fedcba9876543210.safetensors").write_bytes(good_orphan.read_bytes()[:-20])
    (folder / "other-worker-0123456789abcdef.safetensors.tmp").write_bytes(b"not mine")
    with FeatureStore(tmp_path) as store:
        report = store.acquire_writer()
        assert [os.path.basename(p) for p in report.adopted] == [good_orphan.name]
        assert [os.path.basename(p) for p in report.temp_removed] == [".main-0123456789abcdef.safetensors.tmp"]
        assert [os.path.basename(p) for p in report.orphans_removed] == ["main-fedcba9876543210.safetensors"]
        assert store.missing(["key0", "key1", "key2"]) == [] and store.verify().ok
        np.testing.assert_allclose(store.get("key2")["states"], items["key2"]["states"], atol=2e-3)
        assert (folder / "other-worker-0123456789abcdef.safetensors.tmp").exists(), "other writers' files are theirs"
        assert store.stats()["orphans"] == 1
        swept = store.cleanup(all_writers=True)  # `emomix store clean`: every writer that is not running
        assert [os.path.basename(p) for p in swept.temp_removed] == ["other-worker-0123456789abcdef.safetensors.tmp"]
        assert store.stats()["orphans"] == 0


def test_one_writer_at_a_time(tmp_path):
    first = FeatureStore(tmp_path)
    first.put("a", {"x": np.ones(2)})
    second = FeatureStore(tmp_path, lock_wait=0)
    assert second.get("a")["x"].tolist() == [1.0, 1.0], "reading needs no lock"
    with pytest.raises(StoreError, match="another process is writing .* as writer 'main'"):
        second.put("b", {"x": np.ones(2)})
    first.close()
    assert second.put("b", {"x": np.ones(2)}) == 1
    second.close()


def test_a_second_writer_waits_for_the_first_then_writes(tmp_path, monkeypatch):
    import threading

    first = FeatureStore(tmp_path)
    first.put("a", {"x": np.ones(2)})
    threading.Timer(0.5, first.close).start()  # the other run's extraction ends half a second later
    second = FeatureStore(tmp_path, lock_wait=30)
    assert second.put("b", {"x": np.ones(2)}) == 1
    second.close()
    with FeatureStore(tmp_path, lock_wait=0.3) as third, FeatureStore(tmp_path, lock_wait=0.3) as fourth:
        third.put("c", {"x": np.ones(2)})
        with pytest.raises(StoreError, match=r"\(waited 0 s\).*EMOMIX_STORE_LOCK_WAIT"):
            fourth.put("d", {"x": np.ones(2)})
    monkeypatch.setenv("EMOMIX_STORE_LOCK_WAIT", "soon")
    with pytest.raises(ConfigError, match="EMOMIX_STORE_LOCK_WAIT must be a number"):
        FeatureStore(tmp_path)


def test_worker_parts_and_merge(tmp_path):
    items = _entries(count=6)
    with FeatureStore(tmp_path) as main:
        main.put("key0", items["key0"], namespace="ns")
    w0 = FeatureStore(tmp_path, worker="shard-0-of-2")
    w1 = FeatureStore(tmp_path, worker="shard-1-of-2")
    w0.put_many({k: items[k] for k in ("key0", "key1", "key2")}, namespace="ns")
    w1.put_many({k: items[k] for k in ("key3", "key4")}, namespace="ns")
    assert w0.missing(["key0", "key1", "key3"]) == ["key3"], "a worker sees the main index and its own part"
    reader = FeatureStore(tmp_path)
    assert reader.missing(["key0", "key1", "key3"]) == ["key1", "key3"]
    stats = reader.stats()
    assert stats["pending_parts"] == 2 and stats["orphans"] == 0, "running workers' shards are not orphans"
    with pytest.raises(MissingDataError, match="not merged yet"):
        reader.get("key1")
    w0.close()
    report = merge_indexes(tmp_path)  # w1 still holds its lock: its part must wait
    assert report.merged == ["shard-0-of-2"] and report.busy == ["shard-1-of-2"] and report.entries_added == 2
    w1.close()
    report = merge_indexes(tmp_path)
    assert report.merged == ["shard-1-of-2"] and report.entries_added == 2
    assert not list((tmp_path / "index-parts").glob("*.sqlite"))
    assert reader.missing([f"key{i}" for i in range(6)]) == ["key5"]
    np.testing.assert_allclose(reader.get("key3")["layer_1"], items["key3"]["layer_1"], atol=2e-3)
    assert reader.verify().ok and reader.stats()["entries"] == 5 and reader.stats()["shards"] == 3
    assert merge_indexes(tmp_path).merged == [], "merging again is harmless"
    reader.close()


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="dtype must be one of float16, float32"):
        FeatureStore(tmp_path, dtype="bfloat16")
    with pytest.raises(ConfigError, match="worker id"):
        FeatureStore(tmp_path, worker="../x")
    with pytest.raises(MissingDataError, match="does not exist"):
        FeatureStore(tmp_path / "absent", create=False)
    with FeatureStore(tmp_path) as store:
        with pytest.raises(ConfigError, match="namespace"):
            store.put("k", {"x": np.ones(1)}, namespace="a/b")
        with pytest.raises(ConfigError, match="has dtype <U1"):
            store.put("k", {"x": np.array(["a"])})
        with pytest.raises(ConfigError, match="no arrays"):
            store.put("k", {})
