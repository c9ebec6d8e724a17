"""How fast is the gateway? Requests/second and p99 through each proxy, with wrk, on loopback.

Two nginx backends serve a short body; wrk drives, one target at a time, with the same
connections and duration:

* ``direct``            — wrk straight to one backend (the ceiling)
* ``nginx proxy``       — nginx as the equivalent round-robin reverse proxy (1 worker,
                          keep-alive upstream)
* ``aiohttp pass-through`` — the usual Python way: an ASGI app forwarding with
                          ``aiohttp.ClientSession``, in the same uvicorn (the peer baseline)
* ``lbmiddleware gateway`` — ``python -m lbmiddleware serve`` as installed (``LB_SERVER``
                          auto: granian if installed, else uvicorn + httptools + uvloop)

and, to choose the gateway's parts by measurement (``--no-choices`` skips them):

* ``gateway on uvicorn`` — the same command with ``LB_SERVER=uvicorn``
* ``lbmiddleware + httpx`` / ``lbmiddleware + aiohttp`` — the middleware under uvicorn
  with httpx's or aiohttp's client in place of its own (``lbmiddleware.upstream``)

Every target gets one worker. Rounds alternate the targets; each row shows the median
over the rounds, and each ratio is the median of the rounds' own ratios against the
aiohttp pass-through and nginx measured in the same round (the machine may be shared). wrk
and nginx come from Debian packages: the script installs them with apt-get when they are
missing.
Everything it starts is stopped at the end.

    python benchmarks/bench_proxy.py [--duration 4] [--rounds 3] [--connections 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BODY = "hello from the backend\n"
HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
       "upgrade", "host", "content-length"}


# -- tools -----------------------------------------------------------------------------------

def ensure_tools() -> tuple[str, str]:
    """Paths of wrk and nginx, installing the Debian packages if needed."""
    def find() -> tuple[str | None, str | None]:
        return (shutil.which("wrk"),
                shutil.which("nginx")
                or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None))

    wrk, nginx = find()
    if wrk and nginx:
        return wrk, nginx
    print("installing wrk and nginx with apt-get ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    packages = [p for p, have in (("wrk", wrk), ("nginx-light", nginx)) if not have]
    result = subprocess.run(["apt-get", "install", "-y", "-qq", *packages], env=env,
                            stdout=subprocess.DEVNULL)
    if result.returncode != 0 and "nginx-light" in packages:
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    wrk, nginx = find()
    if not (wrk and nginx):
        sys.exit("wrk and nginx are needed (apt-get install wrk nginx-light)")
    return wrk, nginx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


class Processes:
    """Every process the benchmark starts, stopped (TERM, then KILL) at the end."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen] = []

    def start(self, args: list[str], port: int, env: dict | None = None) -> subprocess.Popen:
        process = subprocess.Popen(args, env={**os.environ, **(env or {})},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   start_new_session=True)
        self.running.append(process)
        try:
            wait_port(port, process)
        except RuntimeError as exc:
            self.stop(process)
            raise RuntimeError(
                f"{args[0]} did not start: {process.stderr.read().decode()[-2000:]}") from exc
        return process

    def stop(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process in self.running:
            self.running.remove(process)

    def stop_all(self) -> None:
        for process in list(reversed(self.running)):
            self.stop(process)


# -- nginx ---------------------------------------------------------------------------------

def nginx_conf(directory: str, body: str, servers: str) -> str:
    path = os.path.join(directory, f"nginx-{len(os.listdir(directory))}.conf")
    with open(path, "w") as file:
        file.write(textwrap.dedent(f"""\
            worker_processes 1;
            daemon off;
            pid {directory}/nginx-{os.path.basename(path)}.pid;
            error_log {directory}/error.log warn;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                client_body_temp_path {directory}/body;
                proxy_temp_path {directory}/proxy;
                fastcgi_temp_path {directory}/fastcgi;
                uwsgi_temp_path {directory}/uwsgi;
                scgi_temp_path {directory}/scgi;
                keepalive_requests 1000000;
            """) + textwrap.indent(servers, "    ") + "}\n")
    return path


def start_backends(processes: Processes, nginx: str, directory: str) -> list[int]:
    ports = [free_port(), free_port()]
    servers = "".join(
        f"server {{ listen 127.0.0.1:{port}; location / {{ default_type text/plain; "
        f"return 200 '{BODY.strip()}\\n'; }} }}\n" for port in ports)
    conf = nginx_conf(directory, BODY, servers)
    processes.start([nginx, "-p", directory, "-e", f"{directory}/error.log", "-c", conf], ports[-1])
    wait_port(ports[0], processes.running[-1])
    return ports


def start_nginx_proxy(processes: Processes, nginx: str, directory: str, backends: list[int]) -> int:
    port = free_port()
    upstream = "".join(f"server 127.0.0.1:{p};" for p in backends)
    servers = (f"upstream pool {{ {upstream} keepalive 128; }}\n"
               f"server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://pool; "
               f"proxy_http_version 1.1; proxy_set_header Connection \"\"; "
               f"proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }}\n")
    conf = nginx_conf(directory, BODY, servers)
    processes.start([nginx, "-p", directory, "-e", f"{directory}/error.log", "-c", conf], port)
    return port


# -- the Python servers (this file, run with --serve) -----------------------------------

def start_python(processes: Processes, kind: str, backends: list[int]) -> int:
    port = free_port()
    urls = ",".join(f"http://127.0.0.1:{p}" for p in backends)
    env = {"LB_BACKENDS": urls, "LB_LISTEN": f"127.0.0.1:{port}", "PYTHONPATH": ROOT}
    if kind in ("gateway", "gateway-uvicorn", "gateway-granian"):
        args = [sys.executable, "-m", "lbmiddleware", "serve"]
        env["LB_SERVER"] = {"gateway": "auto", "gateway-uvicorn": "uvicorn",
                            "gateway-granian": "granian"}[kind]
    else:
        args = [sys.executable, os.path.abspath(__file__), "--serve", kind, "--port", str(port)]
    processes.start(args, port, env)
    return port


def serve(kind: str, port: int) -> None:
    """Run one of the Python targets under uvicorn (httptools + uvloop), like the gateway."""
    import uvicorn

    backends = os.environ["LB_BACKENDS"].split(",")
    if kind == "aiohttp-passthrough":
        app = AiohttpPassThrough(backends)
    else:
        from lbmiddleware.asgi import LoadBalancerMiddleware
        upstream = {"httpx": HttpxUpstream, "aiohttp": AiohttpUpstream}[kind]()
        app = LoadBalancerMiddleware(None, backends=backends, upstream=upstream)
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", lifespan="on",
                server_header=False, date_header=False)


class AiohttpPassThrough:
    """The peer baseline: a plain round-robin pass-through proxy on aiohttp's client."""

    def __init__(self, backends: list[str]) -> None:
        self.backends = backends
        self.turn = 0
        self.session = None

    async def __call__(self, scope, receive, send) -> None:
        import aiohttp

        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.session = aiohttp.ClientSession(auto_decompress=False)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await self.session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.turn += 1
        url = self.backends[self.turn % len(self.backends)] + scope["raw_path"].decode()
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode()
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k.decode() not in HOP]
        async with self.session.request(scope["method"], url, headers=headers, data=body or None,
                                        allow_redirects=False) as response:
            await send({"type": "http.response.start", "status": response.status,
                        "headers": [(k.lower().encode(), v.encode())
                                    for k, v in response.headers.items() if k.lower() not in HOP]})
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})


# Adapters that put httpx's or aiohttp's client behind the interface the middleware uses
# (Upstream.pool(backend).request(...) -> a response with status/headers/take/read/close).

class _BufferedResponse:
    """A response read whole (short bodies) or streamed through ``chunks``."""

    def __init__(self, status, headers, body: bytes | None, chunks=None, closer=None) -> None:
        self.status, self.headers = status, headers
        self._body, self._chunks, self._closer = body, chunks, closer
        self.complete = body is not None

    def take(self) -> bytes:
        body, self._body = self._body or b"", b""
        return body

    async def read(self) -> bytes:
        if self._chunks is None:
            return b""
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return b""

    def close(self) -> None:
        if self._closer is not None:
            result = self._closer()
            if asyncio.iscoroutine(result):
                asyncio.ensure_future(result)


class _AdapterPool:
    def __init__(self, upstream, backend) -> None:
        self.upstream, self.backend = upstream, backend
        self.base_path = backend.path.encode()
        self.origin = f"{backend.scheme}://{backend.netloc}"

    async def request(self, method, target, headers, body=None, length=0, **options):
        from lbmiddleware.upstream import ConnectError, ProtocolError
        try:
            return await self.upstream.send(self.origin + target.decode(), method.decode(),
                                            [(k.decode(), v.decode()) for k, v in headers], body)
        except self.upstream.connect_errors as exc:
            raise ConnectError(str(exc)) from None
        except self.upstream.errors as exc:
            raise ProtocolError(str(exc)) from None


class HttpxUpstream:
    def __init__(self) -> None:
        import httpx
        self.client = httpx.AsyncClient(limits=httpx.Limits(max_connections=None,
                                                            max_keepalive_connections=128),
                                        timeout=60.0)
        self.connect_errors, self.errors = httpx.ConnectError, httpx.HTTPError
        self.pools: dict = {}

    def pool(self, backend):
        return self.pools.setdefault(backend.url, _AdapterPool(self, backend))

    async def send(self, url, method, headers, body):
        request = self.client.build_request(method, url, headers=headers,
                                            content=body if body else None)
        response = await self.client.send(request, stream=True)
        raw = [(k, v) for k, v in response.headers.raw]
        if int(response.headers.get("content-length", -1)) in range(0, 65536):
            data = await response.aread()
            await response.aclose()
            return _BufferedResponse(response.status_code, raw, data)
        return _BufferedResponse(response.status_code, raw, None, response.aiter_raw(),
                                 response.aclose)

    def close(self) -> None:
        pass


class AiohttpUpstream(HttpxUpstream):
    def __init__(self) -> None:
        import aiohttp
        self.session = None
        self.connect_errors, self.errors = aiohttp.ClientConnectorError, aiohttp.ClientError
        self.pools = {}

    async def send(self, url, method, headers, body):
        import aiohttp
        if self.session is None:
            self.session = aiohttp.ClientSession(
                auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding"),
                connector=aiohttp.TCPConnector(limit=0))
        response = await self.session.request(method, url, headers=headers, data=body or None,
                                              allow_redirects=False)
        raw = list(response.raw_headers)
        if response.content_length is not None and response.content_length < 65536:
            data = await response.read()
            response.release()
            return _BufferedResponse(response.status, raw, data)
        return _BufferedResponse(response.status, raw, None, response.content.iter_any(),
                                 response.release)


# -- measuring -----------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def run_wrk(wrk: str, port: int, duration: float, connections: int) -> dict:
    """One wrk run: requests/second, p50 and p99 (ms), errors."""
    result = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
         "--timeout", "5s", f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
        timeout=duration + 30)
    out = result.stdout

    def latency(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(rps.group(1)) if rps else 0.0, "p50": latency("50"),
            "p99": latency("99"), "errors": errors + (int(non2xx.group(1)) if non2xx else 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement [4]")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every target [3]")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections [64]")
    parser.add_argument("--no-choices", action="store_true",
                        help="skip the uvicorn / httpx / aiohttp-client variants")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return

    wrk, nginx = ensure_tools()
    processes = Processes()
    directory = tempfile.mkdtemp(prefix="bench_proxy_")
    try:
        backends = start_backends(processes, nginx, directory)
        # the baseline next to ours, so that each round's ratio compares neighbours in time
        targets = {
            "direct (one backend)": backends[0],
            "nginx proxy": start_nginx_proxy(processes, nginx, directory, backends),
            "lbmiddleware gateway": start_python(processes, "gateway", backends),
            "aiohttp pass-through": start_python(processes, "aiohttp-passthrough", backends),
        }
        if not args.no_choices:
            targets["gateway on uvicorn"] = start_python(processes, "gateway-uvicorn", backends)
            targets["lbmiddleware + aiohttp"] = start_python(processes, "aiohttp", backends)
            targets["lbmiddleware + httpx"] = start_python(processes, "httpx", backends)
        for port in targets.values():
            run_wrk(wrk, port, 1.0, args.connections)              # warm-up
        rounds: list[dict[str, dict]] = []
        for number in range(args.rounds):
            results = {}
            for name, port in targets.items():
                results[name] = result = run_wrk(wrk, port, args.duration, args.connections)
                print(f"round {number + 1}  {name:<24} {result['rps']:>9.0f} req/s  "
                      f"p99 {result['p99']:6.2f} ms  errors {result['errors']}", flush=True)
            rounds.append(results)
        report(rounds, args)
    finally:
        processes.stop_all()
        shutil.rmtree(directory, ignore_errors=True)


def report(rounds: list[dict[str, dict]], args) -> None:
    """Medians over the rounds; ratios are the median of each round's own ratio."""
    median = statistics.median

    def ratio(name: str, other: str, key: str = "rps") -> float:
        return median(r[name][key] / r[other][key] for r in rounds)

    from lbmiddleware.gateway import choose_server
    from lbmiddleware.gateway_settings import GatewaySettings
    server = choose_server(GatewaySettings())
    print(f"\n{args.connections} connections, {args.duration:g} s x {len(rounds)} rounds, "
          f"medians; one worker per proxy; 2 nginx backends ({os.cpu_count()} CPUs); "
          f"lbmiddleware gateway = python -m lbmiddleware serve on {server}\n")
    print(f"{'target':<24} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
          f"{'vs aiohttp':>10} {'vs nginx':>8} {'p99/nginx':>9}")
    for name in rounds[0]:
        rps = median(r[name]["rps"] for r in rounds)
        p50 = median(r[name]["p50"] for r in rounds)
        p99 = median(r[name]["p99"] for r in rounds)
        errors = sum(r[name]["errors"] for r in rounds)
        print(f"{name:<24} {rps:>9.0f} {p50:>7.2f} {p99:>7.2f} {errors:>6} "
              f"{ratio(name, 'aiohttp pass-through'):>9.2f}x {ratio(name, 'nginx proxy'):>7.0%} "
              f"{ratio(name, 'nginx proxy', 'p99'):>8.2f}x")
    ours, vs_nginx = ratio("lbmiddleware gateway", "aiohttp pass-through"), \
        ratio("lbmiddleware gateway", "nginx proxy")
    p99 = ratio("lbmiddleware gateway", "nginx proxy", "p99")
    print(f"\ntarget   >= 2x the aiohttp pass-through: {ours:.2f}x "
          f"({'met' if ours >= 2 else 'MISSED'})")
    print(f"moonshot >= 50% of nginx with p99 <= 2x nginx's: {vs_nginx:.0%}, p99 {p99:.2f}x "
          f"({'met' if vs_nginx >= 0.5 and p99 <= 2 else 'missed'})")


if __name__ == "__main__":
    main()
