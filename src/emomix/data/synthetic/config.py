"""The knobs of the synthetic corpus (:class:`SyntheticConfig`) and the generator's identity."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np

from emomix.data.synthetic.cues import CLASS_CUES
from emomix.errors import ConfigError

GENERATOR = "emomix.data.synthetic"
# Bump whenever the same config would render different files, so a stale folder is rewritten.
GENERATOR_VERSION = 2
CORPUS_NAME = "synthetic"


@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the synthetic corpus, with its default (see ``docs/synthetic.md``).

    Construct it directly or with :meth:`from_overrides`; out-of-range or mistyped values raise
    :class:`~emomix.errors.ConfigError` naming the field.
    """

    seed: int = 0
    size: int = 480
    sessions: int = 5
    speakers_per_session: int = 2
    turns_min: int = 6
    turns_max: int = 10
    classes: tuple[str, ...] = ("angry", "happy", "neutral", "sad")
    persistence: float = 0.7
    balance_labels: bool = True
    min_duration: float = 1.5
    max_duration: float = 4.0
    audio_cue_share: float = 0.85
    complex_cue_share: float = 0.6
    complex_cue_scale: float = 0.7
    audio_cue_strength: float = 1.0
    local_share: float = 0.35
    global_share: float = 0.35
    conflict_share: float = 0.1
    decoy_scale: float = 0.5
    mixed_share: float = 0.15
    local_event_count: int = 2
    text_cue_share: float = 0.6
    text_order_share: float = 0.4
    disagree_share: float = 0.1
    snr_db: float = 30.0
    speaker_spread: float = 1.0
    video: bool = False
    video_cue_share: float = 0.7
    video_noise: float = 0.25
    video_size: int = 64
    video_fps: int = 10

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for item in dataclasses.fields(self):
            value = _coerce(item.name, hints[item.name], getattr(self, item.name))
            object.__setattr__(self, item.name, value)
        self._check_ranges()

    def _check_ranges(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"synthetic corpus: {name}={getattr(self, name)!r} is out of range; {what}")

        need(self.seed >= 0, "seed", "expected a seed >= 0")
        need(self.sessions >= 1, "sessions", "expected at least 1 session")
        need(
            2 * self.sessions <= self.size <= 1_000_000,
            "size",
            f"expected between 2 x sessions ({2 * self.sessions}) and 1000000 utterances",
        )
        need(
            self.speakers_per_session >= 2,
            "speakers_per_session",
            "expected at least 2 (dialogues alternate two speakers)",
        )
        need(self.turns_min >= 2, "turns_min", "expected at least 2 turns per dialogue")
        need(self.turns_max >= self.turns_min, "turns_max", f"expected >= turns_min ({self.turns_min})")
        need(len(self.classes) >= 2, "classes", "expected at least two classes")
        need(len(set(self.classes)) == len(self.classes), "classes", "a class is listed twice")
        unknown = [c for c in self.classes if c not in CLASS_CUES]
        need(not unknown, "classes", f"unknown class(es) {unknown}; the generator knows {sorted(CLASS_CUES)}")
        for name in (
            "persistence",
            "audio_cue_share",
            "complex_cue_share",
            "complex_cue_scale",
            "local_share",
            "global_share",
            "conflict_share",
            "decoy_scale",
            "mixed_share",
            "text_cue_share",
            "text_order_share",
            "disagree_share",
            "video_cue_share",
        ):
            need(0.0 <= getattr(self, name) <= 1.0, name, "expected a share between 0 and 1")
        need(
            self.text_cue_share + self.disagree_share <= 1.0,
            "disagree_share",
            f"text_cue_share + disagree_share must not exceed 1 (text_cue_share={self.text_cue_share})",
        )
        need(
            self.local_share + self.global_share + self.conflict_share <= 1.0,
            "conflict_share",
            "local_share + global_share + conflict_share must not exceed 1 (the rest carries both scales)",
        )
        need(0.0 <= self.audio_cue_strength <= 3.0, "audio_cue_strength", "expected 0 (no cue) to 3")
        need(1 <= self.local_event_count <= 4, "local_event_count", "expected 1 to 4 events")
        need(1.0 <= self.min_duration <= 30.0, "min_duration", "expected 1 to 30 seconds")
        need(
            self.min_duration < self.max_duration <= 30.0,
            "max_duration",
            f"expected above min_duration ({self.min_duration}) and at most 30 s",
        )
        need(-10.0 <= self.snr_db <= 80.0, "snr_db", "expected -10 to 80 dB")
        need(0.0 <= self.speaker_spread <= 3.0, "speaker_spread", "expected 0 (identical voices) to 3")
        need(0.0 <= self.video_noise <= 1.0, "video_noise", "expected 0 to 1")
        need(
            32 <= self.video_size <= 256 and self.video_size % 2 == 0,
            "video_size",
            "expected an even size from 32 to 256 pixels",
        )
        need(1 <= self.video_fps <= 60, "video_fps", "expected 1 to 60 frames per second")

    @classmethod
    def field_names(cls) -> list[str]:
        """Names of the knobs, in declaration order."""
        return [item.name for item in dataclasses.fields(cls)]

    @classmethod
    def from_overrides(cls, **overrides: Any) -> SyntheticConfig:
        """The default config with some knobs changed; an unknown knob raises :class:`ConfigError`."""
        valid = cls.field_names()
        unknown = [key for key in overrides if key not in valid]
        if unknown:
            raise ConfigError(f"synthetic corpus: unknown setting {unknown[0]!r}; valid settings: {', '.join(valid)}")
        return cls(**overrides)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON values."""
        data = dataclasses.asdict(self)
        data["classes"] = list(self.classes)
        return data


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    """Check (and gently convert) one config value against its annotation."""

    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"synthetic corpus: {name} expects {expected}, got {value!r} ({type(value).__name__})")

    if annotation is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no"}:
            return value.lower() in {"true", "yes"}
        raise wrong("true or false")
    if annotation is int:
        if isinstance(value, (bool, np.bool_)):
            raise wrong("an integer")
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise wrong("an integer")
    if annotation is float:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise wrong("a number")
        if not math.isfinite(float(value)):
            raise wrong("a finite number")
        return float(value)
    if typing.get_origin(annotation) is tuple:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise wrong("a list of class names")
        return tuple(value)
    raise AssertionError(f"unhandled config annotation {annotation!r} for {name}")  # a programming error
