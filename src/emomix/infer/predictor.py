"""Predictions from a trained run: raw audio (+ transcript) → emotion, through the training path.

:class:`Predictor` loads one trained fold/seed of a run (the run folder training wrote, see
docs/training.md) and predicts files, arrays or uploaded bytes. Nothing about features is
re-implemented here: every input becomes a row of an utterance table (the table
:func:`emomix.data.schema.make_table` would make, see :func:`inference_table`) and goes through
:func:`emomix.features.build_features`
— the function training used — with an in-memory store (:class:`~emomix.cache.memory.MemoryStore`,
float16 like the run's disk store), the run's fitted speaker normalisers and encoders built once.
The model (:class:`~emomix.models.saved.TrainedModel`, loaded without the trainer) sees batches
from the collators training used (:mod:`emomix.models.collate`) and its outputs are read as
evaluation reads them (:func:`emomix.models.saved.predict_rows`), so a prediction on a corpus file equals the
prediction the run wrote for that utterance in ``predictions.parquet``.

Choices, each documented in docs/inference.md:

* **Which checkpoint.** A run folder holds one model per fold and seed. Without ``fold``/``seed``
  the one with the best validation score is used (:mod:`emomix.infer.checkpoint` gives the rule).
* **Arrays and bytes** are written to a temporary WAV file in 32-bit float (no requantisation):
  bytes are first decoded by :func:`emomix.audio.io.decode_audio_bytes` to the encoder's rate,
  arrays are written at their own ``sample_rate`` and resampled by the loader like any file.
* **Unknown speakers.** Speaker-normalised features of a speaker the run never saw use the
  pooled statistics of every training speaker (noted in the result).
* **No transcript.** When the model reads text and none is given: a local speech recogniser
  (:mod:`emomix.infer.asr`) if one is installed with a local model; otherwise the model runs
  audio-only where its design has audio-only experts (Dual Routing: the audio router's mix of the
  audio local/global experts; MiSTER-E: the speech expert alone), and otherwise on an empty
  transcript (the text encoder's special tokens only). Either way ``notes`` says so.
* **Dialogue models** (MiSTER-E) predict a single utterance as a one-utterance dialogue (no
  context); :meth:`Predictor.predict_dialogue` predicts a list of turns as one conversation.
  The same holds for a model whose text features carry dialogue context (``features.text.context``):
  :meth:`Predictor.predict_dialogue` gives each turn its predecessors, as in training; a single
  prediction has none, like a dialogue's first turn.
"""

from __future__ import annotations

import functools
import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from emomix.audio.io import audio_duration, decode_audio_bytes, load_audio, to_mono
from emomix.cache.extract import PreprocessConfig, extract_features, with_text_context
from emomix.cache.memory import MemoryStore
from emomix.constants import IGNORE_INDEX
from emomix.data.dialogue import UNKNOWN_SPEAKER
from emomix.data.schema import make_table
from emomix.encoders.normalisation import SpeakerNormaliser
from emomix.encoders.registry import create_encoder
from emomix.errors import AudioError, ConfigError, EmomixError, MissingDataError, VideoError
from emomix.features import FeatureSpec, build_features
from emomix.infer.asr import find_transcriber
from emomix.infer.card import predictor_card
from emomix.infer.checkpoint import read_metrics, resolve_checkpoint
from emomix.infer.describe import training_data_notes
from emomix.models.base import model_info
from emomix.models.collate import DialogueCollator, UtteranceCollator, utterance_vector
from emomix.models.dual_routing import DualRoutingModel
from emomix.models.inputs import Batch, DialogueBatch
from emomix.models.mister_e import MisterE
from emomix.models.saved import WEIGHTS_FILE, TrainedModel, predict_rows

ITEM_KEYS = ("audio", "text", "sample_rate", "speaker", "video")
AUDIO_ONLY_NOTE = "no transcript: audio-only"
EMPTY_TEXT_NOTE = "no transcript: the model ran on an empty transcript (text encoder special tokens only)"
# aux entries that are internal tensors, not per-row routing/gate readings worth returning (the
# same rule as the run's predictions.parquet, plus a dialogue model's utterance mask)
_AUX_SKIP = ("expert_logits", "embedding", "utterance_mask")
_AUX_SKIP_PREFIX = ("h_",)
MAX_AUX_WIDTH = 16
# failure reasons of emomix.cache.extract → the error type a caller gets
_FAILURE_TYPES = {
    "missing file": MissingDataError,
    "unreadable audio": AudioError,
    "preprocessing error": ConfigError,
    "no transcript": ConfigError,
    "no audio path": ConfigError,
    "no video path": ConfigError,
    "unreadable video": VideoError,
    "no face found": VideoError,
}


@dataclass
class _Item:
    """One input on its way through a batch."""

    index: int
    utt_id: str
    described: dict[str, Any]
    audio_path: str | None = None
    video_path: str | None = None
    text: str | None = None  # what the text encoder reads ("" for the placeholder)
    transcript: str | None = None  # what the result reports
    transcript_source: str | None = None
    speaker: str | None = None
    duration_s: float | None = None
    audio_only: bool = False
    notes: list[str] = field(default_factory=list)
    wave: np.ndarray | None = None  # decoded samples when they are at hand (bytes), for ASR


class Predictor:
    """A trained model with its encoders, normalisers and model card, ready to predict.

    Build it with :meth:`from_run`. ``predict`` takes one input, ``predict_many`` a list (batched
    through the encoders; a failing item gets an error in its slot), ``predict_dialogue`` the
    turns of one conversation. Results are plain JSON-serialisable dicts (see :meth:`predict`).
    """

    def __init__(
        self,
        card: Mapping[str, Any],
        network: TrainedModel,
        specs: Mapping[str, Any],
        encoders: Mapping[str, Any],
        normalisers: Mapping[str, Any],
        checkpoint: Path,
        run_dir: Path | None = None,
        metrics: Mapping[str, Any] | None = None,
        device: str = "cpu",
        asr: Any = None,
    ):
        self.card = dict(card)
        self.network = network
        self.model = network.model
        self.classes: list[str] = [str(c) for c in card["classes"]]
        self.modalities: tuple[str, ...] = tuple(
            m for m in ("audio", "text", "video") if m in self.model.config.modalities
        )
        self.specs = dict(specs)
        self.encoders = dict(encoders)
        self.normalisers = dict(normalisers)
        self.checkpoint = Path(checkpoint)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.metrics = dict(metrics) if metrics else None
        self.device = device
        self.batch_kind = str(card.get("batch_kind") or getattr(self.model, "batch_kind", "utterance"))
        self.audio_only_mode = _audio_only_mode(self.model)
        self._asr = asr  # None: look for one on first need; False: never; else a Transcriber
        self._asr_searched = asr is not None
        self.model_notes = training_data_notes(card, run_dir)  # e.g. trained on the synthetic corpus

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def from_run(
        cls, path: str | Path, fold: str | None = None, seed: int | None = None, device: str = "cpu", asr: Any = None
    ) -> Predictor:
        """Load a run folder (choosing a fold/seed, see the module doc) or a checkpoint folder
        (``folds/<fold>/seed-<k>`` with ``model.json`` and ``model.safetensors``).

        ``asr``: None finds a local speech recogniser when first needed (:mod:`emomix.infer.asr`),
        False disables speech recognition, or pass a transcriber object.
        """
        checkpoint, run_dir, card = resolve_checkpoint(path, fold, seed)
        return cls._load(card, checkpoint, run_dir, device, asr)

    @classmethod
    def _load(cls, card: Mapping[str, Any], checkpoint: Path, run_dir: Path | None, device: str, asr: Any) -> Predictor:
        if not (checkpoint / WEIGHTS_FILE).is_file():
            raise MissingDataError(f"{checkpoint} has no {WEIGHTS_FILE}; the fold did not finish training")
        info = model_info(str(card["model"]))
        modalities = tuple(card.get("config", {}).get("modalities") or info.modalities)
        specs = {m: FeatureSpec.from_dict(m, values) for m, values in dict(card["features"]).items() if m in modalities}
        missing = [m for m in modalities if m not in specs]
        if missing:
            raise ConfigError(
                f"{checkpoint / 'model.json'}: the model reads {', '.join(missing)} but the card names no "
                "feature spec for it"
            )
        encoders = {modality: create_encoder(spec.encoder) for modality, spec in specs.items()}
        # the fine-tuned top layers load into these very encoders, which also extract the features
        network = TrainedModel.from_pretrained(checkpoint, encoders=encoders, device=device)
        for encoder in encoders.values():
            if isinstance(encoder, torch.nn.Module):
                encoder.to(device)
                encoder.eval()  # once here: Encoder.encode then skips its per-call mode switches
        normalisers = load_normalisers(card, checkpoint, run_dir, specs)
        metrics = read_metrics(run_dir, card) if run_dir is not None else None
        return cls(card, network, specs, encoders, normalisers, checkpoint, run_dir, metrics, device, asr)

    def set_threads(self, threads: int) -> None:
        """Let the encoders that extract a batch's files in parallel (openSMILE, see
        :meth:`~emomix.encoders.opensmile_encoder.OpenSmileEncoder.set_threads`) use ``threads``
        threads. A run-time setting: the features, and so the predictions, stay the same. torch's
        own threads are ``torch.set_num_threads``'s."""
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"predictor threads must be a whole number of at least 1, got {threads!r}")
        for encoder in self.encoders.values():
            parts = encoder.modules() if isinstance(encoder, torch.nn.Module) else [encoder]
            for part in parts:  # a joined encoder holds its parts as submodules
                set_part_threads = getattr(part, "set_threads", None)
                if callable(set_part_threads):
                    set_part_threads(threads)

    # -- what the model is ----------------------------------------------------------------------

    @property
    def reads_dialogue(self) -> bool:
        """Whether a prediction depends on the other turns of its conversation: a dialogue model
        (MiSTER-E), or text features built with dialogue context (``features.text.context``). Only
        then does :meth:`predict_dialogue` differ from predicting each turn alone."""
        return self.batch_kind == "dialogue" or any(spec.dialogue_context() is not None for spec in self.specs.values())

    def info(self) -> dict[str, Any]:
        """The model card: name, classes, inputs, features, training summary, corpus, protocol,
        the run's headline metrics, and how missing transcripts are handled."""
        card = self.card
        info = {
            "name": card["model"],
            "classes": list(self.classes),
            "inputs": list(self.modalities),
            "batch_kind": self.batch_kind,
            "reads_dialogue": self.reads_dialogue,
            "features": {m: spec.to_dict() for m, spec in self.specs.items()},
            "training": {"fold": card.get("fold"), "seed": card.get("seed"), **dict(card.get("training") or {})},
            "corpus": card.get("corpus"),
            "protocol": card.get("protocol"),
            "metrics": self.metrics,
            "speaker_normalisation": sorted(self.normalisers),
            "without_transcript": self._without_transcript_mode() if "text" in self.modalities else None,
            "checkpoint": str(self.checkpoint),
            "run": None if self.run_dir is None else str(self.run_dir),
            "emomix_version": card.get("emomix_version"),
        }
        # the model card's own fields (paper, fold plan, "not evaluated" metrics...): the same
        # card `emomix export` writes, apart from its creation time
        for key, value in predictor_card(self).items():
            if key == "metrics" or key not in info:
                info[key] = value
        info.pop("created", None)
        return info

    # -- the model's own batches ---------------------------------------------------------------

    def model_batch(
        self, items: Sequence[Mapping[str, Any]], as_dialogue: bool = False
    ) -> tuple[Any, list[dict[str, Any]]]:
        """The batch the model reads for ``items`` (dicts like :meth:`predict_many`'s, one feature
        extraction, one batch) and the predictions made from that very batch.

        Used to check an exported model on exactly what :meth:`predict` feeds the PyTorch model.
        ``as_dialogue``: for a dialogue model, the items are the turns of one conversation
        (:meth:`predict_dialogue`); otherwise one-utterance dialogues. Any failing item raises its
        error. Items without a transcript for a text model get the audio-only reading in their
        result (``modalities == ["audio"]``), which is not the batch's logits.
        """
        if not items:
            raise ConfigError("model_batch needs at least one item")
        captured: list[Any] = []
        results = self._run(list(items), as_dialogue=as_dialogue, batches=captured)
        for index, result in enumerate(results):
            if isinstance(result, BaseException):
                raise type(result)(f"item {index}: {result}") if isinstance(result, EmomixError) else result
        return captured[0], results

    def model_input(self, batch: Any) -> Any:
        """``batch`` as the model's ``forward`` receives it: with fine-tuned encoder layers
        (``trainable_top_layers``) applied to the stored boundary states; otherwise unchanged."""
        if not self.network.boundaries:
            return batch
        with torch.no_grad():
            if self.batch_kind == "dialogue":  # the layers run on each utterance's tokens, then pool
                return self.network.pool_top_layers(batch.to(self.device))
            return self.network.run_top_layers(batch.to(self.device))

    # -- predicting ----------------------------------------------------------------------------

    def predict(
        self,
        audio: Any = None,
        text: str | None = None,
        sample_rate: int | None = None,
        speaker: str | None = None,
        video: str | Path | None = None,
    ) -> dict[str, Any]:
        """Predict one utterance.

        ``audio``: a file path, a numpy array (mono, or samples × channels) with ``sample_rate``,
        or the bytes of an audio file (any format :func:`emomix.audio.io.decode_audio_bytes`
        reads). ``text``: the transcript (None: see the module doc). ``speaker``: used by
        speaker-normalised features. ``video``: the utterance's video file, for models that read
        video (face crops are made as in training; a clip without a face is a ``VideoError``).
        Returns ``{"label", "probabilities": {class: p}, "aux": {name: float | [floats]},
        "modalities", "transcript", "transcript_source" ("given", "asr:<backend>" or None),
        "duration_s", "notes": [...]}``. User errors (a missing or
        corrupt file, silent audio, empty text) raise :class:`~emomix.errors.EmomixError` types.
        """
        result = self._run(
            [{"audio": audio, "text": text, "sample_rate": sample_rate, "speaker": speaker, "video": video}]
        )[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def predict_many(self, items: Sequence[Mapping[str, Any]], batch_size: int = 32) -> list[dict[str, Any]]:
        """Predict a list of inputs (dicts with :meth:`predict`'s keyword names), ``batch_size`` at
        a time with one feature extraction per batch. A failing item gives
        ``{"error": message, "error_type": class name, "input": what it was}`` in its slot."""
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        results: list[dict[str, Any]] = []
        items = list(items)
        for start in range(0, len(items), int(batch_size)):
            chunk = items[start : start + int(batch_size)]
            for item, result in zip(chunk, self._run(chunk, first_index=start)):
                results.append(error_result(result, item) if isinstance(result, BaseException) else result)
        return results

    def predict_dialogue(self, turns: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Predict the turns of one conversation, in order (dicts like :meth:`predict_many`'s).

        A dialogue model sees the turns as one dialogue (each prediction uses its context), and so
        does an utterance model whose text features carry dialogue context (each transcript is
        followed by its predecessors, as in training); any other utterance model predicts each
        turn on its own. Give ``speaker`` per turn when the model was trained with speaker names
        in its context. Any failing turn raises its error, since a
        conversation with a hole would change every other turn's context.
        """
        if not turns:
            raise ConfigError("predict_dialogue needs at least one turn")
        results = self._run(list(turns), as_dialogue=True)
        for index, result in enumerate(results):
            if isinstance(result, BaseException):
                raise type(result)(f"turn {index}: {result}") if isinstance(result, EmomixError) else result
        return results

    # -- the batch path ------------------------------------------------------------------------

    def _run(
        self,
        raw_items: Sequence[Any],
        as_dialogue: bool = False,
        first_index: int = 0,
        batches: list[Any] | None = None,
    ) -> list[Any]:
        """Results (dicts) or exceptions, one per raw item (``batches`` collects the model batch)."""
        out: list[Any] = [None] * len(raw_items)
        with _scratch_dir() as scratch:
            items: list[_Item] = []
            for position, raw in enumerate(raw_items):
                try:
                    items.append(self._prepare(position, first_index + position, raw, scratch))
                except EmomixError as exc:
                    out[position] = exc
                except Exception as exc:  # one odd input must not sink the batch; say what it was
                    out[position] = AudioError(f"could not read the input ({type(exc).__name__}: {exc})")
            for item in items:
                try:
                    self._complete_text(item)
                except EmomixError as exc:
                    out[item.index] = exc
            ready = [item for item in items if out[item.index] is None]
            if not ready:
                return out
            try:
                features = self._features(ready, as_dialogue)
            except EmomixError as exc:
                for item in ready:
                    out[item.index] = exc
                return out
            fallbacks = _fallbacks(features)
            for item in ready:
                if failure := features.failure_of.get(item.utt_id):
                    out[item.index] = failure
                elif item.utt_id in fallbacks.get("silence-only audio", ()):
                    out[item.index] = AudioError(
                        f"{_name(item)}: the audio is silent (no 25 ms frame above -60 dBFS); "
                        "there is no speech to recognise an emotion from"
                    )
                elif item.utt_id in fallbacks.get("no speech found by VAD", ()):
                    item.notes.append("the voice activity detector found no speech; every frame was used")
            ready = [item for item in ready if out[item.index] is None]
            if not ready:
                return out
            try:
                for item, result in zip(ready, self._forward(ready, features.feature_set, as_dialogue, batches)):
                    out[item.index] = result
            except EmomixError as exc:
                for item in ready:
                    out[item.index] = exc
        return out

    def _prepare(self, position: int, number: int, raw: Any, scratch: _Scratch) -> _Item:
        """Validate one input; arrays and bytes become temporary float32 WAV files."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"an item must be a dict with keys {', '.join(ITEM_KEYS)}, got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(ITEM_KEYS))
        if unknown:
            raise ConfigError(f"unknown item key(s) {unknown}; an item takes {', '.join(ITEM_KEYS)}")
        audio, text, rate, speaker, video = (raw.get(k) for k in ITEM_KEYS)
        item = _Item(
            index=position,
            utt_id=f"item-{number:06d}",
            described=describe_input(raw),
            speaker=None if speaker is None else str(speaker),
        )
        if text is not None:
            if not isinstance(text, str):
                raise ConfigError(f"text must be a string, got {type(text).__name__}")
            if not text.strip():
                raise ConfigError(
                    "the transcript is empty; leave it out (no --text, or text=None in Python) to predict without one"
                )
        needs_audio = "audio" in self.modalities
        if audio is None:
            if needs_audio:
                raise ConfigError(
                    f"{self.card['model']} reads audio: give a file path, an array with sample_rate, or bytes"
                )
        elif not needs_audio:
            item.notes.append(f"audio ignored: {self.card['model']} reads text only")
            if text is None:
                item.audio_path, item.duration_s = self._audio_file(audio, rate, scratch, item)
        else:
            item.audio_path, item.duration_s = self._audio_file(audio, rate, scratch, item)
        if "video" in self.modalities:
            if not isinstance(video, (str, Path)):
                raise ConfigError(f"{self.card['model']} reads video: give the utterance's video file (video=PATH)")
            if not Path(video).expanduser().is_file():
                raise MissingDataError(f"video file {video} does not exist")
            item.video_path = str(Path(video).expanduser())
        elif video is not None:
            item.notes.append(f"video ignored: {self.card['model']} does not read video")
        if "text" in self.modalities and text is not None:
            item.text, item.transcript, item.transcript_source = text, text, "given"
        elif text is not None:
            item.transcript, item.transcript_source = text, "given"
            item.notes.append(f"text ignored: {self.card['model']} reads audio only")
        return item

    def _audio_file(self, audio: Any, rate: Any, scratch: _Scratch, item: _Item) -> tuple[str, float]:
        if isinstance(audio, (str, Path)):
            path = Path(audio).expanduser()
            if not path.exists():
                raise MissingDataError(f"audio file {path} does not exist")
            return str(path), float(audio_duration(path))  # missing / empty / corrupt header → error now
        target = self._audio_rate()
        if isinstance(audio, (bytes, bytearray, memoryview)):
            wave = decode_audio_bytes(bytes(audio), target_rate=target, name=f"<uploaded audio, {len(audio)} bytes>")
            rate = target
        elif isinstance(audio, np.ndarray) or hasattr(audio, "__array__"):
            if rate is None or not isinstance(rate, (int, np.integer)) or int(rate) <= 0:
                raise ConfigError(f"an audio array needs sample_rate (a positive integer, e.g. 16000), got {rate!r}")
            wave = as_mono_float(np.asarray(audio))
            rate = int(rate)
        else:
            raise ConfigError(f"audio must be a file path, a numpy array or bytes, got {type(audio).__name__}")
        if wave.size == 0:
            raise AudioError(f"{_name(item)}: holds no samples")
        if not np.isfinite(wave).all():
            raise AudioError(f"{_name(item)}: contains NaN or infinite samples")
        path = scratch.path / f"{item.utt_id}.wav"
        sf.write(str(path), wave, int(rate), subtype="FLOAT")  # 32-bit float: the samples are kept exactly
        if rate == 16000:
            item.wave = wave  # kept for speech recognition, which reads 16 kHz
        return str(path), wave.shape[0] / float(rate)

    def _complete_text(self, item: _Item) -> None:
        """Decide what the text encoder reads when no transcript was given."""
        if "text" not in self.modalities or item.text is not None:
            return
        if item.audio_path is None:
            raise ConfigError(f"{self.card['model']} reads text: give text (or audio to transcribe)")
        transcriber = self._transcriber()
        reason = None
        if transcriber is not None:
            try:
                wave = item.wave
                if wave is None:
                    wave = load_audio(item.audio_path, target_rate=16000)
                words = str(transcriber.transcribe(wave)).strip()
                reason = f"speech recognition ({transcriber.backend}) found no words"
            except EmomixError:
                raise
            except Exception as exc:  # a recogniser crash falls back like a missing recogniser
                words, reason = "", f"speech recognition failed ({type(exc).__name__}: {exc})"
            if words:
                item.text, item.transcript = words, words
                item.transcript_source = f"asr:{transcriber.backend}"
                return
        elif self._asr is not False:
            reason = (
                "no speech recogniser available (install faster-whisper or openai-whisper with a local model "
                "and set EMOMIX_ASR_MODEL)"
            )
        if "audio" not in self.modalities:
            raise ConfigError(f"{self.card['model']} reads text only and no transcript is available; give text")
        item.text = ""  # the placeholder the text encoder reads; the audio-only result ignores it
        item.audio_only = True
        item.notes.append(AUDIO_ONLY_NOTE if self.audio_only_mode else EMPTY_TEXT_NOTE)
        if reason:
            item.notes.append(reason)

    def _transcriber(self) -> Any:
        if not self._asr_searched:
            self._asr = find_transcriber()
            self._asr_searched = True
        return self._asr or None

    def _features(self, items: Sequence[_Item], as_dialogue: bool = False) -> _Features:
        """One :func:`build_features` call for the items (one table row each; one dialogue when
        ``as_dialogue``, else each item its own, so no item becomes another's context)."""
        table = self._table(items, as_dialogue)
        try:
            feature_set = build_features(
                table,
                self.specs,
                MemoryStore(),
                normalisers=self.normalisers,
                encoders=self.encoders,
                edges=bool(self.card.get("edges")),
                progress=False,
            )
        except MissingDataError:
            # Every item failed; find each one's own reason (rare, so re-extracting is fine).
            failures: dict[str, dict[str, str]] = {}
            for modality, spec in self.specs.items():
                summary = extract_features(
                    with_text_context(table, spec.dialogue_context(), self.encoders[modality]),
                    self.encoders[modality],
                    MemoryStore(),
                    preprocess=PreprocessConfig.from_dict(spec.preprocess),
                    progress=False,
                    batch_size=spec.batch_size,
                )
                for failure in summary.failures:
                    failures.setdefault(failure["utt_id"], {**failure, "modality": modality})
            if not failures:
                raise
            return _Features(None, {u: _failure_error(f, items) for u, f in failures.items()})
        return _Features(feature_set, {f["utt_id"]: _failure_error(f, items) for f in feature_set.failures})

    def _table(self, items: Sequence[_Item], as_dialogue: bool = False) -> Any:
        rows = []
        for item in items:
            rows.append(
                {
                    "utt_id": item.utt_id,
                    "corpus": "inference",
                    "audio_path": item.audio_path,
                    "text": item.text,
                    "speaker": item.speaker or UNKNOWN_SPEAKER,
                    "dialogue_id": "inference" if as_dialogue else f"inference-{item.utt_id}",
                    "turn": item.index if as_dialogue else 0,
                    "video_path": item.video_path,
                }
            )
            if self.card.get("edges"):
                item.notes.append("no word timings at inference: the token–frame graph uses the model's fallback")
            for modality, normaliser in self.normalisers.items():
                if item.speaker is None or item.speaker not in normaliser.mean:
                    who = (
                        "no speaker given" if item.speaker is None else f"speaker {item.speaker!r} not seen in training"
                    )
                    item.notes.append(f"{who}: {modality} features normalised with the pooled training statistics")
        return inference_table(rows)

    def _forward(
        self, items: Sequence[_Item], feature_set: Any, as_dialogue: bool, batches: list[Any] | None = None
    ) -> list[dict[str, Any]]:
        """The model on the items' features, as evaluation runs it (the batch is appended to ``batches``)."""
        ids = [item.utt_id for item in items]
        batch: Batch | DialogueBatch
        if self.batch_kind == "dialogue":
            pooling = getattr(self.network.model, "dialogue_pooling", None) or {}  # as the model was trained
            tuned = [m for m in self.modalities if m in self.network.boundaries]  # their token states travel
            vectors = {
                u: {
                    m: utterance_vector(feature_set.features[u][m], pooling.get(m, "mean"), f"{u}/{m}")
                    for m in self.modalities
                    if m not in tuned
                }
                for u in ids
            }
            dialogues = [ids] if as_dialogue else [[u] for u in ids]
            batch = DialogueCollator(
                vectors,
                dialogues,
                {u: IGNORE_INDEX for u in ids},
                self.modalities,
                tokens=feature_set.features,
                token_modalities=tuned,
            )(range(len(dialogues)))
        else:
            labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
            collate = UtteranceCollator(
                feature_set.features,
                ids,
                labels,
                self.modalities,
                feature_set.frame_rates,
                feature_set.layers,
                {m: self.specs[m].max_length for m in self.modalities},
            )
            batch = collate(range(len(ids)))
        if batches is not None:
            batches.append(batch)
        order, probs, _, aux = predict_rows(self.network, [batch])
        row_of = {u: r for r, u in enumerate(order)}
        results = []
        for item in items:
            row = row_of[item.utt_id]
            values = {name: np.asarray(value[row]) for name, value in aux.items()}
            p = np.asarray(probs[row], dtype=np.float64)
            used = list(self.modalities)
            if item.audio_only and self.audio_only_mode:
                p, values = audio_only_prediction(self.audio_only_mode, values, self.model)
                used = ["audio"]
            results.append(self._result(item, p, values, used))
        return results

    def _result(self, item: _Item, probs: np.ndarray, aux: Mapping[str, np.ndarray], used: list[str]) -> dict[str, Any]:
        return {
            "label": self.classes[int(np.argmax(probs))],
            "probabilities": {c: float(p) for c, p in zip(self.classes, probs)},
            "aux": aux_values(aux),
            "modalities": used,
            "transcript": item.transcript,
            "transcript_source": item.transcript_source,
            "duration_s": None if item.duration_s is None else round(float(item.duration_s), 4),
            "notes": list(dict.fromkeys([*item.notes, *self.model_notes])),
        }

    # -- small helpers --------------------------------------------------------------------------

    def _audio_rate(self) -> int:
        spec = self.specs.get("audio")
        return int((spec.preprocess if spec is not None else {}).get("target_rate", 16000))

    def _without_transcript_mode(self) -> str:
        if "audio" not in self.modalities:
            return "error: the model reads text only"
        return {
            "dual_routing": "audio-only: the audio router's mix of the audio experts",
            "mister_e": "audio-only: the speech expert",
        }.get(self.audio_only_mode or "", "empty transcript")


@dataclass
class _Features:
    feature_set: Any
    failure_of: dict[str, EmomixError]


# ---------------------------------------------------------------------------------------------
# The run folder
# ---------------------------------------------------------------------------------------------


def load_normalisers(
    card: Mapping[str, Any], checkpoint: Path, run_dir: Path | None, specs: Mapping[str, Any]
) -> dict[str, Any]:
    """The fitted speaker normalisers the model's features need (``normaliser-<modality>.json``
    at the run root, or next to the checkpoint)."""
    normalisers = {}
    for modality, spec in specs.items():
        if not spec.speaker_normalisation:
            continue
        places = ([run_dir] if run_dir is not None else []) + [checkpoint]
        # a declared utterance vector has its own statistics (normaliser-<modality>_pooled.json)
        for name in (modality, *([f"{modality}_pooled"] if getattr(spec, "utterance", None) is not None else [])):
            for place in places:
                path = Path(place) / f"normaliser-{name}.json"
                if path.is_file():
                    normalisers[name] = SpeakerNormaliser.load(path)
                    break
            else:
                raise MissingDataError(
                    f"the model's {modality} features are speaker-normalised but "
                    f"normaliser-{name}.json is in none of {', '.join(str(p) for p in places)}; load the "
                    "checkpoint from inside its run folder or copy the file next to model.json"
                )
    return normalisers


# ---------------------------------------------------------------------------------------------
# Plain functions
# ---------------------------------------------------------------------------------------------


def inference_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The utterance table of the predictor's own rows, equal to
    :func:`emomix.data.schema.make_table` on them (same columns, dtypes and values; a test checks).

    ``make_table`` normalises and validates every column of arbitrary records, which costs a few
    milliseconds per call even for one row: a large share of a prediction's fixed cost with cheap
    encoders. The predictor's rows need neither step (unique ids, every field a string, an integer
    turn or None, no spans), so they are written into copies of a one-row table ``make_table``
    made once. Each row must give ``utt_id``, ``corpus`` and ``speaker``.
    """
    template = _table_template()
    table = template.copy() if len(rows) == 1 else template.iloc[[0] * len(rows)].reset_index(drop=True)
    column = {name: index for index, name in enumerate(table.columns)}
    for position, row in enumerate(rows):
        for name, value in row.items():
            table.iat[position, column[name]] = value
    return table


@functools.cache
def _table_template() -> pd.DataFrame:
    return make_table([{"utt_id": "-", "corpus": "-", "speaker": "-"}])


def as_mono_float(array: np.ndarray) -> np.ndarray:
    """A float32 mono waveform from a 1-D array or a 2-D one (samples × channels, or channels ×
    samples when the first axis is short); integer samples are scaled to [-1, 1)."""
    if array.dtype.kind in "iu":
        info = np.iinfo(array.dtype)
        scale = float(-info.min) if info.min < 0 else float(info.max + 1) / 2.0
        array = (array.astype(np.float64) - (0 if info.min < 0 else scale)) / scale
    elif array.dtype.kind == "b" or array.dtype.kind not in "f":
        raise ConfigError(f"an audio array must hold numbers (float or integer samples), got dtype {array.dtype}")
    if array.ndim == 2 and array.shape[0] < array.shape[1] and array.shape[0] <= 8:
        array = array.T  # channels × samples
    if array.ndim > 2:
        raise ConfigError(f"an audio array must be 1-D or samples × channels, got shape {array.shape}")
    return np.ascontiguousarray(to_mono(array.astype(np.float32)))


def audio_only_prediction(
    mode: str, aux: Mapping[str, np.ndarray], model: Any
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Class probabilities from the audio side of a model alone, and the aux entries that still apply.

    ``dual_routing``: the audio router's weights on the audio local/global experts' own
    predictions (one expert for the single-scale ablations; the mean of both for ``concat``);
    ``mister_e``: the speech expert (its gate weight becomes 1).
    """

    def softmax(logits: np.ndarray) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64)
        e = np.exp(z - z.max())
        return e / e.sum()

    if mode == "mister_e":
        return softmax(aux["expert_logits_speech"]), {"gate_weights": np.array([1.0, 0.0, 0.0])}
    local, global_ = aux.get("expert_logits_audio_local"), aux.get("expert_logits_audio_global")
    kept = {k: v for k, v in aux.items() if "text" not in k}
    if local is not None and global_ is not None:
        route = aux.get("route_audio")
        weights = np.asarray(route, dtype=np.float64) if route is not None else np.array([0.5, 0.5])
        return weights[0] * softmax(local) + weights[1] * softmax(global_), kept
    expert = local if local is not None else global_
    if expert is None:
        raise ConfigError(f"the model's output holds no audio expert logits; audio-only prediction ({mode}) needs them")
    return softmax(expert), kept


def aux_values(aux: Mapping[str, np.ndarray]) -> dict[str, float | list[float | None] | None]:
    """Per-row aux arrays as JSON numbers: a scalar → float, a vector → list of floats (NaN → None)."""
    out: dict[str, float | list[float | None] | None] = {}
    for name in sorted(aux):
        if any(part in name for part in _AUX_SKIP) or name.startswith(_AUX_SKIP_PREFIX):
            continue
        value = np.asarray(aux[name], dtype=np.float64)
        if value.ndim == 0:
            out[name] = _clean_float(float(value))
        elif value.ndim == 1 and value.shape[0] <= MAX_AUX_WIDTH:
            out[name] = [_clean_float(float(v)) for v in value]
    return out


def describe_input(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-safe description of an item (for error slots): paths as given, arrays and bytes by size."""
    audio = raw.get("audio")
    if audio is None or isinstance(audio, str):
        described: Any = audio
    elif isinstance(audio, Path):
        described = str(audio)
    elif isinstance(audio, (bytes, bytearray, memoryview)):
        described = f"<{len(audio)} bytes>"
    elif hasattr(audio, "shape"):
        described = f"<array {tuple(np.shape(audio))} {getattr(audio, 'dtype', '')}>"
    else:
        described = f"<{type(audio).__name__}>"
    text = raw.get("text")
    return {
        "audio": described,
        "text": text if text is None or isinstance(text, str) else str(text),
        "speaker": None if raw.get("speaker") is None else str(raw.get("speaker")),
    }


def error_result(error: BaseException, raw: Any) -> dict[str, Any]:
    """The slot of a failed item in :meth:`Predictor.predict_many`'s list."""
    described = describe_input(raw) if isinstance(raw, Mapping) else {"audio": f"<{type(raw).__name__}>"}
    return {"error": str(error), "error_type": type(error).__name__, "input": described}


def _audio_only_mode(model: Any) -> str | None:
    """Which audio-only reading the model's design offers (None: it has no audio-only experts)."""
    modalities = set(model.config.modalities)
    if modalities != {"audio", "text"}:
        return None
    if isinstance(model, DualRoutingModel):
        return "dual_routing"
    if isinstance(model, MisterE):
        return "mister_e"
    return None


def _fallbacks(features: _Features) -> dict[str, set[str]]:
    if features.feature_set is None:
        return {}
    kinds: dict[str, set[str]] = {}
    for summary in features.feature_set.summaries.values():
        for kind, ids in (summary.get("fallbacks") or {}).items():
            kinds.setdefault(kind, set()).update(ids)
    return kinds


def _failure_error(failure: Mapping[str, str], items: Sequence[_Item]) -> EmomixError:
    item = next((i for i in items if i.utt_id == failure.get("utt_id")), None)
    kind = _FAILURE_TYPES.get(
        failure.get("reason", ""), AudioError if failure.get("modality") != "text" else ConfigError
    )
    name = _name(item) if item is not None else failure.get("utt_id", "input")
    return kind(f"{name}: {failure.get('reason')}: {failure.get('message')}")


def _name(item: _Item) -> str:
    audio = item.described.get("audio")
    return str(audio) if audio is not None else f"input {item.index}"


def _clean_float(value: float) -> float | None:
    return None if math.isnan(value) else value


class _Scratch:
    """A temporary folder made on first use (inputs given as paths need none) and removed after the batch."""

    def __init__(self) -> None:
        self._folder: tempfile.TemporaryDirectory[str] | None = None

    @property
    def path(self) -> Path:
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="emomix-predict-")
        return Path(self._folder.name)

    def cleanup(self) -> None:
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None


@contextmanager
def _scratch_dir() -> Iterator[_Scratch]:
    scratch = _Scratch()
    try:
        yield scratch
    finally:
        scratch.cleanup()
