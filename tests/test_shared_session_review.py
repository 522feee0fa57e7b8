"""A session shared by a fleet, as a review found it wanting: each test is a defect it confirmed.

Several engines stand for the processes of a fleet (one store shared between them), against the
simulator on loopback and the virtual clock, as in tests/test_state_shared_login.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from le_transport import Engine
from le_transport.errors import ConfigurationError, StateDataError, StateStoreError
from le_transport.policies import RetryBudget, TokenBucket
from le_transport.providers import AppLogin, ClientCredentialsLogin, CsdsDomains, UserLogin
from le_transport.state import FallbackStore, MemoryStore, SharedSession, state_key
from le_transport.state.session import SharedToken
from le_transport.state.store import Entry, StateStore
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from tests.known_secrets import PASSWORD
from tests.test_providers import ACCOUNT, USER, csds_for, learn_session_secrets, make_sim

USERS = f"/api/account/{ACCOUNT}/configuration/le-users/users"
REFRESH = f"/api/account/{ACCOUNT}/refresh"
SESSION_KEY = state_key(ACCOUNT, "session", USER)


def _member(
    sim: Simulator, clock: VirtualClock, store: StateStore, **options: Any
) -> tuple[Engine, UserLogin]:
    """A process of the fleet: its engine and its auth provider (logout_on_close left to its
    default unless given)."""
    domains = csds_for(sim)
    auth = UserLogin(
        ACCOUNT,
        USER,
        PASSWORD,
        domains=domains,
        shared=SharedSession(store, account=ACCOUNT, user=USER, clock=clock),
        **options,
    )
    return Engine(domains, scheme="http", clock=clock, auth=auth), auth


async def _get(engine: Engine) -> int:
    return (await engine.request("GET", "accountConfigReadOnly", USERS)).status


def _domains() -> CsdsDomains:
    """A domain provider for a provider that is only built, never started."""
    return CsdsDomains(ACCOUNT, csds_host="127.0.0.1:9", scheme="http")


def _bearer(auth: UserLogin) -> str:
    assert auth.session is not None
    return auth.session.bearer.reveal()


class FlakyStore:
    """A shared store (a Redis stand-in) that can be taken down: every call then fails."""

    def __init__(self, clock: VirtualClock) -> None:
        self.inner = MemoryStore(clock)
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StateStoreError("down")

    async def get(self, key: str) -> Entry | None:
        self._check()
        return await self.inner.get(key)

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        self._check()
        return await self.inner.set(key, value, ttl=ttl, only_if=only_if)

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        self._check()
        return await self.inner.add(key, value, ttl=ttl)

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        self._check()
        return await self.inner.delete(key, only_if=only_if)

    async def budget(
        self, key: str, policy: RetryBudget, *, deposits: int = 0, withdraw: bool = False
    ) -> bool:
        self._check()
        return await self.inner.budget(key, policy, deposits=deposits, withdraw=withdraw)

    async def reserve(self, key: str, bucket: TokenBucket) -> float:
        self._check()
        return await self.inner.reserve(key, bucket)

    async def close(self) -> None:
        pass


# -- 1. staleness is per login, not per write ------------------------------------------------


@pytest.mark.parametrize(
    ("adopt_at", "refreshes"),
    [
        (100.0, 1),  # B holds the login's own version, A refreshes it at 300
        (310.0, 2),  # B holds A's first refresh, A refreshes again at 600
    ],
)
async def test_a_401_after_a_refresh_elsewhere_logs_in_instead_of_adopting_the_same_bearer(
    clock: VirtualClock, secret_values: set[str], adopt_at: float, refreshes: int
) -> None:
    """A refresh stores the same bearer under a new version. B, still holding the version it
    adopted, met a 401 (the session ended at the server), took the refresh for a newer session,
    adopted the dead bearer again, and its replay failed with AuthenticationError."""
    async with make_sim(clock) as sim:
        store = MemoryStore(clock)
        a_engine, a = _member(sim, clock, store, keepalive=True)
        # B's own keepalive off: it keeps the version it adopted while A refreshes.
        b_engine, b = _member(sim, clock, store, keepalive=False)
        async with a_engine, b_engine:
            assert await _get(a_engine) == 200
            await clock.sleep(adopt_at)
            assert await _get(b_engine) == 200
            learn_session_secrets(a, secret_values)
            await clock.sleep(300.0 * refreshes + 10.0 - adopt_at)  # A refreshed at 300 (600)
            assert (sim.tokens.logins, sim.tokens.refreshes) == (1, refreshes)
            assert a._shared_token is not None
            assert b._shared_token is not None
            assert a._shared_token.version != b._shared_token.version
            assert _bearer(a) == _bearer(b)
            sim.tokens.revoke()  # the server ends the session
            assert await _get(b_engine) == 200
            learn_session_secrets(b, secret_values)
            assert sim.tokens.logins == 2, "one login replaces the rejected session"
            assert await _get(a_engine) == 200
            assert sim.tokens.logins == 2
            assert _bearer(a) == _bearer(b)


async def test_a_stale_login_covers_every_refresh_of_it(clock: VirtualClock) -> None:
    shared = SharedSession(MemoryStore(clock), account=ACCOUNT, user=USER, clock=clock)
    logins: list[str] = []

    async def do_login() -> tuple[str, float | None]:
        logins.append(f"session-{len(logins)}")
        return logins[-1], 600.0

    async def do_refresh(token: Any) -> tuple[str, float | None]:
        return token.value, 600.0

    first = await shared.login(do_login)
    await clock.sleep(100.0)
    refreshed = await shared.refresh(do_refresh, first, min_interval=10.0)
    assert refreshed.version != first.version
    assert refreshed.login == first.login == first.version
    # The refreshed entry is the rejected login still: another login, not the same bearer.
    second = await shared.login(do_login, stale=first.login)
    assert second.value == "session-1"
    assert second.login == second.version != first.login
    # A version still names one entry: the newest is usable when an older one is rejected.
    assert (await shared.login(do_login, stale=first.version)).version == second.version
    # forget() by login drops a refresh of it too.
    third = await shared.refresh(do_refresh, second, min_interval=0.0)
    await shared.forget(second.login)
    assert await shared.current() is None
    assert third.login == second.login


async def test_an_entry_without_a_login_reads_its_version_as_its_login(
    clock: VirtualClock,
) -> None:
    """An entry a process of an older version wrote (a fleet upgraded one at a time)."""
    store = MemoryStore(clock)
    envelope = {"value": "opaque", "version": "v-old", "life": 500.0}
    await store.set(SESSION_KEY, json.dumps(envelope), ttl=500.0)
    shared = SharedSession(store, account=ACCOUNT, user=USER, clock=clock)
    cur = await shared.current()
    assert cur is not None
    assert (cur.version, cur.login) == ("v-old", "v-old")

    async def do_refresh(token: Any) -> tuple[str, float | None]:
        return token.value, 600.0

    refreshed = await shared.refresh(do_refresh, cur, min_interval=0.0)
    assert (refreshed.version, refreshed.login) != ("v-old", "v-old")
    assert refreshed.login == "v-old"
    # A login that is no str makes the entry damaged, not a session.
    await store.set(SESSION_KEY, json.dumps({**envelope, "login": 5}), ttl=500.0)
    assert await shared.current() is None


# -- 2, 3. an adopted session is timed from its real age -------------------------------------


async def test_an_adopted_session_is_timed_from_when_it_was_stored(
    clock: VirtualClock, secret_values: set[str]
) -> None:
    """B adopted at 500 a session logged in at 0 (600 s TTL), its logger gone: timed from the
    adoption, its refresh came at 800, after the session expired, and the fleet logged in
    again."""
    async with make_sim(clock, session_ttl=600.0) as sim:
        store = MemoryStore(clock)
        a_engine, a = _member(sim, clock, store)
        b_engine, b = _member(sim, clock, store)
        async with b_engine:
            async with a_engine:
                assert await _get(a_engine) == 200
                learn_session_secrets(a, secret_values)
                await clock.sleep(10.0)
            await clock.sleep(490.0)  # A is gone (a rolling deploy); the entry lives on
            assert await _get(b_engine) == 200
            assert b.session is not None
            assert b.session.logged_in_at == pytest.approx(0.0, abs=1.0)
            await clock.sleep(90.0)  # t=590: before the server's expiry at 600
            assert sim.tokens.refreshes >= 1, "refreshed before the session expired"
            await clock.sleep(60.0)
            assert await _get(b_engine) == 200
            assert sim.tokens.logins == 1


async def test_a_failed_refresh_of_an_adopted_session_is_tried_again_before_it_expires(
    clock: VirtualClock, secret_values: set[str]
) -> None:
    """The failed-refresh retry (half the TTL left since last known alive) took the adoption
    for 'alive': B, adopting at 200 a session logged in at 0, tried again at 665, past the
    expiry at 600."""
    async with make_sim(clock, session_ttl=600.0) as sim:
        store = MemoryStore(clock)
        a_engine, a = _member(sim, clock, store)
        b_engine, _ = _member(sim, clock, store)
        async with b_engine:
            async with a_engine:
                assert await _get(a_engine) == 200
                learn_session_secrets(a, secret_values)
                await clock.sleep(200.0)
                assert await _get(b_engine) == 200
            sim.faults.script("POST", REFRESH, [503] * 4)
            await clock.sleep(600.0)
            posts = [r.at for r in sim.requests if r.path == REFRESH]
            assert posts[0] == pytest.approx(300.0, abs=1.0), posts
            assert any(posts[3] < at < 600.0 for at in posts[4:]), posts
            assert sim.tokens.refreshes >= 1
            assert sim.tokens.logins == 1


# -- 4. one process closing does not log the fleet out --------------------------------------


async def test_closing_one_process_leaves_the_fleets_session_alive(
    clock: VirtualClock, secret_values: set[str]
) -> None:
    async with make_sim(clock) as sim:
        store = MemoryStore(clock)
        a_engine, a = _member(sim, clock, store)
        b_engine, b = _member(sim, clock, store)
        async with b_engine:
            async with a_engine:
                assert await _get(a_engine) == 200
                learn_session_secrets(a, secret_values)
                assert await _get(b_engine) == 200
            assert sim.tokens.logouts == 0
            assert len(sim.tokens.live_sessions()) == 1
            c_engine, c = _member(sim, clock, store)
            async with c_engine:
                assert await _get(c_engine) == 200
                assert await _get(b_engine) == 200
                assert _bearer(c) == _bearer(b)
            assert sim.tokens.logins == 1
            assert sim.requests
            assert not any(r.path.endswith("/logout") for r in sim.requests)


@pytest.mark.parametrize(
    "make",
    [
        lambda d, s: UserLogin(ACCOUNT, USER, "pw", domains=d, shared=s, logout_on_close=True),
        lambda d, s: AppLogin(
            ACCOUNT, USER, "k", "s", "t", "ts", domains=d, shared=s, logout_on_close=True
        ),
        lambda d, s: ClientCredentialsLogin(
            ACCOUNT, USER, "id", "secret", domains=d, shared=s, logout_on_close=True
        ),
    ],
)
def test_logout_on_close_with_a_shared_session_is_refused(make: Any) -> None:
    clock = VirtualClock()
    shared = SharedSession(MemoryStore(clock), account=ACCOUNT, user=USER, clock=clock)
    domains = _domains()
    with pytest.raises(ConfigurationError, match="logout_on_close=True cannot go with shared"):
        make(domains, shared)


def test_logout_on_close_defaults_by_whether_the_session_is_shared() -> None:
    clock = VirtualClock()
    domains = _domains()

    def shared() -> SharedSession:
        return SharedSession(MemoryStore(clock), account=ACCOUNT, user=USER, clock=clock)

    assert UserLogin(ACCOUNT, USER, "pw", domains=domains)._logout_on_close is True
    assert UserLogin(ACCOUNT, USER, "pw", domains=domains, shared=shared())._logout_on_close is (
        False
    )
    explicit = UserLogin(ACCOUNT, USER, "pw", domains=domains, logout_on_close=False)
    assert explicit._logout_on_close is False
    kept = UserLogin(ACCOUNT, USER, "pw", domains=domains, shared=shared(), logout_on_close=False)
    assert kept._logout_on_close is False
    with pytest.raises(ConfigurationError, match="logout_on_close must be None or a bool"):
        UserLogin(ACCOUNT, USER, "pw", domains=domains, logout_on_close=1)  # type: ignore[arg-type]


async def test_a_process_on_its_own_still_logs_out_on_close(
    clock: VirtualClock, secret_values: set[str]
) -> None:
    async with make_sim(clock) as sim:
        domains = csds_for(sim)
        auth = UserLogin(ACCOUNT, USER, PASSWORD, domains=domains)
        async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
            assert await _get(engine) == 200
            learn_session_secrets(auth, secret_values)
        assert sim.tokens.logouts == 1


# -- 5. an outage serves the fleet's value as last read, not this process's old write --------


async def test_a_fallback_store_mirrors_what_the_primary_answers(clock: VirtualClock) -> None:
    primary = FlakyStore(clock)
    store = FallbackStore(primary, clock=clock)
    await store.set("k", "mine", ttl=100.0)
    await primary.inner.set("k", "the fleet's", ttl=50.0)
    await primary.inner.set("gone", "x", ttl=50.0)
    await store.set("gone", "mine too", ttl=100.0)
    await primary.inner.delete("gone")
    entry = await store.get("k")
    assert entry is not None
    assert entry.value == "the fleet's"
    assert await store.get("gone") is None
    await clock.sleep(10.0)
    primary.down = True
    entry = await store.get("k")
    assert not store.sharing
    assert entry is not None
    assert entry.value == "the fleet's"
    assert entry.ttl == pytest.approx(40.0)
    assert await store.get("gone") is None, "nothing where the primary had nothing"


async def test_a_fallback_store_does_not_mirror_what_no_ttl_can_keep(
    clock: VirtualClock,
) -> None:
    """A key without an expiry reads as TTL 0 (a caller's store may say inf): not a value a
    TTL can keep locally, nor this process's older write in its place."""
    primary = FlakyStore(clock)
    store = FallbackStore(primary, clock=clock)
    await store.set("k", "mine", ttl=100.0)

    async def forever(key: str) -> Entry | None:
        primary._check()
        return Entry("the fleet's", float("inf"))

    primary.get = forever  # type: ignore[method-assign]
    entry = await store.get("k")
    assert entry is not None
    assert entry.value == "the fleet's"
    primary.down = True
    assert await store.get("k") is None


async def test_a_key_the_primary_calls_damaged_is_not_served_from_an_older_local_copy(
    clock: VirtualClock,
) -> None:
    primary = FlakyStore(clock)
    store = FallbackStore(primary, clock=clock)
    await store.set("k", "mine", ttl=100.0)

    async def damaged(key: str) -> Entry | None:
        primary._check()
        raise StateDataError("WRONGTYPE", key=key)

    primary.get = damaged  # type: ignore[method-assign]
    assert await store.get("k") is None
    primary.down = True
    assert await store.get("k") is None


async def test_during_an_outage_a_process_refreshes_the_session_it_adopted(
    clock: VirtualClock, secret_values: set[str]
) -> None:
    """A logged in S1, S1 was revoked, B logged in S2 and A adopted it. The store went down:
    A read its own S1 from the local mirror as the fleet's newest, refreshed it (a 401),
    dropped S2 and logged in a third time."""
    async with make_sim(clock) as sim:
        store = FlakyStore(clock)
        a_engine, a = _member(sim, clock, store)
        b_engine, b = _member(sim, clock, store)
        async with a_engine, b_engine:
            assert await _get(a_engine) == 200
            learn_session_secrets(a, secret_values)
            await clock.sleep(100.0)
            sim.tokens.revoke()
            assert await _get(b_engine) == 200
            learn_session_secrets(b, secret_values)
            assert await _get(a_engine) == 200
            assert sim.tokens.logins == 2
            assert _bearer(a) == _bearer(b)
            s2 = _bearer(a)
            store.down = True
            await clock.sleep(400.0)
            assert sim.tokens.refreshes >= 1
            assert sim.tokens.logins == 2
            assert _bearer(a) == s2
            assert await _get(a_engine) == 200
            assert sim.tokens.logins == 2


# -- 6. an entry's repr shows no value ------------------------------------------------------


def test_an_entrys_repr_shows_its_ttl_and_length_not_its_value() -> None:
    entry = Entry('{"bearer": "the-bearer-0a9f"}', 12.5)
    shown = repr(entry)
    assert "the-bearer-0a9f" not in shown
    assert "12.5" in shown
    assert f"<{len(entry.value)} chars>" in shown
    assert entry == Entry('{"bearer": "the-bearer-0a9f"}', 12.5)


async def test_the_shared_session_entry_hides_the_session(
    clock: VirtualClock, secret_values: set[str]
) -> None:
    async with make_sim(clock) as sim:
        store = MemoryStore(clock)
        engine, auth = _member(sim, clock, store)
        async with engine:
            assert await _get(engine) == 200
            learn_session_secrets(auth, secret_values)
            entry = await store.get(SESSION_KEY)
            assert entry is not None
            assert auth.session is not None
            shown = repr(entry)
            for secret in (auth.session.bearer, auth.session.csrf, auth.session.session_id):
                if secret is not None:
                    assert secret.reveal() not in shown


# -- the second review round ------------------------------------------------------------------


class _SlowReplies(FlakyStore):
    """A primary whose answer to a get, once ``gate`` is set, is held back on the wire (the
    server read the key already) until the gate opens."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.gate: asyncio.Event | None = None

    async def get(self, key: str) -> Entry | None:
        entry = await super().get(key)
        if self.gate is not None:
            await self.gate.wait()
        return entry


@pytest.mark.parametrize("before", ["V1", None])
async def test_a_read_answered_after_a_concurrent_write_is_not_mirrored_over_it(
    clock: VirtualClock, before: str | None
) -> None:
    """A get copied the primary's answer locally even when this process wrote the key while
    the answer was on its way: the older read replaced the newer write, and during the next
    outage the process read V1 (or nothing) instead of its own V2."""
    primary = _SlowReplies(clock)
    store = FallbackStore(primary, clock=clock)
    if before is not None:
        await store.set("k", before, ttl=100)
    primary.gate = asyncio.Event()
    reader = asyncio.ensure_future(store.get("k"))
    await asyncio.sleep(0)
    await store.set("k", "V2", ttl=100)  # newer, while the read's answer is on the wire
    primary.gate.set()
    seen = await reader
    assert (seen.value if seen is not None else None) == before  # read before the write
    primary.gate = None
    primary.down = True
    during = await store.get("k")
    assert during is not None
    assert during.value == "V2"


async def test_a_session_life_past_max_ttl_is_shared_with_a_true_age(clock: VirtualClock) -> None:
    """The entry's life was written as given while the store caps its TTL at MAX_TTL: every
    read of it was ~1e17 s old, and every adopter refreshed it at once."""
    from le_transport.state.store import MAX_TTL

    store = MemoryStore(clock)
    shared = SharedSession(store, account="1", user="bot", clock=clock)

    async def login() -> tuple[str, float | None]:
        return '{"bearer":"x"}', MAX_TTL * 1e5

    await shared.login(login)
    other = SharedSession(store, account="1", user="bot", clock=clock)

    async def never() -> tuple[str, float | None]:
        raise AssertionError("adopted, not logged in")

    token = await other.login(never)
    assert token.age == pytest.approx(0.0)


async def test_a_refresh_is_stored_under_the_login_it_refreshed(clock: VirtualClock) -> None:
    """The stored entry took the login of the token given to do_refresh, though a process
    that could not read the newest entry's session refreshed its own (held): a later 401 on
    held's login then adopted the same, dead, bearer. A refresh may now say which token it
    refreshed; without it, the one given is taken, as before."""
    store = MemoryStore(clock)
    shared = SharedSession(store, account="1", user="bot", clock=clock)

    async def login() -> tuple[str, float | None]:
        return '{"bearer":"a"}', 3600.0

    held = await shared.login(login)
    other = SharedSession(store, account="1", user="bot", clock=clock)

    async def another_login() -> tuple[str, float | None]:
        return '{"bearer":"b"}', 3600.0

    newest = await other.login(another_login, stale=held.login)
    assert newest.login != held.login

    async def refreshed_held(given: SharedToken) -> tuple[str, float | None, SharedToken]:
        assert given.version == newest.version
        return '{"bearer":"a"}', 3600.0, held

    token = await shared.refresh(refreshed_held, held, min_interval=0.0)
    assert token.login == held.login

    async def refreshed_given(given: SharedToken) -> tuple[str, float | None]:
        return given.value, 3600.0

    again = await shared.refresh(refreshed_given, token, min_interval=0.0)
    assert again.login == token.login
