"""Many inputs through a trained model: collect them (a file, a folder, a manifest CSV), predict
them batch by batch, conversation by conversation or as timelines, and write the rows (JSON lines,
JSON or CSV).

The library side of ``emomix predict``: one output row per input; an input that fails gets a row
with its error and the others go on. A manifest may group its rows into conversations
(``dialogue_id``, optional ``turn``); a model that reads the conversation (``reads_dialogue``)
then predicts each dialogue as one (:meth:`~emomix.infer.predictor.Predictor.predict_dialogue`).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from emomix.errors import ConfigError, MissingDataError
from emomix.infer.timeline import timeline_json

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
MANIFEST_COLUMNS = ("audio_path", "text", "speaker", "video_path", "dialogue_id", "turn")
DIALOGUE_KEYS = ("dialogue_id", "turn")
"""Keys of a manifest item that place it in a conversation; the model never sees them as input."""


def collect_inputs(
    source: Path, text: str | None = None, speaker: str | None = None, video: Path | None = None
) -> list[dict[str, Any]]:
    """Predictor items from a file, a folder (its audio files, sorted, not recursive) or a manifest CSV;
    ``video``: the single file's video (for models that read video)."""
    if video is not None and (source.is_dir() or source.suffix.lower() == ".csv"):
        raise ConfigError("--video applies to a single file; give a manifest CSV with a video_path column")
    source = Path(source)
    if not source.exists():
        raise MissingDataError(
            f"{source} does not exist; give an audio file, a folder of audio files or a CSV manifest"
        )
    if source.is_dir():
        if text is not None or speaker is not None:
            raise ConfigError(
                "--text/--speaker apply to a single file; give a manifest CSV with text and speaker columns"
            )
        files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise MissingDataError(f"{source} holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
        return [{"audio": str(p)} for p in files]
    if source.suffix.lower() == ".csv":
        if text is not None or speaker is not None:
            raise ConfigError("--text/--speaker apply to a single file; a manifest has text and speaker columns")
        return read_manifest(source)
    item: dict[str, Any] = {"audio": str(source)}
    if text is not None:
        item["text"] = text
    if speaker is not None:
        item["speaker"] = speaker
    if video is not None:
        item["video"] = str(video)
    return [item]


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV with ``audio_path`` (relative paths are relative to the CSV) and/or ``text``,
    and optional ``speaker``, ``video_path``, ``dialogue_id`` and ``turn`` columns; an empty cell
    means none. A manifest without ``audio_path`` (transcripts only) is for text-only models; a
    row with neither audio nor text is skipped. ``turn`` must be a whole number (the turn's place
    in its dialogue)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "audio_path" not in columns and "text" not in columns:
            raise ConfigError(
                f"{path}: a manifest needs an audio_path or a text column (optional: speaker, video_path); it has "
                f"{', '.join(columns) or 'no header'}"
            )
        items = []
        for row in reader:
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            if not row.get("audio_path") and not row.get("text"):
                continue
            item: dict[str, Any] = {}
            if row.get("audio_path"):
                audio = Path(row["audio_path"]).expanduser()
                item["audio"] = str(audio if audio.is_absolute() else path.parent / audio)
            if row.get("text"):
                item["text"] = row["text"]
            if row.get("speaker"):
                item["speaker"] = row["speaker"]
            if row.get("video_path"):
                video = Path(row["video_path"]).expanduser()
                item["video"] = str(video if video.is_absolute() else path.parent / video)
            if row.get("dialogue_id"):
                item["dialogue_id"] = row["dialogue_id"]
            if row.get("turn"):
                try:
                    item["turn"] = int(row["turn"])
                except ValueError:
                    raise ConfigError(
                        f"{path}, line {reader.line_num}: turn must be a whole number (the turn's place in "
                        f"its dialogue), got {row['turn']!r}"
                    ) from None
            items.append(item)
    if not items:
        raise MissingDataError(f"{path}: the manifest lists no audio file and no transcript")
    return items


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def input_name(item: Mapping[str, Any]) -> str:
    """What an output row calls its input: the audio path, else the transcript."""
    return str(item["audio"]) if item.get("audio") is not None else f"text: {item.get('text', '')}"


def model_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """The predictor's input: the item without its place in a conversation."""
    return {key: value for key, value in item.items() if key not in DIALOGUE_KEYS}


def has_dialogues(items: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any item names its dialogue."""
    return any(item.get("dialogue_id") is not None for item in items)


def dialogue_groups(items: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """The positions of the items that name a dialogue, one list per dialogue (in the order the
    dialogues first appear), each in turn order: by ``turn`` when the dialogue's rows give one,
    else in manifest order. A dialogue that numbers some turns and not others, or numbers two
    alike, is an error: its order would be a guess."""
    groups: dict[str, list[int]] = {}
    for position, item in enumerate(items):
        if item.get("dialogue_id") is not None:
            groups.setdefault(str(item["dialogue_id"]), []).append(position)
    ordered = []
    for dialogue, positions in groups.items():
        turns = [items[p].get("turn") for p in positions]
        numbered = [t for t in turns if t is not None]
        if numbered and len(numbered) < len(turns):
            raise ConfigError(
                f"dialogue {dialogue!r}: {len(numbered)} of its {len(turns)} rows give a turn; "
                "give every row's turn or none (then the manifest's order is the turn order)"
            )
        if len(set(numbered)) < len(numbered):
            repeated = sorted({t for t in numbered if numbered.count(t) > 1})
            raise ConfigError(f"dialogue {dialogue!r}: turn {repeated[0]} appears more than once")
        ordered.append(sorted(positions, key=lambda p: items[p].get("turn") or 0) if numbered else positions)
    return ordered


def run_predictions(
    predictor: Any, items: Sequence[Mapping[str, Any]], batch_size: int, progress: bool = True
) -> list[dict[str, Any]]:
    """Every item's prediction under a progress bar, in the items' order; each result carries its
    ``input`` (and its ``dialogue_id``/``turn`` when the item has them).

    With a model that reads the conversation (``predictor.reads_dialogue``), the items that name a
    dialogue are predicted dialogue by dialogue (``predict_dialogue``: each turn with its context);
    a dialogue with a failing turn gives every one of its turns an error row, since its context is
    incomplete. Every other item goes through ``predict_many``, ``batch_size`` at a time."""
    from tqdm.auto import tqdm

    from emomix.errors import EmomixError

    results: list[dict[str, Any] | None] = [None] * len(items)

    def place(position: int, result: Mapping[str, Any]) -> None:
        item = items[position]
        where = {key: item[key] for key in DIALOGUE_KEYS if item.get(key) is not None}
        results[position] = {"input": input_name(item), **where, **{k: v for k, v in result.items() if k != "input"}}

    dialogues = dialogue_groups(items)  # an ambiguous turn order is an error with any model
    if not getattr(predictor, "reads_dialogue", False):
        dialogues = []
    in_dialogue = {position for group in dialogues for position in group}
    alone = [position for position in range(len(items)) if position not in in_dialogue]
    with tqdm(
        total=len(items), unit="file", desc="predict", disable=not progress, dynamic_ncols=True, file=sys.stderr
    ) as bar:
        for group in dialogues:
            try:
                predicted = predictor.predict_dialogue([model_item(items[p]) for p in group])
            except EmomixError as exc:
                dialogue = items[group[0]]["dialogue_id"]
                failure = {
                    "error": f"dialogue {dialogue!r} could not be predicted as a conversation: {exc}",
                    "error_type": type(exc).__name__,
                }
                predicted = [failure] * len(group)
            for position, result in zip(group, predicted):
                place(position, result)
            bar.update(len(group))
        for start in range(0, len(alone), batch_size):
            chunk = alone[start : start + batch_size]
            for position, result in zip(
                chunk, predictor.predict_many([model_item(items[p]) for p in chunk], batch_size=batch_size)
            ):
                place(position, result)
            bar.update(len(chunk))
    return [result for result in results if result is not None]


def run_timelines(
    predictor: Any, items: Sequence[Mapping[str, Any]], batch_size: int, plot: Path | None, progress: bool = True
) -> list[dict[str, Any]]:
    """One timeline per input (a failing input gives an error row); plots when asked."""
    from emomix.errors import EmomixError
    from emomix.infer.timeline import plot_timeline, predict_timeline

    results = []
    for item in items:
        if item.get("audio") is None:
            results.append(
                {"input": input_name(item), "error": "a timeline needs a recording", "error_type": "ConfigError"}
            )
            continue
        try:
            result = predict_timeline(
                predictor,
                item["audio"],
                text=item.get("text"),
                speaker=item.get("speaker"),
                batch_size=batch_size,
                progress=progress,
            )
        except EmomixError as exc:
            results.append({"input": item["audio"], "error": str(exc), "error_type": type(exc).__name__})
            continue
        if plot is not None:
            target = plot if len(items) == 1 else plot.with_name(f"{plot.stem}-{Path(item['audio']).stem}{plot.suffix}")
            result["plot"] = str(plot_timeline(result, target))
        results.append({"input": item["audio"], **result})
    return results


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def write_results(
    results: Sequence[Mapping[str, Any]], out: Path | None, classes: Sequence[str], timeline: bool = False
) -> str:
    """Write rows as JSON lines (stdout or ``.jsonl``), ``.json`` or ``.csv``; return where they went."""
    if out is None:
        for row in results:  # a timeline is a document per recording: indented, not kilobytes on one line
            print(
                timeline_json(row) if timeline else json.dumps(row, ensure_ascii=False),
                end="" if timeline else "\n",
                flush=True,
            )
        return "stdout"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    temporary = out.with_name(out.name + ".tmp")
    if suffix == ".jsonl":
        with open(temporary, "w", encoding="utf-8") as handle:
            for row in results:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif suffix == ".json":
        temporary.write_text(json.dumps(list(results), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    elif suffix == ".csv":
        rows = list(timeline_rows(results) if timeline else results)
        flat = [flatten_result(row, classes) for row in rows]
        columns: list[str] = []
        for row in flat:
            columns.extend(c for c in row if c not in columns)
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(flat)
    else:
        raise ConfigError(f"--out must end in .jsonl, .csv or .json, got {out.name}")
    temporary.replace(out)
    return str(out)


def timeline_rows(results: Iterable[Mapping[str, Any]]) -> Iterable[dict[str, Any]]:
    """One row per segment of every timeline (an input that failed keeps its error row)."""
    for result in results:
        if "error" in result:
            yield dict(result)
            continue
        for segment in result.get("segments", []):
            yield {"input": result["input"], **segment}


def flatten_result(result: Mapping[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """A result dict as one flat CSV row: ``prob_<class>`` and ``aux_<name>[_j]`` columns."""
    row: dict[str, Any] = {}
    for key in ("input", "dialogue_id", "turn", "start", "end", "label"):
        if key in result:
            row[key] = result[key]
    probabilities = result.get("probabilities") or {}
    for name in classes:
        if probabilities:
            row[f"prob_{name}"] = probabilities.get(name)
    for name, value in sorted((result.get("aux") or {}).items()):
        if isinstance(value, list):
            row.update({f"aux_{name}_{j}": v for j, v in enumerate(value)})
        else:
            row[f"aux_{name}"] = value
    for key in ("transcript", "transcript_source", "duration_s"):
        if key in result:
            row[key] = result[key]
    if "modalities" in result:
        row["modalities"] = ";".join(result["modalities"])
    if "notes" in result:
        row["notes"] = "; ".join(result["notes"])
    row["error"] = result.get("error", "")
    row["error_type"] = result.get("error_type", "")
    return row


def distinct_notes(results: Iterable[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """Every note the rows carry, once, in first-seen order, with how many rows carry it (a note a
    whole run shares, such as the synthetic-corpus warning, is then shown once)."""
    counts: dict[str, int] = {}
    for row in results:
        for note in row.get("notes") or []:
            counts[str(note)] = counts.get(str(note), 0) + 1
    return list(counts.items())
