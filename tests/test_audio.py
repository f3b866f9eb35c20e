"""Tests of emomix.audio: loading, resampling, loudness, VAD, chunking and MFCC.

Every test makes its own tiny audio (numpy + soundfile, PyAV for MP3/MP4) in ``tmp_path``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from emomix.audio import chunking, features, io, vad
from emomix.audio.io import audio_duration, decode_audio_bytes, load_audio
from emomix.errors import AudioError, ConfigError, MissingDataError

RATE = 16000


# ---------------------------------------------------------------------------------------------
# Signal makers
# ---------------------------------------------------------------------------------------------


def sine(
    seconds: float, rate: int = RATE, freq: float = 440.0, amplitude: float = 0.5, phase_s: float = 0.0
) -> np.ndarray:
    t = phase_s + np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def vowel(seconds: float, rate: int = RATE, f0: float = 140.0) -> np.ndarray:
    """A speech-like voiced sound: a glottal-ish harmonic source through three formants, 4 Hz syllables."""
    t = np.arange(int(round(seconds * rate))) / rate
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.08 * np.sin(2 * np.pi * 3 * t))) / rate
    source = sum(np.sin(k * phase) / k for k in range(1, 30))
    out = np.zeros_like(source)
    for centre, bandwidth in ((700, 110), (1220, 120), (2600, 160)):
        b, a = scipy.signal.iirpeak(centre, centre / bandwidth, fs=rate)
        out += scipy.signal.lfilter(b, a, source)
    out *= 0.5 * (1 - np.cos(2 * np.pi * 4 * t))
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


def speech_with_pauses(rate: int = RATE) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """1 s silence, 1.5 s voice, 1 s silence, 1 s voice, 1 s silence (faint noise throughout)."""
    silence = np.zeros(rate, dtype=np.float32)
    wave = np.concatenate([silence, vowel(1.5, rate), silence, vowel(1.0, rate, f0=200), silence])
    wave += 0.001 * np.random.default_rng(0).standard_normal(wave.size).astype(np.float32)
    return wave, [(1.0, 2.5), (3.5, 4.5)]


def write_media(
    path: Path,
    wave: np.ndarray | None,
    rate: int,
    codec: str = "aac",
    video_frames: np.ndarray | None = None,
    fps: int = 10,
) -> Path:
    """Write an audio and/or video file with PyAV (mono float audio, RGB frames)."""
    import av

    with av.open(str(path), mode="w") as out:
        # Every stream is added before the first packet is muxed (the header is written then).
        video = audio = None
        if video_frames is not None:
            video = out.add_stream("mpeg4", rate=fps)
            video.height, video.width = video_frames.shape[1:3]
            video.pix_fmt = "yuv420p"
        if wave is not None:
            audio = out.add_stream(codec, rate=rate)
            audio.layout = "mono"
        if video is not None:
            for image in video_frames:
                for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    out.mux(packet)
            for packet in video.encode():
                out.mux(packet)
        if audio is not None:
            size = audio.codec_context.frame_size or 1024
            for start in range(0, wave.size, size):
                chunk = np.ascontiguousarray(wave[None, start : start + size], dtype=np.float32)
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate = rate
                frame.pts = start
                for packet in audio.encode(frame):
                    out.mux(packet)
            for packet in audio.encode():
                out.mux(packet)
    return path


def dominant_frequency(wave: np.ndarray, rate: int = RATE) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.fft.rfftfreq(wave.size, 1 / rate)[spectrum.argmax()])


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def test_stereo_44k_wav_becomes_16k_mono_mean(tmp_path):
    left = sine(1.0, 44100, amplitude=0.5)
    stereo = np.stack([left, 0.5 * left], axis=1)  # mean = 0.75 × left
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 44100, subtype="FLOAT")
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert wave.size == 16000
    assert dominant_frequency(wave) == pytest.approx(440, abs=2)
    middle = wave[2000:-2000]
    assert np.abs(middle).max() == pytest.approx(0.375, abs=0.01)
    assert audio_duration(path) == pytest.approx(1.0)


def test_span_reads_exactly_the_asked_samples(tmp_path):
    ramp = (np.arange(2 * RATE) / (2 * RATE)).astype(np.float32)
    path = tmp_path / "ramp.wav"
    sf.write(path, ramp, RATE, subtype="FLOAT")
    span = load_audio(path, start=0.5, end=1.25)
    np.testing.assert_array_equal(span, ramp[8000:20000])
    np.testing.assert_array_equal(load_audio(path, start=1.5), ramp[24000:])
    np.testing.assert_array_equal(load_audio(path, end=0.25), ramp[:4000])


def test_span_end_slightly_past_the_file_is_clipped(tmp_path):
    path = tmp_path / "one.wav"
    sf.write(path, sine(1.0), RATE)
    assert load_audio(path, start=0.5, end=1.05).size == 8000


@pytest.mark.parametrize(
    "start,end,message",
    [
        (1.5, 2.0, "starts at 1.500 s but the file is only 1.000 s long"),
        (0.2, 3.0, "ends at 3.000 s but the file is only 1.000 s long"),
        (0.8, 0.4, "is not after its start"),
        (-1.0, 0.5, "start -1.0 s is invalid"),
    ],
)
def test_span_outside_the_file_raises_audio_error(tmp_path, start, end, message):
    path = tmp_path / "one.wav"
    sf.write(path, sine(1.0), RATE)
    with pytest.raises(AudioError, match=message) as caught:
        load_audio(path, start=start, end=end)
    assert str(path) in str(caught.value)


def test_flac_and_ogg_load_like_wav(tmp_path):
    wave = sine(0.5, 22050, freq=300)
    flac, ogg = tmp_path / "a.flac", tmp_path / "a.ogg"
    sf.write(flac, wave, 22050, subtype="PCM_16")
    sf.write(ogg, wave, 22050, format="OGG", subtype="VORBIS")
    from_flac, from_ogg = load_audio(flac), load_audio(ogg)
    assert from_flac.size == from_ogg.size == 8000
    reference = io.resample(wave, 22050, RATE)
    np.testing.assert_allclose(from_flac, reference, atol=1e-3)
    assert dominant_frequency(from_ogg) == pytest.approx(300, abs=2)


def test_resample_keeps_frequency_and_length():
    out = io.resample(sine(2.0, 48000, freq=1000), 48000, RATE)
    assert out.size == 32000 and out.dtype == np.float32
    assert dominant_frequency(out) == pytest.approx(1000, abs=1)


def test_mp4_audio_track_is_resampled_to_16k_mono(tmp_path):
    path = write_media(
        tmp_path / "clip.mp4",
        sine(2.0, 22050, freq=440),
        22050,
        "aac",
        video_frames=np.zeros((20, 32, 32, 3), np.uint8),
    )
    full = load_audio(path)
    assert full.dtype == np.float32 and full.ndim == 1
    assert full.size == pytest.approx(32000, abs=800)  # AAC pads its last frame
    assert dominant_frequency(full) == pytest.approx(440, abs=2)
    assert audio_duration(path) == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("suffix,codec", [(".mp4", "aac"), (".mp3", "libmp3lame"), (".mkv", "aac")])
def test_pyav_span_equals_the_same_slice_of_the_whole_file(tmp_path, suffix, codec):
    chirp = scipy.signal.chirp(np.arange(3 * RATE) / RATE, 100, 3.0, 1500).astype(np.float32) * 0.5
    path = write_media(tmp_path / f"clip{suffix}", chirp, RATE, codec)
    full = load_audio(path)
    span = load_audio(path, start=1.25, end=1.75)
    assert span.size == 8000
    # Matroska stores times in milliseconds: the span may start up to 16 samples off.
    tolerance = 16 if suffix == ".mkv" else 0
    errors = [np.abs(full[20000 + lag : 28000 + lag] - span).max() for lag in range(-tolerance, tolerance + 1)]
    assert min(errors) < 1e-4


def test_mp3_data_behind_a_wav_name_is_decoded_like_an_mp3(tmp_path):
    mp3 = write_media(tmp_path / "real.mp3", sine(1.0, 22050), 22050, "libmp3lame")
    misnamed = tmp_path / "misnamed.wav"
    misnamed.write_bytes(mp3.read_bytes())
    np.testing.assert_array_equal(load_audio(misnamed), load_audio(mp3))


def test_decode_audio_bytes_equals_load_audio(tmp_path):
    wav, mp3 = tmp_path / "a.wav", tmp_path / "b.mp3"
    sf.write(wav, sine(1.0, 44100), 44100)
    write_media(mp3, sine(1.0, 22050), 22050, "libmp3lame")
    np.testing.assert_array_equal(decode_audio_bytes(wav.read_bytes()), load_audio(wav))
    np.testing.assert_allclose(
        decode_audio_bytes(mp3.read_bytes(), start=0.2, end=0.6), load_audio(mp3, 0.2, 0.6), atol=1e-6
    )
    with pytest.raises(AudioError, match="upload.wav: is empty"):
        decode_audio_bytes(b"", name="upload.wav")
    with pytest.raises(AudioError, match="<uploaded audio>: not a readable audio file"):
        decode_audio_bytes(b"definitely not audio" * 50)


def test_missing_file_raises_missing_data_error(tmp_path):
    with pytest.raises(MissingDataError, match="nope.wav does not exist"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(MissingDataError):
        audio_duration(tmp_path / "nope.mp4")


def test_zero_length_file_raises_audio_error(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav: is empty \(0 bytes\)"):
        load_audio(path)


def test_header_without_samples_raises_audio_error(tmp_path):
    path = tmp_path / "no_frames.wav"
    sf.write(path, np.zeros(0, np.float32), RATE)
    with pytest.raises(AudioError, match="no_frames.wav: holds no audio samples"):
        load_audio(path)


def test_corrupt_header_raises_audio_error_naming_the_file(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, sine(0.5), RATE)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFX\x00\x00garbage" + good.read_bytes()[16:])
    with pytest.raises(AudioError, match="corrupt.wav: cannot be read as audio"):
        load_audio(corrupt)
    fake_mp4 = tmp_path / "fake.mp4"
    fake_mp4.write_bytes(b"\x00\x01\x02 not a container " * 100)
    with pytest.raises(AudioError, match="fake.mp4: cannot be decoded"):
        load_audio(fake_mp4)


def test_video_without_audio_stream_raises_audio_error(tmp_path):
    path = write_media(tmp_path / "silent_film.mp4", None, RATE, video_frames=np.zeros((5, 32, 32, 3), np.uint8))
    with pytest.raises(AudioError, match="silent_film.mp4: has no audio stream"):
        load_audio(path)


def test_unsupported_extension_raises_audio_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(AudioError, match=r"notes.txt: unsupported audio extension '\.txt'"):
        load_audio(path)


def test_silence_only_audio_loads_and_vad_falls_back(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(RATE, np.float32), RATE)
    wave = load_audio(path, normalise_loudness=True)
    assert wave.size == RATE and not wave.any()  # silence is not amplified
    assert vad.is_silence(wave)
    mask = vad.webrtc_vad_mask(wave)
    assert mask.shape == (34,) and not mask.any()
    kept, fell_back = vad.speech_mask_or_all(mask)
    assert fell_back and kept.all() and kept.shape == mask.shape


# ---------------------------------------------------------------------------------------------
# Loudness
# ---------------------------------------------------------------------------------------------


def test_loudness_normalisation_reaches_the_target():
    noise = 0.01 * np.random.default_rng(1).standard_normal(RATE * 2).astype(np.float32)
    assert io.loudness_dbfs(noise) == pytest.approx(-40.0, abs=0.2)
    louder = io.normalise_loudness(noise, target_dbfs=-23.0)
    assert io.loudness_dbfs(louder) == pytest.approx(-23.0, abs=0.05)


def test_loudness_gating_ignores_pauses():
    wave, _ = speech_with_pauses()
    voiced = np.concatenate([wave[RATE : int(2.5 * RATE)], wave[int(3.5 * RATE) : int(4.5 * RATE)]])
    # The gated level of speech with pauses is the level of its voiced part, not diluted by silence.
    assert io.loudness_dbfs(wave) == pytest.approx(io.loudness_dbfs(voiced), abs=1.0)


def test_loudness_normalisation_never_clips():
    wave = sine(1.0, amplitude=0.5)
    out = io.normalise_loudness(wave, target_dbfs=0.0)
    assert np.abs(out).max() == pytest.approx(0.99, abs=1e-4)


def test_load_audio_normalises_when_asked(tmp_path):
    path = tmp_path / "quiet.wav"
    sf.write(path, sine(1.0, amplitude=0.01), RATE, subtype="FLOAT")
    assert io.loudness_dbfs(load_audio(path, normalise_loudness=True, target_dbfs=-20.0)) == pytest.approx(
        -20.0, abs=0.05
    )
    assert io.loudness_dbfs(load_audio(path)) == pytest.approx(20 * math.log10(0.01 / math.sqrt(2)), abs=0.05)


# ---------------------------------------------------------------------------------------------
# VAD
# ---------------------------------------------------------------------------------------------


def test_webrtc_mask_finds_the_voiced_regions():
    wave, truth = speech_with_pauses()
    mask = vad.webrtc_vad_mask(wave, frame_ms=30, aggressiveness=2)
    assert mask.shape == (math.ceil(wave.size / 480),)
    regions = vad.speech_regions(mask, 0.03, min_speech_s=0.2, merge_gap_s=0.3)
    assert len(regions) == 2
    for (start, end), (true_start, true_end) in zip(regions, truth):
        assert start == pytest.approx(true_start, abs=0.2)
        assert end == pytest.approx(true_end, abs=0.2)
    assert mask[int(1.5 / 0.03)] and not mask[int(3.0 / 0.03)]


def test_webrtc_mask_resamples_rates_it_does_not_take():
    wave, _ = speech_with_pauses()
    at_22k = io.resample(wave, RATE, 22050)
    mask = vad.webrtc_vad_mask(at_22k, rate=22050, frame_ms=20)
    assert mask.shape == (math.ceil(wave.size / 320),)
    assert mask[int(1.75 / 0.02)] and not mask[int(3.0 / 0.02)]


@pytest.mark.parametrize(
    "options,message",
    [
        ({"frame_ms": 25}, "frame_ms must be 10, 20 or 30"),
        ({"aggressiveness": 4}, "aggressiveness must be an integer 0–3"),
        ({"aggressiveness": -1}, "aggressiveness must be an integer 0–3"),
    ],
)
def test_webrtc_options_are_validated(options, message):
    with pytest.raises(ConfigError, match=message):
        vad.webrtc_vad_mask(np.zeros(RATE, np.float32), **options)


def test_vad_dispatcher_validates_backend_and_options():
    wave = np.zeros(RATE, np.float32)
    with pytest.raises(ConfigError, match="unknown VAD backend 'energy'"):
        vad.vad_mask(wave, backend="energy")
    with pytest.raises(ConfigError, match=r"unknown webrtc VAD option\(s\) \['threshold'\]"):
        vad.vad_mask(wave, backend="webrtc", threshold=0.3)
    assert vad.vad_mask(wave, backend="webrtc", frame_ms=10).shape == (100,)


def test_silero_mask_on_speech_and_silence():
    import torch

    threads = torch.get_num_threads()
    wave, truth = speech_with_pauses()
    mask = vad.vad_mask(wave, backend="silero")
    assert mask.shape == (math.ceil(wave.size / 512),)
    assert mask.any()
    for start, end in vad.speech_regions(mask, 0.032):
        # Every region Silero keeps lies on the voice (its 30 ms padding aside).
        assert any(true_start - 0.1 <= start and end <= true_end + 0.1 for true_start, true_end in truth)
    assert not vad.silero_vad_mask(np.zeros(2 * RATE, np.float32)).any()
    assert torch.get_num_threads() == threads  # importing silero_vad must not change the process's threads


def test_silero_threshold_is_validated():
    with pytest.raises(ConfigError, match="threshold must be between 0 and 1"):
        vad.silero_vad_mask(np.zeros(RATE, np.float32), threshold=1.5)


def test_speech_regions_merge_and_minimum():
    mask = np.array([0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 0], dtype=bool)

    def flat(regions):
        return [t for region in regions for t in region]

    assert flat(vad.speech_regions(mask, 0.1)) == pytest.approx([0.1, 0.3, 0.4, 0.5, 0.8, 1.1])
    assert flat(vad.speech_regions(mask, 0.1, merge_gap_s=0.1)) == pytest.approx([0.1, 0.5, 0.8, 1.1])
    assert flat(vad.speech_regions(mask, 0.1, min_speech_s=0.25)) == pytest.approx([0.8, 1.1])
    assert vad.speech_regions(np.zeros(5, bool), 0.1) == []
    assert vad.speech_regions(np.ones(3, bool), 0.5) == [(0.0, 1.5)]


def test_map_mask_uses_the_vad_frame_under_each_centre():
    mask = np.array([False, True, True, False])  # 30 ms frames: speech from 30 to 90 ms
    mapped = vad.map_mask_to_frames(mask, 0.03, 0.02, 6)  # centres 10 30 50 70 90 110 ms
    np.testing.assert_array_equal(mapped, [False, True, True, True, False, False])
    coarse = vad.map_mask_to_frames(np.array([True, False]), 0.01, 0.1, 3)  # centres past the mask end
    np.testing.assert_array_equal(coarse, [False, False, False])
    assert vad.map_mask_to_frames(np.zeros(0, bool), 0.03, 0.02, 4).tolist() == [False] * 4
    assert vad.map_mask_to_frames(mask, 0.03, 0.02, 0).shape == (0,)


def test_is_silence():
    assert vad.is_silence(np.zeros(RATE, np.float32))
    assert vad.is_silence(1e-5 * np.random.default_rng(0).standard_normal(RATE))
    assert vad.is_silence(np.zeros(0, np.float32))
    assert not vad.is_silence(sine(0.5, amplitude=0.01))
    with_click = np.zeros(RATE, np.float32)
    with_click[8000:8100] = 0.5
    assert not vad.is_silence(with_click)


def test_speech_mask_or_all_keeps_a_mask_with_speech():
    mask = np.array([False, True, False])
    kept, fell_back = vad.speech_mask_or_all(mask)
    assert not fell_back and kept.tolist() == [False, True, False]
    empty, fell_back = vad.speech_mask_or_all(np.zeros(0, bool))
    assert not fell_back and empty.size == 0


# ---------------------------------------------------------------------------------------------
# Chunking
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seconds,expected",
    [
        (2.5, [2.5]),
        (3.0, [3.0]),
        (3.5, [1.75, 1.75]),
        (4.0, [2.0, 2.0]),
        (6.5, [6.5 / 3] * 3),
        (10.0, [2.5] * 4),
    ],
)
def test_chunk_lengths(seconds, expected):
    wave = np.arange(int(seconds * RATE), dtype=np.float32)
    pieces = chunking.chunk_waveform(wave)
    assert [p.size / RATE for p in pieces] == pytest.approx(expected, abs=1 / RATE)
    np.testing.assert_array_equal(np.concatenate(pieces), wave)


def test_chunks_respect_max_always_and_min_when_the_total_allows():
    for samples in range(3 * RATE + 1, 20 * RATE, 797):
        pieces = chunking.chunk_bounds(samples)
        lengths = [end - start for start, end in pieces]
        assert max(lengths) <= 3 * RATE
        assert max(lengths) - min(lengths) <= 1
        feasible = math.ceil(samples / (3 * RATE)) <= samples // (2 * RATE)
        if feasible:
            assert min(lengths) >= 2 * RATE - 1, samples


def test_chunk_parameters_are_validated():
    with pytest.raises(ConfigError, match="min_s ≤ max_s"):
        chunking.chunk_waveform(np.zeros(10), min_s=4.0, max_s=3.0)
    assert [p.size for p in chunking.chunk_waveform(np.zeros(0))] == [0]


def test_pad_or_cut():
    short = np.ones(RATE, np.float32)
    padded, valid = chunking.pad_or_cut(short, length_s=8.0)
    assert padded.shape == (8 * RATE,) and valid == RATE
    assert padded[:RATE].all() and not padded[RATE:].any()
    long = np.arange(10 * RATE, dtype=np.float32)
    cut, valid = chunking.pad_or_cut(long, length_s=8.0)
    assert valid == 8 * RATE
    np.testing.assert_array_equal(cut, long[: 8 * RATE])


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------


def test_mfcc_shape_and_content():
    wave = sine(1.0, freq=300)
    coefficients = features.mfcc(wave)
    assert coefficients.shape == (101, 40) and coefficients.dtype == np.float32
    assert features.num_frames(wave.size) == 101
    # A steady tone gives steady coefficients; another tone gives other ones.
    middle = coefficients[10:-10]
    assert np.abs(middle - middle.mean(axis=0)).max() < 1.0
    other = features.mfcc(sine(1.0, freq=2000))[10:-10].mean(axis=0)
    assert np.linalg.norm(other - middle.mean(axis=0)) > 20
    assert features.mfcc(np.zeros(0, np.float32)).shape == (0, 40)
    assert features.mfcc(np.full(100, 0.1, np.float32), n_mfcc=13).shape == (1, 13)


def test_frame_energy_levels():
    wave = np.concatenate([sine(0.5, amplitude=0.5), np.zeros(RATE // 2, np.float32)])
    level = features.frame_energy(wave)
    assert level.shape == (101,)
    assert level[20] == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.1)
    assert level[80] == -100.0


# ---------------------------------------------------------------------------------------------
# Real corpus (slow)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_vad_on_real_emodb_speech():
    from emomix.data.paths import shared_datasets_dir

    root = shared_datasets_dir()
    if root is None or not (root / "emodb" / "wav").is_dir():
        pytest.skip("EmoDB not found in ../shared/datasets (set EMOMIX_DATASETS)")
    files = sorted((root / "emodb" / "wav").glob("*.wav"))[:12]
    for path in files:
        wave = load_audio(path)
        assert wave.size / RATE == pytest.approx(audio_duration(path), abs=1e-3)
        for backend in ("webrtc", "silero"):
            mask = vad.vad_mask(wave, backend=backend)
            assert 0.3 < mask.mean() <= 1.0, (path.name, backend, mask.mean())
