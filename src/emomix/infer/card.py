"""Model cards: what a trained checkpoint is, how it was trained and how well the run did.

A card is a plain JSON-serialisable dict built from the checkpoint's ``model.json``, the run's
``run.json``/``folds.json`` (fold plan fingerprint) and ``report/metrics.json`` (headline
metrics), with the model's paper from the model registry. :func:`model_card` builds it from a run
or checkpoint folder without loading any weights; :func:`predictor_card` from a loaded
:class:`~emomix.infer.predictor.Predictor` (whose ``info()`` includes the same fields);
:func:`write_model_card` writes ``model_card.json`` and a short ``MODEL_CARD.md``.

Fields (``format`` ``emomix-model-card/1``):

* ``name``, ``paper``, ``description``: the registered model;
* ``classes`` (logit order), ``inputs`` (modalities), ``batch_kind``, ``features`` (per modality
  the feature spec: encoder, stored layers, preprocessing, frame stride, speaker normalisation),
  ``speaker_normalisation`` (modalities z-scored per speaker);
* ``corpus``, ``protocol``, ``fold_plan`` (the plan's fingerprint), ``training`` (``fold``,
  ``seed`` of this checkpoint, epochs run, best epoch, best validation score and its monitor);
* ``metrics``: ``status`` ``"evaluated"`` with ``pooled`` (UA, WA, macro/weighted F1 over every
  test prediction of the run, the report's headline), ``across_folds`` (mean, SD, n per metric)
  and ``this_checkpoint`` (its own fold/seed row) — or ``status`` ``"not evaluated"`` with the
  reason when the run has no report;
* ``emomix_version`` (the version that trained the model), ``created`` (UTC, ISO 8601) and
  ``created_with`` (the emomix version that wrote the card), ``checkpoint`` and ``run`` (paths).

``emomix export`` adds an ``export`` block (files, parity results, encoders not exported).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import emomix
from emomix.atomic import write_text_atomic
from emomix.data.protocols import FoldPlan
from emomix.errors import ConfigError
from emomix.features import FeatureSpec
from emomix.infer.checkpoint import read_metrics, resolve_checkpoint
from emomix.infer.describe import training_data_notes
from emomix.jsonutil import to_jsonable
from emomix.models.base import model_info

CARD_FORMAT = "emomix-model-card/1"
CARD_JSON = "model_card.json"
CARD_MARKDOWN = "MODEL_CARD.md"
MODALITY_ORDER = ("audio", "text", "video")
METRIC_LABELS = (("ua", "UA"), ("wa", "WA"), ("macro_f1", "macro F1"), ("weighted_f1", "weighted F1"))


def model_card(run_or_checkpoint: str | Path, fold: str | None = None, seed: int | None = None) -> dict[str, Any]:
    """The card of a run's checkpoint (chosen as :meth:`Predictor.from_run` chooses it: the best
    validation score unless ``fold``/``seed`` say otherwise) or of a checkpoint folder.

    Reads only JSON files; raises :class:`~emomix.errors.MissingDataError` or
    :class:`~emomix.errors.ConfigError` for a folder that is not a trained run or checkpoint.
    """
    checkpoint, run_dir, model_json = resolve_checkpoint(run_or_checkpoint, fold, seed)
    metrics = read_metrics(run_dir, model_json) if run_dir is not None else None
    return build_card(model_json, checkpoint, run_dir, metrics)


def predictor_card(predictor: Any) -> dict[str, Any]:
    """The card of a loaded :class:`~emomix.infer.predictor.Predictor` (the same fields as
    :func:`model_card` on the folder it was loaded from)."""
    return build_card(predictor.card, predictor.checkpoint, predictor.run_dir, predictor.metrics)


def build_card(
    model_json: Mapping[str, Any], checkpoint: str | Path, run_dir: str | Path | None, metrics: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The card from a checkpoint's ``model.json``, its folder, its run folder (None for a
    checkpoint copied out of its run) and the run's metrics (``read_metrics``; None: not evaluated)."""
    name = str(model_json["model"])
    try:
        info = model_info(name)
    except Exception as exc:  # an unknown name: the registry's own message says which exist
        raise ConfigError(f"{Path(checkpoint) / 'model.json'}: model {name!r} is not registered ({exc})") from exc
    configured = (model_json.get("config") or {}).get("modalities") or info.modalities
    inputs = [m for m in MODALITY_ORDER if m in configured]
    features = {
        m: FeatureSpec.from_dict(m, values).to_dict()
        for m, values in dict(model_json.get("features") or {}).items()
        if m in inputs
    }
    return {
        "format": CARD_FORMAT,
        "name": name,
        "paper": info.paper or None,
        "description": info.description or None,
        "classes": [str(c) for c in model_json["classes"]],
        "inputs": inputs,
        "batch_kind": str(model_json.get("batch_kind") or info.batch_kind),
        "features": features,
        "speaker_normalisation": sorted(m for m, spec in features.items() if spec.get("speaker_normalisation")),
        "corpus": model_json.get("corpus"),
        "protocol": model_json.get("protocol"),
        "fold_plan": fold_plan_fingerprint(run_dir),
        "training": {
            "fold": model_json.get("fold"),
            "seed": model_json.get("seed"),
            **dict(model_json.get("training") or {}),
        },
        "metrics": dict(metrics) if metrics else not_evaluated(run_dir),
        "emomix_version": model_json.get("emomix_version"),
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "created_with": emomix.__version__,
        "checkpoint": str(checkpoint),
        "run": None if run_dir is None else str(run_dir),
        "warnings": training_data_notes(model_json, run_dir),
    }


def not_evaluated(run_dir: str | Path | None) -> dict[str, Any]:
    """The ``metrics`` entry of a card whose run has no report."""
    if run_dir is None:
        reason = "the checkpoint is not inside its run folder, so the run's report/metrics.json is out of reach"
    else:
        reason = (
            f"{Path(run_dir) / 'report' / 'metrics.json'} does not exist or is unreadable; "
            f"write it with `emomix evaluate {run_dir}`"
        )
    return {"status": "not evaluated", "reason": reason}


def fold_plan_fingerprint(run_dir: str | Path | None) -> str | None:
    """The run's fold plan fingerprint (``run.json``, else computed from ``folds.json``)."""
    if run_dir is None:
        return None
    run_json = Path(run_dir) / "run.json"
    try:
        value = json.loads(run_json.read_text()).get("fold_plan")
    except (OSError, json.JSONDecodeError, AttributeError):
        value = None
    if value:
        return str(value)
    plan = Path(run_dir) / "folds.json"
    if not plan.is_file():
        return None
    try:
        return FoldPlan.load(plan).fingerprint()
    except Exception:  # a damaged plan file: the card says "unknown" rather than failing
        return None


def write_model_card(path: str | Path, card: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``card`` as JSON and as Markdown; returns (JSON path, Markdown path).

    ``path``: a folder (``model_card.json`` and ``MODEL_CARD.md`` go inside it) or a ``.json``
    file (``MODEL_CARD.md`` goes beside it). Both are written through temporary files.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        json_path, markdown_path = path, path.with_name(CARD_MARKDOWN)
    else:
        json_path, markdown_path = path / CARD_JSON, path / CARD_MARKDOWN
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json_path, json.dumps(to_jsonable(card), indent=2) + "\n")
    write_text_atomic(markdown_path, card_markdown(card))
    return json_path, markdown_path


def card_markdown(card: Mapping[str, Any]) -> str:
    """A short human-readable card: the model, its data, training, metrics and exported files."""
    training = dict(card.get("training") or {})
    lines = [f"# Model card: {card.get('name')}", ""]
    lines += [f"> **Warning:** {warning}." for warning in card.get("warnings") or []] + (
        [""] if card.get("warnings") else []
    )
    if card.get("paper"):
        lines += [f"**Paper.** {card['paper']}", ""]
    if card.get("description"):
        lines += [f"{card['description']}", ""]
    lines += [
        f"- **Classes** (logit order): {', '.join(card.get('classes') or [])}",
        f"- **Inputs**: {', '.join(card.get('inputs') or [])} ({card.get('batch_kind')} batches)",
        f"- **Corpus**: {card.get('corpus')}; **protocol**: {card.get('protocol')}; "
        f"**fold plan**: `{card.get('fold_plan') or 'unknown'}`",
        f"- **Checkpoint**: fold {training.get('fold')}, seed {training.get('seed')}",
        f"- **emomix**: trained with {card.get('emomix_version')}, card written with {card.get('created_with')} "
        f"on {card.get('created')}",
        "",
        "## Features",
        "",
        "| modality | encoder | stored layers | frame stride | speaker-normalised | preprocessing |",
        "|---|---|---|---|---|---|",
    ]
    for modality, spec in dict(card.get("features") or {}).items():
        encoder = spec.get("encoder")
        encoder = encoder.get("name", encoder) if isinstance(encoder, Mapping) else encoder
        preprocess = ", ".join(f"{k}={v}" for k, v in dict(spec.get("preprocess") or {}).items()) or "—"
        lines.append(
            f"| {modality} | `{encoder}` | {', '.join(map(str, spec.get('layers') or [])) or '—'} | "
            f"{spec.get('frame_stride', 1)} | {'yes' if spec.get('speaker_normalisation') else 'no'} | {preprocess} |"
        )
    lines += ["", "## Training", ""]
    lines += _training_lines(training)
    lines += ["", "## Metrics", ""]
    lines += _metric_lines(dict(card.get("metrics") or {}))
    export = card.get("export")
    if isinstance(export, Mapping):
        lines += ["", "## Exported files", ""]
        lines += _export_lines(export)
    return "\n".join(lines).rstrip() + "\n"


def _training_lines(training: Mapping[str, Any]) -> list[str]:
    parts = {k: v for k, v in training.items() if k not in ("fold", "seed")}
    if not parts:
        return ["No training summary in model.json."]
    nested = {k: v for k, v in parts.items() if isinstance(v, Mapping)}
    lines = []
    flat = {k: v for k, v in parts.items() if k not in nested}
    if flat:
        lines.append("- " + "; ".join(f"{k.replace('_', ' ')}: {_value(v)}" for k, v in flat.items()))
    for name, values in nested.items():  # composite models train parts separately
        lines.append(f"- {name}: " + "; ".join(f"{k.replace('_', ' ')}: {_value(v)}" for k, v in values.items()))
    return lines


def _metric_lines(metrics: Mapping[str, Any]) -> list[str]:
    if metrics.get("status") != "evaluated":
        return [f"Not evaluated: {metrics.get('reason', 'the run has no report')}."]
    pooled = dict(metrics.get("pooled") or {})
    folds = dict(metrics.get("across_folds") or {})
    own = dict(metrics.get("this_checkpoint") or {})
    lines = [
        f"From the run's report ({len(metrics.get('folds') or [])} fold(s), seeds {metrics.get('seeds')}).",
        "",
        "| metric | pooled | across folds (mean ± SD, n) | this checkpoint's fold |",
        "|---|---|---|---|",
    ]
    for key, label in METRIC_LABELS:
        spread = folds.get(key) or {}
        sd = spread.get("sd")
        across = (
            (
                f"{_value(spread.get('mean'))}"
                + (f" ± {_value(sd)}" if sd is not None else "")
                + f" (n={spread.get('n')})"
            )
            if spread
            else "—"
        )
        lines.append(f"| {label} | {_value(pooled.get(key))} | {across} | {_value(own.get(key))} |")
    lines += [f"\nNote: {note}" for note in metrics.get("notes") or []]
    return lines


def _export_lines(export: Mapping[str, Any]) -> list[str]:
    lines = []
    onnx = export.get("onnx")
    if isinstance(onnx, Mapping):
        parity = dict(onnx.get("parity") or {})
        lines.append(
            f"- `{onnx.get('file')}` (+ `{onnx.get('spec')}`): the model head; parity on "
            f"{parity.get('utterances')} real test utterances: max |Δlogits| {_sci(parity.get('max_abs_logits'))}, "
            f"max |Δprobs| {_sci(parity.get('max_abs_probs'))} (atol {parity.get('atol')})"
        )
    for modality, entry in dict(export.get("encoders") or {}).items():
        if entry.get("exported"):
            parity = dict(entry.get("parity") or {})
            lines.append(
                f"- `{entry.get('file')}`: the {modality} encoder `{entry.get('encoder')}`; parity on "
                f"{parity.get('texts')} transcripts: max |Δ| {_sci(parity.get('max_abs'))}"
            )
        else:
            lines.append(f"- {modality} encoder `{entry.get('encoder')}`: {_not_exported(entry.get('reason'))}")
    for note in export.get("notes") or []:
        lines.append(f"- {note}")
    return lines


def _not_exported(reason: Any) -> str:
    """One plain phrase for an encoder left out of an export (no "not exported (not requested (...))")."""
    text = str(reason or "").strip()
    if not text or text.startswith("not requested"):
        return "not exported (export it with --encoders)"
    return f"not exported: {text}"


def _value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value).lower()
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _sci(value: Any) -> str:
    return f"{value:.1e}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"
