"""Tests of the shared homes: atomic writers, JSON conversion and the index-level UA."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from emomix.atomic import (
    atomic_path,
    write_json_atomic,
    write_parquet_atomic,
    write_text_atomic,
    write_wav_atomic,
)
from emomix.constants import IGNORE_INDEX
from emomix.evaluate.metrics import unweighted_accuracy as ua_of_labels
from emomix.jsonutil import to_jsonable
from emomix.metrics_core import unweighted_accuracy


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_text_and_json_writers_replace_whole_files(tmp_path):
    target = tmp_path / "sub" / "report.md"
    write_text_atomic(target, "first\n")
    write_text_atomic(target, "second\r\nline\n")
    assert target.read_bytes() == b"second\r\nline\n"
    record = tmp_path / "record.json"
    write_json_atomic(record, {"a": np.float32(0.5), "b": float("nan"), "c": (1, 2), "d": Path("x/y")})
    assert json.loads(record.read_text()) == {"a": 0.5, "b": None, "c": [1, 2], "d": "x/y"}
    assert record.read_text().endswith("}\n")
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []


def test_files_get_the_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = write_text_atomic(tmp_path / "atomic.txt", "x")
    assert (atomic.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "table.parquet"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []
    with pytest.raises(ValueError):  # NaN is refused when conversion is off: strict JSON only
        write_json_atomic(tmp_path / "bad.json", {"x": float("nan")}, convert=False)
    assert not (tmp_path / "bad.json").exists() and _leftovers(tmp_path) == []


def test_parquet_writer_takes_frames_and_arrow_tables(tmp_path):
    import pyarrow as pa

    frame = pd.DataFrame({"id": ["a", "b"], "value": [1.5, 2.5]}, index=[7, 8])
    write_parquet_atomic(tmp_path / "frame.parquet", frame)
    back = pd.read_parquet(tmp_path / "frame.parquet")
    assert list(back.columns) == ["id", "value"] and back["value"].tolist() == [1.5, 2.5]
    write_parquet_atomic(tmp_path / "arrow.parquet", pa.Table.from_pandas(frame, preserve_index=False))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "arrow.parquet"), back)
    assert _leftovers(tmp_path) == []


def test_wav_writer_keeps_float_samples_exactly(tmp_path):
    samples = np.random.default_rng(0).uniform(-0.5, 0.5, 1600).astype(np.float32)
    write_wav_atomic(tmp_path / "exact.wav", samples, 16000, subtype="FLOAT")
    read, rate = sf.read(tmp_path / "exact.wav", dtype="float32")
    assert rate == 16000 and np.array_equal(read, samples)
    pcm = np.array([0, 1000, -32768, 32767], dtype=np.int16)
    write_wav_atomic(tmp_path / "pcm.wav", pcm, 8000)
    read, rate = sf.read(tmp_path / "pcm.wav", dtype="int16")
    assert rate == 8000 and np.array_equal(read, pcm) and sf.info(tmp_path / "pcm.wav").subtype == "PCM_16"


def test_to_jsonable_converts_every_value_kind():
    frame = pd.DataFrame({"x": [1, 2], "y": [0.5, np.nan]})
    value = {
        1: np.int64(3),
        "flag": np.bool_(True),
        "inf": float("inf"),
        "arr": np.arange(3),
        "set": {4},
        "frame": frame,
        "series": frame["x"],
        "tensor": torch.tensor([1.0, 2.0]),
        "scalar": torch.tensor(2),
        "na": pd.NA,
        "nat": pd.NaT,
        "path": Path("a"),
        "other": object,
        "nested": [(np.float64(0.25),)],
    }
    out = to_jsonable(value)
    json.dumps(out, allow_nan=False)
    assert out["1"] == 3 and out["flag"] is True and out["inf"] is None and out["arr"] == [0, 1, 2]
    assert out["set"] == [4] and out["frame"] == [{"x": 1, "y": 0.5}, {"x": 2, "y": None}]
    assert out["series"] == [1, 2] and out["tensor"] == [1.0, 2.0] and out["scalar"] == 2
    assert out["na"] is None and out["nat"] is None and out["path"] == "a" and out["other"] == str(object)
    assert out["nested"] == [[0.25]] and isinstance(out["flag"], bool)


def test_unweighted_accuracy_is_the_mean_recall_of_present_classes():
    labels = np.array([0, 0, 0, 1, 2, 2, IGNORE_INDEX])
    predictions = np.array([0, 0, 1, 1, 0, 0, 2])
    assert unweighted_accuracy(labels, predictions) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert math.isnan(unweighted_accuracy(np.array([IGNORE_INDEX]), np.array([0])))
    # The label-level metric of the reports is the same function over class indices.
    names = ["a", "b", "c", "d"]
    y_true = [names[i] for i in labels[:-1]]
    y_pred = [names[i] for i in predictions[:-1]]
    assert ua_of_labels(y_true, y_pred, names) == pytest.approx(unweighted_accuracy(labels, predictions))
