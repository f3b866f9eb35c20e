"""The feature store: unpadded arrays in safetensors shards, indexed by content key in SQLite.

Layout of a store folder::

    index.sqlite                         the index (entries, shards, namespaces, file digests)
    index-parts/<worker>.sqlite          one index per scale-out worker until merged
    shards/<namespace>/<writer>-<id>.safetensors
    locks/<writer>.lock                  held while a process writes as that writer

A shard holds many utterances. For each field (``states``, ``layer_8``, ``pooled``...) and each
distinct (dtype, trailing shape) the utterances' arrays are concatenated along their first axis
into one tensor, so nothing is padded; the index maps each key to its shard and, per field, the
tensor name, first row, full shape and dtype, plus a SHA-256 checksum of the entry's bytes. The
shard's safetensors metadata repeats that layout, so a shard describes itself.

Reads memory-map the shard (``numpy.memmap`` over the safetensors data section) and return views
(``mmap=True``) or copies. Writes are atomic: a shard is written to a temporary file, fsync'd and
renamed into place, and only then its entries are committed to the index in one SQLite
transaction. A crash leaves at worst a temporary file or an unindexed shard; the next writer with
the same writer id adopts a complete unindexed shard (after checking every checksum) or deletes
it, and removes temporary files. An indexed entry is therefore always complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emomix.atomic import fsync_dir, fsync_file
from emomix.cache.keys import sha256_file
from emomix.errors import ConfigError, EmomixError, MissingDataError
from emomix.faults import pause as fault_pause

_log = logging.getLogger(__name__)

try:  # POSIX advisory locks; without them (Windows) one writer per writer id is the user's duty.
    import fcntl
except ImportError:  # pragma: no cover - exercised only on Windows
    fcntl = None  # type: ignore[assignment]

SHARD_FORMAT = "emomix-feature-shard-1"
INDEX_NAME = "index.sqlite"
PARTS_DIR = "index-parts"
SHARDS_DIR = "shards"
LOCKS_DIR = "locks"
STORE_DTYPES = ("float16", "float32")
MAIN_WRITER = "main"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SQL_CHUNK = 500

_SAFETENSORS_DTYPES = {
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "I8": np.int8,
    "I16": np.int16,
    "I32": np.int32,
    "I64": np.int64,
    "U8": np.uint8,
    "U16": np.uint16,
    "U32": np.uint32,
    "U64": np.uint64,
    "BOOL": np.bool_,
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shards (
    shard TEXT PRIMARY KEY, namespace TEXT NOT NULL, nbytes INTEGER NOT NULL,
    entries INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY, namespace TEXT NOT NULL, shard TEXT NOT NULL,
    layout TEXT NOT NULL, nbytes INTEGER NOT NULL, checksum TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS entries_by_shard ON entries(shard);
CREATE TABLE IF NOT EXISTS namespaces (namespace TEXT PRIMARY KEY, description TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS file_digests (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL);
"""


class StoreError(EmomixError):
    """A feature-store file is corrupt, truncated or locked by another writer."""


@dataclass
class VerifyReport:
    """Result of :meth:`FeatureStore.verify`: entries checked and the bad ones with the reason."""

    checked: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    removed: int = 0

    @property
    def ok(self) -> bool:
        """True when every checked entry was readable and matched its checksum."""
        return not self.bad


@dataclass
class MergeReport:
    """Result of :meth:`FeatureStore.merge_parts`."""

    merged: list[str] = field(default_factory=list)
    entries_added: int = 0
    busy: list[str] = field(default_factory=list)


@dataclass
class CleanupReport:
    """Result of :meth:`FeatureStore.cleanup`: temporary files removed, orphan shards adopted or removed."""

    temp_removed: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    orphans_removed: list[str] = field(default_factory=list)


class FeatureStore:
    """A content-addressed store of per-utterance feature arrays.

    ``root`` is the store folder (created unless ``create=False``). ``dtype`` is the storage type of
    floating-point arrays: ``"float16"`` halves the disk and read cost (a field whose values would
    overflow float16 is kept as float32 for that entry); integer and boolean arrays keep their
    type. ``worker`` names a scale-out worker: it writes its own shards and its own index part
    (``index-parts/<worker>.sqlite``) and reads both its part and the main index;
    :func:`merge_indexes` folds the parts into the main index at the end.

    One process at a time may write as a given writer (the main index or one worker); a second one
    gets a :class:`StoreError`. Readers need no lock and may read while a writer writes.
    """

    def __init__(
        self,
        root: str | Path,
        dtype: str = "float16",
        worker: str | None = None,
        create: bool = True,
        max_open_shards: int = 64,
        max_shard_bytes: int = 512 << 20,
        lock_wait: float | None = None,
    ):
        if dtype not in STORE_DTYPES:
            raise ConfigError(f"feature store dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
        if worker is not None and (not _NAME_RE.match(worker) or worker == MAIN_WRITER):
            raise ConfigError(f"worker id {worker!r} must be letters, digits, '.', '_' or '-' and not {MAIN_WRITER!r}")
        self.root = Path(root)
        self.dtype = dtype
        self.worker = worker
        self.writer = worker or MAIN_WRITER
        self.max_shard_bytes = int(max_shard_bytes)
        self.lock_wait = lock_wait_seconds() if lock_wait is None else max(0.0, float(lock_wait))
        if not self.root.exists():
            if not create:
                raise MissingDataError(f"feature store {self.root} does not exist; run `emomix extract` to create it")
            self.root.mkdir(parents=True, exist_ok=True)
        main_path = self.root / INDEX_NAME
        if not create and worker is None and not main_path.exists():
            raise MissingDataError(f"{self.root} is not a feature store (no {INDEX_NAME})")
        try:
            self._main = _connect(main_path)
        except sqlite3.DatabaseError as exc:  # a truncated or overwritten index.sqlite
            raise StoreError(
                f"{main_path} is damaged ({exc}); restore it from a backup, or delete the store "
                "folder and run `emomix extract` again"
            ) from None
        if worker is None:
            self._write_db = self._main
        else:
            (self.root / PARTS_DIR).mkdir(exist_ok=True)
            self._write_db = _connect(self.root / PARTS_DIR / f"{worker}.sqlite")
        self._lock_fd: int | None = None
        self._readers: OrderedDict[str, _ShardReader] = OrderedDict()
        self._max_open_shards = max(1, int(max_open_shards))

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the index connections, unmap shards and release the writer lock."""
        self._readers.clear()
        for conn in {id(c): c for c in (self._write_db, self._main)}.values():
            conn.close()
        if self._lock_fd is not None:
            _unlock(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _dbs(self) -> list[sqlite3.Connection]:
        """Index databases to look keys up in: the writer's own first, then the main index."""
        return [self._write_db] if self._write_db is self._main else [self._write_db, self._main]

    def acquire_writer(self) -> CleanupReport:
        """Take this writer's lock and clean up after any crashed run of the same writer.

        Called by every write; call it explicitly to fail early when another process writes.
        """
        if self._lock_fd is not None:
            return CleanupReport()
        report = self._lock_writer()
        if self.worker is None:
            # Parts of finished workers are folded in whenever the main writer starts.
            self.merge_parts()
        return report

    def _lock_writer(self) -> CleanupReport:
        if self._lock_fd is not None:
            return CleanupReport()
        lock_path = self.root / LOCKS_DIR / f"{self.writer}.lock"
        fd = _try_lock(lock_path)
        if fd is None and self.lock_wait > 0:
            # Another run is extracting into this store (two trainings sharing a store, say): wait
            # for it rather than fail; the lock is released when its extraction ends or it dies.
            _log.warning(
                "another process is writing to %s as writer %r; waiting up to %.0f s for it",
                self.root,
                self.writer,
                self.lock_wait,
            )
            deadline = time.monotonic() + self.lock_wait
            while fd is None and time.monotonic() < deadline:
                time.sleep(LOCK_POLL_SECONDS)
                fd = _try_lock(lock_path)
        if fd is None:
            waited = f" (waited {self.lock_wait:.0f} s)" if self.lock_wait > 0 else ""
            raise StoreError(
                f"another process is writing to {self.root} as writer {self.writer!r}{waited}; wait for it to "
                f"finish (or raise {LOCK_WAIT_ENV}) or give each parallel extraction its own --shard-index"
            )
        self._lock_fd = fd
        return self._cleanup_writer(self.writer)

    # ------------------------------------------------------------------ reading

    def _rows(self, keys: Sequence[str]) -> dict[str, tuple[str, str, dict[str, Any], str]]:
        """key -> (namespace, shard, layout, checksum) for the keys that are indexed."""
        found: dict[str, tuple[str, str, dict[str, Any], str]] = {}
        wanted = list(dict.fromkeys(keys))
        for db in self._dbs():
            remaining = [k for k in wanted if k not in found]
            for start in range(0, len(remaining), _SQL_CHUNK):
                chunk = remaining[start : start + _SQL_CHUNK]
                marks = ",".join("?" * len(chunk))
                for key, namespace, shard, layout, checksum in db.execute(
                    f"SELECT key, namespace, shard, layout, checksum FROM entries WHERE key IN ({marks})", chunk
                ):
                    found[key] = (namespace, shard, json.loads(layout), checksum)
        return found

    def has(self, key: str) -> bool:
        """True when ``key`` is indexed."""
        return bool(self._rows([key]))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.has(key)

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys (in the given order, without repeats) that are not indexed yet."""
        keys = list(dict.fromkeys(keys))
        present = self._rows(keys)
        return [key for key in keys if key not in present]

    def get(self, key: str, mmap: bool = False, verify: bool = False) -> dict[str, np.ndarray]:
        """One entry's arrays by field name, with their original shapes.

        ``mmap=True`` returns read-only views into the memory-mapped shard (no copy; they stay
        valid while the store is open); otherwise independent copies. ``verify=True`` also checks
        the entry's checksum.
        """
        return self.get_many([key], mmap=mmap, verify=verify)[key]

    def get_many(
        self, keys: Sequence[str], mmap: bool = False, verify: bool = False
    ) -> dict[str, dict[str, np.ndarray]]:
        """Arrays of several entries (see :meth:`get`); a missing key raises :class:`MissingDataError`."""
        rows = self._rows(keys)
        absent = [k for k in keys if k not in rows]
        if absent:
            hint = ""
            parts = self.pending_parts()
            if parts and self.worker is None:
                hint = f"; {len(parts)} worker index part(s) are not merged yet: run `emomix store merge {self.root}`"
            raise MissingDataError(
                f"{len(absent)} key(s) are not in the feature store {self.root} (first: {absent[0]}){hint}; "
                "run `emomix extract` for these utterances"
            )
        out: dict[str, dict[str, np.ndarray]] = {}
        for key in keys:
            namespace, shard, layout, checksum = rows[key]
            reader = self._reader(namespace, shard)
            arrays = reader.read(layout)
            if verify and _entry_checksum(arrays) != checksum:
                raise StoreError(
                    f"entry {key} in {reader.path} does not match its checksum; run `emomix store verify --repair`"
                )
            out[key] = arrays if mmap else {name: np.array(array) for name, array in arrays.items()}
        return out

    def keys(self, namespace: str | None = None) -> list[str]:
        """Every indexed key (of one namespace when given)."""
        result: dict[str, None] = {}
        for db in self._dbs():
            query = "SELECT key FROM entries"
            args: tuple[str, ...] = ()
            if namespace is not None:
                query, args = query + " WHERE namespace = ?", (namespace,)
            result.update((row[0], None) for row in db.execute(query, args))
        return list(result)

    def __len__(self) -> int:
        return len(self.keys())

    def _shard_path(self, namespace: str, shard: str) -> Path:
        return self.root / SHARDS_DIR / namespace / f"{shard}.safetensors"

    def _reader(self, namespace: str, shard: str) -> _ShardReader:
        reader = self._readers.get(shard)
        if reader is None:
            reader = _ShardReader(self._shard_path(namespace, shard))
            self._readers[shard] = reader
            while len(self._readers) > self._max_open_shards:
                self._readers.popitem(last=False)
        else:
            self._readers.move_to_end(shard)
        return reader

    # ------------------------------------------------------------------ writing

    def put(self, key: str, arrays: Mapping[str, np.ndarray], namespace: str = "default") -> int:
        """Store one entry (see :meth:`put_many`)."""
        return self.put_many({key: arrays}, namespace=namespace)

    def put_many(
        self,
        items: Mapping[str, Mapping[str, np.ndarray]],
        namespace: str = "default",
        description: Mapping[str, Any] | None = None,
    ) -> int:
        """Store entries ``{key: {field: array}}`` durably; returns how many new entries were written.

        Keys already indexed are skipped (a key names its content). The new entries go to one shard
        (several if they exceed ``max_shard_bytes``), written atomically before the index commit.
        ``description`` (e.g. the encoder config) is recorded for the namespace.
        """
        if not _NAME_RE.match(namespace):
            raise ConfigError(f"namespace {namespace!r} must be letters, digits, '.', '_' or '-'")
        self.acquire_writer()
        new_keys = self.missing(items.keys())
        if not new_keys:
            return 0
        prepared = {key: _prepare_arrays(key, items[key], self.dtype) for key in new_keys}
        written = 0
        batch: dict[str, dict[str, np.ndarray]] = {}
        batch_bytes = 0
        for key, arrays in prepared.items():
            size = sum(a.nbytes for a in arrays.values())
            if batch and batch_bytes + size > self.max_shard_bytes:
                written += self._write_shard(namespace, batch, description)
                batch, batch_bytes = {}, 0
            batch[key] = arrays
            batch_bytes += size
        if batch:
            written += self._write_shard(namespace, batch, description)
        return written

    def _write_shard(
        self, namespace: str, entries: dict[str, dict[str, np.ndarray]], description: Mapping[str, Any] | None
    ) -> int:
        from safetensors.numpy import save_file

        shard = f"{self.writer}-{uuid.uuid4().hex[:16]}"
        folder = self.root / SHARDS_DIR / namespace
        folder.mkdir(parents=True, exist_ok=True)
        tensors, records = _pack_shard(entries)
        metadata = {
            "format": SHARD_FORMAT,
            "namespace": namespace,
            "entries": json.dumps(records, separators=(",", ":")),
        }
        final = folder / f"{shard}.safetensors"
        temp = folder / f".{shard}.safetensors.tmp"
        try:
            save_file(tensors, str(temp), metadata=metadata)
            fsync_file(temp)
            fault_pause("store.shard_write")  # fault injection only (emomix.faults)
            os.replace(temp, final)
        except OSError:
            temp.unlink(missing_ok=True)  # e.g. a full disk: leave nothing half-written behind
            raise
        fsync_dir(folder)
        self._commit_shard(self._write_db, namespace, shard, final.stat().st_size, records, description)
        return len(records)

    @staticmethod
    def _commit_shard(
        db: sqlite3.Connection,
        namespace: str,
        shard: str,
        nbytes: int,
        records: Mapping[str, Mapping[str, Any]],
        description: Mapping[str, Any] | None,
    ) -> None:
        with _transaction(db):
            db.execute(
                "INSERT OR REPLACE INTO shards VALUES (?, ?, ?, ?, ?)",
                (shard, namespace, nbytes, len(records), time.time()),
            )
            db.executemany(
                "INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (key, namespace, shard, json.dumps(r["layout"], separators=(",", ":")), r["nbytes"], r["checksum"])
                    for key, r in records.items()
                ],
            )
            if description is not None:
                db.execute(
                    "INSERT OR REPLACE INTO namespaces VALUES (?, ?)",
                    (namespace, json.dumps(dict(description), sort_keys=True, default=str)),
                )
            fault_pause("store.index_commit")  # fault injection only (emomix.faults)

    def remove(self, keys: Iterable[str]) -> int:
        """Drop entries from this writer's index (their bytes stay in the shard until it has no live entry).

        A worker store only touches its own index part; the main index belongs to the main writer.
        """
        self.acquire_writer()
        keys = list(keys)
        removed = 0
        db = self._write_db
        with _transaction(db):
            for start in range(0, len(keys), _SQL_CHUNK):
                chunk = keys[start : start + _SQL_CHUNK]
                marks = ",".join("?" * len(chunk))
                removed += db.execute(f"DELETE FROM entries WHERE key IN ({marks})", chunk).rowcount
        self._drop_empty_shards()
        return removed

    def _drop_empty_shards(self) -> None:
        db = self._write_db
        empty = db.execute(
            "SELECT shard, namespace FROM shards WHERE shard NOT IN (SELECT DISTINCT shard FROM entries)"
        ).fetchall()
        for shard, namespace in empty:
            self._readers.pop(shard, None)
            with _transaction(db):
                db.execute("DELETE FROM shards WHERE shard = ?", (shard,))
            self._shard_path(namespace, shard).unlink(missing_ok=True)

    # ------------------------------------------------------------------ file digests

    def file_digests(self, paths: Iterable[str | Path], threads: int = 1) -> tuple[dict[str, str], dict[str, str]]:
        """SHA-256 of each file's content, cached in the index by (absolute path, size, mtime_ns).

        Returns ``(digests, errors)`` keyed by the paths as given; ``errors`` holds a message for
        each path that is missing or unreadable. A file rewritten with the same size within the
        same mtime tick would keep its old digest; touching it (new mtime) refreshes the cache.
        """
        unique = list(dict.fromkeys(str(p) for p in paths))
        digests: dict[str, str] = {}
        errors: dict[str, str] = {}
        to_hash: list[tuple[str, str, int, int]] = []
        stats: dict[str, tuple[str, int, int]] = {}
        for path in unique:
            absolute = os.path.abspath(path)
            try:
                st = os.stat(absolute)
            except OSError as exc:
                errors[path] = f"cannot read {path}: {exc.strerror or exc}"
                continue
            stats[path] = (absolute, st.st_size, st.st_mtime_ns)
        cached = self._cached_digests([s[0] for s in stats.values()])
        for path, (absolute, size, mtime_ns) in stats.items():
            hit = cached.get(absolute)
            if hit is not None and hit[0] == size and hit[1] == mtime_ns:
                digests[path] = hit[2]
            else:
                to_hash.append((path, absolute, size, mtime_ns))
        if to_hash:
            results = _hash_files([item[1] for item in to_hash], threads)
            fresh = []
            for (path, absolute, size, mtime_ns), result in zip(to_hash, results):
                if isinstance(result, Exception):
                    errors[path] = f"cannot read {path}: {result}"
                else:
                    digests[path] = result
                    fresh.append((absolute, size, mtime_ns, result))
            with _transaction(self._write_db):
                self._write_db.executemany("INSERT OR REPLACE INTO file_digests VALUES (?, ?, ?, ?)", fresh)
        return digests, errors

    def _cached_digests(self, absolute_paths: list[str]) -> dict[str, tuple[int, int, str]]:
        found: dict[str, tuple[int, int, str]] = {}
        for db in reversed(self._dbs()):  # the writer's own (newer) rows win
            for start in range(0, len(absolute_paths), _SQL_CHUNK):
                chunk = absolute_paths[start : start + _SQL_CHUNK]
                marks = ",".join("?" * len(chunk))
                for path, size, mtime_ns, digest in db.execute(
                    f"SELECT path, size, mtime_ns, sha256 FROM file_digests WHERE path IN ({marks})", chunk
                ):
                    found[path] = (size, mtime_ns, digest)
        return found

    # ------------------------------------------------------------------ maintenance

    def stats(self) -> dict[str, Any]:
        """Entries, shards and bytes on disk, in total and per namespace, plus pending work.

        ``bytes`` counts the indexed shard files; ``orphans`` counts shard or temporary files that
        no index references (left by a crash, cleaned by the next run of their writer);
        ``pending_parts`` counts worker index parts not merged yet.
        """
        namespaces: dict[str, dict[str, Any]] = {}
        shard_names: set[str] = set()
        for db in self._dbs():
            for namespace, count, nbytes in db.execute(
                "SELECT namespace, COUNT(*), SUM(nbytes) FROM shards GROUP BY namespace"
            ):
                info = namespaces.setdefault(namespace, {"entries": 0, "shards": 0, "bytes": 0, "description": None})
                info["shards"] += count
                info["bytes"] += nbytes or 0
            for namespace, count in db.execute("SELECT namespace, COUNT(*) FROM entries GROUP BY namespace"):
                namespaces.setdefault(namespace, {"entries": 0, "shards": 0, "bytes": 0, "description": None})[
                    "entries"
                ] += count
            for namespace, description in db.execute("SELECT namespace, description FROM namespaces"):
                if namespace in namespaces:
                    namespaces[namespace]["description"] = json.loads(description)
            shard_names.update(row[0] for row in db.execute("SELECT shard FROM shards"))
        pending = self.pending_parts() if self.worker is None else []
        for part in pending:  # shards of unmerged workers are not orphans
            try:
                with closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=10.0)) as db:
                    shard_names.update(row[0] for row in db.execute("SELECT shard FROM shards"))
            except sqlite3.Error:
                pass
        orphans = 0
        shards_dir = self.root / SHARDS_DIR
        if shards_dir.exists():
            for path in shards_dir.glob("*/*"):
                if path.name.endswith(".tmp") or (path.suffix == ".safetensors" and path.stem not in shard_names):
                    orphans += 1
        return {
            "root": str(self.root),
            "entries": sum(n["entries"] for n in namespaces.values()),
            "shards": sum(n["shards"] for n in namespaces.values()),
            "bytes": sum(n["bytes"] for n in namespaces.values()),
            "namespaces": namespaces,
            "orphans": orphans,
            "pending_parts": len(pending),
        }

    def verify(self, repair: bool = False, namespace: str | None = None) -> VerifyReport:
        """Read every indexed entry and compare it with its checksum.

        Catches missing or truncated shards, unreadable headers, missing tensors and changed
        bytes. With ``repair=True`` bad entries are dropped from the index, so the next
        extraction recomputes them.
        """
        report = VerifyReport()
        bad_by_db: list[tuple[sqlite3.Connection, list[str]]] = []
        for db in self._dbs():
            query = "SELECT key, namespace, shard, layout, checksum FROM entries"
            args: tuple[str, ...] = ()
            if namespace is not None:
                query, args = query + " WHERE namespace = ?", (namespace,)
            by_shard: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
            for key, ns, shard, layout, checksum in db.execute(query + " ORDER BY shard", args):
                by_shard.setdefault((ns, shard), []).append((key, layout, checksum))
            bad_here: list[str] = []
            for (ns, shard), rows in by_shard.items():
                try:
                    reader = _ShardReader(self._shard_path(ns, shard))
                except StoreError as exc:
                    for key, _, _ in rows:
                        report.checked += 1
                        report.bad.append((key, str(exc)))
                        bad_here.append(key)
                    continue
                for key, layout, checksum in rows:
                    report.checked += 1
                    try:
                        if _entry_checksum(reader.read(json.loads(layout))) != checksum:
                            raise StoreError(f"{reader.path}: bytes do not match the checksum")
                    except StoreError as exc:
                        report.bad.append((key, str(exc)))
                        bad_here.append(key)
            bad_by_db.append((db, bad_here))
        if repair and report.bad:
            self._readers.clear()
            report.removed = self.remove([key for _, keys in bad_by_db for key in keys])
        return report

    def pending_parts(self) -> list[Path]:
        """Worker index parts waiting to be merged into the main index."""
        folder = self.root / PARTS_DIR
        return sorted(folder.glob("*.sqlite")) if folder.exists() else []

    def merge_parts(self) -> MergeReport:
        """Fold every finished worker's index part into the main index, then delete the part.

        A part whose worker still holds its lock is left alone and listed in ``busy``. Each part is
        merged in one transaction; merging again after a crash is harmless (entries are keyed).
        """
        if self.worker is not None:
            raise StoreError("merge the index parts from the main store, not from a worker")
        self._lock_writer()
        report = MergeReport()
        for part in self.pending_parts():
            worker = part.stem
            fd = _try_lock(self.root / LOCKS_DIR / f"{worker}.lock")
            if fd is None:
                report.busy.append(worker)
                continue
            try:
                before = self._main.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
                self._main.execute("ATTACH DATABASE ? AS part", (str(part),))
                try:
                    with _transaction(self._main):
                        for table in ("shards", "entries", "namespaces"):
                            self._main.execute(f"INSERT OR IGNORE INTO main.{table} SELECT * FROM part.{table}")
                        self._main.execute("INSERT OR REPLACE INTO main.file_digests SELECT * FROM part.file_digests")
                finally:
                    self._main.execute("DETACH DATABASE part")
                after = self._main.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
                report.entries_added += after - before
                part.unlink()
                for suffix in ("-journal", "-wal", "-shm"):
                    Path(str(part) + suffix).unlink(missing_ok=True)
                report.merged.append(worker)
            finally:
                _unlock(fd)
        return report

    def cleanup(self, all_writers: bool = False) -> CleanupReport:
        """Remove temporary files and adopt or remove unindexed shards left by crashed writers.

        Only writers whose lock can be taken are cleaned (this store's own writer always, every
        idle writer with ``all_writers=True``); an unindexed shard is adopted into the index when
        its metadata is complete and every entry matches its checksum, otherwise deleted.
        """
        report = self.acquire_writer()
        if not all_writers:
            return _merge_cleanup(report, self._cleanup_writer(self.writer))
        writers = (
            {_writer_of(p.name) for p in (self.root / SHARDS_DIR).glob("*/*")}
            if (self.root / SHARDS_DIR).exists()
            else set()
        )
        for writer in sorted(w for w in writers if w):
            if writer == self.writer:
                _merge_cleanup(report, self._cleanup_writer(writer))
                continue
            fd = _try_lock(self.root / LOCKS_DIR / f"{writer}.lock")
            if fd is None:
                continue
            try:
                _merge_cleanup(report, self._cleanup_writer(writer))
            finally:
                _unlock(fd)
        return report

    def _cleanup_writer(self, writer: str) -> CleanupReport:
        report = CleanupReport()
        shards_dir = self.root / SHARDS_DIR
        if not shards_dir.exists():
            return report
        indexed: set[str] = set()
        for db in self._dbs():
            indexed.update(row[0] for row in db.execute("SELECT shard FROM shards"))
        for path in sorted(shards_dir.glob("*/*")):
            if _writer_of(path.name) != writer:
                continue
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
                report.temp_removed.append(str(path))
            elif path.suffix == ".safetensors" and path.stem not in indexed:
                if self._adopt(path):
                    report.adopted.append(str(path))
                else:
                    path.unlink(missing_ok=True)
                    report.orphans_removed.append(str(path))
        return report

    def _adopt(self, path: Path) -> bool:
        """Index a complete shard that was renamed into place but never committed (crash in between)."""
        try:
            reader = _ShardReader(path)
            if reader.metadata.get("format") != SHARD_FORMAT:
                return False
            namespace = reader.metadata["namespace"]
            records = json.loads(reader.metadata["entries"])
            for record in records.values():
                if _entry_checksum(reader.read(record["layout"])) != record["checksum"]:
                    return False
        except (StoreError, KeyError, ValueError):
            return False
        if path.parent.name != namespace:
            return False
        self._commit_shard(self._write_db, namespace, path.stem, path.stat().st_size, records, None)
        return True


def merge_indexes(root: str | Path) -> MergeReport:
    """Merge every finished worker's index part of the store at ``root`` into its main index."""
    with FeatureStore(root, create=False) as store:
        return store.merge_parts()


# ---------------------------------------------------------------------- shard format


class _ShardReader:
    """A memory-mapped safetensors shard: header parsed once, arrays returned as views."""

    def __init__(self, path: Path):
        self.path = path
        try:
            size = path.stat().st_size
            with open(path, "rb") as handle:
                head = handle.read(8)
                if len(head) < 8:
                    raise StoreError(f"{path}: truncated shard (no header)")
                (header_size,) = struct.unpack("<Q", head)
                if header_size > size - 8:
                    raise StoreError(f"{path}: truncated shard (header of {header_size} bytes, file of {size})")
                header = json.loads(handle.read(header_size))
        except FileNotFoundError as exc:
            raise StoreError(f"{path}: shard file is missing") from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(f"{path}: unreadable shard header ({exc})") from exc
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.tensors: dict[str, dict[str, Any]] = header
        self.data_start = 8 + header_size
        data_end = max((int(t["data_offsets"][1]) for t in header.values()), default=0)
        if self.data_start + data_end > size:
            raise StoreError(
                f"{path}: truncated shard ({size} bytes, the header describes {self.data_start + data_end})"
            )
        self._map = np.memmap(path, dtype=np.uint8, mode="r") if size > 0 else np.zeros(0, np.uint8)

    def read(self, layout: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
        """Arrays of one entry from its layout ``{field: [tensor, first_row, shape, dtype]}``."""
        arrays: dict[str, np.ndarray] = {}
        for name, (tensor, first_row, shape, dtype) in layout.items():
            info = self.tensors.get(tensor)
            if info is None:
                raise StoreError(f"{self.path}: tensor {tensor!r} is missing")
            np_dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
            if np_dtype.name != dtype:
                raise StoreError(f"{self.path}: tensor {tensor!r} is {np_dtype.name}, the index says {dtype}")
            shape = tuple(int(s) for s in shape)
            row_items = int(np.prod(info["shape"][1:], dtype=np.int64))
            count = int(np.prod(shape, dtype=np.int64))
            begin = self.data_start + int(info["data_offsets"][0]) + int(first_row) * row_items * np_dtype.itemsize
            end = begin + count * np_dtype.itemsize
            if end > self.data_start + int(info["data_offsets"][1]):
                raise StoreError(f"{self.path}: entry rows run past tensor {tensor!r}")
            arrays[name] = self._map[begin:end].view(np_dtype).reshape(shape)
        return arrays


def _pack_shard(
    entries: Mapping[str, Mapping[str, np.ndarray]],
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Concatenate the entries' arrays per (field, dtype, trailing shape); return tensors and layouts."""
    groups: dict[tuple[str, str, tuple[int, ...]], list[np.ndarray]] = {}
    names: dict[tuple[str, str, tuple[int, ...]], str] = {}
    rows: dict[tuple[str, str, tuple[int, ...]], int] = {}
    records: dict[str, dict[str, Any]] = {}
    for key, arrays in entries.items():
        layout: dict[str, list[Any]] = {}
        for name in sorted(arrays):
            array = arrays[name]
            stacked = array.reshape(1) if array.ndim == 0 else array
            group = (name, array.dtype.name, tuple(stacked.shape[1:]))
            if group not in names:
                names[group] = f"{len(names):04d}.{name}"
                groups[group], rows[group] = [], 0
            layout[name] = [names[group], rows[group], list(array.shape), array.dtype.name]
            groups[group].append(stacked)
            rows[group] += stacked.shape[0]
        records[key] = {
            "layout": layout,
            "checksum": _entry_checksum(arrays),
            "nbytes": int(sum(a.nbytes for a in arrays.values())),
        }
    tensors = {names[g]: np.ascontiguousarray(np.concatenate(parts, axis=0)) for g, parts in groups.items()}
    return tensors, records


def _prepare_arrays(key: str, arrays: Mapping[str, Any], dtype: str) -> dict[str, np.ndarray]:
    """Convert one entry's arrays to their storage dtypes (floats to ``dtype`` unless that overflows)."""
    if not arrays:
        raise ConfigError(f"entry {key} has no arrays to store")
    prepared: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"entry {key}: field names must be non-empty strings, got {name!r}")
        array = np.asarray(value)
        if array.dtype.kind == "f":
            with np.errstate(over="ignore"):
                converted = array.astype(dtype)
            if dtype == "float16" and not np.isfinite(converted).all() and np.isfinite(array).all():
                # Values beyond ±65504 would become inf in float16; keep this field exact instead.
                converted = array.astype(np.float32)
            array = converted
        elif array.dtype.kind not in "biu":
            raise ConfigError(
                f"entry {key}: field {name!r} has dtype {array.dtype}; store floats, integers or booleans"
            )
        elif array.dtype.name not in {np.dtype(t).name for t in _SAFETENSORS_DTYPES.values()}:
            raise ConfigError(f"entry {key}: field {name!r} has unsupported dtype {array.dtype}")
        # np.ascontiguousarray would turn a 0-d array into shape (1,); copy only when needed.
        prepared[name] = array if array.flags.c_contiguous else array.copy(order="C")
    return prepared


prepare_arrays = _prepare_arrays  # public name: the in-memory store converts exactly as this one does


def _entry_checksum(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the fields in name order: name, dtype, shape and raw bytes."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = arrays[name]
        digest.update(f"{name}|{array.dtype.name}|{list(array.shape)}|".encode())
        digest.update((array if array.flags.c_contiguous else array.copy(order="C")).data)
    return digest.hexdigest()


# ---------------------------------------------------------------------- filesystem helpers


def _writer_of(filename: str) -> str:
    """The writer id encoded in a shard or temp file name (``<writer>-<16 hex>``)."""
    stem = filename.lstrip(".")
    for suffix in (".tmp", ".safetensors"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    writer, _, token = stem.rpartition("-")
    return writer if len(token) == 16 else ""


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit mode with explicit BEGIN IMMEDIATE/COMMIT: we decide where transactions start.
    # The default rollback journal (not WAL) keeps the index safe on network file systems.
    conn = sqlite3.connect(str(path), timeout=60.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous=FULL")
    # Create the schema only when missing, so a store on read-only media can still be read.
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'file_digests'").fetchone() is None:
        conn.executescript(_SCHEMA)
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (SHARD_FORMAT,))
    return conn


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


LOCK_WAIT_ENV = "EMOMIX_STORE_LOCK_WAIT"
"""Seconds a writer waits for another process that holds the same writer's lock (default 600)."""
DEFAULT_LOCK_WAIT = 600.0
LOCK_POLL_SECONDS = 0.2


def lock_wait_seconds() -> float:
    """How long a writer waits for the writer lock: ``$EMOMIX_STORE_LOCK_WAIT`` seconds, else 600."""
    value = os.environ.get(LOCK_WAIT_ENV, "").strip()
    if not value:
        return DEFAULT_LOCK_WAIT
    try:
        return max(0.0, float(value))
    except ValueError as exc:
        raise ConfigError(f"{LOCK_WAIT_ENV} must be a number of seconds, got {value!r}") from exc


def _try_lock(path: Path) -> int | None:
    """Take an exclusive advisory lock on ``path`` without waiting; None when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is None:  # pragma: no cover
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _hash_files(paths: list[str], threads: int) -> list[str | Exception]:
    def one(path: str) -> str | Exception:
        try:
            return sha256_file(path)
        except OSError as exc:
            return exc

    if threads <= 1 or len(paths) < 2:
        return [one(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    # hashlib releases the GIL on large buffers, so threads overlap reading and hashing.
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, paths))


def _merge_cleanup(into: CleanupReport, other: CleanupReport) -> CleanupReport:
    into.temp_removed += other.temp_removed
    into.adopted += other.adopted
    into.orphans_removed += other.orphans_removed
    return into
