"""Where a resilient socket's upgrade may go: the host it was dialed at, and nowhere else.

aiohttp follows an upgrade's redirects itself, and runs the session's middlewares on every
hop. On a hop to another origin it drops ``Authorization``, ``Cookie`` and
``Proxy-Authorization`` and sends the rest: a provider's own credential header (an API key),
or a bearer the path carries, went to whatever host a ``Location`` named. And it compares
origins scheme and all, so a hop from ``ws://h/a`` to ``http://h/b`` (as a server writes an
absolute ``Location``) lost the credentials on the very host they belong to.

So a socket's dialer sets :data:`UPGRADE_GUARD` while it upgrades, and the retry middleware,
always in an engine's stack, hands each upgrade hop to it before the hop is sent
(:meth:`UpgradeGuard.check`): a hop to another host is refused (:class:`RedirectedElsewhere`,
which the dialer makes a final failure), and a hop to the dialed host gets back the headers
aiohttp dropped from it. An HTTP request never looks at it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping

from aiohttp import ClientRequest
from yarl import URL

__all__ = ["UPGRADE_GUARD", "RedirectedElsewhere", "UpgradeGuard", "same_wire_host"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_SECURE = frozenset({"https", "wss"})


def _wire_key(url: URL) -> tuple[str, int | None]:
    # yarl's raw_host is the host as written on the wire: lower case, an IDN name in its xn--
    # form, an IPv6 literal compressed. A trailing dot names the same host (validate_host
    # strips it from what the domain provider gives).
    host = (url.raw_host or "").rstrip(".").lower()
    port = url.explicit_port
    return host, port if port is not None else _DEFAULT_PORTS.get(url.scheme.lower())


def same_wire_host(dialed: URL, hop: URL) -> bool:
    """Whether ``hop`` goes to the host and port ``dialed`` went to, compared as written on the
    wire (any case, a trailing dot, an IDN name decoded or not, an IPv6 literal long or
    compressed, a default port written or not; ``ws``/``http`` and ``wss``/``https`` share
    their default ports), and not from TLS to plain text."""
    if not hop.raw_host:
        return False
    if dialed.scheme.lower() in _SECURE and hop.scheme.lower() not in _SECURE:
        return False
    return _wire_key(dialed) == _wire_key(hop)


def shown_origin(url: URL) -> str:
    """``url``'s origin (scheme, host, port: no user, path or query) to name in an error."""
    try:
        return str(url.origin())
    except ValueError:
        return f"{url.scheme}://{url.raw_host or ''}"


class RedirectedElsewhere(Exception):
    """An upgrade hop to another host than the one dialed, refused before it was sent.

    ``origin`` is the hop's origin only (its path may carry the bearer)."""

    def __init__(self, origin: str) -> None:
        super().__init__(f"upgrade redirected to another host ({origin})")
        self.origin = origin


class UpgradeGuard:
    """One upgrade's bounds: the URL dialed, and the headers it was sent with (credentials
    among them), to put back on a hop to the same host.

    ``checked`` says whether any hop was checked: False after the upgrade when the session
    had not the engine's stack (a caller's own session), whose hops went unchecked."""

    __slots__ = ("_headers", "checked", "dialed")

    def __init__(self, dialed: URL, headers: Mapping[str, str]) -> None:
        self.dialed = dialed
        self._headers = dict(headers)
        self.checked = False

    def check(self, request: ClientRequest) -> None:
        """Before ``request``, a hop of the upgrade, is sent: raise
        :class:`RedirectedElsewhere` if it goes to another host; else put back the headers
        the upgrade was sent with that aiohttp dropped on a change of origin (``ws`` to
        ``http`` on the same host is one)."""
        self.checked = True
        url = request.url
        if not same_wire_host(self.dialed, url):
            raise RedirectedElsewhere(shown_origin(url))
        headers = request.headers
        for name, value in self._headers.items():
            if name not in headers:
                headers[name] = value


#: While a resilient socket's dialer upgrades: the :class:`UpgradeGuard` its hops pass. Unset
#: (None) for any other request, a caller's own ``ws_connect`` included.
UPGRADE_GUARD: contextvars.ContextVar[UpgradeGuard | None] = contextvars.ContextVar(
    "le_transport_upgrade_guard", default=None
)
