"""Settings: immutable objects filled from keyword arguments or ``LB_*`` variables.

Each component owns the settings it reads, in a class of its own: the Balancer's
:class:`Settings` here, the forwarding settings of every front-end in
:mod:`lbmiddleware.core.forwarding`, the reverse proxy's in :mod:`lbmiddleware.proxy.settings`,
the gateway's server settings in :mod:`lbmiddleware.gateway_settings`. They share one
mechanism, :class:`BaseSettings`: every field declares its environment variable and a
cast (:func:`setting`). The cast accepts the text of a variable or an already typed value,
so ``Settings(max_fails="3")`` and ``Settings(max_fails=3)`` are the same (for a user's type
checker too: each class declares its constructor with what the casts accept, ``CountLike``
and the like, while its fields read back typed), and a bad value in either form raises
:class:`ConfigError` naming the variable (or argument) and the value::

    LB_MAX_FAILS has value 'x': not an integer

A front-end asks :func:`resolve` for its settings: keyword arguments, each given to the
class that owns it (``None``: not given); ready objects (``settings=``); a shared Balancer's
settings, for the Balancer's own; and ``LB_*`` variables for the rest. Every settings
class registers itself when it is defined, so an ``LB_`` name that none of them has is
reported as a probable typo, and the core never imports a front-end to know their names
(``import lbmiddleware`` loads every front-end's settings module: standard library only).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from ..errors import ConfigError
from .backend import Backend, Source, parse_entries
from .casts import (
    BackendsLike,
    CountLike,
    DurationLike,
    FactorLike,
    FlagLike,
    PercentLike,
    RatioLike,
    ServersLike,
    SizeLike,
    StatusesLike,
    format_duration,
    format_size,
    parse_balance_factor,
    parse_count,
    parse_dns_servers,
    parse_duration,
    parse_factor,
    parse_file,
    parse_flag,
    parse_positive_count,
    parse_positive_duration,
    parse_rate,
    parse_ratio,
    parse_size,
    parse_statuses,
)

__all__ = [
    "BaseSettings", "Settings", "FrontEndSettings", "setting", "resolve", "describe",
    "registered", "given", "setting_names", "POLICIES", "POLICY_ALIASES",
    "parse_duration", "parse_positive_duration", "parse_flag", "parse_count",
    "parse_positive_count", "parse_size",
    "BackendsLike", "CountLike", "DurationLike", "FlagLike", "SizeLike",
    "FactorLike", "ServersLike", "StatusesLike", "PercentLike", "RatioLike",
]

POLICIES = ("round_robin", "random", "ip_hash", "latency", "least_conn", "bandwidth")
POLICY_ALIASES = {"weighted": "round_robin", "weighted_round_robin": "round_robin"}

ENV_PREFIX = "LB_"

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

S = TypeVar("S", bound="BaseSettings")

# Every settings class defined so far, in the order defined: an LB_ variable is a typo only
# if none of them has it. Each front-end's settings module adds its class when imported, and
# lbmiddleware/__init__.py imports them all.
_REGISTRY: list[type[BaseSettings]] = []


def setting(env: str, cast: Callable[[Any], Any], help: str, *,
            show: Callable[[Any], str] | None = None) -> dict[str, Any]:
    """Field metadata: the variable's name, its cast and a one-line description. ``show``
    writes the default as a user types it where the cast does not tell (a cast of its own
    around ``parse_duration`` gives ``show=format_duration``; see :func:`_show_default`)."""
    return {"env": env, "cast": cast, "help": help, "show": show}


def _policy(value: Any) -> str:
    name = str(value).strip().lower().replace("-", "_")
    name = POLICY_ALIASES.get(name, name)
    if name not in POLICIES:
        raise ValueError(f"unknown policy (expected one of {', '.join(POLICIES)} or weighted)")
    return name


def _backends(value: Any) -> tuple[Backend | Source, ...]:
    if not isinstance(value, (str, Backend, Source, Iterable)):
        raise ValueError("not a URL, a list of URLs or a comma-separated string")
    try:
        return parse_entries(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _secret(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("not a string")
    return value.strip()


def _budget_ttl(value: Any) -> float:
    """The retry budget's window: 1 s (it counts in one-second slots) to 1 h."""
    seconds = parse_duration(value)
    if not 1.0 <= seconds <= 3600.0:
        raise ValueError("must be from 1s (the budget counts in one-second steps) to 1h")
    return seconds


def _check_path(value: Any) -> str:
    """A health check's path: empty (off), absolute (``/healthz``: not under the backend's
    base path) or relative (``healthz``: appended to it)."""
    if not isinstance(value, str):
        raise ValueError("not a path")
    path = value.strip()
    if "://" in path or path.startswith("//"):
        raise ValueError("a path (such as /healthz), not a URL: every backend is probed")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in path) or "#" in path:
        raise ValueError("not a path (no spaces, control characters or fragment)")
    return path


# -- the mechanism -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BaseSettings:
    """The mechanism every settings class shares: fields declared with :func:`setting`,
    cast and validated on construction, filled from ``LB_*`` by :meth:`from_env`, listed
    by :meth:`describe`. A subclass registers itself, so its variables are known to the
    typo check wherever it is defined."""

    #: Fields that must be given (``from_env``: their variable must be set).
    required: ClassVar[tuple[str, ...]] = ()
    #: Who reads these settings, for the error naming where a misplaced keyword belongs.
    readers: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY.append(cls)

    if not TYPE_CHECKING:       # type checkers see each class's declared __init__ instead
        def __new__(cls, *args: Any, **kwargs: Any) -> BaseSettings:
            # Before the dataclass's __init__ (and so for replace() too): a keyword that is
            # another class's setting raises the TypeError saying where it belongs, as the
            # Balancer and the front-ends do (Settings(retries=1): ForwardingSettings).
            split_options(cls.__name__, (cls,), kwargs)
            return super().__new__(cls)

    def __post_init__(self) -> None:
        for field in _setting_fields(type(self)):
            if getattr(self, field.name) is None:       # None: not given
                object.__setattr__(self, field.name, _default(field))
        for name in self.required:
            value = getattr(self, name)
            if value is None or (isinstance(value, (str, tuple, list)) and not value):
                raise ConfigError(f"{name} is required and is empty")
        for field in _setting_fields(type(self)):
            value = getattr(self, field.name)
            object.__setattr__(self, field.name, _cast(field, value, field.name))
        self._check()

    def _check(self) -> None:
        """Checks across fields, once each field is cast (a subclass's hook)."""

    @classmethod
    def from_env(cls: type[S], environ: Mapping[str, str] | None = None, **overrides: Any) -> S:
        """These settings from ``LB_*`` variables (``os.environ`` by default); keyword
        arguments win.

        Raises :class:`ConfigError` naming the variable and its value for a bad value or a
        missing required variable. An ``LB_`` name that no settings class has is ignored
        with a warning naming the closest setting (a probable typo); a variable the
        platform wrote, not the user, is not reported at all (see :data:`_SERVICE_LINK`).
        """
        overrides = split_options(f"{cls.__name__}.from_env", (cls,), given(overrides))[cls]
        environ = os.environ if environ is None else environ
        warn_unknown_variables(environ)
        values = _env_values(cls, environ, overrides)
        _require(cls, values, overrides)
        return cls(**values, **overrides)

    def replace(self: S, **changes: Any) -> S:
        """A copy with some fields changed (validated like the original; a field given as
        ``None`` goes back to its default)."""
        split_options(f"{type(self).__name__}.replace", (type(self),), changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """``(variable, default, description)`` for every setting, for ``--help`` and docs:
        the default as a user types it (:func:`_show_default`)."""
        rows = []
        for field in _setting_fields(cls):
            default = "(required)" if field.name in cls.required else _show_default(field)
            rows.append((field.metadata["env"], default, field.metadata["help"]))
        return rows


@dataclasses.dataclass(frozen=True)
class Settings(BaseSettings):
    """What the :class:`~lbmiddleware.Balancer` reads: the pool (backends and the sources it
    follows), the policy, passive and active health, slow start, drain and tiers. Validated
    and immutable.

    Fill it from keyword arguments (``Settings(backends=[...], policy="latency")``) or from
    the environment (``Settings.from_env()``). How requests are forwarded (retries,
    timeouts, failure statuses) is each front-end's own:
    :class:`~lbmiddleware.core.forwarding.ForwardingSettings`.
    """

    backends: tuple[Backend | Source, ...] = dataclasses.field(
        default=(),
        metadata=setting("LB_BACKENDS", _backends,
                         "comma-separated entries: a backend URL, optionally followed by "
                         "' weight=N', ' priority=N' or ' backup', or a source to follow: "
                         "dns+http://name:port/base, srv+http://_svc._tcp.name/base, "
                         "etcd://host:2379/prefix"))
    policy: str = dataclasses.field(
        default="round_robin",
        metadata=setting("LB_POLICY", _policy,
                         "round_robin (= weighted) | random | ip_hash | latency | least_conn "
                         "| bandwidth"))
    hash_balance_factor: int = dataclasses.field(
        default=0,
        metadata=setting("LB_HASH_BALANCE_FACTOR", parse_balance_factor,
                         "ip_hash with bounded load: a backend holds at most this percent of "
                         "its fair share of the requests in flight, the rest of its keys "
                         "overflow to their next backend (125-200 typical; 0: off)"))
    max_fails: int = dataclasses.field(
        default=3,
        metadata=setting("LB_MAX_FAILS", parse_count,
                         "consecutive failures that eject a backend (0: never eject)"))
    fail_timeout: float = dataclasses.field(
        default=10.0,
        metadata=setting("LB_FAIL_TIMEOUT", parse_positive_duration,
                         "base ejection time; the k-th ejection in a row lasts k times this"))
    max_ejection_time: float = dataclasses.field(
        default=300.0,
        metadata=setting("LB_MAX_EJECTION_TIME", parse_positive_duration,
                         "cap on one ejection"))
    dns_servers: tuple[str, ...] = dataclasses.field(
        default=(),
        metadata=setting("LB_DNS_SERVERS", parse_dns_servers,
                         "resolvers for dns+ and srv+ sources, comma-separated ip:port "
                         "(IPv6: [::1]:8600; Consul: 127.0.0.1:8600); empty: the system's"))
    dns_min_refresh: float = dataclasses.field(
        default=5.0,
        metadata=setting("LB_DNS_MIN_REFRESH", parse_positive_duration,
                         "shortest time between two resolutions of a DNS source (a TTL "
                         "below it, 0 or unknown: this)"))
    dns_max_refresh: float = dataclasses.field(
        default=300.0,
        metadata=setting("LB_DNS_MAX_REFRESH", parse_positive_duration,
                         "longest time between two resolutions of a DNS source (a TTL "
                         "above it: this)"))
    health_check: str = dataclasses.field(
        default="",
        metadata=setting("LB_HEALTH_CHECK", _check_path,
                         "path every backend is probed with (GET; /healthz: from the root, "
                         "healthz: under the base path); empty: no active health checks"))
    health_check_interval: float = dataclasses.field(
        default=5.0,
        metadata=setting("LB_HEALTH_CHECK_INTERVAL", parse_positive_duration,
                         "time between two probes of one backend (+-10% jitter)"))
    health_check_timeout: float = dataclasses.field(
        default=2.0,
        metadata=setting("LB_HEALTH_CHECK_TIMEOUT", parse_positive_duration,
                         "a probe not answered within this fails"))
    health_check_rise: int = dataclasses.field(
        default=2,
        metadata=setting("LB_HEALTH_CHECK_RISE", parse_positive_count,
                         "passing probes in a row that bring a down backend up"))
    health_check_fall: int = dataclasses.field(
        default=3,
        metadata=setting("LB_HEALTH_CHECK_FALL", parse_positive_count,
                         "failing probes in a row that take an up backend down"))
    health_check_statuses: tuple[tuple[int, int], ...] = dataclasses.field(
        default=((200, 399),),
        metadata=setting("LB_HEALTH_CHECK_STATUSES", parse_statuses,
                         "statuses a probe passes with: statuses and ranges, comma-separated "
                         "(200,204,300-399)"))
    slow_start: float = dataclasses.field(
        default=0.0,
        metadata=setting("LB_SLOW_START", parse_duration,
                         "time over which a joining or returning backend's weight ramps up "
                         "from 10% (0: off)"))
    drain_timeout: float = dataclasses.field(
        default=30.0,
        metadata=setting("LB_DRAIN_TIMEOUT", parse_duration,
                         "longest wait for a removed or drained backend's requests in flight "
                         "before it leaves"))
    overprovisioning: float = dataclasses.field(
        default=1.4,
        metadata=setting("LB_OVERPROVISIONING", parse_factor,
                         "a tier takes all traffic while usable x this >= its members; below, "
                         "the next tiers take the rest (>= 1.0)"))

    retry_budget: float = dataclasses.field(
        default=0.2,
        metadata=setting("LB_RETRY_BUDGET", parse_ratio,
                         "retries allowed per request over LB_RETRY_BUDGET_TTL, beyond the "
                         "minimum (0.2: one per five requests; off: no budget)"))
    retry_budget_min_per_second: float = dataclasses.field(
        default=10.0,
        metadata=setting("LB_RETRY_BUDGET_MIN_PER_SECOND", parse_rate,
                         "retries allowed per second whatever the traffic"))
    retry_budget_ttl: float = dataclasses.field(
        default=10.0,
        metadata=setting("LB_RETRY_BUDGET_TTL", _budget_ttl,
                         "the window the retry budget counts requests and retries over "
                         "(1s to 1h)", show=format_duration))

    sticky_cookie_secret: str = dataclasses.field(
        default="", repr=False,             # a secret: never in a repr or a log line
        metadata=setting("LB_STICKY_COOKIE_SECRET", _secret,
                         "key of the sticky cookie's digest, the same in every process of "
                         "the pool (empty: unkeyed; a value can then be matched to an "
                         "address by hashing guesses)"))
    backend_ca: str = dataclasses.field(
        default="",
        metadata=setting("LB_BACKEND_CA", parse_file,
                         "CA certificates (PEM file) that https backends' certificates are "
                         "verified against, for every front-end and the health checks; "
                         "empty: the system's"))
    backend_verify: bool = dataclasses.field(
        default=True,
        metadata=setting("LB_BACKEND_VERIFY", parse_flag,
                         "verify https backends' certificates and names (false: do not; "
                         "only for tests)"))
    backend_client_cert: str = dataclasses.field(
        default="",
        metadata=setting("LB_BACKEND_CLIENT_CERT", parse_file,
                         "client certificate (PEM file, may hold the key too) sent to https "
                         "backends that ask for one; empty: none"))
    backend_client_key: str = dataclasses.field(
        default="",
        metadata=setting("LB_BACKEND_CLIENT_KEY", parse_file,
                         "the client certificate's private key (PEM file), when not in "
                         "LB_BACKEND_CLIENT_CERT"))

    required: ClassVar[tuple[str, ...]] = ("backends",)
    readers: ClassVar[str] = "the Balancer (lb.Balancer, or the one a front-end builds)"

    if TYPE_CHECKING:
        # What the constructor accepts, for type checkers: each field as its cast takes it.
        # The dataclass's own __init__ runs (its __post_init__ casts); the fields above are
        # what is read back. tests/core/test_settings.py keeps the two lists the same.
        def __init__(self, backends: BackendsLike = ..., policy: str = ...,
                     hash_balance_factor: PercentLike = ..., max_fails: CountLike = ...,
                     fail_timeout: DurationLike = ...,
                     max_ejection_time: DurationLike = ..., dns_servers: ServersLike = ...,
                     dns_min_refresh: DurationLike = ..., dns_max_refresh: DurationLike = ...,
                     health_check: str = ..., health_check_interval: DurationLike = ...,
                     health_check_timeout: DurationLike = ...,
                     health_check_rise: CountLike = ..., health_check_fall: CountLike = ...,
                     health_check_statuses: StatusesLike = ...,
                     slow_start: DurationLike = ..., drain_timeout: DurationLike = ...,
                     overprovisioning: FactorLike = ..., retry_budget: RatioLike = ...,
                     retry_budget_min_per_second: FactorLike = ...,
                     retry_budget_ttl: DurationLike = ..., sticky_cookie_secret: str = ...,
                     backend_ca: str = ...,
                     backend_verify: FlagLike = ..., backend_client_cert: str = ...,
                     backend_client_key: str = ...) -> None: ...

    def _check(self) -> None:
        if self.max_ejection_time < self.fail_timeout:
            raise _out_of_order(self, "fail_timeout", "max_ejection_time")
        if self.dns_min_refresh > self.dns_max_refresh:
            raise _out_of_order(self, "dns_min_refresh", "dns_max_refresh")
        if self.hash_balance_factor and self.policy != "ip_hash":
            logger.warning("LB_HASH_BALANCE_FACTOR (hash_balance_factor) has value %d but the "
                           "policy is %s: it bounds ip_hash's keys only, and is ignored",
                           self.hash_balance_factor, self.policy)
        if self.backend_client_key and not self.backend_client_cert:
            raise ConfigError(f"LB_BACKEND_CLIENT_KEY (backend_client_key) has value "
                              f"{self.backend_client_key!r} but LB_BACKEND_CLIENT_CERT "
                              f"(backend_client_cert) is empty: a key needs its certificate")

    @property
    def static_backends(self) -> tuple[Backend, ...]:
        """The backends listed as such, in order (the sources' come and go at run time)."""
        return tuple(entry for entry in self.backends if isinstance(entry, Backend))

    @property
    def sources(self) -> tuple[Source, ...]:
        """The sources among the entries, in order."""
        return tuple(entry for entry in self.backends if isinstance(entry, Source))


def _out_of_order(settings: BaseSettings, low: str, high: str) -> ConfigError:
    """The error for two durations where ``low`` must not exceed ``high``: both named, by
    variable and field, with their values (a default said to be one), the one the user gave
    first (the other being its default), and what to change either to."""
    fields = {f.name: f for f in _setting_fields(type(settings))}
    values = {name: getattr(settings, name) for name in (low, high)}
    defaults = {name: values[name] == _default(fields[name]) for name in (low, high)}
    first, second = (high, low) if defaults[low] and not defaults[high] else (low, high)
    relation, bound, other = (("smaller", "least", "most") if first == high
                              else ("larger", "most", "least"))

    def named(name: str) -> str:
        return f"{fields[name].metadata['env']} ({name})"

    def env(name: str) -> str:
        return str(fields[name].metadata["env"])

    return ConfigError(
        f"{named(first)} has value {_duration(values[first])}: {relation} than "
        f"{named(second)}, which has value {_duration(values[second])}"
        f"{' (its default)' if defaults[second] else ''}; set {env(first)} to at {bound} "
        f"{_duration(values[second])}, or {env(second)} to at {other} "
        f"{_duration(values[first])}")


def _duration(seconds: float) -> str:
    """Seconds as a setting would be written: ``500ms``, ``1.5s``, ``5m``, ``2h``."""
    if seconds and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


@dataclasses.dataclass(frozen=True)
class FrontEndSettings:
    """The settings one front-end runs with: one object per settings class it reads, the
    Balancer's :class:`Settings` first (a shared Balancer's own, when it has one).

    ``settings[ProxySettings]`` is the object of that class; ``settings.core`` the
    Balancer's. Made by :func:`resolve`; :meth:`replace` sends each change to the class
    that owns the field.
    """

    groups: tuple[BaseSettings, ...]

    def __getitem__(self, cls: type[S]) -> S:
        for group in self.groups:
            if isinstance(group, cls):
                return group
        raise KeyError(f"no {cls.__name__} among these settings")

    def __contains__(self, cls: object) -> bool:
        return isinstance(cls, type) and any(isinstance(group, cls) for group in self.groups)

    def __iter__(self) -> Iterator[BaseSettings]:
        return iter(self.groups)

    @property
    def core(self) -> Settings:
        """The Balancer's settings."""
        return self[Settings]

    def replace(self, **changes: Any) -> FrontEndSettings:
        """A copy with some fields changed, each in the object of the class that owns it."""
        split = split_options("FrontEndSettings.replace", [type(g) for g in self.groups], changes)
        return FrontEndSettings(tuple(group.replace(**split[type(group)]) if split[type(group)]
                                      else group for group in self.groups))

    def describe(self) -> list[tuple[str, str, str]]:
        """``(variable, default, description)`` for every setting of every class here."""
        return describe(*(type(group) for group in self.groups))


def resolve(front_end: str, groups: Sequence[type[BaseSettings]], options: Mapping[str, Any], *,
            shared: Settings | None = None, settings: object = None,
            environ: Mapping[str, str] | None = None,
            from_env: bool | None = None) -> FrontEndSettings:
    """The settings of a front-end that reads the classes ``groups`` (besides the
    Balancer's :class:`Settings`): the one rule every front-end follows.

    * Each keyword of ``options`` goes to the class that owns it; one that none of them
      owns raises ``TypeError`` naming it (and the class it belongs to, if any). A keyword
      given as ``None`` is not given.
    * ``settings``: a ready object of one of these classes, used instead of defaults or
      variables for its class (keywords still win), or a :class:`FrontEndSettings` holding
      several (its objects of classes this front-end does not read are ignored: the
      gateway's settings given to the middleware it runs). Anything else is a
      ``TypeError`` naming what was given and what is accepted.
    * ``shared``: the settings of a shared Balancer (``balancer=``): they are the
      Balancer's settings here, and cannot be given again (:class:`ConfigError`: set them
      on the shared Balancer). The front-end's own classes, those ``settings`` does not
      hold, come from the keywords, else from ``LB_*`` variables (``environ``, by default
      ``os.environ``), else their defaults: front-ends sharing one Balancer may each retry
      or time out differently, and each reads the variables as it would alone.
    * Otherwise, with ``backends`` among the keywords (or a :class:`Settings` in
      ``settings``), keywords alone; without, ``LB_*`` variables with the keywords
      winning, and a missing ``LB_BACKENDS`` is a :class:`ConfigError`. ``from_env``
      forces one way or the other (a ``from_env`` constructor reads the variables even
      when ``backends`` is given).

    Unknown ``LB_`` names are reported once per call that reads variables (see
    :func:`warn_unknown_variables`).
    """
    wanted: tuple[type[BaseSettings], ...] = (Settings, *(g for g in groups if g is not Settings))
    ready = _ready(front_end, wanted, settings)
    split = split_options(front_end, wanted, given(options))
    if shared is not None:
        clash = sorted(split[Settings])
        if clash:
            raise ConfigError(
                f"{', '.join(clash)} given with balancer=: set them on the shared Balancer")
        if Settings in ready and ready[Settings] is not shared:
            raise ConfigError("the Balancer's settings given with balancer=: "
                              "set them on the shared Balancer")
        ready[Settings] = shared
    if from_env is None:
        from_env = shared is not None or (
            Settings not in ready and "backends" not in split[Settings])
    unready = [cls for cls in wanted if cls not in ready]
    values: dict[type[BaseSettings], dict[str, Any]] = {cls: {} for cls in wanted}
    if from_env and unready:
        environ = os.environ if environ is None else environ
        warn_unknown_variables(environ)
        for cls in unready:
            values[cls] = _env_values(cls, environ, split[cls])
        for cls in unready:
            _require(cls, values[cls], split[cls])
    built: list[BaseSettings] = []
    for cls in wanted:
        if cls in ready:
            built.append(ready[cls].replace(**split[cls]) if split[cls] else ready[cls])
        else:
            built.append(cls(**values[cls], **split[cls]))
    return FrontEndSettings(tuple(built))


def given(options: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords of ``options`` that are given: one given as ``None`` is not (so its
    variable or default applies, as for ``WSGILoadBalancer(app, prefix=None)``)."""
    return {name: value for name, value in options.items() if value is not None}


def setting_names(*classes: type[BaseSettings]) -> frozenset[str]:
    """The keyword names of the settings of ``classes``."""
    return frozenset(field.name for cls in classes for field in dataclasses.fields(cls))


def _ready(front_end: str, wanted: Sequence[type[BaseSettings]],
           settings: object) -> dict[type[BaseSettings], BaseSettings]:
    """The ready objects of ``settings`` by the class of ``wanted`` each is; ``TypeError``
    for anything that is neither one of them nor a :class:`FrontEndSettings`."""
    if settings is None:
        return {}
    if isinstance(settings, FrontEndSettings):
        return {cls: group for group in settings for cls in wanted if isinstance(group, cls)}
    home = next((cls for cls in wanted if isinstance(settings, cls)), None)
    if home is None or not isinstance(settings, BaseSettings):
        accepted = " or ".join(cls.__name__ for cls in wanted)
        shown = (f"{type(settings).__name__}(...)" if isinstance(settings, BaseSettings)
                 else f"{_brief(settings)} (a {type(settings).__name__})")
        raise TypeError(f"{front_end}() got settings={shown}: it takes a {accepted}, or a "
                        f"FrontEndSettings holding them (load_settings() gives one); single "
                        f"settings are keyword arguments")
    return {home: settings}


def _brief(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def split_options(front_end: str, groups: Sequence[type[BaseSettings]],
                  options: Mapping[str, Any]) -> dict[type[BaseSettings], dict[str, Any]]:
    """``options`` by the class of ``groups`` that owns each; ``TypeError`` for a keyword
    none of them owns, saying where it belongs (or the name probably meant)."""
    owner: dict[str, type[BaseSettings]] = {}
    for cls in groups:
        for field in dataclasses.fields(cls):
            owner.setdefault(field.name, cls)
    split: dict[type[BaseSettings], dict[str, Any]] = {cls: {} for cls in groups}
    for name, value in options.items():
        home = owner.get(name)
        if home is None:
            raise TypeError(_unexpected(front_end, name, sorted(owner)))
        split[home][name] = value
    return split


def _unexpected(front_end: str, name: str, accepted: list[str]) -> str:
    message = f"{front_end}() got an unexpected keyword argument {name!r}"
    for cls in _REGISTRY:
        fields = {field.name: field for field in dataclasses.fields(cls)}
        if name in fields:
            env = fields[name].metadata.get("env")
            where = f"{cls.__name__}" + (f" ({env})" if env else "")
            return f"{message}: {name} is a setting of {where}, read by {cls.readers}"
    close = difflib.get_close_matches(name, accepted, n=1)
    return message + (f" (did you mean {close[0]}?)" if close else "")


def describe(*classes: type[BaseSettings]) -> list[tuple[str, str, str]]:
    """``(variable, default, description)`` for every setting of ``classes``, in order."""
    return [row for cls in classes for row in cls.describe()]


def registered() -> tuple[type[BaseSettings], ...]:
    """Every settings class defined so far (the core's, and each imported front-end's)."""
    return tuple(_REGISTRY)


def warn_unknown_variables(environ: Mapping[str, str]) -> None:
    """Log a warning for each ``LB_`` variable that is neither a setting of a registered
    class nor a service link.

    A warning, not an error: the variable may be meant for another program or version, and
    a deployment must not fail to start over a name it does not use.
    """
    known = sorted({f.metadata["env"] for cls in registered() for f in _setting_fields(cls)})
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


def _setting_fields(cls: type[BaseSettings]) -> list[dataclasses.Field[Any]]:
    """The fields of a settings class that are read from a variable."""
    return [f for f in dataclasses.fields(cls) if "env" in f.metadata]


def _env_values(cls: type[BaseSettings], environ: Mapping[str, str],
                skip: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``cls`` set in ``environ`` (except those in ``skip``), cast."""
    values: dict[str, Any] = {}
    for field in _setting_fields(cls):
        env = field.metadata["env"]
        if field.name not in skip and env in environ:
            values[field.name] = _cast(field, environ[env], env)
    return values


def _require(cls: type[BaseSettings], values: Mapping[str, Any],
             overrides: Mapping[str, Any]) -> None:
    for name in cls.required:
        if name not in values and name not in overrides:
            env = next(f.metadata["env"] for f in _setting_fields(cls) if f.name == name)
            raise ConfigError(f"{env} is not set: it is required")


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def _cast(field: dataclasses.Field[Any], value: Any, label: str) -> Any:
    try:
        return field.metadata["cast"](value)
    except ValueError as exc:
        raise ConfigError(f"{label} has value {_show(value)}: {exc}") from None
    except (TypeError, OverflowError) as exc:
        # A value of a type the cast does not take (each cast names the usual ones itself).
        raise ConfigError(f"{label} has value {_show(value)}: not a valid value ({exc})") from None


def _show_item(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 2:        # a range of statuses
        return f"{value[0]}-{value[1]}" if value[0] != value[1] else str(value[0])
    return str(value)


# The casts whose defaults are written back in their own unit: --help and the README say
# 10s and 64KB, as a user types them, not 10.0 and 65536.
_SHOWN_AS: dict[Callable[[Any], Any], Callable[[Any], str]] = {
    parse_duration: format_duration, parse_positive_duration: format_duration,
    parse_size: format_size}


def _show_default(field: dataclasses.Field[Any]) -> str:
    """A setting's default as a user types it in its variable, the README's spelling:
    ``10s``, ``64KB``, ``round_robin``, ``false``, ``502,503,504``; ``(off)`` for empty
    text, ``(none)`` for an empty list."""
    value = _default(field)
    show: Callable[[Any], str] | None = (field.metadata.get("show")
                                         or _SHOWN_AS.get(field.metadata["cast"]))
    if show is not None:
        return show(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value or "(off)"
    if isinstance(value, float):
        return f"{value:g}"
    return _show(value)


def _show(value: Any) -> str:
    if isinstance(value, int) and value.bit_length() > 64:     # 10**400: no wall of digits
        return f"{'-' if value < 0 else ''}(an integer of {value.bit_length()} bits)"
    if isinstance(value, frozenset):
        return ",".join(str(v) for v in sorted(value)) or "(none)"
    if isinstance(value, tuple):
        return ",".join(_show_item(v) for v in value) or "(none)"
    return repr(value) if isinstance(value, str) else str(value)
