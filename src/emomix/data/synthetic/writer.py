"""Writing the corpus folder: media, ``generation.json``, ``scheme.yaml`` and, last, the manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emomix.atomic import atomic_path, write_text_atomic, write_wav_atomic
from emomix.constants import SAMPLE_RATE
from emomix.data.synthetic.config import (
    CORPUS_NAME,
    GENERATOR,
    GENERATOR_VERSION,
    SyntheticConfig,
)
from emomix.data.synthetic.cues import CLASS_CUES
from emomix.data.synthetic.plan import CorpusPlan, plan_corpus
from emomix.data.synthetic.speech import render_audio
from emomix.data.synthetic.video import render_video
from emomix.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd


def write_synthetic_corpus(out_dir: str | Path, config: SyntheticConfig | None = None) -> Path:
    """Write the corpus for ``config`` into ``out_dir`` and return the manifest path.

    Writes ``wav/<utt_id>.wav`` (16 kHz mono 16-bit PCM), ``video/<utt_id>.mp4`` when
    ``config.video``, ``generation.json`` (config and latent facts), ``scheme.yaml`` and, last,
    ``manifest.csv`` (through a temporary file), so an interrupted run never leaves a manifest
    that points at missing files. ``out_dir`` must be new, empty, or a synthetic corpus written
    before; rewriting the same config is a no-op.
    """
    config = config or SyntheticConfig()
    out = Path(out_dir)
    _check_out_dir(out)
    manifest_path = out / "manifest.csv"
    generation_path = out / "generation.json"
    if _is_up_to_date(out, config):
        return manifest_path

    plan = plan_corpus(config)
    out.mkdir(parents=True, exist_ok=True)
    # The old manifest goes first: from here until the new one lands, no manifest exists.
    manifest_path.unlink(missing_ok=True)
    write_text_atomic(generation_path, json.dumps(_generation_record(plan), indent=1) + "\n")

    wav_dir, video_dir = out / "wav", out / "video"
    wav_dir.mkdir(exist_ok=True)
    if config.video:
        video_dir.mkdir(exist_ok=True)
    for utterance in plan.utterances:
        audio = render_audio(utterance, plan.speakers[utterance.speaker], config)
        _write_wav(wav_dir / f"{utterance.utt_id}.wav", audio)
        if config.video:
            _write_mp4_atomic(video_dir / f"{utterance.utt_id}.mp4", render_video(utterance, config), config.video_fps)
    _remove_stale_media(wav_dir, {f"{u.utt_id}.wav" for u in plan.utterances})
    if video_dir.exists():
        _remove_stale_media(video_dir, {f"{u.utt_id}.mp4" for u in plan.utterances} if config.video else set())
        if not any(video_dir.iterdir()):
            video_dir.rmdir()

    write_text_atomic(out / "scheme.yaml", _scheme_yaml(config))
    write_text_atomic(manifest_path, manifest_frame(plan).to_csv(index=False, lineterminator="\n"))
    return manifest_path


def manifest_frame(plan: CorpusPlan) -> pd.DataFrame:
    """The manifest as a DataFrame with the utterance-table columns (``words`` as JSON text)."""
    import pandas as pd

    from emomix.data.schema import COLUMNS

    rows = []
    for u in plan.utterances:
        rows.append(
            {
                "utt_id": u.utt_id,
                "corpus": CORPUS_NAME,
                "audio_path": f"wav/{u.utt_id}.wav",
                "start": None,
                "end": None,
                "text": u.text,
                "label": u.label,
                "raw_label": u.label,
                "score": None,
                "speaker": u.speaker,
                "session": u.session,
                "dialogue_id": u.dialogue_id,
                "turn": u.turn,
                "split": None,
                "video_path": f"video/{u.utt_id}.mp4" if plan.config.video else None,
                "video_start": None,
                "video_end": None,
                "words": json.dumps(u.words, separators=(",", ":")),
                "alignment": "synthetic",
            }
        )
    # Columns the schema has and this generator does not know stay empty rather than failing.
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["turn"] = frame["turn"].astype("int64")
    return frame


def load_generation(out_dir: str | Path) -> dict[str, Any]:
    """Read ``generation.json`` of a synthetic corpus folder."""
    from emomix.errors import MissingDataError

    path = Path(out_dir) / "generation.json"
    if not path.exists():
        raise MissingDataError(f"{path} does not exist; write the corpus with `emomix synth {out_dir}`")
    return json.loads(path.read_text(encoding="utf-8"))


def _generation_record(plan: CorpusPlan) -> dict[str, Any]:
    config = plan.config
    return {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "seed": config.seed,
        "sample_rate": SAMPLE_RATE,
        "config": config.to_dict(),
        "classes": {
            name: {
                "cue": CLASS_CUES[name].kind,
                "arousal": CLASS_CUES[name].arousal,
                "audio": CLASS_CUES[name].description,
                "event": CLASS_CUES[name].event,
                "words": list(CLASS_CUES[name].words),
                "phrase": list(CLASS_CUES[name].phrase),
            }
            for name in config.classes
        },
        "speakers": [voice.to_dict() for voice in plan.speakers.values()],
        "utterances": [u.facts() for u in plan.utterances],
    }


def _scheme_yaml(config: SyntheticConfig) -> str:
    import yaml

    name = CORPUS_NAME + "-" + str(len(config.classes))
    spec = {"name": name, "classes": list(config.classes), "map": {c: c for c in config.classes}, "corpus": CORPUS_NAME}
    return yaml.safe_dump(spec, sort_keys=False, default_flow_style=None)


def _read_marker(out: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((out / "generation.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("generator") == GENERATOR else None


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; give a folder for the synthetic corpus")
    if out.is_dir() and any(out.iterdir()) and _read_marker(out) is None:
        raise ConfigError(
            f"{out} is not empty and holds no synthetic corpus (no generation.json from emomix); "
            "refusing to write into it: choose a new or empty folder"
        )


def _is_up_to_date(out: Path, config: SyntheticConfig) -> bool:
    record = _read_marker(out)
    if record is None or record.get("version") != GENERATOR_VERSION or record.get("config") != config.to_dict():
        return False
    if not (out / "manifest.csv").exists() or not (out / "scheme.yaml").exists():
        return False
    for fact in record.get("utterances", []):
        if not (out / "wav" / f"{fact['utt_id']}.wav").exists():
            return False
        if config.video and not (out / "video" / f"{fact['utt_id']}.mp4").exists():
            return False
    return True


def _remove_stale_media(folder: Path, keep: set[str]) -> None:
    """Delete files a previous synthetic run left that this run does not write."""
    for path in folder.iterdir():
        if path.is_file() and path.name not in keep and path.suffix in {".wav", ".mp4", ".tmp"}:
            path.unlink()


def _write_wav(path: Path, audio: np.ndarray) -> None:
    """Write ``audio`` (floats in [-1, 1]) as 16-bit PCM, rounded here so the bytes never depend on
    soundfile's own float conversion."""
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
    write_wav_atomic(path, pcm, SAMPLE_RATE, subtype="PCM_16")


def _write_mp4_atomic(path: Path, frames: np.ndarray, fps: int) -> None:
    """Write grayscale ``frames`` as an MPEG-4 video, atomically (see :mod:`emomix.atomic`)."""
    import av

    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        # MPEG-4 Part 2 rather than H.264: this x264 build does not give the same bytes from run
        # to run, ffmpeg's own mpeg4 encoder does, and every decoder reads it.
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 150_000  # about 19 KB per second at 64x64, pixel noise included
        stream.thread_count = 1
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="gray")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
