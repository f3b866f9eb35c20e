"""The synthetic corpus turned into model inputs through the project's own pipeline, for tests.

:func:`build_synthetic_features` writes the synthetic corpus (``emomix.data.synthetic``), reads it
with ``read_corpus("synthetic", ...)`` and extracts features into a feature store with
``extract_features`` — exactly the path a user's run takes:

* audio: ``opensmile:eGeMAPSv02`` low-level descriptors (25 per frame, 100 frames/s) with a
  WebRTC VAD ``speech_mask`` (``PreprocessConfig(vad="webrtc", vad_mode="mask")``). **Decision:**
  frames are then averaged in non-overlapping windows of ``frame_stride=4`` (25 frames/s, a frame
  every 40 ms; a window is speech when most of its frames are) so that the attention and LSTM
  models stay fast on two CPU cores — the papers' WavLM gives 50 frames/s, and the synthetic
  corpus's local events (0.15-0.35 s) still span 4-9 frames. Then the states are z-scored per speaker with
  :class:`~emomix.encoders.normalisation.SpeakerNormaliser` (fitted on
  every utterance of the speaker, labels unused), because the generator makes speakers differ as
  much as emotions do;
* text: the bundled MiniLM (6 layers, 384-d) with hidden layers 3-6 stored, so
  ``modality_input(..., layers=[3, 4, 5, 6])`` gives the first-token states of the last four layers;
* alignment edges (token index, frame index) for the token–frame graph. **Decision:** edges are
  built at word level from the corpus's exact word timings
  (:func:`emomix.audio.alignment.words_to_frame_edges` on the openSMILE frames) and mapped to the
  text encoder's tokens through the tokenizer's ``word_ids()``: every sub-word token of a word
  gets that word's frames, special tokens get none. The synthetic transcripts are lower-case
  words separated by single spaces, so the tokenizer's words are the corpus's words; the build
  checks that, and that the token count equals the stored text states.

The corpus and the store live in one cache folder, so a second run reuses both (the generator
skips an up-to-date corpus and extraction skips cached keys). A file lock serialises concurrent
builds (pytest-xdist workers or two pytest processes sharing one cache folder): the first builds,
the others wait and read. A first build extracts in ``num_shards`` processes (sharded writers of
the store, merged at the end); a final pass in this process then reads every key, computing any
the shards missed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock

# The post-processing is the package's own (emomix.features), the same a training run applies.
from emomix.features import downsample_frames, normalise_per_speaker, token_frame_edges

AUDIO_ENCODER = "opensmile:eGeMAPSv02"
TEXT_ENCODER = "minilm"
TEXT_LAYERS = (3, 4, 5, 6)
OPENSMILE_FRAME_RATE = 100.0
FRAME_STRIDE = 4
# The default corpus (480 utterances, 5 sessions of 2 speakers): about a minute to extract on one
# core the first time, and enough test utterances per session (96) for stable UA estimates.
DEFAULT_SIZE = 480


@dataclass
class SyntheticFeatures:
    """The synthetic corpus with its extracted features, ready for ``make_batches``.

    ``features``: ``{utt_id: {"audio": {"states", "speech_mask"}, "text": {"states",
    "special_tokens", "layer_3".."layer_6"}, "edges": {"token_frame": 2 × E}}}``;
    ``table``: the utterance table (labels mapped by the corpus's scheme); ``classes`` in index
    order; ``cue_kind``: per class ``"local"``, ``"global"`` or ``"none"`` (from
    ``generation.json``); ``facts``: the generator's latent facts per utterance;
    ``input_dims``: D per modality; ``frame_rates`` and ``layers`` to pass to ``make_batches``;
    ``summaries``: what each extraction did (``computed``, ``cached``, ``wall_seconds``...).
    """

    root: Path
    table: pd.DataFrame
    classes: tuple[str, ...]
    features: dict[str, dict[str, dict[str, np.ndarray]]]
    cue_kind: dict[str, str]
    facts: dict[str, dict[str, Any]]
    input_dims: dict[str, int]
    frame_rates: dict[str, float | None] = field(
        default_factory=lambda: {"audio": OPENSMILE_FRAME_RATE / FRAME_STRIDE, "text": None}
    )
    layers: dict[str, list[int]] = field(default_factory=lambda: {"text": list(TEXT_LAYERS)})
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def classes_with_cue(self, kind: str) -> list[int]:
        """Indices of the classes whose audio cue is ``kind`` ("local", "global" or "none")."""
        return [i for i, name in enumerate(self.classes) if self.cue_kind.get(name) == kind]


def build_synthetic_features(
    cache_dir: str | Path,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    normalise_speakers: bool = True,
    frame_stride: int = FRAME_STRIDE,
    num_shards: int = 1,
) -> SyntheticFeatures:
    """Write (or reuse) the synthetic corpus in ``cache_dir`` and extract (or reuse) its features;
    a first extraction runs in ``num_shards`` processes."""
    from emomix.cache.extract import PreprocessConfig, extract_features
    from emomix.cache.store import FeatureStore
    from emomix.data.readers import read_corpus
    from emomix.data.synthetic import SyntheticConfig, load_generation, write_synthetic_corpus
    from emomix.encoders.registry import create_encoder

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    corpus_dir = cache / f"corpus-s{seed}-n{size}"
    with FileLock(cache / "build.lock"):
        write_synthetic_corpus(corpus_dir, SyntheticConfig(seed=seed, size=size))
        corpus = read_corpus("synthetic", corpus_dir)
        table = corpus.table.reset_index(drop=True)
        generation = load_generation(corpus_dir)
        stamp = cache / f"{corpus_dir.name}.extracted"
        version = _extraction_version(corpus_dir)
        if num_shards > 1 and not (stamp.exists() and stamp.read_text() == version):
            _extract_sharded(cache, corpus_dir, num_shards)
        audio_encoder = create_encoder(AUDIO_ENCODER)
        text_encoder = create_encoder(TEXT_ENCODER)
        with FeatureStore(cache / "store") as store:
            audio = extract_features(
                table,
                audio_encoder,
                store,
                preprocess=PreprocessConfig(vad="webrtc", vad_mode="mask"),
                base_dir=corpus_dir,
                progress=False,
            )
            text = extract_features(table, text_encoder, store, layers=TEXT_LAYERS, base_dir=corpus_dir, progress=False)
            for summary in (audio, text):
                if summary.failures:
                    raise RuntimeError(f"synthetic feature extraction failed: {summary.format()}")
            audio_arrays = store.get_many([audio.keys[u] for u in table["utt_id"]])
            text_arrays = store.get_many([text.keys[u] for u in table["utt_id"]])
        stamp.write_text(version)

    features: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    tokenizer = text_encoder.tokenizer
    for row in table.itertuples(index=False):
        audio_fields = {k: np.asarray(v) for k, v in audio_arrays[audio.keys[row.utt_id]].items()}
        text_fields = {k: np.asarray(v) for k, v in text_arrays[text.keys[row.utt_id]].items()}
        audio_fields = downsample_frames(audio_fields, frame_stride)
        for name in list(text_fields):
            if name == "states" or name.startswith("layer_"):
                text_fields[name] = text_fields[name].astype(np.float32)
        edges = token_frame_edges(
            row.text,
            row.words,
            tokenizer,
            OPENSMILE_FRAME_RATE / frame_stride,
            audio_fields["states"].shape[0],
            expected_tokens=text_fields["states"].shape[0],
            name=row.utt_id,
        )
        features[row.utt_id] = {"audio": audio_fields, "text": text_fields, "edges": {"token_frame": edges}}

    if normalise_speakers:
        normalise_audio_per_speaker(features, table)
    facts = {fact["utt_id"]: fact for fact in generation["utterances"]}
    classes = tuple(generation["config"]["classes"])
    cue_kind = {name: spec["cue"] for name, spec in generation["classes"].items()}
    first = features[table["utt_id"].iloc[0]]
    return SyntheticFeatures(
        root=corpus_dir,
        table=table,
        classes=classes,
        features=features,
        cue_kind=cue_kind,
        facts=facts,
        input_dims={"audio": int(first["audio"]["states"].shape[1]), "text": int(first["text"]["states"].shape[1])},
        frame_rates={"audio": OPENSMILE_FRAME_RATE / frame_stride, "text": None},
        summaries={"audio": _summary(audio), "text": _summary(text)},
    )


def synthetic_recipe(
    data: SyntheticFeatures, name: str = "test-run", epochs: int = 6, **model_config: Any
) -> dict[str, Any]:
    """A small Dual Routing recipe over the cached synthetic corpus and its feature store (the
    features the fixture extracted, so a training run pays for no extraction)."""
    root = data.root
    return {
        "name": name,
        "corpus": {"reader": "synthetic", "root": str(root)},
        "protocol": {"name": "loso", "params": {"validation": "group"}},
        "features": {
            "store": str(root.parent / "store"),
            "audio": {
                "encoder": AUDIO_ENCODER,
                "preprocess": {"vad": "webrtc", "vad_mode": "mask"},
                "frame_stride": FRAME_STRIDE,
                "speaker_normalisation": True,
            },
            "text": {"encoder": TEXT_ENCODER, "layers": list(TEXT_LAYERS)},
        },
        "model": {
            "name": "dual_routing",
            "config": {"model_dim": 32, "router_hidden": 32, "classifier_hidden": 64, **model_config},
        },
        "optimiser": {"lr": 2e-3, "schedule": "warmup_cosine", "warmup_epochs": 1},
        "training": {"epochs": epochs, "batch_size": 16, "patience": 3, "threads": 1},
        "seeds": [0],
    }


def fold_test_items(
    run: Path, data: SyntheticFeatures, fold: str, count: int
) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """A trained fold's first ``count`` test utterances as predictor items (WAV path, transcript,
    speaker), with the run's saved predictions for them."""
    predictions = pd.read_parquet(Path(run) / "folds" / fold / "seed-0" / "predictions.parquet").head(count)
    table = data.table.set_index("utt_id")
    items = [
        {
            "audio": str(data.root / table.loc[u, "audio_path"]),
            "text": table.loc[u, "text"],
            "speaker": table.loc[u, "speaker"],
        }
        for u in predictions["utt_id"]
    ]
    return items, predictions


def normalise_audio_per_speaker(features: dict[str, dict[str, dict[str, np.ndarray]]], table: pd.DataFrame) -> None:
    """Z-score every utterance's audio ``states`` with its speaker's statistics, in place."""
    normalise_per_speaker(features, table, "audio")


def _summary(summary: Any) -> dict[str, Any]:
    data = summary.to_dict()
    return {k: data[k] for k in ("namespace", "total", "cached", "computed", "failed", "wall_seconds")}


def _extraction_version(corpus_dir: Path) -> str:
    """What a complete extraction depends on: the corpus's generation facts and the encoders and
    their settings here. A stamp with this text skips the sharded pass (the final pass still
    checks every key)."""
    digest = hashlib.sha256((corpus_dir / "generation.json").read_bytes())
    digest.update(f"{AUDIO_ENCODER} webrtc mask {TEXT_ENCODER} {TEXT_LAYERS}".encode())
    return digest.hexdigest()


def _extract_sharded(cache: Path, corpus_dir: Path, num_shards: int) -> None:
    """Extract both encoders' features in ``num_shards`` processes (shard 0 here, the others as
    ``python tests/synthetic_features.py --shard I N``), then merge their index parts."""
    import torch

    from emomix.cache.store import merge_indexes

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--shard", str(i), str(num_shards), str(cache), str(corpus_dir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(1, num_shards)
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _extract_shard(cache, corpus_dir, 0, num_shards)
    finally:
        torch.set_num_threads(threads)
        outputs = [child.communicate()[0] for child in children]
    failed = [
        f"shard {i + 1}: {out.strip().splitlines()[-1:] or child.returncode}"
        for i, (child, out) in enumerate(zip(children, outputs))
        if child.returncode != 0
    ]
    if failed:
        raise RuntimeError("synthetic feature extraction failed in " + "; ".join(failed))
    merge_indexes(cache / "store")


def _extract_shard(cache: Path, corpus_dir: Path, shard_index: int, num_shards: int) -> None:
    """One share of the audio and text extraction, written through the store's worker
    ``shard-I-of-N``."""
    from emomix.cache.extract import PreprocessConfig, extract_features
    from emomix.cache.store import FeatureStore
    from emomix.data.readers import read_corpus
    from emomix.encoders.registry import create_encoder

    table = read_corpus("synthetic", corpus_dir).table.reset_index(drop=True)
    with FeatureStore(cache / "store", worker=f"shard-{shard_index}-of-{num_shards}") as store:
        for spec, options in (
            (AUDIO_ENCODER, {"preprocess": PreprocessConfig(vad="webrtc", vad_mode="mask")}),
            (TEXT_ENCODER, {"layers": TEXT_LAYERS}),
        ):
            summary = extract_features(
                table,
                create_encoder(spec),
                store,
                base_dir=corpus_dir,
                progress=False,
                shard_index=shard_index,
                num_shards=num_shards,
                **options,
            )
            if summary.failures:
                raise RuntimeError(f"synthetic feature extraction failed: {summary.format()}")


if __name__ == "__main__":  # a quick look: python tests/synthetic_features.py /tmp/folder
    import time

    if sys.argv[1:2] == ["--shard"]:  # a child of _extract_sharded
        _extract_shard(Path(sys.argv[4]), Path(sys.argv[5]), int(sys.argv[2]), int(sys.argv[3]))
        sys.exit(0)
    started = time.perf_counter()
    built = build_synthetic_features(sys.argv[1] if len(sys.argv) > 1 else "/tmp/emomix-synthetic", num_shards=2)
    print(
        json.dumps(built.summaries, indent=1),
        f"{time.perf_counter() - started:.1f} s",
        built.input_dims,
        built.cue_kind,
    )


def with_context_card(run: Path, target: Path) -> Path:
    """A copy of the run folder ``run`` at ``target`` whose text features are declared with two
    turns of dialogue context (the weights are the run's own: what changes is which text reaches
    the encoder)."""
    import json
    import shutil

    shutil.copytree(run, target)
    for card_path in target.glob("folds/*/seed-*/model.json"):
        card = json.loads(card_path.read_text())
        card["features"]["text"]["context"] = {"turns": 2, "speakers": True}
        card_path.write_text(json.dumps(card))
    return target
