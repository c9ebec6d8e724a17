"""Settings: one immutable object, filled from keyword arguments or ``LB_*`` variables.

Every field of :class:`Settings` (and of a front-end's subclass) declares its environment
variable and a cast. The cast accepts the text of a variable or an already typed value, so
``Settings(max_fails="3")`` and ``Settings(max_fails=3)`` are the same, and a bad value in
either form raises :class:`ConfigError` naming the variable (or argument) and the value::

    LB_MAX_FAILS has value 'x': not an integer
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import ipaddress
import logging
import math
import os
import re
from typing import Any, Callable, ClassVar, Mapping

from .backend import Backend, parse_backends
from ..errors import ConfigError

__all__ = ["Settings", "setting", "POLICIES", "POLICY_ALIASES", "parse_duration", "parse_flag"]

# Modules declaring the front-ends' settings (standard library only). from_env loads them
# before it calls an LB_ name a typo, so LB_PREFIX set for the gateway is not reported by a
# process that only uses the core.
FRONT_END_SETTINGS = ("lbmiddleware.proxy.settings",)

POLICIES = ("round_robin", "random", "ip_hash", "latency", "least_conn")
POLICY_ALIASES = {"weighted": "round_robin", "weighted_round_robin": "round_robin"}

ENV_PREFIX = "LB_"
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s)?\s*$")

# Kubernetes writes these for every Service in the namespace: <SERVICE>_SERVICE_HOST,
# <SERVICE>_SERVICE_PORT[_<PORT NAME>], <SERVICE>_PORT and
# <SERVICE>_PORT_<N>_<TCP|UDP|SCTP>[_ADDR|_PORT|_PROTO]. A Service named "lb" or
# "lb-<anything>" thus sets LB_ variables that are no setting and no typo. The group is the
# Service's name; a name of the family counts as a link only beside its SERVICE_HOST, so a
# lone LB_LISTEN_PORT is still reported as a typo of LB_LISTEN.
_SERVICE_LINK = re.compile(
    r"^(LB(?:_[A-Z0-9_]+?)??)_(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?"
    r"|PORT(?:_[0-9]+_(?:TCP|UDP|SCTP)(?:_(?:ADDR|PORT|PROTO))?)?)$")

logger = logging.getLogger("lbmiddleware")

# Every Settings class defined so far: an LB_ variable is a typo only if none of them has it,
# so a front-end's variable (LB_PREFIX, say) is not reported by the core's from_env.
_SETTINGS_CLASSES: list[type] = []


def setting(env: str, cast: Callable[[Any], Any], help: str) -> dict:
    """Field metadata: the variable's name, its cast and a one-line description."""
    return {"env": env, "cast": cast, "help": help}


# -- casts: each takes the raw value (text or typed) and returns it typed, or raises
#    ValueError with the reason; Settings turns that into a ConfigError with the name.

def parse_duration(value: Any) -> float:
    """Seconds from ``1.5``, ``"1.5"``, ``"10s"`` or ``"250ms"``; never negative."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError("not a duration (seconds, or a number with 's' or 'ms')")
        seconds = float(match.group(1)) / (1000.0 if match.group(2) == "ms" else 1.0)
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise ValueError("not a non-negative finite duration")
    return seconds


def parse_flag(value: Any) -> bool:
    """A boolean from ``True``/``False`` or ``1/0``, ``true/false``, ``yes/no``, ``on/off``."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("not a boolean (expected true/false, 1/0, yes/no, on/off)")


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds == 0:
        raise ValueError("must be greater than zero")
    return seconds


def _count(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("not an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        number = int(value)
    else:
        raise ValueError("not an integer")
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _policy(value: Any) -> str:
    name = str(value).strip().lower().replace("-", "_")
    name = POLICY_ALIASES.get(name, name)
    if name not in POLICIES:
        raise ValueError(f"unknown policy (expected one of {', '.join(POLICIES)} or weighted)")
    return name


def _statuses(value: Any) -> frozenset[int]:
    items = value.split(",") if isinstance(value, str) else value
    statuses = set()
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        if not text.isdigit() or not 100 <= int(text) <= 599:
            raise ValueError(f"{text!r} is not an HTTP status (100-599)")
        statuses.add(int(text))
    return frozenset(statuses)


def _networks(value: Any) -> tuple:
    items = value.split(",") if isinstance(value, str) else value
    networks = []
    for item in items:
        if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            networks.append(item)
            continue
        text = str(item).strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or CIDR") from None
    return tuple(networks)


def _hash_key(value: Any) -> str:
    text = str(value).strip()
    kind, sep, name = text.partition(":")
    if text == "client_ip" or (sep and kind in ("header", "cookie") and name.strip()):
        return text if text == "client_ip" else f"{kind}:{name.strip()}"
    raise ValueError("expected client_ip, header:NAME or cookie:NAME")


def _backends(value: Any) -> tuple[Backend, ...]:
    try:
        return parse_backends(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every ``LB_*`` setting of the core, validated and immutable.

    Fill it from keyword arguments (``Settings(backends=[...], policy="latency")``) or from
    the environment (``Settings.from_env()``). Front-ends subclass it to add their own
    fields; the same casts, errors and typo detection apply.
    """

    backends: tuple[Backend, ...] = dataclasses.field(
        default=(), metadata=setting("LB_BACKENDS", _backends,
                                     "comma-separated URLs, each optionally followed by ' weight=N'"))
    policy: str = dataclasses.field(
        default="round_robin", metadata=setting("LB_POLICY", _policy,
                                                "round_robin (= weighted) | random | ip_hash | latency | least_conn"))
    max_fails: int = dataclasses.field(
        default=3, metadata=setting("LB_MAX_FAILS", _count,
                                    "consecutive failures that eject a backend (0: never eject)"))
    fail_timeout: float = dataclasses.field(
        default=10.0, metadata=setting("LB_FAIL_TIMEOUT", _positive_duration,
                                       "base ejection time; the k-th ejection in a row lasts k times this"))
    max_ejection_time: float = dataclasses.field(
        default=300.0, metadata=setting("LB_MAX_EJECTION_TIME", _positive_duration,
                                        "cap on one ejection"))
    fail_statuses: frozenset = dataclasses.field(
        default=frozenset({502, 503, 504}), metadata=setting("LB_FAIL_STATUSES", _statuses,
                                                             "response statuses counted as failures"))
    retries: int = dataclasses.field(
        default=2, metadata=setting("LB_RETRIES", _count, "retries on other backends per request"))
    connect_timeout: float = dataclasses.field(
        default=5.0, metadata=setting("LB_CONNECT_TIMEOUT", _positive_duration,
                                      "seconds to open a connection to a backend"))
    read_timeout: float = dataclasses.field(
        default=60.0, metadata=setting("LB_READ_TIMEOUT", _positive_duration,
                                       "seconds to wait for the response head (and between body reads)"))
    trusted_proxies: tuple = dataclasses.field(
        default=(), metadata=setting("LB_TRUSTED_PROXIES", _networks,
                                     "CIDRs whose X-Forwarded-For is believed"))
    hash_key: str = dataclasses.field(
        default="client_ip", metadata=setting("LB_HASH_KEY", _hash_key,
                                              "sticky key for ip_hash: client_ip | header:NAME | cookie:NAME"))

    required: ClassVar[tuple[str, ...]] = ("backends",)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _SETTINGS_CLASSES.append(cls)

    def __post_init__(self) -> None:
        for name in self.required:
            value = getattr(self, name)
            if value is None or (isinstance(value, (str, tuple, list)) and not value):
                raise ConfigError(f"{name} is required and is empty")
        for field in _setting_fields(type(self)):
            value = getattr(self, field.name)
            object.__setattr__(self, field.name, _cast(field, value, field.name))
        if self.max_ejection_time < self.fail_timeout:
            raise ConfigError(
                f"max_ejection_time has value {self.max_ejection_time!r}: "
                f"smaller than fail_timeout ({self.fail_timeout!r})"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Settings from ``LB_*`` variables (``os.environ`` by default); keyword arguments win.

        Raises :class:`ConfigError` naming the variable and its value for a bad value or a
        missing required variable. An ``LB_`` name that no setting has is ignored with a
        warning naming the closest setting (a probable typo); a variable the platform
        wrote, not the user, is not reported at all (see :data:`_SERVICE_LINK`).
        """
        environ = os.environ if environ is None else environ
        _warn_unknown_variables(environ)
        values: dict[str, Any] = {}
        for field in _setting_fields(cls):
            if field.name in overrides:
                continue
            env = field.metadata["env"]
            if env in environ:
                values[field.name] = _cast(field, environ[env], env)
        for name in cls.required:
            if name not in values and name not in overrides:
                env = next(f.metadata["env"] for f in _setting_fields(cls) if f.name == name)
                raise ConfigError(f"{env} is not set: it is required")
        return cls(**values, **overrides)

    @classmethod
    def sharing(cls, shared: "Settings", **options: Any) -> "Settings":
        """The settings of a front-end on a shared Balancer whose settings are ``shared``:
        every field both classes have comes from ``shared``, the front-end's own fields
        from ``options``. The core's settings belong to the shared Balancer: giving one
        here raises :class:`ConfigError`."""
        core = {field.name for field in dataclasses.fields(Settings)}
        clash = sorted(core & set(options))
        if clash:
            raise ConfigError(
                f"{', '.join(clash)} given with balancer=: set them on the shared Balancer")
        if type(shared) is cls and not options:
            return shared
        names = {field.name for field in dataclasses.fields(cls)}
        inherited = {field.name: getattr(shared, field.name)
                     for field in dataclasses.fields(shared) if field.name in names}
        return cls(**{**inherited, **options})

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some fields changed (validated like the original)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """``(variable, default, description)`` for every setting, for ``--help`` and docs."""
        rows = []
        for field in _setting_fields(cls):
            default = "(required)" if field.name in cls.required else _show(field.default)
            rows.append((field.metadata["env"], default, field.metadata["help"]))
        return rows


def _warn_unknown_variables(environ: Mapping[str, str]) -> None:
    """Log a warning for each ``LB_`` variable that is neither a setting nor a service link.

    A warning, not an error: the variable may be meant for another program or version, and
    a deployment must not fail to start over a name it does not use.
    """
    for module in FRONT_END_SETTINGS:
        importlib.import_module(module)
    known = sorted({f.metadata["env"] for c in (Settings, *_SETTINGS_CLASSES)
                    for f in _setting_fields(c)})
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known or _is_service_link(name, environ):
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(known)}"
        logger.warning("%s is not a known setting (%s); it is ignored", name, hint)


def _is_service_link(name: str, environ: Mapping[str, str]) -> bool:
    """Whether Kubernetes wrote ``name`` for a Service (its ``_SERVICE_HOST`` is set too)."""
    link = _SERVICE_LINK.match(name)
    return link is not None and f"{link.group(1)}_SERVICE_HOST" in environ


def _setting_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a Settings class that are read from a variable."""
    return [f for f in dataclasses.fields(cls) if "env" in f.metadata]


def _cast(field: dataclasses.Field, value: Any, label: str) -> Any:
    try:
        return field.metadata["cast"](value)
    except ValueError as exc:
        raise ConfigError(f"{label} has value {_show(value)}: {exc}") from None


def _show(value: Any) -> str:
    if isinstance(value, frozenset):
        return ",".join(str(v) for v in sorted(value)) or "(none)"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "(none)"
    return repr(value) if isinstance(value, str) else str(value)

