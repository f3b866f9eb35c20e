"""openSMILE acoustic features (eGeMAPS v02, ComParE 2016) through the ``opensmile`` package.

Low-level descriptors (LLDs) come out as frame states at 100 frames/s (10 ms hop): 25 per frame
for eGeMAPSv02, 65 for ComParE_2016. Functionals (statistics over the whole utterance) come out
as ``pooled``: 88 for eGeMAPSv02, 6373 for ComParE_2016. Nothing is trainable.

openSMILE fills an input too short for one analysis window with NaN (one row); such items are
encoded as one frame of zeros (and zero functionals) and flagged in ``extras["too_short"]`` so
a caller can drop them. Silence encodes normally.

``threads`` (a run-time setting, not part of the encoder's identity: the features are the same)
spreads a batch's waveforms over a small thread pool, one utterance per task. openSMILE is a C
library called through ctypes, which releases the GIL, so the threads extract on several cores
at once. Every worker thread keeps its own ``opensmile.Smile`` instances (they are not safe to
share); results come back in input order and equal the one-thread loop's bit for bit.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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

    ``threads``: how many threads encode one batch (1, the default: one utterance after the other
    in the calling thread); change it later with :meth:`set_threads`. Not part of :meth:`config`.
    """

    modality = "audio"
    num_layers = 0

    def __init__(self, feature_set: str = "eGeMAPSv02", level: str = "lld", threads: int = 1):
        super().__init__()
        import opensmile

        if feature_set not in FEATURE_SETS:
            raise ConfigError(f"unknown openSMILE feature set '{feature_set}'; choose one of {', '.join(FEATURE_SETS)}")
        if level not in LEVELS:
            raise ConfigError(f"unknown openSMILE level '{level}'; choose one of {', '.join(LEVELS)}")
        self.feature_set = feature_set
        self.level = level
        self.opensmile_version = opensmile.__version__
        self._lld, self._functionals = self._new_smiles()
        self.frame_rate = LLD_FRAME_RATE if self._lld is not None else None
        self.output_size = LLD_SIZES[feature_set] if self._lld is not None else FUNCTIONAL_SIZES[feature_set]
        self.pooled_size = FUNCTIONAL_SIZES[feature_set] if self._functionals is not None else 0
        self.threads = 1
        self._pool: ThreadPoolExecutor | None = None  # created on the first batch that uses it
        self._local: threading.local | None = None  # each worker thread's own Smile instances
        self.set_threads(threads)

    def _new_smiles(self) -> tuple[Any, Any]:
        """Fresh ``opensmile.Smile`` instances for the LLDs and the functionals (None when unused)."""
        import opensmile

        feature_enum = getattr(opensmile.FeatureSet, self.feature_set)
        lld = (
            opensmile.Smile(feature_set=feature_enum, feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
            if self.level in ("lld", "both")
            else None
        )
        functionals = (
            opensmile.Smile(feature_set=feature_enum, feature_level=opensmile.FeatureLevel.Functionals)
            if self.level in ("functionals", "both")
            else None
        )
        return lld, functionals

    def set_threads(self, threads: int) -> None:
        """Encode each batch over ``threads`` threads (1: one utterance after the other in the
        calling thread). A run-time setting: the features and :meth:`config` stay the same."""
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"openSMILE threads must be a whole number of at least 1, got {threads!r}")
        if threads == self.threads:
            return
        self.close()
        self.threads = threads

    def close(self) -> None:
        """Stop the worker threads, if any (a later batch starts them again)."""
        pool, self._pool, self._local = self._pool, None, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __getstate__(self) -> dict[str, Any]:
        # copies and pickles start without threads; the pool and its instances are made again on need
        state = self.__dict__.copy()
        state["_pool"] = None
        state["_local"] = None
        return state

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
        waves = [_as_wave(item, index) for index, item in enumerate(inputs)]
        with warnings.catch_warnings():
            # openSMILE warns "Segment too short, filling with NaN"; we flag it per item instead. The
            # filter is the process's (Python < 3.14 keeps one filter list), so it covers the workers.
            warnings.simplefilter("ignore", UserWarning)
            if self.threads == 1 or len(waves) == 1:
                encoded = [_encode(self._lld, self._functionals, wave) for wave in waves]
            else:
                pool, local = self._thread_pool()
                encoded = list(pool.map(functools.partial(self._encode_in_worker, local), waves))
        frames = [item_frames for item_frames, _, _ in encoded]
        pooled = [item_pooled for _, item_pooled, _ in encoded if item_pooled is not None]
        too_short = [short for _, _, short in encoded]
        lengths = torch.tensor([len(f) for f in frames])
        states = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(f) for f in frames], batch_first=True)
        mask = torch.arange(states.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
        return EncoderOutput(
            states=states,
            mask=mask,
            pooled=torch.from_numpy(np.stack(pooled)) if pooled else None,
            extras={"too_short": too_short},
        )

    def _thread_pool(self) -> tuple[ThreadPoolExecutor, threading.local]:
        """The worker threads and their per-thread Smile instances (started on first need)."""
        if self._pool is None or self._local is None:
            self._local = threading.local()
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="emomix-opensmile")
        return self._pool, self._local

    def _encode_in_worker(self, local: threading.local, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, bool]:
        """One utterance in a pool thread, with that thread's own Smile instances (made on its first item)."""
        smiles = getattr(local, "smiles", None)
        if smiles is None:
            smiles = local.smiles = self._new_smiles()
        lld_smile, functionals_smile = smiles
        return _encode(lld_smile, functionals_smile, wave)


def _encode(lld_smile: Any, functionals_smile: Any, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """One utterance: (states rows, functionals vector or None, whether it was too short)."""
    frames: np.ndarray | None = None
    pooled: np.ndarray | None = None
    short = False
    if lld_smile is not None:
        frames, short = _process(lld_smile, wave)
    if functionals_smile is not None:
        functionals, functionals_short = _process(functionals_smile, wave)
        pooled = functionals[0]
        short |= functionals_short
        if frames is None:
            frames = functionals
    assert frames is not None  # the level names LLDs, functionals or both
    return frames, pooled, short


def _as_wave(item: Any, index: int) -> np.ndarray:
    wave = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
    if wave.ndim != 1:
        raise AudioError(f"waveform {index} of the batch has shape {wave.shape}; expected 1-D mono 16 kHz float32")
    wave = wave.astype(np.float32, copy=False)
    if not np.all(np.isfinite(wave)):
        raise AudioError(f"waveform {index} of the batch holds NaN or infinite samples")
    return wave


def _process(smile: Any, wave: np.ndarray) -> tuple[np.ndarray, bool]:
    """One utterance through openSMILE: (rows × features float32, whether it was too short).

    The caller silences openSMILE's "too short" warning (a ``catch_warnings`` here, in several
    threads at once, could leave the process's warning filters in a wrong state)."""
    values = smile.process_signal(wave, SAMPLE_RATE).to_numpy(dtype=np.float32)
    width = len(smile.feature_names)
    too_short = values.shape[0] == 0 or bool(np.isnan(values).all())
    if too_short:
        return np.zeros((1, width), dtype=np.float32), True
    # A few LLDs are undefined on some frames of some releases; 0 is openSMILE's own convention.
    return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0), False
