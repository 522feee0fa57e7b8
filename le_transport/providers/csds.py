"""The Domain API (CSDS) provider: an account's service map, cached, shared and stale-if-error.

The guide's Step 2: every LiveEngage API's host comes from the Domain API, per account and
service name. :class:`CsdsDomains` fetches the account's whole map once
(``GET {csds}{prefix}/account/{id}/service/baseURI.json?version=1.0``) and caches it for ``ttl``
seconds on the injected clock (LivePerson's own SDKs cache it for 60 s and 600 s).

- Concurrent callers share one fetch (single flight): a reconnect storm is one request.
- The very first fetch follows the request schedule; when it still fails, the error is a
  :class:`~le_transport.errors.DomainResolutionError` naming the account.
- Once a map exists, a failed refresh keeps serving it (stale-if-error) and logs so: the Domain
  API sits on every reconnect path, and its outage must not stop one. Such a refresh is a single
  attempt (no 5/10/15 s schedule in front of a reconnect), and it is not tried again for
  ``stale_retry`` seconds. A refresh answering a map without one valid host (empty, or every
  entry malformed or hostile) counts as failed: installed, it would fail every service. A
  refresh with a map cached says it handles an outage itself, so the retry middleware logs its
  giving up as a WARNING that says the last good map is served, not an ERROR, and its give-up
  event has ``handled_by_caller``: nothing failed for a caller (a token fetched early, say).
- Every host is validated (:func:`~le_transport.providers.domains.validate_host`). A hostile
  entry does not spoil the others: resolving that one service raises
  :class:`~le_transport.errors.HostileHostError`, so no request, and no credential, goes there.
- A login answer that carries the map (``csdsCollectionResponse``) warms the cache (:meth:`warm`).

The CSDS host, path prefix (``/api`` in the docs, ``/csdr`` in some SDKs) and scheme are
configurable, so the whole stack can point at a local server.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs

from ..errors import (
    ConfigurationError,
    DomainResolutionError,
    HostileHostError,
    RequestError,
    UnknownServiceError,
)
from ..events import StateEvent
from ..policies._validate import finite_number
from ..policies.retry import RetryPolicy
from ._flight import SingleFlight
from ._http import (
    ProviderHttp,
    emit_state,
    provider_url,
    require_attached,
    require_option,
    validate_account,
)
from .domains import validate_host

if TYPE_CHECKING:
    from ..state.domains import SharedDomainMap

__all__ = [
    "DEFAULT_CSDS_HOST",
    "DEFAULT_CSDS_TTL",
    "DEFAULT_STALE_RETRY",
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

_PREFIX = re.compile(r"(/[A-Za-z0-9._-]+)+")

Entry = str | HostileHostError


def parse_base_uris(payload: object, *, account: str) -> dict[str, Entry]:
    """``{service: host}`` from a Domain API answer (``{"baseURIs": [...]}``).

    A hostile host becomes the :class:`HostileHostError` to raise when that service is asked
    for. Entries that are not ``{"service": str, "baseURI": ...}`` are skipped. Raises
    :class:`DomainResolutionError` when there is no ``baseURIs`` list at all.
    """
    uris = payload.get("baseURIs") if isinstance(payload, dict) else None
    if not isinstance(uris, list):
        raise DomainResolutionError(
            f"the Domain API answer for account {account!r} has no 'baseURIs' list",
            account=account,
        )
    entries: dict[str, Entry] = {}
    for item in uris:
        if not isinstance(item, dict):
            continue
        service = item.get("service")
        if not isinstance(service, str) or not service:
            continue
        try:
            entries[service] = validate_host(item.get("baseURI"), service=service, account=account)
        except HostileHostError as exc:
            _log.warning(
                "Domain API for account %s: %s",
                account,
                exc,
                extra={"account": account, "service": service},
            )
            entries[service] = exc
    return entries


def _positive(name: str, value: float) -> float:
    # finite_number, not math.isfinite: that raises OverflowError on an int past float's range.
    if not (finite_number(value) and value > 0):
        raise ConfigurationError(
            f"CsdsDomains.{name} must be a finite number > 0, got {value!r:.40}"
        )
    return float(value)


class CsdsDomains:
    """A :class:`~le_transport.providers.DomainProvider` backed by the Domain API (CSDS).

    - ``account``: the LiveEngage account id.
    - ``csds_host``: the Domain API host (``name`` or ``name:port``); default
      ``api.liveperson.net``.
    - ``path_prefix``: ``/api`` (the docs) or ``/csdr`` (some of LivePerson's SDKs).
    - ``scheme``: ``https``/``http``; default: the engine's.
    - ``ttl``: seconds a fetched map is served (600).
    - ``stale_retry``: after a failed refresh, seconds the stale map is served before asking
      again (30).
    - ``retry``: the request policy of the first fetch; default: the engine's.
    - ``shared``: a :class:`~le_transport.state.SharedDomainMap` (over a Redis store): a
      fleet asks the Domain API once per its TTL; a map read back is validated again. After
      :meth:`invalidate` the next fetch asks the Domain API itself, and shares its answer.

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
    ) -> None:
        self._account = validate_account(account, owner="CsdsDomains")
        try:
            self._csds_host = validate_host(csds_host, service="csds", account=self._account)
        except HostileHostError as exc:
            raise ConfigurationError(f"CsdsDomains.csds_host: {exc}") from None
        if not isinstance(path_prefix, str) or not _PREFIX.fullmatch(path_prefix):
            raise ConfigurationError(
                f"CsdsDomains.path_prefix must be a path like '/api' or '/csdr', "
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
        self._flight: SingleFlight[dict[str, Entry]] = SingleFlight(
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
        self._shared = shared
        self._ask_source = False

    # -- wiring -----------------------------------------------------------------------------

    def attach(self, http: ProviderHttp) -> None:
        """Use the engine's HTTP path (called by the engine on start)."""
        self._http = http

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
        """The host for ``service``; fetches the map first if it is missing or stale.

        Raises :class:`UnknownServiceError` (listing the account's services),
        :class:`HostileHostError`, or :class:`DomainResolutionError` when no map can be had.
        """
        entries = await self._current()
        entry = entries.get(service)
        if entry is None:
            known = sorted(entries)
            raise UnknownServiceError(
                f"account {self._account!r} has no service {service!r}; its services: "
                f"{', '.join(known) or 'none'} (names are case sensitive)",
                service=service,
                known=known,
                account=self._account,
            )
        if isinstance(entry, HostileHostError):
            raise HostileHostError(str(entry), account=self._account)
        return entry

    async def invalidate(self) -> None:
        """Mark the map stale: the next :meth:`resolve` fetches it again (and still falls back
        to it if that fails)."""
        self._expires_at = -math.inf
        self._ask_source = True

    async def refresh(self) -> Mapping[str, str]:
        """Fetch the map now (sharing a fetch in progress); return its valid entries."""
        await self.invalidate()
        await self._current()
        return self.hosts

    def warm(self, collection: object) -> bool:
        """Install a map that came with a login answer (``csdsCollectionResponse``).

        Returns whether it was usable; a malformed one is ignored (and logged).
        """
        try:
            entries = parse_base_uris(collection, account=self._account)
        except DomainResolutionError as exc:
            _log.warning("ignoring the login answer's domain map: %s", exc)
            return False
        if not entries:
            return False
        clock = require_attached(self._http, self).clock
        self._install(entries, clock.now())
        _log.debug(
            "domain map for account %s warmed from a login answer (%d services)",
            self._account,
            len(entries),
            extra={"account": self._account},
        )
        return True

    # -- internals --------------------------------------------------------------------------

    async def _current(self) -> dict[str, Entry]:
        http = require_attached(self._http, self)
        if self._entries is not None and http.clock.now() < self._expires_at:
            return self._entries
        return await self._flight.run(self._fetch_or_stale)

    def _install(self, entries: dict[str, Entry], now: float) -> None:
        self._entries = entries
        self._expires_at = now + self._ttl

    async def _fetch_or_stale(self) -> dict[str, Entry]:
        http = require_attached(self._http, self)
        stale = self._entries
        policy = self._retry or http.policy
        if stale is not None:
            # A cached map exists: one attempt, then serve it; never 30 s of schedule in front
            # of a reconnect.
            policy = attrs.evolve(policy, pauses=())
        if self._shared is not None and not self._ask_source:
            hosts = await self._shared.get()
            if hosts:
                shared_entries: dict[str, Entry] = dict(hosts)
                self._install(shared_entries, http.clock.now())
                return shared_entries
        try:
            entries = await self._fetch(http, policy, stale=stale is not None)
            if stale is not None and not any(isinstance(h, str) for h in entries.values()):
                # Installed, it would fail every service with UnknownServiceError (or
                # HostileHostError) for a whole TTL; as a failed refresh, the last good map
                # is served. warm() refuses an empty map for the same reason.
                raise DomainResolutionError(
                    f"the Domain API answered a map without one usable service for account "
                    f"{self._account!r} ({len(entries)} entries, none valid)",
                    account=self._account,
                )
            self._ask_source = False
            if self._shared is not None:
                await self._shared.put({s: h for s, h in entries.items() if isinstance(h, str)})
        except (RequestError, DomainResolutionError) as exc:
            if stale is None:
                raise DomainResolutionError(
                    f"the Domain API at {self._csds_host} could not resolve account "
                    f"{self._account!r} and no cached map exists: {exc}",
                    account=self._account,
                ) from exc
            self._expires_at = http.clock.now() + self._stale_retry
            emit_state(
                http.hooks,
                _log,
                logging.WARNING,
                StateEvent(
                    "domains_stale",
                    f"csds[{self._account}]",
                    {"error": type(exc).__name__, "retry_in": self._stale_retry},
                ),
            )
            _log.warning(
                "Domain API refresh for account %s failed (%s); serving the last good map",
                self._account,
                exc,
                extra={"account": self._account, "error": type(exc).__name__},
            )
            return stale
        self._install(entries, http.clock.now())
        return entries

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
            # With a map to fall back on, an outage fails no caller.
            fallback=_STALE_FALLBACK if stale else None,
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
        entries = parse_base_uris(payload, account=self._account)
        _log.info(
            "domain map for account %s fetched: %d services",
            self._account,
            len(entries),
            extra={"account": self._account},
        )
        return entries

    async def close(self) -> None:
        """Stop a fetch in progress."""
        await self._flight.cancel()

    def __repr__(self) -> str:
        return (
            f"CsdsDomains(account={self._account!r}, csds_host={self._csds_host!r}, "
            f"path_prefix={self._prefix!r}, ttl={self._ttl!r})"
        )
