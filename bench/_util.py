"""Shared helpers of the benchmarks: threads, timing with warm-up and repeats, machine info,
benchmark audio (EmoDB when present, else synthetic WAVs), tables and result JSON files.

Every benchmark is a module run as ``python -m bench.<name> [--quick]``; it prints a table and
writes ``bench/results/<name>.json`` (``<name>.quick.json`` for smoke runs, not committed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RATE = 16_000


# ---------------------------------------------------------------------- command line and threads


def parse_args(
    description: str, argv: Sequence[str] | None = None, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """The options every benchmark takes: ``--quick``, ``--threads``, ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny sizes (seconds)")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch intra-op threads for every timed path (default 2)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="result JSON path (default bench/results/<name>[.quick].json)"
    )
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def set_threads(threads: int) -> int:
    """Use the same number of torch threads for every path compared (and one interop thread)."""
    import torch

    torch.set_num_threads(int(threads))
    with contextlib.suppress(RuntimeError):  # already set in this process (settable only once)
        torch.set_num_interop_threads(1)
    return torch.get_num_threads()


# ---------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Wall-clock and CPU seconds (all threads of this process) of the timed repeats, warm-ups excluded.

    On a shared machine the wall time grows with other processes' load; the CPU time much less
    (it still grows a little: threads spin while waiting for a descheduled sibling).
    """

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float) -> None:
        """Record one repeat."""
        self.seconds.append(wall)
        self.cpu_seconds.append(cpu)

    @property
    def best(self) -> float:
        """The fastest repeat: the least disturbed by other processes sharing the CPU."""
        return min(self.seconds)

    @property
    def median(self) -> float:
        """The median repeat."""
        return statistics.median(self.seconds)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the result JSON."""
        return {
            "best_s": round(self.best, 4),
            "median_s": round(self.median, 4),
            "repeats_s": [round(s, 4) for s in self.seconds],
            "cpu_s": [round(s, 3) for s in self.cpu_seconds],
        }


class Stopwatch:
    """Measures wall and process CPU time of a block: ``with Stopwatch() as watch: ...; watch.wall``."""

    def __enter__(self) -> Stopwatch:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def time_repeats(
    run: Callable[[], Any], repeats: int = 3, warmup: int = 1, before: Callable[[], Any] | None = None
) -> Timing:
    """Time ``run()`` ``repeats`` times after ``warmup`` untimed calls; ``before()`` runs untimed before each call."""
    for _ in range(warmup):
        if before is not None:
            before()
        run()
    timing = Timing()
    for _ in range(repeats):
        if before is not None:
            before()
        with Stopwatch() as watch:
            run()
        timing.add(watch.wall, watch.cpu)
    return timing


def interleaved(
    runs: dict[str, Callable[[], Any]], repeats: int, before: dict[str, Callable[[], Any]] | None = None
) -> dict[str, Timing]:
    """Time several paths in turn (A B A B ...), so a burst of load from other processes hits both alike."""
    before = before or {}
    timings = {name: Timing() for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            if name in before:
                before[name]()
            with Stopwatch() as watch:
                run()
            timings[name].add(watch.wall, watch.cpu)
    return timings


# ---------------------------------------------------------------------- models


def wavlm_config(quick: bool = False) -> Any:
    """``WavLMConfig()`` (base size: 12 layers, 768 dims, 94.4 M parameters); for ``--quick`` a tiny
    model with the same 12 layers and CNN strides (so frame rates and layer indices match)."""
    from transformers import WavLMConfig

    if not quick:
        return WavLMConfig()
    return WavLMConfig(
        hidden_size=32,
        num_hidden_layers=12,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )


def bert_base_config(quick: bool = False) -> Any:
    """``BertConfig()`` (BERT-base size: 12 layers, 768 dims); tiny with 12 layers for ``--quick``."""
    from transformers import BertConfig

    if not quick:
        return BertConfig()
    return BertConfig(hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64)


# ---------------------------------------------------------------------- machine


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """CPU, core count, load, library versions: what a reader needs to compare numbers."""
    import torch

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "gpu": torch.cuda.is_available(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": "python -m " + _module_name() + ("" if len(sys.argv) < 2 else " " + " ".join(sys.argv[1:])),
    }
    for name in ("transformers", "opensmile", "safetensors", "numpy"):
        try:
            info[name] = __import__(name).__version__
        except Exception:
            info[name] = None
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem


# ---------------------------------------------------------------------- benchmark audio


def shared_corpus(name: str) -> Path | None:
    """``<shared datasets>/<name>`` when it exists, else None."""
    from emomix.data.paths import shared_datasets_dir

    root = shared_datasets_dir()
    if root is None or not (root / name).is_dir():
        return None
    return root / name


AUDIO_CORPORA = {"savee": "*.wav", "emodb": "wav/*.wav"}


def benchmark_audio_table(
    count: int, min_s: float, max_s: float, folder: Path, corpus: str = "auto", seed: int = 0
) -> tuple[Any, str]:
    """An utterance table of ``count`` files of ``min_s``..``max_s`` seconds, and where they come from.

    ``corpus``: ``"savee"`` or ``"emodb"`` (the shared copy; files in that duration range, in name
    order), ``"synthetic"`` (speech-like WAVs written into ``folder``), or ``"auto"``: SAVEE when
    present, else synthetic. SAVEE is preferred because its lengths vary like real speech; the
    shared EmoDB copy has every file cut or padded to exactly 2.0 s, which hides any cost of
    padding or length grouping.
    """
    import soundfile

    from emomix.data.schema import make_table

    if corpus not in ("auto", "synthetic", *AUDIO_CORPORA):
        raise SystemExit(f"unknown benchmark corpus {corpus!r}; use auto, synthetic, {', '.join(AUDIO_CORPORA)}")
    paths: list[Path] = []
    source = "synthetic"
    for name in ["savee"] if corpus == "auto" else [corpus] if corpus in AUDIO_CORPORA else []:
        root = shared_corpus(name)
        if root is None:
            if corpus != "auto":
                raise SystemExit(f"the shared {name} corpus is not present (set EMOMIX_DATASETS)")
            continue
        for path in sorted(root.glob(AUDIO_CORPORA[name])):
            if min_s <= soundfile.info(str(path)).duration <= max_s:
                paths.append(path)
            if len(paths) == count:
                source = f"{name} ({root}): the first {count} files of {min_s}-{max_s} s in name order"
                break
        if len(paths) < count:
            raise SystemExit(f"{name} has only {len(paths)} files of {min_s}-{max_s} s; ask for fewer")
    if not paths:
        paths = write_synthetic_wavs(folder, count, min_s, max_s, seed)
        source = f"synthetic speech-like WAVs ({count} of {min_s}-{max_s} s, seed {seed})"
    records = [{"utt_id": p.stem, "corpus": "bench", "speaker": "s0", "audio_path": str(p)} for p in paths]
    return make_table(records), source


def write_synthetic_wavs(folder: Path, count: int, min_s: float, max_s: float, seed: int = 0) -> list[Path]:
    """Write ``count`` 16 kHz int16 WAVs of harmonic tones with a syllable-like envelope plus noise."""
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        seconds = rng.uniform(min_s, max_s)
        wave = synthetic_wave(seconds, rng)
        path = folder / f"synth_{index:04d}.wav"
        soundfile.write(str(path), wave, RATE, subtype="PCM_16")
        paths.append(path)
    return paths


def synthetic_wave(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A speech-like float32 waveform: a gliding F0 with harmonics, 4 Hz syllable envelope, noise."""
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    f0 = rng.uniform(100, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t), 0, None) ** 2
    wave = 0.3 * voiced * envelope + 0.01 * rng.standard_normal(n)
    return (wave / max(1e-6, np.abs(wave).max()) * 0.8).astype(np.float32)


# ---------------------------------------------------------------------- output


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table (also valid Markdown)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda values: "| " + " | ".join(str(v).ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in cells)])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def write_results(name: str, payload: dict[str, Any], quick: bool, out: Path | None = None) -> Path:
    """Write the result JSON (small: summaries only) and return its path."""
    path = out or RESULTS_DIR / (f"{name}.quick.json" if quick else f"{name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def directory_bytes(folder: Path) -> int:
    """Total size of the files under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
