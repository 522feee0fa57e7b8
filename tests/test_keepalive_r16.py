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

Against the simulator on loopback, on the virtual clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

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
from le_transport.sockets import KeepaliveTask
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


async def test_a_provider_that_fetches_is_asked_at_the_first_run_and_its_verdict_stops_it(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    states: list[StateEvent] = []
    caplog.set_level(logging.INFO, logger="le_transport.sockets")
    domains = _FetchingDomains(sim.domains)
    async with _chat_engine(sim, clock, domains=domains, states=states) as engine:
        task = engine.keepalive(SERVER_CHAT_API_CHAT_INFO, "agentvep", fields=_chat_fields(sim))
        await clock.sleep(HOUR)
        assert not task.running
        assert (task.runs, task.failures) == (1, 1)
        assert isinstance(task.error, UnknownServiceError)
        assert await task.wait() is task.error
        await task.close()
    records = _keepalive_records(caplog)
    assert [r.levelno for r in records] == [logging.ERROR]
    message = records[0].getMessage()
    assert "Server Chat API" in message
    assert "agentvep" in message
    assert "UnknownServiceError" in message
    stopped = [s for s in states if s.name == "keepalive_failed"]
    assert [s.details for s in stopped] == [
        {
            "action": SERVER_CHAT_API_CHAT_INFO.action,
            "error": "UnknownServiceError",
            "stopped": True,
        }
    ]


# -- 2. final answers through the engine's stack ----------------------------------------------


@pytest.mark.parametrize("status", [404, 410, 403, 400])
async def test_the_chat_info_keepalive_of_a_chat_that_ended_stops_at_the_first_refusal(
    sim: Simulator, clock: VirtualClock, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    """A chat that ended (its info answered 404 or 410; 400 and 403 are as final): nothing
    will keep it alive, so the schedule stops rather than asking 120 times an hour."""
    states: list[StateEvent] = []
    caplog.set_level(logging.INFO, logger="le_transport.sockets")
    sim.faults.add(FaultRule("ended", Status(status), match=Match(method="GET", path=CHAT_INFO)))
    async with _chat_engine(sim, clock, states=states) as engine:
        task = engine.keepalive(SERVER_CHAT_API_CHAT_INFO, "agentVep", fields=_chat_fields(sim))
        await clock.sleep(HOUR)
        assert not task.running
        assert (task.runs, task.failures) == (1, 1)
        assert isinstance(task.error, ClientStatusError)
        assert task.error.status == status
        assert await task.wait() is task.error
    assert sim.count("GET", CHAT_INFO) == 1
    records = _keepalive_records(caplog)
    assert [r.levelno for r in records] == [logging.ERROR]
    message = records[0].getMessage()
    assert "Server Chat API" in message
    assert "agentVep" in message
    assert f"ClientStatusError: {status}" in message
    assert records[0].exc_info is None
    assert [s.details.get("stopped") for s in states if s.name == "keepalive_failed"] == [True]


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
    assert sim.count("GET", CHAT_INFO) == 2  # the first run and its one replay
    stops = [r for r in _keepalive_records(caplog) if r.levelno >= logging.WARNING]
    assert len(stops) == 1
    assert stops[0].levelno == logging.ERROR
    assert "AuthenticationError" in stops[0].getMessage()


async def test_a_blacklisted_account_stops_the_keepalive(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.add(FaultRule("blocked", Status(451), match=Match(method="GET", path=CHAT_INFO)))
    async with _chat_engine(sim, clock) as engine:
        task = engine.keepalive(SERVER_CHAT_API_CHAT_INFO, "agentVep", fields=_chat_fields(sim))
        await clock.sleep(HOUR)
        assert not task.running
        assert isinstance(task.error, BlockedError)
    assert sim.count("GET", CHAT_INFO) == 1


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


def _domain_refused() -> DomainResolutionError:
    err = DomainResolutionError("the Domain API refused the account")
    err.__cause__ = _refused(400)
    return err


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
}


def _failing(errors: Callable[[], Exception]) -> Callable[[], Awaitable[None]]:
    async def action() -> None:
        raise errors()

    return action


@pytest.mark.parametrize("name", list(FINAL))
async def test_a_failure_final_by_nature_stops_the_schedule_once(
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
    assert (task.runs, task.failures) == (1, 1)
    assert task.error is not None
    assert await task.wait() is task.error
    records = _keepalive_records(caplog)
    assert [r.levelno for r in records] == [logging.ERROR]
    assert type(task.error).__name__ in records[0].getMessage()
    assert records[0].__dict__["error"] == type(task.error).__name__
    assert [s.details.get("stopped") for s in states] == [True]
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
    await clock.sleep(35)
    (record,) = _keepalive_records(caplog)
    message = record.getMessage()
    assert record.levelno == logging.ERROR
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
    await clock.sleep(29)
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
