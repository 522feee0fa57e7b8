"""The consumer socket (header and InitConnection auth), HTTP keepalives through the engine, and
reconnect pacing of many sockets dropped at once — against the simulator."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import weakref

import pytest
from yarl import URL

from le_transport import AppKeyAuth, Engine, EventHooks, StateEvent
from le_transport.chaos import WsRejectHandshake
from le_transport.errors import EngineClosed
from le_transport.policies import SERVER_CHAT_API_CHAT_INFO, TokenBucket
from le_transport.providers import (
    AuthProvider,
    ConsumerJwt,
    Credentials,
    CsdsDomains,
    ProviderHttp,
    StaticDomains,
    UserLogin,
)
from le_transport.sockets import (
    CONSUMER_SOCKET_QUERY,
    AuthPlacement,
    ReconnectPacer,
    ResilientSocket,
    consumer_path,
)
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import (
    DEFAULT_APP_KEY,
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    Simulator,
)
from tests.test_socket_support import (
    StateLog,
    agent_engine,
    brand_socket,
    no_open_connections,
    sim,
    states,
)

__all__ = ["no_open_connections", "sim", "states"]

pytestmark = pytest.mark.usefixtures("no_open_connections")


async def _consumer_socket(
    engine: Engine, sim: Simulator, auth: AuthProvider | None = None
) -> ResilientSocket:
    """The simulator account's consumer socket on ``engine``, with ``auth`` if given."""
    return await engine.websocket(
        "asyncMessagingEnt",
        consumer_path(sim.account.id),
        params=CONSUMER_SOCKET_QUERY,
        auth=auth,
    )


async def _open_on_each(
    engines: tuple[Engine, ...], sim: Simulator, auth: AuthProvider
) -> list[ResilientSocket]:
    """The consumer socket on each of ``engines``, all with ``auth``, each open."""
    sockets = [await _consumer_socket(engine, sim, auth=auth) for engine in engines]
    for ws in sockets:
        await ws.wait_open()
    return sockets


def consumer_engine(sim: Simulator, clock: VirtualClock, states: StateLog) -> Engine:
    domains = StaticDomains(sim.domains)
    return Engine(
        domains,
        scheme="http",
        clock=clock,
        auth=ConsumerJwt(sim.account.id, domains=domains),
        hooks=EventHooks(on_state=[states]),
    )


@pytest.mark.parametrize("placement", [AuthPlacement.HEADER, AuthPlacement.FIRST_FRAME])
async def test_the_consumer_socket_authenticates_by_header_or_first_frame(
    sim: Simulator, clock: VirtualClock, states: StateLog, placement: AuthPlacement
) -> None:
    async with consumer_engine(sim, clock, states) as engine:
        ws = await engine.websocket(
            "asyncMessagingEnt",
            consumer_path(sim.account.id),
            params=CONSUMER_SOCKET_QUERY,
            auth_placement=placement,
        )
        await ws.wait_open()
        assert (await ws.request("GetClock"))["code"] == 200
        (sock,) = sim.sockets.open
        assert sock.kind == "consumer"
        assert sock.authenticated
        first = sock.received[0]["type"]
    assert first == ("InitConnection" if placement is AuthPlacement.FIRST_FRAME else "GetClock")


async def test_a_refused_init_connection_reauthenticates(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    refused = 0

    async def refuse_once(sock: object, frame: dict[str, object]) -> tuple[int, object]:
        nonlocal refused
        refused += 1
        return (401, {"msg": "expired"}) if refused == 1 else (200, {})

    sim.sockets.on("InitConnection", refuse_once)
    async with consumer_engine(sim, clock, states) as engine:
        ws = await engine.websocket(
            "asyncMessagingEnt",
            consumer_path(sim.account.id),
            params=CONSUMER_SOCKET_QUERY,
            auth_placement=AuthPlacement.FIRST_FRAME,
        )
        await ws.wait_open()
    assert refused == 2
    assert "reauthenticating" in states.names("asyncMessagingEnt")


async def test_the_server_chat_keepalive_runs_every_30_seconds_through_the_engine(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    # The Server Chat API takes "Authorization: LivePerson appKey=<key>" (the simulator
    # refuses a Login Service bearer there): an engine whose auth is an AppKeyAuth.
    async with Engine(
        StaticDomains(sim.domains),
        scheme="http",
        clock=clock,
        auth=AppKeyAuth(sim.account.id, DEFAULT_APP_KEY.key),
        hooks=EventHooks(on_state=[states]),
    ) as engine:
        task = engine.keepalive(
            SERVER_CHAT_API_CHAT_INFO,
            "agentVep",
            fields={"account": sim.account.id, "chat_id": "chat-1"},
        )
        await clock.sleep(95)
        assert task.running
    assert not task.running
    assert task.runs == 3
    assert task.failures == 0
    times = [r.at for r in sim.requests if r.path.endswith("/chat/chat-1/info")]
    assert times == pytest.approx([30.0, 60.0, 90.0])


async def test_many_sockets_dropped_at_once_come_back_paced(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    opened: list[float] = []

    def on_state(event: StateEvent) -> None:
        if event.name == "open":
            opened.append(clock.now())

    pacer = ReconnectPacer(clock, TokenBucket(rate=4, burst=4))
    async with agent_engine(sim, clock, states, pacer=pacer) as engine:
        sockets = [await brand_socket(engine, sim) for _ in range(24)]
        for ws in sockets:
            ws.add_on_state(on_state)
            await ws.wait_open()
        opened.clear()
        dropped_at = clock.now()
        await sim.sockets.drop_all()
        await sim.sockets.wait_accepted(48)
        for ws in sockets:
            await ws.wait_open()
    assert len(opened) == 24
    first = min(opened)
    # Backoff jitter spreads them over 0.8-1.2 s; pacing then lets through 4 at once and 4
    # per second after: 24 sockets take 5 s more instead of arriving in one burst.
    assert first >= dropped_at + 0.8
    for i, at in enumerate(sorted(opened)):
        assert i + 1 <= 4 + 4 * (at - first) + 1e-6
    assert max(opened) - first >= 4.5


async def test_a_consumer_socket_with_its_own_provider_beside_an_agents_login(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """websocket(auth=...) with a library provider the engine does not own: it was never
    attached (the first connect stopped the socket for good, "not attached to an engine"),
    and an escalation re-logged in the engine's agent, never refreshing the consumer's JWT."""
    consumer = ConsumerJwt(sim.account.id, domains=StaticDomains(sim.domains))
    async with agent_engine(sim, clock, states) as engine:
        agent = await brand_socket(engine, sim)
        await agent.wait_open()
        logins = sim.count("POST", "/api/account/*/login")
        ws = await _consumer_socket(engine, sim, auth=consumer)
        await ws.wait_open()
        assert (await ws.request("GetClock"))["code"] == 200
        assert sim.count("POST", "/api/account/*/signup") == 1
        # Its upgrades refused until the socket escalates: the consumer's provider logs in
        # again (a new JWT), the agent's login is left alone.
        await ws.close()
        sim.faults.script(
            "GET", "/ws_api/*/consumer*", [WsRejectHandshake(status=503)] * 6, unit="ws_session"
        )
        again = await _consumer_socket(engine, sim, auth=consumer)
        await again.wait_open(timeout=3600)
        assert states.of("escalating")
        assert sim.count("POST", "/api/account/*/login") == logins
        assert sim.count("POST", "/api/account/*/signup") >= 2
    # Attached by this engine (no other had it), and closed with it: no token kept.
    assert consumer.token is None


async def test_a_closed_socket_lets_go_of_its_own_provider_and_its_token(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """One consumer socket per end user on a long-lived agent engine: the engine kept every
    provider (with its JWT) and a re-login loop for each until it closed."""
    async with agent_engine(sim, clock, states) as engine:
        refs = []
        for _ in range(5):
            consumer = ConsumerJwt(sim.account.id, domains=StaticDomains(sim.domains))
            ws = await _consumer_socket(engine, sim, auth=consumer)
            await ws.wait_open()
            await ws.close()
            refs.append(weakref.ref(consumer))
            del consumer, ws
        gc.collect()
        assert [r for r in refs if r() is not None] == []
        assert engine._socket_auth == {}


async def test_closing_one_engine_leaves_another_engines_own_provider_alone(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """A consumer engine's own provider given to a socket on an agent engine: the agent
    engine attached it to itself, and closed it as it closed; the consumer engine, still
    open, could get no credentials any more."""
    domains = StaticDomains(sim.domains)
    consumer = ConsumerJwt(sim.account.id, domains=domains)
    async with Engine(domains, scheme="http", clock=clock, auth=consumer) as consumer_engine:
        async with agent_engine(sim, clock, states) as agent:
            ws = await _consumer_socket(agent, sim, auth=consumer)
            await ws.wait_open()
        again = await _consumer_socket(consumer_engine, sim)
        await again.wait_open(timeout=60)
        assert (await again.request("GetClock"))["code"] == 200


class _Delegate:
    """A caller's own provider (duck-typed) over a library one: attach() but no ``_http``."""

    __slots__ = ()
    inner: ConsumerJwt

    def attach(self, http: ProviderHttp) -> None:
        self.inner.attach(http)

    async def credentials(self, method: str = "GET", url: URL | None = None) -> Credentials:
        return await self.inner.credentials(method, url)

    async def invalidate(self, rejected: Credentials) -> None:
        await self.inner.invalidate(rejected)

    async def close(self) -> None:
        await self.inner.close()


class _Delegating(_Delegate):
    """One that counts its closes (and can be held weakly)."""

    __slots__ = ("__weakref__", "closes", "inner")

    def __init__(self, inner: ConsumerJwt) -> None:
        self.inner = inner
        self.closes = 0

    async def close(self) -> None:
        self.closes += 1
        await super().close()


class _Slotted(_Delegate):
    """One with slots only: it cannot be held weakly."""

    __slots__ = ("inner",)

    def __init__(self, inner: ConsumerJwt) -> None:
        self.inner = inner


async def test_another_engines_own_provider_of_the_callers_own_kind_is_left_alone(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """Told by the library providers' private field, a provider of the caller's own was taken
    for unattached: attached here and closed with this engine, under the engine that has it."""
    consumer = _Delegating(ConsumerJwt(sim.account.id, domains=StaticDomains(sim.domains)))
    domains = StaticDomains(sim.domains)
    async with Engine(domains, scheme="http", clock=clock, auth=consumer) as consumer_engine:
        async with agent_engine(sim, clock, states) as agent:
            ws = await _consumer_socket(agent, sim, auth=consumer)
            await ws.wait_open()
        assert consumer.closes == 0
        again = await _consumer_socket(consumer_engine, sim)
        await again.wait_open(timeout=60)


async def test_a_provider_an_engine_takes_as_its_own_after_a_socket_took_it_is_that_engines(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    domains = StaticDomains(sim.domains)
    consumer = ConsumerJwt(sim.account.id, domains=domains)
    agent = agent_engine(sim, clock, states)
    await agent.start()
    try:
        ws = await _consumer_socket(agent, sim, auth=consumer)
        await ws.wait_open()
        async with Engine(domains, scheme="http", clock=clock, auth=consumer) as consumer_engine:
            await agent.close()  # the provider is the consumer engine's now: left open
            again = await _consumer_socket(consumer_engine, sim)
            await again.wait_open(timeout=60)
    finally:
        await agent.close()


async def test_a_provider_that_cannot_be_held_weakly_is_attached_and_closed_with_the_engine(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    consumer = _Slotted(ConsumerJwt(sim.account.id, domains=StaticDomains(sim.domains)))
    async with agent_engine(sim, clock, states) as agent:
        ws = await _consumer_socket(agent, sim, auth=consumer)
        await ws.wait_open()
    assert consumer.inner.token is None, "closed with the engine"


@dataclasses.dataclass(slots=True, weakref_slot=True)
class _Unhashable(_Delegate):
    """A dataclass: equal by value, so unhashable."""

    inner: ConsumerJwt


@dataclasses.dataclass(frozen=True, slots=True, weakref_slot=True)
class _ByUser(_Delegate):
    """Equal by value (its user), the inner provider not compared."""

    user: str
    inner: ConsumerJwt = dataclasses.field(compare=False)


async def test_an_unhashable_provider_of_another_engine_is_left_alone(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    consumer = _Unhashable(ConsumerJwt(sim.account.id, domains=StaticDomains(sim.domains)))
    domains = StaticDomains(sim.domains)
    async with Engine(domains, scheme="http", clock=clock, auth=consumer) as consumer_engine:
        async with agent_engine(sim, clock, states) as agent:
            ws = await _consumer_socket(agent, sim, auth=consumer)
            await ws.wait_open()
        again = await _consumer_socket(consumer_engine, sim)
        await again.wait_open(timeout=60)


async def test_two_equal_providers_are_two(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """Noted by ==, the second of two equal providers was taken for attached already: never
    attached, its socket stopped at its first connect."""
    first, second = (
        _ByUser("u", ConsumerJwt(sim.account.id, domains=StaticDomains(sim.domains)))
        for _ in range(2)
    )
    assert first == second
    async with agent_engine(sim, clock, states) as engine:
        for provider in (first, second):
            ws = await _consumer_socket(engine, sim, auth=provider)
            await ws.wait_open(timeout=60)
    assert first.inner.token is None, "closed with it"
    assert second.inner.token is None, "closed with it"


async def test_a_provider_that_cannot_be_held_weakly_is_let_go_with_its_last_socket(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    async with agent_engine(sim, clock, states) as engine:
        refs = []
        for _ in range(3):
            consumer = _Slotted(ConsumerJwt(sim.account.id, domains=StaticDomains(sim.domains)))
            ws = await _consumer_socket(engine, sim, auth=consumer)
            await ws.wait_open()
            await ws.close()
            refs.append(weakref.ref(consumer.inner))
            del consumer, ws
        gc.collect()
        assert [r for r in refs if r() is not None] == []


@pytest.mark.parametrize("wrapped", [False, True], ids=["library", "callers-own"])
async def test_a_provider_given_to_sockets_on_two_engines_in_turn_is_the_second_ones(
    sim: Simulator, clock: VirtualClock, states: StateLog, wrapped: bool
) -> None:
    """The first engine kept its hold once its socket closed: the second used it through the
    first's HTTP path, and the first's close logged it out under the second's socket, which
    then reconnected for ever with 'credentials: EngineClosed'."""
    inner = ConsumerJwt(sim.account.id, domains=StaticDomains(sim.domains))
    consumer: AuthProvider = _Delegating(inner) if wrapped else inner
    first = agent_engine(sim, clock, states)
    await first.start()
    try:
        ws = await _consumer_socket(first, sim, auth=consumer)
        await ws.wait_open()
        await ws.close()
        async with agent_engine(sim, clock, states) as second:
            again = await _consumer_socket(second, sim, auth=consumer)
            await again.wait_open()
            await first.close()
            assert inner.token is not None, "not the first engine's to close any more"
            await sim.expire_tokens()  # a new JWT, fetched through the second engine
            await again.wait_open(timeout=120)
            assert (await again.request("GetClock"))["code"] == 200
    finally:
        await first.close()


async def test_a_sockets_provider_leaves_the_domain_provider_of_another_engine_alone(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """A library provider attaches its domain provider with it: given to a socket on another
    engine, it re-pointed this engine's own domain map there, and once that engine closed,
    this one's calls failed (a 'Session is closed' taken for the provider's bug)."""
    domains = CsdsDomains(sim.account.id, csds_host=sim.host, scheme="http", ttl=60)
    login = UserLogin(
        sim.account.id, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains, keepalive=False
    )
    users = f"/api/account/{sim.account.id}/configuration/le-users/users"
    async with Engine(domains, scheme="http", clock=clock, auth=login) as engine:
        await engine.request("GET", "accountConfigReadOnly", users)
        consumer = ConsumerJwt(sim.account.id, domains=domains)
        async with agent_engine(sim, clock, states) as other:
            ws = await _consumer_socket(other, sim, auth=consumer)
            await ws.wait_open()
        await clock.sleep(120)  # the domain map is due: fetched again, through this engine
        assert (await engine.request("GET", "accountConfigReadOnly", users)).status == 200


async def test_a_provider_still_attached_to_a_closed_engine_fails_with_engine_closed(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """Used after the engine it is attached to closed, it failed with aiohttp's bare 'Session
    is closed', reported as a bug of the provider's; and a socket's provider the engine let
    go (its socket closed) is still closed with it, its keepalive and logout included."""
    consumer = ConsumerJwt(sim.account.id, domains=StaticDomains(sim.domains))
    async with agent_engine(sim, clock, states) as engine:
        ws = await _consumer_socket(engine, sim, auth=consumer)
        await ws.wait_open()
        await ws.close()  # let go: no other engine took it
    assert consumer.token is None, "closed with the engine all the same"
    with pytest.raises(EngineClosed, match="is closed: give the provider to an open engine"):
        engine._provider_session()


@pytest.mark.parametrize("close_socket_first", [True, False])
async def test_a_provider_used_by_two_open_engines_is_handed_over_when_the_first_closes(
    sim: Simulator, clock: VirtualClock, states: StateLog, close_socket_first: bool
) -> None:
    """The second engine's socket used the provider through the first engine, which closed
    it (or its HTTP path) as it closed: the socket reconnected for ever."""
    consumer = ConsumerJwt(sim.account.id, domains=StaticDomains(sim.domains))
    first = agent_engine(sim, clock, states)
    await first.start()
    try:
        async with agent_engine(sim, clock, states) as second:
            sockets = await _open_on_each((first, second), sim, consumer)
            if close_socket_first:
                await sockets[0].close()
            await first.close()
            assert consumer.token is not None, "handed over, not closed"
            await sim.expire_tokens()  # a new JWT, fetched through the second engine now
            await sockets[1].wait_open(timeout=120)
            assert (await sockets[1].request("GetClock"))["code"] == 200
        assert consumer.token is None, "closed with the second"
    finally:
        await first.close()


async def test_a_sockets_login_let_go_is_still_logged_out_with_the_engine(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """Let go with its last socket, a login given to a socket was no longer closed with the
    engine: its keepalive ran on, failing, and it was never logged out."""
    login = UserLogin(
        sim.account.id,
        DEFAULT_USER,
        DEFAULT_PASSWORD,
        domains=StaticDomains(sim.domains),
        keepalive=True,
    )
    async with agent_engine(sim, clock, states) as engine:
        ws = await brand_socket(engine, sim, auth=login)
        await ws.wait_open()
        await ws.close()
    assert login.session is None
    await clock.sleep(700)  # no keepalive runs on
    assert login.session is None


async def test_a_provider_taken_by_another_engine_since_is_not_closed_by_the_first(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """Let go by both engines in turn, the provider read as 'nobody's': the first engine's
    close closed it although the second had taken it since."""
    consumer = ConsumerJwt(sim.account.id, domains=StaticDomains(sim.domains))
    first = agent_engine(sim, clock, states)
    await first.start()
    try:
        async with agent_engine(sim, clock, states) as second:
            for engine in (first, second):
                ws = await _consumer_socket(engine, sim, auth=consumer)
                await ws.wait_open()
                await ws.close()
            await first.close()
            again = await _consumer_socket(second, sim, auth=consumer)
            await again.wait_open(timeout=60)
        assert consumer.token is None, "closed by the second, the last to take it"
    finally:
        await first.close()


async def test_a_handed_over_provider_keeps_the_domain_map_it_shares_with_the_first_engine(
    sim: Simulator, clock: VirtualClock, states: StateLog
) -> None:
    """Handed to the second engine as the first closed, the provider's domain map (the first
    engine's own) was closed by the first right after: once due, every fetch failed."""
    domains = CsdsDomains(sim.account.id, csds_host=sim.host, scheme="http", ttl=60)
    login = UserLogin(
        sim.account.id, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains, keepalive=False
    )
    consumer = ConsumerJwt(sim.account.id, domains=domains)
    first = Engine(domains, scheme="http", clock=clock, auth=login)
    await first.start()
    try:
        async with agent_engine(sim, clock, states) as second:
            sockets = await _open_on_each((first, second), sim, consumer)
            await first.close()
            assert consumer.token is not None
            await clock.sleep(120)  # the domain map is due
            await sim.expire_tokens()
            await sockets[1].wait_open(timeout=120)
            assert (await sockets[1].request("GetClock"))["code"] == 200
        # Closed by the engine it went to, as that engine closed.
        assert domains._closed
    finally:
        await first.close()


class _HeldLogout(UserLogin):
    """A login whose close (logout) waits until the test lets it go on."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.closing = asyncio.Event()
        self.go_on = asyncio.Event()

    async def close(self) -> None:
        self.closing.set()
        await self.go_on.wait()
        await super().close()


@pytest.mark.parametrize("shared_domains", [False, True])
async def test_a_provider_taken_by_another_engine_during_the_first_ones_logout_is_left_alone(
    sim: Simulator, clock: VirtualClock, states: StateLog, shared_domains: bool
) -> None:
    """The closing engine chose the providers (and domain maps) to close before it awaited
    its own logout: a provider another engine took during that logout was closed under that
    engine, and so was the first engine's domain map it brought along."""
    domains = CsdsDomains(sim.account.id, csds_host=sim.host, scheme="http", ttl=60)
    login = _HeldLogout(
        sim.account.id, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains, keepalive=False
    )
    consumer = ConsumerJwt(
        sim.account.id, domains=domains if shared_domains else StaticDomains(sim.domains)
    )
    first = Engine(domains, scheme="http", clock=clock, auth=login)
    await first.start()
    try:
        async with agent_engine(sim, clock, states) as second:
            ws = await _consumer_socket(first, sim, auth=consumer)
            await ws.wait_open()
            await ws.close()  # let go: still the first engine's to close
            closing = asyncio.ensure_future(first.close())
            await login.closing.wait()
            taken = await _consumer_socket(second, sim, auth=consumer)
            await taken.wait_open(timeout=60)
            login.go_on.set()
            await closing
            assert consumer.token is not None, "the second engine's now: not closed"
            assert not domains._closed or not shared_domains
            await clock.sleep(120)  # the domain map is due
            await sim.expire_tokens()  # a new JWT, through the second engine
            await taken.wait_open(timeout=120)
            assert (await taken.request("GetClock"))["code"] == 200
        assert consumer.token is None, "closed by the second, the last to take it"
    finally:
        login.go_on.set()
        await first.close()
