"""One YAML reader for recipes, ``--set`` values, feature specs and reader options.

PyYAML follows YAML 1.1, whose float pattern needs a dot: ``5e-5`` and ``1E3`` are read as the
*strings* ``"5e-5"`` and ``"1E3"``. A learning rate written that way in a recipe or given as
``--set optimiser.encoder_lr=5e-5`` then reaches the optimiser as text, and the run fails deep in
torch (``can't multiply sequence by non-int of type 'float'``). :func:`load_yaml` reads those as
floats, as YAML 1.2 and JSON do; everything else is PyYAML's safe loader unchanged.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    """The safe loader plus YAML 1.2 floats (``1e-3``, ``5E+2``, ``-2e4``)."""


_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789"))


def load_yaml(text: str) -> Any:
    """``text`` parsed as YAML (and so JSON), with exponent-only numbers as floats; raises
    :class:`yaml.YAMLError` like :func:`yaml.safe_load`."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects


def load_yaml_value(raw: str) -> Any:
    """A ``key=value`` command-line value read as YAML (``3`` → 3, ``5e-5`` → 5e-05, ``[a, b]`` →
    a list); text that is not valid YAML stays the string it was."""
    try:
        return load_yaml(raw)
    except yaml.YAMLError:
        return raw
