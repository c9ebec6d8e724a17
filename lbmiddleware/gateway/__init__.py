"""The gateway: the ASGI proxy alone, under an HTTP server, configured from ``LB_*`` (one
pool) or from a config file (``serve --config FILE``: routes, each with its own pool).

``python -m lbmiddleware serve`` calls :func:`serve`. The server is chosen by
``LB_SERVER`` [auto]: granian when it is installed, else uvicorn with httptools (and
uvloop when installed). Both run one worker with no access log; measured with
``benchmarks/bench_proxy.py`` on the same middleware, granian serves about 25% more
requests per second (its HTTP layer is native code), so ``auto`` prefers it.

The gateway prints the address it listens on. Under uvicorn it binds the socket itself,
so ``LB_LISTEN=127.0.0.1:0`` gets a port from the OS with no race; granian's worker binds
its own socket, so for port 0 a free port is looked up first and handed to it, and the
address is printed once it accepts connections (probed after granian forked its worker:
no thread of ours is alive across a fork).

Both servers get the same bounds: ``LB_HEADER_TIMEOUT`` for a request head,
``LB_MAX_CONNECTIONS`` client connections (granian's ``backpressure`` leaves more in the
listen backlog; under uvicorn they are answered 503), and ``LB_SHUTDOWN_TIMEOUT`` for
requests in flight after SIGTERM (granian's ``workers_kill_timeout``). uvicorn has no head
timeout and forwards chunked trailers as headers: its protocol
(:func:`~.uvicorn_server.uvicorn_protocol`) adds the one and drops the other.

Logging is configured before the settings are read, in the main process and (granian) in
the worker: one stderr handler, ``TIME LEVEL LOGGER: MESSAGE``, from ``LB_LOG_LEVEL``
[info], the servers' own loggers at warning at least (:func:`logging_config`).

``LB_ADMIN_LISTEN`` adds the admin listener (:class:`AdminServer`: the status app on a port
of its own) to the process that owns the pool. Its address is bound before granian forks and
the worker serves on that very socket, so port 0 is resolved once, printed in the banner, and
never raced for; the main process keeps its copy open (it never accepts on it), so the worker
granian starts again on SIGHUP serves it too, and connections arriving in between wait in
its backlog. It shares the proxy's process, so it is bounded as the proxied port is: a fixed
pool of threads, connections beyond a small backlog closed at once, ``LB_HEADER_TIMEOUT``
for a request head.

A config file (:mod:`.config`: TOML, ``[gateway]``, ``[defaults]``, ``[[route]]``) gives
routes: a path prefix and optionally a ``Host``, each with a pool and middleware of its own
(:mod:`.routes`: the longest prefix wins, a host's route before the host-less one; 404
under none). The ``LB_*`` variables are then not read (but ``LB_LOG_LEVEL``). SIGHUP
re-reads the file in the process that owns the pools, keeping the pools whose settings
changed only in their backends (:class:`RoutesGatewayApp`); under granian ``serve`` forwards
it from granian's main process to the worker, instead of granian's new worker.

The modules, one job each: :mod:`.run` (``serve``: the server chosen, the addresses bound,
the banner, SIGHUP), :mod:`.uvicorn_server` and :mod:`.granian_server` (each server's
setup), :mod:`.app` (the ASGI apps: the proxy, or the routes and their reload, and the
admin listener's lifecycle), :mod:`.config` (the config file), :mod:`.routes` (the router),
:mod:`.admin` (the admin listener), :mod:`.logs` (logging) and :mod:`.listen` (sockets).
Their public names are re-exported here: ``lbmiddleware.gateway:make_app`` and
``:app_from_env`` are what a server is given.
"""

from ..gateway_settings import load_settings
from .admin import AdminServer
from .app import GatewayApp, RoutesGatewayApp, app_from_env, make_app
from .config import ConfigFileError, GatewayConfig, Route, read_config
from .listen import CannotListen, bind, bind_setting
from .logs import LOG_FORMAT, RefusalWarnings, configure_logging, logging_config
from .run import check_libraries, choose_server, serve

__all__ = ["load_settings", "make_app", "app_from_env", "choose_server", "check_libraries",
           "bind", "bind_setting", "serve", "logging_config", "configure_logging", "LOG_FORMAT",
           "GatewayApp", "AdminServer", "CannotListen", "RefusalWarnings", "RoutesGatewayApp",
           "GatewayConfig", "Route", "ConfigFileError", "read_config"]
