"""Auth providers, review 16: a refused login is never sent again by a refresh (the provider's
keepalive, the engine's, a caller's), even after a redirected refresh kept its session (alone
or in a fleet), which is still refreshed; an early token fetch never holds
the call that starts it; a SharedSession of another account or user is refused; a refresh
answered with a 200 maintenance page is no refresh. Then (review rw10): a 408 or 425 to a login
is an outage, not a refusal; a fleet sends the refused login once, not once a process; what
lifts the rule is named."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from yarl import URL

from le_transport.chaos import Hang, Status
from le_transport.errors import (
    BlockedError,
    ClientStatusError,
    ConfigurationError,
    LoginRejected,
    Repeat,
    UnexpectedAnswer,
)
from le_transport.events import StateEvent
from le_transport.policies import CHAT_AGENT_API_REFRESH
from le_transport.providers import (
    AppLogin,
    ClientCredentialsLogin,
    ConsumerJwt,
    StaticDomains,
    UserLogin,
)
from le_transport.providers._token import TokenProvider
from le_transport.providers.login import LoginServiceAuth
from le_transport.recovery import repeat_of
from le_transport.sockets.keepalive import _final_failure
from le_transport.state import MemoryStore, SharedSession
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator, SimulatorConfig
from le_transport.testing.simulator.config import Account
from tests.known_secrets import (
    ACCESS_TOKEN,
    ACCESS_TOKEN_SECRET,
    APP_SECRET,
    CLIENT_SECRET,
    PASSWORD,
)
from tests.test_login import LOGIN, REFRESH
from tests.test_oauth2 import (
    SIGNUP,
    TOKEN,
    USERS,
    _early_fetch_done,
    _inside_the_margin,
    sentinel,
)
from tests.test_providers import (
    ACCOUNT,
    APP_KEY,
    CLIENT_ID,
    csds_for,
    learn_session_secrets,
    sim,
    sim_engine,
)
from tests.test_shared_session_review import FlakyStore

__all__ = ["sim"]

PASSWORD_2 = PASSWORD + "-second-user"
ANY_URL = URL("http://example.invalid/")


def bots(clock: VirtualClock) -> Simulator:
    """A simulator whose account has two users, bot1 and bot2."""
    account = Account(id=ACCOUNT, users={"bot1": PASSWORD, "bot2": PASSWORD_2})
    return Simulator(SimulatorConfig(accounts=(account,)), clock=clock)


def fleet(clock: VirtualClock, user: str = "bot1", account: str = ACCOUNT) -> SharedSession:
    return SharedSession(MemoryStore(clock), account=account, user=user, clock=clock)


# -- 1. a redirected refresh whose login is refused: that login is never sent again ----------
#
# Refused once (a 3xx refresh, its fallback login refused), the login is not sent again for
# that session by any refresh: the provider's keepalive, the engine's keepalive driving
# refresh() (keepalive=False), a caller's refresh(). The session is still refreshed (a 2xx
# keeps it alive once the Login Service is back), and a new session (any login, an adopted
# fleet session) lifts the rule.

REDIRECT = Status(302, headers={"Location": "/sso"})
WITHHELD = "the session is kept and still refreshed, but its refresh sends that login no more"


def _withheld(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if WITHHELD in r.getMessage()]


def _login(s: Simulator, clock: VirtualClock, shared: bool, **options: Any) -> UserLogin:
    if shared:
        options["shared"] = fleet(clock)
    return UserLogin(ACCOUNT, "bot1", PASSWORD, domains=csds_for(s), **options)


def ttl_bots(clock: VirtualClock, ttl: float) -> Simulator:
    """:func:`bots` whose sessions live ``ttl`` seconds without a refresh."""
    account = Account(id=ACCOUNT, users={"bot1": PASSWORD, "bot2": PASSWORD_2})
    return Simulator(SimulatorConfig(accounts=(account,), session_ttl=ttl), clock=clock)


@pytest.mark.parametrize("shared", [False, True], ids=["alone", "fleet"])
@pytest.mark.parametrize("status", [401, 400, 451])
async def test_the_keepalive_never_retries_a_login_refused_after_a_redirected_refresh(
    clock: VirtualClock,
    secret_values: set[str],
    caplog: pytest.LogCaptureFixture,
    status: int,
    shared: bool,
) -> None:
    """A refresh answered 302 falls back to a login, refused: the session is kept (it may still
    serve calls), and still refreshed, but the refused login is not sent again at every tick
    (an account lockout, a blacklisted account hammered): one refused login in an hour, not
    12. Said once."""
    caplog.set_level(logging.INFO, logger="le_transport")
    events: list[StateEvent] = []
    async with bots(clock) as s:
        auth = _login(s, clock, shared)
        async with sim_engine(s, clock, domains=auth._domains, auth=auth, events=events) as e:
            await e.login()
            learn_session_secrets(auth, secret_values)
            kept = auth.session
            s.faults.script("POST", REFRESH, [REDIRECT] * 1000)
            s.faults.script("POST", LOGIN, [status] * 1000)
            await clock.sleep(3600)
            # The first login, and the one refused.
            assert s.count("POST", LOGIN) == 2
            # Its refresh is still tried (harmless: a 2xx would keep it alive).
            assert s.count("POST", REFRESH) > 1
            # Kept: it still serves calls.
            assert auth.session is kept
            resp = await e.request("GET", "accountConfigReadOnly", USERS)
            assert resp.status == 200
    failed = [x for x in events if x.name == "refresh_failed" and "error" in x.details]
    # One a refresh, but maybe the last one, on the hour.
    assert len(failed) >= s.count("POST", REFRESH) - 1 >= 10
    for event in failed:
        assert event.details["status"] == status
        assert event.details["next"] == "retry on the next tick"
        assert event.details["error"] == ("BlockedError" if status == 451 else "LoginRejected")
    assert len(_withheld(caplog)) == 1, "said once"


@pytest.mark.parametrize("shared", [False, True], ids=["alone", "fleet"])
@pytest.mark.parametrize("status", [401, 451])
async def test_the_engines_refresh_keepalive_never_repeats_a_login_refused_after_a_redirect(
    clock: VirtualClock,
    secret_values: set[str],
    caplog: pytest.LogCaptureFixture,
    status: int,
    shared: bool,
) -> None:
    """The provider's keepalive off, the engine's CHAT_AGENT_API_REFRESH keepalive calls
    refresh() every run (a refusal is not final to it): after a 3xx whose login is refused,
    no run sends that login again (it did, every run: 12 refused logins an hour)."""
    caplog.set_level(logging.INFO, logger="le_transport")
    async with bots(clock) as s:
        auth = _login(s, clock, shared, keepalive=False)
        async with sim_engine(s, clock, domains=auth._domains, auth=auth) as e:
            await e.login()
            learn_session_secrets(auth, secret_values)
            kept = auth.session
            task = e.keepalive(CHAT_AGENT_API_REFRESH, "agentVep")
            s.faults.script("POST", REFRESH, [REDIRECT] * 1000)
            s.faults.script("POST", LOGIN, [status] * 1000)
            await clock.sleep(3600)
            assert s.count("POST", LOGIN) == 2, f"{task.runs} runs"
            assert task.runs >= 11
            assert s.count("POST", REFRESH) == task.runs
            # Not judged final: the schedule goes on, the session kept alive if it can be.
            assert task.running
            assert auth.session is kept
            await task.close()
    assert len(_withheld(caplog)) == 1


@pytest.mark.parametrize("shared", [False, True], ids=["alone", "fleet"])
async def test_a_kept_session_is_refreshed_again_once_the_login_service_recovers(
    clock: VirtualClock, secret_values: set[str], shared: bool
) -> None:
    """One refresh answered 302, one refused login, then the Login Service is fine: the kept,
    valid session is refreshed again (it was never refreshed again: it expired at its TTL,
    and calls then met a 401 and a replay, sockets holding it were cut)."""
    async with ttl_bots(clock, 900) as s:
        auth = _login(s, clock, shared)
        async with sim_engine(s, clock, domains=auth._domains, auth=auth) as e:
            await e.login()
            learn_session_secrets(auth, secret_values)
            kept = auth.session
            s.faults.script("POST", REFRESH, [REDIRECT])
            s.faults.script("POST", LOGIN, [401])
            await clock.sleep(301)
            assert auth.session is kept
            await clock.sleep(1200)  # past the session's 900 s TTL, had it not been refreshed
            assert s.tokens.refreshes >= 2
            assert auth.session is kept
            resp = await e.request("GET", "accountConfigReadOnly", USERS)
            assert resp.status == 200
            # One GET: no 401, no replay.
            assert sum(1 for r in s.requests if r.path == USERS) == 1
            assert s.count("POST", LOGIN) == 2


@pytest.mark.parametrize("shared", [False, True], ids=["alone", "fleet"])
async def test_a_refused_login_stays_withheld_after_a_refresh_and_a_4xx_drops_its_session(
    clock: VirtualClock, secret_values: set[str], shared: bool
) -> None:
    """Refresh by hand (keepalive=False): after the refusal a 2xx refresh keeps the session
    and lifts nothing; a further 3xx raises the refusal again with no login; a 4xx too, and
    drops the session (the next call logs in)."""
    async with bots(clock) as s:
        auth = _login(s, clock, shared, keepalive=False)
        async with sim_engine(s, clock, domains=auth._domains, auth=auth):
            await auth.login()
            learn_session_secrets(auth, secret_values)
            kept = auth.session
            await clock.sleep(300)  # past the fleet's "refreshed recently" window
            s.faults.script("POST", REFRESH, [REDIRECT])
            s.faults.script("POST", LOGIN, [451])
            with pytest.raises(BlockedError):
                await auth.refresh()
            assert auth.session is kept
            await clock.sleep(300)
            assert await auth.refresh() is True
            await clock.sleep(300)
            s.faults.script("POST", REFRESH, [REDIRECT])
            with pytest.raises(BlockedError, match="sends that login no more"):
                await auth.refresh()
            assert auth.session is kept
            await clock.sleep(300)
            s.faults.script("POST", REFRESH, [401])
            with pytest.raises(BlockedError) as refused:
                await auth.refresh()
            assert refused.value.status == 451
            assert auth.session is None
            assert (s.count("POST", LOGIN), s.count("POST", REFRESH)) == (2, 4)
            # The next call logs in (a caller's login: sent).
            await auth.login()
            learn_session_secrets(auth, secret_values)
            assert s.count("POST", LOGIN) == 3


@pytest.mark.parametrize("shared", [False, True], ids=["alone", "fleet"])
async def test_after_a_refused_login_a_new_login_lifts_the_rule(
    clock: VirtualClock, secret_values: set[str], caplog: pytest.LogCaptureFixture, shared: bool
) -> None:
    caplog.set_level(logging.INFO, logger="le_transport")
    async with bots(clock) as s:
        auth = _login(s, clock, shared)
        async with sim_engine(s, clock, domains=auth._domains, auth=auth) as e:
            await e.login()
            s.faults.script("POST", REFRESH, [REDIRECT] * 1000)
            s.faults.script("POST", LOGIN, [401])
            await clock.sleep(1750)  # between two ticks
            assert s.count("POST", LOGIN) == 2
            # A caller logs in (the password was fixed, say): its session's refresh falls back
            # to a login again.
            s.faults.clear()
            await auth.login()
            learn_session_secrets(auth, secret_values)
            relogged = auth.session
            s.faults.script("POST", REFRESH, [REDIRECT])
            await clock.sleep(301)
            assert s.count("POST", LOGIN) == 4
            assert auth.session is not relogged
            learn_session_secrets(auth, secret_values)
            await clock.sleep(301)
            assert auth.refreshes == 1
    assert len(_withheld(caplog)) == 1


async def test_a_login_landing_as_a_refused_fallback_ends_is_not_lost(
    clock: VirtualClock, secret_values: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A login that lands between the refused fallback login and the keepalive's next look
    (here: made at once by whoever got the refusal) is refreshed on its schedule. The
    keepalive marked itself refused and cleared its wake-up after it: it waited for ever."""
    async with bots(clock) as s:
        auth = _login(s, clock, False)
        refresh = auth._refresh

        async def refresh_then_login(fallback: str | None = None) -> bool:
            try:
                return await refresh(fallback)
            except LoginRejected:
                s.faults.clear()
                await auth.login()
                learn_session_secrets(auth, secret_values)
                raise

        monkeypatch.setattr(auth, "_refresh", refresh_then_login)
        async with sim_engine(s, clock, domains=auth._domains, auth=auth) as e:
            await e.login()
            s.faults.script("POST", REFRESH, [REDIRECT])
            s.faults.script("POST", LOGIN, [401])
            await clock.sleep(301)
            assert s.count("POST", LOGIN) == 3
            await clock.sleep(301)
            assert auth.refreshes == 1


# -- 2. an early token fetch never holds the call that starts it ------------------------------


def _consumer(s: Simulator) -> ConsumerJwt:
    return ConsumerJwt(ACCOUNT, domains=csds_for(s), wall_clock=s.tokens.epoch_now)


async def test_a_hung_token_service_does_not_hold_a_call_whose_token_is_valid(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        token = await _inside_the_margin(engine, auth, clock)  # 59 s of life left
        learn_session_secrets(auth, secret_values)
        sim.faults.script("POST", TOKEN, [Hang()])
        started = clock.now()
        # Before: it failed with DeadlineExceeded "while getting credentials".
        resp = await engine.request("GET", "accountConfigReadOnly", USERS, deadline=10)
        assert resp.status == 200
        assert clock.now() - started < 1
        # The fetch is out, one for every call: the next ones go on with the token too.
        for _ in range(3):
            resp = await engine.request("GET", "accountConfigReadOnly", USERS, deadline=10)
            assert resp.status == 200
        assert clock.now() - started < 1
        assert sim.count("POST", TOKEN) == 2
        assert (await engine.login()).generation == token.generation
        early = auth._early
        assert early is not None
        assert not early.done()
    # Closed: the hung fetch was stopped, not left behind (no_leaked_tasks checks the rest).
    assert early.done()


@pytest.mark.parametrize("kind", ["sentinel", "consumer"])
async def test_a_call_inside_the_margin_gets_the_current_token_and_the_new_one_follows(
    sim: Simulator, clock: VirtualClock, secret_values: set[str], kind: str
) -> None:
    auth: TokenProvider = sentinel(sim, margin=60) if kind == "sentinel" else _consumer(sim)
    path = TOKEN if kind == "sentinel" else SIGNUP
    async with sim_engine(sim, clock, domains=csds_for(sim), auth=auth) as engine:
        first = await engine.login()
        learn_session_secrets(auth, secret_values)
        token = auth.token
        assert token is not None
        assert token.refresh_at is not None
        await clock.sleep(token.refresh_at + 1 - clock.now())
        sim.faults.script("POST", path, [Hang()])
        started = clock.now()
        creds = await auth.credentials("GET", ANY_URL)
        assert creds.generation == first.generation
        assert clock.now() == started
        # The hung fetch is stopped by its attempt timeout, and the token kept meanwhile.
        await clock.sleep(31)
        assert auth.token is not None
        assert auth.token.generation == first.generation
        # The next try (after the pause) gets a new token, again without holding the call.
        retry_at = auth.token.refresh_at
        assert retry_at is not None
        await clock.sleep(retry_at - clock.now())
        assert (await auth.credentials("GET", ANY_URL)).generation == first.generation
        await _early_fetch_done(auth)
        learn_session_secrets(auth, secret_values)
        assert (await auth.credentials("GET", ANY_URL)).generation == first.generation + 1
    assert sim.count("POST", path) == 3


async def test_a_refused_early_fetch_fails_no_call_holding_a_valid_token_and_is_not_repeated(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    """The early fetch refused (the client secret revoked): the call that started it went on
    with its token; the token is dropped, so the next call fetches itself and fails with the
    refusal (as before, a call at a time), and nothing asks again in the background."""
    events: list[StateEvent] = []
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth, events=events) as engine:
        await _inside_the_margin(engine, auth, clock)
        learn_session_secrets(auth, secret_values)
        sim.faults.script("POST", TOKEN, [401] * 100)
        resp = await engine.request("GET", "accountConfigReadOnly", USERS)
        assert resp.status == 200
        await clock.sleep(1)
        assert sim.count("POST", TOKEN) == 2
        assert auth.token is None
        with pytest.raises(LoginRejected):
            await engine.login()
        await clock.sleep(600)
        assert sim.count("POST", TOKEN) == 3
    assert [x.details.get("status") for x in events if x.name == "login_failed"] == [401, 401]


async def test_closing_stops_an_early_fetch_in_progress(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    auth = sentinel(sim, margin=60)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        await _inside_the_margin(engine, auth, clock)
        learn_session_secrets(auth, secret_values)
        sim.faults.script("POST", TOKEN, [Hang()])
        await engine.login()
        await asyncio.sleep(0)
        early = auth._early
        assert early is not None
    assert early.done()
    assert not auth._flight.running


# -- 3. a SharedSession of another account or user -------------------------------------------


LOGINS: dict[str, Callable[[StaticDomains, SharedSession, str], LoginServiceAuth]] = {
    "user": lambda d, s, user: UserLogin(ACCOUNT, user, PASSWORD, domains=d, shared=s),
    "app": lambda d, s, user: AppLogin(
        ACCOUNT, user, APP_KEY, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET, domains=d, shared=s
    ),
    "client_credentials": lambda d, s, user: ClientCredentialsLogin(
        ACCOUNT, user, CLIENT_ID, CLIENT_SECRET, domains=d, shared=s
    ),
}


def test_a_shared_session_says_whose_it_is(clock: VirtualClock) -> None:
    shared = fleet(clock, user="bot1", account="12345")
    assert (shared.account, shared.user) == ("12345", "bot1")
    with pytest.raises(AttributeError):
        shared.user = "bot2"  # type: ignore[misc]


@pytest.mark.parametrize("kind", list(LOGINS))
def test_a_shared_session_of_another_user_or_account_is_refused(
    clock: VirtualClock, kind: str
) -> None:
    domains = StaticDomains({"agentVep": "va.example"})
    make = LOGINS[kind]
    # Its own: accepted.
    make(domains, fleet(clock, user="bot1"), "bot1")
    with pytest.raises(ConfigurationError, match="another user") as info:
        make(domains, fleet(clock, user="bot1"), "bot2")
    assert "bot1" not in str(info.value)
    assert "bot2" not in str(info.value)
    with pytest.raises(ConfigurationError, match="of account '999'"):
        make(domains, fleet(clock, user="bot1", account="999"), "bot1")


async def test_a_shared_session_of_another_user_is_never_adopted(clock: VirtualClock) -> None:
    """The copy-paste slip of the review: bot2 given bot1's SharedSession acted as bot1."""
    async with bots(clock) as s:
        bot1 = UserLogin(ACCOUNT, "bot1", PASSWORD, domains=csds_for(s), shared=fleet(clock))
        async with sim_engine(s, clock, domains=bot1._domains, auth=bot1) as e1:
            await e1.login()
            with pytest.raises(ConfigurationError):
                UserLogin(ACCOUNT, "bot2", PASSWORD_2, domains=csds_for(s), shared=fleet(clock))


def test_a_custom_login_without_a_username_checks_the_account_of_its_shared_session(
    clock: VirtualClock,
) -> None:
    class Custom(LoginServiceAuth):
        def _body(self) -> dict[str, str]:
            return {}

    domains = StaticDomains({"agentVep": "va.example"})
    Custom(ACCOUNT, domains=domains, shared=fleet(clock))
    with pytest.raises(ConfigurationError, match="of account '999'"):
        Custom(ACCOUNT, domains=domains, shared=fleet(clock, account="999"))


# -- 4. a refresh answered with a 200 maintenance page ----------------------------------------


@pytest.mark.parametrize("shared", [False, True], ids=["alone", "fleet"])
async def test_a_maintenance_page_answered_to_a_refresh_is_no_refresh(
    clock: VirtualClock, secret_values: set[str], shared: bool
) -> None:
    events: list[StateEvent] = []
    async with bots(clock) as s:
        store = fleet(clock)
        options: dict[str, Any] = {"shared": store} if shared else {}
        auth = UserLogin(ACCOUNT, "bot1", PASSWORD, domains=csds_for(s), **options)
        async with sim_engine(s, clock, domains=auth._domains, auth=auth, events=events) as e:
            await e.login()
            learn_session_secrets(auth, secret_values)
            kept = auth.session
            stored = await store.current()
            page = Status(
                200, body="<html>maintenance</html>", headers={"Content-Type": "text/html"}
            )
            s.faults.script("POST", REFRESH, [page])
            await clock.sleep(301)
            assert auth.refreshes == s.tokens.refreshes == 0
            # An outage, not a refusal: the session is kept, no login made.
            assert auth.session is kept
            assert s.count("POST", LOGIN) == 1
            if shared:
                after = await store.current()
                assert stored is not None
                assert after is not None
                assert after.version == stored.version
            # The next try (sooner than an interval) refreshes.
            await clock.sleep(300)
            assert auth.refreshes == s.tokens.refreshes == 1
    [failed] = [x for x in events if x.name == "refresh_failed"]
    assert failed.details["error"] == "UnexpectedAnswer"
    assert failed.details["next"] == "retry on the next tick"


@pytest.mark.parametrize("body", ["", "  \r\n", "{}", '{"ok": true}'])
async def test_an_empty_or_json_200_to_a_refresh_is_a_refresh(
    clock: VirtualClock, secret_values: set[str], body: str
) -> None:
    """The Login Service answers a refresh 200 with an empty body (protocol.md); a JSON one is
    taken too."""
    async with bots(clock) as s:
        auth = UserLogin(ACCOUNT, "bot1", PASSWORD, domains=csds_for(s), keepalive=False)
        async with sim_engine(s, clock, domains=auth._domains, auth=auth) as e:
            await e.login()
            learn_session_secrets(auth, secret_values)
            s.faults.script("POST", REFRESH, [Status(200, body=body)])
            assert await auth.refresh() is True
            assert auth.refreshes == 1


# -- 5. the refused-login mark (review rw10): only a refusal, once a fleet, lifted as it says ---


def _fleet_login(
    s: Simulator, store: MemoryStore, clock: VirtualClock, **options: Any
) -> UserLogin:
    shared = SharedSession(store, account=ACCOUNT, user="bot1", clock=clock)
    return UserLogin(ACCOUNT, "bot1", PASSWORD, domains=csds_for(s), shared=shared, **options)


@contextlib.asynccontextmanager
async def _logged_in_alone_or_fleet(
    clock: VirtualClock, store: MemoryStore, shared: bool, secret_values: set[str]
) -> AsyncIterator[tuple[Simulator, UserLogin]]:
    """bot1 logged in on an engine, alone or sharing its session through ``store`` (no
    keepalive of its own), its session's secrets learned."""
    async with bots(clock) as s:
        auth = (
            _fleet_login(s, store, clock, keepalive=False)
            if shared
            else _login(s, clock, False, keepalive=False)
        )
        async with sim_engine(s, clock, domains=auth._domains, auth=auth):
            await auth.login()
            learn_session_secrets(auth, secret_values)
            yield s, auth


def _marks(store: MemoryStore) -> dict[str, tuple[str, float]]:
    """The refusals a fleet's store records (key: value, expiry)."""
    return {k: v for k, v in store._values.items() if ":session-refused:" in k}


@pytest.mark.parametrize("shared", [False, True], ids=["alone", "fleet"])
@pytest.mark.parametrize("status", [408, 425])
async def test_a_408_or_425_to_the_fallback_login_is_an_outage_and_marks_nothing(
    clock: VirtualClock, secret_values: set[str], status: int, shared: bool
) -> None:
    """A refresh answered 302, its fallback login answered 408 once (a load balancer): it was a
    LoginRejected, the session marked refused for good ("check the credentials"), in the
    fleet's store too; it is an outage: the next redirected refresh tries the login again."""
    store = MemoryStore(clock)
    async with _logged_in_alone_or_fleet(clock, store, shared, secret_values) as (s, auth):
        kept = auth.session
        await clock.sleep(300)
        s.faults.script("POST", REFRESH, [REDIRECT, REDIRECT])
        s.faults.script("POST", LOGIN, [status])  # once
        with pytest.raises(UnexpectedAnswer) as first:
            await auth.refresh()
        assert first.value.status == status
        assert not isinstance(first.value, LoginRejected)
        assert repeat_of(first.value) is Repeat.RETRYABLE
        assert auth.session is kept
        assert _marks(store) == {}
        await clock.sleep(300)
        assert await auth.refresh() is False  # replaced by its fallback login
        learn_session_secrets(auth, secret_values)
        assert s.count("POST", LOGIN) == 3
        assert auth.session is not kept


@pytest.mark.parametrize("status", [408, 425])
async def test_relogin_met_by_a_408_or_425_keeps_the_session(
    clock: VirtualClock, secret_values: set[str], status: int
) -> None:
    """relogin() (the outer loop's step) dropped a valid session after a login answered 408."""
    async with bots(clock) as s:
        auth = _login(s, clock, False, keepalive=False)
        async with sim_engine(s, clock, domains=auth._domains, auth=auth) as e:
            await auth.login()
            learn_session_secrets(auth, secret_values)
            kept = auth.session
            s.faults.script("POST", LOGIN, [status])
            with pytest.raises(UnexpectedAnswer):
                await auth.relogin()
            assert auth.session is kept
            resp = await e.request("GET", "accountConfigReadOnly", USERS)
            assert resp.status == 200
            assert s.count("POST", LOGIN) == 2


@pytest.mark.parametrize("status", [408, 425])
async def test_a_login_answered_408_or_425_is_no_final_failure_to_a_keepalive(
    clock: VirtualClock, status: int
) -> None:
    """A login (for a keepalive's run, a caller's) answered 408 was a LoginRejected: judged
    final, a keepalive whose runs met it for 10 minutes stopped."""
    async with bots(clock) as s:
        auth = _login(s, clock, False)
        async with sim_engine(s, clock, domains=auth._domains, auth=auth) as e:
            s.faults.script("POST", LOGIN, [status])
            with pytest.raises(UnexpectedAnswer) as err:
                await e.login()
            assert not _final_failure(err.value)
            assert auth.session is None


async def test_a_token_request_answered_408_is_an_outage(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    """The token providers share the mapping: a 408 is no refused token request."""
    auth = sentinel(sim)
    async with sim_engine(sim, clock, domains=auth._domains, auth=auth) as engine:
        sim.faults.script("POST", TOKEN, [408])
        with pytest.raises(UnexpectedAnswer):
            await engine.login()
        await engine.login()
        learn_session_secrets(auth, secret_values)
    assert sim.count("POST", TOKEN) == 2


@pytest.mark.parametrize("shared", [False, True], ids=["alone", "fleet"])
async def test_a_withheld_login_names_what_lifts_it(
    clock: VirtualClock, secret_values: set[str], caplog: pytest.LogCaptureFixture, shared: bool
) -> None:
    """The WARNING and the refusal said the login was not sent again "until a caller logs in";
    engine.login() returns the current session and lifts nothing. They name what does: the
    provider's login() or relogin() (each sends a login), a call's 401."""
    caplog.set_level(logging.INFO, logger="le_transport")
    async with bots(clock) as s:
        auth = _login(s, clock, shared, keepalive=False)
        async with sim_engine(s, clock, domains=auth._domains, auth=auth) as e:
            await e.login()
            learn_session_secrets(auth, secret_values)
            kept = auth.session
            assert kept is not None
            await clock.sleep(300)
            s.faults.script("POST", REFRESH, [REDIRECT, REDIRECT])
            s.faults.script("POST", LOGIN, [401])
            with pytest.raises(LoginRejected):
                await auth.refresh()
            [warning] = _withheld(caplog)
            said = warning.getMessage()
            assert "until a caller logs in" not in said
            assert "relogin()" in said
            assert "Engine.login() returns the current session and lifts nothing" in said
            # engine.login() returns the session held, as it says.
            assert (await e.login()).generation == kept.generation
            await clock.sleep(300)
            with pytest.raises(LoginRejected, match=r"relogin\(\)") as again:
                await auth.refresh()
            assert "until a caller logs in" not in str(again.value)
            assert s.count("POST", LOGIN) == 2
            # The provider's relogin() sends a login: the new session's 3xx falls back to one.
            await auth.relogin()
            learn_session_secrets(auth, secret_values)
            await clock.sleep(300)
            s.faults.script("POST", REFRESH, [REDIRECT])
            assert await auth.refresh() is False
            learn_session_secrets(auth, secret_values)
            assert s.count("POST", LOGIN) == 4


async def test_a_fleet_sends_a_login_refused_after_a_redirect_once_not_once_a_process(
    clock: VirtualClock, secret_values: set[str]
) -> None:
    """Five processes share one session; the Login Service redirects refreshes and refuses
    logins. Each process sent its own refused login (5: a lockout), and a process joining
    later adopted the session without the mark and sent another. Now the refusal is recorded
    beside the fleet's session: one refused login for the fleet, whoever joins. A new login
    (a new session) is not withheld by it."""
    store = MemoryStore(clock)
    async with bots(clock) as s, contextlib.AsyncExitStack() as stack:
        auths: list[UserLogin] = []
        for _ in range(5):
            auth = _fleet_login(s, store, clock)
            e = await stack.enter_async_context(
                sim_engine(s, clock, domains=auth._domains, auth=auth)
            )
            await e.login()
            learn_session_secrets(auth, secret_values)
            auths.append(auth)
        assert s.count("POST", LOGIN) == 1
        s.faults.script("POST", REFRESH, [REDIRECT] * 1000)
        s.faults.script("POST", LOGIN, [401] * 1000)
        await clock.sleep(3600)
        assert all(a.session is not None for a in auths)
        assert s.count("POST", LOGIN) == 2, "one refused login for the fleet's session"
        # Recorded beside the session: its status only, for as long as the session is stored.
        [(key, (value, expires))] = _marks(store).items()
        assert value == "401"
        session_entry = await auths[0]._shared.current()  # type: ignore[union-attr]
        assert session_entry is not None
        assert key.endswith(session_entry.login)
        assert expires <= clock.now() + session_entry.ttl
        assert not any(secret in key or secret in value for secret in secret_values)
        # A process joining now adopts the session, and withholds the login as well.
        late = _fleet_login(s, store, clock)
        e = await stack.enter_async_context(sim_engine(s, clock, domains=late._domains, auth=late))
        await e.login()
        assert late.session is not None
        assert auths[0].session is not None
        assert late.session.bearer == auths[0].session.bearer
        await clock.sleep(3600)
        assert s.count("POST", LOGIN) == 2
        # A new login (the password fixed; relogin() in one process) lifts it for the fleet:
        # the new session's redirected refresh falls back to a login again.
        s.faults.clear()
        await auths[0].relogin()
        learn_session_secrets(auths[0], secret_values)
        s.faults.script("POST", REFRESH, [REDIRECT])
        await clock.sleep(600)
        assert s.count("POST", LOGIN) == 4
        for a in (*auths, late):
            learn_session_secrets(a, secret_values)
            assert a.session is not None
            assert a.session.bearer == auths[0].session.bearer


async def test_a_fleet_whose_store_fails_withholds_the_refused_login_in_each_process(
    clock: VirtualClock, secret_values: set[str]
) -> None:
    """The store down, the mark is each process's own (as without a fleet): one refused login
    a process, none after it, and nothing fails for the store."""
    flaky = FlakyStore(clock)
    async with bots(clock) as s, contextlib.AsyncExitStack() as stack:
        auths: list[UserLogin] = []
        for _ in range(2):
            shared = SharedSession(flaky, account=ACCOUNT, user="bot1", clock=clock)
            auth = UserLogin(ACCOUNT, "bot1", PASSWORD, domains=csds_for(s), shared=shared)
            e = await stack.enter_async_context(
                sim_engine(s, clock, domains=auth._domains, auth=auth)
            )
            await e.login()
            learn_session_secrets(auth, secret_values)
            auths.append(auth)
        assert s.count("POST", LOGIN) == 1
        flaky.down = True
        s.faults.script("POST", REFRESH, [REDIRECT] * 1000)
        s.faults.script("POST", LOGIN, [401] * 1000)
        await clock.sleep(3600)
        assert all(a.session is not None for a in auths)
        assert s.count("POST", LOGIN) == 1 + 2


async def test_a_shared_sessions_refusal_mark(clock: VirtualClock) -> None:
    """mark_refused() / refused(): per login, the status only, a damaged mark or a failing
    store is no mark."""
    store = MemoryStore(clock)
    shared = SharedSession(store, account=ACCOUNT, user="bot1", clock=clock)

    async def do_login() -> tuple[str, float | None]:
        return "the-session", 600.0

    token = await shared.login(do_login)
    assert await shared.refused(token.login) is None
    await shared.mark_refused(token.login, 401)
    assert await shared.refused(token.login) == 401
    assert await shared.refused("another-login") is None
    [(key, (value, expires))] = _marks(store).items()
    assert value == "401"
    assert expires == pytest.approx(clock.now() + token.ttl)
    # No longer stored (or another login's): kept for unknown_life.
    await shared.mark_refused("gone", 451)
    assert await shared.refused("gone") == 451
    assert _marks(store)[key.replace(token.login, "gone")][1] == clock.now() + 300.0
    # Damaged: no mark.
    await store.set(key, "nope", ttl=60)
    assert await shared.refused(token.login) is None
    await store.set(key, "9" * 5000, ttl=60)
    assert await shared.refused(token.login) is None
    # A failing store (a closed MemoryStore, not wrapped): no mark, nothing raised.
    await store.close()
    assert await shared.refused(token.login) is None
    await shared.mark_refused(token.login, 401)


# -- 6. a refresh answered 408 or 425 (review of f476392) --------------------------------------


@pytest.mark.parametrize("shared", [False, True], ids=["alone", "fleet"])
@pytest.mark.parametrize("status", [408, 425])
async def test_a_refresh_answered_408_or_425_keeps_the_session_and_sends_no_login(
    clock: VirtualClock, secret_values: set[str], status: int, shared: bool
) -> None:
    # A load balancer's "try again" on the refresh was taken for a refusal: the valid session
    # was dropped (and, in a fleet, taken out of the store), and a login sent.
    store = MemoryStore(clock)
    async with _logged_in_alone_or_fleet(clock, store, shared, secret_values) as (s, auth):
        kept = auth.session
        assert kept is not None
        logins = s.count("POST", LOGIN)
        await clock.sleep(300)
        s.faults.script("POST", REFRESH, [status])
        with pytest.raises(ClientStatusError) as info:
            await auth.refresh()
        assert info.value.status == status
        assert auth.session is kept, "the session is kept"
        assert s.count("POST", LOGIN) == logins, "no login for a proxy's try-again"
        if shared:
            stored = [k for k in store._values if k.endswith(":session:bot1")]
            assert stored, "not forgotten from the fleet's store"
        assert await auth.refresh(), "the next refresh goes through"
        assert auth.session is not None
        assert auth.session.bearer == kept.bearer
