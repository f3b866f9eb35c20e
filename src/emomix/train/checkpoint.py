"""Resume checkpoints and run-folder files that survive a kill at any moment.

Lightning's own checkpoint writer stages the file in the system temporary folder and moves it into
place; when that folder is on another file system (a tmpfs ``/tmp``) the move is a copy, so a kill
during it leaves a truncated ``last-*.ckpt`` that blocks every later resume, and each killed save
leaves a stray file in ``/tmp``. :class:`AtomicCheckpointIO` writes next to the target and renames,
so the previous checkpoint stays whole until the new one is complete; :func:`usable_checkpoint`
sets aside a checkpoint that cannot be opened (written by an older version or a crashed copy), so
the fold starts over instead of failing; :func:`remove_stale_temporaries` deletes the temporary
files a killed write leaves in a run folder.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from emomix.faults import pause as fault_pause


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with the file written beside its target, fsync'd and renamed."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        try:
            with open(temporary, "wb") as stream:
                torch.save(checkpoint, stream)
                stream.flush()
                os.fsync(stream.fileno())
            fault_pause("train.checkpoint_write")  # fault injection only (emomix.faults)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


def usable_checkpoint(path: Path) -> Path | None:
    """``path`` when it is a complete checkpoint; None when it is absent or cannot be opened (then it
    is deleted, so training of the fold starts over)."""
    if not path.exists():
        return None
    try:
        with zipfile.ZipFile(path) as archive:  # torch.save writes a zip; truncation loses its directory
            archive.namelist()
        return path
    except (zipfile.BadZipFile, OSError):
        path.unlink(missing_ok=True)
        warnings.warn(
            f"{path} was incomplete (an interrupted save) and is removed; this fold trains from its first epoch",
            stacklevel=2,
        )
        return None


def remove_stale_temporaries(folder: Path, skip: Iterable[Path] = ()) -> list[Path]:
    """Delete the temporary files (``*.tmp``) that killed writes left under ``folder`` (outside ``skip``);
    call it only when no other process writes the folder."""
    skipped = [Path(p).resolve() for p in skip]
    removed = []
    for path in folder.rglob("*.tmp"):
        resolved = path.resolve()
        if path.is_file() and not any(resolved.is_relative_to(s) for s in skipped):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
