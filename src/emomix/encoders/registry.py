"""Encoders by name: ``create_encoder("opensmile:eGeMAPSv02")``, ``list_encoders()``.

A spec is a name or a dict ``{"name": ..., **options}`` (as a recipe YAML writes it); options go
to the encoder's constructor and an option it does not take is a :class:`ConfigError` naming it.
``name@level`` is shorthand for ``{"name": name, "level": level}`` (``opensmile:ComParE_2016@functionals``).

Names: the fixed ones registered below (``mfcc``, ``minilm``, ``wavlm-base`` …) and the
parametrised ``opensmile:<feature set>``, ``text:<hub name or folder>`` and
``speech:<hub name or folder>``; ``file`` (``{name: file, path: feats.npz, frame_rate: 100}``) or
``features:<path>`` reads pre-extracted features by ``utt_id`` (:mod:`emomix.encoders.file_features`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from emomix.encoders.base import Encoder
from emomix.errors import ConfigError

_REGISTRY: dict[str, Callable[..., Encoder]] = {}
_PREFIXES: dict[str, Callable[..., Encoder]] = {}

# Hub names behind the short names; loading them needs the hub or a cache that holds them.
HUB_SPEECH_MODELS = {
    "wavlm-base": "microsoft/wavlm-base",
    "wavlm-base-plus": "microsoft/wavlm-base-plus",
    "hubert-base": "facebook/hubert-base-ls960",
    "wav2vec2-base": "facebook/wav2vec2-base",
}
HUB_TEXT_MODELS = {
    "roberta-base": "FacebookAI/roberta-base",
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "electra-base": "google/electra-base-discriminator",
    "all-mpnet-base-v2": "sentence-transformers/all-mpnet-base-v2",
}


def register_encoder(name: str) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    """Decorator registering a factory under ``name``; a name ending in ``:`` takes a parameter."""

    def decorator(factory: Callable[..., Encoder]) -> Callable[..., Encoder]:
        table = _PREFIXES if name.endswith(":") else _REGISTRY
        key = name[:-1] if name.endswith(":") else name
        if key in table:
            raise ValueError(f"encoder name '{name}' is registered twice")
        table[key] = factory
        return factory

    return decorator


def list_encoders() -> list[str]:
    """Every name :func:`create_encoder` accepts (parametrised ones shown with a placeholder)."""
    from emomix.encoders.opensmile_encoder import FEATURE_SETS

    names = set(_REGISTRY)
    names.update(f"opensmile:{feature_set}" for feature_set in FEATURE_SETS)
    names.update({"text:<hub name or folder>", "speech:<hub name or folder>", "features:<file>"})
    return sorted(names)


def create_encoder(spec: str | Mapping[str, Any]) -> Encoder:
    """Build an encoder from a name or a ``{"name": ..., **options}`` dict."""
    if isinstance(spec, Mapping) and "join" in spec:
        from emomix.encoders.joined import JoinedEncoder

        if set(spec) != {"join"} or not isinstance(spec["join"], (list, tuple)):
            raise ConfigError(f"a joined encoder spec is {{join: [spec, spec, ...]}}, got keys {sorted(spec)}")
        return JoinedEncoder([create_encoder(part) for part in spec["join"]])
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, Mapping):
        if "name" not in spec:
            raise ConfigError(f"an encoder spec needs a 'name' key, got keys {sorted(spec)}")
        name, options = str(spec["name"]), {k: v for k, v in spec.items() if k != "name"}
    else:
        raise ConfigError(f"an encoder spec is a name or a dict with 'name', got {type(spec).__name__}")
    name, options = split_level(name, options)

    if name in _REGISTRY:
        return _call(_REGISTRY[name], name, options)
    prefix, separator, argument = name.partition(":")
    if separator and prefix in _PREFIXES and argument:
        return _call(_PREFIXES[prefix], name, options, argument)
    raise ConfigError(f"unknown encoder '{name}'; known encoders: {', '.join(list_encoders())}")


def split_level(name: str, options: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """``"opensmile:ComParE_2016@functionals"`` -> ``("opensmile:ComParE_2016", {"level": "functionals"})``.

    ``name@level`` is shorthand for the ``level`` option; a name whose ``@`` is part of an
    existing path (``speech:./models/wavlm@v2``) or is not followed by a plain word is left alone.
    """
    options = dict(options or {})
    base, at, level = name.rpartition("@")
    if not at or not base or not _LEVEL_RE.match(level) or Path(name.partition(":")[2] or name).exists():
        return name, options
    if "level" in options and options["level"] != level:
        raise ConfigError(f"encoder {name!r} gives level {level!r} and the spec also sets level {options['level']!r}")
    options["level"] = level
    return base, options


_LEVEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _call(factory: Callable[..., Encoder], name: str, options: dict[str, Any], *arguments: Any) -> Encoder:
    parameters = inspect.signature(factory).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    positional = [p for p in list(parameters)[len(arguments) :] if not p.startswith("_")]
    unknown = [key for key in options if key not in positional] if not accepts_any else []
    if unknown:
        allowed = [p for p in positional if parameters[p].kind is not inspect.Parameter.VAR_POSITIONAL]
        raise ConfigError(
            f"encoder '{name}' has no option {', '.join(repr(k) for k in unknown)}; "
            f"its options are {', '.join(allowed) or 'none'}"
        )
    return factory(*arguments, **options)


# --------------------------------------------------------------------------------------------
# Registered encoders
# --------------------------------------------------------------------------------------------


@register_encoder("opensmile:")
def _opensmile(feature_set: str, level: str = "lld") -> Encoder:
    from emomix.encoders.opensmile_encoder import OpenSmileEncoder

    return OpenSmileEncoder(feature_set=feature_set, level=level)


@register_encoder("file")
def _file(
    path: str,
    frame_rate: Any = "utterance",
    modality: str | None = None,
    column: str | None = None,
    group: str | None = None,
) -> Encoder:
    from emomix.encoders.file_features import FileFeatureEncoder

    return FileFeatureEncoder(path, frame_rate=frame_rate, modality=modality, column=column, group=group)


@register_encoder("features:")
def _features_file(
    path: str,
    frame_rate: Any = "utterance",
    modality: str | None = None,
    column: str | None = None,
    group: str | None = None,
) -> Encoder:
    return _file(path, frame_rate=frame_rate, modality=modality, column=column, group=group)


@register_encoder("mfcc")
def _mfcc(n_mfcc: int = 40, pad_seconds: float | None = None, n_mels: int | None = None) -> Encoder:
    from emomix.encoders.mfcc import MFCCEncoder

    return MFCCEncoder(n_mfcc=n_mfcc, pad_seconds=pad_seconds, n_mels=n_mels)


@register_encoder("resemblyzer")
def _resemblyzer(rate: float = 1.3, min_coverage: float = 0.75) -> Encoder:
    from emomix.encoders.voice import VoiceEmbeddingEncoder

    return VoiceEmbeddingEncoder(rate=rate, min_coverage=min_coverage)


@register_encoder("face-cnn")
def _face_cnn(
    out_dim: int = 128, crop_size: int = 64, channels: tuple[int, ...] = (16, 32, 64), frame_rate: float | None = None
) -> Encoder:
    from emomix.encoders.video import FaceCropEncoder

    return FaceCropEncoder(out_dim=out_dim, crop_size=crop_size, channels=channels, frame_rate=frame_rate)


@register_encoder("faces")
def _faces(
    size: int = 64,
    num_frames: int = 150,
    pad: bool = False,
    frame_step: int = 1,
    detector: str = "haar",
    detection_width: int = 320,
    min_face_fraction: float = 0.1,
    detect_every: int = 1,
) -> Encoder:
    from emomix.encoders.video import FaceStackEncoder

    return FaceStackEncoder(
        size=size,
        num_frames=num_frames,
        pad=pad,
        frame_step=frame_step,
        detector=detector,
        detection_width=detection_width,
        min_face_fraction=min_face_fraction,
        detect_every=detect_every,
    )


@register_encoder("text:")
def _text(name_or_path: str, max_length: int = 128, layers: Any = None, trainable_top_layers: int = 0) -> Encoder:
    from emomix.encoders.text import TextEncoder

    return TextEncoder(name_or_path, max_length=max_length, layers=layers, trainable_top_layers=trainable_top_layers)


@register_encoder("speech:")
def _speech(name_or_path: str, layers: Any = None, trainable_top_layers: int = 0) -> Encoder:
    from emomix.encoders.speech_ssl import SpeechSSLEncoder

    return SpeechSSLEncoder(name_or_path, layers=layers, trainable_top_layers=trainable_top_layers)


@register_encoder("minilm")
def _minilm(max_length: int = 128, layers: Any = None, trainable_top_layers: int = 0) -> Encoder:
    from emomix.encoders.text import DEFAULT_TEXT_MODEL

    return _text(DEFAULT_TEXT_MODEL, max_length=max_length, layers=layers, trainable_top_layers=trainable_top_layers)


def _register_hub_models() -> None:
    for short, hub_name in HUB_SPEECH_MODELS.items():

        def speech(layers: Any = None, trainable_top_layers: int = 0, _hub: str = hub_name) -> Encoder:
            return _speech(_hub, layers=layers, trainable_top_layers=trainable_top_layers)

        register_encoder(short)(speech)
    for short, hub_name in HUB_TEXT_MODELS.items():

        def text(
            max_length: int = 128, layers: Any = None, trainable_top_layers: int = 0, _hub: str = hub_name
        ) -> Encoder:
            return _text(_hub, max_length=max_length, layers=layers, trainable_top_layers=trainable_top_layers)

        register_encoder(short)(text)


_register_hub_models()
