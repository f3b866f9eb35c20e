"""Model inputs from an utterance table: the one feature path that training, evaluation and
inference share.

A recipe names, per modality, a :class:`FeatureSpec` (encoder, stored layers, preprocessing,
frame striding, speaker normalisation, top-layer fine-tuning). :func:`build_features` runs each
encoder through the feature store (:func:`emomix.cache.extract.extract_features`, so a second run
is pure cache hits), then post-processes the stored arrays the same way every time:

1. float32 states; with ``frame_stride > 1`` frames averaged in non-overlapping windows (a
   window is speech when at least half of its frames are);
2. with ``speaker_normalisation``, each utterance's states z-scored with its speaker's own
   statistics (:class:`~emomix.encoders.normalisation.SpeakerNormaliser`, labels never used;
   an unseen speaker at inference gets the pooled statistics). When speakers and labels are
   confounded (the fold plan's ``confounding`` is high) a speaker's mean *is* its label, so
   ``speaker_statistics: auto`` falls back to global statistics and says so in
   :attr:`FeatureSet.warnings`;
3. with ``trainable_top_layers = k``, the states entering the encoder's top ``k`` layers are
   stored instead (``boundary_layer``) and the trainer runs those layers
   (:meth:`forward_from_layer`) with their own learning rate;
4. optional token–frame alignment edges for the time-aligned graph, from the corpus's word
   timings mapped onto the tokenizer's tokens.

A modality may also declare an ``utterance`` encoder: its vector becomes the modality's
``pooled`` field (e.g. ComParE functionals beside the LLD frames, MiniLM's sentence vector beside
its tokens). It goes through the store under its own identity and is speaker-normalised with its
own statistics (``<modality>_pooled``). An encoder that reads files (``file``/``features:PATH``)
is copied into the store by ``utt_id`` instead of being run.

Utterances whose extraction fails are left out and listed in :attr:`FeatureSet.failures` (the
run's ``data.json`` reports them); nothing is silently dropped.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emomix.audio.alignment import as_word, words_to_frame_edges
from emomix.cache.extract import (
    ExtractSummary,
    PreprocessConfig,
    extract_features,
    keep_turn_tokens,
    namespace_for,
    turn_token_counts,
    with_text_context,
)
from emomix.cache.keys import encoder_part, feature_key
from emomix.constants import EDGES_KEY, MODALITIES
from emomix.data.dialogue import DialogueContext
from emomix.encoders.normalisation import SpeakerNormaliser
from emomix.encoders.registry import create_encoder
from emomix.errors import ConfigError, MissingDataError
from emomix.models.collate import EDGE_FIELD

MODALITY_NAMES = MODALITIES
#: How the ``utterance`` vector is read from its encoder's stored fields.
UTTERANCE_POOLS = ("auto", "pooled", "mean", "first", "sentence")
#: Which statistics ``speaker_normalisation`` z-scores with.
SPEAKER_STATISTICS = ("auto", "speaker", "global")
#: Files :func:`feature_block_from_text` reads an encoder spec from.
SPEC_FILE_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class FeatureSpec:
    """How one modality becomes model input (a recipe's ``features.<modality>`` block).

    ``encoder``: a :func:`~emomix.encoders.registry.create_encoder` spec (name or dict);
    ``layers``: hidden layers stored as ``layer_<k>`` (e.g. MiniLM's last four, ``[3, 4, 5, 6]``);
    ``preprocess``: :class:`~emomix.cache.extract.PreprocessConfig` fields (``vad``, ``vad_mode``...);
    ``frame_stride``: average frames in windows of this many (1 keeps the encoder's rate);
    ``speaker_normalisation``: z-score states per speaker; ``trainable_top_layers``: fine-tune the
    encoder's top ``k`` layers from stored boundary states (0 = frozen encoder);
    ``max_length``: frames/tokens kept per utterance (None = all); ``batch_size``: utterances per
    encoder call during extraction.
    ``utterance``: an optional second encoder spec whose vector becomes the modality's ``pooled``
    field, with an optional ``pool`` key (:data:`UTTERANCE_POOLS`: ``auto`` = the encoder's own
    ``pooled`` vector, else the mean of its states; ``mean``; ``first`` = the first token;
    ``sentence`` = the mean of all tokens, L2-normalised, as sentence-transformers pools MiniLM)
    and ``preprocess`` (default: the modality's, without a VAD mask, which only marks frames).
    ``speaker_statistics``: ``auto`` (per speaker, unless the fold plan finds speakers and labels
    confounded: then global, with a warning), ``speaker`` or ``global``.
    ``context`` (text only): ``{turns: k, speakers: true}`` gives the encoders each transcript
    followed by its ``k`` preceding turns of the dialogue, most recent first and separated by the
    tokenizer's separator (:mod:`emomix.data.dialogue`), and the store keys it as its own. Only the
    token encoder reads it: the ``utterance`` vector stays the utterance's own (a sentence vector
    of several turns is mostly context; on MELD it scored 0.470 weighted F1 alone, against 0.568).
    With ``pool: turn`` the tokens after the turn's own are marked special, so a model pooling the
    content tokens reads the turn alone and the context reaches it through the fine-tuned layers'
    attention (the stored states are the same).
    """

    modality: str
    encoder: Any
    layers: tuple[int, ...] = ()
    preprocess: dict[str, Any] = field(default_factory=dict)
    frame_stride: int = 1
    speaker_normalisation: bool = False
    trainable_top_layers: int = 0
    max_length: int | None = None
    batch_size: int = 8
    utterance: Any = None
    speaker_statistics: str = "auto"
    context: Any = None

    @classmethod
    def from_dict(cls, modality: str, values: Mapping[str, Any]) -> FeatureSpec:
        """Build from a recipe block; unknown keys are named with the nearest valid one."""
        if modality not in MODALITY_NAMES:
            raise ConfigError(f"features: unknown modality {modality!r}; choose from {', '.join(MODALITY_NAMES)}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"features.{modality} must be a mapping with at least 'encoder', got {values!r}")
        names = [f.name for f in dataclasses.fields(cls) if f.name != "modality"]
        unknown = [k for k in values if k not in names]
        if unknown:
            hints = [
                f"{k!r}"
                + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(k, names, n=1)) else "")
                for k in unknown
            ]
            raise ConfigError(
                f"features.{modality}: unknown key(s) {', '.join(hints)}; valid keys: {', '.join(sorted(names))}"
            )
        if "encoder" not in values:
            raise ConfigError(f"features.{modality} needs an 'encoder' (e.g. 'opensmile:eGeMAPSv02' or 'minilm')")
        data = dict(values)
        data["layers"] = tuple(int(k) for k in data.get("layers") or ())
        data["preprocess"] = dict(data.get("preprocess") or {})
        spec = cls(modality=modality, **data)
        spec.validate()
        return spec

    def validate(self) -> None:
        if int(self.frame_stride) < 1:
            raise ConfigError(f"features.{self.modality}.frame_stride must be at least 1, got {self.frame_stride}")
        if int(self.trainable_top_layers) < 0:
            raise ConfigError(
                f"features.{self.modality}.trainable_top_layers must be 0 or more, got {self.trainable_top_layers}"
            )
        if self.max_length is not None and int(self.max_length) < 1:
            raise ConfigError(f"features.{self.modality}.max_length must be at least 1 or null, got {self.max_length}")
        if int(self.batch_size) < 1:
            raise ConfigError(f"features.{self.modality}.batch_size must be at least 1, got {self.batch_size}")
        if self.speaker_statistics not in SPEAKER_STATISTICS:
            raise ConfigError(
                f"features.{self.modality}.speaker_statistics must be one of "
                f"{', '.join(SPEAKER_STATISTICS)}, got {self.speaker_statistics!r}"
            )
        if self.utterance is not None:
            self.utterance_encoder_spec()
            PreprocessConfig.from_dict(self.utterance_preprocess())
        if self.trainable_top_layers and self.frame_stride > 1:
            raise ConfigError(
                f"features.{self.modality}: frame_stride cannot be combined with trainable_top_layers "
                "(the encoder's top layers need its own frame rate)"
            )
        if self.trainable_top_layers and self.speaker_normalisation:
            raise ConfigError(
                f"features.{self.modality}: speaker_normalisation cannot be combined with "
                "trainable_top_layers (it would change the encoder's internal states)"
            )
        PreprocessConfig.from_dict(self.preprocess)  # names a bad preprocess key now, not hours later
        if self.context is not None and self.modality != "text":
            raise ConfigError(
                f"features.{self.modality}.context: dialogue context goes into transcripts; set it under features.text"
            )
        self.dialogue_context()

    def dialogue_context(self) -> DialogueContext | None:
        """The ``context`` block parsed (None without one)."""
        try:
            return DialogueContext.from_dict(self.context)
        except ConfigError as exc:
            raise ConfigError(f"features.{self.modality}.{exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["layers"] = list(self.layers)
        del data["modality"]
        return data

    def boundary_layer(self, encoder: Any) -> int | None:
        """The stored boundary layer ``trainable_top_layers`` asks of ``encoder`` (None when frozen)."""
        if not self.trainable_top_layers:
            return None
        count = int(getattr(encoder, "num_layers", 0) or 0)
        if self.trainable_top_layers > count:
            raise ConfigError(
                f"features.{self.modality}.trainable_top_layers={self.trainable_top_layers} but the encoder "
                f"has {count} layers"
            )
        return count - int(self.trainable_top_layers)

    def extractions(self, encoder: Any) -> list[dict[str, Any]]:
        """What :func:`build_features` puts in the store for this spec, as plain data: one dict per
        encoder run (``role`` ``<modality>`` or ``<modality>_pooled``, ``encoder`` spec,
        ``preprocess``, ``layers``, ``boundary_layer``, ``batch_size``, ``context``). ``emomix extract`` runs
        these, so its entries are the ones a training run with this spec looks up."""
        runs = [
            {
                "role": self.modality,
                "encoder": self.encoder,
                "preprocess": dict(self.preprocess),
                "layers": list(self.layers),
                "boundary_layer": self.boundary_layer(encoder),
                "batch_size": int(self.batch_size),
                "context": self.context,
            }
        ]
        if self.utterance is not None:
            runs.append(
                {
                    "role": f"{self.modality}_pooled",
                    "encoder": self.utterance_encoder_spec(),
                    "preprocess": self.utterance_preprocess(),
                    "layers": [],
                    "boundary_layer": None,
                    "batch_size": int(self.batch_size),
                    "context": None,
                }
            )
        return runs

    # -- the utterance vector ---------------------------------------------------------------------

    def _utterance_block(self) -> dict[str, Any]:
        block = self.utterance
        if isinstance(block, str):
            return {"name": block}
        if not isinstance(block, Mapping):
            raise ConfigError(
                f"features.{self.modality}.utterance must be an encoder name or a mapping with 'name' "
                f"(e.g. {{name: opensmile:ComParE_2016, level: functionals}}), got {block!r}"
            )
        return dict(block)

    def utterance_encoder_spec(self) -> Any:
        """The ``utterance`` block without its ``pool``/``preprocess`` keys: an encoder spec."""
        block = self._utterance_block()
        pool = block.get("pool", "auto")
        if pool not in UTTERANCE_POOLS:
            raise ConfigError(
                f"features.{self.modality}.utterance.pool must be one of {', '.join(UTTERANCE_POOLS)}, got {pool!r}"
            )
        spec = {k: v for k, v in block.items() if k not in ("pool", "preprocess")}
        if "join" not in spec and "name" not in spec:
            raise ConfigError(
                f"features.{self.modality}.utterance needs a 'name' (an encoder, e.g. "
                "opensmile:ComParE_2016 with level: functionals)"
            )
        return spec if set(spec) != {"name"} else spec["name"]

    def utterance_pool(self) -> str:
        return str(self._utterance_block().get("pool", "auto"))

    def utterance_preprocess(self) -> dict[str, Any]:
        """The utterance encoder's preprocessing: its own block, else the modality's without a VAD
        mask (a mask marks frames; an utterance vector has none — trimming is kept)."""
        block = self._utterance_block()
        if "preprocess" in block:
            return dict(block["preprocess"] or {})
        preprocess = dict(self.preprocess)
        if preprocess.get("vad") and preprocess.get("vad_mode", "mask") == "mask":
            for key in ("vad", "vad_options", "vad_mode"):
                preprocess.pop(key, None)
        return preprocess


@dataclass
class FeatureSet:
    """Model inputs for a table's utterances.

    ``features``: ``{utt_id: {modality: {field: array}, "edges": {"token_frame": 2 × E}}}`` in the
    layout the collators of :mod:`emomix.models.collate` take; ``frame_rates`` per modality (after
    striding; None for tokens); ``layers``: per modality, the stored layers stacked into
    ``layer_states``; ``input_dims``: per modality its width (and ``<modality>_pooled`` when an
    utterance-level vector is stored); ``normalisers``: the fitted speaker normalisers;
    ``boundary``: per fine-tuned modality, ``(encoder, boundary_layer)``; ``failures``: utterances
    left out, with the reason; ``summaries``: what each extraction did (``<modality>_pooled`` for
    an utterance encoder); ``statistics``: per normalised input (``audio``, ``audio_pooled``...)
    ``speaker`` or ``global``; ``warnings``: sentences a run logs and records (a fallback to
    global statistics).
    """

    features: dict[str, dict[str, dict[str, np.ndarray]]]
    specs: dict[str, FeatureSpec]
    frame_rates: dict[str, float | None]
    layers: dict[str, list[int]]
    input_dims: dict[str, int]
    normalisers: dict[str, Any] = field(default_factory=dict)
    boundary: dict[str, tuple[Any, int]] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    statistics: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def utt_ids(self) -> list[str]:
        return list(self.features)


def parse_feature_specs(block: Mapping[str, Any] | None) -> dict[str, FeatureSpec]:
    """Per-modality specs from a recipe's ``features`` block (``store`` and ``edges`` are not modalities)."""
    block = dict(block or {})
    specs = {
        name: FeatureSpec.from_dict(name, values) for name, values in block.items() if name not in ("store", "edges")
    }
    if not specs:
        raise ConfigError("features: name at least one modality, e.g. audio: {encoder: 'opensmile:eGeMAPSv02'}")
    return specs


def feature_block_from_text(text: str) -> dict[str, Any]:
    """A ``features.<modality>`` block from an encoder spec written on the command line.

    ``text`` is an encoder name (``mfcc``, ``opensmile:ComParE_2016@functionals`` — ``@level`` is
    shorthand for the ``level`` option, see :func:`~emomix.encoders.registry.create_encoder`), a
    JSON object, or the path of a ``.yaml``/``.yml``/``.json`` file holding one. The object is
    either an encoder spec (``{name: opensmile:ComParE_2016, level: functionals}``) or a whole
    recipe modality block (``{encoder: ..., preprocess: ..., layers: ..., utterance: ...}``); the
    result always has the block's form, for :meth:`FeatureSpec.from_dict` to validate.
    """
    text = text.strip()
    if not text:
        raise ConfigError("the encoder spec is empty; give a name such as mfcc or opensmile:eGeMAPSv02")
    value: Any = text
    source = "the encoder spec"
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"the encoder spec is not valid JSON ({exc.msg} at character {exc.pos})") from None
    elif Path(text).suffix.lower() in SPEC_FILE_SUFFIXES:
        import yaml

        from emomix.errors import yaml_problem
        from emomix.yamlio import load_yaml

        path = Path(text).expanduser()
        source = f"encoder spec file {path}"
        if not path.is_file():
            raise ConfigError(f"{source} does not exist")
        try:
            value = load_yaml(path.read_text())  # YAML reads JSON too
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: {yaml_problem(exc)}") from None
    if isinstance(value, str) and value.strip():
        return {"encoder": value.strip()}
    if isinstance(value, Mapping):
        if "encoder" in value:
            return dict(value)
        if "name" in value or "join" in value:
            return {"encoder": dict(value)}
        raise ConfigError(
            f"{source} needs 'name' (an encoder: {{name: opensmile:ComParE_2016, level: functionals}}) or "
            f"'encoder' (a recipe's features.<modality> block); got keys {sorted(map(str, value))}"
        )
    raise ConfigError(f"{source} must be an encoder name or a mapping, got {type(value).__name__}")


def build_features(
    table: pd.DataFrame,
    specs: Mapping[str, FeatureSpec],
    store: Any,
    base_dir: str | Path | None = None,
    edges: bool = False,
    normalisers: Mapping[str, Any] | None = None,
    encoders: Mapping[str, Any] | None = None,
    progress: bool = True,
    fit_ids: Sequence[str] | None = None,
    confounding: Mapping[str, Any] | None = None,
) -> FeatureSet:
    """Extract (or reuse) every spec's features for ``table`` and post-process them (see module doc).

    ``normalisers``: already fitted speaker normalisers per modality (inference; ``<modality>_pooled``
    for an utterance vector); without them they are fitted on ``table`` (all of each speaker's
    utterances, labels unused).
    ``encoders``: already built encoders per modality (inference reuses its loaded models).
    ``fit_ids``: the utterances speaker statistics are fitted on (default: all; augmented copies
    are left out by the trainer).
    ``confounding``: the fold plan's speaker–label confounding
    (:func:`emomix.data.protocols.plan_confounding`); when ``high``, ``speaker_statistics: auto``
    falls back to global statistics.
    """
    if table.empty:
        raise ConfigError("the table has no utterances to extract features for")
    features: dict[str, dict[str, dict[str, np.ndarray]]] = {u: {} for u in table["utt_id"]}
    result = FeatureSet(features=features, specs=dict(specs), frame_rates={}, layers={}, input_dims={})
    failed: dict[str, dict[str, str]] = {}
    built_encoders: dict[str, Any] = {}
    pooled_ids: dict[str, dict[str, np.ndarray]] = {}
    for modality, spec in specs.items():
        encoder = (encoders or {}).get(modality) or create_encoder(spec.encoder)
        built_encoders[modality] = encoder
        _adopt_modality(encoder, modality)
        if getattr(encoder, "modality", modality) != modality:
            raise ConfigError(f"features.{modality}: encoder {spec.encoder!r} takes {encoder.modality}, not {modality}")
        boundary = spec.boundary_layer(encoder)
        context = spec.dialogue_context()
        inputs = with_text_context(table, context, encoder)  # the table itself without context
        arrays, summary = _stored_arrays(
            inputs, encoder, store, spec.preprocess, spec.batch_size, spec.layers, boundary, base_dir, progress
        )
        result.summaries[modality] = summary.to_dict()
        for failure in summary.failures:
            failed.setdefault(failure["utt_id"], {**failure, "modality": modality})
        turn_tokens = turn_token_counts(inputs, encoder) if context is not None and context.pool == "turn" else {}
        for utt_id, fields in arrays.items():
            if utt_id not in features:
                continue
            if boundary is not None:
                fields["states"] = fields[f"layer_{boundary}"]
            if utt_id in turn_tokens and "special_tokens" in fields:  # pool the turn's own tokens only
                fields = keep_turn_tokens(fields, turn_tokens[utt_id])
            features[utt_id][modality] = postprocess_fields(fields, spec.frame_stride)
        frame_rate = getattr(encoder, "frame_rate", None)
        result.frame_rates[modality] = None if frame_rate is None else float(frame_rate) / spec.frame_stride
        if spec.layers and boundary is None:
            result.layers[modality] = list(spec.layers)
        if boundary is not None:
            encoder.freeze(spec.trainable_top_layers)
            result.boundary[modality] = (encoder, boundary)
        if spec.utterance is not None:
            key = f"{modality}_pooled"
            utterance_encoder = (encoders or {}).get(key) or _utterance_encoder(spec, encoder)
            _adopt_modality(utterance_encoder, modality)
            if getattr(utterance_encoder, "modality", modality) != modality:
                raise ConfigError(
                    f"features.{modality}.utterance: encoder {spec.utterance!r} takes "
                    f"{utterance_encoder.modality}, not {modality}"
                )
            built_encoders[key] = utterance_encoder
            vectors, summary = _stored_arrays(
                table,  # the utterance's own transcript: the context is the token view's
                utterance_encoder,
                store,
                spec.utterance_preprocess(),
                spec.batch_size,
                (),
                None,
                base_dir,
                progress,
            )
            result.summaries[key] = summary.to_dict()
            for failure in summary.failures:
                failed.setdefault(failure["utt_id"], {**failure, "modality": key})
            pooled_ids[modality] = {
                u: utterance_vector_of(fields, spec.utterance_pool(), f"{u}/{key}")
                for u, fields in vectors.items()
                if u in features
            }
    for modality, pooled in pooled_ids.items():
        for utt_id, vector in pooled.items():
            if modality in features[utt_id]:
                features[utt_id][modality]["pooled"] = vector
    for utt_id in list(features):
        incomplete = any(m not in features[utt_id] for m in specs) or any(
            "pooled" not in features[utt_id][m] for m in pooled_ids if m in features[utt_id]
        )
        if utt_id in failed or incomplete:
            failed.setdefault(utt_id, {"utt_id": utt_id, "reason": "missing features", "message": "no stored features"})
            del features[utt_id]
    result.failures = sorted(failed.values(), key=lambda f: f["utt_id"])
    if not features:
        raise MissingDataError(
            f"feature extraction failed for every utterance ({len(failed)}); first failure: "
            f"{result.failures[0] if result.failures else 'unknown'}"
        )
    kept = table[table["utt_id"].isin(features)]
    fit_table = kept[kept["utt_id"].isin(set(fit_ids))] if fit_ids is not None else None
    for modality, spec in specs.items():
        if not spec.speaker_normalisation:
            continue
        statistics = resolve_speaker_statistics(spec, confounding)
        if spec.speaker_statistics == "auto" and statistics == "global" and not normalisers:
            result.warnings.append(
                f"features.{modality}: speakers and labels are confounded in the training parts "
                f"({_confounding_figures(confounding)}), so per-speaker z-scores would erase the label; "
                "normalising with global statistics instead (set speaker_statistics: speaker to force per-speaker)"
            )
        for key, field_name in ((modality, "states"), (f"{modality}_pooled", "pooled")):
            if field_name == "pooled" and spec.utterance is None:
                continue  # an encoder's own pooled vector stays as it was (old recipes unchanged)
            normaliser = (normalisers or {}).get(key)
            if normaliser is None:
                normaliser = fit_speaker_normaliser(
                    features, fit_table if fit_table is not None else kept, modality, field_name
                )
                if statistics == "global":
                    normaliser = global_only(normaliser)
            result.normalisers[key] = normalise_per_speaker(features, kept, modality, normaliser, field_name)
            result.statistics[key] = "global" if not normaliser.mean else "speaker"
    if edges:
        if "text" not in specs or "audio" not in specs:
            raise ConfigError("features.edges needs both audio and text features")
        add_token_frame_edges(features, kept, built_encoders["text"], result.frame_rates["audio"])
    first = features[next(iter(features))]
    for modality in specs:
        result.input_dims[modality] = int(first[modality]["states"].shape[-1])
        if "pooled" in first[modality]:
            result.input_dims[f"{modality}_pooled"] = int(np.asarray(first[modality]["pooled"]).reshape(-1).shape[0])
    return result


def resolve_speaker_statistics(spec: FeatureSpec, confounding: Mapping[str, Any] | None) -> str:
    """``speaker`` or ``global`` for a speaker-normalised spec (``auto`` → global when confounded)."""
    if spec.speaker_statistics != "auto":
        return spec.speaker_statistics
    return "global" if confounding is not None and confounding.get("high") else "speaker"


def global_only(normaliser: Any) -> Any:
    """The normaliser with its per-speaker statistics dropped: every speaker gets the global ones."""
    normaliser.mean, normaliser.std, normaliser.count = {}, {}, {}
    return normaliser


def _confounding_figures(confounding: Mapping[str, Any] | None) -> str:
    worst = dict((confounding or {}).get("max") or {})
    return (
        f"Cramér's V {float(worst.get('cramers_v', 0)):.2f}, "
        f"{100 * float(worst.get('dominated_share', 0)):.0f} % of speakers mostly one label"
    )


def _adopt_modality(encoder: Any, modality: str) -> None:
    """A file encoder without a declared modality takes the block's (``features.<modality>``)."""
    if getattr(encoder, "reads_files", False) and not getattr(encoder, "modality_given", True):
        encoder.modality = modality


_UTTERANCE_ENCODERS: dict[str, Any] = {}


def _utterance_encoder(spec: FeatureSpec, frame_encoder: Any) -> Any:
    """The utterance encoder: the frame encoder itself when the specs are equal, else built once
    per process (the predictor calls :func:`build_features` per request)."""
    encoder_spec = spec.utterance_encoder_spec()
    if encoder_spec == spec.encoder:
        return frame_encoder
    key = json.dumps(encoder_spec, sort_keys=True, default=str)
    if key not in _UTTERANCE_ENCODERS:
        _UTTERANCE_ENCODERS[key] = create_encoder(encoder_spec)
    return _UTTERANCE_ENCODERS[key]


def _stored_arrays(
    table: pd.DataFrame,
    encoder: Any,
    store: Any,
    preprocess: Mapping[str, Any],
    batch_size: int,
    layers: Sequence[int],
    boundary: int | None,
    base_dir: str | Path | None,
    progress: bool,
) -> tuple[dict[str, dict[str, np.ndarray]], ExtractSummary]:
    """Every utterance's stored fields for one encoder (extracted, or copied from a feature file)."""
    if getattr(encoder, "reads_files", False):
        summary = store_file_features(table, encoder, store)
    else:
        summary = extract_features(
            table,
            encoder,
            store,
            preprocess=PreprocessConfig.from_dict(preprocess),
            batch_size=batch_size,
            layers=layers,
            boundary_layer=boundary,
            base_dir=base_dir,
            progress=progress,
        )
    keys = dict(summary.keys)
    arrays = store.get_many(list(keys.values()))
    return {u: {name: np.asarray(value) for name, value in arrays[k].items()} for u, k in keys.items()}, summary


def store_file_features(table: pd.DataFrame, encoder: Any, store: Any) -> ExtractSummary:
    """Copy a feature file's arrays for the table's utterances into the store (a
    :class:`~emomix.encoders.file_features.FileFeatureEncoder`); keys are the file's content hash,
    the utterance id and the storage dtype, so a second run is pure cache hits."""
    started = time.perf_counter()
    namespace = namespace_for(encoder)
    summary = ExtractSummary(namespace=namespace, store=str(store.root), total=len(table))
    part = encoder_part(encoder.identity(), (), store.dtype)
    ids = [str(u) for u in table["utt_id"]]
    keys = {u: feature_key({"utt_id": u}, part, {}) for u in ids}
    missing = set(store.missing(keys.values()))
    todo = [u for u in ids if keys[u] in missing]
    summary.cached = len(ids) - len(todo)
    if todo:
        store.acquire_writer()
        read = encoder.read(todo)
        description = {
            "class": type(encoder).__name__,
            "identity": encoder.identity(),
            "config": encoder.config(),
            "modality": encoder.modality,
            "frame_rate": encoder.frame_rate,
            "output_size": encoder.output_size,
            "num_layers": 0,
        }
        summary.entries_written = store.put_many(
            {keys[u]: read[u] for u in todo}, namespace=namespace, description=description
        )
        summary.shards_written = 1
        summary.computed = len(todo)
    summary.keys = keys
    summary.bytes_on_disk = int(store.stats().get("bytes", 0))
    summary.wall_seconds = time.perf_counter() - started
    return summary


def utterance_vector_of(fields: Mapping[str, np.ndarray], pool: str = "auto", name: str = "utterance") -> np.ndarray:
    """One float32 vector from an utterance encoder's stored fields (see :data:`UTTERANCE_POOLS`)."""
    pooled = fields.get("pooled")
    if pool in ("auto", "pooled") and pooled is not None:
        vector = np.asarray(pooled, dtype=np.float32)
        return vector.mean(axis=0) if vector.ndim > 1 else vector  # chunked audio: one row per chunk
    if pool == "pooled":
        raise MissingDataError(f"{name}: the utterance encoder stores no 'pooled' vector; use pool: mean or auto")
    states = np.asarray(fields["states"], dtype=np.float32)
    if states.ndim != 2 or states.shape[0] == 0:
        raise MissingDataError(f"{name} has states of shape {states.shape}; expected T × D with T ≥ 1")
    if pool == "first":
        return states[0]
    vector = states.mean(axis=0)
    if pool == "sentence":
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
    return vector.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Plain functions on arrays
# ---------------------------------------------------------------------------------------------


def postprocess_fields(fields: Mapping[str, np.ndarray], frame_stride: int = 1) -> dict[str, np.ndarray]:
    """float32 states/layers (float16 stores come back as float32) and frame striding."""
    out = {}
    for name, value in fields.items():
        array = np.asarray(value)
        if name == "states" or name.startswith("layer_") or name == "pooled":
            array = array.astype(np.float32)
        out[name] = array
    if "pooled" in out and out["pooled"].ndim > 1:
        # chunked audio stores one pooled row per chunk: the utterance's vector is their mean
        out["pooled"] = out["pooled"].mean(axis=0)
    return downsample_frames(out, frame_stride)


def downsample_frames(fields: Mapping[str, np.ndarray], stride: int) -> dict[str, np.ndarray]:
    """Average ``states`` over non-overlapping windows of ``stride`` frames (the last window may be
    shorter); a window's ``speech_mask`` is on when at least half of its frames are speech."""
    out = dict(fields)
    states = np.asarray(fields["states"], dtype=np.float32)
    if stride <= 1 or len(states) == 0:
        out["states"] = states
        return out
    starts = np.arange(0, len(states), stride)
    widths = np.diff(np.append(starts, len(states)))
    out["states"] = (np.add.reduceat(states, starts, axis=0) / widths[:, None]).astype(np.float32)
    if "speech_mask" in fields:
        speech = np.asarray(fields["speech_mask"], dtype=np.float32)
        out["speech_mask"] = ((np.add.reduceat(speech, starts) / widths) >= 0.5).astype(np.uint8)
    return out


def fit_speaker_normaliser(
    features: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
    table: pd.DataFrame,
    modality: str,
    field_name: str = "states",
) -> Any:
    """A :class:`SpeakerNormaliser` fitted on the ``field_name`` arrays (``states`` or ``pooled``)
    of the table's utterances (labels unused)."""
    if "speaker" not in table.columns or table["speaker"].isna().any():
        raise ConfigError(f"features.{modality}.speaker_normalisation needs a speaker for every utterance")
    ids = [u for u in table["utt_id"] if u in features]
    return SpeakerNormaliser().fit(
        {u: features[u][modality][field_name] for u in ids}, table[table["utt_id"].isin(set(ids))]
    )


def normalise_per_speaker(
    features: dict[str, dict[str, dict[str, np.ndarray]]],
    table: pd.DataFrame,
    modality: str,
    normaliser: Any = None,
    field_name: str = "states",
) -> Any:
    """Z-score every utterance's ``field_name`` (``states`` or ``pooled``) of ``modality`` with its
    speaker's statistics, in place.

    Fits a :class:`SpeakerNormaliser` on the table's utterances when none is given; returns it.
    """
    ids = [u for u in table["utt_id"] if u in features]
    if normaliser is None:
        normaliser = fit_speaker_normaliser(features, table, modality, field_name)
    speakers = dict(zip(table["utt_id"], table["speaker"])) if "speaker" in table.columns else {}
    for utt_id in ids:
        speaker = speakers.get(utt_id)
        speaker = None if speaker is None or (isinstance(speaker, float) and np.isnan(speaker)) else str(speaker)
        features[utt_id][modality][field_name] = normaliser.transform(features[utt_id][modality][field_name], speaker)
    return normaliser


def add_token_frame_edges(
    features: dict[str, dict[str, dict[str, np.ndarray]]],
    table: pd.DataFrame,
    text_encoder: Any,
    frame_rate: float | None,
) -> None:
    """Token–frame edges for every utterance with word timings (see :func:`token_frame_edges`)."""
    if not frame_rate:
        raise ConfigError("token–frame edges need an audio encoder with frames (a frame rate)")
    tokenizer = getattr(text_encoder, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError("token–frame edges need a text encoder with a tokenizer")
    for row in table.itertuples(index=False):
        if row.utt_id not in features:
            continue
        fields = features[row.utt_id]
        fields[EDGES_KEY] = {
            EDGE_FIELD: token_frame_edges(
                row.text or "",
                row.words,
                tokenizer,
                frame_rate,
                fields["audio"]["states"].shape[0],
                expected_tokens=fields["text"]["states"].shape[0],
                name=row.utt_id,
                max_length=int(getattr(text_encoder, "max_length", 128) or 128),
            )
        }


def token_frame_edges(
    text: str,
    words: Any,
    tokenizer: Any,
    frame_rate: float,
    num_frames: int,
    expected_tokens: int | None = None,
    name: str = "utterance",
    max_length: int = 128,
) -> np.ndarray:
    """``2 × E`` (token index, frame index) edges: word-level edges mapped onto the tokenizer's tokens.

    Every sub-word token of a word gets that word's frames; special tokens get none. An utterance
    without word timings gets no edges (the graph models then fall back as documented).
    """
    words = [as_word(w) for w in (list(words) if words is not None else [])]
    if not words:
        return np.zeros((2, 0), dtype=np.int64)
    text = text.strip()
    if [w.token for w in words] != text.split():
        raise ConfigError(
            f"{name}: the word timings {[w.token for w in words][:8]} do not spell the transcript {text[:60]!r}"
        )
    encoding = tokenizer(text, truncation=True, max_length=max_length)
    word_ids = encoding.word_ids()
    if expected_tokens is not None and len(word_ids) != expected_tokens:
        raise ConfigError(
            f"{name}: the tokenizer gives {len(word_ids)} tokens, the stored text states {expected_tokens}"
        )
    word_edges = words_to_frame_edges(words, frame_rate, num_frames, nearest_if_empty=True)
    tokens_of_word: dict[int, list[int]] = {}
    for token_index, word_index in enumerate(word_ids):
        if word_index is not None and word_index < len(words):
            tokens_of_word.setdefault(word_index, []).append(token_index)
    pairs = [(t, int(f)) for w, f in word_edges.T for t in tokens_of_word.get(int(w), [])]
    if not pairs:
        return np.zeros((2, 0), dtype=np.int64)
    return np.array(sorted(pairs), dtype=np.int64).T
