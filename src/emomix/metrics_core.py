"""Unweighted accuracy and weighted F1 on class indices: the one definition models, training and evaluation share.

This module depends only on numpy and :mod:`emomix.constants`, so any floor may import it.
"""

from __future__ import annotations

import numpy as np

from emomix.constants import IGNORE_INDEX


def unweighted_accuracy(labels: np.ndarray, predictions: np.ndarray, ignore_index: int = IGNORE_INDEX) -> float:
    """UA: the mean of the per-class recalls over the classes present in ``labels``.

    Rows whose label is ``ignore_index`` are skipped; a class absent from ``labels`` is left out
    of the mean rather than counted as 0 (see ``docs/evaluation.md``). NaN when no row is left.
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    keep = labels != ignore_index
    labels, predictions = labels[keep], predictions[keep]
    if labels.size == 0:
        return float("nan")
    recalls = [float(np.mean(predictions[labels == c] == c)) for c in np.unique(labels)]
    return float(np.mean(recalls))


def weighted_f1(labels: np.ndarray, predictions: np.ndarray, ignore_index: int = IGNORE_INDEX) -> float:
    """Weighted F1 on class indices: each present class's F1 weighted by its count in ``labels``
    (MELD's reference metric). A class never predicted has F1 0; ``ignore_index`` rows are
    skipped; NaN when no row is left. Matches :func:`emomix.evaluate.metrics.weighted_f1`."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    keep = labels != ignore_index
    labels, predictions = labels[keep], predictions[keep]
    if labels.size == 0:
        return float("nan")
    total = 0.0
    for c in np.unique(labels):
        true_positive = float(np.sum((predictions == c) & (labels == c)))
        wrong = float(np.sum((predictions == c) != (labels == c)))  # false positives + false negatives
        f1 = 2 * true_positive / (2 * true_positive + wrong) if true_positive else 0.0
        total += f1 * float(np.sum(labels == c))
    return total / labels.size
