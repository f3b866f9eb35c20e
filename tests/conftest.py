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

    root = synthetic_features.root
    recipe = Recipe.from_dict({
        "name": "trained-synthetic",
        "corpus": {"reader": "synthetic", "root": str(root)},
        "protocol": {"name": "loso", "params": {"validation": "group"}},
        "features": {
            "store": str(root.parent / "store"),
            "audio": {"encoder": "opensmile:eGeMAPSv02", "preprocess": {"vad": "webrtc", "vad_mode": "mask"},
                      "frame_stride": 4, "speaker_normalisation": True},
            "text": {"encoder": "minilm", "layers": [3, 4, 5, 6]},
        },
        "model": {"name": "dual_routing", "config": {"model_dim": 32, "router_hidden": 32, "classifier_hidden": 64}},
        "optimiser": {"lr": 2e-3, "schedule": "warmup_cosine", "warmup_epochs": 1},
        "training": {"epochs": 2, "batch_size": 16, "patience": 3, "threads": 1},
        "seeds": [0],
    })
    out = tmp_path_factory.mktemp("trained-synthetic-run") / "dual"
    threads = torch.get_num_threads()
    try:
        train_recipe(recipe, out, folds=["ses01"], progress=False, log=None)
    finally:
        torch.set_num_threads(threads)
    return out
