"""MFCC frames as an encoder: ``T × n_mfcc`` at 100 frames/s (25 ms window, 10 ms hop).

The signal processing is :func:`emomix.audio.features.mfcc` (librosa underneath), so training,
extraction and inference compute the same coefficients. ``pad_seconds`` zero-pads or cuts every
waveform to a fixed duration first, as recipes with a fixed-length input do (MPAF-Net uses 8 s);
the mask then marks the frames that come from real audio. Sequence models over the frames (an
LSTM, say) belong to the model, not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import librosa
import numpy as np
import torch

from emomix.audio.features import mfcc
from emomix.constants import SAMPLE_RATE
from emomix.encoders.base import Encoder, EncoderOutput
from emomix.errors import AudioError, ConfigError

HOP_SAMPLES = 160


class MFCCEncoder(Encoder):
    """MFCCs of 16 kHz mono waveforms; no trainable parameters.

    ``n_mfcc``: coefficients per frame (``output_size``); ``n_mels``: mel bands (default
    ``max(40, n_mfcc)``); ``pad_seconds``: fixed duration to pad/cut to, or None to keep each
    utterance's own length. ``extras["empty"]`` flags empty waveforms, encoded as one zero frame.
    """

    modality = "audio"
    frame_rate = SAMPLE_RATE / HOP_SAMPLES
    num_layers = 0

    def __init__(self, n_mfcc: int = 40, pad_seconds: float | None = None, n_mels: int | None = None):
        super().__init__()
        if int(n_mfcc) <= 0:
            raise ConfigError(f"n_mfcc must be positive, got {n_mfcc}")
        if pad_seconds is not None and float(pad_seconds) <= 0:
            raise ConfigError(f"pad_seconds must be positive or None, got {pad_seconds}")
        self.n_mfcc = int(n_mfcc)
        self.n_mels = int(n_mels) if n_mels is not None else max(40, self.n_mfcc)
        if self.n_mels < self.n_mfcc:
            raise ConfigError(f"n_mels ({self.n_mels}) must be at least n_mfcc ({self.n_mfcc})")
        self.pad_seconds = float(pad_seconds) if pad_seconds is not None else None
        self.output_size = self.n_mfcc

    def config(self) -> dict[str, Any]:
        """Coefficient and band counts, framing, fixed duration and the librosa version."""
        return {
            "name": "mfcc",
            "revision": f"librosa-{librosa.__version__}",  # type: ignore[attr-defined]  # lazy-loaded, untyped
            "n_mfcc": self.n_mfcc,
            "n_mels": self.n_mels,
            "win_ms": 25.0,
            "hop_ms": 10.0,
            "pad_seconds": self.pad_seconds,
            "sample_rate": SAMPLE_RATE,
        }

    def forward(self, inputs: Sequence[Any], output_hidden_states: bool = False) -> EncoderOutput:
        """``B × T × n_mfcc`` MFCC frames with the mask of frames from real (not padded) audio."""
        if len(inputs) == 0:
            raise ValueError("cannot encode an empty batch")
        target = int(round(self.pad_seconds * SAMPLE_RATE)) if self.pad_seconds is not None else None
        frames, valid, empty = [], [], []
        for index, item in enumerate(inputs):
            wave = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
            if wave.ndim != 1:
                raise AudioError(f"waveform {index} of the batch has shape {wave.shape}; expected 1-D mono 16 kHz")
            wave = wave.astype(np.float32, copy=False)
            real = wave.size
            if target is not None:
                wave = wave[:target] if wave.size >= target else np.pad(wave, (0, target - wave.size))
            coefficients = mfcc(wave, SAMPLE_RATE, n_mfcc=self.n_mfcc, n_mels=self.n_mels)
            if coefficients.shape[0] == 0:
                coefficients = np.zeros((1, self.n_mfcc), dtype=np.float32)
            frames.append(coefficients)
            valid.append(max(1, min(coefficients.shape[0], 1 + min(real, target or real) // HOP_SAMPLES)))
            empty.append(real == 0)
        states = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(f) for f in frames], batch_first=True)
        mask = torch.arange(states.shape[1]).unsqueeze(0) < torch.tensor(valid).unsqueeze(1)
        return EncoderOutput(states=states, mask=mask, extras={"empty": empty})
