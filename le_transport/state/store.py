"""The StateStore protocol: the few operations through which processes share state.

A brand runs many bot processes; each would log in, resolve domains and retry on its own. Through
a store they share the session, the domain map, the retry budget and breaker trips, and the
reconnect pace. The protocol is small on purpose, so that the in-memory store (the default: one
process) and the Redis store (a fleet) implement the same thing:

- a key-value space where **every value has a TTL** (a token is never stored for longer than it
  lives, and a crashed process's lock frees itself): :meth:`StateStore.get`,
  :meth:`StateStore.set` (optionally only if the value is still the one read: compare-and-set),
  :meth:`StateStore.add` (set if absent: a lock), :meth:`StateStore.delete` (optionally only if
  the value is still ours: compare-and-delete). Keys and values are str that UTF-8 can
  encode (no lone surrogate) and TTLs finite numbers of seconds > 0, checked alike by every
  store (:func:`check_key`, :func:`check_value`, :func:`check_ttl`) before anything is stored
  or sent; a TTL past :data:`MAX_TTL` is stored for :data:`MAX_TTL`;
- two atomic counters that run a pure policy's arithmetic where the state lives:
  :meth:`StateStore.budget` (:class:`~le_transport.policies.RetryBudget`) and
  :meth:`StateStore.reserve` (:class:`~le_transport.policies.TokenBucket`).

Keys are made with :func:`state_key`: namespaced per account, each part escaped, so that one
account's values can never be read or overwritten through another's names.
"""

from __future__ import annotations

import inspect
from typing import Protocol, runtime_checkable

import attrs

from .._checks import utf8_encodable
from ..clock import Clock
from ..errors import ConfigurationError, StateStoreError
from ..policies._validate import finite_number
from ..policies._validate import shown as shown_number
from ..policies.budget import RetryBudget
from ..policies.pacing import TokenBucket

__all__ = [
    "MAX_DEPOSITS",
    "MAX_TTL",
    "Entry",
    "StateStore",
    "check_bucket",
    "check_budget",
    "check_deposits",
    "check_key",
    "check_only_if",
    "check_seconds",
    "check_store",
    "check_store_calls",
    "check_ttl",
    "check_value",
    "closed_error",
    "state_key",
]

#: The longest a value is stored, in seconds: 10**12 (about 31,700 years). A longer TTL, however
#: large but finite, is stored for this long on every store: far inside what Redis can hold
#: (``PX`` takes milliseconds up to 2**63 - 1 minus its clock), and a whole number of
#: milliseconds that a float holds exactly, so both stores keep and report the same TTL.
MAX_TTL = 1e12


@attrs.frozen(repr=False)
class Entry:
    """A value read from a store, and how many seconds it has left to live: a finite number
    >= 0 (never more than :data:`MAX_TTL`, as every store keeps it; a Redis key without an
    expiry, written by something else, reads as 0). The library's readers take an entry whose
    ``ttl`` is anything else (inf for "no expiry", NaN) for a damaged one, and ignore it.

    Its repr shows the TTL and the value's length, never the value: a shared session's entry
    holds its bearer, csrf and ``Session_id`` (a log line, a traceback's locals or a test's
    assertion message showed them)."""

    value: str
    ttl: float

    def __repr__(self) -> str:
        # The length only of a str; of anything else (a caller's store), only its type.
        size = (
            f"<{len(self.value)} chars>"
            if isinstance(self.value, str)
            else f"<{type(self.value).__name__}>"
        )
        return f"Entry(value={size}, ttl={self.ttl!r:.40})"


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace(":", "%3A").replace("{", "%7B").replace("}", "%7D")


def state_key(account: str, kind: str, *parts: str) -> str:
    """The key of ``kind`` (``session``, ``domains``, ``budget`` ...) for ``account``.

    Every part is escaped, so ``state_key("1", "session", "a:b")`` can never collide with
    another account's or another kind's key.
    """
    # Only types are shown: an account given in the wrong place may be a credential.
    if not isinstance(account, str) or not account:
        raise ConfigurationError(
            "a state key needs a non-empty str account, got "
            f"{'an empty str' if account == '' else type(account).__name__}"
        )
    for part in (kind, *parts):
        if not isinstance(part, str):
            raise ConfigurationError(f"a state key is made of str names, got {type(part).__name__}")
    return ":".join(_escape(p) for p in (account, kind, *parts))


def check_seconds(owner: str, field: str, value: object, *, zero: bool = False) -> float:
    """``value`` as seconds: a finite number > 0 (>= 0 with ``zero``); else a
    :class:`ConfigurationError` naming ``owner.field``."""
    ok = finite_number(value) and (value >= 0 if zero else value > 0)  # type: ignore[operator]
    if not ok:
        wants = ">= 0" if zero else "> 0"
        raise ConfigurationError(
            f"{owner}.{field} must be a finite number of seconds {wants}, got {value!r:.40}"
        )
    return float(value)  # type: ignore[arg-type]


def check_ttl(ttl: object) -> float:
    """A stored value's TTL in seconds, as every store keeps it: ``ttl`` capped at
    :data:`MAX_TTL`. A :class:`ConfigurationError` unless it is a finite number > 0 (an int
    past float's range included: it would overflow the clock's arithmetic)."""
    if not (finite_number(ttl) and ttl > 0):  # type: ignore[operator]
        # A number is shown; anything else only by its type (it may be a misplaced secret).
        shown = f"{ttl!r:.40}" if isinstance(ttl, (int, float)) else type(ttl).__name__
        raise ConfigurationError(f"a stored value needs a finite TTL > 0, got {shown}")
    return min(float(ttl), MAX_TTL)  # type: ignore[arg-type]


def _not_utf8(what: str) -> ConfigurationError:
    """The refusal of a str that does not encode to UTF-8, naming ``what`` it is, never its
    text (a key names an account and a user, a value may be a token)."""
    return ConfigurationError(
        f"{what} must be text that UTF-8 can encode, got a str holding a lone surrogate (not "
        "shown): a MemoryStore kept it, and Redis could not be sent it"
    )


def check_value(value: object) -> None:
    """A :class:`ConfigurationError` unless ``value`` is a str that encodes to UTF-8: what
    every store keeps and hands back (Redis would store ``str(value)``, or refuse None, and the
    stores would disagree; a lone surrogate, kept by a MemoryStore, failed on Redis as it was
    encoded, which a FallbackStore took for an outage). Only the type is shown: a value may be
    a token."""
    if not isinstance(value, str):
        raise ConfigurationError(f"a stored value must be a str, got {type(value).__name__}")
    if not utf8_encodable(value):
        raise _not_utf8("a stored value")


def check_only_if(only_if: object) -> None:
    """A :class:`ConfigurationError` unless ``only_if`` (what a conditional write or delete
    compares the stored value with) is None or a str that encodes to UTF-8: Redis would compare
    ``str(only_if)``, the memory store the object itself, and the two would disagree (a lone
    surrogate: see :func:`check_value`). Only the type is shown."""
    if only_if is None:
        return
    if not isinstance(only_if, str):
        raise ConfigurationError(
            f"a store's only_if must be None or a str, got {type(only_if).__name__}"
        )
    if not utf8_encodable(only_if):
        raise _not_utf8("a store's only_if")


def check_budget(policy: object) -> None:
    """A :class:`ConfigurationError` unless ``policy`` is a :class:`RetryBudget`: checked
    before anything is counted or sent (a str raised AttributeError from inside the store)."""
    if not isinstance(policy, RetryBudget):
        raise ConfigurationError(
            f"a store's budget needs a RetryBudget policy, got {type(policy).__name__}"
        )


def check_bucket(bucket: object) -> None:
    """A :class:`ConfigurationError` unless ``bucket`` is a :class:`TokenBucket` (as
    :func:`check_budget`, for :meth:`StateStore.reserve`)."""
    if not isinstance(bucket, TokenBucket):
        raise ConfigurationError(
            f"a store's reserve needs a TokenBucket, got {type(bucket).__name__}"
        )


#: The most first attempts one deposit may count: 2**53, what a float (a Lua number, in Redis)
#: holds exactly. A larger count is no count of requests, and one past float's range made the
#: budget's arithmetic raise OverflowError at every later call on that key.
MAX_DEPOSITS = 2**53


def check_deposits(deposits: object) -> int:
    """A budget's deposit, as every store counts it: a :class:`ConfigurationError` unless it
    is an int from 0 to :data:`MAX_DEPOSITS` (a negative one took retries away in memory, and
    was ignored by Redis; a huge one poisoned the key), checked before anything is counted."""
    if (
        isinstance(deposits, bool)
        or not isinstance(deposits, int)
        or not 0 <= deposits <= MAX_DEPOSITS
    ):
        if isinstance(deposits, int | float) and not isinstance(deposits, bool):
            shown = shown_number(deposits)
        else:
            shown = type(deposits).__name__
        raise ConfigurationError(
            f"budget deposits must be an int >= 0 (at most 2**53), got {shown}"
        )
    return deposits


def check_key(key: object) -> None:
    """A :class:`ConfigurationError` unless ``key`` is a str (made with :func:`state_key`)
    that encodes to UTF-8, checked alike by every store before anything is read or stored: the
    memory store kept any hashable object, and Redis the text of its ``str()`` (``None`` became
    the key "None"); a lone surrogate (see :func:`check_value`) failed on Redis only. Only the
    type is shown."""
    if not isinstance(key, str):
        raise ConfigurationError(
            f"a store key must be a str (made with state_key), got {type(key).__name__}"
        )
    if not utf8_encodable(key):
        raise _not_utf8("a store key")


def closed_error(owner: str, op: str) -> StateStoreError:
    """What a store's operation raises once the store is closed, as every store says it."""
    return StateStoreError(f"{owner} {op}: the store is closed")


def store_clock(store: object) -> Clock | None:
    """The clock ``store`` tells it runs on (its ``clock`` attribute, as a ``RedisStore`` made
    with ``clock=`` has), or None when it tells none."""
    own = getattr(store, "clock", None)
    return own if isinstance(own, Clock) and not isinstance(own, type) else None


def check_store(owner: str, field: str, store: object) -> None:
    """A :class:`ConfigurationError` unless ``store`` is a :class:`StateStore`. Checked
    because a wrapping FallbackStore would otherwise hide a wrong one, running local for ever."""
    if not isinstance(store, StateStore):
        raise ConfigurationError(
            f"{owner}.{field} must be a StateStore (MemoryStore, RedisStore, FallbackStore), "
            f"got {type(store).__name__}"
        )


def takes_only_if(method: object) -> bool | None:
    """Whether ``method`` (a store's ``set``) can be called with ``only_if=`` (a parameter of
    that name passable by keyword, or ``**kwargs``): :func:`binds` for ``set``."""
    return binds(method, "k", "v", ttl=1.0, only_if="v")


def binds(method: object, *args: object, **kwargs: object) -> bool | None:
    """Whether ``method`` can be called with ``args`` and ``kwargs`` (its signature binds
    them: ``**kwargs`` takes any keyword). None if its signature cannot be read (a builtin,
    say): it is then taken at its word, and a mismatch surfaces when it is called (as a
    :class:`ConfigurationError` through a :class:`~le_transport.state.FallbackStore`).
    False if it is not callable."""
    if not callable(method):
        return False
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def check_store_calls(
    owner: str, field: str, store: object, *, breaker: bool, budget: bool
) -> None:
    """A :class:`ConfigurationError` unless ``store`` (a :class:`StateStore`, checked first by
    :func:`check_store`; through a :class:`~le_transport.state.FallbackStore`, its primary)
    takes the calls the overload guard makes of it, as the protocol writes them: ``get``,
    ``add``, ``delete`` with ``only_if`` and ``set`` with ``only_if`` if ``breaker`` (the
    fleet's circuit breaker), ``budget`` with ``deposits`` and ``withdraw`` if ``budget``.

    Checked when the guard is made, so that a store that does not fit fails there, loudly and
    typed, not in a caller's request with a raw TypeError. Above all a store written to the
    protocol before ``only_if`` was added (``set(key, value, *, ttl)``): it still passes
    :func:`check_store` (a runtime-checkable Protocol checks method names only), and failed at
    the fleet's first half-open probe. A store that only ever gets unconditional writes (a
    shared session, the domain map, the pacer) is not asked for ``only_if``.

    Refused, not degraded to the old unconditional writes: those let a process's probe
    overwrite or delete a break another process had just published, and the fleet sent
    traffic through a live break (6583054). Other SDKs build on this library; a store that
    worked must not break silently at its first probe, mid-outage, nor lose that guarantee
    behind a warning nobody reads. A typed error when the guard is made, saying what to add
    (or to share no breaker), is loud and early, and the fix is a few lines.
    """
    from .fallback import FallbackStore  # (a cycle at import time: fallback imports this)

    inner = store
    seen: set[int] = set()
    while isinstance(inner, FallbackStore) and id(inner) not in seen:
        seen.add(id(inner))
        inner = inner.primary
    name = type(inner).__name__
    if breaker and takes_only_if(getattr(inner, "set", None)) is False:
        raise ConfigurationError(_no_only_if(owner, field, inner))
    calls: list[tuple[str, tuple[object, ...], dict[str, object], str]] = []
    if breaker:
        calls += [
            ("get", ("k",), {}, "get(key)"),
            ("add", ("k", "v"), {"ttl": 1.0}, "add(key, value, *, ttl)"),
            ("delete", ("k",), {"only_if": "v"}, "delete(key, *, only_if=None)"),
        ]
    if budget:
        calls.append(
            (
                "budget",
                ("k", RetryBudget()),
                {"deposits": 0, "withdraw": False},
                "budget(key, policy, *, deposits=0, withdraw=False)",
            )
        )
    for op, args, kwargs, shape in calls:
        if binds(getattr(inner, op, None), *args, **kwargs) is False:
            raise ConfigurationError(
                f"{owner}.{field}: {name}.{op} cannot be called as the StateStore protocol "
                f"calls it: async def {shape} (see StateStore.{op})"
            )


def _no_only_if(owner: str, field: str, store: object) -> str:
    """What a store without ``only_if`` is told to add (:func:`check_store_calls`)."""
    name = type(store).__name__
    return (
        f"{owner}.{field}: {name}.set() takes no only_if, and the fleet's circuit breaker "
        "publishes and rewrites its trip with a compare-and-set (a plain write let one "
        "process's break replace or delete another's newer one, and the fleet sent traffic "
        f"through it). Add it to {name}.set: "
        "async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) "
        "-> bool; with only_if given, store value only while key still holds exactly only_if, "
        "atomically (on Redis, a Lua script: GET, compare, SET PX), and return whether it "
        "stored (without it, store and return True). Or share no breaker through it "
        "(breaker=None, or no store)"
    )


@runtime_checkable
class StateStore(Protocol):
    """Where shared state lives. Every operation is atomic; times are seconds.

    Every operation is bounded by the store itself: it answers, or fails with a
    :class:`~le_transport.errors.StateStoreError`, within a short time of its own (as
    :class:`~le_transport.state.RedisStore`'s ``op_timeout``, 0.25 s by default, on the clock
    it is given). The library does not cut an operation short from outside: a write cancelled
    after the server applied it would leave a lock held for its whole TTL. A store that never
    answers holds up what waits on it (a shared login, a call the overload guard admits).
    """

    async def get(self, key: str) -> Entry | None:
        """The value at ``key`` (a str) and its remaining TTL (a finite number of seconds in
        [0, :data:`MAX_TTL`]: see :class:`Entry`), or None."""
        ...

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        """Store ``value`` at ``key`` for ``ttl`` seconds (> 0: nothing is stored forever);
        whether it was stored.

        With ``only_if``, a compare-and-set: stored only while ``key`` still holds exactly
        ``only_if`` (a key holding nothing, or anything else, is left as it is, and False is
        returned), atomically, so that a value another process wrote since it was read is never
        overwritten. Without it, always stored (True).

        ``value`` must be a str and ``ttl`` a finite number > 0 (and ``only_if`` None or a
        str; ``key``, ``value`` and ``only_if`` text that UTF-8 can encode: no lone surrogate),
        else a :class:`ConfigurationError` before anything is stored or sent (never a
        :class:`~le_transport.errors.StateStoreError`: a caller's mistake is no outage); a
        ``ttl`` past :data:`MAX_TTL` is stored for :data:`MAX_TTL`.
        """
        ...

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        """Store ``value`` only if ``key`` holds nothing; whether it was stored (a lock).
        ``value`` and ``ttl`` are checked as :meth:`set` checks them.

        Idempotent: a ``key`` already holding exactly ``value`` answers True (its TTL left as
        it is). An add sent again after its reply was lost (a client retrying on a connection
        reset) finds the value it wrote, and must not take its own lock for another holder's;
        so a lock's value must be unique per holder and per attempt (every lock the library
        takes is)."""
        ...

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        """Remove ``key`` (only while it still holds ``only_if``, if given: a compare-and-delete,
        atomic); whether it did. ``only_if`` is checked as :meth:`set` checks it."""
        ...

    async def budget(
        self, key: str, policy: RetryBudget, *, deposits: int = 0, withdraw: bool = False
    ) -> bool:
        """Count ``deposits`` first attempts, then, if ``withdraw``, take one retry if the
        budget allows it. Returns whether the retry was taken (False when not asked).
        ``policy`` must be a :class:`RetryBudget` and ``deposits`` an int >= 0, else a
        :class:`ConfigurationError` before anything is counted or sent."""
        ...

    # Not part of the protocol (a store written to it before keeps working), but used when a
    # store has it: ``async def refund(self, key: str, policy: RetryBudget, *, age: float) ->
    # bool`` gives back one retry ``budget`` took ``age`` seconds ago that was never sent (the
    # overload guard's caller cancelled in the pause), from the slot it was counted in, only if
    # that slot is still in the window and counts one. MemoryStore, RedisStore and
    # FallbackStore have it.

    async def reserve(self, key: str, bucket: TokenBucket) -> float:
        """Take one token from the bucket (``rate``, ``burst``) at ``key``: seconds to wait.
        ``bucket`` must be a :class:`TokenBucket`, else a :class:`ConfigurationError`."""
        ...

    async def close(self) -> None:
        """Release connections. Idempotent."""
        ...
