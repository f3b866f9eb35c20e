"""Recipes: a whole experiment as one YAML file of plain values, validated by typed configs.

A recipe has the blocks ``corpus``, ``protocol``, ``features``, ``model``, ``optimiser``,
``training`` and ``seeds`` (see ``configs/`` and docs/training.md). Every block is a dataclass
whose ``from_dict`` names an unknown key with the nearest valid one, so a typo fails at once
instead of silently training with a default. Strings may use ``${datasets}`` (the shared
datasets folder: ``$EMOMIX_DATASETS``, else ``../shared/datasets``, see :func:`datasets_dir`) and
``${recipe_dir}`` (the folder holding the recipe file). When no datasets folder exists the
placeholder stays in the string, so a recipe still validates; reading its corpus then fails with
:func:`missing_datasets_message`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from emomix.errors import ConfigError, yaml_problem
from emomix.yamlio import load_yaml, load_yaml_value

OPTIMISERS = ("adamw", "adam")
SCHEDULES = ("none", "warmup_cosine", "onecycle", "plateau")
CLASS_BALANCE = ("weights", "sampler", "none")
MONITORS = ("val_ua", "val_wa", "val_weighted_f1", "val_loss")
AUGMENTATIONS = ("noise", "pitch")
DATASETS_VARIABLE = "EMOMIX_DATASETS"
DATASETS_PLACEHOLDER = "${datasets}"


def unknown_keys_message(source: str, where: str, unknown: list[Any], names: list[str]) -> str:
    """``configs/x.yaml: training.max_epoch is not a setting; did you mean training.max_epochs?``
    (the valid keys are listed when no name is close)."""
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), names, n=1)
        parts.append(
            f"{where}.{key} is not a setting; "
            + (f"did you mean {where}.{close[0]}?" if close else f"valid: {', '.join(names)}")
        )
    return f"{source}: " + "; ".join(parts)


def _from_dict(cls: type, values: Mapping[str, Any] | None, where: str, source: str = "recipe") -> Any:
    if values is not None and not isinstance(values, Mapping):
        raise ConfigError(f"{source}: {where} must be a block of key: value settings, got {values!r}")
    values = dict(values or {})
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise ConfigError(unknown_keys_message(source, where, unknown, names))
    for spec in dataclasses.fields(cls):  # a number written as a word fails here, naming its key
        value = values.get(spec.name)
        numeric = isinstance(spec.default, (int, float)) and not isinstance(spec.default, bool)
        if numeric and spec.name in values and value is not None and not _is_number(value):
            raise ConfigError(f"{source}: {where}.{spec.name} must be a number, got {value!r}")
    try:
        return cls(**values)
    except TypeError as error:
        raise ConfigError(f"{source}: {where}: {error}") from None


def _is_number(value: Any) -> bool:
    """An int or float (not a bool), or a string YAML left unparsed such as ``1e-3``."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(str(value))
    except ValueError:
        return False
    return isinstance(value, str)


def _validate(config: Any, source: str) -> None:
    """``config.validate()`` with the recipe file named and a wrongly typed value as a ConfigError."""
    try:
        config.validate()
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source}: a value has the wrong type ({error}); see docs/recipes.md") from None


@dataclass
class CorpusConfig:
    """Which corpus: a reader name, its root, the label scheme; ``generate`` writes the synthetic
    corpus first (its :class:`~emomix.data.synthetic.SyntheticConfig` fields) when the reader is
    ``synthetic``; ``options`` go to the reader."""

    reader: str = "synthetic"
    root: str = "runs/synthetic-corpus"
    scheme: Any = "default"
    generate: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProtocolConfig:
    """The cross-validation protocol (:func:`emomix.data.protocols.make_fold_plan`) and its parameters."""

    name: str = "loso"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelSection:
    """The registered model's name and its config overrides."""

    name: str = "dual_routing"
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimiserConfig:
    """Optimiser and schedule. ``lr`` is the fusion head's learning rate, ``encoder_lr`` the
    fine-tuned encoder layers'. ``warmup_epochs`` for ``warmup_cosine``; ``plateau_factor`` and
    ``plateau_patience`` for ``plateau`` (on the monitored metric); ``onecycle`` peaks at ``lr``."""

    name: str = "adamw"
    lr: float = 1e-3
    encoder_lr: float = 1e-5
    weight_decay: float = 0.01
    schedule: str = "warmup_cosine"
    warmup_epochs: float = 1.0
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    betas: tuple[float, float] = (0.9, 0.999)

    def validate(self) -> None:
        if self.name not in OPTIMISERS:
            raise ConfigError(f"optimiser.name must be one of {', '.join(OPTIMISERS)}, got {self.name!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optimiser.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        for name in ("lr", "encoder_lr", "weight_decay", "warmup_epochs", "plateau_factor"):
            value = getattr(self, name)
            try:  # a quoted number in YAML ("1e-3") is text; the optimiser needs a float
                setattr(self, name, float(value))
            except (TypeError, ValueError):
                raise ConfigError(f"optimiser.{name} must be a number, got {value!r}") from None
        for name in ("lr", "encoder_lr"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"optimiser.{name} must be positive, got {getattr(self, name)}")
        if float(self.weight_decay) < 0 or float(self.warmup_epochs) < 0:
            raise ConfigError("optimiser.weight_decay and warmup_epochs must be 0 or more")
        if not 0 < float(self.plateau_factor) < 1:
            raise ConfigError(f"optimiser.plateau_factor must be between 0 and 1, got {self.plateau_factor}")


@dataclass
class AugmentConfig:
    """Minority-class audio augmentation: ``copies`` extra renditions of each training utterance
    of ``classes`` (a list, or ``"minority"``: classes below the median training count), with
    white noise at ``noise_snr_db`` and/or a pitch shift of ± ``pitch_semitones``."""

    kinds: tuple[str, ...] = ("noise", "pitch")
    classes: Any = "minority"
    copies: int = 1
    noise_snr_db: float = 20.0
    pitch_semitones: float = 2.0

    def validate(self) -> None:
        bad = [k for k in self.kinds if k not in AUGMENTATIONS]
        if bad or not self.kinds:
            raise ConfigError(
                f"training.augment.kinds must be a non-empty list of {', '.join(AUGMENTATIONS)}, got {list(self.kinds)}"
            )
        if int(self.copies) < 1:
            raise ConfigError(f"training.augment.copies must be at least 1, got {self.copies}")
        if not (self.classes == "minority" or isinstance(self.classes, (list, tuple))):
            raise ConfigError(f"training.augment.classes must be 'minority' or a list of classes, got {self.classes!r}")


@dataclass
class TrainingConfig:
    """The loop: epochs, batches, early stopping, class balance, precision and devices (Lightning's
    ``accelerator``/``devices``/``num_nodes``/``strategy``/``precision``/``accumulate_grad_batches``
    pass through unchanged, so DDP and mixed precision are one setting away). ``threads``: torch
    CPU threads (None leaves torch's default). ``standardise``: z-score every input dimension with
    the mean and SD of the fold's training utterances (fitted per fold, applied to validation and
    test, saved with the weights)."""

    epochs: int = 20
    batch_size: int = 16
    patience: int | None = 4
    monitor: str = "val_ua"
    class_balance: str = "weights"
    grad_clip: float | None = 1.0
    augment: dict[str, Any] | None = None
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: Any = "32-true"
    accumulate_grad_batches: int = 1
    threads: int | None = None
    num_workers: int = 0
    standardise: bool = False

    def validate(self) -> None:
        if int(self.epochs) < 1 or int(self.batch_size) < 1:
            raise ConfigError("training.epochs and training.batch_size must be at least 1")
        if self.patience is not None and int(self.patience) < 1:
            raise ConfigError(f"training.patience must be at least 1 or null, got {self.patience}")
        if self.monitor not in MONITORS:
            raise ConfigError(f"training.monitor must be one of {', '.join(MONITORS)}, got {self.monitor!r}")
        if self.class_balance not in CLASS_BALANCE:
            raise ConfigError(
                f"training.class_balance must be one of {', '.join(CLASS_BALANCE)}, got {self.class_balance!r}"
            )
        if self.grad_clip is not None and not float(self.grad_clip) > 0:
            raise ConfigError(f"training.grad_clip must be positive or null, got {self.grad_clip}")
        if int(self.accumulate_grad_batches) < 1 or int(self.num_nodes) < 1:
            raise ConfigError("training.accumulate_grad_batches and num_nodes must be at least 1")
        if self.threads is not None and int(self.threads) < 1:
            raise ConfigError(f"training.threads must be at least 1 or null, got {self.threads}")
        augment = self.augment_config()
        if augment is not None:
            augment.validate()

    def augment_config(self, source: str = "recipe") -> AugmentConfig | None:
        if self.augment is None:
            return None
        values = dict(self.augment)
        if "kinds" in values:
            values["kinds"] = tuple(values["kinds"])
        return _from_dict(AugmentConfig, values, "training.augment", source)


@dataclass
class Recipe:
    """A whole experiment. ``name`` names the run folder; ``features`` is the per-modality block
    (parsed by :func:`emomix.features.parse_feature_specs`, plus ``store`` and ``edges``)."""

    name: str
    corpus: CorpusConfig
    protocol: ProtocolConfig
    features: dict[str, Any]
    model: ModelSection
    optimiser: OptimiserConfig = field(default_factory=OptimiserConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    seeds: tuple[int, ...] = (0,)
    description: str = ""

    # -- building -----------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "recipe") -> Recipe:
        """Validate a parsed recipe; every error names the block and key."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping of blocks, got {type(data).__name__}")
        blocks = ("name", "description", "corpus", "protocol", "features", "model", "optimiser", "training", "seeds")
        unknown = [k for k in data if k not in blocks]
        if unknown:
            hints = [
                f"{k!r}"
                + (
                    f" (did you mean {close[0]!r}?)"
                    if (close := difflib.get_close_matches(str(k), blocks, n=1))
                    else ""
                )
                for k in unknown
            ]
            raise ConfigError(f"{source}: unknown block(s) {', '.join(hints)}; valid: {', '.join(blocks)}")
        for required in ("corpus", "features", "model"):
            if required not in data:
                raise ConfigError(f"{source}: the {required!r} block is missing")
        seeds = data.get("seeds", [0])
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            seeds = [seeds]
        if (
            not isinstance(seeds, (list, tuple))
            or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        ):
            raise ConfigError(f"{source}: seeds must be an integer or a non-empty list of integers, got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"{source}: seeds lists a seed twice: {list(seeds)}")
        if min(seeds) < 0:
            raise ConfigError(f"{source}: seeds are whole numbers from 0, got {list(seeds)}")
        model = data["model"]
        if isinstance(model, str):
            model = {"name": model}
        optimiser = _from_dict(OptimiserConfig, data.get("optimiser"), "optimiser", source)
        if isinstance(optimiser.betas, list):
            optimiser.betas = tuple(optimiser.betas)
        _validate(optimiser, source)
        training = _from_dict(TrainingConfig, data.get("training"), "training", source)
        if training.augment is not None:
            training.augment_config(source)  # names the recipe file in a typo
        _validate(training, source)
        recipe = cls(
            name=str(data.get("name") or "run"),
            description=str(data.get("description") or ""),
            corpus=_from_dict(CorpusConfig, data["corpus"], "corpus", source),
            protocol=_from_dict(ProtocolConfig, data.get("protocol") or {}, "protocol", source),
            features=dict(data["features"]),
            model=_from_dict(ModelSection, model, "model", source),
            optimiser=optimiser,
            training=training,
            seeds=tuple(int(s) for s in seeds),
        )
        specs = recipe.feature_specs()  # validates the features block
        config = recipe.model_config(source)  # an unknown model name, a bad config key or value fail now
        check_input_scale(recipe, specs, config, source)
        check_speaker_identity(recipe, specs, source)
        return recipe

    def model_config(self, source: str = "recipe") -> Any:
        """The model's validated config (its registered defaults with ``model.config`` on top);
        errors name ``model.config.<key>`` and the recipe, not the Python class."""
        from emomix.models import model_info

        info = model_info(self.model.name)
        config_class = info.cls.config_class
        names = [f.name for f in dataclasses.fields(config_class)]
        if not isinstance(self.model.config, Mapping):
            raise ConfigError(
                f"{source}: model.config must be a block of key: value settings, got {self.model.config!r}"
            )
        unknown = [k for k in self.model.config if k not in names]
        if unknown:
            raise ConfigError(_model_keys_message(source, self.model.name, unknown, names))
        try:
            return config_class.from_dict({**info.default_overrides, **dict(self.model.config)})
        except ConfigError as error:
            text = (
                str(error)
                .replace(f"{config_class.__name__}.", "model.config.")
                .replace(f"{config_class.__name__}:", "model.config:")
            )
            raise ConfigError(f"{source}: {text} (model {self.model.name})") from None

    def feature_specs(self) -> dict[str, Any]:
        from emomix.features import parse_feature_specs

        return parse_feature_specs(self.features)

    @property
    def edges(self) -> bool:
        return bool(self.features.get("edges", False))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (the resolved recipe written to a run's ``config.yaml``)."""
        data = dataclasses.asdict(self)
        data["seeds"] = list(self.seeds)
        data["optimiser"]["betas"] = list(self.optimiser.betas)
        return _plain(data)

    def with_overrides(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)


def _model_keys_message(source: str, model: str, unknown: list[Any], names: list[str]) -> str:
    return unknown_keys_message(source, "model.config", unknown, names) + f" (settings of model {model})"


def check_input_scale(recipe: Recipe, specs: Mapping[str, Any], config: Any, source: str = "recipe") -> None:
    """Refuse a model without input normalisation (``model.config.input_norm: false``) on inputs
    nothing scales: neither ``features.<modality>.speaker_normalisation`` nor
    ``training.standardise``. Raw openSMILE values span up to 1e6, so such a run trains on
    numbers of every magnitude (a first-epoch loss of 1e8, UA below chance) without a warning."""
    if getattr(config, "input_norm", True) or recipe.training.standardise:
        return
    modalities = tuple(getattr(config, "modalities", ()) or ())
    raw = [
        m
        for m, spec in specs.items()
        if (not modalities or m in modalities)
        and not getattr(spec, "speaker_normalisation", False)
        and not getattr(spec, "trainable_top_layers", 0)
    ]
    if raw:
        blocks = " and ".join(f"features.{m}" for m in raw)
        raise ConfigError(
            f"{source}: {recipe.model.name} has model.config.input_norm: false, but {blocks} "
            f"{'is' if len(raw) == 1 else 'are'} neither speaker-normalised nor standardised, so it would "
            "train on raw feature values; set training.standardise: true (z-scores with each fold's "
            "training statistics), or speaker_normalisation: true, or drop input_norm: false"
        )


def check_speaker_identity(recipe: Recipe, specs: Mapping[str, Any], source: str = "recipe") -> None:
    """Refuse per-speaker normalisation for a model whose design uses no speaker identity (its
    class sets ``uses_speaker_identity = False``, e.g. MiSTER-E): speaker normalisation fits
    statistics per speaker, test speakers included, which would bring identity back in."""
    from emomix.models import model_info

    if getattr(model_info(recipe.model.name).cls, "uses_speaker_identity", True):
        return
    normalised = [m for m, spec in specs.items() if getattr(spec, "speaker_normalisation", False)]
    if normalised:
        blocks = " and ".join(f"features.{m}.speaker_normalisation" for m in normalised)
        raise ConfigError(
            f"{source}: {recipe.model.name} uses no speaker identity, but {blocks} fits statistics per "
            "speaker (test speakers included); set it to false (MiSTER-E can standardise its inputs with "
            "training statistics: model.config.input_standardise: true)"
        )


def datasets_dir() -> Path | None:
    """What ``${datasets}`` stands for: ``$EMOMIX_DATASETS`` when set (as given, so a wrong value
    shows in the corpus error), else ``../shared/datasets`` beside the current folder or the
    checkout (:func:`emomix.data.paths.shared_datasets_dir`), else None."""
    from emomix.data import paths

    env = os.environ.get(DATASETS_VARIABLE, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    return paths.shared_datasets_dir()


def datasets_candidates() -> list[Path]:
    """The ``../shared/datasets`` folders looked for when ``$EMOMIX_DATASETS`` is not set."""
    found = [Path.cwd().parent / "shared" / "datasets"]
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file():  # the checkout (an editable install)
            found.append(parent.parent / "shared" / "datasets")
            break
    return list(dict.fromkeys(p.resolve() for p in found))


def missing_datasets_message(field_name: str = "corpus.root") -> str:
    """One sentence for a recipe whose ``${datasets}`` has no folder to stand for."""
    tried = " and ".join(str(p) for p in datasets_candidates())
    return (
        f"{field_name} uses {DATASETS_PLACEHOLDER}, but no datasets folder was found (tried {tried}); set "
        f"{DATASETS_VARIABLE} to the folder that holds the corpora (export {DATASETS_VARIABLE}=/path/to/datasets)"
    )


def load_recipe(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Recipe:
    """Read a recipe YAML file, substitute ``${datasets}``/``${recipe_dir}`` and apply dotted
    ``overrides`` (e.g. ``{"training.epochs": 2}``) before validation."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist; see configs/ for the shipped recipes")
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"recipe {path} is not valid YAML ({yaml_problem(error)}); fix that line") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must hold a mapping of blocks (corpus, protocol, features, model, ...)")
    data.setdefault("name", path.stem)
    data = substitute(data, {"recipe_dir": str(path.resolve().parent)})
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return Recipe.from_dict(data, source=str(path))


def substitute(value: Any, extra: Mapping[str, str] | None = None) -> Any:
    """Replace ``${datasets}`` and the ``extra`` names in every string of a nested structure
    (``${datasets}`` stays as written when :func:`datasets_dir` finds no folder)."""
    datasets = datasets_dir()
    names = {**({"datasets": str(datasets)} if datasets is not None else {}), **dict(extra or {})}
    return _substitute(value, names)


def _substitute(value: Any, names: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for name, replacement in names.items():
            value = value.replace("${" + name + "}", replacement)
        return value
    if isinstance(value, Mapping):
        return {k: _substitute(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    return value


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_dotted(d, "training.epochs", 3)`` sets ``d["training"]["epochs"] = 3``."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a block")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"training.epochs=3"`` → ``("training.epochs", 3)`` (the value is read as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like block.key=value, e.g. training.epochs=3")
    key, raw = text.split("=", 1)
    return key.strip(), load_yaml_value(raw)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
