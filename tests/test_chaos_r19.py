"""Round 19 of the chaos plan and the client-side socket wrapper.

- ``Status.retry_after`` given as a str is checked as a header value in ``headers`` is: a
  control character (but a tab) is refused, where it was accepted and then answered 503 by the
  injector but failed the simulator's answer (the client saw the connection drop).
- A plan's error messages echo what the plan file wrote cut short (a megabyte of seed, unit,
  id or probability reached the message whole), and an int too long to write (past 4300
  digits) is named by its size: it made the message itself fail with a bare ``ValueError``.
- A plan's seed is an int of 64 bits, signed or not, refused outside that range when the plan
  is made: a seed past 4300 digits was accepted, then the first draw raised a bare
  ``ValueError`` inside a request, and ``json.dumps(plan.to_dict())`` failed.
- A time window under a microsecond (the run's resolution) is refused as ``for_ms=0`` is: a
  ``for_ms`` of ``1e-7`` rounded the window's end onto its start and never fired. Its
  ``after_ms`` and ``for_ms`` are each at most a year (``1e308`` was accepted).
- A :class:`SharedBound` drops the oldest record of all whatever was edited out of its logs
  before: it took a log's oldest entry for the one an edit removed, so after a log deleted its
  newest record, a younger record of another log went first.
- ``RecordLog.total`` counts every record added since the last clear: it was its length plus
  its drops, so an edit lowered it, and a number made from it could come again (the
  simulator numbers a socket's subscriptions with it).
- The client-side socket wrapper logs a rule's id (a plan file's text) and a server frame's
  ``type`` escaped, as the plan's decision log does: they were logged as they are, so a
  newline in either forged a log line of its own. So does the simulator, on its HTTP fault
  line and its sockets' (a client's frame ``type``, a rule id of ``simulate --plan``'s file).
- An edit of a :class:`RecordLog` by index is a slice edit of one place: ``log[0] = y`` left
  ``y`` out of ``total`` and gave it the age of the record it replaced, and ``reverse()``
  (a list's, by index) moved the records but not their ages, so a shared bound then dropped
  a younger record first. ``reverse()`` keeps each record's age, as ``log[:] = log[::-1]``.
- A time window starts at the first microsecond at or after its ``after_ms``, as the run's
  time counts in microseconds: a window of a microsecond starting between two instants
  (``after_ms=4e-7``) was accepted and held none, and then, taken to the nearest microsecond,
  a window fired before its ``after_ms`` (``2.5004`` at 2.500 ms; ties rounded either way).
- ``log[i] = r`` replaces that place only: it paired records by identity, so with the same
  object twice in a log the untouched one took the replaced one's age, and a shared bound
  dropped it before the oldest record of the group. A log's own bound goes by place, as a
  deque's does (after ``reverse()``, the newest is the first to go): documented so.
- The simulator's ERROR lines for an ``on()`` handler that raised or answered what JSON
  cannot hold log the request's ``type`` (the client's text) escaped, as its other socket
  lines do.
- ``le-transport demo --seed N`` past 64 bits is a usage error (2): the plan refused it only
  once the demo had started (exit 1).
"""

from __future__ import annotations

import json
import logging
from typing import cast

import aiohttp
import pytest
from aiohttp import web

from le_transport.chaos import (
    MAX_SEED,
    MIN_SEED,
    Delay,
    FaultInjector,
    FaultPlan,
    FaultRule,
    FaultRun,
    Injection,
    Match,
    Schedule,
    Status,
    WsAppError,
    WsClose,
    WsDropMessage,
)
from le_transport.chaos.plan import MAX_SCHEDULE_MS, MIN_WINDOW_MS, RecordLog, SharedBound
from le_transport.chaos.ws import FaultySocket
from le_transport.errors import ConfigurationError
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import DEFAULT_ACCOUNT, DEFAULT_USER, Simulator

_CSDS = f"/api/account/{DEFAULT_ACCOUNT}/service/baseURI.json"

# -- Status.retry_after: a header value, checked as one ------------------------------------------

_DATE_WITH_CONTROL = "Fri, 01 Jan 2100 00:00:00\x01GMT"


@pytest.mark.parametrize("char", ["\x01", "\x1b", "\x7f", "\r", "\n", "\0"])
def test_a_retry_after_str_with_a_control_character_is_refused_as_a_header_value_is(
    char: str,
) -> None:
    """The same text is refused whether it is given as ``retry_after`` or as the
    ``Retry-After`` of ``headers``, which it becomes."""
    value = f"Fri, 01 Jan 2100 00:00:00{char}GMT"
    with pytest.raises(ConfigurationError, match="control character"):
        Status(503, headers={"Retry-After": value})
    with pytest.raises(ConfigurationError, match=r"Status\.retry_after.*control character"):
        Status(503, retry_after=value)


def test_a_retry_after_str_with_a_tab_is_accepted_as_a_header_value_is() -> None:
    """A tab is the one control character a header value may hold."""
    assert Status(503, retry_after="Fri, 01 Jan 2100\t00:00:00 GMT").response_headers() == {
        "Retry-After": "Fri, 01 Jan 2100\t00:00:00 GMT"
    }


@pytest.mark.parametrize("side", ["simulator", "injector"])
async def test_a_retry_after_str_reaches_the_client_alike_on_both_sides(
    side: str, clock: VirtualClock
) -> None:
    """A plan the library accepts gives the client the same answer whichever side applies
    it: an HTTP-date ``retry_after`` is a 503 with that header on both."""
    date = "Fri, 01 Jan 2100 00:00:00 GMT"
    rule = FaultRule("ra", Status(503, retry_after=date))
    async with Simulator(clock=clock) as sim:
        if side == "simulator":
            sim.faults.load([rule])
            injector = FaultInjector(clock=clock)
        else:
            injector = FaultInjector([rule], clock=clock)
        async with (
            aiohttp.ClientSession(middlewares=[injector]) as session,
            session.get(sim.url + _CSDS) as resp,
        ):
            assert (resp.status, resp.headers["Retry-After"]) == (503, date)


# -- error messages: a plan file's hostile value is not echoed whole -----------------------------

_HUGE = "x" * 1_000_000


@pytest.mark.parametrize(
    "plan",
    [
        {"seed": _HUGE},
        {"rules": [{"id": "a", "fault": 503, "unit": _HUGE}]},
        {"rules": [{"id": "a", "fault": 503, "p": _HUGE}]},
        {"rules": [{"id": _HUGE, "fault": 503}, {"id": _HUGE, "fault": 503}]},
        {"rules": [{"id": _HUGE, "fault": 503, "schedule": {"for_ms": 0}}]},
        {"rules": [{"id": "a", "fault": {"kind": _HUGE}}]},
        {"rules": [{"id": "a", "fault": 503, "match": {"path": "a" + _HUGE}}]},
    ],
    ids=["seed", "unit", "p", "duplicate-id", "id-of-a-refused-rule", "kind", "path"],
)
def test_a_hostile_plan_file_is_not_echoed_whole_in_the_error(plan: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError) as info:
        FaultPlan.from_dict(plan)
    assert len(str(info.value)) < 500, str(info.value)[:500]
    assert "xxxxxxxx..." in str(info.value) or "aaaaaaaa..." in str(info.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Status(10**5000),
        lambda: Delay(10**5000),
        lambda: Schedule(skip_first=-(10**5000)),
        lambda: FaultRule("a", Status(503), p=10**5000),
        lambda: FaultPlan.from_dict({"rules": [{"id": "a", "fault": 10**5000}]}),
    ],
    ids=["status-code", "delay", "skip-first", "p", "status-shorthand"],
)
def test_an_int_too_long_to_write_is_refused_by_its_size(make: object) -> None:
    """``repr`` of such an int raises ``ValueError``: the message names its size instead."""
    with pytest.raises(ConfigurationError, match="an int of 16610 bits"):
        make()  # type: ignore[operator]


# -- the seed: an int of 64 bits ------------------------------------------------------------------


@pytest.mark.parametrize("seed", [MIN_SEED, -1, 0, 7, 2**63, MAX_SEED])
def test_a_seed_of_64_bits_draws_and_round_trips_through_json(seed: int) -> None:
    plan = FaultPlan(seed=seed, rules=[FaultRule("r", Status(503), p=0.5)])
    run = FaultRun(plan)
    run.decide("request", method="GET", path="/x", at=0.0)
    assert FaultPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


_SEED_REFUSED = r"FaultPlan\.seed must be an int of 64 bits"


@pytest.mark.parametrize(
    "seed",
    [MIN_SEED - 1, MAX_SEED + 1, 10**5000, -(10**5000)],
    ids=["below", "above", "past-4300-digits", "negative-past-4300-digits"],
)
def test_a_seed_outside_64_bits_is_refused_when_the_plan_is_made(seed: int) -> None:
    with pytest.raises(ConfigurationError, match=_SEED_REFUSED):
        FaultPlan(seed=seed, rules=[FaultRule("r", Status(503), p=0.5)])
    with pytest.raises(ConfigurationError, match=_SEED_REFUSED):
        FaultPlan.from_dict({"seed": seed})
    with pytest.raises(ConfigurationError, match=_SEED_REFUSED):
        FaultInjector.seeded(seed)


# -- time windows: at least a microsecond, at most a year ------------------------------------------


@pytest.mark.parametrize("for_ms", [1e-7, 4e-7, 0.0005, 0.000999])
def test_a_time_window_under_a_microsecond_is_refused_as_for_ms_0_is(for_ms: float) -> None:
    with pytest.raises(ConfigurationError, match=r"rule 'w': a schedule with for_ms=.* never"):
        FaultRule("w", Status(503), schedule=Schedule(for_ms=for_ms))
    with pytest.raises(ConfigurationError, match=r"rule 'w': a schedule with for_ms=.* never"):
        FaultPlan.from_dict({"rules": [{"id": "w", "fault": 503, "schedule": {"for_ms": for_ms}}]})


@pytest.mark.parametrize("after_ms", [None, 0.0, 2.5, 1000.0, MAX_SCHEDULE_MS])
def test_a_window_of_one_microsecond_fires_at_its_start_and_not_after(
    after_ms: float | None,
) -> None:
    rule = FaultRule("w", Status(503), schedule=Schedule(after_ms=after_ms, for_ms=MIN_WINDOW_MS))
    run = FaultRun(FaultPlan(rules=[rule]), origin=100.0)
    start_s = 100.0 + (after_ms or 0.0) / 1000.0
    assert run.decide("request", method="GET", path="/x", at=start_s) is not None
    assert run.decide("request", method="GET", path="/x", at=start_s + 1e-6) is None


@pytest.mark.parametrize(
    ("after_ms", "first_us"),
    [(4e-7, 1), (0.0004, 1), (0.0006, 1), (0.0009999, 1), (2.4996, 2500), (2.5004, 2501)],
)
def test_a_window_of_one_microsecond_starting_between_two_instants_holds_one(
    after_ms: float, first_us: int
) -> None:
    """The start is the first microsecond at or after ``after_ms``, as the run's time counts
    in microseconds: the window holds that instant (it held none when its end was rounded
    and its start was not), and none before ``after_ms``."""
    rule = FaultRule("w", Status(503), schedule=Schedule(after_ms=after_ms, for_ms=MIN_WINDOW_MS))
    run = FaultRun(FaultPlan(rules=[rule]), origin=100.0)
    fired = [
        k
        for k in range(4000)  # every instant of the run's first 4 ms
        if run.decide("request", method="GET", path="/x", at=100.0 + k * 1e-6) is not None
    ]
    assert fired == [first_us]


@pytest.mark.parametrize(
    ("after_ms", "unit_ms"), [(2.5004, 2.5), (1.0005, 1.0), (2.5005, 2.5), (0.0004, 0.0)]
)
def test_a_time_window_never_fires_before_the_after_ms_written(
    after_ms: float, unit_ms: float
) -> None:
    """Taken to the nearest microsecond, ``after_ms=2.5004`` fired on a unit at 2.500 ms,
    before it, and the ties rounded either way (1.0005 down, 2.5005 up)."""
    rule = FaultRule("w", Status(503), schedule=Schedule(after_ms=after_ms))
    run = FaultRun(FaultPlan(rules=[rule]), origin=100.0)
    assert run.decide("request", method="GET", path="/x", at=100.0 + unit_ms / 1000.0) is None
    next_us = 100.001 + unit_ms / 1000.0
    assert run.decide("request", method="GET", path="/x", at=next_us) is not None


@pytest.mark.parametrize("after_ms", [0.001, 2.007, 1000.0, 86_400_000.123])
def test_a_time_window_on_a_microsecond_starts_on_it_whatever_the_float_noise(
    after_ms: float,
) -> None:
    """``2.007 * 1000`` is ``2007.0000000000002``: the start is still 2007 us, not 2008."""
    rule = FaultRule("w", Status(503), schedule=Schedule(after_ms=after_ms, for_ms=MIN_WINDOW_MS))
    run = FaultRun(FaultPlan(rules=[rule]), origin=0.0)
    assert run.decide("request", method="GET", path="/x", at=after_ms / 1000.0) is not None


@pytest.mark.parametrize("field", ["after_ms", "for_ms"])
@pytest.mark.parametrize(
    "value", [MAX_SCHEDULE_MS * 1.000001, 1e308], ids=["just-past-a-year", "1e308"]
)
def test_a_window_past_a_year_is_refused(field: str, value: float) -> None:
    with pytest.raises(
        ConfigurationError, match=rf"Schedule\.{field} must be at most .* \(a year\)"
    ):
        Schedule(**{field: value})  # type: ignore[arg-type]


# -- a shared bound: the oldest record of all goes first, after any edit -------------------------


def test_a_shared_bound_drops_the_oldest_record_of_all_after_a_log_deletes_its_newest() -> None:
    bound = SharedBound(3, name="frames")
    a: RecordLog[str] = RecordLog(None, name="a", shared=bound)
    b: RecordLog[str] = RecordLog(None, name="b", shared=bound)
    a.append("a1")  # the oldest record of all
    b.append("b1")
    a.append("a2")
    del a[-1]  # a's newest: a1 and b1 remain
    b.append("b2")
    b.append("b3")  # four records for three places: a1 goes
    assert (list(a), list(b)) == ([], ["b1", "b2", "b3"])
    assert (a.dropped, b.dropped, bound.dropped, bound.kept) == (1, 0, 1, 3)


def test_a_shared_bound_keeps_the_age_of_the_records_a_filter_keeps() -> None:
    """``log[:] = kept`` (the same records) leaves them their place in the group's order; a
    record an edit puts in counts as the newest."""
    bound = SharedBound(4, name="frames")
    a: RecordLog[dict[str, int]] = RecordLog(None, name="a", shared=bound)
    b: RecordLog[dict[str, int]] = RecordLog(None, name="b", shared=bound)
    a1, a2, a3, b1, b2 = {"a": 1}, {"a": 2}, {"a": 3}, {"b": 1}, {"b": 2}
    a.append(a1)
    a.append(a2)
    b.append(b1)
    a.append(a3)
    a[:] = [a1, a3]  # a2 removed; a1 is still the oldest of all, a3 younger than b1
    a.insert(0, {"new": 1})  # the newest, wherever it stands
    assert bound.kept == 4
    b.append(b2)  # a1 goes
    assert (list(a), list(b)) == ([{"new": 1}, a3], [b1, b2])
    b.append({"b": 3})  # then b1
    assert list(b) == [b2, {"b": 3}]
    b.append({"b": 4})  # then a3, though it stands after the inserted record
    assert list(a) == [{"new": 1}]


class _Rec:
    """A record compared by identity, as the simulator's frames (dicts) are kept."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


@pytest.mark.parametrize("how", ["slice assignment", "reverse()"])
def test_a_reversed_log_keeps_each_records_age_under_a_shared_bound(how: str) -> None:
    bound = SharedBound(3)
    a: RecordLog[_Rec] = RecordLog(None, name="a", shared=bound)
    b: RecordLog[_Rec] = RecordLog(None, name="b", shared=bound)
    a1, a2, a3, b1, b2 = _Rec("a1"), _Rec("a2"), _Rec("a3"), _Rec("b1"), _Rec("b2")
    a.append(a1)
    a.append(a2)
    b.append(b1)
    if how == "reverse()":
        a.reverse()
    else:
        a[:] = a[::-1]
    assert list(a) == [a2, a1]
    assert (a.total, bound.kept) == (2, 3)  # nothing added, nothing lost
    b.append(b2)  # over the bound: the oldest record of all, a1, goes (last in a)
    assert (list(a), list(b)) == ([a2], [b1, b2])
    a.append(a3)  # then a2
    assert (list(a), list(b), bound.dropped) == ([a3], [b1, b2], 2)


@pytest.mark.parametrize("how", ["slice", "index"])
def test_a_record_put_in_by_index_is_the_newest_and_counts_in_total(how: str) -> None:
    """``log[0] = y`` is ``log[0:1] = [y]``: ``y`` is added (total) and is the newest."""
    bound = SharedBound(3)
    a: RecordLog[_Rec] = RecordLog(None, name="a", shared=bound)
    b: RecordLog[_Rec] = RecordLog(None, name="b", shared=bound)
    a1, a2, b1, y = _Rec("a1"), _Rec("a2"), _Rec("b1"), _Rec("y")
    a.append(a1)  # the oldest place, taken by y
    a.append(a2)
    b.append(b1)
    if how == "slice":
        a[0:1] = [y]
    else:
        a[0] = y
    assert (list(a), a.total, bound.kept) == ([y, a2], 3, 3)
    b.append(_Rec("b2"))  # a2 goes, then b1: y is younger than both
    b.append(_Rec("b3"))
    assert list(a) == [y]
    assert [r.name for r in b] == ["b2", "b3"]


def test_a_record_set_again_in_its_own_place_keeps_its_age() -> None:
    bound = SharedBound(2)
    a: RecordLog[_Rec] = RecordLog(None, name="a", shared=bound)
    b: RecordLog[_Rec] = RecordLog(None, name="b", shared=bound)
    a1, b1 = _Rec("a1"), _Rec("b1")
    a.append(a1)
    b.append(b1)
    a[0] = a1
    a[-1] = a[-1]
    assert a.total == 1
    b.append(_Rec("b2"))  # a1 is still the oldest
    assert (list(a), len(b)) == ([], 2)


def test_a_list_edit_by_index_on_an_empty_log_is_an_index_error() -> None:
    log: RecordLog[int] = RecordLog(None, name="t")
    with pytest.raises(IndexError, match="the log is empty"):
        log[0] = 1
    log.append(1)
    with pytest.raises(IndexError):
        log[1] = 2
    assert (list(log), log.total) == ([1], 1)


def test_the_other_list_edits_keep_total_and_ages_alike() -> None:
    """extend, +=, pop, remove and clear, a list's edits by way of append and del."""
    bound = SharedBound(4)
    a: RecordLog[_Rec] = RecordLog(None, name="a", shared=bound)
    b: RecordLog[_Rec] = RecordLog(None, name="b", shared=bound)
    a1, a2, a3, a4 = (_Rec(f"a{i}") for i in range(1, 5))
    a.extend([a1, a2])
    a += [a3, a4]
    assert a.pop() is a4
    a.remove(a2)
    assert (list(a), a.total, bound.kept) == ([a1, a3], 4, 2)
    b.extend(_Rec(f"b{i}") for i in range(3))  # five for four places: a1 goes
    assert list(a) == [a3]
    a.clear()
    assert (a.total, bound.kept) == (0, 3)


def test_setting_one_place_leaves_the_age_of_the_same_record_in_another_place() -> None:
    """``log[0] = y`` with the same object in places 0 and 1 replaces place 0 only: the
    record in place 1 keeps its own age (it took the replaced one's, so the shared bound
    dropped it instead of the oldest record of the group)."""
    bound = SharedBound(3)
    a: RecordLog[_Rec] = RecordLog(None, name="a", shared=bound)
    b: RecordLog[_Rec] = RecordLog(None, name="b", shared=bound)
    r, b1, y = _Rec("r"), _Rec("b1"), _Rec("y")
    a.append(r)  # age 0
    b.append(b1)  # age 1
    a.append(r)  # age 2: the same object again (a frame recorded twice)
    a[0] = y  # the newest (age 3); the r in place 1 keeps age 2
    assert list(a) == [y, r]
    assert a.total == 3
    assert bound.kept == 3
    b.append(_Rec("b2"))  # over the bound: the oldest of all is b1
    assert list(a) == [y, r]
    assert [x.name for x in b] == ["b2"]
    assert (a.dropped, b.dropped, bound.dropped) == (0, 1, 1)
    a.append(_Rec("a3"))  # next: the r in place 1 (age 2), before y (age 3)
    assert [x.name for x in a] == ["y", "a3"]


def test_setting_a_place_out_of_range_is_an_index_error_and_changes_nothing() -> None:
    bound = SharedBound(3)
    log: RecordLog[_Rec] = RecordLog(None, name="a", shared=bound)
    log.append(_Rec("r"))
    with pytest.raises(IndexError):
        log[1] = _Rec("y")
    assert (len(log), log.total, bound.kept) == (1, 1, 1)


def test_a_reversed_full_log_drops_its_first_place_on_append_as_documented() -> None:
    """A log's own bound goes by place, as a deque's does: after ``reverse()`` the first place
    holds the newest record, and that one goes (a shared bound still goes by age)."""
    log: RecordLog[_Rec] = RecordLog(2, name="t")
    a1, a2, a3 = _Rec("a1"), _Rec("a2"), _Rec("a3")
    log.append(a1)
    log.append(a2)
    log.reverse()
    log.append(a3)
    assert list(log) == [a1, a3]
    assert (log.dropped, log.total) == (1, 3)


# -- RecordLog.total: every record added since the last clear -------------------------------------


def test_record_log_total_is_not_lowered_by_an_edit() -> None:
    log: RecordLog[int] = RecordLog(2, name="t")
    for i in range(3):
        log.append(i)  # 0 dropped for the bound
    del log[0]
    log[:] = []
    assert (log.total, log.dropped, len(log)) == (3, 1, 0)
    log.insert(0, 7)
    log[:] = [7, 8, 9]  # 7 kept, 8 and 9 added (and 7 dropped for the bound)
    assert (log.total, log.dropped, list(log)) == (6, 2, [8, 9])
    log.clear()
    assert (log.total, log.dropped) == (0, 0)


# -- the socket wrapper's log lines: a plan's and a server's text, escaped ----------------------

_FORGED = "r\n2026-11-28 CRITICAL le_transport: forged line\x1b[2J"


class _IdlePeer:
    """What FaultySocket uses of an aiohttp client socket, doing nothing."""

    closed = False
    close_code = None


def _chaos_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "le_transport.chaos"]


async def test_a_socket_fault_logs_its_rule_id_escaped(caplog: pytest.LogCaptureFixture) -> None:
    injector = FaultInjector([FaultRule(_FORGED, WsClose(4401), unit="ws_session")])
    sock = FaultySocket(
        cast("aiohttp.ClientWebSocketResponse", _IdlePeer()),
        injector,
        Injection(_FORGED, 0, WsClose(4401)),
        name="/ws_api/x",
    )
    caplog.set_level(logging.INFO, logger="le_transport.chaos")
    sock.strike_if_due()
    (line,) = _chaos_lines(caplog)
    assert line.getMessage() == f"/ws_api/x: injecting ws_close (rule {_FORGED!r})"
    assert line.rule == repr(_FORGED)  # type: ignore[attr-defined]


def _simulator_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "le_transport.simulator"]


def _assert_escaped(line: logging.LogRecord) -> None:
    message = line.getMessage()
    assert not any(c in message for c in "\n\x1b"), message
    assert line.rule == repr(_FORGED)  # type: ignore[attr-defined]
    assert repr(_FORGED) in message


async def test_the_simulator_logs_a_rule_id_escaped_on_a_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="le_transport.simulator")
    async with (
        Simulator(clock=VirtualClock(), plan=[FaultRule(_FORGED, Status(503))]) as sim,
        aiohttp.ClientSession() as http,
        http.get(sim.url + _CSDS) as resp,
    ):
        assert resp.status == 503
    (line,) = [r for r in _simulator_lines(caplog) if "injecting" in r.getMessage()]
    _assert_escaped(line)


async def test_the_simulator_logs_a_clients_frame_type_and_a_rule_id_escaped_on_a_socket(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rule = FaultRule(_FORGED, WsAppError(429), unit="ws_message", match=Match(path="*"))
    type_ = ".ams.Forged\nCRITICAL forged\x1b[2J"
    caplog.set_level(logging.DEBUG, logger="le_transport.simulator")
    async with Simulator(clock=VirtualClock(), plan=[rule]) as sim:
        bearer = sim.tokens.login(DEFAULT_ACCOUNT, DEFAULT_USER, 3600, "user").bearer
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(sim.brand_socket_url(bearer)) as ws,
        ):
            await ws.send_str(json.dumps({"kind": "req", "id": "1", "type": type_, "body": {}}))
            answer = json.loads((await ws.receive(timeout=10)).data)
            assert answer["code"] == 429
    (line,) = [r for r in _simulator_lines(caplog) if "answering" in r.getMessage()]
    _assert_escaped(line)
    assert repr(type_) in line.getMessage()


async def test_a_fault_on_a_server_frame_logs_its_type_and_rule_id_escaped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rule = FaultRule(_FORGED, WsDropMessage(), unit="ws_message", match=Match(path="*"))
    sock = FaultySocket(
        cast("aiohttp.ClientWebSocketResponse", _IdlePeer()),
        FaultInjector([rule]),
        None,
        name="/ws_api/x",
    )
    caplog.set_level(logging.DEBUG, logger="le_transport.chaos")
    type_ = "ms.Event\nCRITICAL forged\x1b[2J"
    assert sock._hold(json.dumps({"kind": "notification", "type": type_})) is None  # lost
    (line,) = _chaos_lines(caplog)
    message = line.getMessage()
    assert message == f"/ws_api/x: ws_drop_message on an incoming {type_!r} (rule {_FORGED!r})"
    assert not any(c in message for c in "\n\x1b")


# -- the simulator's other socket log lines: a handler's and a client's text, escaped -----------

_TYPE = ".ams.Forged\nCRITICAL forged\x1b[2J"


def _assert_type_escaped(line: logging.LogRecord) -> None:
    message = line.getMessage()
    assert not any(c in message for c in "\n\x1b"), message
    assert repr(_TYPE) in message


async def _brand_request(sim: Simulator, type_: str) -> dict[str, object]:
    """One request of ``type_`` on a brand socket of the simulator's; its answer."""
    bearer = sim.tokens.login(DEFAULT_ACCOUNT, DEFAULT_USER, 3600, "user").bearer
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(bearer)) as ws,
    ):
        await ws.send_str(json.dumps({"kind": "req", "id": "1", "type": type_, "body": {}}))
        return cast("dict[str, object]", json.loads((await ws.receive(timeout=10)).data))


async def test_the_simulator_logs_a_fault_on_an_outgoing_frame_with_its_type_escaped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rule = FaultRule(_FORGED, WsDropMessage(), unit="ws_message", match=Match(path="*Forged*"))
    caplog.set_level(logging.DEBUG, logger="le_transport.simulator")
    async with Simulator(clock=VirtualClock(), plan=[rule]) as sim:
        bearer = sim.tokens.login(DEFAULT_ACCOUNT, DEFAULT_USER, 3600, "user").bearer
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(sim.brand_socket_url(bearer)),
        ):
            await sim.sockets.wait_open()
            assert await sim.sockets.notify(_TYPE, {}, to_all=True) == 1
    (line,) = [r for r in _simulator_lines(caplog) if "on an outgoing" in r.getMessage()]
    _assert_type_escaped(line)
    _assert_escaped(line)


async def test_the_simulator_logs_a_handler_that_raised_with_the_type_escaped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(sock: object, frame: dict[str, object]) -> tuple[int, object]:
        raise RuntimeError("boom")

    caplog.set_level(logging.ERROR, logger="le_transport.simulator")
    async with Simulator(clock=VirtualClock()) as sim:
        sim.sockets.on(_TYPE, broken)
        assert (await _brand_request(sim, _TYPE))["code"] == 500
    (line,) = [r for r in _simulator_lines(caplog) if "raised" in r.getMessage()]
    _assert_type_escaped(line)


async def test_the_simulator_logs_an_answer_that_is_not_json_with_the_type_escaped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def nan(sock: object, frame: dict[str, object]) -> tuple[int, object]:
        return 200, {"mean": float("nan")}

    caplog.set_level(logging.ERROR, logger="le_transport.simulator")
    async with Simulator(clock=VirtualClock()) as sim:
        sim.sockets.on(_TYPE, nan)
        assert (await _brand_request(sim, _TYPE))["code"] == 500
    (line,) = [r for r in _simulator_lines(caplog) if "not JSON" in r.getMessage()]
    _assert_type_escaped(line)


async def _echo(request: web.Request) -> web.StreamResponse:
    """A custom route's socket: answers each request frame with its type + ``$Response``."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is aiohttp.WSMsgType.TEXT:
            frame = json.loads(msg.data)
            await ws.send_json(
                {"kind": "resp", "reqId": frame["id"], "code": 200, "type": frame["type"] + "$R"}
            )
    return ws


@pytest.mark.parametrize(
    ("rule", "said"),
    [
        (FaultRule(_FORGED, WsAppError(429), unit="ws_message"), "on "),
        (
            FaultRule(_FORGED, WsDropMessage(), unit="ws_message", match=Match(path="*$R")),
            "on an outgoing",
        ),
    ],
    ids=["incoming", "outgoing"],
)
async def test_a_custom_socket_logs_a_fault_with_the_type_and_rule_id_escaped(
    caplog: pytest.LogCaptureFixture, rule: FaultRule, said: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="le_transport.simulator")
    sim = Simulator(clock=VirtualClock(), plan=[rule])
    sim.add_route("GET", "/ws/stream", _echo, service="myStream")
    async with sim, aiohttp.ClientSession() as http, http.ws_connect(sim.url + "/ws/stream") as ws:
        await ws.send_str(json.dumps({"kind": "req", "id": "1", "type": _TYPE, "body": {}}))
        if isinstance(rule.fault, WsAppError):
            assert json.loads((await ws.receive(timeout=10)).data)["code"] == 429
        else:
            # Dropped: the next frame the client gets is the close.
            await ws.close()
    lines = [r for r in _simulator_lines(caplog) if "custom socket" in r.getMessage()]
    (line,) = [r for r in lines if said in r.getMessage()]
    _assert_escaped(line)
    assert repr(_TYPE if said == "on " else _TYPE + "$R") in line.getMessage()
