"""The plan: every latent fact of the corpus (speakers, dialogues, labels, words, syllables,
prosody, events), drawn from the seed before any sample is rendered.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emomix.data.synthetic.config import SyntheticConfig
from emomix.data.synthetic.cues import CLASS_CUES, FILLER_WORDS, PHRASE_WORDS, word_syllables


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
    kind: str = "speech"  # "speech", or an event: "burst", "sob", "whoop" or "laugh"
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
    evidence: str
    local_class: str | None
    global_class: str | None
    arousal: str
    text_cue: bool
    text_class: str | None
    text_evidence: str
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
            "evidence": self.evidence,
            "local_class": self.local_class,
            "global_class": self.global_class,
            "arousal": self.arousal,
            "text_cue": self.text_cue,
            "text_class": self.text_class,
            "text_evidence": self.text_evidence,
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
    quotas = [
        config.size // config.sessions + (1 if s < config.size % config.sessions else 0) for s in range(config.sessions)
    ]
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
                    _plan_utterance(
                        index, f"{dialogue_id}_t{turn:02d}", dialogue_id, turn, label, kept, voice, config, rng
                    )
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
                formant_scale=float(
                    (1.15 if sex == "F" else 1.0) * (1.0 + np.clip(rng.normal(0.0, 0.04 * spread), -0.1, 0.1))
                ),
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
    index: int,
    utt_id: str,
    dialogue_id: str,
    turn: int,
    label: str,
    persisted: bool,
    voice: SpeakerVoice,
    config: SyntheticConfig,
    rng: np.random.Generator,
) -> UtterancePlan:
    cue = CLASS_CUES[label]
    classes = list(config.classes)
    others = [c for c in classes if c != label]
    cued_others = [c for c in others if CLASS_CUES[c].kind != "none"]

    # Every decision is drawn first and always in the same order, so changing one share moves as
    # few other facts as possible.
    u_text, u_audio, u_video, u_evidence, u_side, u_order = rng.random(6)
    intensity = float(config.audio_cue_strength * rng.uniform(0.6, 1.0))
    other_pick = int(rng.integers(1 << 30))
    if u_text < config.text_cue_share:
        text_class, disagree = label, False
    elif u_text < config.text_cue_share + config.disagree_share:
        text_class, disagree = others[other_pick % len(others)], True
    else:
        text_class, disagree = None, False
    text_order = text_class is not None and not disagree and u_order < config.text_order_share
    text_evidence = "none" if text_class is None else "conflict" if disagree else "global" if text_order else "local"

    # Audio evidence: which scale carries which class's cue.
    local_class: str | None = None
    global_class: str | None = None
    local_s = global_s = 0.0
    if cue.kind != "none":
        share = config.audio_cue_share if cue.arousal == "high" else config.complex_cue_share
        if cue.arousal != "high":
            intensity *= config.complex_cue_scale
        if (disagree or u_audio < share) and intensity > 0.0:
            if u_evidence < config.local_share:
                evidence = "local"
                local_class, local_s = label, intensity
            elif u_evidence < config.local_share + config.global_share:
                evidence = "global"
                global_class, global_s = label, intensity
            elif u_evidence < config.local_share + config.global_share + config.conflict_share and cued_others:
                # One scale carries the label's cue, the other another class's cue at decoy_scale of it.
                evidence = "conflict"
                decoy = cued_others[other_pick % len(cued_others)]
                decoy_s = config.decoy_scale * intensity
                if u_side < 0.5:
                    local_class, local_s, global_class, global_s = label, intensity, decoy, decoy_s
                else:
                    local_class, local_s, global_class, global_s = decoy, decoy_s, label, intensity
            else:
                evidence = "both"
                local_class, global_class, local_s, global_s = label, label, intensity, intensity
        else:
            evidence = "none"
    else:
        evidence = "none"
        if cued_others and u_audio < config.mixed_share and config.audio_cue_strength > 0.0:
            # A complex (mixed) neutral utterance: a faint cue of another class on one scale.
            decoy = cued_others[other_pick % len(cued_others)]
            if u_side < 0.5:
                local_class, local_s = decoy, 0.4 * intensity
            else:
                global_class, global_s = decoy, 0.4 * intensity
    audio_cue = evidence != "none"
    video_cue = cue.kind != "none" and u_video < config.video_cue_share
    local_cue = CLASS_CUES[local_class] if local_class else None
    tempo = CLASS_CUES[global_class] if global_class else CLASS_CUES["neutral"]
    baseline = CLASS_CUES["neutral"]

    # The pausing moves from the neutral one towards the class's by the global cue's weight: full for
    # a cue at 0.625 or more of full strength, partial for weaker (complex, decoy, mixed) ones.
    weight = min(1.0, 1.6 * global_s) if global_class else 0.0

    def blend(neutral: float, value: float) -> float:
        return neutral + weight * (value - neutral)

    base_rate = voice.rate * math.exp(rng.normal(0.0, 0.04))
    rate = base_rate
    syllable_time = 1.0 / rate
    target = rng.uniform(config.min_duration, config.max_duration)
    lead, trail = rng.uniform(0.12, 0.2), rng.uniform(0.15, 0.25)
    n_events = int(rng.integers(1, config.local_event_count + 1)) if local_cue else 0
    budget = max(target - lead - trail, 0.3)
    gap_lo, gap_hi = 0.04, 0.09
    pause_share = blend(baseline.pause_share, tempo.pause_share)
    pause_lo = blend(baseline.pause_s[0], tempo.pause_s[0])
    pause_hi = blend(baseline.pause_s[1], tempo.pause_s[1])
    # Expected time a word adds besides its syllables: the gap after it and its share of pauses.
    per_word = (gap_lo + gap_hi) / 2 + pause_share * (pause_lo + pause_hi) / 2 + 0.015

    def estimate(tokens: list[str]) -> float:
        return sum(word_syllables(t) * syllable_time + per_word for t in tokens)

    cue_tokens: list[str] = []
    if text_class is not None:
        if text_order:
            cue_tokens = list(CLASS_CUES[text_class].phrase)
        else:
            pool = CLASS_CUES[text_class].words
            cue_tokens = [pool[int(rng.integers(len(pool)))]]
    filler_pool = [w for w in FILLER_WORDS if w not in PHRASE_WORDS]
    fillers: list[str] = []
    while estimate(fillers + cue_tokens) < budget or len(fillers) < 1:
        fillers.append(filler_pool[int(rng.integers(len(filler_pool)))])
    if len(fillers) > 1:
        with_last = estimate(fillers + cue_tokens)
        without_last = with_last - (word_syllables(fillers[-1]) * syllable_time + per_word)
        if abs(without_last - budget) < abs(with_last - budget):
            fillers.pop()
    tokens = list(fillers)
    at = int(rng.integers(len(tokens) + 1))
    tokens[at:at] = cue_tokens

    # Lay out syllables, pauses and events on the time axis.
    event_words: dict[int, float] = {}
    laugh_before: set[int] = set()
    if local_cue is not None and local_cue.event == "laugh":
        slots = list(range(1, len(tokens))) if len(tokens) >= 2 else [len(tokens)]
        chosen = rng.choice(len(slots), size=min(n_events, len(slots)), replace=False)
        laugh_before = {slots[int(c)] for c in chosen}
    elif local_cue is not None:
        chosen = rng.choice(len(tokens), size=min(n_events, len(tokens)), replace=False)
        event_words = {int(w): float(rng.uniform(0.15, 0.30)) for w in chosen}
    event_kind = local_cue.event if local_cue is not None else None

    syllables: list[Syllable] = []
    events: list[dict[str, Any]] = []
    words: list[dict[str, Any]] = []
    t = lead
    for w, token in enumerate(tokens):
        if w in laugh_before:
            t = _lay_out_laugh(t, rng, syllables, events)
        n_syll = word_syllables(token)
        vowels = _word_vowels(token, n_syll)
        n_event = min(n_syll, int(rng.integers(1, 3))) if w in event_words else 0
        word_start = t
        for j in range(n_syll):
            duration = syllable_time * rng.uniform(0.75, 1.25)
            kind = "speech"
            if j < n_event:
                duration = event_words[w] / n_event
                kind = str(event_kind)
            syllables.append(
                Syllable(start=t, duration=duration, vowel=vowels[j], kind=kind, word=w, onset=bool(rng.random() < 0.5))
            )
            t += duration
            if j < n_syll - 1:
                t += rng.uniform(0.005, 0.025)
        if n_event:
            marked = [x for x in syllables if x.word == w and x.kind == event_kind]
            events.append({"kind": event_kind, "start": round(marked[0].start, 4), "end": round(marked[-1].end, 4)})
        words.append({"token": token, "start": round(word_start, 4), "end": round(t, 4)})
        t += rng.uniform(gap_lo, gap_hi)
        if w < len(tokens) - 1 and rng.random() < pause_share:
            t += rng.uniform(pause_lo, pause_hi)
    if len(tokens) in laugh_before:
        t = _lay_out_laugh(t, rng, syllables, events)
    speech_end = t
    duration = speech_end + trail
    if duration > config.max_duration:
        # Compress in time (the share of silence, which the global cue sets, is kept).
        factor = (config.max_duration - lead - trail) / (speech_end - lead)
        _scale_times(syllables, words, events, lead, factor)
        duration = config.max_duration
    duration = max(duration, config.min_duration)

    f0_offset = float(rng.normal(0.0, 0.6))
    level = voice.loudness_db + float(rng.normal(0.0, 1.0))
    _shape_prosody(syllables, duration, voice.f0_range_st, voice.tension, voice.breath, local_s, rng)

    cue_intensity = max(local_s if local_class == label else 0.0, global_s if global_class == label else 0.0)
    return UtterancePlan(
        index=index,
        utt_id=utt_id,
        session=voice.session,
        speaker=voice.speaker,
        dialogue_id=dialogue_id,
        turn=turn,
        label=label,
        persisted=persisted,
        cue_kind=evidence,
        audio_cue=bool(audio_cue),
        cue_intensity=cue_intensity,
        evidence=evidence,
        local_class=local_class,
        global_class=global_class,
        arousal=cue.arousal,
        text_cue=text_class == label,
        text_class=text_class,
        text_evidence=text_evidence,
        disagree=disagree,
        video_cue=bool(video_cue),
        tokens=tokens,
        words=words,
        events=events,
        duration=float(duration),
        level_db=float(level),
        f0_offset_st=f0_offset,
        rate=float(rate),
        syllables=syllables,
    )


def _lay_out_laugh(
    t: float, rng: np.random.Generator, syllables: list[Syllable], events: list[dict[str, Any]]
) -> float:
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


def _scale_times(
    syllables: list[Syllable], words: list[dict[str, Any]], events: list[dict[str, Any]], origin: float, factor: float
) -> None:
    for x in syllables:
        x.start = origin + (x.start - origin) * factor
        x.duration *= factor
    for item in list(words) + list(events):
        item["start"] = round(origin + (item["start"] - origin) * factor, 4)
        item["end"] = round(origin + (item["end"] - origin) * factor, 4)


def _shape_prosody(
    syllables: list[Syllable],
    duration: float,
    f0_range: float,
    tension: float,
    breath: float,
    s: float,
    rng: np.random.Generator,
) -> None:
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
        elif x.kind == "sob":
            # A low, breathy, trembling break that falls through the syllable.
            event_f0[i] = -5.0 * s
            event_gain[i] = 3.0 * s
            x.f0_end_st = x.f0_start_st - 4.0 * s
            x.breath = max(breath, 0.25 * min(s, 1.0))
            x.tension = tension * (1.0 + 0.5 * min(s, 1.0))
            x.roughness = 0.5 * min(s, 1.0)
        elif x.kind == "whoop":
            # A high, tense, rising shout.
            event_f0[i] = 10.0 * s
            event_gain[i] = 6.0 * s
            x.f0_end_st = x.f0_start_st + 4.0 * s
            x.tension = tension * (1.0 - 0.4 * min(s, 1.0))
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
