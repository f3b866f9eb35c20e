"""openSMILE over a thread pool: the same features, in input order, bit for bit, as the
one-thread loop; every worker thread with its own Smile instances; a run-time setting that
leaves the encoder's identity (the feature store's cache key) alone."""

from __future__ import annotations

import copy
import threading
import warnings

import numpy as np
import pytest
import torch

from emomix.encoders import opensmile_encoder
from emomix.encoders.opensmile_encoder import OpenSmileEncoder
from emomix.errors import AudioError, ConfigError

SR = 16_000


def _wave(seconds: float, seed: int, pitch: float = 180.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * pitch * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _ragged_batch() -> list[np.ndarray]:
    """Different lengths, silence and one input too short for an analysis window (index 2)."""
    return [
        _wave(0.6, 0, 150.0),
        _wave(1.3, 1, 220.0),
        _wave(0.005, 2),
        np.zeros(int(0.7 * SR), dtype=np.float32),
        _wave(0.9, 3, 120.0),
        _wave(0.4, 4, 260.0),
    ]


def _assert_same(a, b) -> None:
    assert torch.equal(a.states, b.states)
    assert torch.equal(a.mask, b.mask)
    assert (a.pooled is None) == (b.pooled is None)
    if a.pooled is not None:
        assert torch.equal(a.pooled, b.pooled)
    assert a.extras["too_short"] == b.extras["too_short"]


@pytest.mark.parametrize("level", ["lld", "functionals", "both"])
def test_threads_give_the_sequential_features_bit_for_bit(level):
    batch = _ragged_batch()
    sequential = OpenSmileEncoder("eGeMAPSv02", level=level).encode(batch)
    assert sequential.extras["too_short"] == [False, False, True, False, False, False]
    threaded = OpenSmileEncoder("eGeMAPSv02", level=level, threads=2)
    _assert_same(threaded.encode(batch), sequential)
    threaded.set_threads(3)  # a new pool, more threads than some batches have items
    _assert_same(threaded.encode(batch), sequential)
    _assert_same(threaded.encode(batch[::-1]), OpenSmileEncoder("eGeMAPSv02", level=level).encode(batch[::-1]))
    threaded.close()


def test_each_worker_thread_uses_its_own_smile_instances(monkeypatch):
    encoder = OpenSmileEncoder("eGeMAPSv02", level="both", threads=2)
    own = {id(encoder._lld), id(encoder._functionals)}
    calls: list[tuple[str, int]] = []
    lock = threading.Lock()
    process = opensmile_encoder._process

    def recording(smile, wave):
        with lock:
            calls.append((threading.current_thread().name, id(smile)))
        return process(smile, wave)

    monkeypatch.setattr(opensmile_encoder, "_process", recording)
    encoder.encode(_ragged_batch())
    encoder.encode(_ragged_batch())
    assert len(calls) == 2 * 2 * len(_ragged_batch())  # LLDs and functionals of every item, twice
    assert all(name.startswith("emomix-opensmile") for name, _ in calls)
    threads_of: dict[int, set[str]] = {}
    for name, smile in calls:
        threads_of.setdefault(smile, set()).add(name)
    assert all(len(names) == 1 for names in threads_of.values())  # no instance shared by two threads
    assert not own & set(threads_of)  # the encoder's own instances stay with the calling thread
    assert len(threads_of) <= 2 * 2  # at most one LLD and one functionals instance per worker

    calls.clear()
    encoder.encode([_wave(0.5, 5)])  # a lone item runs in the calling thread
    assert {name for name, _ in calls} == {threading.current_thread().name}
    encoder.close()


def test_threads_are_a_runtime_setting_not_part_of_the_identity():
    plain = OpenSmileEncoder("eGeMAPSv02", level="both")
    threaded = OpenSmileEncoder("eGeMAPSv02", level="both", threads=2)
    assert threaded.config() == plain.config()
    assert threaded.identity() == plain.identity()
    threaded.set_threads(1)
    assert threaded.threads == 1 and threaded.identity() == plain.identity()


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_bad_thread_counts_are_refused(threads):
    with pytest.raises(ConfigError, match="openSMILE threads"):
        OpenSmileEncoder("eGeMAPSv02", threads=threads)
    with pytest.raises(ConfigError, match="openSMILE threads"):
        OpenSmileEncoder("eGeMAPSv02").set_threads(threads)


def test_bad_input_fails_the_same_with_threads():
    batch = [_wave(0.5, 0), np.zeros((2, 800), dtype=np.float32), _wave(0.5, 1)]
    for threads in (1, 2):
        with pytest.raises(AudioError, match="waveform 1 of the batch has shape"):
            OpenSmileEncoder("eGeMAPSv02", threads=threads).encode(batch)
    nan = _wave(0.5, 0)
    nan[10] = np.nan
    with pytest.raises(AudioError, match="waveform 1 of the batch holds NaN"):
        OpenSmileEncoder("eGeMAPSv02", threads=2).encode([_wave(0.5, 0), nan])


def test_no_too_short_warning_escapes_and_the_filters_are_restored():
    encoder = OpenSmileEncoder("eGeMAPSv02", level="both", threads=2)
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = encoder.encode(_ragged_batch())
    assert out.extras["too_short"][2]
    assert not [w for w in caught if "too short" in str(w.message)]
    assert warnings.filters == filters
    encoder.close()


def test_a_copy_of_a_threaded_encoder_starts_its_own_threads():
    encoder = OpenSmileEncoder("eGeMAPSv02", level="lld", threads=2)
    batch = _ragged_batch()
    first = encoder.encode(batch)
    twin = copy.deepcopy(encoder)
    assert twin._pool is None and twin.threads == 2
    _assert_same(twin.encode(batch), first)
    assert twin._pool is not None and twin._pool is not encoder._pool
    twin.close()
    encoder.close()
    assert encoder._pool is None
    _assert_same(encoder.encode(batch), first)  # closed: the next batch starts the threads again
    encoder.close()


def test_the_predictor_hands_its_threads_to_opensmile_and_predicts_the_same(synthetic_predictor, synthetic_features):
    """``Predictor.set_threads`` reaches the openSMILE encoder; a batch predicted on two threads
    equals the batch predicted on one (the shared predictor is put back to one thread)."""
    predictor = synthetic_predictor
    smiles = [m for e in predictor.encoders.values() for m in e.modules() if isinstance(m, OpenSmileEncoder)]
    assert smiles, "the synthetic run reads openSMILE features"
    table = synthetic_features.table.sort_values("utt_id").head(5)
    items = [
        {"audio": str(synthetic_features.root / row.audio_path), "text": row.text, "speaker": row.speaker}
        for row in table.itertuples()
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = predictor.predict_many(items)
        predictor.set_threads(2)
        assert all(encoder.threads == 2 for encoder in smiles)
        threaded = predictor.predict_many(items)
        assert all(encoder._pool is not None for encoder in smiles), "the batch went through the thread pool"
    finally:
        predictor.set_threads(1)
        torch.set_num_threads(threads)
    assert all(encoder.threads == 1 and encoder._pool is None for encoder in smiles)
    assert [r["probabilities"] for r in threaded] == [r["probabilities"] for r in alone]
    assert [r["label"] for r in threaded] == [r["label"] for r in alone]
    with pytest.raises(ConfigError, match="predictor threads"):
        predictor.set_threads(0)
