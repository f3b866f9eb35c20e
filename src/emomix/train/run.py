"""Cross-validation runs: a recipe → every fold and seed trained → pooled predictions → report.

:func:`train_recipe` is what ``emomix train`` calls. It lays out the run directory described in
docs/training.md, and is safe to interrupt and re-run:

* a fold/seed whose ``done.json`` exists is skipped (its predictions are reused);
* a fold/seed interrupted mid-training resumes from its ``last.ckpt`` (Lightning restores the
  weights, optimiser, scheduler, epoch and early-stopping state);
* ``config.yaml`` and ``folds.json`` of an existing run must match the recipe and the fold plan
  of this invocation, so a resumed run can never mix two setups;
* every file is written through a temporary file renamed into place.

A model whose registry entry declares it the late fusion of other models (``late_fusion_of``)
trains its parts in the same fold folder and fits the per-class fusion weights on the fold's
validation part (:mod:`emomix.train.late_fusion`); this module names no model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from emomix.atomic import write_parquet_atomic
from emomix.errors import ConfigError, MissingDataError
from emomix.jsonutil import to_jsonable
from emomix.metrics_core import unweighted_accuracy
from emomix.models import create_model, model_info
from emomix.models.losses import inverse_frequency_alpha
from emomix.models.saved import load_weights, predict_rows, save_weights
from emomix.train.augment import augment_table, is_augmented, training_ids_with_copies
from emomix.train.checkpoint import AtomicCheckpointIO, remove_stale_temporaries, usable_checkpoint
from emomix.train.data import EmotionDataModule
from emomix.train.late_fusion import train_late_fusion
from emomix.train.recipe import Recipe
from emomix.train.task import BestWeights, EmotionTask, HistoryWriter, append_csv_row

RUN_FORMAT = "emomix.run/1"


@dataclass
class RunContext:
    """What every fold of a run shares: the recipe, the corpus table, the features, the classes."""

    recipe: Recipe
    out: Path
    table: pd.DataFrame
    classes: list[str]
    plan: Any
    feature_set: Any
    corpus_root: Path
    progress: bool = True


@dataclass
class RunResult:
    """Outcome of :func:`train_recipe`: the run folder, which fold/seeds were trained or reused,
    the pooled predictions and the report path (None when the evaluation package is missing)."""

    out: Path
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    predictions: pd.DataFrame | None = None
    report: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def quiet_lightning() -> None:
    """Keep Lightning's start-up banners (GPU/TPU availability, tips) out of the user's terminal;
    warnings and errors still show."""
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels on import: set ours after)

    for name in (
        "lightning.pytorch",
        "lightning.fabric",
        "lightning",
        "pytorch_lightning",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*treespec.*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # a resumed fold's own folder
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # frozen encoder layers stay in eval


def train_recipe(
    recipe: Recipe,
    out: str | Path | None = None,
    folds: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    progress: bool = True,
    report: bool = True,
    log: Callable[[str], None] | None = print,
) -> RunResult:
    """Run (or resume) every fold and seed of ``recipe``; see the module doc."""
    log = log or (lambda message: None)
    quiet_lightning()
    started = time.perf_counter()
    if seeds is not None:
        recipe = recipe.with_overrides(seeds=tuple(int(s) for s in seeds))
    out = Path(out or Path("runs") / recipe.name)
    _apply_threads(recipe)
    context = prepare_run(recipe, out, progress=progress, log=log)
    result = RunResult(out=out, seconds={"features": time.perf_counter() - started})
    chosen = _choose_folds(context.plan, folds)
    from tqdm.auto import tqdm

    jobs = [(fold, seed) for fold in chosen for seed in recipe.seeds]
    bar = tqdm(jobs, desc=f"{recipe.model.name}: folds × seeds", unit="fit", disable=not progress, dynamic_ncols=True)
    training_started = time.perf_counter()
    for fold, seed in bar:
        bar.set_postfix_str(f"fold {fold.name} seed {seed}")
        name = f"{fold.name}/seed-{seed}"
        if (fold_dir(out, fold.name, seed) / "done.json").exists():
            result.skipped.append(name)
            continue
        train_fold(context, fold, seed)
        result.trained.append(name)
    bar.close()
    result.seconds["training"] = time.perf_counter() - training_started
    result.predictions = pool_predictions(out, context.plan, recipe.seeds)
    if report and result.predictions is not None:
        result.report = write_run_report(out)
    remove_stale_temporaries(
        out, skip=[Path(recipe.features.get("store") or out / "features")]
    )  # killed writes' leftovers
    result.seconds["total"] = time.perf_counter() - started
    # a re-run that only re-reads finished folds keeps the timing of the real one, unless that one
    # was killed before recording it (e.g. while writing its report): then this re-run completes the record
    if result.trained or not _run_recorded_finished(out):
        _update_run_json(out, finished=_now(), seconds=result.seconds)
    return result


# ---------------------------------------------------------------------------------------------
# The run folder
# ---------------------------------------------------------------------------------------------


def prepare_run(recipe: Recipe, out: Path, progress: bool = True, log: Callable[[str], None] = print) -> RunContext:
    """Create or reopen the run folder, read the corpus, plan the folds and build the features."""
    from emomix.cache.store import FeatureStore
    from emomix.data.protocols import FoldPlan, make_fold_plan
    from emomix.features import build_features

    resolved = recipe.to_dict()
    config_path = out / "config.yaml"
    if config_path.exists():
        previous = yaml.safe_load(config_path.read_text())
        # settings added to emomix since that run take their defaults, as they did then; an older
        # recipe this version no longer reads is compared as written
        with contextlib.suppress(ConfigError):
            previous = Recipe.from_dict(previous, source=str(config_path)).to_dict()
        if _comparable(previous) != _comparable(resolved):
            if not _attempt_left_only_config(out):
                raise ConfigError(
                    f"{out} holds a run of a different recipe (see {config_path}); resume it with the same "
                    "recipe, or choose another --out"
                )
            log(
                f"note: {config_path} was left by an attempt that stopped before its corpus was read (no fold plan, "
                "no finished fold); replacing it with this recipe"
            )

    # the corpus is read and the plan built before anything is written, so a failed attempt
    # (a missing corpus, a bad protocol) leaves no run folder that would block its retry
    corpus, corpus_root = load_corpus(recipe, log)
    table = corpus.table.reset_index(drop=True)
    labelled = table[table["label"].notna()]
    classes = _classes(corpus, labelled)
    plan = make_fold_plan(labelled, recipe.protocol.name, **dict(recipe.protocol.params))
    plan_path = out / "folds.json"
    if plan_path.exists():
        previous_plan = FoldPlan.load(plan_path)
        if previous_plan.fingerprint() != plan.fingerprint():
            raise ConfigError(
                f"{plan_path} holds a different fold plan ({previous_plan.fingerprint()}) than this "
                f"corpus and protocol give ({plan.fingerprint()}); the corpus changed — use another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    if not plan_path.exists():
        plan.save(plan_path)
    write_text(config_path, yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))

    store_path = Path(recipe.features.get("store") or out / "features")
    encoders = ", ".join(
        f"{m}={spec.encoder}" + (f" (with {c.turns} preceding turn(s))" if (c := spec.dialogue_context()) else "")
        for m, spec in recipe.feature_specs().items()
    )
    log(f"features: {encoders} → store {store_path}")
    training_table = labelled
    augment = recipe.training.augment_config()
    if augment is not None:
        if model_info(recipe.model.name).batch_kind == "dialogue":
            raise ConfigError(
                f"training.augment adds utterance copies; {recipe.model.name} trains on whole dialogues — "
                "drop the augment block"
            )
        if "audio" not in recipe.feature_specs():
            raise ConfigError("training.augment renders audio copies; the recipe has no audio features")
        log(f"augmentation: {', '.join(augment.kinds)} × {augment.copies} for classes {augment.classes}")
        training_table = augment_table(labelled, augment, store_path / "augmented", base_dir=corpus_root)
    with FeatureStore(store_path) as store:
        feature_set = build_features(
            training_table,
            recipe.feature_specs(),
            store,
            base_dir=corpus_root,
            edges=recipe.edges,
            progress=progress,
            fit_ids=list(labelled["utt_id"]),
            confounding=plan.confounding,
        )
    for warning in feature_set.warnings:  # e.g. per-speaker statistics replaced by global ones (confounding)
        log(f"warning: {warning}")
    for modality, normaliser in feature_set.normalisers.items():
        write_text(out / f"normaliser-{modality}.json", json.dumps(normaliser.state_dict()))
    write_json(out / "data.json", data_summary(corpus, labelled, classes, plan, feature_set))
    check_feature_failures(feature_set.failures, training_table, log)
    run_json = out / "run.json"
    info = json.loads(run_json.read_text()) if run_json.exists() else {"started": _now()}
    info.update(environment_info())
    # the corpus by its own name (a manifest's folder, not "manifest"), its reader and label scheme
    info.update(
        {
            "format": RUN_FORMAT,
            "name": recipe.name,
            "model": recipe.model.name,
            "corpus": str(corpus.name),
            "reader": recipe.corpus.reader,
            "scheme": getattr(getattr(corpus, "scheme", None), "name", None),
            "corpus_root": str(corpus_root),
            "protocol": recipe.protocol.name,
            "seeds": list(recipe.seeds),
            "classes": classes,
            "fold_plan": plan.fingerprint(),
            "store": str(store_path),
            "input_dims": feature_set.input_dims,
            "speaker_confounding": plan.confounding,
            "speaker_statistics": feature_set.statistics,
            "feature_warnings": list(feature_set.warnings),
        }
    )
    write_json(run_json, info)
    return RunContext(
        recipe=recipe,
        out=out,
        table=training_table.reset_index(drop=True),
        classes=classes,
        plan=plan,
        feature_set=feature_set,
        corpus_root=corpus_root,
        progress=progress,
    )


def load_corpus(recipe: Recipe, log: Callable[[str], None] = print) -> tuple[Any, Path]:
    """Read the recipe's corpus (writing the synthetic corpus first when the recipe asks for it)."""
    from emomix.data.readers import read_corpus
    from emomix.train.recipe import DATASETS_PLACEHOLDER, datasets_dir, missing_datasets_message

    config = recipe.corpus
    if DATASETS_PLACEHOLDER in str(config.root):  # no datasets folder was found when the recipe was read
        raise MissingDataError(missing_datasets_message())
    root = Path(config.root)
    if config.reader == "synthetic" and config.generate is not None:
        from emomix.data.synthetic import SyntheticConfig, write_synthetic_corpus

        log(f"synthetic corpus → {root}")
        write_synthetic_corpus(root, SyntheticConfig.from_overrides(**dict(config.generate)))
    if not root.exists():
        datasets = datasets_dir()
        if datasets is not None and root.resolve().is_relative_to(datasets):
            raise MissingDataError(
                f"corpus folder {root} does not exist (reader {config.reader!r}, datasets folder "
                f"{datasets}); put the corpus there, or set EMOMIX_DATASETS to the folder that holds "
                f"{root.name}/"
            )
        raise MissingDataError(
            f"corpus folder {root} does not exist (reader {config.reader!r}); fix corpus.root in the "
            "recipe or pass --set corpus.root=<folder>"
        )
    corpus = read_corpus(config.reader, root, scheme=config.scheme, **dict(config.options))
    if corpus.table.empty:
        raise MissingDataError(f"the corpus at {root} has no utterances under scheme {config.scheme!r}")
    return corpus, root


def fold_dir(out: Path, fold: str, seed: int) -> Path:
    return out / "folds" / fold / f"seed-{seed}"


# ---------------------------------------------------------------------------------------------
# One fold, one seed
# ---------------------------------------------------------------------------------------------


def train_fold(context: RunContext, fold: Any, seed: int) -> pd.DataFrame:
    """Train one fold with one seed (resuming from ``last.ckpt``), predict its test part, write
    ``predictions.parquet``, ``model.json`` and, last, ``done.json``."""
    recipe = context.recipe
    directory = fold_dir(context.out, fold.name, seed)
    directory.mkdir(parents=True, exist_ok=True)
    parts = {
        "train": training_ids_with_copies(fold.train, list(context.table["utt_id"])),
        "validation": fold.validation,
        "test": fold.test,
    }
    started = time.perf_counter()
    if model_info(recipe.model.name).late_fusion_of:  # separately trained parts, fused per class
        task, datamodule, epochs = train_late_fusion(
            context, recipe.model.name, parts, seed, directory, fit_part=fit_model
        )
    else:
        task, datamodule, epochs = fit_model(context, recipe.model.name, parts, seed, directory)
    ids, probs, _, aux = predict_rows(task, datamodule.test_dataloader())
    frame = predictions_frame(ids, probs, aux, context.classes, context.table, fold.name, seed)
    write_parquet(directory / "predictions.parquet", frame)
    write_json(directory / "model.json", model_card(context, recipe.model.name, task.model, epochs, fold.name, seed))
    for leftover in directory.glob("*.ckpt"):
        leftover.unlink()
    remove_stale_temporaries(directory)
    write_json(
        directory / "done.json",
        {
            "fold": fold.name,
            "seed": seed,
            "finished": _now(),
            "seconds": round(time.perf_counter() - started, 2),
            "test_rows": len(frame),
        },
    )
    return frame


def fit_model(
    context: RunContext,
    model_name: str,
    parts: Mapping[str, Sequence[str]],
    seed: int,
    directory: Path,
    weights_name: str = "model.safetensors",
) -> tuple[Any, Any, dict[str, Any]]:
    """Build and train one registered model on a fold's parts with Lightning; return the task
    (best weights loaded), its data module and the epoch summary."""
    recipe, feature_set = context.recipe, context.feature_set
    training = recipe.training
    info = model_info(model_name)
    L.seed_everything(seed, workers=True, verbose=False)
    overrides = dict(recipe.model.config)
    if model_name != recipe.model.name:  # a composite's part: only the keys its config knows
        known = {f.name for f in dataclasses.fields(info.cls.config_class)}
        overrides = {k: v for k, v in overrides.items() if k in known}
    modalities = tuple(overrides.get("modalities") or info.modalities)
    dims = {k: v for k, v in feature_set.input_dims.items() if k.split("_")[0] in modalities}
    if info.batch_kind == "dialogue" and training.class_balance == "sampler":
        raise ConfigError(
            f"{model_name} trains on whole dialogues; class_balance 'sampler' does not apply — use 'weights'"
        )
    model = create_model(model_name, overrides, dims, len(context.classes))
    datamodule = EmotionDataModule(
        feature_set,
        context.table,
        context.classes,
        parts,
        batch_kind=info.batch_kind,
        batch_size=training.batch_size,
        modalities=modalities,
        class_balance=training.class_balance,
        seed=seed,
        num_workers=training.num_workers,
        dialogue_pooling=getattr(model, "dialogue_pooling", None) or "mean",
    )
    if training.class_balance == "weights":
        model.set_class_weights(
            inverse_frequency_alpha(torch.as_tensor(datamodule.train_labels()), len(context.classes)).float()
        )
    fine_tune = {
        m: (encoder, boundary, [k for k in feature_set.specs[m].layers])
        for m, (encoder, boundary) in feature_set.boundary.items()
        if m in modalities
    }
    task = EmotionTask(model, recipe.optimiser, monitor=training.monitor, fine_tune=fine_tune)
    if training.standardise:
        if info.batch_kind == "dialogue" or fine_tune:
            raise ConfigError(
                "training.standardise applies to frozen utterance-level features; drop it for "
                f"{model_name}" + (" (fine-tuned encoder layers)" if fine_tune else " (dialogue model)")
            )
        for modality in modalities:
            mean, std = training_statistics(feature_set.features, datamodule.parts["train"], modality)
            task.set_standardisation(modality, mean, std)
            spec = feature_set.specs.get(modality)
            if spec is not None and spec.utterance is not None:  # the declared utterance vector too
                mean, std = training_statistics(feature_set.features, datamodule.parts["train"], modality, "pooled")
                task.set_standardisation(f"{modality}_pooled", mean, std)
    has_validation = bool(datamodule.parts.get("validation"))
    weights_path = directory / weights_name
    stem = weights_name.split(".")[0]
    if getattr(model, "fits_by_solver", False):  # a convex model (the linear SVM): solved, no epochs
        return task, datamodule, solve_fold(task, datamodule, weights_path, directory, stem, training.monitor)
    best = BestWeights(weights_path, monitor=training.monitor if has_validation else "none")
    callbacks: list[Any] = [
        best,
        HistoryWriter(directory / f"history{'' if stem == 'model' else '-' + stem}.csv"),
        ModelCheckpoint(
            dirpath=directory, filename=f"last-{stem}", save_top_k=1, monitor=None, enable_version_counter=False
        ),
    ]
    if has_validation and training.patience:
        mode = "min" if training.monitor == "val_loss" else "max"
        callbacks.append(
            EarlyStopping(monitor=training.monitor, mode=mode, patience=int(training.patience), check_finite=False)
        )
    trainer = L.Trainer(
        max_epochs=training.epochs,
        accelerator=training.accelerator,
        devices=training.devices,
        num_nodes=training.num_nodes,
        strategy=training.strategy,
        precision=training.precision,
        accumulate_grad_batches=training.accumulate_grad_batches,
        gradient_clip_val=training.grad_clip,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=context.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(directory),
        limit_val_batches=None if has_validation else 0,
        plugins=[AtomicCheckpointIO()],
    )
    last = directory / f"last-{stem}.ckpt"
    usable_checkpoint(last)  # deletes a truncated one: the fold then starts over instead of failing
    trainer.fit(
        task,
        datamodule=datamodule,
        ckpt_path=str(last) if last.exists() else None,
        weights_only=True if last.exists() else None,
    )
    if not weights_path.exists():
        raise ConfigError(f"training of {model_name} ended without a saved epoch (max_epochs={training.epochs})")
    task.load_trainable_state(load_weights(weights_path))
    summary = {
        "epochs_run": int(trainer.current_epoch),
        "best_epoch": best.best_epoch,
        "best_score": best.best_score,
        "monitor": training.monitor if has_validation else None,
        "stopped_early": bool(trainer.current_epoch < training.epochs),
    }
    return task, datamodule, summary


def solve_fold(
    task: EmotionTask, datamodule: EmotionDataModule, weights_path: Path, directory: Path, stem: str, monitor: str
) -> dict[str, Any]:
    """Fit a solved model (``fits_by_solver``) on the fold's training part through the task's
    input path (standardisation included), save its weights and a one-row history; the summary
    has the shape of an epoch-trained one (one "epoch": the solve)."""
    from emomix.train.fit import predict, solve_model

    started = time.perf_counter()
    solved = solve_model(task.model, task.net, datamodule.loader_for(datamodule.parts["train"]))
    save_weights(task.trainable_state(), weights_path)
    row: dict[str, Any] = {"epoch": 1, **solved, "seconds": round(time.perf_counter() - started, 3)}
    score = None
    if datamodule.parts.get("validation"):
        probs, labels = predict(task.net, list(datamodule.loader_for(datamodule.parts["validation"])))
        row["val_ua"] = score = unweighted_accuracy(labels, probs.argmax(axis=1))
    history = directory / f"history{'' if stem == 'model' else '-' + stem}.csv"
    history.unlink(missing_ok=True)
    append_csv_row(history, row)
    return {
        "epochs_run": 1,
        "best_epoch": 1,
        "best_score": score,
        "monitor": monitor if score is not None else None,
        "stopped_early": False,
        "solver": solved,
    }


def training_statistics(
    features: Mapping[str, Any], ids: Sequence[str], modality: str, field_name: str = "states"
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and SD of every dimension over all frames (or ``pooled`` vectors) of the training
    utterances (SD floored at 1e-6, so a constant dimension maps to 0)."""
    arrays = [np.asarray(features[u][modality][field_name], dtype=np.float64) for u in ids]
    frames = np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrays])
    return frames.mean(axis=0).astype(np.float32), np.maximum(frames.std(axis=0), 1e-6).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Predictions, pooling, report
# ---------------------------------------------------------------------------------------------


def predictions_frame(
    ids: Sequence[str],
    probs: np.ndarray,
    aux: Mapping[str, np.ndarray],
    classes: Sequence[str],
    table: pd.DataFrame,
    fold: str,
    seed: int,
) -> pd.DataFrame:
    """Rows in the predictions schema of docs/training.md."""
    meta = table.set_index("utt_id")
    rows = pd.DataFrame({"utt_id": list(ids), "fold": fold, "seed": int(seed)})
    labels = meta.reindex(rows["utt_id"])["label"]
    rows["label"] = [None if pd.isna(v) else str(v) for v in labels]
    rows["pred"] = [classes[i] for i in np.asarray(probs).argmax(axis=1)]
    for index, name in enumerate(classes):
        rows[f"prob_{name}"] = np.asarray(probs[:, index], dtype=np.float64)
    for column in ("speaker", "session", "dialogue_id"):
        values = meta.reindex(rows["utt_id"])[column] if column in meta.columns else [None] * len(rows)
        rows[column] = [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values]
    for name, values in sorted(aux.items()):
        rows = pd.concat([rows, aux_columns(name, values)], axis=1)
    return rows


#: Per-row vectors wider than this (hidden representations) are not written to predictions.
MAX_AUX_WIDTH = 16


def aux_columns(name: str, values: np.ndarray) -> pd.DataFrame:
    """Per-row scalars → ``aux_<name>``; per-row vectors (routing, gate and pair weights) →
    ``aux_<name>_<j>``. Per-expert logits, embeddings and wider tensors are not stored."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        return pd.DataFrame({f"aux_{name}": values})
    if (
        values.ndim == 2
        and values.shape[1] <= MAX_AUX_WIDTH
        and not name.startswith(("expert_logits", "embedding", "h_"))
    ):
        return pd.DataFrame({f"aux_{name}_{j}": values[:, j] for j in range(values.shape[1])})
    return pd.DataFrame(index=range(len(values)))


def pool_predictions(out: Path, plan: Any, seeds: Sequence[int]) -> pd.DataFrame | None:
    """Concatenate every finished fold/seed's predictions into ``predictions.parquet``."""
    frames = []
    for fold in plan.folds:
        for seed in seeds:
            path = fold_dir(out, fold.name, seed) / "predictions.parquet"
            if (path.parent / "done.json").exists() and path.exists():
                frames.append(pd.read_parquet(path))
    if not frames:
        return None
    pooled = pd.concat(frames, ignore_index=True)
    write_parquet(out / "predictions.parquet", pooled)
    return pooled


def write_run_report(out: Path) -> Path | None:
    """The report through :mod:`emomix.evaluate` (None when that package is not available)."""
    try:
        from emomix.evaluate.report import write_report
    except ImportError:
        return None
    return write_report(out)


def model_card(
    context: RunContext, name: str, model: Any, summary: Mapping[str, Any], fold: str, seed: int
) -> dict[str, Any]:
    """``model.json``: everything needed to rebuild the model and its inputs for inference."""
    import emomix

    feature_set = context.feature_set
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else {}
    return {
        "format": "emomix.model/1",
        "model": name,
        "config": to_jsonable(config),
        "classes": list(context.classes),
        "input_dims": dict(feature_set.input_dims),
        "batch_kind": getattr(model, "batch_kind", "utterance"),
        "features": {m: spec.to_dict() for m, spec in feature_set.specs.items()},
        "edges": context.recipe.edges,
        "frame_rates": feature_set.frame_rates,
        "normalisers": sorted(feature_set.normalisers),
        "fold": fold,
        "seed": seed,
        "corpus": context.recipe.corpus.reader,
        "protocol": context.recipe.protocol.name,
        "training": to_jsonable(dict(summary)),
        "emomix_version": emomix.__version__,
    }


def check_feature_failures(failures: list[dict[str, str]], table: pd.DataFrame, log: Callable[[str], None]) -> None:
    """Say how many utterances were left out because their features failed (they are listed in
    ``data.json`` and the report). A corpus utterance that cannot be read is left out with a
    warning; an augmented copy is the run's own file, so a failed copy stops the run: training
    on fewer copies than the recipe asks would be a silently different experiment."""
    if not failures:
        return
    copies = [f for f in failures if is_augmented(f["utt_id"])]
    if copies:
        rendered = int(table["utt_id"].map(is_augmented).sum())
        first = copies[0]
        raise MissingDataError(
            f"{len(copies)} of {rendered} augmented copies have no features (first: {first['utt_id']}: "
            f"{first.get('message') or first.get('reason')}); the run stops rather than train on fewer copies "
            "than training.augment asks — data.json lists them all"
        )
    first = failures[0]
    log(
        f"warning: {len(failures)} utterance(s) left out because their features failed (first: {first['utt_id']}: "
        f"{first.get('message') or first.get('reason')}); data.json and the report list them"
    )


def data_summary(
    corpus: Any, table: pd.DataFrame, classes: Sequence[str], plan: Any, feature_set: Any
) -> dict[str, Any]:
    """``data.json``: utterance counts per class, per fold part, extraction summaries and failures."""
    counts = {str(k): int(v) for k, v in table["label"].value_counts().reindex(classes, fill_value=0).items()}
    folds = {}
    label_of = dict(zip(table["utt_id"], table["label"]))
    for fold in plan.folds:
        folds[fold.name] = {
            part: {"total": len(ids), **{c: sum(1 for u in ids if label_of.get(u) == c) for c in classes}}
            for part, ids in (("train", fold.train), ("validation", fold.validation), ("test", fold.test))
        }
    report = getattr(corpus, "report", None)
    return {
        "corpus": corpus.name,
        "utterances": int(len(table)),
        "speakers": int(table["speaker"].nunique()) if "speaker" in table.columns else None,
        "classes": counts,
        "folds": folds,
        "read_report": report.to_dict() if report is not None and hasattr(report, "to_dict") else None,
        "extraction": {m: {k: v for k, v in s.items() if k not in ("keys",)} for m, s in feature_set.summaries.items()},
        "feature_failures": feature_set.failures,
    }


def environment_info() -> dict[str, Any]:
    """Versions and machine facts recorded in ``run.json``."""
    import lightning

    import emomix

    return {
        "emomix_version": emomix.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "command": " ".join(sys.argv),
    }


# ---------------------------------------------------------------------------------------------
# Plain helpers
# ---------------------------------------------------------------------------------------------


def write_text(path: Path, text: str) -> Path:
    """Atomic text write (see :mod:`emomix.atomic`)."""
    from emomix.atomic import write_text_atomic

    return write_text_atomic(path, text)


def write_json(path: Path, data: Any) -> Path:
    return write_text(path, json.dumps(to_jsonable(data), indent=1, ensure_ascii=False) + "\n")


def write_parquet(path: Path, frame: pd.DataFrame) -> Path:
    return write_parquet_atomic(path, frame)


def _update_run_json(out: Path, **values: Any) -> None:
    path = out / "run.json"
    info = json.loads(path.read_text()) if path.exists() else {}
    info.update(values)
    write_json(path, info)


def _run_recorded_finished(out: Path) -> bool:
    """True when ``run.json`` already has its ``finished`` time (the run completed once)."""
    path = out / "run.json"
    return path.exists() and "finished" in json.loads(path.read_text())


def _choose_folds(plan: Any, names: Sequence[str] | None) -> list[Any]:
    if not names:
        return list(plan.folds)
    known = {f.name: f for f in plan.folds}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown fold(s) {unknown}; this plan has {', '.join(known)}")
    return [known[n] for n in names]


def _classes(corpus: Any, table: pd.DataFrame) -> list[str]:
    scheme = getattr(corpus, "scheme", None)
    classes = list(getattr(scheme, "classes", []) or [])
    if not classes:
        classes = sorted(str(c) for c in table["label"].dropna().unique())
    if len(classes) < 2:
        raise MissingDataError(f"the corpus has {len(classes)} class(es) after the label scheme; need at least 2")
    return classes


def _apply_threads(recipe: Recipe) -> None:
    if recipe.training.threads:
        torch.set_num_threads(int(recipe.training.threads))


def _attempt_left_only_config(out: Path) -> bool:
    """True when ``out`` holds a ``config.yaml`` but no fold plan and no finished fold: what an
    attempt that failed before reading its corpus left (earlier versions wrote the config
    first), which must not block the retry."""
    return not (out / "folds.json").exists() and not any(out.glob("folds/*/seed-*/done.json"))


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a resolved recipe that must not change between a run and its resumption
    (the seed list may grow: new seeds just add fold/seed folders)."""
    return {k: v for k, v in dict(config).items() if k not in ("seeds", "description")}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def remove_run(out: Path) -> None:
    """Delete a run folder (``emomix train --restart``)."""
    if out.exists():
        shutil.rmtree(out)
