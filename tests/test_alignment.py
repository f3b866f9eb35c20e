"""Tests of emomix.audio.alignment: word timings and token–frame graph edges."""

from __future__ import annotations

import importlib.machinery
import sys
import types

import numpy as np
import pytest
import scipy.signal

from emomix.audio import alignment
from emomix.audio.alignment import spread_words, word_timings, words_to_frame_edges
from emomix.data.schema import Utterance, Word, make_table
from emomix.errors import ConfigError, MissingDataError

RATE = 16000


def vowel(seconds: float, f0: float = 140.0) -> np.ndarray:
    t = np.arange(int(round(seconds * RATE))) / RATE
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.08 * np.sin(2 * np.pi * 3 * t))) / RATE
    source = sum(np.sin(k * phase) / k for k in range(1, 30))
    out = np.zeros_like(source)
    for centre, bandwidth in ((700, 110), (1220, 120), (2600, 160)):
        b, a = scipy.signal.iirpeak(centre, centre / bandwidth, fs=RATE)
        out += scipy.signal.lfilter(b, a, source)
    out *= 0.5 * (1 - np.cos(2 * np.pi * 4 * t))
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


def speech_with_pauses() -> np.ndarray:
    """Voice at 1.0–2.5 s and 3.5–4.5 s in 5.5 s of faint noise."""
    silence = np.zeros(RATE, np.float32)
    wave = np.concatenate([silence, vowel(1.5), silence, vowel(1.0, 200), silence])
    return wave + 0.001 * np.random.default_rng(0).standard_normal(wave.size).astype(np.float32)


def row(**fields):
    base = {"utt_id": "u1", "corpus": "test", "speaker": "s1"}
    base.update(fields)
    return make_table([base]).iloc[0]


def flat(words):
    return [(w.token, round(w.start, 4), round(w.end, 4)) for w in words]


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


def test_table_words_are_used_first():
    words = [{"token": "Der", "start": 0.1, "end": 0.3}, {"token": "Lappen", "start": 0.3, "end": 0.8}]
    result = word_timings(row(text="Der Lappen", words=words), wave=None)
    assert result.source == "corpus" and result.note is None
    assert flat(result.words) == [("Der", 0.1, 0.3), ("Lappen", 0.3, 0.8)]
    synthetic = word_timings(row(text="Der Lappen", words=words, alignment="synthetic"))
    assert synthetic.source == "synthetic"
    record = Utterance("u2", "test", "s1", text="hi", words=[Word("hi", 0.0, 0.4)], alignment="corpus")
    assert flat(word_timings(record).words) == [("hi", 0.0, 0.4)]


@pytest.mark.parametrize("text,note", [("", "empty"), ("   \t\n", "empty"), (None, "no transcript")])
def test_empty_text_gives_no_words(text, note):
    result = word_timings(row(text=text), wave=speech_with_pauses())
    assert result.words == [] and result.source is None
    assert note in result.note


def test_vad_spread_places_words_on_the_voice():
    result = word_timings(row(text="Hello there, you all"), wave=speech_with_pauses(), rate=RATE)
    assert result.source == "vad-spread"
    assert "no whisper_model given" in result.note
    words = result.words
    assert [w.token for w in words] == ["Hello", "there,", "you", "all"]
    assert words[0].start == pytest.approx(1.0, abs=0.15)
    assert words[-1].end == pytest.approx(4.5, abs=0.15)
    starts = [w.start for w in words]
    assert starts == sorted(starts) and all(w.end > w.start for w in words)
    # Nothing is placed inside the pause of 2.5–3.5 s except a word crossing it.
    for w in words:
        assert not (2.6 < w.start < 3.4) and not (2.6 < w.end < 3.4)


def test_silence_spreads_over_the_whole_utterance_and_says_so():
    result = word_timings(row(text="two words"), wave=np.zeros(2 * RATE, np.float32), backend="vad-spread")
    assert result.source == "vad-spread"
    assert "VAD found no speech" in result.note
    assert flat(result.words) == [("two", 0.0, 0.75), ("words", 0.75, 2.0)]


def test_spread_words_proportional_to_letters():
    assert flat(spread_words(["ab", "cd"], [(1.0, 2.0), (3.0, 4.0)])) == [("ab", 1.0, 2.0), ("cd", 3.0, 4.0)]
    # "a" takes a quarter of 2 s of speech; "bbb" crosses the pause.
    assert flat(spread_words(["a", "bbb"], [(1.0, 2.0), (3.0, 4.0)])) == [("a", 1.0, 1.5), ("bbb", 1.5, 4.0)]
    # Punctuation is not counted; a bare symbol still gets one letter's share.
    assert flat(spread_words(["hi,", "yo", "!"], [(0.0, 5.0)])) == [
        ("hi,", 0.0, 2.0),
        ("yo", 2.0, 4.0),
        ("!", 4.0, 5.0),
    ]
    assert spread_words([], [(0.0, 1.0)]) == []
    with pytest.raises(ValueError):
        spread_words(["x"], [])


def test_explicit_backends_fail_loudly():
    with pytest.raises(MissingDataError, match="utterance 'u1' has no word alignment in the table"):
        word_timings(row(text="hello"), wave=np.zeros(RATE, np.float32), backend="corpus")
    with pytest.raises(ConfigError, match="Whisper alignment is not possible: no whisper_model given"):
        word_timings(row(text="hello"), wave=np.zeros(RATE, np.float32), backend="whisper")
    with pytest.raises(ConfigError, match="unknown alignment backend 'mfa'"):
        word_timings(row(text="hello"), wave=np.zeros(RATE, np.float32), backend="mfa")
    with pytest.raises(MissingDataError, match="needs its waveform"):
        word_timings(row(text="hello"))


# ---------------------------------------------------------------------------------------------
# Whisper (a stand-in faster_whisper module: the real one is optional and needs a model on disk)
# ---------------------------------------------------------------------------------------------


class _Segment:
    def __init__(self, words):
        self.words = words


def _fake_faster_whisper(monkeypatch, available: set[str]):
    calls = []

    class WhisperModel:
        def __init__(self, name, device="cpu", compute_type="default", local_files_only=False):
            calls.append({"name": name, "local_files_only": local_files_only})
            if name not in available:
                raise RuntimeError(f"model {name} is not in the local cache")

        def transcribe(self, audio, word_timestamps=False, language=None):
            assert audio.dtype == np.float32 and word_timestamps
            word = types.SimpleNamespace
            return iter(
                [_Segment([word(word=" Hello", start=0.5, end=0.9), word(word=" world", start=1.0, end=1.6)])]
            ), None

    module = types.ModuleType("faster_whisper")
    module.WhisperModel = WhisperModel
    module.__spec__ = importlib.machinery.ModuleSpec("faster_whisper", None)
    monkeypatch.setitem(sys.modules, "faster_whisper", module)
    alignment._load_faster_whisper.cache_clear()
    return calls


def test_whisper_words_when_a_local_model_exists(monkeypatch):
    calls = _fake_faster_whisper(monkeypatch, available={"tiny"})
    result = word_timings(row(text="hello world"), wave=np.zeros(2 * 8000, np.float32), rate=8000, whisper_model="tiny")
    assert result.source == "asr" and result.note is None
    assert flat(result.words) == [("Hello", 0.5, 0.9), ("world", 1.0, 1.6)]
    assert calls == [{"name": "tiny", "local_files_only": True}]  # never allowed to download
    alignment._load_faster_whisper.cache_clear()


def test_whisper_model_not_on_disk_falls_back_with_a_note(monkeypatch):
    _fake_faster_whisper(monkeypatch, available=set())
    result = word_timings(row(text="hello world"), wave=speech_with_pauses(), whisper_model="large-v3")
    assert result.source == "vad-spread"
    assert "faster-whisper model 'large-v3' is not available locally" in result.note
    alignment._load_faster_whisper.cache_clear()


# ---------------------------------------------------------------------------------------------
# Graph edges
# ---------------------------------------------------------------------------------------------


def test_words_to_frame_edges_by_frame_centres():
    words = [Word("a", 0.0, 0.05), {"token": "b", "start": 0.05, "end": 0.1}]
    edges = words_to_frame_edges(words, frame_rate=50, num_frames=5)  # centres 10 30 50 70 90 ms
    assert edges.dtype == np.int64 and edges.shape[0] == 2
    assert edges.T.tolist() == [[0, 0], [0, 1], [0, 2], [1, 2], [1, 3], [1, 4]]


def test_short_words_may_link_to_their_nearest_frame():
    words = [Word("long", 0.0, 0.1), Word("t", 0.1, 0.105)]  # "t" covers no 20 ms frame centre
    strict = words_to_frame_edges(words, frame_rate=50, num_frames=10)
    assert 1 not in strict[0]
    linked = words_to_frame_edges(words, frame_rate=50, num_frames=10, nearest_if_empty=True)
    assert linked.T.tolist()[-1] == [1, 5]
    assert words_to_frame_edges([], 50, 10).shape == (2, 0)
    with pytest.raises(ConfigError, match="frame_rate must be positive"):
        words_to_frame_edges(words, 0, 10)
