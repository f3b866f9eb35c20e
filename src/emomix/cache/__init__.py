"""The feature store: content-addressed, sharded, resumable storage of encoder outputs.

:class:`FeatureStore` keeps unpadded per-utterance arrays in safetensors shards indexed in SQLite;
:mod:`emomix.cache.keys` derives the content keys; :func:`extract_features` fills a store from an
utterance table (``emomix extract``). See ``docs/feature-store.md``.
"""

from emomix.cache.extract import (
    ExtractSummary,
    PreprocessConfig,
    extract_features,
    namespace_for,
    prepare_audio,
    resolve_layers,
    utterance_keys,
)
from emomix.cache.keys import (
    PREPROCESS_VERSION,
    TEXT_NORMALISATIONS,
    audio_input,
    canonical_json,
    encoder_part,
    feature_key,
    normalise_text,
    sha256_file,
    text_input,
)
from emomix.cache.store import (
    CleanupReport,
    FeatureStore,
    MergeReport,
    StoreError,
    VerifyReport,
    merge_indexes,
)

__all__ = [
    "PREPROCESS_VERSION",
    "TEXT_NORMALISATIONS",
    "CleanupReport",
    "ExtractSummary",
    "FeatureStore",
    "MergeReport",
    "PreprocessConfig",
    "StoreError",
    "VerifyReport",
    "audio_input",
    "canonical_json",
    "encoder_part",
    "extract_features",
    "feature_key",
    "merge_indexes",
    "namespace_for",
    "normalise_text",
    "prepare_audio",
    "resolve_layers",
    "sha256_file",
    "text_input",
    "utterance_keys",
]
