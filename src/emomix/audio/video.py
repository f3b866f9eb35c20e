"""Video: decoding frames (PyAV) and cutting grayscale face crops (OpenCV's Haar cascade).

The video branch of the models sees a fixed stack of ``num_frames`` grayscale face crops of
``size × size`` pixels per utterance. :func:`face_crops` makes it:

1. each frame is converted to grayscale and the largest frontal face found by OpenCV's Haar
   cascade (``haarcascade_frontalface_default.xml``, shipped with opencv-python-headless < 5)
   is cut out and resized (detection runs on a copy at most ``detection_width`` pixels wide,
   for faces of at least ``min_face_fraction`` of its height, on every ``detect_every``-th frame);
2. a frame where no face is found reuses the box of the previous detection (frames before the
   first detection use the first one): detectors miss faces turned aside for a few frames while
   the face is still there, and keeping the frame keeps the clip's timing;
3. if no frame has a face, the result is ``None``: the caller drops the sample and counts it;
4. the stack is cut to its first ``num_frames`` crops, or padded by repeating the last crop.

:func:`prepare_video` is what feature extraction runs per utterance for the ``faces`` encoder
(:class:`emomix.encoders.video.FaceStackEncoder`): decode, keep every ``frame_step``-th frame,
crop; a clip without a face anywhere comes back as the failure :data:`NO_FACE`.

``detector="none"`` skips detection and resizes whole frames (for synthetic video whose frames
already are face crops).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emomix.errors import ConfigError, MissingDataError, VideoError

DETECTORS = ("haar", "none")
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
#: The failure reason extraction records for a clip in which no frame has a face.
NO_FACE = "no face found"
#: The fallback recorded when some (not all) frames had no face and reused a neighbour's box.
FACE_BOX_REUSED = "face missed in some frames"


# ---------------------------------------------------------------------------------------------
# Decoding (IO)
# ---------------------------------------------------------------------------------------------


def read_video_frames(
    path: str | Path, start: float | None = None, end: float | None = None, max_frames: int | None = None
) -> np.ndarray:
    """Decode the frames of a video's first video stream as an ``N × H × W × 3`` uint8 RGB array.

    ``start``/``end`` (seconds, relative to the stream's start) keep the frames shown in that
    span, seeking to ``start``; ``max_frames`` stops after that many. Raises
    :class:`MissingDataError` for a missing file and :class:`VideoError` for an empty or corrupt
    file, a file without a video stream, or a span holding no frame.
    """
    import av

    path = Path(path)
    if not path.exists():
        raise MissingDataError(f"video file {path} does not exist; check the table's video_path")
    if path.is_dir() or path.stat().st_size == 0:
        raise VideoError(f"{path}: is empty (0 bytes) or a folder, not a video file")
    if (start is not None and start < 0) or (start is not None and end is not None and end <= start):
        raise VideoError(f"{path}: invalid span {start}–{end} s; give 0 ≤ start < end seconds")
    if max_frames is not None and max_frames <= 0:
        raise ConfigError(f"max_frames must be positive, got {max_frames!r}")
    try:
        container = av.open(str(path), mode="r")
    except av.error.FFmpegError as exc:
        raise VideoError(f"{path}: cannot be decoded ({exc}); the file is corrupt or not a media file") from exc
    frames: list[np.ndarray] = []
    with container:
        if not container.streams:
            raise VideoError(f"{path}: holds no media stream; the file is corrupt or truncated")
        if not container.streams.video:
            raise VideoError(f"{path}: has no video stream; give the corpus's video file or drop the video modality")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        time_base = stream.time_base
        if time_base is None:
            raise VideoError(f"{path}: its video stream declares no time base; the file is corrupt or truncated")
        origin = float(stream.start_time * time_base) if stream.start_time is not None else 0.0
        # Half a frame of slack: a frame whose time stamp rounds to just before ``start`` is the
        # one on screen at ``start``.
        rate = float(stream.average_rate) if stream.average_rate else 25.0
        slack = 0.5 / rate
        try:
            if start:
                container.seek(int((origin + start) / time_base), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                time = (float(frame.time) - origin) if frame.time is not None else len(frames) / rate
                if start is not None and time < start - slack:
                    continue
                if end is not None and time >= end - slack:
                    break
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
        except av.error.FFmpegError as exc:
            raise VideoError(f"{path}: decoding failed ({exc}); the file is corrupt or truncated") from exc
    if not frames:
        where = "" if start is None and end is None else f" in the span {start}–{end} s"
        raise VideoError(f"{path}: holds no video frame{where}")
    return np.stack(frames)


# ---------------------------------------------------------------------------------------------
# Faces (pure functions on arrays)
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _haar_cascade() -> Any:
    import cv2

    if not hasattr(cv2, "CascadeClassifier"):
        raise ConfigError(
            f"OpenCV {cv2.__version__} has no Haar cascade detector (OpenCV 5 moved it out of the main "
            "package); install opencv-python-headless<5, or use face_crops(detector='none')"
        )
    folder = str(cv2.data.haarcascades)  # type: ignore[attr-defined]  # OpenCV's stubs omit cv2.data
    cascade = cv2.CascadeClassifier(folder + HAAR_CASCADE)
    if cascade.empty():
        raise ConfigError(f"OpenCV's {HAAR_CASCADE} was not found in {folder}; reinstall opencv-python-headless<5")
    return cascade


def to_gray(frame: np.ndarray) -> np.ndarray:
    """A uint8 grayscale copy of an RGB (H×W×3) or grayscale (H×W) frame."""
    import cv2

    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frame.dtype}")
    if frame.ndim == 2:
        return frame
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if frame.ndim == 3 and frame.shape[2] == 1:
        return frame[:, :, 0]
    raise ValueError(f"expected an H×W×3 RGB or H×W grayscale frame, got shape {frame.shape}")


def detect_largest_face(
    frame_gray: np.ndarray, min_size: int = 24, scale_factor: float = 1.1, min_neighbors: int = 5
) -> tuple[int, int, int, int] | None:
    """The largest frontal face ``(x, y, w, h)`` found by the Haar cascade, or None.

    ``frame_gray`` is a uint8 grayscale frame (RGB is converted); faces smaller than
    ``min_size`` pixels are ignored.
    """
    import cv2

    gray = to_gray(frame_gray)
    faces = _haar_cascade().detectMultiScale(
        cv2.equalizeHist(gray), scaleFactor=scale_factor, minNeighbors=min_neighbors, minSize=(min_size, min_size)
    )
    if len(faces) == 0:
        return None
    x, y, w, h = max((tuple(int(v) for v in face) for face in faces), key=lambda box: box[2] * box[3])
    return x, y, w, h


def _detect_scaled(
    gray: np.ndarray, detection_width: int, min_face_fraction: float
) -> tuple[int, int, int, int] | None:
    import cv2

    height, width = gray.shape
    scale = max(1.0, width / detection_width)
    small = (
        gray
        if scale == 1.0
        else cv2.resize(gray, (detection_width, max(1, int(round(height / scale)))), interpolation=cv2.INTER_AREA)
    )
    # Faces in emotion corpora fill a good part of the frame; not scanning tiny scales is most of
    # the detector's speed.
    min_size = max(24, int(round(min_face_fraction * min(small.shape))))
    box = detect_largest_face(small, min_size=min_size)
    if box is None:
        return None
    x, y, w, h = (int(round(v * scale)) for v in box)
    return x, y, min(w, width - x), min(h, height - y)


def face_crops(
    frames: np.ndarray | Sequence[np.ndarray],
    size: int = 64,
    num_frames: int = 150,
    detector: str = "haar",
    detection_width: int = 320,
    min_face_fraction: float = 0.1,
    detect_every: int = 1,
    pad: bool = True,
) -> tuple[np.ndarray, int] | None:
    """A ``num_frames × size × size`` uint8 grayscale stack of face crops (see the module's rules).

    With ``pad=False`` a clip shorter than ``num_frames`` keeps its own length (cut, never padded).

    Detection runs on a copy at most ``detection_width`` pixels wide, looks for faces of at least
    ``min_face_fraction`` of that copy's shorter side, and only on every ``detect_every``-th frame
    (the frames between reuse the last box, like frames where no face was found).

    Returns ``(crops, found)`` with ``found`` the number of frames in which a face was detected
    (every frame for ``detector="none"``), or None when no frame has a face (or there are no
    frames): the caller drops such a sample and counts it.
    """
    import cv2

    if detector not in DETECTORS:
        raise ConfigError(f"unknown face detector {detector!r}; choose one of {', '.join(DETECTORS)}")
    if size <= 0 or num_frames <= 0 or detect_every <= 0:
        raise ConfigError(
            f"size, num_frames and detect_every must be positive, got {size}, {num_frames}, {detect_every}"
        )
    grays = [to_gray(frame) for frame in frames]
    if not grays:
        return None

    def crop(gray: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
        if box is not None:
            x, y, w, h = box
            gray = gray[y : y + h, x : x + w]
        return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)

    if detector == "none":
        crops = [crop(gray, None) for gray in grays]
        found = len(grays)
    else:
        boxes = [
            _detect_scaled(gray, detection_width, min_face_fraction) if index % detect_every == 0 else None
            for index, gray in enumerate(grays)
        ]
        found = sum(box is not None for box in boxes)
        if found == 0:
            return None
        previous = next(box for box in boxes if box is not None)
        crops = []
        for gray, box in zip(grays, boxes):
            previous = box if box is not None else previous
            crops.append(crop(gray, previous))
    stack = np.stack(crops)
    return (fit_length(stack, num_frames) if pad else np.ascontiguousarray(stack[:num_frames])), found


def fit_length(stack: np.ndarray, length: int) -> np.ndarray:
    """The first ``length`` items of ``stack``, or ``stack`` padded by repeating its last item."""
    if stack.shape[0] == 0:
        raise ValueError("cannot pad an empty stack")
    if stack.shape[0] >= length:
        return np.ascontiguousarray(stack[:length])
    padding = np.repeat(stack[-1:], length - stack.shape[0], axis=0)
    return np.concatenate([stack, padding])


def prepare_video(
    path: str | Path,
    start: float | None,
    end: float | None,
    size: int = 64,
    num_frames: int = 150,
    pad: bool = False,
    frame_step: int = 1,
    detector: str = "haar",
    detection_width: int = 320,
    min_face_fraction: float = 0.1,
    detect_every: int = 1,
) -> dict[str, Any]:
    """One utterance's face crops as extraction stores them (the ``faces`` encoder's settings).

    Decodes the clip's first ``num_frames`` frames in the ``start``–``end`` span, keeps every
    ``frame_step``-th, and crops faces (:func:`face_crops`). Returns ``input`` (``T × size × size``
    uint8), ``seconds`` (0: no audio is encoded), ``fallbacks`` and ``vad`` (None); when no frame
    has a face, ``input`` is None and ``error`` is ``(NO_FACE, message)`` so the caller drops and
    counts the sample. A missing or unreadable file raises as :func:`read_video_frames` does.
    """
    if frame_step <= 0:
        raise ConfigError(f"frame_step must be a positive whole number, got {frame_step!r}")
    frames = read_video_frames(path, start=start, end=end, max_frames=num_frames)[::frame_step]
    kept = -(-num_frames // frame_step)
    result = face_crops(
        frames,
        size=size,
        num_frames=kept,
        detector=detector,
        detection_width=detection_width,
        min_face_fraction=min_face_fraction,
        detect_every=detect_every,
        pad=pad,
    )
    out: dict[str, Any] = {"input": None, "seconds": 0.0, "fallbacks": [], "vad": None}
    if result is None:
        out["error"] = (
            NO_FACE,
            f"{path}: no face found in any of its {len(frames)} frames (OpenCV {detector} "
            "detector); the utterance is left out",
        )
        return out
    crops, found = result
    attempted = len(frames) if detector == "none" else -(-len(frames) // detect_every)
    if found < attempted:
        out["fallbacks"].append(FACE_BOX_REUSED)
    out["input"] = crops
    return out
