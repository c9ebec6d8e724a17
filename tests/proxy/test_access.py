"""The access log's line (lbmiddleware.proxy.access): logfmt that parses back to what was
logged, whatever the client put in its path."""

from __future__ import annotations

import json
import logging
import re

import pytest

from lbmiddleware.proxy.access import access_line, logfmt_value

pytestmark = pytest.mark.core

FIELDS = ["client", "method", "path", "status", "backend", "attempts", "duration_ms"]

# A logfmt pair: a bare value (no space, quote) or a quoted one with backslash escapes.
_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"]+)(?: |$)')


def parse_logfmt(line: str) -> dict[str, str]:
    """The pairs of a logfmt line, quoted values unescaped (JSON's escapes); fails on
    anything that is not a whole line of pairs."""
    assert "\n" not in line and "\r" not in line
    pairs, end = {}, 0
    for match in _PAIR.finditer(line):
        assert match.start() == end, f"unparsed text at {end}: {line[end:]!r}"
        key, value = match.groups()
        pairs[key] = json.loads(value) if value.startswith('"') else value
        end = match.end()
    assert end == len(line), f"unparsed text at {end}: {line[end:]!r}"
    return pairs


def access_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    """The access lines ``caplog`` holds (INFO on ``lbmiddleware.access``), parsed: what a
    front-end logged (the ``access_log`` fixture captures them)."""
    return [parse_logfmt(r.getMessage()) for r in caplog.records
            if r.name == "lbmiddleware.access" and r.levelno == logging.INFO]


def test_a_plain_request_is_written_bare_in_the_documented_order():
    line = access_line("127.0.0.1", "GET", "/api/x", 200, "http://127.0.0.1:8001", 1, 0.0018)
    assert line == ("client=127.0.0.1 method=GET path=/api/x status=200 "
                    "backend=http://127.0.0.1:8001 attempts=1 duration_ms=1.8")
    assert list(parse_logfmt(line)) == FIELDS


def test_missing_values_are_a_dash():
    line = access_line(None, "GET", "/", 503, None, 0, 0.0)
    assert parse_logfmt(line) == {"client": "-", "method": "GET", "path": "/", "status": "503",
                                  "backend": "-", "attempts": "0", "duration_ms": "0.0"}
    assert "status=- " in access_line("::1", "GET", "/", None, None, 0, 0.0)


@pytest.mark.parametrize("path", [
    "/a b", '/say "hi"', "/x=1", "/back\\slash", "/tab\there", "/new\nline", "/cr\rlf",
    "/nul\x00", "/bell\x07", "/del\x7f", "/nbsp\u00a0", "/sep\u2028", "/caf\u00e9",
    "/emoji\U0001f600", "/private\U000f0000", "", '" fake=1 status=200 "',
])
def test_any_path_parses_back_to_itself_on_one_line(path):
    line = access_line("10.0.0.1", "GET", path, 200, "http://b:1", 2, 0.25)
    assert "\n" not in line and "\r" not in line and line.isprintable()
    parsed = parse_logfmt(line)
    assert parsed["path"] == path
    assert parsed["status"] == "200" and parsed["attempts"] == "2"    # nothing injected


def test_values_are_quoted_only_when_they_must_be():
    assert logfmt_value("/api/x") == "/api/x"
    assert logfmt_value("/caf\u00e9") == "/caf\u00e9"        # printable: kept as it is
    assert logfmt_value("/a b") == '"/a b"'
    assert logfmt_value('/"') == '"/\\""'
    assert logfmt_value("") == '""'
    assert logfmt_value("\x00") == '"\\u0000"'
    assert logfmt_value("\U000f0000") == '"\\udb80\\udc00"'


def test_a_method_with_spaces_cannot_forge_fields():
    line = access_line("1.2.3.4", "GET status=200", "/", 502, "http://b:1", 3, 1.0)
    parsed = parse_logfmt(line)
    assert parsed["method"] == "GET status=200" and parsed["status"] == "502"
