"""The gateway's routes from a TOML file: ``python -m lbmiddleware serve --config FILE``.

::

    [gateway]                   # the server: GatewaySettings' keys (listen, admin_listen, ...)
    listen = "127.0.0.1:8000"

    [defaults]                  # any pool, forwarding or proxy key, for every route
    retries = 1

    [[route]]
    prefix = "/api"
    host = "api.example.com"    # optional: the request's Host, port ignored
    backends = ["http://127.0.0.1:8001", "http://127.0.0.1:8002 weight=2"]
    policy = "latency"

    [[route]]
    name = "auth"               # optional: the pool's name on the admin port (else the prefix)
    prefix = "/auth"
    backends = ["dns+http://accounts.internal:8080"]

A key is a setting's keyword name (``max_fails``, ``sticky_cookie``, ``strip_prefix``...)
and takes what the keyword takes: TOML's numbers, booleans and arrays, or the text an
``LB_`` variable would hold (``"10s"``, ``"64KB"``). A file path (``tls_cert``,
``backend_ca``...) is relative to the file's folder. A route's own keys are ``prefix``
[``/``], ``host`` and ``name``; ``backends`` may come from ``[defaults]``, each route still
getting its own pool. ``[gateway]`` takes one key of its own: ``watch = true`` reloads the
file when it changes (checked every second), as SIGHUP does.

With ``--config`` the settings come from the file alone, as nginx's and Envoy's do: the
``LB_*`` variables are not read (one WARNING names each that is set), except
``LB_LOG_LEVEL``, which applies where ``[gateway]`` has no ``log_level`` (it is read before
the file, so the file's own errors are logged as every later line). ``--listen`` and
``--admin`` win over the file, as they win over the variables.

A bad file is a :class:`ConfigFileError` (a ``ConfigError``: exit status 2) that names the
file, the line and the key: TOML's own errors, unknown keys (with the closest known one),
keys in the wrong table, and every value the settings refuse, in the settings' own words::

    gateway.toml:12: route "/api": max_fails has value 'x': not an integer

The same errors on a reload (SIGHUP) keep the running configuration, with a WARNING.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import ipaddress
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..core.casts import parse_file, parse_flag
from ..core.forwarding import ForwardingSettings
from ..core.settings import BaseSettings, FrontEndSettings, Settings
from ..errors import ConfigError
from ..gateway_settings import GatewaySettings
from ..proxy.settings import ProxySettings
from .tls import check_backend_files

__all__ = ["GatewayConfig", "Route", "ConfigFileError", "read_config", "parse_config",
           "ignored_variables", "file_stamp", "POOL_GROUPS", "ROUTE_KEYS", "GATEWAY_KEYS"]

#: The settings classes of one route's pool and proxy: what ``[defaults]`` and a
#: ``[[route]]`` hold.
POOL_GROUPS: tuple[type[BaseSettings], ...] = (Settings, ForwardingSettings, ProxySettings)
#: A route's own keys besides the settings (``prefix`` is ProxySettings').
ROUTE_KEYS = ("name", "host", "prefix")
#: ``[gateway]``'s own keys besides GatewaySettings': ``watch`` (reload on a change).
GATEWAY_KEYS = ("watch",)
_TABLES = ("gateway", "defaults", "route")


class ConfigFileError(ConfigError):
    """A config file that cannot be used: ``path``, ``line`` (1-based; None when the file
    could not be read), ``where`` (``[defaults]``, ``route "/api"``...) and ``key`` (None
    when the error is not one key's)."""

    def __init__(self, path: str, line: int | None, where: str, message: str,
                 key: str | None = None) -> None:
        self.path = path
        self.line = line
        self.where = where
        self.key = key
        self.reason = message
        place = path if line is None else f"{path}:{line}"
        super().__init__(f"{place}: {where}: {message}" if where else f"{place}: {message}")


@dataclasses.dataclass(frozen=True)
class Route:
    """One ``[[route]]``: requests under ``prefix`` (and, with ``host``, for that ``Host``)
    go to its own pool, built from ``settings`` (the Balancer's, the forwarding and the
    proxy settings; ``settings[ProxySettings].prefix`` is ``prefix``). ``name`` names the
    pool on the admin port; ``line`` is where the route starts in the file."""

    name: str
    prefix: str
    host: str | None
    settings: FrontEndSettings
    line: int


@dataclasses.dataclass(frozen=True)
class GatewayConfig(FrontEndSettings):
    """The gateway's settings read from a config file: what the server reads (``groups``:
    the :class:`GatewaySettings` of ``[gateway]``, and a :class:`ProxySettings` whose
    ``access_log`` is on when any route's is, for the server's own lines) and the
    ``routes``, longest prefix first (a host-specific route before a host-less one of the
    same prefix). ``path`` is the file, read again on a reload with the same ``options``
    (the command line's ``[gateway]`` keys) and ``log_level`` (``LB_LOG_LEVEL``)."""

    path: str = ""
    routes: tuple[Route, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    log_level: str | None = None
    #: ``[gateway] watch``: reload when the file changes (checked every second), as on SIGHUP.
    watch: bool = False
    #: The file as it was read: (device, inode, mtime in ns, size); None when not from a file.
    stamp: tuple[int, int, int, int] | None = None

    def replace(self, **changes: Any) -> GatewayConfig:
        plain = super().replace(**changes)
        return dataclasses.replace(self, groups=plain.groups)


def read_config(path: str, *, options: Mapping[str, Any] | None = None,
                log_level: str | None = None) -> GatewayConfig:
    """The file at ``path`` read and checked (:func:`parse_config`); a file that cannot be
    read is a :class:`ConfigFileError` too."""
    try:
        with open(path, "rb") as file:
            stamp = file_stamp(os.fstat(file.fileno()))
            data = file.read()
    except OSError as exc:
        raise ConfigFileError(path, None, "", f"cannot read the config file: "
                              f"{exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigFileError(path, line, "", "not UTF-8 text (TOML files are UTF-8)"
                              ) from None
    config = parse_config(text, path, options=options, log_level=log_level)
    return dataclasses.replace(config, stamp=stamp)


def file_stamp(stat: os.stat_result) -> tuple[int, int, int, int]:
    """What tells a file's versions apart: device, inode (a file replaced by a rename, as
    editors and Kubernetes' ConfigMap volumes do), modification time in ns and size."""
    return (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)


def parse_config(text: str, path: str = "gateway.toml", *,
                 options: Mapping[str, Any] | None = None,
                 log_level: str | None = None) -> GatewayConfig:
    """The configuration in ``text`` (the file ``path``: named in errors, and the folder
    relative file paths start from). ``options``: ``[gateway]`` keys given on the command
    line (``--listen``, ``--admin``: they win; None is not given); ``log_level``: the
    ``LB_LOG_LEVEL`` that applies when ``[gateway]`` has none. Raises
    :class:`ConfigFileError`."""
    reader = _Reader(text, path)
    data = reader.load()
    for name in data:
        if name not in _TABLES:
            raise reader.error(reader.top_line(name), "", _unknown_table(name, data[name]),
                               name)
    gateway, watch = _gateway(reader, reader.table(data, "gateway"), options or {}, log_level)
    defaults = _check_keys(reader, reader.table(data, "defaults"), _Place("defaults"),
                           defaults=True)
    routes = [_route(reader, number, table, defaults)
              for number, table in enumerate(reader.routes(data))]
    if not routes:
        raise reader.error(None, "", "no [[route]]: a gateway needs at least one (prefix and "
                                     "backends)")
    _check_unique(reader, routes)
    access_log = any(route.settings[ProxySettings].access_log for route in routes)
    ordered = sorted(routes, key=lambda r: (-len(r.prefix), r.host is None))
    return GatewayConfig(groups=(ProxySettings(access_log=access_log), gateway),
                         path=path, routes=tuple(ordered),
                         options=tuple((k, v) for k, v in (options or {}).items()
                                       if v is not None),
                         log_level=log_level, watch=watch)


def ignored_variables(environ: Mapping[str, str]) -> list[str]:
    """The settings' ``LB_`` variables set in ``environ`` that a gateway started with
    ``--config`` does not read (all but ``LB_LOG_LEVEL``), sorted."""
    known = {field.metadata["env"] for cls in (*POOL_GROUPS, GatewaySettings)
             for field in dataclasses.fields(cls) if "env" in field.metadata}
    return sorted(name for name in environ if name in known and name != "LB_LOG_LEVEL")


# -- the tables ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Place:
    """A table of the file: ``kind`` gateway, defaults or route (``number``: the route's
    index among the ``[[route]]`` tables)."""

    kind: str
    number: int = 0
    label: str = ""

    def __str__(self) -> str:
        if self.kind == "route":
            return self.label or f"[[route]] #{self.number + 1}"
        return f"[{self.kind}]"


def _fields(*classes: type[BaseSettings]) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for cls in classes for f in dataclasses.fields(cls) if "env" in f.metadata}


_GATEWAY_FIELDS = _fields(GatewaySettings)
_POOL_FIELDS = _fields(*POOL_GROUPS)
_ENV_NAMES = {f.metadata["env"]: name for name, f in {**_GATEWAY_FIELDS, **_POOL_FIELDS}.items()}


def _gateway(reader: _Reader, table: Mapping[str, Any], options: Mapping[str, Any],
             log_level: str | None) -> tuple[GatewaySettings, bool]:
    """``[gateway]``: the server's settings, and ``watch`` (the file's own key)."""
    place = _Place("gateway")
    values = _check_keys(reader, table, place)
    watch: bool = values.pop("watch", False)
    given = {name: value for name, value in options.items() if value is not None}
    values.update(given)
    if "log_level" not in values and log_level is not None:
        values["log_level"] = log_level
    try:
        return GatewaySettings(**values), watch
    except ConfigError as exc:
        key = _named_key(str(exc), values)
        if key in given or key is None:
            raise       # an option's (argparse checked its form) or no key's: not the file's
        raise reader.error(reader.key_line(place, key), str(place), str(exc), key) from None


def _route(reader: _Reader, number: int, table: Mapping[str, Any],
           defaults: Mapping[str, Any]) -> Route:
    place = _Place("route", number, _route_label(table))
    line = reader.route_line(number)
    own = _check_keys(reader, table, place)
    name = own.pop("name", None)
    host = own.pop("host", None)
    if "backends" not in own and "backends" not in defaults:
        raise reader.error(line, str(place), "no backends: set backends in the route (or in "
                                             "[defaults])", "backends")
    values = {**defaults, **own}
    groups = []
    for cls in POOL_GROUPS:
        known = _fields(cls)
        mine = {k: v for k, v in values.items() if k in known}
        try:
            groups.append(cls(**mine))
        except ConfigError as exc:
            key = _named_key(str(exc), mine)
            origin = place if key is None or key in own else _Place("defaults")
            raise reader.error(reader.key_line(origin, key) or line, str(place), str(exc),
                               key) from None
    settings = FrontEndSettings(tuple(groups))
    try:
        check_backend_files(settings.core)
    except ConfigError as exc:
        message = str(exc)
        for variable, field in _TLS_VARIABLES.items():
            message = message.replace(variable, field)
        key = _named_key(message, values)
        origin = place if key is None or key in own else _Place("defaults")
        raise reader.error(reader.key_line(origin, key) or line, str(place), message,
                           key) from None
    prefix = settings[ProxySettings].prefix
    if name is None:
        name = prefix if host is None else f"{host}{prefix}"
    return Route(name=name, prefix=prefix, host=host, settings=settings, line=line)


# The backend TLS files' variables, as their errors name them, and their keys in the file.
_TLS_VARIABLES = {"LB_BACKEND_CLIENT_CERT": "backend_client_cert",
                  "LB_BACKEND_CLIENT_KEY": "backend_client_key", "LB_BACKEND_CA": "backend_ca"}


def _route_label(table: Mapping[str, Any]) -> str:
    """How errors name a route: by its name, else its host and prefix, as written."""
    name, host, prefix = (table.get(key) for key in ("name", "host", "prefix"))
    if isinstance(name, str) and name.strip():
        return f'route "{name.strip()}"'
    shown = (host if isinstance(host, str) else "") + (prefix if isinstance(prefix, str)
                                                       else "/")
    return f'route "{shown}"'


def _check_unique(reader: _Reader, routes: Sequence[Route]) -> None:
    names: dict[str, Route] = {}
    places: dict[tuple[str | None, str], Route] = {}
    for number, route in enumerate(routes):
        place = _Place("route", number, f'route "{route.name}"')
        first = places.get((route.host, route.prefix))
        if first is not None:
            host = f" and host {route.host!r}" if route.host else " and no host"
            raise reader.error(reader.key_line(place, "prefix") or route.line, str(place),
                               f"the prefix {route.prefix!r}{host} of the route at line "
                               f"{first.line}: one of them would never be used", "prefix")
        places[(route.host, route.prefix)] = route
        first = names.get(route.name)
        if first is not None:
            raise reader.error(reader.key_line(place, "name") or route.line, str(place),
                               f"name {route.name!r} is the route's at line {first.line}: "
                               f"each route's pool needs a name of its own", "name")
        names[route.name] = route


def _check_keys(reader: _Reader, table: Mapping[str, Any], place: _Place, *,
                defaults: bool = False) -> dict[str, Any]:
    """``table``'s keys checked for ``place``: each known there, each value one its cast
    takes (a file path made relative to the file's folder). The values as given, but for
    those paths and a route's host."""
    if place.kind == "gateway":
        known = _GATEWAY_FIELDS
    else:
        known = _POOL_FIELDS
    values: dict[str, Any] = {}
    for key, value in table.items():
        line = reader.key_line(place, key)
        if place.kind == "route" and key in ("name", "host"):
            try:
                values[key] = _route_name(value) if key == "name" else _host(value)
            except ValueError as exc:
                raise reader.error(line, str(place), f"{key} has value {_show(value)}: {exc}",
                                   key) from None
            continue
        if place.kind == "gateway" and key == "watch":
            try:
                values[key] = parse_flag(value)
            except ValueError as exc:
                raise reader.error(line, str(place), f"{key} has value {_show(value)}: {exc}",
                                   key) from None
            continue
        field = known.get(key)
        if field is None or (defaults and key in ROUTE_KEYS):
            raise reader.error(line, str(place), _unknown_key(key, place, defaults), key)
        if isinstance(value, Mapping):
            raise reader.error(line, str(place), f"{key} has a table as its value: "
                               "not a valid value", key)
        cast = field.metadata["cast"]
        if cast is parse_file and isinstance(value, str) and value.strip():
            value = os.path.join(os.path.dirname(os.path.abspath(reader.path)),
                                 value.strip())
        try:
            cast(value)
        except (ValueError, TypeError, OverflowError) as exc:
            raise reader.error(line, str(place), f"{key} has value {_show(table[key])}: {exc}",
                               key) from None
        except ConfigError as exc:
            raise reader.error(line, str(place), f"{key}: {exc}", key) from None
        values[key] = value
    return values


def _unknown_key(key: str, place: _Place, defaults: bool) -> str:
    """Why ``key`` is not one of ``place``'s, and what was probably meant."""
    if place.kind == "gateway" and key in _POOL_FIELDS:
        return f"{key} is a setting of each route's pool: put it in [defaults] or a [[route]]"
    if place.kind != "gateway" and (key in _GATEWAY_FIELDS or key in GATEWAY_KEYS):
        return f"{key} is the server's setting: put it in [gateway]"
    if defaults and key in ROUTE_KEYS:
        return f"{key} is a route's own key: put it in each [[route]]"
    meant = _ENV_NAMES.get(key.upper())
    if meant is not None:
        return (f"unknown key {key!r}: {key.upper()} is the variable's name; in the file "
                f"the key is {meant}")
    known = sorted({*_GATEWAY_FIELDS, *GATEWAY_KEYS} if place.kind == "gateway" else
                   {*_POOL_FIELDS, *(ROUTE_KEYS if place.kind == "route" else ())})
    close = difflib.get_close_matches(key, known, n=1) or difflib.get_close_matches(
        key.lower().replace("-", "_"), known, n=1)
    if close:
        return f"unknown key {key!r} (did you mean {close[0]}?)"
    return f"unknown key {key!r} (the keys of {place.kind and _table_name(place)} are: " \
           f"{', '.join(known)})"


def _table_name(place: _Place) -> str:
    return "[[route]]" if place.kind == "route" else f"[{place.kind}]"


def _unknown_table(name: str, value: object) -> str:
    if name in _POOL_FIELDS:
        return f"{name} at the top of the file: put it in [defaults] or a [[route]]"
    if name in _GATEWAY_FIELDS:
        return f"{name} at the top of the file: put it in [gateway]"
    close = difflib.get_close_matches(name, _TABLES, n=1)
    kind = "table" if isinstance(value, (Mapping, list)) else "key"
    hint = f"did you mean {'[[route]]' if close == ['route'] else f'[{close[0]}]'}?" \
        if close else "the file has [gateway], [defaults] and [[route]] tables"
    return f"unknown {kind} {name!r} ({hint})"


def _named_key(message: str, values: Iterable[str]) -> str | None:
    """The first of ``values``' keys that ``message`` names (a settings class's error names
    the field, or its variable then the field in parentheses)."""
    keys = set(values)
    return next((word for word in re.findall(r"[a-z][a-z0-9_]*", message) if word in keys),
                None)


def _show(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value).lower() \
        if isinstance(value, bool) else str(value)


_HOST_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def _host(value: object) -> str:
    """A route's ``host``: a host name or an IP address, without port, in lower case."""
    if not isinstance(value, str):
        raise ValueError("not a host name (a string such as 'api.example.com')")
    text = value.strip().lower().rstrip(".")
    if text.startswith("[") and text.endswith("]"):
        try:
            ipaddress.IPv6Address(text[1:-1])
        except ValueError:
            raise ValueError(f"{text!r} is not an IPv6 address") from None
        return text
    if text.count(":") == 1 or "/" in text:
        raise ValueError("a host name without port or path (the request's port is ignored)")
    if "*" in text:
        raise ValueError("no wildcards: one route per host name")
    if not text or not all(_HOST_LABEL.fullmatch(label) for label in text.split(".")):
        if ":" in text:
            try:
                ipaddress.IPv6Address(text)
            except ValueError:
                pass
            else:
                return f"[{text}]"      # as a Host header writes it
        raise ValueError("not a host name or IP address")
    return text


def _route_name(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("not a name (a non-empty string)")
    return value.strip()


# -- the text: TOML, and where each key is -----------------------------------------------

_HEADER = re.compile(r"\s*(\[\[?)\s*([^\[\]]*?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"""\s*("(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_-]+)\s*(?:\.|=)""")
_AT_LINE = re.compile(r"\s*\(at line (\d+), column \d+\)\s*$")
_AT_END = re.compile(r"\s*\(at end of document\)\s*$")


class _Reader:
    """The file's text: parsed with tomllib (tomli before Python 3.11), and scanned for the
    line of each key of each table, which tomllib does not give."""

    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
        self._keys: dict[tuple[str, int, str], int] = {}
        self._tables: dict[tuple[str, int], int] = {}
        self._top: dict[str, int] = {}
        self._line_keys: dict[int, str] = {}
        self._duplicate: tuple[int, str] | None = None
        self._scan()

    def error(self, line: int | None, where: str, message: str,
              key: str | None = None) -> ConfigFileError:
        return ConfigFileError(self.path, line if line is not None else 1, where, message, key)

    def load(self) -> dict[str, Any]:
        toml = _toml()
        try:
            data: dict[str, Any] = toml.loads(self.text)
            return data
        except toml.TOMLDecodeError as exc:
            message = str(exc.args[0] if exc.args else exc)
            line = getattr(exc, "lineno", None)
            found = _AT_LINE.search(message)
            if line is None and found:
                line = int(found.group(1))
            message = _AT_END.sub("", _AT_LINE.sub("", message))
            key = None
            if line is None and self._duplicate is not None:
                line, key = self._duplicate
                message += f" ({key} is given twice)"
            elif line is not None:
                key = self._key_on(line)
            if line is None:
                line = self.text.count("\n") + 1
            where = f"{key}: " if key else ""
            raise ConfigFileError(self.path, line, "", f"{where}not valid TOML: {message}",
                                  key) from None

    def table(self, data: Mapping[str, Any], name: str) -> dict[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            raise self.error(self.top_line(name), "", f"{name} must be a table: [{name}]",
                             name)
        return value

    def routes(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        value = data.get("route", [])
        if isinstance(value, dict):
            raise self.error(self.top_line("route"), "[route]",
                             "routes are an array of tables: write [[route]] (two brackets)",
                             "route")
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(self.top_line("route"), "", "route must be tables: [[route]]",
                             "route")
        return value

    def top_line(self, name: str) -> int | None:
        return self._top.get(name)

    def route_line(self, number: int) -> int:
        return self._tables.get(("route", number), 1)

    def key_line(self, place: _Place, key: str | None) -> int | None:
        """The line of ``key`` in ``place`` (None when not written there); with no key, the
        table's header."""
        if key is None:
            return self._tables.get((place.kind, place.number))
        return self._keys.get((place.kind, place.number, key))

    def _key_on(self, line: int) -> str | None:
        return self._line_keys.get(line)

    def _scan(self) -> None:
        """Note the line of every table header and every key, skipping the lines inside
        multi-line strings (a key written in a string is none)."""
        table: tuple[str, int] = ("", 0)
        routes = 0
        seen: set[tuple[str, int, str]] = set()
        closing: str | None = None          # inside a multi-line string ending with this
        for number, line in enumerate(self.text.splitlines(), 1):
            if closing is not None:
                if _closes(line, closing):
                    closing = None
                continue
            header = _HEADER.match(line)
            if header and not _KEY.match(line):
                names = [_unquote(part.strip()) for part in header.group(2).split(".")]
                name = names[0]
                if header.group(1) == "[[" and name == "route" and len(names) == 1:
                    table = ("route", routes)
                    routes += 1
                elif len(names) > 1:
                    # [route.health]: the key health of the last route (of the table), at
                    # this line; its own keys are none of the route's.
                    index = max(routes - 1, 0) if name == "route" else 0
                    self._keys.setdefault((name, index, names[1]), number)
                    self._line_keys.setdefault(number, names[1])
                    table = (".".join(names), index)
                else:
                    table = (name, 0)
                self._tables.setdefault(table, number)
                self._top.setdefault(name, number)
                continue
            key = _KEY.match(line)
            if key:
                name = _unquote(key.group(1))
                where = (table[0], table[1], name)
                if table[0] == "":
                    self._top.setdefault(name, number)
                if where in seen and self._duplicate is None:
                    self._duplicate = (number, name)
                seen.add(where)
                self._keys.setdefault(where, number)
                self._line_keys[number] = name
                if table[0] == "" and name == "route":
                    self._inline_routes(number)
                closing = _opens(line[key.end():])

    def _inline_routes(self, first: int) -> None:
        """``route = [{...}, {...}]`` from line ``first``: the line of each inline table (a
        route: TOML writes each on one line) and of its keys, as ``[[route]]`` tables'."""
        depth, braces, routes = 0, 0, 0
        lines = self.text.splitlines()
        for number in range(first, len(lines) + 1):
            line = lines[number - 1]
            at = line.index("=") + 1 if number == first else 0
            while at < len(line):
                char = line[at]
                if char in "\"'":        # a string: skipped (a basic one's escapes too)
                    end = at + 1
                    while end < len(line) and line[end] != char:
                        end += 2 if char == '"' and line[end] == "\\" else 1
                    at = end + 1
                    continue
                if char == "#":
                    break
                if char == "[":
                    depth += 1
                elif char == "]":
                    depth -= 1
                    if depth == 0:
                        return
                elif char == "{":
                    braces += 1
                    if depth == 1 and braces == 1:
                        self._tables.setdefault(("route", routes), number)
                        routes += 1
                elif char == "}":
                    braces -= 1
                if braces == 1 and char in "{,":
                    key = _KEY.match(line, at + 1)
                    if key and routes:
                        self._keys.setdefault(("route", routes - 1, _unquote(key.group(1))),
                                              number)
                at += 1


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def _opens(value: str) -> str | None:
    """The delimiter of a multi-line string that ``value`` (a key's value) opens and does
    not close on its line, else None."""
    for quotes in ('"""', "'''"):
        start = value.find(quotes)
        if start != -1 and value.lstrip().startswith(quotes):
            return None if _closes(value[start + 3:], quotes) else quotes
    return None


def _closes(text: str, quotes: str) -> bool:
    return quotes in text


def _toml() -> Any:
    """tomllib, or tomli before Python 3.11 (the gateway extra installs it)."""
    name = "tomllib" if sys.version_info >= (3, 11) else "tomli"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        raise ConfigError("reading a config file needs tomli before Python 3.11: "
                          "pip install 'lbmiddleware[gateway]'") from None
