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

The package: ``cues`` (class cues and vocabulary), ``config`` (:class:`SyntheticConfig`),
``plan`` (the latent facts), ``speech`` and ``video`` (rendering, plain functions on arrays) and
``writer`` (the corpus folder). Every public name is importable from ``emomix.data.synthetic``.
"""

from emomix.constants import SAMPLE_RATE
from emomix.data.synthetic.config import (
    CORPUS_NAME,
    GENERATOR,
    GENERATOR_VERSION,
    SyntheticConfig,
)
from emomix.data.synthetic.cues import (
    CLASS_CUES,
    FILLER_WORDS,
    PHRASE_WORDS,
    ClassCue,
    word_syllables,
)
from emomix.data.synthetic.plan import (
    CorpusPlan,
    SpeakerVoice,
    Syllable,
    UtterancePlan,
    plan_corpus,
)
from emomix.data.synthetic.speech import (
    formant_filter,
    glottal_flow,
    render_audio,
    syllable_envelope,
)
from emomix.data.synthetic.video import draw_faces, render_video
from emomix.data.synthetic.writer import (
    load_generation,
    manifest_frame,
    write_synthetic_corpus,
)

__all__ = [
    "CLASS_CUES",
    "CORPUS_NAME",
    "FILLER_WORDS",
    "GENERATOR",
    "GENERATOR_VERSION",
    "PHRASE_WORDS",
    "SAMPLE_RATE",
    "ClassCue",
    "CorpusPlan",
    "SpeakerVoice",
    "Syllable",
    "SyntheticConfig",
    "UtterancePlan",
    "draw_faces",
    "formant_filter",
    "glottal_flow",
    "load_generation",
    "manifest_frame",
    "plan_corpus",
    "render_audio",
    "render_video",
    "syllable_envelope",
    "word_syllables",
    "write_synthetic_corpus",
]
