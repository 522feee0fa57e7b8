"""The fault vocabulary's records and faults: what their docs say is what they do."""

from __future__ import annotations

import logging

import pytest

from le_transport.chaos import FaultPlan, FaultRule, Quota
from le_transport.chaos.plan import FaultRun, RecordLog, SharedBound

# -- RecordLog.insert on a full log -------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "kept"),
    [
        (0, ["new", 1, 2]),
        (-3, ["new", 1, 2]),
        (-99, ["new", 1, 2]),
        (1, ["new", 1, 2]),
        (-1, [1, "new", 2]),
        (3, [1, 2, "new"]),
        (99, [1, 2, "new"]),
    ],
)
def test_inserting_into_a_full_log_drops_the_oldest_record_not_the_inserted_one(
    index: int, kept: list[object], caplog: pytest.LogCaptureFixture
) -> None:
    # Before: the edit's bound cut its first place, which is the inserted record itself when
    # it went first: insert(0, r) on a full log dropped r, and the oldest record stayed.
    log: RecordLog[object] = RecordLog(3, name="frames")
    for record in range(3):
        log.append(record)
    with caplog.at_level(logging.INFO, logger="le_transport.records"):
        log.insert(index, "new")
    assert list(log) == kept
    assert (log.dropped, log.total, len(log)) == (1, 4, 3)
    assert "frames: keeping the newest 3 records" in caplog.text


def test_inserting_into_a_log_with_room_drops_nothing() -> None:
    log: RecordLog[object] = RecordLog(3, name="frames")
    log.append(1)
    log.insert(0, "new")
    assert (list(log), log.dropped, log.total) == (["new", 1], 0, 2)
    unbounded: RecordLog[object] = RecordLog(None, name="all")
    unbounded.extend(range(5))
    unbounded.insert(0, "new")
    assert (unbounded[0], len(unbounded), unbounded.dropped) == ("new", 6, 0)


def test_inserting_into_a_full_log_under_a_shared_bound_keeps_the_group_count() -> None:
    bound = SharedBound(10, name="group")
    log: RecordLog[object] = RecordLog(2, name="a", shared=bound)
    a1, a2, new = {"a": 1}, {"a": 2}, {"new": 1}
    log.append(a1)
    log.append(a2)
    log.insert(0, new)
    assert list(log) == [new, a2]
    assert (bound.kept, log.dropped) == (2, 1)
    # The inserted record is the group's newest: past the group's bound, a2 goes first.
    other: RecordLog[object] = RecordLog(None, name="b", shared=bound)
    other.extend(range(9))
    assert list(log) == [new]


def test_a_bad_index_is_refused_before_anything_is_dropped() -> None:
    log: RecordLog[object] = RecordLog(2, name="frames")
    log.append(1)
    log.append(2)
    with pytest.raises(TypeError):
        log.insert("0", "new")  # type: ignore[arg-type]
    assert (list(log), log.dropped, log.total) == ([1, 2], 0, 2)


# -- a quota's window, to the microsecond, whatever the window -----------------------------------


@pytest.mark.parametrize(
    ("window_ms", "start"),
    [(1000.147, 0.999853), (1000.007, 0.999993), (2500.182, 0.499818), (5000, 0.1)],
)
@pytest.mark.parametrize("origin", [0.0, 86_400.0])
def test_a_client_honouring_a_quotas_retry_after_gets_in_whatever_the_window(
    window_ms: float, start: float, origin: float
) -> None:
    # Before: the time since the admission was rounded to the microsecond but the window was
    # not, and a window of whole microseconds that float writes a hair long (1000.147 ms is
    # 1.0001470000000001 s) kept the slot taken at exactly one window: the client that waited
    # its Retry-After was refused again, with a Retry-After of 1.
    rule = FaultRule("q", Quota(limit=1, window_ms=window_ms))
    run = FaultRun(FaultPlan(rules=[rule]), origin=origin)
    admitted_at = origin + start
    assert run.decide("request", method="GET", path="/x", at=admitted_at) is None
    # Refused a whole number of seconds before the slot frees (the same instant, for 5 s).
    refused_at = origin + round(start + window_ms / 1000 - window_ms // 1000, 6)
    refused = run.decide("request", method="GET", path="/x", at=refused_at)
    assert refused is not None
    assert refused.retry_after is not None
    # The retry lands exactly one window after the admission (to the microsecond).
    back = refused_at + refused.retry_after
    assert round((back - admitted_at) * 1000, 3) == pytest.approx(window_ms, abs=1e-9)
    assert run.decide("request", method="GET", path="/x", at=back) is None
    assert [d.outcome for d in run.log] == ["admitted", "inject", "admitted"]


def test_a_quota_slot_stays_taken_until_its_window_ends() -> None:
    # A guard: a microsecond short of the window, the slot is still taken; a window under a
    # microsecond holds the instant of its admission.
    run = FaultRun(FaultPlan(rules=[FaultRule("q", Quota(limit=1, window_ms=1000.147))]))
    assert run.decide("request", method="GET", path="/x", at=10.0) is None
    early = run.decide("request", method="GET", path="/x", at=11.000146)
    assert early is not None
    assert early.retry_after == 1
    tiny = FaultRun(FaultPlan(rules=[FaultRule("q", Quota(limit=1, window_ms=0.0004))]))
    assert tiny.decide("request", method="GET", path="/x", at=3.0) is None
    assert tiny.decide("request", method="GET", path="/x", at=3.0) is not None
    assert tiny.decide("request", method="GET", path="/x", at=3.000001) is None
