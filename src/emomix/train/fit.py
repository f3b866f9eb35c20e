"""A small in-memory training loop, batch builders and prediction, for tests and quick experiments.

Everything here works on features already in memory (as read from the feature store):

* :func:`make_batches` turns ``{utt_id: {modality: {field: array}}}`` plus the utterance table
  into :class:`~emomix.models.inputs.Batch` objects for utterance-level models;
  :func:`make_dialogue_batches` pools each utterance into one vector per modality and groups
  them by dialogue into :class:`~emomix.models.inputs.DialogueBatch` objects (MiSTER-E).
* :func:`fit` trains any :class:`~emomix.models.base.EmotionModel` with AdamW on the model's own
  ``loss``, with gradient clipping, inverse-frequency class weights from the training batches
  and early stopping on validation UA; it returns the best weights and a per-epoch history.
* :func:`predict` returns class probabilities (and, if asked, the per-row ``aux`` tensors such
  as routing weights) with the true labels, flattened over dialogues for dialogue models.

The Lightning trainer reuses ``model.loss`` and the batch builders; this loop stays deliberately
plain (CPU, no schedule, no checkpoint files) so that a test reads it in one go.

Alignment edges of the token–frame graph travel in the features dict under the reserved key
:data:`~emomix.constants.EDGES_KEY` (see :mod:`emomix.models.collate`, whose helpers the batch
builders share with the Lightning data module and the predictor).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import numpy as np
import pandas as pd
import torch

from emomix.constants import EDGES_KEY, IGNORE_INDEX, MODALITIES
from emomix.errors import ConfigError, MissingDataError
from emomix.metrics_core import unweighted_accuracy, weighted_f1
from emomix.models.base import EmotionModel
from emomix.models.collate import (
    EDGE_FIELD,
    POOLINGS,
    Features,
    clip_edges,
    flat_logits,
    flat_rows,
    label_indices,
    utterance_vector,
)
from emomix.models.inputs import Batch, DialogueBatch, modality_input, pad_sequences
from emomix.models.losses import inverse_frequency_alpha

# --------------------------------------------------------------------------------------------
# Batch builders
# --------------------------------------------------------------------------------------------


def make_batches(
    features: Features,
    table: pd.DataFrame,
    scheme: Any,
    batch_size: int = 16,
    seed: int = 0,
    shuffle: bool = True,
    modalities: Sequence[str] | None = None,
    frame_rates: Mapping[str, float | None] | None = None,
    layers: Mapping[str, Sequence[int]] | None = None,
    max_length: Mapping[str, int] | int | None = None,
) -> list[Batch]:
    """Utterance batches for the rows of ``table`` (in table order, or shuffled with ``seed``).

    ``scheme``: a :class:`~emomix.data.labels.LabelScheme` or the class names in index order;
    a row without a label gets -100. ``modalities``: which entries of ``features`` to use
    (default: every modality all utterances have). ``frame_rates``: frames per second per
    modality (recorded in :class:`ModalityInput`); ``layers``: per modality, the hidden layers
    stacked into ``layer_states`` (e.g. ``{"text": [3, 4, 5, 6]}``); ``max_length``: frames or
    tokens kept per modality (longer sequences are cut, and edges to cut positions dropped).
    Alignment edges (see :data:`EDGES_KEY`) become ``Batch.edges`` when every utterance has them.
    """
    classes = _classes(scheme)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    ids = list(table["utt_id"])
    chosen = _choose_modalities(features, ids, modalities)
    labels = label_indices(table, classes)
    order = _order(len(ids), shuffle, seed)
    frame_rates = dict(frame_rates or {})
    layers = dict(layers or {})
    with_edges = bool(ids) and all(EDGES_KEY in features[u] for u in ids)
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch_ids = [ids[r] for r in rows]
        inputs = {}
        for modality in chosen:
            limit = max_length.get(modality) if isinstance(max_length, Mapping) else max_length
            inputs[modality] = modality_input(
                [features[u][modality] for u in batch_ids],
                frame_rate=frame_rates.get(modality),
                max_length=limit,
                layers=layers.get(modality),
            )
        edges = None
        if with_edges and "text" in inputs and "audio" in inputs:
            edges = [
                clip_edges(features[u][EDGES_KEY][EDGE_FIELD], inputs["text"].mask[i], inputs["audio"].mask[i])
                for i, u in enumerate(batch_ids)
            ]
        batches.append(
            Batch(inputs=inputs, labels=torch.as_tensor(labels[rows], dtype=torch.long), edges=edges, utt_ids=batch_ids)
        )
    return batches


def make_dialogue_batches(
    features: Features,
    table: pd.DataFrame,
    scheme: Any,
    batch_size: int = 8,
    seed: int = 0,
    shuffle: bool = True,
    modalities: Sequence[str] | None = None,
    pooling: str = "mean",
) -> list[DialogueBatch]:
    """Dialogue batches: each utterance pooled to one vector per modality, dialogues ordered by turn.

    ``pooling``: ``"mean"`` (mean of the valid ``states`` frames/tokens), ``"mean_std"`` (mean
    and standard deviation concatenated, 2D: the spread keeps some trace of short events a mean
    washes out) or ``"pooled"`` (the stored utterance-level ``pooled`` vector, e.g. openSMILE
    functionals). Dialogues are taken from ``dialogue_id`` and ordered by ``turn``; only the
    table's rows are used, so a dialogue split across folds keeps just its rows of this part.
    Labels of padded or unlabelled positions are -100.
    """
    classes = _classes(scheme)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if "dialogue_id" not in table.columns or table["dialogue_id"].isna().any():
        missing = (
            table.loc[table["dialogue_id"].isna(), "utt_id"].head(3).tolist() if "dialogue_id" in table.columns else []
        )
        raise ConfigError(
            "dialogue batches need a dialogue_id for every utterance"
            + (f" (missing for e.g. {', '.join(missing)})" if missing else "")
            + "; this corpus has no conversations: use an utterance-level model"
        )
    ids = list(table["utt_id"])
    chosen = _choose_modalities(features, ids, modalities)
    labels = dict(zip(ids, label_indices(table, classes)))
    ordered = table.reset_index(drop=True)
    ordered = ordered.assign(_turn=pd.to_numeric(ordered["turn"], errors="coerce") if "turn" in ordered.columns else 0)
    ordered = ordered.sort_values(["dialogue_id", "_turn", "utt_id"], kind="stable")
    dialogues = [list(group["utt_id"]) for _, group in ordered.groupby("dialogue_id", sort=True)]
    vectors = {u: {m: utterance_vector(features[u][m], pooling, f"{u}/{m}") for m in chosen} for u in ids}
    order = _order(len(dialogues), shuffle, seed)
    batches = []
    for start in range(0, len(order), batch_size):
        group = [dialogues[i] for i in order[start : start + batch_size]]
        inputs = {}
        mask = None
        for modality in chosen:
            padded, mask = pad_sequences([np.stack([vectors[u][modality] for u in utts]) for utts in group])
            inputs[modality] = padded
        label_rows, _ = pad_sequences([np.array([labels[u] for u in utts]) for utts in group], dtype=torch.long)
        assert mask is not None
        label_rows[~mask] = IGNORE_INDEX
        batches.append(DialogueBatch(inputs=inputs, mask=mask, labels=label_rows, utt_ids=[list(u) for u in group]))
    return batches


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    """Outcome of :func:`fit`.

    ``best_state``: a copy of the model's ``state_dict`` at the best epoch (highest validation UA;
    the last epoch without validation data), already loaded back into the model; ``history``: one
    dict per epoch with ``epoch``, ``loss`` (mean training loss), the mean of every named loss part,
    ``val_ua``, ``val_wa`` and ``val_weighted_f1`` (when validating) and ``seconds``; ``best_epoch`` (1-based) and
    ``best_val_ua``; ``stopped_early`` when patience ran out; ``class_weights`` used (or None).
    """

    best_state: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_ua: float | None = None
    stopped_early: bool = False
    class_weights: list[float] | None = None


def fit(
    model: EmotionModel[Any],
    train_batches: Sequence[Batch | DialogueBatch],
    val_batches: Sequence[Batch | DialogueBatch] | None = None,
    epochs: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
    class_weights: str | torch.Tensor | None = "inverse_frequency",
    patience: int | None = 5,
    grad_clip: float | None = 1.0,
) -> FitResult:
    """Train ``model`` on ``train_batches`` with AdamW and its own ``loss``; return a :class:`FitResult`.

    Every epoch visits the batches in an order drawn from ``seed``. ``class_weights``:
    ``"inverse_frequency"`` (computed from the training labels, ignoring -100), a ``C`` tensor, or
    None (uniform); given to ``model.set_class_weights`` when the model has it. With
    ``val_batches``, validation UA is measured after each epoch and training stops after
    ``patience`` epochs without improvement (None: never); the best epoch's weights are loaded
    back into the model. ``grad_clip``: max global gradient norm (None: no clipping).
    """
    if epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {epochs}")
    if not train_batches:
        raise ConfigError("fit needs at least one training batch")
    if any(b.labels is None for b in train_batches):
        raise ConfigError("every training batch needs labels")
    if val_batches and batch_labels(val_batches).size == 0:
        raise ConfigError(
            "the validation batches hold no labels; early stopping on validation UA needs them "
            "(pass val_batches=None to train without validation)"
        )
    num_classes = int(model.num_classes)
    weights = _resolve_class_weights(class_weights, train_batches, num_classes)
    if weights is not None and hasattr(model, "set_class_weights"):
        model.set_class_weights(weights)
    if getattr(model, "fits_by_solver", False):  # a convex model: solved, not trained by epochs
        started = time.perf_counter()
        solved = solve_model(model, model, train_batches)
        solve_record: dict[str, float] = {"epoch": 1, **{k: float(v) for k, v in solved.items()}}
        if val_batches:
            probs, labels = predict(model, val_batches)
            solve_record["val_ua"] = unweighted_accuracy(labels, probs.argmax(axis=1))
        solve_record["seconds"] = time.perf_counter() - started
        return FitResult(
            best_state=_copy_state(model),
            history=[solve_record],
            best_epoch=1,
            best_val_ua=solve_record.get("val_ua"),
            class_weights=None if weights is None else weights.tolist(),
        )
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ConfigError(f"{type(model).__name__} has no trainable parameters")
    optimiser = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))  # dropout draws follow the run's seed

    result = FitResult(best_state=_copy_state(model), class_weights=None if weights is None else weights.tolist())
    best_ua = -math.inf
    waited = 0
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        sums: dict[str, float] = {}
        order = torch.randperm(len(train_batches), generator=generator).tolist()
        for index in order:
            batch = train_batches[index]
            output = model(batch)
            total, parts = model.loss(output, batch.labels)
            if not torch.isfinite(total):
                raise ConfigError(
                    f"the training loss became {float(total)} at epoch {epoch}; lower the learning rate "
                    f"(lr={lr}) or check the features for extreme values"
                )
            optimiser.zero_grad(set_to_none=True)
            total.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
            optimiser.step()
            sums["loss"] = sums.get("loss", 0.0) + float(total.detach())
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + float(value)
        record: dict[str, float] = {"epoch": epoch, **{k: v / len(order) for k, v in sums.items()}}
        if val_batches:
            probs, labels = predict(model, val_batches)
            record["val_ua"] = unweighted_accuracy(labels, probs.argmax(axis=1))
            record["val_wa"] = weighted_accuracy(labels, probs.argmax(axis=1))
            record["val_weighted_f1"] = weighted_f1(labels, probs.argmax(axis=1))
        record["seconds"] = time.perf_counter() - started
        result.history.append(record)
        score = record.get("val_ua", -epoch)  # without validation the latest epoch counts as best
        if not val_batches or score > best_ua:
            best_ua = score
            result.best_state = _copy_state(model)
            result.best_epoch = epoch
            result.best_val_ua = record.get("val_ua")
            waited = 0
        else:
            waited += 1
            if patience is not None and waited >= patience:
                result.stopped_early = True
                break
    model.load_state_dict(result.best_state)
    model.eval()
    return result


@overload
def predict(
    model: torch.nn.Module, batches: Sequence[Batch | DialogueBatch], with_aux: Literal[False] = False
) -> tuple[np.ndarray, np.ndarray]: ...


@overload
def predict(
    model: torch.nn.Module, batches: Sequence[Batch | DialogueBatch], with_aux: Literal[True]
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]: ...


@torch.no_grad()
def predict(
    model: torch.nn.Module, batches: Sequence[Batch | DialogueBatch], with_aux: bool = False
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Class probabilities ``N × C`` and labels ``N`` (-100 where unknown) over all batches, in eval mode.

    Dialogue batches are flattened over their real utterances (mask True), dialogue by dialogue.
    With ``with_aux`` a third value maps each per-row ``aux`` tensor of the model's output (first
    dimension B, or B × N for dialogues) to an ``N × ...`` array, e.g. ``route_audio`` or
    ``gate_weights``.
    """
    was_training = model.training
    model.eval()
    probs, labels = [], []
    aux: dict[str, list[np.ndarray]] = {}
    try:
        for batch in batches:
            output = model(batch)
            logits, truth = flat_logits(output.logits.float(), batch)
            probs.append(torch.softmax(logits, dim=-1).cpu().numpy())
            labels.append(truth.cpu().numpy().astype(np.int64))
            if with_aux:
                for name, value in output.aux.items():
                    if isinstance(value, torch.Tensor) and (picked := flat_rows(value, batch)) is not None:
                        aux.setdefault(name, []).append(picked.detach().float().cpu().numpy())
    finally:
        model.train(was_training)
    all_probs = np.concatenate(probs) if probs else np.zeros((0, 0), dtype=np.float32)
    all_labels = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    if not with_aux:
        return all_probs, all_labels
    count = len(all_labels)
    joined = {name: np.concatenate(parts) for name, parts in aux.items()}
    return all_probs, all_labels, {name: value for name, value in joined.items() if len(value) == count}


def solve_model(
    model: Any, forward: Callable[[Any], Any], batches: Iterable[Batch | DialogueBatch]
) -> dict[str, float]:
    """Fit a model that is solved rather than trained (``model.fits_by_solver``, e.g. the linear
    SVM): run ``forward`` (the model, or the :class:`~emomix.models.saved.TrainedModel` that
    standardises its inputs first) over every batch in eval mode, collect the input of
    ``model.solver_layer()`` and the labels of the labelled rows, and call ``model.solve``;
    returns what the solver reports (objective, iterations, converged)."""
    captured: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    handle = model.solver_layer().register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].detach()))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                if batch.labels is None:
                    raise ConfigError(
                        "every training batch needs labels; the training part holds unlabelled utterances"
                    )
                forward(batch)
                labels.append(batch.labels.reshape(-1))
    finally:
        handle.remove()
        model.train(was_training)
    if not captured:
        raise ConfigError(f"{type(model).__name__}: no training rows to solve on")
    features = torch.cat([c.reshape(-1, c.shape[-1]) for c in captured])
    targets = torch.cat(labels)
    keep = targets != IGNORE_INDEX
    result: dict[str, float] = model.solve(features[keep], targets[keep])
    return result


# --------------------------------------------------------------------------------------------
# Plain helpers
# --------------------------------------------------------------------------------------------


def weighted_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """WA: plain accuracy over the labelled rows (-100 ignored)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    keep = labels != IGNORE_INDEX
    return float(np.mean(predictions[keep] == labels[keep])) if keep.any() else float("nan")


def batch_labels(batches: Sequence[Batch | DialogueBatch]) -> np.ndarray:
    """Every known label of the batches, flattened (-100 dropped)."""
    values = [b.labels.reshape(-1) for b in batches if b.labels is not None]
    if not values:
        return np.zeros(0, dtype=np.int64)
    flat = torch.cat(values).cpu().numpy()
    return flat[flat != IGNORE_INDEX]


def _resolve_class_weights(
    class_weights: str | torch.Tensor | None, batches: Sequence[Batch | DialogueBatch], num_classes: int
) -> torch.Tensor | None:
    if class_weights is None:
        return None
    if isinstance(class_weights, str):
        if class_weights != "inverse_frequency":
            raise ConfigError(f"class_weights must be 'inverse_frequency', a tensor or None, got {class_weights!r}")
        return inverse_frequency_alpha(torch.as_tensor(batch_labels(batches)), num_classes).float()
    weights = torch.as_tensor(class_weights, dtype=torch.float32)
    if weights.shape != (num_classes,):
        raise ConfigError(f"class_weights has shape {tuple(weights.shape)}, expected ({num_classes},)")
    return weights


def _copy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _classes(scheme: Any) -> tuple[str, ...]:
    classes = getattr(scheme, "classes", scheme)
    if isinstance(classes, str) or not isinstance(classes, Sequence) or len(classes) < 2:
        raise ConfigError(f"scheme must be a LabelScheme or a list of at least two class names, got {scheme!r}")
    return tuple(str(c) for c in classes)


def _choose_modalities(features: Features, ids: Sequence[str], modalities: Sequence[str] | None) -> list[str]:
    if not ids:
        raise ConfigError("the table has no utterances to batch")
    missing_ids = [u for u in ids if u not in features]
    if missing_ids:
        raise MissingDataError(
            f"{len(missing_ids)} utterance(s) of the table have no features (e.g. "
            f"{', '.join(missing_ids[:3])}); extract them first or drop them from the table"
        )
    if modalities is None:
        common = set.intersection(*(set(features[u]) for u in ids)) - {EDGES_KEY}
        chosen = [m for m in MODALITIES if m in common]
        if not chosen:
            raise MissingDataError("no modality is present for every utterance of the table")
        return chosen
    for modality in modalities:
        if modality not in MODALITIES:
            raise ConfigError(f"unknown modality {modality!r}; choose from {', '.join(MODALITIES)}")
        lacking = [u for u in ids if modality not in features[u]]
        if lacking:
            raise MissingDataError(
                f"{len(lacking)} utterance(s) have no {modality} features (e.g. "
                f"{', '.join(lacking[:3])}); extract them or leave {modality} out"
            )
    return list(modalities)


def _order(count: int, shuffle: bool, seed: int) -> np.ndarray:
    return np.random.default_rng(int(seed)).permutation(count) if shuffle else np.arange(count)
