"""What do the proxy package's rules cost per request, against the same work written inline?

The fast path (``LB_SERVER=fast``) and the ASGI middleware apply the rules of
``lbmiddleware.proxy`` to every request: the route's prefix (``match_prefix``), the
upstream headers (``BINARY.request_headers``), the body's framing (``BINARY.body_length``),
the target (``join_target``), and on the way back ``RedirectRule.bind`` +
``BINARY.response_headers``. (``BINARY.request`` gives the headers and the length in one pass:
the request rows call it where the package has it, else ``request_headers`` and
``body_length``; sticky keys and cookies are off, the defaults.) Issue 15 measured a minimal
uvloop + httptools proxy at 47 µs of CPU per request with these rules written inline over
httptools' header lists, and at 86 µs with the project's functions. This script measures the
functions alone on typical messages:

* ``GET``: a browser's page load, 12 headers (names lower-cased, as ASGI and the fast path
  hand them), ``Connection: keep-alive``, a cookie, a query;
* ``POST``: an API call with a JSON body's ``Content-Length`` and a bearer token;
* ``response``: a backend's answer, 8 headers as servers spell them (``Content-Type``),
  ``Date``, ``Server``, two ``Set-Cookie``, a relative ``Location``.

Baseline, measured in the same run: the same work written inline in this file for lower-case
bytes names (what a hand-written proxy would do; it handles the typical messages only, and
raises on others), asserted to give exactly the project's output. ``before``: the package as
of ``--before`` (a git revision, default the commit the rewrite started from), imported from
``git show`` into a temporary package beside the current one; skipped without git. Times are
the CPU time of this thread (``time.thread_time_ns``): the machine's other work counts less.

Each contender runs ``--calls`` calls per round, in alternating rounds; the figure is the
median over ``--rounds`` rounds, in ns per message, the cost of an empty call subtracted.
The ratio is to the inline baseline. Target: the current rules <= 1.3 x inline for a whole
exchange (GET + response: what the fast path pays per request); the rows are reported (what
is left of the gap is a few function calls: the prefix, the rules, the target, each a call,
where the inline code is one). Exits 1 when missed.

    python benchmarks/bench_rules.py [--rounds 41] [--calls 500] [--before REV]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lbmiddleware as lb  # noqa: E402
from lbmiddleware import proxy  # noqa: E402
from lbmiddleware.proxy import redirects  # noqa: E402

# The revision the rules were rewritten from for issue 15 (af7d269: the gateway/fast package).
BEFORE = "af7d269"
TARGET = 1.3
PEER = "203.0.113.7"
BACKEND = lb.Backend("http://127.0.0.1:8001")

GET_HEADERS = [
    (b"host", b"shop.example"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"),
    (b"accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"accept-language", b"en-US,en;q=0.5"),
    (b"accept-encoding", b"gzip, deflate, br"),
    (b"connection", b"keep-alive"),
    (b"cookie", b"sid=8f2c1e0a9b; theme=dark; lang=en"),
    (b"upgrade-insecure-requests", b"1"),
    (b"sec-fetch-dest", b"document"),
    (b"sec-fetch-mode", b"navigate"),
    (b"sec-fetch-site", b"same-origin"),
    (b"if-none-match", b'W/"5e1-18f2a"'),
]
GET_TARGET = (b"/products/shoes/42", "/products/shoes/42", b"color=red&size=9")

POST_HEADERS = [
    (b"host", b"api.example"),
    (b"user-agent", b"python-httpx/0.27.0"),
    (b"accept", b"application/json"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"connection", b"keep-alive"),
    (b"content-type", b"application/json"),
    (b"content-length", b"187"),
    (b"authorization", b"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl"),
    (b"x-request-id", b"4bf92f3577b34da6a3ce929d0e0e4736"),
]
POST_TARGET = (b"/v2/orders", "/v2/orders", b"")

RESPONSE_HEADERS = [
    (b"Content-Type", b"text/html; charset=utf-8"),
    (b"Content-Length", b"5123"),
    (b"Date", b"Mon, 07 Dec 2026 15:20:00 GMT"),
    (b"Server", b"uvicorn"),
    (b"Set-Cookie", b"sid=8f2c1e0a9b; Path=/; HttpOnly"),
    (b"Set-Cookie", b"seen=1; Max-Age=3600"),
    (b"Location", b"/products/shoes/42/reviews"),
    (b"Cache-Control", b"private, max-age=0"),
]


# -- the inline baseline ---------------------------------------------------------------------

_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                  b"transfer-encoding", b"upgrade"})
_REQUEST_DROP = _HOP | {b"content-length", b"host", b"x-forwarded-for", b"x-forwarded-proto",
                        b"x-forwarded-host"}
_GUARDED = _REQUEST_DROP | {b"forwarded", b"x-real-ip"}
_RESPONSE_DROP = _HOP | {b"date", b"server"}
_PLAIN_TARGET = re.compile(rb"/[\x21\x22\x24-\x7e]*")


class Unhandled(Exception):
    """A message the inline baseline does not handle (it never sees one here)."""


def inline_request(headers: list[tuple[bytes, bytes]], path: str, raw_path: bytes,
                   query: bytes) -> tuple[list[tuple[bytes, bytes]], int | None, bytes]:
    """The upstream headers, the body's length and the target, written out for lower-case
    bytes names (no trusted peer, Host not preserved, prefix ``/``)."""
    if not path.startswith("/"):
        raise Unhandled(path)
    out = []
    host = forwarded_for = None
    length = 0
    for name, value in headers:
        if name in _REQUEST_DROP:
            if name == b"host":
                if host is None:
                    host = value
            elif name == b"content-length":
                text = value.strip()
                if not (text.isdigit() and text.isascii()) or length and int(text) != length:
                    raise Unhandled(value)
                length = int(text)
            elif name == b"connection":
                if value != b"keep-alive" and value != b"close":
                    raise Unhandled(value)
            elif name != b"x-forwarded-for" or forwarded_for is not None:
                raise Unhandled(name)
            else:
                forwarded_for = value.strip()
            continue
        if 95 in name:                 # b"_" (an int: bytes' `in` is 7x faster with one)
            dashed = name.replace(b"_", b"-")
            if dashed in _GUARDED or dashed.startswith((b"x-forwarded-", b"proxy-")):
                continue
        out.append((name, value))
    values = b"".join([value for _, value in headers])
    if 13 in values or 10 in values or 0 in values:
        raise Unhandled("CR, LF or NUL")
    peer = PEER.encode("latin-1")
    out.append((b"X-Forwarded-For", forwarded_for + b", " + peer if forwarded_for else peer))
    out.append((b"X-Forwarded-Proto", b"http"))
    if host is not None:
        out.append((b"X-Forwarded-Host", host))
    target = raw_path + b"?" + query if query else raw_path
    if not _PLAIN_TARGET.fullmatch(target):
        raise Unhandled(target)
    return out, length, target


def inline_response(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The response's headers for the client: hop-by-hop, Date and Server dropped, a
    Location left alone when relative."""
    out = []
    for name, value in headers:
        lower = name.lower()
        if lower in _RESPONSE_DROP:
            if lower == b"connection" and value not in (b"keep-alive", b"close"):
                raise Unhandled(value)
            if lower == b"transfer-encoding":
                raise Unhandled(value)
            continue
        if (lower == b"location" or lower == b"content-location" or lower == b"refresh") \
                and value.find(b"//") != -1:
            raise Unhandled(value)
        out.append((name, value))
    return out


# -- the project's rules, of a given package --------------------------------------------------

def project_request(package: Any) -> Callable[[list[tuple[bytes, bytes]], str, bytes, bytes],
                                              tuple[list[tuple[bytes, bytes]], int | None,
                                                    bytes]]:
    rules, match_prefix, join_target = (package.BINARY, package.match_prefix,
                                        package.join_target)

    def request(headers: list[tuple[bytes, bytes]], path: str, raw_path: bytes, query: bytes
                ) -> tuple[list[tuple[bytes, bytes]], int | None, bytes]:
        if match_prefix("/", path) is None:
            raise Unhandled(path)
        out = rules.request_headers(headers, peer=PEER, scheme="http", preserve_host=False,
                                    trusted_peer=False)
        return out, rules.body_length(headers), join_target(b"", raw_path, query)

    def in_one_pass(headers: list[tuple[bytes, bytes]], path: str, raw_path: bytes,
                    query: bytes) -> tuple[list[tuple[bytes, bytes]], int | None, bytes]:
        if match_prefix("/", path) is None:
            raise Unhandled(path)
        out, length = rules.request(headers, peer=PEER, scheme="http", preserve_host=False,
                                    trusted_peer=False)
        return out, length, join_target(b"", raw_path, query)
    # HeaderRules.request (headers and body length in one pass) came with issue 15
    return in_one_pass if hasattr(rules, "request") else request


def project_response(package: Any, redirect_module: Any
                     ) -> Callable[[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]],
                                   list[tuple[bytes, bytes]]]:
    rules, rule = package.BINARY, redirect_module.RedirectRule("/", False)

    def response(headers: list[tuple[bytes, bytes]], upstream: list[tuple[bytes, bytes]]
                 ) -> list[tuple[bytes, bytes]]:
        return rules.response_headers(headers, rule.bind(BACKEND, upstream))

    def bound_when_needed(headers: list[tuple[bytes, bytes]],
                          upstream: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return rules.response_headers(headers, rule, BACKEND, upstream)
    # the rule bound only when a header needs it (as Forwarder.response_headers does) came
    # with issue 16
    lazy = "backend" in inspect.signature(rules.response_headers).parameters
    return bound_when_needed if lazy else response


def load_before(revision: str, into: Path) -> tuple[Any, Any] | None:
    """``lbmiddleware.proxy`` and its ``redirects`` as of ``revision``, imported as the
    package ``_lb_before`` from files written under ``into``; None without git or the
    revision."""
    try:
        listed = subprocess.run(
            ["git", "ls-tree", "-r", "--name-only", revision, "lbmiddleware/proxy",
             "lbmiddleware/core", "lbmiddleware/errors.py"],
            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        for name in listed:
            if not name.endswith(".py"):
                continue
            text = subprocess.run(["git", "show", f"{revision}:{name}"], cwd=ROOT,
                                  capture_output=True, check=True).stdout
            target = into / "_lb_before" / Path(name).relative_to("lbmiddleware")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(text)
    except (OSError, subprocess.CalledProcessError):
        return None
    # The package itself without its __init__ (the front-ends): only proxy, core, errors.
    package = types.ModuleType("_lb_before")
    package.__path__ = [str(into / "_lb_before")]
    sys.modules["_lb_before"] = package
    return (importlib.import_module("_lb_before.proxy"),
            importlib.import_module("_lb_before.proxy.redirects"))


# -- timing ------------------------------------------------------------------------------------

def per_call_ns(call: Callable[[], object], calls: int) -> float:
    start = time.thread_time_ns()
    for _ in range(calls):
        call()
    return (time.thread_time_ns() - start) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--before", default=BEFORE, help="git revision of the old rules")
    options = parser.parse_args()

    contenders: dict[str, tuple[Any, Any]] = {"current": (proxy, redirects)}
    with tempfile.TemporaryDirectory() as scratch:
        before = load_before(options.before, Path(scratch))
        if before is None:
            print(f"(no 'before' column: git or revision {options.before} not available)")
        else:
            contenders = {"before": before, **contenders}
        return run(options, contenders)


def run(options: argparse.Namespace, contenders: dict[str, tuple[Any, Any]]) -> int:
    # Each row: name -> {contender: a call of no arguments}; every call's result is checked
    # against the inline one first.
    upstream = proxy.BINARY.request_headers(GET_HEADERS, peer=PEER, scheme="http")
    rows: dict[str, dict[str, Callable[[], object]]] = {}
    for row, headers, (raw, path, query) in (("GET", GET_HEADERS, GET_TARGET),
                                             ("POST", POST_HEADERS, POST_TARGET)):
        calls: dict[str, Callable[[], object]] = {
            "inline": lambda h=headers, p=path, r=raw, q=query: inline_request(h, p, r, q)}
        for name, (package, _) in contenders.items():
            request = project_request(package)
            calls[name] = lambda f=request, h=headers, p=path, r=raw, q=query: f(h, p, r, q)
        rows[row] = calls
    calls = {"inline": lambda: inline_response(RESPONSE_HEADERS)}
    for name, (package, redirect_module) in contenders.items():
        response = project_response(package, redirect_module)
        calls[name] = lambda f=response: f(RESPONSE_HEADERS, upstream)
    rows["response"] = calls
    for row, calls in rows.items():
        expected = calls["inline"]()
        for name, call in calls.items():
            if call() != expected:
                raise SystemExit(f"{row}: {name} differs from the inline baseline:\n"
                                 f"{call()!r}\n{expected!r}")

    empty: Callable[[], object] = lambda: None  # noqa: E731
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(options.rounds):
        for row, calls in rows.items():
            for name, call in calls.items():
                overhead = per_call_ns(empty, options.calls)
                samples.setdefault((row, name), []).append(
                    per_call_ns(call, options.calls) - overhead)
    median = {key: statistics.median(values) for key, values in samples.items()}
    for name in ("inline", *contenders):
        median[("total GET+response", name)] = median[("GET", name)] + median[("response", name)]

    names = [name for name in ("before", "current") if name in contenders]
    header = f"{'ns per message':<22}{'inline':>9}" + "".join(
        f"{name:>10}{'÷ inline':>10}" for name in names)
    print(header)
    print("-" * len(header))
    missed = []
    for row in (*rows, "total GET+response"):
        base = median[(row, "inline")]
        line = f"{row:<22}{base:>9.0f}"
        for name in names:
            ratio = median[(row, name)] / base
            line += f"{median[(row, name)]:>10.0f}{ratio:>9.2f}x"
            if name == "current" and row == "total GET+response" and ratio > TARGET:
                missed.append(row)
        print(line)
    print(f"\nmedian of {options.rounds} rounds of {options.calls} calls, alternating (CPU "
          f"time of this thread); target: current <= {TARGET} x inline for GET + response"
          + (f"; MISSED: {', '.join(missed)}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
