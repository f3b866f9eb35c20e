"""Small parsing helpers shared by the command modules."""

from __future__ import annotations

from typing import Any

from emomix.errors import ConfigError
from emomix.yamlio import load_yaml_value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` with YAML typing of the values."""
    result: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        result[key.strip()] = load_yaml_value(value)
    return result


def scheme_option(scheme: str) -> Any:
    """The ``--scheme`` value as :func:`emomix.data.readers.read_corpus` takes it ('none'/'raw' → no scheme)."""
    return None if scheme.lower() in {"none", "raw"} else scheme
