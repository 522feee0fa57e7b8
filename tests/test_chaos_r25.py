"""The fault vocabulary's records and faults: what their docs say is what they do."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from le_transport.chaos import (
    MAX_COUNT,
    Delay,
    FaultInjector,
    FaultPlan,
    FaultRule,
    Hang,
    Match,
    Quota,
    Schedule,
    Status,
    WsClose,
    WsDrop,
    WsSilence,
    fault_from_dict,
)
from le_transport.chaos.plan import FaultRun, RecordLog, SharedBound
from le_transport.clock import Clock, RealClock
from le_transport.errors import ConfigurationError
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import DEFAULT_ACCOUNT, Simulator
from tests.conftest import ServerFactory

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


# -- an injected Delay or Hang meets the call's sock_read, as the simulator's does ------------

CSDS = f"/api/account/{DEFAULT_ACCOUNT}/service/baseURI.json"


async def _passing(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """A caller's middleware between the injector and the wire."""
    return await handler(request)


async def _get(
    sim: Simulator,
    injector: FaultInjector,
    *,
    session: aiohttp.ClientTimeout,
    call: aiohttp.ClientTimeout | None = None,
    between: Sequence[Any] = (),
) -> str:
    """What a plain session's GET of the CSDS answer meets: ``read whole`` or the failure."""
    async with aiohttp.ClientSession(middlewares=[injector, *between], timeout=session) as http:
        try:
            kwargs: dict[str, Any] = {} if call is None else {"timeout": call}
            async with http.get(sim.url + CSDS, **kwargs) as resp:
                await resp.read()
                return "read whole"
        except Exception as exc:
            return type(exc).__name__


async def _served_and_injected(
    clock: Clock, fault: Delay | Hang, **how: Any
) -> tuple[str, str, int]:
    """The simulator's fault, then the injector's, on one route: what each call met, and how
    many requests reached the simulator in all."""
    async with Simulator(clock=clock) as sim:
        sim.faults.load([FaultRule("sim", fault, match=Match("GET", CSDS))])
        served = await _get(sim, FaultInjector(clock=clock), **how)
        sim.faults.load([])
        injector = FaultInjector([FaultRule("inj", fault, match=Match("GET", CSDS))], clock=clock)
        injected = await _get(sim, injector, **how)
        return served, injected, len(sim.requests)


@pytest.mark.parametrize(
    "fault", [Delay(5000), Hang(), Hang(duration_ms=5000)], ids=["delay", "hang", "hang-5s"]
)
async def test_an_injected_wait_meets_the_calls_sock_read_as_the_simulators(
    fault: Delay | Hang,
) -> None:
    """Before: the injector's Delay and Hang waited before the request was sent, where
    aiohttp's ``sock_read`` timer is not running yet: a plain session's read timeout never
    struck them (the Delay was read whole after 5 s, the Hang ran to ``total``), where the
    simulator's struck at once. Now both meet it, as aiohttp raises it.

    On the real clock (aiohttp's timeouts run on the loop's time, as the injector's emulation
    of them does): 0.2 s against 5 s, an order the loop's timers keep however loaded."""
    served, injected, reached = await _served_and_injected(
        RealClock(), fault, session=aiohttp.ClientTimeout(sock_read=0.2, total=60)
    )
    assert (served, injected) == ("SocketTimeoutError", "SocketTimeoutError")
    # The injector's request was never sent (the simulator's handler was cancelled unrun).
    assert reached == 1


async def test_the_sock_read_of_the_call_is_the_one_met_through_other_middlewares() -> None:
    """A ``timeout=`` given to the call replaces the session's, behind a caller's middleware
    too: a 0.2 s ``sock_read`` of the call strikes a 5 s Delay the session's (none) did not;
    a call with none of its own reads a 0.1 s Delay whole, past the session's 0.05 s."""
    clock = RealClock()
    async with Simulator(clock=clock) as sim:
        for delay, session, call, wants in [
            (5000, aiohttp.ClientTimeout(total=60), aiohttp.ClientTimeout(sock_read=0.2), "Sock"),
            (100, aiohttp.ClientTimeout(sock_read=0.05), aiohttp.ClientTimeout(), "read whole"),
        ]:
            injector = FaultInjector([FaultRule("d", Delay(delay))], clock=clock)
            got = await _get(sim, injector, session=session, call=call, between=[_passing])
            assert got.startswith(wants)


async def test_a_wait_shorter_than_the_sock_read_reads_whole() -> None:
    """A guard: a Delay well within the call's read timeout is waited, then sent and read."""
    clock = RealClock()
    async with Simulator(clock=clock) as sim:
        injector = FaultInjector([FaultRule("d", Delay(20))], clock=clock)
        got = await _get(sim, injector, session=aiohttp.ClientTimeout(sock_read=5))
        assert got == "read whole"
        assert len(sim.requests) == 1


async def test_on_a_virtual_clock_a_wait_does_not_move_the_loops_time(
    clock: VirtualClock,
) -> None:
    """A guard: aiohttp's timeouts run on the loop's time, which a virtual wait does not move:
    a 60 s Delay on a VirtualClock does not meet a 5 s ``sock_read``, on the simulator's side
    as on the injector's (an engine's attempt timeout, on its clock, is the one to use)."""
    served, injected, reached = await _served_and_injected(
        clock, Delay(60_000), session=aiohttp.ClientTimeout(sock_read=5)
    )
    assert (served, injected, reached) == ("read whole", "read whole", 2)
    assert clock.now() >= 120


async def test_a_delayed_upgrade_meets_the_sessions_sock_read(serve: ServerFactory) -> None:
    """A WebSocket upgrade a ``request`` rule delays waits for its 101 under the session's
    ``sock_read``, as one a server is slow to accept: before, the upgrade went on after the
    whole delay (5 s against 0.2 s, on the real clock)."""

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", socket)
    host = await serve(app)
    clock = RealClock()
    injector = FaultInjector([FaultRule("d", Delay(5000), match=Match("GET", "/ws"))], clock=clock)
    timeout = aiohttp.ClientTimeout(sock_read=0.2, total=60)
    async with aiohttp.ClientSession(middlewares=[injector], timeout=timeout) as http:
        with pytest.raises(aiohttp.SocketTimeoutError):
            await http.ws_connect(f"http://{host}/ws")
    assert injector.rule_counts()["d"].injected == 1


# -- counts of 64 bits --------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2**63, 10**5000], ids=["2**63", "10**5000"])
@pytest.mark.parametrize(
    "make",
    [
        lambda n: Schedule(skip_first=n),
        lambda n: Schedule(fail_next=n),
        lambda n: WsDrop(after_messages=n),
        lambda n: WsClose(4401, after_messages=n),
        lambda n: WsSilence(after_messages=n),
        lambda n: fault_from_dict({"kind": "ws_drop", "after_messages": n}),
    ],
    ids=["skip_first", "fail_next", "ws_drop", "ws_close", "ws_silence", "from_dict"],
)
def test_a_count_past_64_bits_is_refused(make: Any, count: int) -> None:
    # Before: accepted (a rule that never fires), and one past 4300 digits made the plan's
    # JSON fail to write with a bare ValueError.
    with pytest.raises(ConfigurationError, match=r"must be an int in 0\.\.9223372036854775807"):
        make(count)


def test_the_largest_count_is_kept_and_written() -> None:
    rule = FaultRule("r", Status(503), schedule=Schedule(skip_first=MAX_COUNT, fail_next=MAX_COUNT))
    plan = FaultPlan(rules=[rule])
    assert FaultPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


# -- a path glob no URL path can match: a class without "/" -------------------------------------


@pytest.mark.parametrize("glob", ["[a-z]*", "[!/]*", "[abc", "[", "[]"])
@pytest.mark.parametrize("unit", ["request", "ws_session"])
def test_a_path_glob_whose_first_class_cannot_be_a_slash_is_refused(glob: str, unit: str) -> None:
    # Before: only its first character was looked at, and "[" let any class through: a rule
    # on "[a-z]*" (or a "[" fnmatch reads as a literal) was accepted and never fired.
    fault = Status(503) if unit == "request" else WsClose(4401)
    with pytest.raises(ConfigurationError, match=r"never fires with Match\(path="):
        FaultRule("r", fault, unit=unit, match=Match(path=glob))
    # A message is matched on its type, which needs no "/".
    FaultRule("r", Status(503), unit="ws_message", match=Match(path=glob))


@pytest.mark.parametrize("glob", ["[/]api*", "[!a]*", "[]/]*", "[!]]*", "[.-0]api"])
def test_a_path_glob_whose_first_class_holds_a_slash_is_taken(glob: str) -> None:
    rule = FaultRule("r", Status(503), match=Match(path=glob))
    run = FaultRun(FaultPlan(rules=[rule]))
    assert run.decide("request", method="GET", path="/api", at=0.0) is not None
