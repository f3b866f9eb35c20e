"""The HTTP service: limits, error answers and concurrency of the FastAPI app.

Two layers: the HTTP layer alone against a small stand-in predictor (limits, status codes, error
bodies, timeouts, back-pressure), and the acceptance tests against the real
:class:`~emomix.infer.predictor.Predictor` of a trained synthetic run (``trained_synthetic_run``).
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from emomix.errors import AudioError, ConfigError
from emomix.serve.app import STATIC_DIR, ServiceLimits, create_app
from emomix.serve.server import BackgroundServer

RATE = 16000
CLASSES = ["angry", "happy", "neutral", "sad"]


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def wav_bytes(seconds: float = 1.0, rate: int = RATE, frequency: float = 220.0) -> bytes:
    """A 16-bit WAV of a tone as an in-memory file."""
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def webm_opus_bytes(wave: np.ndarray, rate: int = RATE) -> bytes:
    """``wave`` encoded as WebM/Opus, what a browser's MediaRecorder uploads."""
    import av

    from emomix.audio.io import resample

    wave = resample(wave.astype(np.float32), rate, 48000)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="webm") as container:
        stream = container.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        for start in range(0, wave.size, 960):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(wave[None, start : start + 960]), format="flt", layout="mono"
            )
            frame.rate = 48000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


CORRUPT = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4


# ---------------------------------------------------------------------------------------------
# The HTTP layer with a stand-in predictor
# ---------------------------------------------------------------------------------------------


class StandInPredictor:
    """Has the Predictor's methods; probabilities follow the audio's duration so results differ.

    ``text="slow"`` sleeps, ``text="boom"`` raises a ConfigError, ``text="crash"`` a RuntimeError.
    Records what it was given, to check that only decoded waveforms (never paths) arrive.
    """

    def __init__(self, sleep_s: float = 0.5):
        self.sleep_s = sleep_s
        self.seen: list[tuple[type, int | None]] = []
        self.active = 0
        self.max_active = 0
        self.batches: list[int] = []  # the size of every predict_many call
        self._count_lock = threading.Lock()
        self.threads: int | None = None  # what set_threads was given

    def set_threads(self, threads: int) -> None:
        self.threads = threads

    def info(self) -> dict:
        return {"name": "stand_in", "classes": CLASSES, "inputs": ["audio", "text"]}

    def predict(self, audio=None, text=None, sample_rate=None, speaker=None) -> dict:
        with self._count_lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self.seen.append((type(audio), sample_rate))
            if not isinstance(audio, np.ndarray):
                raise AssertionError(f"the service passed {type(audio).__name__}, not a decoded waveform")
            if text == "slow":
                time.sleep(self.sleep_s)
            if text == "boom":
                raise ConfigError("the transcript is not usable; give another")
            if text == "crash":
                raise RuntimeError("secret internal detail")
            if float(np.abs(audio).max()) == 0.0:
                raise AudioError("the audio is silent; there is no speech to recognise an emotion from")
            duration = audio.size / sample_rate
            logits = np.array([duration, 1.0, 0.5, 0.0])
            probs = np.exp(logits) / np.exp(logits).sum()
            return {
                "label": CLASSES[int(np.argmax(probs))],
                "probabilities": dict(zip(CLASSES, probs.tolist())),
                "aux": {"route_audio": [0.25, 0.75], "gate_weights": [0.2, 0.3, 0.5]},
                "modalities": ["audio", "text"],
                "transcript": text,
                "transcript_source": "given" if text else None,
                "duration_s": duration,
                "notes": [],
            }
        finally:
            with self._count_lock:
                self.active -= 1

    def predict_many(self, items: list[dict]) -> list[dict]:
        self.batches.append(len(items))
        out = []
        for item in items:
            try:
                out.append(self.predict(**item))
            except (AudioError, ConfigError) as exc:
                out.append({"error": str(exc), "error_type": type(exc).__name__, "input": {}})
        return out


def client_for(predictor=None, **limits) -> TestClient:
    return TestClient(
        create_app(predictor or StandInPredictor(), ServiceLimits(**limits)), raise_server_exceptions=False
    )


@pytest.fixture(scope="module")
def client():
    with client_for(max_upload_bytes=100_000, max_duration_s=3.0, max_batch_items=4) as test_client:
        yield test_client


def post_audio(client, data: bytes, filename: str = "clip.wav", content_type: str = "audio/wav", **form):
    return client.post("/predict", files={"file": (filename, data, content_type)}, data=form)


def assert_error(response, status: int, kind: str, *words: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["type"] == kind, body
    message = body["error"]["message"]
    for word in words:
        assert word in message, message
    return message


def test_predict_returns_the_predictors_json(client):
    response = post_audio(client, wav_bytes(2.0), text="what a day", speaker="s1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] == "angry" and body["transcript"] == "what a day"
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-9
    assert body["duration_s"] == pytest.approx(2.0)
    assert body["aux"]["route_audio"] == [0.25, 0.75]


def test_health_model_page_and_openapi(client):
    assert client.get("/health").json() == {"status": "ok", "model": "stand_in"}
    model = client.get("/model").json()
    assert model["classes"] == CLASSES and model["limits"]["max_upload_bytes"] == 100_000
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="predict-form"' in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/style.css").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/predict/batch", "/health", "/model"} <= set(paths)


def test_the_page_loads_nothing_from_other_hosts():
    import re

    files = sorted(STATIC_DIR.iterdir())
    assert {"index.html", "app.js", "style.css"} <= {p.name for p in files}
    for path in files:
        hosts = re.findall(r"(?:https?:)?//[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+", path.read_text())
        assert not hosts, f"{path.name} refers to other hosts: {hosts}"
    assert re.search(r"(?:https?:)?//[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+", '<script src="https://cdn.example.org/x.js">')


def test_bad_uploads_get_clear_errors_and_the_service_keeps_serving(client):
    assert_error(post_audio(client, CORRUPT), 422, "invalid_audio", "clip.wav", "could not be read as audio")
    assert_error(post_audio(client, b""), 422, "empty_file", "empty")
    assert_error(post_audio(client, wav_bytes(4.0) + b"\0" * 10), 413, "payload_too_large", "MB")
    assert_error(
        post_audio(client, wav_bytes(1.0), "notes.txt", "text/plain"), 415, "unsupported_media_type", "text/plain"
    )
    assert_error(post_audio(client, wav_bytes(3.5, rate=8000), "long.wav"), 422, "audio_too_long", "3.5 s", "3 s")
    assert_error(post_audio(client, wav_bytes(1.0), text="x" * 5001), 422, "text_too_long", "5000")
    assert_error(post_audio(client, wav_bytes(1.0), text="boom"), 422, "invalid_input", "transcript is not usable")
    assert_error(post_audio(client, np.zeros(10, np.int16).tobytes()), 422, "invalid_audio")
    message = assert_error(post_audio(client, wav_bytes(1.0), text="crash"), 500, "internal_error", "server log")
    assert "secret" not in message and "RuntimeError" not in message, "internal exception text must not leak to clients"
    assert_error(client.post("/predict", data={"text": "no file"}), 422, "validation_error", "file")
    assert_error(client.get("/nowhere"), 404, "not_found")
    assert_error(client.get("/predict"), 405, "method_not_allowed")
    assert post_audio(client, wav_bytes(1.0), text="still here").status_code == 200


LEAKS = ("libsndfile", "FFmpeg", "ffmpeg", "BytesIO", "0x", "Traceback", "/tmp/", "<array", "Error:")


def assert_one_clean_sentence(message: str) -> None:
    """A client message: one sentence, no decoder diagnostics, object reprs, paths or class names."""
    for leak in LEAKS:
        assert leak not in message, f"{leak!r} leaks into {message!r}"
    assert message.count(". ") == 0 and message.count("; ") <= 1, message


def test_no_error_answer_leaks_internals_and_the_details_reach_the_log(caplog):
    """Every error path of the service (413, 415, 422 empty/corrupt/duration/silence/text, 503,
    504, 500) answers one clean sentence; decoder and predictor details go to the server log."""
    import logging

    predictor = StandInPredictor(sleep_s=0.4)
    caplog.set_level(logging.WARNING, logger="emomix.serve")
    with (
        client_for(predictor, max_upload_bytes=100_000, max_duration_s=3.0, timeout_s=0.2) as quick,
        client_for(predictor, max_upload_bytes=100_000, max_duration_s=3.0, timeout_s=30) as test_client,
    ):
        answers = {
            "corrupt": post_audio(test_client, CORRUPT, "broken.wav"),
            "raw bytes": post_audio(test_client, np.zeros(10, np.int16).tobytes()),
            "mp3 name": post_audio(test_client, b"ID3" + bytes(range(200)), "song.mp3", "audio/mpeg"),
            "empty": post_audio(test_client, b""),
            "too long": post_audio(test_client, wav_bytes(3.5, rate=8000)),
            "too large": post_audio(test_client, wav_bytes(4.0) + b"\0" * 10),
            "content type": post_audio(test_client, wav_bytes(1.0), "notes.txt", "text/plain"),
            "silence": post_audio(test_client, sf_silence()),
            "internal": post_audio(test_client, wav_bytes(1.0), text="crash"),
            "timeout": post_audio(quick, wav_bytes(1.0), text="slow"),
        }
        time.sleep(0.5)  # let the timed-out prediction finish
        batch = test_client.post(
            "/predict/batch",
            files=[("files", ("b.wav", CORRUPT, "audio/wav")), ("files", ("quiet.wav", sf_silence(), "audio/wav"))],
        ).json()["results"]
    statuses = {name: response.status_code for name, response in answers.items()}
    assert statuses == {
        "corrupt": 422,
        "raw bytes": 422,
        "mp3 name": 422,
        "empty": 422,
        "too long": 422,
        "too large": 413,
        "content type": 415,
        "silence": 422,
        "internal": 500,
        "timeout": 504,
    }
    for response in answers.values():
        assert_one_clean_sentence(response.json()["error"]["message"])
    for item in batch:
        assert_one_clean_sentence(item["error"]["message"])
    corrupt = answers["corrupt"].json()["error"]["message"]
    assert corrupt == "broken.wav could not be read as audio; send a WAV, FLAC, OGG, MP3 or WebM/MP4 audio file"
    assert batch[0]["error"]["message"].startswith("b.wav could not be read as audio")
    assert "silent" in answers["silence"].json()["error"]["message"]
    logged = "\n".join(
        record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "") for record in caplog.records
    )
    assert "broken.wav" in logged and "libsndfile" in logged, "the decoder's details belong in the server log"
    assert "secret internal detail" in logged
    assert all(r.levelno >= logging.WARNING for r in caplog.records if "broken.wav" in r.getMessage())


def test_the_503_answer_is_one_clean_sentence():
    predictor = StandInPredictor(sleep_s=0.2)
    app = create_app(predictor, ServiceLimits(max_pending=1))

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await asyncio.gather(
                *[
                    client.post(
                        "/predict", files={"file": ("a.wav", wav_bytes(0.5), "audio/wav")}, data={"text": "slow"}
                    )
                    for _ in range(3)
                ]
            )

    busy = [r for r in asyncio.run(burst()) if r.status_code == 503]
    assert busy
    for response in busy:
        assert response.json()["error"]["type"] == "busy"
        assert_one_clean_sentence(response.json()["error"]["message"])


def test_public_message_keeps_user_sentences_and_hides_internals():
    from emomix.serve.app import public_message

    silent = AudioError(
        "<array (16000,) float32>: the audio is silent; there is no speech to recognise an emotion from"
    )
    assert (
        public_message(silent, "a.wav") == "a.wav: the audio is silent; there is no speech to recognise an emotion from"
    )
    leaky = AudioError("<_io.BytesIO object at 0x7f3a2b1c>: Error opening: Format not recognised (libsndfile)")
    assert "could not be processed" in public_message(leaky, "a.wav") and "0x7f" not in public_message(leaky, "a.wav")
    assert "/tmp" not in public_message(ConfigError("failed on /tmp/emomix-predict-x/item-000000.wav"), "a.wav")


def test_swagger_ui_at_docs_loads_only_local_files(client):
    import re

    page = client.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text.lower()
    urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", page.text)
    assert urls, page.text
    assert not [u for u in urls if re.match(r"(?:[a-z]+:)?//", u)], f"/docs loads files from other hosts: {urls}"
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        assert len(response.content) > 100, url
    assert {"/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css", "/openapi.json"} <= set(urls)


def test_model_info_carries_the_aux_labels_and_hidden_wins_in_the_style_sheet(client):
    import re

    labels = client.get("/model").json()["aux_labels"]
    assert labels["labels"]["route_audio"] == "audio routing: local / global"
    assert labels["labels"]["vad_fallback"] == "no speech found: whole clip used"
    assert "vad_fallback" in labels["flags"] and "route_audio" not in labels["flags"]
    css = (STATIC_DIR / "style.css").read_text()
    assert re.search(r"\[hidden\]\s*\{\s*display:\s*none\s*!important", css), (
        "the style sheet must not override `hidden`"
    )


def test_a_path_is_never_accepted_in_place_of_an_upload():
    predictor = StandInPredictor()
    with client_for(predictor) as test_client:
        response = test_client.post("/predict", data={"file": str(Path(__file__).resolve()), "text": "hi"})
        assert_error(response, 422, "validation_error", "file")
        assert post_audio(test_client, wav_bytes(1.0), "../../etc/passwd.wav").status_code == 200
    assert predictor.seen == [(np.ndarray, RATE)]


def test_browser_content_types_and_webm_opus_uploads_are_decoded(client):
    t = np.arange(RATE) / RATE
    webm = webm_opus_bytes((0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32))
    for name, kind in [("recording.webm", "audio/webm;codecs=opus"), ("recording.webm", "video/webm"), ("blob", None)]:
        files = {"file": (name, webm, kind)} if kind else {"file": (name, webm)}
        response = client.post("/predict", files=files)
        assert response.status_code == 200, response.text
        assert response.json()["duration_s"] == pytest.approx(1.0, abs=0.03)


def test_body_limit_applies_before_parsing_even_without_content_length():
    with client_for(max_upload_bytes=10_000) as test_client:
        request = httpx.Request("POST", "http://x/predict", files={"file": ("a.wav", wav_bytes(2.0), "audio/wav")})
        body, headers = request.read(), {"content-type": request.headers["content-type"]}
        assert_error(test_client.post("/predict", content=body, headers=headers), 413, "payload_too_large")

        def chunks():
            for start in range(0, len(body), 4096):
                yield body[start : start + 4096]

        response = test_client.post("/predict", content=chunks(), headers=headers)
        assert "content-length" not in response.request.headers
        assert_error(response, 413, "payload_too_large", "MB")
        assert post_audio(test_client, wav_bytes(0.2)).status_code == 200


def test_batch_gives_each_bad_item_its_own_error(client):
    files = [
        ("files", ("a.wav", wav_bytes(1.0), "audio/wav")),
        ("files", ("b.wav", CORRUPT, "audio/wav")),
        ("files", ("c.txt", wav_bytes(1.0), "text/plain")),
        ("files", ("d.wav", wav_bytes(2.0), "audio/wav")),
    ]
    response = client.post("/predict/batch", files=files, data={"texts": ["one", "", "three", "boom"]})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 4
    assert results[0]["label"] in CLASSES and results[0]["transcript"] == "one"
    assert results[1]["error"]["type"] == "invalid_audio" and "b.wav" in results[1]["error"]["message"]
    assert results[2]["error"]["type"] == "unsupported_media_type"
    assert results[3]["error"] == {"type": "invalid_input", "message": "the transcript is not usable; give another"}
    assert_error(
        client.post("/predict/batch", files=files, data={"texts": ["one"]}),
        422,
        "validation_error",
        "1 texts for 4 files",
    )
    assert_error(client.post("/predict/batch", files=files + files[:1]), 422, "too_many_items", "limit is 4")


def test_a_slow_prediction_times_out_with_504_and_the_next_one_is_served():
    predictor = StandInPredictor(sleep_s=0.6)
    with client_for(predictor, timeout_s=0.15) as test_client:
        started = time.perf_counter()
        assert_error(post_audio(test_client, wav_bytes(1.0), text="slow"), 504, "timeout", "0.15 s")
        assert time.perf_counter() - started < 0.5
        # the timed-out prediction cannot be interrupted: it holds the worker until it finishes
        deadline = time.monotonic() + 5
        while predictor.active and time.monotonic() < deadline:
            time.sleep(0.02)
        assert post_audio(test_client, wav_bytes(1.0), text="fine").status_code == 200


def test_requests_beyond_max_pending_get_503_and_inference_is_serialised():
    predictor = StandInPredictor(sleep_s=0.2)
    app = create_app(predictor, ServiceLimits(max_pending=2, worker_threads=4))

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            requests = [
                client.post("/predict", files={"file": ("a.wav", wav_bytes(0.5), "audio/wav")}, data={"text": "slow"})
                for _ in range(5)
            ]
            return await asyncio.gather(*requests)

    statuses = sorted(r.status_code for r in asyncio.run(burst()))
    assert statuses == [200, 200, 503, 503, 503]
    assert predictor.max_active == 1, "the predictor must never run two requests at once"


def test_limits_are_validated():
    with pytest.raises(ConfigError, match="max_upload_bytes must be positive"):
        ServiceLimits(max_upload_bytes=0)
    limits = ServiceLimits()
    assert limits.accepts("audio/x-wav") and limits.accepts("AUDIO/OGG; codecs=opus") and limits.accepts(None)
    assert (
        limits.accepts("application/octet-stream")
        and not limits.accepts("image/png")
        and not limits.accepts("text/plain")
    )


def test_concurrent_requests_on_a_real_server_all_succeed():
    predictor = StandInPredictor()
    clip = wav_bytes(0.5)
    with (
        BackgroundServer(create_app(predictor, ServiceLimits(worker_threads=2))) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):

        def one(index: int) -> int:
            response = http.post(
                "/predict", files={"file": (f"{index}.wav", clip, "audio/wav")}, data={"text": f"t{index}"}
            )
            return response.status_code if response.json().get("transcript") == f"t{index}" else -1

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(one, range(48)))
    assert statuses == [200] * 48
    assert predictor.max_active == 1


# ---------------------------------------------------------------------------------------------
# Dynamic batching with the stand-in predictor
# ---------------------------------------------------------------------------------------------


async def post_all(app, requests: list[dict]) -> list[httpx.Response]:
    """Post every request (``file``: (name, bytes), optional ``text``) to ``/predict`` at once."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
        return list(
            await asyncio.gather(
                *[
                    client.post(
                        "/predict",
                        files={"file": (*r["file"], "audio/wav")},
                        data={"text": r["text"]} if r.get("text") else {},
                    )
                    for r in requests
                ]
            )
        )


def answer(response: httpx.Response) -> tuple[int, dict]:
    return response.status_code, response.json()


def test_concurrent_requests_are_batched_and_each_answer_equals_the_request_answered_alone():
    """8 different requests at once go through predict_many together; a corrupt file, silent
    audio, a refused transcript and a predictor crash in the batch fail only their own request,
    with the status and message they get alone; the others are predicted."""
    requests = [
        {"file": ("a.wav", wav_bytes(0.5)), "text": "one"},
        {"file": ("b.wav", wav_bytes(1.5))},
        {"file": ("broken.wav", CORRUPT), "text": "two"},
        {"file": ("c.wav", wav_bytes(2.5, frequency=330.0)), "text": "boom"},
        {"file": ("quiet.wav", sf_silence())},
        {"file": ("d.wav", wav_bytes(1.0)), "text": "three"},
        {"file": ("e.wav", wav_bytes(2.0)), "text": "crash"},
        {"file": ("f.wav", wav_bytes(3.0))},
    ]
    alone_predictor = StandInPredictor()
    alone_app = create_app(alone_predictor, ServiceLimits(max_batch_size=1))
    alone = [answer(asyncio.run(post_all(alone_app, [r]))[0]) for r in requests]
    assert not alone_predictor.batches, "max_batch_size=1 predicts every request alone, through predict"
    assert [status for status, _ in alone] == [200, 200, 422, 422, 422, 200, 500, 200]

    predictor = StandInPredictor()
    app = create_app(predictor, ServiceLimits(max_batch_size=8, max_wait_ms=500))
    together = [answer(r) for r in asyncio.run(post_all(app, requests))]
    assert together == alone
    sizes = app.state.service.batcher.batch_sizes
    assert max(sizes) > 1 and sum(size * count for size, count in sizes.items()) == 7, sizes  # all but the corrupt
    assert max(predictor.batches) > 1, "the batch went through predict_many"
    assert predictor.max_active == 1, "the predictor never runs two requests at once"
    for status, body in together:
        if status != 200:
            assert_one_clean_sentence(body["error"]["message"])


def test_batches_are_capped_at_max_batch_size_and_every_request_is_answered():
    predictor = StandInPredictor()
    app = create_app(predictor, ServiceLimits(max_batch_size=3, max_wait_ms=300))
    requests = [{"file": (f"{i}.wav", wav_bytes(0.25 * (i + 1))), "text": f"t{i}"} for i in range(7)]
    answers = asyncio.run(post_all(app, requests))
    assert [r.status_code for r in answers] == [200] * 7
    assert [r.json()["transcript"] for r in answers] == [f"t{i}" for i in range(7)]
    assert [r.json()["duration_s"] for r in answers] == pytest.approx([0.25 * (i + 1) for i in range(7)])
    sizes = app.state.service.batcher.batch_sizes
    assert max(sizes) <= 3 and sum(size * count for size, count in sizes.items()) == 7, sizes


def test_batching_limits_are_validated():
    with pytest.raises(ConfigError, match="max_batch_size must be positive"):
        ServiceLimits(max_batch_size=0)
    with pytest.raises(ConfigError, match="max_wait_ms must be 0 or more"):
        ServiceLimits(max_wait_ms=-1)
    with pytest.raises(ConfigError, match="max_batch_size must be a whole number"):
        ServiceLimits(max_batch_size=2.5)  # type: ignore[arg-type]
    assert ServiceLimits(max_wait_ms=0).max_wait_ms == 0


def test_queued_requests_that_time_out_are_dropped_and_the_next_one_is_served():
    """One at a time (max batch 1): the running prediction finishes in its thread, the requests
    queued behind it time out with 504 and never reach the predictor. (On a cold, loaded machine
    even the first request may time out before its prediction starts: then none is predicted.
    Were timed-out requests not dropped, all three would be predicted in turn.)"""
    predictor = StandInPredictor(sleep_s=1.2)
    app = create_app(predictor, ServiceLimits(max_batch_size=1, timeout_s=0.6))
    slow = [{"file": (f"{i}.wav", wav_bytes(0.5)), "text": "slow"} for i in range(3)]
    answers = asyncio.run(post_all(app, slow))
    for response in answers:
        assert_error(response, 504, "timeout", "0.6 s")
    deadline = time.monotonic() + 5
    while predictor.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(predictor.seen) <= 1, "queued requests that timed out must be dropped, not predicted"
    fine = asyncio.run(post_all(app, [{"file": ("ok.wav", wav_bytes(0.5)), "text": "fine"}]))[0]
    assert fine.status_code == 200 and fine.json()["transcript"] == "fine"
    assert app.state.service.batcher.batch_sizes == {1: len(predictor.seen)}  # the fine request counts too


def test_shutdown_answers_the_queued_requests_then_refuses_new_ones():
    predictor = StandInPredictor(sleep_s=0.2)
    app = create_app(predictor, ServiceLimits(max_batch_size=2, max_wait_ms=0))
    service = app.state.service

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:

            def post(text: str):
                return client.post(
                    "/predict", files={"file": ("a.wav", wav_bytes(0.5), "audio/wav")}, data={"text": text}
                )

            in_flight = [asyncio.create_task(post("slow")) for _ in range(5)]
            deadline = time.monotonic() + 10
            while service.batcher.queued + service.batcher.running < 5 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert service.batcher.queued >= 3, "some requests are still queued when the shutdown begins"
            await service.drain()
            answered = await asyncio.gather(*in_flight)
            return answered, await post("late")

    answered, late = asyncio.run(scenario())
    assert [r.status_code for r in answered] == [200] * 5
    assert_one_clean_sentence(assert_error(late, 503, "busy", "shutting down"))
    sizes = service.batcher.batch_sizes
    assert sum(size * count for size, count in sizes.items()) == 5 and max(sizes) <= 2 and service.batcher.queued == 0


# ---------------------------------------------------------------------------------------------
# Acceptance: the real Predictor of a trained synthetic run
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_predictor(synthetic_predictor, one_thread):
    """The shared predictor of the trained synthetic run (conftest), used on one torch thread."""
    return synthetic_predictor


@pytest.fixture(scope="module")
def real_clips(trained_synthetic_run, synthetic_features):
    """Four test utterances of the run's corpus: (file bytes, transcript, speaker, path)."""
    table = synthetic_features.table.sort_values("utt_id").head(4)
    return [
        (
            (synthetic_features.root / row.audio_path).read_bytes(),
            row.text,
            row.speaker,
            synthetic_features.root / row.audio_path,
        )
        for row in table.itertuples()
    ]


@pytest.fixture(scope="module")
def real_client(real_predictor):
    with TestClient(create_app(real_predictor, ServiceLimits(max_upload_bytes=2_000_000))) as test_client:
        yield test_client


def test_real_model_predicts_an_upload_like_the_predictor_on_the_file(real_client, real_predictor, real_clips):
    data, text, speaker, path = real_clips[0]
    response = real_client.post(
        "/predict", files={"file": (path.name, data, "audio/wav")}, data={"text": text, "speaker": speaker}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    classes = real_predictor.info()["classes"]
    assert body["label"] in classes and list(body["probabilities"]) == classes
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-5
    assert body["transcript"] == text and body["transcript_source"] == "given"
    assert set(body["aux"]) >= {"route_audio", "route_text"} and abs(sum(body["aux"]["route_audio"]) - 1) < 1e-5
    direct = real_predictor.predict(audio=str(path), text=text, speaker=speaker)
    assert body["label"] == direct["label"]
    for name in classes:
        assert body["probabilities"][name] == pytest.approx(direct["probabilities"][name], abs=1e-4)


def test_real_model_batch_health_and_model(real_client, real_predictor, real_clips, trained_synthetic_run):
    import json

    files = [("files", (p.name, d, "audio/wav")) for d, _, _, p in real_clips[:2]] + [
        ("files", ("bad.wav", CORRUPT, "audio/wav"))
    ]
    texts = [t for _, t, _, _ in real_clips[:2]] + ["x"]
    response = real_client.post("/predict/batch", files=files, data={"texts": texts})
    assert response.status_code == 200, response.text
    first, second, bad = response.json()["results"]
    classes = json.loads((trained_synthetic_run / "run.json").read_text())["classes"]
    assert first["label"] in classes and second["label"] in classes and first["transcript"] == texts[0]
    assert bad["error"]["type"] == "invalid_audio" and "bad.wav" in bad["error"]["message"]
    assert real_client.get("/health").json() == {"status": "ok", "model": "dual_routing"}
    model = real_client.get("/model").json()
    assert model["name"] == "dual_routing" and model["classes"] == classes and set(model["inputs"]) == {"audio", "text"}
    # trained on the synthetic corpus: every prediction and the model description say so
    from emomix.infer.describe import SYNTHETIC_NOTE

    assert SYNTHETIC_NOTE in first["notes"] and SYNTHETIC_NOTE in second["notes"]
    assert model["warnings"] == [SYNTHETIC_NOTE]


def test_real_model_refuses_bad_uploads_then_still_predicts(real_client, real_clips):
    data, text, _, path = real_clips[1]
    assert_error(post_audio(real_client, CORRUPT, text=text), 422, "invalid_audio")
    assert_error(post_audio(real_client, b"", text=text), 422, "empty_file")
    assert_error(post_audio(real_client, b"\0" * 2_100_000, text=text), 413, "payload_too_large")
    assert_error(post_audio(real_client, data, "x.png", "image/png", text=text), 415, "unsupported_media_type")
    assert_error(post_audio(real_client, sf_silence(), text=text), 422, "invalid_audio", "silent")
    response = post_audio(real_client, data, path.name, text=text)
    assert response.status_code == 200 and response.json()["transcript"] == text


def sf_silence(seconds: float = 1.0) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * RATE), np.float32), RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_real_model_reads_a_browser_recording(real_client, real_clips):
    data, text, _, _ = real_clips[2]
    wave, rate = sf.read(io.BytesIO(data), dtype="float32")
    response = real_client.post(
        "/predict",
        files={"file": ("recording.webm", webm_opus_bytes(wave, rate), "audio/webm;codecs=opus")},
        data={"text": text},
    )
    assert response.status_code == 200, response.text
    assert response.json()["duration_s"] == pytest.approx(wave.size / rate, abs=0.05)


@pytest.mark.parametrize(
    "count", [8, pytest.param(40, marks=pytest.mark.e2e), pytest.param(200, marks=pytest.mark.e2e)]
)
def test_real_model_batches_concurrent_requests_and_answers_each_as_alone(real_predictor, real_clips, count):
    """8 different requests at a time on a real server, predicted in batches (``predict_many``):
    every answer equals the answer to the same request made alone (``predict``), field for field,
    probabilities and routing weights to float tolerance; a silent clip and a corrupt file in a
    batch fail alone with their usual answer. 8 requests in the fast suite; 40 and 200 with
    ``-m e2e``, and ``bench/serve_load.py``."""
    kinds = [(data, text, speaker, path.name) for data, text, speaker, path in real_clips]  # 4 clips
    kinds += [(data, text, None, f"nospeaker-{path.name}") for data, text, _, path in real_clips[:2]]
    kinds += [(sf_silence(), real_clips[0][1], None, "quiet.wav"), (CORRUPT, real_clips[1][1], None, "broken.wav")]
    app = create_app(real_predictor, ServiceLimits(worker_threads=2, timeout_s=120, max_batch_size=8, max_wait_ms=50))
    batcher = app.state.service.batcher
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=120) as http:

        def one(index: int) -> tuple[int, int, dict]:
            data, text, speaker, name = kinds[index % len(kinds)]
            form = {"text": text, **({"speaker": speaker} if speaker else {})}
            response = http.post("/predict", files={"file": (name, data, "audio/wav")}, data=form)
            return index % len(kinds), response.status_code, response.json()

        alone = {kind: (status, body) for kind, status, body in map(one, range(len(kinds)))}
        assert set(batcher.batch_sizes) == {1}, "requests sent one at a time are predicted alone"
        assert [alone[k][0] for k in range(len(kinds))] == [200] * 6 + [422, 422], alone
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, range(count)))
    assert max(batcher.batch_sizes) > 1, f"no request was batched: {batcher.batch_sizes}"
    for kind, status, body in answers:
        expected_status, expected = alone[kind]
        assert status == expected_status, body
        if status != 200:
            assert body == expected
            continue
        assert set(body) == set(expected)
        for key in body.keys() - {"probabilities", "aux"}:
            assert body[key] == expected[key], key
        assert list(body["probabilities"]) == list(expected["probabilities"])
        assert body["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
        assert set(body["aux"]) == set(expected["aux"])
        for name, value in body["aux"].items():
            assert value == pytest.approx(expected["aux"][name], abs=1e-5), name


# ---------------------------------------------------------------------------------------------
# emomix serve
# ---------------------------------------------------------------------------------------------


def serve_cli():
    import typer

    from emomix.cli.serve import register

    app = typer.Typer()
    register(app)

    @app.callback()
    def main() -> None:  # a group, so the command is called by name as in `emomix serve`
        pass

    return app


def test_serve_command_builds_the_limits_and_runs_uvicorn(monkeypatch, tmp_path):
    import torch
    from typer.testing import CliRunner

    import emomix.infer.predictor as predictor_module
    import emomix.serve.server as server_module

    calls = {}

    def from_run(cls, path, fold=None, seed=None, device="cpu"):
        calls["run"] = (path, fold, seed)
        calls["predictor"] = StandInPredictor()
        return calls["predictor"]

    monkeypatch.setattr(predictor_module.Predictor, "from_run", classmethod(from_run))
    monkeypatch.setattr(
        server_module, "run_server", lambda app, host, port, log_level: calls.update(app=app, host=host, port=port)
    )
    result = CliRunner().invoke(
        serve_cli(),
        [
            "serve",
            str(tmp_path),
            "--port",
            "8123",
            "--fold",
            "ses02",
            "--seed",
            "1",
            "--max-upload-mb",
            "2",
            "--max-duration-s",
            "12",
            "--timeout-s",
            "5",
            "--workers-threads",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert calls["run"] == (tmp_path, "ses02", 1) and calls["port"] == 8123 and calls["host"] == "127.0.0.1"
    assert "serving stand_in" in result.output
    assert calls["predictor"].threads == torch.get_num_threads(), "openSMILE gets the torch thread count"
    limits = calls["app"].state.service.limits
    assert (limits.max_upload_bytes, limits.max_duration_s, limits.timeout_s, limits.worker_threads) == (
        2 * 1024 * 1024,
        12.0,
        5.0,
        3,
    )
    refused = CliRunner().invoke(serve_cli(), ["serve", str(tmp_path), "--max-upload-mb", "0"])
    assert isinstance(refused.exception, ConfigError) and "--max-upload-mb" in str(refused.exception)
    assert (limits.max_batch_size, limits.max_wait_ms) == (8, 10.0), "batching is on by default"
    batching = CliRunner().invoke(serve_cli(), ["serve", str(tmp_path), "--max-batch-size", "1", "--max-wait-ms", "0"])
    assert batching.exit_code == 0, batching.output
    limits = calls["app"].state.service.limits
    assert (limits.max_batch_size, limits.max_wait_ms) == (1, 0.0)
    for option, value in (("--max-batch-size", "0"), ("--max-wait-ms", "-5")):
        refused = CliRunner().invoke(serve_cli(), ["serve", str(tmp_path), option, value])
        assert isinstance(refused.exception, ConfigError) and option in str(refused.exception)


def test_model_descriptions_cite_papers_not_local_paths():
    """The model card, /model and `emomix models` show each model's paper: a citation a reader can
    look up (title, venue), never a path into the developers' shared folder."""
    from emomix.models import list_models

    papers = {name: info.paper for name, info in list_models().items()}
    for name, paper in papers.items():
        assert "shared/" not in paper and ".txt" not in paper, f"{name} cites a local file: {paper}"
    assert "Electronics" in papers["dual_routing"] and "2025" in papers["dual_routing"]
    assert "Multi-Path Feature Fusion" in papers["mpaf_net"]


def test_model_card_markdown_warns_about_synthetic_training_and_says_not_exported_plainly():
    from emomix.infer.card import card_markdown
    from emomix.infer.describe import SYNTHETIC_NOTE, training_data_notes

    assert training_data_notes({"corpus": "synthetic"}, None) == [SYNTHETIC_NOTE]
    assert training_data_notes({"corpus": "emodb"}, None) == []
    card = {
        "name": "dual_routing",
        "classes": CLASSES,
        "inputs": ["audio", "text"],
        "warnings": [SYNTHETIC_NOTE],
        "metrics": {"status": "not evaluated", "reason": "no report"},
        "export": {
            "encoders": {
                "audio": {"encoder": "opensmile", "exported": False, "reason": "not requested (add --encoders)"},
                "text": {"encoder": "minilm", "exported": False, "reason": "openSMILE is a C++ library"},
            }
        },
    }
    markdown = card_markdown(card)
    assert "trained on the synthetic corpus" in markdown.split("## Features")[0]
    assert "not exported (not requested" not in markdown and "((" not in markdown and "))" not in markdown
    assert "`opensmile`: not exported (export it with --encoders)" in markdown
    assert "`minilm`: not exported: openSMILE is a C++ library" in markdown


def test_loading_the_text_encoder_draws_no_progress_bar(capfd):
    """transformers' "Loading weights" bar would show on every `emomix predict` and `emomix serve`."""
    import transformers.utils.logging as transformers_logging

    from emomix.encoders.text import TextEncoder

    transformers_logging.enable_progress_bar()
    TextEncoder()
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.err + captured.out
