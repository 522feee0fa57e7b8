"""The simulator's and the fault injector's records are bounded: a long run keeps the newest
``max_records`` of each, counts what it dropped, and keeps exact totals where promised."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from le_transport.chaos import FaultInjector, FaultPlan, FaultRule, Match, Status
from le_transport.chaos.plan import DEFAULT_MAX_RECORDS, FaultRun, RecordLog, SharedBound
from le_transport.errors import ConfigurationError
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import (
    DEFAULT_ACCOUNT,
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    Simulator,
    SimulatorConfig,
)
from le_transport.testing.simulator.auth import SWEEP_AFTER, TokenStore
from tests.test_simulator_sockets import _bearer, _frame, _req

ACC = DEFAULT_ACCOUNT
ALL_SERVICES = f"/api/account/{ACC}/service/baseURI.json"
ONE_SERVICE = f"/api/account/{ACC}/service/agentVep/baseURI.json"
BAD_BOUNDS = [0, -1, "10", True, 1.5]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # No keep-alive: a pooled connection keeps a server-side handler task alive.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


# -- the bounds and their checks ---------------------------------------------------------------


async def test_the_default_bound_is_the_documented_100_000(clock: VirtualClock) -> None:
    assert DEFAULT_MAX_RECORDS == 100_000
    assert SimulatorConfig().max_records == 100_000
    assert FaultInjector().max_records == 100_000
    assert FaultInjector.seeded(1).max_records == 100_000
    assert FaultRun(FaultPlan()).max_records == 100_000
    sim = Simulator(clock=clock)
    records: list[RecordLog[Any]] = [
        sim.requests,
        sim.faults.log,
        sim.sockets.all,
        sim.sockets.published,
        sim.sockets.rejected,
    ]
    assert [r.maxlen for r in records] == [100_000] * len(records)
    assert FaultInjector().log.maxlen == 100_000


@pytest.mark.parametrize("bad", BAD_BOUNDS, ids=repr)
def test_a_bad_max_records_is_a_configuration_error_naming_the_field(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"SimulatorConfig\.max_records"):
        SimulatorConfig(max_records=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"FaultInjector\.max_records"):
        FaultInjector(max_records=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"FaultRun\.max_records"):
        FaultRun(FaultPlan(), max_records=bad)  # type: ignore[arg-type]


def test_none_means_no_bound() -> None:
    assert SimulatorConfig(max_records=None).max_records is None
    injector = FaultInjector(max_records=None)
    assert injector.log.maxlen is None
    log: RecordLog[int] = RecordLog(None)
    for i in range(1000):
        log.append(i)
    assert len(log) == 1000
    assert log.dropped == 0


def test_a_record_log_reads_and_edits_as_a_list() -> None:
    log: RecordLog[int] = RecordLog(3, name="numbers")
    assert log == []
    for i in range(5):
        log.append(i)
    assert log == [2, 3, 4]
    assert log == (2, 3, 4)
    assert log != [1, 2, 3]
    assert (log.dropped, log.total, len(log)) == (2, 5, 3)
    assert log[0] == 2
    assert log[-1] == 4
    assert log[1:] == [3, 4]
    assert list(reversed(log)) == [4, 3, 2]
    assert 3 in log
    log[:] = [x for x in log if x != 3]
    assert log == [2, 4]
    log.extend([5, 6])  # one over the bound: the oldest goes
    assert log == [4, 5, 6]
    assert log.dropped == 3
    log.clear()
    assert log == []
    assert (log.dropped, log.total) == (0, 0)


# -- the simulator ---------------------------------------------------------------------------


async def test_the_simulator_keeps_the_newest_requests_and_counts_the_dropped(
    clock: VirtualClock, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="le_transport.records")
    config = SimulatorConfig(max_records=50)
    async with Simulator(config, clock=clock) as sim:
        # 450 requests to every service's address, then 50 to one service's.
        for i in range(500):
            path = ALL_SERVICES if i < 450 else ONE_SERVICE
            async with http.get(f"{sim.url}{path}", params={"version": "1.0", "n": str(i)}) as r:
                assert r.status == 200
                await r.read()
        assert len(sim.requests) == 50
        assert sim.records_dropped == 450
        assert sim.requests.total == 500
        assert [r.query["n"] for r in sim.requests] == [str(i) for i in range(450, 500)]
        assert sim.requests[-1].query["n"] == "499"
        assert [r.query["n"] for r in sim.requests[3:5]] == ["453", "454"]
        # count() counts the requests kept: the 450 dropped ones are no longer counted.
        assert sim.count("GET", ALL_SERVICES) == 0
        assert sim.count("GET", "*/agentVep/baseURI.json") == 50
        assert sim.count() == len(sim.requests)
    drops = [r for r in caplog.records if r.name == "le_transport.records"]
    assert [r.getMessage() for r in drops] == [
        "simulator requests: keeping the newest 50 records, dropping older ones"
    ]
    assert drops[0].levelno == logging.INFO


async def test_the_simulators_fault_log_is_bounded_and_its_totals_exact(
    clock: VirtualClock, http: aiohttp.ClientSession
) -> None:
    async with Simulator(SimulatorConfig(max_records=10), clock=clock) as sim:
        sim.faults.add(FaultRule("half", Status(503), match=Match(path="*/baseURI.json"), p=0.5))
        failed = 0
        for _ in range(120):
            async with http.get(f"{sim.url}{ALL_SERVICES}", params={"version": "1.0"}) as r:
                await r.read()
                failed += r.status == 503
        assert 0 < failed < 120
        assert sim.faults.injected_counts() == {"half": failed}
        assert len(sim.faults.log) == 10
        assert sim.faults.log.dropped == 110
        assert sim.faults.run.count("half") == 120
        injected = sim.faults.injected()
        assert len(injected) == 10
        assert sim.faults.run.injections_dropped == failed - 10
        # The newest injections are kept: those still in the log are the last ones listed.
        recent = [d for d in sim.faults.log if d.outcome == "inject"]
        assert injected[len(injected) - len(recent) :] == recent
        assert [d.index for d in injected] == sorted(d.index for d in injected)


async def test_the_socket_records_are_bounded_and_an_old_open_socket_stays_open(
    clock: VirtualClock,
) -> None:
    config = SimulatorConfig(max_records=5, echo_published=False)
    async with (
        Simulator(config, clock=clock) as sim,
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.brand_socket_url(_bearer(sim))) as first,
    ):
        for i in range(20):
            body = {"dialogId": "d1", "event": {"type": "ContentEvent", "message": f"m{i}"}}
            await _req(first, f"p{i}", ".ams.ms.PublishEvent", body)
            assert (await _frame(first))["code"] == 200
        for i in range(7):
            await _req(first, f"s{i}", ".ams.aam.SubscribeExConversations")
            last = await _frame(first)
        (sock,) = sim.sockets.open
        assert [m.text for m in sim.sockets.published] == [f"m{i}" for i in range(15, 20)]
        assert sim.sockets.published.dropped == 15
        assert sim.sockets.published_ids() == [f"p{i}" for i in range(15, 20)]
        assert len(sock.received) == 5
        assert sock.received.dropped == 22
        assert len(sock.subscriptions) == 5
        # The subscription ids still count every subscription.
        assert last["body"]["subscriptionId"] == f"sub-{sock.id}-7"
        # Eight more sockets come and go: the first is no longer in ``all``, but still open.
        for _ in range(8):
            async with http.ws_connect(sim.brand_socket_url(_bearer(sim))):
                pass
        assert len(await sim.sockets.wait_accepted(9)) == 5
        while len(sim.sockets.open) > 1:
            await clock.sleep(1.0)
        assert sim.sockets.all.total == 9
        assert sim.sockets.all.dropped == 4
        assert sock not in sim.sockets.all
        assert sim.sockets.open == [sock]
        sent = await sim.sockets.notify(".ams.routing.RoutingTaskNotification", {}, to_all=True)
        assert sent == 1
        assert (await _frame(first))["type"] == ".ams.routing.RoutingTaskNotification"


async def test_refused_handshakes_are_bounded(clock: VirtualClock) -> None:
    async with (
        Simulator(SimulatorConfig(max_records=3), clock=clock) as sim,
        aiohttp.ClientSession() as http,
    ):
        for _ in range(6):
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await http.ws_connect(sim.brand_socket_url("not-a-bearer"))
        assert sim.sockets.rejected == [401, 401, 401]
        assert sim.sockets.rejected.dropped == 3


async def test_no_secret_reaches_the_records_notice(
    clock: VirtualClock, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="le_transport.records")
    async with Simulator(SimulatorConfig(max_records=1), clock=clock) as sim:
        for _ in range(3):
            async with http.post(
                f"{sim.url}/api/account/{ACC}/login",
                params={"v": "1.3"},
                json={"username": DEFAULT_USER, "password": DEFAULT_PASSWORD},
            ) as r:
                assert r.status == 200
                await r.read()
        assert sim.records_dropped == 2
    notices = [r.getMessage() for r in caplog.records if r.name == "le_transport.records"]
    assert notices
    assert not any(DEFAULT_PASSWORD in n or DEFAULT_USER in n for n in notices)


# -- the fault injector ------------------------------------------------------------------------


async def test_the_injectors_report_is_bounded_and_its_totals_stay_exact(
    clock: VirtualClock,
) -> None:
    server = Simulator(clock=clock)
    injector = FaultInjector(
        FaultPlan(
            seed=7,
            rules=(
                FaultRule("half", Status(503), match=Match(path="*/baseURI.json"), p=0.5),
                FaultRule("users", Status(500), match=Match(path="*/users")),
            ),
        ),
        clock=clock,
        max_records=10,
    )
    seen = {503: 0, 500: 0}
    async with (
        server as sim,
        aiohttp.ClientSession(
            middlewares=(injector,), connector=aiohttp.TCPConnector(force_close=True)
        ) as http,
    ):
        for i in range(200):
            path = (
                f"/api/account/{ACC}/configuration/le-users/users" if i % 10 == 0 else ALL_SERVICES
            )
            async with http.get(f"{sim.url}{path}", params={"version": "1.0"}) as r:
                await r.read()
                if r.status in seen:
                    seen[r.status] += 1
    assert seen[500] == 20
    assert 0 < seen[503] < 180
    assert injector.injected_counts() == {"half": seen[503], "users": 20}
    report = injector.report()
    assert len(report) == 10
    assert injector.records_dropped == seen[503] + 20 - 10
    # The newest injections are kept: those still in the log are the last ones listed.
    recent = [d.to_dict() for d in injector.log if d.outcome == "inject"]
    assert recent
    assert report[len(report) - len(recent) :] == recent
    assert len(injector.log) == 10
    assert injector.log.dropped == 190


# -- the simulator's credentials: the dead are swept, the live kept ------------------------------


def test_a_long_soak_of_logins_keeps_the_live_sessions_and_sweeps_the_dead(
    clock: VirtualClock,
) -> None:
    store = TokenStore(clock, epoch=0.0)
    bearers: list[str] = []
    for _ in range(10 * SWEEP_AFTER):
        bearers.append(store.login(ACC, DEFAULT_USER, 10.0, "user").bearer)
        clock.advance(1.0)
    # Bounded: never more than twice what was live at the last sweep, and the floor.
    assert len(store.sessions) <= SWEEP_AFTER + 1
    assert len(store._by_cookie) == len(store.sessions)
    # What is still alive (logged in within its 10 s) answers, by bearer and by cookie.
    for bearer in bearers[-9:]:
        session = store.valid_session(bearer, ACC)
        assert session is not None
        assert store.session_by_cookie(session.session_id) is session
    assert store.valid_session(bearers[0], ACC) is None


def test_below_the_sweep_threshold_every_issued_credential_stays_readable(
    clock: VirtualClock,
) -> None:
    store = TokenStore(clock, epoch=0.0)
    for _ in range(SWEEP_AFTER - 1):
        store.login(ACC, DEFAULT_USER, 1.0, "user")
        store.issue_jwt(ACC, "consumer", 1.0, "consumer")
        clock.advance(2.0)  # each dies before the next comes
    assert len(store.sessions) == SWEEP_AFTER - 1
    assert len(store.tokens) == SWEEP_AFTER - 1
    assert store.live_sessions() == []


def test_a_long_soak_of_jwts_keeps_the_live_ones_and_sweeps_the_dead(clock: VirtualClock) -> None:
    store = TokenStore(clock, epoch=0.0)
    values: list[str] = []
    for n in range(10 * SWEEP_AFTER):
        token = store.issue_jwt(ACC, f"consumer-{n}", 10.0, "consumer")
        values.append(token.value)
        if n % 7 == 0:
            store.revoke(token.value)  # revoked: dead too
        clock.advance(1.0)
    assert len(store.tokens) <= SWEEP_AFTER + 1
    live = [v for v in values[-9:] if store.valid_jwt(v, ACC) is not None]
    assert len(live) >= 7  # the last nine, less the revoked among them


# -- a bound shared by several logs ------------------------------------------------------------


_EDITS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 2)),
        st.tuples(st.just("clear"), st.integers(0, 2)),
        st.tuples(st.just("del first"), st.integers(0, 2)),
        st.tuples(st.just("del last two"), st.integers(0, 2)),
        st.tuples(st.just("insert"), st.integers(0, 2)),
        st.tuples(st.just("keep even"), st.integers(0, 2)),
    ),
    max_size=120,
)


@settings(max_examples=300)
@given(maxlen=st.integers(1, 8), own=st.sampled_from([None, 3]), edits=_EDITS)
def test_logs_under_a_shared_bound_keep_the_groups_newest_records(
    maxlen: int, own: int | None, edits: list[tuple[str, int]]
) -> None:
    """Against a model. The group counts its records in the order they came (``order``: the
    log and the token of each, oldest first; an inserted record comes when it is inserted).
    Past the group's bound, the oldest counted record goes, from whichever log holds it and
    wherever it is in that log. A log's own bound (its first record) and a caller's edits take
    records out of the count too; a record an edit keeps keeps its age. With appends alone,
    the logs hold the newest ``maxlen`` records of the group."""
    shared = SharedBound(maxlen, name="group")
    logs: list[RecordLog[int]] = [RecordLog(own, name=f"log {i}", shared=shared) for i in range(3)]
    model: list[list[tuple[int, int]]] = [[], [], []]  # (record, token)
    order: list[tuple[int, int]] = []  # (log, token)
    dropped = [0, 0, 0]
    appended: list[int] = []

    def uncount(i: int, gone: list[tuple[int, int]]) -> None:
        for _, token in gone:
            order.remove((i, token))

    def count(i: int, token: int) -> None:
        order.append((i, token))
        if len(order) > maxlen:
            j, oldest = order.pop(0)
            model[j] = [entry for entry in model[j] if entry[1] != oldest]
            dropped[j] += 1

    for n, (edit, i) in enumerate(edits):
        mine = model[i]
        if edit == "append":
            logs[i].append(n)
            appended.append(n)
            if own is not None and len(mine) == own:
                uncount(i, [mine.pop(0)])
                dropped[i] += 1
            mine.append((n, n))
            count(i, n)
        elif edit == "clear":
            logs[i].clear()
            uncount(i, mine)
            mine.clear()
            dropped[i] = 0
        elif edit == "del first" and mine:
            del logs[i][0]
            uncount(i, [mine.pop(0)])
        elif edit == "del last two" and mine:
            del logs[i][-2:]
            uncount(i, mine[-2:])
            del mine[-2:]
        elif edit == "insert":
            # A value no other record has: records are told apart by identity.
            logs[i].insert(0, -(n + 1))
            if own is not None and len(mine) == own:
                # The log was full: its old first record goes, never the one inserted.
                uncount(i, [mine.pop(0)])
                dropped[i] += 1
            mine.insert(0, (-(n + 1), n))
            count(i, n)
        elif edit == "keep even":
            # A filter, as a caller writes one: the records kept are the same objects, and
            # keep their age.
            logs[i][:] = [r for r in logs[i] if r % 2 == 0]
            uncount(i, [entry for entry in mine if entry[0] % 2])
            mine[:] = [entry for entry in mine if entry[0] % 2 == 0]
        for k in range(3):
            assert list(logs[k]) == [record for record, _ in model[k]]
            assert logs[k].dropped == dropped[k]
        assert shared.kept == len(order) <= maxlen
        assert len(shared._order_seqs) <= 2 * maxlen + 3
    if own is None and all(edit == "append" for edit, _ in edits):
        assert sorted(r for log in logs for r in log) == appended[-maxlen:]


def test_a_shared_bound_is_checked_like_any_record_bound() -> None:
    for bad in [*BAD_BOUNDS, None]:
        with pytest.raises(ConfigurationError, match=r"SharedBound\.maxlen"):
            SharedBound(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"RecordLog\.shared"):
        RecordLog(5, shared=5)  # type: ignore[arg-type]


async def test_the_frames_of_many_sockets_are_bounded_together_and_noticed_once(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A fleet's records do not grow with its size: the frames every socket received are the
    newest ``max_records`` of them all, and one notice says so for the group."""
    caplog.set_level(logging.INFO, logger="le_transport.records")
    config = SimulatorConfig(max_records=6, echo_published=False)
    async with (
        Simulator(config, clock=clock) as sim,
        aiohttp.ClientSession() as http,
        contextlib.AsyncExitStack() as stack,
    ):
        sockets = [
            await stack.enter_async_context(http.ws_connect(sim.brand_socket_url(_bearer(sim))))
            for _ in range(4)
        ]
        for round_ in range(3):
            for k, ws in enumerate(sockets):
                await _req(ws, f"c{round_}-{k}", ".GetClock")
                assert (await _frame(ws))["code"] == 200
        served = sorted(sim.sockets.open, key=lambda s: s.id)
        kept = [[frame["id"] for frame in sock.received] for sock in served]
    # Twelve frames in all, six kept: the newest, whichever socket received them.
    assert kept == [["c2-0"], ["c2-1"], ["c1-2", "c2-2"], ["c1-3", "c2-3"]]
    assert sim.sockets.received_bound is not None
    assert sim.sockets.received_bound.kept == 6
    assert sim.sockets.received_bound.dropped == 6
    assert [sock.received.dropped for sock in served] == [2, 2, 1, 1]
    notices = [r.getMessage() for r in caplog.records if r.name == "le_transport.records"]
    assert notices == [
        "simulator socket frames received: keeping the newest 6 records, dropping older ones"
    ]


def test_an_empty_log_holds_no_storage_and_an_emptied_one_lets_go_of_it() -> None:
    """A deque keeps a block of 64 slots even when empty (~0.6 KiB); the simulator keeps three
    logs per socket for its newest sockets, most with few records or none."""
    shared = SharedBound(2, name="group")
    first: RecordLog[int] = RecordLog(None, name="first", shared=shared)
    second: RecordLog[int] = RecordLog(None, name="second", shared=shared)
    assert first._items == ()
    first.append(1)
    second.append(2)
    second.append(3)  # the group's bound drops first's only record
    assert first == []
    assert first._items == ()
    assert first.dropped == 1
    del second[0]
    del second[0]
    assert second._items == ()
    with pytest.raises(IndexError, match="second: index 0 out of range"):
        del second[0]
    with pytest.raises(IndexError, match="second: index 0 out of range"):
        second[0] = 9
    second.append(4)
    second[:] = []
    assert second._items == ()
    assert shared.kept == 0
    second.append(5)
    second.clear()
    assert second._items == ()
    assert (first.maxlen, RecordLog(7).maxlen) == (None, 7)
