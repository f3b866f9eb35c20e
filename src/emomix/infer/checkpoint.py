"""Where a trained model lives: a run folder's checkpoints and what the run says about them.

A run folder (``--out`` of training) holds one checkpoint folder per fold and seed,
``folds/<fold>/seed-<k>/`` with ``model.json`` and ``model.safetensors``
(:mod:`emomix.models.saved`), plus ``run.json``, ``folds.json`` and, once evaluated,
``report/metrics.json``. :func:`resolve_checkpoint` turns a run folder or a checkpoint folder into
the checkpoint to load; without ``fold``/``seed`` the one with the best validation score
(``model.json`` → ``training.best_score``, lower is better when the monitor is ``val_loss``; a
composite model's parts are averaged) is chosen, ties and runs without validation taking the
first fold in name order and the lowest seed. :func:`read_metrics` reads the run's headline
metrics. The predictor and the model card both build on this module; it reads JSON only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from emomix.errors import ConfigError, MissingDataError
from emomix.models.saved import read_model_card

__all__ = [
    "checkpoint_score",
    "choose_checkpoint",
    "find_run_root",
    "read_metrics",
    "read_model_card",
    "resolve_checkpoint",
]


def resolve_checkpoint(
    path: str | Path, fold: str | None = None, seed: int | None = None
) -> tuple[Path, Path | None, dict[str, Any]]:
    """(checkpoint folder, run folder or None, its ``model.json``) for a run folder (choosing a
    fold/seed as the module doc says) or a checkpoint folder, as the predictor and the model card load them."""
    path = Path(path)
    if not path.exists():
        raise MissingDataError(
            f"{path} does not exist; give a run folder (the --out of a training run) or a "
            "checkpoint folder folds/<fold>/seed-<k>"
        )
    if (path / "model.json").is_file():
        checkpoint, run_dir = path, find_run_root(path)
        card = read_model_card(checkpoint)
        if (fold is not None and str(card.get("fold")) != str(fold)) or (
            seed is not None and int(card.get("seed", -1)) != int(seed)
        ):
            raise ConfigError(
                f"{path} holds fold {card.get('fold')} seed {card.get('seed')}, not fold {fold} seed {seed}; "
                "give the run folder to choose another"
            )
    elif (path / "folds").is_dir():
        checkpoint, run_dir = choose_checkpoint(path, fold, seed), path
        card = read_model_card(checkpoint)
    else:
        raise MissingDataError(f"{path} is neither a run folder (no folds/) nor a checkpoint folder (no model.json)")
    return checkpoint, run_dir, card


def find_run_root(checkpoint: Path) -> Path | None:
    """The run folder above ``folds/<fold>/seed-<k>`` (None for a checkpoint copied elsewhere)."""
    for candidate in list(Path(checkpoint).resolve().parents)[:3]:
        if (candidate / "run.json").is_file() or any(candidate.glob("normaliser-*.json")):
            return candidate
    return None


def checkpoint_score(card: Mapping[str, Any]) -> tuple[float | None, str | None]:
    """(validation score, monitor) of a model card; a composite's parts are averaged."""
    training = dict(card.get("training") or {})
    if "best_score" in training:
        return _number(training.get("best_score")), training.get("monitor")
    parts = [v for v in training.values() if isinstance(v, Mapping) and "best_score" in v]
    scores = [s for s in (_number(p.get("best_score")) for p in parts) if s is not None]
    monitor = next((p.get("monitor") for p in parts if p.get("monitor")), None)
    return (float(np.mean(scores)) if scores else None), monitor


def choose_checkpoint(run_dir: Path, fold: str | None = None, seed: int | None = None) -> Path:
    """The ``folds/<fold>/seed-<k>`` folder to load (see the module doc for the rule)."""
    candidates = []
    for card_path in sorted(Path(run_dir).glob("folds/*/seed-*/model.json")):
        folder = card_path.parent
        if not (folder / "model.safetensors").is_file():
            continue
        try:
            folder_seed = int(folder.name.split("-", 1)[1])
        except ValueError:
            continue
        candidates.append((folder.parent.name, folder_seed, folder))
    if not candidates:
        raise MissingDataError(
            f"{run_dir} has no trained fold (no folds/<fold>/seed-<k>/model.json with model.safetensors); "
            "train the recipe until at least one fold finishes"
        )
    chosen = [c for c in candidates if (fold is None or c[0] == str(fold)) and (seed is None or c[1] == int(seed))]
    if not chosen:
        available = ", ".join(f"{f}/seed-{s}" for f, s, _ in candidates)
        raise ConfigError(
            f"{run_dir} has no trained fold {fold if fold is not None else '*'} seed "
            f"{seed if seed is not None else '*'}; available: {available}"
        )

    def rank(candidate: tuple[str, int, Path]) -> tuple[int, float, str, int]:
        score, monitor = checkpoint_score(read_model_card(candidate[2]))
        if score is None:
            return (1, 0.0, candidate[0], candidate[1])
        return (0, score if monitor == "val_loss" else -score, candidate[0], candidate[1])

    return min(chosen, key=rank)[2]


def read_metrics(run_dir: Path, card: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run's headline metrics (report/metrics.json) and this fold/seed's own row, if present."""
    path = Path(run_dir) / "report" / "metrics.json"
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text())
        metrics = document.get("metrics") or {}
    except (json.JSONDecodeError, AttributeError):
        return None
    own = next(
        (
            row
            for row in metrics.get("per_fold") or []
            if str(row.get("fold")) == str(card.get("fold")) and int(row.get("seed", -1)) == int(card.get("seed", -2))
        ),
        None,
    )
    return {
        "status": "evaluated",
        "source": str(path),
        "pooled": metrics.get("headline"),
        "headline": metrics.get("headline"),
        "across_folds": {
            k: {"mean": v.get("mean"), "sd": v.get("sd"), "n": v.get("n")}
            for k, v in (metrics.get("across_folds") or {}).items()
            if isinstance(v, Mapping)
        },
        "folds": metrics.get("folds"),
        "seeds": metrics.get("seeds"),
        "this_checkpoint": None if own is None else {k: v for k, v in own.items() if k not in ("absent_classes",)},
        "notes": [str(n) for n in [*(document.get("notes") or []), *(metrics.get("notes") or [])]],
    }


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number
