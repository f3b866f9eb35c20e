"""The data the synthetic generator is built from: each class's cue, the cue words and the filler vocabulary."""

from __future__ import annotations

from dataclasses import dataclass


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
        description="1..local_event_count laugh-like events (3-4 breathy 'ha' pulses, ~0.3 s) "
                    "rising from +5 to +10 semitones, +7 dB",
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


def word_syllables(token: str) -> int:
    """Number of syllables the generator gives a vocabulary word."""
    if token in FILLER_WORDS:
        return FILLER_WORDS[token]
    if token in _CUE_SYLLABLES:
        return _CUE_SYLLABLES[token]
    raise KeyError(token)
