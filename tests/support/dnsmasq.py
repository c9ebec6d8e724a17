"""A real DNS server for the discovery tests: Debian's dnsmasq on 127.0.0.1:<a free port>,
authoritative-like for one test domain (``lb.test``), with records the test changes while it
runs.

dnsmasq runs in the foreground as a child of the test (``--keep-in-foreground``), with its own
configuration in a temporary directory and nothing from the machine: no ``/etc/hosts``
(``--no-hosts``), no ``/etc/resolv.conf`` and no upstream (``--no-resolv``), no DHCP (none
configured), no daemon, listening on 127.0.0.1 only (``--bind-interfaces``). ``local=/lb.test/``
makes it answer NXDOMAIN for names it does not hold (rather than REFUSED for want of an
upstream), and ``local-ttl`` gives every answer a TTL of 1 s.

How records change, and why:

- **A and AAAA** live in a hosts file (``--addn-hosts``); :meth:`Dnsmasq.set_addresses`
  rewrites it and sends SIGHUP, on which dnsmasq re-reads its hosts files and clears its cache
  (dnsmasq(8), "NOTES"). The server never stops answering, so a watcher sees the change and
  nothing else. SIGHUP is chosen over ``--hostsdir`` (re-read by inotify) because the test
  then knows when the change was asked for, and it works where inotify does not.
- **SRV** records exist only in the configuration (``--srv-host``), which dnsmasq reads at
  start and never again (SIGHUP does not re-read it), so :meth:`Dnsmasq.set_srv` rewrites it
  and restarts the server on the same port: a gap of some milliseconds, during which a
  question fails fast (ICMP port unreachable on loopback).

Every change waits until the server serves it (it asks, with dnspython, until the answer
matches), so a test never races the server. :meth:`Dnsmasq.stop` and :meth:`Dnsmasq.start`
play an outage.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pathlib
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence

from .ports import restartable_port
from .processes import stop_process

DOMAIN = "lb.test"
DNSMASQ_PATHS = ("/usr/sbin/dnsmasq", "/usr/bin/dnsmasq")

#: One SRV record: (priority, weight, port, target); target "." = service unavailable.
SrvRecord = tuple[int, int, int, str]


def dnsmasq_binary() -> str:
    found = shutil.which("dnsmasq") or next(
        (path for path in DNSMASQ_PATHS if os.access(path, os.X_OK)), None)
    if found is None:
        raise RuntimeError("dnsmasq is not installed: `make test` installs it "
                           "(apt-get install dnsmasq-base)")
    return found


def free_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP (DNS listens on both), kept across
    restarts: below the ephemeral range, so no query sent while the server is down takes it."""
    return restartable_port(udp=True)


class Dnsmasq:
    """One dnsmasq process serving ``lb.test`` from files in ``directory``."""

    def __init__(self, directory: pathlib.Path, *, ttl: int = 1) -> None:
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ttl = ttl
        self.port = free_port()
        self.hosts_file = self.directory / "hosts"
        self.config_file = self.directory / "dnsmasq.conf"
        self.log_file = self.directory / "dnsmasq.log"
        self.addresses: dict[str, list[str]] = {}
        self.srv: dict[str, list[SrvRecord]] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._write_hosts()
        self._write_config()

    @property
    def address(self) -> str:
        """The server as ``LB_DNS_SERVERS`` takes it."""
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- records -----------------------------------------------------------------------------

    def set_addresses(self, name: str, addresses: Sequence[str]) -> None:
        """``name``'s A and AAAA records become ``addresses`` (none: the name is gone,
        NXDOMAIN); served when this returns."""
        self.addresses[name] = [str(ipaddress.ip_address(a)) for a in addresses]
        if not addresses:
            del self.addresses[name]
        self._write_hosts()
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGHUP)
            self._wait_for(lambda: self._served_addresses(name) == set(self.addresses.get(
                name, [])), f"the addresses of {name}")

    def set_srv(self, name: str, records: Sequence[SrvRecord]) -> None:
        """``name``'s SRV records become ``records`` (none: NXDOMAIN); the server restarts
        to read them and serves them when this returns."""
        if records:
            self.srv[name] = list(records)
        else:
            self.srv.pop(name, None)
        self._write_config()
        if self.running:
            self.restart()

    def _write_hosts(self) -> None:
        lines = [f"{address} {name}" for name, addresses in sorted(self.addresses.items())
                 for address in addresses]
        tmp = self.hosts_file.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in lines))
        tmp.replace(self.hosts_file)          # dnsmasq never reads half a file

    def _write_config(self) -> None:
        lines = [
            f"port={self.port}",
            "listen-address=127.0.0.1",
            "bind-interfaces",
            "no-resolv",
            "no-hosts",
            "no-poll",
            f"addn-hosts={self.hosts_file}",
            f"local=/{DOMAIN}/",
            f"local-ttl={self.ttl}",
            "log-facility=-",
            f"user={pwd.getpwuid(os.getuid()).pw_name}",    # root stays root: reads tmp files
        ]
        for name, records in sorted(self.srv.items()):
            for priority, weight, port, target in records:
                lines.append(f"srv-host={name},{target},{port},{priority},{weight}")
        self.config_file.write_text("".join(line + "\n" for line in lines))

    # -- the process -------------------------------------------------------------------------

    def start(self) -> None:
        if self.running:
            return
        try:
            self._start()
        except RuntimeError:
            if self.starts > 1:       # a restart keeps its port: the watchers know it
                raise
            self.port = free_port()   # another process took the free port first: once more
            self._write_config()
            self._start()

    def _start(self) -> None:
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(
            [dnsmasq_binary(), f"--conf-file={self.config_file}", "--keep-in-foreground",
             f"--pid-file={self.directory / 'dnsmasq.pid'}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        self.starts += 1
        self._wait_for(self._answers, "dnsmasq to answer")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_process(process, 5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    # -- asking it ---------------------------------------------------------------------------

    def query(self, name: str, rdtype: str, *, tcp: bool = False):
        import dns.message
        import dns.query
        request = dns.message.make_query(name, rdtype)
        ask = dns.query.tcp if tcp else dns.query.udp
        return ask(request, "127.0.0.1", timeout=0.5, port=self.port)

    def _answers(self) -> bool:
        try:
            self.query(DOMAIN, "SOA", tcp=True)     # refused at once until it listens
        except Exception:
            return False
        return True

    def _served_addresses(self, name: str) -> set[str]:
        served: set[str] = set()
        for rdtype in ("A", "AAAA"):
            response = self.query(name, rdtype)
            for rrset in response.answer:
                served.update(str(ipaddress.ip_address(rr.address)) for rr in rrset)
        return served

    def _wait_for(self, ready, what: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"dnsmasq exited with {self.process.returncode}:\n"
                                   + self.log())
            if ready():
                return
            time.sleep(0.01)
        raise RuntimeError(f"timed out waiting for {what}:\n{self.log()}")


@contextlib.contextmanager
def running_dnsmasq(directory: pathlib.Path, *, ttl: int = 1) -> Iterator[Dnsmasq]:
    server = Dnsmasq(directory, ttl=ttl)
    server.start()
    try:
        yield server
    finally:
        server.close()
