"""emomix.faults: the fault windows are free when unset and announce themselves when set."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from emomix import faults
from emomix.errors import ConfigError


def test_pause_is_a_no_op_when_unset(monkeypatch, capsys):
    monkeypatch.setattr(faults, "_PAUSES", faults.parse(None))
    started = time.perf_counter()
    for point in faults.POINTS:
        faults.pause(point)
    assert time.perf_counter() - started < 0.05
    assert capsys.readouterr().err == ""


def test_a_configured_point_prints_its_marker_and_sleeps(monkeypatch, capsys):
    monkeypatch.setattr(faults, "_PAUSES", faults.parse("store.shard_write:0.2, run.report:0"))
    started = time.perf_counter()
    faults.pause("store.shard_write")
    assert time.perf_counter() - started >= 0.2
    faults.pause("run.report")
    faults.pause("store.index_commit")  # not configured: silent
    assert capsys.readouterr().err.splitlines() == ["FAULT-WINDOW store.shard_write", "FAULT-WINDOW run.report"]


@pytest.mark.parametrize("spec", ["store.shard_wrte:1", "run.report:soon", "run.report:-1"])
def test_a_bad_specification_is_refused(spec):
    with pytest.raises(ConfigError, match="EMOMIX_FAULT_PAUSE"):
        faults.parse(spec)


def test_the_variable_is_read_at_import():
    code = "from emomix import faults; faults.pause('train.checkpoint_write')"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={"EMOMIX_FAULT_PAUSE": "train.checkpoint_write:0", "PATH": ""},
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "FAULT-WINDOW train.checkpoint_write"
