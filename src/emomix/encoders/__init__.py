"""Encoders: one interface (:class:`Encoder`) over speech SSL models, text transformers,
openSMILE, MFCC and a face-crop CNN, a registry by name, and speaker normalisation.

Heavy libraries (transformers, opensmile, librosa) load only when an encoder that needs them is
used, so ``import emomix.encoders`` stays cheap.
"""

from __future__ import annotations

from typing import Any

from emomix.constants import MODALITIES
from emomix.encoders.base import Encoder, EncoderOutput
from emomix.encoders.normalisation import SpeakerNormaliser
from emomix.encoders.registry import create_encoder, list_encoders, register_encoder

_LAZY = {
    "SpeechSSLEncoder": "emomix.encoders.speech_ssl",
    "TextEncoder": "emomix.encoders.text",
    "DEFAULT_TEXT_MODEL": "emomix.encoders.text",
    "cls_of_layer": "emomix.encoders.text",
    "OpenSmileEncoder": "emomix.encoders.opensmile_encoder",
    "MFCCEncoder": "emomix.encoders.mfcc",
    "FaceCropEncoder": "emomix.encoders.video",
}

__all__ = [
    "MODALITIES",
    "Encoder",
    "EncoderOutput",
    "SpeakerNormaliser",
    "create_encoder",
    "list_encoders",
    "register_encoder",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'emomix.encoders' has no attribute '{name}'")
