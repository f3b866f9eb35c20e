"""What every model consumes and returns: the batch contract between data pipeline and models.

A model never sees files or encoders' internals: it receives, per modality, padded frame/token
states with masks (plus the few extras some designs need), and returns logits with an ``aux``
record of what its experts and gates did.

Utterance-level models take a :class:`Batch`; conversation models (MiSTER-E) take a
:class:`DialogueBatch` in which each row is a dialogue of utterance vectors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from emomix.constants import MODALITIES


@dataclass
class ModalityInput:
    """One modality of a batch of ``B`` utterances.

    ``states``: ``B × T × D`` float states (padded); ``mask``: ``B × T`` bool, True on valid
    frames/tokens (every row has at least one valid position).
    Optional extras, None when absent:
    ``speech_mask`` (audio): ``B × T`` bool, True on frames the VAD marked as speech;
    ``special_tokens`` (text): ``B × T`` bool, True on special tokens (CLS/SEP/PAD);
    ``layer_states`` (text): ``B × K × T × D``, the states of the last ``K`` encoder layers
    (oldest first), for designs that read the first token of several layers;
    ``pooled``: ``B × P`` utterance-level vectors (e.g. openSMILE functionals);
    ``frame_rate``: frames per second of ``states`` (None for tokens).
    """

    states: torch.Tensor
    mask: torch.Tensor
    speech_mask: torch.Tensor | None = None
    special_tokens: torch.Tensor | None = None
    layer_states: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    frame_rate: float | None = None

    @property
    def batch_size(self) -> int:
        return int(self.states.shape[0])

    @property
    def dim(self) -> int:
        return int(self.states.shape[-1])

    def to(self, device: torch.device | str) -> ModalityInput:
        """A copy with every tensor on ``device``."""
        return replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device)
                for f in fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)
            },
        )


@dataclass
class Batch:
    """A batch of utterances for utterance-level models.

    ``inputs`` maps a modality name ("audio", "text", "video") to its :class:`ModalityInput`;
    a modality the corpus lacks is simply absent. ``labels``: ``B`` class indices (None at
    inference). ``edges``: for the time-aligned graph, one ``2 × E`` long tensor per utterance of
    (token index, frame index) pairs where the frame's time lies inside the token's span, indices
    into ``inputs["text"]`` and ``inputs["audio"]`` rows. ``utt_ids`` name the rows.
    """

    inputs: dict[str, ModalityInput]
    labels: torch.Tensor | None = None
    edges: list[torch.Tensor] | None = None
    utt_ids: list[str] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return next(iter(self.inputs.values())).batch_size

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in self.inputs)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            inputs={k: v.to(device) for k, v in self.inputs.items()},
            labels=None if self.labels is None else self.labels.to(device),
            edges=None if self.edges is None else [e.to(device) for e in self.edges],
            utt_ids=list(self.utt_ids),
        )


@dataclass
class DialogueBatch:
    """A batch of ``B`` dialogues of at most ``N`` utterances each, for conversation models.

    ``inputs`` maps a modality to ``B × N × D`` utterance vectors; ``mask``: ``B × N`` bool, True
    on real utterances; ``labels``: ``B × N`` class indices (-100 where padded or unlabelled);
    ``utt_ids``: per dialogue, the utterance ids in order. ``tokens``: per modality whose encoder's
    top layers fine-tune (``trainable_top_layers``), the stored boundary states of the batch's
    real utterances, ``M × T × D`` with their ``M × T`` mask, in ``mask``'s row-major order
    (``M = mask.sum()``); such a modality has no ``inputs`` entry until
    :class:`~emomix.models.saved.TrainedModel` runs the layers and pools each utterance.
    """

    inputs: dict[str, torch.Tensor]
    mask: torch.Tensor
    labels: torch.Tensor | None = None
    utt_ids: list[list[str]] = field(default_factory=list)
    tokens: dict[str, ModalityInput] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in self.inputs or m in self.tokens)

    def to(self, device: torch.device | str) -> DialogueBatch:
        return DialogueBatch(
            inputs={k: v.to(device) for k, v in self.inputs.items()},
            mask=self.mask.to(device),
            labels=None if self.labels is None else self.labels.to(device),
            utt_ids=[list(ids) for ids in self.utt_ids],
            tokens={k: v.to(device) for k, v in self.tokens.items()},
        )


@dataclass
class ModelOutput:
    """What every model returns.

    ``logits``: ``B × C`` (``B × N × C`` for dialogue models); ``aux``: named tensors describing
    the experts and gates per row (routing probabilities, gate weights, per-expert logits), used
    by the losses, the report and the inference output; ``aux_losses``: regularisers the model
    computed during its forward pass (e.g. MoE load balancing), already scalar.
    """

    logits: torch.Tensor
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Plain helpers for building batches from unpadded arrays (as the feature store returns them)
# ---------------------------------------------------------------------------------------------


def pad_sequences(
    arrays: Sequence[np.ndarray | torch.Tensor], max_length: int | None = None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length ``T_i × ...`` arrays into ``B × T × ...`` with a ``B × T`` mask.

    Sequences longer than ``max_length`` are cut; an empty sequence keeps one zero frame marked
    valid, so every row has at least one valid position (a softmax over keys is never empty).
    """
    tensors = [torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a) for a in arrays]
    if not tensors:
        raise ValueError("pad_sequences needs at least one sequence")
    tail = tuple(tensors[0].shape[1:])
    lengths = [min(int(t.shape[0]), max_length) if max_length else int(t.shape[0]) for t in tensors]
    longest = max(max(lengths), 1)
    out = torch.zeros((len(tensors), longest, *tail), dtype=dtype)
    mask = torch.zeros((len(tensors), longest), dtype=torch.bool)
    for row, (tensor, length) in enumerate(zip(tensors, lengths)):
        if tuple(tensor.shape[1:]) != tail:
            raise ValueError(f"sequence {row} has trailing shape {tuple(tensor.shape[1:])}, expected {tail}")
        if length == 0:
            mask[row, 0] = True
            continue
        out[row, :length] = tensor[:length].to(dtype)
        mask[row, :length] = True
    return out, mask


def modality_input(
    arrays: Sequence[Mapping[str, np.ndarray]],
    frame_rate: float | None = None,
    max_length: int | None = None,
    layers: Sequence[int] | None = None,
) -> ModalityInput:
    """Build a :class:`ModalityInput` from per-utterance field dicts (``states``, optional
    ``speech_mask``, ``special_tokens``, ``layer_<k>``, ``pooled``), as the feature store saves them.
    """
    states, mask = pad_sequences([a["states"] for a in arrays], max_length)
    result = ModalityInput(states=states, mask=mask, frame_rate=frame_rate)
    if all("speech_mask" in a for a in arrays):
        speech, _ = pad_sequences(
            [np.asarray(a["speech_mask"]).astype(bool) for a in arrays], max_length, dtype=torch.bool
        )
        result.speech_mask = speech & mask
    if all("special_tokens" in a for a in arrays):
        special, _ = pad_sequences(
            [np.asarray(a["special_tokens"]).astype(bool) for a in arrays], max_length, dtype=torch.bool
        )
        result.special_tokens = special | ~mask
    if layers:
        stacked = [pad_sequences([a[f"layer_{k}"] for a in arrays], max_length)[0] for k in layers]
        result.layer_states = torch.stack(stacked, dim=1)
    if all("pooled" in a for a in arrays):
        result.pooled = torch.as_tensor(np.stack([np.asarray(a["pooled"], dtype=np.float32) for a in arrays]))
    return result
