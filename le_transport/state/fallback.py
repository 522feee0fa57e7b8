"""Shared state that never fails a call: a primary store (Redis) with a local fallback.

Redis down or slow is a fault like any other. :class:`FallbackStore` sends each operation to the
primary; when one fails (within the primary's own short timeout) it answers from the local
:class:`~le_transport.state.MemoryStore` instead, logs the switch once, and for ``retry_interval``
seconds does not even try the primary, so a dead Redis costs a call nothing. After that the next
operation tries the primary again; the first success logs that sharing resumed.

What going local trades away: while Redis is out, each process has its own session, budget and
pace again (N processes: N logins, N budgets) - the behaviour without Redis, never worse.

An error about one key's data (:class:`~le_transport.errors.StateDataError`: on Redis, a key of
another type, a budget field a script cannot count, a value that is no UTF-8, read on a client
with ``decode_responses``) is no outage: the store answered. That key alone is treated as
damaged (a read answers None, a conditional write or delete stores nothing, its budget or pace
runs locally), a warning names it once, and every other key stays shared.

What a read answers is a str, whatever the primary answered (:func:`stored_text`): bytes (a
caller's store on a Redis client without ``decode_responses``) are decoded as UTF-8, and any
other value (or bytes that are no UTF-8, or a str UTF-8 cannot encode: a lone surrogate, as a
client decoding with ``surrogateescape`` answers) makes the key read as damaged (None), as above.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .._checks import require_kind, utf8_encodable
from ..clock import Clock, RealClock, timeout_after
from ..errors import ConfigurationError, StateDataError, StateStoreError
from ..events import EventHooks, StateEvent, emit
from ..policies._validate import finite_number
from ..policies.budget import RetryBudget
from ..policies.pacing import TokenBucket
from .memory import MemoryStore
from .store import (
    MAX_TTL,
    Entry,
    StateStore,
    _no_only_if,
    check_bucket,
    check_budget,
    check_deposits,
    check_key,
    check_only_if,
    check_seconds,
    check_store,
    check_ttl,
    check_value,
    closed_error,
    store_clock,
    takes_only_if,
)

__all__ = ["DEFAULT_PRIMARY_TIMEOUT", "DEFAULT_RETRY_INTERVAL", "FallbackStore"]

_log = logging.getLogger("le_transport.state")

#: How long a process stays local after the primary failed before it tries the primary again.
DEFAULT_RETRY_INTERVAL = 1.0
#: How long one operation of a primary that keeps no bound of its own (a caller's store) may
#: take before it counts as an outage. A primary that tells its own ``op_timeout`` (a
#: :class:`~le_transport.state.RedisStore`) gets that and a second, so its own error comes first.
DEFAULT_PRIMARY_TIMEOUT = 2.0
#: How many damaged keys a FallbackStore remembers having warned of (then it starts over).
_DAMAGED_KEPT = 1024

T = TypeVar("T")

# What the primary's calls must answer (a bool is an int: a Lua script's 0/1 passes).
_BOOL: tuple[type, ...] = (int,)
_ENTRY: tuple[tuple[type, ...], str] = ((Entry, type(None)), "an Entry or None")
_ANY: tuple[tuple[type, ...], str] = ((object,), "anything")
_SECONDS: tuple[tuple[type, ...], str] = ((int, float), "a number of seconds")


class _KeyOps:
    """What :class:`FallbackStore` knows of one key's operations on their way: how many
    (``running``), how many of them are writes (``writing``: set, add, delete), and the number
    of the newest news of the key (``newest``): the latest write begun, or the latest read
    whose answer was copied locally.

    Every get, set, add and delete takes the next number of one counter as it begins. A read
    numbered ``n`` copies the primary's answer only if no write of the key was on its way as
    it began and ``newest`` is still below ``n`` when it is answered: no write of the key began
    since (a write changes the local copy as it begins, or decides it as it ends), and no read
    begun after it was copied already. A write takes ``newest`` as it begins, so an answer to
    a read begun before it is never copied over what it wrote. Per key: a write of another
    key on its way stops no copy. An answer dropped so may be news the local copy misses until
    the next read of the key, never an older value copied over a newer one. The record is
    dropped when the key's last operation ends: any later one is numbered above everything
    before it."""

    __slots__ = ("newest", "running", "writing")

    def __init__(self) -> None:
        self.running = 0
        self.writing = 0
        self.newest = 0


def _from_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is a timeout's, or was raised for a cancellation: a
    :class:`TimeoutError`, or a :class:`asyncio.CancelledError` in its chain of causes and
    contexts (a client's ``raise ConnectionError(...) from None`` in its handler of the
    cancellation keeps the context)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 32:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        if isinstance(current, TimeoutError | asyncio.CancelledError):
            return True
        seen.add(id(current))
        todo += (current.__cause__, current.__context__)
    return False


class FallbackStore:
    """A :class:`~le_transport.state.StateStore` over ``primary`` that falls back to ``local``.

    - ``primary``: the shared store (e.g. :class:`~le_transport.state.RedisStore`). Its
      failures are outages: :class:`StateStoreError`, as the protocol says, or any other
      exception a caller's own store lets through (its client's connection error), logged by
      type; only a ``TypeError`` or an answer of the wrong type where it is read (the
      protocol not kept: a compare-and-set answering None) and a ``ConfigurationError`` (the
      arguments refused) are raised, as a ``ConfigurationError``.
    - ``local``: where state lives while the primary is out (a fresh ``MemoryStore``).
    - ``clock``: what ``retry_interval`` and the local store run on; by default the primary's
      own (its ``clock`` attribute: a ``MemoryStore``'s, a ``RedisStore`` made with
      ``clock=``), else the real clock, as :class:`~le_transport.state.SharedSession` picks it.
    - ``retry_interval``: seconds on ``clock`` before a failed primary is tried again.
    - ``op_timeout``: seconds one operation of the primary may take (on the primary's own
      ``clock`` where it has one, as a ``RedisStore`` has, else on ``clock``); past it the
      operation is cancelled and taken for an outage (state goes local, as for any failure),
      so that a store that hangs (a caller's own, whose client has no timeout) hangs no call.
      Logged as such (a WARNING that it did not answer in time) also when the store's client
      turns the cancellation into an error of its own.
      Default: the primary's own ``op_timeout`` and a second, where it tells one (a
      :class:`~le_transport.state.RedisStore`'s, whose own timeout then answers first), else
      :data:`DEFAULT_PRIMARY_TIMEOUT` (2 s). A finite number > 0, else a
      :class:`ConfigurationError`.
    - ``hooks``: ``on_state`` gets ``state_store_fallback`` and ``state_store_resumed``.

    Writes (``set``) also go to ``local``, and so does what the primary answers a ``get``
    (deleted locally where it holds nothing), so that what this process last shared or read is
    still there if the primary goes away: the fleet's value as this process last knew it,
    never its own older write in place of a newer one it read since, nor an answer that came
    back late in place of a newer one (see :meth:`get`).

    A primary that does not keep to the protocol's signatures is a mistake in the code, not an
    outage: a TypeError from calling it is raised as a :class:`ConfigurationError` (the
    TypeError its ``__cause__``), never absorbed by going local (that would hide it for ever)
    nor passed on raw into a caller's request. A primary whose ``set`` takes no ``only_if``
    (written to the protocol before compare-and-set) serves unconditional writes as before; a
    conditional one asked of it is a :class:`ConfigurationError` saying what to add, before
    anything is sent (the overload guard refuses such a store when it is made).

    A :class:`~le_transport.errors.StateDataError` from the primary (Redis answered that one
    key's data cannot be worked on: ``WRONGTYPE``, a budget field that is no number, a value
    that is no UTF-8, read on a client with ``decode_responses``) is that key's damage, not
    an outage: :meth:`get` answers None for it, a conditional ``set``, an ``add`` or a
    compare-and-delete answers False, ``budget`` and ``reserve`` run locally for that key; a
    WARNING names the key (once, until a write over it succeeds), and every other key stays
    shared.

    What :meth:`get` answers holds a str, as the protocol says, whatever the primary answered
    (:func:`stored_text`): bytes are decoded as UTF-8 (a caller's store on a Redis client
    without ``decode_responses``: read as they are, every reader failed on them, or reused
    them as a compare-and-set's ``only_if``, refused), and any other value, bytes that are
    no UTF-8, or a str UTF-8 cannot encode (a lone surrogate: a client decoding with
    ``surrogateescape``), is that key's damage too: :meth:`get` answers None for it (a
    WARNING names the key's kind and the value's type, never the value, once, until a write
    over it succeeds).

    Any other exception from the primary is taken for an outage, whatever its type: a
    caller's own store may fail with its client's error rather than a ``StateStoreError``.
    One that is not a ``StateStoreError`` may as well be a bug in that store, so it is logged
    as an ERROR with where it was raised (its frames, not its text, which may quote a stored
    value), once when state goes local and again each time a retry of the primary meets it,
    so that it cannot hide behind local state.
    """

    def __init__(
        self,
        primary: StateStore,
        *,
        local: MemoryStore | None = None,
        clock: Clock | None = None,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
        hooks: EventHooks | None = None,
        op_timeout: float | None = None,
    ) -> None:
        check_store("FallbackStore", "primary", primary)
        self._retry_interval = check_seconds("FallbackStore", "retry_interval", retry_interval)
        if op_timeout is None:
            own = getattr(primary, "op_timeout", 0)
            op_timeout = (
                min(float(own) + 1.0, MAX_TTL)
                if finite_number(own) and own > 0
                else DEFAULT_PRIMARY_TIMEOUT
            )
        self._op_timeout = min(check_seconds("FallbackStore", "op_timeout", op_timeout), MAX_TTL)
        # Checked here, by name: a wrong local failed at the first write, and wrong hooks
        # raised AttributeError from inside _call when the primary failed, turning the outage
        # this store exists to absorb into a failed call.
        for name, value, kind in (
            ("local", local, MemoryStore),
            ("clock", clock, Clock),
            ("hooks", hooks, EventHooks),
        ):
            require_kind(value, kind, owner="FallbackStore", field=name)
        self._primary = primary
        # Whether the primary's set takes only_if (None: its signature could not be read).
        self._conditional = takes_only_if(primary.set) is not False
        # By default the primary's own clock (a MemoryStore's, a RedisStore made with clock=):
        # the local mirror keeps the primary's TTLs, so it expires them on the same time.
        self._clock = clock if clock is not None else store_clock(primary) or RealClock()
        # op_timeout runs where the primary's time runs: a RedisStore's own clock (a real one,
        # while this store's may be a test's virtual clock, which would jump past a wait on
        # the wire at once), else this store's.
        self._op_clock: Clock = store_clock(primary) or self._clock
        self._local = MemoryStore(self._clock) if local is None else local
        self._hooks = EventHooks() if hooks is None else hooks
        self._down = False
        self._next_try = 0.0
        #: Every get, set, add and delete takes the next number (see _KeyOps): a primary's
        #: answer to a get is copied locally only if it is still the newest news of its key.
        self._seq = 0
        #: The keys with an operation on its way, and what the mirror needs of each (dropped
        #: when the key's last operation ends: a later one's number is above all before it).
        self._ops: dict[str, _KeyOps] = {}
        # The damaged keys warned of (StateDataError), until a write over one succeeds.
        self._damaged: dict[str, None] = {}
        #: How many times the store switched to local state, and back.
        self.fallbacks = 0
        self.recoveries = 0
        self._closed = False

    def _check_call(self, op: str, key: object) -> None:
        """Before an operation: the store is open and ``key`` a str. A caller's error, raised
        as it is: never sent to the primary, nor taken for an outage."""
        if self._closed:
            raise closed_error("FallbackStore", op)
        check_key(key)

    @property
    def sharing(self) -> bool:
        """Whether the last operation went through the primary."""
        return not self._down

    @property
    def clock(self) -> Clock:
        """The clock ``retry_interval`` and the local store run on."""
        return self._clock

    @property
    def op_timeout(self) -> float:
        """Seconds one operation of the primary may take before it counts as an outage."""
        return self._op_timeout

    @property
    def primary(self) -> StateStore:
        """The shared store."""
        return self._primary

    @property
    def local(self) -> MemoryStore:
        """The fallback store."""
        return self._local

    async def _call(
        self,
        op: str,
        key: str,
        shared: Callable[[], Awaitable[T]],
        local: Callable[[], Awaitable[T]],
        returns: tuple[tuple[type, ...], str] = (_BOOL, "a bool"),
        damaged: Callable[[], Awaitable[T]] | None = None,
    ) -> T:
        """``shared()`` on the primary, checked against ``returns``; ``local()`` while it is
        out; ``damaged()`` (default ``local()``) when it answers that ``key``'s data is
        damaged (StateDataError: no outage, see the class)."""
        if self._down and self._clock.now() < self._next_try:
            return await local()
        task = _running_task()
        # op_timeout, where something can cut the operation: not in a coroutine driven by
        # hand, outside any task (a test's step-by-step scheduler).
        bound = None if task is None else timeout_after(self._op_clock, self._op_timeout)
        cancelling = task.cancelling() if task is not None else 0
        try:
            try:
                if bound is None:
                    result = await shared()
                else:
                    async with bound:
                        result = await shared()
            except Exception:
                if task is not None and task.cancelling() > cancelling:
                    # The caller's cancellation (op_timeout's is taken back by now), which the
                    # primary turned into an error of its own (a client dropping the connection
                    # it was cancelled on): the caller's still, not an outage answered locally
                    # as if nothing had been asked to stop.
                    raise asyncio.CancelledError from None
                raise
        except StateDataError as exc:
            self._damaged_key(op, key, exc)
            return await (local if damaged is None else damaged)()
        except TypeError as exc:
            # Called as the protocol says and refused (or not awaitable): the primary does not
            # keep to it. Only the type is shown: its text may hold a stored value.
            raise ConfigurationError(
                f"FallbackStore.primary: {type(self._primary).__name__}.{op} raised TypeError "
                "when called as the StateStore protocol says (see StateStore."
                f"{op} for its signature); the TypeError is the __cause__"
            ) from exc
        except ConfigurationError:
            raise  # the caller's arguments, refused by the primary: no outage
        except Exception as exc:
            # StateStoreError is the protocol's outage; a caller's own store may fail with its
            # client's error instead (redis-py's ConnectionError is no OSError). Either is
            # taken for an outage: state goes local, which keeps every process working, and
            # the line below names the type. Raised through here, it failed the caller's call.
            if bound is not None and bound.expired and _from_cancellation(exc):
                # Cut by op_timeout: a store that hangs is out, as one that fails is. The cut's
                # TimeoutError, or the store's own error raised for the cancellation (a client
                # dropping the connection it was cancelled on): ours either way, no bug of the
                # store's. (An error with no cancellation behind it is the store's own.)
                exc = StateStoreError(
                    f"{type(self._primary).__name__}.{op} did not answer within "
                    f"{self._op_timeout:g} s (FallbackStore.op_timeout)"
                )
            elif not isinstance(exc, StateStoreError):
                # Possibly a bug in the caller's store: its traceback, at every retry that
                # meets it (every retry_interval at most), never only a type logged once.
                # Where it was raised, frame by frame, but not its text: a store's values are
                # shared sessions and the like, and an exception may quote one.
                _log.error(
                    "%s.%s failed with %s, which is not a StateStoreError: taken for an "
                    "outage (state stays local), but it may be a bug in the store; raised "
                    "at:\n%s",
                    type(self._primary).__name__,
                    op,
                    type(exc).__name__,
                    "".join(traceback.format_tb(exc.__traceback__)).rstrip(),
                    extra={"store": repr(self._primary), "operation": op},
                )
                exc = StateStoreError(
                    f"{type(self._primary).__name__}.{op} failed with {type(exc).__name__} "
                    "(not a StateStoreError: taken for an outage)"
                )
            self._next_try = self._clock.now() + self._retry_interval
            if not self._down:
                self._down = True
                self.fallbacks += 1
                _log.warning(
                    "shared state unavailable, each process uses its own until it returns: %s",
                    exc,
                    extra={"store": repr(self._primary), "operation": op},
                )
                emit(
                    self._hooks.on_state,
                    StateEvent("state_store_fallback", repr(self._primary), {"operation": op}),
                )
            return await local()
        kinds, expected = returns
        if not isinstance(result, kinds):
            # A primary answering outside the protocol (a set with only_if that returns None):
            # read as "not stored", every compare-and-set would fail for ever, and the fleet's
            # breaker would never send its probe. The protocol not kept, as a TypeError is.
            raise ConfigurationError(
                f"FallbackStore.primary: {type(self._primary).__name__}.{op} returned a "
                f"{type(result).__name__}, not {expected} (see StateStore.{op})"
            )
        if self._damaged and op == "set":
            # Written over (a SET replaces a key of any type): warned of again if damaged anew.
            self._damaged.pop(key, None)
        if self._down:
            self._down = False
            self.recoveries += 1
            _log.warning(
                "shared state is back; sharing resumed",
                extra={"store": repr(self._primary), "operation": op},
            )
            emit(
                self._hooks.on_state,
                StateEvent("state_store_resumed", repr(self._primary), {"operation": op}),
            )
        return result

    def _damaged_key(self, op: str, key: str, exc: StateDataError) -> None:
        """Warn that the primary answered ``key``'s data is damaged, once per key (until a
        write over it succeeds): every sync of the guard reads it again. The key is named;
        no value is (the error's text is the store's own, which quotes none)."""
        if key in self._damaged:
            return
        if len(self._damaged) >= _DAMAGED_KEPT:
            self._damaged.clear()
        self._damaged[key] = None
        _log.warning(
            "shared state at key %r cannot be used (%s): that key is treated as damaged (kept "
            "locally by each process); every other key is still shared",
            key,
            exc,
            extra={"store": repr(self._primary), "operation": op, "key": key},
        )

    async def get(self, key: str) -> Entry | None:
        """From the primary; locally while it is out; None if its data there is damaged.

        What the primary answers is copied locally (with its TTL; deleted there when the
        primary holds nothing, or data it cannot read), so that during a later outage this
        process reads the fleet's value as it last saw it, not its own last write: a process
        that adopted the fleet's new session read back its own old one, refreshed it (a 401),
        dropped the session it held and logged in again.

        Only the newest news of the key is copied: not an answer that may predate what the
        local copy holds (a write of the key on its way as the read began, or begun since),
        nor one to a read begun before another read of the key whose answer was copied
        already (answers that come back out of order: the older is dropped)."""
        self._check_call("get", key)
        ops, seq = self._begin(key, write=False)
        try:
            # Read before the primary is asked: a write of the key on its way now may land
            # after the primary answered, which the answer then predates.
            busy = ops.writing > 0
            entry, shared = await self._get(key)
            if shared and not busy and ops.newest < seq:
                # The newest news of the key (see _KeyOps).
                ops.newest = seq
                await self._mirror(key, entry)
        finally:
            self._end(key, ops, write=False)
        return entry

    async def _get(self, key: str) -> tuple[Entry | None, bool]:
        """The answer to a get (as a str: :meth:`_as_text`), and whether the primary gave it."""
        shared = True

        async def local() -> Entry | None:
            nonlocal shared
            shared = False
            return await self._local.get(key)

        async def damaged() -> Entry | None:
            # An answer too (the key's data is damaged there): nothing to read, here as well.
            return None

        entry = await self._call("get", key, lambda: self._primary.get(key), local, _ENTRY, damaged)
        if entry is not None and (type(entry.value) is not str or not utf8_encodable(entry.value)):
            # A caller's store (primary, or a local MemoryStore of its own) answering no str,
            # or text no store takes back (a lone surrogate: a client's surrogateescape).
            entry = self._as_text(key, entry)
        return entry, shared

    def _begin(self, key: str, *, write: bool) -> tuple[_KeyOps, int]:
        """An operation on ``key`` begins: its number, and the key's record."""
        self._seq += 1
        ops = self._ops.get(key)
        if ops is None:
            ops = self._ops[key] = _KeyOps()
        ops.running += 1
        if write:
            ops.writing += 1
            ops.newest = self._seq
        return ops, self._seq

    def _end(self, key: str, ops: _KeyOps, *, write: bool) -> None:
        """An operation on ``key`` ended (answered, failed or cancelled)."""
        ops.running -= 1
        if write:
            ops.writing -= 1
        if not ops.running and self._ops.get(key) is ops:
            del self._ops[key]

    def _as_text(self, key: str, entry: Entry) -> Entry | None:
        """``entry`` with its value as a str (:func:`stored_text`), or None (warned of once per
        key, as :meth:`_damaged_key`) if it holds none: every reader failed on such a value with
        a raw TypeError, and bytes reused as a compare-and-set's ``only_if`` were refused."""
        text = stored_text(entry.value)
        if text is not None:
            return Entry(text, entry.ttl)
        if key not in self._damaged:
            if len(self._damaged) >= _DAMAGED_KEPT:
                self._damaged.clear()
            self._damaged[key] = None
            # The key's kind and the value's type only: the value may be anything (a session's
            # bytes), and the key names an account and a user.
            what = (
                "a str UTF-8 cannot encode (a lone surrogate)"
                if isinstance(entry.value, str)
                else f"a {type(entry.value).__name__} value, not a str (nor UTF-8 bytes)"
            )
            _log.warning(
                "shared state of kind %r answered %s: that key is treated as damaged (kept "
                "locally by each process); every other key is still shared",
                _kind_of(key),
                what,
                extra={"store": repr(self._primary), "operation": "get", "key": key},
            )
        return None

    async def _mirror(self, key: str, entry: Entry | None) -> None:
        """Keep locally what the primary answered for ``key``: a value for its TTL; nothing
        where it has nothing, or nothing a TTL can keep (no expiry reads as 0; a caller's store
        may answer inf: the readers take that for damaged). ``entry`` holds a str
        (:meth:`_as_text`)."""
        if entry is not None and finite_number(entry.ttl) and entry.ttl > 0:
            await self._local.set(key, entry.value, ttl=entry.ttl)
            return
        await self._local.delete(key)

    async def set(self, key: str, value: str, *, ttl: float, only_if: str | None = None) -> bool:
        """To the primary (and locally, as a copy for a later outage); with ``only_if``, a
        compare-and-set on the primary (locally while it is out), copied locally if it stored.
        """
        self._check_call("set", key)
        ops, _ = self._begin(key, write=True)
        try:
            return await self._set(key, value, ttl=ttl, only_if=only_if)
        finally:
            self._end(key, ops, write=True)

    async def _set(self, key: str, value: str, *, ttl: float, only_if: str | None) -> bool:
        if only_if is None:
            # The local store checks value and TTL first, so a bad one never reaches the primary.
            await self._local.set(key, value, ttl=ttl)
            await self._call(
                "set",
                key,
                lambda: self._primary.set(key, value, ttl=ttl),
                lambda: self._local.set(key, value, ttl=ttl),
                # Not read: a store written before only_if (its set returns None) still fits.
                _ANY,
            )
            return True
        # Checked here, whatever the primary: a caller's mistake, never taken for an outage.
        check_ttl(ttl)
        check_value(value)
        check_only_if(only_if)
        if not self._conditional:
            raise ConfigurationError(_no_only_if("FallbackStore", "primary", self._primary))
        shared = True

        async def local() -> bool:
            nonlocal shared
            shared = False
            return await self._local.set(key, value, ttl=ttl, only_if=only_if)

        stored = await self._call(
            "set",
            key,
            lambda: self._primary.set(key, value, ttl=ttl, only_if=only_if),
            local,
            damaged=_not_stored,
        )
        if stored and shared:
            # What the primary now holds, whatever the local copy held (the primary decided).
            await self._local.set(key, value, ttl=ttl)
        return stored

    async def add(self, key: str, value: str, *, ttl: float) -> bool:
        """Set-if-absent on the primary; locally while it is out."""
        self._check_call("add", key)
        ops, _ = self._begin(key, write=True)
        try:
            return await self._add(key, value, ttl=ttl)
        finally:
            self._end(key, ops, write=True)

    async def _add(self, key: str, value: str, *, ttl: float) -> bool:
        # Checked here, whatever the primary: a caller's bad value must raise as it is, not
        # come back from the primary as a StateStoreError taken for an outage.
        check_ttl(ttl)
        check_value(value)
        return await self._call(
            "add",
            key,
            lambda: self._primary.add(key, value, ttl=ttl),
            lambda: self._local.add(key, value, ttl=ttl),
            damaged=_not_stored,
        )

    async def delete(self, key: str, *, only_if: str | None = None) -> bool:
        """Delete on the primary and locally; whether the primary deleted (the local store,
        only while the primary is out: its copy is no answer for the fleet's key)."""
        self._check_call("delete", key)
        ops, _ = self._begin(key, write=True)
        try:
            return await self._delete(key, only_if=only_if)
        finally:
            self._end(key, ops, write=True)

    async def _delete(self, key: str, *, only_if: str | None) -> bool:
        check_only_if(only_if)
        # The local copy first (a copy: deleting it where it matched is harmless either way).
        here = await self._local.delete(key, only_if=only_if)
        shared = True

        async def local() -> bool:
            nonlocal shared
            shared = False
            return here

        there = await self._call(
            "delete",
            key,
            lambda: self._primary.delete(key, only_if=only_if),
            local,
            # Read only for a compare-and-delete: an unconditional one may answer None.
            (_BOOL, "a bool") if only_if is not None else _ANY,
            _not_stored,
        )
        if not shared:
            return here
        if only_if is None and not isinstance(there, int):
            # A store written before delete answered a bool (None): the local answer.
            return here
        # What the primary did, which decides: "here or there" answered True for a
        # compare-and-delete that deleted nothing shared (another process's value there, the
        # stale local copy matching), and the caller took the shared lock or trip for gone.
        return bool(there)

    async def budget(
        self, key: str, policy: RetryBudget, *, deposits: int = 0, withdraw: bool = False
    ) -> bool:
        """The fleet's budget; this process's own while the primary is out.

        First attempts and granted retries are also counted locally, so that the local budget
        is warm (not down to its floor) when it has to take over. While a process is local, its
        retries are bounded by its own share only: the fleet's bound then holds per process.
        """
        self._check_call("budget", key)
        check_budget(policy)  # a caller's errors, never taken for an outage
        deposits = check_deposits(deposits)
        if deposits:
            await self._local.budget(key, policy, deposits=deposits)
        shared = True

        async def local() -> bool:
            nonlocal shared
            shared = False
            return await self._local.budget(key, policy, withdraw=withdraw)

        taken = await self._call(
            "budget",
            key,
            lambda: self._primary.budget(key, policy, deposits=deposits, withdraw=withdraw),
            local,
        )
        if taken and shared:
            # The local budget counts every retry of this process, so that while it stands
            # in for the fleet's it does not grant again what the fleet already granted.
            self._local.note_retry(key, policy)
        return taken

    async def refund(
        self, key: str, policy: RetryBudget, *, age: float, shared: bool = True
    ) -> bool:
        """Give back one retry :meth:`budget` took ``age`` seconds ago that was never sent:
        to the local budget (which counts every retry of this process) and, if ``shared`` (the
        retry was taken from the primary: :attr:`sharing` right after the withdrawal), to the
        primary, if it has a ``refund`` of its own (:class:`~le_transport.state.RedisStore`
        does) and is not out. Whether the primary (or, with ``shared`` False, the local budget)
        gave it back: each gives back only from the slot it was counted in, while that slot is
        in the window and counts one. A primary out or failing keeps its count, which ages out
        with its slot (stricter, never looser)."""
        self._check_call("refund", key)
        check_budget(policy)
        age = check_seconds("FallbackStore.refund", "age", age, zero=True)
        here = self._local._refund_unchecked(key, policy, age)
        give_back = getattr(self._primary, "refund", None) if shared else None
        if give_back is None:
            return here and not shared

        async def kept() -> bool:
            return False

        return await self._call("refund", key, lambda: give_back(key, policy, age=age), kept)

    async def reserve(self, key: str, bucket: TokenBucket) -> float:
        """The fleet's bucket; this process's own while the primary is out."""
        self._check_call("reserve", key)
        check_bucket(bucket)
        return await self._call(
            "reserve",
            key,
            lambda: self._primary.reserve(key, bucket),
            lambda: self._local.reserve(key, bucket),
            _SECONDS,
        )

    async def close(self) -> None:
        """Close both stores; every later operation raises
        :class:`~le_transport.errors.StateStoreError` ("the store is closed"), as a closed
        :class:`~le_transport.state.RedisStore` does (never taken for an outage and answered
        locally: a store used after its close is a bug). Idempotent."""
        self._closed = True
        await self._primary.close()
        await self._local.close()

    def __repr__(self) -> str:
        return f"FallbackStore({self._primary!r}, sharing={self.sharing})"


def guarded(store: StateStore, clock: Clock, hooks: EventHooks | None = None) -> StateStore:
    """``store`` as the library's shared-state users hold it: a plain :class:`MemoryStore`
    (which cannot fail or hang) or a :class:`FallbackStore` as it is; any other (a Redis store,
    a caller's own, a ``MemoryStore`` subclass, which is a caller's code too) wrapped in a
    FallbackStore on ``clock``, so that a failure falls back, never raises, and an operation
    that never answers is cut at its ``op_timeout``."""
    if type(store) is MemoryStore or isinstance(store, FallbackStore):
        return store
    return FallbackStore(store, clock=clock, hooks=hooks)


def _running_task() -> asyncio.Task[object] | None:
    """The task running now, or None (no loop running, or a coroutine driven by hand)."""
    try:
        return asyncio.current_task()
    except RuntimeError:  # no loop running
        return None


def stored_text(value: object) -> str | None:
    """A value a store answered, as the library's readers take it: a str as it is, if UTF-8
    can encode it; bytes (a caller's store on a Redis client without ``decode_responses``)
    decoded as UTF-8, what every client writes a str as; None (damaged) for anything else,
    bytes that are no UTF-8, or a str UTF-8 cannot encode (see below).

    Strict, unlike :class:`~le_transport.state.RedisStore`'s own decoding (U+FFFD for a bad
    byte): a value read as damaged is None here, so that a writer replaces it unconditionally,
    where a lossy text, compared as a compare-and-set's ``only_if``, matched the stored bytes
    never, and kept the damaged entry for its whole TTL. Nor is anything else made a str
    (``str(5)``): it was never a value of the library's. A str UTF-8 cannot encode (a lone
    surrogate: a client decoding with ``surrogateescape``, a caller's store) is damaged too:
    no store takes it back (:func:`~le_transport.state.store.check_value`), so a mirror or a
    writer comparing it failed with a caller's ConfigurationError."""
    if isinstance(value, str):
        return value if utf8_encodable(value) else None
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def _kind_of(key: str) -> str:
    """The kind of state at ``key`` (``session``, ``domains``, ``breaker``...: the part after the
    account, as :func:`~le_transport.state.state_key` makes it), shown as it is escaped there;
    "unknown" for a key made otherwise."""
    parts = key.split(":", 2)
    return parts[1] if len(parts) > 1 and parts[1] else "unknown"


async def _not_stored() -> bool:
    """What a conditional write, an add or a compare-and-delete answers for a damaged key: not
    stored (the key holds something else than what was compared, or than nothing)."""
    return False
