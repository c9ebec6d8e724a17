"""``python -m lbmiddleware``: the gateway (``serve``), the demo (``demo``) and an etcd
registration (``register``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from .core.settings import describe
from .errors import ConfigError
from .gateway_settings import GROUPS, GatewaySettings, load_settings

__all__ = ["main"]


def _settings_help() -> str:
    rows = describe(*GROUPS)
    width = max(len(name) for name, _, _ in rows)
    lines = ["settings (environment variables):"]
    for name, default, help_text in rows:
        lines.append(f"  {name:<{width}}  {help_text} [{default}]")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lbmiddleware",
        description="Client-side load balancing: a gateway (serve), a demo (demo) and the "
                    "registration of a backend in etcd (register).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser(
        "serve", help="run the load-balancing gateway (settings from LB_* variables)",
        description="Reverse-proxy every request under LB_PREFIX to the LB_BACKENDS pool, "
                    "under granian or uvicorn (LB_SERVER), until interrupted.\n\n"
                    'example: LB_BACKENDS="http://127.0.0.1:8001, http://127.0.0.1:8002" '
                    "python -m lbmiddleware serve",
        epilog=_settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    # -- demo: listed here, run by lbmiddleware/demo/runner.py's main(argv) (see main below) -----
    commands.add_parser(
        "demo", help="run every policy against three local backends and print a table "
                     "(python -m lbmiddleware demo --help for its options)")
    # -- register: run by lbmiddleware/discovery/registration.py's main(argv) (see main below) -
    commands.add_parser(
        "register", help="register a backend in etcd and keep it there until SIGTERM/SIGINT "
                         "(python -m lbmiddleware register --help for its options)")
    return parser


def _log_level(environ: Mapping[str, str]) -> str:
    """``LB_LOG_LEVEL`` from ``environ``, read before the other settings."""
    only = {name: environ[name] for name in ("LB_LOG_LEVEL",) if name in environ}
    return GatewaySettings.from_env(only).log_level


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; returns the exit status (2 for a bad setting, like a bad argument)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        # -- demo: lbmiddleware/demo/runner.py parses its own options (--requests, --policies, ...)
        from .demo import main as demo_main
        return demo_main(argv[1:]) or 0
    if argv[:1] == ["register"]:
        # -- register: lbmiddleware/discovery/registration.py parses its own arguments
        from .discovery.registration import main as register_main
        return register_main(argv[1:])
    _parser().parse_args(argv)          # serve (no options of its own), --help
    from .gateway import configure_logging, serve
    try:
        # Logging first (LB_LOG_LEVEL alone), so that the settings' own warnings (a
        # misspelt LB_ name) are logged as every later line is.
        configure_logging(_log_level(os.environ))
        settings = load_settings()
    except ConfigError as exc:
        print(f"python -m lbmiddleware serve: error: {exc}", file=sys.stderr)
        return 2
    try:
        serve(settings)
    except ConfigError as exc:      # the chosen server, or a source's library, is missing
        print(f"python -m lbmiddleware serve: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:          # an address is taken, say (CannotListen names it)
        print(f"python -m lbmiddleware serve: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
