"""The fault vocabulary's records and faults: what their docs say is what they do."""

from __future__ import annotations

import logging

import pytest

from le_transport.chaos.plan import RecordLog, SharedBound

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
