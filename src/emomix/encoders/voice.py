"""A pretrained speaker (voice) embedding as an utterance-level audio encoder: ``resemblyzer``.

Resemblyzer's ``VoiceEncoder`` is a 3-layer LSTM trained for speaker verification (GE2E loss),
whose weights ship inside the PyPI package, so it runs offline. It maps an utterance to one
L2-normalised 256-d vector: the mean of the embeddings of 1.6 s windows (``embed_utterance``),
after the package's own preprocessing (volume normalised to -30 dBFS, long silences trimmed with
WebRTC VAD). A voice embedding describes *how* a voice sounds: speaker identity first, but also
the voice quality that emotion changes. Z-scored per speaker, the identity part is removed and
what varies inside a speaker is left; that is how the real-corpus recipes use it, joined to the
openSMILE functionals as the global expert's vector.

``states`` is ``B × 1 × 256`` and ``pooled`` the same vector, as for openSMILE functionals, so it
joins with them (``{join: [opensmile:ComParE_2016@functionals, resemblyzer]}``). An utterance with
less than 0.1 s of audio after trimming is embedded untrimmed; an empty or all-zero waveform
gives the zero vector flagged in ``extras["empty"]``, as MFCC flags its empty inputs. Nothing is
trainable.

Install: the package's metadata asks for ``typing`` (a Python 2 backport) and the source
distribution of ``webrtcvad``, which would replace the ``webrtcvad-wheels`` build emomix uses; its
real needs (torch, librosa, scipy, numpy, webrtcvad) are emomix's own, so install it with
``pip install --no-deps resemblyzer==0.1.4`` (``make setup`` does).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emomix.constants import SAMPLE_RATE
from emomix.encoders.base import Encoder, EncoderOutput
from emomix.errors import ConfigError

EMBEDDING_SIZE = 256
MIN_TRIMMED_SECONDS = 0.1
INSTALL_HINT = "pip install --no-deps resemblyzer==0.1.4 (its other needs are emomix's own)"


@lru_cache(maxsize=1)
def _weights_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _load_resemblyzer() -> Any:
    try:
        import resemblyzer
    except ImportError:
        raise ConfigError(f"the 'resemblyzer' encoder needs the resemblyzer package: {INSTALL_HINT}") from None
    return resemblyzer


class VoiceEmbeddingEncoder(Encoder):
    """Resemblyzer's 256-d voice embedding of each waveform (16 kHz mono float32)."""

    modality = "audio"
    frame_rate = None
    output_size = EMBEDDING_SIZE
    num_layers = 0

    def __init__(self, rate: float = 1.3, min_coverage: float = 0.75):
        super().__init__()
        if not float(rate) > 0 or not 0 < float(min_coverage) <= 1:
            raise ConfigError(
                f"resemblyzer: rate must be positive and min_coverage in (0, 1], got {rate} and {min_coverage}"
            )
        self.rate, self.min_coverage = float(rate), float(min_coverage)
        self.pooled_size = EMBEDDING_SIZE
        package = _load_resemblyzer()
        self._package = package
        weights = Path(package.__file__).parent / "pretrained.pt"
        self._digest = _weights_digest(str(weights))
        # a plain attribute, not a submodule: the pretrained LSTM is never trained and never saved
        # with a model's weights (it comes back from the package)
        self.__dict__["_voice"] = package.VoiceEncoder("cpu", verbose=False)

    def config(self) -> dict[str, Any]:
        return {
            "name": "resemblyzer",
            "weights_sha256": self._digest,
            "rate": self.rate,
            "min_coverage": self.min_coverage,
            "sample_rate": SAMPLE_RATE,
        }

    def embed(self, waveform: np.ndarray) -> np.ndarray | None:
        """One waveform's embedding, or None when it holds no audio."""
        wav = np.asarray(waveform, dtype=np.float32).reshape(-1)
        if wav.size == 0 or not np.any(wav):
            return None
        trimmed = self._package.preprocess_wav(wav, source_sr=SAMPLE_RATE)
        if trimmed.size < MIN_TRIMMED_SECONDS * SAMPLE_RATE:  # the VAD trimmed (nearly) everything
            trimmed = self._package.normalize_volume(wav, -30, increase_only=False, decrease_only=False)
        voice: Any = self.__dict__["_voice"]
        with torch.no_grad():
            vector = voice.embed_utterance(trimmed, rate=self.rate, min_coverage=self.min_coverage)
        return np.asarray(vector, dtype=np.float32)

    def forward(self, inputs: Sequence[Any], output_hidden_states: bool = False) -> EncoderOutput:
        vectors, empty = [], []
        for waveform in inputs:
            vector = self.embed(waveform)
            empty.append(vector is None)
            vectors.append(np.zeros(EMBEDDING_SIZE, dtype=np.float32) if vector is None else vector)
        pooled = torch.from_numpy(np.stack(vectors)) if vectors else torch.zeros((0, EMBEDDING_SIZE))
        return EncoderOutput(
            states=pooled.unsqueeze(1).clone(),
            mask=torch.ones((len(vectors), 1), dtype=torch.bool),
            pooled=pooled,
            extras={"empty": empty},
        )
