"""Active health's state machine: HAProxy's rise/fall counter, the start rules, one event per
transition (SEMANTICS part two, "Active health checks")."""

import pytest

from lbmiddleware.core.backend import Backend
from lbmiddleware.core.events import BackendDown, BackendUp
from lbmiddleware.core.health import ActiveHealth, ActiveRecord
from lbmiddleware.errors import ConfigError

A = Backend("http://a:1")


def make(rise=2, fall=3):
    events = []
    return ActiveHealth(rise, fall, events.append), events


def started(health, joined_later=False):
    record = ActiveRecord()
    health.start(record, A, joined_later)
    return record


def run(health, record, results, now=0.0):
    """Feed probe results ('+' pass, '-' fail); return the up/down state after each."""
    states = []
    for i, mark in enumerate(results):
        health.result(record, A, mark == "+", "ok" if mark == "+" else "status 503", now + i)
        states.append("U" if record.up else "D")
    return "".join(states)


def fully_up(health):
    record = started(health)
    health.result(record, A, True, "", 0.0)
    return record


def test_existing_members_start_up_with_h_equal_to_rise():
    health, events = make()
    record = started(health)
    assert (record.h, record.up, record.pending) == (2, True, False)
    assert health.status(record) == "up"
    assert events == []


def test_a_member_at_start_goes_down_on_its_first_failure():
    # h = rise: a fail drops it below rise, which snaps it to 0 (HAProxy).
    health, events = make(rise=2, fall=3)
    record = started(health)
    assert health.result(record, A, False, "status 503", 1.0) is True
    assert (record.h, record.up) == (0, False)
    assert events == [BackendDown(A, "status 503")]


def test_a_member_at_start_stays_up_on_a_pass_and_then_needs_fall_failures():
    health, _ = make(rise=2, fall=3)
    record = started(health)
    assert health.result(record, A, True, "", 1.0) is False
    assert record.h == 4                       # snapped to rise + fall - 1
    assert run(health, record, "---") == "UUD"


def test_fall_failed_probes_in_a_row_take_an_up_backend_down():
    for fall in (1, 2, 3, 5):
        health, events = make(rise=2, fall=fall)
        record = fully_up(health)
        assert run(health, record, "-" * fall) == "U" * (fall - 1) + "D"
        assert events == [BackendDown(A, "status 503")]


def test_rise_passes_in_a_row_bring_a_down_backend_up():
    for rise in (1, 2, 4):
        health, events = make(rise=rise, fall=3)
        record = started(health)
        run(health, record, "-")
        events.clear()
        assert run(health, record, "+" * rise) == "D" * (rise - 1) + "U"
        assert record.h == rise + 3 - 1
        assert events == [BackendUp(A, "ok")]


def test_a_pass_while_going_down_snaps_back_to_fully_up():
    health, _ = make(rise=2, fall=3)
    record = fully_up(health)
    assert run(health, record, "--+--+---") == "UUUUUUUUD"


def test_a_fail_while_coming_up_snaps_back_to_zero():
    health, _ = make(rise=3, fall=2)
    record = started(health)
    assert run(health, record, "-++-++-+++") == "DDDDDDDDDU"
    assert record.h == 4


def test_the_counter_stays_in_0_to_rise_plus_fall_minus_1():
    health, _ = make(rise=2, fall=3)
    record = started(health)
    for mark in "++++++------++--+-+-+++":
        health.result(record, A, mark == "+", "", 0.0)
        assert 0 <= record.h <= 4
        assert record.up == (record.h >= 2)


def test_rise_and_fall_of_one_flip_on_every_change():
    health, events = make(rise=1, fall=1)
    record = started(health)
    assert run(health, record, "+-+--++") == "UDUDDUU"
    assert [type(e) for e in events] == [BackendDown, BackendUp, BackendDown, BackendUp]


def test_one_event_per_transition_with_the_reason():
    health, events = make(rise=2, fall=2)
    record = fully_up(health)
    health.result(record, A, False, "timeout after 2s", 1.0)
    health.result(record, A, False, "connection refused", 2.0)
    health.result(record, A, False, "connection refused", 3.0)
    health.result(record, A, True, "status 200", 4.0)
    health.result(record, A, True, "status 204", 5.0)
    health.result(record, A, True, "status 200", 6.0)
    assert events == [BackendDown(A, "connection refused"), BackendUp(A, "status 204")]


def test_result_says_whether_the_state_changed():
    health, _ = make(rise=2, fall=2)
    record = fully_up(health)
    assert [health.result(record, A, mark == "+", "", 0.0) for mark in "--++-+"] == \
        [False, True, False, True, False, False]


def test_a_joiner_is_pending_until_its_first_pass_and_one_pass_is_enough():
    health, events = make(rise=3, fall=3)
    record = started(health, joined_later=True)
    assert (record.up, record.pending) == (False, True)
    assert health.status(record) == "pending"
    assert events == []
    assert health.result(record, A, True, "status 200", 1.0) is True
    assert (record.up, record.pending, record.h) == (True, False, 5)
    assert events == [BackendUp(A, "status 200")]
    assert run(health, record, "---") == "UUD"          # then the counter as usual


def test_a_joiner_failing_its_first_probe_is_down_and_then_needs_rise_passes():
    health, events = make(rise=2, fall=3)
    record = started(health, joined_later=True)
    assert health.result(record, A, False, "connection refused", 1.0) is True
    assert (record.up, record.pending, record.h) == (False, False, 0)
    assert health.status(record) == "down"
    assert events == [BackendDown(A, "connection refused")]
    assert run(health, record, "++") == "DU"


def test_last_result_time_and_counts_are_recorded():
    health, _ = make()
    record = started(health)
    assert (record.last, record.checked_at, record.passes, record.fails) == (None, None, 0, 0)
    health.result(record, A, True, "", 5.0)
    assert (record.last, record.checked_at) == ("ok", 5.0)
    health.result(record, A, False, "status 500", 10.0)
    assert (record.last, record.checked_at, record.passes, record.fails) == \
        ("status 500", 10.0, 1, 1)
    health.result(record, A, False, "", 11.0)
    assert record.last == "failed"


def test_an_empty_reason_reads_ok_or_failed_in_events():
    health, events = make(rise=1, fall=1)
    record = started(health)
    health.result(record, A, False, "", 1.0)
    health.result(record, A, True, "", 2.0)
    assert events == [BackendDown(A, "failed"), BackendUp(A, "ok")]


def test_progress_towards_rise_and_fall():
    health, _ = make(rise=2, fall=3)
    record = fully_up(health)
    assert health.progress(record) == (0, 0)
    health.result(record, A, False, "", 1.0)
    assert health.progress(record) == (0, 1)        # one of fall=3 failures counted
    health.result(record, A, False, "", 2.0)
    assert health.progress(record) == (0, 2)
    health.result(record, A, False, "", 3.0)
    assert health.progress(record) == (0, 0)        # down: nothing towards rise yet
    health.result(record, A, True, "", 4.0)
    assert health.progress(record) == (1, 0)        # one of rise=2 passes counted


def test_row_for_stats():
    health, _ = make(rise=2, fall=3)
    record = started(health, joined_later=True)
    assert health.row(record, 5.0) == {
        "status": "pending", "last": None, "rise": 0, "fall": 0, "fails_to_down": 0,
        "passes_to_up": 1, "checked_at": None, "checked_ago": None, "passes_total": 0,
        "fails_total": 0, "rise_needed": 2, "fall_needed": 3}
    health.result(record, A, True, "status 200", 7.0)
    health.result(record, A, False, "status 503", 8.0)
    assert health.row(record, 9.5) == {
        "status": "up", "last": "status 503", "rise": 0, "fall": 1, "fails_to_down": 2,
        "passes_to_up": 0, "checked_at": 8.0, "checked_ago": 1.5, "passes_total": 1,
        "fails_total": 1, "rise_needed": 2, "fall_needed": 3}


def test_probe_totals_outlive_a_restart_of_the_record():
    # start() (the backend joins again) resets the counter, not the lifetime totals: the
    # metrics' health_checks_total must never go down
    health, _ = make(rise=2, fall=3)
    record = started(health)
    health.result(record, A, True, "ok", 1.0)
    health.result(record, A, False, "status 503", 2.0)
    health.start(record, A, joined_later=True)
    health.result(record, A, False, "status 503", 3.0)
    row = health.row(record, 3.0)
    assert (row["passes_total"], row["fails_total"], row["checked_ago"]) == (1, 2, 0.0)


def test_a_member_at_start_shows_no_failure_counted_and_one_to_go():
    # h = rise: nothing has failed yet, and its first failed probe takes it down (HAProxy)
    health, _ = make(rise=2, fall=3)
    record = started(health)
    row = health.row(record, 0.0)
    assert [row[k] for k in ("status", "last", "rise", "fall", "fails_to_down", "passes_to_up",
                             "checked_at")] == ["up", None, 0, 0, 1, 0, None]
    health.result(record, A, True, "ok", 1.0)       # it has passed: now it needs fall
    assert health.to_go(record) == (3, 0)
    health.result(record, A, False, "", 2.0)
    health.result(record, A, False, "", 3.0)
    health.result(record, A, False, "", 4.0)
    assert health.row(record, 4.0)["status"] == "down"
    assert health.to_go(record) == (0, 2)
    health.result(record, A, True, "ok", 5.0)
    assert (health.progress(record), health.to_go(record)) == ((1, 0), (0, 1))


def test_a_restarted_record_forgets_its_past():
    health, _ = make(rise=2, fall=3)
    record = started(health)
    health.result(record, A, False, "", 1.0)
    health.start(record, A, joined_later=True)
    assert (record.up, record.pending, record.h, record.last) == (False, True, 0, None)


@pytest.mark.parametrize(("rise", "fall", "name", "value"), [
    (0, 3, "rise", 0), (2, 0, "fall", 0), (-1, 3, "rise", -1), (True, 3, "rise", True),
    (2, 1.5, "fall", 1.5),
])
def test_bad_rise_or_fall_names_the_value(rise, fall, name, value):
    with pytest.raises(ConfigError, match=f"health_check_{name} has value {value!r}"):
        ActiveHealth(rise, fall, lambda event: None)
