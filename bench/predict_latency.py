"""Benchmark: latency of one prediction (a 3 s clip + its transcript) through ``Predictor.predict``
vs the bare encoder forwards + head on the same clip.

Two encoder pairs, each with a Dual Routing head (random weights: the head's cost does not depend
on them):

* **offline**: openSMILE eGeMAPSv02 LLDs (WebRTC VAD mask, frames averaged by 4) and the bundled
  MiniLM (last four layers), the synthetic recipe's head (``model_dim`` 32);
* **base**: a randomly initialised WavLM-Base-sized speech encoder
  (``SpeechSSLEncoder.from_config(WavLMConfig())``, WebRTC VAD mask) and a RoBERTa-base-sized text
  encoder (``TextEncoder.from_config(RobertaConfig())``, MiniLM's tokenizer, last four layers),
  the head at the paper's sizes (``model_dim`` 768).

Paths, interleaved (A B A B ...) with the same torch thread count:

* **bare**: :func:`emomix.cache.extract.prepare_audio` (load + VAD: what any script must do),
  the encoders' own ``encode`` on the waveform and on the string, their outputs shaped into a
  batch, the head's forward and a softmax. No table, no store, no keys, no temporary files;
* **predict(path)**: ``Predictor.predict(audio=path, text=...)`` — the whole inference path
  (utterance table, file hash, ``build_features`` through a ``MemoryStore``, float16 round trip,
  the training collator, ``predict_rows``);
* **predict(array)**: the same from a numpy array (adds writing the temporary float32 WAV).

The goal is predict(path) ≤ 1.10 × bare. Both paths' probabilities are compared (they differ
only by the store's float16 rounding). Run:
``python -m bench.predict_latency [--quick] [--threads 1]`` (``--quick``: a tiny WavLM/RoBERTa).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench._util import format_table, interleaved, machine_info, parse_args, set_threads, wavlm_config, write_results

NAME = "predict_latency"
CLASSES = ["angry", "happy", "neutral", "sad"]
SENTENCE = "well i really did not expect to see you here today and it makes me very happy"
OFFLINE_HEAD = {"model_dim": 32, "router_hidden": 32, "classifier_hidden": 64}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and write ``bench/results/predict_latency.json``."""
    args = parse_args(__doc__.splitlines()[0], argv)
    threads = set_threads(one_thread_unless_asked(args, argv))
    repeats = {"offline": 3 if args.quick else 30, "base": 2 if args.quick else 8}
    work = Path(tempfile.mkdtemp(prefix="emomix-bench-latency-"))
    try:
        clip = write_clip(work / "clip.wav", 3.0)
        results: dict[str, Any] = {
            "name": NAME,
            "machine": machine_info(threads),
            "clip_s": 3.0,
            "text": SENTENCE,
            "repeats": repeats,
            "configs": {},
        }
        for kind in ("offline", "base"):
            predictor = build_predictor(kind, args.quick, folder=work / "checkpoint")
            results["configs"][kind] = compare(kind, predictor, clip, repeats[kind])
        print()
        print(render(results))
        path = write_results(NAME, results, args.quick, args.out)
        print(f"\nwrote {path}")
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compare(kind: str, predictor: Any, clip: Path, repeats: int) -> dict[str, Any]:
    """Interleaved timings of the bare path, predict(path) and predict(array) on one clip."""
    import soundfile as sf

    samples, rate = sf.read(str(clip), dtype="float32")
    bare = bare_path(predictor, clip)
    runs = {
        "bare": bare,
        "predict_path": lambda: predictor.predict(audio=str(clip), text=SENTENCE),
        "predict_array": lambda: predictor.predict(audio=samples, sample_rate=rate, text=SENTENCE),
    }
    for run in runs.values():  # warm-up: first calls allocate, load kernels, import
        run()
    print(f"\n== {kind}: {repeats} interleaved repeats", flush=True)
    timings = interleaved(runs, repeats)
    out: dict[str, Any] = {"encoders": describe_encoders(predictor), "head": predictor.card["config"]}
    for name, timing in timings.items():
        out[name] = {**timing.to_dict(), "cpu_best_s": round(min(timing.cpu_seconds), 4)}
    for name in ("predict_path", "predict_array"):
        out[f"ratio_{name}_to_bare"] = round(timings[name].best / timings["bare"].best, 3)
        out[f"median_ratio_{name}_to_bare"] = round(timings[name].median / timings["bare"].median, 3)
        out[f"cpu_ratio_{name}_to_bare"] = round(min(timings[name].cpu_seconds) / min(timings["bare"].cpu_seconds), 3)
    reference = bare()
    predicted = predictor.predict(audio=str(clip), text=SENTENCE)
    out["max_abs_prob_difference"] = float(
        np.abs(reference - np.array([predicted["probabilities"][c] for c in CLASSES])).max()
    )
    print(
        format_table(
            ["path", "best ms", "median ms", "CPU ms (min)", "vs bare (best)"],
            [
                [
                    n,
                    out[n]["best_s"] * 1000,
                    out[n]["median_s"] * 1000,
                    out[n]["cpu_best_s"] * 1000,
                    out.get(f"ratio_{n}_to_bare", 1.0),
                ]
                for n in timings
            ],
        )
    )
    print(f"bare vs predict probabilities: max |difference| {out['max_abs_prob_difference']:.2e}")
    return out


def render(results: dict[str, Any]) -> str:
    rows = []
    for kind, r in results["configs"].items():
        for name in ("bare", "predict_path", "predict_array"):
            rows.append(
                [
                    kind if name == "bare" else "",
                    name,
                    r[name]["best_s"] * 1000,
                    r[name]["median_s"] * 1000,
                    r[name]["cpu_best_s"] * 1000,
                    r.get(f"ratio_{name}_to_bare", 1.0),
                ]
            )
    return format_table(["encoders", "path", "best ms", "median ms", "CPU ms", "× bare"], rows)


# ---------------------------------------------------------------------------------------------
# Shared with bench.folder_throughput and bench.timeline_hour
# ---------------------------------------------------------------------------------------------


def one_thread_unless_asked(args: Any, argv: Sequence[str] | None) -> int:
    """These benchmarks default to one torch thread (the shared 2-core machine); ``--threads`` overrides."""
    given = list(argv) if argv is not None else sys.argv[1:]
    return int(args.threads) if any(a == "--threads" or a.startswith("--threads=") for a in given) else 1


def write_clip(path: Path, seconds: float, seed: int = 0) -> Path:
    """A speech-like 16 kHz WAV of ``seconds`` (see :func:`bench._util.synthetic_wave`)."""
    import soundfile as sf

    from bench._util import synthetic_wave

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), synthetic_wave(seconds, np.random.default_rng(seed)), 16000, subtype="PCM_16")
    return path


def offline_specs() -> dict[str, Any]:
    from emomix.features import FeatureSpec

    return {
        "audio": FeatureSpec.from_dict(
            "audio",
            {"encoder": "opensmile:eGeMAPSv02", "frame_stride": 4, "preprocess": {"vad": "webrtc", "vad_mode": "mask"}},
        ),
        "text": FeatureSpec.from_dict("text", {"encoder": "minilm", "layers": [3, 4, 5, 6]}),
    }


def model_card(model: Any, dims: dict[str, Any], specs: dict[str, Any]) -> dict[str, Any]:
    """The model card fields both benchmark predictors share (a Dual Routing head, no edges)."""
    return {
        "format": "emomix.model/1",
        "model": "dual_routing",
        "config": model.config.to_dict(),
        "classes": CLASSES,
        "input_dims": dims,
        "batch_kind": "utterance",
        "features": {m: s.to_dict() for m, s in specs.items()},
        "edges": False,
    }


def write_offline_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A checkpoint folder (model.json + model.safetensors) of a random-weight Dual Routing head
    on openSMILE + MiniLM: loadable by ``Predictor.from_run`` and ``emomix predict``."""
    import json

    import torch

    from emomix.models import create_model
    from emomix.models.saved import TrainedModel, save_weights

    specs = offline_specs()
    dims = {"audio": 25, "text": 384}
    torch.manual_seed(seed)
    model = create_model("dual_routing", OFFLINE_HEAD, dims, len(CLASSES))
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(TrainedModel(model).trainable_state(), folder / "model.safetensors")
    card = {
        **model_card(model, dims, specs),
        "frame_rates": {"audio": 25.0, "text": None},
        "normalisers": [],
        "fold": "bench",
        "seed": seed,
        "corpus": "none",
        "protocol": "none",
        "training": {"best_score": None, "note": "random weights (benchmark)"},
    }
    (folder / "model.json").write_text(json.dumps(card, indent=1))
    return folder


def build_predictor(kind: str, quick: bool = False, folder: Path | None = None) -> Any:
    """A Predictor with a random-weight head: ``offline`` (from a checkpoint folder, as a user
    loads one) or ``base`` (random WavLM-Base/RoBERTa-base encoders handed in directly, since such
    encoders cannot be rebuilt from a spec string)."""
    import torch

    from emomix.infer.predictor import Predictor

    if kind == "offline":
        if folder is None:
            raise ValueError("the offline predictor needs a folder for its checkpoint")
        return Predictor.from_run(write_offline_checkpoint(folder), asr=False)
    from bench.model_costs import roberta_config
    from emomix.encoders.speech_ssl import SpeechSSLEncoder
    from emomix.encoders.text import TextEncoder
    from emomix.features import FeatureSpec
    from emomix.models import create_model
    from emomix.models.saved import TrainedModel

    speech = SpeechSSLEncoder.from_config(wavlm_config(quick), seed=0)
    text = TextEncoder.from_config(roberta_config(quick), seed=0)
    top = text.num_layers
    specs = {
        "audio": FeatureSpec.from_dict(
            "audio", {"encoder": "wavlm-base-random", "preprocess": {"vad": "webrtc", "vad_mode": "mask"}}
        ),
        "text": FeatureSpec.from_dict(
            "text", {"encoder": "roberta-base-random", "layers": list(range(top - 3, top + 1))}
        ),
    }
    dims = {"audio": int(speech.output_size), "text": int(text.output_size)}
    torch.manual_seed(0)
    model = create_model("dual_routing", {}, dims, len(CLASSES))
    network = TrainedModel(model)
    network.eval()
    card = {**model_card(model, dims, specs), "training": {}}
    return Predictor(card, network, specs, {"audio": speech, "text": text}, {}, Path("<benchmark>"), asr=False)


def bare_path(predictor: Any, clip: Path, sentence: str = SENTENCE):
    """The bare path on one clip and transcript, as a function of no arguments."""
    run = make_bare(predictor)
    return lambda: run(clip, sentence)


def make_bare(predictor: Any):
    """``run(path, text) -> probabilities``: the work a hand-written script needs for the same
    prediction — load + VAD, the two encoder forwards, the frame striding, a batch, the head, a
    softmax."""
    import torch

    from emomix.cache.extract import PreprocessConfig, prepare_audio
    from emomix.features import postprocess_fields
    from emomix.models.inputs import Batch, modality_input

    audio_spec, text_spec = predictor.specs["audio"], predictor.specs["text"]
    audio_encoder, text_encoder = predictor.encoders["audio"], predictor.encoders["text"]
    preprocess = PreprocessConfig.from_dict(audio_spec.preprocess)
    layers = list(text_spec.layers)
    rate = float(audio_encoder.frame_rate)
    model = predictor.model

    def run(clip: Path | str, sentence: str) -> np.ndarray:
        from emomix.audio.vad import map_mask_to_frames

        prepared = prepare_audio(str(clip), None, None, preprocess)
        audio = audio_encoder.encode([prepared["input"]]).unpad(0)
        mask, frame_s = prepared["vad"]
        audio["speech_mask"] = map_mask_to_frames(mask, frame_s, 1.0 / rate, audio["states"].shape[0]).astype(np.uint8)
        audio = postprocess_fields(audio, audio_spec.frame_stride)
        text = text_encoder.encode([sentence], output_hidden_states=True).unpad(0, layers)
        batch = Batch(
            inputs={
                "audio": modality_input([audio], frame_rate=rate / audio_spec.frame_stride),
                "text": modality_input([text], layers=layers),
            }
        )
        with torch.no_grad():
            return torch.softmax(model(batch).logits, dim=-1)[0].numpy().astype(np.float64)

    return run


def describe_encoders(predictor: Any) -> dict[str, Any]:
    out = {}
    for modality, encoder in predictor.encoders.items():
        parameters = sum(p.numel() for p in encoder.parameters()) if hasattr(encoder, "parameters") else 0
        out[modality] = {
            "spec": str(predictor.specs[modality].encoder),
            "class": type(encoder).__name__,
            "parameters": int(parameters),
        }
    return out


if __name__ == "__main__":
    main()
