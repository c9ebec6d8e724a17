"""An ASGI application under a real server (uvicorn with httptools) in a thread of this
process, so a test can talk to it over a socket and still read its balancer."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn


class ServerThread:
    """``app`` under uvicorn on a port the OS chooses, in a thread of this process; a
    context manager (``port`` is known once it is entered). ``options``: more
    ``uvicorn.Config`` options (or other values for its defaults here); ``backlog``: the
    listening socket's (the OS default when None); ``start_timeout``: seconds to wait for the
    server to start."""

    def __init__(self, app, *, backlog: int | None = None, start_timeout: float = 5,
                 **options: Any) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=backlog)
        self.port = self.sock.getsockname()[1]
        self.start_timeout = start_timeout
        config = uvicorn.Config(app, **{"lifespan": "off", "access_log": False,
                                        "log_level": "warning", "loop": "asyncio",
                                        "http": "httptools", **options})
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def start(self):
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.server.started
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
