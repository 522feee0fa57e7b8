"""One login per account and user across a fleet: a session shared through a store.

N bot processes of one brand each logging in means N logins (and the Login Service's 429 "too
many logins"). :class:`SharedSession` makes the fleet log in once: the first process to find no
token takes a lock (with a TTL, so a holder that crashes cannot block the others), logs in and
stores the token; the others wait and read it. Refreshes work the same way, and a token that was
stored or refreshed less than ``min_interval`` ago is simply taken: one refresh per interval for
the fleet, not one per process.

A session the server rejected is named by its login (:attr:`SharedToken.login`), not by the
version stored: a refresh stores the same bearer under a new version, and a process whose 401
found that refresh took it for a newer session, adopted the dead bearer again, and its call
failed. Every refresh of a rejected login is as stale as the login itself.

The stored value is opaque to the store (the auth provider serialises its session); it is kept
only with a TTL no longer than its remaining life, minus ``safety_margin``. Whoever can read the
store can read the token: see the threat model in docs/architecture.md.

Beside it, a login the Login Service refused for a session (:meth:`SharedSession.mark_refused`:
the fallback of a refresh answered with a redirect) is recorded for the fleet, under a key named
by that session's login (:attr:`SharedToken.login`, no secret) and holding only the status, for
as long as the session is stored: every process that holds or adopts that session reads it
(:meth:`SharedSession.refused`) under the fleet's lock before it would send that login, and
sends none; a new login is another session, with no such mark.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Awaitable, Callable

import attrs

from .._checks import require_kind
from ..clock import Clock, RealClock
from ..errors import ConfigurationError, StateStoreError
from ..policies._validate import finite_number
from .fallback import guarded, stored_text
from .store import (
    MAX_TTL,
    Entry,
    StateStore,
    check_seconds,
    check_store,
    state_key,
    store_clock,
)

__all__ = ["DEFAULT_UNKNOWN_LIFE", "SharedSession", "SharedToken"]

_log = logging.getLogger("le_transport.state")

#: A session whose answer gave no TTL is shared for this long (the guide's 5 min keepalive):
#: each refresh stores it again, so an unknown life is never assumed to be longer.
DEFAULT_UNKNOWN_LIFE = 300.0
#: How long a waiter for the fleet's token waits between looks, at most, unless told otherwise.
DEFAULT_MAX_POLL = 0.5


@attrs.frozen(repr=False)
class SharedToken:
    """A session as the fleet shares it: the provider's serialised ``value``, a ``version``
    (new at every login and refresh), its remaining ``ttl`` and the ``life`` it was stored
    with (so ``life - ttl`` is its age, on the store's clock), and its ``login``: the version
    its login was stored under, kept by every refresh of it (a refresh stores the same bearer
    under a new version, so only the login says which session a rejected bearer belonged
    to). An entry written before the login was stored reads its own version as its login."""

    value: str
    version: str
    ttl: float
    life: float
    login: str = attrs.field(default=attrs.Factory(lambda self: self.version, takes_self=True))

    @property
    def age(self) -> float:
        """Seconds since it was stored (logged in or refreshed)."""
        return max(0.0, self.life - self.ttl)

    def __repr__(self) -> str:
        return (
            f"SharedToken(version={self.version!r}, login={self.login!r}, ttl={self.ttl:.3g}, "
            "value=<hidden>)"
        )


#: What a login or a refresh returns: the serialised session and its life in seconds (None:
#: the answer did not say).
Obtained = tuple[str, float | None]
#: What a refresh may return instead: also the token it refreshed, when that is not the one it
#: was given (the entry given could not be read as a session: the process refreshed its own),
#: so that the stored entry keeps the login it refreshed.
RefreshedFrom = tuple[str, float | None, SharedToken]


class SharedSession:
    """The session of ``user`` on ``account``, shared through ``store``.

    Give it to the login of that very account and user (:attr:`account`, :attr:`user`): a
    :class:`~le_transport.providers.LoginServiceAuth` given the session of another account or
    user is a :class:`~le_transport.errors.ConfigurationError` (it would adopt that session,
    and act as its user).

    A store that can fail (a :class:`~le_transport.state.RedisStore`, a store of the caller's,
    a ``MemoryStore`` subclass included) is wrapped in a
    :class:`~le_transport.state.FallbackStore` on ``clock``: a failure, or an operation that
    does not answer within its ``op_timeout``, is an outage (each process logs in on its
    own), never a call failed or held. A plain ``MemoryStore`` or a ``FallbackStore`` is used
    as it is.

    - ``lock_ttl``: how long a login or refresh may hold the lock (a crashed holder frees it
      after this). 60 s covers a login through the guide's whole 5/10/15 s schedule with
      quick answers; a login slower than that may let a second process log in too (two
      logins, never a deadlock), and a crashed holder delays the fleet by at most this.
    - ``safety_margin``: the token is stored for its remaining life minus this, never longer;
      it may not be longer than ``unknown_life``.
    - ``unknown_life``: how long a session whose answer gave no TTL is shared (default
      :data:`DEFAULT_UNKNOWN_LIFE`).
    - ``poll``, ``max_poll``: how often a waiter looks for the new token (growing from
      ``poll`` to ``max_poll``, by default 0.5 s or ``poll`` if longer; a ``max_poll`` given
      may not be shorter than ``poll``).
    - ``clock``: a :class:`~le_transport.clock.Clock` instance: the waits for another
      process's token, and the wrapping ``FallbackStore``, run on it. Default: the store's own
      (its ``clock`` attribute: a ``MemoryStore``'s, a ``RedisStore`` made with ``clock=``),
      else the real clock, as :class:`~le_transport.state.SharedDomainMap` picks it.
    """

    def __init__(
        self,
        store: StateStore,
        *,
        account: str,
        user: str,
        clock: Clock | None = None,
        lock_ttl: float = 60.0,
        safety_margin: float = 30.0,
        unknown_life: float = DEFAULT_UNKNOWN_LIFE,
        poll: float = 0.05,
        max_poll: float | None = None,
    ) -> None:
        check_store("SharedSession", "store", store)
        # Left out, the ceiling is its default or the poll asked for, whichever is longer: a
        # caller asking only for slower polling (poll=1.0) is not refused for a default.
        if max_poll is None:
            max_poll = max(DEFAULT_MAX_POLL, poll) if finite_number(poll) else DEFAULT_MAX_POLL
        # inf or an int past float's range used to pass, failing later as a stored TTL.
        for name, value in (
            ("lock_ttl", lock_ttl),
            ("unknown_life", unknown_life),
            ("poll", poll),
            ("max_poll", max_poll),
        ):
            check_seconds("SharedSession", name, value)
        # Unchecked, a NaN margin made every stored session's TTL NaN.
        check_seconds("SharedSession", "safety_margin", safety_margin, zero=True)
        if safety_margin > unknown_life:
            # Contradictory: a session known to live unknown_life is then too close to its end
            # to share at all (its life minus the margin is below 0), yet one whose life is
            # unknown was assumed to live that long and shared for all of it.
            raise ConfigurationError(
                f"SharedSession.safety_margin ({safety_margin!r}) must not be longer than "
                f"unknown_life ({unknown_life!r})"
            )
        if poll > max_poll:
            # The first wait was poll, past the documented ceiling (poll=10, max_poll=0.5: 10 s).
            raise ConfigurationError(
                f"SharedSession.poll ({poll!r}) must not be longer than max_poll ({max_poll!r})"
            )
        if isinstance(clock, type):
            # VirtualClock, not VirtualClock(): a class passes the protocol check (its methods
            # are there, unbound), and failed at the first wait.
            raise ConfigurationError(
                f"SharedSession.clock must be a Clock, got the class {clock.__name__}: pass one "
                f"({clock.__name__}())"
            )
        # Unchecked, time.monotonic was taken, and the first wait for another process's token
        # failed with AttributeError (no .sleep), as MemoryStore refuses it.
        require_kind(clock, Clock, owner="SharedSession", field="clock")
        if not isinstance(user, str) or not user:
            raise ConfigurationError(f"SharedSession.user must be a non-empty str, got {user!r}")
        # The store's own by default, as SharedDomainMap's: on a store running on a virtual
        # clock, the real one polled for another process's token in real time, while the
        # lock's TTL ran on the store's.
        self._clock = clock if clock is not None else store_clock(store) or RealClock()
        # Wrapped unless it cannot fail (guarded): a MemoryStore subclass too, as one whose
        # read or lock hung held every login for ever.
        self._store: StateStore = guarded(store, self._clock)
        self._key = state_key(account, "session", user)
        self._account = account
        self._user = user
        self._lock = state_key(account, "session-lock", user)
        self._lock_ttl = float(lock_ttl)
        self._margin = float(safety_margin)
        self._unknown_life = float(unknown_life)
        self._poll = float(poll)
        self._max_poll = float(max_poll)
        self._owner = uuid.uuid4().hex
        self._attempts = 0
        #: How many logins and refreshes this process made itself (not adopted).
        self.logins = 0
        self.refreshes = 0

    @property
    def account(self) -> str:
        """The account whose session this is (part of its key in the store). A
        :class:`~le_transport.providers.LoginServiceAuth` of another account refuses it."""
        return self._account

    @property
    def user(self) -> str:
        """The user whose session this is (part of its key in the store). A
        :class:`~le_transport.providers.LoginServiceAuth` logging in as another user refuses
        it: that login would adopt this user's session, and act as this user."""
        return self._user

    async def current(self) -> SharedToken | None:
        """The fleet's current token, if one is stored."""
        return (await self._read())[1]

    async def _read(self) -> tuple[Entry | None, SharedToken | None]:
        """The stored entry as read, and the token in it (None if absent or unreadable)."""
        entry = await self._store.get(self._key)
        if entry is None:
            return None, None
        try:
            # A MemoryStore is not wrapped: what a caller stored in it may be no str. Bytes
            # are decoded (as a FallbackStore does), and the entry kept as text: read as they
            # were, they parsed, and forget() reused them as its only_if, refused.
            text = stored_text(entry.value)
            if text is None:
                raise TypeError("not a str")
            if text is not entry.value:
                entry = Entry(text, entry.ttl)
            data = json.loads(text)
            value, version, life = data["value"], data["version"], float(data["life"])
            # Absent from an entry written before it was stored (a fleet upgraded one process
            # at a time): that entry's login is its own version.
            login = data.get("login", version)
            # str() of anything would do as a bearer, and a NaN or infinite life makes every
            # freshness comparison false: such an entry is damaged, not a session. So does a
            # TTL that is no finite number >= 0 (a caller's store answering inf for "no
            # expiry"): its age read 0 for ever, and the fleet never refreshed it.
            if not (
                isinstance(value, str)
                and isinstance(version, str)
                and isinstance(login, str)
                and math.isfinite(life)
                and finite_number(entry.ttl)
                and entry.ttl >= 0
            ):
                raise ValueError("not a stored session")
            return entry, SharedToken(value, version, entry.ttl, life, login)
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError):
            # Not ours (or damaged): treat as absent; the next login overwrites it.
            _log.warning("ignoring an unreadable shared session entry", extra={"key": self._key})
            return entry, None

    async def login(
        self, do_login: Callable[[], Awaitable[Obtained]], *, stale: str | None = None
    ) -> SharedToken:
        """The fleet's token, logging in only if there is none, or only a ``stale`` one: the
        server rejected it. ``stale`` names a token's :attr:`~SharedToken.login` (that login
        and every refresh of it are stale: a refresh keeps the bearer) or a single
        :attr:`~SharedToken.version`. Exactly one process of the fleet runs ``do_login``."""
        return await self._single(do_login=do_login, stale=stale, fresh_within=None)

    async def refresh(
        self,
        do_refresh: Callable[[SharedToken], Awaitable[Obtained | RefreshedFrom]],
        held: SharedToken,
        *,
        min_interval: float,
    ) -> SharedToken:
        """Refresh the fleet's session, unless it was stored or refreshed less than
        ``min_interval`` seconds ago: then take the stored one. ``do_refresh`` gets the token to
        refresh (the newest stored, or ``held`` if none is), and returns the refreshed session
        and its life, and, if it refreshed another token than the one given, that token (the
        stored entry keeps the login of the token refreshed)."""
        return await self._single(
            do_refresh=do_refresh, held=held, stale=None, fresh_within=min_interval
        )

    def _usable(
        self, cur: SharedToken | None, stale: str | None, fresh_within: float | None
    ) -> bool:
        if cur is None or (stale is not None and stale in (cur.version, cur.login)):
            # By login too: a refresh elsewhere stores the rejected bearer under a new
            # version, which, adopted, met the same 401 and failed the call.
            return False
        return fresh_within is None or cur.age < fresh_within

    async def _single(
        self,
        *,
        stale: str | None,
        fresh_within: float | None,
        do_login: Callable[[], Awaitable[Obtained]] | None = None,
        do_refresh: Callable[[SharedToken], Awaitable[Obtained | RefreshedFrom]] | None = None,
        held: SharedToken | None = None,
    ) -> SharedToken:
        pause = self._poll
        while True:
            cur = await self.current()
            if self._usable(cur, stale, fresh_within):
                assert cur is not None
                return cur
            # A value of this attempt's own: a late release of an earlier attempt's lock never
            # frees this one, and a replayed add (a client's retry) finds only its own.
            self._attempts += 1
            owner = f"{self._owner}:{self._attempts}"
            # None while the add has not answered: cancelled then, the store may hold the lock
            # all the same (Redis ran the command, the reply had not come back).
            taken: bool | None = None
            try:
                taken = await self._store.add(self._lock, owner, ttl=self._lock_ttl)
                if taken:
                    # Someone may have finished between our read and our lock.
                    cur = await self.current()
                    if self._usable(cur, stale, fresh_within):
                        assert cur is not None
                        return cur
                    if do_refresh is not None:
                        base = cur or held
                        assert base is not None
                        refreshed = await do_refresh(base)
                        self.refreshes += 1
                        # A refresh goes on with the login it refreshed: the one it says, or
                        # the one it was given.
                        value, life, *which = _refreshed(refreshed)
                        source = which[0] if which else base
                        return await self._put(value, life, login=source.login)
                    assert do_login is not None
                    obtained = await do_login()
                    self.logins += 1
                    return await self._put(*obtained)
            finally:
                if taken is not False:
                    # Ours, or maybe ours (the add cut short): a compare-and-delete of this
                    # attempt's value frees it, and is harmless if the add never landed. Left,
                    # it kept every process of the fleet waiting out lock_ttl with nobody
                    # logging in.
                    await self._store.delete(self._lock, only_if=owner)
            # Another process holds the lock: wait for its token (or for its lock to expire).
            await self._clock.sleep(pause)
            pause = min(pause * 2, self._max_poll)

    async def _put(
        self, value: str, life: float | None, *, login: str | None = None
    ) -> SharedToken:
        """Store a session: a new login's (``login`` None: its login is this version) or a
        refresh of ``login``."""
        version = uuid.uuid4().hex
        login = version if login is None else login
        remaining = self._unknown_life if life is None else float(life)
        ttl = remaining - self._margin if life is not None else remaining
        # Capped as every store caps a TTL (MAX_TTL): a life written past it made every read
        # of the entry look ~1e17 s old (life - ttl), and every adopter refresh at once.
        ttl = min(ttl, MAX_TTL)
        token = SharedToken(value, version, max(ttl, 0.0), max(ttl, 0.0), login)
        if ttl <= 0:
            # Too close to its end to share: this process uses it, nobody else reads it.
            _log.info("not sharing a session with under %.3g s to live", self._margin)
            return token
        payload = json.dumps({"value": value, "version": version, "life": ttl, "login": login})
        await self._store.set(self._key, payload, ttl=ttl)
        return token

    async def forget(self, version: str) -> None:
        """Drop the stored token if it is still ``version``, or a refresh of the login
        ``version`` names (the server rejected it: see :meth:`login`'s ``stale``).

        A compare-and-delete of the entry as it was read: a session another process stored
        between the read and the delete (a new login) is kept, not dropped with the old one.
        """
        entry, cur = await self._read()
        if entry is not None and cur is not None and version in (cur.version, cur.login):
            await self._store.delete(self._key, only_if=entry.value)

    def _refused_key(self, login: str) -> str:
        """Where a refusal of the login of the session ``login`` names is recorded: beside the
        session's key, named by that login (a version, no secret)."""
        return state_key(self._account, "session-refused", self._user, login)

    async def mark_refused(self, login: str, status: int) -> None:
        """Record for the fleet that a login sent for the session whose login is ``login``
        (:attr:`SharedToken.login`) was refused with ``status``: the provider then sends it no
        more for that session, in any process (see :meth:`refused`). Only the status is
        stored, for as long as that session is still stored (its entry's TTL), or
        ``unknown_life`` if it is no longer (processes may still hold it). Call it while the
        lock of a login is held (inside ``do_login``), so that the next process to take the
        lock reads it. A store that fails (a :class:`~le_transport.errors.StateStoreError`)
        records nothing: each process then goes on on its own."""
        try:
            cur = await self.current()
            ttl = (
                cur.ttl
                if cur is not None and cur.login == login and cur.ttl > 0
                else self._unknown_life
            )
            await self._store.set(self._refused_key(login), str(int(status)), ttl=min(ttl, MAX_TTL))
        except StateStoreError as exc:
            _log.warning(
                "a refused login could not be shared with the fleet (%s); each process "
                "withholds it on its own",
                type(exc).__name__,
                extra={"key": self._key},
            )

    async def refused(self, login: str) -> int | None:
        """The status a login sent for the session whose login is ``login`` was refused with,
        by any process of the fleet (:meth:`mark_refused`); None if none was, if the mark is
        unreadable, or if the store fails (each process then goes on on its own)."""
        try:
            entry = await self._store.get(self._refused_key(login))
        except StateStoreError:
            return None
        text = None if entry is None else stored_text(entry.value)
        if text is None or len(text) != 3 or not text.isascii() or not text.isdigit():
            return None
        status = int(text)
        return status if 400 <= status < 500 else None

    def __repr__(self) -> str:
        return f"SharedSession(key={self._key!r})"


def _refreshed(result: object) -> Obtained | RefreshedFrom:
    """What a ``do_refresh`` returned, checked: ``(value, life)`` or ``(value, life, token)``
    with ``token`` a :class:`SharedToken`; else a :class:`ConfigurationError` naming it (its
    value is a session: never shown)."""
    if isinstance(result, tuple) and (
        len(result) == 2 or (len(result) == 3 and isinstance(result[2], SharedToken))
    ):
        return result
    raise ConfigurationError(
        "SharedSession.refresh: do_refresh must return (value, life) or (value, life, the "
        f"SharedToken it refreshed), got a {type(result).__name__}"
        + (f" of {len(result)} items" if isinstance(result, tuple) else "")
    )
