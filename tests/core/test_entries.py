"""Backends with priority and a server name, sources, and the entries a pool is built from."""

import re

import pytest

import lbmiddleware as lb
from lbmiddleware.core.backend import parse_backend, parse_backends, parse_entries


class TestBackend:
    def test_priority_defaults_to_zero_and_takes_part_in_equality(self):
        assert lb.Backend("http://a:1").priority == 0
        assert lb.Backend("http://a:1", 1, 2).priority == 2
        assert lb.Backend("http://a:1") != lb.Backend("http://a:1", priority=1)
        assert lb.Backend("http://a:1", priority=1) == lb.Backend("HTTP://A:1/", 1, 1)

    @pytest.mark.parametrize("priority", [-1, True, 1.5, "1"])
    def test_a_bad_priority_is_a_config_error_naming_it(self, priority):
        with pytest.raises(lb.ConfigError, match="priority"):
            lb.Backend("http://a:1", priority=priority)

    def test_a_base_path_is_ascii_as_it_goes_in_the_request_line(self):
        """Non-ASCII (and spaces) percent-encoded as UTF-8, what is already encoded and the
        reserved characters kept: the upstream client writes the path as ASCII."""
        backend = lb.Backend("http://a:1/bücher/ä b/")
        assert (backend.url, backend.path) == ("http://a:1/b%C3%BCcher/%C3%A4%20b",
                                               "/b%C3%BCcher/%C3%A4%20b")
        assert backend == lb.Backend("http://a:1/b%C3%BCcher/%C3%A4%20b")
        assert backend.identity == lb.Backend("http://a:1/b%C3%BCcher/%C3%A4%20b").identity
        kept = "/v1;x=1/a%2Fb/~u/(p)!$&'*+,=:@-._"
        assert lb.Backend(f"http://a:1{kept}").path == kept
        assert parse_backend("http://a:1/ä weight=2").url == "http://a:1/%C3%A4"

    def test_server_name_and_source_are_keywords(self):
        backend = lb.Backend("http://10.0.0.5:8080/base", server_name="Orders.Internal.",
                             source="dns+http://orders.internal:8080/base")
        assert backend.server_name == "orders.internal"
        assert backend.source == "dns+http://orders.internal:8080/base"
        with pytest.raises(TypeError):
            lb.Backend("http://a:1", 1, 0, "name")  # type: ignore[misc]

    def test_source_is_not_part_of_equality_but_server_name_is(self):
        plain = lb.Backend("http://10.0.0.5:8080", server_name="orders")
        assert plain == lb.Backend("http://10.0.0.5:8080", server_name="orders", source="x")
        assert hash(plain) == hash(lb.Backend("http://10.0.0.5:8080", server_name="orders",
                                              source="y"))
        assert plain != lb.Backend("http://10.0.0.5:8080")

    @pytest.mark.parametrize("name", ["", " ", "a b", 3, "a/b"])
    def test_a_bad_server_name_is_a_config_error(self, name):
        with pytest.raises(lb.ConfigError, match="server name"):
            lb.Backend("http://10.0.0.5", server_name=name)

    @pytest.mark.parametrize("url, server_name, authority, tls", [
        ("http://10.0.0.5:8080/b", "orders.internal", "orders.internal:8080", "orders.internal"),
        ("http://10.0.0.5/b", "orders.internal", "orders.internal", "orders.internal"),
        ("https://10.0.0.5:443", "orders.internal", "orders.internal", "orders.internal"),
        ("https://10.0.0.5:8443", None, "10.0.0.5:8443", "10.0.0.5"),
        ("http://api:80", None, "api", "api"),
        ("http://[::1]:8080", None, "[::1]:8080", "::1"),
        ("http://[::1]:8080", "svc", "svc:8080", "svc"),
    ])
    def test_authority_and_tls_server_name(self, url, server_name, authority, tls):
        backend = lb.Backend(url, server_name=server_name)
        assert backend.authority == authority
        assert backend.tls_server_name == tls

    def test_repr_is_short_for_a_plain_backend(self):
        assert repr(lb.Backend("http://a:1")) == "Backend(url='http://a:1', weight=1)"
        assert repr(lb.Backend("http://a:1", 2, 1, server_name="n")) == (
            "Backend(url='http://a:1', weight=2, priority=1, server_name='n')")


class TestParseBackend:
    @pytest.mark.parametrize("text, weight, priority", [
        ("http://a:1", 1, 0),
        ("http://a:1 backup", 1, 1),
        ("http://a:1 weight=3 backup", 3, 1),
        ("http://a:1 priority=2", 1, 2),
        ("http://a:1 priority=1 backup", 1, 1),
        ("http://a:1 priority=0", 1, 0),
    ])
    def test_options(self, text, weight, priority):
        backend = parse_backend(text)
        assert (backend.weight, backend.priority) == (weight, priority)

    @pytest.mark.parametrize("text, message", [
        ("http://a:1 backup priority=2", "backup"),
        ("http://a:1 priority=0 backup", "backup"),
        ("http://a:1 priority=x", "priority"),
        ("http://a:1 priority=-1", "priority"),
        ("http://a:1 backup=1", "unknown option"),
        ("http://a:1 spare", "unknown option"),
    ])
    def test_bad_options(self, text, message):
        with pytest.raises(lb.ConfigError, match=message):
            parse_backend(text)

    def test_a_source_in_a_static_list_needs_the_balancer(self):
        with pytest.raises(lb.ConfigError, match="a source needs lb.Balancer"):
            parse_backends(["http://a:1", "dns+http://orders:8080"])


class TestSource:
    def test_dns(self):
        source = lb.Source("dns+http://Orders.Internal:8080/base/")
        assert (source.url, source.kind, source.scheme, source.host, source.port, source.path,
                source.weight, source.priority) == (
            "dns+http://orders.internal:8080/base", "dns", "http", "orders.internal", 8080,
            "/base", 1, 0)
        assert str(source) == "dns+http://orders.internal:8080/base"

    def test_dns_default_ports_and_options(self):
        assert lb.Source("dns+https://orders").port == 443
        assert lb.Source("dns+http://orders:80").url == "dns+http://orders"
        source = lb.Source("dns+http://orders:8080 weight=2 backup")
        assert (source.weight, source.priority) == (2, 1)
        assert source.text == "dns+http://orders:8080 weight=2 priority=1"
        assert lb.Source("dns+http://orders priority=3").priority == 3

    def test_srv(self):
        source = lb.Source("srv+https://_http._tcp.Orders.service.consul/api")
        assert (source.kind, source.scheme, source.host, source.port, source.path) == (
            "srv", "https", "_http._tcp.orders.service.consul", None, "/api")
        assert source.url == "srv+https://_http._tcp.orders.service.consul/api"

    def test_etcd(self):
        source = lb.Source("etcd://127.0.0.1:2379/services/orders")
        assert (source.kind, source.scheme, source.host, source.port, source.path) == (
            "etcd", "http", "127.0.0.1", 2379, "services/orders/")
        assert source.url == "etcd://127.0.0.1:2379/services/orders"
        assert lb.Source("etcd://etcd/services/orders/").port == 2379
        assert lb.Source("etcd://etcd/services/orders/") == lb.Source("etcd://etcd:2379/services/orders")

    @pytest.mark.parametrize("text, message", [
        ("srv+http://_http._tcp.orders weight=2", "records decide"),
        ("etcd://127.0.0.1:2379/services/orders backup", "records decide"),
        ("srv+http://_http._tcp.orders:8080", "port"),
        ("etcd://127.0.0.1:2379", "key prefix"),
        ("etcd://127.0.0.1:2379/", "key prefix"),
        ("dns+ftp://orders", "scheme"),
        ("etcd+https://127.0.0.1/x", "scheme"),
        ("dns+http://", "host"),
        ("dns+http://u:p@orders", "credentials"),
        ("dns+http://orders?x=1", "query"),
        ("dns+http://orders weight=0", "weight"),
        ("dns+http://orders backup priority=2", "backup"),
        ("dns+http://orders color=red", "unknown option"),
        ("http://orders", "not a source"),
    ])
    def test_bad_text_is_a_config_error_naming_the_entry(self, text, message):
        with pytest.raises(lb.ConfigError, match=message) as error:
            lb.Source(text)
        assert text.split()[0] in str(error.value)

    @pytest.mark.parametrize("text, host, url", [
        ("dns+http://bücher.lb.test:8080", "xn--bcher-kva.lb.test",
         "dns+http://xn--bcher-kva.lb.test:8080"),
        ("dns+https://BÜCHER.example/base", "xn--bcher-kva.example",
         "dns+https://xn--bcher-kva.example/base"),
        ("srv+http://_http._tcp.bücher.service.consul", "_http._tcp.xn--bcher-kva.service.consul",
         "srv+http://_http._tcp.xn--bcher-kva.service.consul"),
        ("etcd://bücher:2379/services/orders", "xn--bcher-kva",
         "etcd://xn--bcher-kva:2379/services/orders"),
        ("dns+http://xn--bcher-kva.lb.test", "xn--bcher-kva.lb.test",
         "dns+http://xn--bcher-kva.lb.test"),
    ])
    def test_an_international_name_is_kept_in_its_ascii_form(self, text, host, url):
        """IDNA A-labels, so the DNS question, Host and TLS SNI carry a name DNS and HTTP
        take (the raw name once failed every refresh)."""
        source = lb.Source(text)
        assert (source.host, source.url) == (host, url)
        assert source == lb.Source(url)

    @pytest.mark.parametrize("text, why", [
        ("dns+http://a..b:8080", "empty label"),
        ("dns+http://-bad-.x", "'-bad-'"),
        ("dns+http://bad-.x", "'bad-'"),
        ("dns+http://a_b!.x", "'a_b!'"),
        ("dns+http://" + "a" * 64 + ".x", "longer than 63"),
        ("dns+http://" + ".".join(["a" * 63] * 4) + ":8080", "longer than 253"),
        ("dns+http://" + "ü" * 60 + ".x", "longer than 63"),
        ("srv+http://_http._tcp..x", "empty label"),
        ("etcd://a..b:2379/services/x", "empty label"),
        ("dns+http://straße.de", "write its ASCII form"),
    ])
    def test_a_name_that_is_no_dns_name_is_a_config_error_naming_the_entry(self, text, why):
        with pytest.raises(lb.ConfigError, match="not a valid DNS name") as error:
            lb.Source(text)
        assert text in str(error.value) and why in str(error.value)

    def test_addresses_and_a_final_dot_are_names_too(self):
        assert lb.Source("dns+http://10.0.0.5:8080").host == "10.0.0.5"
        assert lb.Source("dns+http://[fd00::5]:8080").host == "fd00::5"
        assert lb.Source("dns+http://web.lb.test.:8080").host == "web.lb.test."

    def test_equality_and_hash(self):
        assert lb.Source("dns+http://a:80") == lb.Source("DNS+HTTP://a")
        assert len({lb.Source("dns+http://a"), lb.Source("dns+http://a/")}) == 1
        assert lb.Source("dns+http://a") != lb.Source("dns+http://a backup")


class TestParseEntries:
    def test_mixed_string(self):
        entries = parse_entries("http://a:1 backup, dns+http://orders:8080/b weight=2,"
                                " etcd://127.0.0.1:2379/services/x")
        assert entries == (lb.Backend("http://a:1", priority=1),
                           lb.Source("dns+http://orders:8080/b weight=2"),
                           lb.Source("etcd://127.0.0.1:2379/services/x"))

    def test_mixed_list_of_objects_and_text(self):
        source = lb.Source("srv+http://_x._tcp.y")
        entries = parse_entries([lb.Backend("http://a:1"), source, "http://b:1"])
        assert entries == (lb.Backend("http://a:1"), source, lb.Backend("http://b:1"))
        assert parse_entries(source) == (source,)

    def test_duplicates_are_rejected(self):
        with pytest.raises(lb.ConfigError, match="listed twice"):
            parse_entries("dns+http://a, dns+http://a:80")
        with pytest.raises(lb.ConfigError, match="listed twice"):
            parse_entries("http://a, http://a:80 backup")

    def test_empty(self):
        with pytest.raises(lb.ConfigError, match="empty"):
            parse_entries("")
        assert parse_entries("", allow_empty=True) == ()

    def test_a_wrong_type_is_a_config_error(self):
        with pytest.raises(lb.ConfigError):
            parse_entries([3])  # type: ignore[list-item]

    @pytest.mark.parametrize(("entry", "hint"), [
        ("dns://orders:8080", "(a DNS source is dns+http:// or dns+https://)"),
        ("srv://_http._tcp.orders", "(an SRV source is srv+http:// or srv+https://)"),
    ])
    def test_a_source_without_its_http_scheme_says_how_to_write_it(self, entry, hint):
        with pytest.raises(lb.ConfigError) as caught:
            parse_entries(entry)
        assert str(caught.value) == (
            f"backend URL {entry!r} has scheme {entry.partition(':')[0]!r}: only http and "
            f"https {hint}")


class TestSeparators:
    """``LB_BACKENDS`` as people write it: a trailing comma is fine; ``;`` or a space between
    entries, or any other bad entry, is an error naming the entry (never urllib's words)."""

    @pytest.mark.parametrize("text", [
        "http://a:1, http://b:2,", "http://a:1,http://b:2, ", ",http://a:1, http://b:2",
        "http://a:1,, http://b:2"])
    def test_empty_entries_are_ignored(self, text):
        assert parse_entries(text) == (lb.Backend("http://a:1"), lb.Backend("http://b:2"))
        assert parse_entries(text.split(",")) == parse_entries(text)

    @pytest.mark.parametrize("text", ["", " ", ",", " , ,"])
    def test_a_list_of_nothing_but_commas_is_empty(self, text):
        with pytest.raises(lb.ConfigError, match="^backend list is empty: give at least one URL$"):
            parse_entries(text)
        assert parse_entries(text, allow_empty=True) == ()

    def test_a_trailing_comma_in_the_variable_is_accepted(self):
        settings = lb.Settings.from_env({"LB_BACKENDS": "http://a:1, http://b:2,"})
        assert [b.url for b in settings.backends] == ["http://a:1", "http://b:2"]
        with pytest.raises(lb.ConfigError, match="^LB_BACKENDS has value ',': backend list is "
                                                 "empty: give at least one URL$"):
            lb.Settings.from_env({"LB_BACKENDS": ","})

    @pytest.mark.parametrize("text, entries", [
        ("http://a:1;http://b:2", "http://a:1, http://b:2"),
        ("http://a:1; http://b:2 backup", "http://a:1, http://b:2 backup"),
        ("dns+http://orders:8080;http://b:2", "dns+http://orders:8080, http://b:2"),
        ("http://a:1;b:2", "http://a:1, b:2"),
        ("http://a:1, http://b:2;http://c:3", "http://b:2, http://c:3")])
    def test_a_semicolon_between_entries_asks_for_a_comma(self, text, entries):
        with pytest.raises(lb.ConfigError) as caught:
            parse_entries(text)
        entry = text.split(", ")[-1]
        assert str(caught.value) == (
            f"backend list entry {entry!r} has a ';': entries are separated by commas "
            f"(did you mean {entries!r}?)")

    def test_the_semicolon_error_names_the_variable_and_its_value(self):
        with pytest.raises(lb.ConfigError) as caught:
            lb.Settings.from_env({"LB_BACKENDS": "http://a:1;http://b:2"})
        message = str(caught.value)
        assert message.startswith("LB_BACKENDS has value 'http://a:1;http://b:2': backend list "
                                  "entry 'http://a:1;http://b:2' has a ';'")
        assert "Port" not in message and "cast" not in message

    def test_a_semicolon_inside_a_base_path_is_a_path(self):
        assert parse_entries("http://a:1/x;v=1")[0].url == "http://a:1/x;v=1"

    def test_a_space_between_entries_asks_for_a_comma(self):
        with pytest.raises(lb.ConfigError) as caught:
            parse_entries("http://a:1 http://b:2")
        assert str(caught.value) == (
            "backend 'http://a:1 http://b:2' has 'http://b:2' after its URL: entries are "
            "separated by commas (did you mean 'http://a:1, http://b:2'?)")

    def test_a_list_item_holding_two_entries_asks_for_two_items(self):
        """Its comma is there already: the hint is two items, not 'http://a:1,, ...'."""
        with pytest.raises(lb.ConfigError) as caught:
            parse_entries(["http://a:1, http://b:2 weight=2"])
        assert str(caught.value) == (
            "backend 'http://a:1, http://b:2 weight=2' has 'http://b:2' after its URL: an "
            "item of a list is one entry (did you mean 'http://a:1', 'http://b:2 weight=2', "
            "each an item?)")

    @pytest.mark.parametrize("url, reason", [
        ("http://a:x", "its port 'x' is not a number from 0 to 65535"),
        ("http://a:99999", "its port '99999' is not a number from 0 to 65535"),
        ("http://a:-1", "its port '-1' is not a number from 0 to 65535"),
        ("http://[::1:8080", "an IPv6 address's '[' is not closed by ']'"),
        ("http://[::1]:8080x", "its port '8080x' is not a number from 0 to 65535")])
    def test_a_bad_url_says_why_in_its_own_words(self, url, reason):
        with pytest.raises(lb.ConfigError) as caught:
            parse_entries(f"http://ok:1, {url}")
        assert str(caught.value) == f"backend URL {url!r} is not a valid URL: {reason}"

    @pytest.mark.parametrize("url, reason", [
        ("dns+http://orders:x", "its port 'x' is not a number from 0 to 65535"),
        ("etcd://[::1:2379/services/x", "an IPv6 address's '[' is not closed by ']'")])
    def test_a_bad_source_url_says_why_in_its_own_words(self, url, reason):
        with pytest.raises(lb.ConfigError) as caught:
            parse_entries(url)
        assert str(caught.value) == f"source {url!r} is not a valid URL: {reason}"

    @pytest.mark.parametrize("text, words", [
        ("http://a:1, b:2", "backend URL 'b:2' has no scheme"),
        ("http://a:1, ftp://b", "backend URL 'ftp://b' has scheme 'ftp'"),
        ("http://a:1, http://b:2 wieght=2", "backend 'http://b:2 wieght=2' has unknown option")])
    def test_any_other_bad_entry_is_named(self, text, words):
        with pytest.raises(lb.ConfigError, match=f"^{re.escape(words)}"):
            parse_entries(text)
