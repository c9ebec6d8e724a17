"""DNS sources: one backend per A/AAAA address (``dns+http://``), one per SRV record target
address (``srv+http://``), refreshed when the answer's TTL runs out.

Both speak DNS through dnspython's asyncio resolver (the ``dns`` extra, imported on the first
question), to ``LB_DNS_SERVERS`` when given (``ip:port`` each: Consul's DNS is usually
``127.0.0.1:8600``), else to the system's resolvers (``/etc/resolv.conf``, its search list
applied). dnspython reads record TTLs, which ``getaddrinfo`` hides, and retries a truncated UDP
answer over TCP, so a 1,000-record SRV answer arrives whole.

What counts as what (SEMANTICS, "Membership from a registry"; Envoy STRICT_DNS):

- NXDOMAIN, or a name without records of the type asked: a *successful empty* answer (the
  source's set empties; a pick then raises ``NoHealthyBackend``).
- A timeout, SERVFAIL, REFUSED, an unreachable server: a *failure* (the last set stays; the
  watcher backs off, :mod:`.watcher`).

**A/AAAA** (:class:`DnsWatcher`): A and AAAA are asked together; every distinct address is one
backend ``scheme://address:port/base`` (IPv6 in brackets), IPv4 first, each in numeric order,
with ``server_name`` = the name (so ``Host`` and TLS SNI stay the name) and the source's
``weight`` and ``priority``. Refresh after the smaller TTL of the two answers. An address in
place of the name (``dns+http://10.0.0.5:8080``) is its own answer, asked of nobody.

*One family failing* (a resolver or middlebox that drops or refuses AAAA questions, still met
in corporate networks): when one question fails (timeout, SERVFAIL, REFUSED) and the other is
answered, the answer is the fresh addresses of the family that answered plus the *last known*
addresses of the one that failed (none if it never answered), and its TTL is the answered
family's. The source is not failing (no ``SourceFailed``, no back-off): it fails only when
both questions fail. The partial failure is logged once (WARNING, naming the family, the
reason and what is kept) and once when that family answers again (INFO); meanwhile the
source's status shows it: ``last_error``/``last_error_at`` in ``source_stats()`` while
``failing_since`` stays None, and ``SourceStatus.partial``. An NXDOMAIN to either question
is the name gone: an empty set, whatever the other question did. The same rule holds for
each SRV target resolved by asking.

**SRV** (:class:`SrvWatcher`, RFC 2782): each record's target is resolved to its addresses
(from the answer's additional section when the server put the target's address records there,
as dnsmasq, Consul and CoreDNS do; otherwise by asking A and AAAA of the same resolvers), and
each address gives one backend on the record's port:

- *priority -> tier*: the distinct priorities of the answer, lowest first, become tiers 0, 1,
  2, ... (``Backend.priority``). Ranking rather than copying the number keeps a source's best
  records in tier 0 beside static backends: Consul publishes priority 1 on every record, which
  copied would make the whole service a backup tier.
- *weight -> weight*: ``max(weight, 1)``. Backend weights are positive integers, so a record of
  weight 0 gets the smallest share a policy can express, the share of a weight-1 record and
  never more (SEMANTICS); a tier whose weights are all 0 is thus equally weighted (RFC 2782).
- a record whose target is ``.`` is the service declaring itself unavailable: it gives no
  backend (an answer holding only such records is an empty set). A target with no addresses
  (NXDOMAIN) gives none either; that is not a failure.
- ``server_name`` is the service's domain, the name after the ``_service._proto.`` labels
  (``_http._tcp.orders.service.consul`` -> ``orders.service.consul``): the name clients
  address the service by and its certificate is issued for, unlike the per-node targets.
  A name without such labels is its own server name: Consul answers SRV for
  ``orders.service.consul`` too, which names the service (its RFC 2782 form,
  ``_orders._tcp.service.consul``, would leave ``service.consul``).
- the same address and port in two records is one backend: the lower priority, then the higher
  weight wins.
- refresh after the smallest TTL among the SRV records and the target addresses used.
"""

from __future__ import annotations

import abc
import asyncio
import ipaddress
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..core.backend import Backend, Source
from ..core.casts import format_duration, parse_dns_servers
from ..errors import ConfigError, needs_extra
from .status import SourceStatus
from .watcher import Answer, PollingWatcher, Sleep, SourceError

if TYPE_CHECKING:
    from ..core.settings import Settings

__all__ = ["DnsWatcher", "SrvWatcher", "parse_server", "DEFAULT_TIMEOUT", "DEFAULT_LIFETIME"]

logger = logging.getLogger(__name__)

FAMILIES = ("A", "AAAA")

DEFAULT_TIMEOUT = 2.0      # seconds one server has to answer one try (dnspython's default)
# Seconds one question may take over every try and server: below the pool's first-answer
# wait (fleet/pool.py's FIRST_ANSWER_TIMEOUT, 5 s), so that a server down at start is a
# failure known (logged, in source_stats(), in a pick's error) before the pool stops waiting.
# (dnspython's default lifetime, 5 s, would end just after it.)
DEFAULT_LIFETIME = 4.0
TARGET_QUERIES = 32        # SRV targets resolved at once, at most

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
BackendKey = tuple[Address, int, int, int, str | None]    # address, port, weight, priority, name


def parse_server(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8600"`` -> ``("127.0.0.1", 8600)``; ``"[::1]:53"`` -> ``("::1", 53)``;
    no port: 53. The rules of ``LB_DNS_SERVERS``
    (:func:`~lbmiddleware.core.casts.parse_dns_servers`, which the settings apply first: an
    ambiguous ``::1:8600`` is refused there and here)."""
    try:
        [server] = parse_dns_servers([text]) or [""]
    except ValueError as exc:
        raise ConfigError(f"DNS server {text!r}: {exc}") from None
    host, _, port = server.rpartition(":")
    if not host:
        raise ConfigError(f"DNS server {text!r} is not ip:port")
    return host.strip("[]"), int(port)


class _DnsSource(PollingWatcher):
    """What both DNS watchers share: the resolver, and turning dnspython's exceptions into
    empty answers or failures."""

    kind = ""

    def __init__(self, source: Source | str, settings: Settings, *,
                 rng: random.Random | None = None,
                 timer: Callable[[], float] = time.monotonic,
                 sleep: Sleep | None = None,
                 timeout: float = DEFAULT_TIMEOUT,
                 lifetime: float = DEFAULT_LIFETIME) -> None:
        source = source if isinstance(source, Source) else Source(source)
        if source.kind != self.kind:
            raise ConfigError(f"{type(self).__name__} follows {self.kind}+http(s):// sources, "
                              f"not {source.url!r}")
        super().__init__(SourceStatus(source.url, source.kind),
                         min_refresh=settings.dns_min_refresh,
                         max_refresh=settings.dns_max_refresh, rng=rng, timer=timer,
                         sleep=sleep)
        self.source = source
        self.servers = tuple(parse_server(server) for server in settings.dns_servers)
        self.timeout = timeout
        self.lifetime = lifetime
        self._resolver: Any = None
        self._built: dict[BackendKey, Backend] = {}       # the last answer's backends
        self._building: dict[BackendKey, Backend] = {}
        # (name, "A" | "AAAA") -> the family's last answered addresses, and the error of each
        # family whose question fails while the other's is answered (module docstring).
        self._known: dict[tuple[str, str], list[Address]] = {}
        self._partial: dict[tuple[str, str], str] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source.url!r})"

    def describe_servers(self) -> str:
        if not self.servers:
            return "the system's resolvers"
        return ", ".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                         for host, port in self.servers)

    def resolver(self) -> Any:
        """dnspython's asyncio resolver for the configured servers (made on first use)."""
        if self._resolver is None:
            with needs_extra(__name__):
                import dns.asyncresolver
                import dns.nameserver
                import dns.resolver
            if self.servers:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port)
                                        for host, port in self.servers]
            else:
                try:
                    resolver = dns.asyncresolver.Resolver()
                except dns.resolver.NoResolverConfiguration as exc:
                    raise SourceError(f"no DNS servers: LB_DNS_SERVERS is empty and the "
                                      f"system has none ({exc})") from exc
            resolver.timeout = self.timeout
            resolver.lifetime = self.lifetime
            resolver.cache = None          # every refresh asks the servers
            self._resolver = resolver
        return self._resolver

    async def resolve(self, name: str, rdtype: str) -> Any:
        """dnspython's answer to one question (its ``rrset`` None when there are no records),
        None for NXDOMAIN; :class:`SourceError` on a failure."""
        resolver = self.resolver()          # first: it names the extra if dnspython is missing
        import dns.exception
        import dns.resolver
        try:
            # The system's search list applies to the system's resolvers only: dnspython
            # would otherwise append this host's domain for the configured ones.
            return await resolver.resolve(name, rdtype, search=not self.servers,
                                          raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return None
        except dns.resolver.NoNameservers as exc:
            raise SourceError(f"{rdtype} {name}: {_why(exc)}") from exc
        except dns.exception.Timeout as exc:
            raise SourceError(f"{rdtype} {name}: timeout after {_seconds(exc)} asking "
                              f"{self.describe_servers()}") from exc
        except dns.exception.DNSException as exc:
            raise SourceError(f"{rdtype} {name}: {exc}") from exc

    async def addresses(self, name: str) -> tuple[list[Address], float | None]:
        """The A and AAAA addresses of ``name`` (asked together) and their smaller TTL.

        A family whose question fails while the other's is answered keeps its last known
        addresses (none before its first answer): the partial failure rule of the module
        docstring. :class:`SourceError` only when both fail; an NXDOMAIN to either is the
        name gone (an empty list, whatever the other says)."""
        results = await asyncio.gather(self.resolve(name, "A"), self.resolve(name, "AAAA"),
                                       return_exceptions=True)
        failures: dict[str, Exception] = {}
        answers: dict[str, Any] = {}
        for family, result in zip(FAMILIES, results, strict=True):
            if isinstance(result, Exception):
                failures[family] = result
            elif isinstance(result, BaseException):     # cancelled: the watcher stops
                raise result
            elif result is None:                        # NXDOMAIN: no such name at all
                for known in FAMILIES:
                    self._known.pop((name, known), None)
                return [], None
            else:
                answers[family] = result
        if not answers:
            raise SourceError("; ".join(str(exc) for exc in failures.values())) from (
                failures["A"])
        found: list[Address] = []
        ttl: float | None = None
        for family in FAMILIES:
            if family in answers:
                rrset = answers[family].rrset
                addresses = ([ipaddress.ip_address(rr.address) for rr in rrset]
                             if rrset is not None else [])
                if addresses:
                    ttl = _min_ttl(ttl, float(rrset.ttl))
                self._known[(name, family)] = addresses
                self._answered_again(name, family)
            else:
                addresses = self._known.get((name, family), [])
                self._partly_failed(name, family, failures[family], addresses)
            found.extend(addresses)
        return found, ttl

    def _partly_failed(self, name: str, family: str, error: Exception,
                       kept: list[Address]) -> None:
        """One family's question failed and the other's was answered: say so once (WARNING)
        and in the status (``last_error``, ``partial``), keep the source up."""
        other = "AAAA" if family == "A" else "A"
        known = (f" and the {len(kept)} last known {family} address"
                 f"{'' if len(kept) == 1 else 'es'}" if kept else
                 f"; no {family} addresses known yet")
        text = f"{error} ({other} answered: the source keeps its fresh {other} addresses{known})"
        status = self.status
        status.last_error = text
        status.last_error_at = self._timer()
        if (name, family) not in self._partial:
            logger.warning("DNS source %s: %s", self.source.url, text)
        self._partial[(name, family)] = text
        status.partial = "; ".join(self._partial.values())

    def _answered_again(self, name: str, family: str) -> None:
        """The family's question is answered again: said at the level of its failure
        (WARNING), so that whoever saw the failure sees its end."""
        if self._partial.pop((name, family), None) is not None:
            logger.warning("DNS source %s: %s %s answered again", self.source.url, family, name)
            self.status.partial = "; ".join(self._partial.values()) or None

    def backend(self, address: Address, port: int, weight: int, priority: int,
                server_name: str | None) -> Backend:
        """The backend at ``address:port``; the same object as the last answer's when it is
        unchanged (building a Backend parses its URL: a 1,000-record answer every second
        would spend a third of its time there)."""
        key = (address, port, weight, priority, server_name)
        backend = self._built.get(key)
        if backend is None:
            host = f"[{address}]" if address.version == 6 else str(address)
            source = self.source
            backend = Backend(f"{source.scheme}://{host}:{port}{source.path}", weight,
                              priority, server_name=server_name, source=source.url)
        self._building[key] = backend
        return backend

    async def ask(self) -> Answer:
        self._building = {}
        answer = await self.answer()
        self._built, self._building = self._building, {}
        return answer

    @abc.abstractmethod
    async def answer(self) -> Answer:
        """One answer of the source (``ask`` keeps the backends built for the next one)."""


class DnsWatcher(_DnsSource):
    """Follows ``dns+http(s)://name:port/base``: one backend per A/AAAA address of ``name``."""

    kind = "dns"

    async def answer(self) -> Answer:
        source = self.source
        server_name: str | None = source.host
        try:
            found: list[Address] = [ipaddress.ip_address(source.host)]    # no name to ask
            ttl, server_name = None, None
        except ValueError:
            found, ttl = await self.addresses(source.host)
        port = source.port
        assert port is not None           # a dns+ source always has one (the default)
        return Answer(tuple(self.backend(address, port, source.weight, source.priority,
                                         server_name)
                            for address in _ordered(found)), ttl)


class SrvWatcher(_DnsSource):
    """Follows ``srv+http(s)://_service._proto.name/base``: one backend per address of each
    SRV record's target, on the record's port, its priority ranked into a tier."""

    kind = "srv"

    @property
    def server_name(self) -> str:
        """The service's domain: the source's name after its ``_service._proto.`` labels."""
        labels = self.source.host.split(".")
        while len(labels) > 1 and labels[0].startswith("_"):
            labels.pop(0)
        return ".".join(labels)

    async def answer(self) -> Answer:
        answer = await self.resolve(self.source.host, "SRV")
        if answer is None:
            return Answer(())                                # NXDOMAIN
        rrset = answer.rrset
        records = [rr for rr in (rrset or ()) if len(rr.target) > 1]     # "." = unavailable
        if not records:
            return Answer((), float(rrset.ttl) if rrset is not None else None)
        targets = {rr.target.to_text(omit_final_dot=True).lower() for rr in records}
        addresses, ttl = await self.target_addresses(targets, answer.response)
        tiers = {priority: tier
                 for tier, priority in enumerate(sorted({rr.priority for rr in records}))}
        server_name = self.server_name
        chosen: dict[str, tuple[int, int, Address, int, Backend]] = {}
        for rr in sorted(records, key=lambda rr: (rr.priority, -rr.weight)):
            tier = tiers[rr.priority]
            for address in addresses[rr.target.to_text(omit_final_dot=True).lower()]:
                backend = self.backend(address, rr.port, max(rr.weight, 1), tier,
                                       server_name)
                if backend.url not in chosen:        # lowest priority, then highest weight
                    chosen[backend.url] = (tier, address.version, address, rr.port, backend)
        return Answer(tuple(row[-1] for row in sorted(chosen.values())),
                      _min_ttl(float(rrset.ttl), ttl))

    async def target_addresses(self, targets: Iterable[str], response: Any
                               ) -> tuple[dict[str, list[Address]], float | None]:
        """Each target's distinct addresses, in order, and their smallest TTL: from the
        answer's additional section when the server put the target's address records there
        (RFC 2782, "Additional Data"), else asked of the resolvers (A and AAAA, at most
        ``TARGET_QUERIES`` targets at a time)."""
        import dns.rdatatype
        extra: dict[str, list[Address]] = {}
        ttl: float | None = None
        for rrset in response.additional:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                name = rrset.name.to_text(omit_final_dot=True).lower()
                if name in targets:
                    extra.setdefault(name, []).extend(
                        ipaddress.ip_address(rr.address) for rr in rrset)
                    ttl = _min_ttl(ttl, float(rrset.ttl))
        missing = [target for target in targets if target not in extra]
        limit = asyncio.Semaphore(TARGET_QUERIES)

        async def ask(target: str) -> tuple[list[Address], float | None]:
            async with limit:
                return await self.addresses(target)

        for target, (found, target_ttl) in zip(
                missing, await asyncio.gather(*(ask(t) for t in missing)), strict=True):
            extra[target] = found
            ttl = _min_ttl(ttl, target_ttl)
        return {target: _ordered(found) for target, found in extra.items()}, ttl


def _ordered(addresses: Iterable[Address]) -> list[Address]:
    """Distinct addresses, IPv4 first, each family in numeric order."""
    return sorted(set(addresses), key=lambda address: (address.version, address))


def _min_ttl(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _seconds(exc: Exception) -> str:
    """How long dnspython asked (measured: to three digits), as the settings spell it."""
    timeout = getattr(exc, "kwargs", {}).get("timeout")
    if not isinstance(timeout, (int, float)):
        return "the lifetime"
    return format_duration(timeout, digits=3)


def _why(exc: Exception) -> str:
    """What the servers said, from dnspython's NoNameservers: "REFUSED from
    Do53:127.0.0.1@53", one entry per distinct server and reason."""
    reasons: list[str] = []
    # dnspython's errors: (server, tcp, port, the rcode's text or the exception, response)
    for error in getattr(exc, "kwargs", {}).get("errors") or ():
        failure = error[3]
        why = str(failure) or type(failure).__name__
        reason = f"{why} from {error[0]}"
        if reason not in reasons:
            reasons.append(reason)
    return "; ".join(reasons) if reasons else str(exc)
