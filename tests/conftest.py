"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def synthetic_features(request):
    """The synthetic corpus with openSMILE + MiniLM features and alignment edges (see
    ``tests/synthetic_features.py``), cached under the pytest cache so re-runs skip extraction."""
    from synthetic_features import build_synthetic_features

    return build_synthetic_features(request.config.cache.mkdir("emomix-synthetic"))
