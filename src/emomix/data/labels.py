"""Label schemes as data: which raw corpus labels become which classes.

The built-in schemes live in ``label_schemes.yaml`` beside this module; a user-defined scheme is
a dict (or YAML file) of the same shape: ``{"classes": [...], "map": {raw: class}}``.
Applying a scheme never drops an utterance silently: what falls outside is counted by raw label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from emomix.errors import LabelError, yaml_problem


@dataclass(frozen=True)
class LabelScheme:
    """A named mapping from raw labels onto an ordered tuple of classes."""

    name: str
    classes: tuple[str, ...]
    mapping: Mapping[str, str]
    corpus: str | None = None

    def __post_init__(self) -> None:
        if not self.classes:
            raise LabelError(f"label scheme {self.name!r} has no classes")
        if len(set(self.classes)) != len(self.classes):
            raise LabelError(f"label scheme {self.name!r} lists a class twice: {list(self.classes)}")
        stray = sorted({c for c in self.mapping.values() if c not in self.classes})
        if stray:
            raise LabelError(
                f"label scheme {self.name!r} maps onto {stray}, which are not among its classes {list(self.classes)}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def index(self, label: str) -> int:
        """Position of a class; :class:`LabelError` for a label outside the scheme."""
        try:
            return self.classes.index(label)
        except ValueError:
            raise LabelError(f"label {label!r} is not a class of scheme {self.name!r} {list(self.classes)}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "classes": list(self.classes), "map": dict(self.mapping), "corpus": self.corpus}

    @classmethod
    def from_dict(cls, name: str, spec: Mapping[str, Any]) -> LabelScheme:
        """Build a scheme from ``{"classes": [...], "map": {...}}``; ``map`` defaults to identity."""
        unknown = set(spec) - {"classes", "map", "corpus", "name"}
        if unknown:
            raise LabelError(f"label scheme {name!r}: unknown key(s) {sorted(unknown)}; expected classes, map, corpus")
        if "classes" not in spec:
            raise LabelError(f"label scheme {name!r} needs a 'classes' list")
        classes = tuple(str(c) for c in spec["classes"])
        mapping = {str(k).lower(): str(v) for k, v in (spec.get("map") or {c: c for c in classes}).items()}
        return cls(name=name, classes=classes, mapping=mapping, corpus=spec.get("corpus"))


@lru_cache(maxsize=1)
def _builtin_specs() -> dict[str, dict[str, Any]]:
    text = resources.files("emomix.data").joinpath("label_schemes.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def list_schemes() -> list[str]:
    """Names of the built-in label schemes."""
    return sorted(_builtin_specs())


def get_scheme(scheme: str | LabelScheme | Mapping[str, Any]) -> LabelScheme:
    """A scheme by built-in name, from a YAML file path, or from a dict; passes schemes through."""
    if isinstance(scheme, LabelScheme):
        return scheme
    if isinstance(scheme, Mapping):
        return LabelScheme.from_dict(str(scheme.get("name", "custom")), scheme)
    specs = _builtin_specs()
    key = str(scheme).lower()
    if key in specs:
        return LabelScheme.from_dict(key, specs[key])
    path = Path(str(scheme))
    if path.suffix in {".yaml", ".yml", ".json"} and path.exists():
        try:
            spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise LabelError(f"label scheme file {path} is not valid YAML ({yaml_problem(exc)})") from None
        if not isinstance(spec, Mapping):
            raise LabelError(f"label scheme file {path} must hold a mapping with 'classes' and 'map'")
        return LabelScheme.from_dict(str(spec.get("name", path.stem)), spec)
    raise LabelError(f"unknown label scheme {scheme!r}; built-in: {', '.join(list_schemes())}, or a YAML file path")


def apply_scheme(
    table: pd.DataFrame, scheme: str | LabelScheme | Mapping[str, Any]
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Map ``table.label`` through a scheme.

    Returns the kept rows (``label`` now a class of the scheme; ``raw_label`` keeps the original)
    and a count of dropped utterances per raw label (``"<missing>"`` for unlabelled rows).
    """
    scheme = get_scheme(scheme)
    table = table.copy()
    raw = table["raw_label"].where(table["raw_label"].notna(), table["label"])
    mapped = [scheme.mapping.get(str(v).lower()) if v is not None and not pd.isna(v) else None for v in raw]
    keep = pd.Series([m is not None for m in mapped], index=table.index)
    dropped = Counter("<missing>" if (v is None or pd.isna(v)) else str(v) for v, k in zip(raw, keep) if not k)
    table["raw_label"] = raw
    table["label"] = mapped
    return table[keep].reset_index(drop=True), dict(sorted(dropped.items()))
