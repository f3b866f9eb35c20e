"""An in-memory stand-in for :class:`~emomix.cache.store.FeatureStore`, for inference.

Prediction runs the same feature path as training (:func:`emomix.features.build_features` →
:func:`emomix.cache.extract.extract_features`), which reads and writes through a store. A
:class:`MemoryStore` implements exactly the part of the store interface that path uses
(``dtype``, ``root``, ``worker``, ``acquire_writer``, ``file_digests``, ``missing``, ``put_many``,
``get_many``, ``stats``) and keeps the arrays in a dict, so nothing touches the disk and the
arrays vanish with the object.

Arrays are converted on the way in by the on-disk store's own function
(:func:`emomix.cache.store.prepare_arrays`: floats become ``dtype``, float16 by default, unless
that would overflow), so a prediction made through a :class:`MemoryStore` equals the one made
from features a run read back from its disk store.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emomix.cache.keys import sha256_file
from emomix.cache.store import STORE_DTYPES, prepare_arrays
from emomix.errors import ConfigError, MissingDataError


class MemoryStore:
    """Per-utterance feature arrays held in memory (see module doc).

    ``dtype``: the storage type of floating-point arrays, as for :class:`FeatureStore` —
    keep the default float16 to reproduce a run whose features came from a float16 store.
    """

    def __init__(self, dtype: str = "float16"):
        if dtype not in STORE_DTYPES:
            raise ConfigError(f"feature store dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
        self.dtype = dtype
        self.root = Path("<memory>")
        self.worker: str | None = None
        self._entries: dict[str, dict[str, np.ndarray]] = {}
        self._namespaces: dict[str, dict[str, Any]] = {}
        self._digests: dict[str, tuple[int, int, str]] = {}

    # -- the FeatureStore interface used by extraction ----------------------------------------

    def acquire_writer(self) -> None:
        """Nothing to lock: the store belongs to one process."""
        return None

    def close(self) -> None:
        """Drop every entry."""
        self._entries.clear()

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._entries

    def has(self, key: str) -> bool:
        """True when ``key`` is stored."""
        return key in self._entries

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys (in order, without repeats) not stored yet."""
        return [key for key in dict.fromkeys(keys) if key not in self._entries]

    def put_many(
        self,
        items: Mapping[str, Mapping[str, np.ndarray]],
        namespace: str = "default",
        description: Mapping[str, Any] | None = None,
    ) -> int:
        """Store entries ``{key: {field: array}}`` converted as the disk store converts them;
        returns how many new entries were stored (a key already present is skipped)."""
        written = 0
        for key in self.missing(items.keys()):
            self._entries[key] = prepare_arrays(key, items[key], self.dtype)
            written += 1
        if description is not None:
            self._namespaces[namespace] = dict(description)
        return written

    def put(self, key: str, arrays: Mapping[str, np.ndarray], namespace: str = "default") -> int:
        """Store one entry (see :meth:`put_many`)."""
        return self.put_many({key: arrays}, namespace=namespace)

    def get_many(
        self, keys: Sequence[str], mmap: bool = False, verify: bool = False
    ) -> dict[str, dict[str, np.ndarray]]:
        """Copies of several entries' arrays; a missing key raises :class:`MissingDataError`."""
        absent = [k for k in keys if k not in self._entries]
        if absent:
            raise MissingDataError(f"{len(absent)} key(s) are not in the in-memory feature store (first: {absent[0]})")
        return {key: {name: np.array(array) for name, array in self._entries[key].items()} for key in keys}

    def get(self, key: str, mmap: bool = False, verify: bool = False) -> dict[str, np.ndarray]:
        """One entry's arrays (a copy)."""
        return self.get_many([key])[key]

    def file_digests(self, paths: Iterable[str | Path], threads: int = 1) -> tuple[dict[str, str], dict[str, str]]:
        """SHA-256 of each file's content (cached per absolute path, size and mtime), as
        :meth:`FeatureStore.file_digests` returns them: ``(digests, errors)`` keyed by the given paths."""
        digests: dict[str, str] = {}
        errors: dict[str, str] = {}
        for path in dict.fromkeys(str(p) for p in paths):
            absolute = os.path.abspath(path)
            try:
                st = os.stat(absolute)
                cached = self._digests.get(absolute)
                if cached is not None and cached[:2] == (st.st_size, st.st_mtime_ns):
                    digests[path] = cached[2]
                    continue
                digest = sha256_file(absolute)
            except OSError as exc:
                errors[path] = f"cannot read {path}: {exc.strerror or exc}"
                continue
            self._digests[absolute] = (st.st_size, st.st_mtime_ns, digest)
            digests[path] = digest
        return digests, errors

    def stats(self) -> dict[str, Any]:
        """Entries and array bytes held, in the shape of :meth:`FeatureStore.stats`."""
        nbytes = int(sum(a.nbytes for arrays in self._entries.values() for a in arrays.values()))
        return {
            "root": str(self.root),
            "entries": len(self._entries),
            "shards": 0,
            "bytes": nbytes,
            "namespaces": {name: {"description": description} for name, description in self._namespaces.items()},
            "orphans": 0,
            "pending_parts": 0,
        }
