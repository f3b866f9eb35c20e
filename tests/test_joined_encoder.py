"""Joined encoders: several encoders of one modality read as one feature-wise concatenation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emomix.encoders.registry import create_encoder
from emomix.errors import ConfigError


def waves():
    rng = np.random.default_rng(0)
    return [0.1 * rng.standard_normal(16000).astype(np.float32), 0.1 * rng.standard_normal(8000).astype(np.float32)]


def test_states_are_the_parts_side_by_side():
    spec = {"join": [{"name": "mfcc", "n_mfcc": 13}, {"name": "mfcc", "n_mfcc": 20}]}
    joined = create_encoder(spec)
    first, second = create_encoder({"name": "mfcc", "n_mfcc": 13}), create_encoder({"name": "mfcc", "n_mfcc": 20})
    out = joined.encode(waves())
    a, b = first.encode(waves()), second.encode(waves())
    assert out.states.shape[-1] == 33 == joined.output_size
    torch.testing.assert_close(out.states[..., :13], a.states.float())
    torch.testing.assert_close(out.states[..., 13:], b.states.float())
    assert torch.equal(out.mask, a.mask)
    assert joined.identity() not in (first.identity(), second.identity())
    assert create_encoder(spec).identity() == joined.identity()


def test_pooled_vectors_join_too():
    joined = create_encoder(
        {
            "join": [
                {"name": "opensmile:eGeMAPSv02", "level": "functionals"},
                {"name": "opensmile:eGeMAPSv02", "level": "functionals"},
            ]
        }
    )
    out = joined.encode(waves())
    assert out.pooled.shape == (2, 176) and out.states.shape == (2, 1, 176)


def test_parts_of_different_modalities_or_with_layers_are_refused():
    with pytest.raises(ConfigError, match="one modality"):
        create_encoder({"join": ["mfcc", "minilm"]})
    with pytest.raises(ConfigError, match="at least two"):
        create_encoder({"join": ["mfcc"]})
    with pytest.raises(ConfigError, match="join"):
        create_encoder({"join": "mfcc"})
