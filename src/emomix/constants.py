"""Values the whole package agrees on, written once.

Every module that needs one of these imports it from here; nothing else defines its own copy.
This module imports nothing from the package, so any floor may depend on it.
"""

from __future__ import annotations

#: The sample rate (Hz) every waveform is resampled to before VAD, encoders and models.
SAMPLE_RATE = 16_000

#: The modalities a model can read, in the order the batch contract lists them.
MODALITIES = ("audio", "text", "video")

#: Target value that the losses and metrics skip (padding turns in a dialogue, unlabelled rows).
IGNORE_INDEX = -100

#: The key under which token-frame graph edges travel in feature dictionaries and batches.
EDGES_KEY = "edges"
