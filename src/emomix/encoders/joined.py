"""Several encoders of one modality read as one: their states joined feature-wise.

A recipe writes ``encoder: {join: [spec, spec, ...]}`` (e.g. ComParE_2016 and eGeMAPSv02
functionals, the classic pair for acted corpora). Each part encodes the same inputs; frame states
are concatenated along the feature axis (frame counts must agree; openSMILE feature sets of the
same level do, otherwise the shorter sequence decides and the rest is cut), utterance-level
``pooled`` vectors likewise. The joined encoder is one encoder for the store: its identity
covers every part, so a cached entry can never mix parts from two configurations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from emomix.encoders.base import Encoder, EncoderOutput
from emomix.errors import ConfigError


class JoinedEncoder(Encoder):
    """Feature-wise concatenation of encoders of the same modality (frame-level or utterance-level)."""

    def __init__(self, parts: Sequence[Encoder]):
        super().__init__()
        if len(parts) < 2:
            raise ConfigError("a joined encoder needs at least two encoders")
        modalities = {part.modality for part in parts}
        if len(modalities) != 1:
            raise ConfigError(f"joined encoders must share one modality, got {sorted(modalities)}")
        rates = {part.frame_rate for part in parts}
        if len(rates) != 1:
            raise ConfigError(f"joined encoders must share one frame rate, got {sorted(map(str, rates))}")
        if any(part.num_layers for part in parts):
            raise ConfigError("joined encoders cannot have hidden layers (layers and fine-tuning are per encoder)")
        self.parts = torch.nn.ModuleList(parts)
        self.modality = parts[0].modality
        self.frame_rate = parts[0].frame_rate
        self.output_size = sum(int(part.output_size or 0) for part in parts)
        self.num_layers = 0

    def _encoders(self) -> list[Encoder]:
        """The parts, typed (a ModuleList yields plain modules)."""
        return [part for part in self.parts if isinstance(part, Encoder)]

    def config(self) -> dict[str, Any]:
        return {"join": [{"class": type(part).__name__, **part.config()} for part in self._encoders()]}

    def forward(self, inputs: Sequence[Any], output_hidden_states: bool = False) -> EncoderOutput:
        outputs = [part(inputs) for part in self._encoders()]
        frames = min(int(out.states.shape[1]) for out in outputs)
        states = torch.cat([out.states[:, :frames].float() for out in outputs], dim=-1)
        mask = outputs[0].mask[:, :frames]
        for out in outputs[1:]:
            mask = mask & out.mask[:, :frames]
        mask[:, 0] |= ~mask.any(dim=1)  # every row keeps at least one valid frame
        pooled = None
        if all(out.pooled is not None for out in outputs):
            pooled = torch.cat([out.pooled.float() for out in outputs], dim=-1)
        extras: dict[str, Any] = {}
        for out in outputs:
            for key, values in out.extras.items():
                if key in extras and isinstance(values, list):
                    extras[key] = [bool(a) or bool(b) for a, b in zip(extras[key], values)]
                else:
                    extras[key] = values
        return EncoderOutput(states=states, mask=mask, pooled=pooled, extras=extras)
