"""The Balancer's settings for a pool that follows the fleet: sources, active health checks,
slow start, drain and tiers; durations in every unit."""

import pytest

import lbmiddleware as lb
from lbmiddleware.core.casts import parse_duration

GOOD = {"LB_BACKENDS": "http://127.0.0.1:8001"}


@pytest.mark.parametrize("text, seconds", [
    ("500ms", 0.5), ("10s", 10.0), ("5m", 300.0), ("1h", 3600.0), ("1.5m", 90.0), ("2", 2.0),
    (" 3 m ", 180.0), (7, 7.0), (0.25, 0.25)])
def test_durations_take_every_unit(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5 min", "1d", "m", "-1s", "ms", "1hh", "5sm"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text, seconds", [
    ("1m30s", 90.0), ("1h30m", 5400.0), ("2s500ms", 2.5), ("1h 2m 3s", 3723.0),
    ("1.5m30s", 120.0)])
def test_compound_durations_add_up(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1m30", "30s1m", "1s1s", "1m-30s", "1m,30s", "ms30s"])
def test_bad_compound_durations(text):
    # a unit on every part, largest first, each unit once
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", ["-1s", "-1m30s", " -2 ", "-0.5", -1, -0.5])
def test_a_negative_duration_is_called_negative(value):
    with pytest.raises(ValueError, match="negative"):
        parse_duration(value)


def test_a_negative_setting_names_its_value():
    with pytest.raises(lb.ConfigError,
                       match=r"^LB_DRAIN_TIMEOUT has value '-1s': must not be negative$"):
        lb.Balancer.from_env({**GOOD, "LB_DRAIN_TIMEOUT": "-1s"})


def test_defaults():
    settings = lb.Settings(backends=["http://a:1"])
    assert settings.dns_servers == ()
    assert (settings.dns_min_refresh, settings.dns_max_refresh) == (5.0, 300.0)
    assert settings.health_check == ""
    assert (settings.health_check_interval, settings.health_check_timeout) == (5.0, 2.0)
    assert (settings.health_check_rise, settings.health_check_fall) == (2, 3)
    assert settings.health_check_statuses == ((200, 399),)
    assert (settings.slow_start, settings.drain_timeout, settings.overprovisioning) == (
        0.0, 30.0, 1.4)


def test_every_variable_as_the_issue_spells_it():
    settings = lb.Settings.from_env({
        **GOOD, "LB_DNS_SERVERS": "127.0.0.1:8600, [::1]:53,10.0.0.2",
        "LB_DNS_MIN_REFRESH": "500ms", "LB_DNS_MAX_REFRESH": "5m",
        "LB_HEALTH_CHECK": "/healthz", "LB_HEALTH_CHECK_INTERVAL": "10s",
        "LB_HEALTH_CHECK_TIMEOUT": "1500ms", "LB_HEALTH_CHECK_RISE": "1",
        "LB_HEALTH_CHECK_FALL": "5", "LB_HEALTH_CHECK_STATUSES": "200,204, 300-399",
        "LB_SLOW_START": "1m", "LB_DRAIN_TIMEOUT": "0", "LB_OVERPROVISIONING": "1.0"})
    assert settings.dns_servers == ("127.0.0.1:8600", "[::1]:53", "10.0.0.2:53")
    assert (settings.dns_min_refresh, settings.dns_max_refresh) == (0.5, 300.0)
    assert settings.health_check == "/healthz"
    assert (settings.health_check_interval, settings.health_check_timeout) == (10.0, 1.5)
    assert (settings.health_check_rise, settings.health_check_fall) == (1, 5)
    assert settings.health_check_statuses == ((200, 200), (204, 204), (300, 399))
    assert (settings.slow_start, settings.drain_timeout, settings.overprovisioning) == (
        60.0, 0.0, 1.0)


def test_every_new_variable_is_described():
    described = {row[0]: row for row in lb.Settings.describe()}
    for name in ("LB_DNS_SERVERS", "LB_DNS_MIN_REFRESH", "LB_DNS_MAX_REFRESH", "LB_HEALTH_CHECK",
                 "LB_HEALTH_CHECK_INTERVAL", "LB_HEALTH_CHECK_TIMEOUT", "LB_HEALTH_CHECK_RISE",
                 "LB_HEALTH_CHECK_FALL", "LB_HEALTH_CHECK_STATUSES", "LB_SLOW_START",
                 "LB_DRAIN_TIMEOUT", "LB_OVERPROVISIONING"):
        assert described[name][2]
    assert described["LB_HEALTH_CHECK_STATUSES"][1] == "200-399"
    assert "source" in described["LB_BACKENDS"][2]


@pytest.mark.parametrize("options, message", [
    ({"dns_min_refresh": "10m", "dns_max_refresh": "5m"}, "dns_min_refresh"),
    ({"dns_min_refresh": 0}, "dns_min_refresh"),
    ({"dns_servers": "localhost:53"}, "dns_servers"),
    ({"dns_servers": "10.0.0.1:99999"}, "dns_servers"),
    ({"health_check": "http://a/healthz"}, "health_check"),
    ({"health_check": "/health z"}, "health_check"),
    ({"health_check_rise": 0}, "health_check_rise"),
    ({"health_check_fall": "0"}, "health_check_fall"),
    ({"health_check_interval": 0}, "health_check_interval"),
    ({"health_check_timeout": "0s"}, "health_check_timeout"),
    ({"health_check_statuses": "399-200"}, "health_check_statuses"),
    ({"health_check_statuses": "600"}, "health_check_statuses"),
    ({"health_check_statuses": ""}, "health_check_statuses"),
    ({"health_check_statuses": "ok"}, "health_check_statuses"),
    ({"overprovisioning": "0.9"}, "overprovisioning"),
    ({"overprovisioning": "nan"}, "overprovisioning"),
    ({"slow_start": "-1"}, "slow_start"),
    ({"drain_timeout": "forever"}, "drain_timeout"),
])
def test_bad_values_name_the_setting(options, message):
    with pytest.raises(lb.ConfigError, match=message):
        lb.Settings(backends=["http://a:1"], **options)


def test_bad_variable_names_the_variable():
    with pytest.raises(lb.ConfigError, match="LB_HEALTH_CHECK_STATUSES has value '99'"):
        lb.Settings.from_env({**GOOD, "LB_HEALTH_CHECK_STATUSES": "99"})


def test_statuses_in_other_forms():
    make = lb.Settings
    assert make(backends=["http://a"], health_check_statuses=200).health_check_statuses == (
        (200, 200),)
    assert make(backends=["http://a"], health_check_statuses=[200, "301-302", (500, 503)]
                ).health_check_statuses == ((200, 200), (301, 302), (500, 503))


def test_health_check_path_relative_or_absolute():
    assert lb.Settings(backends=["http://a"], health_check=" healthz ").health_check == "healthz"
    assert lb.Settings(backends=["http://a"],
                       health_check="/ready?full=1").health_check == "/ready?full=1"


def test_sources_among_the_backends():
    settings = lb.Settings(backends="http://a:1 backup, dns+http://orders:8080, http://b:1")
    assert settings.backends == (lb.Backend("http://a:1", priority=1),
                                 lb.Source("dns+http://orders:8080"), lb.Backend("http://b:1"))
    assert settings.static_backends == (lb.Backend("http://a:1", priority=1),
                                        lb.Backend("http://b:1"))
    assert settings.sources == (lb.Source("dns+http://orders:8080"),)
    only_source = lb.Settings.from_env({"LB_BACKENDS": "etcd://127.0.0.1:2379/services/o"})
    assert only_source.static_backends == ()
    assert lb.Source is lb.core.backend.Source


@pytest.mark.parametrize("environ, message", [
    # only the maximum given: it is the one named first, the minimum's default beside it
    ({"LB_DNS_MAX_REFRESH": "1s"},
     "LB_DNS_MAX_REFRESH (dns_max_refresh) has value 1s: smaller than LB_DNS_MIN_REFRESH "
     "(dns_min_refresh), which has value 5s (its default); set LB_DNS_MAX_REFRESH to at "
     "least 5s, or LB_DNS_MIN_REFRESH to at most 1s"),
    ({"LB_DNS_MIN_REFRESH": "10m"},
     "LB_DNS_MIN_REFRESH (dns_min_refresh) has value 10m: larger than LB_DNS_MAX_REFRESH "
     "(dns_max_refresh), which has value 5m (its default); set LB_DNS_MIN_REFRESH to at "
     "most 5m, or LB_DNS_MAX_REFRESH to at least 10m"),
    ({"LB_DNS_MIN_REFRESH": "10m", "LB_DNS_MAX_REFRESH": "1500ms"},
     "LB_DNS_MIN_REFRESH (dns_min_refresh) has value 10m: larger than LB_DNS_MAX_REFRESH "
     "(dns_max_refresh), which has value 1.5s; set LB_DNS_MIN_REFRESH to at most 1.5s, or "
     "LB_DNS_MAX_REFRESH to at least 10m"),
    ({"LB_MAX_EJECTION_TIME": "2s"},
     "LB_MAX_EJECTION_TIME (max_ejection_time) has value 2s: smaller than LB_FAIL_TIMEOUT "
     "(fail_timeout), which has value 10s (its default); set LB_MAX_EJECTION_TIME to at "
     "least 10s, or LB_FAIL_TIMEOUT to at most 2s"),
])
def test_two_settings_out_of_order_are_both_named_with_their_variables_and_values(environ,
                                                                                  message):
    with pytest.raises(lb.ConfigError) as error:
        lb.Settings.from_env({**GOOD, **environ})
    assert str(error.value) == message


@pytest.mark.parametrize("text, servers", [
    ("[::1]:8600", ("[::1]:8600",)),
    ("[::1]", ("[::1]:53",)),
    ("::1", ("[::1]:53",)),
    ("fd00::53", ("[fd00::53]:53",)),                    # ':53' is part of the address
    ("2001:4860:4860::8888", ("[2001:4860:4860::8888]:53",)),
    ("2001:db8:0:0:0:0:0:53", ("[2001:db8::53]:53",)),
    ("::ffff:10.0.0.1", ("[::ffff:a00:1]:53",)),
    (" 10.0.0.2 , [fd00::1]:5353 ", ("10.0.0.2:53", "[fd00::1]:5353")),
])
def test_dns_servers_take_ipv6_bracketed_with_a_port_or_bare_for_port_53(text, servers):
    assert lb.Settings.from_env({**GOOD, "LB_DNS_SERVERS": text}).dns_servers == servers


@pytest.mark.parametrize("text, message", [
    ("::1:8600", r"LB_DNS_SERVERS has value '::1:8600': '::1:8600' is ambiguous: write "
                 r"\[::1\]:8600 for port 8600 of ::1, or \[::1:8600\] for that address on "
                 r"port 53"),
    ("10.0.0.2,2001:db8::1:53", r"'2001:db8::1:53' is ambiguous: write \[2001:db8::1\]:53"),
    ("[::1]8600", r"'\[::1\]8600' is not ip:port"),
    ("[::1", r"'\[::1' is not ip:port"),
    ("[::1]:", r"'\[::1\]:' has port ''"),
    ("[::1]:0", r"'\[::1\]:0' has port '0'"),
    ("1.2.3.4:53:53", r"'1.2.3.4:53:53': '1.2.3.4:53:53' is not an IP address"),
])
def test_an_ambiguous_or_bad_dns_server_is_a_config_error_naming_the_value(text, message):
    with pytest.raises(lb.ConfigError, match=message):
        lb.Settings.from_env({**GOOD, "LB_DNS_SERVERS": text})
