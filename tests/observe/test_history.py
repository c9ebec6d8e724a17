"""A pool's History: rates and mean latencies from the deltas of cumulative counters, a ring of
the last minutes, sampling on the fleet's loop that holds the pool weakly and leaves nothing
running once the pool is closed or collected."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

import lbmiddleware as lb
from lbmiddleware.core.balancer import Balancer as CoreBalancer
from lbmiddleware.fleet import loop
from lbmiddleware.observe import History, history_of
from lbmiddleware.observe.history import TASK_NAME

from ..conftest import FakeClock
from ..support.forking import in_forked_child
from ..support.waiting import wait_for

A, B, C = "http://a:1", "http://b:1", "http://c:1"


def served(pool, url: str, count: int, *, ok: bool = True, latency: float | None = 0.01,
           status: int | None = 200) -> None:
    """``count`` attempts on ``url`` ended with the given outcome."""
    backend = next(b for b in pool.backends if b.url == url)
    for _ in range(count):
        pool.report(backend, ok, latency, status=status if ok or status else None)


def history_tasks() -> set[asyncio.Task]:
    """The sampling tasks on the fleet's loop now (other tests' end at their own moment:
    a test compares the sets before and after)."""
    async def tasks() -> set[asyncio.Task]:
        return {t for t in asyncio.all_tasks() if t.get_name() == TASK_NAME}
    return loop.submit(tasks()).result(5)


def new_tasks(before: set[asyncio.Task]) -> set[asyncio.Task]:
    return history_tasks() - before


def test_rates_and_mean_latency_come_from_the_deltas_of_two_samples():
    clock = FakeClock()
    pool = CoreBalancer([A, B], timer=clock)
    history = History(pool, timer=clock)
    served(pool, A, 3)                      # before the first sample: not in any interval
    history.sample(1000.0)
    served(pool, A, 8, latency=0.010)
    served(pool, A, 2, ok=False, latency=0.040, status=503)
    history.sample(1005.0)
    a, b = history.of(A), history.of(B)
    assert a.interval == 5.0
    assert a.requests_per_second == (2.0,)                  # 10 in 5 s
    assert a.failures_per_second == (0.4,)
    assert a.latency_ms == (pytest.approx(16.0),)           # (8 x 10 + 2 x 40) / 10 ms
    assert a.last_rates == (2.0, 0.4)
    assert b.requests_per_second == (0.0,) and b.latency_ms == (None,)   # nothing answered


def test_bytes_per_second_are_the_sent_and_received_bytes_of_the_attempts_ended_between():
    clock = FakeClock()
    pool = CoreBalancer([A, B], timer=clock, drain_timeout=0)
    history = History(pool, timer=clock)
    history.sample(0.0)
    a = next(b for b in pool.backends if b.url == A)
    pool.report(a, True, 0.01, bytes_sent=1000, bytes_received=9000)
    pool.report(a, False, None, bytes_sent=500)             # a failure's bytes count too
    history.sample(5.0)
    pool.update([B])                                        # A leaves...
    history.sample(10.0)
    pool.update([A, B])                                     # ...and comes back from zero
    pool.report(next(b for b in pool.backends if b.url == A), True, 0.01,
                bytes_received=250)
    history.sample(15.0)
    assert history.of(A).bytes_per_second == (2100.0, None, 50.0)
    assert history.of(B).bytes_per_second == (0.0, 0.0, 0.0)


def test_before_two_samples_there_is_no_interval_and_no_rate():
    clock = FakeClock()
    history = History(CoreBalancer([A], timer=clock), timer=clock)
    assert history.of(A).requests_per_second == () and history.of(A).last_rates == (None, None)
    history.sample()                        # the timer's reading by default
    assert history.of(A).last_rates == (None, None)
    assert history.sample(clock.now) is True             # the same moment: ignored
    assert history.of(A).requests_per_second == ()


def test_a_joiner_counts_from_zero_a_leaver_is_a_gap_and_a_counter_that_went_down_restarted():
    clock = FakeClock()
    pool = CoreBalancer([A, B], timer=clock, drain_timeout=0)
    history = History(pool, timer=clock)
    history.sample(0.0)
    served(pool, B, 10)
    pool.update([A, B, C])
    served(pool, C, 5)
    history.sample(5.0)
    assert history.of(C).requests_per_second == (1.0,)    # joined in the interval: from 0
    pool.update([A, C])                     # B leaves (no request in flight: at once)
    history.sample(10.0)
    assert history.of(B).requests_per_second == (2.0, None)
    pool.update([A, B, C])                  # B is back: a new member, its counters from 0
    served(pool, B, 5)
    history.sample(15.0)
    assert history.of(B).requests_per_second == (2.0, None, 1.0)
    assert set(history.backends()) == {A, B, C}
    assert history.backends()[A].requests_per_second == (0.0, 0.0, 0.0)


def test_it_keeps_the_last_ten_minutes_of_five_second_intervals():
    clock = FakeClock()
    pool = CoreBalancer([A], timer=clock)
    history = History(pool, timer=clock)
    for n in range(200):
        served(pool, A, n)                  # n requests in the interval that ends at n
        history.sample(n * 5.0)
    rates = history.of(A).requests_per_second
    assert len(rates) == 120                                # 600 s / 5 s
    assert rates[-1] == 199 / 5 and rates[0] == 80 / 5
    history.sample(199 * 5.0 + 400.0)       # a stalled loop: 400 s without a sample
    rates = history.of(A).requests_per_second
    assert len(rates) == 120 - 80 + 1       # what is older than 600 s went, whatever the count
    assert rates[-1] == 0.0


def test_a_short_interval_and_window_are_settings_and_bad_ones_are_refused():
    clock = FakeClock()
    pool = CoreBalancer([A], timer=clock)
    history = History(pool, interval=1.0, keep=3.0, timer=clock)
    for n in range(10):
        history.sample(float(n))
    assert len(history.of(A).requests_per_second) == 3
    with pytest.raises(lb.ConfigError, match="interval has value 0"):
        History(pool, interval=0)
    with pytest.raises(lb.ConfigError, match="keep has value 'long'"):
        History(pool, keep="long")         # type: ignore[arg-type]
    with pytest.raises(lb.ConfigError, match=r"keep has value 1\.0: shorter than interval"):
        History(pool, interval=2.0, keep=1.0)
    with pytest.raises(TypeError, match=r"History needs a Balancer, not \['http://a:1'\]"):
        History([A])                       # type: ignore[arg-type]
    with pytest.raises(TypeError, match="history_of needs a Balancer, not 'http://a:1'"):
        history_of(A)                      # type: ignore[arg-type]


def test_it_holds_the_pool_weakly():
    clock = FakeClock()
    pool = CoreBalancer([A], timer=clock)
    history = History(pool, timer=clock)
    history.sample(0.0)
    del pool
    gc.collect()
    assert history.sample(5.0) is False                     # gone: nothing sampled
    assert history.of(A).requests_per_second == ()


def test_history_of_gives_a_pools_one_history_sampling_at_once_on_the_fleets_loop():
    pool = lb.Balancer([A])
    history = history_of(pool)
    assert history_of(pool) is history
    assert history.running
    assert wait_for(lambda: history.of(A).interval and len(history._samples) == 1)
    assert any(not t.done() for t in history_tasks())
    assert [t.name for t in threading.enumerate()].count(loop.THREAD_NAME) == 1
    assert history_of(lb.Balancer([A])) is not history      # another pool, another History
    pool.close()


def test_sampling_goes_on_every_interval_until_stopped_and_leaves_no_task():
    before = history_tasks()
    pool = lb.Balancer([A])
    history = History(pool, interval=0.02).start()
    assert history.start() is history                       # idempotent
    assert wait_for(lambda: len(history.of(A).requests_per_second) >= 3)
    assert len(new_tasks(before)) == 1
    history.stop()
    assert wait_for(lambda: not new_tasks(before))
    assert not history.running
    sampled = len(history._samples)
    history.start()                                         # stopped for good
    assert not history.running and len(history._samples) == sampled


def test_a_collected_pool_ends_its_sampling_task():
    before = history_tasks()
    threads = set(threading.enumerate())
    pool = lb.Balancer([A])
    history = History(pool, interval=3600.0, keep=7200.0).start()    # asleep till the pool goes
    assert wait_for(lambda: len(new_tasks(before)) == 1)
    del pool
    gc.collect()
    assert wait_for(lambda: not new_tasks(before))
    assert not history.running
    assert set(threading.enumerate()) <= threads | {t for t in threading.enumerate()
                                                    if t.name == loop.THREAD_NAME}


def test_a_closed_pool_ends_its_sampling_task():
    before = history_tasks()
    pool = lb.Balancer([A])
    history = History(pool, interval=0.02).start()
    assert wait_for(lambda: len(new_tasks(before)) == 1)
    pool.close()
    assert wait_for(lambda: not new_tasks(before))
    assert not history.running
    assert pool.pick().url == A                             # the pool itself works on


def test_a_forked_child_samples_on_its_own_loop():
    pool = lb.Balancer([A])
    history = History(pool, interval=0.02).start()
    assert wait_for(lambda: len(history._samples) >= 2)

    def child() -> bytes:
        seen = len(history._samples)
        ok = wait_for(lambda: len(history._samples) >= seen + 3, timeout=5)
        return b"sampled" if ok and history.running else b"stuck"

    forked = in_forked_child(child)
    history.stop()
    assert forked.exit_code == 0
    assert forked.output == b"sampled"
