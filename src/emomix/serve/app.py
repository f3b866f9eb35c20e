"""The HTTP service: a FastAPI app over a :class:`~emomix.infer.predictor.Predictor`.

Endpoints (see ``docs/serving.md``):

* ``POST /predict`` — multipart ``file`` (audio bytes), optional ``text`` and ``speaker`` (a
  text-only model takes ``text`` alone); returns the predictor's JSON (label, probabilities, aux
  routing/gate weights, …).
* ``POST /predict/batch`` — several ``files`` with optional ``texts``/``speakers`` (one per file,
  in order; ``texts`` alone for a text-only model); returns ``{"results": [...]}`` with
  ``{"error": {...}}`` in the slot of a bad item.
* ``POST /predict/dialogue`` — the turns of one conversation, in order, as ``/predict/batch``
  takes them; each turn is predicted with its context when the model reads the conversation
  (``reads_dialogue`` in ``/model``); a bad turn fails the request, since it would change every
  other turn's context.
* ``GET /health``, ``GET /model``, ``GET /`` (the web page), ``/static/*``, ``/docs`` (Swagger UI, its
  files served locally from ``/docs-assets/*``) and ``/openapi.json``.

Only uploaded bytes reach the predictor: the service never accepts a file-system path from a
client. Every limit of :class:`ServiceLimits` is checked before any model work, and every error
is answered as ``{"error": {"type", "message"}}`` with a fitting status code, after which the
service goes on serving.

Concurrency: uploads are decoded and checked in a bounded thread pool (``worker_threads``) so
the event loop stays free. ``/predict`` requests are then gathered by a
:class:`~emomix.serve.batching.DynamicBatcher` (dynamic batching): up to ``max_batch_size``
requests that arrive within ``max_wait_ms`` of each other are predicted together through the
predictor's batched path (``predict_many``) in one batch thread; a lone request goes through
``predict``. The predictor itself is only ever called under one lock, because tokenizers and
openSMILE are not safe to call from several threads at once (``/predict/batch`` takes the same
lock in the pool); within a batch, the openSMILE encoder extracts the files on its own threads,
each with its own openSMILE instances (``Predictor.set_threads``; ``emomix serve`` gives it the
torch thread count). A bad request fails alone: its slot of the batch holds its error, and a batch
the predictor cannot run at all is predicted request by request. ``asyncio.wait_for`` bounds each
request (504 on timeout; a prediction already running cannot be interrupted and finishes in its
thread, queued ones are dropped). Requests beyond ``max_pending`` waiting at once are refused
with 503. At shutdown the queued and running requests are answered before the threads stop.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, File, Form, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from emomix.audio.io import TARGET_RATE, decode_audio_bytes
from emomix.errors import AudioError, ConfigError, EmomixError
from emomix.infer.describe import aux_labels_json
from emomix.serve.batching import BatcherClosed, DynamicBatcher

log = logging.getLogger("emomix.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
DOCS_ASSETS = "/docs-assets"
"""Where Swagger UI's own files (from the ``swagger-ui-bundle`` package) are served for ``/docs``."""
MULTIPART_OVERHEAD_BYTES = 64 * 1024
"""Room for the multipart boundaries, headers and text fields on top of the audio bytes."""


# ---------------------------------------------------------------------------------------------
# Limits and errors
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceLimits:
    """What the service accepts; every field is a command-line option of ``emomix serve``."""

    max_upload_bytes: int = 20 * 1024 * 1024
    """Largest audio file (per file); a larger one, or a request body larger than the files allowed plus form
    overhead, gets 413."""
    max_duration_s: float = 60.0
    """Longest decoded audio in seconds (422)."""
    max_batch_items: int = 16
    """Most files (or texts) in one ``/predict/batch`` request, most turns in one ``/predict/dialogue`` (422)."""
    max_text_chars: int = 5000
    """Longest transcript or speaker field (422)."""
    timeout_s: float = 30.0
    """Seconds a request may take, queueing included (504); a batch gets this per item."""
    worker_threads: int = 1
    """Threads that decode uploads and run ``/predict/batch`` requests (the predictor itself is called
    under a lock)."""
    max_pending: int = 64
    """Requests waiting or running at once before new ones are refused with 503."""
    max_batch_size: int = 8
    """Most concurrent ``/predict`` requests predicted together in one batch (1: one at a time)."""
    max_wait_ms: float = 10.0
    """Milliseconds a batch waits, after its first request, for more requests to join it."""
    allowed_content_types: tuple[str, ...] = (
        "audio/*",
        "application/octet-stream",
        "video/webm",
        "video/ogg",
        "video/mp4",
    )
    """Accepted upload content types (``type/*`` matches a whole family); others get 415.

    ``video/webm``, ``video/ogg`` and ``video/mp4`` are here because browsers label WebM/Ogg/MP4
    files and some recordings with the video type although only the audio track is read."""

    def __post_init__(self) -> None:
        checks = {
            "max_upload_bytes": self.max_upload_bytes,
            "max_duration_s": self.max_duration_s,
            "max_batch_items": self.max_batch_items,
            "max_text_chars": self.max_text_chars,
            "timeout_s": self.timeout_s,
            "worker_threads": self.worker_threads,
            "max_pending": self.max_pending,
            "max_batch_size": self.max_batch_size,
        }
        for name, value in checks.items():
            if not value > 0:
                raise ConfigError(f"service limit {name} must be positive, got {value}")
        if not isinstance(self.max_batch_size, int):
            raise ConfigError(f"service limit max_batch_size must be a whole number, got {self.max_batch_size}")
        if not 0 <= self.max_wait_ms < float("inf"):
            raise ConfigError(f"service limit max_wait_ms must be 0 or more, got {self.max_wait_ms}")
        if not self.allowed_content_types:
            raise ConfigError("allowed_content_types is empty: no upload could be accepted")

    def accepts(self, content_type: str | None) -> bool:
        """True when an upload's content type (parameters ignored; none means octet-stream) is allowed."""
        kind = (content_type or "application/octet-stream").split(";", 1)[0].strip().lower()
        for allowed in self.allowed_content_types:
            allowed = allowed.lower()
            if kind == allowed or (allowed.endswith("/*") and kind.startswith(allowed[:-1])):
                return True
        return False

    def body_limit(self, items: int) -> int:
        """The largest request body accepted for a request carrying ``items`` files."""
        return items * self.max_upload_bytes + MULTIPART_OVERHEAD_BYTES


class ServiceError(Exception):
    """A request the service refuses: answered with ``status`` and ``{"error": {"type", "message"}}``."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message

    def payload(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        return {"error": {"type": self.kind, "message": self.message}}


def error_body(kind: str, message: str) -> dict[str, Any]:
    """``{"error": {"type": kind, "message": message}}``."""
    return {"error": {"type": kind, "message": message}}


UNREADABLE_AUDIO = "could not be read as audio; send a WAV, FLAC, OGG, MP3 or WebM/MP4 audio file"
INTERNAL_ERROR = "the prediction failed because of an error in the server; the details are in the server log"
# What must never reach a client: object reprs, decoder diagnostics, file-system paths, tracebacks.
_LEAK = re.compile(
    r"0x[0-9a-fA-F]{4,}|<_io\.|<[A-Za-z_.]+ object|libsndfile|ffmpeg|Traceback|/tmp/|"
    r"(?:^|[\s(:'\"])(?:/[\w.+-]+){2,}|[A-Za-z]:\\",
    re.IGNORECASE,
)
# How the predictor names an in-memory input in its messages ("<array (16000,) float32>: ...").
_INPUT_NAME = re.compile(r"<(?:array|uploaded audio)[^>]*>|input \d+")


def public_message(exc: BaseException, name: str | None = None) -> str:
    """The message a client gets for a user error: the exception's own sentence with the input
    called by its upload name, or a plain sentence when the text would leak internals."""
    text = _INPUT_NAME.sub(name or "the upload", str(exc)).strip()
    if not text or _LEAK.search(text):
        return f"{name or 'the upload'}: the recording could not be processed; check that it is speech audio and retry"
    return text


SHUTTING_DOWN = "the service is shutting down; retry in a moment"


def error_for_exception(exc: BaseException, name: str | None = None) -> ServiceError:
    """The response for an exception raised while decoding or predicting ``name`` (the upload's
    display name). The exception itself goes to the server log; the client gets one sentence."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, BatcherClosed):
        return ServiceError(503, "busy", SHUTTING_DOWN)
    if isinstance(exc, EmomixError):
        log.warning("refused %s: %s", name or "a request", exc, exc_info=exc)
        kind = "invalid_audio" if isinstance(exc, AudioError) else "invalid_input"
        return ServiceError(422, kind, public_message(exc, name))
    log.error("prediction of %s failed", name or "a request", exc_info=exc)
    return ServiceError(500, "internal_error", INTERNAL_ERROR)


# ---------------------------------------------------------------------------------------------
# The predictor the service wraps
# ---------------------------------------------------------------------------------------------


class PredictorLike(Protocol):
    """What the service needs of :class:`emomix.infer.predictor.Predictor`."""

    def info(self) -> dict[str, Any]: ...

    def predict(
        self, audio: Any = None, text: str | None = None, sample_rate: int | None = None, speaker: str | None = None
    ) -> dict[str, Any]: ...

    def predict_many(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]: ...

    def predict_dialogue(self, turns: list[dict[str, Any]]) -> list[dict[str, Any]]: ...


@dataclass
class _Upload:
    """One checked input: its audio bytes (None for a transcript alone), a display name, its
    transcript and speaker, and the decoded waveform."""

    data: bytes | None
    name: str
    text: str | None = None
    speaker: str | None = None
    wave: np.ndarray | None = field(default=None, repr=False)

    def predictor_item(self) -> dict[str, Any]:
        """The predictor's keyword arguments: the waveform decoded by the decode check (16 kHz),
        so the upload is not decoded twice; never a path. A transcript alone has no audio."""
        if self.data is None:
            return {"text": self.text, "speaker": self.speaker}
        assert self.wave is not None, "decode before predicting"
        return {"audio": self.wave, "sample_rate": TARGET_RATE, "text": self.text, "speaker": self.speaker}


def _display_name(filename: str | None) -> str:
    """The client's file name for messages and format sniffing: the last component only, short."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name.strip()
    return name[:100] or "upload"


# ---------------------------------------------------------------------------------------------
# Request body limit (before multipart parsing spools the body)
# ---------------------------------------------------------------------------------------------


class _BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when a chunked body passes the limit.

    An HTTPException, so that FastAPI's form parsing passes it on (it turns other exceptions
    into 400) and the app's handler answers 413."""

    def __init__(self, limit: int):
        super().__init__(413, _too_large_message(limit))


class BodyLimitMiddleware:
    """Refuse request bodies over a per-path limit with 413, before they are read into memory or disk.

    The ``Content-Length`` header is checked first; a chunked body is counted as it arrives and
    the request is answered with 413 as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, limits: dict[str, int], default: int):
        self.app = app
        self.limits = limits
        self.default = default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope.get("path", ""), self.default)
        declared = next((value for key, value in scope.get("headers", []) if key == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, limit)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        response = JSONResponse(error_body("payload_too_large", _too_large_message(limit)), status_code=413)
        await response({"type": "http"}, _no_receive, send)


def _too_large_message(limit: int) -> str:
    return f"the request body is larger than {_megabytes(limit)}; send a shorter or more compressed recording"


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _megabytes(count: int) -> str:
    return f"{count / (1024 * 1024):.1f} MB"


# ---------------------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------------------


class PredictionService:
    """Validation, the worker pool, the predictor lock and timeouts; the FastAPI routes call it."""

    def __init__(self, predictor: PredictorLike, limits: ServiceLimits):
        self.predictor = predictor
        self.limits = limits
        self.info = predictor.info()
        self.pool = ThreadPoolExecutor(max_workers=limits.worker_threads, thread_name_prefix="emomix-predict")
        self.lock = threading.Lock()
        self.pending = 0
        self.closing = False
        self.batcher: DynamicBatcher[_Upload] = DynamicBatcher(
            self._predict_uploads, limits.max_batch_size, limits.max_wait_ms / 1000.0
        )

    @property
    def reads_audio(self) -> bool:
        """Whether the model needs a recording (``inputs`` of ``predictor.info()``)."""
        return "audio" in (self.info.get("inputs") or ["audio"])

    def check_no_file(self, what: str) -> None:
        """A request without audio: refused (422) when the model reads audio."""
        if self.reads_audio:
            raise ServiceError(
                422, "validation_error", f"{what}: {self.model_name} reads audio; send the recording as a file"
            )

    @property
    def model_name(self) -> str:
        """The model's name from ``predictor.info()``."""
        return str(self.info.get("name") or self.info.get("model") or "unknown")

    # -- validation in the event loop (cheap: no decoding)

    def check_upload(self, data: bytes, filename: str | None, content_type: str | None) -> str:
        """Raise :class:`ServiceError` for a wrong content type, an empty or an oversize upload; return its
        display name."""
        name = _display_name(filename)
        if not self.limits.accepts(content_type):
            raise ServiceError(
                415,
                "unsupported_media_type",
                f"{name}: content type {content_type!r} is not accepted; send audio "
                f"({', '.join(self.limits.allowed_content_types)})",
            )
        if not data:
            raise ServiceError(422, "empty_file", f"{name}: the uploaded file is empty (0 bytes)")
        if len(data) > self.limits.max_upload_bytes:
            raise ServiceError(
                413,
                "payload_too_large",
                f"{name}: {_megabytes(len(data))} is larger than the limit of "
                f"{_megabytes(self.limits.max_upload_bytes)} per file",
            )
        return name

    def check_text(self, value: str | None, field_name: str) -> str | None:
        """Blank → None; over ``max_text_chars`` → 422."""
        if value is None or not value.strip():
            return None
        if len(value) > self.limits.max_text_chars:
            raise ServiceError(
                422,
                "text_too_long",
                f"{field_name} has {len(value)} characters; the limit is {self.limits.max_text_chars}",
            )
        return value.strip()

    # -- work in the pool

    def _decode(self, upload: _Upload) -> _Upload:
        """Decode (the decode check) and check the duration; keeps the waveform for the predictor
        (a transcript alone passes as it is)."""
        if upload.data is None:
            return upload
        try:
            wave = decode_audio_bytes(upload.data, name=upload.name)
        except AudioError as exc:  # the decoders' diagnostics go to the log, not to the client
            log.warning("could not decode %s (%d bytes): %s", upload.name, len(upload.data), exc, exc_info=exc)
            raise ServiceError(422, "invalid_audio", f"{upload.name} {UNREADABLE_AUDIO}") from exc
        duration = wave.size / TARGET_RATE
        if duration > self.limits.max_duration_s:
            raise ServiceError(
                422,
                "audio_too_long",
                f"{upload.name}: {duration:.1f} s of audio is longer than the limit of "
                f"{self.limits.max_duration_s:g} s; cut it into utterances",
            )
        upload.wave = wave
        return upload

    def _predict_alone(self, upload: _Upload) -> dict[str, Any] | ServiceError:
        """One decoded upload through ``predictor.predict`` (the caller holds the lock)."""
        try:
            return self.predictor.predict(**upload.predictor_item())
        except Exception as exc:  # answered with one sentence, logged in full
            return error_for_exception(exc, upload.name)

    def _predict_uploads(self, uploads: list[_Upload]) -> list[dict[str, Any] | ServiceError]:
        """A batch of decoded ``/predict`` uploads (the batcher's thread): one through ``predict``,
        several through ``predict_many``; each outcome is a prediction or that request's error."""
        with self.lock:
            if len(uploads) == 1:
                return [self._predict_alone(uploads[0])]
            try:
                results = self.predictor.predict_many([upload.predictor_item() for upload in uploads])
                if len(results) != len(uploads):
                    raise RuntimeError(f"predict_many returned {len(results)} results for {len(uploads)} items")
            except Exception as exc:  # not one item's fault: each request is answered on its own
                log.warning("a batch of %d requests failed; predicting them one by one", len(uploads), exc_info=exc)
                return [self._predict_alone(upload) for upload in uploads]
        return [_item_outcome(result, upload.name) for result, upload in zip(results, uploads)]

    def _predict_batch(self, uploads: list[_Upload | ServiceError]) -> list[dict[str, Any]]:
        results: list[dict[str, Any] | None] = [None] * len(uploads)
        ready: list[int] = []
        for index, item in enumerate(uploads):
            if isinstance(item, ServiceError):
                results[index] = item.payload()
                continue
            try:
                self._decode(item)
                ready.append(index)
            except Exception as exc:  # one bad item must not fail the batch
                results[index] = error_for_exception(exc, item.name).payload()
        if ready:
            items = [uploads[i].predictor_item() for i in ready]  # type: ignore[union-attr]
            with self.lock:
                predicted = self.predictor.predict_many(items)
            if len(predicted) != len(ready):
                raise RuntimeError(f"predict_many returned {len(predicted)} results for {len(ready)} items")
            for index, result in zip(ready, predicted):
                results[index] = _normalise_item_error(result, uploads[index].name)  # type: ignore[union-attr]
        return [r for r in results if r is not None]

    def _predict_dialogue(self, turns: list[_Upload]) -> list[dict[str, Any]]:
        """The turns of one conversation (``POST /predict/dialogue``): all decoded, then predicted
        together; the first bad turn fails the request, named by its place."""
        for index, turn in enumerate(turns):
            try:
                self._decode(turn)
            except ServiceError as exc:
                raise ServiceError(exc.status, exc.kind, f"turn {index}: {exc.message}") from exc
        with self.lock:
            try:
                results = self.predictor.predict_dialogue([turn.predictor_item() for turn in turns])
            except EmomixError as exc:  # "turn k: ..." from the predictor
                raise error_for_exception(exc) from exc
        return [_normalise_item_error(result) for result in results]

    async def run(self, work: Callable[..., Any], *args: Any, timeout: float) -> Any:
        """Run ``work(*args)`` in the pool under the pending limit and the timeout."""
        return await self.bounded(
            lambda: asyncio.get_running_loop().run_in_executor(self.pool, work, *args), timeout=timeout
        )

    async def bounded(self, start: Callable[[], Awaitable[Any]], timeout: float) -> Any:
        """Await ``start()`` under the pending limit and the timeout; any failure becomes a
        :class:`ServiceError`."""
        if self.closing:
            raise ServiceError(503, "busy", SHUTTING_DOWN)
        if self.pending >= self.limits.max_pending:
            raise ServiceError(503, "busy", f"{self.pending} requests are already waiting; retry shortly")
        self.pending += 1
        try:
            try:
                return await asyncio.wait_for(start(), timeout)
            except asyncio.TimeoutError:
                raise ServiceError(
                    504,
                    "timeout",
                    f"the prediction took longer than {timeout:g} s; send a shorter "
                    "recording or retry when the server is less busy",
                ) from None
            except Exception as exc:
                raise error_for_exception(exc) from exc
        finally:
            self.pending -= 1

    async def predict(self, upload: _Upload) -> dict[str, Any]:
        """One prediction (``POST /predict``): decoded in the pool, then predicted in a batch with
        the other requests waiting at the time (the batcher)."""

        async def decode_then_predict() -> dict[str, Any]:
            await asyncio.get_running_loop().run_in_executor(self.pool, self._decode, upload)
            result: dict[str, Any] = await self.batcher.submit(upload)
            return result

        return await self.bounded(decode_then_predict, timeout=self.limits.timeout_s)

    async def predict_batch(self, uploads: list[_Upload | ServiceError]) -> list[dict[str, Any]]:
        """Several predictions (``POST /predict/batch``); a bad item's slot holds its error."""
        return await self.run(self._predict_batch, uploads, timeout=self.limits.timeout_s * max(1, len(uploads)))

    async def predict_dialogue(self, turns: list[_Upload]) -> list[dict[str, Any]]:
        """One conversation (``POST /predict/dialogue``), in the pool like a batch."""
        return await self.run(self._predict_dialogue, turns, timeout=self.limits.timeout_s * max(1, len(turns)))

    async def drain(self) -> None:
        """Shut down: refuse new requests (503), answer the queued and running ``/predict``
        requests (waiting at most ``timeout_s``), then stop the threads."""
        self.closing = True
        await self.batcher.drain(timeout=self.limits.timeout_s)
        self.close()

    def close(self) -> None:
        """Stop the worker pool and the batch thread (running predictions finish)."""
        self.closing = True
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.batcher.executor.shutdown(wait=False, cancel_futures=True)


def _normalise_item_error(result: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """A failed item of ``predict_many`` as ``{"error": {"type", "message"}}`` whatever form it came
    in, its message cleaned like :func:`public_message` (the original goes to the log)."""
    outcome = _item_outcome(result, name)
    return outcome.payload() if isinstance(outcome, ServiceError) else outcome


def _item_outcome(result: dict[str, Any], name: str | None = None) -> dict[str, Any] | ServiceError:
    """An item of ``predict_many``: the prediction, or its error as the :class:`ServiceError`
    (422) that the same input predicted alone raises (type and message as :func:`error_for_exception`)."""
    if not isinstance(result, dict) or "error" not in result:
        return result
    error = result["error"]
    if isinstance(error, dict) and "message" in error:
        kind, message = str(error.get("type", "invalid_input")), str(error["message"])
    else:  # the predictor's form: {"error": message, "error_type": exception class name, "input": ...}
        kind = "invalid_audio" if result.get("error_type") in _audio_error_names() else "invalid_input"
        message = str(error)
    log.warning("refused %s: %s", name or "a batch item", message)
    return ServiceError(422, kind, public_message(Exception(message), name))


def _audio_error_names() -> set[str]:
    """The class names of :class:`AudioError` and its subclasses (``predict_many`` names an item's
    error by its class name; :func:`error_for_exception` tests ``isinstance``)."""
    names, todo = set(), [AudioError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


# ---------------------------------------------------------------------------------------------
# The FastAPI app
# ---------------------------------------------------------------------------------------------


def create_app(predictor: PredictorLike, limits: ServiceLimits | None = None) -> FastAPI:
    """The FastAPI app serving ``predictor`` under ``limits`` (the defaults of :class:`ServiceLimits` when None)."""
    limits = limits or ServiceLimits()
    service = PredictionService(predictor, limits)

    @asynccontextmanager
    async def lifespan(_: Any):
        yield
        await service.drain()

    app = FastAPI(
        title="emomix",
        summary="Emotion recognition from speech and its transcript",
        description=f"Serving the model **{service.model_name}**. See docs/serving.md.",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.add_middleware(
        BodyLimitMiddleware,
        default=MULTIPART_OVERHEAD_BYTES,
        limits={
            "/predict": limits.body_limit(1),
            "/predict/batch": limits.body_limit(limits.max_batch_items),
            "/predict/dialogue": limits.body_limit(limits.max_batch_items),
        },
    )

    @app.exception_handler(ServiceError)
    async def _service_error(_: Any, exc: ServiceError) -> JSONResponse:
        return JSONResponse(exc.payload(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Any, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for problem in exc.errors():
            where = ".".join(str(p) for p in problem.get("loc", ()) if p not in ("body", "query"))
            parts.append(f"{where}: {problem.get('msg', 'invalid')}" if where else str(problem.get("msg", "invalid")))
        return JSONResponse(error_body("validation_error", "; ".join(parts) or "invalid request"), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Any, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(
            error_body(kind, str(exc.detail)), status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Any, exc: Exception) -> JSONResponse:
        error = error_for_exception(exc)
        return JSONResponse(error.payload(), status_code=error.status)

    async def read_inputs(
        files: list[UploadFile] | None, texts: list[str] | None, speakers: list[str] | None
    ) -> list[_Upload | ServiceError]:
        """The checked inputs of ``/predict/batch`` and ``/predict/dialogue``: one per file, or one
        per transcript when no file is sent (a text-only model); a bad one is its error."""
        count = len(files) if files else len(texts or [])
        if count == 0:
            raise ServiceError(422, "validation_error", "send files (audio), or texts for a text-only model")
        if not files:
            service.check_no_file("no files")
        if count > limits.max_batch_items:
            raise ServiceError(
                422, "too_many_items", f"{count} items in one request; the limit is {limits.max_batch_items}"
            )
        what = "files" if files else "texts"
        for label, values in (("texts", texts), ("speakers", speakers)):
            if values is not None and len(values) != count:
                raise ServiceError(
                    422,
                    "validation_error",
                    f"{len(values)} {label} for {count} {what}; give one per {what[:-1]} (an empty value for none)",
                )
        inputs: list[_Upload | ServiceError] = []
        for index in range(count):
            try:
                text = service.check_text(texts[index] if texts else None, f"texts[{index}]")
                speaker = service.check_text(speakers[index] if speakers else None, f"speakers[{index}]")
                if files:
                    data = await files[index].read()
                    name = service.check_upload(data, files[index].filename, files[index].content_type)
                    inputs.append(_Upload(data, name, text, speaker))
                elif text is None:
                    raise ServiceError(422, "empty_text", f"texts[{index}] is empty and there is no audio")
                else:
                    inputs.append(_Upload(None, f"texts[{index}]", text, speaker))
            except ServiceError as exc:
                inputs.append(exc)
        return inputs

    @app.post("/predict", summary="Predict the emotion of one recording (and its transcript), or of a transcript")
    async def predict(
        file: UploadFile | None = File(
            None,
            description="The audio file (WAV, FLAC, OGG, MP3, WebM/Opus, M4A, …); leave it out to send a "
            "transcript alone to a text-only model.",
        ),
        text: str | None = Form(None, description="The transcript; when absent the model's own fallback applies."),
        speaker: str | None = Form(
            None, description="Speaker id, for per-speaker normalisation when the run has statistics for it."
        ),
    ) -> JSONResponse:
        transcript = service.check_text(text, "text")
        if file is None:
            if transcript is None:
                raise ServiceError(422, "validation_error", "send a file (audio), or a text for a text-only model")
            service.check_no_file("no file")
            upload = _Upload(None, "text", transcript, service.check_text(speaker, "speaker"))
        else:
            data = await file.read()
            name = service.check_upload(data, file.filename, file.content_type)
            upload = _Upload(data, name, transcript, service.check_text(speaker, "speaker"))
        return JSONResponse(await service.predict(upload))

    @app.post("/predict/batch", summary="Predict several recordings; a bad item gets an error in its slot")
    async def predict_batch(
        files: list[UploadFile] | None = File(
            None, description="The audio files, in order (leave them out to send texts alone to a text-only model)."
        ),
        texts: list[str] | None = Form(None, description="Transcripts, one per file in order (empty for none)."),
        speakers: list[str] | None = Form(None, description="Speaker ids, one per file in order (empty for none)."),
    ) -> JSONResponse:
        return JSONResponse({"results": await service.predict_batch(await read_inputs(files, texts, speakers))})

    @app.post(
        "/predict/dialogue",
        summary="Predict the turns of one conversation, in order, each with its context",
    )
    async def predict_dialogue(
        files: list[UploadFile] | None = File(
            None, description="Each turn's audio, in turn order (leave them out for a text-only model)."
        ),
        texts: list[str] | None = Form(None, description="Each turn's transcript, in order (empty for none)."),
        speakers: list[str] | None = Form(None, description="Each turn's speaker, in order (empty for none)."),
    ) -> JSONResponse:
        turns: list[_Upload] = []
        for index, item in enumerate(await read_inputs(files, texts, speakers)):
            if isinstance(item, ServiceError):  # a conversation with a hole would change every other turn
                raise ServiceError(item.status, item.kind, f"turn {index}: {item.message}")
            turns.append(item)
        return JSONResponse({"results": await service.predict_dialogue(turns)})

    @app.get("/health", summary="Liveness: the service is up and which model it serves")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": service.model_name}

    @app.get("/model", summary="The served model: classes, inputs, features, training summary, metrics")
    async def model() -> JSONResponse:
        return JSONResponse({**service.info, "limits": _limits_json(limits), "aux_labels": aux_labels_json()})

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        """Swagger UI from files served here (``/docs-assets``), so the page works offline."""
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="emomix — API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")
    return app


def _limits_json(limits: ServiceLimits) -> dict[str, Any]:
    return {
        "max_upload_bytes": limits.max_upload_bytes,
        "max_duration_s": limits.max_duration_s,
        "max_batch_items": limits.max_batch_items,
        "max_text_chars": limits.max_text_chars,
        "timeout_s": limits.timeout_s,
        "max_batch_size": limits.max_batch_size,
        "max_wait_ms": limits.max_wait_ms,
        "allowed_content_types": list(limits.allowed_content_types),
    }


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("emomix")
    except Exception:  # an uninstalled checkout
        return "0"
