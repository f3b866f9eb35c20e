"""The 'resemblyzer' encoder: resemblyzer's bundled speaker-verification LSTM as an utterance vector."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from emomix.audio import load_audio
from emomix.encoders.registry import create_encoder
from emomix.errors import ConfigError

pytest.importorskip("resemblyzer", reason="make setup installs resemblyzer (pip install --no-deps resemblyzer==0.1.4)")

RATE = 16000


def voiced(seconds: float, pitch: float, seed: int) -> np.ndarray:
    """A buzzy harmonic tone with a formant-like envelope and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    wave = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 12))
    wave = wave * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.size)
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


@pytest.fixture(scope="module")
def encoder():
    return create_encoder("resemblyzer")


def test_unit_vectors_that_repeat_exactly(encoder):
    waves = [voiced(2.0, 120, 0), voiced(1.5, 220, 1)]
    out = encoder.encode(waves)
    assert out.states.shape == (2, 1, 256) and out.pooled.shape == (2, 256) and out.mask.all()
    assert np.allclose(out.pooled.norm(dim=1).numpy(), 1.0, atol=1e-5)
    again = encoder.encode(waves[::-1])
    assert np.array_equal(again.pooled.numpy()[::-1], out.pooled.numpy())  # no batch effects
    assert out.extras["empty"] == [False, False]


def test_empty_and_silent_inputs_are_zero_vectors_flagged_and_short_ones_still_embed(encoder):
    out = encoder.encode([np.zeros(0, np.float32), np.zeros(RATE, np.float32), voiced(0.05, 150, 2)])
    assert out.extras["empty"] == [True, True, False]
    assert np.all(out.pooled[:2].numpy() == 0) and float(out.pooled[2].norm()) == pytest.approx(1.0, abs=1e-5)


def test_identity_follows_the_options_and_bad_options_are_named():
    assert create_encoder("resemblyzer").identity() == create_encoder({"name": "resemblyzer"}).identity()
    assert create_encoder({"name": "resemblyzer", "rate": 2.0}).identity() != create_encoder("resemblyzer").identity()
    with pytest.raises(ConfigError, match="min_coverage in"):
        create_encoder({"name": "resemblyzer", "min_coverage": 0})
    with pytest.raises(ConfigError, match="has no option 'level'"):
        create_encoder({"name": "resemblyzer", "level": "lld"})


def test_joins_openSMILE_functionals_into_one_utterance_vector():
    joined = create_encoder({"join": ["opensmile:eGeMAPSv02@functionals", "resemblyzer"]})
    out = joined.encode([voiced(1.0, 140, 3)])
    assert joined.output_size == 88 + 256 and out.pooled.shape == (1, 344) and out.states.shape == (1, 1, 344)


def test_a_missing_package_is_a_config_error_with_the_install_line(monkeypatch):
    real_import = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name == "resemblyzer":
            raise ImportError("No module named 'resemblyzer'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    with pytest.raises(ConfigError, match=r"pip install --no-deps resemblyzer==0\.1\.4"):
        create_encoder("resemblyzer")


@pytest.mark.slow
def test_on_real_speech_same_speaker_vectors_are_closer_than_other_speakers():
    from emomix.data.paths import shared_datasets_dir

    root = shared_datasets_dir()
    if root is None or not (root / "savee").is_dir():
        pytest.skip("SAVEE not found in ../shared/datasets (set EMOMIX_DATASETS)")
    speakers = ("DC", "JE", "JK", "KL")
    files = {s: sorted((root / "savee").glob(f"{s}_n*.wav"))[:4] for s in speakers}
    encoder = create_encoder("resemblyzer")
    vectors = {s: encoder.encode([load_audio(p) for p in paths]).pooled.numpy() for s, paths in files.items()}
    for s in speakers:
        own = vectors[s] @ vectors[s].T
        same = own[~np.eye(len(own), dtype=bool)].mean()
        other = max(float((vectors[s] @ vectors[o].T).mean()) for o in speakers if o != s)
        assert same > other + 0.05, (s, same, other)
