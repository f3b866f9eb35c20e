"""Rendering an utterance plan as a grayscale cartoon face video."""

from __future__ import annotations

import numpy as np

from emomix.data.synthetic.config import SyntheticConfig
from emomix.data.synthetic.cues import CLASS_CUES
from emomix.data.synthetic.plan import UtterancePlan


def render_video(plan: UtterancePlan, config: SyntheticConfig) -> np.ndarray:
    """Grayscale face frames ``(T, size, size)`` uint8 whose expression follows the label."""
    rng = np.random.default_rng([config.seed, 5, plan.index])
    fps, size = config.video_fps, config.video_size
    n_frames = max(1, int(round(plan.duration * fps)))
    times = (np.arange(n_frames) + 0.5) / fps
    cue = CLASS_CUES[plan.label]
    intensity = np.zeros(n_frames)
    if plan.video_cue:
        strength = rng.uniform(0.6, 1.0)
        if plan.evidence == "local" and plan.events:
            centres = np.array([(e["start"] + e["end"]) / 2 for e in plan.events])
            bumps = np.exp(-((times[:, None] - centres[None, :]) ** 2) / (2 * 0.35**2)).max(axis=1)
            intensity = strength * (0.3 + 0.7 * bumps)
        else:
            intensity = np.full(n_frames, strength)
    else:
        rng.uniform(0.6, 1.0)  # keep the stream aligned whether or not the cue shows
    face = np.array(cue.face)[None, :] * intensity[:, None]
    # A per-utterance expression offset makes the face alone an imperfect cue.
    face = face + rng.normal(0.0, config.video_noise, size=4)[None, :] * np.array([0.8, 0.8, 0.4, 0.08])
    face = face + rng.normal(0.0, 0.05, size=face.shape)
    mouth_open = _voicing_per_frame(plan, times, 1.0 / fps)
    shift = rng.normal(0.0, 0.04, size=2) + rng.normal(0.0, 0.01, size=(n_frames, 2))
    brightness = rng.uniform(0.8, 1.2)
    frames = draw_faces(face, mouth_open, shift, size) * brightness
    frames = frames + rng.normal(0.0, 4.0 + 40.0 * config.video_noise, size=frames.shape)
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def _voicing_per_frame(plan: UtterancePlan, times: np.ndarray, frame_time: float) -> np.ndarray:
    starts = np.array([x.start for x in plan.syllables])
    ends = np.array([x.end for x in plan.syllables])
    if not len(starts):
        return np.zeros(len(times))
    lo = times[:, None] - frame_time / 2
    hi = times[:, None] + frame_time / 2
    overlap = np.clip(np.minimum(hi, ends[None, :]) - np.maximum(lo, starts[None, :]), 0.0, None).sum(axis=1)
    return np.clip(overlap / frame_time, 0.0, 1.0)


def draw_faces(face: np.ndarray, mouth_open: np.ndarray, shift: np.ndarray, size: int) -> np.ndarray:
    """Draw cartoon faces, one per row of ``face`` = (mouth curve, brow tilt, eye openness change,
    brow raise); coordinates are in [-1, 1] with y pointing down. Returns float frames 0..255."""
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    y = coords[None, :, None] - shift[:, 1, None, None]
    x = coords[None, None, :] - shift[:, 0, None, None]
    curve, tilt, eye, raise_ = (face[:, k, None, None] for k in range(4))
    image = np.full((len(face), size, size), 35.0)
    image = np.where((x / 0.78) ** 2 + (y / 0.92) ** 2 <= 1.0, 165.0, image)
    eye_height = np.clip(0.09 * (1.0 + eye), 0.01, 0.2)
    for cx in (-0.32, 0.32):
        inside = ((x - cx) / 0.13) ** 2 + ((y + 0.18) / eye_height) ** 2 <= 1.0
        image = np.where(inside, 25.0, image)
        # Brow: a bar above the eye; positive tilt lifts the inner end (towards the nose).
        inner = (0.32 - np.abs(x)) / 0.16
        brow_y = -0.42 - raise_ - 0.12 * tilt * inner
        on_brow = (np.abs(x - cx) < 0.16) & (np.abs(y - brow_y) < 0.035)
        image = np.where(on_brow, 45.0, image)
    span = np.clip(x / 0.34, -1.0, 1.0)
    mouth_y = 0.45 + 0.1 * curve - 0.2 * curve * span**2
    thickness = 0.035 + 0.1 * mouth_open[:, None, None]
    on_mouth = (np.abs(x) < 0.34) & (np.abs(y - mouth_y) < thickness / 2)
    return np.where(on_mouth, 20.0, image)
