"""Tests of emomix.audio.video: decoding frames and cutting face crops.

The positive face-detection tests use the portrait photograph that matplotlib ships as sample data
(``grace_hopper.jpg``); videos are written with PyAV into ``tmp_path``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from emomix.audio.video import VideoError, detect_largest_face, face_crops, fit_length, read_video_frames, to_gray
from emomix.errors import AudioError, ConfigError, MissingDataError


def portrait() -> np.ndarray:
    """A real face photograph (RGB, 192×160), or skip when matplotlib's sample data is absent."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        pytest.skip("matplotlib's sample photograph grace_hopper.jpg is not installed")
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return cv2.resize(image, (160, 192), interpolation=cv2.INTER_AREA)


def noise_frames(count: int, height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def write_video(path: Path, frames: np.ndarray, fps: int = 10, with_audio: bool = False) -> Path:
    import av

    with av.open(str(path), mode="w") as out:
        video = out.add_stream("mpeg4", rate=fps)
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt = "yuv420p"
        video.bit_rate = 4_000_000
        audio = out.add_stream("aac", rate=16000) if with_audio else None
        for image in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if audio is not None:
            samples = np.zeros((1, 16000 * len(frames) // fps), np.float32)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in list(audio.encode(frame)) + list(audio.encode()):
                out.mux(packet)
    return path


def numbered_frames(count: int) -> np.ndarray:
    """Frames whose brightness encodes their index (robust to lossy coding)."""
    return np.stack([np.full((64, 64, 3), 10 + 20 * i, np.uint8) for i in range(count)])


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def test_read_all_frames_as_rgb(tmp_path):
    path = write_video(tmp_path / "clip.mp4", numbered_frames(10))
    frames = read_video_frames(path)
    assert frames.shape == (10, 64, 64, 3) and frames.dtype == np.uint8
    np.testing.assert_allclose(frames.reshape(10, -1).mean(axis=1), 10 + 20 * np.arange(10), atol=3)


def test_read_span_and_max_frames(tmp_path):
    path = write_video(tmp_path / "clip.mp4", numbered_frames(10), fps=10, with_audio=True)
    span = read_video_frames(path, start=0.3, end=0.6)  # frames shown at 0.3, 0.4, 0.5 s
    assert span.shape[0] == 3
    np.testing.assert_allclose(span.reshape(3, -1).mean(axis=1), [70, 90, 110], atol=3)
    assert read_video_frames(path, start=0.2, max_frames=4).shape[0] == 4
    assert read_video_frames(path, max_frames=2).reshape(2, -1).mean(axis=1) == pytest.approx([10, 30], abs=3)


def test_video_errors(tmp_path):
    with pytest.raises(MissingDataError, match="nothing.mp4 does not exist"):
        read_video_frames(tmp_path / "nothing.mp4")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match=r"empty.mp4: is empty"):
        read_video_frames(empty)
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(b"RIFF\x00\x00\x00\x00AVI garbage" * 40)
    with pytest.raises(VideoError, match="truncated.avi: holds no media stream"):
        read_video_frames(truncated)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01\x02 not a container " * 100)
    with pytest.raises(VideoError, match="corrupt.mp4: cannot be decoded"):
        read_video_frames(corrupt)
    import soundfile as sf

    audio_only = tmp_path / "voice.wav"
    sf.write(audio_only, np.zeros(1600, np.float32), 16000)
    with pytest.raises(VideoError, match="voice.wav: has no video stream"):
        read_video_frames(audio_only)
    clip = write_video(tmp_path / "clip.mp4", numbered_frames(5))
    with pytest.raises(VideoError, match=r"clip.mp4: holds no video frame in the span 3.0–4.0 s"):
        read_video_frames(clip, start=3.0, end=4.0)
    assert issubclass(VideoError, AudioError)


# ---------------------------------------------------------------------------------------------
# Faces
# ---------------------------------------------------------------------------------------------


def test_detect_largest_face_on_a_portrait_and_on_noise():
    image = portrait()
    box = detect_largest_face(to_gray(image))
    assert box is not None
    x, y, w, h = box
    # The face sits in the upper middle of the portrait.
    assert 30 <= x + w / 2 <= 130 and 20 <= y + h / 2 <= 120 and w >= 40
    assert detect_largest_face(to_gray(noise_frames(1)[0])) is None
    assert detect_largest_face(np.zeros((120, 120), np.uint8)) is None


def test_face_crops_from_a_video_of_a_face(tmp_path):
    image = portrait()
    frames = np.stack([np.roll(image, shift, axis=1) for shift in range(0, 8, 2)])
    path = write_video(tmp_path / "face.mp4", frames)
    result = face_crops(read_video_frames(path), size=64, num_frames=6)
    assert result is not None
    crops, found = result
    assert found == 4
    assert crops.shape == (6, 64, 64) and crops.dtype == np.uint8
    np.testing.assert_array_equal(crops[4], crops[3])  # padding repeats the last crop
    np.testing.assert_array_equal(crops[5], crops[3])


def test_frames_without_a_face_reuse_the_last_box():
    face = portrait()
    blank = np.full_like(face, 128)
    frames = np.stack([blank, face, blank])
    crops, found = face_crops(frames, size=32, num_frames=3)
    assert found == 1
    x, y, w, h = detect_largest_face(to_gray(face))
    expected_face = cv2.resize(to_gray(face)[y : y + h, x : x + w], (32, 32), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(crops[1], expected_face)
    # Before the first detection and after it, the same box is cut from the face-less frames.
    assert (crops[0] == 128).all() and (crops[2] == 128).all()


def test_detect_every_reuses_the_box_between_detections():
    face = portrait()
    frames = np.stack([face, np.full_like(face, 128), face, np.full_like(face, 128)])
    crops, found = face_crops(frames, size=32, num_frames=4, detect_every=2)
    assert found == 2  # frames 0 and 2 examined; 1 and 3 reuse their box
    np.testing.assert_array_equal(crops[0], crops[2])
    assert (crops[1] == 128).all() and (crops[3] == 128).all()


def test_no_face_anywhere_gives_none():
    assert face_crops(noise_frames(4)) is None
    assert face_crops(np.zeros((0, 32, 32, 3), np.uint8)) is None


def test_detector_none_resizes_whole_frames_and_cuts():
    frames = numbered_frames(10)
    crops, found = face_crops(frames, size=16, num_frames=4, detector="none")
    assert found == 10
    assert crops.shape == (4, 16, 16)
    np.testing.assert_array_equal(crops[:, 0, 0], [to_gray(frames[i])[0, 0] for i in range(4)])
    gray_input = to_gray(frames[0])[None]
    padded, _ = face_crops(gray_input, size=8, num_frames=3, detector="none")
    assert padded.shape == (3, 8, 8) and (padded == gray_input[0, 0, 0]).all()


def test_face_crop_options_are_validated():
    with pytest.raises(ConfigError, match="unknown face detector 'mtcnn'"):
        face_crops(numbered_frames(2), detector="mtcnn")
    with pytest.raises(ConfigError, match="size, num_frames and detect_every must be positive"):
        face_crops(numbered_frames(2), num_frames=0)


def test_fit_length():
    stack = np.arange(3)[:, None]
    assert fit_length(stack, 5)[:, 0].tolist() == [0, 1, 2, 2, 2]
    assert fit_length(stack, 2)[:, 0].tolist() == [0, 1]


# ---------------------------------------------------------------------------------------------
# The faces encoder: face crops as stored features; clips without a face are dropped and counted
# ---------------------------------------------------------------------------------------------


def test_prepare_video_steps_frames_cuts_without_padding_and_flags_missed_faces(tmp_path):
    from emomix.audio.video import FACE_BOX_REUSED, prepare_video

    path = write_video(tmp_path / "ramp.mp4", numbered_frames(9))
    out = prepare_video(path, None, None, size=16, num_frames=7, frame_step=2, detector="none")
    assert out["input"].shape == (4, 16, 16) and out["input"].dtype == np.uint8  # frames 0, 2, 4, 6 of the first 7
    np.testing.assert_allclose(out["input"][:, 8, 8], [10, 50, 90, 130], atol=6)
    assert "error" not in out and out["fallbacks"] == []
    padded = prepare_video(path, None, None, size=16, num_frames=12, pad=True, detector="none")["input"]
    assert padded.shape == (12, 16, 16) and (padded[9:] == padded[8]).all()
    face = portrait()
    mixed = write_video(tmp_path / "mixed.mp4", np.stack([face, np.full_like(face, 128), face]))
    assert prepare_video(mixed, None, None)["fallbacks"] == [FACE_BOX_REUSED]


def test_faces_encoder_keeps_uint8_crops_and_checks_shapes():
    from emomix.encoders.registry import create_encoder

    encoder = create_encoder({"name": "faces", "size": 16, "frame_step": 2})
    assert (encoder.modality, encoder.output_size, encoder.config()["frame_step"]) == ("video", 16, 2)
    assert encoder.identity() != create_encoder({"name": "faces", "size": 16}).identity()
    stacks = [np.full((3, 16, 16), 200, np.uint8), np.full((1, 16, 16), 7, np.uint8)]
    output = encoder.encode(stacks)
    assert output.states.shape == (2, 3, 16, 16) and output.mask.sum(1).tolist() == [3, 1]
    second = output.unpad(1)
    assert second["states"].dtype == np.uint8 and second["states"].shape == (1, 16, 16)
    assert (second["states"] == 7).all()
    with pytest.raises(AudioError, match="expected N × 16 × 16"):
        encoder.encode([np.zeros((2, 8, 8), np.uint8)])
    with pytest.raises(ConfigError, match="detector"):
        create_encoder({"name": "faces", "detector": "mtcnn"})


def test_extraction_drops_and_counts_a_clip_without_a_face(tmp_path):
    import pandas as pd

    from emomix.cache.memory import MemoryStore
    from emomix.features import FeatureSpec, build_features

    face = portrait()
    write_video(tmp_path / "face.mp4", np.stack([face, face]))
    write_video(tmp_path / "noface.mp4", noise_frames(3, 192, 160))
    table = pd.DataFrame(
        {
            "utt_id": ["a", "b"],
            "audio_path": [None, None],
            "start": [None, None],
            "end": [None, None],
            "text": ["x", "y"],
            "video_path": ["face.mp4", "noface.mp4"],
            "video_start": [None, None],
            "video_end": [None, None],
            "speaker": ["s", "s"],
        }
    )
    spec = FeatureSpec(modality="video", encoder={"name": "faces", "size": 32, "num_frames": 4})
    result = build_features(table, {"video": spec}, MemoryStore(), base_dir=tmp_path, progress=False)
    assert result.utt_ids == ["a"]
    assert [(f["utt_id"], f["reason"]) for f in result.failures] == [("b", "no face found")]
    assert result.summaries["video"]["failed"] == 1
    assert result.features["a"]["video"]["states"].shape == (2, 32, 32)
    assert result.input_dims["video"] == 32


def test_prediction_inputs_carry_the_video_file(tmp_path):
    from emomix.infer.batch import collect_inputs

    (tmp_path / "a.wav").write_bytes(b"")
    manifest = tmp_path / "list.csv"
    manifest.write_text("audio_path,text,video_path\na.wav,hello,clips/a.mp4\nb.wav,,\n", encoding="utf-8")
    items = collect_inputs(manifest)
    assert items[0] == {"audio": str(tmp_path / "a.wav"), "text": "hello", "video": str(tmp_path / "clips" / "a.mp4")}
    assert "video" not in items[1]
    single = collect_inputs(tmp_path / "a.wav", text="hi", video=tmp_path / "a.mp4")
    assert single == [{"audio": str(tmp_path / "a.wav"), "text": "hi", "video": str(tmp_path / "a.mp4")}]
    with pytest.raises(ConfigError, match="--video applies to a single file"):
        collect_inputs(manifest, video=tmp_path / "a.mp4")
