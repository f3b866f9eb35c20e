"""The built-in synthetic corpus: speech-like audio, transcripts and (optionally) face video whose
emotion cues are controlled, so the project's hypotheses can be tested without any real data.

The generative process (documented step by step in ``docs/synthetic.md``):

1. **Speakers and sessions.** ``sessions`` sessions of ``speakers_per_session`` speakers (female
   and male voices in turn). Each voice has its own F0 base and range, speaking rate, formant
   scaling, glottal tension (spectral tilt), breathiness and loudness; the spread between speakers
   is of the same order as the emotion cues, so per-speaker normalisation matters.
2. **Dialogues.** Each session holds dialogues of ``turns_min``..``turns_max`` turns alternating
   between two speakers. Every turn after the first keeps the previous turn's emotion with
   probability ``persistence``, so the conversational context is informative; otherwise it starts
   a new run whose emotion is drawn afresh (it may coincide with the last one). With
   ``balance_labels`` the fresh draws are dealt so that every class gets about as many turns per
   session; without it they are uniform.
3. **Cues.** Every class has one cue type (:data:`CLASS_CUES`): *global* classes shift the
   prosody of the whole utterance (F0 level and range, rate, loudness, tension); *local* classes
   put one to ``local_event_count`` short events (0.15-0.35 s) into an otherwise neutral utterance,
   and the rest of the utterance is re-levelled so that its mean log-F0 and mean level equal those
   of a neutral utterance: a mean-pooled view cannot see local events, a view that selects a few
   salient frames can. ``neutral`` has no cue. A non-neutral utterance carries its audio cue with
   probability ``audio_cue_share``; otherwise it sounds neutral.
4. **Text.** Filler words plus, with probability ``text_cue_share``, one cue word of the label's
   class; with probability ``disagree_share`` one cue word of a *different* class (the label then
   follows the audio, whose cue is forced on); otherwise filler only.
5. **Audio.** Words are 1-3 syllables; each syllable is a Rosenberg glottal pulse train on its F0
   contour, shaped by three formant resonances of its vowel, with an attack/decay envelope and an
   optional noise onset; pauses between syllables, words and phrases; leading and trailing silence;
   low-pass background noise at ``snr_db`` below the speaker's level. 16 kHz, mono, 16-bit PCM.
6. **Video** (``video=True``): a 64x64 grayscale cartoon face per utterance at 10 fps whose mouth
   curvature, brow angle and eye openness follow the label (with probability ``video_cue_share``),
   whose mouth opens with the syllables, and which carries pose, brightness and pixel noise.

Everything is drawn from random streams derived from one ``seed``: the same config writes
byte-identical files. ``generation.json`` records the config and every latent fact per utterance.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from emomix.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

GENERATOR = "emomix.data.synthetic"
# Bump whenever the same config would render different files, so a stale folder is rewritten.
GENERATOR_VERSION = 1
SAMPLE_RATE = 16000
CORPUS_NAME = "synthetic"


# --------------------------------------------------------------------------------------------
# Class cues and vocabulary: the data the generator is built from
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassCue:
    """How one emotion class shows in audio, video and text.

    ``kind`` is ``"global"`` (the whole utterance's prosody shifts), ``"local"`` (short events in
    an otherwise neutral utterance) or ``"none"``. Global shifts are given at full intensity and
    scaled per utterance: ``f0_shift_st`` semitones, ``range_scale`` and ``rate_scale`` factors,
    ``loudness_db`` and ``tension_scale`` (the glottal closing phase; below 1 is tenser and
    brighter). ``event`` names the local event (``"burst"`` or ``"laugh"``). ``face`` gives the
    video expression at full intensity: mouth curvature (+ smile), brow tilt (+ inner ends up),
    eye openness change and brow raise.
    """

    kind: str
    description: str
    f0_shift_st: float = 0.0
    range_scale: float = 1.0
    rate_scale: float = 1.0
    loudness_db: float = 0.0
    tension_scale: float = 1.0
    event: str | None = None
    face: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    words: tuple[str, ...] = ()


CLASS_CUES: dict[str, ClassCue] = {
    "angry": ClassCue(
        kind="local",
        description="1..local_event_count brief (150-300 ms) bursts on a word: +8 dB, +7 semitones, tense voice, rough",
        event="burst",
        face=(-0.4, -1.0, -0.35, -0.08),
        words=("furious", "hate", "annoyed", "outrageous", "stupid", "enough"),
    ),
    "happy": ClassCue(
        kind="local",
        description="1..local_event_count laugh-like events (3-4 breathy 'ha' pulses, ~0.3 s) rising from +5 to +10 semitones, +7 dB",
        event="laugh",
        face=(1.0, 0.0, -0.2, 0.05),
        words=("wonderful", "great", "love", "glad", "fantastic", "lovely"),
    ),
    "neutral": ClassCue(
        kind="none",
        description="no audio or video cue",
        words=("okay", "fine", "usual", "alright", "normal", "regular"),
    ),
    "sad": ClassCue(
        kind="global",
        description="whole utterance: -3 semitones, F0 range x0.5, rate x0.8, -5 dB, lax (darker) voice",
        f0_shift_st=-3.0,
        range_scale=0.5,
        rate_scale=0.8,
        loudness_db=-5.0,
        tension_scale=1.35,
        face=(-0.9, 0.8, -0.3, 0.0),
        words=("miss", "lonely", "sorry", "tired", "lost", "hopeless"),
    ),
    "excited": ClassCue(
        kind="global",
        description="whole utterance: +3 semitones, F0 range x1.6, rate x1.2, +4 dB, tense (brighter) voice",
        f0_shift_st=3.0,
        range_scale=1.6,
        rate_scale=1.2,
        loudness_db=4.0,
        tension_scale=0.75,
        face=(0.8, 0.0, 0.4, 0.1),
        words=("amazing", "wow", "awesome", "finally", "yes", "unbelievable"),
    ),
}

# Syllable counts of the cue words (every word is 1-3 syllables; "unbelievable" is sung as 3).
_CUE_SYLLABLES: dict[str, int] = {
    "furious": 3, "hate": 1, "annoyed": 2, "outrageous": 3, "stupid": 2, "enough": 2,
    "wonderful": 3, "great": 1, "love": 1, "glad": 1, "fantastic": 3, "lovely": 2,
    "okay": 2, "fine": 1, "usual": 3, "alright": 2, "normal": 2, "regular": 3,
    "miss": 1, "lonely": 2, "sorry": 2, "tired": 2, "lost": 1, "hopeless": 2,
    "amazing": 3, "wow": 1, "awesome": 2, "finally": 3, "yes": 1, "unbelievable": 3,
}

FILLER_WORDS: dict[str, int] = {
    "the": 1, "a": 1, "we": 1, "i": 1, "you": 1, "it": 1, "was": 1, "to": 1, "and": 1, "then": 1,
    "there": 1, "said": 1, "went": 1, "home": 1, "car": 1, "house": 1, "train": 1, "door": 1,
    "today": 2, "going": 2, "morning": 2, "table": 2, "window": 2, "meeting": 2, "dinner": 2,
    "after": 2, "about": 2, "office": 2, "people": 2, "letter": 2, "number": 2, "over": 2,
    "station": 2, "kitchen": 2, "paper": 2, "monday": 2, "maybe": 2, "yesterday": 3,
    "probably": 3, "tomorrow": 3, "another": 3, "together": 3, "afternoon": 3, "remember": 3,
}

# Formants (Hz) of five vowels for an adult male vocal tract; scaled per speaker.
_VOWEL_FORMANTS: dict[str, tuple[float, float, float]] = {
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (270.0, 2290.0, 3010.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
}
_FORMANT_BANDWIDTHS = (90.0, 110.0, 160.0)


def word_syllables(token: str) -> int:
    """Number of syllables the generator gives a vocabulary word."""
    if token in FILLER_WORDS:
        return FILLER_WORDS[token]
    if token in _CUE_SYLLABLES:
        return _CUE_SYLLABLES[token]
    raise KeyError(token)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


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
    audio_cue_share: float = 0.7
    audio_cue_strength: float = 1.0
    local_event_count: int = 2
    text_cue_share: float = 0.6
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
        need(2 * self.sessions <= self.size <= 1_000_000, "size", f"expected between 2 x sessions ({2 * self.sessions}) and 1000000 utterances")
        need(self.speakers_per_session >= 2, "speakers_per_session", "expected at least 2 (dialogues alternate two speakers)")
        need(self.turns_min >= 2, "turns_min", "expected at least 2 turns per dialogue")
        need(self.turns_max >= self.turns_min, "turns_max", f"expected >= turns_min ({self.turns_min})")
        need(len(self.classes) >= 2, "classes", "expected at least two classes")
        need(len(set(self.classes)) == len(self.classes), "classes", "a class is listed twice")
        unknown = [c for c in self.classes if c not in CLASS_CUES]
        need(not unknown, "classes", f"unknown class(es) {unknown}; the generator knows {sorted(CLASS_CUES)}")
        for name in ("persistence", "audio_cue_share", "text_cue_share", "disagree_share", "video_cue_share"):
            need(0.0 <= getattr(self, name) <= 1.0, name, "expected a share between 0 and 1")
        need(self.text_cue_share + self.disagree_share <= 1.0, "disagree_share",
             f"text_cue_share + disagree_share must not exceed 1 (text_cue_share={self.text_cue_share})")
        need(0.0 <= self.audio_cue_strength <= 3.0, "audio_cue_strength", "expected 0 (no cue) to 3")
        need(1 <= self.local_event_count <= 4, "local_event_count", "expected 1 to 4 events")
        need(1.0 <= self.min_duration <= 30.0, "min_duration", "expected 1 to 30 seconds")
        need(self.min_duration < self.max_duration <= 30.0, "max_duration", f"expected above min_duration ({self.min_duration}) and at most 30 s")
        need(-10.0 <= self.snr_db <= 80.0, "snr_db", "expected -10 to 80 dB")
        need(0.0 <= self.speaker_spread <= 3.0, "speaker_spread", "expected 0 (identical voices) to 3")
        need(0.0 <= self.video_noise <= 1.0, "video_noise", "expected 0 to 1")
        need(32 <= self.video_size <= 256 and self.video_size % 2 == 0, "video_size", "expected an even size from 32 to 256 pixels")
        need(1 <= self.video_fps <= 60, "video_fps", "expected 1 to 60 frames per second")

    @classmethod
    def field_names(cls) -> list[str]:
        """Names of the knobs, in declaration order."""
        return [item.name for item in dataclasses.fields(cls)]

    @classmethod
    def from_overrides(cls, **overrides: Any) -> "SyntheticConfig":
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


# --------------------------------------------------------------------------------------------
# The plan: every latent fact of the corpus, drawn before any sample is rendered
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeakerVoice:
    """One speaker's voice; ``loudness_db`` is the RMS level of a neutral syllable in dBFS."""

    speaker: str
    session: str
    sex: str
    f0_base: float
    f0_range_st: float
    rate: float
    formant_scale: float
    tension: float
    breath: float
    loudness_db: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass
class Syllable:
    """One voiced segment: times in seconds from the utterance start, F0 in semitones re the speaker base."""

    start: float
    duration: float
    vowel: str
    kind: str = "speech"  # "speech", "burst" or "laugh"
    word: int | None = None  # index of its word, None for a laugh pulse
    f0_start_st: float = 0.0
    f0_end_st: float = 0.0
    gain_db: float = 0.0
    tension: float = 0.15
    breath: float = 0.03
    onset: bool = False
    roughness: float = 0.0

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass
class UtterancePlan:
    """Everything about one utterance that the renderers need, and the latent facts tests check."""

    index: int
    utt_id: str
    session: str
    speaker: str
    dialogue_id: str
    turn: int
    label: str
    persisted: bool
    cue_kind: str
    audio_cue: bool
    cue_intensity: float
    text_cue: bool
    text_class: str | None
    disagree: bool
    video_cue: bool
    tokens: list[str]
    words: list[dict[str, Any]]
    events: list[dict[str, Any]]
    duration: float
    level_db: float
    f0_offset_st: float
    rate: float
    syllables: list[Syllable] = field(default_factory=list, repr=False)

    @property
    def text(self) -> str:
        return " ".join(self.tokens)

    def facts(self) -> dict[str, Any]:
        """The latent facts written to ``generation.json`` (no per-syllable detail)."""
        return {
            "utt_id": self.utt_id,
            "session": self.session,
            "speaker": self.speaker,
            "dialogue_id": self.dialogue_id,
            "turn": self.turn,
            "label": self.label,
            "persisted": self.persisted,
            "cue_kind": self.cue_kind,
            "audio_cue": self.audio_cue,
            "cue_intensity": round(self.cue_intensity, 4),
            "text_cue": self.text_cue,
            "text_class": self.text_class,
            "disagree": self.disagree,
            "video_cue": self.video_cue,
            "events": self.events,
            "duration": round(self.duration, 4),
            "level_db": round(self.level_db, 3),
            "f0_offset_st": round(self.f0_offset_st, 3),
            "rate": round(self.rate, 4),
        }


@dataclass
class CorpusPlan:
    """The whole corpus before rendering: voices and utterance plans in dialogue order."""

    config: SyntheticConfig
    speakers: dict[str, SpeakerVoice]
    utterances: list[UtterancePlan]


def plan_corpus(config: SyntheticConfig) -> CorpusPlan:
    """Draw every latent fact of the corpus (structure, labels, cues, text, timing) for a config.

    Pure and fast (no audio is rendered), so tests can check the statistics of large corpora.
    """
    speakers = _draw_speakers(config)
    structure_rng = np.random.default_rng([config.seed, 2])
    utterances: list[UtterancePlan] = []
    classes = list(config.classes)
    session_ids = [f"ses{s + 1:02d}" for s in range(config.sessions)]
    quotas = [config.size // config.sessions + (1 if s < config.size % config.sessions else 0) for s in range(config.sessions)]
    for session, quota in zip(session_ids, quotas):
        session_speakers = [v for v in speakers.values() if v.session == session]
        dialogues = []
        for dialogue_number, length in enumerate(_dialogue_lengths(quota, config, structure_rng)):
            pair = structure_rng.choice(len(session_speakers), size=2, replace=False)
            persisted = [False] + [bool(structure_rng.random() < config.persistence) for _ in range(length - 1)]
            dialogues.append((f"{session}_d{dialogue_number + 1:02d}", pair, persisted))
        # A run is a stretch of turns that kept the emotion of the turn before; each run gets one label.
        run_lengths = [len(run) for _, _, flags in dialogues for run in _runs(flags)]
        run_labels = iter(_run_labels(run_lengths, classes, config.balance_labels, structure_rng))
        for dialogue_id, pair, persisted in dialogues:
            label = classes[0]
            for turn, kept in enumerate(persisted):
                if not kept:
                    label = next(run_labels)
                voice = session_speakers[int(pair[turn % 2])]
                index = len(utterances)
                rng = np.random.default_rng([config.seed, 3, index])
                utterances.append(
                    _plan_utterance(index, f"{dialogue_id}_t{turn:02d}", dialogue_id, turn, label, kept, voice, config, rng)
                )
    return CorpusPlan(config=config, speakers=speakers, utterances=utterances)


def _runs(flags: list[bool]) -> list[list[bool]]:
    """Split a dialogue's persisted flags into runs (a run starts at every False)."""
    runs: list[list[bool]] = []
    for kept in flags:
        if kept and runs:
            runs[-1].append(kept)
        else:
            runs.append([kept])
    return runs


def _run_labels(run_lengths: list[int], classes: list[str], balance: bool, rng: np.random.Generator) -> list[str]:
    """One label per run: uniform draws, or balanced so every class gets about as many turns.

    Balancing takes the runs from longest to shortest (ties in random order) and gives each to
    the class with the fewest turns so far (ties at random): a run's label does not depend on
    its length or position, yet per-session class counts differ by at most about one run.
    """
    if not balance:
        return [classes[int(rng.integers(len(classes)))] for _ in run_lengths]
    order = np.lexsort((rng.random(len(run_lengths)), -np.asarray(run_lengths)))
    counts = np.zeros(len(classes))
    labels: list[str] = [""] * len(run_lengths)
    for i in order:
        candidates = np.flatnonzero(counts == counts.min())
        chosen = int(candidates[int(rng.integers(len(candidates)))])
        labels[int(i)] = classes[chosen]
        counts[chosen] += run_lengths[int(i)]
    return labels


def _draw_speakers(config: SyntheticConfig) -> dict[str, SpeakerVoice]:
    rng = np.random.default_rng([config.seed, 1])
    spread = config.speaker_spread
    voices: dict[str, SpeakerVoice] = {}
    for s in range(config.sessions):
        session = f"ses{s + 1:02d}"
        for k in range(config.speakers_per_session):
            sex = "F" if k % 2 == 0 else "M"
            suffix = "" if k < 2 else str(k // 2 + 1)
            speaker = f"{session}_{sex}{suffix}"
            base = 205.0 if sex == "F" else 115.0
            voices[speaker] = SpeakerVoice(
                speaker=speaker,
                session=session,
                sex=sex,
                f0_base=float(base * 2.0 ** (np.clip(rng.normal(0.0, 1.6 * spread), -4.0, 4.0) / 12.0)),
                f0_range_st=float(np.clip(3.5 + rng.uniform(-1.2, 1.2) * spread, 1.0, 8.0)),
                rate=float(np.clip(4.5 * 2.0 ** rng.normal(0.0, 0.2 * spread), 3.0, 7.0)),
                formant_scale=float((1.15 if sex == "F" else 1.0) * (1.0 + np.clip(rng.normal(0.0, 0.04 * spread), -0.1, 0.1))),
                tension=float(np.clip(0.16 * (1.0 + rng.uniform(-0.3, 0.3) * spread), 0.08, 0.3)),
                breath=float(np.clip(0.03 + rng.uniform(0.0, 0.05) * spread, 0.0, 0.2)),
                loudness_db=float(np.clip(-30.0 + rng.normal(0.0, 2.5 * spread), -38.0, -25.0)),
            )
    return voices


def _dialogue_lengths(quota: int, config: SyntheticConfig, rng: np.random.Generator) -> list[int]:
    """Split a session's utterance quota into dialogues of turns_min..turns_max turns.

    The number of dialogues is the quota over a random mean length (clipped to what the bounds
    allow); each dialogue starts at turns_min and the remaining turns go one by one to random
    dialogues below turns_max. When no split fits the bounds (a quota of 11 with 6..10 turns),
    the dialogues are as even as possible.
    """
    lo, hi = config.turns_min, config.turns_max
    fewest, most = -(-quota // hi), quota // lo
    if fewest > most:
        count = fewest
        return [quota // count + (1 if k < quota % count else 0) for k in range(count)]
    count = int(round(quota / rng.uniform(lo, hi + 1e-9)))
    count = min(max(count, fewest), most)
    lengths = np.full(count, lo)
    for _ in range(quota - count * lo):
        open_slots = np.flatnonzero(lengths < hi)
        lengths[open_slots[int(rng.integers(len(open_slots)))]] += 1
    return [int(n) for n in lengths]


def _plan_utterance(
    index: int, utt_id: str, dialogue_id: str, turn: int, label: str, persisted: bool,
    voice: SpeakerVoice, config: SyntheticConfig, rng: np.random.Generator,
) -> UtterancePlan:
    cue = CLASS_CUES[label]
    classes = list(config.classes)

    # Text and cue decisions are drawn first and always in the same order, so changing one share
    # moves as few other facts as possible.
    u_text = rng.random()
    u_audio = rng.random()
    u_video = rng.random()
    intensity = float(config.audio_cue_strength * rng.uniform(0.6, 1.0))
    if u_text < config.text_cue_share:
        text_class, disagree = label, False
    elif u_text < config.text_cue_share + config.disagree_share:
        others = [c for c in classes if c != label]
        text_class, disagree = others[int(rng.integers(len(others)))], True
    else:
        text_class, disagree = None, False
    audio_cue = cue.kind != "none" and (disagree or u_audio < config.audio_cue_share) and intensity > 0.0
    video_cue = cue.kind != "none" and u_video < config.video_cue_share
    s = intensity if audio_cue else 0.0
    global_cue = audio_cue and cue.kind == "global"
    local_cue = audio_cue and cue.kind == "local"

    rate = voice.rate * math.exp(rng.normal(0.0, 0.04))
    if global_cue:
        rate *= cue.rate_scale ** s
    syllable_time = 1.0 / rate
    target = rng.uniform(config.min_duration, config.max_duration)
    lead, trail = rng.uniform(0.12, 0.3), rng.uniform(0.15, 0.35)
    n_events = int(rng.integers(1, config.local_event_count + 1)) if local_cue else 0
    laugh_time = 0.37 * n_events if (local_cue and cue.event == "laugh") else 0.0
    budget = max(target - lead - trail - laugh_time, 0.3)

    def estimate(tokens: list[str]) -> float:
        return sum(word_syllables(t) * syllable_time + 0.065 for t in tokens)

    cue_word = None
    if text_class is not None:
        pool = CLASS_CUES[text_class].words
        cue_word = pool[int(rng.integers(len(pool)))]
    filler_pool = list(FILLER_WORDS)
    fillers: list[str] = []
    while estimate(fillers + ([cue_word] if cue_word else [])) < budget or len(fillers) < 1:
        fillers.append(filler_pool[int(rng.integers(len(filler_pool)))])
    if len(fillers) > 1:
        with_last = estimate(fillers + ([cue_word] if cue_word else []))
        without_last = with_last - (word_syllables(fillers[-1]) * syllable_time + 0.065)
        if abs(without_last - budget) < abs(with_last - budget):
            fillers.pop()
    tokens = list(fillers)
    if cue_word is not None:
        tokens.insert(int(rng.integers(len(tokens) + 1)), cue_word)

    # Lay out syllables, pauses and events on the time axis.
    burst_words: dict[int, float] = {}
    laugh_before: set[int] = set()
    if local_cue and cue.event == "burst":
        chosen = rng.choice(len(tokens), size=min(n_events, len(tokens)), replace=False)
        burst_words = {int(w): float(rng.uniform(0.15, 0.30)) for w in chosen}
    elif local_cue and cue.event == "laugh":
        slots = list(range(1, len(tokens))) if len(tokens) >= 2 else [len(tokens)]
        chosen = rng.choice(len(slots), size=min(n_events, len(slots)), replace=False)
        laugh_before = {slots[int(c)] for c in chosen}

    syllables: list[Syllable] = []
    events: list[dict[str, Any]] = []
    words: list[dict[str, Any]] = []
    t = lead
    for w, token in enumerate(tokens):
        if w in laugh_before:
            t = _lay_out_laugh(t, rng, syllables, events)
        n_syll = word_syllables(token)
        vowels = _word_vowels(token, n_syll)
        n_burst = min(n_syll, int(rng.integers(1, 3))) if w in burst_words else 0
        word_start = t
        for j in range(n_syll):
            duration = syllable_time * rng.uniform(0.75, 1.25)
            kind = "speech"
            if j < n_burst:
                duration = burst_words[w] / n_burst
                kind = "burst"
            syllables.append(Syllable(start=t, duration=duration, vowel=vowels[j], kind=kind, word=w,
                                      onset=bool(rng.random() < 0.5)))
            t += duration
            if j < n_syll - 1:
                t += rng.uniform(0.005, 0.025)
        if n_burst:
            burst = [x for x in syllables if x.word == w and x.kind == "burst"]
            events.append({"kind": "burst", "start": round(burst[0].start, 4), "end": round(burst[-1].end, 4)})
        words.append({"token": token, "start": round(word_start, 4), "end": round(t, 4)})
        t += rng.uniform(0.04, 0.09)
        if w < len(tokens) - 1 and rng.random() < 0.12:
            t += rng.uniform(0.15, 0.3)
    if len(tokens) in laugh_before:
        t = _lay_out_laugh(t, rng, syllables, events)
    speech_end = t
    duration = speech_end + trail
    if duration > config.max_duration:
        # Compress the speech part in time; the rare overshoot is at most about one word.
        factor = (config.max_duration - lead - trail) / (speech_end - lead)
        _scale_times(syllables, words, events, lead, factor)
        duration = config.max_duration
    duration = max(duration, config.min_duration)

    f0_offset = float(rng.normal(0.0, 0.6))
    level = voice.loudness_db + float(rng.normal(0.0, 1.0))
    f0_range = voice.f0_range_st
    tension = voice.tension
    if global_cue:
        f0_offset += cue.f0_shift_st * s
        f0_range *= cue.range_scale ** s
        level += cue.loudness_db * s
        tension *= cue.tension_scale ** s
    _shape_prosody(syllables, duration, f0_range, tension, voice.breath, s, rng)

    cue_kind = cue.kind if audio_cue else "none"
    return UtterancePlan(
        index=index, utt_id=utt_id, session=voice.session, speaker=voice.speaker, dialogue_id=dialogue_id,
        turn=turn, label=label, persisted=persisted, cue_kind=cue_kind, audio_cue=bool(audio_cue),
        cue_intensity=intensity if audio_cue else 0.0, text_cue=text_class == label, text_class=text_class,
        disagree=disagree, video_cue=bool(video_cue), tokens=tokens, words=words, events=events,
        duration=float(duration), level_db=float(level), f0_offset_st=f0_offset, rate=float(rate), syllables=syllables,
    )


def _lay_out_laugh(t: float, rng: np.random.Generator, syllables: list[Syllable], events: list[dict[str, Any]]) -> float:
    """Append a laugh (3-4 short 'ha' pulses) at time ``t``; return the time after it."""
    t += rng.uniform(0.04, 0.08)
    start = t
    pulses = int(rng.integers(3, 5))
    for p in range(pulses):
        duration = rng.uniform(0.05, 0.07)
        syllables.append(Syllable(start=t, duration=duration, vowel="a", kind="laugh", word=None, onset=False))
        t += duration
        if p < pulses - 1:
            t += rng.uniform(0.025, 0.04)
    events.append({"kind": "laugh", "start": round(start, 4), "end": round(t, 4)})
    return t + rng.uniform(0.04, 0.08)


def _scale_times(syllables: list[Syllable], words: list[dict[str, Any]], events: list[dict[str, Any]], origin: float, factor: float) -> None:
    for x in syllables:
        x.start = origin + (x.start - origin) * factor
        x.duration *= factor
    for item in list(words) + list(events):
        item["start"] = round(origin + (item["start"] - origin) * factor, 4)
        item["end"] = round(origin + (item["end"] - origin) * factor, 4)


def _shape_prosody(syllables: list[Syllable], duration: float, f0_range: float, tension: float, breath: float,
                   s: float, rng: np.random.Generator) -> None:
    """F0 contour, level and voice quality per syllable, with the local events' mean removed."""
    last_word = max((x.word for x in syllables if x.word is not None), default=0)
    accented: set[int] = set()
    event_f0 = np.zeros(len(syllables))
    event_gain = np.zeros(len(syllables))
    laugh_ids = [i for i, x in enumerate(syllables) if x.kind == "laugh"]
    for i, x in enumerate(syllables):
        centre = x.start + x.duration / 2
        decline = 0.4 * f0_range * (1.0 - 2.0 * centre / duration)
        base = decline + rng.normal(0.0, 0.25 * f0_range)
        gain = rng.normal(0.0, 1.0)
        first_of_word = x.word is not None and (i == 0 or syllables[i - 1].word != x.word)
        if first_of_word and rng.random() < 0.35:
            accented.add(i)
            base += rng.uniform(0.3, 0.8) * f0_range
            gain += 2.0
        fall = 0.15 * f0_range
        x.f0_start_st, x.f0_end_st = base + fall, base - fall
        if x.word == last_word and (i == len(syllables) - 1 or syllables[i + 1].word != x.word):
            x.f0_end_st -= 0.5 * f0_range
            gain -= 2.0
        x.gain_db = gain
        x.tension = tension * rng.uniform(0.9, 1.1)
        x.breath = breath
        if x.kind == "burst":
            event_f0[i] = 7.0 * s
            event_gain[i] = 8.0 * s
            x.f0_end_st = x.f0_start_st  # a held, shouted pitch
            x.tension = tension * (1.0 - 0.5 * min(s, 1.0))
            x.roughness = 0.35 * min(s, 1.0)
    for k, i in enumerate(laugh_ids):
        x = syllables[i]
        # Each pulse rises, and the laugh as a whole climbs from +5 to +10 semitones.
        position = k / max(len(laugh_ids) - 1, 1)
        x.f0_start_st = 0.0
        x.f0_end_st = 1.5 * s
        event_f0[i] = (5.0 + 5.0 * position) * s
        event_gain[i] = 7.0 * s
        x.gain_db = rng.normal(0.0, 1.0)
        x.breath = max(breath, 0.2)
        x.tension = tension
    if syllables and (event_f0.any() or event_gain.any()):
        # Re-level the utterance so its duration-weighted mean log-F0 and mean level equal those
        # of the same utterance without events: the events are then invisible to a mean pool.
        weights = np.array([x.duration for x in syllables])
        weights = weights / weights.sum()
        event_f0 -= float(weights @ event_f0)
        event_gain -= float(weights @ event_gain)
    for i, x in enumerate(syllables):
        x.f0_start_st += event_f0[i]
        x.f0_end_st += event_f0[i]
        x.gain_db += event_gain[i]


def _word_vowels(token: str, n_syll: int) -> list[str]:
    """The vowels a word is sung on: its spelt vowels in order (y as i), cycled as needed."""
    letters = [("i" if c == "y" else c) for c in token if c in "aeiouy"]
    if not letters:
        letters = ["aeiou"[zlib.crc32(token.encode()) % 5]]
    # Collapse spelt digraphs ("ea", "ou") so that n syllables get n distinct-ish nuclei.
    nuclei: list[str] = []
    for c in letters:
        if not nuclei or nuclei[-1] != c:
            nuclei.append(c)
    step = max(len(nuclei) / n_syll, 1.0)
    return [nuclei[min(int(j * step), len(nuclei) - 1)] for j in range(n_syll)]


# --------------------------------------------------------------------------------------------
# Rendering: plain functions on arrays
# --------------------------------------------------------------------------------------------


def render_audio(plan: UtterancePlan, voice: SpeakerVoice, config: SyntheticConfig) -> np.ndarray:
    """The utterance's waveform: float32 samples in [-1, 1] at 16 kHz."""
    from scipy.signal import lfilter

    rng = np.random.default_rng([config.seed, 4, plan.index])
    sr = SAMPLE_RATE
    n_total = int(round(plan.duration * sr))
    out = np.zeros(n_total, dtype=np.float64)
    base = voice.f0_base * 2.0 ** (plan.f0_offset_st / 12.0)
    reference = 10.0 ** (plan.level_db / 20.0)
    for x in plan.syllables:
        start = int(round(x.start * sr))
        n = min(int(round(x.duration * sr)), n_total - start)
        if n < 16:
            continue
        f0 = base * 2.0 ** (np.linspace(x.f0_start_st, x.f0_end_st, n) / 12.0)
        phase = np.cumsum(f0) / sr + rng.random()
        flow = glottal_flow(phase % 1.0, open_fraction=0.4, closing_fraction=x.tension)
        source = np.diff(flow, prepend=flow[0])
        source = source / (np.std(source) + 1e-12) + x.breath * 4.0 * rng.standard_normal(n) * (0.3 + flow)
        if x.roughness:
            # Shouted voice: irregular amplitude from cycle to cycle.
            source *= 1.0 + x.roughness * np.sin(2 * np.pi * 37.0 * np.arange(n) / sr + rng.random() * 6.3)
        b, a = formant_filter(_VOWEL_FORMANTS[x.vowel], voice.formant_scale, sr)
        voiced = lfilter(b, a, source) * syllable_envelope(n, sr)
        voiced *= reference * 10.0 ** (x.gain_db / 20.0) / (np.sqrt(np.mean(voiced**2)) + 1e-12)
        if x.onset:
            m = min(int(0.03 * sr), n)
            burst = np.diff(rng.standard_normal(m + 1)) * np.hanning(m)
            voiced[:m] += burst * reference * 10.0 ** ((x.gain_db - 14.0) / 20.0)
        out[start:start + n] += voiced
    noise = lfilter([1.0], [1.0, -0.9], rng.standard_normal(n_total))
    noise *= 10.0 ** ((voice.loudness_db - config.snr_db) / 20.0) / (np.std(noise) + 1e-12)
    out += noise
    peak = float(np.max(np.abs(out))) if n_total else 0.0
    if peak > 0.98:
        out *= 0.98 / peak  # rare: a loud speaker's loudest burst; keeps the file unclipped
    return out.astype(np.float32)


def glottal_flow(phase: np.ndarray, open_fraction: float = 0.4, closing_fraction: float = 0.16) -> np.ndarray:
    """Rosenberg glottal flow pulse at each cycle phase in [0, 1): a smaller closing fraction
    makes a more abrupt closure, i.e. a tenser, brighter voice."""
    flow = np.zeros_like(phase)
    rising = phase < open_fraction
    flow[rising] = 0.5 * (1.0 - np.cos(np.pi * phase[rising] / open_fraction))
    falling = (phase >= open_fraction) & (phase < open_fraction + closing_fraction)
    flow[falling] = np.cos(np.pi * (phase[falling] - open_fraction) / (2.0 * closing_fraction))
    return flow


def formant_filter(formants: Iterable[float], scale: float, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """IIR coefficients (b, a) of cascaded two-pole resonators at ``formants * scale`` Hz."""
    a = np.array([1.0])
    for frequency, bandwidth in zip(formants, _FORMANT_BANDWIDTHS):
        frequency = min(frequency * scale, 0.45 * sample_rate)
        r = math.exp(-math.pi * bandwidth / sample_rate)
        a = np.convolve(a, [1.0, -2.0 * r * math.cos(2.0 * math.pi * frequency / sample_rate), r * r])
    return np.array([a.sum()]), a


def syllable_envelope(n: int, sample_rate: int) -> np.ndarray:
    """Raised-cosine attack (25 ms) and release (50 ms), flat in between."""
    env = np.ones(n)
    attack = max(1, min(int(0.025 * sample_rate), n // 3))
    release = max(1, min(int(0.05 * sample_rate), n // 3))
    env[:attack] = 0.5 * (1.0 - np.cos(np.pi * np.arange(attack) / attack))
    env[n - release:] = 0.5 * (1.0 + np.cos(np.pi * np.arange(release) / release))
    return env


def render_video(plan: UtterancePlan, config: SyntheticConfig) -> np.ndarray:
    """Grayscale face frames ``(T, size, size)`` uint8 whose expression follows the label."""
    rng = np.random.default_rng([config.seed, 5, plan.index])
    fps, size = config.video_fps, config.video_size
    n_frames = max(1, int(round(plan.duration * fps)))
    times = (np.arange(n_frames) + 0.5) / fps
    cue = CLASS_CUES[plan.label]
    intensity = np.zeros(n_frames)
    if plan.video_cue:
        strength = rng.uniform(0.6, 1.0)
        if cue.kind == "local" and plan.events:
            centres = np.array([(e["start"] + e["end"]) / 2 for e in plan.events])
            bumps = np.exp(-((times[:, None] - centres[None, :]) ** 2) / (2 * 0.35**2)).max(axis=1)
            intensity = strength * (0.3 + 0.7 * bumps)
        else:
            intensity = np.full(n_frames, strength)
    else:
        rng.uniform(0.6, 1.0)  # keep the stream aligned whether or not the cue shows
    face = np.array(cue.face)[None, :] * intensity[:, None]
    # A per-utterance expression offset makes the face alone an imperfect cue.
    face = face + rng.normal(0.0, config.video_noise, size=4)[None, :] * np.array([0.8, 0.8, 0.4, 0.08])
    face = face + rng.normal(0.0, 0.05, size=face.shape)
    mouth_open = _voicing_per_frame(plan, times, 1.0 / fps)
    shift = rng.normal(0.0, 0.04, size=2) + rng.normal(0.0, 0.01, size=(n_frames, 2))
    brightness = rng.uniform(0.8, 1.2)
    frames = draw_faces(face, mouth_open, shift, size) * brightness
    frames = frames + rng.normal(0.0, 4.0 + 40.0 * config.video_noise, size=frames.shape)
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def _voicing_per_frame(plan: UtterancePlan, times: np.ndarray, frame_time: float) -> np.ndarray:
    starts = np.array([x.start for x in plan.syllables])
    ends = np.array([x.end for x in plan.syllables])
    if not len(starts):
        return np.zeros(len(times))
    lo = times[:, None] - frame_time / 2
    hi = times[:, None] + frame_time / 2
    overlap = np.clip(np.minimum(hi, ends[None, :]) - np.maximum(lo, starts[None, :]), 0.0, None).sum(axis=1)
    return np.clip(overlap / frame_time, 0.0, 1.0)


def draw_faces(face: np.ndarray, mouth_open: np.ndarray, shift: np.ndarray, size: int) -> np.ndarray:
    """Draw cartoon faces, one per row of ``face`` = (mouth curve, brow tilt, eye openness change,
    brow raise); coordinates are in [-1, 1] with y pointing down. Returns float frames 0..255."""
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    y = coords[None, :, None] - shift[:, 1, None, None]
    x = coords[None, None, :] - shift[:, 0, None, None]
    curve, tilt, eye, raise_ = (face[:, k, None, None] for k in range(4))
    image = np.full((len(face), size, size), 35.0)
    image = np.where((x / 0.78) ** 2 + (y / 0.92) ** 2 <= 1.0, 165.0, image)
    eye_height = np.clip(0.09 * (1.0 + eye), 0.01, 0.2)
    for cx in (-0.32, 0.32):
        inside = ((x - cx) / 0.13) ** 2 + ((y + 0.18) / eye_height) ** 2 <= 1.0
        image = np.where(inside, 25.0, image)
        # Brow: a bar above the eye; positive tilt lifts the inner end (towards the nose).
        inner = (0.32 - np.abs(x)) / 0.16
        brow_y = -0.42 - raise_ - 0.12 * tilt * inner
        on_brow = (np.abs(x - cx) < 0.16) & (np.abs(y - brow_y) < 0.035)
        image = np.where(on_brow, 45.0, image)
    span = np.clip(x / 0.34, -1.0, 1.0)
    mouth_y = 0.45 + 0.1 * curve - 0.2 * curve * span**2
    thickness = 0.035 + 0.1 * mouth_open[:, None, None]
    on_mouth = (np.abs(x) < 0.34) & (np.abs(y - mouth_y) < thickness / 2)
    return np.where(on_mouth, 20.0, image)


# --------------------------------------------------------------------------------------------
# Writing the corpus: IO at the edge
# --------------------------------------------------------------------------------------------


def write_synthetic_corpus(out_dir: str | Path, config: SyntheticConfig | None = None) -> Path:
    """Write the corpus for ``config`` into ``out_dir`` and return the manifest path.

    Writes ``wav/<utt_id>.wav`` (16 kHz mono 16-bit PCM), ``video/<utt_id>.mp4`` when
    ``config.video``, ``generation.json`` (config and latent facts), ``scheme.yaml`` and, last,
    ``manifest.csv`` (through a temporary file), so an interrupted run never leaves a manifest
    that points at missing files. ``out_dir`` must be new, empty, or a synthetic corpus written
    before; rewriting the same config is a no-op.
    """
    config = config or SyntheticConfig()
    out = Path(out_dir)
    _check_out_dir(out)
    manifest_path = out / "manifest.csv"
    generation_path = out / "generation.json"
    if _is_up_to_date(out, config):
        return manifest_path

    plan = plan_corpus(config)
    out.mkdir(parents=True, exist_ok=True)
    # The old manifest goes first: from here until the new one lands, no manifest exists.
    manifest_path.unlink(missing_ok=True)
    _write_text_atomic(generation_path, json.dumps(_generation_record(plan), indent=1) + "\n")

    wav_dir, video_dir = out / "wav", out / "video"
    wav_dir.mkdir(exist_ok=True)
    if config.video:
        video_dir.mkdir(exist_ok=True)
    for utterance in plan.utterances:
        audio = render_audio(utterance, plan.speakers[utterance.speaker], config)
        _write_wav_atomic(wav_dir / f"{utterance.utt_id}.wav", audio)
        if config.video:
            _write_mp4_atomic(video_dir / f"{utterance.utt_id}.mp4", render_video(utterance, config), config.video_fps)
    _remove_stale_media(wav_dir, {f"{u.utt_id}.wav" for u in plan.utterances})
    if video_dir.exists():
        _remove_stale_media(video_dir, {f"{u.utt_id}.mp4" for u in plan.utterances} if config.video else set())
        if not any(video_dir.iterdir()):
            video_dir.rmdir()

    _write_text_atomic(out / "scheme.yaml", _scheme_yaml(config))
    _write_text_atomic(manifest_path, manifest_frame(plan).to_csv(index=False, lineterminator="\n"))
    return manifest_path


def manifest_frame(plan: CorpusPlan) -> "pd.DataFrame":
    """The manifest as a DataFrame with the utterance-table columns (``words`` as JSON text)."""
    import pandas as pd

    from emomix.data.schema import COLUMNS

    rows = []
    for u in plan.utterances:
        rows.append({
            "utt_id": u.utt_id,
            "corpus": CORPUS_NAME,
            "audio_path": f"wav/{u.utt_id}.wav",
            "start": None,
            "end": None,
            "text": u.text,
            "label": u.label,
            "raw_label": u.label,
            "score": None,
            "speaker": u.speaker,
            "session": u.session,
            "dialogue_id": u.dialogue_id,
            "turn": u.turn,
            "split": None,
            "video_path": f"video/{u.utt_id}.mp4" if plan.config.video else None,
            "video_start": None,
            "video_end": None,
            "words": json.dumps(u.words, separators=(",", ":")),
            "alignment": "synthetic",
        })
    # Columns the schema has and this generator does not know stay empty rather than failing.
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["turn"] = frame["turn"].astype("int64")
    return frame


def load_generation(out_dir: str | Path) -> dict[str, Any]:
    """Read ``generation.json`` of a synthetic corpus folder."""
    from emomix.errors import MissingDataError

    path = Path(out_dir) / "generation.json"
    if not path.exists():
        raise MissingDataError(f"{path} does not exist; write the corpus with `emomix synth {out_dir}`")
    return json.loads(path.read_text(encoding="utf-8"))


def _generation_record(plan: CorpusPlan) -> dict[str, Any]:
    config = plan.config
    return {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "seed": config.seed,
        "sample_rate": SAMPLE_RATE,
        "config": config.to_dict(),
        "classes": {
            name: {"cue": CLASS_CUES[name].kind, "audio": CLASS_CUES[name].description, "words": list(CLASS_CUES[name].words)}
            for name in config.classes
        },
        "speakers": [voice.to_dict() for voice in plan.speakers.values()],
        "utterances": [u.facts() for u in plan.utterances],
    }


def _scheme_yaml(config: SyntheticConfig) -> str:
    import yaml

    name = CORPUS_NAME + "-" + str(len(config.classes))
    spec = {"name": name, "classes": list(config.classes), "map": {c: c for c in config.classes}, "corpus": CORPUS_NAME}
    return yaml.safe_dump(spec, sort_keys=False, default_flow_style=None)


def _read_marker(out: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((out / "generation.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("generator") == GENERATOR else None


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; give a folder for the synthetic corpus")
    if out.is_dir() and any(out.iterdir()) and _read_marker(out) is None:
        raise ConfigError(
            f"{out} is not empty and holds no synthetic corpus (no generation.json from emomix); "
            "refusing to write into it: choose a new or empty folder"
        )


def _is_up_to_date(out: Path, config: SyntheticConfig) -> bool:
    record = _read_marker(out)
    if record is None or record.get("version") != GENERATOR_VERSION or record.get("config") != config.to_dict():
        return False
    if not (out / "manifest.csv").exists() or not (out / "scheme.yaml").exists():
        return False
    for fact in record.get("utterances", []):
        if not (out / "wav" / f"{fact['utt_id']}.wav").exists():
            return False
        if config.video and not (out / "video" / f"{fact['utt_id']}.mp4").exists():
            return False
    return True


def _remove_stale_media(folder: Path, keep: set[str]) -> None:
    """Delete files a previous synthetic run left that this run does not write."""
    for path in folder.iterdir():
        if path.is_file() and path.name not in keep and path.suffix in {".wav", ".mp4", ".tmp"}:
            path.unlink()


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_wav_atomic(path: Path, audio: np.ndarray) -> None:
    import soundfile

    tmp = path.with_name(path.name + ".tmp")
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
    soundfile.write(tmp, pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


def _write_mp4_atomic(path: Path, frames: np.ndarray, fps: int) -> None:
    import av

    tmp = path.with_name(path.name + ".tmp")
    with av.open(str(tmp), "w", format="mp4") as container:
        # MPEG-4 Part 2 rather than H.264: this x264 build does not give the same bytes from run
        # to run, ffmpeg's own mpeg4 encoder does, and every decoder reads it.
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 150_000  # about 19 KB per second at 64x64, pixel noise included
        stream.thread_count = 1
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="gray")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
