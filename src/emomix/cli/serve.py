"""``emomix serve``: the HTTP service and web page over a trained run.

The app is :func:`emomix.serve.app.create_app`, run by :func:`emomix.serve.server.run_server`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from emomix.errors import ConfigError


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to the ``emomix`` app."""
    app.command("serve")(serve)


def serve(
    run: Path = typer.Argument(
        ..., help="A run folder (emomix train's --out) or a checkpoint folder folds/<fold>/seed-<k>."
    ),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(8000, help="TCP port."),
    fold: str | None = typer.Option(
        None, help="Serve this fold's model (default: the checkpoint with the best validation score)."
    ),
    seed: int | None = typer.Option(None, help="Serve this seed's model (default: the best one)."),
    max_upload_mb: float = typer.Option(20.0, help="Largest audio upload per file, in MB (413 above)."),
    max_duration_s: float = typer.Option(60.0, help="Longest audio in seconds (422 above)."),
    max_batch_items: int = typer.Option(
        16, help="Most files (or texts) in one /predict/batch request, most turns in one /predict/dialogue request."
    ),
    timeout_s: float = typer.Option(30.0, help="Seconds a prediction may take, queueing included (504 after)."),
    threads: int = typer.Option(
        1,
        "--threads",
        help="Threads decoding uploads and running /predict/batch requests (the model runs one batch at a time).",
    ),
    max_batch_size: int = typer.Option(
        8,
        help="Dynamic batching: most concurrent /predict requests predicted together in one batch "
        "(1: one request at a time, no batching).",
    ),
    max_wait_ms: float = typer.Option(
        10.0,
        help="Dynamic batching: milliseconds a batch waits, after its first request, for more to join "
        "(0: only requests already waiting).",
    ),
    workers_threads: int | None = typer.Option(
        None, "--workers-threads", hidden=True, help="The old spelling of --threads."
    ),
    torch_threads: int | None = typer.Option(
        None,
        help="Threads one prediction batch computes on: torch's intra-op threads and openSMILE's "
        "extraction of the batch's files (default: torch's choice, usually the number of cores).",
    ),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Serve a trained model over HTTP: POST /predict, /predict/batch, GET /health, /model, the web page at /."""
    from emomix.infer.predictor import Predictor
    from emomix.serve.app import ServiceLimits, create_app
    from emomix.serve.server import run_server

    if workers_threads is not None:
        threads = workers_threads
    if max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {port}")
    if max_batch_size < 1:
        raise ConfigError(f"--max-batch-size must be at least 1, got {max_batch_size}")
    if not 0 <= max_wait_ms < float("inf"):
        raise ConfigError(f"--max-wait-ms must be 0 or more, got {max_wait_ms}")
    limits = ServiceLimits(
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_duration_s=max_duration_s,
        max_batch_items=max_batch_items,
        timeout_s=timeout_s,
        worker_threads=threads,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
    )
    import torch

    if torch_threads is not None:
        if torch_threads < 1:
            raise ConfigError(f"--torch-threads must be at least 1, got {torch_threads}")
        torch.set_num_threads(torch_threads)
    predictor = Predictor.from_run(run, fold=fold, seed=seed)
    predictor.set_threads(torch.get_num_threads())  # openSMILE extracts a batch's files in parallel
    info = predictor.info()
    typer.echo(
        f"serving {info.get('name')} ({', '.join(info.get('classes') or [])}) from {run} on http://{host}:{port}/"
    )
    run_server(create_app(predictor, limits), host=host, port=port, log_level=log_level)
