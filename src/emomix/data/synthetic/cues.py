"""The data the synthetic generator is built from: each class's cue, the cue words and the filler vocabulary."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClassCue:
    """How one emotion class shows in audio, video and text.

    ``kind`` is ``"cued"`` (the class has a local and a global audio signature) or ``"none"``
    (neutral). ``arousal`` is ``"high"`` (a *clear* class: frequent, strong audio cues) or
    ``"low"`` (a *complex* class: rarer, weaker audio cues). The **local** signature is a short
    ``event`` (``"burst"``, ``"laugh"``, ``"sob"`` or ``"whoop"``). The **global** signature is the
    utterance's pausing: a pause of ``pause_s`` seconds after a share ``pause_share`` of the
    words (neutral's is what every utterance without a global cue gets). Only long pauses, which a
    voice-activity detector leaves out, change: the voiced frames are those of any utterance.
    ``face`` gives the video expression at full intensity: mouth curvature (+ smile), brow tilt
    (+ inner ends up), eye openness change and brow raise. ``words`` are the class's keywords
    (local text evidence); ``phrase`` is its word-order phrase (global text evidence: every class's
    phrase uses the same words).
    """

    kind: str
    arousal: str
    description: str
    event: str | None = None
    pause_share: float = 0.25
    pause_s: tuple[float, float] = (0.25, 0.4)
    face: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    words: tuple[str, ...] = ()
    phrase: tuple[str, ...] = ()


CLASS_CUES: dict[str, ClassCue] = {
    "angry": ClassCue(
        kind="cued",
        arousal="high",
        description="local: 150-300 ms bursts on a word (+8 dB, +7 semitones held, tense, rough); "
        "global: clipped delivery without a single pause",
        event="burst",
        pause_share=0.0,
        face=(-0.4, -1.0, -0.35, -0.08),
        words=("furious", "hate", "annoyed", "outrageous", "stupid", "enough"),
        phrase=("all", "again", "over"),
    ),
    "happy": ClassCue(
        kind="cued",
        arousal="high",
        description="local: laugh-like events (3-4 breathy 'ha' pulses, ~0.3 s, +5 to +10 semitones, +7 dB); "
        "global: bouncy delivery, a 300-450 ms pause after half of the words",
        event="laugh",
        pause_share=0.5,
        pause_s=(0.3, 0.45),
        face=(1.0, 0.0, -0.2, 0.05),
        words=("wonderful", "great", "love", "glad", "fantastic", "lovely"),
        phrase=("all", "over", "again"),
    ),
    "neutral": ClassCue(
        kind="none",
        arousal="low",
        description="no audio or video cue; a 250-400 ms pause after a quarter of the words",
        pause_share=0.25,
        pause_s=(0.25, 0.4),
        words=("okay", "fine", "usual", "alright", "normal", "regular"),
        phrase=("over", "all", "again"),
    ),
    "sad": ClassCue(
        kind="cued",
        arousal="low",
        description="local: 150-300 ms sob-like breaks on a word (-5 semitones falling, breathy, trembling); "
        "global: hesitant delivery, a 550-900 ms pause after 65 % of the words",
        event="sob",
        pause_share=0.65,
        pause_s=(0.55, 0.9),
        face=(-0.9, 0.8, -0.3, 0.0),
        words=("miss", "lonely", "sorry", "tired", "lost", "hopeless"),
        phrase=("again", "all", "over"),
    ),
    "excited": ClassCue(
        kind="cued",
        arousal="high",
        description="local: 150-300 ms whoops on a word (+10 semitones rising, +6 dB, tense); "
        "global: a 250-350 ms pause after 40 % of the words",
        event="whoop",
        pause_share=0.4,
        pause_s=(0.25, 0.35),
        face=(0.8, 0.0, 0.4, 0.1),
        words=("amazing", "wow", "awesome", "finally", "yes", "unbelievable"),
        phrase=("over", "again", "all"),
    ),
}

# The words of the word-order phrases: every class's phrase is an ordering of these, so no single
# word (and no bag of words) says which class a phrase belongs to.
PHRASE_WORDS: tuple[str, ...] = ("all", "over", "again")


# Syllable counts of the cue words (every word is 1-3 syllables; "unbelievable" is sung as 3).
_CUE_SYLLABLES: dict[str, int] = {
    "furious": 3,
    "hate": 1,
    "annoyed": 2,
    "outrageous": 3,
    "stupid": 2,
    "enough": 2,
    "wonderful": 3,
    "great": 1,
    "love": 1,
    "glad": 1,
    "fantastic": 3,
    "lovely": 2,
    "okay": 2,
    "fine": 1,
    "usual": 3,
    "alright": 2,
    "normal": 2,
    "regular": 3,
    "miss": 1,
    "lonely": 2,
    "sorry": 2,
    "tired": 2,
    "lost": 1,
    "hopeless": 2,
    "amazing": 3,
    "wow": 1,
    "awesome": 2,
    "finally": 3,
    "yes": 1,
    "unbelievable": 3,
    "all": 1,
    "again": 2,
}


FILLER_WORDS: dict[str, int] = {
    "the": 1,
    "a": 1,
    "we": 1,
    "i": 1,
    "you": 1,
    "it": 1,
    "was": 1,
    "to": 1,
    "and": 1,
    "then": 1,
    "there": 1,
    "said": 1,
    "went": 1,
    "home": 1,
    "car": 1,
    "house": 1,
    "train": 1,
    "door": 1,
    "today": 2,
    "going": 2,
    "morning": 2,
    "table": 2,
    "window": 2,
    "meeting": 2,
    "dinner": 2,
    "after": 2,
    "about": 2,
    "office": 2,
    "people": 2,
    "letter": 2,
    "number": 2,
    "over": 2,
    "station": 2,
    "kitchen": 2,
    "paper": 2,
    "monday": 2,
    "maybe": 2,
    "yesterday": 3,
    "probably": 3,
    "tomorrow": 3,
    "another": 3,
    "together": 3,
    "afternoon": 3,
    "remember": 3,
}


def word_syllables(token: str) -> int:
    """Number of syllables the generator gives a vocabulary word."""
    if token in FILLER_WORDS:
        return FILLER_WORDS[token]
    if token in _CUE_SYLLABLES:
        return _CUE_SYLLABLES[token]
    raise KeyError(token)
