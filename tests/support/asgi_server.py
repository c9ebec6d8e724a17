"""An ASGI application under a real server (uvicorn with httptools) in a thread of this
process, so a test can talk to it over a socket and still read its balancer."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


class ServerThread:
    """``app`` under uvicorn on a port the OS chooses, in a thread of this process; a
    context manager (``port`` is known once it is entered)."""

    def __init__(self, app) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, lifespan="off", access_log=False, log_level="warning",
                                loop="asyncio", http="httptools")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 5
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.server.started
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
