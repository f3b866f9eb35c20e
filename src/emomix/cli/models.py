"""``emomix models``: list the registered models, or show one model's config fields.

The data comes from :func:`emomix.models.base.list_models`; this module only formats it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import typer


def register(app: typer.Typer) -> None:
    """Add the ``models`` command to the ``emomix`` app."""
    app.command("models")(models)


def models(
    name: str | None = typer.Argument(
        None, help="Show this model's paper, inputs and config fields with their defaults."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """List every registered model (name, paper, inputs, batch kind, description), or show one."""
    from emomix.models.base import list_models, model_info

    if name is not None:
        record = model_record(model_info(name), with_config=True)
        typer.echo(json.dumps(record, indent=2) if as_json else format_model(record))
        return
    records = [model_record(info) for info in list_models().values()]
    typer.echo(json.dumps(records, indent=2) if as_json else format_models(records))


def model_record(info: Any, with_config: bool = False) -> dict[str, Any]:
    """A registry entry as plain data; with ``with_config`` the config's fields and defaults
    (the variant's presets applied)."""
    record: dict[str, Any] = {
        "name": info.name,
        "paper": info.paper,
        "inputs": list(info.modalities),
        "batch_kind": info.batch_kind,
        "description": info.description,
        "class": f"{info.cls.__module__}.{info.cls.__name__}",
        "presets": {k: list(v) if isinstance(v, tuple) else v for k, v in info.default_overrides.items()},
    }
    if with_config:
        config = info.cls.config_class.from_dict(dict(info.default_overrides))
        record["config"] = {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
    return record


def format_models(records: list[dict[str, Any]]) -> str:
    """The model list as an aligned text table."""
    headers = ("name", "inputs", "batch", "paper", "description")
    rows = [
        (r["name"], "+".join(r["inputs"]), r["batch_kind"], _short(r["paper"], 40), r["description"]) for r in records
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(headers)]
    widths[-1] = len(headers[-1])  # the last column is not padded
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths[:-1]) + "  " + "-" * 11)
    lines += ["  ".join(value.ljust(w) for value, w in zip(row, widths)).rstrip() for row in rows]
    lines.append(f"{len(rows)} models; `emomix models NAME` shows one model's config fields")
    return "\n".join(lines)


def format_model(record: dict[str, Any]) -> str:
    """One model's entry and config fields as text."""
    lines = [
        f"{record['name']}: {record['description']}",
        f"paper       {record['paper']}",
        f"inputs      {', '.join(record['inputs'])} ({record['batch_kind']} batches)",
        f"class       {record['class']}",
    ]
    if record["presets"]:
        lines.append("presets     " + ", ".join(f"{k}={v}" for k, v in record["presets"].items()))
    lines.append("config (defaults; set them in a recipe's model block):")
    width = max(len(k) for k in record["config"])
    lines += [f"  {key.ljust(width)}  {json.dumps(value)}" for key, value in record["config"].items()]
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
