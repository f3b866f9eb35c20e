"""Every row of the bad-input table (docs/bad-input.md) checked against what the code does.

The table is the one source of truth: each row gives an id, the expected message fragment (the
first `code` span of its message column) and the exit status or HTTP code (its last column). This
file holds one case per id that builds the bad input in ``tmp_path``, runs it the way a user would
(the in-process CLI :func:`emomix.cli.main`, or the service through FastAPI's TestClient) and
returns ``(status, text)``; the test asserts the table's status and that the fragment is in the
text. A row without a case, or a case without a row, fails the suite, so the two cannot drift.

Inference rows use a tiny checkpoint built in milliseconds (an untrained ``early_fusion_audio`` on
MFCC features, saved as :class:`~emomix.models.saved.TrainedModel`), not a trained run: the
errors come from the input, not from what the model learnt.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from emomix.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-input.md"
RATE = 16000
ROW = re.compile(r"^\|\s*`?([a-z]+(?:-[a-z0-9]+)+)`?\s*\|(.*)\|\s*$")


def read_table(path: Path = DOC) -> dict[str, tuple[str, int]]:
    """``{row id: (message fragment, status)}`` from the Markdown tables of ``path``."""
    rows: dict[str, tuple[str, int]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line.strip())
        if not match:
            continue
        cells = [c.strip() for c in match.group(2).split("|")]
        fragment = re.search(r"`([^`]+)`", cells[-2])
        status = re.match(r"\d+", cells[-1])
        assert fragment and status, f"row {match.group(1)} needs a `fragment` and a status: {line}"
        assert match.group(1) not in rows, f"row id {match.group(1)} appears twice"
        rows[match.group(1)] = (fragment.group(1), int(status.group(0)))
    return rows


TABLE = read_table()


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def tone(seconds: float = 1.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def write_wav(path: Path, wave: np.ndarray | None = None, rate: int = RATE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone() if wave is None else wave, rate, subtype="PCM_16")
    return path


def wav_bytes(seconds: float = 1.0, rate: int = RATE, silent: bool = False) -> bytes:
    buffer = io.BytesIO()
    wave = np.zeros(int(seconds * rate), np.float32) if silent else tone(seconds, rate)
    sf.write(buffer, wave, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


CORRUPT_WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4
MANIFEST_HEADER = "utt_id,speaker,audio_path,text,label\n"


def manifest(root: Path, body: str, header: str = MANIFEST_HEADER, encoding: str = "utf-8") -> Path:
    """A manifest corpus folder with audio/u1.wav and audio/u2.wav."""
    write_wav(root / "audio" / "u1.wav")
    write_wav(root / "audio" / "u2.wav")
    (root / "manifest.csv").write_bytes((header + body).encode(encoding))
    return root


def recipe(tmp: Path, name: str, change: Callable[[dict], None] | None = None, text: str | None = None) -> str:
    """A copy of the synthetic Dual Routing recipe (paths inside ``tmp``), changed by ``change``."""
    data = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "configs" / "synthetic" / "dual_routing.yaml").read_text()
    )
    data["corpus"]["root"] = str(tmp / "corpus")
    data["features"]["store"] = str(tmp / "store")
    if change:
        change(data)
    path = tmp / f"{name}.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(data))
    return str(path)


def store(root: Path) -> Path:
    from emomix.cache.store import FeatureStore

    rng = np.random.default_rng(0)
    with FeatureStore(root) as features:
        features.put_many({f"k{i}": {"x": rng.random((5, 3)).astype(np.float32)} for i in range(3)}, namespace="a")
    return root


def shard(root: Path) -> Path:
    return next((root / "shards" / "a").glob("*.safetensors"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint folder ``run/folds/f1/seed-0`` of an untrained MFCC model (two classes)."""
    import torch

    from emomix.encoders.registry import create_encoder
    from emomix.models.base import create_model
    from emomix.models.saved import TrainedModel

    dim = int(create_encoder("mfcc").encode([tone()]).states.shape[-1])
    folder = tmp_path_factory.mktemp("bad-input") / "run" / "folds" / "f1" / "seed-0"
    card = {
        "model": "early_fusion_audio",
        "classes": ["angry", "happy"],
        "input_dims": {"audio": dim},
        "features": {"audio": {"encoder": "mfcc"}},
        "fold": "f1",
        "seed": 0,
        "config": {},
    }
    torch.manual_seed(0)
    TrainedModel(create_model("early_fusion_audio", {}, {"audio": dim}, 2), metadata=card).save(folder)
    return folder


@pytest.fixture(scope="module")
def client(checkpoint):
    from fastapi.testclient import TestClient

    from emomix.infer.predictor import Predictor
    from emomix.serve.app import ServiceLimits, create_app

    predictor = Predictor.from_run(checkpoint, asr=False)
    limits = ServiceLimits(max_upload_bytes=100_000, max_duration_s=2.0, max_text_chars=100)
    with TestClient(create_app(predictor, limits), raise_server_exceptions=False) as test_client:
        yield test_client


class Context:
    """What a case needs: a fresh folder, the tiny checkpoint, the service client, the CLI runner."""

    def __init__(
        self, tmp: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
    ):
        self.tmp, self.request, self.capsys, self.monkeypatch = tmp, request, capsys, monkeypatch

    @property
    def checkpoint(self) -> Path:
        return self.request.getfixturevalue("checkpoint")

    def cli(self, *argv: str) -> tuple[int, str]:
        """Run ``emomix argv`` in-process: (exit status, stderr + stdout)."""
        self.capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main([str(a) for a in argv])
        captured = self.capsys.readouterr()
        code = exited.value.code
        return (code if isinstance(code, int) else 0 if code is None else 1), captured.err + captured.out

    def predict(self, source: Path | str, *options: str) -> tuple[int, str]:
        return self.cli("predict", self.checkpoint, source, "-q", *options)

    def post(self, data: bytes = b"", name: str = "clip.wav", kind: str = "audio/wav", **form) -> tuple[int, str]:
        client = self.request.getfixturevalue("client")
        response = client.post("/predict", files={"file": (name, data, kind)}, data=form)
        return response.status_code, response.json()["error"][
            "message"
        ] if response.status_code >= 400 else response.text


# ---------------------------------------------------------------------------------------------
# One case per row id
# ---------------------------------------------------------------------------------------------

CASES: dict[str, Callable[[Context], tuple[int, str]]] = {}


def case(row_id: str):
    def register(function: Callable[[Context], tuple[int, str]]):
        assert row_id not in CASES, row_id
        CASES[row_id] = function
        return function

    return register


# -- audio (emomix predict) -------------------------------------------------------------------


@case("audio-missing-file")
def _(c: Context):
    return c.predict(c.tmp / "nope.wav")


@case("audio-corrupt-wav")
def _(c: Context):
    (c.tmp / "corrupt.wav").write_bytes(CORRUPT_WAV)
    return c.predict(c.tmp / "corrupt.wav")


@case("audio-truncated-header")
def _(c: Context):
    (c.tmp / "cut.wav").write_bytes(wav_bytes()[:30])
    return c.predict(c.tmp / "cut.wav")


@case("audio-truncated-data")
def _(c: Context):
    whole = wav_bytes(1.0)
    (c.tmp / "half.wav").write_bytes(whole[: 44 + (len(whole) - 44) // 2])
    return c.predict(c.tmp / "half.wav")


@case("audio-empty-file")
def _(c: Context):
    (c.tmp / "empty.wav").write_bytes(b"")
    return c.predict(c.tmp / "empty.wav")


@case("audio-silence-only")
def _(c: Context):
    return c.predict(write_wav(c.tmp / "quiet.wav", np.zeros(RATE, np.float32)))


@case("audio-other-sample-rate")
def _(c: Context):
    return c.predict(write_wav(c.tmp / "8k.wav", tone(1.0, 8000), 8000))


@case("audio-unsupported-container")
def _(c: Context):
    (c.tmp / "clip.xyz").write_bytes(b"not audio at all " * 50)
    return c.predict(c.tmp / "clip.xyz")


@case("audio-folder-without-audio")
def _(c: Context):
    (c.tmp / "folder").mkdir()
    (c.tmp / "folder" / "notes.txt").write_text("hello")
    return c.predict(c.tmp / "folder")


@case("audio-no-speech-found")
def _(c: Context):
    folder = _copy_checkpoint(c)  # the same model behind a Silero VAD that trims to speech
    card = json.loads((folder / "model.json").read_text())
    card["features"]["audio"]["preprocess"] = {"vad": "silero", "vad_mode": "trim"}
    (folder / "model.json").write_text(json.dumps(card))
    return c.cli("predict", folder, write_wav(c.tmp / "tone.wav"), "-q")  # a steady tone: sound, no speech


# -- text ----------------------------------------------------------------------------------------


@case("text-empty-transcript")
def _(c: Context):
    return c.predict(write_wav(c.tmp / "a.wav"), "--text", "")


@case("text-whitespace-transcript")
def _(c: Context):
    return c.predict(write_wav(c.tmp / "a.wav"), "--text", "   ")


@case("text-empty-in-manifest")
def _(c: Context):
    root = manifest(c.tmp / "corpus", "u1,s1,audio/u1.wav,,happy\nu2,s1,audio/u2.wav,   ,sad\n")
    return c.cli("corpus", "info", "manifest", root)


@case("text-not-utf8-manifest")
def _(c: Context):
    import pandas as pd

    root = manifest(c.tmp / "corpus", "u1,s1,audio/u1.wav,caf\xe9 d\xe9j\xe0 vu,happy\n", encoding="cp1252")
    status, text = c.cli("corpus", "export", "manifest", root, c.tmp / "table.parquet")
    return status, text + " " + " ".join(pd.read_parquet(c.tmp / "table.parquet")["text"])


@case("text-given-to-audio-model")
def _(c: Context):
    return c.predict(write_wav(c.tmp / "a.wav"), "--text", "what a day")


# -- labels --------------------------------------------------------------------------------------


@case("label-unknown-scheme")
def _(c: Context):
    root = manifest(c.tmp / "corpus", "u1,s1,audio/u1.wav,hi,happy\n")
    return c.cli("corpus", "info", "manifest", root, "--scheme", "bogus")


@case("label-scheme-yaml-malformed")
def _(c: Context):
    root = manifest(c.tmp / "corpus", "u1,s1,audio/u1.wav,hi,happy\n")
    (c.tmp / "mine.yaml").write_text("classes: [happy, sad\nmap: {")
    return c.cli("corpus", "info", "manifest", root, "--scheme", c.tmp / "mine.yaml")


@case("label-scheme-yaml-not-a-mapping")
def _(c: Context):
    root = manifest(c.tmp / "corpus", "u1,s1,audio/u1.wav,hi,happy\n")
    (c.tmp / "mine.yaml").write_text("- happy\n- sad\n")
    return c.cli("corpus", "info", "manifest", root, "--scheme", c.tmp / "mine.yaml")


@case("label-manifest-scheme-malformed")
def _(c: Context):
    root = manifest(c.tmp / "corpus", "u1,s1,audio/u1.wav,hi,happy\n")
    (root / "scheme.yaml").write_text("classes: [happy\n")
    return c.cli("corpus", "info", "manifest", root)


@case("label-unknown-in-corpus")
def _(c: Context):
    root = manifest(c.tmp / "corpus", "u1,s1,audio/u1.wav,hi,happy\nu2,s1,audio/u2.wav,ho,bored\n")
    (c.tmp / "two.yaml").write_text("classes: [happy, sad]\nmap: {}\n")
    return c.cli("corpus", "info", "manifest", root, "--scheme", c.tmp / "two.yaml")


@case("label-unknown-reader")
def _(c: Context):
    return c.cli("corpus", "info", "bogus", c.tmp)


# -- manifests -----------------------------------------------------------------------------------


@case("manifest-missing-column")
def _(c: Context):
    root = manifest(c.tmp / "corpus", "u1,audio/u1.wav,hi,happy\n", header="utt_id,audio_path,text,label\n")
    return c.cli("corpus", "info", "manifest", root)


@case("manifest-unknown-column")
def _(c: Context):
    root = manifest(c.tmp / "corpus", "u1,s1,audio/u1.wav,hi,happy\n", header="utt_id,speeker,audio_path,text,label\n")
    return c.cli("corpus", "info", "manifest", root)


@case("manifest-duplicate-utt-id")
def _(c: Context):
    root = manifest(c.tmp / "corpus", "u1,s1,audio/u1.wav,hi,happy\nu1,s1,audio/u2.wav,ho,sad\n")
    return c.cli("corpus", "info", "manifest", root)


@case("manifest-missing-audio")
def _(c: Context):
    root = manifest(c.tmp / "corpus", "u1,s1,audio/u1.wav,hi,happy\nu3,s1,audio/u3.wav,ho,sad\n")
    return c.cli("corpus", "info", "manifest", root)


@case("manifest-no-rows")
def _(c: Context):
    return c.cli("corpus", "info", "manifest", manifest(c.tmp / "corpus", ""))


@case("manifest-not-found")
def _(c: Context):
    (c.tmp / "empty").mkdir()
    return c.cli("corpus", "info", "manifest", c.tmp / "empty")


@case("manifest-bad-words-json")
def _(c: Context):
    root = manifest(
        c.tmp / "corpus",
        'u1,s1,audio/u1.wav,hi,happy,"[{""token"": ""hi"""\n',
        header="utt_id,speaker,audio_path,text,label,words\n",
    )
    return c.cli("corpus", "info", "manifest", root)


@case("manifest-predict-no-audio-column")
def _(c: Context):
    write_wav(c.tmp / "a.wav")
    (c.tmp / "list.csv").write_text("path,speaker\na.wav,s1\n")
    return c.predict(c.tmp / "list.csv")


@case("manifest-predict-turn-order")
def _(c: Context):
    write_wav(c.tmp / "a.wav")
    (c.tmp / "talk.csv").write_text("audio_path,dialogue_id,turn\na.wav,d1,1\na.wav,d1,1\n")
    return c.predict(c.tmp / "talk.csv")


@case("corpus-folder-missing")
def _(c: Context):
    return c.cli("corpus", "info", "emodb", c.tmp / "nowhere")


# -- recipes (emomix train) ----------------------------------------------------------------------


@case("recipe-missing-file")
def _(c: Context):
    return c.cli("train", c.tmp / "nope.yaml")


@case("recipe-invalid-yaml")
def _(c: Context):
    return c.cli("train", recipe(c.tmp, "broken", text="corpus: [\n"))


@case("recipe-unknown-key")
def _(c: Context):
    return c.cli("train", recipe(c.tmp, "typo", lambda r: r["training"].update(epoch=3)), "--out", c.tmp / "run")


@case("recipe-context-typo")
def _(c: Context):
    def change(r: dict) -> None:
        r["features"]["text"]["context"] = {"turns": 2, "speaker": True}

    return c.cli("train", recipe(c.tmp, "typo", change), "--out", c.tmp / "run")


@case("recipe-negative-seed")
def _(c: Context):
    return c.cli("train", recipe(c.tmp, "seeds", lambda r: r.update(seeds=[0, -1])), "--out", c.tmp / "run")


@case("train-seeds-twice")
def _(c: Context):
    return c.cli("train", recipe(c.tmp, "seeds", lambda r: None), "--seeds", "1,1", "--out", c.tmp / "run")


@case("recipe-unknown-block")
def _(c: Context):
    return c.cli("train", recipe(c.tmp, "typo", lambda r: r.update(trainig={})), "--out", c.tmp / "run")


@case("recipe-model-config-typo")
def _(c: Context):
    return c.cli(
        "train", recipe(c.tmp, "typo", lambda r: r["model"]["config"].update(model_dimm=8)), "--out", c.tmp / "run"
    )


@case("recipe-unknown-model")
def _(c: Context):
    return c.cli(
        "train", recipe(c.tmp, "typo", lambda r: r["model"].update(name="dual_routng")), "--out", c.tmp / "run"
    )


@case("recipe-bad-value-type")
def _(c: Context):
    return c.cli("train", recipe(c.tmp, "typed", lambda r: r["training"].update(epochs="many")), "--out", c.tmp / "run")


@case("recipe-bad-value-range")
def _(c: Context):
    return c.cli("train", recipe(c.tmp, "range", lambda r: r["optimiser"].update(lr=-1)), "--out", c.tmp / "run")


@case("recipe-set-unknown-key")
def _(c: Context):
    return c.cli("train", recipe(c.tmp, "fine"), "--set", "training.epochz=3", "--out", c.tmp / "run")


def _datasets_recipe(c: Context) -> str:
    return recipe(c.tmp, "real", lambda r: r["corpus"].update(reader="emodb", root="${datasets}/emodb", generate=None))


@case("recipe-datasets-unresolved")
def _(c: Context):
    from emomix.data import paths

    c.monkeypatch.delenv("EMOMIX_DATASETS", raising=False)
    c.monkeypatch.setattr(paths, "shared_datasets_dir", lambda *a, **k: None)
    status, text = c.cli("train", _datasets_recipe(c), "--out", c.tmp / "run")
    assert not (c.tmp / "run").exists(), "a failed attempt must leave no run folder that blocks its retry"
    return status, text


@case("recipe-datasets-wrong-folder")
def _(c: Context):
    c.monkeypatch.setenv("EMOMIX_DATASETS", str(c.tmp / "no-datasets"))
    return c.cli("train", _datasets_recipe(c), "--out", c.tmp / "run")


@case("recipe-run-of-another-recipe")
def _(c: Context):
    run = c.tmp / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        Path(recipe(c.tmp, "other", lambda r: r["training"].update(epochs=99))).read_text()
    )
    (run / "folds.json").write_text("{}")
    return c.cli("train", recipe(c.tmp, "fine"), "--out", run)


# -- command line --------------------------------------------------------------------------------


@case("cli-no-arguments")
def _(c: Context):
    return c.cli()


@case("cli-version")
def _(c: Context):
    return c.cli("--version")


@case("cli-unknown-command")
def _(c: Context):
    return c.cli("bogus")


@case("cli-missing-argument")
def _(c: Context):
    return c.cli("predict")


@case("cli-unknown-option")
def _(c: Context):
    return c.cli("predict", "--bogus", "x", "y")


@case("cli-bad-option-value")
def _(c: Context):
    return c.cli("predict", c.tmp, c.tmp, "--batch-size", "many")


@case("cli-set-without-equals")
def _(c: Context):
    return c.cli("train", recipe(c.tmp, "fine"), "--set", "training.epochs")


@case("cli-bad-seeds")
def _(c: Context):
    return c.cli("train", recipe(c.tmp, "fine"), "--seeds", "x")


@case("cli-seeds-zero")
def _(c: Context):
    return c.cli("train", recipe(c.tmp, "fine"), "--seeds", "0")


@case("cli-plot-without-timeline")
def _(c: Context):
    return c.predict(write_wav(c.tmp / "a.wav"), "--plot", str(c.tmp / "t.png"))


# -- uploads (emomix serve) ----------------------------------------------------------------------


@case("upload-corrupt")
def _(c: Context):
    return c.post(CORRUPT_WAV, "broken.wav")


@case("upload-empty")
def _(c: Context):
    return c.post(b"")


@case("upload-too-big")
def _(c: Context):
    return c.post(wav_bytes(4.0))


@case("upload-wrong-content-type")
def _(c: Context):
    return c.post(wav_bytes(0.5), "notes.txt", "text/plain")


@case("upload-too-long")
def _(c: Context):
    return c.post(wav_bytes(3.0, rate=8000), "long.wav")


@case("upload-silence")
def _(c: Context):
    return c.post(wav_bytes(1.0, silent=True), "quiet.wav")


@case("upload-missing-file-field")
def _(c: Context):
    response = c.request.getfixturevalue("client").post("/predict", data={"text": "no file"})
    return response.status_code, response.json()["error"]["message"]


@case("upload-dialogue-bad-turn")
def _(c: Context):
    files = [("files", (f"t{i}.wav", wav_bytes(0.5), "audio/wav")) for i in range(3)]
    files[1] = ("files", ("broken.wav", CORRUPT_WAV, "audio/wav"))
    response = c.request.getfixturevalue("client").post("/predict/dialogue", files=files)
    return response.status_code, response.json()["error"]["message"]


@case("upload-text-too-long")
def _(c: Context):
    return c.post(wav_bytes(0.5), text="x" * 101)


@case("serve-missing-run")
def _(c: Context):
    return c.cli("serve", c.tmp / "no-run")


# -- feature stores ------------------------------------------------------------------------------


@case("store-missing")
def _(c: Context):
    return c.cli("store", "verify", c.tmp / "no-store")


@case("store-not-a-store")
def _(c: Context):
    (c.tmp / "folder").mkdir()
    return c.cli("store", "verify", c.tmp / "folder")


@case("store-corrupted-shard")
def _(c: Context):
    path = shard(store(c.tmp / "store"))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    return c.cli("store", "verify", c.tmp / "store")


@case("store-truncated-shard")
def _(c: Context):
    path = shard(store(c.tmp / "store"))
    path.write_bytes(path.read_bytes()[:-10])
    return c.cli("store", "verify", c.tmp / "store")


@case("store-truncated-index")
def _(c: Context):
    index = store(c.tmp / "store") / "index.sqlite"
    index.write_bytes(index.read_bytes()[:100])
    return c.cli("store", "verify", c.tmp / "store")


# -- run and checkpoint folders ------------------------------------------------------------------


@case("run-missing-predict")
def _(c: Context):
    return c.cli("predict", c.tmp / "no-run", write_wav(c.tmp / "a.wav"))


@case("run-missing-evaluate")
def _(c: Context):
    return c.cli("evaluate", c.tmp / "no-run")


@case("run-missing-export")
def _(c: Context):
    return c.cli("export", c.tmp / "no-run", "--onnx")


@case("run-not-a-run-folder")
def _(c: Context):
    (c.tmp / "folder").mkdir()
    return c.cli("predict", c.tmp / "folder", write_wav(c.tmp / "a.wav"))


@case("run-no-finished-fold")
def _(c: Context):
    (c.tmp / "run" / "folds" / "f1" / "seed-0").mkdir(parents=True)
    return c.cli("predict", c.tmp / "run", write_wav(c.tmp / "a.wav"))


def _copy_checkpoint(c: Context) -> Path:
    import shutil

    target = c.tmp / "run" / "folds" / "f1" / "seed-0"
    shutil.copytree(c.checkpoint, target)
    return target


@case("checkpoint-without-weights")
def _(c: Context):
    folder = _copy_checkpoint(c)
    (folder / "model.safetensors").unlink()
    return c.cli("predict", folder, write_wav(c.tmp / "a.wav"))


@case("checkpoint-damaged-weights")
def _(c: Context):
    folder = _copy_checkpoint(c)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    return c.cli("predict", folder, write_wav(c.tmp / "a.wav"))


@case("checkpoint-damaged-card")
def _(c: Context):
    folder = _copy_checkpoint(c)
    (folder / "model.json").write_text("{oops")
    return c.cli("predict", folder, write_wav(c.tmp / "a.wav"))


@case("checkpoint-other-fold")
def _(c: Context):
    return c.predict(write_wav(c.tmp / "a.wav"), "--fold", "f9")


def _run_folder(c: Context) -> Path:
    run = c.tmp / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"classes": ["angry", "happy"]}))
    return run


@case("evaluate-corrupt-predictions")
def _(c: Context):
    run = _run_folder(c)
    (run / "predictions.parquet").write_bytes(b"PAR1 not really parquet")
    return c.cli("evaluate", run)


@case("evaluate-missing-predictions")
def _(c: Context):
    return c.cli("evaluate", _run_folder(c))


@case("evaluate-not-a-run")
def _(c: Context):
    (c.tmp / "folder").mkdir()
    return c.cli("evaluate", c.tmp / "folder")


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------


def test_the_table_and_the_cases_name_the_same_rows():
    assert len(TABLE) >= 30, f"docs/bad-input.md lists {len(TABLE)} kinds of bad input"
    assert sorted(set(TABLE) - set(CASES)) == [], "rows of docs/bad-input.md without a case here"
    assert sorted(set(CASES) - set(TABLE)) == [], "cases here without a row in docs/bad-input.md"


def test_the_table_parser_reads_ids_fragments_and_statuses(tmp_path):
    doc = tmp_path / "t.md"
    doc.write_text(
        "| id | input | message | status |\n|---|---|---|---|\n"
        "| `a-b` | x | `one fragment` (then words) and `another` | 422 |\n"
        "| `c-d2` | y | `two` | 2 (usage) |\nnot a row\n"
    )
    assert read_table(doc) == {"a-b": ("one fragment", 422), "c-d2": ("two", 2)}


@pytest.mark.parametrize("row_id", sorted(TABLE))
def test_bad_input(row_id, tmp_path, request, capsys, monkeypatch):
    fragment, expected_status = TABLE[row_id]
    assert row_id in CASES, f"{row_id}: no case in tests/test_bad_input.py"
    status, text = CASES[row_id](Context(tmp_path, request, capsys, monkeypatch))
    assert status == expected_status, f"{row_id}: status {status}, the table says {expected_status}\n{text}"
    assert fragment in text, f"{row_id}: {fragment!r} not in\n{text}"
    assert "Traceback" not in text
