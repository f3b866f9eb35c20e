"""Running the service with uvicorn: in the foreground (``emomix serve``) or in a background thread
(tests, the load benchmark) on a free port."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``app`` with uvicorn until interrupted (one process: the model is loaded once)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)


class BackgroundServer:
    """A real uvicorn server in a daemon thread on a free port: ``with BackgroundServer(app) as url: ...``.

    The socket is bound before the thread starts, so the port is known and cannot be taken by
    another process in between.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", log_level: str = "warning", start_timeout: float = 30.0):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True, name="emomix-uvicorn"
        )
        self.start_timeout = start_timeout

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        """Start serving; return the base URL once the server accepts requests."""
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the uvicorn server on {self.url} did not start")
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        """Ask uvicorn to shut down and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
