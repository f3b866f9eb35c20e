"""One interface over every encoder: speech SSL, text transformers, openSMILE, MFCC, video.

An encoder turns a batch of utterance inputs into frame/token states with a validity mask (and
every hidden layer when asked). It knows its modality, its frame rate, its output size and a
stable identity that the feature store uses as part of its cache key, and it can freeze all but
its top ``k`` layers.

Inputs are plain values prepared by :mod:`emomix.audio` (16 kHz mono float32 waveforms), the
transcript strings, or stacks of face crops; an encoder never opens files itself, so training,
extraction and inference share one preprocessing path.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class EncoderOutput:
    """What an encoder returns for a batch of ``B`` utterances.

    ``states``: ``B × T × D`` states of the selected layer (padded); ``mask``: ``B × T`` bool,
    True on valid frames/tokens; ``hidden_states``: one ``B × T × D`` tensor per layer (index 0 is
    the input embedding layer, as in ``transformers``) when asked for, else None; ``pooled``:
    ``B × P`` utterance-level vectors where the encoder has them (openSMILE functionals), else None;
    ``special_tokens``: ``B × T`` bool marking special tokens (CLS/SEP) of a text encoder, else None.
    """

    states: torch.Tensor
    mask: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    pooled: torch.Tensor | None = None
    special_tokens: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def lengths(self) -> torch.Tensor:
        """Valid frames/tokens per utterance."""
        return self.mask.sum(dim=1)

    def unpad(self, index: int, layers: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """One utterance's arrays without padding, as the feature store saves them.

        ``states`` (T×D) always; ``layer_<k>`` (T×D) for each requested hidden layer; ``pooled``
        (P) and ``special_tokens`` (T) where present.
        """
        length = int(self.mask[index].sum())
        out = {"states": self.states[index, :length].detach().cpu().float().numpy()}
        if layers:
            if self.hidden_states is None:
                raise ValueError("layers were requested but the encoder returned no hidden states")
            for layer in layers:
                out[f"layer_{layer}"] = self.hidden_states[layer][index, :length].detach().cpu().float().numpy()
        if self.pooled is not None:
            out["pooled"] = self.pooled[index].detach().cpu().float().numpy()
        if self.special_tokens is not None:
            out["special_tokens"] = self.special_tokens[index, :length].detach().cpu().numpy().astype(np.uint8)
        return out


class Encoder(nn.Module, ABC):
    """Base class of every encoder.

    Subclasses set ``modality`` ("audio", "text" or "video"), ``frame_rate`` (frames per second of
    ``states``; None for token sequences and utterance-level encoders), ``output_size`` (D) and
    ``num_layers`` (transformer layers; 0 for encoders without layers).
    """

    modality: str = "audio"
    frame_rate: float | None = None
    output_size: int = 0
    num_layers: int = 0

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Everything that changes the encoder's output: name, revision, architecture, options.

        JSON-serialisable. Two encoders with equal configs must produce equal outputs.
        """

    def identity(self) -> str:
        """A short stable hash of :meth:`config`, used in feature-store keys."""
        blob = json.dumps({"class": type(self).__name__, **self.config()}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    @abstractmethod
    def forward(self, inputs: Sequence[Any], output_hidden_states: bool = False) -> EncoderOutput:
        """Encode a batch: waveforms (``np.ndarray`` float32 at 16 kHz), strings or frame stacks."""

    def freeze(self, trainable_top_layers: int = 0) -> None:
        """Freeze every parameter except those of the top ``trainable_top_layers`` layers.

        The default freezes everything; encoders with layers override it.
        """
        for parameter in self.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def encode(self, inputs: Sequence[Any], output_hidden_states: bool = False) -> EncoderOutput:
        """:meth:`forward` in eval mode without gradients (for extraction and inference)."""
        was_training = self.training
        if was_training:  # switching modes walks every submodule: skip it when already in eval mode
            self.eval()
        try:
            return self(inputs, output_hidden_states=output_hidden_states)
        finally:
            if was_training:
                self.train(True)
