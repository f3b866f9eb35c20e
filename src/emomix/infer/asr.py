"""Transcripts for audio that comes without one: a local Whisper model, never a download.

A model that reads text needs a transcript; when a prediction is asked for audio alone the
:class:`~emomix.infer.predictor.Predictor` asks :func:`find_transcriber` for a speech recogniser.
Two backends are tried, in this order, and only when their package is installed **and** the model
is already on this machine:

1. ``faster-whisper`` (CTranslate2): ``EMOMIX_ASR_MODEL`` (or the ``model`` argument) is a folder
   holding a converted model, or a size name (``tiny``, ``base``...) already in the Hugging Face
   cache — it is opened with ``local_files_only=True``, so nothing is fetched;
2. ``openai-whisper``: the model is a ``.pt`` file, or a size name whose ``<name>.pt`` is in
   whisper's download folder (``~/.cache/whisper`` or ``$XDG_CACHE_HOME/whisper``); a name
   without a local file is skipped rather than downloaded.

Without ``EMOMIX_ASR_MODEL`` the size ``base`` is looked for. When nothing is available the
predictor falls back to an audio-only prediction and says so in the result's notes.
``EMOMIX_ASR_MODEL=none`` turns speech recognition off.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from emomix.constants import SAMPLE_RATE
from emomix.errors import AudioError

ENV_MODEL = "EMOMIX_ASR_MODEL"
DEFAULT_MODEL = "base"
BACKENDS = ("faster-whisper", "whisper")


class Transcriber(Protocol):
    """What the predictor needs from a speech recogniser."""

    backend: str

    def transcribe(self, wave: np.ndarray) -> str:
        """The transcript of a 16 kHz mono float32 waveform ("" when nothing was recognised)."""


@dataclass
class FasterWhisperTranscriber:
    """``faster_whisper.WhisperModel`` on CPU (int8), greedy decoding, no voice-activity filter
    (the predictor has already decided the audio holds speech)."""

    model: Any
    language: str | None = None
    backend: str = "faster-whisper"

    def transcribe(self, wave: np.ndarray) -> str:
        segments, _ = self.model.transcribe(np.asarray(wave, dtype=np.float32), language=self.language, beam_size=1)
        return " ".join(segment.text.strip() for segment in segments).strip()


@dataclass
class WhisperTranscriber:
    """``openai-whisper`` on CPU (fp32), greedy decoding."""

    model: Any
    language: str | None = None
    backend: str = "whisper"

    def transcribe(self, wave: np.ndarray) -> str:
        result = self.model.transcribe(
            np.asarray(wave, dtype=np.float32), language=self.language, fp16=False, temperature=0.0
        )
        return str(result.get("text", "")).strip()


@dataclass
class StaticTranscriber:
    """A transcriber returning fixed text (tests, or a caller that has transcripts elsewhere)."""

    text: str = ""
    backend: str = "static"
    calls: list[int] = field(default_factory=list)

    def transcribe(self, wave: np.ndarray) -> str:
        self.calls.append(int(np.asarray(wave).size))
        return self.text


def find_transcriber(
    model: str | None = None, backends: tuple[str, ...] = BACKENDS, language: str | None = None
) -> Transcriber | None:
    """The first backend of ``backends`` that is installed and has ``model`` locally, or None.

    ``model``: a local path or a size name; default ``$EMOMIX_ASR_MODEL``, else ``base``.
    Never downloads; errors while opening a backend's model make it count as unavailable.
    """
    name = model if model is not None else os.environ.get(ENV_MODEL) or DEFAULT_MODEL
    if str(name).strip().lower() in ("", "none", "off", "0"):
        return None
    for backend in backends:
        opener = _OPENERS.get(backend)
        if opener is None or importlib.util.find_spec(backend.replace("-", "_")) is None:
            continue
        try:
            found = opener(str(name), language)
        except Exception:  # a broken install or an incomplete model folder: try the next backend
            found = None
        if found is not None:
            return found
    return None


def transcribe_file(transcriber: Transcriber, path: str | Path) -> str:
    """Load ``path`` as 16 kHz mono (the project's own loader) and transcribe it."""
    from emomix.audio.io import load_audio

    wave = load_audio(path, target_rate=SAMPLE_RATE)
    if wave.size == 0:
        raise AudioError(f"{path}: holds no samples to transcribe")
    return transcriber.transcribe(wave)


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------


def _open_faster_whisper(name: str, language: str | None) -> Transcriber | None:
    from faster_whisper import WhisperModel

    # A folder is used as it is; a size name only if the Hugging Face cache already holds it.
    model = WhisperModel(name, device="cpu", compute_type="int8", cpu_threads=1, local_files_only=True)
    return FasterWhisperTranscriber(model=model, language=language)


def _open_whisper(name: str, language: str | None) -> Transcriber | None:
    import whisper

    path = Path(name).expanduser()
    if not path.is_file():
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "whisper"
        path = cache / f"{name}.pt"
        if not path.is_file():
            return None  # whisper.load_model would download it
    return WhisperTranscriber(model=whisper.load_model(str(path), device="cpu"), language=language)


_OPENERS = {"faster-whisper": _open_faster_whisper, "whisper": _open_whisper}
