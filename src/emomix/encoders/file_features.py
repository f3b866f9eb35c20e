"""Bring-your-own features: pre-extracted vectors or frame sequences read from a file by ``utt_id``.

The feature files the field trades in (CMU-MOSI/MOSEI aligned features, DialogueRNN-style
IEMOCAP/MELD pickles converted to arrays, a lab's own extractor) become an encoder like any
other: ``{name: file, path: feats.npz, frame_rate: 100}`` (or the short ``features:PATH``).
:func:`emomix.features.build_features` copies the arrays of the table's utterances into the
feature store, so every model and protocol reads them as it reads extracted features.

Formats (chosen by the file's suffix):

* ``.npz``: one array per utterance, the array's name is the ``utt_id`` (``np.savez(path, **arrays)``);
  ``T × D`` frames, or a ``D`` vector.
* ``.parquet``: one row per utterance with a ``utt_id`` column and either one list-valued column
  (``features``, or the one named by ``column``) holding a vector or a list of frames, or several
  numeric columns, which form the vector (every column but ``utt_id``, in file order).
* ``.h5`` / ``.hdf5``: one dataset per utterance named by its ``utt_id`` (at the root, or under
  ``group``); needs ``h5py`` (``pip install 'emomix[hdf5]'``).

``frame_rate``: frames per second of the sequences, or ``"utterance"`` (the default) when each
utterance has one vector; a vector is stored as one frame (``1 × D`` ``states``) and as ``pooled``,
as openSMILE functionals are. The identity is the file's SHA-256 (plus the options), so editing
the file gives new store keys and a renamed copy keeps them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emomix.encoders.base import Encoder, EncoderOutput
from emomix.errors import ConfigError, MissingDataError

FILE_FORMATS = {".npz": "npz", ".parquet": "parquet", ".h5": "hdf5", ".hdf5": "hdf5"}
MODALITY_CHOICES = ("audio", "text", "video")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FileFeatureEncoder(Encoder):
    """Reads per-utterance arrays from a file instead of computing them (see the module doc).

    ``modality`` is taken from the recipe block the encoder sits in (``features.<modality>``)
    unless given. ``column`` (parquet) / ``group`` (HDF5) choose where the arrays are.
    """

    reads_files = True  # build_features stores these arrays by utt_id instead of running extraction
    num_layers = 0

    def __init__(
        self,
        path: str | Path,
        frame_rate: float | str | None = "utterance",
        modality: str | None = None,
        column: str | None = None,
        group: str | None = None,
    ):
        super().__init__()
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise ConfigError(
                f"feature file {self.path} does not exist; give the path of an .npz, .parquet or .h5 file "
                "holding one array per utt_id"
            )
        file_format = FILE_FORMATS.get(self.path.suffix.lower())
        if file_format is None:
            raise ConfigError(
                f"feature file {self.path} has suffix {self.path.suffix!r}; use .npz, .parquet, .h5 or .hdf5"
            )
        self.format: str = file_format
        if modality is not None and modality not in MODALITY_CHOICES:
            raise ConfigError(f"file features: modality must be one of {', '.join(MODALITY_CHOICES)}, got {modality!r}")
        if frame_rate in (None, "utterance"):
            self.frame_rate = None
        else:
            try:
                self.frame_rate = float(frame_rate)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"file features: frame_rate must be a number of frames per second or 'utterance', "
                    f"got {frame_rate!r}"
                ) from None
            if not self.frame_rate > 0:
                raise ConfigError(f"file features: frame_rate must be positive, got {frame_rate!r}")
        self.modality = modality or "audio"
        self.modality_given = modality is not None
        self.column, self.group = column, group
        self.sha256 = file_sha256(self.path)
        self._arrays: dict[str, np.ndarray] | None = None
        self.output_size = 0

    def config(self) -> dict[str, Any]:
        """The file's content hash and the reading options (not its path: a moved copy keeps its keys)."""
        return {
            "name": "file",
            "sha256": self.sha256,
            "format": self.format,
            "frame_rate": self.frame_rate,
            "column": self.column,
            "group": self.group,
        }

    # -- reading --------------------------------------------------------------------------------

    def arrays(self) -> dict[str, np.ndarray]:
        """Every utterance's array, read once."""
        if self._arrays is None:
            reader = {"npz": _read_npz, "parquet": _read_parquet, "hdf5": _read_hdf5}[self.format]
            arrays = reader(self.path, self.column, self.group)
            if not arrays:
                raise MissingDataError(f"feature file {self.path} holds no arrays")
            self._arrays = arrays
            self.output_size = int(np.asarray(next(iter(arrays.values()))).shape[-1])
        return self._arrays

    def read(self, utt_ids: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
        """``{utt_id: {"states": T × D, ("pooled": D)}}`` for ``utt_ids``; a missing id is a
        :class:`MissingDataError` naming it and how many are missing."""
        arrays = self.arrays()
        missing = [u for u in utt_ids if u not in arrays]
        if missing:
            shown = ", ".join(repr(u) for u in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise MissingDataError(
                f"feature file {self.path} has no array for {len(missing)} of {len(utt_ids)} "
                f"utterance(s), e.g. {shown}; its keys must be the corpus's utt_id values "
                f"(it holds {len(arrays)}, e.g. {next(iter(arrays))!r})"
            )
        return {u: self.fields(u, arrays[u]) for u in utt_ids}

    def fields(self, utt_id: str, value: Any) -> dict[str, np.ndarray]:
        array = np.asarray(value, dtype=np.float32)
        if self.frame_rate is None:
            if array.ndim == 2 and array.shape[0] == 1:
                array = array[0]
            if array.ndim != 1:
                raise ConfigError(
                    f"feature file {self.path}: {utt_id!r} has shape {array.shape}, but frame_rate is "
                    "'utterance' (one vector per utterance); give the frame rate of its sequences"
                )
            return {"states": array[None, :], "pooled": array}
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[0] == 0:
            raise ConfigError(
                f"feature file {self.path}: {utt_id!r} has shape {array.shape}; frames must be T × D with T ≥ 1"
            )
        return {"states": array}

    def forward(self, inputs: Sequence[Any], output_hidden_states: bool = False) -> EncoderOutput:
        """Utterance ids in, their stored arrays as a padded batch (the store path does not use it)."""
        read = self.read([str(u) for u in inputs])
        states = [torch.as_tensor(read[str(u)]["states"]) for u in inputs]
        longest = max(int(s.shape[0]) for s in states)
        out = torch.zeros(len(states), longest, states[0].shape[-1])
        mask = torch.zeros(len(states), longest, dtype=torch.bool)
        for row, value in enumerate(states):
            out[row, : value.shape[0]], mask[row, : value.shape[0]] = value, True
        pooled = (
            torch.stack([torch.as_tensor(read[str(u)]["pooled"]) for u in inputs]) if self.frame_rate is None else None
        )
        return EncoderOutput(states=out, mask=mask, pooled=pooled)


def _read_npz(path: Path, column: str | None, group: str | None) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {str(name): np.asarray(data[name]) for name in data.files}


def _read_parquet(path: Path, column: str | None, group: str | None) -> dict[str, np.ndarray]:
    import pandas as pd

    frame = pd.read_parquet(path)
    if "utt_id" not in frame.columns:
        raise ConfigError(
            f"feature file {path} has no 'utt_id' column (columns: {', '.join(map(str, frame.columns[:8]))})"
        )
    ids = frame["utt_id"].astype(str).tolist()
    if column is None and "features" in frame.columns:
        column = "features"
    if column is not None:
        if column not in frame.columns:
            raise ConfigError(f"feature file {path} has no column {column!r}")
        values = [
            np.stack([np.asarray(v, dtype=np.float32) for v in cell])
            if _nested(cell)
            else np.asarray(cell, dtype=np.float32)
            for cell in frame[column]
        ]
    else:
        numeric = frame.drop(columns=["utt_id"]).select_dtypes("number")
        if numeric.shape[1] == 0:
            raise ConfigError(
                f"feature file {path}: no numeric columns and no 'features' column; name the column "
                "holding the arrays with the 'column' option"
            )
        values = list(numeric.to_numpy(dtype=np.float32))
    return dict(zip(ids, values))


def _nested(cell: Any) -> bool:
    return len(cell) > 0 and isinstance(cell[0], (list, tuple, np.ndarray))


def _read_hdf5(path: Path, column: str | None, group: str | None) -> dict[str, np.ndarray]:
    try:
        import h5py
    except ImportError:
        raise ConfigError(
            f"reading {path} needs h5py; install it (pip install 'emomix[hdf5]') or convert the file "
            "to .npz (see docs/feature-store.md)"
        ) from None
    with h5py.File(path, "r") as handle:
        node = handle[group] if group else handle
        return {str(name): np.asarray(node[name]) for name in node if isinstance(node[name], h5py.Dataset)}
