"""What the routers and gates did: mean expert shares by emotion, session and speaker.

Reads the ``aux_*`` columns of a predictions table (``docs/training.md``):

- **Dual Routing** writes ``aux_route_<modality>_0`` (p_local) and ``aux_route_<modality>_1``
  (p_global) per row. :func:`routing_shares` gives, per modality, the mean local and global
  share over the rows of each true emotion, session and speaker (the views of the paper's
  figures), plus ``local_top1``: the share of rows whose router preferred the local expert.
- **Other MoEs** write ``aux_gate_weights_<j>`` (expert ``j``'s gate weight; MiSTER-E's
  experts are speech, text, cross; ``aux_gate_probs_<j>``, a top-k gate's full softmax, is
  reported beside it) or, for MPAF-Net, ``aux_alpha_<pair>`` (the weight of the
  pair's first modality; the second gets ``1 − α``). :func:`expert_shares` gives the mean share
  of every expert by emotion and session in one tidy table.

A table without such columns gives empty tables, never an error. Rows whose aux value is NaN
(a fold or batch where the model did not report it) are left out of that mean. Every seed's
rows are pooled: a share is a mean over all test rows of all seeds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

ROUTE_PATTERN = re.compile(r"^aux_route_(?P<modality>.+)_(?P<index>[01])$")
GATE_PATTERN = re.compile(r"^aux_gate_weights_(?P<index>\d+)$")
GATE_PROBS_PATTERN = re.compile(r"^aux_gate_probs_(?P<index>\d+)$")
ALPHA_PATTERN = re.compile(r"^aux_alpha_(?P<pair>[a-z]{2})$")

# the short modality letters of MPAF-Net's pair names (alpha_ta = text's weight against audio)
MODALITY_LETTERS = {"t": "text", "a": "audio", "v": "video"}

# expert names of the gates whose order the model fixes (others are called expert0, expert1, ...)
KNOWN_EXPERTS: dict[str, tuple[str, ...]] = {"mister_e": ("speech", "text", "cross")}

# per-row scalars that only describe the batch layout (MiSTER-E's padding mask)
NOT_FLAGS = frozenset({"utterance_mask"})

ROUTING_COLUMNS = ["by", "group", "modality", "n", "local", "global", "local_top1"]
EXPERT_COLUMNS = ["by", "group", "source", "expert", "n", "share"]
DEFAULT_ROUTING_BY: tuple[str, ...] = ("label", "session", "speaker")
DEFAULT_EXPERT_BY: tuple[str, ...] = ("label", "session")


def route_columns(df: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """``{modality: (p_local column, p_global column)}`` for every modality with both columns."""
    found: dict[str, dict[int, str]] = {}
    for column in df.columns:
        match = ROUTE_PATTERN.match(str(column))
        if match:
            found.setdefault(match["modality"], {})[int(match["index"])] = str(column)
    return {m: (cols[0], cols[1]) for m, cols in sorted(found.items()) if 0 in cols and 1 in cols}


def gate_columns(df: pd.DataFrame, pattern: re.Pattern[str] = GATE_PATTERN) -> list[str]:
    """The ``aux_gate_weights_<j>`` columns (or those of ``pattern``) ordered by ``j``."""
    matches = [(int(m["index"]), str(c)) for c in df.columns if (m := pattern.match(str(c)))]
    return [c for _, c in sorted(matches)]


def alpha_columns(df: pd.DataFrame) -> list[str]:
    """The ``aux_alpha_<pair>`` columns (sorted)."""
    return sorted(str(c) for c in df.columns if ALPHA_PATTERN.match(str(c)))


def expert_names_for(model: str | None, count: int) -> list[str]:
    """Names of ``count`` gate experts: the model family's own when known, else ``expert<j>``."""
    if model:
        for family, names in KNOWN_EXPERTS.items():
            if (model == family or model.startswith(family + "_")) and len(names) == count:
                return list(names)
    return [f"expert{j}" for j in range(count)]


def routing_shares(df: pd.DataFrame, by: Sequence[str] = DEFAULT_ROUTING_BY) -> pd.DataFrame:
    """Mean local/global routing share per modality, for every value of each ``by`` column.

    One row per (``by``, ``group``, ``modality``) with ``n`` (rows averaged), ``local`` and
    ``global`` (mean p_local, p_global) and ``local_top1`` (share of rows with p_local > p_global).
    ``by="all"`` rows (group ``"all"``) give the overall means. Empty when the table has no
    ``aux_route_*`` columns. ``by`` columns missing from the table, or entirely null, are skipped;
    rows with a null ``by`` value are left out of that grouping.
    """
    routes = route_columns(df)
    if not routes:
        return pd.DataFrame(columns=ROUTING_COLUMNS)
    frames = []
    for modality, (local_col, global_col) in routes.items():
        part = pd.DataFrame(
            {
                "local": pd.to_numeric(df[local_col], errors="coerce"),
                "global": pd.to_numeric(df[global_col], errors="coerce"),
            },
            index=df.index,
        )
        part = part[part["local"].notna() & part["global"].notna()]
        part["local_top1"] = (part["local"] > part["global"]).astype(float)
        for key, keyed in _groupings(df, part, by):
            stats = keyed.groupby("group", sort=False).agg(
                n=("local", "size"),
                local=("local", "mean"),
                global_=("global", "mean"),
                local_top1=("local_top1", "mean"),
            )
            stats = stats.rename(columns={"global_": "global"}).reset_index()
            stats = stats.sort_values("group", key=lambda col: col.map(_natural_key), kind="stable")
            stats.insert(0, "by", key)
            stats.insert(2, "modality", modality)
            frames.append(stats)
    return _concat(frames, ROUTING_COLUMNS)


def expert_shares(
    df: pd.DataFrame,
    by: Sequence[str] = DEFAULT_EXPERT_BY,
    model: str | None = None,
    expert_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Mean share of every gate expert, for every value of each ``by`` column.

    One row per (``by``, ``group``, ``source``, ``expert``) with ``n`` and ``share``:
    ``source="gate"`` for ``aux_gate_weights_<j>`` (expert names from ``expert_names``, else
    :func:`expert_names_for`), ``source="gate_probs"`` for ``aux_gate_probs_<j>`` (a top-k
    gate's full softmax before the weights outside the top k are zeroed),
    ``source="alpha_<pair>"`` for MPAF-Net's pairwise weights (the
    two experts are the pair's modalities, shares α and 1 − α). ``by="all"`` rows give the
    overall means. Empty when the table has neither kind of column.
    """
    frames = []
    for source, pattern in (("gate", GATE_PATTERN), ("gate_probs", GATE_PROBS_PATTERN)):
        gates = gate_columns(df, pattern)
        if not gates:
            continue
        names = list(expert_names) if expert_names is not None else expert_names_for(model, len(gates))
        if len(names) != len(gates):
            names = [f"expert{j}" for j in range(len(gates))]
        values = df[gates].apply(pd.to_numeric, errors="coerce")
        values.columns = names
        frames.extend(_share_rows(df, values, source, by))
    for column in alpha_columns(df):
        pair = column[len("aux_alpha_") :]
        first, second = (MODALITY_LETTERS.get(letter, letter) for letter in pair)
        alpha = pd.to_numeric(df[column], errors="coerce")
        values = pd.DataFrame({first: alpha, second: 1.0 - alpha}, index=df.index)
        frames.extend(_share_rows(df, values, f"alpha_{pair}", by))
    return _concat(frames, EXPERT_COLUMNS)


def aux_flag_rates(df: pd.DataFrame) -> pd.DataFrame:
    """Per-row scalar aux values that are not routing or gate shares (e.g. ``aux_vad_fallback``):
    ``name``, ``n`` (rows with a value), ``mean`` (for a 0/1 flag, the share of rows flagged)."""
    shares = set(alpha_columns(df)) | {c for pair in route_columns(df).values() for c in pair}
    rows = []
    for column in df.columns:
        name = str(column)
        if not name.startswith("aux_") or name in shares or re.search(r"_\d+$", name) or name[4:] in NOT_FLAGS:
            continue
        values = _as_float(df[column])
        values = values[np.isfinite(values)]
        rows.append(
            {
                "name": name[len("aux_") :],
                "n": int(values.size),
                "mean": float(values.mean()) if values.size else np.nan,
            }
        )
    return pd.DataFrame(rows, columns=["name", "n", "mean"])


def routing_analysis(
    df: pd.DataFrame, model: str | None = None, expert_names: Sequence[str] | None = None
) -> dict[str, pd.DataFrame]:
    """``{"routing": routing_shares(df), "experts": expert_shares(df), "flags": aux_flag_rates(df)}``."""
    return {
        "routing": routing_shares(df),
        "experts": expert_shares(df, model=model, expert_names=expert_names),
        "flags": aux_flag_rates(df),
    }


# --------------------------------------------------------------------------------------------
# Helpers


def _groupings(df: pd.DataFrame, part: pd.DataFrame, by: Sequence[str]):
    """Yield ``("all", part with group "all")`` then ``(column, part with group = that column)``."""
    yield "all", part.assign(group="all")
    for column in by:
        if column not in df.columns:
            continue
        groups = df.loc[part.index, column]
        keep = groups.notna()
        if not keep.any():
            continue
        yield column, part[keep].assign(group=groups[keep].astype(str))


def _share_rows(df: pd.DataFrame, values: pd.DataFrame, source: str, by: Sequence[str]) -> list[pd.DataFrame]:
    """Tidy mean shares of the experts in ``values``' columns for every grouping."""
    values = values[values.notna().all(axis=1)]
    frames = []
    for key, keyed in _groupings(df, values, by):
        long = keyed.melt(id_vars="group", var_name="expert", value_name="share")
        stats = (
            long.groupby(["group", "expert"], sort=False)
            .agg(n=("share", "size"), share=("share", "mean"))
            .reset_index()
        )
        expert_order = {name: i for i, name in enumerate(values.columns)}
        stats = stats.sort_values(
            ["group", "expert"],
            key=lambda col: col.map(expert_order) if col.name == "expert" else col.map(_natural_key),
            kind="stable",
        )
        stats.insert(0, "by", key)
        stats.insert(2, "source", source)
        frames.append(stats)
    return frames


def _natural_key(value: object) -> tuple:
    """Sort key putting ``Ses2`` before ``Ses10``."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", str(value)) if part
    )


def _as_float(series: pd.Series) -> pd.Series:
    """Numbers and booleans (also as objects, with None) as floats; anything else NaN."""

    def convert(value: object) -> float:
        if isinstance(value, (bool, np.bool_)):
            return float(value)
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return np.nan

    return pd.Series([convert(v) for v in series], index=series.index, dtype=float)


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=columns)
    table = pd.concat(frames, ignore_index=True)[columns]
    table["n"] = table["n"].astype(int)
    return table


def to_records(table: pd.DataFrame) -> list[Mapping[str, object]]:
    """A tidy table as a list of dicts (NaN as None)."""
    return [
        {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
        for row in table.to_dict(orient="records")
    ]
