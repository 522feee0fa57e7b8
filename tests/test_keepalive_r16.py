"""An HTTP keepalive that no later run can make succeed stops, and says why (review round 16).

- ``engine.keepalive(SERVER_CHAT_API_CHAT_INFO, "agentvep", ...)`` (a typo'd service) was
  taken, although the engine's static domain map tells at once that no such service exists
  (``request`` and ``websocket`` refuse the same at the call with ``UnknownServiceError``);
  then every run logged the same ``UnknownServiceError`` at WARNING, 120 times an hour, and the
  task kept ``running`` for ever: no typed error ever reached the caller.
- The same endless loop for every failure final by nature: a chat that ended (its chat info
  answered 404 or 410), an app key refused, a blacklisted account (451), a domain provider
  that fetches and does not know the service, a provider's bug. Such a failure now stops the
  schedule: one ERROR line naming the product, the service and the error, a
  ``keepalive_failed`` event with ``stopped=True``, ``running`` False, ``error`` holding it,
  and ``await task.wait()`` returning it. Outages (a 5xx after the retries, a timeout, a
  connection refused, the Domain API down) still go on as before.

The review of that change (section 7 on):

- It stopped at the first failure judged final, which is too eager: one 401 on an app key's
  run and its replay (a gateway's hiccup, a key disabled and enabled again) stopped the chat
  info keepalive for good, and the chat timed out though the next call worked; so did one bad
  domain map a fetching provider (``CsdsDomains``) cures when its TTL runs out. The schedule
  now stops only once every run failed so for ``STOP_AFTER_SECONDS`` (600 s, a fetched map's
  default TTL) and ``STOP_AFTER_RUNS`` (3) runs at least; each such failure before is a
  WARNING saying so. A success or an outage starts the count again.
- One 408 or 425 (a ``ClientStatusError`` from the default classifier) stopped it for good:
  both ask to try again (``RETRY_HANDSHAKE_STATUSES``), and are now outages.
- A healthy keepalive closed with an engine that holds a socket (the engine's close cuts the
  run in flight short with ``EngineClosed`` before it closes its keepalives) ended with that
  error: ``wait()`` returned it. It now ends as a close does: ``error`` None.
- A task that stopped by itself stayed in its engine's set until the engine closed: an engine
  serving many chats grew without bound, and reported them as keepalives running.

Against the simulator on loopback, on the virtual clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import pytest

from le_transport import AppKeyAuth, Engine, EventHooks, StateEvent, StaticDomains, UserLogin
from le_transport.chaos import FaultRule, Match, Status
from le_transport.errors import (
    AttemptTimeout,
    AuthenticationError,
    BlockedError,
    CircuitOpen,
    ClientStatusError,
    ConfigurationError,
    ConnectionFailed,
    DomainResolutionError,
    EngineClosed,
    HostileHostError,
    InvalidRequest,
    LoginRejected,
    ProviderError,
    RetriesExhausted,
    RetryBudgetExhausted,
    ServerStatusError,
    TransportError,
    UnexpectedAnswer,
    UnknownServiceError,
)
from le_transport.policies import CHAT_AGENT_API_REFRESH, SERVER_CHAT_API_CHAT_INFO
from le_transport.providers import CsdsDomains
from le_transport.providers.csds import DEFAULT_CSDS_TTL
from le_transport.sockets import UMS_BRAND_SOCKET_QUERY, KeepaliveTask, ums_brand_path
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import (
    DEFAULT_APP_KEY,
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    Simulator,
)
from tests.known_secrets import BEARER

CHAT_INFO = "*/chat/*/info"
HOUR = 3600.0
#: The runs of the chat info keepalive (every 30 s) until a failure judged final on every run
#: stops it: the first at 30 s, the last 600 s later.
STOP_RUNS = 21
#: When that last run fails.
STOPS_AT = 30.0 * STOP_RUNS


@pytest.fixture
async def sim(clock: VirtualClock) -> AsyncIterator[Simulator]:
    async with Simulator(clock=clock) as s:
        yield s


def _chat_engine(
    sim: Simulator,
    clock: VirtualClock,
    *,
    key: str = DEFAULT_APP_KEY.key,
    domains: StaticDomains | None = None,
    states: list[StateEvent] | None = None,
) -> Engine:
    hooks = EventHooks(on_state=states.append) if states is not None else None
    return Engine(
        domains or StaticDomains(sim.domains),
        scheme="http",
        clock=clock,
        auth=AppKeyAuth(sim.account.id, key),
        hooks=hooks,
    )


def _chat_fields(sim: Simulator, chat: str = "c1") -> dict[str, str | int]:
    return {"account": sim.account.id, "chat_id": chat}


def _keepalive_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "le_transport.sockets"]


# -- 1. a service the engine's domain provider can tell at once does not exist ----------------


async def test_a_keepalive_for_a_service_the_static_map_does_not_know_is_refused_at_the_call(
    sim: Simulator, clock: VirtualClock
) -> None:
    """The review's repro: before, the typo was taken and logged a WARNING every 30 s."""
    async with _chat_engine(sim, clock) as engine:
        with pytest.raises(UnknownServiceError) as websocket_refusal:
            await engine.websocket("agentvep", "/x")
        with pytest.raises(UnknownServiceError) as refused:
            engine.keepalive(SERVER_CHAT_API_CHAT_INFO, "agentvep", fields=_chat_fields(sim))
        # As websocket() says it: the provider's own error, naming the known services.
        assert str(refused.value) == str(websocket_refusal.value)
        assert refused.value.service == "agentvep"
        assert "agentVep" in refused.value.known
        assert not engine._keepalives
        await clock.sleep(HOUR)
    assert sim.count("GET", CHAT_INFO) == 0


@pytest.mark.parametrize("service", [5, None, "", "agent vep", "agent\nvep"])
async def test_a_keepalive_whose_service_names_no_service_is_refused_at_the_call(
    sim: Simulator, clock: VirtualClock, service: object
) -> None:
    """As websocket() refuses it (InvalidRequest): before, it went into the task's name and
    every log line, and failed at every run."""
    async with _chat_engine(sim, clock) as engine:
        with pytest.raises(InvalidRequest, match="service"):
            engine.keepalive(
                SERVER_CHAT_API_CHAT_INFO,
                service,  # type: ignore[arg-type]
                fields=_chat_fields(sim),
            )
        assert not engine._keepalives


class _FetchingDomains(StaticDomains):
    """A domain provider that is not the engine's plain static map: asked at each run only,
    as one that fetches from the Domain API is (the engine does not ask it at the call)."""

    __slots__ = ()


async def test_a_provider_that_fetches_is_asked_at_each_run_and_its_verdict_repeated_stops_it(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    states: list[StateEvent] = []
    caplog.set_level(logging.INFO, logger="le_transport.sockets")
    domains = _FetchingDomains(sim.domains)
    async with _chat_engine(sim, clock, domains=domains, states=states) as engine:
        task = engine.keepalive(SERVER_CHAT_API_CHAT_INFO, "agentvep", fields=_chat_fields(sim))
        await clock.sleep(HOUR)
        assert not task.running
        assert (task.runs, task.failures) == (STOP_RUNS, STOP_RUNS)
        assert isinstance(task.error, UnknownServiceError)
        assert await task.wait() is task.error
        await task.close()
    records = _keepalive_records(caplog)
    assert [r.levelno for r in records] == [logging.WARNING] * (STOP_RUNS - 1) + [logging.ERROR]
    message = records[-1].getMessage()
    assert "Server Chat API" in message
    assert "agentvep" in message
    assert "UnknownServiceError" in message
    assert "600 s (21 runs in a row)" in message
    failed = [s for s in states if s.name == "keepalive_failed"]
    assert [s.details for s in failed] == [
        {
            "action": SERVER_CHAT_API_CHAT_INFO.action,
            "error": "UnknownServiceError",
            "final_in_a_row": n,
        }
        for n in range(1, STOP_RUNS)
    ] + [
        {
            "action": SERVER_CHAT_API_CHAT_INFO.action,
            "error": "UnknownServiceError",
            "stopped": True,
        }
    ]


# -- 2. final answers through the engine's stack ----------------------------------------------


@pytest.mark.parametrize("status", [404, 410, 403, 400])
async def test_the_chat_info_keepalive_of_a_chat_that_ended_stops_once_refused_for_10_minutes(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    """A chat that ended (its info answered 404 or 410; 400 and 403 are as final): nothing
    will keep it alive, so the schedule stops rather than asking 120 times an hour (once the
    refusal came back on every run for 10 minutes)."""
    states: list[StateEvent] = []
    caplog.set_level(logging.INFO, logger="le_transport.sockets")
    sim.faults.add(FaultRule("ended", Status(status), match=Match(method="GET", path=CHAT_INFO)))
    async with _chat_engine(sim, clock, states=states) as engine:
        task = engine.keepalive(SERVER_CHAT_API_CHAT_INFO, "agentVep", fields=_chat_fields(sim))
        await clock.sleep(HOUR)
        assert not task.running
        assert (task.runs, task.failures) == (STOP_RUNS, STOP_RUNS)
        assert isinstance(task.error, ClientStatusError)
        assert task.error.status == status
        assert await task.wait() is task.error
    assert sim.count("GET", CHAT_INFO) == STOP_RUNS
    records = _keepalive_records(caplog)
    assert [r.levelno for r in records] == [logging.WARNING] * (STOP_RUNS - 1) + [logging.ERROR]
    message = records[-1].getMessage()
    assert "Server Chat API" in message
    assert "agentVep" in message
    assert f"ClientStatusError: {status}" in message
    assert all(r.exc_info is None for r in records)
    assert [s.details.get("stopped") for s in states if s.name == "keepalive_failed"] == [None] * (
        STOP_RUNS - 1
    ) + [True]


async def test_a_refused_app_key_stops_the_keepalive_and_never_shows_the_key(
    sim: Simulator,
    clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
    secret_values: set[str],
) -> None:
    """Bad credentials: the auth middleware's one replay is refused too
    (AuthenticationError); every later run would cost two refused requests."""
    secret_values.add("not-the-apps-key")
    caplog.set_level(logging.DEBUG)
    async with _chat_engine(sim, clock, key="not-the-apps-key") as engine:
        task = engine.keepalive(SERVER_CHAT_API_CHAT_INFO, "agentVep", fields=_chat_fields(sim))
        await clock.sleep(HOUR)
        assert not task.running
        assert isinstance(task.error, AuthenticationError)
    assert sim.count("GET", CHAT_INFO) == 2 * STOP_RUNS  # each run and its one replay
    stops = [r for r in _keepalive_records(caplog) if r.levelno >= logging.WARNING]
    assert [r.levelno for r in stops] == [logging.WARNING] * (STOP_RUNS - 1) + [logging.ERROR]
    assert all("AuthenticationError" in r.getMessage() for r in stops)


async def test_a_blacklisted_account_stops_the_keepalive(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.add(FaultRule("blocked", Status(451), match=Match(method="GET", path=CHAT_INFO)))
    async with _chat_engine(sim, clock) as engine:
        task = engine.keepalive(SERVER_CHAT_API_CHAT_INFO, "agentVep", fields=_chat_fields(sim))
        await clock.sleep(HOUR)
        assert not task.running
        assert isinstance(task.error, BlockedError)
    assert sim.count("GET", CHAT_INFO) == STOP_RUNS


# -- 3. outages still go on --------------------------------------------------------------------


async def test_a_chat_info_outage_is_waited_out_and_the_schedule_goes_on(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A 503 on every attempt (the run fails after its retries): WARNING, and the next run is
    tried; once the service is back, runs succeed again."""
    caplog.set_level(logging.WARNING, logger="le_transport.sockets")
    rule = FaultRule("down", Status(503), match=Match(method="GET", path=CHAT_INFO))
    sim.faults.add(rule)
    async with _chat_engine(sim, clock) as engine:
        task = engine.keepalive(SERVER_CHAT_API_CHAT_INFO, "agentVep", fields=_chat_fields(sim))
        await clock.sleep(125)
        assert task.running
        assert task.error is None
        failed = task.failures
        assert failed >= 3
        sim.faults.clear()
        await clock.sleep(95)
        assert task.running
        assert task.failures == failed
        assert task.runs > failed
        await task.close()
    assert all(r.levelno == logging.WARNING for r in _keepalive_records(caplog))


async def test_an_unreachable_host_is_an_outage_and_the_schedule_goes_on(
    clock: VirtualClock,
) -> None:
    engine = Engine(
        {"agentVep": "127.0.0.1:9"}, scheme="http", clock=clock, auth=AppKeyAuth("1", "k-1")
    )
    async with engine:
        task = engine.keepalive(
            SERVER_CHAT_API_CHAT_INFO, "agentVep", fields={"account": "1", "chat_id": "c"}
        )
        # Each run ends at its 10 s timeout at the latest: the third, from 90 s, by 100 s.
        await clock.sleep(101)
        assert task.running
        assert task.error is None
        assert task.failures == task.runs == 3
        await task.close()


# -- 4. the rule, on the task alone ----------------------------------------------------------


def _refused(status: int) -> ClientStatusError:
    return ClientStatusError(f"{status} refused", status=status)


def _domain_refused_with(status: int) -> DomainResolutionError:
    err = DomainResolutionError("the Domain API refused the account")
    err.__cause__ = _refused(status)
    return err


def _domain_refused() -> DomainResolutionError:
    return _domain_refused_with(400)


def _retried_503() -> RetriesExhausted:
    last = ServerStatusError("503", status=503)
    err = RetriesExhausted("gave up", last=last)
    err.__cause__ = last
    return err


FINAL: dict[str, Callable[[], Exception]] = {
    "404": lambda: _refused(404),
    "410": lambda: _refused(410),
    "451": lambda: BlockedError("451", status=451),
    "login-rejected": lambda: LoginRejected("refused", status=401),
    "authentication": lambda: AuthenticationError("401 again after fresh credentials"),
    "unknown-service": lambda: UnknownServiceError("unknown service 'x'", service="x"),
    "hostile-host": lambda: HostileHostError("a host with a path"),
    "domain-api-refused": _domain_refused,
    "invalid-request": lambda: InvalidRequest("a path that is no path"),
    "configuration": lambda: ConfigurationError("wrong"),
    "provider-bug": lambda: ProviderError(
        "a provider failed", provider="P", role="auth", operation="credentials", error_type="X"
    ),
}

TRANSIENT: dict[str, Callable[[], Exception]] = {
    "503-after-retries": _retried_503,
    "503-bare": lambda: ServerStatusError("503", status=503),
    "connection": lambda: ConnectionFailed("refused", never_sent=True),
    "attempt-timeout": lambda: AttemptTimeout("slow"),
    "timeout": TimeoutError,
    "budget": lambda: RetryBudgetExhausted("spent", last=ServerStatusError("503", status=503)),
    "breaker": lambda: CircuitOpen("open", retry_at=99.0),
    "domain-api-down": lambda: DomainResolutionError("the Domain API is down"),
    "maintenance-page": lambda: UnexpectedAnswer("a maintenance page", status=200),
    "not-started": lambda: TransportError("the engine is not started"),
    "401-no-credentials": lambda: _refused(401),
    "407-proxy": lambda: _refused(407),
    "os-error": lambda: OSError("reset"),
    # Statuses that ask to try again (RETRY_HANDSHAKE_STATUSES), bare or as a Domain API's.
    "408": lambda: _refused(408),
    "425": lambda: _refused(425),
    "429": lambda: _refused(429),
    "domain-api-408": lambda: _domain_refused_with(408),
}


def _failing(errors: Callable[[], Exception]) -> Callable[[], Awaitable[None]]:
    async def action() -> None:
        raise errors()

    return action


@pytest.mark.parametrize("name", list(FINAL))
async def test_a_failure_final_by_nature_on_every_run_for_10_minutes_stops_the_schedule_once(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    states: list[StateEvent] = []
    caplog.set_level(logging.INFO, logger="le_transport.sockets")
    task = KeepaliveTask(
        SERVER_CHAT_API_CHAT_INFO,
        _failing(FINAL[name]),
        clock=clock,
        hooks=EventHooks(on_state=states.append),
        name="agentVep retrieve chat information",
    ).start()
    await clock.sleep(HOUR)
    assert not task.running
    assert (task.runs, task.failures) == (STOP_RUNS, STOP_RUNS)
    assert task.error is not None
    assert await task.wait() is task.error
    records = _keepalive_records(caplog)
    assert [r.levelno for r in records] == [logging.WARNING] * (STOP_RUNS - 1) + [logging.ERROR]
    assert all(type(task.error).__name__ in r.getMessage() for r in records)
    assert records[-1].__dict__["error"] == type(task.error).__name__
    assert [r.__dict__["final_in_a_row"] for r in records] == list(range(1, STOP_RUNS + 1))
    assert [s.details.get("stopped") for s in states] == [None] * (STOP_RUNS - 1) + [True]
    await task.close()
    assert task.error is not None  # close() keeps why it stopped


@pytest.mark.parametrize("name", list(TRANSIENT))
async def test_an_outage_goes_on_as_before(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    caplog.set_level(logging.INFO, logger="le_transport.sockets")
    task = KeepaliveTask(SERVER_CHAT_API_CHAT_INFO, _failing(TRANSIENT[name]), clock=clock).start()
    await clock.sleep(95)
    assert task.running
    assert task.error is None
    assert (task.runs, task.failures) == (3, 3)
    assert [r.levelno for r in _keepalive_records(caplog)] == [logging.WARNING] * 3
    await task.close()


async def test_a_run_that_outlasts_the_keepalives_timeout_is_an_outage(
    clock: VirtualClock,
) -> None:
    async def slow() -> None:
        await clock.sleep(SERVER_CHAT_API_CHAT_INFO.timeout + 1)

    task = KeepaliveTask(SERVER_CHAT_API_CHAT_INFO, slow, clock=clock).start()
    await clock.sleep(101)
    assert task.running
    assert (task.runs, task.failures) == (3, 3)
    await task.close()


async def test_the_stop_line_shows_the_errors_text_redacted(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def action() -> None:
        raise ConfigurationError(f"refused Authorization: Bearer {BEARER} " + "x" * 5000)

    caplog.set_level(logging.INFO, logger="le_transport.sockets")
    task = KeepaliveTask(SERVER_CHAT_API_CHAT_INFO, action, clock=clock).start()
    await clock.sleep(STOPS_AT + 5)
    records = _keepalive_records(caplog)
    assert [r.levelno for r in records] == [logging.WARNING] * (STOP_RUNS - 1) + [logging.ERROR]
    for record in records:
        message = record.getMessage()
        assert "ConfigurationError: refused Authorization: Bearer ***" in message
        assert BEARER not in message
        assert len(message) < 600
    await task.close()


# -- 5. waiting for a keepalive's end ---------------------------------------------------------


async def test_wait_returns_the_error_a_keepalive_stopped_on(clock: VirtualClock) -> None:
    task = KeepaliveTask(
        SERVER_CHAT_API_CHAT_INFO, _failing(lambda: _refused(410)), clock=clock
    ).start()
    waiter = asyncio.ensure_future(task.wait())
    await clock.sleep(STOPS_AT - 1)
    assert not waiter.done()
    await clock.sleep(2)
    error = await waiter
    assert isinstance(error, ClientStatusError)
    assert error is task.error


async def test_wait_returns_none_once_a_healthy_keepalive_is_closed(clock: VirtualClock) -> None:
    runs: list[float] = []

    async def action() -> None:
        runs.append(clock.now())

    task = KeepaliveTask(SERVER_CHAT_API_CHAT_INFO, action, clock=clock).start()
    waiter = asyncio.ensure_future(task.wait())
    await clock.sleep(65)
    assert not waiter.done()
    await task.close()
    assert await waiter is None
    assert await task.wait() is None
    assert runs == [30.0, 60.0]


async def test_wait_on_an_engines_keepalive_ends_when_the_engine_closes(
    sim: Simulator, clock: VirtualClock
) -> None:
    async with _chat_engine(sim, clock) as engine:
        task = engine.keepalive(SERVER_CHAT_API_CHAT_INFO, "agentVep", fields=_chat_fields(sim))
        waiter = asyncio.ensure_future(task.wait())
        await clock.sleep(35)
        assert not waiter.done()
    assert await waiter is None
    assert (task.runs, task.failures) == (1, 0)


# -- 6. the Login Service refresh: a refused login is waited out, not final ------------------


async def test_the_refresh_keepalive_goes_on_after_a_refused_login_and_refreshes_the_next_session(
    sim: Simulator, clock: VirtualClock
) -> None:
    """A refused refresh falls back to a login; refused too, the provider drops the session
    and later runs refresh nothing (no login, no request) until a call logs in again. The
    schedule must outlive that refusal: stopped, it would no longer keep the next session
    alive, which then expired after its TTL."""
    domains = StaticDomains(sim.domains)
    auth = UserLogin(
        sim.account.id, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains, keepalive=False
    )
    async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
        await engine.login()
        task = engine.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
        sim.faults.script("POST", "*/refresh", [401])
        sim.faults.script("POST", "*/login", [401])
        await clock.sleep(CHAT_AGENT_API_REFRESH.interval + 1)
        assert task.failures == 1
        assert auth.session is None
        await clock.sleep(CHAT_AGENT_API_REFRESH.interval)  # no session: nothing to refresh
        assert task.running
        assert task.error is None
        assert (task.runs, task.failures) == (2, 1)
        await engine.login()  # the caller's next call logs in
        refreshed = auth.refreshes
        await clock.sleep(CHAT_AGENT_API_REFRESH.interval)
        assert auth.refreshes == refreshed + 1
        assert (task.runs, task.failures) == (3, 1)
        await task.close()


# -- 7. a failure judged final stops the schedule only once it came back for 10 minutes ---------


def _outcomes(
    clock: VirtualClock, script: Callable[[int], Exception | None]
) -> Callable[[], Awaitable[None]]:
    """An action whose run ``n`` (from 1) raises ``script(n)``, or succeeds on None."""
    runs = 0

    async def action() -> None:
        nonlocal runs
        runs += 1
        error = script(runs)
        if error is not None:
            raise error

    return action


def test_the_stop_waits_out_a_fetched_domain_maps_default_ttl() -> None:
    assert KeepaliveTask.STOP_AFTER_SECONDS == DEFAULT_CSDS_TTL
    assert KeepaliveTask.STOP_AFTER_RUNS == 3
    assert DEFAULT_CSDS_TTL / SERVER_CHAT_API_CHAT_INFO.interval + 1 == STOP_RUNS


async def test_one_final_failure_then_a_success_goes_on(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the first failure judged final stopped the schedule for good."""
    caplog.set_level(logging.INFO, logger="le_transport.sockets")
    task = KeepaliveTask(
        SERVER_CHAT_API_CHAT_INFO,
        _outcomes(clock, lambda n: _refused(404) if n == 1 else None),
        clock=clock,
    ).start()
    await clock.sleep(HOUR + 5)
    assert task.running
    assert task.error is None
    assert (task.runs, task.failures) == (120, 1)
    (record,) = _keepalive_records(caplog)
    assert record.levelno == logging.WARNING
    await task.close()
    assert await task.wait() is None


async def test_a_success_starts_the_count_again(clock: VirtualClock) -> None:
    # Refused on the first 20 runs (600 s less one interval), answered on the 21st, then
    # refused for ever: the count starts again at run 22, and stops 600 s later, at run 42.
    task = KeepaliveTask(
        SERVER_CHAT_API_CHAT_INFO,
        _outcomes(clock, lambda n: None if n == STOP_RUNS else _refused(410)),
        clock=clock,
    ).start()
    await clock.sleep(2 * STOPS_AT - 5)
    assert task.running
    assert (task.runs, task.failures) == (2 * STOP_RUNS - 1, 2 * STOP_RUNS - 2)
    await clock.sleep(HOUR)
    assert not task.running
    assert (task.runs, task.failures) == (2 * STOP_RUNS, 2 * STOP_RUNS - 1)
    assert isinstance(task.error, ClientStatusError)
    await task.close()


async def test_an_outage_between_starts_the_count_again(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A failure judged final on every other run, an outage between: never 'every run'."""
    caplog.set_level(logging.INFO, logger="le_transport.sockets")
    task = KeepaliveTask(
        SERVER_CHAT_API_CHAT_INFO,
        _outcomes(clock, lambda n: _refused(404) if n % 2 else _retried_503()),
        clock=clock,
    ).start()
    await clock.sleep(HOUR + 5)
    assert task.running
    assert task.error is None
    assert (task.runs, task.failures) == (120, 120)
    finals = [r.__dict__.get("final_in_a_row") for r in _keepalive_records(caplog)]
    assert finals == [1, None] * 60
    await task.close()


@pytest.mark.parametrize(
    ("interval", "runs"),
    [(30.0, STOP_RUNS), (59.0, 12), (300.0, 3), (1000.0, 3)],
)
async def test_the_stop_takes_10_minutes_and_3_runs_at_least(
    clock: VirtualClock, interval: float, runs: int
) -> None:
    """Three runs alone would stop the chat info keepalive 60 s after the first failure, before
    a fetched domain map's TTL ran out; 10 minutes alone would stop a keepalive run every
    1000 s on its second run."""
    policy = attrs.evolve(SERVER_CHAT_API_CHAT_INFO, interval=interval, timeout=10.0)
    task = KeepaliveTask(policy, _failing(lambda: _refused(404)), clock=clock).start()
    await clock.sleep(interval * runs - 1)
    assert task.running
    assert task.runs == runs - 1
    await clock.sleep(2)
    assert not task.running
    assert (task.runs, task.failures) == (runs, runs)
    await task.close()


async def test_the_login_refresh_keepalive_stops_on_its_third_final_failure(
    clock: VirtualClock,
) -> None:
    """Every 5 min: three runs in a row take 10 minutes."""
    task = KeepaliveTask(
        CHAT_AGENT_API_REFRESH, _failing(lambda: _refused(403)), clock=clock
    ).start()
    await clock.sleep(3 * CHAT_AGENT_API_REFRESH.interval + 1)
    assert not task.running
    assert (task.runs, task.failures) == (3, 3)
    await task.close()


async def test_each_final_failure_before_the_stop_says_when_it_will_stop(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="le_transport.sockets")
    task = KeepaliveTask(
        SERVER_CHAT_API_CHAT_INFO,
        _failing(lambda: _refused(404)),
        clock=clock,
        name="agentVep retrieve chat information",
    ).start()
    await clock.sleep(65)
    first, second = _keepalive_records(caplog)
    assert first.levelno == second.levelno == logging.WARNING
    assert first.getMessage() == (
        "agentVep retrieve chat information: keepalive retrieve chat information failed: "
        "ClientStatusError: 404 refused; judged final (1 run(s) in a row, for 0 s): it stops "
        "once every run has failed so for 600 s and 3 runs in a row"
    )
    assert "judged final (2 run(s) in a row, for 30 s)" in second.getMessage()
    assert (first.__dict__["final_in_a_row"], second.__dict__["final_in_a_row"]) == (1, 2)
    await task.close()


# -- 8. through the engine: the review's repros -------------------------------------------------


@pytest.mark.parametrize("status", [408, 425])
async def test_one_408_or_425_on_the_chat_info_is_waited_out(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    """A proxy's or a load balancer's request timeout, answered once: before, the keepalive
    stopped for good (a ClientStatusError that failed at once), and the chat timed out."""
    caplog.set_level(logging.INFO, logger="le_transport.sockets")
    sim.faults.script("GET", CHAT_INFO, [status])
    async with _chat_engine(sim, clock) as engine:
        task = engine.keepalive(SERVER_CHAT_API_CHAT_INFO, "agentVep", fields=_chat_fields(sim))
        await clock.sleep(605)
        assert task.running, task.error
        assert task.error is None
        assert (task.runs, task.failures) == (20, 1)
        await task.close()
    (record,) = _keepalive_records(caplog)
    assert record.levelno == logging.WARNING
    assert "final_in_a_row" not in record.__dict__


async def test_an_app_key_refused_on_one_run_and_its_replay_is_waited_out(
    sim: Simulator, clock: VirtualClock
) -> None:
    """Two 401s, the run and its one replay (a gateway's hiccup, a key disabled and enabled
    again): an AuthenticationError judged final, which stopped the chat info keepalive for
    good, though the next run works."""
    sim.faults.script("GET", CHAT_INFO, [401, 401])
    async with _chat_engine(sim, clock) as engine:
        task = engine.keepalive(SERVER_CHAT_API_CHAT_INFO, "agentVep", fields=_chat_fields(sim))
        await clock.sleep(605)
        assert task.running, task.error
        assert task.error is None
        assert (task.runs, task.failures) == (20, 1)
        await task.close()
    assert sim.count("GET", CHAT_INFO) == 21  # the first run's two, then one a run


@pytest.mark.parametrize("ttl", [120.0, None])
@pytest.mark.parametrize("bad", ["hostile", "missing"])
async def test_a_bad_map_a_fetching_provider_cures_after_its_ttl_is_waited_out(
    sim: Simulator, clock: VirtualClock, ttl: float | None, bad: str
) -> None:
    """One bad map (a login answer's, or the Domain API's during a bad deploy): a hostile host,
    or no entry, for agentVep. Before, the keepalive stopped at its first run; the provider
    fetches the map again once its TTL (600 s by default) runs out, and the runs work again."""
    states: list[StateEvent] = []
    domains = CsdsDomains(
        sim.account.id,
        csds_host=sim.host,
        scheme="http",
        ttl=DEFAULT_CSDS_TTL if ttl is None else ttl,
    )
    entries = [{"service": "other", "account": sim.account.id, "baseURI": sim.host}]
    if bad == "hostile":
        entries.append({"service": "agentVep", "account": sim.account.id, "baseURI": "evil/x?y"})
    async with Engine(
        domains,
        scheme="http",
        clock=clock,
        auth=AppKeyAuth(sim.account.id, DEFAULT_APP_KEY.key),
        hooks=EventHooks(on_state=states.append),
    ) as engine:
        assert domains.warm({"baseURIs": entries})  # at 0 s: the map's TTL runs from here
        task = engine.keepalive(SERVER_CHAT_API_CHAT_INFO, "agentVep", fields=_chat_fields(sim))
        await clock.sleep(HOUR)
        assert task.running, task.error
        assert task.error is None
        # Every run failed until the map's TTL ran out (at 120 s: 30, 60 and 90 s; at 600 s:
        # 30 to 570 s), the provider's own verdict; none since.
        assert task.failures == (ttl or DEFAULT_CSDS_TTL) // SERVER_CHAT_API_CHAT_INFO.interval - 1
        assert sim.count("GET", CHAT_INFO) == task.runs - task.failures
        await task.close()
    expected = (HostileHostError if bad == "hostile" else UnknownServiceError).__name__
    failed = [s.details for s in states if s.name == "keepalive_failed"]
    assert failed == [
        {"action": SERVER_CHAT_API_CHAT_INFO.action, "error": expected, "final_in_a_row": n}
        for n in range(1, task.failures + 1)
    ]


# -- 9. an engine closed under a run ends the schedule as a close does -------------------------


async def test_an_action_that_raises_engine_closed_ends_the_schedule_cleanly(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="le_transport.sockets")
    states: list[StateEvent] = []
    released: list[KeepaliveTask] = []

    async def action() -> None:
        raise EngineClosed("the engine was closed during a pause")

    task = KeepaliveTask(
        SERVER_CHAT_API_CHAT_INFO,
        action,
        clock=clock,
        hooks=EventHooks(on_state=states.append),
        on_close=released.append,
    ).start()
    waiter = asyncio.ensure_future(task.wait())
    await clock.sleep(HOUR)
    assert await waiter is None
    assert not task.running
    assert task.error is None
    assert (task.runs, task.failures) == (1, 0)
    assert states == []
    assert released == [task]
    (record,) = _keepalive_records(caplog)
    assert record.levelno == logging.INFO
    assert "its engine is closed" in record.getMessage()
    await task.close()
    assert released == [task]


async def test_wait_of_a_healthy_keepalive_closed_with_an_engine_holding_a_socket_is_none(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The engine's close sets its shutdown before it closes its keepalives (its sockets close
    first): a run in its retry pause ends with EngineClosed, which the task kept as its error,
    and wait() returned it for a keepalive that was healthy."""
    caplog.set_level(logging.INFO, logger="le_transport.sockets")
    states: list[StateEvent] = []
    sim.faults.script("GET", CHAT_INFO, [503])  # one 503: the first run pauses 5 s
    engine = _chat_engine(sim, clock, states=states)
    await engine.start()
    try:
        agent = UserLogin(
            sim.account.id,
            DEFAULT_USER,
            DEFAULT_PASSWORD,
            domains=StaticDomains(sim.domains),
            keepalive=False,
        )
        ws = await engine.websocket(
            "facadeMsg",
            ums_brand_path(sim.account.id),
            params=UMS_BRAND_SOCKET_QUERY,
            auth=agent,
        )
        await ws.wait_open()
        task = engine.keepalive(SERVER_CHAT_API_CHAT_INFO, "agentVep", fields=_chat_fields(sim))
        waiter = asyncio.ensure_future(task.wait())
        await clock.sleep(32)  # the first run is in its 5 s retry pause
        assert task.running
        assert task.error is None
    finally:
        await engine.close()
    assert await waiter is None
    assert task.error is None
    assert task.failures == 0
    assert [s for s in states if s.name == "keepalive_failed"] == []
    assert [r.levelno for r in _keepalive_records(caplog) if "keepalive" in r.getMessage()] == [
        logging.INFO
    ]


# -- 10. a task that stops by itself leaves its engine --------------------------------------


async def test_keepalives_that_stopped_by_themselves_leave_the_engine(
    sim: Simulator, clock: VirtualClock
) -> None:
    """An engine serving many chats kept every stopped keepalive until it closed, and reported
    them as running."""
    sim.faults.add(FaultRule("ended", Status(404), match=Match(method="GET", path=CHAT_INFO)))
    async with _chat_engine(sim, clock) as engine:
        tasks = [
            engine.keepalive(
                SERVER_CHAT_API_CHAT_INFO, "agentVep", fields=_chat_fields(sim, f"c{i}")
            )
            for i in range(50)
        ]
        assert len(engine._keepalives) == 50
        await clock.sleep(STOPS_AT + 5)
        assert not any(t.running for t in tasks)
        assert not engine._keepalives
        assert not [line for line in engine._left_open() if "keepalive" in line]
        # Each still says why it stopped, and closes quietly.
        assert all(isinstance(t.error, ClientStatusError) for t in tasks)
        for t in tasks:
            await t.close()


class _SleepFails:
    """The virtual clock, whose sleeps raise once ``fail`` is set."""

    def __init__(self, clock: VirtualClock) -> None:
        self._clock = clock
        self.fail = False

    def now(self) -> float:
        return self._clock.now()

    async def sleep(self, seconds: float) -> None:
        if self.fail:
            raise OSError("the clock source went away")
        await self._clock.sleep(seconds)


async def test_a_keepalive_stopped_by_its_clock_leaves_its_owner(clock: VirtualClock) -> None:
    released: list[KeepaliveTask] = []
    broken = _SleepFails(clock)
    broken.fail = True
    task = KeepaliveTask(
        SERVER_CHAT_API_CHAT_INFO,
        _failing(lambda: _refused(404)),
        clock=broken,
        on_close=released.append,
    ).start()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.running
    assert isinstance(task.error, OSError)
    assert released == [task]
    await task.close()
    assert released == [task]


async def test_an_owner_that_fails_to_hear_the_end_is_logged_and_the_error_kept(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    def owner(task: KeepaliveTask) -> None:
        raise RuntimeError("the owner's bug")

    caplog.set_level(logging.INFO, logger="le_transport.sockets")
    task = KeepaliveTask(
        SERVER_CHAT_API_CHAT_INFO, _failing(lambda: _refused(404)), clock=clock, on_close=owner
    ).start()
    await clock.sleep(STOPS_AT + 5)
    assert not task.running
    assert isinstance(task.error, ClientStatusError)
    records = _keepalive_records(caplog)
    assert records[-1].levelno == logging.ERROR
    assert "its owner could not be told" in records[-1].getMessage()
    assert "RuntimeError" in records[-1].getMessage()
    await task.close()  # quiet: the owner is not told twice
