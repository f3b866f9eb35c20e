"""Fault windows: optional pauses at named points inside critical writes, for fault injection.

``EMOMIX_FAULT_PAUSE="store.shard_write:0.5,train.checkpoint_write:0.5"`` makes :func:`pause`
print ``FAULT-WINDOW <point>`` to stderr and sleep that many seconds (0: the line only) at each
named point, so that a test can kill the process while it is demonstrably inside the window
(``bench/fault_injection.py --targeted``). The variable is read once, at import; unset, a call is
one dict lookup. Points:

* ``store.shard_write``: the shard's temporary file is written, not yet renamed into place;
* ``store.index_commit``: inside the index's SQLite transaction, before its COMMIT;
* ``train.checkpoint_write``: the checkpoint's temporary file is written, not yet renamed;
* ``run.report``: the report's ``metrics.json`` is written, ``report.md`` not yet.
"""

from __future__ import annotations

import os
import sys
import time

from emomix.errors import ConfigError

ENV = "EMOMIX_FAULT_PAUSE"
MARKER = "FAULT-WINDOW"
POINTS = ("store.shard_write", "store.index_commit", "train.checkpoint_write", "run.report")


def parse(spec: str | None) -> dict[str, float]:
    """``"point:seconds,point:seconds"`` → ``{point: seconds}`` (empty when unset or blank)."""
    pauses: dict[str, float] = {}
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        point, _, seconds = item.partition(":")
        point = point.strip()
        if point not in POINTS:
            raise ConfigError(f"{ENV} names an unknown fault point {point!r}; use one of {', '.join(POINTS)}")
        try:
            value = float(seconds) if seconds.strip() else 0.0
        except ValueError:
            raise ConfigError(f"{ENV}: {item!r} is not point:seconds (e.g. store.shard_write:0.5)") from None
        if value < 0:
            raise ConfigError(f"{ENV}: {item!r} has a negative pause; give 0 or more seconds")
        pauses[point] = value
    return pauses


_PAUSES = parse(os.environ.get(ENV))


def pause(point: str) -> None:
    """At a configured ``point``: announce it on stderr (flushed), then sleep; otherwise nothing."""
    seconds = _PAUSES.get(point)
    if seconds is None:
        return
    sys.stderr.write(f"{MARKER} {point}\n")
    sys.stderr.flush()
    if seconds:
        time.sleep(seconds)
