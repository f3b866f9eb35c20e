"""One conversion of Python, numpy, pandas and torch values to plain JSON values.

Run records, fold plans, metrics, reports and model cards are all written through
:func:`to_jsonable`, so they agree on how a numpy number, a table or a NaN is stored.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON values, so :func:`json.dumps` accepts it and writes strict JSON.

    Mappings become dicts with string keys; lists, tuples and sets become lists; DataFrames
    become lists of records; numpy/torch arrays and scalars become lists and Python numbers;
    NaN, inf, ``pd.NA`` and ``pd.NaT`` become None; paths become strings. Anything else is
    written as its ``str``.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    pd = sys.modules.get("pandas")  # a pandas value can only exist if pandas is imported
    if pd is not None:
        if isinstance(value, pd.DataFrame):
            return [to_jsonable(r) for r in value.to_dict(orient="records")]
        if value is pd.NA or value is pd.NaT:
            return None
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays/scalars, torch tensors, Series
        return to_jsonable(value.tolist())
    return str(value)
