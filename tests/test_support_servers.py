"""The test servers behave as real servers do where a test's outcome depends on it (each
of these failed a CI run once, on a loaded machine):

* The servers the tests stop and start again on the same port (dnsmasq, etcd, the fleet's
  backends) take a port below the kernel's ephemeral range. A port the OS hands out for
  ``bind(0)`` is in that range, and while its server is down any outgoing connection or UDP
  query may get it as its local port: the restart then fails with "address already in use".
* The loopback backends queue a burst of connections (a listen backlog of a real server's
  size, not socketserver's 5): with 5, a thousand concurrent requests saw connects time out
  while the accepting thread was slow, and retries where the test expected none.
"""

from __future__ import annotations

import pathlib
import socket

from .support.dnsmasq import Dnsmasq
from .support.etcd import EtcdServer
from .support.ports import ephemeral_range, restartable_port
from .support.servers import BackendServer


def below_ephemeral(port: int) -> bool:
    return 1024 <= port < ephemeral_range()[0]


def test_the_ephemeral_range_is_the_kernels():
    low, high = (int(value) for value in pathlib.Path(
        "/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert ephemeral_range() == (low, high)


def test_dnsmasq_and_etcd_restart_on_ports_no_outgoing_socket_can_take(tmp_path):
    etcd = EtcdServer(tmp_path / "etcd")
    ports = [Dnsmasq(tmp_path / "dns").port, etcd.client_port, etcd.peer_port]
    assert all(below_ephemeral(port) for port in ports), ports
    assert len(set(ports)) == 3


def test_a_restartable_port_is_free_on_every_host_for_tcp_and_udp():
    hosts = ("127.0.0.1", "127.0.0.2")
    port = restartable_port(hosts, udp=True)
    assert below_ephemeral(port)
    for host in hosts:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as sock:
                sock.bind((host, port))


def test_a_port_taken_on_one_protocol_is_not_handed_out():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", restartable_port(udp=True)))
        taken = udp.getsockname()[1]
        assert all(restartable_port(udp=True) != taken for _ in range(20))


def test_a_backend_whose_accepting_thread_is_held_queues_a_burst_of_connections():
    server = BackendServer("a").start()
    try:
        with server.lock:           # its accepting thread waits for this after one accept
            sockets = [socket.create_connection(("127.0.0.1", server.port), timeout=0.5)
                       for _ in range(200)]     # each connect completes (queued) or times out
        for sock in sockets:
            sock.close()
    finally:
        server.stop()
