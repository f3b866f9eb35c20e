"""The model base class, typed configs and the registry (``create_model``, ``list_models``).

Pattern (timm's ``register_model``): each model file defines a config dataclass and a model
class decorated with :func:`register_model`; YAML fills the config, whose ``from_dict`` rejects
unknown keys by name.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from emomix.errors import ConfigError
from emomix.models.inputs import Batch, DialogueBatch, ModelOutput

ConfigT = TypeVar("ConfigT", bound="ModelConfig")


@dataclass
class ModelConfig:
    """Base of every model's config: plain typed values, filled from YAML or a dict.

    ``modalities`` selects which inputs the model uses (a single-modality variant is the same
    model with one modality, where its design allows it).
    """

    modalities: tuple[str, ...] = ("audio", "text")

    @classmethod
    def from_dict(cls: type[ConfigT], values: Mapping[str, Any] | None = None) -> ConfigT:
        """Build the config, naming any unknown key (with the nearest valid one)."""
        values = dict(values or {})
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in values if k not in names]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, names, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(
                f"{cls.__name__}: unknown key(s) {', '.join(hints)}; valid keys: {', '.join(sorted(names))}"
            )
        for key, value in list(values.items()):
            if isinstance(value, list):
                values[key] = tuple(value)
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Check ranges and combinations; raise :class:`ConfigError` naming the field."""
        bad = [m for m in self.modalities if m not in ("audio", "text", "video")]
        if bad or not self.modalities:
            raise ConfigError(
                f"{type(self).__name__}.modalities must be a non-empty subset of audio, text, video; "
                f"got {self.modalities}"
            )

    # -- checks shared by the models' validate() methods; each names the field and the value --

    def require_choice(self, **allowed: tuple[str, ...]) -> None:
        """Each named field must hold one of its allowed values."""
        for field_name, choices in allowed.items():
            value = getattr(self, field_name)
            if value not in choices:
                raise ConfigError(
                    f"{type(self).__name__}.{field_name} must be one of {', '.join(choices)}; got {value!r}"
                )

    def require_positive(self, *field_names: str, allow_none: bool = False) -> None:
        """Each named field must be an integer of at least 1 (or None when ``allow_none``)."""
        for field_name in field_names:
            value = getattr(self, field_name)
            if value is None and allow_none:
                continue
            if value is None or int(value) < 1:
                raise ConfigError(f"{type(self).__name__}.{field_name} must be at least 1; got {value!r}")

    def require_fraction(self, *field_names: str) -> None:
        """Each named field (a dropout rate) must lie in [0, 1)."""
        for field_name in field_names:
            value = getattr(self, field_name)
            if not 0.0 <= float(value) < 1.0:
                raise ConfigError(f"{type(self).__name__}.{field_name} must be in [0, 1); got {value!r}")

    def require_non_negative(self, *field_names: str) -> None:
        """Each named field (a loss weight, a noise level) must be ≥ 0."""
        for field_name in field_names:
            value = getattr(self, field_name)
            if float(value) < 0:
                raise ConfigError(f"{type(self).__name__}.{field_name} must be non-negative; got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


BatchT = TypeVar("BatchT", Batch, DialogueBatch)


class EmotionModel(nn.Module, Generic[BatchT]):
    """Base class: subclasses set the class attributes and implement ``forward`` and ``loss``.

    Generic in the batch it takes: ``EmotionModel[Batch]`` (utterances) or
    ``EmotionModel[DialogueBatch]`` (conversations, ``batch_kind = "dialogue"``).

    ``input_dims`` maps each available modality to its feature size D (and, for designs that need
    them, extra keys such as ``"audio_pooled"``); ``num_classes`` is C.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    batch_kind: ClassVar[str] = "utterance"  # or "dialogue"
    supported_modalities: ClassVar[tuple[str, ...]] = ("audio", "text")
    class_weights: torch.Tensor | None  # a registered (non-persistent) buffer

    def __init__(self, config: ModelConfig, input_dims: Mapping[str, int], num_classes: int):
        super().__init__()
        missing = [m for m in config.modalities if m not in input_dims]
        if missing:
            raise ConfigError(
                f"model {self.name!r} is configured for {', '.join(config.modalities)} but the inputs supply only "
                f"{', '.join(k for k in input_dims if '_' not in k) or 'nothing'}: {', '.join(missing)} missing; "
                f"set modalities to what the corpus has or add an encoder for it"
            )
        unsupported = [m for m in config.modalities if m not in self.supported_modalities]
        if unsupported:
            raise ConfigError(
                f"model {self.name!r} does not take {', '.join(unsupported)}; "
                f"it takes {', '.join(self.supported_modalities)}"
            )
        if num_classes < 2:
            raise ConfigError(f"model {self.name!r} needs at least 2 classes, got {num_classes}")
        self.config = config
        self.input_dims = dict(input_dims)
        self.num_classes = num_classes
        # per-class loss weights (focal α or CE weights); the trainer sets inverse training frequency
        self.register_buffer("class_weights", None, persistent=False)

    def set_class_weights(self, weights: torch.Tensor | None) -> None:
        """Per-class loss weights (length C, e.g. inverse training frequency); None = uniform."""
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=torch.float32)
            if weights.shape != (self.num_classes,):
                raise ConfigError(
                    f"{self.name}: class weights need {self.num_classes} values, got shape {tuple(weights.shape)}"
                )
            parameter = next(self.parameters(), None)
            if parameter is not None:
                weights = weights.to(parameter.device)
        self.class_weights = weights

    def forward(self, batch: BatchT) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss and its named parts (floats, for logging)."""
        raise NotImplementedError  # pragma: no cover - abstract


@dataclass(frozen=True)
class ModelInfo:
    """Registry entry: what ``emomix models`` prints, and how the trainer builds the model.

    ``late_fusion_of``: for a model that is the late fusion of separately trained registered
    models (their names, in the order its ``from_submodels(*parts, weights)`` takes them); empty
    for a model trained end to end. The trainer chooses its procedure from this, not the name.
    """

    name: str
    cls: type[EmotionModel]
    paper: str
    modalities: tuple[str, ...]
    batch_kind: str
    description: str
    default_overrides: Mapping[str, Any]
    late_fusion_of: tuple[str, ...] = ()


_REGISTRY: dict[str, ModelInfo] = {}
M = TypeVar("M", bound=type[EmotionModel])


def register_model(
    name: str, description: str = "", *, late_fusion_of: tuple[str, ...] = (), **default_overrides: Any
) -> Callable[[M], M]:
    """Register a model class under ``name``; ``default_overrides`` preset config fields, so one
    class can serve as several named variants (e.g. ablations, single-modality versions).
    ``late_fusion_of`` names the registered parts of a late-fusion model (see :class:`ModelInfo`);
    its class then provides ``from_submodels(*parts, weights)``."""

    def decorator(cls: M) -> M:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        if late_fusion_of and not callable(getattr(cls, "from_submodels", None)):
            raise ValueError(f"model {name!r} is declared a late fusion but {cls.__name__} has no from_submodels")
        modalities = tuple(default_overrides.get("modalities", cls.config_class().modalities))
        _REGISTRY[name] = ModelInfo(
            name,
            cls,
            cls.paper,
            modalities,
            cls.batch_kind,
            description or (cls.__doc__ or "").strip().splitlines()[0],
            dict(default_overrides),
            tuple(late_fusion_of),
        )
        return cls

    return decorator


def _load_model_modules() -> None:
    # importing the package registers every model
    import emomix.models  # noqa: F401


def list_models() -> dict[str, ModelInfo]:
    """Every registered model by name."""
    _load_model_modules()
    return dict(sorted(_REGISTRY.items()))


def model_info(name: str) -> ModelInfo:
    """The registry entry of a model; :class:`ConfigError` with suggestions for an unknown name."""
    models = list_models()
    if name not in models:
        close = difflib.get_close_matches(name, models, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint}; available: {', '.join(models)}")
    return models[name]


def create_model(
    name: str, config: Mapping[str, Any] | ModelConfig | None, input_dims: Mapping[str, int], num_classes: int
) -> EmotionModel:
    """Build a registered model from a config (dict or its dataclass) for given inputs and classes."""
    info = model_info(name)
    if isinstance(config, ModelConfig):
        if not isinstance(config, info.cls.config_class):
            raise ConfigError(f"model {name!r} takes a {info.cls.config_class.__name__}, got {type(config).__name__}")
        resolved = config
    else:
        resolved = info.cls.config_class.from_dict({**info.default_overrides, **dict(config or {})})
    return info.cls(resolved, input_dims, num_classes)
