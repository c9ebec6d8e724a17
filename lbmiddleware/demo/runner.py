"""``python -m lbmiddleware demo``: every policy at work in front of three real backends.

The demo starts three backends on 127.0.0.1 (:mod:`lbmiddleware.demo.backends`: one fast,
one slow, one that fails now and then), each in its own process, and the gateway (the ASGI
middleware under uvicorn) in front of them. For each policy it sends a few thousand GET
requests from many concurrent connections and client addresses (``X-Forwarded-For`` from a
trusted proxy, so ``ip_hash`` has keys to stick to), kills the failing backend halfway, and
prints what the clients saw: each backend's share, p50/p99 latency, errors, failed attempts
and ejections. Every GET failure is retried on another backend, so the clients see no
errors, also after the kill. Everything it starts is stopped when it ends, also on Ctrl-C.
At the end it writes the runs' HTML report (:mod:`.report`) and prints its path.

Options: ``--requests N`` per policy, ``--policies latency,ip_hash``, ``--concurrency N``,
``--report PATH``, ``--serve [--rate N]`` (instead of the runs, everything kept running for
the status page: :mod:`.serve`), ``--backends-only`` (start the three backends, print
``LB_BACKENDS=...`` and wait).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from ..core.balancer import Balancer
from ..core.events import BackendEjected, Event
from ..core.settings import POLICIES, POLICY_ALIASES
from .client import REQUEST_TIMEOUT, read_response
from .glossary import BACKENDS_EXPLAINED, WHAT_TO_SEE, terminal_lines, wrapped
from .notes import chart_notes, gateway_view, table_notes
from .processes import STARTUP_TIMEOUT, BackendProcess
from .report import write_report
from .results import BackendRow, PolicyResult, Sample, error_kinds, percentile

if TYPE_CHECKING:
    import uvicorn

__all__ = ["main", "run_demo", "PolicyResult", "format_policy", "format_summary", "Progress"]

DEFAULT_REQUESTS = 3000          # per policy
DEFAULT_CONCURRENCY = 16         # client connections
CLIENT_ADDRESSES = [f"198.51.100.{i}" for i in range(1, 255)]   # a documentation range
DEMO_SETTINGS: dict[str, Any] = {  # the gateway's settings, shown in the demo's header
    "max_fails": 3, "fail_timeout": 2.0, "retries": 2,
    "connect_timeout": 1.0, "read_timeout": 5.0, "trusted_proxies": ["127.0.0.1/32"],
}
BALANCER_SETTINGS = ("max_fails", "fail_timeout")   # the Balancer's; the rest the proxy's
TIME_BUDGET = 50.0               # seconds for all the runs: each stops sending at its share
DEFAULT_RATE = 20.0              # --serve: GETs a second through the gateway
MAX_RATE = 1000.0                # --serve: a steady trickle, not a benchmark

logger = logging.getLogger("lbmiddleware")


# -- the gateway: the ASGI middleware under uvicorn, in a thread of this process -----------

class Gateway:
    """The load-balancing proxy on 127.0.0.1 (port chosen by the OS) for one Balancer."""

    def __init__(self, balancer: Balancer, **options: Any) -> None:
        self.balancer = balancer
        self.options = options          # the proxy's own settings (retries, timeouts, ...)
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    def start(self) -> Gateway:
        import uvicorn

        from ..asgi import LoadBalancerMiddleware

        app = LoadBalancerMiddleware(None, balancer=self.balancer, **self.options)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit it; asyncio sets it only on sockets made with
        # proto=IPPROTO_TCP, and without it every response waits ~40 ms (Nagle).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        self._socket = sock            # closed after the server stops (asyncio serves on it)
        self.port = sock.getsockname()[1]
        has = importlib.util.find_spec          # as the serve command runs it
        config = uvicorn.Config(
            app, log_config=None, log_level="warning", access_log=False, lifespan="off",
            backlog=1024, loop="uvloop" if has("uvloop") else "asyncio",
            http="httptools" if has("httptools") else "h11")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="demo-gateway", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.stop()
                raise RuntimeError("the demo gateway did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None


# -- the clients: concurrent keep-alive connections sending GETs, timed one by one ---------

class _Run:
    """Shared state of the concurrent clients of one policy run."""

    def __init__(self, total: int, kill_at: int, kill: Callable[[], None],
                 seconds: float) -> None:
        self.total = total
        self.kill_at = kill_at
        self._kill = kill
        self.issued = 0
        self.samples: list[Sample] = []
        self.started = time.monotonic()
        self.killed_at: float | None = None      # seconds from the start
        self.deadline = self.started + seconds

    def next_index(self) -> int | None:
        if self.issued >= self.total or time.monotonic() > self.deadline:
            return None
        self.issued += 1
        return self.issued - 1

    def record(self, sample: Sample) -> None:
        self.samples.append(sample)
        if self.killed_at is None and len(self.samples) >= self.kill_at:
            self._kill()
            self.killed_at = time.monotonic() - self.started


async def _client(port: int, run: _Run, offset: int) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        while (index := run.next_index()) is not None:
            client = CLIENT_ADDRESSES[(index * 7 + offset) % len(CLIENT_ADDRESSES)]
            request = (f"GET /demo/items/{index}?client={client} HTTP/1.1\r\n"
                       f"Host: demo.gateway\r\nX-Forwarded-For: {client}\r\n\r\n").encode()
            after_kill = run.killed_at is not None
            start = time.perf_counter()
            try:
                if reader is None or writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                status, backend, keep = await asyncio.wait_for(read_response(reader),
                                                               REQUEST_TIMEOUT)
            except (OSError, EOFError, ValueError, asyncio.TimeoutError,
                    asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                status, backend, keep = 0, "", False
            latency = time.perf_counter() - start
            run.record(Sample(client, status, backend, latency, after_kill,
                              time.monotonic() - run.started))
            if not keep and writer is not None:
                writer.close()
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()


async def _drive(port: int, run: _Run, concurrency: int, progress: Progress) -> None:
    async def tick() -> None:
        while True:
            progress.update(len(run.samples), "flaky killed" if run.killed_at is not None else "")
            await asyncio.sleep(0.1)

    ticker = asyncio.create_task(tick())
    try:
        await asyncio.gather(*(_client(port, run, i) for i in range(concurrency)))
    finally:
        ticker.cancel()
        progress.update(len(run.samples), "flaky killed" if run.killed_at is not None else "")


# -- one policy ----------------------------------------------------------------------------

def _sticky(samples: list[Sample], home: dict[str, str], flaky: str) -> tuple[int, int, int]:
    """For ip_hash: (clients of a healthy backend whose every answer came from it, clients of
    a healthy backend, clients of the flaky one); ``home`` maps a client to its backend."""
    seen: dict[str, set[str]] = {}
    for sample in samples:
        if sample.backend:
            seen.setdefault(sample.client, set()).add(sample.backend)
    steady = [client for client in seen if home[client] != flaky]
    kept = sum(1 for client in steady if seen[client] == {home[client]})
    return kept, len(steady), len(seen) - len(steady)


def _homes(backends: Sequence[BackendProcess]) -> dict[str, str]:
    """Each client address's backend under ip_hash with every backend healthy (the hash is
    stable, so a fresh Balancer maps a key exactly as the gateway's does)."""
    reference = Balancer([b.url for b in backends], policy="ip_hash")
    names = {backend.url: name for backend, name in
             zip(reference.settings.backends, (b.name for b in backends), strict=True)}
    return {client: names[reference.lookup(client).url] for client in CLIENT_ADDRESSES}


def run_policy(policy: str, steady: Sequence[BackendProcess], requests: int, concurrency: int,
               progress: Progress, seconds: float = TIME_BUDGET) -> PolicyResult:
    """One run: a fresh flaky backend and gateway, ``requests`` GETs (fewer if ``seconds``
    run out first), the kill halfway."""
    flaky = BackendProcess("flaky").start()
    gateway = None
    try:
        backends = [*steady, flaky]
        balancer = Balancer([b.url for b in backends], policy=policy,
                            **{k: v for k, v in DEMO_SETTINGS.items() if k in BALANCER_SETTINGS})
        ejected: list[tuple[str, float]] = []       # (url, the balancer's timer reading)

        def listen(event: Event) -> None:
            # (when it happened, not when it was delivered: a report made off the lock is
            # delivered with a later call)
            if isinstance(event, BackendEjected):
                ejected.append((event.backend.url, event.until - event.duration))
        balancer.subscribe(listen)
        gateway = Gateway(balancer, **{k: v for k, v in DEMO_SETTINGS.items()
                                       if k not in BALANCER_SETTINGS}).start()
        run = _Run(requests, kill_at=requests // 2, kill=flaky.kill, seconds=seconds)
        progress.start(policy, requests)
        start = time.monotonic()
        asyncio.run(_drive(gateway.port, run, concurrency, progress))
        seconds = time.monotonic() - start
        progress.finish()
        stats = {row["url"]: row for row in balancer.stats()}
    finally:
        if gateway is not None:
            gateway.stop()
        flaky.stop()
    samples = run.samples
    rows = []
    names = {}
    for backend in backends:
        mine = [s.latency for s in samples if s.backend == backend.name and s.status < 500]
        url = balancer.settings.backends[backends.index(backend)].url
        names[url] = backend.name
        row = stats[url]
        rows.append(BackendRow(backend.name, len(mine), percentile(mine, 0.5),
                               percentile(mine, 0.99), row["failures"], row["ejections"],
                               row["state"], killed=backend is flaky))
    ejected_at: dict[str, list[float]] = {}
    for url, reading in ejected:        # (the balancer's timer is time.monotonic, as the run's)
        ejected_at.setdefault(names[url], []).append(reading - run.started)
    errors = [s for s in samples if not 200 <= s.status < 400]
    after = [s for s in samples if s.after_kill]
    latencies = [s.latency for s in samples]
    return PolicyResult(
        policy=policy, planned=requests, requests=len(samples), seconds=seconds, errors=len(errors),
        errors_after_kill=sum(1 for s in errors if s.after_kill), requests_after_kill=len(after),
        p50=percentile(latencies, 0.5), p99=percentile(latencies, 0.99), rows=rows,
        sticky=_sticky(samples, _homes(backends), flaky.name) if policy == "ip_hash" else None,
        urls=(f"http://127.0.0.1:{gateway.port}", *(b.url for b in backends)),
        error_kinds=error_kinds(errors), samples=samples, killed_at=run.killed_at,
        ejected_at=ejected_at)


# -- output ----------------------------------------------------------------------------------

def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"




def format_policy(result: PolicyResult, settings: Mapping[str, Any] = DEMO_SETTINGS) -> str:
    """The table of one policy run, and the notes on what would puzzle a newcomer in it."""
    rate = result.requests / result.seconds if result.seconds else 0.0
    lines = [
        f"{result.policy}: {result.requests} GET requests in {result.seconds:.1f} s "
        f"({rate:.0f}/s); client errors: {result.errors} "
        f"({result.errors_after_kill} of {result.requests_after_kill} after the kill)"
        + "".join(f"; {kind}: {count}" for kind, count in sorted(result.error_kinds.items()))
        + (f"; stopped at its time limit, {result.planned} planned"
           if result.requests < result.planned else ""),
        f"  ({WHAT_TO_SEE.get(result.policy, '')})",
        f"  {'backend':<8}{'share':>7}{'served':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'failed':>8}{'ejected':>9}  gateway's view",
    ]
    for row in result.rows:
        share = 100.0 * row.served / result.requests if result.requests else 0.0
        lines.append(f"  {row.name:<8}{share:>6.1f}%{row.served:>8}{_ms(row.p50):>8}"
                     f"{_ms(row.p99):>8}{row.failures:>8}{row.ejections:>9}  "
                     f"{gateway_view(row)}")
    lines.append(f"  {'all':<8}{'':>7}{result.requests:>8}{_ms(result.p50):>8}{_ms(result.p99):>8}")
    if result.sticky is not None:
        kept, steady, moved = result.sticky
        lines.append(f"  sticky: {kept} of {steady} clients of fast and slow stayed on their "
                     f"backend throughout; flaky's {moved} clients moved when it failed")
    lines.extend(wrapped("note", note + ".", 6)
                 for note in chart_notes(result, settings) + table_notes(result, settings))
    return "\n".join(lines)


def format_summary(results: Sequence[PolicyResult], seconds: float) -> str:
    """One line per policy, then the verdict on errors."""
    names = [row.name for row in results[0].rows] if results else []
    lines = [f"{'summary':<12}" + "".join(f"{name:>7}" for name in names)
             + f"{'p50 ms':>8}{'p99 ms':>8}{'errors':>8}{'ejected':>9}"]
    for r in results:
        shares = "".join(f"{100.0 * row.served / max(r.requests, 1):>6.0f}%" for row in r.rows)
        lines.append(f"{r.policy:<12}{shares}{_ms(r.p50):>8}{_ms(r.p99):>8}{r.errors:>8}"
                     f"{sum(row.ejections for row in r.rows):>9}")
    total = sum(r.requests for r in results)
    errors = sum(r.errors for r in results)
    after = sum(r.requests_after_kill for r in results)
    errors_after = sum(r.errors_after_kill for r in results)
    lines.append(f"GET errors seen by clients: {errors} of {total} "
                 f"({errors_after} of {after} after the flaky backend was killed). "
                 f"Wall time {seconds:.1f} s.")
    return "\n".join(lines)


class Progress:
    """A one-line progress bar on a terminal (stderr); silent when not a terminal."""

    WIDTH = 30

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._label = ""
        self._total = 1

    def start(self, label: str, total: int) -> None:
        self._label, self._total = label, max(total, 1)
        self.update(0)

    def update(self, done: int, note: str = "") -> None:
        if not self.enabled:
            return
        filled = self.WIDTH * min(done, self._total) // self._total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r  {self._label:<12}[{bar}] {done}/{self._total} {note:<12}")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * (self.WIDTH + 40) + "\r")
            self.stream.flush()


def _setup(requests: int, concurrency: int, steady: Sequence[BackendProcess]
           ) -> list[tuple[str, str]]:
    """(label, text) lines describing the run: the terminal's header and the report's."""
    settings = ", ".join(f"{k}={v}" for k, v in DEMO_SETTINGS.items() if k != "trusted_proxies")
    return [
        ("backends", f"{', '.join(f'{b.name} {b.url}' for b in steady)}, and a fresh flaky one "
                     f"per policy ({BACKENDS_EXPLAINED})"),
        ("gateway", f"the ASGI middleware under uvicorn; {settings}"),
        ("clients", f"{requests} GETs per policy over {concurrency} keep-alive connections, "
                    f"from {len(CLIENT_ADDRESSES)} addresses (X-Forwarded-For through a trusted "
                    "proxy)"),
        ("columns", "share/served: answers per backend; p50/p99: client latency; failed: failed "
                    "attempts (retried on another backend); ejected: ejections by passive "
                    "health"),
    ]


def _header(setup: Sequence[tuple[str, str]]) -> str:
    """The terminal's header: the run, then one line per word a newcomer needs."""
    return "\n".join([
        "lbmiddleware demo",
        *(wrapped(label, text, 10) for label, text in setup),
        *terminal_lines(DEMO_SETTINGS),
        "",
    ])


class _Quiet(logging.Handler):
    """Keeps the balancer's ejection log lines off the terminal during the demo."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def run_demo(requests: int = DEFAULT_REQUESTS, policies: Sequence[str] = POLICIES,
             concurrency: int = DEFAULT_CONCURRENCY, out: TextIO | None = None,
             progress: Progress | None = None, report: str | None = None
             ) -> list[PolicyResult]:
    """Run the demo and print its tables on ``out``; with ``report`` (a path) also write the
    HTML report there and print its path. Returns the results."""
    out = out if out is not None else sys.stdout
    progress = progress if progress is not None else Progress()
    started = time.monotonic()
    quiet = _Quiet()
    propagate = logger.propagate
    logger.addHandler(quiet)
    logger.propagate = False
    steady: list[BackendProcess] = []
    results = []
    try:
        for name in ("fast", "slow"):
            steady.append(BackendProcess(name).start())
        setup = _setup(requests, concurrency, steady)
        print(_header(setup), file=out, flush=True)
        budget_end = started + TIME_BUDGET
        for index, policy in enumerate(policies):
            share = max(1.0, (budget_end - time.monotonic()) / (len(policies) - index))
            result = run_policy(policy, steady, requests, concurrency, progress, share)
            results.append(result)
            print(format_policy(result) + "\n", file=out, flush=True)
    finally:
        progress.finish()
        for backend in steady:
            backend.stop()
        logger.removeHandler(quiet)
        logger.propagate = propagate
    print(format_summary(results, time.monotonic() - started), file=out, flush=True)
    if report is not None:
        written = write_report(results, report, setup, DEMO_SETTINGS)
        print(f"\nReport with charts of every run (open it in a browser): {written}",
              file=out, flush=True)
    return results


def _policies(text: str) -> list[str]:
    names = [item.strip().lower() for item in text.split(",") if item.strip()]
    for name in names:
        if name not in POLICIES and name not in POLICY_ALIASES:
            raise argparse.ArgumentTypeError(
                f"unknown policy {name!r} (expected some of {', '.join(POLICIES)})")
    return [POLICY_ALIASES.get(name, name) for name in names] or list(POLICIES)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_RATE:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a rate from 0 to {MAX_RATE:g} requests a second")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lbmiddleware demo [--requests N] [--policies a,b] [--report PATH]
    [--serve [--rate N]] [--backends-only]``."""
    parser = argparse.ArgumentParser(
        prog="python -m lbmiddleware demo",
        description="Start three local backends (fast, slow, flaky) and a gateway, drive GET "
                    "requests through every policy, kill the flaky backend halfway, and print "
                    "what the clients saw, with an HTML report of it; or, with --serve, keep "
                    "them running to watch the gateway's status page.")
    parser.add_argument("--requests", type=_positive, default=DEFAULT_REQUESTS, metavar="N",
                        help=f"requests per policy (default {DEFAULT_REQUESTS})")
    parser.add_argument("--policies", type=_policies, default=list(POLICIES), metavar="LIST",
                        help="comma-separated policies (default: all: " + ",".join(POLICIES) + ")")
    parser.add_argument("--concurrency", type=_positive, default=DEFAULT_CONCURRENCY, metavar="N",
                        help=f"concurrent client connections (default {DEFAULT_CONCURRENCY})")
    parser.add_argument("--report", metavar="PATH",
                        help="where to write the HTML report (default: report.html in a new "
                             "temporary folder); its path is printed at the end")
    parser.add_argument("--serve", action="store_true",
                        help="instead of the runs: keep the three backends and the gateway with "
                             "its status page running until Ctrl-C, and kill or start a "
                             "backend by typing 'kill flaky' or 'start flaky' (policy: the "
                             "first of --policies)")
    parser.add_argument("--rate", type=_rate, default=DEFAULT_RATE, metavar="N",
                        help=f"with --serve: GET requests a second the demo sends through the "
                             f"gateway (default {DEFAULT_RATE:g}; 0: none)")
    parser.add_argument("--backends-only", action="store_true",
                        help="only start the three backends, print LB_BACKENDS=... and wait "
                             "(for the examples); Ctrl-C stops them")
    args = parser.parse_args(argv)
    if args.backends_only:
        from . import backends as demo_backends
        return demo_backends.main([])
    if importlib.util.find_spec("uvicorn") is None:
        print("the demo runs the gateway, which needs uvicorn: "
              "pip install 'lbmiddleware[gateway]'", file=sys.stderr)
        return 2
    if args.serve:
        from .serve import serve
        try:
            return serve(args.policies[0], args.rate, DEMO_SETTINGS)
        except RuntimeError as exc:
            print(f"the demo could not start: {exc}", file=sys.stderr)
            return 1
    folder = None if args.report else tempfile.mkdtemp(prefix="lbmiddleware-demo-")
    report = args.report or os.path.join(str(folder), "report.html")
    try:
        results = run_demo(args.requests, args.policies, args.concurrency, report=report)
    except KeyboardInterrupt:
        if folder is not None:
            os.rmdir(folder)        # empty: the report is written once every run is done
        print("\ninterrupted: every backend and the gateway are stopped", file=sys.stderr)
        return 130
    return 0 if all(r.errors == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
