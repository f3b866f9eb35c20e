"""Fault injection: `emomix extract` and `emomix train` killed with SIGKILL at random moments, then resumed.

On a tiny synthetic corpus (48 utterances, 3 sessions) the benchmark first runs both commands
once without interruption (the reference, in its own folder, timed), then runs them again in a
second folder and kills each one ``--kills`` times. Each kill comes after a delay drawn from a
seeded RNG, uniformly over the command's measured uninterrupted duration; the process is stopped
(SIGSTOP), the phase it was in is read from its files and its log, and it is killed (SIGKILL).
The same command is then re-run. When a run finishes before its kill lands, its folder is
checked and a fresh folder starts (a new round), so kills keep landing in every phase instead
of on runs with nothing left to do. After the last kill the command is re-run to completion.

Checks after every finished round:

* ``extract``: the command exits 0, ``emomix store verify`` is clean, the store has no orphan
  or temporary files, and its entries (keys and arrays) equal the reference store's;
* ``train``: the command exits 0, the run's feature store verifies clean, every fold's
  ``done.json`` exists, and every fold's ``predictions.parquet`` and the pooled one equal the
  reference run's (labels exactly, probabilities within 1e-6), and the report was written.

Random kills almost never land inside a shard write, an index commit or a checkpoint save (each
lasts milliseconds). ``--targeted`` aims at those windows instead: the command runs with
``EMOMIX_FAULT_PAUSE=<window>:<pause>`` (:mod:`emomix.faults`), which prints ``FAULT-WINDOW
<window>`` on stderr and sleeps there; the process is stopped when the k-th marker of this attempt
appears (k drawn from a seeded RNG over the markers the uninterrupted run printed), the files are
checked for proof that it is inside the window (the temporary shard, SQLite's journal, the
checkpoint's temporary file, ``metrics.json`` written but ``report.md`` not), and it is killed.
Windows: ``store.shard_write`` and ``store.index_commit`` (``extract``), ``train.checkpoint_write``
and ``run.report`` (``train``). Up to ``--kills-per-round`` kills go into one folder, then the
command is re-run without pauses to completion and the round is checked as above.

Run: ``python -m bench.fault_injection [--kills 20] [--seed 0] [--out bench/results/fault_injection.json]``;
``python -m bench.fault_injection --targeted --kills 5 --out bench/results/fault_injection-targeted.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "fault_injection.json"
TOLERANCE = 1e-6
FAULT_ENV = "EMOMIX_FAULT_PAUSE"  # see emomix.faults
MARKER = "FAULT-WINDOW"
#: The targeted windows and the command whose run passes through them.
WINDOWS = {
    "store.shard_write": "extract",
    "store.index_commit": "extract",
    "train.checkpoint_write": "train",
    "run.report": "train",
}

SYNTH_SETTINGS = {"size": 48, "sessions": 3, "turns_min": 4, "turns_max": 6, "min_duration": 1.0, "max_duration": 2.0}
ENCODER = "opensmile:eGeMAPSv02"

RECIPE = """\
description: Fault-injection recipe (tiny synthetic corpus, audio only, a few epochs)
corpus:
  reader: synthetic
  root: {corpus}
protocol:
  name: loso
  params: {{validation: group}}
features:
  audio:
    encoder: opensmile:eGeMAPSv02
    preprocess: {{vad: webrtc, vad_mode: mask}}
    frame_stride: 4
    speaker_normalisation: true
model:
  name: early_fusion_audio
  config: {{}}
optimiser:
  name: adamw
  lr: 2.0e-3
  weight_decay: 0.01
  schedule: warmup_cosine
  warmup_epochs: 1
training:
  epochs: {epochs}
  batch_size: 4
  patience: null
  monitor: val_ua
  class_balance: weights
  grad_clip: 1.0
  threads: 1
seeds: [0]
"""


def emomix_executable() -> str:
    """The project's console script next to this interpreter (falls back to ``emomix`` on PATH)."""
    candidate = Path(sys.executable).with_name("emomix")
    return str(candidate) if candidate.exists() else "emomix"


def child_env(pauses: str | None = None) -> dict[str, str]:
    """The commands' environment: one thread each; fault pauses only when ``pauses`` is given."""
    env = dict(os.environ)
    env.pop(FAULT_ENV, None)
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if pauses is not None:
        env[FAULT_ENV] = pauses
    return env


# ---------------------------------------------------------------------- the two commands


@dataclass
class Command:
    """One command under test: how to run it in a folder, how to name a phase, how to check a result."""

    name: str
    argv: Callable[[Path], list[str]]
    phase: Callable[[Path, str], str]
    check: Callable[[Path, Path], dict[str, bool]]


def extract_argv(corpus: Path) -> Callable[[Path], list[str]]:
    def argv(folder: Path) -> list[str]:
        # Small flushes give many shard writes and index commits to land in.
        return [
            emomix_executable(),
            "extract",
            "synthetic",
            str(corpus),
            "--encoder",
            ENCODER,
            "--store",
            str(folder / "store"),
            "--vad",
            "webrtc",
            "--flush-every",
            "2",
            "--batch-size",
            "2",
        ]

    return argv


def train_argv(recipe: Path) -> Callable[[Path], list[str]]:
    def argv(folder: Path) -> list[str]:
        return [emomix_executable(), "train", str(recipe), "--out", str(folder / "run")]

    return argv


def store_phase(store: Path) -> str | None:
    """'shard write' while a temporary shard exists, 'index commit' while SQLite's journal exists."""
    if not store.exists():
        return None
    if any(p.name.endswith(".tmp") for p in (store / "shards").glob("*/*")):
        return "shard write"
    if any(store.glob("index.sqlite-journal")) or any(store.glob("index-parts/*-journal")):
        return "index commit"
    return None


def extract_phase(folder: Path, log: str) -> str:
    store = store_phase(folder / "store")
    if store:
        return store
    if "feature store" in log:  # the summary is being printed
        return "summary"
    if "it/s" in log or "s/it" in log or "utt" in log:
        return "encoding"
    return "startup"


def train_phase(folder: Path, log: str) -> str:
    """The phase of an `emomix train` attempt from its files and its own output (``log``: this
    attempt's stdout/stderr; "features:" is printed once the corpus is read, "Epoch" by the
    progress bar once a fit runs)."""
    run = folder / "run"
    store = store_phase(run / "features")
    if store:
        return f"features: {store}"
    if "features:" not in log:
        return "startup"
    if "Epoch" not in log and "trained " not in log:
        return "features"
    folds = sorted((run / "folds").glob("*/seed-*")) if (run / "folds").exists() else []
    for fold in (f for f in folds if not (f / "done.json").exists()):
        temporary = [p.name for p in fold.iterdir() if p.name.endswith(".tmp")]
        if any(name.lstrip(".").startswith("predictions") for name in temporary):
            return "predictions write"
        if temporary:
            return "checkpoint write"
        if (fold / "predictions.parquet").exists():
            return "fold records"
        return "epoch"
    plan = json.loads((run / "folds.json").read_text()) if (run / "folds.json").exists() else {}
    if len(folds) < len(plan.get("folds", [])):
        return "between folds"
    return "pooling / report"


def extract_check(folder: Path, reference: Path) -> dict[str, bool]:
    import numpy as np

    from emomix.cache.store import FeatureStore

    checks = {"store_verify_clean": verify_clean(folder / "store")}
    with FeatureStore(folder / "store", create=False) as store, FeatureStore(reference / "store", create=False) as ref:
        stats = store.stats()
        checks["no_orphans_or_temp_files"] = stats["orphans"] == 0 and stats["pending_parts"] == 0
        keys, ref_keys = sorted(store.keys()), sorted(ref.keys())
        checks["same_keys_as_reference"] = keys == ref_keys
        same = keys == ref_keys
        if same:
            ours, theirs = store.get_many(keys), ref.get_many(keys)
            for key in keys:
                a, b = ours[key], theirs[key]
                if sorted(a) != sorted(b) or any(not np.array_equal(a[n], b[n]) for n in a):
                    same = False
                    break
        checks["same_arrays_as_reference"] = same
    return checks


def train_check(folder: Path, reference: Path) -> dict[str, bool]:
    run, ref = folder / "run", reference / "run"
    checks = {"store_verify_clean": verify_clean(run / "features")}
    ref_folds = sorted(p.relative_to(ref) for p in (ref / "folds").glob("*/seed-*"))
    folds = sorted(p.relative_to(run) for p in (run / "folds").glob("*/seed-*"))
    checks["every_fold_done"] = folds == ref_folds and all((run / f / "done.json").exists() for f in folds)
    checks["no_leftover_checkpoints_or_temp_files"] = not any(
        p for p in run.rglob("*") if p.suffix in (".ckpt", ".tmp") or p.name.endswith(".tmp")
    )
    same = checks["every_fold_done"]
    for relative in [*(f / "predictions.parquet" for f in ref_folds), Path("predictions.parquet")]:
        same = same and predictions_equal(run / relative, ref / relative)
    checks["predictions_equal_reference"] = bool(same)
    checks["report_written"] = (run / "report" / "report.md").exists() and (run / "report" / "metrics.json").exists()
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    checks["run_json_finished"] = "finished" in info and "seconds" in info
    return checks


def predictions_equal(path: Path, reference: Path, tolerance: float = TOLERANCE) -> bool:
    """Same rows in the same order, identical labels and predicted labels, probabilities within ``tolerance``."""
    import numpy as np
    import pandas as pd

    if not path.exists() or not reference.exists():
        return False
    a, b = pd.read_parquet(path), pd.read_parquet(reference)
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return False
    for column in ("utt_id", "fold", "seed", "label", "pred"):
        if column in a.columns and not a[column].equals(b[column]):
            return False
    numeric = [c for c in a.columns if c.startswith(("prob_", "aux_"))]
    return bool(
        np.allclose(a[numeric].to_numpy(float), b[numeric].to_numpy(float), rtol=0.0, atol=tolerance, equal_nan=True)
    )


def verify_clean(store: Path) -> bool:
    """``emomix store verify STORE`` exits 0 and reports no bad entry."""
    done = subprocess.run(
        [emomix_executable(), "store", "verify", str(store)], env=child_env(), capture_output=True, text=True
    )
    return done.returncode == 0 and ": 0 bad" in done.stdout


# ---------------------------------------------------------------------- running, killing, resuming


@dataclass
class Attempt:
    round: int
    delay: float | None
    killed: bool
    phase: str | None
    seconds: float
    returncode: int | None


@dataclass
class CommandResult:
    name: str
    reference_seconds: float
    kills: int = 0
    resumes: int = 0
    rounds: int = 0
    phases: dict[str, int] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    checks: list[dict[str, bool]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def all_checks_held(self) -> bool:
        return bool(self.checks) and not self.failures and all(all(c.values()) for c in self.checks)


def run_once(
    argv: Sequence[str],
    log_path: Path,
    delay: float | None = None,
    phase: Callable[[str], str] | None = None,
    pauses: str | None = None,
) -> tuple[int | None, str | None, float]:
    """Run ``argv``; with ``delay``, stop it after that many seconds, read its phase, then SIGKILL it.

    Returns (exit status or None when killed, phase or None, seconds)."""
    started = time.perf_counter()
    offset = log_path.stat().st_size if log_path.exists() else 0  # the phase is read from this attempt's output
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, env=child_env(pauses), start_new_session=True
        )
        try:
            process.wait(timeout=delay)
            return process.returncode, None, time.perf_counter() - started
        except subprocess.TimeoutExpired:
            pass
        except BaseException:  # interrupted ourselves (Ctrl-C, a test timeout): leave no process behind
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        # Freeze the whole process group first so the files read below are exactly what the kill leaves.
        os.killpg(process.pid, signal.SIGSTOP)
        with open(log_path, "rb") as stream:
            stream.seek(offset)
            text = stream.read().decode("utf-8", errors="replace")
        seen = phase(text) if phase else None
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return None, seen, time.perf_counter() - started


def inject(
    command: Command,
    work: Path,
    reference: Path,
    kills: int,
    duration: float,
    rng: random.Random,
    log: Callable[[str], None] = print,
) -> CommandResult:
    """Kill ``command`` ``kills`` times at random moments, resuming after each; check every finished round."""
    result = CommandResult(command.name, reference_seconds=round(duration, 2))
    round_no = 0
    folder = work / f"round-{round_no}"
    attempts_in_round = 0

    def finish_round(code: int | None) -> None:
        nonlocal round_no, folder, attempts_in_round
        result.rounds += 1
        if code != 0:
            result.failures.append(f"round {round_no}: exit status {code} (log {folder / 'log.txt'})")
            result.checks.append({"exit_status_0": False})
        else:
            checks = {"exit_status_0": True, **command.check(folder, reference)}
            result.checks.append(checks)
            bad = [k for k, v in checks.items() if not v]
            if bad:
                result.failures.append(f"round {round_no}: {', '.join(bad)} (folder {folder})")
            else:
                shutil.rmtree(folder, ignore_errors=True)
        log(
            f"  {command.name} round {round_no}: {attempts_in_round} attempt(s), "
            f"checks {'held' if code == 0 and all(result.checks[-1].values()) else 'FAILED'}"
        )
        round_no += 1
        folder = work / f"round-{round_no}"
        attempts_in_round = 0

    while result.kills < kills:
        folder.mkdir(parents=True, exist_ok=True)
        delay = rng.uniform(0.0, duration)
        if attempts_in_round:
            result.resumes += 1
        attempts_in_round += 1
        code, phase, seconds = run_once(
            command.argv(folder), folder / "log.txt", delay, lambda text: command.phase(folder, text)
        )
        killed = phase is not None
        result.attempts.append(Attempt(round_no, round(delay, 3), killed, phase, round(seconds, 2), code))
        if phase is not None:
            result.kills += 1
            result.phases[phase] = result.phases.get(phase, 0) + 1
            log(f"  {command.name} kill {result.kills}/{kills} after {delay:.1f} s: {phase}")
        else:
            finish_round(code)
    if attempts_in_round:  # resume the last killed run to completion
        result.resumes += 1
        attempts_in_round += 1
        code, _, seconds = run_once(command.argv(folder), folder / "log.txt")
        result.attempts.append(Attempt(round_no, None, False, None, round(seconds, 2), code))
        finish_round(code)
    return result


# ---------------------------------------------------------------------- targeted windows


def window_evidence(window: str, folder: Path) -> bool:
    """True when the files of the (stopped) process show it inside ``window``."""
    if window in ("store.shard_write", "store.index_commit"):
        store = folder / "store" if (folder / "store").exists() else folder / "run" / "features"
        return store_phase(store) == ("shard write" if window == "store.shard_write" else "index commit")
    run = folder / "run"
    if window == "train.checkpoint_write":
        return any(run.glob("folds/*/seed-*/.last-*.ckpt.tmp"))
    if window == "run.report":  # metrics.json rewritten, report.md not yet (absent on a first report)
        metrics, markdown = run / "report" / "metrics.json", run / "report" / "report.md"
        return metrics.exists() and (not markdown.exists() or markdown.stat().st_mtime_ns < metrics.stat().st_mtime_ns)
    raise ValueError(f"unknown window {window!r}")


def count_markers(text: str, window: str) -> int:
    """Markers of ``window`` in a command's output (a progress bar may precede one on its line)."""
    return text.count(f"{MARKER} {window}\n")


@dataclass
class TargetedAttempt:
    round: int
    target: int | None  # the k-th marker of this attempt to stop at (None: run to completion, no pauses)
    killed: bool
    in_window: bool | None  # the files proved the process was inside the window when it was stopped
    markers: int
    seconds: float
    returncode: int | None


def run_to_marker(
    argv: Sequence[str],
    log_path: Path,
    window: str,
    target: int,
    pause: float,
    evidence: Callable[[], bool],
    poll: float = 0.01,
) -> tuple[int | None, bool | None, int, float]:
    """Run ``argv`` with a ``pause``-second fault window at ``window``; when this attempt's ``target``-th
    marker appears, stop the process group, check ``evidence`` and SIGKILL it.

    Returns (exit status or None when killed, evidence or None, markers seen, seconds)."""
    started = time.perf_counter()
    offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log, open(log_path, "rb") as reader:
        reader.seek(offset)
        process = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, env=child_env(f"{window}:{pause}"), start_new_session=True
        )
        text, seen = "", 0
        try:
            while True:
                text += reader.read().decode("utf-8", errors="replace")
                seen = count_markers(text, window)
                if seen >= target:
                    break
                if process.poll() is not None:
                    return process.returncode, None, seen, time.perf_counter() - started
                time.sleep(poll)
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        os.killpg(process.pid, signal.SIGSTOP)
        inside = evidence()
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return None, inside, seen, time.perf_counter() - started


@dataclass
class WindowResult:
    window: str
    command: str
    markers_in_reference: int
    pause: float
    kills: int = 0
    kills_in_window: int = 0
    resumes: int = 0
    rounds: int = 0
    attempts: list[TargetedAttempt] = field(default_factory=list)
    checks: list[dict[str, bool]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def all_checks_held(self) -> bool:
        return (
            bool(self.checks)
            and not self.failures
            and self.kills_in_window == self.kills
            and all(all(c.values()) for c in self.checks)
        )


def inject_window(
    command: Command,
    window: str,
    work: Path,
    reference: Path,
    kills: int,
    markers: int,
    pause: float,
    rng: random.Random,
    per_round: int = 3,
    log: Callable[[str], None] = print,
) -> WindowResult:
    """``kills`` SIGKILLs inside ``window``, up to ``per_round`` per folder; each folder is then resumed
    without pauses to completion and checked."""
    result = WindowResult(window, command.name, markers_in_reference=markers, pause=pause)
    if markers == 0:
        result.failures.append(f"the uninterrupted {command.name} never passed through {window}")
        return result
    round_no = 0
    while result.kills < kills:
        folder = work / f"round-{round_no}"
        folder.mkdir(parents=True, exist_ok=True)
        slots, seen_in_round, attempts = min(per_round, kills - result.kills), 0, 0
        while slots:
            remaining = max(1, markers - seen_in_round)  # a resumed run passes through what is left (about)
            target = rng.randint(1, max(1, remaining // slots))
            code, inside, seen, seconds = run_to_marker(
                command.argv(folder),
                folder / "log.txt",
                window,
                target,
                pause,
                functools.partial(window_evidence, window, folder),
            )
            result.resumes += int(attempts > 0)
            attempts += 1
            killed = code is None
            result.attempts.append(TargetedAttempt(round_no, target, killed, inside, seen, round(seconds, 2), code))
            if not killed:  # finished before its k-th marker: this round is done
                break
            seen_in_round += seen
            slots -= 1
            result.kills += 1
            result.kills_in_window += bool(inside)
            log(
                f"  {window} kill {result.kills}/{kills} at marker {target}: "
                f"{'inside the window' if inside else 'NOT proven inside the window'}"
            )
        if result.attempts[-1].killed:  # resume to completion, no pauses
            result.resumes += 1
            code, _, seconds = run_once(command.argv(folder), folder / "log.txt")
            result.attempts.append(TargetedAttempt(round_no, None, False, None, 0, round(seconds, 2), code))
        code = result.attempts[-1].returncode
        result.rounds += 1
        checks = {"exit_status_0": code == 0, **(command.check(folder, reference) if code == 0 else {})}
        result.checks.append(checks)
        bad = [k for k, v in checks.items() if not v]
        if bad:
            result.failures.append(f"round {round_no}: {', '.join(bad)} (folder {folder})")
        else:
            shutil.rmtree(folder, ignore_errors=True)
        log(f"  {window} round {round_no}: {attempts + 1} attempt(s), checks {'FAILED' if bad else 'held'}")
        round_no += 1
    return result


def make_corpus(work: Path, seed: int) -> Path:
    corpus = work / "corpus"
    argv = [emomix_executable(), "synth", str(corpus), "--seed", str(seed)]
    for key, value in SYNTH_SETTINGS.items():
        argv += ["--set", f"{key}={value}"]
    subprocess.run(argv, check=True, env=child_env(), capture_output=True)
    return corpus


def reference_run(command: Command, folder: Path) -> tuple[float, dict[str, int]]:
    """The uninterrupted run: its seconds and how often it passed through each fault window (the
    windows print their marker without pausing)."""
    folder.mkdir(parents=True, exist_ok=True)
    markers_only = ",".join(f"{window}:0" for window in WINDOWS)
    code, _, seconds = run_once(command.argv(folder), folder / "log.txt", pauses=markers_only)
    if code != 0:
        raise RuntimeError(f"the uninterrupted {command.name} failed (exit {code}); see {folder / 'log.txt'}")
    text = (folder / "log.txt").read_text(errors="replace")
    return seconds, {window: count_markers(text, window) for window in WINDOWS}


def run_fault_injection(
    work: Path,
    kills: int = 20,
    seed: int = 0,
    epochs: int = 30,
    commands: Sequence[str] = ("extract", "train"),
    log: Callable[[str], None] = print,
    window_kills: int = 0,
    pause: float = 0.5,
    per_round: int = 3,
) -> dict[str, Any]:
    """The whole benchmark in ``work``; returns the result record (see the module doc).

    ``kills`` random kills per command (0: none), then ``window_kills`` targeted kills per fault
    window of those commands (0: none), all against one uninterrupted run per command."""
    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    corpus = make_corpus(work, seed)
    recipe = work / "recipe.yaml"
    recipe.write_text(RECIPE.format(corpus=corpus, epochs=epochs))
    available = {
        "extract": Command("extract", extract_argv(corpus), extract_phase, extract_check),
        "train": Command("train", train_argv(recipe), train_phase, train_check),
    }
    rng = random.Random(seed)
    results: dict[str, Any] = {}
    windows: dict[str, Any] = {}
    for name in commands:
        command = available[name]
        reference = work / name / "reference"
        duration, markers = reference_run(command, reference)
        log(f"{name}: uninterrupted run {duration:.1f} s")
        if kills:
            log(f"{name}: injecting {kills} random kills")
            outcome = inject(command, work / name / "faults", reference, kills, duration, rng, log)
            results[name] = {**asdict(outcome), "all_checks_held": outcome.all_checks_held}
        for window in (w for w, owner in WINDOWS.items() if owner == name and window_kills):
            log(f"{name}: injecting {window_kills} kills inside {window} ({markers[window]} in the uninterrupted run)")
            targeted = inject_window(
                command,
                window,
                work / name / window,
                reference,
                window_kills,
                markers[window],
                pause,
                rng,
                per_round=per_round,
                log=log,
            )
            windows[window] = {**asdict(targeted), "all_checks_held": targeted.all_checks_held}
    held = [r["all_checks_held"] for r in (*results.values(), *windows.values())]
    argv = ["python -m bench.fault_injection"] + (["--targeted"] if window_kills and not kills else [])
    return {
        "benchmark": "fault_injection",
        "command": " ".join(
            argv
            + ["--kills", str(kills or window_kills), "--seed", str(seed)]
            + (["--only", commands[0]] if len(commands) == 1 else [])
            + (["--epochs", str(epochs)] if epochs != 30 else [])
            + (["--pause", str(pause)] if window_kills and pause != 0.5 else [])
            + (["--kills-per-round", str(per_round)] if window_kills and per_round != 3 else [])
        ),
        "kills_per_command": kills,
        "kills_per_window": window_kills,
        "pause_seconds": pause if window_kills else None,
        "windows": windows,
        "seed": seed,
        "corpus": SYNTH_SETTINGS,
        "epochs": epochs,
        "tolerance": TOLERANCE,
        "results": results,
        "all_checks_held": bool(held) and all(held),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "machine": {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]},
    }


def summary_lines(record: dict[str, Any]) -> list[str]:
    lines = []
    for name, r in record["results"].items():
        phases = ", ".join(f"{k} {v}" for k, v in sorted(r["phases"].items(), key=lambda kv: -kv[1]))
        lines.append(
            f"{name}: {r['kills']} kills ({phases}); {r['resumes']} resumes over {r['rounds']} round(s); "
            f"uninterrupted {r['reference_seconds']} s; checks {'held' if r['all_checks_held'] else 'FAILED'}"
        )
        lines.extend(f"  failure: {f}" for f in r["failures"])
    for window, r in record.get("windows", {}).items():
        lines.append(
            f"{window} ({r['command']}): {r['kills']} kills, {r['kills_in_window']} proven inside the window; "
            f"{r['resumes']} resumes over {r['rounds']} round(s); {r['markers_in_reference']} passes in the "
            f"uninterrupted run; checks {'held' if r['all_checks_held'] else 'FAILED'}"
        )
        lines.extend(f"  failure: {f}" for f in r["failures"])
    lines.append(f"wall time {record['wall_seconds']} s; all checks held: {record['all_checks_held']}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs per command (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus and of the kill delays")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of the tiny recipe")
    parser.add_argument("--only", choices=("extract", "train"), default=None, help="inject into one command only")
    parser.add_argument(
        "--targeted",
        action="store_true",
        help="kill inside the fault windows instead (--kills per window; see the module doc)",
    )
    parser.add_argument("--pause", type=float, default=0.5, help="seconds each targeted window lasts (default 0.5)")
    parser.add_argument(
        "--kills-per-round",
        type=int,
        default=3,
        help="targeted kills into one folder before it is resumed to completion and checked",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result JSON (default bench/results/fault_injection.json, -targeted.json with --targeted)",
    )
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="emomix-faults-"))
    commands = (args.only,) if args.only else ("extract", "train")
    try:
        if args.targeted:
            record = run_fault_injection(
                work,
                kills=0,
                seed=args.seed,
                epochs=args.epochs,
                commands=commands,
                window_kills=args.kills,
                pause=args.pause,
                per_round=args.kills_per_round,
            )
        else:
            record = run_fault_injection(work, kills=args.kills, seed=args.seed, epochs=args.epochs, commands=commands)
    finally:
        if args.work is None and not os.environ.get("EMOMIX_KEEP_FAULTS"):
            shutil.rmtree(work, ignore_errors=True)
    out = args.out or (RESULTS.with_name("fault_injection-targeted.json") if args.targeted else RESULTS)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print("\n".join(summary_lines(record)))
    print(f"written {out}")
    return 0 if record["all_checks_held"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
