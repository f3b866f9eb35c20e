"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def synthetic_features(request):
    """The synthetic corpus with openSMILE + MiniLM features and alignment edges (see
    ``tests/synthetic_features.py``), cached under the pytest cache so re-runs skip extraction."""
    from synthetic_features import build_synthetic_features

    return build_synthetic_features(request.config.cache.mkdir("emomix-synthetic"))


@pytest.fixture(scope="session")
def trained_synthetic_run(synthetic_features, tmp_path_factory):
    """A small trained run folder (Path): Dual Routing on the synthetic corpus, fold ses01 only,
    seed 0, two epochs, features from the pytest synthetic cache (so only the first session pays
    for extraction). Inference and service tests share it."""
    import torch

    from emomix.train.recipe import Recipe
    from emomix.train.run import train_recipe

    from synthetic_features import synthetic_recipe

    recipe = Recipe.from_dict(synthetic_recipe(synthetic_features, name="trained-synthetic", epochs=2))
    out = tmp_path_factory.mktemp("trained-synthetic-run") / "dual"
    threads = torch.get_num_threads()
    try:
        train_recipe(recipe, out, folds=["ses01"], progress=False, log=None)
    finally:
        torch.set_num_threads(threads)
    return out
