"""Content-addressed keys of the feature store.

A key is the SHA-256 of one canonical JSON document with three parts:

``input``
    what was encoded. Audio: the SHA-256 of the audio *file's bytes* plus the span
    (``start``/``end`` seconds, rounded to the microsecond; None for the whole file), so renaming
    or moving a file keeps its features while re-encoding or trimming it does not. Text: the
    transcript after the documented normalisation (:data:`TEXT_NORMALISATIONS`), hashed exactly.
``encoder``
    :meth:`emomix.encoders.base.Encoder.identity` (name, revision, architecture, options) plus what
    the extraction keeps of its output: the hidden layers stored and the storage dtype.
``preprocess``
    the preprocessing settings that change the encoder's input (target rate, loudness
    normalisation, VAD, chunking, text normalisation) as a plain dict, plus
    :data:`PREPROCESS_VERSION`, bumped whenever the preprocessing code changes its output.

Changing any part gives a new key (a cache miss); changing none gives the same key (a hit). Only
plain functions live here; the store caches file digests by (path, size, mtime_ns) so a corpus is
read once.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from emomix.errors import ConfigError

#: Bumped when emomix's own preprocessing (resampling, VAD mapping, chunk rules) changes its output,
#: so old cached features stop matching.
PREPROCESS_VERSION = 1

#: ``"none"``: the transcript exactly as the table holds it; ``"strip"``: leading and trailing
#: whitespace removed (the default; inner whitespace and case are kept, since tokenisers use them).
TEXT_NORMALISATIONS = ("none", "strip")

_HASH_CHUNK = 1 << 20


def canonical_json(value: Any) -> str:
    """``value`` as JSON with sorted keys and no whitespace, the form every key hashes.

    Tuples become lists and floats keep their shortest exact repr, so equal settings written in
    different orders or container types give equal text. NaN and infinities are refused (JSON has
    no spelling for them that round-trips).
    """
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_json_default)
    except ValueError as exc:
        raise ConfigError(f"a feature-key component is not plain JSON data ({exc}): {value!r}") from exc


def _json_default(value: Any) -> Any:
    # numpy scalars and paths appear in configs built from tables; keep them hashable as JSON.
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def normalise_text(text: str, normalisation: str = "strip") -> str:
    """Apply a text normalisation from :data:`TEXT_NORMALISATIONS`.

    Extraction, training and inference all pass transcripts through this one function, so the
    text that is hashed is exactly the text the encoder sees.
    """
    if normalisation not in TEXT_NORMALISATIONS:
        raise ConfigError(f"unknown text normalisation {normalisation!r}; use one of {', '.join(TEXT_NORMALISATIONS)}")
    return text.strip() if normalisation == "strip" else text


def _span_value(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return None
    # Spans come from CSV parsing and arithmetic; microsecond rounding keeps 1.1 and
    # 1.1000000000000001 on one key while any real edit of the span still changes it.
    return round(value, 6)


def audio_input(file_sha256: str, start: float | None = None, end: float | None = None) -> dict[str, Any]:
    """The ``input`` part of an audio key: file content digest and span in seconds."""
    return {"kind": "audio", "sha256": file_sha256, "start": _span_value(start), "end": _span_value(end)}


def text_input(text: str, normalisation: str = "strip") -> dict[str, Any]:
    """The ``input`` part of a text key: the normalised transcript's digest."""
    normalised = normalise_text(text, normalisation)
    return {"kind": "text", "sha256": sha256_bytes(normalised.encode("utf-8"))}


def encoder_part(identity: str, layers: Sequence[int] = (), dtype: str = "float16") -> dict[str, Any]:
    """The ``encoder`` part of a key: encoder identity, stored hidden layers and storage dtype."""
    return {"identity": str(identity), "layers": sorted({int(layer) for layer in layers}), "dtype": str(dtype)}


def feature_key(input_part: Mapping[str, Any], encoder: Mapping[str, Any] | str, preprocess: Mapping[str, Any]) -> str:
    """The store key (64 hex characters) of one utterance's features.

    ``encoder`` is the dict of :func:`encoder_part` (a bare identity string is accepted and means
    no extra layers, float16). ``preprocess`` must already be restricted to the settings that
    affect this input's modality (see :meth:`emomix.cache.extract.PreprocessConfig.key_dict`).
    """
    if isinstance(encoder, str):
        encoder = encoder_part(encoder)
    document = {
        "input": dict(input_part),
        "encoder": dict(encoder),
        "preprocess": {"version": PREPROCESS_VERSION, **dict(preprocess)},
    }
    return sha256_bytes(canonical_json(document).encode("utf-8"))


def locator_shard(locator: str, num_shards: int) -> int:
    """Which of ``num_shards`` workers owns an utterance, from a stable string naming its input.

    The locator is the audio path and span, or the text, so every worker can decide ownership
    without reading any audio; the split is the same on every machine and every run.
    """
    if num_shards < 1:
        raise ConfigError(f"num_shards must be at least 1, got {num_shards}")
    return int(sha256_bytes(locator.encode("utf-8"))[:16], 16) % num_shards
