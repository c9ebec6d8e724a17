"""Ports for the test servers that stop and start again on the same port.

A port from ``bind(("127.0.0.1", 0))`` lies in the kernel's ephemeral range, the same range
the kernel draws from for the local end of every outgoing connection and UDP query. While
a server is down for a restart, any such socket (the code under test asking a stopped DNS
server, a pool reconnecting) can get its port, and the restart fails with "address already
in use". :func:`restartable_port` hands out ports below that range, which only an explicit
``bind`` can take.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pathlib
import socket

FIRST = 10000                       # well above the ports services are known by
RANGE_FILE = pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral ports, first and last (Linux's default where unreadable)."""
    try:
        low, high = (int(value) for value in RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def _candidates() -> itertools.cycle[int]:
    ports = list(range(FIRST, ephemeral_range()[0]))
    if not ports:
        raise RuntimeError(f"no ports between {FIRST} and the ephemeral range "
                           f"{ephemeral_range()}: lower {RANGE_FILE}'s first port")
    start = os.getpid() * 7919 % len(ports)      # parallel runs start apart
    return itertools.cycle(ports[start:] + ports[:start])


_next_port = _candidates()


def restartable_port(hosts: tuple[str, ...] = ("127.0.0.1",), *, udp: bool = False) -> int:
    """A port below the ephemeral range, free for TCP (and UDP when ``udp``) on every host
    of ``hosts``; each call hands out a different one, so two servers of one test that are
    given ports before either binds do not get the same."""
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    for port in itertools.islice(_next_port, 2000):
        try:
            with contextlib.ExitStack() as bound:
                for host in hosts:
                    for kind in kinds:
                        sock = bound.enter_context(socket.socket(socket.AF_INET, kind))
                        sock.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port below {ephemeral_range()[0]} free on {', '.join(hosts)}")
