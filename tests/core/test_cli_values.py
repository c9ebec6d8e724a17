"""What ``python -m lbmiddleware serve`` shows and reads, as values: each default written as a
user types it (``describe()``, the README's spelling), durations in every unit, a clear "must
not be negative", and ``:8000`` meaning every interface. The process itself (exit status,
``--help``, ``--version``, the options) is tests/test_cli.py's."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import lbmiddleware as lb
from lbmiddleware.core.casts import format_size, parse_size
from lbmiddleware.core.settings import BaseSettings, describe, registered
from lbmiddleware.gateway_settings import GROUPS, GatewaySettings, load_settings, parse_listen

from ..test_docs import README, table, unquote

GOOD = {"LB_BACKENDS": "http://127.0.0.1:8001"}


def every_setting() -> list[tuple[type[BaseSettings], dataclasses.Field[Any]]]:
    return [(cls, field) for cls in registered() for field in dataclasses.fields(cls)
            if "env" in field.metadata]


def shown_defaults() -> dict[str, str]:
    """Each variable's default as ``describe()`` (so ``serve --help``) shows it."""
    return {variable: default for variable, default, _ in describe(*registered())}


def env_error(**variables: str) -> str:
    with pytest.raises(lb.ConfigError) as caught:
        load_settings({**GOOD, **variables})
    return str(caught.value)


# -- defaults as a user types them -----------------------------------------------------------

@pytest.mark.parametrize("variable, shown", [
    ("LB_FAIL_TIMEOUT", "10s"), ("LB_MAX_EJECTION_TIME", "300s"), ("LB_SLOW_START", "0s"),
    ("LB_HEADER_TIMEOUT", "30s"), ("LB_RETRY_BUFFER", "64KB"), ("LB_POLICY", "round_robin"),
    ("LB_PRESERVE_HOST", "false"), ("LB_HEALTH_CHECK", "(off)"), ("LB_STICKY_COOKIE", "(off)"),
    ("LB_ADMIN_LISTEN", "(off)"), ("LB_DNS_SERVERS", "(none)"), ("LB_TRUSTED_PROXIES", "(none)"),
    ("LB_FAIL_STATUSES", "502,503,504"), ("LB_HEALTH_CHECK_STATUSES", "200-399"),
    ("LB_RETRY_BUDGET_MIN_PER_SECOND", "10"), ("LB_OVERPROVISIONING", "1.4"),
    ("LB_LISTEN", "127.0.0.1:8000"), ("LB_BACKENDS", "(required)"), ("LB_MAX_FAILS", "3")])
def test_a_default_is_shown_as_a_user_types_it(variable: str, shown: str) -> None:
    assert shown_defaults()[variable] == shown


@pytest.mark.parametrize("cls, field", every_setting(),
                         ids=[f.metadata["env"] for _, f in every_setting()])
def test_each_shown_default_reads_back_as_the_default(cls: type[BaseSettings],
                                                      field: dataclasses.Field[Any]) -> None:
    """Typed back into its variable, a shown default is the default (``(off)``/``(none)``:
    the variable set empty)."""
    shown = shown_defaults()[field.metadata["env"]]
    if shown == "(required)":
        assert field.name in cls.required
        return
    text = "" if shown in ("(off)", "(none)") else shown
    cast = field.metadata["cast"]
    assert cast(text) == cast(field.default)


def test_every_default_is_shown_as_the_readme_settings_table_shows_it() -> None:
    rows = table(README, "| variable | keyword | object | default | meaning |")
    readme = {unquote(row[0]): unquote(row[3]) for row in rows}
    assert shown_defaults() == readme


def test_the_gateway_lists_its_settings_in_order_with_defaults() -> None:
    rows = describe(*GROUPS)
    assert rows[0][:2] == ("LB_BACKENDS", "(required)")
    assert ("LB_SHUTDOWN_TIMEOUT", "30s") in [row[:2] for row in rows]


@pytest.mark.parametrize("size, text", [
    (0, "0"), (1000, "1000"), (1024, "1KB"), (65536, "64KB"), (1536, "1536"),
    (1024 * 1024, "1MB"), (3 * 1024 * 1024, "3MB"), (1024 * 1024 + 1024, "1025KB")])
def test_a_size_is_written_as_parse_size_reads_it(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size


# -- durations: every unit; a negative value says so -----------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("10m", 600.0), ("1h", 3600.0), ("250ms", 0.25), ("1m30s", 90.0), ("1h30m", 5400.0),
    ("2s500ms", 2.5), ("10", 10.0), ("1.5s", 1.5)])
def test_durations_take_ms_s_m_and_h(text: str, seconds: float) -> None:
    assert load_settings({**GOOD, "LB_DRAIN_TIMEOUT": text}).core.drain_timeout == seconds
    assert GatewaySettings.from_env({"LB_SHUTDOWN_TIMEOUT": text}).shutdown_timeout == seconds


def duration_and_count_settings() -> list[str]:
    """The variables whose value is a duration, a count or a size (those "-1" can reach)."""
    kinds = {"parse_duration", "parse_positive_duration", "_server_duration", "parse_count",
             "parse_deadline", "_budget_ttl",
             "parse_positive_count", "parse_size"}
    return [field.metadata["env"] for _, field in every_setting()
            if field.metadata["cast"].__name__ in kinds]


def test_the_negative_checks_cover_every_duration_count_and_size() -> None:
    names = duration_and_count_settings()
    assert {"LB_FAIL_TIMEOUT", "LB_TIMEOUT", "LB_SHUTDOWN_TIMEOUT", "LB_MAX_FAILS",
            "LB_RETRIES", "LB_MAX_CONNECTIONS", "LB_RETRY_BUFFER"} <= set(names)


@pytest.mark.parametrize("variable", duration_and_count_settings())
@pytest.mark.parametrize("value", ["-1", " -3 "])
def test_a_negative_value_must_not_be_negative(variable: str, value: str) -> None:
    assert env_error(**{variable: value}) == f"{variable} has value {value!r}: must not be negative"


@pytest.mark.parametrize("value", ["-5s", "-250ms", "-1m30s"])
def test_a_negative_duration_with_a_unit_must_not_be_negative(value: str) -> None:
    assert env_error(LB_READ_TIMEOUT=value) == (
        f"LB_READ_TIMEOUT has value {value!r}: must not be negative")


def test_a_negative_keyword_must_not_be_negative() -> None:
    with pytest.raises(lb.ConfigError, match=r"^fail_timeout has value -1: must not be negative$"):
        lb.Settings(backends=["http://a:1"], fail_timeout=-1)


# -- listen addresses: ":8000" is every interface ---------------------------------------------

@pytest.mark.parametrize("text, address", [
    (":8000", ("0.0.0.0", 8000)), (" :0 ", ("0.0.0.0", 0)), ("0.0.0.0:8000", ("0.0.0.0", 8000)),
    ("[::]:8000", ("::", 8000)), ("[::1]:8000", ("::1", 8000)),
    ("127.0.0.1:8000", ("127.0.0.1", 8000)), ("localhost:9", ("localhost", 9))])
def test_listen_addresses(text: str, address: tuple[str, int]) -> None:
    assert parse_listen(text) == address


def test_listen_colon_port_is_every_interface_for_both_listeners() -> None:
    settings = GatewaySettings.from_env({"LB_LISTEN": ":8000", "LB_ADMIN_LISTEN": ":9901"})
    assert (settings.listen, settings.listen_address) == ("0.0.0.0:8000", ("0.0.0.0", 8000))
    assert (settings.admin_listen, settings.admin_address) == ("0.0.0.0:9901", ("0.0.0.0", 9901))
    assert GatewaySettings.from_env({"LB_LISTEN": "[::]:8000"}).listen == "[::]:8000"


def test_the_default_listen_address_stays_loopback() -> None:
    assert GatewaySettings().listen_address == ("127.0.0.1", 8000)


def test_every_interface_and_loopback_on_one_port_are_one_listener() -> None:
    with pytest.raises(lb.ConfigError, match="LB_ADMIN_LISTEN"):
        GatewaySettings.from_env({"LB_LISTEN": "127.0.0.1:9000", "LB_ADMIN_LISTEN": ":9000"})


@pytest.mark.parametrize("text, words", [
    ("8000", "expected HOST:PORT"), ("*:8000", "'*' is not a host name or address (every "
                                               "interface: :8000)"),
    ("a_b:80", "'a_b' is not a host name or address"),
    ("[zz::1]:80", "'zz::1' is not an IPv6 address"), ("h:99999", "port from 0 to 65535"),
    # a port in ASCII digits only (str.isdigit takes the Arabic-Indic three)
    ("127.0.0.1:\u0663", "expected HOST:PORT"), ("127.0.0.1:\u00b2", "expected HOST:PORT"),
    # no bare IPv6 address: which colon starts the port cannot be told (as for dns_servers)
    ("::1:0", "an IPv6 address goes in brackets: [::1]:0"),
    (":::8000", "an IPv6 address goes in brackets: [::]:8000")])
def test_a_bad_listen_address_says_why(text: str, words: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_listen(text)
    assert words in str(caught.value)
    assert ("every interface" in str(caught.value)) == text.startswith("*")
