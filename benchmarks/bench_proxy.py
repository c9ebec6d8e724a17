"""How fast is the gateway? Requests/second, p99 and CPU per request through each proxy, with
wrk, on loopback, against nginx measured in the same round (issue 15).

Two nginx backends (one worker each) serve a 5-byte body (``/``), 16 KB (``/16k``) and
1 MB (``/1m``). Each contender is a round-robin reverse proxy over the two, keeping its
upstream connections alive:

* ``nginx``      nginx, 1 worker (the baseline: every ratio is to it)
* ``haproxy``    HAProxy, 1 thread (``http-reuse always``)
* ``fast``       ``python -m lbmiddleware serve`` with ``LB_SERVER=fast`` (the default)
* ``granian``    the same with ``LB_SERVER=granian``: the ASGI path
* ``uvicorn``    the same with ``LB_SERVER=uvicorn``: the ASGI path
* ``reference``  ``proxy_layers/reference.py``: an asyncio ``Protocol`` proxy on uvloop +
                 httptools that forwards bytes only, the floor a Python proxy can reach
* ``aiohttp``    ``proxy_layers/aiohttp_passthrough.py``: the usual Python way (an ASGI app
                 forwarding with aiohttp's client, under uvicorn)

``--no-choices`` leaves out the gateway's other servers and the aiohttp pass-through
(granian, uvicorn, aiohttp): nginx, HAProxy, the fast path and the reference remain.
``--layers`` adds the reference with one more layer, the project's Balancer (a ``pick`` and a
``report`` per request): ``reference-locked`` through the pool's methods (its lock),
``reference-lane`` through the owner's lock-free lane, as the fast path calls it.

Placement: the proxy on CPU 0 (``taskset -c 0``, its children and threads with it), wrk
(``-t1``) and the backends on CPU 1, so the proxy has one core to itself and the client
side another. Rounds alternate the contenders (each round starts one further along the
list); for each contender and body size a round measures requests/second and p99 (wrk
``--latency``), and the proxy's CPU time per request: utime + stime of every process in
its session (``/proc/PID/stat``, children and threads included), over the measured window,
divided by the requests wrk counted. A table shows, per body size, the median over the
rounds of each round's own ratio to nginx (min-max beside it), since the machine may be
shared: each round's ratio compares neighbours in time. "CPU 0 other" is how busy the
proxy's core was outside the proxy (other programs, interrupts): the noise in that window.
On a shared machine that share varies from window to window and so does each proxy's
rate; its CPU per request varies much less, and "CPU ÷ nginx" (the rounds' own ratios of
CPU µs per request) is the steadier comparison of what each proxy costs.

``--workers 2`` (the default; 1 skips it) then runs the fast path with ``LB_WORKERS=2``
against nginx with 2 workers, on fresh backends, nothing pinned: on a 2-CPU machine no
placement gives each worker a core of its own with the client and backends elsewhere, and
pinning the two workers to both CPUs while wrk and the backends stay on one would slow the
worker that shares it and not the other. Unpinned, the scheduler spreads both setups the
same way, so their ratio holds; on dedicated cores, expect more.

wrk, nginx and HAProxy come from Debian packages: the script installs them with apt-get
when they are missing. Every load is bounded in time (``--duration``) and count
(``--rounds``); everything started is stopped at the end (process groups).

    python benchmarks/bench_proxy.py [--duration 4] [--rounds 3] [--connections 64]
        [--workers 2] [--sizes 5,16k,1m] [--contenders nginx,fast,...] [--no-choices]
        [--layers] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
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
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import IO, Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = os.path.join(ROOT, "benchmarks", "proxy_layers")
sys.path.insert(0, ROOT)

BODY = "hello"
#: the body sizes: (label, path on the backends, bytes)
SIZES = {"5": ("5 B", "/", len(BODY)), "16k": ("16 KB", "/16k", 16 * 1024),
         "1m": ("1 MB", "/1m", 1024 * 1024)}
PROXY_CPUS = "0"            # the proxy's core
CLIENT_CPUS = "1"           # wrk's and the backends'
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- tools -----------------------------------------------------------------------------------

def _apt_install(packages: list[str]) -> None:
    print(f"installing {' '.join(packages)} with apt-get ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL,
                   timeout=600)
    result = subprocess.run(["apt-get", "install", "-y", "-qq", *packages], env=env,
                            stdout=subprocess.DEVNULL, timeout=600)
    if result.returncode != 0 and "nginx-light" in packages:
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx"], check=True, env=env,
                       stdout=subprocess.DEVNULL, timeout=600)


def _which(command: str) -> str | None:
    return shutil.which(command) or next(
        (path for path in (f"/usr/sbin/{command}",) if os.path.exists(path)), None)


def ensure_tools() -> tuple[str, str]:
    """Paths of wrk and nginx, installing the Debian packages if needed."""
    wrk, nginx = _which("wrk"), _which("nginx")
    if not (wrk and nginx):
        _apt_install([p for p, have in (("wrk", wrk), ("nginx-light", nginx)) if not have])
        wrk, nginx = _which("wrk"), _which("nginx")
    if not (wrk and nginx):
        sys.exit("wrk and nginx are needed (apt-get install wrk nginx-light)")
    return wrk, nginx


def ensure_haproxy() -> str | None:
    """Path of haproxy, installing the Debian package if needed (None: not installable)."""
    if _which("haproxy") is None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            _apt_install(["haproxy"])
    return _which("haproxy")


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
    """Every process the benchmark starts, each in its own session (so its process group,
    children included, is stopped: TERM, then KILL) and stopped at the end. Their stderr
    goes to an unnamed file (a pipe nobody reads would stall a process that logs)."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen] = []
        self.logs: dict[int, IO[bytes]] = {}

    def start(self, args: list[str], port: int, env: dict | None = None,
              cpus: str | None = None) -> subprocess.Popen:
        """Start ``args`` (on ``cpus``, e.g. ``"0"``, when given) and wait for ``port``."""
        if cpus is not None:
            args = ["taskset", "-c", cpus, *args]
        log = tempfile.TemporaryFile()
        process = subprocess.Popen(args, env={**os.environ, **(env or {})},
                                   stdout=subprocess.DEVNULL, stderr=log,
                                   start_new_session=True)
        self.running.append(process)
        self.logs[process.pid] = log
        try:
            wait_port(port, process)
        except RuntimeError as exc:
            said = self.log(process)[-2000:]
            self.stop(process)
            raise RuntimeError(f"{' '.join(args[:4])} did not start: {exc}\n{said}") from None
        return process

    def log(self, process: subprocess.Popen) -> str:
        """What ``process`` wrote on stderr."""
        log = self.logs.get(process.pid)
        if log is None or log.closed:
            return ""
        log.seek(0)
        return log.read().decode(errors="replace")

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
        # the workers of a multi-process server, should they outlive their parent
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        if process in self.running:
            self.running.remove(process)
        log = self.logs.pop(process.pid, None)
        if log is not None:
            log.close()

    def stop_all(self) -> None:
        for process in list(reversed(self.running)):
            self.stop(process)


# -- the servers ---------------------------------------------------------------------------

def nginx_conf(directory: str, body: str, servers: str, workers: int = 1) -> str:
    path = os.path.join(directory, f"nginx-{len(os.listdir(directory))}.conf")
    with open(path, "w") as file:
        file.write(textwrap.dedent(f"""\
            worker_processes {workers};
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


def start_nginx(processes: Processes, nginx: str, directory: str, servers: str, port: int,
                workers: int = 1, cpus: str | None = None) -> subprocess.Popen:
    conf = nginx_conf(directory, BODY, servers, workers)
    return processes.start([nginx, "-p", directory, "-e", f"{directory}/error.log", "-c", conf],
                           port, cpus=cpus)


def start_backends(processes: Processes, nginx: str, directory: str,
                   cpus: str | None = None) -> list[int]:
    """Two nginx backends (one process and worker each): ``/`` the 5-byte body, ``/16k`` and
    ``/1m`` files (sendfile, their descriptors cached)."""
    files = os.path.join(directory, "www")
    if not os.path.isdir(files):
        os.mkdir(files)
        for _, path, size in SIZES.values():
            if path != "/":
                with open(files + path, "wb") as file:
                    file.write(os.urandom(size))
    ports = [free_port(), free_port()]
    for port in ports:
        start_nginx(processes, nginx, directory,
                    f"server {{ listen 127.0.0.1:{port}; sendfile on; open_file_cache max=16; "
                    f"location = / {{ default_type text/plain; return 200 '{BODY}'; }} "
                    f"location / {{ root {files}; }} }}\n", port, cpus=cpus)
    return ports


def start_nginx_proxy(processes: Processes, nginx: str, directory: str, backends: list[int],
                      workers: int = 1, cpus: str | None = None) -> tuple[int, subprocess.Popen]:
    """nginx as the round-robin proxy, upstream keep-alive, X-Forwarded-For added. Its
    response buffers are 16 KB (HAProxy's ``tune.bufsize``) instead of one page, and held in
    memory only (``proxy_max_temp_file_size 0``): by default nginx writes most of a 1 MB body
    to a temporary file, which no other contender does, and spends twice the CPU per 1 MB
    request that it spends with these (measured on this machine: about 1,000 us against 400
    to 600); 5-byte and 16 KB bodies cost the same either way."""
    port = free_port()
    upstream = "".join(f"server 127.0.0.1:{p};" for p in backends)
    servers = (f"upstream pool {{ {upstream} keepalive 128; }}\n"
               f"server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://pool; "
               f"proxy_http_version 1.1; proxy_set_header Connection \"\"; "
               f"proxy_buffer_size 16k; proxy_buffers 8 16k; proxy_busy_buffers_size 32k; "
               f"proxy_max_temp_file_size 0; "
               f"proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }}\n")
    return port, start_nginx(processes, nginx, directory, servers, port, workers, cpus)


def start_haproxy(processes: Processes, haproxy: str, directory: str, backends: list[int],
                  cpus: str | None = None) -> tuple[int, subprocess.Popen]:
    """HAProxy (1 thread) as the round-robin proxy, idle upstream connections shared by every
    client (``http-reuse always``, as nginx's ``keepalive`` pool), X-Forwarded-For added."""
    port = free_port()
    path = os.path.join(directory, f"haproxy-{port}.cfg")
    servers = "".join(f"    server b{i} 127.0.0.1:{p}\n" for i, p in enumerate(backends))
    with open(path, "w") as file:
        file.write(textwrap.dedent(f"""\
            global
                nbthread 1
                maxconn 4096
            defaults
                mode http
                timeout connect 5s
                timeout client 30s
                timeout server 30s
                option http-keep-alive
                http-reuse always
            frontend front
                bind 127.0.0.1:{port}
                default_backend pool
            backend pool
                balance roundrobin
                option forwardfor
            """) + servers)
    return port, processes.start([haproxy, "-db", "-f", path], port, cpus=cpus)


def start_gateway(processes: Processes, server: str, backends: list[int], workers: int = 1,
                  cpus: str | None = None) -> tuple[int, subprocess.Popen]:
    """``python -m lbmiddleware serve`` on ``server`` (``LB_SERVER``) with ``workers``."""
    port = free_port()
    env = {"LB_BACKENDS": ",".join(f"http://127.0.0.1:{p}" for p in backends),
           "LB_LISTEN": f"127.0.0.1:{port}", "LB_SERVER": server, "LB_WORKERS": str(workers),
           "PYTHONPATH": ROOT}
    return port, processes.start([sys.executable, "-m", "lbmiddleware", "serve"], port, env,
                                 cpus=cpus)


def start_layer(processes: Processes, program: str, backends: list[str],
                cpus: str | None = None, *options: str) -> tuple[int, subprocess.Popen]:
    """One of ``proxy_layers/``'s programs."""
    port = free_port()
    args = [sys.executable, os.path.join(LAYERS, program), "--listen", f"127.0.0.1:{port}",
            *options]
    for backend in backends:
        args += ["--backend", backend]
    return port, processes.start(args, port, {"PYTHONPATH": ROOT}, cpus=cpus)


@dataclass
class Contender:
    key: str                  # its name in --contenders and in the JSON
    label: str                # its row's name
    start: Callable[[list[int]], tuple[int, subprocess.Popen]]   # backends -> port, process
    choice: bool = False      # left out by --no-choices
    layer: bool = False       # only with --layers


@dataclass
class Running:
    contender: Contender
    port: int
    process: subprocess.Popen


def contenders(processes: Processes, tools: dict[str, str], directory: str,
               cpus: str | None) -> list[Contender]:
    """The one-core contenders, nginx first."""
    nginx, haproxy = tools["nginx"], tools.get("haproxy")

    def addresses(backends: list[int]) -> list[str]:
        return [f"127.0.0.1:{p}" for p in backends]

    found = [
        Contender("nginx", "nginx (1 worker)",
                  lambda b: start_nginx_proxy(processes, nginx, directory, b, cpus=cpus)),
        Contender("haproxy", "HAProxy (1 thread)",
                  lambda b: start_haproxy(processes, haproxy or "haproxy", directory, b, cpus)),
        Contender("fast", "serve, LB_SERVER=fast",
                  lambda b: start_gateway(processes, "fast", b, cpus=cpus)),
        Contender("granian", "serve, LB_SERVER=granian (ASGI)",
                  lambda b: start_gateway(processes, "granian", b, cpus=cpus), choice=True),
        Contender("uvicorn", "serve, LB_SERVER=uvicorn (ASGI)",
                  lambda b: start_gateway(processes, "uvicorn", b, cpus=cpus), choice=True),
        Contender("reference", "reference: Protocol proxy, uvloop + httptools, bytes only",
                  lambda b: start_layer(processes, "reference.py", addresses(b), cpus)),
        Contender("reference-locked", "reference + Balancer.pick/report (its lock)",
                  lambda b: start_layer(processes, "reference.py", addresses(b), cpus,
                                        "--balancer", "locked"), layer=True),
        Contender("reference-lane", "reference + Balancer.pick/report (owned lane)",
                  lambda b: start_layer(processes, "reference.py", addresses(b), cpus,
                                        "--balancer", "lane"), layer=True),
        Contender("aiohttp", "aiohttp pass-through (uvicorn)",
                  lambda b: start_layer(processes, "aiohttp_passthrough.py",
                                        [f"http://{a}" for a in addresses(b)], cpus),
                  choice=True),
    ]
    if haproxy is None:
        print("HAProxy is not installed and could not be: its row is left out", flush=True)
        found = [c for c in found if c.key != "haproxy"]
    return found


def check(port: int, path: str, size: int) -> str | None:
    """None if ``GET path`` through the proxy on ``port`` answers 200 with ``size`` bytes,
    else what it did."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        return f"GET {path}: {exc!r}"
    finally:
        connection.close()
    if response.status != 200 or len(body) != size:
        return f"GET {path}: {response.status}, {len(body)} bytes instead of 200, {size}"
    return None


def launch(chosen: list[Contender], backends: list[int], processes: Processes,
           sizes: list[str]) -> list[Running]:
    """Start each contender and check it serves every size; one that does not is left out
    (said on the console), so that the others are still measured."""
    running = []
    for contender in chosen:
        try:
            port, process = contender.start(backends)
        except (RuntimeError, OSError) as exc:
            print(f"{contender.key}: left out, it did not start: {exc}", flush=True)
            continue
        wrong = next(filter(None, (check(port, SIZES[s][1], SIZES[s][2]) for s in sizes)), None)
        if wrong is not None:
            print(f"{contender.key}: left out, {wrong}\n{processes.log(process)[-1500:]}",
                  flush=True)
            processes.stop(process)
            continue
        running.append(Running(contender, port, process))
    return running


# -- measuring -----------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def session_cpu(session: int) -> float:
    """CPU seconds (user + system, reaped children's included) of every process in
    ``session``: a server started by :class:`Processes` and all its workers and threads."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as file:
                stat = file.read()
        except OSError:             # gone meanwhile
            continue
        fields = stat[stat.rindex(b")") + 2:].split()   # fields[0] is field 3 (state)
        if int(fields[3]) == session:                   # 6: session
            ticks += sum(int(f) for f in fields[11:15])  # 14-17: utime stime cutime cstime
    return ticks / CLOCK_TICKS


def cpu_busy(cpu: int) -> float:
    """Seconds ``cpu`` has been busy (not idle, not waiting for I/O) since boot."""
    with open("/proc/stat") as file:
        for line in file:
            if line.startswith(f"cpu{cpu} "):
                times = [int(t) for t in line.split()[1:]]
                return (sum(times[:8]) - times[3] - times[4]) / CLOCK_TICKS
    return 0.0


def run_wrk(wrk: str, port: int, duration: float, connections: int, path: str = "/",
            cpus: str | None = None) -> dict:
    """One wrk run: requests/second, requests, p50 and p99 (ms), errors."""
    args = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
            "--timeout", "5s", f"http://127.0.0.1:{port}{path}"]
    if cpus is not None:
        args = ["taskset", "-c", cpus, *args]
    out = subprocess.run(args, capture_output=True, text=True, timeout=duration + 30).stdout

    def latency(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    requests = re.search(r"(\d+) requests in", out)
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(rps.group(1)) if rps else 0.0,
            "requests": int(requests.group(1)) if requests else 0,
            "p50": latency("50"), "p99": latency("99"),
            "errors": errors + (int(non2xx.group(1)) if non2xx else 0)}


def measure(wrk: str, target: Running, path: str, args: argparse.Namespace,
            pinned: bool) -> dict | None:
    """One contender, one size: wrk's figures, the proxy's CPU µs per request, and how busy
    the proxy's CPU was outside it (pinned only). None if the proxy has exited."""
    if target.process.poll() is not None:
        return None
    session = target.process.pid
    cpu, wall = session_cpu(session), time.monotonic()
    core = cpu_busy(int(PROXY_CPUS)) if pinned else 0.0
    try:
        result = run_wrk(wrk, target.port, args.duration, args.connections, path,
                         CLIENT_CPUS if pinned else None)
    except subprocess.TimeoutExpired:       # wrk stuck well past its duration: not measured
        return None
    used, wall = session_cpu(session) - cpu, time.monotonic() - wall
    result["cpu_us"] = used / result["requests"] * 1e6 if result["requests"] else float("nan")
    result["cpu_share"] = used / wall
    if pinned:
        result["other"] = max(0.0, (cpu_busy(int(PROXY_CPUS)) - core - used) / wall)
    return result


def run_rounds(wrk: str, targets: list[Running], sizes: list[str], args: argparse.Namespace,
               pinned: bool, title: str,
               processes: Processes) -> list[dict[str, dict[str, dict | None]]]:
    """``args.rounds`` rounds: per round, per size, every target in turn (each round starts
    one further along the list). Returns per round: size -> contender key -> result."""
    for target in targets:                      # warm-up: connections, caches, allocators
        run_wrk(wrk, target.port, 1.0, args.connections, "/", CLIENT_CPUS if pinned else None)
    rounds = []
    for number in range(args.rounds):
        shift = number % len(targets)
        order = targets[shift:] + targets[:shift]
        results: dict[str, dict[str, dict | None]] = {}
        for size in sizes:
            label, path, _ = SIZES[size]
            results[size] = by_key = {}
            for target in order:
                by_key[target.contender.key] = result = measure(wrk, target, path, args, pinned)
                if result is None:
                    status = target.process.poll()
                    print(f"{title} round {number + 1} {label:>5}  {target.contender.key:<10} "
                          + ("wrk did not finish" if status is None else
                             f"exited ({status}): {processes.log(target.process)[-1000:]}"),
                          flush=True)
                    continue
                other = f"  CPU 0 other {result['other']:4.0%}" if pinned else ""
                print(f"{title} round {number + 1} {label:>5}  {target.contender.key:<10} "
                      f"{result['rps']:>8.0f} req/s  p99 {result['p99']:7.2f} ms  "
                      f"{result['cpu_us']:6.1f} µs/req  errors {result['errors']}{other}",
                      flush=True)
        rounds.append(results)
    return rounds


# -- the report ----------------------------------------------------------------------------

def spread(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v == v]          # NaN: not measured
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(rounds: list[dict[str, dict[str, dict | None]]], keys: list[str],
              labels: dict[str, str], baseline: str) -> dict[str, list[dict]]:
    """Per size, per contender: medians over the rounds, and the rounds' own ratios to
    ``baseline`` (median, min, max)."""
    tables: dict[str, list[dict]] = {}
    for size in rounds[0]:
        rows = []
        for key in keys:
            pairs = [(r[size].get(key), r[size].get(baseline)) for r in rounds]
            ours = [mine for mine, _ in pairs if mine is not None]
            both = [(mine, base) for mine, base in pairs if mine is not None and base is not None
                    and base["rps"] > 0 and base["p99"] > 0]
            if not ours:
                continue
            rows.append({
                "contender": key, "label": labels[key],
                "rps_ratio": spread([mine["rps"] / base["rps"] for mine, base in both]),
                "p99_ratio": spread([mine["p99"] / base["p99"] for mine, base in both]),
                "cpu_ratio": spread([mine["cpu_us"] / base["cpu_us"] for mine, base in both]),
                "cpu_us": spread([mine["cpu_us"] for mine in ours]),
                "rps": statistics.median(mine["rps"] for mine in ours),
                "p99_ms": statistics.median(mine["p99"] for mine in ours),
                "errors": sum(mine["errors"] for mine in ours),
                "cpu_0_other": spread([mine["other"] for mine in ours if "other" in mine]),
                "rounds": len(ours)})
        tables[SIZES[size][0]] = rows
    return tables


def _ratio(value: dict[str, float] | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if value["min"] == value["max"]:
        return f"{value['median']:.{digits}f}"
    return (f"{value['median']:.{digits}f} ({value['min']:.{digits}f}–"
            f"{value['max']:.{digits}f})")


def print_tables(tables: dict[str, list[dict]], baseline_label: str, pinned: bool) -> None:
    for size, rows in tables.items():
        print(f"\n{size} bodies\n")
        head = (f"| contender | rps ÷ {baseline_label} | p99 ÷ {baseline_label} "
                f"| CPU µs per request | CPU ÷ {baseline_label} | req/s | p99 ms | errors |")
        print(head + (" CPU 0 other |" if pinned else ""))
        print("|---" * (9 if pinned else 8) + "|")
        for row in rows:
            line = (f"| {row['label']} | {_ratio(row['rps_ratio'])} | {_ratio(row['p99_ratio'])}"
                    f" | {_ratio(row['cpu_us'], 0)} | {_ratio(row['cpu_ratio'], 1)} "
                    f"| {row['rps']:,.0f} | {row['p99_ms']:.2f} | {row['errors']} |")
            if pinned:
                other = row["cpu_0_other"]
                line += f" {other['median']:.0%} |" if other else " - |"
            print(line)


def goals(tables: dict[str, list[dict]], workers: dict[str, list[dict]] | None) -> list[str]:
    """The issue's "Done when" lines for the 5-byte bodies."""
    lines = []
    fast = next((row for row in tables.get(SIZES["5"][0], []) if row["contender"] == "fast"),
                None)
    if fast is not None and fast["rps_ratio"] and fast["p99_ratio"]:
        rps, p99 = fast["rps_ratio"]["median"], fast["p99_ratio"]["median"]
        met = "met" if rps >= 0.5 and p99 <= 2 else "MISSED"
        cpu = fast["cpu_ratio"]["median"] if fast["cpu_ratio"] else float("nan")
        lines.append(f"fast path >= 0.5 of nginx in rps with p99 <= 2x nginx's (5 B, one core): "
                     f"{rps:.2f}, p99 {p99:.2f}x ({met}; the ASGI path was 0.18); its CPU per "
                     f"request {cpu:.1f}x nginx's")
    if workers:
        two = next((row for row in workers.get(SIZES["5"][0], []) if row["contender"] == "fast-2"),
                   None)
        if two is not None and two["rps_ratio"]:
            lines.append(f"fast path, 2 workers, to nginx with 2 workers (5 B, unpinned): "
                         f"{two['rps_ratio']['median']:.2f}, p99 "
                         f"{two['p99_ratio']['median'] if two['p99_ratio'] else float('nan'):.2f}x")
    return lines


def versions(tools: dict[str, str]) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("lbmiddleware", "uvloop", "httptools", "granian", "uvicorn", "aiohttp"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    for name, flag in (("nginx", "-v"), ("haproxy", "-v"), ("wrk", "-v")):
        if name in tools:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run([tools[name], flag], capture_output=True, text=True,
                                     timeout=10)
                text = (out.stdout + out.stderr).strip().splitlines()
                found[name] = text[0] if text else "?"
    return found


def _finite(value: Any) -> Any:
    """``value`` with NaN (not measured) as None: JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# -- main ----------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement [4]")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every contender [3]")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections [64]")
    parser.add_argument("--workers", type=int, default=2,
                        help="then the fast path with LB_WORKERS=N against nginx with N "
                             "workers, unpinned; 1: skip [2]")
    parser.add_argument("--sizes", default="5,16k,1m", help="body sizes: 5, 16k, 1m [all]")
    parser.add_argument("--contenders", default="",
                        help="only these (comma-separated keys; nginx always) [all]")
    parser.add_argument("--no-choices", action="store_true",
                        help="leave out granian, uvicorn and the aiohttp pass-through")
    parser.add_argument("--layers", action="store_true",
                        help="add the reference with the Balancer's pick/report (locked, lane)")
    parser.add_argument("--json", metavar="PATH", help="write the tables and rounds here")
    args = parser.parse_args()
    sizes = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    if not sizes or any(s not in SIZES for s in sizes):
        parser.error(f"--sizes takes {', '.join(SIZES)}")
    if args.rounds < 1 or args.duration <= 0:
        parser.error("--rounds and --duration must be positive")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))     # stop what was started

    pinned = len(os.sched_getaffinity(0)) >= 2 and {0, 1} <= os.sched_getaffinity(0)
    if not pinned:
        print("fewer than 2 CPUs (0 and 1) available: nothing is pinned", flush=True)
    wrk, nginx = ensure_tools()
    tools = {"wrk": wrk, "nginx": nginx}
    haproxy = ensure_haproxy()
    if haproxy is not None:
        tools["haproxy"] = haproxy
    processes = Processes()
    directory = tempfile.mkdtemp(prefix="bench_proxy_")
    os.chmod(directory, 0o755)      # nginx's workers run as nobody when started as root
    load = [os.getloadavg()[0]]
    report: dict[str, Any] = {"settings": {
        "duration": args.duration, "rounds": args.rounds, "connections": args.connections,
        "sizes": [SIZES[s][0] for s in sizes], "cpus": os.cpu_count(),
        "placement": (f"proxy on CPU {PROXY_CPUS}, wrk -t1 and the backends on CPU {CLIENT_CPUS}"
                      if pinned else "unpinned"),
        "versions": versions(tools)}}
    try:
        cpus = PROXY_CPUS if pinned else None
        backends = start_backends(processes, nginx, directory, CLIENT_CPUS if pinned else None)
        chosen = [c for c in contenders(processes, tools, directory, cpus)
                  if not (args.no_choices and c.choice) and (args.layers or not c.layer)]
        if args.contenders:
            wanted = {"nginx", *(k.strip() for k in args.contenders.split(","))}
            chosen = [c for c in chosen if c.key in wanted]
        targets = launch(chosen, backends, processes, sizes)
        if not targets or targets[0].contender.key != "nginx":
            sys.exit("nginx, the baseline, did not start")
        rounds = run_rounds(wrk, targets, sizes, args, pinned, "1 core", processes)
        keys = [t.contender.key for t in targets]
        labels = {t.contender.key: t.contender.label for t in targets}
        report["one_core"] = summarise(rounds, keys, labels, "nginx")
        report["one_core_rounds"] = rounds
        for target in targets:                       # the one-core phase is over
            processes.stop(target.process)

        if args.workers > 1:
            n = args.workers
            fresh = start_backends(processes, nginx, directory)          # unpinned
            two = [Contender(f"nginx-{n}", f"nginx ({n} workers)",
                             lambda b: start_nginx_proxy(processes, nginx, directory, b, n)),
                   Contender(f"fast-{n}", f"serve, LB_SERVER=fast, LB_WORKERS={n}",
                             lambda b: start_gateway(processes, "fast", b, n))]
            targets = launch(two, fresh, processes, sizes)
            if targets and targets[0].contender.key == f"nginx-{n}":
                rounds = run_rounds(wrk, targets, sizes, args, False, f"{n} workers",
                                    processes)
                keys = [t.contender.key for t in targets]
                labels = {t.contender.key: t.contender.label for t in targets}
                report["workers"] = summarise(rounds, keys, labels, f"nginx-{n}")
                report["workers_rounds"] = rounds
    finally:
        processes.stop_all()
        shutil.rmtree(directory, ignore_errors=True)
    load.append(os.getloadavg()[0])
    report["settings"]["load_average"] = {"start": load[0], "end": load[1]}

    settings = report["settings"]
    print(f"\nwrk -t1 -c{args.connections}, {args.duration:g} s x {args.rounds} rounds, "
          f"alternating; {settings['placement']}; {os.cpu_count()} CPUs; load average "
          f"{load[0]:.1f} at the start, {load[1]:.1f} at the end. Ratios: the median of each "
          f"round's own ratio to nginx (min-max); CPU: the proxy's processes, all of them.")
    print_tables(report["one_core"], "nginx", pinned)
    if "workers" in report:
        print(f"\n{args.workers} workers each, nothing pinned: the scheduler spreads the workers, "
              f"wrk and the backends over every CPU alike for both (on 2 CPUs no placement gives "
              f"each worker a core of its own)")
        print_tables(report["workers"], f"nginx ({args.workers})", False)
    lines = goals(report["one_core"], report.get("workers"))
    if lines:
        print()
        print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(_finite(report), file, indent=1)
        print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
