"""Rendering an utterance plan as speech-like audio: glottal pulses, formant filters, envelopes, noise."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from emomix.constants import SAMPLE_RATE
from emomix.data.synthetic.config import SyntheticConfig
from emomix.data.synthetic.plan import SpeakerVoice, UtterancePlan

# Formants (Hz) of five vowels for an adult male vocal tract; scaled per speaker.
_VOWEL_FORMANTS: dict[str, tuple[float, float, float]] = {
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (270.0, 2290.0, 3010.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
}


_FORMANT_BANDWIDTHS = (90.0, 110.0, 160.0)


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
        out[start : start + n] += voiced
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
    env[n - release :] = 0.5 * (1.0 + np.cos(np.pi * np.arange(release) / release))
    return env
