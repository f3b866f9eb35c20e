"""Shared pytest fixtures.

Expensive inputs are built once per session: the synthetic corpus with its extracted features
(``synthetic_features``), a small trained run on it (``trained_synthetic_run``) and that run's
predictor (``synthetic_predictor``). ``one_thread`` runs torch on one thread (small models train
and predict faster on one thread than on two that compete with other processes for the cores);
``background_server`` serves an app with uvicorn in a thread on a free port.

Suites (markers registered in pyproject.toml): the default run leaves out ``slow`` (real corpora),
``learning`` (the paper-claim learning tests) and ``e2e`` (long end-to-end runs); ``make
test-learning``, ``make test-e2e``, ``make test-slow`` and ``make test-all`` run them.

``make test`` runs on two pytest-xdist workers (``-n 2 --dist loadfile``: a module's tests stay on
one worker, so module fixtures are built once). The session fixtures are built once for all
workers: a file lock on a folder they share; the first worker builds, the others wait and read.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock


def session_dir(name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary folder for this test session, the same for every pytest-xdist worker (their
    base folders are siblings under the session's)."""
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(config: pytest.Config, name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder under the pytest cache (kept between sessions, shared by the workers), or a
    session folder when the cache plugin is off (``-p no:cacheprovider``)."""
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir(name))
    return session_dir(name, tmp_path_factory)


@pytest.fixture(scope="session")
def synthetic_features(request, tmp_path_factory):
    """The synthetic corpus with openSMILE + MiniLM features and alignment edges (see
    ``tests/synthetic_features.py``), built once (extracted in two processes) and cached under the
    pytest cache so re-runs skip extraction; workers that find it being built wait and read it."""
    from synthetic_features import build_synthetic_features

    folder = cache_dir(request.config, "emomix-synthetic", tmp_path_factory)
    return build_synthetic_features(folder, num_shards=min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def text_only_checkpoint(trained_synthetic_run, tmp_path_factory):
    """An untrained text-only model (early_fusion_text) on ``trained_synthetic_run``'s text
    features, saved as a run folder (what is tested is the text-only path, not accuracy)."""
    import json

    import torch

    from emomix.models import create_model
    from emomix.models.saved import TrainedModel, save_weights

    card = json.loads((trained_synthetic_run / "folds" / "ses01" / "seed-0" / "model.json").read_text())
    torch.manual_seed(0)
    model = create_model("early_fusion_text", {}, {"text": card["input_dims"]["text"]}, len(card["classes"]))
    run = tmp_path_factory.mktemp("text-only") / "run"
    folder = run / "folds" / "ses01" / "seed-0"
    folder.mkdir(parents=True)
    save_weights(TrainedModel(model).trainable_state(), folder / "model.safetensors")
    card.update(
        model="early_fusion_text",
        config=model.config.to_dict(),
        input_dims={"text": card["input_dims"]["text"]},
        features={"text": card["features"]["text"]},
    )
    (folder / "model.json").write_text(json.dumps(card))
    return run


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for the module, the previous count restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained_synthetic_run(synthetic_features, tmp_path_factory):
    """A small trained run folder (Path): Dual Routing on the synthetic corpus, fold ses01 only,
    seed 0, two epochs, features from the synthetic cache (so only the first session pays for
    extraction). Inference, export and service tests share it (read-only); it is trained once for
    all workers of the session."""
    import torch

    from emomix.train.recipe import Recipe
    from emomix.train.run import train_recipe
    from synthetic_features import synthetic_recipe

    folder = session_dir("trained-synthetic-run", tmp_path_factory)
    out, done = folder / "dual", folder / "dual.done"
    with FileLock(folder / "dual.lock"):
        if done.exists():
            return out
        shutil.rmtree(out, ignore_errors=True)  # what a worker that failed half-way left
        recipe = Recipe.from_dict(synthetic_recipe(synthetic_features, name="trained-synthetic", epochs=2))
        threads = torch.get_num_threads()
        try:
            train_recipe(recipe, out, folds=["ses01"], progress=False, log=None)
        finally:
            torch.set_num_threads(threads)
        done.touch()
    return out


@pytest.fixture(scope="session")
def synthetic_predictor(trained_synthetic_run):
    """The :class:`~emomix.infer.predictor.Predictor` of ``trained_synthetic_run`` (default fold,
    seed and ASR), loaded once; the service and browser tests share it."""
    from emomix.infer.predictor import Predictor

    return Predictor.from_run(trained_synthetic_run)


@pytest.fixture(scope="module")
def background_server() -> Iterator[Callable[[Any], str]]:
    """``url = background_server(app)``: ``app`` served by uvicorn in a daemon thread on a free
    port (:class:`~emomix.serve.server.BackgroundServer`); every server started stops when the
    module's tests are done."""
    from emomix.serve.server import BackgroundServer

    with ExitStack() as servers:
        yield lambda app: servers.enter_context(BackgroundServer(app))


MARKED_SUITES = {
    "learning": "make test-learning",
    "e2e": "make test-e2e",
    "slow": "make test-slow",
    "faults": "make test-faults",
}
"""The marked suites the default run leaves out, and the target that runs each."""


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Say which marked suites the run left out and how to run them, so a deselected or skipped
    test is never a silent gap (with pytest-xdist the controller has no per-test counts: names only)."""
    expression = str(config.option.markexpr or "")
    left_out = [name for name in MARKED_SUITES if f"not {name}" in expression]
    if not left_out:
        return
    counts: dict[str, int] = {}
    for item in terminalreporter.stats.get("deselected", []):
        for name in left_out:
            if item.get_closest_marker(name) is not None:
                counts[name] = counts.get(name, 0) + 1
                break
    parts = [f"{counts[name]} {name}" if name in counts else name for name in left_out]
    terminalreporter.write_line(
        "left out of this run: " + ", ".join(f"{part} ({MARKED_SUITES[name]})" for part, name in zip(parts, left_out))
    )
    if "slow" in left_out:
        terminalreporter.write_line(
            "the slow tests read the real corpora in ../shared/datasets or $EMOMIX_DATASETS and are skipped "
            "with that reason when those are absent"
        )
