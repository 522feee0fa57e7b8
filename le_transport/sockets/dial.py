"""Opening one WebSocket connection: URL, credentials where the protocol puts them, upgrade.

A :class:`Dialer` makes one connection per call and reports a failure as a
:class:`DialFailed` carrying the pure :class:`~le_transport.policies.Disconnect` facts, so that
the socket's owner decides what to do with it. :class:`EngineDialer` dials through an engine:
its domain provider (the host), its auth provider (the bearer or JWT) and its aiohttp session.
The bearer goes where LiveEngage puts it: in the UMS brand path, in an
``Authorization: jwt <token>`` header, or in the consumer socket's ``InitConnection`` first frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import aiohttp
from aiohttp import hdrs
from multidict import CIMultiDict
from yarl import URL

from .._redact import Secret, redact_url
from ..clock import Clock, timeout_after
from ..errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectionFailed,
    DomainResolutionError,
    InvalidRetryAfter,
    ProviderError,
    Repeat,
    RequestError,
    SocketError,
    TransportError,
    UnexpectedAnswer,
)
from ..middleware.context import provider_failed, safe_cause
from ..middleware.retry import parse_retry_after_date
from ..middleware.upgrade import (
    UPGRADE_GUARD,
    RedirectedElsewhere,
    RedirectedWithCredentials,
    UpgradeGuard,
    has_userinfo,
    same_wire_host,
    shown_origin,
)
from ..policies._validate import finite_number
from ..policies._validate import shown as shown_value
from ..policies.close_codes import Disconnect
from ..policies.keepalive import Keepalive
from ..policies.retry_after import parse_retry_after
from ..providers._http import validate_account
from ..providers.auth import AuthProvider, Credentials, InvalidCredentials, as_credentials
from ..recovery import is_setup_error, repeat_of
from .correlation import failure_code
from .options import (
    CONSUMER_SOCKET_QUERY,
    MAX_MSG_SIZE,
    PREPARE_TIMEOUT,
    UMS_BRAND_SOCKET_QUERY,
    keepalive_for_path,
    query_for_path,
)
from .wrapping import UPGRADE_PATH, UPGRADE_SERVICE, socket_wrapper

if TYPE_CHECKING:
    from ..engine import Engine

__all__ = [
    "BEARER_FIELD",
    "CONSUMER_SOCKET_QUERY",
    "UMS_BRAND_SOCKET_QUERY",
    "AuthPlacement",
    "Connection",
    "DialFailed",
    "Dialer",
    "EngineDialer",
    "consumer_path",
    "init_connection_frame",
    "read_error_disconnect",
    "ums_brand_path",
    "write_never_began",
]

_log = logging.getLogger("le_transport.sockets")

#: The placeholder replaced by the bearer in a path, on each connect.
BEARER_FIELD = "{bearer}"
#: Frames held that arrive before ``InitConnection`` is answered (besides the bound on their
#: size, ``max_msg_size`` in all): a server that sends more is failed, not buffered for ever.
MAX_EARLY_FRAMES = 1000
#: How many redirects written ``ws``/``wss`` one upgrade follows (aiohttp's own bound on
#: the ``http``/``https`` ones it follows applies between them).
_MAX_WS_LOCATIONS = 10
#: The scheme a ``Location`` written for a WebSocket is followed over.
_WS_SCHEMES = {"ws": "http", "wss": "https"}
#: How aiohttp (3.14, ``ClientSession._request``) begins the ValueError it raises, before the
#: hop is built, for a request whose own Authorization header would go beside other credentials:
#: a same-origin redirect's ``Location`` user name and password, or the session's ``auth=``.
_COMBINED_CREDENTIALS = "Cannot combine AUTHORIZATION header"


def _digits(account: object) -> object:
    """An account id given as an int (not a bool, from 0 to 64 digits), as its digits; anything
    else as it is (refused by the check that follows)."""
    return str(account) if type(account) is int and 0 <= account < 10**64 else account


def _encoded_path(text: str) -> str:
    """``text``, a piece of a checked path, percent-encoded as :meth:`Engine.url_for` encodes
    a path (yarl's path quoting: a ``%`` is a literal ``%25``, ``/`` kept)."""
    return URL.build(path="/" + text).raw_path[1:]


def ums_brand_path(account: str) -> str:
    """The UMS agent socket's path for ``account``, with the bearer's place marked. The
    account is checked as ``UserLogin(account=...)`` checks it (a
    :class:`~le_transport.errors.ConfigurationError` for None, bytes, or anything that is no
    LiveEngage account id): ``str()`` of it made the path ``/ws_api/account/None/...``."""
    account = validate_account(_digits(account), owner="ums_brand_path")
    return f"/ws_api/account/{quote(account, safe='')}/messaging/brand/{BEARER_FIELD}"


def consumer_path(account: str) -> str:
    """The Messaging Window API consumer socket's path for ``account`` (checked as
    :func:`ums_brand_path` checks it)."""
    account = validate_account(_digits(account), owner="consumer_path")
    return f"/ws_api/account/{quote(account, safe='')}/messaging/consumer"


#: What the consumer socket's ``InitConnection`` says about the client, unless told otherwise.
DEFAULT_CLIENT_PROPERTIES: Mapping[str, Any] = {
    "type": ".ams.headers.ClientProperties",
    "deviceFamily": "DESKTOP",
    "os": "OTHER",
}


class AuthPlacement(enum.Enum):
    """Where a socket carries its credentials."""

    #: In the path, where the path has ``{bearer}`` (the UMS brand socket).
    PATH = "path"
    #: In the upgrade's headers, as the auth provider gives them (``Authorization: jwt <token>``).
    HEADER = "header"
    #: In an ``InitConnection`` frame sent first (the consumer socket where headers are
    #: impossible); the connect completes when its ``resp`` arrives.
    FIRST_FRAME = "first_frame"
    #: No credentials.
    NONE = "none"


def init_connection_frame(
    jwt: Secret, client_properties: Mapping[str, Any] = DEFAULT_CLIENT_PROPERTIES
) -> dict[str, Any]:
    """The consumer socket's first frame, authenticating with ``jwt`` (a :class:`Secret`;
    anything else, a plain str included, is a :class:`~le_transport.errors.ConfigurationError`
    naming its type: wrap a token in ``Secret(...)``)."""
    if not isinstance(jwt, Secret):
        raise ConfigurationError(
            f"init_connection_frame(jwt) must be a Secret (Secret(token)), got {type(jwt).__name__}"
        )
    return {
        "kind": "req",
        "id": "0",
        "type": "InitConnection",
        "headers": [
            dict(client_properties),
            {"type": ".ams.headers.ConsumerAuthentication", "jwt": jwt.reveal()},
        ],
    }


def _final(exc: TransportError) -> bool:
    """Whether ``exc`` is a failure a request schedule judged no repeat can help (its
    :attr:`~le_transport.errors.RequestError.repeat` ``FINAL``: a refused certificate, a
    status the ``Classifier`` makes final), or a Domain API failure caused by one: what the
    recovery loop never repeats, so that a socket stops where a call would. Other failures
    (an answer that is not JSON, a closing engine) keep their own handling."""
    if isinstance(exc, RequestError):
        return exc.repeat is Repeat.FINAL
    return isinstance(exc, DomainResolutionError) and repeat_of(exc) is Repeat.FINAL


class DialFailed(SocketError):
    """One connect failed: ``disconnect`` has the facts, ``credentials`` what was used."""

    def __init__(
        self, message: str, *, disconnect: Disconnect, credentials: Credentials | None = None
    ) -> None:
        super().__init__(message)
        self.disconnect = disconnect
        self.credentials = credentials


#: Why aiohttp fails a connection itself, by the close code it sends: the server sent a frame
#: that the client cannot take. Said in the library's words, never with the frame.
_FAILED_BECAUSE: Mapping[int, str] = {
    1002: "a frame that breaks the WebSocket protocol",
    1007: "a text frame that is not UTF-8",
    1009: "a message over max_msg_size",
}


def read_error_disconnect(
    ws: WireSocket, error: object, lifetime: float | None = None
) -> Disconnect:
    """How a connection ended whose read gave aiohttp's ``WSMsgType.ERROR`` with ``error``.

    A frame aiohttp cannot take (too big, not UTF-8, malformed) makes it fail the connection
    with a close code of its own (:class:`aiohttp.WebSocketError`'s, also ``ws.close_code``):
    that is :meth:`Disconnect.failed_by_client`, not a drop, so it never reads as the run of
    fast 1006s that means a revoked token. Anything else (a reset: aiohttp says 1006) is an
    abnormal drop.
    """
    code = error.code if isinstance(error, aiohttp.WebSocketError) else ws.close_code
    if code is None or code in (1000, 1006):
        return Disconnect.abnormal(lifetime=lifetime, error=type(error).__name__)
    because = _FAILED_BECAUSE.get(code, type(error).__name__)
    return Disconnect.failed_by_client(code, because, lifetime=lifetime)


def _retry_after_of(
    headers: Mapping[str, str] | None, wall_clock: Callable[[], float], *, shown: str
) -> float | None:
    """Seconds a refused upgrade's ``Retry-After`` asks the client to wait, or None.

    Read as the retry middleware reads an HTTP answer's, with the same parser
    (:func:`~le_transport.policies.parse_retry_after`): delta-seconds, or an HTTP-date measured
    from the answer's ``Date`` (else ``wall_clock()``, epoch seconds). A value that is neither
    is logged (``shown`` is the redacted URL) and ignored: the reconnect keeps its schedule.
    The cap is the close policy's (:attr:`~le_transport.policies.ClosePolicy.retry_after_ceiling`).
    """
    if headers is None:
        return None
    value = headers.get(hdrs.RETRY_AFTER)
    if value is None:
        return None
    date = headers.get(hdrs.DATE)
    now_epoch = wall_clock()
    if date is not None:
        with contextlib.suppress(InvalidRetryAfter):
            # A two-digit year in it is dated against the wall clock (RFC 9110's rule).
            now_epoch = parse_retry_after_date(date, now_epoch=now_epoch)
    try:
        return parse_retry_after(value, now_epoch=now_epoch)
    except InvalidRetryAfter as exc:
        _log.warning(
            "upgrade of %s: ignoring invalid Retry-After (%s); following the reconnect schedule",
            shown,
            exc,
        )
        return None


class WireSocket(Protocol):
    """What a connection needs of an open WebSocket: aiohttp's client socket has it, and so
    does the fault injector's wrapper around one (:mod:`le_transport.chaos.ws`)."""

    @property
    def closed(self) -> bool:
        """Whether the connection is over."""
        ...

    @property
    def close_code(self) -> int | None:
        """The close code, once closed."""
        ...

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage:
        """The next frame."""
        ...

    async def send_str(self, data: str, compress: int | None = None) -> None:
        """Write a text frame."""
        ...

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        """Close the connection."""
        ...


def _transport_of(ws: WireSocket) -> asyncio.Transport | None:
    # aiohttp shows the transport only through the response it keeps privately: read once, at
    # connect, while the response still holds its connection. A wrapper (the fault injector's)
    # shows the socket it wraps as ``wrapped``, so that the abort of a peer that stopped
    # reading works under chaos too.
    ws = getattr(ws, "wrapped", ws)
    if not isinstance(ws, aiohttp.ClientWebSocketResponse):
        return None
    connection = getattr(getattr(ws, "_response", None), "connection", None)
    transport = getattr(connection, "transport", None)
    return transport if isinstance(transport, asyncio.Transport) else None


def _sent_url(response: object) -> URL | None:
    """The URL ``response``'s request was sent to, after the session's middlewares (aiohttp's
    ``url`` is the one before them); None if it does not show one."""
    url = getattr(getattr(response, "request_info", None), "url", None)
    return url if isinstance(url, URL) else None


def _redirected_elsewhere(ws: aiohttp.ClientWebSocketResponse, dialed: URL) -> str | None:
    """The origin an upgrade was redirected to and opened at, if it is not the host its first
    hop was sent to (:func:`~le_transport.middleware.upgrade.same_wire_host`); None if it
    opened there, or was not redirected.

    The second line, after the fact, for a session without the engine's stack (whose retry
    middleware refuses such a hop before it is sent), held to the same bounds: the first
    hop's URL as sent (the session's own middlewares may route it), or ``dialed`` if aiohttp
    does not show it, against the last's. aiohttp shows the upgrade's answer, its redirects
    and URLs, only privately: a redirect whose final URL cannot be read is taken as one
    elsewhere (closed, never used), and an answer that cannot be read at all as no redirect
    (nothing tells one happened)."""
    response = getattr(ws, "_response", None)
    history = getattr(response, "history", ())
    if not history:
        return None
    final = _sent_url(response)
    if final is None:
        return "an origin aiohttp does not show"
    first = _sent_url(history[0]) or dialed
    if same_wire_host(first, final):
        return None
    return shown_origin(final)


def _redirected_with_credentials(ws: aiohttp.ClientWebSocketResponse) -> bool:
    """Whether aiohttp followed a redirect whose ``Location`` carries a user name or password
    on the way to ``ws`` (the second line, after the fact, for a session without the engine's
    stack, as :func:`_redirected_elsewhere` is). A ``Location`` that cannot be read is left to
    that check."""
    for hop in getattr(getattr(ws, "_response", None), "history", ()):
        headers = getattr(hop, "headers", None)
        location = headers.get(hdrs.LOCATION) if isinstance(headers, Mapping) else None
        if not isinstance(location, str):
            continue
        try:
            if has_userinfo(URL(location)):
                return True
        except ValueError:
            continue
    return False


def _combined_credentials(exc: ValueError) -> bool:
    """Whether ``exc`` is aiohttp's refusal to send a request's own Authorization header
    beside other credentials, and not some other ValueError (a bug, to be seen as one)."""
    return type(exc) is ValueError and str(exc).startswith(_COMBINED_CREDENTIALS)


def _unsent_bytes(transport: asyncio.Transport) -> int:
    try:
        return transport.get_write_buffer_size()
    except (NotImplementedError, AttributeError):
        return 0


#: What aiohttp's drain raises (a :class:`aiohttp.ClientConnectionResetError` too) when the
#: connection is gone: by then the frame was handed to the transport.
_LOST_IN_DRAIN = "Connection lost"


def write_never_began(error: BaseException) -> bool:
    """Whether a failed :meth:`Connection.send_text` certainly wrote none of its frame, so that
    sending it again cannot deliver it twice.

    aiohttp's WebSocket writer (aiohttp 3.14, ``_websocket/writer.py``) refuses a closing
    transport with :class:`aiohttp.ClientConnectionResetError` ("Cannot write to closing
    transport") before it writes anything, and the fault injector's drop refuses the same way
    before anything reaches aiohttp. Once the whole frame was handed to the transport (which
    never raises), the one await left is the drain, which fails with ``ConnectionError`` (or
    a ``ClientConnectionResetError``) "Connection lost": the frame may have reached the peer.
    That, and any other error, leaves the frame in doubt: never sent again (at most once).
    """
    return isinstance(error, aiohttp.ClientConnectionResetError) and (
        error.args[:1] != (_LOST_IN_DRAIN,)
    )


class Connection:
    """One open WebSocket: the aiohttp socket, the credentials it was opened with, and frames
    that arrived during the connect (before the owner started reading): the text of a text
    frame, the bytes of a binary one, in the order they came."""

    __slots__ = ("credentials", "early_frames", "transport", "ws")

    def __init__(
        self,
        ws: WireSocket,
        credentials: Credentials | None,
        early_frames: Iterable[str | bytes] | None = None,
    ) -> None:
        self.ws = ws
        self.credentials = credentials
        self.early_frames: list[str | bytes] = [] if early_frames is None else list(early_frames)
        #: The TCP transport under the WebSocket, when aiohttp lets us see it.
        self.transport = _transport_of(ws)

    async def send_text(self, text: str) -> None:
        """Write one text frame."""
        await self.ws.send_str(text)

    async def close(self, clock: Clock, timeout: float, *, code: int = 1000) -> None:
        """Close: the close handshake if the peer answers within ``timeout``, else cut it."""
        try:
            if self.ws.closed:
                return
            try:
                async with timeout_after(clock, timeout):
                    await self.ws.close(code=code)
            except TimeoutError:
                _log.debug("close handshake unanswered after %s s; connection cut", timeout)
            except (aiohttp.ClientError, OSError):
                pass
        finally:
            transport = self.transport
            if transport is not None and (_unsent_bytes(transport) or not self.ws.closed):
                # aiohttp's cut is a transport close(), which first flushes what is buffered:
                # to a peer that stopped reading, never. The socket would stay open, and a
                # send waiting for the buffer to drain would wait for ever.
                # Still open: the close was cut short before aiohttp began it (cancelled while
                # it waited for a read to let go, as a clock whose sleep fails does at once),
                # and nothing else would ever close this connection.
                transport.abort()
                if not self.ws.closed:
                    # Bounded: the transport is gone, so aiohttp's close fails to write its
                    # frame (or reads the end) at once; it only marks the socket closed.
                    with contextlib.suppress(Exception):
                        await self.ws.close(code=code)


class Dialer(Protocol):
    """Makes one connection per :meth:`dial`; the owner of a socket calls it.

    A dialer may also have a ``default_keepalive`` attribute (a
    :class:`~le_transport.policies.Keepalive` or None), as :class:`EngineDialer` does: the
    keepalive its sockets run when their options leave it to the default
    (:data:`~le_transport.sockets.KEEPALIVE_BY_PATH`). Without one, they run none.
    """

    @property
    def name(self) -> str:
        """What this socket is, for logs and events (no secret: the URL is redacted)."""
        ...

    async def dial(self) -> Connection:
        """Open a connection, or raise :class:`DialFailed` for a failed connect to retry.

        Anything else it raises stops the socket: an ``AuthenticationError`` when credentials
        cannot be had at all (:class:`~le_transport.errors.SocketAuthFailed`), any other error
        (a setup mistake, such as an unknown service) as
        :class:`~le_transport.errors.SocketClosed` caused by it."""
        ...

    async def reauthenticate(self, rejected: Credentials | None) -> None:
        """The server rejected ``rejected``: make the next :meth:`dial` use fresh ones."""
        ...

    async def refresh(self) -> None:
        """Forget cached domains and credentials (the default escalation)."""
        ...


class EngineDialer:
    """Dials ``service``/``path`` through an engine's domains, auth and session.

    ``placement`` is an :class:`AuthPlacement`, or None for the path's default (``PATH`` when
    the path has ``{bearer}``, else ``HEADER`` with an auth provider and ``NONE`` without):
    anything else, or a placement that needs what is missing (an auth provider, ``{bearer}``
    in the path for ``PATH``), is a :class:`~le_transport.errors.ConfigurationError`.

    The upgrade URL's query is the protocol's version for a LiveEngage messaging path
    (:func:`~le_transport.sockets.options.query_for_path`: ``v=2.1`` on the UMS agent socket,
    ``v=3`` on the consumer socket; none on any other path) with ``params`` laid over it, name
    by name: the caller's values win (``{"v": "2"}``), and params without ``v`` keep the
    default one. The URL is only ever shown (logs, errors, :attr:`name`) with the bearer's
    place, never its value.

    ``headers``, the upgrade's own (every value of a repeated one, as a ``CIMultiDict``
    holds them, sent on every connect), are checked when the dialer is built, as
    :meth:`~le_transport.Engine.websocket` checks them: one that cannot be sent, one the
    credentials would replace (in the headers), or one of the upgrade's own (``Upgrade``,
    ``Connection``, ``Sec-WebSocket-Version``, ``-Key``, ``-Extensions``, ``-Protocol``) is an
    :class:`~le_transport.errors.InvalidRequest` naming the header, never showing its value.
    So are ``params`` (a mapping or (name, value) pairs, one value a name, each sendable) and
    ``client_properties`` (a mapping of JSON values), as :meth:`~le_transport.Engine.websocket`
    checks them; a ``connect_timeout`` or ``prepare_timeout`` that is no finite number of
    seconds > 0, or a ``max_msg_size`` that is no int >= 0 (0: no bound), is a
    :class:`~le_transport.errors.ConfigurationError`.

    An upgrade refused with a ``Retry-After`` reports it in the :class:`DialFailed`'s
    :class:`~le_transport.policies.Disconnect` (``retry_after``, seconds), for the close policy
    to make the reconnect wait; ``wall_clock`` (epoch seconds; default: the engine's
    :attr:`~le_transport.Engine.wall_clock`) dates an HTTP-date one when the answer carries no
    ``Date``.
    """

    # One per socket: no instance dict.
    __slots__ = (
        "_auth",
        "_client_properties",
        "_connect_timeout",
        "_engine",
        "_headers",
        "_last",
        "_max_msg_size",
        "_name",
        "_params",
        "_path",
        "_placement",
        "_prepare_timeout",
        "_service",
        "_wall_clock",
    )

    def __init__(
        self,
        engine: Engine,
        service: str,
        path: str,
        *,
        params: Mapping[str, str | int | float] | None = None,
        auth: AuthProvider | None = None,
        placement: AuthPlacement | None = None,
        headers: Mapping[str, str] | None = None,
        client_properties: Mapping[str, Any] | None = None,
        connect_timeout: float = 30.0,
        prepare_timeout: float | None = PREPARE_TIMEOUT,
        max_msg_size: int = MAX_MSG_SIZE,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        if placement is not None and not isinstance(placement, AuthPlacement):
            # Anything else (the str "path", say) would carry the credentials nowhere: every
            # upgrade refused, re-login after re-login, and an error that blames the login.
            raise ConfigurationError(
                "auth_placement must be an AuthPlacement (PATH, HEADER, FIRST_FRAME, NONE) or "
                f"None for the path's default, got a {type(placement).__name__}"
            )
        if placement is None:
            if BEARER_FIELD in path:
                placement = AuthPlacement.PATH
            else:
                placement = AuthPlacement.HEADER if auth is not None else AuthPlacement.NONE
        if placement is not AuthPlacement.NONE and auth is None:
            raise ConfigurationError(
                f"a socket with credentials in its {placement.value} needs an auth provider: "
                "give engine.websocket() or the Engine one (their auth argument)"
            )
        if placement is AuthPlacement.PATH and BEARER_FIELD not in path:
            raise ConfigurationError(
                f"AuthPlacement.PATH needs '{BEARER_FIELD}' in the path, where the bearer is put"
            )
        # Engine.websocket's own checks, one function each for both (imported here: the engine
        # imports this module): at construction, so that what the upgrade cannot carry fails
        # at once, not at the first connect (or, for a header a server tolerates once, every
        # reconnect). The credentials replace the caller's headers only in the headers.
        from ..engine import _check_client_properties, _check_headers, _socket_query

        if headers is not None:
            owner = auth if placement is AuthPlacement.HEADER else None
            _check_headers(headers, service, "GET", owner, socket=True)
        if params is not None:
            params = _socket_query(params, service)
        if client_properties is not None:
            _check_client_properties(client_properties, service)
        # As SocketOptions checks them (Engine.websocket's come from there): else a bad one
        # failed at the first connect, as the clock's or aiohttp's raw error.
        for field, seconds in (
            ("connect_timeout", connect_timeout),
            ("prepare_timeout", 1.0 if prepare_timeout is None else prepare_timeout),
        ):
            if not finite_number(seconds) or seconds <= 0:
                none = " or None" if field == "prepare_timeout" else ""
                raise ConfigurationError(
                    f"EngineDialer.{field} must be a finite number of seconds > 0{none}, got "
                    f"{shown_value(seconds)}"
                )
        if isinstance(max_msg_size, bool) or not isinstance(max_msg_size, int) or max_msg_size < 0:
            raise ConfigurationError(
                "EngineDialer.max_msg_size must be an int >= 1 (bytes), or 0 for no bound, got "
                f"{shown_value(max_msg_size)}"
            )
        self._engine = engine
        self._service = service
        self._path = path
        # The protocol's version for a LiveEngage messaging path, the caller's params over it
        # (theirs win, name by name): a socket dialed without params speaks the version its
        # server expects, and one given other params keeps it.
        self._params = {**query_for_path(path), **(params or {})}
        self._auth = auth
        self._placement = placement
        # Every value of a repeated header (a CIMultiDict's), on every connect: a dict kept
        # one alone. Each under the name's first spelling: aiohttp tells a repeat by its exact
        # spelling, and the last of two spelt differently ("X-Tag", "x-tag") replaced the first.
        self._headers: CIMultiDict[str] = CIMultiDict()
        spelt: dict[str, str] = {}
        for name, value in (headers or {}).items():
            self._headers.add(spelt.setdefault(name.lower(), name), value)
        self._client_properties = client_properties or DEFAULT_CLIENT_PROPERTIES
        self._connect_timeout = connect_timeout
        self._prepare_timeout = prepare_timeout
        self._max_msg_size = max_msg_size
        # Epoch seconds, only to read a refused upgrade's Retry-After given as an HTTP-date
        # when the answer has no Date header: the engine's unless told otherwise, so that it is
        # injected once, as the clock is.
        self._wall_clock = engine.wall_clock if wall_clock is None else wall_clock
        self._last: Credentials | None = None
        shown = redact_url(URL.build(path=path.replace(BEARER_FIELD, "bearer")))
        # A path without its leading "/" (refused at the first connect) must not read as part
        # of the service's name.
        self._name = f"{service}{shown}" if shown.startswith("/") else f"{service} {shown}"

    @property
    def name(self) -> str:
        """``service/path`` with the bearer's place shown, never its value."""
        return self._name

    @property
    def placement(self) -> AuthPlacement:
        """Where the credentials go."""
        return self._placement

    @property
    def default_keepalive(self) -> Keepalive | None:
        """The keepalive a socket dialed here runs unless its options choose one: the guide's
        ``GetClock`` for a LiveEngage messaging path, else none
        (:func:`~le_transport.sockets.options.keepalive_for_path`)."""
        return keepalive_for_path(self._path)

    async def dial(self) -> Connection:
        """Resolve, get credentials, upgrade, and authenticate with the first frame if asked.

        Raises :class:`DialFailed` for a failed connect the socket retries (an upgrade refused
        or cut, a Domain API or Login Service that is down), an
        :class:`~le_transport.errors.AuthenticationError` for credentials that cannot be had,
        and, as is, a mistake no reconnect can fix (:func:`~le_transport.recovery.is_setup_error`:
        a path that is not an absolute path, an unknown service, a hostile host, an account the
        Domain API refuses with a 4xx; an upgrade redirected to another host, where the
        credentials must not go), on which the socket stops.

        ``connect_timeout`` bounds the upgrade and the first-frame auth; resolving the host and
        logging in run on their own schedules (a login that retries for 30 s must not be cut
        short and started over by every reconnect), bounded together only by the far longer
        ``prepare_timeout`` (None: no bound), against a provider that hangs: past it, a
        :class:`DialFailed` the socket retries.
        """
        try:
            async with timeout_after(self._engine.clock, self._prepare_timeout):
                url, shown, headers, creds = await self._prepare()
        except TimeoutError:
            # A provider that never answers (a vault that hangs): no schedule of its own ends
            # it, and the socket stayed CONNECTING for ever, neither failing nor escalating.
            raise DialFailed(
                f"resolving the host and getting credentials for {self._name} took longer "
                f"than {self._prepare_timeout} s",
                disconnect=Disconnect.connect_failed("prepare timeout"),
            ) from None
        try:
            async with timeout_after(self._engine.clock, self._connect_timeout):
                conn = await self._connect(url, shown, headers, creds)
        except TimeoutError:
            raise DialFailed(
                f"connect took longer than {self._connect_timeout} s",
                disconnect=Disconnect.connect_failed("timeout"),
                credentials=creds,
            ) from None
        return conn

    async def _prepare(self) -> tuple[URL, str, CIMultiDict[str], Credentials | None]:
        """The URL to dial, the same URL as it may be shown (the template's path: no bearer,
        wherever the path puts it), the upgrade's headers, and the credentials."""
        engine = self._engine
        ws_scheme = "wss" if engine.scheme == "https" else "ws"
        template_path = self._path.replace(BEARER_FIELD, "bearer")
        try:
            base = await engine.url_for(self._service, template_path, scheme=ws_scheme)
        except AuthenticationError:
            raise
        except TransportError as exc:
            if is_setup_error(exc) or _final(exc):
                # A path that is not a path, an unknown service, a hostile host, an account
                # the Domain API refuses (4xx), a failure no repeat helps (a refused
                # certificate): final over HTTP, and as final here. Raised as is, for the owner
                # to stop; only an outage is a failed connect to retry.
                raise
            raise DialFailed(
                f"could not resolve {self._service!r}: {type(exc).__name__}",
                disconnect=Disconnect.connect_failed(type(exc).__name__),
            ) from exc
        # The URL dialed, its query included: the credentials are asked for over it, as a
        # signature (OAuth 1.0) covers the query a gateway checks it against.
        url = base.with_query(self._params) if self._params else base
        creds: Credentials | None = None
        if self._auth is not None and self._placement is not AuthPlacement.NONE:
            bug: tuple[Exception, TransportError] | None = None
            try:
                creds = await self._auth.credentials("GET", url)
                if type(creds) is not Credentials:
                    # An answer that is no Credentials (a dict, a str), or one whose headers
                    # or bearer cannot be sent: the provider's bug, typed below.
                    creds = as_credentials(creds)
            except InvalidCredentials as exc:
                # Credentials the provider made that cannot be sent: a ConfigurationError, but
                # the provider's (a ProviderError, as over HTTP), not the caller's.
                bug = (
                    exc,
                    provider_failed("auth", self._auth, "credentials", exc, service=self._service),
                )
            except UnexpectedAnswer as exc:
                # Neither a refusal nor a login (a redirect, a proxy's maintenance page): no
                # word on the credentials, an outage by another name, retried on the
                # reconnect schedule as the recovery loop waits it out over HTTP.
                raise DialFailed(
                    f"no credentials for {self._name}: {type(exc).__name__}",
                    disconnect=Disconnect.connect_failed(f"credentials: {type(exc).__name__}"),
                ) from exc
            except AuthenticationError:
                # Bad credentials, a login refused: the owner stops instead of looping.
                raise
            except TransportError as exc:
                if is_setup_error(exc) or _final(exc):
                    # The Login Service's host unknown, or refused by the Domain API, or a
                    # login failing in a way no repeat helps (its certificate refused, a
                    # status the Classifier makes final): as final as over HTTP, where the
                    # recovery loop never repeats it (a socket looped on it for ever).
                    raise
                # The Login Service is down (its own schedule is spent): a failed connect
                # like any other, retried on the reconnect schedule and escalated.
                raise DialFailed(
                    f"no credentials for {self._name}: {type(exc).__name__}",
                    disconnect=Disconnect.connect_failed(f"credentials: {type(exc).__name__}"),
                ) from exc
            except Exception as exc:
                # Not a TransportError: the auth provider's own bug, or its own outage (a vault
                # it fetches from is down). Raised below, outside this clause, so that an
                # aiohttp error whose text shows a URL is neither cause nor context.
                bug = (
                    exc,
                    provider_failed("auth", self._auth, "credentials", exc, service=self._service),
                )
            if bug is not None:
                error, failed = bug
                failed.__cause__ = safe_cause(error)
                if isinstance(failed, ProviderError):
                    # Typed (logged, its exception the cause) and final, as in a request:
                    # reconnecting would only meet it again.
                    raise failed
                # An outage: a failed connect, retried on the reconnect schedule like the
                # Login Service down.
                raise DialFailed(
                    f"no credentials for {self._name}: {type(error).__name__}",
                    disconnect=Disconnect.connect_failed(f"credentials: {type(error).__name__}"),
                ) from failed
            self._last = creds
        # Shown in errors from the template, before the bearer goes in: redact_url knows only
        # the UMS path's place for it (after /brand/), and a path template may put it anywhere.
        shown = redact_url(url)
        headers = self._headers.copy()
        if self._placement is AuthPlacement.PATH:
            # The template's text percent-encoded exactly as url_for (and so a socket with the
            # bearer in its headers, or an HTTP call) encodes a path, piece by piece around the
            # bearer's place, which takes the bearer quoted whole (a "/" or "+" in a token is
            # no separator). The template raw, sent as already encoded, put a non-ASCII
            # character on the request line as UTF-8 bytes, refused by the server for good.
            bearer = quote(_need_bearer(creds).reveal(), safe="")
            encoded = bearer.join(_encoded_path(piece) for piece in self._path.split(BEARER_FIELD))
            url = url.with_path(encoded, encoded=True).with_query(self._params)
        elif self._placement is AuthPlacement.HEADER and creds is not None:
            headers.update(creds.headers)
        return url, shown, headers, creds

    async def _connect(
        self, url: URL, shown: str, headers: CIMultiDict[str], creds: Credentials | None
    ) -> Connection:
        engine = self._engine
        session = engine.session
        template_path = self._path.replace(BEARER_FIELD, "bearer")
        # The fault injector's upgrade rules match and record this path, not the real one,
        # which carries the bearer wherever the template put it.
        shown_path = UPGRADE_PATH.set(template_path)
        of_service = UPGRADE_SERVICE.set(self._service)
        # Each hop of the upgrade is checked by the engine's retry middleware before it is
        # sent: a redirect to the first hop's host (this one, or where the caller's outer
        # middlewares routed it) gets back the credentials aiohttp dropped; elsewhere, refused.
        guard = UpgradeGuard(url, headers)
        guarded = UPGRADE_GUARD.set(guard)
        # Raised after the clauses, not in them: aiohttp's error would be its __context__, and
        # a refused upgrade's holds the URL with the bearer in its path (suppressed from
        # tracebacks, but reachable by code that walks __context__).
        failure: TransportError | None = None
        try:
            upgraded = await self._upgrade(session, url, shown, headers, creds, guard)
        except RedirectedElsewhere as exc:
            failure = self._elsewhere(shown, exc.origin)
        except RedirectedWithCredentials:
            failure = self._with_credentials(shown)
        except aiohttp.WSServerHandshakeError as exc:
            retry_after = _retry_after_of(exc.headers, self._wall_clock, shown=shown)
            # Redirected on the service's host (a hop elsewhere is refused before it is sent)
            # to a page that is no WebSocket, a maintenance page often: an outage by another
            # name, reconnected into as the providers treat a redirect; named so.
            hops = exc.history
            via = f" after a redirect (HTTP {hops[0].status})" if hops else ""
            failure = DialFailed(
                f"upgrade of {shown} refused with HTTP {exc.status}{via}",
                disconnect=Disconnect.handshake_rejected(exc.status, retry_after),
                credentials=creds,
            )
        except aiohttp.ClientConnectorCertificateError as exc:
            # The socket's host refused by its certificate: final, as the same refusal is for
            # an HTTP call or the socket's own login (reconnecting cannot make it valid).
            failure = self._final_failure(
                f"could not connect to {shown}: its TLS certificate was refused "
                f"({type(exc).__name__})",
                never_sent=True,
            )
        except (aiohttp.ClientError, OSError) as exc:
            failure = DialFailed(
                f"could not connect to {shown}: {type(exc).__name__}{_os_detail(exc)}",
                disconnect=Disconnect.connect_failed(type(exc).__name__),
                credentials=creds,
            )
        except ValueError as exc:
            # Not one of aiohttp's errors (those are ClientErrors, above). Its refusal to send
            # the socket's own Authorization header beside other credentials is a failure of
            # this dial, final (a reconnect meets it again); any other ValueError is a bug
            # (a caller's middleware's, or this library's), raised as itself.
            if not _combined_credentials(exc):
                raise
            failure = self._combined(shown, session)
        finally:
            UPGRADE_GUARD.reset(guarded)
            UPGRADE_SERVICE.reset(of_service)
            UPGRADE_PATH.reset(shown_path)
        if failure is not None:
            raise failure
        if isinstance(upgraded, TransportError):
            raise upgraded
        ws = upgraded
        moved = None if guard.checked else _redirected_elsewhere(ws, url)
        if moved is not None:
            # A session without the engine's stack: nothing checked the hops, aiohttp followed
            # one to another host with every header but Authorization and Cookie. Too late to
            # unsend; at least nothing more goes there (InitConnection's JWT, frames).
            await Connection(ws, creds).close(engine.clock, 0.1)
            raise self._elsewhere(shown, moved)
        if not guard.checked and _redirected_with_credentials(ws):
            # The same, on the socket's host, with a Location's user name and password sent as
            # Basic credentials: opened on the server's credentials, not the socket's.
            await Connection(ws, creds).close(engine.clock, 0.1)
            raise self._with_credentials(shown)
        wire: WireSocket = ws
        wrapper = socket_wrapper(engine.middlewares)
        if wrapper is not None:
            # Chaos testing: the plan's socket faults strike this connection client-side.
            try:
                wire = await wrapper.wrap_socket(ws, template_path, service=self._service)
            except BaseException:
                # A session Delay cut short (the connect timeout, a close): the socket the
                # upgrade opened is closed here, not left for the garbage collector.
                await Connection(ws, creds).close(engine.clock, 0.1)
                raise
        conn = Connection(wire, creds)
        if self._placement is AuthPlacement.FIRST_FRAME:
            try:
                await self._init_connection(conn, _need_bearer(creds))
            except BaseException:
                await conn.close(engine.clock, 0.1)
                raise
        return conn

    async def _upgrade(
        self,
        session: aiohttp.ClientSession,
        url: URL,
        shown: str,
        headers: CIMultiDict[str],
        creds: Credentials | None,
        guard: UpgradeGuard,
    ) -> aiohttp.ClientWebSocketResponse | TransportError:
        """The upgrade to ``url``, its redirects followed: the socket, or the final failure of
        a redirect that cannot be followed (returned, so that aiohttp's error, whose text is
        the ``Location``, is neither its cause nor its context).

        aiohttp follows only a ``Location`` written ``http``/``https``; one written ``ws``
        or ``wss`` (a server naming its own scheme) it refuses outright, before any middleware
        sees it, and a socket reconnected into that refusal for ever. Such a redirect is
        followed here as ``http``/``https`` (:meth:`_ws_location`), dialed again under the same
        guard, which holds it to the upgrade's host as it holds any redirect hop."""
        target = url
        for _ in range(_MAX_WS_LOCATIONS + 1):
            try:
                return await session.ws_connect(
                    target,
                    headers=headers,
                    heartbeat=None,  # dead peers are found by the keepalive, on the clock
                    autoping=True,
                    autoclose=True,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=None),
                    max_msg_size=self._max_msg_size,
                )
            except aiohttp.NonHttpUrlRedirectClientError as exc:
                # The Location as the server wrote it: aiohttp's only argument.
                location = str(exc.args[0]) if exc.args else ""
            followed = self._ws_location(location, guard, shown)
            if isinstance(followed, TransportError):
                return followed
            target = followed
        return DialFailed(
            f"upgrade of {shown} was redirected to a ws/wss Location more than "
            f"{_MAX_WS_LOCATIONS} times",
            disconnect=Disconnect.connect_failed("TooManyRedirects"),
            credentials=creds,
        )

    def _ws_location(
        self, location: str, guard: UpgradeGuard, shown: str
    ) -> URL | ConnectionFailed:
        """Where to follow a redirect aiohttp would not, its ``Location`` not written
        ``http``/``https``: one written ``ws``/``wss`` as ``http``/``https`` (the same
        port, the same ``Location`` otherwise); anything else (another scheme, no host), a
        final :class:`ConnectionFailed`, as reconnecting meets it again.

        With the engine's stack the guard checks the hop as it checks any redirect's (so a
        caller's outer middleware routes it first); without it (nothing checked the first
        hop), a ``Location`` on another host than the dialed one's is refused here, before
        anything is sent there: final, as a redirect elsewhere is."""
        try:
            target: URL | None = URL(location)
        except ValueError:
            target = None
        scheme = target.scheme.lower() if target is not None else ""
        mapped = _WS_SCHEMES.get(scheme)
        if target is None or mapped is None or not target.raw_host:
            written = scheme if scheme.isascii() and 0 < len(scheme) <= 20 else "?"
            return self._final_failure(
                f"upgrade of {shown} was redirected to a Location that is neither an HTTP nor "
                f"a WebSocket URL with a host (scheme {written!r}): not followed"
            )
        if has_userinfo(target):
            # aiohttp would send them as Basic credentials (or refuse to, beside the socket's
            # Authorization header): refused before anything is dialed, final.
            return self._with_credentials(shown)
        target = target.with_scheme(mapped)
        if not guard.checked and not same_wire_host(guard.reference, target):
            return self._elsewhere(shown, shown_origin(target))
        return target

    def _elsewhere(self, shown: str, origin: str) -> ConnectionFailed:
        """The final failure of an upgrade redirected to ``origin``, another host's.

        A socket's credentials (a header, a bearer in the path, InitConnection's JWT) go only
        to its service's host, as over HTTP; a socket there without them is of no use, and
        reconnecting meets the same redirect: final. Named by its origin only: the path of
        the ``Location`` may carry the bearer."""
        return self._final_failure(
            f"upgrade of {shown} was redirected to another host ({origin}): a socket's "
            "credentials go only to its service's host; check the host the domain "
            f"provider gives for {self._service!r}"
        )

    def _with_credentials(self, shown: str) -> ConnectionFailed:
        """The final failure of an upgrade redirected to a ``Location`` carrying a user name or
        password: aiohttp would send them as Basic credentials, in place of the socket's own
        ``Authorization`` or beside its credentials. The server sends the same ``Location`` on
        every reconnect. Neither they nor the ``Location`` are shown."""
        return self._final_failure(
            f"upgrade of {shown} was redirected to a Location carrying a user name or "
            "password, which is not followed: a socket sends only its own credentials, to its "
            "service's host"
        )

    def _combined(self, shown: str, session: aiohttp.ClientSession) -> ConnectionFailed:
        """The final failure of an upgrade aiohttp would not send, its Authorization header
        beside other credentials: the session's own ``auth=``, else (a session without one)
        a same-origin redirect's ``Location`` user name and password, or with ``trust_env`` a
        ``.netrc`` entry for the host."""
        if session.auth is not None:
            why = (
                "the session's own auth argument cannot be sent beside the socket's "
                "Authorization header; dial the socket on a session without one"
            )
        else:
            why = "a redirect whose Location carries a user name or password is not followed"
            if session.trust_env:
                why += " (or a .netrc entry for the host, read under trust_env, clashes)"
        return self._final_failure(
            f"upgrade of {shown} could not go on: aiohttp refused to send it: {why}"
        )

    def _final_failure(self, message: str, *, never_sent: bool = False) -> ConnectionFailed:
        """A :class:`ConnectionFailed` of this dial that a reconnect would meet again: final."""
        failed = ConnectionFailed(message, service=self._service, never_sent=never_sent)
        failed.repeat = Repeat.FINAL
        return failed

    async def _init_connection(self, conn: Connection, jwt: Secret) -> None:
        frame = init_connection_frame(jwt, self._client_properties)
        held = 0
        try:
            await conn.send_text(json.dumps(frame))
            while True:
                msg = await conn.ws.receive()
                if msg.type is aiohttp.WSMsgType.ERROR:
                    failed = read_error_disconnect(conn.ws, msg.data, lifetime=0.0)
                    raise DialFailed(
                        f"the connection {failed.describe()} before InitConnection was answered",
                        disconnect=failed,
                        credentials=conn.credentials,
                    )
                if msg.type is aiohttp.WSMsgType.BINARY:
                    # Not the answer (a text frame), and no end either: held for the owner, as
                    # it would take it once connected, and counted against the same bounds.
                    held = self._hold_early(conn, msg.data, held)
                    continue
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    code = conn.ws.close_code or 1006
                    raise DialFailed(
                        f"the socket closed ({code}) before InitConnection was answered",
                        disconnect=Disconnect.close_frame(code, lifetime=0.0),
                        credentials=conn.credentials,
                    )
                try:
                    answer = json.loads(msg.data)
                except (ValueError, RecursionError):
                    # Not JSON, or nested deeper than the parser goes: not the answer, and
                    # held for the owner as text (as it would take it once connected).
                    answer = None
                if (
                    isinstance(answer, dict)
                    and answer.get("kind") == "resp"
                    and answer.get("reqId") == "0"
                ):
                    break
                held = self._hold_early(conn, msg.data, held)
        except (aiohttp.ClientError, OSError) as exc:
            raise DialFailed(
                f"InitConnection failed: {type(exc).__name__}",
                disconnect=Disconnect.abnormal(lifetime=0.0, error=type(exc).__name__),
                credentials=conn.credentials,
            ) from None
        status = failure_code(answer.get("code"))
        if status is not None:
            disconnect = Disconnect.handshake_rejected(status)
            raise DialFailed(
                f"InitConnection refused with code {status}",
                disconnect=disconnect,
                credentials=conn.credentials,
            )

    def _hold_early(self, conn: Connection, data: str | bytes, held: int) -> int:
        """Hold ``data``, a frame that came before ``InitConnection``'s answer, for the owner;
        the characters (bytes of a binary frame) held now, ``held`` before it. A
        :class:`DialFailed` (1008, failed by the client: no drop) past the bounds."""
        held += len(data)
        early = conn.early_frames
        # max_msg_size 0 is aiohttp's "no limit": then the frame count bounds alone.
        if len(early) >= MAX_EARLY_FRAMES or 0 < self._max_msg_size < held:
            # Nothing reads them until the connect completes: a server that floods before
            # answering would grow this without bound.
            raise DialFailed(
                f"more than {MAX_EARLY_FRAMES} frames or {self._max_msg_size} characters "
                "arrived before InitConnection was answered",
                disconnect=Disconnect.failed_by_client(
                    1008, "too much sent before InitConnection's answer", lifetime=0.0
                ),
                credentials=conn.credentials,
            )
        early.append(data)
        return held

    async def reauthenticate(self, rejected: Credentials | None) -> None:
        """Tell the auth provider the credentials were rejected (once per rejection)."""
        rejected = rejected or self._last
        if self._auth is not None and rejected is not None:
            await self._auth.invalidate(rejected)

    async def refresh(self) -> None:
        """Forget cached domains and credentials, so the next dial starts from scratch."""
        await self._engine.domains.invalidate()
        await self.reauthenticate(None)


def _need_bearer(creds: Credentials | None) -> Secret:
    if creds is None or creds.bearer is None or not creds.bearer:
        raise AuthenticationError(
            "the auth provider gave no bearer/JWT, and this socket carries one in its path or "
            "first frame"
        )
    return creds.bearer


def _os_detail(exc: BaseException) -> str:
    """The operating system's word on a failed connect (``" (errno 111: Connection refused)"``),
    or ``""``: what tells a name that does not resolve from a port nobody listens on.

    Only the errno and the system's own message, never the exception's text: aiohttp's shows
    the host and port it dialled, and the URL of a socket may carry a bearer.
    """
    os_error = getattr(exc, "os_error", exc)
    if not isinstance(os_error, OSError):
        return ""
    number, message = os_error.errno, os_error.strerror
    if isinstance(number, int) and number > 0:
        # The system's message for the number: asyncio's own strerror adds the address.
        message = os.strerror(number)
    if not isinstance(message, str) or not message:
        return f" (errno {number})" if isinstance(number, int) else ""
    message = message.encode("ascii", "replace").decode("ascii")[:80]
    return f" (errno {number}: {message})" if isinstance(number, int) else f" ({message})"
