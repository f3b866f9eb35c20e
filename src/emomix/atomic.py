"""Atomic file writes: a temporary file in the same folder, flushed to disk, renamed into place.

Every report, fold plan, run record, table, recipe copy and generated waveform goes through
here, so an interrupted write never leaves a half-written file where a complete one was: readers
see the old file or the new one. The temporary file is hidden, ends in ``.tmp`` (so cleanup code
can recognise leftovers from a killed process) and is removed when the write fails.

Heavy libraries (pandas, pyarrow, soundfile) are imported only by the writer that needs them.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emomix.jsonutil import to_jsonable

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

__all__ = [
    "atomic_path",
    "fsync_dir",
    "fsync_file",
    "to_jsonable",
    "write_json_atomic",
    "write_parquet_atomic",
    "write_text_atomic",
    "write_wav_atomic",
]


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where a folder cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on a clean exit it is fsynced and renamed to ``path``.

    For writers that want a file name (``soundfile``, ``pyarrow``, ``av``, ONNX): write to the
    yielded path inside the ``with`` block. The temporary file is created empty with the normal
    permissions (respecting the umask), like a plain ``open(path, "w")`` would.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield temporary
        fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8", newline="") as stream:
        stream.write(text)
    return path


def write_json_atomic(
    path: str | Path,
    value: Any,
    indent: int | None = 1,
    *,
    convert: bool = True,
    sort_keys: bool = False,
    ensure_ascii: bool = False,
) -> Path:
    """Write ``value`` as strict JSON (one trailing newline) to ``path`` atomically.

    With ``convert`` (the default) the value first goes through :func:`to_jsonable`, so numpy
    numbers, arrays, tables and paths are accepted and NaN/inf become ``null``.
    """
    data = to_jsonable(value) if convert else value
    text = json.dumps(data, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys, allow_nan=False)
    return write_text_atomic(path, text + "\n")


def write_parquet_atomic(path: str | Path, table: pd.DataFrame | pa.Table, *, index: bool = False) -> Path:
    """Write a DataFrame (without its index unless ``index``) or an Arrow table as Parquet atomically."""
    import pyarrow.parquet as pq

    path = Path(path)
    with atomic_path(path) as temporary:
        if hasattr(table, "to_parquet"):
            table.to_parquet(temporary, index=index)
        else:
            pq.write_table(table, temporary)
    return path


def write_wav_atomic(path: str | Path, samples: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write ``samples`` (frames or frames × channels) as a WAV file atomically.

    ``subtype`` is soundfile's: ``PCM_16`` (floats in [-1, 1] are scaled by soundfile, integers
    written as they are) or ``FLOAT`` to keep float32 samples exactly.
    """
    import soundfile as sf

    path = Path(path)
    with atomic_path(path) as temporary:
        sf.write(str(temporary), samples, int(sample_rate), subtype=subtype, format="WAV")
    return path
