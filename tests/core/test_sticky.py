"""Sticky cookies in the core: the opaque value of a backend, and pick(prefer=...), which
goes to the backend a cookie names while a pick may choose it (every policy), and else
balances as usual; on a fake clock."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from lbmiddleware.core.balancer import Balancer
from lbmiddleware.core.settings import POLICIES
from lbmiddleware.core.sticky import sticky_value

URLS = ["http://127.0.0.1:8001", "http://127.0.0.1:8002", "http://127.0.0.1:8003"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pool(policy: str = "round_robin", urls=URLS, **options) -> tuple[Balancer, Clock]:
    clock = Clock()
    return Balancer(urls, policy=policy, timer=clock, rng=random.Random(1), **options), clock


def test_a_backends_value_is_opaque_and_the_same_in_every_process():
    value = sticky_value("http://127.0.0.1:8001")
    assert value == "628591f9d2e4df92"          # a digest, fixed: every release reads old cookies
    assert "127.0.0.1" not in value and "8001" not in value
    other = subprocess.run([sys.executable, "-c", "from lbmiddleware.core.sticky import "
                            "sticky_value; print(sticky_value('http://127.0.0.1:8001'))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert other == value
    assert len({sticky_value(url) for url in URLS}) == 3


def test_the_balancer_gives_the_value_of_its_normalised_url():
    balancer, _ = pool()
    assert balancer.sticky_value("HTTP://127.0.0.1:8001/") == sticky_value(URLS[0])
    assert balancer.sticky_value(balancer.backends[1]) == sticky_value(URLS[1])


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_follows_a_cookie_to_a_usable_backend(policy):
    balancer, _ = pool(policy)
    value = sticky_value(URLS[2])
    picks = [balancer.pick(key="k", prefer=value) for _ in range(20)]
    assert {b.url for b in picks} == {URLS[2]}
    assert [s["in_flight"] for s in balancer.stats()] == [0, 0, 20]
    for backend in picks:
        balancer.report(backend, True, 0.01)
    assert [s["in_flight"] for s in balancer.stats()] == [0, 0, 0]


def test_a_value_naming_no_member_is_balanced_as_usual():
    balancer, _ = pool()
    plain, _ = pool()
    for forged in ("0000000000000000", "", "http://127.0.0.1:8001", sticky_value("http://x:1")):
        assert balancer.pick(prefer=forged) == plain.pick()


def test_an_ejected_backends_clients_are_balanced_and_come_back_after_it_returns():
    balancer, clock = pool(max_fails=1, fail_timeout=10)
    third = balancer.backends[2]
    balancer.report(balancer.pick(prefer=sticky_value(URLS[2])), False)
    value = sticky_value(URLS[2])
    assert {balancer.pick(prefer=value).url for _ in range(10)} == set(URLS[:2])
    clock.now += 10.0                                   # its ejection is over: on probation
    assert balancer.pick(prefer=value) == third


def test_in_a_panic_the_cookie_is_followed_to_any_member():
    balancer, _ = pool(max_fails=1)
    for url in URLS:
        balancer.report(balancer.pick(prefer=sticky_value(url)), False)
    assert balancer.pool_stats()["panic"]
    assert balancer.pick(prefer=sticky_value(URLS[1])).url == URLS[1]


def test_an_excluded_backend_is_not_chosen_again_for_a_retry():
    balancer, _ = pool()
    first = balancer.pick(prefer=sticky_value(URLS[0]))
    assert first.url == URLS[0]
    retry = balancer.pick(exclude=[first], prefer=sticky_value(URLS[0]))
    assert retry.url != URLS[0]


def test_a_draining_backend_takes_no_new_request_even_with_its_cookie():
    balancer, _ = pool()
    balancer.drain(URLS[0])
    assert {balancer.pick(prefer=sticky_value(URLS[0])).url for _ in range(6)} == set(URLS[1:])


def test_a_removed_backends_cookie_is_balanced_and_a_returning_one_is_followed_again():
    balancer, _ = pool()
    balancer.update(URLS[1:])
    assert balancer.pick(prefer=sticky_value(URLS[0])).url in URLS[1:]
    balancer.update(URLS)
    assert balancer.pick(prefer=sticky_value(URLS[0])).url == URLS[0]


def test_a_backup_is_followed_only_while_its_tier_takes_traffic():
    urls = [URLS[0], URLS[1], f"{URLS[2]} backup"]
    balancer, clock = pool(urls=urls, max_fails=1, fail_timeout=10)
    backup = sticky_value(URLS[2])
    assert {balancer.pick(prefer=backup).url for _ in range(4)} == set(URLS[:2])
    for url in URLS[:2]:                                # both primaries ejected
        balancer.report(balancer.pick(prefer=sticky_value(url)), False)
    assert balancer.pick(prefer=backup).url == URLS[2]
    clock.now += 10.0                                   # the primaries return
    assert balancer.pick(prefer=backup).url in URLS[:2]


def test_a_preferred_pick_is_a_request_for_the_retry_budget():
    balancer, _ = pool(retry_budget=1.0, retry_budget_min_per_second=0)
    for _ in range(3):
        balancer.pick(prefer=sticky_value(URLS[0]))
    assert balancer.pool_stats()["retry_budget"]["requests"] == 3


def test_a_secret_keys_the_digest_so_guessing_addresses_finds_nothing():
    keyed, _ = pool(sticky_cookie_secret="s3cret, the same in every process")
    value = keyed.sticky_value(URLS[0])
    assert value != sticky_value(URLS[0])            # an unkeyed guess does not match
    assert value == sticky_value(URLS[0], "s3cret, the same in every process")
    assert keyed.pick(prefer=value).url == URLS[0]   # and the pool follows it
    other, _ = pool(sticky_cookie_secret="s3cret, the same in every process")
    unkeyed = [keyed.pick(prefer=sticky_value(URLS[1])).url for _ in range(6)]
    assert unkeyed == [other.pick().url for _ in range(6)]   # an unkeyed value: balanced
    assert "s3cret" not in repr(keyed.settings)
    assert len(sticky_value(URLS[0], "k" * 100)) == 16                      # any length
