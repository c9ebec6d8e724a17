"""Backends and settings: parsing, normalisation, and a clear ConfigError for every bad input."""

import ast
import dataclasses
import inspect
import logging
import math
import re
import textwrap

import pytest

import lbmiddleware as lb
from lbmiddleware.core.casts import format_duration
from lbmiddleware.core.forwarding import ForwardingSettings
from lbmiddleware.core.settings import (
    BaseSettings,
    FrontEndSettings,
    parse_duration,
    registered,
    resolve,
    setting,
)
from lbmiddleware.gateway_settings import GatewaySettings

GOOD = {"LB_BACKENDS": "http://127.0.0.1:8001"}


def env_error(**variables) -> str:
    """The error reading the Balancer's and the forwarding settings from ``variables``."""
    with pytest.raises(lb.ConfigError) as info:
        resolve("test", (ForwardingSettings,), {}, environ={**GOOD, **variables})
    return str(info.value)


class TestBackend:
    def test_normalises_scheme_host_and_trailing_slash(self):
        backend = lb.Backend("HTTP://Api.Example:8080/v1/")
        assert backend.url == "http://api.example:8080/v1"
        assert (backend.scheme, backend.host, backend.port, backend.path) == (
            "http", "api.example", 8080, "/v1")

    def test_default_port_is_one_spelling(self):
        assert lb.Backend("http://a:80").url == "http://a" == lb.Backend("http://a").url
        assert lb.Backend("https://a:443/v1").url == "https://a/v1"
        assert lb.Backend("http://a:443").url == "http://a:443"

    def test_default_ports_and_ipv6(self):
        assert lb.Backend("https://h").port == 443
        assert lb.Backend("http://h").port == 80
        v6 = lb.Backend("http://[::1]:9000")
        assert (v6.host, v6.port, v6.netloc) == ("::1", 9000, "[::1]:9000")

    def test_equal_values_are_equal_and_hashable(self):
        assert lb.Backend("http://a:1/") == lb.Backend("http://A:1")
        assert len({lb.Backend("http://a:1"), lb.Backend("http://a:1")}) == 1
        assert lb.Backend("http://a:1", 2) != lb.Backend("http://a:1", 3)

    def test_is_immutable(self):
        backend = lb.Backend("http://a:1")
        with pytest.raises(dataclasses.FrozenInstanceError):
            backend.weight = 5

    @pytest.mark.parametrize("url, message", [
        ("127.0.0.1:8001", "no scheme"),
        ("ftp://host", "scheme 'ftp'"),
        ("http://", "no host"),
        ("http://:8080", "no host"),
        ("http://host:99999", "not a valid URL"),
        ("http://user:pw@host", "credentials"),
        ("http://host/?q=1", "query"),
    ])
    def test_bad_url_is_named(self, url, message):
        with pytest.raises(lb.ConfigError) as info:
            lb.Backend(url)
        assert message in str(info.value) and repr(url) in str(info.value)

    @pytest.mark.parametrize("weight", [0, -1, 1.5, "3", True, None])
    def test_weight_must_be_positive_integer(self, weight):
        with pytest.raises(lb.ConfigError, match="not a positive integer"):
            lb.Backend("http://a:1", weight)


class TestFromEnv:
    def test_every_setting_read_and_typed(self):
        environ = {
            "LB_BACKENDS": "http://127.0.0.1:8001 weight=3, http://127.0.0.1:8002",
            "LB_POLICY": "weighted", "LB_MAX_FAILS": "5", "LB_FAIL_TIMEOUT": "250ms",
            "LB_MAX_EJECTION_TIME": "10s", "LB_FAIL_STATUSES": "500, 503", "LB_RETRIES": "0",
            "LB_CONNECT_TIMEOUT": "1.5", "LB_READ_TIMEOUT": "30",
            "LB_HASH_KEY": "header:X-User-Id", "LB_PRESERVE_HOST": "yes",
            "LB_RETRY_NON_IDEMPOTENT": "1", "PATH": "/usr/bin", "OTHER_LB_THING": "ignored",
        }
        settings = lb.Settings.from_env(environ)
        assert settings.backends == (lb.Backend("http://127.0.0.1:8001", 3),
                                     lb.Backend("http://127.0.0.1:8002", 1))
        assert settings.policy == "round_robin"
        assert (settings.max_fails, settings.fail_timeout, settings.max_ejection_time) == (
            5, 0.25, 10.0)
        forwarding = ForwardingSettings.from_env(environ)
        assert forwarding.fail_statuses == frozenset({500, 503})
        assert (forwarding.retries, forwarding.connect_timeout, forwarding.read_timeout) == (
            0, 1.5, 30.0)
        assert forwarding.hash_key == "header:X-User-Id"
        assert forwarding.preserve_host is True and forwarding.retry_non_idempotent is True
        assert resolve("test", (ForwardingSettings,), {}, environ=environ).groups == (
            settings, forwarding)

    def test_defaults(self):
        settings = lb.Settings.from_env(GOOD)
        assert (settings.policy, settings.max_fails, settings.fail_timeout,
                settings.max_ejection_time) == ("round_robin", 3, 10.0, 300.0)
        forwarding = ForwardingSettings.from_env(GOOD)
        assert (forwarding.retries, forwarding.connect_timeout, forwarding.read_timeout) == (
            2, 5.0, 60.0)
        assert forwarding.fail_statuses == frozenset({502, 503, 504})
        assert forwarding.hash_key == "client_ip"
        assert not forwarding.preserve_host and not forwarding.retry_non_idempotent
        assert ForwardingSettings() == forwarding

    def test_keyword_overrides_win_over_environment(self):
        settings = lb.Settings.from_env({**GOOD, "LB_POLICY": "random"}, policy="latency")
        assert settings.policy == "latency"

    def test_missing_backends(self):
        with pytest.raises(lb.ConfigError, match="LB_BACKENDS is not set"):
            lb.Settings.from_env({})
        with pytest.raises(lb.ConfigError, match="LB_BACKENDS is not set"):
            resolve("test", (ForwardingSettings,), {"retries": 1}, environ={"LB_RETRIES": "1"})

    @pytest.mark.parametrize("value", ["", "  ", ","])
    def test_empty_backend_list(self, value):
        message = env_error(LB_BACKENDS=value)
        assert "LB_BACKENDS" in message and "empty" in message

    @pytest.mark.parametrize("value, fragment", [
        ("127.0.0.1:8001", "no scheme"),
        ("http://", "no host"),
        ("gopher://h:70", "scheme 'gopher'"),
        ("http://a:1, http://A:1/", "listed twice"),
        ("http://a:80, http://a", "listed twice"),
        ("http://a:1 weight=0", "not a positive integer"),
        ("http://a:1 weight=-2", "not a positive integer"),
        ("http://a:1 weight=x", "not a positive integer"),
        ("http://a:1 weight=1.5", "not a positive integer"),
        ("http://a:1 wieght=2", "unknown option"),
    ])
    def test_bad_backend(self, value, fragment):
        message = env_error(LB_BACKENDS=value)
        assert message.startswith(f"LB_BACKENDS has value {value!r}") and fragment in message

    def test_unknown_policy(self):
        assert env_error(LB_POLICY="fastest").startswith(
            "LB_POLICY has value 'fastest': unknown policy")

    @pytest.mark.parametrize("name", ["LB_MAX_FAILS", "LB_RETRIES"])
    @pytest.mark.parametrize("value, reason", [
        ("x", "not an integer"), ("-1", "must not be negative"), ("2.5", "not an integer")])
    def test_bad_counts(self, name, value, reason):
        assert env_error(**{name: value}) == f"{name} has value {value!r}: {reason}"

    @pytest.mark.parametrize("name", ["LB_FAIL_TIMEOUT", "LB_MAX_EJECTION_TIME",
                                      "LB_CONNECT_TIMEOUT", "LB_READ_TIMEOUT"])
    @pytest.mark.parametrize("value", ["soon", "-1", "-5s", "10d", "nan", "inf", "0"])
    def test_bad_durations(self, name, value):
        assert env_error(**{name: value}).startswith(f"{name} has value {value!r}:")

    def test_ejection_cap_below_base(self):
        message = env_error(LB_FAIL_TIMEOUT="30", LB_MAX_EJECTION_TIME="10")
        assert "max_ejection_time" in message and "fail_timeout" in message

    @pytest.mark.parametrize("value", ["600", "abc", "50x"])
    def test_bad_fail_statuses(self, value):
        assert "not an HTTP status" in env_error(LB_FAIL_STATUSES=value)

    @pytest.mark.parametrize("value", ["ip", "header:", "cookie", "query:x"])
    def test_bad_hash_key(self, value):
        assert env_error(LB_HASH_KEY=value).startswith(f"LB_HASH_KEY has value {value!r}")

    def test_unknown_variable_is_a_probable_typo_logged_not_fatal(self, caplog):
        caplog.set_level(logging.WARNING, logger="lbmiddleware")
        settings = lb.Settings.from_env({**GOOD, "LB_MAX_FAIL": "7"})
        assert settings.max_fails == 3           # ignored, as any unknown variable
        [record] = caplog.records
        assert record.levelno == logging.WARNING and record.name.startswith("lbmiddleware")
        assert "LB_MAX_FAIL is not a known setting" in record.getMessage()
        assert "did you mean LB_MAX_FAILS?" in record.getMessage()

    def test_an_unknown_variable_with_no_close_match_lists_the_settings(self, caplog):
        caplog.set_level(logging.WARNING, logger="lbmiddleware")
        lb.Settings.from_env({**GOOD, "LB_ZZZZZZZZZZ": "1"})
        [record] = caplog.records
        assert "LB_ZZZZZZZZZZ is not a known setting" in record.getMessage()
        assert "LB_MAX_FAILS" in record.getMessage()   # the list of known names

    @pytest.mark.parametrize("name", [
        # a Service named "lb" (Kubernetes service links, also Docker's legacy links)
        "LB_SERVICE_HOST", "LB_SERVICE_PORT", "LB_SERVICE_PORT_HTTP", "LB_PORT",
        "LB_PORT_8000_TCP", "LB_PORT_8000_TCP_ADDR", "LB_PORT_8000_TCP_PORT",
        "LB_PORT_8000_TCP_PROTO", "LB_PORT_53_UDP", "LB_PORT_9_SCTP_ADDR",
        # a Service named "lb-admin" or "lb-metrics-v2"
        "LB_ADMIN_SERVICE_HOST", "LB_ADMIN_SERVICE_PORT_METRICS", "LB_METRICS_V2_PORT_9090_TCP"])
    def test_kubernetes_service_links_are_not_settings_nor_typos(self, name, caplog):
        caplog.set_level(logging.DEBUG, logger="lbmiddleware")
        service = re.match(r"(.*?)_(SERVICE|PORT)", name).group(1)
        links = {f"{service}_SERVICE_HOST": "10.96.0.7", f"{service}_SERVICE_PORT": "8000",
                 f"{service}_PORT": "tcp://10.96.0.7:8000", name: "8000"}
        settings = lb.Settings.from_env({**GOOD, **links})
        assert [b.url for b in settings.backends] == ["http://127.0.0.1:8001"]
        assert caplog.records == []

    def test_a_typo_near_a_service_link_shape_is_still_reported(self, caplog):
        caplog.set_level(logging.WARNING, logger="lbmiddleware")
        lb.Settings.from_env({**GOOD, "LB_SERVICE_HOST": "10.96.0.7", "LB_PORT_8000_HTTP": "1",
                              "LB_RETRYS": "1", "LB_LISTEN_PORT": "8000"})
        messages = sorted(r.getMessage() for r in caplog.records)
        assert len(messages) == 3
        assert "LB_LISTEN_PORT is not a known setting (did you mean LB_LISTEN?)" in messages[0]
        assert "LB_PORT_8000_HTTP is not a known setting" in messages[1]
        assert "LB_RETRYS is not a known setting (did you mean LB_RETRIES?)" in messages[2]


class TestKeywords:
    def test_keyword_errors_name_the_argument(self):
        with pytest.raises(lb.ConfigError, match="max_fails has value 'x': not an integer"):
            lb.Balancer(["http://a:1"], max_fails="x")
        with pytest.raises(lb.ConfigError, match="policy has value 'nope'"):
            lb.Balancer(["http://a:1"], policy="nope")
        with pytest.raises(lb.ConfigError, match="backends is required"):
            lb.Balancer([])
        with pytest.raises(TypeError, match=r"unexpected keyword argument 'max_fail' "
                                            r"\(did you mean max_fails\?\)"):
            lb.Balancer(["http://a:1"], max_fail=3)

    def test_a_front_end_setting_given_to_the_balancer_says_where_it_belongs(self):
        with pytest.raises(TypeError) as info:
            lb.Balancer(["http://a:1"], retries=5)
        message = str(info.value)
        assert message.startswith("Balancer() got an unexpected keyword argument 'retries': "
                                  "retries is a setting of ForwardingSettings (LB_RETRIES)")
        assert "LoadBalancingAdapter" in message and "LoadBalancerMiddleware" in message
        with pytest.raises(TypeError, match="prefix is a setting of ProxySettings"):
            lb.Balancer(["http://a:1"], prefix="/api")
        with pytest.raises(TypeError, match="retries is a setting of ForwardingSettings"):
            lb.Balancer.from_env(GOOD, retries=5)
        with pytest.raises(TypeError, match="retries is a setting of ForwardingSettings"):
            lb.Balancer(settings=lb.Settings(backends=["http://a:1"]), retries=5)

    def test_config_error_is_a_value_error_and_lb_error(self):
        assert issubclass(lb.ConfigError, ValueError) and issubclass(lb.ConfigError, lb.LBError)
        assert issubclass(lb.NoHealthyBackend, lb.LBError)

    def test_settings_are_immutable_and_replace_validates(self):
        settings = lb.Settings(backends=["http://a:1"])
        with pytest.raises(dataclasses.FrozenInstanceError):
            settings.max_fails = 1
        assert settings.replace(max_fails="7").max_fails == 7
        with pytest.raises(lb.ConfigError):
            settings.replace(max_fails=-1)
        forwarding = ForwardingSettings()
        with pytest.raises(dataclasses.FrozenInstanceError):
            forwarding.retries = 1
        assert forwarding.replace(retries="7").retries == 7
        with pytest.raises(lb.ConfigError, match="retries has value -1: must not be negative"):
            forwarding.replace(retries=-1)

    def test_balancer_from_env(self):
        pool = lb.Balancer.from_env({"LB_BACKENDS": "http://a:1, http://b:2",
                                     "LB_POLICY": "random"})
        assert pool.policy == "random"
        assert [b.url for b in pool.backends] == ["http://a:1", "http://b:2"]

    def test_describe_lists_every_variable(self):
        names = [row[0] for row in lb.Settings.describe()]
        assert names == ["LB_BACKENDS", "LB_POLICY", "LB_HASH_BALANCE_FACTOR", "LB_MAX_FAILS",
                         "LB_FAIL_TIMEOUT",
                         "LB_MAX_EJECTION_TIME", "LB_DNS_SERVERS", "LB_DNS_MIN_REFRESH",
                         "LB_DNS_MAX_REFRESH", "LB_HEALTH_CHECK", "LB_HEALTH_CHECK_INTERVAL",
                         "LB_HEALTH_CHECK_TIMEOUT", "LB_HEALTH_CHECK_RISE",
                         "LB_HEALTH_CHECK_FALL", "LB_HEALTH_CHECK_STATUSES", "LB_SLOW_START",
                         "LB_DRAIN_TIMEOUT", "LB_OVERPROVISIONING", "LB_RETRY_BUDGET",
                         "LB_RETRY_BUDGET_MIN_PER_SECOND", "LB_RETRY_BUDGET_TTL",
                         "LB_STICKY_COOKIE_SECRET", "LB_BACKEND_CA", "LB_BACKEND_VERIFY",
                         "LB_BACKEND_CLIENT_CERT", "LB_BACKEND_CLIENT_KEY"]
        names = [row[0] for row in ForwardingSettings.describe()]
        assert names == ["LB_FAIL_STATUSES", "LB_RETRIES", "LB_CONNECT_TIMEOUT",
                         "LB_READ_TIMEOUT", "LB_HASH_KEY", "LB_PRESERVE_HOST",
                         "LB_RETRY_NON_IDEMPOTENT", "LB_TIMEOUT", "LB_STICKY_COOKIE"]

    def test_text_given_to_a_keyword_is_read_back_typed(self):
        settings = lb.Settings(backends=["http://a:1"], max_fails="3", fail_timeout="250ms")
        assert [b.url for b in settings.backends] == ["http://a:1"]
        assert isinstance(settings.backends, tuple) and isinstance(settings.backends[0], lb.Backend)
        assert (settings.max_fails, settings.fail_timeout) == (3, 0.25)
        forwarding = ForwardingSettings(fail_statuses=[502], retries="1", preserve_host="yes")
        assert (forwarding.fail_statuses, forwarding.retries, forwarding.preserve_host) == (
            frozenset({502}), 1, True)
        proxy = lb.ProxySettings(trusted_proxies=["10.0.0.0/8"], retry_buffer="1KB")
        assert [str(n) for n in proxy.trusted_proxies] == ["10.0.0.0/8"]
        assert proxy.retry_buffer == 1024

    def test_the_balancers_settings_are_only_what_it_reads(self):
        assert [f.name for f in dataclasses.fields(lb.Settings)] == [
            "backends", "policy", "hash_balance_factor", "max_fails", "fail_timeout",
            "max_ejection_time", "dns_servers", "dns_min_refresh", "dns_max_refresh",
            "health_check", "health_check_interval", "health_check_timeout",
            "health_check_rise", "health_check_fall", "health_check_statuses", "slow_start",
            "drain_timeout", "overprovisioning", "retry_budget", "retry_budget_min_per_second",
            "retry_budget_ttl", "sticky_cookie_secret", "backend_ca", "backend_verify",
            "backend_client_cert", "backend_client_key"]
        assert lb.AdapterSettings is ForwardingSettings is lb.ForwardingSettings


SETTINGS_CLASSES = (lb.Settings, ForwardingSettings, lb.ProxySettings, GatewaySettings)


def test_every_settings_class_of_the_package_is_checked_below():
    ours = [cls for cls in registered() if cls.__module__.startswith("lbmiddleware.")]
    assert sorted(ours, key=id) == sorted(SETTINGS_CLASSES, key=id)


@pytest.mark.parametrize("cls", SETTINGS_CLASSES, ids=lambda cls: cls.__name__)
def test_the_constructor_type_checkers_see_lists_every_field(cls):
    """Each settings class declares, for type checkers only, the constructor its dataclass
    generates: the same parameters in the same order, each typed as the field's cast accepts
    it (the field's own type, or an ``...Like`` alias for text too), the defaults left to
    the fields (``...``)."""
    (tree,) = ast.parse(textwrap.dedent(inspect.getsource(cls))).body
    (declared,) = [node for block in tree.body if isinstance(block, ast.If)
                   and ast.unparse(block.test) == "TYPE_CHECKING"
                   for node in block.body
                   if isinstance(node, ast.FunctionDef) and node.name == "__init__"]
    arguments = declared.args
    fields = [field for field in dataclasses.fields(cls) if field.init]
    assert [a.arg for a in arguments.args] == ["self"] + [field.name for field in fields]
    assert not (arguments.kwonlyargs or arguments.vararg or arguments.kwarg)
    assert [ast.unparse(d) for d in arguments.defaults] == ["..."] * len(fields)
    for argument, field in zip(arguments.args[1:], fields, strict=True):
        annotation = ast.unparse(argument.annotation)
        assert annotation == field.type or annotation.endswith("Like"), (field.name, annotation)


@pytest.mark.parametrize("text, seconds", [
    ("1.5", 1.5), ("10s", 10.0), ("250ms", 0.25), (" 2 s ", 2.0), (3, 3.0), ("1e-3", 0.001)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("seconds, text", [
    (2.0, "2s"), (1, "1s"), (1.5, "1.5s"), (90.0, "90s"), (0.2, "200ms"), (0.25, "250ms"),
    (0.1 + 0.2, "300ms"), (0.0005, "0.5ms"), (0.0, "0s")])
def test_a_duration_is_written_as_the_settings_spell_it_and_reads_back(seconds, text):
    # one spelling for every failure text ("read timed out after 200ms", a probe's
    # "timeout after 250ms"), which a setting takes back as it is
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("seconds, text", [
    (0.2013456, "201ms"), (1.23456, "1.23s"), (1 / 3, "333ms"), (12.3456, "12.3s"),
    (0.0004567, "0.457ms"), (2.0, "2s")])
def test_a_measured_duration_keeps_the_digits_asked_for(seconds, text):
    # a time measured, not set ("timeout after 201ms", a keep-alive every third of a lease)
    assert format_duration(seconds, digits=3) == text


def test_front_end_variables_are_known_to_the_core():
    # LB_PREFIX is the gateway's; a process using only the core must not call it a typo,
    # and a typo of it is still caught.
    pool = lb.Balancer.from_env({**GOOD, "LB_PREFIX": "/api", "LB_RETRY_NON_IDEMPOTENT": "1"})
    assert [b.url for b in pool.backends] == ["http://127.0.0.1:8001"]

def test_a_typo_of_a_front_end_variable_names_it(caplog):
    caplog.set_level(logging.WARNING, logger="lbmiddleware")
    lb.Balancer.from_env({**GOOD, "LB_PREFX": "/api"})
    assert "did you mean LB_PREFIX?" in caplog.text


def test_importing_the_core_needs_only_the_standard_library():
    import subprocess
    import sys

    code = ("import sys, lbmiddleware as lb\n"
            "lb.Balancer.from_env({'LB_BACKENDS': 'http://a:1', 'LB_PREFIX': '/x'}).pick()\n"
            "third = {'requests', 'urllib3', 'starlette', 'uvicorn', 'granian', 'httpx'}\n"
            "print(sorted(third & set(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class TestResolve:
    """resolve(): the one rule by which every front-end gets its settings."""

    def test_keywords_go_to_the_class_that_owns_them(self):
        settings = resolve("F", (ForwardingSettings,),
                           {"backends": ["http://a:1"], "max_fails": 5, "retries": 0})
        assert isinstance(settings, FrontEndSettings)
        assert settings.core == lb.Settings(backends=["http://a:1"], max_fails=5)
        assert settings[ForwardingSettings] == ForwardingSettings(retries=0)
        assert list(settings) == [settings.core, settings[ForwardingSettings]]

    def test_an_unknown_keyword_raises_naming_it(self):
        with pytest.raises(TypeError, match=r"F\(\) got an unexpected keyword argument 'retires' "
                                            r"\(did you mean retries\?\)"):
            resolve("F", (ForwardingSettings,), {"backends": ["http://a:1"], "retires": 1})
        with pytest.raises(TypeError, match="'listen': listen is a setting of GatewaySettings"):
            resolve("F", (ForwardingSettings,), {"backends": ["http://a:1"], "listen": ":1"})

    def test_with_a_shared_balancer_its_settings_are_refused_the_front_ends_accepted(self):
        pool = lb.Settings(backends=["http://a:1"], max_fails=7)
        with pytest.raises(lb.ConfigError, match="max_fails, policy given with balancer=: "
                                                 "set them on the shared Balancer"):
            resolve("F", (ForwardingSettings,), {"retries": 1, "policy": "random", "max_fails": 1},
                    shared=pool)
        first = resolve("F", (ForwardingSettings,), {"retries": 0}, shared=pool)
        second = resolve("F", (ForwardingSettings,), {"retries": 2, "preserve_host": True},
                         shared=pool)
        assert first.core is pool and second.core is pool
        assert first[ForwardingSettings].retries == 0
        assert (second[ForwardingSettings].retries, second[ForwardingSettings].preserve_host) == (
            2, True)
        with pytest.raises(lb.ConfigError, match="given with balancer="):
            resolve("F", (ForwardingSettings,), {}, shared=pool,
                    settings=lb.Settings(backends="http://b:1"))

    def test_a_shared_balancer_gives_its_settings_the_variables_the_front_ends(self, caplog):
        # The Balancer's settings are the shared pool's (its variables neither read nor
        # required); the front-end's own come from keywords, else LB_*, else defaults.
        caplog.set_level(logging.WARNING, logger="lbmiddleware")
        pool = lb.Settings(backends=["http://a:1"])
        environ = {"LB_RETRIES": "0", "LB_READ_TIMEOUT": "3s", "LB_MAX_FAILS": "9",
                   "LB_PREFX": "/"}
        settings = resolve("F", (ForwardingSettings,), {}, shared=pool, environ=environ)
        assert settings.core is pool
        assert settings[ForwardingSettings] == ForwardingSettings(retries=0, read_timeout=3)
        [record] = caplog.records          # the variables were read: the typo is reported
        assert "LB_PREFX is not a known setting" in record.getMessage()
        settings = resolve("F", (ForwardingSettings,), {"retries": 1}, shared=pool,
                           environ=environ)
        assert settings[ForwardingSettings] == ForwardingSettings(retries=1, read_timeout=3)
        # A ready object for the front-end's class is used instead of the variables.
        settings = resolve("F", (ForwardingSettings,), {}, shared=pool, environ=environ,
                           settings=ForwardingSettings(retries=5))
        assert settings[ForwardingSettings] == ForwardingSettings(retries=5)

    def test_without_backends_the_variables_are_read_and_keywords_win(self, caplog):
        caplog.set_level(logging.WARNING, logger="lbmiddleware")
        environ = {**GOOD, "LB_RETRIES": "0", "LB_POLICY": "random", "LB_RETRYS": "1"}
        settings = resolve("F", (ForwardingSettings,), {"policy": "latency"}, environ=environ)
        assert settings.core.policy == "latency" and settings[ForwardingSettings].retries == 0
        [record] = caplog.records          # the typo, reported once for every class read
        assert "LB_RETRYS is not a known setting (did you mean LB_RETRIES?)" in record.getMessage()

    def test_with_backends_only_keywords_unless_from_env(self):
        environ = {"LB_BACKENDS": "http://b:1", "LB_RETRIES": "0"}
        settings = resolve("F", (ForwardingSettings,), {"backends": "http://a:1"}, environ=environ)
        assert [b.url for b in settings.core.backends] == ["http://a:1"]
        assert settings[ForwardingSettings].retries == 2
        settings = resolve("F", (ForwardingSettings,), {"backends": "http://a:1"}, environ=environ,
                           from_env=True)
        assert [b.url for b in settings.core.backends] == ["http://a:1"]
        assert settings[ForwardingSettings].retries == 0

    def test_given_objects_replace_defaults_and_variables_and_keywords_still_win(self):
        given = ForwardingSettings(retries=0, read_timeout=1.0)
        settings = resolve("F", (ForwardingSettings,), {"read_timeout": 2.0}, settings=given,
                           environ={**GOOD, "LB_RETRIES": "5", "LB_CONNECT_TIMEOUT": "9"})
        assert settings[ForwardingSettings] == ForwardingSettings(retries=0, read_timeout=2.0)
        whole = resolve("F", (ForwardingSettings,), {}, settings=settings, environ={})
        assert whole == settings             # a complete set: no variable read, none required

    def test_replace_sends_each_change_to_its_class(self):
        settings = resolve("F", (ForwardingSettings,), {"backends": "http://a:1"})
        changed = settings.replace(max_fails=1, retries=0)
        assert (changed.core.max_fails, changed[ForwardingSettings].retries) == (1, 0)
        with pytest.raises(TypeError, match="'nope'"):
            settings.replace(nope=1)

    def test_a_settings_class_registers_its_variables_when_defined(self, caplog):
        caplog.set_level(logging.WARNING, logger="lbmiddleware")
        environ = {**GOOD, "LB_TEST_REGISTERED_ONLY": "3"}
        lb.Settings.from_env(environ)
        assert "LB_TEST_REGISTERED_ONLY is not a known setting" in caplog.text
        caplog.clear()

        @dataclasses.dataclass(frozen=True)
        class Extra(BaseSettings):
            registered_only: int = dataclasses.field(
                default=1, metadata=setting("LB_TEST_REGISTERED_ONLY", int, "a test setting"))

        try:
            lb.Settings.from_env(environ)
            assert caplog.records == []
            assert resolve("F", (Extra,), {}, environ=environ)[Extra].registered_only == 3
        finally:
            from lbmiddleware.core import settings as module
            module._REGISTRY.remove(Extra)


class TestWrongSettingsObject:
    """``settings=`` takes an object of a class the component reads (or a FrontEndSettings
    holding several): anything else is a TypeError naming what was given and what is
    accepted, never ignored and never an AttributeError later."""

    @pytest.mark.parametrize("given, shown", [
        (lb.ProxySettings(), "ProxySettings(...)"), ("x", "'x' (a str)"),
        (ForwardingSettings(), "ForwardingSettings(...)"),
        ({"max_fails": 1}, "{'max_fails': 1} (a dict)")])
    def test_the_balancer(self, given, shown):
        for make in (lambda: lb.Balancer(settings=given),
                     lambda: lb.Balancer(["http://a:1"], settings=given)):
            with pytest.raises(TypeError) as info:
                make()
            assert str(info.value).startswith(f"Balancer() got settings={shown}: it takes a "
                                              "Settings, or a FrontEndSettings holding them")

    def test_the_resolver(self):
        for given, shown in ((GatewaySettings(), "GatewaySettings(...)"), ("/x", "'/x' (a str)"),
                             ({"prefix": "/x"}, "{'prefix': '/x'} (a dict)")):
            with pytest.raises(TypeError) as info:
                resolve("F", (ForwardingSettings, lb.ProxySettings), {}, settings=given,
                        environ=GOOD)
            assert str(info.value).startswith(
                f"F() got settings={shown}: it takes a Settings or ForwardingSettings or "
                "ProxySettings, or a FrontEndSettings holding them")

    def test_a_ready_object_of_a_class_read_is_taken(self):
        ready = lb.Settings(backends=["http://a:1"])
        assert lb.Balancer(settings=ready).settings is ready
        whole = resolve("F", (ForwardingSettings,), {"backends": "http://a:1"})
        assert lb.Balancer(settings=whole).settings is whole.core


class TestNoneIsNotGiven:
    """A setting given as ``None`` is not given: its variable, else its default."""

    def test_keywords_of_the_resolver(self):
        settings = resolve("F", (lb.ProxySettings,), {"backends": "http://a:1", "prefix": None,
                                                      "policy": None})
        assert (settings[lb.ProxySettings].prefix, settings.core.policy) == ("/", "round_robin")
        settings = resolve("F", (lb.ProxySettings,), {"prefix": None, "retry_buffer": None},
                           environ={**GOOD, "LB_PREFIX": "/env"})
        assert settings[lb.ProxySettings].prefix == "/env"

    def test_constructors_and_replace(self):
        assert lb.ProxySettings(prefix=None).prefix == "/"
        assert lb.ProxySettings(prefix="/a").replace(prefix=None).prefix == "/"
        assert ForwardingSettings(fail_statuses=None).fail_statuses == frozenset({502, 503, 504})
        assert lb.Balancer(["http://a:1"], max_fails=None).settings.max_fails == 3
        assert lb.Settings.from_env(GOOD, policy=None).policy == "round_robin"

    def test_a_default_made_by_a_factory(self):
        @dataclasses.dataclass(frozen=True)
        class Extra(BaseSettings):
            names: tuple[str, ...] = dataclasses.field(
                default_factory=lambda: ("a",),
                metadata=setting("LB_TEST_FACTORY_DEFAULT", tuple, "a test setting"))

        try:
            assert Extra(names=None).names == ("a",)
        finally:
            from lbmiddleware.core import settings as module
            module._REGISTRY.remove(Extra)

    def test_a_prefix_is_text(self):
        with pytest.raises(lb.ConfigError, match="^prefix has value 5: not a path"):
            lb.ProxySettings(prefix=5)


class TestBadValuesAreConfigErrors:
    @pytest.mark.parametrize("make, message", [
        (lambda: lb.Balancer(["http://a:1"], fail_timeout=10**400),
         r"^fail_timeout has value \(an integer of 1329 bits\): not a non-negative finite"),
        (lambda: lb.Settings(backends=["http://a:1"], max_ejection_time=-10**400),
         r"^max_ejection_time has value -\(an integer of 1329 bits\)"),
        (lambda: lb.Settings(backends=5), "^backends has value 5: not a URL, a list of URLs"),
        (lambda: ForwardingSettings(fail_statuses=object()), "^fail_statuses has value <object"),
        (lambda: ForwardingSettings(fail_statuses=[True]), "^fail_statuses has value"),
        (lambda: ForwardingSettings(fail_statuses=600), r"^fail_statuses has value 600: '600'"),
        (lambda: lb.ProxySettings(trusted_proxies=5), "^trusted_proxies has value 5: not an"),
    ])
    def test_a_value_of_the_wrong_type_or_size(self, make, message):
        with pytest.raises(lb.ConfigError, match=message):
            make()

    def test_one_status_is_a_list_of_one(self):
        assert ForwardingSettings(fail_statuses=503).fail_statuses == frozenset({503})
        assert ForwardingSettings.from_env({}, fail_statuses=500).fail_statuses == {500}

    def test_one_network_is_a_list_of_one(self):
        import ipaddress

        network = ipaddress.ip_network("10.0.0.0/8")
        assert lb.ProxySettings(trusted_proxies=network).trusted_proxies == (network,)


@pytest.mark.parametrize("make, where, keyword", [
    (lambda: lb.Settings(backends=["http://a:1"], retries=1), "Settings()", "retries"),
    (lambda: lb.Settings(backends=["http://a:1"]).replace(retries=1), "Settings.replace()",
     "retries"),
    (lambda: ForwardingSettings(prefix="/x"), "ForwardingSettings()", "prefix"),
    (lambda: ForwardingSettings().replace(max_fails=1), "ForwardingSettings.replace()",
     "max_fails"),
    (lambda: lb.ProxySettings(listen=":1"), "ProxySettings()", "listen"),
    (lambda: GatewaySettings(retries=1), "GatewaySettings()", "retries"),
])
def test_every_settings_class_says_where_a_keyword_of_another_belongs(make, where, keyword):
    with pytest.raises(TypeError) as info:
        make()
    message = str(info.value)
    assert message.startswith(f"{where} got an unexpected keyword argument {keyword!r}: "
                              f"{keyword} is a setting of ")
    # One helper writes it: the Balancer's (or a front-end's) message reads the same.
    with pytest.raises(TypeError) as other:
        resolve("Other", (), {keyword: 1}) if keyword != "max_fails" else (
            GatewaySettings(max_fails=1))
    assert message.partition(": ")[2] == str(other.value).partition(": ")[2]


def test_a_misspelt_keyword_of_a_settings_class_gets_the_closest_name():
    with pytest.raises(TypeError, match=r"^Settings\(\) got an unexpected keyword argument "
                                        r"'max_fail' \(did you mean max_fails\?\)$"):
        lb.Settings(backends=["http://a:1"], max_fail=1)


# -- the settings of issue 12 ------------------------------------------------------------------

@pytest.mark.parametrize("variable, value, words", [
    ("LB_HASH_BALANCE_FACTOR", "99", "must be 0 (off) or at least 100"),
    ("LB_HASH_BALANCE_FACTOR", "1.5", "not a whole percentage"),
    ("LB_RETRY_BUDGET", "-0.1", "must be 0 or more"),
    ("LB_RETRY_BUDGET", "lots", "not a ratio (0.2, 20%, or off)"),
    ("LB_RETRY_BUDGET_MIN_PER_SECOND", "-1", "must be a finite number of at least 0"),
    ("LB_RETRY_BUDGET_TTL", "500ms", "must be from 1s"),
    ("LB_RETRY_BUDGET_TTL", "1000000000", "to 1h"),
])
def test_a_bad_scheduling_setting_is_named_with_its_value(variable, value, words):
    with pytest.raises(lb.ConfigError) as caught:
        lb.Settings.from_env({"LB_BACKENDS": "http://a", variable: value})
    assert variable in str(caught.value) and value in str(caught.value)
    assert words in str(caught.value)


@pytest.mark.parametrize("given, read", [("125", 125), ("150%", 150), (200, 200), ("0", 0)])
def test_the_balance_factor_is_a_percentage(given, read):
    assert lb.Settings(backends="http://a", hash_balance_factor=given).hash_balance_factor == read


@pytest.mark.parametrize("given, read", [("0.2", 0.2), ("50%", 0.5), (0, 0.0), ("off", math.inf)])
def test_the_retry_budget_is_a_ratio_or_off(given, read):
    assert lb.Settings(backends="http://a", retry_budget=given).retry_budget == read


@pytest.mark.parametrize("variable, value, words", [
    ("LB_TIMEOUT", "-1s", "negative"),
    ("LB_TIMEOUT", "soon", "not a duration"),
    ("LB_STICKY_COOKIE", "lb;x", "';' is not allowed"),
    ("LB_STICKY_COOKIE", "my cookie", "' ' is not allowed"),
])
def test_a_bad_forwarding_setting_is_named_with_its_value(variable, value, words):
    with pytest.raises(lb.ConfigError) as caught:
        ForwardingSettings.from_env({variable: value})
    assert variable in str(caught.value) and words in str(caught.value)


def test_the_deadline_and_the_sticky_cookie_are_off_by_default():
    forwarding = ForwardingSettings()
    assert (forwarding.timeout, forwarding.sticky_cookie) == (0.0, "")
    given = ForwardingSettings.from_env({"LB_TIMEOUT": "1.5s", "LB_STICKY_COOKIE": " lb_b "})
    assert (given.timeout, given.sticky_cookie) == (1.5, "lb_b")


# -- TLS files ---------------------------------------------------------------------------------

def test_a_tls_file_setting_names_a_missing_or_unreadable_file(tmp_path):
    missing = tmp_path / "ca.pem"
    with pytest.raises(lb.ConfigError, match=r"^LB_BACKEND_CA has value '.*ca.pem': no such file$"):
        lb.Settings.from_env({"LB_BACKENDS": "https://a", "LB_BACKEND_CA": str(missing)})
    with pytest.raises(lb.ConfigError, match="LB_BACKEND_CLIENT_CERT has value .*: not a file"):
        lb.Settings.from_env({"LB_BACKENDS": "https://a", "LB_BACKEND_CLIENT_CERT": str(tmp_path)})
    missing.write_text("pem")
    settings = lb.Settings(backends="https://a", backend_ca=str(missing), backend_verify="no")
    assert (settings.backend_ca, settings.backend_verify) == (str(missing), False)


def test_a_client_key_needs_its_certificate(tmp_path):
    key = tmp_path / "key.pem"
    key.write_text("pem")
    with pytest.raises(lb.ConfigError, match="LB_BACKEND_CLIENT_KEY .* LB_BACKEND_CLIENT_CERT"):
        lb.Settings(backends="https://a", backend_client_key=str(key))


def test_the_gateway_needs_its_certificate_and_key_together(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("pem")
    with pytest.raises(lb.ConfigError, match="LB_TLS_CERT is set but LB_TLS_KEY is empty"):
        GatewaySettings(tls_cert=str(cert))
    with pytest.raises(lb.ConfigError, match="LB_TLS_KEY is set but LB_TLS_CERT is empty"):
        GatewaySettings(tls_key=str(cert))
    assert GatewaySettings(tls_cert=str(cert), tls_key=str(cert)).tls_cert == str(cert)


@pytest.mark.parametrize("given", [(1, 5), [1, 5]])
def test_a_per_attempt_timeout_given_as_the_deadline_says_where_it_goes(given):
    with pytest.raises(lb.ConfigError, match=r"timeout has value .*: the deadline of a whole "
                                             r"request across its attempts is one duration"):
        ForwardingSettings(timeout=given)


def test_a_balance_factor_under_another_policy_is_ignored_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="lbmiddleware"):
        lb.Settings(backends="http://a", policy="latency", hash_balance_factor=150)
    assert ("LB_HASH_BALANCE_FACTOR (hash_balance_factor) has value 150 but the policy is "
            "latency: it bounds ip_hash's keys only, and is ignored") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lbmiddleware"):
        lb.Settings(backends="http://a", policy="ip_hash", hash_balance_factor=150)
    assert caplog.text == ""


@pytest.mark.parametrize("text", ["off", "OFF", "none", "false", "no"])
def test_the_retry_budget_is_turned_off_in_words(text):
    assert lb.Settings(backends="http://a", retry_budget=text).retry_budget == math.inf


@pytest.mark.parametrize("server", ["1.2.3.4:\u0663", "[::1]:\u0663\u0663"])
def test_a_dns_server_port_is_ascii_digits(server):
    with pytest.raises(lb.ConfigError, match="LB_DNS_SERVERS"):
        lb.Settings.from_env({"LB_BACKENDS": "http://a", "LB_DNS_SERVERS": server})
