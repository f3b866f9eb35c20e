"""Words for people: human labels of a result's ``aux`` readings and the notes a model always carries.

The result dicts keep their machine names (``route_audio``, ``vad_fallback``, …) so that scripts
and saved results stay stable; the web page, the command line and the model card show the labels
from here, so the three say the same thing. :func:`training_data_notes` gives the warning every
prediction of a model trained on the synthetic corpus carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

SYNTHETIC_READER = "synthetic"
SYNTHETIC_NOTE = (
    "trained on the synthetic corpus: its labels are not meaningful on real speech; "
    "train a real-corpus recipe (docs/recipes.md) before using it on recordings"
)

AUX_LABELS: dict[str, str] = {
    "route_audio": "audio routing: local / global",
    "route_text": "text routing: local / global",
    "vad_fallback": "no speech found: whole clip used",
    "text_content_fallback": "no content words: whole transcript used",
    "gate_weights": "expert gate weights",
    "gate_probs": "expert gate probabilities",
    "graph_approximate": "no word timings: token–frame graph spread evenly",
}
"""Human label of each known aux reading (others are shown by their name with ``_`` as spaces)."""

FLAGS = frozenset({"vad_fallback", "text_content_fallback", "graph_approximate"})
"""Aux readings that are yes/no flags (0 or 1) rather than weights."""


def aux_label(name: str) -> str:
    """The human label of an aux reading, e.g. ``route_audio`` → ``audio routing: local / global``."""
    return AUX_LABELS.get(name, name.replace("_", " "))


def component_names(name: str, count: int) -> list[str]:
    """Names of the components of a vector reading: ``local``/``global`` for a router, ``expert j`` for a gate."""
    if name.startswith("route_") and count == 2:
        return ["local", "global"]
    if "gate" in name:
        return [f"expert {j}" for j in range(count)]
    return [f"#{j}" for j in range(count)]


def describe_aux(aux: Mapping[str, Any]) -> list[str]:
    """One human line per aux reading, e.g. ``audio routing: local 0.25 / global 0.75`` or
    ``no speech found: whole clip used: no`` (for the command line's human output)."""
    lines = []
    for name, value in aux.items():
        if isinstance(value, (list, tuple)):
            parts = [f"{part} {_number(v)}" for part, v in zip(component_names(name, len(value)), value)]
            if name.startswith("route_"):  # "audio routing: local 0.250 / global 0.750"
                lines.append(f"{aux_label(name).split(':', 1)[0]}: {' / '.join(parts)}")
            else:
                lines.append(f"{aux_label(name)}: {', '.join(parts)}")
        elif name in FLAGS:
            lines.append(f"{aux_label(name)}: {'yes' if value else 'no'}")
        else:
            lines.append(f"{aux_label(name)}: {_number(value)}")
    return lines


def aux_labels_json() -> dict[str, Any]:
    """The label table for the web page (``GET /model``): labels and which readings are flags."""
    return {"labels": dict(AUX_LABELS), "flags": sorted(FLAGS)}


def corpus_readers(card: Mapping[str, Any], run_dir: str | Path | None) -> set[str]:
    """The corpus reader(s) a model was trained on: ``model.json``'s ``corpus`` and, when the run
    folder is at hand, its ``config.yaml``'s ``corpus.reader``."""
    readers = {str(card["corpus"])} if card.get("corpus") else set()
    if run_dir is not None:
        config = Path(run_dir) / "config.yaml"
        try:
            import yaml

            reader = ((yaml.safe_load(config.read_text()) or {}).get("corpus") or {}).get("reader")
        except Exception:
            reader = None
        if reader:
            readers.add(str(reader))
    return readers


def training_data_notes(card: Mapping[str, Any], run_dir: str | Path | None) -> list[str]:
    """Notes every prediction of this model carries: the synthetic-corpus warning when it applies."""
    return [SYNTHETIC_NOTE] if SYNTHETIC_READER in corpus_readers(card, run_dir) else []


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
