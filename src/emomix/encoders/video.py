"""Video encoders over grayscale face crops.

* :class:`FaceStackEncoder` (registered as ``faces``) is what the feature store extracts for the
  video modality: the face-crop stacks themselves (uint8), because the CNN that reads them is
  trained with the model and nothing after the crops can be cached.
* :class:`FaceFrameCNN` is that small per-frame CNN; MPAF-Net's video path
  (:class:`emomix.models.mpaf_net.FaceVideoEncoder`) owns one and trains it end to end.
  :func:`random_rotate_crop` is the rotate/crop augmentation it applies in training.
* :class:`FaceCropEncoder` (``face-cnn``) is an untrained CNN as a stand-alone encoder, for
  experiments only: no recipe uses it (its :meth:`~FaceCropEncoder.config` hashes its weights, so
  an output could only be reused with the exact weights that made it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from emomix.encoders.base import Encoder, EncoderOutput
from emomix.errors import AudioError, ConfigError, VideoError


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
        mask = torch.arange(states.shape[1], device=device).unsqueeze(0) < torch.tensor(
            lengths, device=device
        ).unsqueeze(1)
        return EncoderOutput(states=states, mask=mask, extras={"empty": empty})


# ---------------------------------------------------------------------------------------------
# Face-crop stacks as stored features, and the trainable per-frame CNN the models own
# ---------------------------------------------------------------------------------------------


class FaceStackOutput(EncoderOutput):
    """An :class:`EncoderOutput` whose stored ``states`` stay uint8 face crops (``T × S × S``)."""

    def unpad(self, index: int, layers: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        length = int(self.mask[index].sum())
        return {"states": self.states[index, :length].detach().cpu().numpy().astype(np.uint8)}


class FaceStackEncoder(Encoder):
    """The ``faces`` encoder: face-crop stacks are the stored "features" of the video modality.

    The video CNN is trained with the model (MPAF-Net's video path), so nothing learned can be
    cached; the store keeps what comes before it: per utterance a ``T × size × size`` uint8 stack
    of grayscale face crops made by :func:`emomix.audio.video.prepare_video` from the table's
    ``video_path``. Every option below changes the crops, so all are in :meth:`config` (and hence
    in the store key):

    ``size`` (crop side, 64), ``num_frames`` (frames kept from the clip's start, 150),
    ``pad`` (repeat the last crop up to ``num_frames``; off by default because the model reads the
    LSTM state after the last *valid* frame, so padding only costs storage and compute),
    ``frame_step`` (keep every k-th of those frames; 1 keeps all), ``detector`` (``"haar"``, or
    ``"none"`` for video whose frames already are face crops, as the synthetic corpus's),
    ``detection_width``, ``min_face_fraction``, ``detect_every`` (see
    :func:`emomix.audio.video.face_crops`). A clip in which no frame has a face is not encoded:
    extraction records it as a failure (reason ``"no face found"``) and the utterance is dropped
    and counted with the other failures of the run.
    """

    modality = "video"
    num_layers = 0

    def __init__(
        self,
        size: int = 64,
        num_frames: int = 150,
        pad: bool = False,
        frame_step: int = 1,
        detector: str = "haar",
        detection_width: int = 320,
        min_face_fraction: float = 0.1,
        detect_every: int = 1,
    ):
        super().__init__()
        from emomix.audio.video import DETECTORS

        if detector not in DETECTORS:
            raise ConfigError(f"faces encoder: detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
        for name, value in (
            ("size", size),
            ("num_frames", num_frames),
            ("frame_step", frame_step),
            ("detection_width", detection_width),
            ("detect_every", detect_every),
        ):
            if int(value) <= 0:
                raise ConfigError(f"faces encoder: {name} must be a positive whole number, got {value!r}")
        if not 0 < float(min_face_fraction) < 1:
            raise ConfigError(f"faces encoder: min_face_fraction must be between 0 and 1, got {min_face_fraction!r}")
        self.settings = {
            "size": int(size),
            "num_frames": int(num_frames),
            "pad": bool(pad),
            "frame_step": int(frame_step),
            "detector": str(detector),
            "detection_width": int(detection_width),
            "min_face_fraction": float(min_face_fraction),
            "detect_every": int(detect_every),
        }
        self.output_size = int(size)
        self.frame_rate = None  # depends on each corpus's video

    def config(self) -> dict[str, Any]:
        return {"name": "faces", "version": 1, **self.settings}

    def forward(self, inputs: Sequence[Any], output_hidden_states: bool = False) -> EncoderOutput:
        """Pad the stacks into ``B × T × size × size`` uint8 states with the mask of real frames."""
        if len(inputs) == 0:
            raise ValueError("cannot encode an empty batch")
        size = self.settings["size"]
        stacks = []
        for index, item in enumerate(inputs):
            stack = np.asarray(item)
            if stack.ndim != 3 or tuple(stack.shape[1:]) != (size, size) or stack.shape[0] == 0:
                raise VideoError(
                    f"face-crop stack {index} has shape {stack.shape}; expected N × {size} × {size} "
                    "grayscale crops with N ≥ 1 (emomix.audio.video.prepare_video)"
                )
            stacks.append(torch.from_numpy(np.ascontiguousarray(stack, dtype=np.uint8)))
        lengths = torch.tensor([s.shape[0] for s in stacks])
        states = nn.utils.rnn.pad_sequence(stacks, batch_first=True)
        mask = torch.arange(states.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
        return FaceStackOutput(states=states, mask=mask)


class FaceFrameCNN(nn.Module):
    """A small per-frame CNN: conv-BN-ReLU-maxpool per entry of ``channels`` → linear → ``out_dim``.

    Input ``N × S × S`` frames scaled to 0–1; output ``N × out_dim``. ``S`` must be divisible by
    ``2 ** len(channels)``.
    """

    def __init__(self, crop_size: int = 64, channels: Sequence[int] = (16, 32, 64), out_dim: int = 128):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels or any(c <= 0 for c in channels) or out_dim <= 0:
            raise ConfigError(
                f"the face CNN needs positive channel widths and output width, got {list(channels)} and {out_dim}"
            )
        reduction = 2 ** len(channels)
        if crop_size < reduction or crop_size % reduction:
            raise ConfigError(
                f"face crops of {crop_size} px cannot go through {len(channels)} 2× poolings; "
                f"use crops whose side is a multiple of {reduction}, or fewer CNN channels"
            )
        blocks: list[nn.Module] = []
        previous = 1
        for width in channels:
            blocks += [
                nn.Conv2d(previous, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            previous = width
        self.crop_size = int(crop_size)
        self.features = nn.Sequential(*blocks)
        self.projection = nn.Linear(previous * (crop_size // reduction) ** 2, int(out_dim))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.projection(self.features(frames.unsqueeze(1)).flatten(1)))


def random_rotate_crop(
    frames: torch.Tensor,
    rows: torch.Tensor,
    num_rows: int,
    max_degrees: float,
    min_scale: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rotate and crop face frames, one random transform per utterance (all its frames alike).

    ``frames``: ``N × S × S``; ``rows``: ``N`` utterance index of each frame (``0..num_rows-1``).
    Per utterance: an angle uniform in ±``max_degrees`` and a square crop whose side is a
    fraction uniform in [``min_scale``, 1] of the frame, at a uniform position inside it, resized
    back to ``S × S`` (bilinear; pixels rotated in from outside repeat the border). Draws from
    ``generator`` (the global torch generator when None), so a seeded run repeats.
    """
    import math

    import torch.nn.functional as F

    device = frames.device
    angle = (torch.rand(num_rows, generator=generator) * 2 - 1) * math.radians(max_degrees)
    scale = min_scale + (1 - min_scale) * torch.rand(num_rows, generator=generator)
    shift = (torch.rand(num_rows, 2, generator=generator) * 2 - 1) * (1 - scale).unsqueeze(1)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], dim=1), torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1
    )
    theta = theta.to(device=device, dtype=frames.dtype)[rows]
    grid = F.affine_grid(theta, [frames.shape[0], 1, *frames.shape[1:]], align_corners=False)
    return F.grid_sample(
        frames.unsqueeze(1), grid, mode="bilinear", padding_mode="border", align_corners=False
    ).squeeze(1)
