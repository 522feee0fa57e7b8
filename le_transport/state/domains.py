"""The account's domain map (service -> host), shared by a fleet so it is resolved once.

Every process needs the Domain API's map, on every start and every reconnect; through a store the
fleet asks once per TTL. A map a process adopts from the store expires no later than the entry
(nor than its own provider's TTL); from then on it is refreshed in the background (the store
read first, then the Domain API), callers served it until the refresh lands: a host change
reaches every process within the shared TTL plus one refresh (at most its attempt timeout, 30 s
by default), later while the Domain API is down (stale-if-error). A map read back is validated
host by host: a store that was written by someone else cannot redirect credentials to a host
that is not a bare hostname.

A service the Domain API's answer named with a refused host is written as a marker: its value
is JSON ``null``, never a host (even where the writer kept a valid host of its own for it). A
process adopting the map treats it as its own fetch of that answer would (it keeps a valid
host it holds; without one, resolving the service raises
:class:`~le_transport.errors.HostileHostError`). A reader of an earlier release validates every
value as a host, so it ignores a map holding a marker as one that does not validate (a WARNING)
and asks the Domain API itself, as it does when the fleet has no map.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping

from .._checks import require_kind
from ..clock import Clock, RealClock
from ..errors import ConfigurationError, HostileHostError
from ..policies._validate import finite_number
from ..providers.domains import validate_host
from .fallback import guarded, stored_text
from .store import StateStore, check_seconds, check_store, state_key, store_clock

__all__ = ["SharedDomainMap"]

_log = logging.getLogger("le_transport.state")


class SharedDomainMap:
    """The domain map of ``account`` in ``store``, kept ``ttl`` seconds (600, as
    :class:`~le_transport.CsdsDomains` keeps its own: the fleet asks the Domain API once per
    ``ttl``, and a host change reaches every process within it plus one background refresh,
    later while the Domain API is down: see the module's docstring).

    A store that can fail (a :class:`~le_transport.state.RedisStore`, or a store of the
    caller's) is wrapped in a :class:`~le_transport.state.FallbackStore` running on ``clock``:
    the local copy a process falls back to expires, and its ``retry_interval`` runs, on that
    clock; an operation that does not answer within its ``op_timeout`` (2 s for a caller's
    store) is cut and taken for an outage (logged; the Domain API is asked instead of the
    store). Default: the store's own (its ``clock`` attribute, as a ``RedisStore`` made with
    ``clock=`` has), else the real clock. (A ``MemoryStore``, not a subclass of one, or a
    ``FallbackStore`` is used as it is, on its own clock.)"""

    def __init__(
        self,
        store: StateStore,
        *,
        account: str,
        ttl: float = 600.0,
        clock: Clock | None = None,
    ) -> None:
        check_store("SharedDomainMap", "store", store)
        check_seconds("SharedDomainMap", "ttl", ttl)
        if isinstance(clock, type):
            # A class passes the protocol check (its methods are there, unbound).
            raise ConfigurationError(
                f"SharedDomainMap.clock must be a Clock, got the class {clock.__name__}: pass "
                f"one ({clock.__name__}())"
            )
        require_kind(clock, Clock, owner="SharedDomainMap", field="clock")
        if clock is None:
            clock = store_clock(store) or RealClock()
        # Wrapped unless it cannot fail (guarded): a MemoryStore subclass too, as one whose
        # read or write hung held every resolve and reconnect for ever.
        self._store: StateStore = guarded(store, clock)
        self._account = account
        self._key = state_key(account, "domains")
        self._ttl = float(ttl)

    @property
    def ttl(self) -> float:
        """Seconds an entry this map writes is kept."""
        return self._ttl

    @property
    def account(self) -> str:
        """The account whose map this is (its key in the store)."""
        return self._account

    async def get(self) -> dict[str, str] | None:
        """The shared map, or None if there is none (or it does not validate)."""
        found = await self.get_with_life()
        return None if found is None else found[0]

    async def get_with_life(self) -> tuple[dict[str, str], float] | None:
        """The shared map and the seconds it has left to live in the store, or None if there
        is none (or it does not validate). A store that tells no life (Redis answers 0 for a
        key without an expiry, one set by something else; a caller's own store may answer
        ``inf``) is taken to give it ``ttl``: taken as 0 s left, every resolve read the store.
        A key in its last millisecond tells a little more than 0 (a RedisStore reads PTTL 0 so),
        and lives no longer than that.
        The services written as refused (see :meth:`read`) are not in it."""
        found = await self.read()
        return None if found is None else (found[0], found[2])

    async def read(self) -> tuple[dict[str, str], frozenset[str], float] | None:
        """The shared map as written: its hosts, the services it names whose host was refused
        (markers, never hosts), and the seconds it has left to live in the store (as
        :meth:`get_with_life` tells them); None if there is none, or it does not validate (a
        value that is neither a valid host nor a marker spoils the whole map)."""
        entry = await self._store.get(self._key)
        if entry is None:
            return None
        life = entry.ttl
        if not finite_number(life) or life <= 0:
            life = self._ttl
        try:
            # A MemoryStore is not wrapped: what a caller stored in it may be no str (bytes
            # decoded as UTF-8, as a FallbackStore does; anything else is damaged).
            text = stored_text(entry.value)
            if text is None:
                raise TypeError("not a str")
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise ValueError("not an object")
            hosts: dict[str, str] = {}
            refused: set[str] = set()
            for svc, host in raw.items():
                if host is None:
                    refused.add(str(svc))
                else:
                    hosts[str(svc)] = validate_host(host, service=str(svc), account=self._account)
        except (ValueError, TypeError, RecursionError, HostileHostError) as exc:
            # TypeError too: a value that is no str (a caller's store of its own) is damaged.
            _log.warning(
                "ignoring a shared domain map that does not validate: %s",
                type(exc).__name__,
                extra={"account": self._account},
            )
            return None
        return hosts, frozenset(refused), min(float(life), self._ttl)

    async def put(self, hosts: Mapping[str, str], *, refused: Iterable[str] = ()) -> None:
        """Share ``hosts`` (validated first) for ``ttl`` seconds, and the ``refused`` services
        (those the answer named with a refused host) as markers; a service in both is written
        with its host."""
        checked: dict[str, str | None] = {
            svc: validate_host(h, service=svc, account=self._account) for svc, h in hosts.items()
        }
        if isinstance(refused, str):
            # Iterated, it would mark each of its characters.
            raise ConfigurationError(
                "SharedDomainMap.put: refused must be an iterable of service names, not a str"
            )
        for svc in refused:
            if not isinstance(svc, str):
                raise ConfigurationError(
                    f"SharedDomainMap.put: a refused service must be a str, got "
                    f"{type(svc).__name__}"
                )
            checked.setdefault(svc, None)
        await self._store.set(self._key, json.dumps(checked, sort_keys=True), ttl=self._ttl)

    def __repr__(self) -> str:
        return f"SharedDomainMap(key={self._key!r})"
