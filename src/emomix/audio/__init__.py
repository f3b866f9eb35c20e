"""Signal preprocessing: loading, VAD, chunking, MFCC, face crops and word timings.

Plain functions on arrays; only :mod:`emomix.audio.io` and :mod:`emomix.audio.video` touch
files. Training, evaluation and inference all prepare their inputs through these functions, so
a prediction on a file equals the prediction for the same utterance inside an evaluation. The
steps, their defaults and their fallbacks are described in ``docs/preprocessing.md``.
"""

from emomix.audio.alignment import WordTimings, spread_words, word_timings, words_to_frame_edges
from emomix.audio.chunking import chunk_bounds, chunk_waveform, pad_or_cut
from emomix.audio.features import frame_energy, mfcc
from emomix.audio.io import (
    TARGET_RATE,
    audio_duration,
    decode_audio_bytes,
    load_audio,
    loudness_dbfs,
    normalise_loudness,
    resample,
    to_mono,
)
from emomix.audio.vad import (
    is_silence,
    map_mask_to_frames,
    silero_vad_mask,
    speech_mask_or_all,
    speech_regions,
    vad_mask,
    webrtc_vad_mask,
)
from emomix.audio.video import VideoError, detect_largest_face, face_crops, read_video_frames

__all__ = [
    "TARGET_RATE",
    "VideoError",
    "WordTimings",
    "audio_duration",
    "chunk_bounds",
    "chunk_waveform",
    "decode_audio_bytes",
    "detect_largest_face",
    "face_crops",
    "frame_energy",
    "is_silence",
    "load_audio",
    "loudness_dbfs",
    "map_mask_to_frames",
    "mfcc",
    "normalise_loudness",
    "pad_or_cut",
    "read_video_frames",
    "resample",
    "silero_vad_mask",
    "speech_mask_or_all",
    "speech_regions",
    "spread_words",
    "to_mono",
    "vad_mask",
    "webrtc_vad_mask",
    "word_timings",
    "words_to_frame_edges",
]
