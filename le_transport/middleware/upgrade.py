"""Where a resilient socket's upgrade may go: the host it was dialed at, and nowhere else.

aiohttp follows an upgrade's redirects itself, and runs the session's middlewares on every
hop. On a hop to another origin it drops ``Authorization``, ``Cookie`` and
``Proxy-Authorization`` and sends the rest: a provider's own credential header (an API key),
or a bearer the path carries, went to whatever host a ``Location`` named. And it compares
origins scheme and all, so a hop from ``ws://h/a`` to ``http://h/b`` (as a server writes an
absolute ``Location``) lost the credentials on the very host they belong to.

So a socket's dialer sets :data:`UPGRADE_GUARD` while it upgrades, and the retry middleware,
always in an engine's stack, hands each upgrade hop to it before the hop is sent
(:meth:`UpgradeGuard.check`). A first hop is one aiohttp built for the URL the dialer gave it
(its ``original_url``, which an outer middleware's rewrite of ``url`` leaves alone); it sets
where the upgrade goes: its URL as the retry middleware sees it, after the caller's outer
middlewares (one may route a service's name to a gateway or a sidecar, or fail over to another
one, sending the first hop again: no redirect, and not refused). Any other hop is a redirect
aiohttp follows: to another host than the first hop's (than the dialed URL's, when an outer
middleware answered the first hop itself and no first hop came by) it is refused
(:class:`RedirectedElsewhere`, which the dialer makes a final failure), and to that host it
gets back the headers aiohttp dropped from it (every value of a repeated one). Before any first
hop came by, a redirect aiohttp built for the dialed host is that first hop: its URL as sent
sets where the upgrade goes (an outer middleware that answered the first hop with a redirect to
the dialed host, and one that routes the service's name, together). A redirect hop carrying a
user name or password its ``Location`` gave (aiohttp sends them as ``Basic`` credentials, in
place of the socket's ``Authorization`` or beside its own credential header) is refused too
(:class:`RedirectedWithCredentials`, final as well). An HTTP request never looks at it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping

from aiohttp import ClientRequest, hdrs
from multidict import CIMultiDict
from yarl import URL

__all__ = [
    "UPGRADE_GUARD",
    "RedirectedElsewhere",
    "RedirectedWithCredentials",
    "UpgradeGuard",
    "has_userinfo",
    "same_wire_host",
]

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
    their default ports), and not from TLS to plain text.

    From plain text to TLS on the same host, each at its scheme's default port (``ws://h`` to
    ``https://h``, as a server moving its clients to TLS writes it: port 80 to port 443,
    written or not), is the same host: the credentials go on to it encrypted. Any other port
    is compared as it is."""
    if not hop.raw_host:
        return False
    dialed_secure = dialed.scheme.lower() in _SECURE
    hop_secure = hop.scheme.lower() in _SECURE
    if dialed_secure and not hop_secure:
        return False
    dialed_host, dialed_port = _wire_key(dialed)
    hop_host, hop_port = _wire_key(hop)
    if dialed_host != hop_host:
        return False
    if hop_secure and not dialed_secure:
        return dialed_port == 80 and hop_port == 443
    return dialed_port == hop_port


def has_userinfo(url: URL) -> bool:
    """Whether ``url`` carries a user name or a password, which aiohttp sends as ``Basic``
    credentials (an empty user name is one too, as aiohttp reads it)."""
    return url.raw_user is not None or url.raw_password is not None


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


class RedirectedWithCredentials(Exception):
    """An upgrade redirect hop carrying a user name or password its ``Location`` gave, refused
    before it was sent.

    Says nothing of them, nor of the ``Location`` (its path may carry the bearer)."""

    def __init__(self) -> None:
        super().__init__("upgrade redirected to a Location carrying a user name or password")


#: How aiohttp writes the credentials of a URL's user name and password.
_BASIC = "basic "


class UpgradeGuard:
    """One upgrade's bounds: the host its first hop went to, and the headers that hop carried
    (credentials among them), to put back on a redirect to that host.

    ``dialed`` is the URL the dialer built; ``first`` the latest first hop's as the retry
    middleware saw it (None until then). Every redirect hop is held to :attr:`reference`. A
    reconnect dials with a guard of its own. ``checked`` says whether any hop was checked:
    False after the upgrade when the session had not the engine's stack (a caller's own
    session), whose hops went unchecked."""

    __slots__ = ("_authorization", "_names", "_restore", "checked", "dialed", "first")

    def __init__(self, dialed: URL, headers: Mapping[str, str]) -> None:
        self.dialed = dialed
        # The socket's header names, each once (in any case), and what to put back: every
        # value of a repeated one (a dict kept the first alone).
        self._names = tuple({name.lower(): name for name in headers}.values())
        self._restore: CIMultiDict[str] = CIMultiDict(headers)
        # The Authorization the upgrade itself sends: the socket's own until a first hop comes
        # by, then that hop's as sent (an outer middleware may set one of its own).
        self._authorization = next(
            (value for name, value in headers.items() if name.lower() == "authorization"), None
        )
        self.first: URL | None = None
        self.checked = False

    @property
    def reference(self) -> URL:
        """The URL whose host a redirect hop must go to: the first hop's as sent, or the dialed
        URL's while no first hop came by (an outer middleware answered it with a redirect)."""
        return self.first if self.first is not None else self.dialed

    def check(self, request: ClientRequest) -> None:
        """Before ``request``, a hop of the upgrade, is sent. A first hop (aiohttp built it
        for the dialed URL; an outer middleware may have routed it elsewhere, or be sending it
        again to another gateway) is taken as it is, and sets :attr:`reference`; so is, before
        any first hop came by, a redirect aiohttp built for the dialed host (an outer
        middleware answered the first hop with it), once it passes the checks below. Any
        other, a redirect: raise :class:`RedirectedElsewhere` if it goes to another host than
        the reference's. A redirect to that host carrying ``Basic`` credentials the upgrade
        does not send (a ``Location``'s user name and password) raises
        :class:`RedirectedWithCredentials`; else it gets back the headers the upgrade was sent
        with that aiohttp dropped on a change of origin (``ws`` to ``http`` on the same host
        is one)."""
        self.checked = True
        url = request.url
        original = request.original_url
        if original == self.dialed:
            # aiohttp builds each redirect hop as a request of its own, for its Location: only
            # the first (or that one again) was built for the dialed URL. Its URL here is where
            # the caller's outer middlewares sent it: the host for the redirects that follow.
            sent = request.headers
            if self.first is not None and self._foreign_basic(sent.get(hdrs.AUTHORIZATION)):
                # That one again, but with Basic credentials the first did not carry: a
                # Location back to the dialed URL with a user name and password (aiohttp
                # strips them from the URL, which then equals the dialed one).
                raise RedirectedWithCredentials
            self.first = url
            # What to put back is what this hop carried of the socket's headers, as the outer
            # middlewares left them: one they took out is not sent again.
            self._restore = CIMultiDict(
                (name, value) for name in self._names for value in sent.getall(name, ())
            )
            self._authorization = sent.get(hdrs.AUTHORIZATION)
            return
        if self.first is None and same_wire_host(self.dialed, original):
            # No first hop came by (an outer middleware answered it with a redirect), and
            # aiohttp built this one for the dialed host: the first hop, in effect. Where the
            # outer middlewares sent it (a gateway they route the service's name to) is where
            # the upgrade goes, as it would have been for the first hop itself; it gets back
            # the socket's headers aiohttp dropped, as a redirect on that host does.
            self._restore_on(request)
            self.first = url
            return
        if not same_wire_host(self.reference, url):
            raise RedirectedElsewhere(shown_origin(url))
        self._restore_on(request)

    def _foreign_basic(self, authorization: str | None) -> bool:
        """Whether ``authorization`` is ``Basic`` credentials other than those the upgrade
        itself sends."""
        return (
            authorization is not None
            and authorization != self._authorization
            and authorization[: len(_BASIC)].lower() == _BASIC
        )

    def _restore_on(self, request: ClientRequest) -> None:
        """Refuse a redirect hop with credentials of a ``Location``'s own; else put back on it
        the socket's headers aiohttp dropped."""
        headers = request.headers
        if self._foreign_basic(headers.get(hdrs.AUTHORIZATION)):
            # aiohttp took them from the Location's user name and password (stripped from the
            # hop's URLs by then): the server's credentials, in place of the socket's own or
            # beside them. Followed, the socket opened on them, or was refused for ever.
            raise RedirectedWithCredentials
        # Every value of a name the hop lacks: picked before any goes back, or a repeated
        # one's first would hide the rest.
        dropped = [(name, value) for name, value in self._restore.items() if name not in headers]
        for name, value in dropped:
            headers.add(name, value)


#: While a resilient socket's dialer upgrades: the :class:`UpgradeGuard` its hops pass. Unset
#: (None) for any other request, a caller's own ``ws_connect`` included.
UPGRADE_GUARD: contextvars.ContextVar[UpgradeGuard | None] = contextvars.ContextVar(
    "le_transport_upgrade_guard", default=None
)
