"""The Domain API (CSDS) provider: an account's service map, cached, shared and stale-if-error.

The guide's Step 2: every LiveEngage API's host comes from the Domain API, per account and
service name. :class:`CsdsDomains` fetches the account's whole map once
(``GET {csds}{prefix}/account/{id}/service/baseURI.json?version=1.0``) and caches it for ``ttl``
seconds on the injected clock (LivePerson's own SDKs cache it for 60 s and 600 s).

- Concurrent callers share one fetch (single flight): a reconnect storm is one request.
- The very first fetch follows the request schedule; when it still fails, the error is a
  :class:`~le_transport.errors.DomainResolutionError` naming the account.
- Once a map exists, its expiry makes no caller wait (stale-while-revalidate): the caller that
  finds it expired starts the refresh in the background (the single flight's run, which
  :meth:`CsdsDomains.close` stops) and is served the cached map at once, as every caller is
  until the refresh lands; a Domain API that hangs held every call and reconnect up to the
  refresh's 30 s attempt timeout. Only a caller without a map, one asking for a service the
  stale map has no valid host for (a service added since, a host fixed since), and one after
  :meth:`~CsdsDomains.invalidate` or in :meth:`~CsdsDomains.refresh` wait for the refresh.
- A failed refresh keeps serving the map (stale-if-error) and logs so: the Domain API sits on
  every reconnect path, and its outage must not stop one. Such a refresh is a single attempt
  (no 5/10/15 s schedule in front of a reconnect), and it is not tried again for
  ``stale_retry`` seconds. By default there is no bound on a map's age: a map is served through
  an outage however long, a refresh tried again each ``stale_retry`` seconds. With
  ``max_stale`` set, a map expired longer ago than that is no longer served: a caller waits for
  a refresh (one attempt), and while every refresh fails, :meth:`~CsdsDomains.resolve` raises
  :class:`~le_transport.errors.DomainResolutionError` saying how old the map is and why the
  last refresh failed (logged once, as an ERROR, until a refresh succeeds). A refresh
  answering a map without one valid host (empty, or every entry malformed or hostile) counts
  as failed: installed, it would fail every service. A refresh with a map cached says it
  handles an outage itself, so the retry middleware logs its giving up as a WARNING that says
  the last good map is served, not an ERROR, and its give-up event has ``handled_by_caller``:
  nothing failed for a caller (a token fetched early, say); unless the map is past
  ``max_stale`` when the refresh gives up (decided then, not when it starts: one that started
  within the bound and gave up past it serves nothing).
- Every host is validated (:func:`~le_transport.providers.domains.validate_host`). A hostile
  entry does not spoil the others: resolving that one service raises
  :class:`~le_transport.errors.HostileHostError`, so no request, and no credential, goes there.
  A service listed more than once keeps its first valid host (a WARNING names it if another
  differs), never replaced by a refused one.
- A login answer that carries the map (``csdsCollectionResponse``) warms the cache
  (:meth:`CsdsDomains.warm`): its valid entries are merged into the cached map, and a map
  without one valid host is ignored, as such a refresh is.
- An answer is bounded: one listing more than :data:`MAX_BASE_URIS` entries is malformed, and
  the hostile entries of one answer are logged as one WARNING (a count and the first few
  services), never one line each.

The CSDS host, path prefix (``/api`` in the docs, ``/csdr`` in some SDKs) and scheme are
configurable, so the whole stack can point at a local server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import attrs

from ..errors import (
    ConfigurationError,
    DomainResolutionError,
    EngineClosed,
    HostileHostError,
    RequestError,
    StateStoreError,
    UnknownServiceError,
)
from ..events import StateEvent
from ..policies._validate import finite_number
from ..policies.retry import DEFAULT_ATTEMPT_TIMEOUT, RetryPolicy
from ._flight import SingleFlight, _consume
from ._http import (
    ProviderHttp,
    emit_state,
    provider_url,
    require_attached,
    require_option,
    split_host,
    validate_account,
)
from .domains import require_service, validate_host

if TYPE_CHECKING:
    from ..state.domains import SharedDomainMap

__all__ = [
    "DEFAULT_CSDS_HOST",
    "DEFAULT_CSDS_TTL",
    "DEFAULT_STALE_RETRY",
    "MAX_BASE_URIS",
    "CsdsDomains",
    "parse_base_uris",
]

_log = logging.getLogger("le_transport.domains")

#: The Domain API host in LivePerson's docs (its SDKs also use ``adminlogin.liveperson.net``).
DEFAULT_CSDS_HOST = "api.liveperson.net"
#: How long a fetched map is served before it is fetched again (LivePerson's Functions client).
DEFAULT_CSDS_TTL = 600.0
#: After a failed refresh, how long the stale map is served before the Domain API is asked again.
DEFAULT_STALE_RETRY = 30.0
#: What a refresh does when it meets an outage, in the retry middleware's give-up line.
_STALE_FALLBACK = "the last good map is served"
#: The most entries a Domain API answer may list: LivePerson's maps have a few hundred services
#: at most. An answer with more is malformed (or hostile) and is refused whole.
MAX_BASE_URIS = 2_000
#: How many services a log line names (the rest are counted).
_NAMED = 5
#: How many services an unknown service's error lists (the rest are counted).
_LISTED = 50
#: How much of one service name a log line or an error message shows.
_NAME_SHOWN = 60
#: How much of the first refusal's message the summary line shows.
_REASON_SHOWN = 300

# Segments of letters, digits, '.', '_', '-', none made only of dots: "." and ".." are dot
# segments, which URL resolution removes ("/api/.." would ask the Domain API at another path).
_PREFIX = re.compile(r"(/(?!\.+(?:/|\Z))[A-Za-z0-9._-]+)+")

Entry = str | HostileHostError


def parse_base_uris(payload: object, *, account: str) -> dict[str, Entry]:
    """``{service: host}`` from a Domain API answer (``{"baseURIs": [...]}``).

    A hostile host becomes the :class:`HostileHostError` to raise when that service is asked
    for; the hostile entries of one answer are logged together, as one WARNING that counts them
    and names the first few services (one line per entry would let an answer write tens of
    thousands of lines, at every fetch and every login that carries the map). Entries that are
    not ``{"service": str, "baseURI": ...}`` are skipped. Only the first :data:`MAX_BASE_URIS`
    entries are read; the rest are dropped, and counted in a WARNING (:class:`CsdsDomains`
    refuses such an answer whole, as malformed). Raises :class:`DomainResolutionError` when
    there is no ``baseURIs`` list at all.
    """
    uris = _base_uris(payload, account)
    return _entries(uris[:MAX_BASE_URIS], account, dropped=max(0, len(uris) - MAX_BASE_URIS))


def _parse_answer(payload: object, *, account: str) -> dict[str, Entry]:
    """:func:`parse_base_uris` for the provider's own use: an answer listing more than
    :data:`MAX_BASE_URIS` entries is a :class:`DomainResolutionError` (malformed), not a map
    cut short, whose missing services would be reported as unknown."""
    uris = _base_uris(payload, account)
    if len(uris) > MAX_BASE_URIS:
        raise DomainResolutionError(
            f"the Domain API answer for account {account!r} lists {len(uris)} entries, more "
            f"than the {MAX_BASE_URIS} an answer may have; refused as malformed",
            account=account,
        )
    return _entries(uris, account, dropped=0)


def _base_uris(payload: object, account: str) -> list[object]:
    uris = payload.get("baseURIs") if isinstance(payload, dict) else None
    if not isinstance(uris, list):
        raise DomainResolutionError(
            f"the Domain API answer for account {account!r} has no 'baseURIs' list",
            account=account,
        )
    return uris


def _entries(uris: list[object], account: str, *, dropped: int) -> dict[str, Entry]:
    """``{service: host or refusal}``: a service listed more than once keeps its first valid
    host (a refused or a conflicting duplicate never replaces it), and only a service without
    one keeps its (first) refusal. Duplicates with different hosts are logged, as one WARNING
    naming the first few services."""
    entries: dict[str, Entry] = {}
    # Dicts for their order: each service once.
    conflicting: dict[str, None] = {}
    for item in uris:
        if not isinstance(item, dict):
            continue
        service = item.get("service")
        if not isinstance(service, str) or not service:
            continue
        known = entries.get(service)
        try:
            host = validate_host(item.get("baseURI"), service=service, account=account)
        except HostileHostError as exc:
            if known is None:
                entries[service] = exc
            elif isinstance(known, str):
                # A refused host beside a valid one: named among the duplicates (the service
                # resolves, so it is not among the services that raise).
                conflicting[service] = None
            continue
        if known is None or isinstance(known, HostileHostError):
            if known is not None:
                conflicting[service] = None
            entries[service] = host
        elif not _same_https_host(known, host):
            conflicting[service] = None
    hostile = [(svc, e) for svc, e in entries.items() if isinstance(e, HostileHostError)]
    if hostile:
        _log_hostile(account, hostile)
    if conflicting:
        services = list(conflicting)
        _log.warning(
            "Domain API for account %s: %d service(s) listed more than once with different "
            "or refused hosts (%s); the first valid host of each is used",
            account,
            len(services),
            _names(services),
            extra={
                "account": account,
                "duplicates": len(services),
                "services": [name[:_NAME_SHOWN] for name in services[:_NAMED]],
            },
        )
    if dropped:
        _log.warning(
            "Domain API for account %s: the answer lists %d entries more than the %d read; "
            "they were dropped",
            account,
            dropped,
            MAX_BASE_URIS,
            extra={"account": account, "dropped": dropped},
        )
    return entries


def _names(services: list[str], limit: int = _NAMED) -> str:
    """The first ``limit`` of ``services``, each quoted (so that no character of an answer
    can break a log line) and cut short, then how many more there are."""
    shown = ", ".join(
        repr(name) if len(name) <= _NAME_SHOWN else f"{name[:_NAME_SHOWN]!r}..."
        for name in services[:limit]
    )
    more = len(services) - limit
    return f"{shown} and {more} more" if more > 0 else shown


def _same_https_host(a: str, b: str) -> bool:
    """Whether two valid hosts of a Domain API answer name one https host (any case, 443
    written or not)."""
    (name_a, port_a), (name_b, port_b) = split_host(a), split_host(b)
    return name_a.lower() == name_b.lower() and (port_a or 443) == (port_b or 443)


def _log_hostile(account: str, hostile: list[tuple[str, HostileHostError]]) -> None:
    """One WARNING for the hostile entries of one answer: how many, the first few services,
    and why the first one was refused (its message never shows the host whole)."""
    services = [service for service, _ in hostile]
    _log.warning(
        "Domain API for account %s: %d service(s) with a refused host (%s); resolving one "
        "raises HostileHostError, and nothing is sent there. First: %s",
        account,
        len(hostile),
        _names(services),
        str(hostile[0][1])[:_REASON_SHOWN],
        extra={
            "account": account,
            "hostile": len(hostile),
            "services": [name[:_NAME_SHOWN] for name in services[:_NAMED]],
        },
    )


def _positive(name: str, value: float) -> float:
    # finite_number, not math.isfinite: that raises OverflowError on an int past float's range.
    if not (finite_number(value) and value > 0):
        raise ConfigurationError(
            f"CsdsDomains.{name} must be a finite number > 0, got {value!r:.40}"
        )
    return float(value)


class _MapFlight(SingleFlight[dict[str, Entry]]):
    """The map's single flight, which a caller served the stale map starts without waiting
    for it (:meth:`start`): the run is this flight's own, so callers that must wait join it,
    and :meth:`~SingleFlight.cancel` (on close) stops it."""

    __slots__ = ()

    def start(self, fn: Callable[[], Awaitable[dict[str, Entry]]]) -> None:
        """Start a run of ``fn`` if none is in progress; do not wait for it. Its end is
        retrieved (nothing is reported as never retrieved); ``fn`` handles its own failure."""
        if self.running:
            return
        task = asyncio.ensure_future(fn())
        task.set_name(self._name)
        task.add_done_callback(_consume)
        self._task = task


class CsdsDomains:
    """A :class:`~le_transport.providers.DomainProvider` backed by the Domain API (CSDS).

    - ``account``: the LiveEngage account id.
    - ``csds_host``: the Domain API host (``name`` or ``name:port``); default
      ``api.liveperson.net``.
    - ``path_prefix``: ``/api`` (the docs) or ``/csdr`` (some of LivePerson's SDKs); segments
      of letters, digits, ``.``, ``_``, ``-``, none made only of dots (``..`` would change the
      path).
    - ``scheme``: ``https``/``http``; default: the engine's.
    - ``ttl``: seconds a fetched map is served (600); then it is refreshed in the background,
      callers served it until the refresh lands (stale-while-revalidate).
    - ``stale_retry``: after a failed refresh, seconds the stale map is served before asking
      again (30).
    - ``max_stale``: seconds an expired map may still be served while every refresh fails
      (as HTTP's ``max-stale``: counted from the end of its ``ttl``), or None (the default):
      no bound, the last good map is served through an outage however long (the Domain API
      sits on every reconnect path, and LiveEngage's hosts seldom move). Past it a caller
      waits for a refresh (one attempt), and when that fails, or within ``stale_retry`` of
      the last failed one, :meth:`resolve` raises :class:`DomainResolutionError` (logged once
      as an ERROR); a successful refresh (or adopted fleet map, or a login answer confirming
      every cached service) starts it over. 0: an expired map is never served.
    - ``retry``: the request policy of the first fetch; default: the engine's.
    - ``shared``: a :class:`~le_transport.state.SharedDomainMap` (over a Redis store): a
      fleet asks the Domain API once per its TTL (600 s by default, as ``ttl``); a map read
      back is validated again, and expires no later than the shared entry (nor than
      ``ttl``); from then on it is refreshed in the background as any map is (the store read
      first, then the Domain API), callers served it until the refresh lands: a host change
      reaches every process within the shared TTL plus one refresh (at most its attempt
      timeout, 30 s by default), later while the Domain API is down (stale-if-error). A
      service the answer
      named with a refused host is shared as such (even by a process that kept a valid host
      of its own for it): a process adopting the map keeps a valid host it holds, as its own
      fetch of that answer would. A process reading again the map it last wrote or adopted
      (its ``ttl`` shorter than the shared one) keeps its own map, which came from that
      answer and what login answers said since: the answer is not counted twice. After
      :meth:`invalidate` the next fetch asks the Domain API itself, and shares its answer (a
      refresh in progress that read the fleet's map before the invalidate asks it too, rather
      than installing the map it read); when the Domain API fails, the fleet's live map is
      read then and adopted if no map is cached (a first :meth:`refresh`) or the cached one
      is past ``max_stale`` (which the same refresh without the invalidate would have
      adopted), or if it is a peer's newer write, the Domain API asked again within
      ``stale_retry``.

    It needs the engine's HTTP path: pass it to ``Engine(domains=...)``, which attaches it.
    """

    def __init__(
        self,
        account: str,
        *,
        csds_host: str = DEFAULT_CSDS_HOST,
        path_prefix: str = "/api",
        scheme: str | None = None,
        ttl: float = DEFAULT_CSDS_TTL,
        stale_retry: float = DEFAULT_STALE_RETRY,
        retry: RetryPolicy | None = None,
        shared: SharedDomainMap | None = None,
        max_stale: float | None = None,
    ) -> None:
        self._account = validate_account(account, owner="CsdsDomains")
        try:
            self._csds_host = validate_host(csds_host, service="csds", account=self._account)
        except HostileHostError as exc:
            raise ConfigurationError(f"CsdsDomains.csds_host: {exc}") from None
        if not isinstance(path_prefix, str) or not _PREFIX.fullmatch(path_prefix):
            raise ConfigurationError(
                "CsdsDomains.path_prefix must be a path like '/api' or '/csdr' (segments of "
                "letters, digits, '.', '_', '-', none of them only dots), "
                f"got {path_prefix!r:.40}"
            )
        self._prefix = path_prefix
        if scheme not in (None, "https", "http"):
            raise ConfigurationError(
                f"CsdsDomains.scheme must be 'https' or 'http', got {scheme!r}"
            )
        self._scheme = scheme
        self._ttl = _positive("ttl", ttl)
        self._stale_retry = _positive("stale_retry", stale_retry)
        if max_stale is not None and not (finite_number(max_stale) and max_stale >= 0):
            raise ConfigurationError(
                "CsdsDomains.max_stale must be None (no bound) or a finite number >= 0, got "
                f"{max_stale!r:.40}"
            )
        self._max_stale = None if max_stale is None else float(max_stale)
        require_option(
            retry is None or isinstance(retry, RetryPolicy),
            retry,
            owner="CsdsDomains",
            field="retry",
            wants="None or a RetryPolicy",
        )
        self._retry = retry
        self._http: ProviderHttp | None = None
        self._entries: dict[str, Entry] | None = None
        self._expires_at = -math.inf
        # When the map was last refreshed (fetched, adopted, or confirmed by a login answer),
        # and when that made it expire: _expires_at moves on with a failed refresh
        # (stale_retry) or invalidate(), these do not. max_stale counts from _fresh_until.
        self._refreshed_at = -math.inf
        self._fresh_until = -math.inf
        # Why the last refresh failed (shown when the map is past max_stale), and whether
        # that has been logged since the map was last refreshed.
        self._last_failure = "no refresh was tried"
        self._past_bound_logged = False
        # Whether a refresh failed since the map was last refreshed (the map served is then
        # the last good one: an unknown service's error says so).
        self._refresh_failed = False
        self._flight = _MapFlight(
            f"le_transport.csds[{self._account}]",
            f"csds[{self._account}]: the Domain API fetch",
        )
        #: How many fetches were made (one fetch may take several attempts of the schedule).
        self.fetches = 0
        # Imported here: the state package builds on the providers.
        from ..state.domains import SharedDomainMap

        require_option(
            shared is None or isinstance(shared, SharedDomainMap),
            shared,
            owner="CsdsDomains",
            field="shared",
            wants="None or a SharedDomainMap",
        )
        if shared is not None and shared.account != self._account:
            # Its entry is keyed by its own account: this account's calls would go to that
            # one's hosts, and this account's map would poison that one's fleet.
            raise ConfigurationError(
                f"CsdsDomains({self._account!r}) was given the SharedDomainMap of account "
                f"{shared.account!r}: give each account a SharedDomainMap of its own"
            )
        self._shared = shared
        self._ask_source = False
        # Counts invalidate() calls: a refresh that read the fleet's map before the latest one
        # does not install what it read (the invalidate would be undone for a TTL).
        self._generation = 0
        self._closed = False
        # Services a refresh left out whose cached host was kept (see _keep_known): kept once,
        # so that a service LiveEngage retired does not linger.
        self._carried: frozenset[str] = frozenset()
        # The last shared map this process counted (wrote, or adopted): when it ends (its
        # clock's time), its hosts and its refused services. A shared entry that ends then and
        # holds just that is that map, read again: nothing newer than this process's own map,
        # its answer already counted (its left-out services kept once).
        self._counted: tuple[float, dict[str, str], frozenset[str]] | None = None

    # -- wiring -----------------------------------------------------------------------------

    def attach(self, http: ProviderHttp) -> None:
        """Use the engine's HTTP path (called by the engine on start). A provider closed with
        an earlier engine is open again: the map may serve one engine after another."""
        self._http = http
        self._closed = False

    @property
    def account(self) -> str:
        """The account id."""
        return self._account

    @property
    def hosts(self) -> Mapping[str, str]:
        """The valid entries of the cached map (empty before the first fetch)."""
        return {s: h for s, h in (self._entries or {}).items() if isinstance(h, str)}

    # -- DomainProvider ---------------------------------------------------------------------

    async def resolve(self, service: str) -> str:
        """The host for ``service``; fetches the map first if it is missing (or invalidated).

        An expired map answers at once while a refresh runs in the background (one for all
        callers); a service it has no valid host for waits for that refresh (a service added
        since, a host fixed since). Raises :class:`UnknownServiceError` (listing the account's
        services; after a failed refresh, saying that the map it checked is the last good one,
        how old, and why the refresh failed, not that the Domain API lists no such service),
        :class:`HostileHostError`, or :class:`DomainResolutionError` when no map can
        be had (or only one expired longer than ``max_stale`` ago, every refresh failing);
        :class:`~le_transport.errors.EngineClosed` once closed (with its engine) when the map
        would have to be fetched (a fresh one still answers), until attached to another. A
        ``service`` that is no str is a :class:`~le_transport.errors.ConfigurationError`,
        before anything is fetched.
        """
        require_service("CsdsDomains", service)
        entries = await self._current()
        entry = entries.get(service)
        if not isinstance(entry, str) and self._revalidating(entries):
            # The stale map has no usable host for it: the refresh in flight may have one, as
            # a caller awaiting the refresh found before stale-while-revalidate. Failed past
            # max_stale, it hands back a map too old to answer from.
            entries = self._within_bound(await self._flight.run(self._revalidate))
            entry = entries.get(service)
        if entry is None:
            known = sorted(entries)
            # Named in full up to a few dozen (a real account's map), counted beyond.
            raise UnknownServiceError(
                f"{self._unknown_in(service)}; its services: "
                f"{_names(known, _LISTED) if known else 'none'} (names are case sensitive)",
                service=service,
                known=known,
                account=self._account,
            )
        if isinstance(entry, HostileHostError):
            raise HostileHostError(str(entry), account=self._account)
        return entry

    def _unknown_in(self, service: str) -> str:
        """What an unknown ``service``'s error says of the map it was looked up in: the
        account has no such service, as the Domain API (or the fleet's map, or a login answer)
        said it last; or, served after a failed refresh, only that the last good map, how old,
        lacks it (the Domain API was not heard since), and why the refresh failed."""
        http = require_attached(self._http, self)
        now = http.clock.now()
        if not self._refresh_failed or now < self._fresh_until:
            return f"account {self._account!r} has no service {service!r}"
        return (
            f"the last good domain map of account {self._account!r}, refreshed "
            f"{now - self._refreshed_at:.0f} s ago, has no service {service!r} (the refresh "
            f"since failed: {self._last_failure}; the Domain API may list it now)"
        )

    async def invalidate(self) -> None:
        """Mark the map stale: the next :meth:`resolve` fetches it again, waiting for the
        fetch (not served the map meanwhile, as after its mere expiry), and still falls back
        to it if that fails (unless it expired longer than ``max_stale`` ago: then that
        resolve raises :class:`DomainResolutionError`). With a ``shared`` map, the fleet's map
        is not read first; when the fetch fails it is read, and a live one adopted with no map
        cached or one past ``max_stale``, or when a peer wrote it since this process's map."""
        self._expires_at = -math.inf
        self._ask_source = True
        self._generation += 1

    async def refresh(self) -> Mapping[str, str]:
        """Fetch the map now (sharing a fetch in progress); return its valid entries.

        A failed fetch with a map cached returns that map's entries, as :meth:`resolve` falls
        back to it; past ``max_stale`` it raises :class:`DomainResolutionError` instead (no map
        at all: :class:`DomainResolutionError` too). With a ``shared`` map, a failed fetch
        adopts the fleet's live map in those two cases (see :meth:`invalidate`)."""
        await self.invalidate()
        await self._current()
        return self.hosts

    async def wait_refresh(self) -> Mapping[str, str]:
        """Wait for the fetch in progress, if any (the refresh an expired map started in the
        background, which callers are not kept waiting for); return the valid entries then.
        Raises as waiting for that fetch in :meth:`resolve` would (``EngineClosed`` if it is
        stopped by close)."""
        if self._flight.running:
            await self._flight.run(self._revalidate)
        return self.hosts

    def warm(self, collection: object) -> bool:
        """Take in a map that came with a login answer (``csdsCollectionResponse``).

        Its valid entries are merged into the cached map: a service it names with a valid host
        gets that host; a service it does not name keeps its cached entry, and a hostile entry
        it holds never replaces a cached valid one (it is kept only for a service the cache
        does not know, so that resolving that one raises :class:`HostileHostError`). With no
        cached map, it becomes the map. The map's lifetime (``ttl``) starts over when it
        comes first or names every cached service with a valid host; a partial map leaves the
        expiry as it was, so that the services it did not confirm are fetched again in time.
        A service a refresh left out (its cached host kept once) that it names, with any host,
        is confirmed as a refresh naming it would confirm it: the next refresh leaving it out
        keeps it once again, rather than dropping it.

        Returns whether it was taken. A malformed map is ignored, and so is one without a
        single valid host (it would fail every service it names, as a refresh answering such a
        map would): logged as a WARNING (an empty one silently), the cached map kept as it was.
        """
        try:
            entries = _parse_answer(collection, account=self._account)
        except DomainResolutionError as exc:
            _log.warning(
                "ignoring the login answer's domain map: %s",
                exc,
                extra={"account": self._account},
            )
            return False
        valid = {service for service, host in entries.items() if isinstance(host, str)}
        if not valid:
            if entries:
                _log.warning(
                    "ignoring the login answer's domain map for account %s: none of its %d "
                    "entries has a valid host; the cached map is kept",
                    self._account,
                    len(entries),
                    extra={"account": self._account},
                )
            return False
        now = require_attached(self._http, self).clock.now()
        if self._carried:
            # Named (even with a refused host, as a refresh naming it): no longer a service a
            # refresh left out; the next refresh leaving it out keeps it once again.
            self._carried = self._carried.difference(entries)
        cached = self._entries
        if cached is None:
            self._install(entries, now)
        else:
            merged = dict(cached)
            for service, entry in entries.items():
                if isinstance(entry, str) or service not in merged:
                    merged[service] = entry
            self._entries = merged
            if valid.issuperset(cached):
                # Every service the cache holds is confirmed: as good as a fetch.
                self._install(merged, now)
        _log.debug(
            "domain map for account %s warmed from a login answer (%d services, %d valid)",
            self._account,
            len(entries),
            len(valid),
            extra={"account": self._account},
        )
        return True

    # -- internals --------------------------------------------------------------------------

    async def _current(self) -> dict[str, Entry]:
        return self._within_bound(await self._map())

    def _within_bound(self, entries: dict[str, Entry]) -> dict[str, Entry]:
        """``entries``, unless the cached map is past ``max_stale``
        (:class:`DomainResolutionError`). Whatever map ``entries`` is: a refresh that
        succeeded has just started the bound over, so past it ``entries`` is an old map (a
        failed refresh's, which a login answer merged into the cache meanwhile may have
        replaced as the cached map, its age left as it was)."""
        if self._max_stale is not None:
            now = require_attached(self._http, self).clock.now()
            if self._past_bound(now):
                raise self._past_bound_error(now)
        return entries

    def _past_bound(self, now: float) -> bool:
        """Whether the cached map expired ``max_stale`` ago or longer: an expired map is
        served for less than ``max_stale`` (0: never, not even at the instant it expires)."""
        return self._max_stale is not None and now >= self._fresh_until + self._max_stale

    def _past_bound_error(self, now: float) -> DomainResolutionError:
        """The error of a resolve with only a map past ``max_stale`` at hand; logged once
        (until a refresh succeeds)."""
        message = (
            f"the domain map of account {self._account!r} is too old to serve: last refreshed "
            f"{now - self._refreshed_at:.0f} s ago, expired {now - self._fresh_until:.0f} s "
            f"ago, past max_stale ({self._max_stale:g} s); the Domain API at {self._csds_host} "
            f"still fails (last refresh: {self._last_failure})"
        )
        if not self._past_bound_logged:
            self._past_bound_logged = True
            _log.error(
                "%s; resolve raises DomainResolutionError until a refresh succeeds",
                message,
                extra={"account": self._account},
            )
        return DomainResolutionError(message, account=self._account)

    async def _map(self) -> dict[str, Entry]:
        http = require_attached(self._http, self)
        entries = self._entries
        if entries is not None and http.clock.now() < self._expires_at:
            # A fresh map answers even after close: reading it sends nothing.
            return entries
        if self._closed:
            # As a closed auth provider: no fetch starts (nor outlives the engine) after close.
            raise EngineClosed(
                f"csds[{self._account}]: the domain provider is closed (closing an engine "
                "closes it) and its map is stale or missing: no fetch starts"
            )
        if (
            entries is not None
            and self._expires_at > -math.inf
            and not self._past_bound(http.clock.now())
        ):
            # Expired, not invalidated (-inf: invalidate(), refresh()): stale-while-revalidate.
            # Waiting for the refresh held every call and reconnect up to its attempt timeout
            # (30 s) whenever the Domain API hung, with a good map at hand.
            self._flight.start(self._revalidate)
            # The map as it is now: a run that ended at once (an eager task factory, a store
            # answering without a pause) has installed its own.
            return self._entries if self._entries is not None else entries
        return await self._flight.run(self._fetch_or_stale)

    def _revalidating(self, entries: dict[str, Entry]) -> bool:
        """Whether ``entries``, just served, is the cached map served expired while a
        refresh runs in the background."""
        http = require_attached(self._http, self)
        return (
            entries is self._entries
            and self._flight.running
            and http.clock.now() >= self._expires_at
        )

    async def _revalidate(self) -> dict[str, Entry]:
        """The refresh of an expired map, run in the background (callers are served the map
        meanwhile): :meth:`_fetch_or_stale`, the map kept on any failure, which no caller may
        be there to see (a failure it lets through, unforeseen, is logged by its type alone,
        and the map kept as after a failed refresh)."""
        stale = self._entries
        try:
            return await self._fetch_or_stale()
        except Exception as exc:
            if stale is None:
                raise
            self._serve_stale(exc, type(exc).__name__)
            return stale

    def _install(self, entries: dict[str, Entry], now: float, life: float | None = None) -> None:
        self._entries = entries
        self._expires_at = now + (self._ttl if life is None else min(self._ttl, life))
        self._refreshed_at = now
        self._fresh_until = self._expires_at
        self._past_bound_logged = False
        self._refresh_failed = False

    async def _fetch_or_stale(self) -> dict[str, Entry]:
        http = require_attached(self._http, self)
        stale = self._entries
        policy = self._retry or http.policy
        if stale is not None:
            # A cached map exists: one attempt, then serve it; never 30 s of schedule in front
            # of a reconnect.
            policy = attrs.evolve(policy, pauses=())
            if policy.attempt_timeout is None and policy.deadline is None:
                # With neither bound of its own, a refresh hanging for ever kept the map stale
                # for ever (nothing logged, no refresh tried again, wait_refresh() hanging): a
                # caller's own timeout stops only its wait, the shared fetch runs on, and
                # every later caller joins it. The default attempt timeout, not stale_retry:
                # an answer slower than that interval was cut every time.
                policy = attrs.evolve(policy, attempt_timeout=DEFAULT_ATTEMPT_TIMEOUT)
        if self._shared is not None and not self._ask_source:
            generation = self._generation
            found = await self._read_shared("before asking the Domain API")
            if found is not None and found[0] and self._generation == generation:
                # (Invalidated while it read: the map read may be the very one to drop, and
                # installing it undid the invalidate for a TTL. The Domain API is asked.)
                hosts, refused, life = found
                now = http.clock.now()
                ends = now + life
                # Expires no later than the shared entry: given a TTL of its own on top, a
                # fleet would pick up a host change up to twice the TTL late.
                if stale is not None and self._is_counted(hosts, refused, ends):
                    # The map this process wrote or adopted last, read again (its own TTL
                    # shorter than the shared one): nothing newer than this process's own map,
                    # which came from that answer (counted once: its left-out services kept
                    # once) and what login answers said since. Counted again, a partial answer
                    # dropped them as two would; rebuilt from it, a service or host a login
                    # answer named since was lost.
                    self._install(stale, now, life)
                    return stale
                shared_entries = self._adopt_shared(hosts, refused, ends, stale)
                self._install(shared_entries, now, life)
                return shared_entries
        try:
            entries = await self._fetch(http, policy, stale=stale is not None)
            if stale is not None and not any(isinstance(h, str) for h in entries.values()):
                # Installed, it would fail every service with UnknownServiceError (or
                # HostileHostError) for a whole TTL; as a failed refresh, the last good map
                # is served. warm() refuses such a map for the same reason.
                raise DomainResolutionError(
                    f"the Domain API answered a map without one usable service for account "
                    f"{self._account!r} ({len(entries)} entries, none valid)",
                    account=self._account,
                )
            answered = entries
            if stale is not None:
                # Before the fleet's copy is written: its processes would lose them too.
                entries = self._keep_known(entries, stale)
            self._ask_source = False
            if self._shared is not None:
                # The answer as it came: the services it named, one with a refused host written
                # as refused even where this process kept its own (a peer keeps its own valid
                # host, as its own fetch would; written as this process's, a peer whose login
                # answer had moved it took this older one); not those it left out: kept once
                # here, written for the fleet they lived for ever (each process that adopted
                # them kept them once more at its next refresh).
                hosts = {s: h for s, h in answered.items() if isinstance(h, str)}
                refused = frozenset(s for s in answered if s not in hosts)
                try:
                    await self._shared.put(hosts, refused=refused)
                except StateStoreError as unwritten:
                    # A store that fails (a closed plain MemoryStore) must not fail the
                    # resolve the Domain API has just answered: the answer is served, and the
                    # fleet's peers fetch their own.
                    _log.warning(
                        "the Domain API's answer for account %s could not be shared with the "
                        "fleet (%s)",
                        self._account,
                        type(unwritten).__name__,
                        extra={"account": self._account, "error": type(unwritten).__name__},
                    )
                else:
                    # What was written, not this process's map (which holds the hosts it kept).
                    self._counted = (http.clock.now() + self._shared.ttl, hosts, refused)
        except (RequestError, DomainResolutionError) as exc:
            adopted = await self._adopt_after_failure(stale, exc)
            if adopted is not None:
                return adopted
            if stale is None:
                raise DomainResolutionError(
                    f"the Domain API at {self._csds_host} could not resolve account "
                    f"{self._account!r} and no cached map exists: {exc}",
                    account=self._account,
                ) from exc
            self._serve_stale(exc, exc)
            return stale
        self._install(entries, http.clock.now())
        return entries

    async def _read_shared(self, when: str) -> tuple[dict[str, str], frozenset[str], float] | None:
        """The fleet's shared map (:meth:`SharedDomainMap.read`), or None when its store fails
        (a closed one: a plain MemoryStore or a FallbackStore is not wrapped), logged as a
        WARNING saying ``when``: as if nothing is shared, the Domain API answers, or the
        cached map is served, never the store's error in place of either."""
        shared = self._shared
        if shared is None:
            return None
        try:
            return await shared.read()
        except StateStoreError as unread:
            _log.warning(
                "the fleet's shared domain map for account %s could not be read %s (%s)",
                self._account,
                when,
                type(unread).__name__,
                extra={"account": self._account, "error": type(unread).__name__},
            )
            return None

    async def _adopt_after_failure(
        self, stale: dict[str, Entry] | None, exc: Exception
    ) -> dict[str, Entry] | None:
        """After :meth:`invalidate` a refresh asks the Domain API without reading the fleet's
        map; when that fails (``exc``), the fleet's live map is read then, and adopted if it
        serves better than the cached one: none cached (a first :meth:`refresh`), or past
        ``max_stale`` (the cached map would not be served at all: the same refresh without
        the invalidate would have adopted it), or a peer's newer write (not the map this
        process counted last, which the invalidate is about). Adopted, it is served as the
        fleet's map (``max_stale`` counts from its expiry), and the Domain API asked again
        within ``stale_retry``, as the invalidate asked. None: nothing adopted (no shared
        map, none live, a store that fails when read, or an invalidate meanwhile)."""
        if self._shared is None or not self._ask_source:
            # Without an invalidate the fleet's map was read before the Domain API was asked.
            return None
        http = require_attached(self._http, self)
        generation = self._generation
        found = await self._read_shared("after the failed refresh")
        if found is None or not found[0] or self._generation != generation:
            return None
        hosts, refused, life = found
        now = http.clock.now()
        ends = now + life
        # The cached map as it is now, not as the fetch found it: a login answer taken while
        # the fetch ran (warm) merged its hosts into it, and they were lost.
        held = stale if self._entries is None else self._entries
        if held is not None and self._is_counted(hosts, refused, ends):
            if not self._past_bound(now):
                # The map the invalidate is about: served as the last good one, stale.
                return None
            # Read again past the bound, as the refresh without the invalidate takes it:
            # this process's own map, which came from that entry (not counted twice), and
            # what login answers said since.
            entries = held
        else:
            entries = self._adopt_shared(hosts, refused, ends, held)
        self._install(entries, now, life)
        # Served as the fleet's map, but not taken for the answer the invalidate asked for.
        self._expires_at = min(self._expires_at, now + self._stale_retry)
        self._last_failure = str(exc)[:_REASON_SHOWN]
        _log.warning(
            "Domain API refresh for account %s failed (%s); the fleet's shared map is served, "
            "and the Domain API asked again in %.3g s",
            self._account,
            exc,
            self._expires_at - now,
            extra={"account": self._account, "error": type(exc).__name__},
        )
        return entries

    def _adopt_shared(
        self,
        hosts: dict[str, str],
        refused: frozenset[str],
        ends: float,
        stale: dict[str, Entry] | None,
    ) -> dict[str, Entry]:
        """The map to install from the fleet's entry (``hosts``, ``refused``, ending at
        ``ends``), counted as the last one adopted: a refused service as this process's own
        fetch of that answer would hold it, and the cached valid hosts it would lose kept (see
        :meth:`_keep_known`)."""
        shared_entries: dict[str, Entry] = dict(hosts)
        for service in refused:
            # Named with a refused host: as this process's own fetch of that answer, never a
            # host (a valid cached one is kept below, as a fetch keeps it).
            shared_entries.setdefault(service, self._refused_in_shared_map(service))
        if stale is not None:
            shared_entries = self._keep_known(shared_entries, stale)
        self._counted = (ends, hosts, refused)
        return shared_entries

    def _serve_stale(self, exc: Exception, shown: object) -> None:
        """A refresh failed with ``exc`` (``shown`` in the log line): the cached map is served
        ``stale_retry`` s more, then refreshed again; logged, and a ``domains_stale`` event
        (``served``: False once the map is past ``max_stale``, and resolve fails instead)."""
        http = require_attached(self._http, self)
        now = http.clock.now()
        self._expires_at = now + self._stale_retry
        # Cut short: it is shown in an error message (the Domain API's request carries no
        # credential, and a RequestError's message shows none).
        self._last_failure = str(shown)[:_REASON_SHOWN]
        self._refresh_failed = True
        served = not self._past_bound(now)
        emit_state(
            http.hooks,
            _log,
            logging.WARNING,
            StateEvent(
                "domains_stale",
                f"csds[{self._account}]",
                {"error": type(exc).__name__, "retry_in": self._stale_retry, "served": served},
            ),
        )
        _log.warning(
            "Domain API refresh for account %s failed (%s); %s",
            self._account,
            shown,
            "serving the last good map"
            if served
            else "the last good map is past max_stale and is not served",
            extra={"account": self._account, "error": type(exc).__name__},
        )

    def _is_counted(self, hosts: dict[str, str], refused: frozenset[str], ends: float) -> bool:
        """Whether a shared entry ending at ``ends`` and holding ``hosts`` and ``refused`` is
        the last map this process counted: wrote, or adopted (another write ending within the
        same second but holding another map is adopted as any peer's)."""
        counted = self._counted
        return (
            counted is not None
            and abs(ends - counted[0]) < 1.0
            and counted[2] == refused
            and counted[1] == hosts
        )

    def _refused_in_shared_map(self, service: str) -> HostileHostError:
        """What resolving ``service`` raises when the fleet's map says the answer named it with
        a refused host (and this process knows no valid one)."""
        return HostileHostError(
            f"refusing the host for service {service[:_NAME_SHOWN]!r}: the fleet's shared "
            "domain map says the Domain API named it with a refused host (a bare hostname with "
            "an optional port is required); no credential is sent to it",
            account=self._account,
        )

    def _keep_known(self, entries: dict[str, Entry], stale: dict[str, Entry]) -> dict[str, Entry]:
        """A refresh's map, with the cached valid hosts it would lose: a host it names that
        is refused never replaces a valid one (as :meth:`warm` keeps one); a service it leaves
        out keeps its host for one more TTL (a partial answer failed every call to it for a
        whole TTL), and is dropped if the next refresh leaves it out too."""
        kept: dict[str, Entry] = {}
        carried: set[str] = set()
        for service, host in stale.items():
            if not isinstance(host, str):
                continue
            if service in entries:
                if not isinstance(entries[service], str):
                    kept[service] = host
            elif service not in self._carried:
                kept[service] = host
                carried.add(service)
        self._carried = frozenset(carried)
        if not kept:
            return entries
        _log.warning(
            "Domain API answer for account %s refused or left out %d service(s) with a known "
            "host (%s); their cached hosts are kept",
            self._account,
            len(kept),
            # Quoted and cut short: the names came from an answer (a line break in one wrote
            # a log line of the answer's making).
            _names(sorted(kept)),
            extra={"account": self._account, "kept": len(kept)},
        )
        return {**entries, **kept}

    async def _fetch(
        self, http: ProviderHttp, policy: RetryPolicy, *, stale: bool
    ) -> dict[str, Entry]:
        url = provider_url(
            self._scheme or http.scheme,
            self._csds_host,
            f"{self._prefix}/account/{self._account}/service/baseURI.json",
            {"version": "1.0"},
        )
        self.fetches += 1
        resp = await http.request(
            "GET",
            url,
            service="csds",
            retry=policy,
            # With a map to fall back on, an outage fails no caller: unless it is past
            # max_stale when the refresh gives up (decided then: a refresh that started within
            # the bound and gave up past it serves nothing, and a caller sees the failure).
            fallback=self._stale_fallback if stale else None,
        )
        if resp.status != 200:
            raise DomainResolutionError(
                f"the Domain API answered {resp.status} for account {self._account!r}",
                account=self._account,
            )
        try:
            payload = json.loads(resp.body)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            raise DomainResolutionError(
                f"the Domain API answer for account {self._account!r} is not JSON",
                account=self._account,
            ) from None
        entries = _parse_answer(payload, account=self._account)
        _log.info(
            "domain map for account %s fetched: %d services",
            self._account,
            len(entries),
            extra={"account": self._account},
        )
        return entries

    def _stale_fallback(self) -> str | None:
        """What a refresh that gives up falls back on, decided when it gives up: the last good
        map, unless it is past ``max_stale`` by then (None: nothing is served)."""
        http = require_attached(self._http, self)
        return None if self._past_bound(http.clock.now()) else _STALE_FALLBACK

    async def close(self) -> None:
        """Stop a fetch in progress; from then on no fetch starts on the closed engine's
        session (nor outlives it): :meth:`resolve` answers from a fresh map and raises
        :class:`~le_transport.errors.EngineClosed` where it would fetch, :meth:`refresh`
        raises it, until :meth:`attach` gives it another engine. Idempotent."""
        self._closed = True
        await self._flight.cancel()

    def __repr__(self) -> str:
        return (
            f"CsdsDomains(account={self._account!r}, csds_host={self._csds_host!r}, "
            f"path_prefix={self._prefix!r}, ttl={self._ttl!r})"
        )
