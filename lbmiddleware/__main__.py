"""``python -m lbmiddleware``: the gateway (``serve``), the demo (``demo``), an etcd
registration (``register``) and ``--version``."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.metadata
import logging
import os
import pathlib
import shutil
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence

from .core.settings import FrontEndSettings, describe
from .errors import ConfigError
from .gateway_settings import GROUPS, GatewaySettings, load_settings, parse_listen

__all__ = ["main"]

PROG = "python -m lbmiddleware"

# Help text wider than this is hard to read, however wide the terminal.
MAX_HELP_WIDTH = 100


def _address(text: str) -> str:
    """An option's ``HOST:PORT``, checked as its variable is, so that argparse names the
    option and the reason (exit status 2)."""
    try:
        parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return text


def _workers(text: str) -> str:
    """``--workers N``, checked as ``LB_WORKERS`` is (a whole number from 1 up)."""
    try:
        GatewaySettings(workers=text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {_reason(exc)}") from None
    return text


def _reason(exc: ConfigError) -> str:
    """A setting's error without the variable's name, which the option stands for."""
    return str(exc).partition(": ")[2] or str(exc)


def _address_or_off(text: str) -> str:
    """An address, or empty: off (``--admin ''`` turns off an ``LB_ADMIN_LISTEN`` set)."""
    return text if not text.strip() else _address(text)


@dataclasses.dataclass(frozen=True)
class _SettingOption:
    """An option of ``serve`` that stands for a setting: given to load_settings() as a
    keyword, so it wins over its variable (which is then not read at all)."""

    flag: str
    field: str
    variable: str
    check: Callable[[str], str]
    help: str
    metavar: str = "HOST:PORT"


# --config FILE (routes) is an option of another kind: a file read instead of the variables,
# not one setting's value (see _serve).
_SETTING_OPTIONS = (
    _SettingOption("--listen", "listen", "LB_LISTEN", _address,
                   "the address to listen on, instead of LB_LISTEN (:8000: every interface)"),
    _SettingOption("--admin", "admin_listen", "LB_ADMIN_LISTEN", _address_or_off,
                   "the admin listener's address, instead of LB_ADMIN_LISTEN ('': off)"),
    _SettingOption("--workers", "workers", "LB_WORKERS", _workers,
                   "worker processes sharing the address, instead of LB_WORKERS (the fast "
                   "server only; each has its own pool state)", "N"),
)


def _version() -> str:
    """What ``--version`` prints: the installed distribution's version (importlib.metadata);
    run from a source tree, not installed, the ``__version__`` its ``__init__.py`` assigns,
    read as setuptools reads it for the distribution (without importing the package: no
    module of it imports the package itself)."""
    try:
        return f"lbmiddleware {importlib.metadata.version('lbmiddleware')}"
    except importlib.metadata.PackageNotFoundError:
        pass
    init = pathlib.Path(__file__).with_name("__init__.py")
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
                and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)):
            return f"lbmiddleware {node.value.value} (not installed)"
    return "lbmiddleware (not installed, version unknown)"


class _VersionAction(argparse.Action):
    """``--version``, looked up only when asked (importlib.metadata reads the installed
    distributions: milliseconds that ``serve`` need not spend)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str = "print the version and exit"
                 ) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(_version())
        parser.exit()


def _wrap(text: str, indent: int = 0) -> list[str]:
    """``text``'s lines as wide as argparse's (the terminal's, at most
    :data:`MAX_HELP_WIDTH`), URLs and hyphenated words kept whole."""
    width = min(MAX_HELP_WIDTH, shutil.get_terminal_size().columns - 2)
    return textwrap.wrap(text, width, initial_indent=" " * indent,
                         subsequent_indent=" " * indent, break_long_words=False,
                         break_on_hyphens=False)


def _settings_help() -> str:
    """Every setting as a user writes it (``LB_FAIL_TIMEOUT=10s``; ``LB_HEALTH_CHECK
    (off)`` when empty), its description wrapped below it."""
    lines = ["settings (environment variables; an option above wins over its variable):"]
    for name, default, help_text in describe(*GROUPS):
        lines.append(f"  {name} {default}" if default.startswith("(") else f"  {name}={default}")
        lines.extend(_wrap(help_text, indent=6))
    return "\n".join(lines)


def _parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The top-level parser and serve's."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Client-side load balancing: a gateway (serve), a demo (demo) and the "
                    "registration of a backend in etcd (register).")
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve", help="run the load-balancing gateway (settings from LB_* variables)",
        description="\n".join(_wrap(
            "Reverse-proxy every request under LB_PREFIX to the LB_BACKENDS pool, on the "
            "gateway's own fast server (or granian or uvicorn: LB_SERVER; with --workers N, "
            "N processes on one port), until interrupted. Settings come from the LB_* "
            "variables below; an option wins over its variable. With --config, routes "
            "(each a path prefix and optionally a host, with its own pool) and settings "
            "come from a TOML file instead, its keys the settings' names in lower case "
            "(retries, max_fails, ...); SIGHUP re-reads it.") + [
            "", "examples:", '  LB_BACKENDS="http://127.0.0.1:8001, http://127.0.0.1:8002" \\',
            "      python -m lbmiddleware serve --listen :8000",
            "  python -m lbmiddleware serve --config gateway.toml"]),
        epilog=_settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--version", action=_VersionAction)
    for option in _SETTING_OPTIONS:
        serve.add_argument(option.flag, dest=option.field, metavar=option.metavar,
                           type=option.check, help=option.help)
    serve.add_argument("--config", metavar="FILE",
                       help="routes and settings from this TOML file ([gateway], [defaults], "
                            "[[route]]); the LB_* variables are then not read, but "
                            "LB_LOG_LEVEL where the file has no log_level; SIGHUP re-reads it")
    # -- demo: listed here, run by lbmiddleware/demo/runner.py's main(argv) (see main below) -----
    commands.add_parser(
        "demo", help="run every policy against three local backends and print a table "
                     "(python -m lbmiddleware demo --help for its options)")
    # -- register: run by lbmiddleware/discovery/registration.py's main(argv) (see main below) -
    commands.add_parser(
        "register", help="register a backend in etcd and keep it there until SIGTERM/SIGINT "
                         "(python -m lbmiddleware register --help for its options)")
    return parser, serve


def _log_level(environ: Mapping[str, str]) -> str:
    """``LB_LOG_LEVEL`` from ``environ``, read before the other settings."""
    only = {name: environ[name] for name in ("LB_LOG_LEVEL",) if name in environ}
    return GatewaySettings.from_env(only).log_level


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; returns the exit status: 2 for a bad option or setting (argparse's
    status for a bad argument), 1 when the gateway cannot listen (or a worker of
    ``--workers`` cannot start), 0 otherwise (``--help`` and ``--version`` too)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        # -- demo: lbmiddleware/demo/runner.py parses its own options (--requests, --policies, ...)
        from .demo import main as demo_main
        return demo_main(argv[1:]) or 0
    if argv[:1] == ["register"]:
        # -- register: lbmiddleware/discovery/registration.py parses its own arguments
        from .discovery.registration import main as register_main
        return register_main(argv[1:])
    parser, serve = _parsers()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:             # said by serve's parser (parse_args would say it at the top)
            serve.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exc:   # --help, --version (0) or a bad option (2): argparse said so
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    """``serve``: the settings (the options winning over their variables), then the
    gateway until interrupted."""
    from .gateway import configure_logging, serve
    from .gateway.fast.workers import WorkerFailed
    try:
        # Logging first (LB_LOG_LEVEL alone), so that the settings' own warnings (a
        # misspelt LB_ name) are logged as every later line is.
        level = _log_level(os.environ)
        configure_logging(level)
        options = {option.field: getattr(args, option.field) for option in _SETTING_OPTIONS}
        if args.config is not None:
            settings: FrontEndSettings = _read_config(args.config, options, level)
        else:
            settings = load_settings(**options)
        serve(settings)
    except ConfigError as exc:  # a bad setting; the chosen server or a source's library missing
        return _error(exc, args, 2)
    except (OSError, WorkerFailed) as exc:  # an address is taken, say (CannotListen names
        return _error(exc, args, 1)         # it); a worker that ended before it served
    except KeyboardInterrupt:
        pass
    return 0


def _read_config(path: str, options: Mapping[str, str | None], log_level: str
                 ) -> FrontEndSettings:
    """``serve --config``: the file's settings (the options winning), logging at its
    ``log_level`` (``log_level``: LB_LOG_LEVEL's, logging's level until now), and one
    WARNING naming the ``LB_*`` variables set that it does not read."""
    from .gateway import configure_logging
    from .gateway.config import ignored_variables, read_config
    config = read_config(path, options=options,
                         log_level=log_level if "LB_LOG_LEVEL" in os.environ else None)
    level = config[GatewaySettings].log_level
    if level != log_level:
        configure_logging(level)
    ignored = ignored_variables(os.environ)
    if ignored:
        logging.getLogger("lbmiddleware.gateway").warning(
            "%s %s set but not read: with --config the settings come from %s (LB_LOG_LEVEL "
            "alone applies, where [gateway] has no log_level)", ", ".join(ignored),
            "is" if len(ignored) == 1 else "are", path)
    return config


def _error(exc: Exception, args: argparse.Namespace, status: int) -> int:
    """Print ``exc`` as argparse prints a bad argument; a variable it names that an option
    set is said to come from that option."""
    given = [f"{option.flag} set {option.variable}" for option in _SETTING_OPTIONS
             if getattr(args, option.field) is not None and option.variable in str(exc)]
    note = f" ({', '.join(given)})" if given else ""
    print(f"{PROG} serve: error: {exc}{note}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
