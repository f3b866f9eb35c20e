"""A small CNN over grayscale face crops: one ``out_dim`` vector per video frame.

:class:`FaceCropEncoder` is learned together with the model that uses it (it is not pretrained),
so the feature store caches the face crops made by :func:`emomix.audio.video.face_crops` rather
than this encoder's outputs; its :meth:`~FaceCropEncoder.config` includes a hash of the current
weights so that any cached output is tied to the exact weights that made it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from emomix.encoders.base import Encoder, EncoderOutput
from emomix.errors import AudioError, ConfigError


class FaceCropEncoder(Encoder):
    """conv-BN-ReLU-maxpool ×3 → linear, applied to each ``crop_size × crop_size`` grayscale frame.

    Inputs: one stack per utterance, ``N × crop_size × crop_size`` (uint8 0–255, or float in
    0–1). Output ``states``: ``B × N_max × out_dim`` with the mask of real frames; an empty stack
    becomes one (valid) zero frame flagged in ``extras["empty"]``. ``frame_rate``: frames per second of
    the stacks when known (it depends on the corpus' video), else None. Batch-norm statistics
    are computed over the real frames only.
    """

    modality = "video"
    num_layers = 0

    def __init__(
        self,
        out_dim: int = 128,
        crop_size: int = 64,
        channels: Sequence[int] = (16, 32, 64),
        frame_rate: float | None = None,
    ):
        super().__init__()
        if out_dim <= 0:
            raise ConfigError(f"out_dim must be positive, got {out_dim}")
        if len(channels) != 3 or any(c <= 0 for c in channels):
            raise ConfigError(f"channels must be three positive numbers, got {list(channels)}")
        if crop_size % 8 != 0 or crop_size < 8:
            raise ConfigError(f"crop_size must be a multiple of 8 (three 2× poolings), got {crop_size}")
        self.out_dim = int(out_dim)
        self.crop_size = int(crop_size)
        self.channels = tuple(int(c) for c in channels)
        self.output_size = self.out_dim
        self.frame_rate = frame_rate
        blocks: list[nn.Module] = []
        previous = 1
        for width in self.channels:
            blocks += [
                nn.Conv2d(previous, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            previous = width
        self.features = nn.Sequential(*blocks)
        reduced = self.crop_size // 8
        self.projection = nn.Linear(previous * reduced * reduced, self.out_dim)

    def config(self) -> dict[str, Any]:
        """Architecture, frame rate and a hash of the current weights (they change while training)."""
        digest = hashlib.sha256()
        for key, tensor in sorted(self.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return {
            "name": "face-cnn",
            "revision": "weights:" + digest.hexdigest()[:16],
            "out_dim": self.out_dim,
            "crop_size": self.crop_size,
            "channels": list(self.channels),
            "frame_rate": self.frame_rate,
        }

    def _stack(self, item: Any, index: int) -> torch.Tensor:
        stack = item if isinstance(item, torch.Tensor) else torch.from_numpy(np.asarray(item))
        if stack.ndim != 3 or (stack.shape[0] > 0 and tuple(stack.shape[1:]) != (self.crop_size, self.crop_size)):
            raise AudioError(
                f"face-crop stack {index} of the batch has shape {tuple(stack.shape)}; expected "
                f"N × {self.crop_size} × {self.crop_size} grayscale crops (emomix.audio.video.face_crops)"
            )
        if stack.dtype == torch.uint8:
            return stack.float() / 255.0
        return stack.float()

    def forward(self, inputs: Sequence[Any], output_hidden_states: bool = False) -> EncoderOutput:
        """Encode each frame of each stack; frames of all utterances go through the CNN together."""
        if len(inputs) == 0:
            raise ValueError("cannot encode an empty batch")
        device = self.projection.weight.device
        stacks = [self._stack(item, index) for index, item in enumerate(inputs)]
        empty = [s.shape[0] == 0 for s in stacks]
        lengths = [max(1, s.shape[0]) for s in stacks]
        real = [s for s in stacks if s.shape[0] > 0]
        if real:
            frames = torch.cat(real).to(device).unsqueeze(1)
            encoded = self.projection(self.features(frames).flatten(1))
            pieces = list(torch.split(encoded, [s.shape[0] for s in real]))
        else:
            pieces = []
        per_item, cursor = [], 0
        for is_empty in empty:
            if is_empty:
                per_item.append(torch.zeros(1, self.out_dim, device=device))
            else:
                per_item.append(pieces[cursor])
                cursor += 1
        states = nn.utils.rnn.pad_sequence(per_item, batch_first=True)
        mask = torch.arange(states.shape[1], device=device).unsqueeze(0) < torch.tensor(lengths, device=device).unsqueeze(1)
        return EncoderOutput(states=states, mask=mask, extras={"empty": empty})
