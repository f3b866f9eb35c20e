"""openSMILE acoustic features (eGeMAPS v02, ComParE 2016) through the ``opensmile`` package.

Low-level descriptors (LLDs) come out as frame states at 100 frames/s (10 ms hop): 25 per frame
for eGeMAPSv02, 65 for ComParE_2016. Functionals (statistics over the whole utterance) come out
as ``pooled``: 88 for eGeMAPSv02, 6373 for ComParE_2016. Nothing is trainable.

openSMILE fills an input too short for one analysis window with NaN (one row); such items are
encoded as one frame of zeros (and zero functionals) and flagged in ``extras["too_short"]`` so
a caller can drop them. Silence encodes normally.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from emomix.constants import SAMPLE_RATE
from emomix.encoders.base import Encoder, EncoderOutput
from emomix.errors import AudioError, ConfigError

FEATURE_SETS = ("eGeMAPSv02", "ComParE_2016")
LEVELS = ("lld", "functionals", "both")
LLD_SIZES = {"eGeMAPSv02": 25, "ComParE_2016": 65}
FUNCTIONAL_SIZES = {"eGeMAPSv02": 88, "ComParE_2016": 6373}
LLD_FRAME_RATE = 100.0


class OpenSmileEncoder(Encoder):
    """openSMILE features of 16 kHz mono waveforms.

    ``level="lld"``: ``states`` = LLD frames (``T × 25`` / ``T × 65``), ``pooled`` None.
    ``level="functionals"``: ``states`` = the functionals as a single frame (``1 × 88`` /
    ``1 × 6373``) and ``pooled`` the same vector. ``level="both"``: LLD frames as ``states`` and
    functionals as ``pooled``.
    """

    modality = "audio"
    num_layers = 0

    def __init__(self, feature_set: str = "eGeMAPSv02", level: str = "lld"):
        super().__init__()
        import opensmile

        if feature_set not in FEATURE_SETS:
            raise ConfigError(f"unknown openSMILE feature set '{feature_set}'; choose one of {', '.join(FEATURE_SETS)}")
        if level not in LEVELS:
            raise ConfigError(f"unknown openSMILE level '{level}'; choose one of {', '.join(LEVELS)}")
        self.feature_set = feature_set
        self.level = level
        self.opensmile_version = opensmile.__version__
        feature_enum = getattr(opensmile.FeatureSet, feature_set)
        self._lld = (
            opensmile.Smile(feature_set=feature_enum, feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
            if level in ("lld", "both")
            else None
        )
        self._functionals = (
            opensmile.Smile(feature_set=feature_enum, feature_level=opensmile.FeatureLevel.Functionals)
            if level in ("functionals", "both")
            else None
        )
        self.frame_rate = LLD_FRAME_RATE if self._lld is not None else None
        self.output_size = LLD_SIZES[feature_set] if self._lld is not None else FUNCTIONAL_SIZES[feature_set]
        self.pooled_size = FUNCTIONAL_SIZES[feature_set] if self._functionals is not None else 0

    def feature_names(self, pooled: bool = False) -> list[str]:
        """Names of the ``states`` columns (or of ``pooled`` with ``pooled=True``)."""
        smile = self._functionals if (pooled or self._lld is None) else self._lld
        if smile is None:
            raise ConfigError(f"level '{self.level}' produces no functionals")
        return list(smile.feature_names)

    def config(self) -> dict[str, Any]:
        """Feature set, level and the openSMILE version (its output changes between releases)."""
        return {
            "name": f"opensmile:{self.feature_set}",
            "revision": f"opensmile-{self.opensmile_version}",
            "feature_set": self.feature_set,
            "level": self.level,
            "sample_rate": SAMPLE_RATE,
        }

    def forward(self, inputs: Sequence[Any], output_hidden_states: bool = False) -> EncoderOutput:
        """Extract features for each waveform; ``extras["too_short"]`` flags zero-filled items."""
        if len(inputs) == 0:
            raise ValueError("cannot encode an empty batch")
        frames, pooled, too_short = [], [], []
        for index, item in enumerate(inputs):
            wave = _as_wave(item, index)
            short = False
            if self._lld is not None:
                lld, lld_short = _process(self._lld, wave)
                frames.append(lld)
                short |= lld_short
            if self._functionals is not None:
                functionals, functionals_short = _process(self._functionals, wave)
                pooled.append(functionals[0])
                short |= functionals_short
                if self._lld is None:
                    frames.append(functionals)
            too_short.append(short)
        lengths = torch.tensor([len(f) for f in frames])
        states = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(f) for f in frames], batch_first=True)
        mask = torch.arange(states.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
        return EncoderOutput(
            states=states,
            mask=mask,
            pooled=torch.from_numpy(np.stack(pooled)) if pooled else None,
            extras={"too_short": too_short},
        )


def _as_wave(item: Any, index: int) -> np.ndarray:
    wave = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
    if wave.ndim != 1:
        raise AudioError(f"waveform {index} of the batch has shape {wave.shape}; expected 1-D mono 16 kHz float32")
    wave = wave.astype(np.float32, copy=False)
    if not np.all(np.isfinite(wave)):
        raise AudioError(f"waveform {index} of the batch holds NaN or infinite samples")
    return wave


def _process(smile: Any, wave: np.ndarray) -> tuple[np.ndarray, bool]:
    """One utterance through openSMILE: (rows × features float32, whether it was too short)."""
    with warnings.catch_warnings():
        # openSMILE warns "Segment too short, filling with NaN"; we flag it per item instead.
        warnings.simplefilter("ignore", UserWarning)
        values = smile.process_signal(wave, SAMPLE_RATE).to_numpy(dtype=np.float32)
    width = len(smile.feature_names)
    too_short = values.shape[0] == 0 or bool(np.isnan(values).all())
    if too_short:
        return np.zeros((1, width), dtype=np.float32), True
    # A few LLDs are undefined on some frames of some releases; 0 is openSMILE's own convention.
    return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0), False
