"""Extract encoder features for a whole utterance table into the feature store, resumably.

:func:`extract_features` keys every utterance (audio file content + span, or transcript; encoder
identity and stored layers; preprocessing settings), skips those already in the store, and
encodes the rest in length-sorted batches. Audio is loaded, resampled, loudness-normalised,
VAD-masked and chunked in :class:`torch.utils.data.DataLoader` workers; the encoder runs in the
main process. Results are flushed to a new shard every ``flush_every`` utterances, so a killed run
loses at most one shard of work and the next run computes only what is missing. One bad utterance
(a corrupt file, a missing transcript) is recorded in the summary and does not stop the run.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from emomix.cache.keys import (
    TEXT_NORMALISATIONS,
    audio_input,
    encoder_part,
    feature_key,
    locator_shard,
    normalise_text,
    text_input,
)
from emomix.cache.memory import MemoryStore
from emomix.cache.store import FeatureStore
from emomix.constants import SAMPLE_RATE
from emomix.data.dialogue import DialogueContext, with_dialogue_context
from emomix.errors import ConfigError, EmomixError, MissingDataError

VAD_BACKENDS = ("webrtc", "silero")
VAD_MODES = ("mask", "trim")
_VAD_OPTIONS = {
    "webrtc": {"frame_ms", "aggressiveness"},
    "silero": {"frame_ms", "threshold", "min_speech_ms", "min_silence_ms", "speech_pad_ms"},
}

#: Fallback kinds counted in :class:`ExtractSummary` (encoders may add their own from
#: ``EncoderOutput.extras``, e.g. ``"empty text"``).
SILENCE_ONLY = "silence-only audio"
NO_SPEECH_FOUND = "no speech found by VAD"
EMPTY_TEXT = "empty text"


@dataclass
class PreprocessConfig:
    """Preprocessing applied before the encoder; every field that changes the input is in the key.

    ``target_rate``: sample rate given to audio encoders. ``normalise_loudness`` and
    ``target_dbfs``: gated-RMS loudness normalisation of :func:`emomix.audio.io.load_audio`.
    ``vad``: None, ``"webrtc"`` or ``"silero"``; ``vad_options``: the backend's options
    (``aggressiveness``, ``threshold``...); ``vad_mode``: ``"mask"`` stores a ``speech_mask``
    field (one uint8 per encoder frame), ``"trim"`` cuts the audio to the first..last speech
    region before encoding. When the VAD finds no speech the whole utterance is kept (and
    counted as a fallback). ``chunk_max_s``/``chunk_min_s``: cut longer audio into pieces encoded
    separately (see :func:`emomix.audio.chunking.chunk_waveform`); the pieces' frames are
    concatenated, ``pooled`` becomes one row per piece and ``chunk_frames`` gives each piece's
    frame count. ``text_normalisation``: ``"strip"`` (default) or ``"none"``, see
    :func:`emomix.cache.keys.normalise_text`.
    """

    target_rate: int = SAMPLE_RATE
    normalise_loudness: bool = False
    target_dbfs: float = -23.0
    vad: str | None = None
    vad_options: dict[str, Any] = field(default_factory=dict)
    vad_mode: str = "mask"
    chunk_max_s: float | None = None
    chunk_min_s: float = 2.0
    text_normalisation: str = "strip"

    def __post_init__(self) -> None:
        if int(self.target_rate) <= 0:
            raise ConfigError(f"preprocess.target_rate must be positive, got {self.target_rate}")
        if self.vad is not None and self.vad not in VAD_BACKENDS:
            raise ConfigError(f"preprocess.vad must be one of {', '.join(VAD_BACKENDS)} or None, got {self.vad!r}")
        if self.vad is not None:
            unknown = sorted(set(self.vad_options) - _VAD_OPTIONS[self.vad])
            if unknown:
                raise ConfigError(
                    f"unknown {self.vad} VAD option(s) {unknown}; known: {sorted(_VAD_OPTIONS[self.vad])}"
                )
        if self.vad_mode not in VAD_MODES:
            raise ConfigError(f"preprocess.vad_mode must be one of {', '.join(VAD_MODES)}, got {self.vad_mode!r}")
        if self.text_normalisation not in TEXT_NORMALISATIONS:
            raise ConfigError(
                f"preprocess.text_normalisation must be one of {', '.join(TEXT_NORMALISATIONS)}, "
                f"got {self.text_normalisation!r}"
            )
        if self.chunk_max_s is not None and not (0 < self.chunk_min_s <= self.chunk_max_s):
            raise ConfigError(
                f"preprocess chunking needs 0 < chunk_min_s <= chunk_max_s, "
                f"got {self.chunk_min_s} and {self.chunk_max_s}"
            )
        if self.vad and self.vad_mode == "mask" and self.chunk_max_s is not None:
            raise ConfigError("preprocess.vad_mode='mask' cannot be combined with chunking; use vad_mode='trim'")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> PreprocessConfig:
        """Build from a plain dict (a recipe's ``preprocess:`` block); unknown keys are errors."""
        values = dict(values or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown preprocess setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def key_dict(self, modality: str) -> dict[str, Any]:
        """The settings that affect inputs of ``modality``, as they enter the feature key."""
        if modality == "text":
            return {"text_normalisation": self.text_normalisation}
        if modality == "video":
            return {}  # the face-crop settings are the faces encoder's options, part of its identity
        values = asdict(self)
        del values["text_normalisation"]
        if not self.normalise_loudness:
            del values["target_dbfs"]
        if self.vad is None:
            del values["vad_options"], values["vad_mode"]
        if self.chunk_max_s is None:
            del values["chunk_min_s"]
        return values


@dataclass
class ExtractSummary:
    """What an extraction run did.

    Utterance counts: ``total`` (this worker's share of the table), ``cached`` (already in the
    store), ``computed`` (encoded in this run; utterances sharing one key count each),
    ``failures`` (one dict per utterance: ``utt_id``, ``reason``, ``message``). ``fallbacks`` maps
    a fallback kind to the utterance ids it applied to. ``keys`` maps every utterance that has
    features to its store key. ``audio_seconds`` is the audio encoded in this run;
    ``real_time_factor`` = wall time / audio seconds (below 1 is faster than real time).
    """

    namespace: str = ""
    store: str = ""
    total: int = 0
    cached: int = 0
    computed: int = 0
    entries_written: int = 0
    shards_written: int = 0
    other_workers: int = 0
    fallbacks: dict[str, list[str]] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    wall_seconds: float = 0.0
    audio_seconds: float = 0.0
    bytes_on_disk: int = 0
    layers: list[int] = field(default_factory=list)
    boundary_layer: int | None = None

    @property
    def failed(self) -> int:
        """Number of utterances that could not be encoded."""
        return len(self.failures)

    @property
    def real_time_factor(self) -> float | None:
        """Wall time per second of audio encoded (None when no audio was encoded)."""
        return self.wall_seconds / self.audio_seconds if self.audio_seconds > 0 else None

    def failures_by_reason(self) -> dict[str, int]:
        """Failure counts per reason."""
        counts: dict[str, int] = {}
        for failure in self.failures:
            counts[failure["reason"]] = counts.get(failure["reason"], 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (for ``--json`` and reports)."""
        data = asdict(self)
        data["failed"] = self.failed
        data["real_time_factor"] = self.real_time_factor
        return data

    def format(self, max_listed: int = 10) -> str:
        """A human-readable multi-line summary."""
        lines = [
            f"feature store  {self.store} (namespace {self.namespace})",
            f"utterances     {self.total}: {self.cached} cached, {self.computed} computed, {self.failed} failed"
            + (f" ({self.other_workers} left to other workers)" if self.other_workers else ""),
            f"written        {self.entries_written} entries in {self.shards_written} shard(s); "
            f"{_human_bytes(self.bytes_on_disk)} on disk in the store",
        ]
        rtf = self.real_time_factor
        speed = f"{self.computed / self.wall_seconds:.1f} utt/s" if self.wall_seconds > 0 else "-"
        lines.append(
            f"time           {self.wall_seconds:.1f} s wall, {self.audio_seconds:.1f} s of audio encoded, "
            f"{speed}, real-time factor {'-' if rtf is None else f'{rtf:.3f}'}"
        )
        if self.layers or self.boundary_layer is not None:
            lines.append(
                f"layers         {self.layers}"
                + (f" (boundary layer {self.boundary_layer})" if self.boundary_layer is not None else "")
            )
        for kind, ids in sorted(self.fallbacks.items()):
            lines.append(f"fallback       {kind}: {len(ids)} ({_listing(ids, max_listed)})")
        by_reason: dict[str, list[dict[str, str]]] = {}
        for failure in self.failures:
            by_reason.setdefault(failure["reason"], []).append(failure)
        for reason, items in sorted(by_reason.items()):
            lines.append(f"failed         {reason}: {len(items)}")
            for item in items[:max_listed]:
                lines.append(f"                 {item['utt_id']}: {item['message']}")
            if len(items) > max_listed:
                lines.append(f"                 ... and {len(items) - max_listed} more")
        return "\n".join(lines)


@dataclass
class _WorkItem:
    utt_id: str
    key: str
    audio_path: str | None
    start: float | None
    end: float | None
    text: str | None
    length: float


def context_separator(encoder: Any) -> str:
    """What separates turns in a context input: the encoder tokenizer's separator token
    (``" [SEP] "`` for BERT/MiniLM, ``" </s> "`` for RoBERTa), else ``" | "``."""
    token = getattr(getattr(encoder, "tokenizer", None), "sep_token", None)
    return f" {token} " if isinstance(token, str) and token.strip() else " | "


def with_text_context(table: pd.DataFrame, context: DialogueContext | None, encoder: Any) -> pd.DataFrame:
    """``table`` with each transcript followed by its preceding turns, as ``encoder`` reads them
    (:func:`emomix.data.dialogue.with_dialogue_context`); the table itself when ``context`` is None."""
    if context is None:
        return table
    return with_dialogue_context(table, context, context_separator(encoder))


def turn_token_counts(inputs: pd.DataFrame, encoder: Any) -> dict[str, int]:
    """Per ``utt_id``, how many content tokens the turn's own part (with its speaker's name) takes
    at the start of its context input; ``inputs`` is the table :func:`with_text_context` built for
    ``encoder``. Rows whose text is empty are left out. ``encoder`` must have a ``tokenizer``."""
    tokenizer = getattr(encoder, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError("features.text.context.pool: turn needs a text encoder with a tokenizer")
    separator = context_separator(encoder)
    counts = {}
    for utt_id, text in zip(inputs["utt_id"], inputs["text"]):
        if isinstance(text, str) and text.strip():
            own = text.split(separator)[0]
            counts[str(utt_id)] = len(tokenizer(own, add_special_tokens=False, verbose=False)["input_ids"])
    return counts


def keep_turn_tokens(fields: dict[str, Any], count: int) -> dict[str, Any]:
    """``fields`` whose ``special_tokens`` mask also covers every content token after the first
    ``count`` (the turn's own): a model that pools content tokens then reads the turn alone."""
    special = np.asarray(fields["special_tokens"]).astype(bool).copy()
    content = np.flatnonzero(~special)
    special[content[count:]] = True
    return {**fields, "special_tokens": special}


def namespace_for(encoder: Any) -> str:
    """The store namespace of an encoder: a readable slug of its name plus its identity hash."""
    config = encoder.config()
    name = str(config.get("name") or config.get("name_or_path") or type(encoder).__name__)
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")[:40] or "encoder"
    return f"{slug}-{encoder.identity()}"


def resolve_layers(
    encoder: Any, layers: Iterable[int] = (), boundary_layer: int | None = None
) -> tuple[list[int], int | None]:
    """Validate the hidden layers to store; a negative ``boundary_layer`` counts from the top.

    ``boundary_layer=s`` stores ``layer_s``, the states entering transformer layer ``s``
    (``hidden_states[s]``, 0 = the embeddings), so training can run only the top
    ``num_layers - s`` layers with the encoder's ``forward_from_layer``.
    """
    count = int(getattr(encoder, "num_layers", 0) or 0)
    chosen = sorted({int(layer) for layer in layers})
    if (chosen or boundary_layer is not None) and count == 0:
        raise ConfigError(f"encoder {type(encoder).__name__} has no hidden layers; drop --layers/--boundary-layer")
    bad = [layer for layer in chosen if not 0 <= layer <= count]
    if bad:
        raise ConfigError(f"layer(s) {bad} out of range: {type(encoder).__name__} has hidden states 0..{count}")
    if boundary_layer is not None:
        resolved = boundary_layer + count if boundary_layer < 0 else boundary_layer
        if not 0 <= resolved <= count:
            raise ConfigError(
                f"boundary layer {boundary_layer} out of range for {count} layers (use 0..{count} or -{count}..-1)"
            )
        if not hasattr(encoder, "forward_from_layer"):
            raise ConfigError(
                f"encoder {type(encoder).__name__} cannot resume from a stored boundary "
                "(it has no forward_from_layer); store --layers instead"
            )
        boundary_layer = resolved
        chosen = sorted(set(chosen) | {resolved})
    return chosen, boundary_layer


def utterance_keys(
    table: pd.DataFrame,
    encoder: Any,
    store: FeatureStore | MemoryStore,
    preprocess: PreprocessConfig | None = None,
    layers: Iterable[int] = (),
    boundary_layer: int | None = None,
    base_dir: str | Path | None = None,
    hash_threads: int = 2,
) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Store keys of a table's utterances, as :func:`extract_features` computes them.

    Returns ``(keys by utt_id, failures)``; training uses it to find the stored features of a
    table without extracting. Audio files are hashed once and cached in the store's index.
    """
    preprocess = preprocess or PreprocessConfig()
    chosen, _ = resolve_layers(encoder, layers, boundary_layer)
    spec = encoder_part(encoder.identity(), chosen, store.dtype)
    modality = _modality(encoder)
    prep = preprocess.key_dict(modality)
    keys: dict[str, str] = {}
    failures: list[dict[str, str]] = []
    rows = _records(table)
    if modality == "text":
        for row in rows:
            if row["text"] is None:
                failures.append(_failure(row["utt_id"], "no transcript", "the table has no text for this utterance"))
                continue
            keys[row["utt_id"]] = feature_key(text_input(row["text"], preprocess.text_normalisation), spec, prep)
        return keys, failures
    paths = {row["utt_id"]: _resolve(_media_path(row, modality), base_dir) for row in rows}
    digests, errors = store.file_digests([p for p in paths.values() if p is not None], threads=hash_threads)
    for row in rows:
        path = paths[row["utt_id"]]
        if path is None:
            failures.append(
                _failure(row["utt_id"], f"no {modality} path", f"the table has no {modality} file for this utterance")
            )
        elif path in errors:
            failures.append(_failure(row["utt_id"], "missing file", errors[path]))
        else:
            start, end = _media_span(row, modality)
            keys[row["utt_id"]] = feature_key(audio_input(digests[path], start, end), spec, prep)
    return keys, failures


def extract_features(
    table: pd.DataFrame,
    encoder: Any,
    store: FeatureStore | MemoryStore,
    preprocess: PreprocessConfig | Mapping[str, Any] | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    progress: bool = True,
    layers: Iterable[int] = (),
    boundary_layer: int | None = None,
    flush_every: int = 256,
    base_dir: str | Path | None = None,
    shard_index: int = 0,
    num_shards: int = 1,
    flush_bytes: int = 256 << 20,
) -> ExtractSummary:
    """Encode every utterance of ``table`` missing from ``store``; return an :class:`ExtractSummary`.

    ``encoder.modality`` decides the input: audio encoders read ``audio_path`` (relative paths are
    resolved against ``base_dir``) with its ``start``/``end`` span, text encoders read ``text``.
    ``layers`` adds ``layer_<k>`` fields; ``boundary_layer`` stores the states entering that
    layer (see :func:`resolve_layers`). ``batch_size`` utterances of similar length are encoded
    together; ``num_workers`` DataLoader processes load and preprocess audio. A shard is written
    every ``flush_every`` computed utterances, or sooner when they hold ``flush_bytes`` of arrays
    (all hidden layers of a large model add up quickly). With ``num_shards > 1`` only the utterances whose
    input locator hashes to ``shard_index`` are processed, and ``store`` should be opened with a
    ``worker`` id (see :func:`emomix.cache.store.merge_indexes`).
    """
    started = time.perf_counter()
    if not isinstance(preprocess, PreprocessConfig):
        preprocess = PreprocessConfig.from_dict(preprocess)
    if batch_size < 1 or flush_every < 1 or flush_bytes < 1 or num_workers < 0:
        raise ConfigError("batch_size, flush_every and flush_bytes must be at least 1 and num_workers at least 0")
    if not 0 <= shard_index < num_shards:
        raise ConfigError(f"shard index {shard_index} is outside 0..{num_shards - 1}")
    if num_shards > 1 and store.worker is None:
        raise ConfigError("a sharded extraction must write through a worker store: FeatureStore(root, worker=...)")
    modality = _modality(encoder)
    chosen, boundary_layer = resolve_layers(encoder, layers, boundary_layer)
    if (
        modality == "audio"
        and preprocess.vad
        and preprocess.vad_mode == "mask"
        and not getattr(encoder, "frame_rate", None)
    ):
        raise ConfigError(
            f"vad_mode='mask' needs an encoder with frames; {type(encoder).__name__} has no frame rate "
            "(use vad_mode='trim')"
        )
    namespace = namespace_for(encoder)
    summary = ExtractSummary(namespace=namespace, store=str(store.root), layers=chosen, boundary_layer=boundary_layer)
    store.acquire_writer()  # fail early if another process writes as this writer

    if num_shards > 1:
        owned = [_locator(row, modality) for row in _records(table)]
        mask = np.array([locator_shard(loc, num_shards) == shard_index for loc in owned], dtype=bool)
        summary.other_workers = int((~mask).sum())
        table = table[mask]
    summary.total = len(table)
    keys, failures = utterance_keys(
        table, encoder, store, preprocess, chosen, None, base_dir, hash_threads=max(2, num_workers)
    )
    summary.failures.extend(failures)
    present = set(keys.values()) - set(store.missing(keys.values()))
    summary.cached = sum(1 for key in keys.values() if key in present)
    summary.keys = dict(keys)

    work: list[_WorkItem] = []
    for row in _records(table):
        key = keys.get(row["utt_id"])
        if key is None or key in present:
            continue
        path = _resolve(_media_path(row, modality), base_dir) if modality != "text" else None
        start, end = _media_span(row, modality)
        work.append(_WorkItem(row["utt_id"], key, path, start, end, row["text"], _length(modality, path, row)))
    description = {
        "class": type(encoder).__name__,
        "identity": encoder.identity(),
        "config": encoder.config(),
        "modality": modality,
        "frame_rate": getattr(encoder, "frame_rate", None),
        "output_size": getattr(encoder, "output_size", None),
        "num_layers": getattr(encoder, "num_layers", 0),
    }
    if work:
        _run(
            work,
            encoder,
            store,
            preprocess,
            modality,
            chosen,
            namespace,
            description,
            summary,
            batch_size,
            num_workers,
            flush_every,
            flush_bytes,
            progress,
            started,
        )
    for failure in summary.failures:
        summary.keys.pop(failure["utt_id"], None)
    summary.bytes_on_disk = int(store.stats()["bytes"])
    summary.wall_seconds = time.perf_counter() - started
    return summary


# ---------------------------------------------------------------------- the loop


def _run(
    work: list[_WorkItem],
    encoder: Any,
    store: FeatureStore | MemoryStore,
    preprocess: PreprocessConfig,
    modality: str,
    layers: list[int],
    namespace: str,
    description: dict[str, Any],
    summary: ExtractSummary,
    batch_size: int,
    num_workers: int,
    flush_every: int,
    flush_bytes: int,
    progress: bool,
    started: float,
) -> None:
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    # Longest first: similar lengths share a batch (little padding) and an out-of-memory batch
    # shows up at once rather than hours in.
    order = sorted(range(len(work)), key=lambda i: (-work[i].length, work[i].utt_id))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    frame_rate = getattr(encoder, "frame_rate", None)
    dataset = _InputDataset(
        work, modality, preprocess, getattr(encoder, "settings", None) if modality == "video" else None
    )
    loader = DataLoader(
        dataset, batch_sampler=batches, collate_fn=_collate, num_workers=num_workers, persistent_workers=False
    )
    pending: dict[str, dict[str, np.ndarray]] = {}
    pending_bytes = 0
    done_keys: set[str] = set()
    bar = tqdm(total=len(work), unit="utt", disable=not progress, desc=f"extract {namespace}", dynamic_ncols=True)

    def flush() -> None:
        nonlocal pending_bytes
        pending_bytes = 0
        if pending:
            summary.entries_written += store.put_many(pending, namespace=namespace, description=description)
            summary.shards_written += 1
            pending.clear()

    try:
        for batch in loader:
            ready = []
            for prepared in batch:
                item = work[prepared["position"]]
                if prepared["error"] is not None:
                    reason, message = prepared["error"]
                    summary.failures.append(_failure(item.utt_id, reason, message))
                elif item.key in done_keys or item.key in pending:
                    # Same content as an utterance already encoded in this run: nothing to compute.
                    summary.computed += 1
                    _note_fallbacks(summary, item.utt_id, prepared["fallbacks"])
                else:
                    ready.append((item, prepared))
            for (item, prepared), arrays, flags in _encode(encoder, ready, layers, preprocess, frame_rate, summary):
                pending[item.key] = arrays
                pending_bytes += sum(array.nbytes for array in arrays.values())
                summary.computed += 1
                summary.audio_seconds += prepared["seconds"]
                _note_fallbacks(summary, item.utt_id, list(prepared["fallbacks"]) + flags)
            bar.update(len(batch))
            elapsed = time.perf_counter() - started
            postfix = {"utt/s": f"{summary.computed / max(elapsed, 1e-9):.1f}"}
            if summary.audio_seconds > 0:
                postfix["rtf"] = f"{elapsed / summary.audio_seconds:.3f}"
            bar.set_postfix(postfix, refresh=False)
            if len(pending) >= flush_every or pending_bytes >= flush_bytes:
                done_keys.update(pending)
                flush()
        done_keys.update(pending)
        flush()
    except KeyboardInterrupt:
        flush()  # the pending entries are complete: keep them, so Ctrl-C loses nothing
        raise
    finally:
        bar.close()


def _encode(
    encoder: Any,
    ready: list[tuple[_WorkItem, dict[str, Any]]],
    layers: list[int],
    preprocess: PreprocessConfig,
    frame_rate: float | None,
    summary: ExtractSummary,
) -> list[tuple[tuple[_WorkItem, dict[str, Any]], dict[str, np.ndarray], list[str]]]:
    """Encode a batch; if the batch fails, encode its utterances one by one and record the failures."""
    if not ready:
        return []
    try:
        return _encode_batch(encoder, ready, layers, preprocess, frame_rate)
    except (MissingDataError, ConfigError):
        raise  # a setup problem (weights not found, bad option) fails every utterance alike
    except Exception:
        if len(ready) == 1:
            item, _ = ready[0]
            import traceback

            summary.failures.append(
                _failure(item.utt_id, "encoder error", traceback.format_exc(limit=1).strip().splitlines()[-1])
            )
            return []
    results = []
    for one in ready:
        results.extend(_encode(encoder, [one], layers, preprocess, frame_rate, summary))
    return results


def _encode_batch(
    encoder: Any,
    ready: list[tuple[_WorkItem, dict[str, Any]]],
    layers: list[int],
    preprocess: PreprocessConfig,
    frame_rate: float | None,
) -> list[tuple[tuple[_WorkItem, dict[str, Any]], dict[str, np.ndarray], list[str]]]:
    inputs: list[Any] = []
    owners: list[int] = []
    for index, (_, prepared) in enumerate(ready):
        pieces = prepared["input"] if isinstance(prepared["input"], list) else [prepared["input"]]
        inputs.extend(pieces)
        owners.extend([index] * len(pieces))
    output = encoder.encode(inputs, output_hidden_states=bool(layers))
    flags_per_input = _extras_flags(output.extras, len(inputs))
    per_piece = [output.unpad(j, layers) for j in range(len(inputs))]
    results = []
    for index, pair in enumerate(ready):
        _, prepared = pair
        mine = [j for j, owner in enumerate(owners) if owner == index]
        if preprocess.chunk_max_s is not None and pair[0].audio_path is not None:
            arrays = _join_chunks([per_piece[j] for j in mine])
        else:
            arrays = per_piece[mine[0]]
        if prepared.get("vad") is not None and frame_rate:
            from emomix.audio.vad import map_mask_to_frames

            vad, frame_s = prepared["vad"]
            frames = arrays["states"].shape[0]
            arrays["speech_mask"] = map_mask_to_frames(vad, frame_s, 1.0 / frame_rate, frames).astype(np.uint8)
        flags = sorted({flag for j in mine for flag in flags_per_input[j]})
        results.append((pair, arrays, flags))
    return results


def _join_chunks(pieces: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One utterance from its chunks: frame fields concatenated, ``pooled`` one row per chunk."""
    joined: dict[str, np.ndarray] = {}
    for name in pieces[0]:
        parts = [piece[name] for piece in pieces]
        joined[name] = np.stack(parts) if name == "pooled" else np.concatenate(parts, axis=0)
    joined["chunk_frames"] = np.array([piece["states"].shape[0] for piece in pieces], dtype=np.int32)
    return joined


def _extras_flags(extras: Mapping[str, Any], count: int) -> list[list[str]]:
    """Per-input fallback kinds from an encoder's per-item boolean extras (``empty_text``...)."""
    flags: list[list[str]] = [[] for _ in range(count)]
    for name, value in (extras or {}).items():
        if hasattr(value, "tolist"):
            value = value.tolist()
        if (
            isinstance(value, (list, tuple))
            and len(value) == count
            and all(isinstance(v, (bool, np.bool_)) for v in value)
        ):
            for j, flagged in enumerate(value):
                if flagged:
                    flags[j].append(name.replace("_", " "))
    return flags


# ---------------------------------------------------------------------- loading (DataLoader workers)


class _InputDataset(Dataset[dict[str, Any]]):
    """Map-style dataset: position -> one prepared input, or the reason it could not be read."""

    def __init__(
        self,
        work: list[_WorkItem],
        modality: str,
        preprocess: PreprocessConfig,
        video_settings: Mapping[str, Any] | None = None,
    ):
        self.work = work
        self.modality = modality
        self.preprocess = preprocess
        self.video_settings = dict(video_settings or {})

    def __len__(self) -> int:
        return len(self.work)

    def __getitem__(self, position: int) -> dict[str, Any]:
        item = self.work[position]
        out: dict[str, Any] = {
            "position": position,
            "input": None,
            "seconds": 0.0,
            "fallbacks": [],
            "error": None,
            "vad": None,
        }
        try:
            if self.modality == "text":
                text = normalise_text(item.text or "", self.preprocess.text_normalisation)
                if not text.strip():
                    out["fallbacks"].append(EMPTY_TEXT)
                out["input"] = text
            elif item.audio_path is None:
                raise MissingDataError(f"{item.utt_id}: the table gives no {self.modality} file")
            elif self.modality == "video":
                from emomix.audio.video import prepare_video

                out.update(prepare_video(item.audio_path, item.start, item.end, **self.video_settings))
            else:
                out.update(prepare_audio(item.audio_path, item.start, item.end, self.preprocess))
        except MissingDataError as exc:
            out["error"] = ("missing file", str(exc))
        except ConfigError as exc:
            out["error"] = ("preprocessing error", str(exc))
        except EmomixError as exc:
            out["error"] = (f"unreadable {self.modality}", str(exc))
        except Exception as exc:  # a loader bug must not kill hours of extraction; it is reported
            out["error"] = (f"error: {type(exc).__name__}", str(exc))
        return out


def prepare_audio(
    path: str | Path, start: float | None, end: float | None, preprocess: PreprocessConfig
) -> dict[str, Any]:
    """Load and preprocess one utterance's audio exactly as extraction does.

    Returns ``input`` (the waveform, or a list of chunk waveforms), ``seconds`` (duration
    encoded), ``fallbacks`` (kinds that applied) and ``vad`` (``(mask, frame_s)`` in mask mode).
    """
    from emomix.audio.io import load_audio
    from emomix.audio.vad import DEFAULT_FRAME_MS, is_silence, speech_mask_or_all, speech_regions, vad_mask
    from emomix.errors import AudioError

    rate = int(preprocess.target_rate)
    wave = load_audio(
        path,
        start=start,
        end=end,
        target_rate=rate,
        normalise_loudness=preprocess.normalise_loudness,
        target_dbfs=preprocess.target_dbfs,
    )
    if wave.size == 0:
        raise AudioError(f"{path}: the span {start}-{end} holds no samples")
    fallbacks: list[str] = []
    silent = is_silence(wave, rate)
    if silent:
        fallbacks.append(SILENCE_ONLY)
    vad_result = None
    if preprocess.vad:
        options = dict(preprocess.vad_options)
        frame_ms = options.pop("frame_ms", None) or DEFAULT_FRAME_MS[preprocess.vad]
        mask, fell_back = speech_mask_or_all(
            vad_mask(wave, backend=preprocess.vad, rate=rate, frame_ms=frame_ms, **options)
        )
        if fell_back and not silent:
            fallbacks.append(NO_SPEECH_FOUND)
        frame_s = frame_ms / 1000.0
        if preprocess.vad_mode == "trim":
            regions = speech_regions(mask, frame_s)
            if regions and not fell_back:
                wave = wave[
                    int(regions[0][0] * rate) : max(
                        int(regions[0][0] * rate) + 1, int(math.ceil(regions[-1][1] * rate))
                    )
                ]
        else:
            vad_result = (mask, frame_s)
    if preprocess.chunk_max_s is not None:
        from emomix.audio.chunking import chunk_waveform

        model_input: Any = list(chunk_waveform(wave, rate, preprocess.chunk_max_s, preprocess.chunk_min_s))
    else:
        model_input = wave
    return {"input": model_input, "seconds": wave.size / rate, "fallbacks": fallbacks, "vad": vad_result}


def _collate(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


# ---------------------------------------------------------------------- small helpers


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """``table.to_dict("records")`` without pandas' per-column indexing (a few ms on a one-row
    table: a visible share of one prediction's fixed cost); same values."""
    columns = list(table.columns)
    values = []
    for _, series in table.items():
        column = series.tolist()
        if not isinstance(series.dtype, np.dtype):  # nullable (Int64) column: its NA as None, like to_dict
            column = [None if value is pd.NA else value for value in column]
        values.append(column)
    return [dict(zip(columns, row)) for row in zip(*values)]


def _modality(encoder: Any) -> str:
    modality = getattr(encoder, "modality", None)
    if modality not in ("audio", "text", "video"):
        raise ConfigError(
            f"the feature store extracts audio, text and video encoders; {type(encoder).__name__} "
            f"has modality {modality!r}"
        )
    return modality


def _media_path(row: Mapping[str, Any], modality: str) -> Any:
    """The file an audio or video encoder reads for a row (``audio_path`` or ``video_path``)."""
    return row.get("video_path") if modality == "video" else row["audio_path"]


def _media_span(row: Mapping[str, Any], modality: str) -> tuple[float | None, float | None]:
    """The row's span in that file (``video_start``/``video_end`` for video)."""
    if modality == "video":
        return _span(row.get("video_start")), _span(row.get("video_end"))
    return _span(row["start"]), _span(row["end"])


def _resolve(path: Any, base_dir: str | Path | None) -> str | None:
    if path is None or (isinstance(path, float) and math.isnan(path)):
        return None
    path = Path(str(path)).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return str(path)


def _span(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _locator(row: Mapping[str, Any], modality: str) -> str:
    # The path as the table writes it (not resolved), so machines with different corpus roots
    # agree on the split.
    if modality == "text":
        return f"text:{row['text']}"
    start, end = _media_span(row, modality)
    return f"{modality}:{_media_path(row, modality)}|{start}|{end}"


def _length(modality: str, path: str | None, row: Mapping[str, Any]) -> float:
    if modality == "text":
        return float(len(row["text"] or ""))
    start, end = _media_span(row, modality)
    if end is not None:
        return end - (start or 0.0)
    if modality == "video" or path is None:
        return 0.0  # probing every video's duration would cost a decode; sizes are alike anyway
    try:
        from emomix.audio.io import audio_duration

        return float(audio_duration(path)) - (start or 0.0)
    except Exception:
        return 0.0  # unreadable: the loader reports why


def _failure(utt_id: str, reason: str, message: str) -> dict[str, str]:
    return {"utt_id": str(utt_id), "reason": reason, "message": message}


def _note_fallbacks(summary: ExtractSummary, utt_id: str, kinds: Sequence[str]) -> None:
    for kind in dict.fromkeys(kinds):
        summary.fallbacks.setdefault(kind, []).append(utt_id)


def _listing(ids: Sequence[str], limit: int) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f", ... and {len(ids) - limit} more" if len(ids) > limit else "")


def _human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
