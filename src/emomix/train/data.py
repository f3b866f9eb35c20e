"""The Lightning DataModule over in-memory features (the collators live in :mod:`emomix.models.collate`).

Features come from :func:`emomix.features.build_features` (the store, post-processed); a fold's
parts are lists of utterance ids. Utterance-level models get :class:`~emomix.models.inputs.Batch`
objects built per mini-batch (so every epoch reshuffles utterances, not only batch order);
conversation models get :class:`~emomix.models.inputs.DialogueBatch` objects of whole dialogues
(each utterance pooled to one vector per modality).

A class-balanced sampler (``class_balance: sampler``) draws training utterances with probability
inversely proportional to their class's count; class weights (``weights``) are given to the
model's loss instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from emomix.constants import IGNORE_INDEX
from emomix.data.dialogue import dialogue_order
from emomix.errors import ConfigError
from emomix.models.collate import DialogueCollator, UtteranceCollator, label_indices, utterance_vector


class _Indices(Dataset):
    """Positions 0..n-1; the collate function turns a list of positions into a batch."""

    def __init__(self, count: int):
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, position: int) -> int:
        return position


def random_state() -> dict[str, Any]:
    """The global generators' states (torch, CUDA, NumPy, Python) in types a ``weights_only`` load accepts."""
    import random

    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`random_state` returned (parts that are missing are left alone)."""
    import random

    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def dialogues_of(table: pd.DataFrame, ids: Sequence[str]) -> list[list[str]]:
    """The ids grouped by ``dialogue_id`` and ordered by ``turn`` (dialogues sorted by id; the rule
    of :func:`emomix.data.dialogue.dialogue_order`)."""
    if "dialogue_id" not in table.columns:
        raise ConfigError(
            "a conversation model needs dialogue_id in the utterance table; this corpus has no "
            "conversations: choose an utterance-level model"
        )
    part = table[table["utt_id"].isin(set(ids))].copy()
    if part["dialogue_id"].isna().any():
        missing = part.loc[part["dialogue_id"].isna(), "utt_id"].head(3).tolist()
        raise ConfigError(
            f"a conversation model needs a dialogue_id for every utterance (missing for e.g. "
            f"{', '.join(missing)}); choose an utterance-level model"
        )
    ids_in_order = part["utt_id"].tolist()
    return [[ids_in_order[position] for position in members] for members in dialogue_order(part)]


class EmotionDataModule(L.LightningDataModule):
    """Train/validation/test loaders for one fold over in-memory features.

    ``parts`` maps ``"train"``, ``"validation"``, ``"test"`` to utterance ids (validation may be
    empty). ``batch_kind``: ``"utterance"`` or ``"dialogue"`` (``batch_size`` then counts
    dialogues). ``class_balance="sampler"`` draws training utterances class-balanced. In dialogue
    batches a modality with fine-tuned encoder layers (``feature_set.boundary``) travels as each
    utterance's boundary token states (``DialogueBatch.tokens``), not as a pooled vector.
    """

    def __init__(
        self,
        feature_set: Any,
        table: pd.DataFrame,
        classes: Sequence[str],
        parts: Mapping[str, Sequence[str]],
        batch_kind: str = "utterance",
        batch_size: int = 16,
        modalities: Sequence[str] | None = None,
        class_balance: str = "weights",
        seed: int = 0,
        num_workers: int = 0,
        dialogue_pooling: str | Mapping[str, str] = "mean",
    ):
        super().__init__()
        self.feature_set, self.table, self.classes = feature_set, table, list(classes)
        self.parts = {k: [u for u in v if u in feature_set.features] for k, v in parts.items()}
        if not self.parts.get("train"):
            raise ConfigError("the fold's training part has no utterance with features")
        self.batch_kind, self.batch_size, self.class_balance = batch_kind, int(batch_size), class_balance
        self.seed, self.num_workers, self.dialogue_pooling = int(seed), int(num_workers), dialogue_pooling
        self.modalities = list(modalities or feature_set.specs)
        #: a dialogue batch's modalities whose encoder layers fine-tune: they travel as token states
        self.token_modalities = [m for m in self.modalities if m in (getattr(feature_set, "boundary", None) or {})]
        labels = label_indices(table[["utt_id", "label"]], tuple(self.classes))
        self.label_of = dict(zip(table["utt_id"], labels))
        self._vectors: dict[str, dict[str, np.ndarray]] | None = None
        self._train_generator: torch.Generator | None = None
        self._resume_state: dict[str, Any] | None = None

    # -- what the trainer asks for ----------------------------------------------------------

    def train_labels(self) -> np.ndarray:
        labels = np.array([self.label_of[u] for u in self.parts["train"]], dtype=np.int64)
        return labels[labels != IGNORE_INDEX]

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("validation", shuffle=False) if self.parts.get("validation") else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def loader_for(self, ids: Sequence[str]) -> DataLoader:
        """An ordered loader over arbitrary ids (e.g. a validation part for fitting fusion weights)."""
        return self._loader(list(ids), shuffle=False)

    # -- building ---------------------------------------------------------------------------

    def _loader(self, part: str | list[str], shuffle: bool) -> DataLoader:
        ids = self.parts[part] if isinstance(part, str) else [u for u in part if u in self.feature_set.features]
        generator = torch.Generator().manual_seed(self.seed)
        if part == "train":
            generator = self._training_generator(generator)
        if self.batch_kind == "dialogue":
            dialogues = dialogues_of(self.table, ids)
            dialogue_collate = DialogueCollator(
                self._dialogue_vectors(),
                dialogues,
                self.label_of,
                self.modalities,
                tokens=self.feature_set.features,
                token_modalities=self.token_modalities,
            )
            return DataLoader(
                _Indices(len(dialogues)),
                batch_size=self.batch_size,
                shuffle=shuffle,
                collate_fn=dialogue_collate,
                generator=generator,
                num_workers=self.num_workers,
            )
        labels = np.array([self.label_of[u] for u in ids], dtype=np.int64)
        specs = self.feature_set.specs
        collate = UtteranceCollator(
            self.feature_set.features,
            ids,
            labels,
            self.modalities,
            self.feature_set.frame_rates,
            self.feature_set.layers,
            {m: specs[m].max_length for m in self.modalities if m in specs},
        )
        sampler = None
        if shuffle and self.class_balance == "sampler":
            counts = np.bincount(labels[labels != IGNORE_INDEX], minlength=len(self.classes)).astype(float)
            weights = np.where(labels == IGNORE_INDEX, 0.0, 1.0 / np.maximum(counts[np.clip(labels, 0, None)], 1.0))
            sampler = WeightedRandomSampler(
                weights.astype(np.float64).tolist(), num_samples=len(ids), replacement=True, generator=generator
            )
            shuffle = False
        return DataLoader(
            _Indices(len(ids)),
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            collate_fn=collate,
            generator=generator,
            num_workers=self.num_workers,
        )

    # -- resuming -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The randomness a resumed fit continues from, saved in Lightning's checkpoint: the
        training order's generator and the global generators (dropout, augmentation), so a fold
        killed and resumed trains exactly as an uninterrupted one."""
        state = random_state()
        if self._train_generator is not None:
            state["train_generator"] = self._train_generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (Lightning calls it before it builds the loaders)."""
        set_random_state(state)
        self._resume_state = dict(state)

    def _training_generator(self, generator: torch.Generator) -> torch.Generator:
        if self._resume_state is not None and "train_generator" in self._resume_state:
            generator.set_state(self._resume_state.pop("train_generator"))
        self._train_generator = generator
        return generator

    def _dialogue_vectors(self) -> dict[str, dict[str, np.ndarray]]:
        if self._vectors is None:
            pooling = self.dialogue_pooling  # one pooling, or one per modality (a model's dialogue_pooling)
            pooled = [m for m in self.modalities if m not in self.token_modalities]  # token modalities pool later
            self._vectors = {
                u: {
                    m: utterance_vector(
                        fields[m], pooling if isinstance(pooling, str) else pooling.get(m, "mean"), f"{u}/{m}"
                    )
                    for m in pooled
                }
                for u, fields in self.feature_set.features.items()
            }
        return self._vectors
