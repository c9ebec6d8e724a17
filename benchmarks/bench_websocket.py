"""How fast are WebSockets through the gateway? Echo round trips per second, on loopback.

One echo backend (the ``websockets`` package's asyncio server on uvloop, its C speedups on)
answers every message; a driver process keeps ``--connections`` sockets, each sending a
32-byte message and waiting for its echo, one after another, for ``--duration`` seconds
(and at most ``--max`` round trips in all). Targets, one at a time, in alternating rounds:

* ``direct``            — the driver straight to the backend (the ceiling)
* ``nginx``             — nginx proxying the upgrade (1 worker, ``proxy_http_version 1.1``,
                          ``Upgrade``/``Connection`` set: it then tunnels the bytes)
* ``gateway granian``   — ``python -m lbmiddleware serve`` with ``LB_SERVER=granian``
* ``gateway uvicorn``   — the same with ``LB_SERVER=uvicorn``

Each row is the median over the rounds; each ratio the median of the rounds' own ratios
(the machine may be shared). nginx comes from Debian's packages (installed with apt-get
when missing, as bench_proxy.py does). Everything started is stopped at the end.

``--clients`` measures instead the upstream WebSocket clients the proxy could use, against
the same backend in this process: round trips per second over one socket and the time of a
16 MiB echo, for the project's own (``lbmiddleware.upstream.websocket``), the ``websockets``
package's client and ``wsproto`` on an asyncio protocol (when installed).

    python benchmarks/bench_websocket.py [--duration 3] [--rounds 3] [--connections 16]
    python benchmarks/bench_websocket.py --clients [--count 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench_proxy import Processes, ensure_tools, free_port, nginx_conf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MESSAGE = b"x" * 32
BIG = 16 * 1024 * 1024


# -- the processes (this file, run with --backend or --drive) ---------------------------

def run_backend(port: int) -> None:
    import uvloop
    from websockets.asyncio.server import serve

    async def echo(ws) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        async with serve(echo, "127.0.0.1", port, max_size=None, compression=None,
                         ping_interval=None):
            await asyncio.Future()

    uvloop.run(main())


def run_driver(url: str, connections: int, duration: float, limit: int) -> None:
    """Print how many round trips ``connections`` sockets made in ``duration`` seconds."""
    import uvloop
    from websockets.asyncio.client import connect

    async def main() -> None:
        sockets = [await connect(url, max_size=None, compression=None, ping_interval=None)
                   for _ in range(connections)]
        for ws in sockets:                      # warm up
            await ws.send(MESSAGE)
            await ws.recv()
        done = 0
        stop = time.perf_counter() + duration

        async def loop(ws) -> None:
            nonlocal done
            while time.perf_counter() < stop and done < limit:
                await ws.send(MESSAGE)
                await ws.recv()
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(loop(ws) for ws in sockets))
        elapsed = time.perf_counter() - started
        for ws in sockets:
            await ws.close()
        print(f"{done} {elapsed}")

    uvloop.run(main())


# -- the targets --------------------------------------------------------------------------

def start_nginx(processes: Processes, nginx: str, directory: str, backend: int) -> int:
    port = free_port()
    servers = (f"map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n"
               f"server {{ listen 127.0.0.1:{port}; location / {{ "
               f"proxy_pass http://127.0.0.1:{backend}; proxy_http_version 1.1; "
               f"proxy_set_header Upgrade $http_upgrade; "
               f"proxy_set_header Connection $connection_upgrade; "
               f"proxy_read_timeout 300s; }} }}\n")
    conf = nginx_conf(directory, "", servers)
    processes.start([nginx, "-p", directory, "-e", f"{directory}/error.log", "-c", conf], port)
    return port


def start_gateway(processes: Processes, server: str, backend: int) -> int:
    port = free_port()
    env = {"LB_BACKENDS": f"http://127.0.0.1:{backend}", "LB_LISTEN": f"127.0.0.1:{port}",
           "LB_SERVER": server, "LB_LOG_LEVEL": "warning", "PYTHONPATH": ROOT}
    processes.start([sys.executable, "-m", "lbmiddleware", "serve"], port, env)
    return port


def drive(port: int, connections: int, duration: float, limit: int) -> float:
    """Round trips per second through ``port``."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--drive",
                          f"ws://127.0.0.1:{port}/", "--connections", str(connections),
                          "--duration", str(duration), "--max", str(limit)],
                         check=True, capture_output=True, text=True, timeout=duration + 60)
    done, elapsed = out.stdout.split()
    return int(done) / float(elapsed)


def compare(args: argparse.Namespace) -> None:
    _, nginx = ensure_tools()
    processes = Processes()
    try:
        with tempfile.TemporaryDirectory() as directory:
            backend = free_port()
            processes.start([sys.executable, os.path.abspath(__file__), "--backend",
                             "--port", str(backend)], backend)
            targets = {
                "direct": backend,
                "nginx": start_nginx(processes, nginx, directory, backend),
                "gateway granian": start_gateway(processes, "granian", backend),
                "gateway uvicorn": start_gateway(processes, "uvicorn", backend),
            }
            rounds: list[dict[str, float]] = []
            for number in range(args.rounds):
                names = list(targets)
                if number % 2:
                    names.reverse()
                rounds.append({name: drive(targets[name], args.connections, args.duration,
                                           args.max) for name in names})
    finally:
        processes.stop_all()

    def ratio(name: str, base: str) -> float:
        return statistics.median(r[name] / r[base] for r in rounds)

    print(f"WebSocket echo round trips/s, {args.connections} sockets x 32 B, {args.duration} s "
          f"x {args.rounds} rounds, medians ({os.cpu_count()} CPUs)")
    print(f"{'target':18} {'round trips/s':>14} {'vs direct':>10} {'vs nginx':>9}")
    for name in rounds[0]:
        rate = statistics.median(r[name] for r in rounds)
        print(f"{name:18} {rate:14,.0f} {ratio(name, 'direct'):9.0%} {ratio(name, 'nginx'):8.0%}")


# -- the upstream clients ---------------------------------------------------------------------

async def measure_clients(count: int) -> None:
    import logging

    import websockets
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    from lbmiddleware.core.backend import Backend
    from lbmiddleware.upstream import HostPool
    from lbmiddleware.upstream.websocket import WebSocket, open_websocket

    async def echo(ws) -> None:
        async for message in ws:
            await ws.send(message)

    logging.getLogger("websockets").setLevel(logging.CRITICAL)     # wsproto's plain close
    async with serve(echo, "127.0.0.1", 0, max_size=None, compression=None,
                     ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]

        async def own():
            pool = HostPool(Backend(f"http://127.0.0.1:{port}"), connect_timeout=5,
                            read_timeout=60)
            ws = await open_websocket(pool, b"/", [])
            assert isinstance(ws, WebSocket)
            return ws.send, ws.receive, ws.close

        async def package():
            ws = await connect(f"ws://127.0.0.1:{port}/", max_size=None, compression=None,
                               ping_interval=None)
            return ws.send, ws.recv, ws.close

        clients = {"own framing (stdlib)": own,
                   f"websockets {websockets.__version__}": package}
        try:
            import wsproto
            clients[f"wsproto {wsproto.__version__}"] = _wsproto_client(port)
        except ImportError:
            pass
        print(f"upstream WebSocket clients against a websockets echo server: {count:,} "
              f"sequential 32 B round trips on one socket, then a 16 MiB message's echo")
        data = os.urandom(BIG)
        for name, make in clients.items():
            send, receive, close = await make()
            for _ in range(200):
                await send(MESSAGE)
                await receive()
            started = time.perf_counter()
            for _ in range(count):
                await send(MESSAGE)
                await receive()
            rate = count / (time.perf_counter() - started)
            times = []
            for _ in range(3):
                started = time.perf_counter()
                await send(data)
                assert len(await receive()) == BIG
                times.append(time.perf_counter() - started)
            await close()
            print(f"  {name:24} {rate:9,.0f} round trips/s   "
                  f"16 MiB echo {min(times) * 1000:5.0f} ms")


def _wsproto_client(port: int):
    """wsproto's sans-I/O connection on an asyncio protocol: what a proxy would write."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, BytesMessage, Message, Ping, Request

    class Client(asyncio.Protocol):
        def __init__(self) -> None:
            self.connection = WSConnection(ConnectionType.CLIENT)
            self.messages: asyncio.Queue[bytes] = asyncio.Queue()
            self.accepted = asyncio.get_running_loop().create_future()
            self.parts: list[bytes] = []

        def connection_made(self, transport) -> None:
            self.transport = transport
            transport.write(self.connection.send(Request(host="backend", target="/")))

        def data_received(self, data: bytes) -> None:
            self.connection.receive_data(data)
            for event in self.connection.events():
                if isinstance(event, AcceptConnection):
                    self.accepted.set_result(None)
                elif isinstance(event, Message):
                    self.parts.append(event.data)
                    if event.message_finished:
                        self.messages.put_nowait(b"".join(self.parts))
                        self.parts = []
                elif isinstance(event, Ping):
                    self.transport.write(self.connection.send(event.response()))

        async def send(self, data: bytes) -> None:
            self.transport.write(self.connection.send(BytesMessage(data=data)))

        async def close(self) -> None:
            self.transport.close()

    async def make():
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(Client, "127.0.0.1", port)
        await client.accepted
        return client.send, client.messages.get, client.close

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--max", type=int, default=2_000_000, help="round trips at most")
    parser.add_argument("--clients", action="store_true")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--backend", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend:
        run_backend(args.port)
    elif args.drive:
        run_driver(args.drive, args.connections, args.duration, args.max)
    elif args.clients:
        import uvloop
        uvloop.run(measure_clients(args.count))
    else:
        compare(args)


if __name__ == "__main__":
    main()
