"""Streaming segmentation of long recordings: boundaries, bounded memory, formats, errors."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from emomix.audio import vad
from emomix.audio.io import load_audio
from emomix.audio.segment import (
    DEFAULT_PAD_S,
    SegmentationStats,
    StreamSegmenter,
    segment_recording,
    segment_waveform,
)
from emomix.errors import AudioError, ConfigError, MissingDataError

RATE = 16000
PAD = 0.1
HANGOVER = 0.15  # WebRTC keeps calling speech for up to ~120 ms after a tone stops


def tone(seconds: float, rate: int = RATE, f0: float = 150.0, amplitude: float = 0.3) -> np.ndarray:
    """A steady harmonic tone, which the WebRTC VAD takes for voice."""
    t = np.arange(int(round(seconds * rate))) / rate
    wave = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 15))
    return (amplitude * wave / np.abs(wave).max()).astype(np.float32)


def silence(seconds: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(int(round(seconds * rate)), dtype=np.float32)


def tones_and_silences(
    parts: list[tuple[str, float]], rate: int = RATE
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Concatenate ("tone"|"silence", seconds) parts; return the wave and the tones' (start, end)."""
    pieces, spans, now = [], [], 0.0
    for kind, seconds in parts:
        pieces.append(tone(seconds, rate) if kind == "tone" else silence(seconds, rate))
        if kind == "tone":
            spans.append((now, now + seconds))
        now += seconds
    return np.concatenate(pieces), spans


def assert_matches(segments, spans, pad=PAD):
    assert len(segments) == len(spans), [(s.start, s.end) for s in segments]
    for segment, (start, end) in zip(segments, spans):
        assert start - pad - 0.04 <= segment.start <= start - pad + 0.04, (segment.start, start)
        assert end + pad - 0.04 <= segment.end <= end + pad + HANGOVER, (segment.end, end)


def test_ten_minute_file_is_segmented_block_by_block_with_bounded_memory(tmp_path):
    path = tmp_path / "long.wav"
    spans = []
    with sf.SoundFile(str(path), "w", samplerate=RATE, channels=1, subtype="PCM_16") as out:
        for window in range(60):  # 60 windows of 10 s: a 1.5–3.9 s tone starting 2 s in
            length = 1.5 + 0.6 * (window % 5)
            wave = silence(10.0)
            wave[2 * RATE : 2 * RATE + int(length * RATE)] = tone(length, f0=120 + 5 * (window % 7))
            out.write(wave)
            spans.append((10.0 * window + 2.0, 10.0 * window + 2.0 + length))
    file_bytes = path.stat().st_size
    assert file_bytes > 19_000_000  # 10 min of 16-bit 16 kHz

    warm_up = tmp_path / "warm_up.wav"  # first-use imports and caches are not the segmenter's memory
    sf.write(str(warm_up), tone(1.0), RATE)
    list(segment_recording(warm_up))
    stats = SegmentationStats()
    tracemalloc.start()
    try:
        segments = []
        for segment in segment_recording(path, stats=stats):
            assert segment.samples.dtype == np.float32 and segment.samples.size == round(segment.duration * RATE)
            segments.append(type(segment)(segment.start, segment.end, np.zeros(0), segment.index))  # drop samples
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < file_bytes / 8, f"peak {peak / 1e6:.1f} MB for a {file_bytes / 1e6:.1f} MB file"
    assert_matches(segments, spans)
    assert [s.index for s in segments] == list(range(60))
    assert stats.segments == 60 and not stats.silent
    assert stats.duration_s == pytest.approx(600.0)
    assert stats.speech_s == pytest.approx(sum(e - s for s, e in spans), abs=60 * HANGOVER)


def test_pauses_merge_short_regions_drop_and_long_regions_split(tmp_path):
    wave, spans = tones_and_silences(
        [
            ("silence", 1.0),
            ("tone", 2.0),
            ("silence", 1.5),
            ("tone", 0.1),
            ("silence", 1.0),
            ("tone", 3.0),
            ("silence", 0.2),
            ("tone", 1.0),
            ("silence", 2.0),
            ("tone", 20.0),
            ("silence", 1.0),
        ]
    )
    path = tmp_path / "mixed.flac"
    sf.write(str(path), wave, RATE)
    stats = SegmentationStats()
    segments = list(segment_recording(path, stats=stats))
    first, _click, third, fourth, long = spans
    # the 0.1 s tone is dropped, the 0.2 s pause does not split, the 20 s tone is cut in 3 equal pieces
    assert_matches(segments[:2], [first, (third[0], fourth[1])])
    pieces = segments[2:]
    assert len(pieces) == 3 and all(p.duration <= 8.0 for p in pieces)
    assert pieces[0].start == pytest.approx(long[0] - PAD, abs=0.04)
    assert pieces[-1].end == pytest.approx(long[1] + PAD, abs=HANGOVER)
    assert all(a.end == b.start for a, b in itertools.pairwise(pieces))  # contiguous cuts
    assert max(p.duration for p in pieces) - min(p.duration for p in pieces) < 1e-3
    assert (stats.dropped_short, stats.split, stats.segments) == (1, 1, 5)
    # the samples are the file's, at 16 kHz
    whole = load_audio(path)
    for segment in segments:
        first_sample = round(segment.start * RATE)
        np.testing.assert_array_equal(segment.samples, whole[first_sample : first_sample + segment.samples.size])


def test_options_change_the_rule():
    wave, spans = tones_and_silences(
        [("silence", 0.5), ("tone", 1.0), ("silence", 0.4), ("tone", 1.0), ("silence", 0.5)]
    )
    merged = segment_waveform(wave)
    assert len(merged) == 1
    apart = segment_waveform(wave, min_silence_s=0.2, pad_s=0.0)
    assert_matches(apart, spans, pad=0.0)
    assert segment_waveform(wave, min_silence_s=0.2, min_segment_s=1.5) == []
    # padding wider than the pause: clipped so segments never overlap, and to the file
    wide = segment_waveform(wave, min_silence_s=0.2, pad_s=1.0)
    assert len(wide) == 2 and wide[0].start == 0.0 and wide[-1].end == pytest.approx(wave.size / RATE)
    assert wide[0].end == wide[1].start


def test_result_does_not_depend_on_block_size_and_matches_the_vad_mask(tmp_path):
    wave, _ = tones_and_silences([("silence", 0.7), ("tone", 1.3), ("silence", 0.9), ("tone", 2.2), ("silence", 0.3)])
    wave += 0.002 * np.random.default_rng(0).standard_normal(wave.size).astype(np.float32)
    path = tmp_path / "a.wav"
    sf.write(str(path), wave, RATE, subtype="FLOAT")
    stats = SegmentationStats()
    small = list(segment_recording(path, block_s=0.037, stats=stats))
    large = list(segment_recording(path, block_s=60.0))
    memory = segment_waveform(wave)
    assert len(small) == len(large) == len(memory) == 2
    for a, b, c in zip(small, large, memory):
        assert (a.start, a.end) == (b.start, b.end) == (c.start, c.end)
        np.testing.assert_array_equal(a.samples, b.samples)
        np.testing.assert_array_equal(a.samples, c.samples)
    # one detector kept across blocks: the same decisions as the whole-file mask
    mask = vad.webrtc_vad_mask(wave, frame_ms=30, aggressiveness=2)
    assert stats.frames == mask.size and stats.speech_frames == int(mask.sum())


def test_digital_silence_after_speech_is_never_speech():
    # After seconds of voiced sound the WebRTC VAD's hangover calls some of the exact zeros that
    # follow it speech (about 0.1 s here, more than a second after some synthetic utterances);
    # a segment must end at the sound's end plus the padding, within one 30 ms frame.
    rng = np.random.default_rng(0)
    t = np.arange(3 * RATE) / RATE
    voiced = 0.3 * np.sin(2 * np.pi * 150 * t) * (1 + 0.5 * np.sin(2 * np.pi * 4 * t))
    burst = (voiced + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    wave = np.zeros(12 * RATE, dtype=np.float32)
    ends = []
    for k in range(3):
        first = RATE * (1 + 4 * k)
        wave[first : first + burst.size] = burst
        ends.append((first + burst.size) / RATE)
    segments = segment_waveform(wave)
    assert len(segments) == 3
    for segment, end in zip(segments, ends, strict=True):
        assert end - 0.1 <= segment.end <= min(end + DEFAULT_PAD_S + 0.03, wave.size / RATE)


def test_stereo_44k_file_is_mixed_down_and_resampled_in_blocks(tmp_path):
    rate = 44100
    wave, spans = tones_and_silences(
        [("silence", 1.2), ("tone", 2.5), ("silence", 1.8), ("tone", 1.6), ("silence", 1.0)], rate=rate
    )
    stereo = np.stack([wave, 0.5 * wave], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), stereo, rate)
    stats = SegmentationStats()
    segments = list(segment_recording(path, block_s=0.5, stats=stats))
    assert_matches(segments, spans)
    assert (stats.source_rate, stats.channels) == (rate, 2)
    whole = load_audio(path)  # channels averaged, then one-shot soxr to 16 kHz
    for segment in segments:
        first = round(segment.start * RATE)
        np.testing.assert_allclose(segment.samples, whole[first : first + segment.samples.size], atol=1e-6)


def test_silence_gives_no_segment_and_says_so(tmp_path):
    path = tmp_path / "quiet.wav"
    noise = 1e-4 * np.random.default_rng(1).standard_normal(5 * RATE).astype(np.float32)
    sf.write(str(path), noise, RATE)
    stats = SegmentationStats()
    assert list(segment_recording(path, stats=stats)) == []
    assert stats.silent and stats.segments == 0 and stats.speech_frames == 0
    assert stats.frames == int(np.ceil(5 * RATE / 480))


def test_continuous_speech_is_cut_at_the_memory_bound_without_gaps():
    wave, (span,) = tones_and_silences([("silence", 0.5), ("tone", 12.0), ("silence", 0.5)])
    stats = SegmentationStats()
    segments = segment_waveform(wave, max_segment_s=2.0, max_held_s=4.0, stats=stats)
    assert stats.held_cuts >= 2 and stats.dropped_short == 0  # the short rest of the tone is kept
    assert all(s.duration <= 2.0 + 1e-9 for s in segments)
    assert all(a.end == b.start for a, b in itertools.pairwise(segments))
    assert segments[0].start == pytest.approx(span[0] - PAD, abs=0.04)
    assert segments[-1].end == pytest.approx(span[1] + PAD, abs=HANGOVER)
    joined = np.concatenate([s.samples for s in segments])
    first = round(segments[0].start * RATE)
    np.testing.assert_array_equal(joined, wave[first : first + joined.size])


def test_file_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="nope.wav: the recording does not exist") as error:
        segment_recording(missing)
    assert isinstance(error.value, MissingDataError)  # as load_audio reports a missing file
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio at all" * 50)
    with pytest.raises(AudioError, match=r"garbage.wav: cannot be read as audio.*convert the file"):
        segment_recording(garbage)
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match="empty.flac: is empty"):
        segment_recording(empty)
    with pytest.raises(AudioError, match="is a folder"):
        segment_recording(tmp_path)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"max_segment_s": 0}, "max_segment_s must be positive"),
        ({"min_segment_s": 9.0}, "min_segment_s .* must not exceed max_segment_s"),
        ({"pad_s": -0.1}, "pad_s must be a number of seconds ≥ 0"),
        ({"aggressiveness": 5}, "aggressiveness must be an integer 0–3"),
        ({"frame_ms": 25}, "frame_ms must be 10, 20 or 30"),
        ({"max_held_s": 1.0}, "max_held_s .* must be at least max_segment_s"),
    ],
)
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        StreamSegmenter(**options)
