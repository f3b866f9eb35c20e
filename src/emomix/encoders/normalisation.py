"""Speaker normalisation: z-score each feature dimension with its speaker's own statistics.

A classic step of speech emotion pipelines: voices differ in pitch, loudness and timbre more
than emotions do, so features are centred and scaled per speaker. :class:`SpeakerNormaliser` is
fitted on each speaker's own utterances (labels are never looked at, so fitting on test speakers
is legitimate, unsupervised adaptation): the mean and standard deviation of every dimension over
all frames (``T × D`` arrays) or utterance vectors (``D`` arrays) of that speaker.

Speakers not seen at fit time: by default the global statistics (all frames of all fitted
speakers pooled) are used; :meth:`SpeakerNormaliser.fit_speaker` adds a new speaker from its
own utterances at inference, and ``unseen="error"`` refuses unknown speakers instead.

State is saved as JSON or safetensors (never pickle).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from emomix.atomic import atomic_path, write_text_atomic
from emomix.errors import ConfigError, MissingDataError

UNSEEN_POLICIES = ("global", "error")
_MIN_STD = 1e-8
_FORMAT = "emomix.speaker_normaliser/1"


class SpeakerNormaliser:
    """Per-speaker mean/SD normalisation of frame or utterance features.

    ``unseen``: "global" (fall back to the pooled statistics) or "error" for speakers without
    their own statistics. Dimensions with (near) zero spread get SD 1, so they map to 0 instead
    of blowing up.
    """

    def __init__(self, unseen: str = "global"):
        if unseen not in UNSEEN_POLICIES:
            raise ConfigError(f"unseen must be one of {', '.join(UNSEEN_POLICIES)}, got '{unseen}'")
        self.unseen = unseen
        self.mean: dict[str, np.ndarray] = {}
        self.std: dict[str, np.ndarray] = {}
        self.count: dict[str, int] = {}
        self.global_mean: np.ndarray | None = None
        self.global_std: np.ndarray | None = None
        self.global_count = 0

    # -- fitting ------------------------------------------------------------------------------

    @property
    def dim(self) -> int | None:
        """Feature dimension, or None before fitting."""
        return None if self.global_mean is None else int(self.global_mean.shape[0])

    @property
    def speakers(self) -> list[str]:
        """Speakers with their own statistics."""
        return sorted(self.mean)

    def fit(self, features_by_utt: Mapping[str, Any], speaker_of_utt: Any) -> SpeakerNormaliser:
        """Fit the statistics of every speaker and the global fallback, replacing earlier ones.

        ``features_by_utt``: utterance id → ``T × D`` frames or a ``D`` vector.
        ``speaker_of_utt``: utterance id → speaker, as a mapping, a :class:`pandas.Series` indexed
        by utterance id, or an utterance table with ``utt_id`` and ``speaker`` columns (any other
        column, the label included, is ignored).
        """
        speakers = _speaker_lookup(speaker_of_utt)
        grouped: dict[str, list[np.ndarray]] = {}
        for utt_id, features in features_by_utt.items():
            if utt_id not in speakers:
                raise ConfigError(
                    f"utterance '{utt_id}' has features but no speaker; pass a speaker for every utterance"
                )
            grouped.setdefault(str(speakers[utt_id]), []).append(_as_frames(features, utt_id))
        if not grouped:
            raise ConfigError("cannot fit a speaker normaliser on no utterances")
        self.mean, self.std, self.count = {}, {}, {}
        dims = {frames.shape[1] for group in grouped.values() for frames in group}
        if len(dims) != 1:
            raise ConfigError(
                f"utterances have different feature dimensions {sorted(dims)}; normalise one encoder at a time"
            )
        for speaker, group in grouped.items():
            self._set_speaker(speaker, np.concatenate(group))
        pooled = np.concatenate([frames for group in grouped.values() for frames in group])
        self.global_mean, self.global_std = _stats(pooled)
        self.global_count = int(pooled.shape[0])
        return self

    def fit_speaker(self, speaker: str, utterances: Iterable[Any]) -> SpeakerNormaliser:
        """Add (or replace) one speaker's statistics from that speaker's own utterances.

        For inference on a new speaker: pass a few of their utterances' features. The global
        fallback is left as fitted.
        """
        frames = [_as_frames(features, f"{speaker}[{index}]") for index, features in enumerate(utterances)]
        if not frames:
            raise ConfigError(f"no utterances given for speaker '{speaker}'")
        stacked = np.concatenate(frames)
        if self.dim is not None and stacked.shape[1] != self.dim:
            raise ConfigError(
                f"speaker '{speaker}' has {stacked.shape[1]} feature dimensions, the normaliser {self.dim}"
            )
        self._set_speaker(str(speaker), stacked)
        if self.global_mean is None:
            self.global_mean, self.global_std = _stats(stacked)
            self.global_count = int(stacked.shape[0])
        return self

    def _set_speaker(self, speaker: str, frames: np.ndarray) -> None:
        self.mean[speaker], self.std[speaker] = _stats(frames)
        self.count[speaker] = int(frames.shape[0])

    # -- applying -----------------------------------------------------------------------------

    def statistics(self, speaker: str | None) -> tuple[np.ndarray, np.ndarray]:
        """(mean, SD) used for ``speaker`` under the ``unseen`` policy (None → global)."""
        if self.global_mean is None or self.global_std is None:
            raise ConfigError("the speaker normaliser is not fitted; call fit() first")
        if speaker is not None and str(speaker) in self.mean:
            return self.mean[str(speaker)], self.std[str(speaker)]
        if speaker is not None and self.unseen == "error":
            raise ConfigError(
                f"speaker '{speaker}' was not seen when fitting the normaliser; call fit_speaker() with some of "
                "their utterances, or use unseen='global'"
            )
        return self.global_mean, self.global_std

    def transform(self, features: Any, speaker: str | None) -> np.ndarray:
        """``(features − mean) / SD`` with the speaker's statistics; same shape, float32."""
        array = np.asarray(features, dtype=np.float64)
        mean, std = self.statistics(speaker)
        if array.shape[-1] != mean.shape[0]:
            raise ConfigError(f"features have {array.shape[-1]} dimensions, the normaliser {mean.shape[0]}")
        return ((array - mean) / std).astype(np.float32)

    # -- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        return {
            "format": _FORMAT,
            "unseen": self.unseen,
            "global": None
            if self.global_mean is None or self.global_std is None
            else {"mean": self.global_mean.tolist(), "std": self.global_std.tolist(), "count": self.global_count},
            "speakers": {
                speaker: {
                    "mean": self.mean[speaker].tolist(),
                    "std": self.std[speaker].tolist(),
                    "count": self.count[speaker],
                }
                for speaker in self.speakers
            },
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> SpeakerNormaliser:
        """Rebuild a normaliser from :meth:`state_dict`."""
        if state.get("format") != _FORMAT:
            raise ConfigError(f"not a speaker normaliser state (format {state.get('format')!r}, expected {_FORMAT!r})")
        normaliser = cls(unseen=state.get("unseen", "global"))
        if state.get("global") is not None:
            normaliser.global_mean = np.asarray(state["global"]["mean"], dtype=np.float64)
            normaliser.global_std = np.asarray(state["global"]["std"], dtype=np.float64)
            normaliser.global_count = int(state["global"]["count"])
        for speaker, entry in state.get("speakers", {}).items():
            normaliser.mean[speaker] = np.asarray(entry["mean"], dtype=np.float64)
            normaliser.std[speaker] = np.asarray(entry["std"], dtype=np.float64)
            normaliser.count[speaker] = int(entry["count"])
        return normaliser

    def save(self, path: str | Path) -> Path:
        """Write the state as ``.json`` or ``.safetensors`` (chosen by the suffix)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":
            write_text_atomic(path, json.dumps(self.state_dict()))
        elif path.suffix == ".safetensors":
            from safetensors.numpy import save_file

            if self.global_mean is None or self.global_std is None:
                raise ConfigError("cannot save an unfitted speaker normaliser as safetensors")
            tensors = {"global.mean": self.global_mean, "global.std": self.global_std}
            order = self.speakers
            for index, speaker in enumerate(order):
                tensors[f"speaker{index}.mean"] = self.mean[speaker]
                tensors[f"speaker{index}.std"] = self.std[speaker]
            metadata = {
                "format": _FORMAT,
                "unseen": self.unseen,
                "speakers": json.dumps(order),
                "counts": json.dumps([self.count[s] for s in order]),
                "global_count": str(self.global_count),
            }
            with atomic_path(path) as temporary:
                save_file(tensors, str(temporary), metadata=metadata)
        else:
            raise ConfigError(f"save the speaker normaliser as .json or .safetensors, not '{path.suffix}'")
        return path

    @classmethod
    def load(cls, path: str | Path) -> SpeakerNormaliser:
        """Read a state written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise MissingDataError(f"speaker normaliser file {path} does not exist")
        if path.suffix == ".json":
            try:
                state = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise ConfigError(f"{path}: not valid JSON ({error})") from error
            return cls.from_state_dict(state)
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open is not iterable
            if metadata.get("format") != _FORMAT:
                raise ConfigError(f"{path}: not a speaker normaliser file")
            order = json.loads(metadata["speakers"])
            counts = json.loads(metadata["counts"])
            state = {
                "format": _FORMAT,
                "unseen": metadata.get("unseen", "global"),
                "global": {
                    "mean": tensors["global.mean"],
                    "std": tensors["global.std"],
                    "count": int(metadata["global_count"]),
                },
                "speakers": {
                    speaker: {
                        "mean": tensors[f"speaker{i}.mean"],
                        "std": tensors[f"speaker{i}.std"],
                        "count": counts[i],
                    }
                    for i, speaker in enumerate(order)
                },
            }
            return cls.from_state_dict(state)
        raise ConfigError(f"speaker normaliser files end in .json or .safetensors, not '{path.suffix}'")


# --------------------------------------------------------------------------------------------
# Plain helpers
# --------------------------------------------------------------------------------------------


def _as_frames(features: Any, name: str) -> np.ndarray:
    """``T × D`` float64 frames from a ``T × D`` array or a ``D`` vector."""
    array = np.asarray(features.detach().cpu().numpy() if hasattr(features, "detach") else features, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] == 0:
        raise ConfigError(f"features of '{name}' have shape {array.shape}; expected T × D frames (T ≥ 1) or a D vector")
    if not np.all(np.isfinite(array)):
        raise ConfigError(f"features of '{name}' hold NaN or infinite values")
    return array


def _stats(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and population SD; SD below 1e-8 becomes 1."""
    mean = frames.mean(axis=0)
    std = frames.std(axis=0)
    std = np.where(std < _MIN_STD, 1.0, std)
    return mean, std


def _speaker_lookup(speaker_of_utt: Any) -> Mapping[str, Any]:
    """Utterance id → speaker from a mapping, a Series or an utterance table."""
    columns = getattr(speaker_of_utt, "columns", None)
    if columns is not None:
        if "utt_id" not in columns or "speaker" not in columns:
            raise ConfigError("the utterance table needs 'utt_id' and 'speaker' columns")
        return dict(zip(speaker_of_utt["utt_id"].astype(str), speaker_of_utt["speaker"].astype(str)))
    if hasattr(speaker_of_utt, "to_dict"):
        return speaker_of_utt.to_dict()
    if isinstance(speaker_of_utt, Mapping):
        return speaker_of_utt
    raise ConfigError("speaker_of_utt must be a mapping, a pandas Series or an utterance table")
