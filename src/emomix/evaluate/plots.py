"""Figures of a run: confusion matrix, learning curves, routing and expert-share bars.

Matplotlib's Agg canvas on plain ``Figure`` objects (files only, no display, pyplot's global
state untouched). Each function draws one figure from
data it is given (arrays and tidy tables from :mod:`emomix.evaluate.metrics` and
:mod:`emomix.evaluate.routing`), writes one PNG and returns its path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from emomix.evaluate.metrics import normalise_rows

DPI = 110


def _figure(width: float, height: float):
    """A figure drawn by the Agg canvas, made without pyplot: no display, no global backend
    switch, nothing left open in pyplot's figure manager."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _colours(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", format="png")
    return path


def plot_confusion(counts: np.ndarray, classes: Sequence[str], path: str | Path, title: str | None = None) -> Path:
    """Heatmap of the row-normalised confusion matrix; each cell shows the share and the count.

    Rows are true classes, columns predictions. A class with no true utterance has an empty row.
    """
    counts = np.asarray(counts)
    shares = normalise_rows(counts)
    size = max(3.5, 0.75 * len(classes) + 1.5)
    fig = _figure(size + 1.0, size)
    ax = fig.subplots()
    image = ax.imshow(np.nan_to_num(shares, nan=0.0), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(len(classes)), labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            if np.isnan(shares[i, j]):
                continue
            colour = "white" if shares[i, j] > 0.6 else "black"
            ax.text(
                j, i, f"{shares[i, j]:.2f}\n({int(counts[i, j])})", ha="center", va="center", fontsize=8, color=colour
            )
    ax.set_title(title or "confusion matrix (row-normalised, counts in brackets)")
    return _save(fig, path)


def plot_learning_curves(histories: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """Training loss and validation UA per epoch, one line per fold.

    ``histories``: the rows of every ``history.csv`` with ``fold`` and ``seed`` (and optionally
    ``part``) columns added (columns ``epoch``, ``loss``, ``val_ua``; either curve may be
    missing). With several seeds a fold's line is the mean over the seeds that reached that epoch;
    a non-empty ``part`` (a composite model's sub-model) gets its own line ``fold/part``.
    """
    from matplotlib.ticker import MaxNLocator

    panels = [
        (c, label)
        for c, label in (("loss", "training loss"), ("val_ua", "validation UA"))
        if c in histories.columns and histories[c].notna().any()
    ]
    if not panels:
        panels = [("loss", "training loss")]
    fig = _figure(5.5 * len(panels), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)
    histories = histories.copy()
    if "fold" not in histories.columns:
        histories["fold"] = "all"
    # composite models train sub-models one after the other: one line per fold and part
    if "part" in histories.columns:
        histories["fold"] = [
            f"{f}/{p}" if isinstance(p, str) and p else str(f) for f, p in zip(histories["fold"], histories["part"])
        ]
    folds = list(dict.fromkeys(histories["fold"].astype(str)))
    colours = _colours("tab10" if len(folds) <= 10 else "tab20")
    for ax, (column, label) in zip(axes[0], panels):
        if column in histories.columns:
            for index, fold in enumerate(folds):
                rows = histories[histories["fold"].astype(str) == fold]
                curve = pd.to_numeric(rows[column], errors="coerce").groupby(rows["epoch"]).mean().dropna()
                if not curve.empty:
                    ax.plot(
                        curve.index,
                        curve.to_numpy(),
                        marker="." if len(curve) < 30 else None,
                        color=colours(index % colours.N),
                        label=fold,
                    )
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if folds:
        axes[0][-1].legend(
            title="fold",
            fontsize=7,
            title_fontsize=8,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            ncol=1 if len(folds) <= 12 else 2,
        )
    fig.suptitle(title or "learning curves")
    fig.tight_layout()
    return _save(fig, path)


def plot_routing(
    table: pd.DataFrame, by: str, path: str | Path, order: Sequence[str] | None = None, title: str | None = None
) -> Path:
    """Stacked bars of the mean local (bottom) and global (top) routing share per group, one
    panel per modality, from :func:`emomix.evaluate.routing.routing_shares` rows with ``by``."""
    rows = table[table["by"] == by]
    modalities = list(dict.fromkeys(rows["modality"]))
    if not modalities:
        raise ValueError(f"no routing rows grouped by {by!r}")
    groups = _ordered(rows["group"], order)
    width = max(4.0, 0.45 * len(groups) + 1.5)
    fig = _figure(width * len(modalities), 3.8)
    axes = fig.subplots(1, len(modalities), squeeze=False, sharey=True)
    for ax, modality in zip(axes[0], modalities):
        part = rows[rows["modality"] == modality].set_index("group").reindex(groups)
        x = np.arange(len(groups))
        local = part["local"].to_numpy(dtype=float)
        global_ = part["global"].to_numpy(dtype=float)
        ax.bar(x, local, color="tab:orange", label="local")
        ax.bar(x, global_, bottom=local, color="tab:blue", label="global")
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks(
            x, labels=groups, rotation=45 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center"
        )
        ax.set_ylim(0, 1)
        ax.set_title(modality)
        ax.set_xlabel(_BY_NAMES.get(by, by))
    axes[0][0].set_ylabel("mean routing share")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.suptitle(title or f"local vs global routing by {_BY_NAMES.get(by, by)}")
    fig.tight_layout()
    return _save(fig, path)


def plot_expert_shares(
    table: pd.DataFrame, by: str, path: str | Path, order: Sequence[str] | None = None, title: str | None = None
) -> Path:
    """Stacked bars of the mean share of every expert per group, one panel per gate (``source``),
    from :func:`emomix.evaluate.routing.expert_shares` rows with ``by``."""
    rows = table[table["by"] == by]
    sources = list(dict.fromkeys(rows["source"]))
    if not sources:
        raise ValueError(f"no expert-share rows grouped by {by!r}")
    groups = _ordered(rows["group"], order)
    width = max(4.0, 0.45 * len(groups) + 1.5)
    fig = _figure(width * len(sources), 3.8)
    axes = fig.subplots(1, len(sources), squeeze=False, sharey=True)
    colours = _colours("tab10")
    for ax, source in zip(axes[0], sources):
        part = rows[rows["source"] == source]
        experts = list(dict.fromkeys(part["expert"]))
        x = np.arange(len(groups))
        bottom = np.zeros(len(groups))
        for index, expert in enumerate(experts):
            share = part[part["expert"] == expert].set_index("group")["share"].reindex(groups).to_numpy(dtype=float)
            share = np.nan_to_num(share, nan=0.0)
            ax.bar(x, share, bottom=bottom, color=colours(index % 10), label=expert)
            bottom += share
        ax.set_xticks(
            x, labels=groups, rotation=45 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center"
        )
        ax.set_ylim(0, 1)
        ax.set_title(source)
        ax.set_xlabel(_BY_NAMES.get(by, by))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    axes[0][0].set_ylabel("mean expert share")
    fig.suptitle(title or f"expert shares by {_BY_NAMES.get(by, by)}")
    fig.tight_layout()
    return _save(fig, path)


_BY_NAMES = {"label": "true emotion", "session": "session", "speaker": "speaker", "all": "all"}


def _ordered(groups: pd.Series, order: Sequence[str] | None) -> list[str]:
    """The groups in ``order`` (those present), then any others in their table order."""
    present = list(dict.fromkeys(groups.astype(str)))
    if order is None:
        return present
    first = [g for g in order if g in present]
    return first + [g for g in present if g not in first]
