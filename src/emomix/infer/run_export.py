"""Export a trained run's checkpoint to ONNX, checked on the run's own test utterances, with its model card.

The steps behind ``emomix export --onnx``:

1. Load the checkpoint with :class:`~emomix.infer.predictor.Predictor` (the same choice of fold
   and seed as ``emomix predict``).
2. Pick a handful of the checkpoint fold's *test* utterances from the run's corpus
   (``config.yaml`` + ``folds.json``) and turn them into model batches with
   :meth:`Predictor.model_batch` — the predictor's own feature path, so the batches are exactly
   what ``predict`` feeds the model: one batch is the export example, two more (other batch sizes
   and lengths; for a dialogue model, one conversation and one single utterance) check parity.
3. :func:`~emomix.infer.export.export_onnx` writes ``model.onnx`` and its I/O spec;
   :func:`~emomix.infer.export.check_parity` compares PyTorch and onnxruntime on the real batches,
   and the probabilities onnxruntime gives are compared with the predictor's own results on
   them (end to end). A mismatch beyond ``atol`` raises :class:`ParityError` and removes the graph.
4. With ``encoders``, a transformers text encoder is exported too
   (:func:`~emomix.infer.export.export_text_encoder`, ``text_encoder.onnx`` + tokenizer) and
   checked on the same utterances' transcripts; other encoders are listed as not exported with
   the reason (openSMILE is a C++ library, MFCCs are NumPy...).
5. The fitted speaker normalisers are copied, and ``model_card.json`` + ``MODEL_CARD.md``
   (:mod:`emomix.infer.card`) record the export with its parity numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emomix.data.schema import is_missing
from emomix.errors import ConfigError, EmomixError, MissingDataError
from emomix.infer.export import check_parity

EXAMPLE_UTTERANCES = 3
PARITY_UTTERANCES = (4, 1)
"""Rows of the two parity batches (utterance models); a dialogue model checks one conversation
(up to :data:`MAX_DIALOGUE_TURNS` turns) and one single utterance."""
MAX_DIALOGUE_TURNS = 6
MODEL_FILE = "model.onnx"


class ParityError(EmomixError):
    """The exported graph does not reproduce the PyTorch model on the run's real inputs."""


# ---------------------------------------------------------------------------------------------
# The export
# ---------------------------------------------------------------------------------------------


def export_run(
    run: str | Path,
    out: str | Path | None = None,
    fold: str | None = None,
    seed: int | None = None,
    encoders: bool = False,
    atol: float = 1e-4,
    corpus_root: str | Path | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Export a run's checkpoint to ONNX in ``out`` (see the module doc); returns the card written.

    Raises :class:`ConfigError` when the model cannot be exported (naming why),
    :class:`MissingDataError` when the run or its corpus is out of reach, and
    :class:`ParityError` when the graph does not reproduce PyTorch on the real inputs.
    """
    from emomix.infer.card import predictor_card, write_model_card
    from emomix.infer.export import export_onnx
    from emomix.infer.predictor import Predictor

    predictor = Predictor.from_run(run, fold=fold, seed=seed, asr=False)
    card = predictor_card(predictor)
    folder = Path(out) if out is not None else predictor.checkpoint / "export"
    echo(
        f"model {card['name']} (fold {card['training'].get('fold')}, seed {card['training'].get('seed')}) "
        f"from {predictor.checkpoint}"
    )
    inputs = parity_inputs(predictor, corpus_root)
    example = predictor.model_input(predictor.model_batch(inputs.example)[0])
    path = folder / MODEL_FILE
    try:
        result = export_onnx(predictor.model, example, path, classes=predictor.classes, atol=atol, name=card["name"])
    except ConfigError as exc:
        raise ConfigError(f"{predictor.checkpoint} cannot be exported: {exc}") from exc
    echo(
        f"onnx: {result.path} ({result.path.stat().st_size / 1e6:.2f} MB, {result.exporter} exporter, "
        f"{len(result.inputs)} inputs, {len(result.outputs)} outputs; verified on random batches to "
        f"{_sci(result.verified_max_abs_diff)})"
    )
    parity = check_model_parity(predictor, path, inputs, atol)
    echo(f"parity on {inputs.count} test utterances of fold {inputs.fold} (atol {atol:g}):")
    for line in parity["lines"]:
        echo(f"  {line}")
    if not parity["ok"]:
        _remove(result.path, result.spec_path)
        raise ParityError(
            f"the exported model does not reproduce PyTorch on the run's test utterances "
            f"(max |Δlogits| {_sci(parity['max_abs_logits'])}, max |Δprobs| {_sci(parity['max_abs_probs'])}, "
            f"end to end {_sci(parity['end_to_end_max_abs_probs'])}; atol {atol:g}); {result.path} was "
            "removed — serve the PyTorch model instead"
        )
    encoder_entries = (
        export_encoders(predictor, folder, inputs, atol, echo)
        if encoders
        else {
            m: {
                "encoder": _encoder_name(predictor.specs[m].encoder),
                "exported": False,
                "reason": "not requested (add --encoders)",
            }
            for m in predictor.specs
        }
    )
    normalisers = []
    for modality, normaliser in sorted(predictor.normalisers.items()):
        target = folder / f"normaliser-{modality}.json"
        target.write_text(json.dumps(normaliser.state_dict()))
        normalisers.append(target.name)
    card["export"] = {
        "onnx": {
            "file": result.path.name,
            "spec": result.spec_path.name,
            "exporter": result.exporter,
            "opset": result.opset,
            "inputs": [s.name for s in result.inputs],
            "ignored_inputs": list(result.ignored_inputs),
            "outputs": [s.name for s in result.outputs],
            "megabytes": round(result.path.stat().st_size / 1e6, 3),
            "verified_max_abs_diff": result.verified_max_abs_diff,
            "parity": {k: v for k, v in parity.items() if k != "lines"},
        },
        "encoders": encoder_entries,
        "normalisers": normalisers,
        "notes": export_notes(predictor, encoder_entries),
    }
    json_path, markdown_path = write_model_card(folder, card)
    echo(f"model card: {json_path}, {markdown_path}")
    return card


def check_model_parity(predictor: Any, path: Path, inputs: ParityInputs, atol: float) -> dict[str, Any]:
    """PyTorch against onnxruntime on the real parity batches (:func:`check_parity`), and the
    probabilities onnxruntime gives against the predictor's own results for the same items."""
    from emomix.infer.export import OnnxModel

    batches, results = [], []
    for items, as_dialogue in inputs.batches:
        batch, predicted = predictor.model_batch(items, as_dialogue=as_dialogue)
        batches.append(predictor.model_input(batch))
        results.append(predicted)
    report = check_parity(predictor.model, path, batches, atol=atol)
    runner = OnnxModel(path)
    end_to_end = 0.0
    compared = 0
    for batch, predicted in zip(batches, results):
        logits = runner.run(batch)["logits"]
        if logits.ndim == 3:  # dialogue batch: the real utterances, in the items' order
            logits = logits[batch.mask.cpu().numpy().astype(bool)]
        probs = _softmax(logits.astype(np.float64))
        for row, result in zip(probs, predicted):
            if result["modalities"] != list(predictor.modalities):
                continue  # an audio-only reading is not the batch's logits
            expected = np.array([result["probabilities"][c] for c in predictor.classes])
            end_to_end = max(end_to_end, float(np.abs(row - expected).max()))
            compared += 1
    lines = [
        f"B={b.batch_size} "
        + " ".join(f"{k}={v}" for k, v in b.lengths.items())
        + f": max |Δlogits| {_sci(b.max_abs_logits)}, max |Δprobs| {_sci(b.max_abs_probs)}, "
        f"argmax agreement {b.argmax_agreement:.0%}"
        for b in report.batches
    ]
    lines.append(
        f"end to end (Predictor.predict vs onnxruntime probabilities, {compared} utterances): "
        f"max |Δ| {_sci(end_to_end)}"
    )
    ok = report.ok and compared > 0 and end_to_end <= atol
    lines.append("parity ok" if ok else "parity FAILED")
    return {
        "ok": ok,
        "atol": atol,
        "fold": inputs.fold,
        "utterances": inputs.count,
        "max_abs_logits": report.max_abs_logits,
        "max_abs_probs": report.max_abs_probs,
        "end_to_end_max_abs_probs": end_to_end,
        "end_to_end_utterances": compared,
        "batches": [
            {
                "batch_size": b.batch_size,
                "lengths": b.lengths,
                "max_abs_logits": b.max_abs_logits,
                "max_abs_probs": b.max_abs_probs,
                "argmax_agreement": b.argmax_agreement,
            }
            for b in report.batches
        ],
        "lines": lines,
    }


def export_encoders(
    predictor: Any, folder: Path, inputs: ParityInputs, atol: float, echo: Callable[[str], None] = print
) -> dict[str, dict[str, Any]]:
    """Export each encoder that can be (a transformers text encoder) and check it on the parity
    utterances' transcripts; the others get the reason they are not exported."""
    from emomix.infer.export import encoder_export_blocker, export_text_encoder

    entries: dict[str, dict[str, Any]] = {}
    for modality, encoder in predictor.encoders.items():
        spec = predictor.specs[modality]
        entry: dict[str, Any] = {"encoder": _encoder_name(spec.encoder), "exported": False}
        reason = encoder_export_blocker(encoder)
        if reason is not None:
            entry["reason"] = reason
            echo(f"{modality} encoder {entry['encoder']}: not exported ({reason})")
            entries[modality] = entry
            continue
        texts = inputs.texts
        exported = export_text_encoder(
            encoder,
            folder / f"{modality}_encoder.onnx",
            layers=spec.layers,
            texts=texts,
            check_batches=[[*texts, ""], texts[-1:]],
            atol=atol,
        )
        parity = exported.parity
        entry.update(
            {
                "exported": True,
                "file": exported.path.name,
                "spec": exported.spec_path.name,
                "tokenizer": exported.tokenizer_dir.name,
                "outputs": exported.outputs,
                "layers": list(spec.layers),
                "megabytes": round(exported.path.stat().st_size / 1e6, 3),
                "parity": {
                    "ok": parity.ok,
                    "atol": atol,
                    "texts": parity.texts,
                    "max_abs": parity.max_abs,
                    "batches": [
                        {"batch_size": b.batch_size, "sequence_length": b.sequence_length, "max_abs": b.max_abs}
                        for b in parity.batches
                    ],
                },
            }
        )
        echo(
            f"{modality} encoder {entry['encoder']}: {exported.path} ({entry['megabytes']:.1f} MB, outputs "
            f"{', '.join(exported.outputs)}); parity on {parity.texts} transcripts: {parity.summary()}"
        )
        entries[modality] = entry
    return entries


def export_notes(predictor: Any, encoders: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What a user of the graph must do around it, from the card's features."""
    notes = [
        "model.onnx takes encoder features (see model.onnx_io_spec.json), not audio or text; "
        "the feature store keeps them in float16 (predict rounds them the same way)"
    ]
    for modality, spec in predictor.specs.items():
        steps = []
        if spec.frame_stride > 1:
            steps.append(f"average {spec.frame_stride} frames per step")
        if spec.speaker_normalisation:
            steps.append(
                f"z-score per speaker with normaliser-{modality}.json (the pooled statistics for unseen speakers)"
            )
        if spec.layers:
            steps.append(f"stack hidden layers {', '.join(map(str, spec.layers))} as {modality}_layer_states")
        if steps:
            notes.append(f"{modality} features: " + "; ".join(steps))
    if predictor.card.get("edges"):
        notes.append("the run used token–frame edges; the graph takes none (the model's spread fallback)")
    return notes


# ---------------------------------------------------------------------------------------------
# Real inputs: the checkpoint fold's test utterances
# ---------------------------------------------------------------------------------------------


@dataclass
class ParityInputs:
    """Predictor items from the fold's test part: the export example and the parity batches
    (items, whether they form one conversation)."""

    fold: str
    example: list[dict[str, Any]]
    batches: list[tuple[list[dict[str, Any]], bool]]
    utt_ids: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Utterances in the parity batches."""
        return sum(len(items) for items, _ in self.batches)

    @property
    def texts(self) -> list[str]:
        """The parity utterances' transcripts (for the text encoder's check)."""
        return [str(item["text"]) for items, _ in self.batches for item in items if item.get("text")]


def parity_inputs(predictor: Any, corpus_root: str | Path | None = None) -> ParityInputs:
    """A handful of the checkpoint fold's test utterances, spread over the fold's test list,
    as predictor items (audio path or span, transcript, speaker)."""
    import yaml

    from emomix.data.protocols import FoldPlan
    from emomix.data.readers import read_corpus

    run_dir = predictor.run_dir
    if run_dir is None:
        raise MissingDataError(
            f"{predictor.checkpoint} is not inside its run folder: the parity check runs on the run's "
            "test utterances (config.yaml and folds.json of the run); export from the run folder"
        )
    config_path, plan_path = Path(run_dir) / "config.yaml", Path(run_dir) / "folds.json"
    for needed in (config_path, plan_path):
        if not needed.is_file():
            raise MissingDataError(
                f"{needed} does not exist: the parity check reads the run's corpus and fold plan; "
                "is this a complete run folder?"
            )
    corpus_block = _corpus_block(yaml.safe_load(config_path.read_text()), config_path)
    fold_name = str(predictor.card.get("fold"))
    plan = FoldPlan.load(plan_path)
    fold = next((f for f in plan.folds if f.name == fold_name), None)
    if fold is None:
        raise ConfigError(
            f"{plan_path} has no fold {fold_name!r} (the checkpoint's fold); folds: "
            f"{', '.join(f.name for f in plan.folds)}"
        )
    root = Path(corpus_root) if corpus_root is not None else Path(corpus_block["root"])
    if not root.exists():
        raise MissingDataError(
            f"the run's corpus {root} ({corpus_block['reader']}) does not exist here: the parity check "
            "needs the checkpoint fold's test utterances; give --corpus-root where the corpus is now"
        )
    corpus = read_corpus(corpus_block["reader"], root, scheme=corpus_block["scheme"], **corpus_block["options"])
    table = corpus.table.drop_duplicates("utt_id").set_index("utt_id", drop=False)
    usable = [u for u in fold.test if u in table.index and _usable(table.loc[u], predictor.modalities, root)]
    if len(usable) < 2:
        raise MissingDataError(
            f"fold {fold_name} of {run_dir} has {len(usable)} test utterance(s) with the inputs the "
            f"model reads ({', '.join(predictor.modalities)}) in {root}; parity needs at least 2"
        )
    picks = _spread(usable, EXAMPLE_UTTERANCES + sum(PARITY_UTTERANCES))

    def item(utt_id: str) -> dict[str, Any]:
        return _item(table.loc[utt_id], root)

    if len(picks) >= EXAMPLE_UTTERANCES + sum(PARITY_UTTERANCES):
        example, first, second = (
            picks[:EXAMPLE_UTTERANCES],
            picks[EXAMPLE_UTTERANCES : -PARITY_UTTERANCES[1]],
            picks[-PARITY_UTTERANCES[1] :],
        )
    else:  # a tiny test part: the example and the first batch share utterances
        example, first, second = picks, picks[:-1], picks[-1:]
    batches = [([item(u) for u in first], False), ([item(u) for u in second], False)]
    if predictor.batch_kind == "dialogue":
        conversation = _first_dialogue(table, usable)
        if conversation:
            batches[0] = ([item(u) for u in conversation], True)
            first = conversation
    return ParityInputs(fold_name, [item(u) for u in example], batches, [*first, *second])


def _corpus_block(config: Any, path: Path) -> dict[str, Any]:
    """The ``corpus`` block of a run's ``config.yaml`` (the resolved recipe written by the training command):
    reader, root, scheme and reader options."""
    corpus = config.get("corpus") if isinstance(config, Mapping) else None
    if not isinstance(corpus, Mapping) or not corpus.get("reader") or not corpus.get("root"):
        raise ConfigError(
            f"{path} has no corpus block with a reader and a root; is this a run folder written by the "
            "`train` command (see `emomix --help`)?"
        )
    return {
        "reader": str(corpus["reader"]),
        "root": str(corpus["root"]),
        "scheme": corpus.get("scheme", "default"),
        "options": dict(corpus.get("options") or {}),
    }


def _usable(row: Any, modalities: Sequence[str], root: Path) -> bool:
    if "text" in modalities and not (isinstance(row.get("text"), str) and row.get("text").strip()):
        return False
    if "audio" in modalities:
        audio = row.get("audio_path")
        if not isinstance(audio, str) or not audio or not _audio_path(audio, root).exists():
            return False
    return True


def _audio_path(value: str, root: Path) -> Path:
    path = Path(value)
    return path if path.is_absolute() else root / path


def _item(row: Any, root: Path) -> dict[str, Any]:
    """A predictor item for a table row; a span of a longer file is read as an array."""
    text = row.get("text") if isinstance(row.get("text"), str) and row.get("text").strip() else None
    speaker = None if row.get("speaker") is None or is_missing(row.get("speaker")) else str(row.get("speaker"))
    audio = row.get("audio_path")
    if not isinstance(audio, str) or not audio:
        return {"audio": None, "text": text, "speaker": speaker}
    path = _audio_path(audio, root)
    start, end = row.get("start"), row.get("end")
    if is_missing(start) and is_missing(end):
        return {"audio": str(path), "text": text, "speaker": speaker}
    from emomix.audio.io import TARGET_RATE, load_audio

    wave = load_audio(
        path, start=None if is_missing(start) else float(start), end=None if is_missing(end) else float(end)
    )
    return {"audio": wave, "sample_rate": TARGET_RATE, "text": text, "speaker": speaker}


def _first_dialogue(table: Any, usable: Sequence[str]) -> list[str]:
    """The turns (in order, at most :data:`MAX_DIALOGUE_TURNS`) of the first test dialogue with two or
    more usable turns."""
    if "dialogue_id" not in table.columns:
        return []
    rows = table.loc[list(usable)]
    for _, group in rows.groupby("dialogue_id", sort=False):
        if len(group) >= 2:
            ordered = group.sort_values("turn") if "turn" in group.columns else group
            return list(ordered["utt_id"])[:MAX_DIALOGUE_TURNS]
    return []


def _spread(values: Sequence[str], count: int) -> list[str]:
    """``count`` values spread evenly over ``values`` (all of them when there are fewer)."""
    if len(values) <= count:
        return list(values)
    positions = np.linspace(0, len(values) - 1, count).round().astype(int)
    return [values[i] for i in dict.fromkeys(positions.tolist())]


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def _encoder_name(spec: Any) -> str:
    return str(spec.get("name", spec)) if isinstance(spec, Mapping) else str(spec)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _sci(value: Any) -> str:
    return "—" if value is None else f"{float(value):.1e}"


def _remove(*paths: Path) -> None:
    for path in paths:
        Path(path).unlink(missing_ok=True)
