"""``python -m lbmiddleware demo --serve`` as a person runs it: a real process whose printed
URLs are used as printed, commands typed on its standard input, the status page read from
the gateway's admin port, and Ctrl-C (SIGINT), SIGTERM or SIGKILL leaving nothing running."""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from ..support.processes import stop_process
from ..support.waiting import until
from .helpers import ROOT, children, kill_leftovers, refused, running

LAST_LINE = "Ctrl-C stops everything."
GATEWAY_COMMAND = b"-m\0lbmiddleware\0serve\0"
BACKEND_COMMAND = b"lbmiddleware.demo.backends"


class ServeProcess:
    """The demo with ``--serve``; every line it prints is kept (``lines``) by a reader
    thread, and ``expect`` waits for one."""

    def __init__(self, *options: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
        env.update(PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lbmiddleware", "demo", "--serve", *options],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=env, cwd=ROOT)
        self.lines: list[str] = []
        self.started: list[int] = []         # its gateway and backends, once urls() saw them
        self._new: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)
        self._new.put(None)

    def expect(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The first line from now on that matches ``pattern`` (or one printed before)."""
        for line in self.lines:
            if found := re.search(pattern, line):
                return found
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._new.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                line = ""
            if line is None or time.monotonic() > deadline:
                raise AssertionError(f"no line matching {pattern!r}; it printed:\n"
                                     + "\n".join(self.lines))
            if found := re.search(pattern, line):
                return found

    def type(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def urls(self) -> dict[str, str]:
        """The URLs printed before the instructions end: status page, gateway, backends."""
        self.expect(re.escape(LAST_LINE))
        urls = {"status": self.expect(r"status page (http://\S+)").group(1),
                "gateway": self.expect(r"gateway +(http://\S+)").group(1)}
        for name in ("fast", "slow", "flaky"):
            found = self.expect(rf"\b{name} +(http://\S+) +pid (\d+)")
            urls[name], urls[f"{name} pid"] = found.group(1), found.group(2)
        [gateway] = children(self.process.pid, GATEWAY_COMMAND)
        urls["gateway pid"] = str(gateway)
        self.started += [gateway, *(int(urls[f"{n} pid"]) for n in ("fast", "slow", "flaky"))]
        return urls

    def close(self) -> None:
        """Stop it as a person would (SIGTERM: it stops what it started), SIGKILL only if it
        does not exit, then kill whatever of its children a failed test left running."""
        stop_process(self.process, 30)
        for marker in (GATEWAY_COMMAND, BACKEND_COMMAND):   # first: they hold its output
            kill_leftovers(self.started, marker)
        self._reader.join(timeout=5)
        self.process.stdin.close()
        self.process.stdout.close()


def _get(url: str) -> tuple[int, dict[str, str], str]:
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, port = host_port.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", "/" + path)
        response = connection.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read().decode())
    finally:
        connection.close()


def _states(status_url: str) -> dict[str, str]:
    time.sleep(0.05)            # a poll every few ms would load a shared machine for nothing
    _, _, body = _get(status_url + ".json")
    [pool] = json.loads(body)["pools"]
    return {row["url"]: row["state"] for row in pool["backends"]}


@pytest.fixture
def serve():
    started: list[ServeProcess] = []

    def start(*options: str) -> ServeProcess:
        started.append(ServeProcess(*options))
        return started[-1]

    yield start
    for process in started:
        process.close()


def _everything_stopped(demo: ServeProcess, urls: dict[str, str]) -> None:
    for name in ("status", "gateway", "fast", "slow", "flaky"):
        assert refused(urls[name]), (name, urls[name])
    for name in ("fast", "slow", "flaky", "gateway"):
        assert not running(int(urls[f"{name} pid"])), name


def test_serve_runs_until_ctrl_c_and_a_killed_backend_shows_on_the_status_page(serve):
    demo = serve("--rate", "20")
    urls = demo.urls()
    assert urls["status"].endswith("/status")

    # The status page, from the gateway's admin port, lists the three backends; the gateway
    # proxies to them.
    status, headers, page = _get(urls["status"])
    assert status == 200 and headers["content-type"].startswith("text/html")
    for name in ("fast", "slow", "flaky"):
        assert urls[name] in page
    status, headers, body = _get(urls["gateway"] + "/hello")
    assert status == 200 and headers["x-backend"] in ("fast", "slow", "flaky")
    assert _states(urls["status"]) == {urls[n]: "healthy" for n in ("fast", "slow", "flaky")}

    # Typed commands: kill the flaky backend and the page stops calling it healthy (ejected
    # by the steady load's failures or down by its health checks), start it and it is back.
    demo.type("kill flaky")
    demo.expect(r"killed flaky \(pid \d+, SIGKILL\)")
    assert refused(urls["flaky"])
    until(lambda: _states(urls["status"])[urls["flaky"]] in ("ejected", "down"), 15,
          "the killed backend shown ejected or down")
    demo.expect(r"WARNING .*http://127\.0\.0\.1:\d+.*(ejected|down)")   # the gateway's log
    demo.type("start flaky")
    restarted = demo.expect(r"started flaky again on (http://\S+) \(pid (\d+)\)")
    assert restarted.group(1) == urls["flaky"]
    until(lambda: _states(urls["status"])[urls["flaky"]] == "healthy", 15,
          "the restarted backend shown healthy")
    demo.type("stop everything")
    demo.expect(r"unknown command 'stop everything': type kill NAME or start NAME")
    urls["flaky pid"] = restarted.group(2)

    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(timeout=30) == 0
    demo.expect(r"stopped: the gateway, its admin port and the backends")
    _everything_stopped(demo, urls)
    assert not any("Traceback" in line for line in demo.lines), "\n".join(demo.lines)


def test_sigterm_stops_everything_too(serve):
    demo = serve("--rate", "0", "--policies", "latency")
    urls = demo.urls()
    demo.expect(r"traffic +none sent by the demo")
    assert _get(urls["status"])[0] == 200
    demo.process.send_signal(signal.SIGTERM)
    assert demo.process.wait(timeout=30) == 0
    _everything_stopped(demo, urls)


def test_a_killed_demo_takes_its_gateway_and_backends_with_it(serve):
    # SIGKILL runs none of the demo's own stopping: its children must end by themselves
    # (the kernel signals them when it dies), or they keep their ports until someone kills them
    demo = serve("--rate", "20")
    urls = demo.urls()
    pids = [int(urls[f"{name} pid"]) for name in ("gateway", "fast", "slow", "flaky")]
    demo.process.kill()
    demo.process.wait(timeout=10)
    until(lambda: not any(running(pid) for pid in pids), 10,
          "the gateway and the backends of a killed demo gone")
    for name in ("status", "gateway", "fast", "slow", "flaky"):
        assert refused(urls[name]), (name, urls[name])


def test_a_backend_started_again_by_a_command_lives_on_when_the_commands_end(serve):
    # The kernel's parent-death signal follows the thread that started a child: a backend
    # started by a typed command must not stop when the demo's command reader ends (its
    # standard input closed: Ctrl-D, or commands piped in).
    demo = serve("--rate", "0")
    urls = demo.urls()
    demo.type("kill flaky")
    demo.expect(r"killed flaky \(pid \d+, SIGKILL\)")
    demo.type("start flaky")
    restarted = demo.expect(r"started flaky again on (http://\S+) \(pid (\d+)\)")
    flaky = int(restarted.group(2))
    demo.started.append(flaky)
    tasks = f"/proc/{demo.process.pid}/task"
    threads = len(os.listdir(tasks))
    demo.process.stdin.close()
    until(lambda: len(os.listdir(tasks)) < threads, 10, "the demo's command reader ended")
    time.sleep(1.5)         # a SIGTERM sent as it ended would have stopped the backend by now
    assert running(flaky) and not refused(urls["flaky"])
    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(timeout=30) == 0
    urls["flaky pid"] = str(flaky)
    _everything_stopped(demo, urls)


def test_a_gateway_that_exits_ends_the_demo_with_1_and_its_backends(serve):
    demo = serve("--rate", "0")
    urls = demo.urls()
    os.kill(int(urls["gateway pid"]), signal.SIGKILL)
    assert demo.process.wait(timeout=30) == 1
    demo.expect(r"the gateway exited \(code -9\); stopping")
    _everything_stopped(demo, urls)


def test_commands_say_what_happened_and_what_is_wrong():
    from lbmiddleware.demo.runner import DEMO_SETTINGS
    from lbmiddleware.demo.serve import LiveDemo

    live = LiveDemo("round_robin", 0, DEMO_SETTINGS, say=print)
    flaky = live.backends["flaky"].start()
    try:
        assert live.command("") == ""
        assert live.command("start flaky") == f"flaky is running already (pid {flaky.pid})"
        pid = flaky.pid
        assert live.command("KILL flaky").startswith(f"killed flaky (pid {pid}, SIGKILL). "
                                                     f"Watch {flaky.url} on ")
        assert not running(pid) and refused(flaky.url)
        assert live.command("kill flaky") == "flaky is not running; start flaky starts it"
        url = flaky.url
        assert live.command("start flaky").startswith(f"started flaky again on {url} (pid ")
        assert flaky.url == url and not refused(url)
        for typed in ("kill", "kill nginx", "kill fast slow", "restart flaky"):
            assert live.command(typed) == (
                f"unknown command {typed!r}: type kill NAME or start NAME (NAME: fast, slow, "
                "flaky), or Ctrl-C to stop everything")
        assert "Ctrl-C stops everything." in live.command("help")
    finally:
        live.stop()
    assert refused(url) and live.command("start flaky") == ""     # stopped: commands ignored
    assert refused(url)


def test_start_adds_the_other_program_hint_only_when_the_port_is_taken(monkeypatch):
    import socket

    from lbmiddleware.demo.runner import DEMO_SETTINGS
    from lbmiddleware.demo.serve import LiveDemo

    live = LiveDemo("round_robin", 0, DEMO_SETTINGS, say=print)
    flaky = live.backends["flaky"].start()
    url, port = flaky.url, flaky.port
    try:
        live.command("kill flaky")
        with socket.socket() as other:          # another program takes its port meanwhile
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            other.bind(("127.0.0.1", port))
            other.listen()
            assert live.command("start flaky") == (
                f"demo backend 'flaky' did not start: port {port} is in use "
                f"(is another program on {url}?)")

        def fails(port: int = 0):
            raise RuntimeError(f"demo backend 'flaky' did not start on port {port}")

        monkeypatch.setattr(flaky, "start", fails)      # any other failure: no hint
        assert live.command("start flaky") == f"demo backend 'flaky' did not start on port {port}"
    finally:
        live.stop()
    assert refused(url)
