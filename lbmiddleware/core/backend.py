"""Backend: a frozen value naming one replica (base URL, weight, tier, the name it answers
to); Source: a frozen value naming a registry the pool follows (DNS, SRV, etcd); and the
parsing of the entries a pool is configured with, either kind."""

from __future__ import annotations

import dataclasses
import encodings.idna
import ipaddress
import re
import urllib.parse
from collections.abc import Iterable

from ..errors import ConfigError

__all__ = ["Backend", "Source", "parse_backend", "parse_backends", "parse_entries",
           "is_source_text", "dns_host"]

DEFAULT_PORTS = {"http": 80, "https": 443}
ETCD_PORT = 2379

#: A source's URL scheme -> (kind, the scheme of the backends it yields).
SOURCE_SCHEMES = {
    "dns+http": ("dns", "http"), "dns+https": ("dns", "https"),
    "srv+http": ("srv", "http"), "srv+https": ("srv", "https"),
    "etcd": ("etcd", "http"),
}

# The kinds of source a backend URL's scheme may mean, for its error: dns:// is dns+http://.
_SOURCE_NAMES = {"dns": "a DNS source", "srv": "an SRV source"}


def _source_hint(scheme: str) -> str:
    """" (a DNS source is dns+http:// or dns+https://)" for ``scheme`` "dns" (a source's kind
    written as a URL scheme), else ""."""
    heads = [head for head, (kind, _) in SOURCE_SCHEMES.items() if kind == scheme]
    if scheme not in _SOURCE_NAMES or not heads:
        return ""
    return f" ({_SOURCE_NAMES[scheme]} is {' or '.join(f'{head}://' for head in heads)})"


# A DNS name (letters, digits, '-', '_' for SRV-style labels, dots between labels).
_SERVER_NAME = re.compile(r"^[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?$")
# One label of a name: letters, digits, '-' inside, '_' anywhere (_http._tcp: RFC 2782).
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
MAX_LABEL = 63          # octets of one label (RFC 1035, 2.3.4)
MAX_NAME = 253          # characters of a name in text, without the final dot
# Characters IDNA 2003 (Python's codec) maps to others while IDNA 2008 keeps them: 'straße'
# is strasse.de to one and xn--strae-oqa.de to the other, two different names.
# What may not stand raw in a request target: percent-encoded (as UTF-8) in a base path.
_PATH_ESCAPE = re.compile(rb"[\x00-\x20\x7f-\xff]")


def _ascii_path(path: str) -> str:
    """A backend's base path in ASCII, as it goes in the request line: non-ASCII, spaces and
    controls percent-encoded as UTF-8 (``/ä`` is ``/%C3%A4``), what is already percent-encoded
    and the reserved characters kept (the proxy's rule for a request's target)."""
    if path.isascii() and not _PATH_ESCAPE.search(path.encode("ascii")):
        return path
    raw = path.encode("utf-8", "surrogateescape")
    return _PATH_ESCAPE.sub(lambda match: b"%%%02X" % match.group(0)[0], raw).decode("ascii")


_IDNA_DEVIATIONS = "\u00df\u03c2\u200c\u200d"


@dataclasses.dataclass(frozen=True, repr=False)
class Backend:
    """One replica: a base URL (``http`` or ``https``, optional base path), a weight and a
    priority (its tier: 0 first, ``backup`` is 1).

    The URL is normalised (scheme and host lower-cased, default port and trailing ``/``
    dropped), so ``Backend("HTTP://Api:80/v1/")`` and ``Backend("http://api/v1")`` are equal.

    ``server_name`` is the DNS name the replica answers to when the URL holds an address (a
    DNS source sets it): the ``Host`` header and TLS SNI and verification use it (see
    :attr:`authority`, :attr:`tls_server_name`). ``source`` is the entry that produced the
    backend (a source's URL; None for a static one): information, not identity.
    """

    url: str
    weight: int = 1
    priority: int = 0
    _: dataclasses.KW_ONLY
    server_name: str | None = None
    source: str | None = dataclasses.field(default=None, compare=False)
    scheme: str = dataclasses.field(init=False, repr=False, compare=False)
    host: str = dataclasses.field(init=False, repr=False, compare=False)
    port: int = dataclasses.field(init=False, repr=False, compare=False)
    path: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        weight: object = self.weight          # checked: a caller's types are not enforced
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ConfigError(
                f"backend {self.url!r} has weight {self.weight!r}: not a positive integer"
            )
        priority: object = self.priority
        if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
            raise ConfigError(f"backend {self.url!r} has priority {self.priority!r}: "
                              "not a non-negative integer")
        url: object = self.url
        if not isinstance(url, str):
            raise ConfigError(f"backend URL {self.url!r} is not a string")
        text = self.url.strip()
        parts, port = _split_url(text, f"backend URL {self.url!r}")
        scheme = parts.scheme.lower()
        if "://" not in text or not scheme:
            raise ConfigError(
                f"backend URL {self.url!r} has no scheme (expected http:// or https://)")
        if scheme not in DEFAULT_PORTS:
            raise ConfigError(f"backend URL {self.url!r} has scheme {scheme!r}: only http and "
                              f"https{_source_hint(scheme)}")
        if not parts.hostname:
            raise ConfigError(f"backend URL {self.url!r} has no host")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(
                f"backend URL {self.url!r} carries credentials: pass auth per request")
        if parts.query or parts.fragment:
            raise ConfigError(f"backend URL {self.url!r} has a query or fragment: "
                              "only a base path is allowed")
        host = parts.hostname.lower()
        if not host.isascii():          # "http://bücher.example": Host needs its A-labels
            host = dns_host(host, f"backend URL {self.url!r}")
        netloc = f"[{host}]" if ":" in host else host
        if port is not None and port != DEFAULT_PORTS[scheme]:
            netloc += f":{port}"      # "http://a:80" is "http://a": one spelling, one state
        path = _ascii_path(parts.path.rstrip("/"))
        set_ = object.__setattr__
        set_(self, "url", f"{scheme}://{netloc}{path}")
        set_(self, "scheme", scheme)
        set_(self, "host", host)
        set_(self, "port", port if port is not None else DEFAULT_PORTS[scheme])
        set_(self, "path", path)
        if self.server_name is not None:
            set_(self, "server_name", _server_name(self.server_name, self.url))

    def __repr__(self) -> str:
        extra = f", priority={self.priority}" if self.priority else ""
        if self.server_name is not None:
            extra += f", server_name={self.server_name!r}"
        return f"Backend(url={self.url!r}, weight={self.weight}{extra})"

    @property
    def netloc(self) -> str:
        """``host:port`` as it goes in a URL (IPv6 in brackets, default port left out)."""
        return urllib.parse.urlsplit(self.url).netloc

    @property
    def identity(self) -> tuple[str, str, int, str]:
        """What makes two backends the same replica, whatever their weight or spelling."""
        return (self.scheme, self.host, self.port, self.path)

    @property
    def authority(self) -> str:
        """What goes in the ``Host`` header: the server name (else the host, IPv6 in
        brackets), with ``:port`` unless it is the scheme's default."""
        name = self.server_name
        if name is None:
            name = f"[{self.host}]" if ":" in self.host else self.host
        if self.port != DEFAULT_PORTS[self.scheme]:
            return f"{name}:{self.port}"
        return name

    @property
    def tls_server_name(self) -> str:
        """The name TLS sends (SNI) and verifies the certificate against."""
        return self.server_name if self.server_name is not None else self.host


def _split_url(text: str, what: str) -> tuple[urllib.parse.SplitResult, int | None]:
    """``text``'s parts and port, or a :class:`ConfigError` naming ``what`` (the entry) and
    saying what is wrong in our words, not urllib's ("Port could not be cast to integer
    value as '1;http:'")."""
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:
        # urlsplit's own refusals: an unclosed "[", or a host that NFKC turns into "/?#@:"
        reason = ("an IPv6 address's '[' is not closed by ']'" if "[" in text
                  else "its host has characters that stand for '/', '?', '#', '@' or ':'")
        raise ConfigError(f"{what} is not a valid URL: {reason}") from None
    try:
        return parts, parts.port
    except ValueError:
        host = parts.netloc.rpartition("@")[2]
        port = host.rpartition("]")[2] if host.startswith("[") else host
        raise ConfigError(f"{what} is not a valid URL: its port {port.partition(':')[2]!r} "
                          "is not a number from 0 to 65535") from None


def _server_name(value: object, url: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"backend {url!r} has server name {value!r}: not a DNS name")
    name = value.strip().lower().rstrip(".")
    if not _SERVER_NAME.match(name):
        raise ConfigError(f"backend {url!r} has server name {value!r}: not a DNS name")
    return name


def dns_host(host: str, what: str) -> str:
    """``host`` (lower-cased) as it goes in a DNS question, ``Host`` and TLS SNI: an IP
    address as it is; a name checked label by label (1-63 characters: letters, digits, ``-``
    inside, ``_`` for SRV-style labels; at most 253 in all; one final dot allowed), an
    internationalised label turned into its IDNA A-label (``bücher`` -> ``xn--bcher-kva``:
    Python's codec, IDNA 2003, as ``socket`` and ``http.client`` use it). A character the two
    IDNA versions spell differently (``ß``, ``ς``, ZWJ, ZWNJ) is refused: the name would
    depend on the version, so the user writes the A-label. :class:`ConfigError` naming
    ``what`` (the entry) and the reason otherwise."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{what} has host {host!r}: not a valid DNS name ({why})")

    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if not host.isascii():
        odd = [c for c in host if c in _IDNA_DEVIATIONS]
        if odd:
            raise bad(f"{odd[0]!r} is spelt differently by IDNA 2003 and 2008: "
                      "write its ASCII form, xn--...")
        encoded = []
        for label in labels:
            if label.isascii():
                encoded.append(label)
                continue
            try:
                encoded.append(encodings.idna.ToASCII(label).decode("ascii"))
            except UnicodeError as exc:
                raise bad(f"label {label!r} is longer than {MAX_LABEL} characters in its "
                          f"ASCII form" if "too long" in str(exc)
                          else f"label {label!r} has no IDNA form: {exc}") from None
        labels = encoded
    for label in labels:
        if not label:
            raise bad("an empty label")
        if len(label) > MAX_LABEL:
            raise bad(f"label {label[:20]!r}... is longer than {MAX_LABEL} characters")
        if not _LABEL.fullmatch(label):
            raise bad(f"label {label!r}: letters, digits and '-' inside, or '_'")
    ascii_name = ".".join(labels)
    if len(ascii_name) > MAX_NAME:
        raise bad(f"{len(ascii_name)} characters, longer than {MAX_NAME}")
    return ascii_name + ("." if host.endswith(".") else "")


@dataclasses.dataclass(frozen=True, repr=False)
class Source:
    """A registry the pool follows: ``Source("dns+http://orders.internal:8080/base")``.

    * ``dns+http://name:port/base`` (or ``dns+https``): one backend per A/AAAA address of
      ``name``, on ``port`` (the scheme's default if left out), with base path ``/base``;
      ``Host`` and TLS SNI stay ``name`` (an internationalised name in its IDNA ASCII form,
      ``xn--...``: :func:`dns_host`). Options after the URL give every backend of the
      source its ``weight=N`` and ``priority=N`` (``backup``: priority 1).
    * ``srv+http://_service._proto.name/base`` (or ``srv+https``): one backend per SRV
      record; the records give the port, the weight and the priority (no options).
    * ``etcd://host:port/prefix``: the backends registered under the key prefix
      ``prefix/`` (port 2379 if left out; the records give weight and priority).

    Fields: ``url`` (the normalised URL, options left out: what identifies the source and
    what its backends carry as ``source``), ``kind`` (``"dns"``, ``"srv"``, ``"etcd"``),
    ``scheme`` (of the backends: ``http``/``https``), ``host`` (the name, or etcd's host),
    ``port`` (None for SRV), ``path`` (the base path; for etcd the key prefix, ending in
    ``/``), ``weight``, ``priority``. Bad text is a :class:`ConfigError` naming the entry.
    """

    url: str
    kind: str = dataclasses.field(init=False, compare=False)
    scheme: str = dataclasses.field(init=False, compare=False)
    host: str = dataclasses.field(init=False, compare=False)
    port: int | None = dataclasses.field(init=False, compare=False)
    path: str = dataclasses.field(init=False, compare=False)
    weight: int = dataclasses.field(init=False)
    priority: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        entry: object = self.url
        if not isinstance(entry, str):
            raise ConfigError(f"source {entry!r} is not a string")
        url, *options = entry.split() or [""]
        head, sep, _ = url.partition("://")
        kinds = SOURCE_SCHEMES.get(head.lower())
        if not sep or (kinds is None and "+" not in head and head.lower() != "etcd"):
            raise ConfigError(f"{entry!r} is not a source (expected dns+http://, dns+https://, "
                              "srv+http://, srv+https:// or etcd://)")
        if kinds is None:
            raise ConfigError(f"source {url!r} has scheme {head!r}: a source is dns+http://, "
                              "dns+https://, srv+http://, srv+https:// or etcd://")
        kind, scheme = kinds
        parts, port = _split_url(url, f"source {url!r}")
        if not parts.hostname:
            raise ConfigError(f"source {url!r} has no host")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(f"source {url!r} carries credentials")
        if parts.query or parts.fragment:
            raise ConfigError(f"source {url!r} has a query or fragment: only a path is allowed")
        host = dns_host(parts.hostname.lower(), f"source {url!r}")
        netloc = f"[{host}]" if ":" in host else host
        path = parts.path.rstrip("/")
        if kind == "srv":
            if port is not None:
                raise ConfigError(f"source {url!r} has a port: the SRV records give the port")
        elif kind == "etcd":
            port = ETCD_PORT if port is None else port
            netloc += f":{port}"
            prefix = path.strip("/")
            if not prefix:
                raise ConfigError(f"source {url!r} has no key prefix "
                                  "(expected etcd://host:port/services/name)")
            path = "/" + prefix
        else:
            if port is None:
                port = DEFAULT_PORTS[scheme]
            elif port != DEFAULT_PORTS[scheme]:
                netloc += f":{port}"
        weight, priority = _options(url, options, "source", kind == "dns")
        set_ = object.__setattr__
        set_(self, "url", f"{head.lower()}://{netloc}{path}")
        set_(self, "kind", kind)
        set_(self, "scheme", scheme)
        set_(self, "host", host)
        set_(self, "port", port)
        set_(self, "path", path[1:] + "/" if kind == "etcd" else path)
        set_(self, "weight", weight)
        set_(self, "priority", priority)

    @property
    def text(self) -> str:
        """The entry as it would be written: the URL and the options that are not defaults."""
        text = self.url
        if self.weight != 1:
            text += f" weight={self.weight}"
        if self.priority:
            text += f" priority={self.priority}"
        return text

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"Source({self.text!r})"


def _options(url: str, options: list[str], what: str, allowed: bool = True) -> tuple[int, int]:
    """``weight=N``, ``priority=N`` and ``backup`` after an entry's URL."""
    if options and not allowed:
        raise ConfigError(f"{what} {url!r} takes no options ({' '.join(options)}): "
                          "its records decide weight and priority")
    weight, priority = 1, 0
    backup = explicit = False
    for option in options:
        name, sep, value = option.partition("=")
        if name == "backup" and not sep:
            backup = True
            continue
        if "://" in option:             # "http://a:1 http://b:2": two entries
            raise _two_entries(what, [url.split()[0], *options], option)
        if name not in ("weight", "priority") or not sep:
            raise ConfigError(f"{what} {url!r} has unknown option {option!r} "
                              "(expected weight=N, priority=N or backup)")
        try:
            number = int(value)
        except ValueError:
            number = -1
        if name == "weight":
            if number < 1:
                raise ConfigError(
                    f"{what} {url!r} has weight {value!r}: not a positive integer")
            weight = number
        else:
            if number < 0:
                raise ConfigError(
                    f"{what} {url!r} has priority {value!r}: not a non-negative integer")
            priority, explicit = number, True
    if backup:
        if explicit and priority != 1:
            raise ConfigError(f"{what} {url!r} is a backup (priority 1) "
                              f"and has priority={priority}")
        priority = 1
    return weight, priority


def _two_entries(what: str, words: list[str], second: str) -> ConfigError:
    """The error for entries separated by a space, not a comma: ``words`` are the entry's,
    ``second`` the first URL after its own; the comma put back in the suggestion."""
    entries: list[list[str]] = []
    for word in words:
        if "://" in word or not entries:
            entries.append([])
        if word.rstrip(","):
            entries[-1].append(word.rstrip(","))
    texts = [" ".join(entry) for entry in entries]
    if any(word.endswith(",") for word in words):
        # A comma already there: one item of a list (a file's array) holding two entries.
        return ConfigError(f"{what} {' '.join(words)!r} has {second!r} after its URL: an "
                           f"item of a list is one entry (did you mean "
                           f"{', '.join(map(repr, texts))}, each an item?)")
    return ConfigError(f"{what} {' '.join(words)!r} has {second!r} after its URL: entries "
                       f"are separated by commas (did you mean {', '.join(texts)!r}?)")


def is_source_text(text: str) -> bool:
    """Whether an entry's text names a source (``dns+http://...``, ``etcd://...``) rather
    than a backend URL."""
    head, sep, _ = text.strip().partition("://")
    head = head.lower()
    return bool(sep) and ("+" in head or head == "etcd")


def parse_backend(item: str | Backend) -> Backend:
    """A :class:`Backend` from a Backend or ``"URL"`` with options: ``weight=N``,
    ``priority=N``, ``backup`` (priority 1)."""
    if isinstance(item, Backend):
        return item
    if not isinstance(item, str):
        raise ConfigError(f"backend {item!r} is neither a URL string nor a Backend")
    url, *options = item.split() or [""]
    weight, priority = _options(item, options, "backend")
    return Backend(url, weight, priority)


def _entry_items(items: object) -> list[object]:
    """The entries of ``items``, empty ones left out: a trailing comma (``"http://a:1,
    http://b:2,"``), or one left behind by an entry taken out, is no entry."""
    if isinstance(items, str):
        listed: list[object] = list(items.split(","))
    elif isinstance(items, (Backend, Source)):
        listed = [items]
    elif isinstance(items, Iterable):
        listed = list(items)
    else:
        raise ConfigError(f"backends {items!r}: not a URL, a list of URLs or a "
                          "comma-separated string")
    return [item for item in listed if not (isinstance(item, str) and not item.strip())]


def _check_separator(text: str) -> None:
    """A :class:`ConfigError` for ``;`` between two entries (``"http://a:1;http://b:2"``),
    asking for the comma: a ``;`` is a separator when a URL follows it, or when it is in
    the host or port (where no URL has one); in a path it is the path's (``/x;v=1``)."""
    _, sep, tail = text.partition(";")
    authority = text.partition("://")[2].split("/", 1)[0]
    if sep and ("://" in tail or ";" in authority):
        entries = ", ".join(part.strip() for part in text.split(";") if part.strip())
        raise ConfigError(f"backend list entry {text!r} has a ';': entries are separated by "
                          f"commas (did you mean {entries!r}?)")


def parse_entries(items: Iterable[str | Backend | Source] | str | Backend | Source, *,
                  allow_empty: bool = False) -> tuple[Backend | Source, ...]:
    """Static backends and sources from a list (of text, :class:`Backend` and
    :class:`Source` objects) or a comma-separated string, in order; empty entries are no
    entries (a trailing comma); rejects duplicates, a bad entry (naming it) and (unless
    ``allow_empty``) an empty list."""
    result: list[Backend | Source] = []
    seen: dict[object, str] = {}
    for item in _entry_items(items):
        entry: Backend | Source
        if isinstance(item, str):
            text = item.strip()
            _check_separator(text)
            entry = Source(text) if is_source_text(text) else parse_backend(text)
        elif isinstance(item, (Backend, Source)):
            entry = item
        else:
            raise ConfigError(f"backend {item!r} is neither a URL string, a Backend nor a Source")
        identity: object = entry.identity if isinstance(entry, Backend) else entry.url
        if identity in seen:
            raise ConfigError(f"{'backend' if isinstance(entry, Backend) else 'source'} "
                              f"{entry.url!r} is listed twice (as {seen[identity]!r})")
        seen[identity] = entry.url
        result.append(entry)
    if not result and not allow_empty:
        raise ConfigError("backend list is empty: give at least one URL")
    return tuple(result)


def parse_backends(items: Iterable[str | Backend] | str | Backend, *,
                   allow_empty: bool = False) -> tuple[Backend, ...]:
    """Static backends from a list or a comma-separated string; rejects duplicates, sources
    (only the pool that runs them, ``lb.Balancer``, takes those) and (unless
    ``allow_empty``) an empty list."""
    backends: list[Backend] = []
    for entry in parse_entries(items, allow_empty=allow_empty):
        if isinstance(entry, Source):
            raise ConfigError(f"{entry.url!r} is a source: a source needs lb.Balancer "
                              "(a static list takes backend URLs only)")
        backends.append(entry)
    return tuple(backends)
