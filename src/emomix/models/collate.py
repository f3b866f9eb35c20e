"""Batch collation: stored per-utterance features → the model's :class:`Batch` / :class:`DialogueBatch`.

Training (the Lightning data module, the in-memory loop) and inference (the predictor) build
their batches with the same collators, so a prediction sees exactly the batch evaluation saw.
Features are ``{utt_id: {modality: {field: array}}}`` as the feature store returns them;
token–frame alignment edges travel under :data:`~emomix.constants.EDGES_KEY`
(``features[utt_id]["edges"] = {"token_frame": 2 × E int array}``: row 0 the text token index,
row 1 the audio frame index).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from emomix.constants import EDGES_KEY, IGNORE_INDEX
from emomix.errors import LabelError, MissingDataError
from emomix.models.inputs import Batch, DialogueBatch, ModalityInput, modality_input, pad_sequences

__all__ = [
    "EDGE_FIELD",
    "POOLINGS",
    "DialogueCollator",
    "Features",
    "UtteranceCollator",
    "batch_rows",
    "clip_edges",
    "flat_logits",
    "label_indices",
    "utterance_vector",
]

#: The field of the edges entry that holds the token–frame pairs.
EDGE_FIELD = "token_frame"
#: How a dialogue model's utterance vector is pooled from its stored fields.
POOLINGS = ("mean", "mean_std", "pooled")

Features = Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]


class UtteranceCollator:
    """Builds a :class:`Batch` from positions into ``ids`` (picklable, for DataLoader workers)."""

    def __init__(
        self,
        features: Mapping[str, Any],
        ids: Sequence[str],
        labels: np.ndarray,
        modalities: Sequence[str],
        frame_rates: Mapping[str, float | None],
        layers: Mapping[str, Sequence[int]],
        max_length: Mapping[str, int | None],
    ):
        self.features, self.ids, self.labels = features, list(ids), labels
        self.modalities, self.frame_rates, self.layers, self.max_length = (
            list(modalities),
            dict(frame_rates),
            dict(layers),
            dict(max_length),
        )
        self.with_edges = bool(self.ids) and all(EDGES_KEY in features[u] for u in self.ids)

    def __call__(self, positions: Sequence[int]) -> Batch:
        batch_ids = [self.ids[p] for p in positions]
        inputs = {
            m: modality_input(
                [self.features[u][m] for u in batch_ids],
                frame_rate=self.frame_rates.get(m),
                max_length=self.max_length.get(m),
                layers=self.layers.get(m),
            )
            for m in self.modalities
        }
        edges = None
        if self.with_edges and "text" in inputs and "audio" in inputs:
            edges = [
                clip_edges(self.features[u][EDGES_KEY][EDGE_FIELD], inputs["text"].mask[i], inputs["audio"].mask[i])
                for i, u in enumerate(batch_ids)
            ]
        labels = torch.as_tensor(self.labels[list(positions)], dtype=torch.long)
        return Batch(inputs=inputs, labels=labels, edges=edges, utt_ids=batch_ids)


class DialogueCollator:
    """Builds a :class:`DialogueBatch` from positions into a list of dialogues (utterance id lists).

    ``vectors``: per utterance, its pooled vector per modality. ``token_modalities``: the
    modalities whose encoder's top layers fine-tune; their stored boundary states (``tokens``:
    features as the store returns them, ``states`` read) travel as the batch's ``tokens``, which
    :class:`~emomix.models.saved.TrainedModel` runs through the layers and pools, instead of vectors.
    """

    def __init__(
        self,
        vectors: Mapping[str, Mapping[str, np.ndarray]],
        dialogues: Sequence[Sequence[str]],
        labels: Mapping[str, int],
        modalities: Sequence[str],
        tokens: Features | None = None,
        token_modalities: Sequence[str] = (),
    ):
        self.vectors, self.dialogues, self.labels = vectors, [list(d) for d in dialogues], labels
        self.token_modalities = [m for m in modalities if m in token_modalities]
        if self.token_modalities and tokens is None:
            raise ValueError("DialogueCollator: token_modalities need the stored features (tokens=...)")
        self.tokens: Features = tokens or {}
        self.modalities = [m for m in modalities if m not in self.token_modalities]

    def __call__(self, positions: Sequence[int]) -> DialogueBatch:
        group = [self.dialogues[p] for p in positions]
        inputs = {
            modality: pad_sequences([np.stack([self.vectors[u][modality] for u in utts]) for utts in group])[0]
            for modality in self.modalities
        }
        rows, mask = pad_sequences([np.array([self.labels[u] for u in utts]) for utts in group], dtype=torch.long)
        rows[~mask] = IGNORE_INDEX
        flat = [u for utts in group for u in utts]  # mask's True positions, row-major
        tokens = {}
        for modality in self.token_modalities:
            states, token_mask = pad_sequences([self.tokens[u][modality]["states"] for u in flat])
            tokens[modality] = ModalityInput(states=states, mask=token_mask)
        return DialogueBatch(inputs=inputs, mask=mask, labels=rows, utt_ids=[list(u) for u in group], tokens=tokens)


def utterance_vector(arrays: Mapping[str, np.ndarray], pooling: str = "mean", name: str = "utterance") -> np.ndarray:
    """One float32 vector for an utterance's stored fields, as a dialogue model reads it.

    ``pooling``: ``"mean"`` of the ``states`` frames/tokens, ``"mean_std"`` (mean and standard
    deviation concatenated) or ``"pooled"`` (the stored utterance-level ``pooled`` vector).
    """
    if pooling == "pooled":
        if "pooled" not in arrays:
            raise MissingDataError(
                f"{name} has no 'pooled' field; extract with an encoder that stores one "
                "(e.g. opensmile level='both') or use pooling='mean'"
            )
        return np.asarray(arrays["pooled"], dtype=np.float32).reshape(-1)
    states = np.asarray(arrays["states"], dtype=np.float32)
    if states.ndim != 2 or states.shape[0] == 0:
        raise MissingDataError(f"{name} has states of shape {states.shape}; expected T × D with T ≥ 1")
    mean = states.mean(axis=0)
    if pooling == "mean":
        return mean
    return np.concatenate([mean, states.std(axis=0)]).astype(np.float32)


def label_indices(table: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """Class index per row of ``table`` (``label`` column), ``IGNORE_INDEX`` where unlabelled."""
    lookup = {c: i for i, c in enumerate(classes)}
    out = np.full(len(table), IGNORE_INDEX, dtype=np.int64)
    if "label" not in table.columns:
        return out
    for row, (utt_id, label) in enumerate(zip(table["utt_id"], table["label"])):
        if label is None or (isinstance(label, float) and math.isnan(label)):
            continue
        if label not in lookup:
            raise LabelError(
                f"utterance {utt_id!r} has label {label!r}, which is not a class of the scheme "
                f"{list(classes)}; apply the scheme to the table first (read_corpus(..., scheme=...))"
            )
        out[row] = lookup[label]
    return out


def clip_edges(edges: np.ndarray, text_mask: torch.Tensor, audio_mask: torch.Tensor) -> torch.Tensor:
    """An utterance's edges without those pointing at positions cut by ``max_length``."""
    edges_tensor = torch.as_tensor(np.asarray(edges, dtype=np.int64)).reshape(2, -1)
    keep = (edges_tensor[0] < int(text_mask.sum())) & (edges_tensor[1] < int(audio_mask.sum()))
    return edges_tensor[:, keep]


def batch_rows(batch: Batch | DialogueBatch) -> int:
    """The number of real utterances in a batch (a dialogue batch counts its unmasked turns)."""
    if isinstance(batch, DialogueBatch):
        return int(batch.mask.sum())
    return batch.batch_size


def flat_logits(logits: torch.Tensor, batch: Batch | DialogueBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``N × C`` and labels ``N`` over the batch's real utterances (-100 where unknown)."""
    labels = batch.labels if batch.labels is not None else torch.full(logits.shape[:-1], IGNORE_INDEX)
    if isinstance(batch, DialogueBatch):
        return logits[batch.mask], labels[batch.mask]
    return logits, labels


def flat_rows(value: torch.Tensor, batch: Batch | DialogueBatch) -> torch.Tensor | None:
    """A per-row tensor (first dimension B, or B × N for dialogues) over the batch's real
    utterances, like :func:`flat_logits`; None when ``value`` is not per row (e.g. a scalar)."""
    if isinstance(batch, DialogueBatch):
        mask = batch.mask
        return value[mask] if value.dim() >= 2 and tuple(value.shape[:2]) == tuple(mask.shape) else None
    return value if value.dim() >= 1 and value.shape[0] == batch.batch_size else None
