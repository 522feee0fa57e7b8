"""The front door: an :class:`Engine` owns an aiohttp session with the policy stack on it.

``engine.request(method, service, path)`` resolves the service's host through the domain
provider, runs the call through the middleware stack (outer middlewares, retry, wire
middlewares such as fault injection) and returns a buffered :class:`Response`. Another SDK that
owns its session can take the same stack from :meth:`Engine.middlewares` instead.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import contextvars
import functools
import io
import json as _json
import logging
import math
import mimetypes
import numbers
import random
import re
import ssl as _ssl
import types
import typing
import warnings
import weakref
from collections.abc import (
    AsyncIterable,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any, ClassVar, TypedDict, TypeVar, Unpack, overload

import aiohttp
import attrs
from aiohttp import ClientMiddlewareType
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict
from yarl import URL

from ._checks import require_kind, require_option, utf8_encodable
from ._json import loads_strict
from ._redact import Secret, body_excerpt, is_auth_path, redact_text, redact_url
from ._shown import error_text
from .clock import Clock, RealClock, timeout_after, wall_of
from .errors import (
    AttemptRecord,
    BlockedError,
    BodyTooLarge,
    ConfigurationError,
    DeadlineExceeded,
    EngineClosed,
    InvalidRequest,
    InvalidRetryAfter,
    LoginRejected,
    Repeat,
    RequestError,
    ResponseDecodeError,
    TransportError,
    WrongEventLoop,
    status_error,
)
from .events import EventHooks, StateEvent, emit
from .middleware.auth import AuthMiddleware, charset_of
from .middleware.context import (
    _CALL_LEDGER,
    _CURRENT,
    AcceptingCallContext,
    CallContext,
    HandledCallContext,
    provider_failed,
    safe_cause,
    unsent_request_error,
    within_deadline,
)
from .middleware.overload import OverloadGuard, is_retry_gate
from .middleware.retry import (
    _FAILED_BODY_KEPT,
    DEFAULT_MAX_BODY_BYTES,
    ClosedInFlight,
    RetryMiddleware,
    parse_retry_after_date,
)
from .policies.backoff import BackoffPolicy
from .policies.classify import IDEMPOTENT_METHODS, Outcome, repeat_verdict
from .policies.keepalive import (
    CHAT_AGENT_API_REFRESH,
    SERVER_CHAT_API_CHAT_INFO,
    Keepalive,
    KeepaliveTransport,
)
from .policies.retry import RetryPolicy
from .policies.retry_after import parse_retry_after
from .providers._http import ProviderHttp, check_domains_account
from .providers.auth import AuthProvider, Credentials, InvalidCredentials, as_credentials
from .providers.domains import DomainProvider, StaticDomains, validate_host
from .providers.login import _KEEPALIVE_FALLBACK as _LOGIN_KEEPALIVE_FALLBACK
from .providers.login import AGENT_VEP, LoginServiceAuth
from .recovery import Recovery
from .sockets import (
    AuthPlacement,
    EngineDialer,
    KeepaliveTask,
    ReconnectPacer,
    RecoveryEscalation,
    ReloginEscalation,
    ResilientSocket,
    SocketOptions,
)
from .sockets.keepalive import KeepaliveScheduler
from .sockets.socket import FrameHandler, OnConnect, check_on_connect

__all__ = ["Engine", "InvalidRequest", "RequestOptions", "Response"]

_log = logging.getLogger("le_transport.engine")
_keepalive_log = logging.getLogger("le_transport.sockets")
#: What an HTTP keepalive falls back on when its run's request gives up on an outage, in the
#: retry middleware's give-up line (a WARNING, not an ERROR: nothing failed for a caller).
_KEEPALIVE_FALLBACK = "the keepalive goes on and runs again at its next interval"
#: Set by an HTTP keepalive's run around its request, with the run's task: :meth:`Engine.request`
#: made in that task then makes the call a :class:`HandledCallContext` with these words (see
#: ``Engine.keepalive``); a task started meanwhile (a provider's) inherits it, and is not that
#: task.
_HANDLED_BY: contextvars.ContextVar[tuple[str, asyncio.Task[Any] | None] | None] = (
    contextvars.ContextVar("le_transport_handled_by", default=None)
)

T = TypeVar("T")

_NO_JSON: Any = object()


class RequestOptions(TypedDict, total=False):
    """The keywords :meth:`Engine.request_json` passes on to :meth:`Engine.request` (all of
    them but ``accept``), each as :meth:`Engine.request` documents it."""

    params: Mapping[str, str | int | float] | None
    json: Any
    data: (
        bytes
        | str
        | Mapping[str, str]
        | Sequence[tuple[str, str]]
        | typing.IO[Any]
        | AsyncIterable[bytes]
        | aiohttp.FormData
        | None
    )
    headers: Mapping[str, str] | None
    idempotent: bool | None
    retry: RetryPolicy | None
    deadline: float | None
    attempt_timeout: float | None
    allow_redirects: bool
    recover: bool


#: How many checked paths and built URLs an engine keeps (it starts over when full).
_URL_CACHE_SIZE = 4096

#: Method names that need neither checking nor upper-casing (others are checked, then upper-cased).
_UPPER_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


#: What the standard codecs say of bytes they cannot decode: fixed phrases, shown as they are. A
#: codec's other reasons may quote the body (punycode's "Invalid extended code point '123'"):
#: those are said by their type only.
_FIXED_DECODE_REASONS = frozenset(
    {
        "invalid start byte",
        "invalid continuation byte",
        "unexpected end of data",
        "ordinal not in range(128)",
        "illegal multibyte sequence",
        "incomplete multibyte sequence",
        "character maps to <undefined>",
        "illegal UTF-16 surrogate",
        "illegal encoding",
        "truncated data",
        "code point not in range(0x110000)",
        "unexpected special character",
        "partial character in shift sequence",
        "non-zero padding bits in shift sequence",
    }
)


def _decode_reason(exc: UnicodeDecodeError) -> str:
    """``": <reason>"`` for a standard codec's fixed reason, else ``" (<type>)"``."""
    if exc.reason in _FIXED_DECODE_REASONS:
        return f": {exc.reason}"
    return f" ({type(exc).__name__})"


@attrs.frozen
class Response:
    """A complete answer: status, headers and the whole body, already read.

    ``url`` is redacted; ``attempts`` has every attempt the call took.

    A value: it can be copied (``copy.deepcopy``) and pickled (its headers as a fresh
    read-only ``CIMultiDictProxy`` of the same items, in order), as the errors can. Two
    responses are equal when all their fields are (headers by their items, attempts by
    value); the hash leaves the headers out (a ``CIMultiDictProxy`` has none), so a
    response can be a set member or a dict key, and equal responses hash alike.
    """

    status: int
    # Compared, not hashed: a CIMultiDictProxy is unhashable (equal responses still hash
    # alike: the hash is over a part of what equality compares).
    headers: CIMultiDictProxy[str] = attrs.field(hash=False)
    body: bytes
    method: str
    url: str
    service: str
    attempts: tuple[AttemptRecord, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the status is a success or a redirect (200 to 399): a 4xx or 5xx is not,
        nor a final 1xx (an interim status given as the answer, the server's protocol error,
        which a retry middleware without ``raise_for_status`` hands back once it ran out)."""
        return 200 <= self.status < 400

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # A CIMultiDictProxy cannot be pickled (nor so deep-copied): its items can.
        return (
            _rebuilt_response,
            (
                self.status,
                [(str(name), value) for name, value in self.headers.items()],
                self.body,
                self.method,
                self.url,
                self.service,
                self.attempts,
            ),
        )

    def __repr__(self) -> str:
        # Headers may carry Set-Cookie and bodies tokens: show neither, only their shape.
        return (
            f"Response(status={self.status}, method={self.method!r}, url={self.url!r}, "
            f"service={self.service!r}, body=<{len(self.body)} bytes>, "
            f"attempts={len(self.attempts)})"
        )

    def raise_for_status(self) -> None:
        """Raise, for a status that is not :attr:`ok`, the error the call would have raised had
        it not accepted the status (``accept=``) or been handed it back (a retry middleware
        without ``raise_for_status``): :class:`~le_transport.errors.ClientStatusError` for a
        4xx, :class:`~le_transport.errors.BlockedError` for a 451,
        :class:`~le_transport.errors.ServerStatusError` for a 5xx or a 429,
        :class:`~le_transport.errors.InterimStatusError` (a ``ServerStatusError``) for a final
        1xx, each with the status, a scrubbed excerpt of the body and the call's attempts.
        Nothing for a 2xx or 3xx."""
        if 200 <= self.status < 400:
            return
        raise status_error(
            self.status,
            "",
            body_excerpt(self.body, path=URL(self.url).path),
            tries=len(self.attempts),
            service=self.service,
            method=self.method,
            url=self.url,
            attempts=self.attempts,
        )

    def text(self, encoding: str | None = None) -> str:
        """The body as text, in ``encoding``; by default in the charset the answer's
        ``Content-Type`` names, else UTF-8 (and UTF-8 too when the named charset is no text
        encoding Python knows, as aiohttp does).

        :class:`ResponseDecodeError` if the body is not valid in it;
        :class:`~le_transport.errors.InvalidRequest` if the ``encoding`` given names no text
        encoding (the caller's mistake)."""
        failed: str | None = None
        if encoding is None:
            content_type = self.headers.get("Content-Type")
            declared = None if content_type is None else charset_of(content_type)
            encoding = "utf-8"
            if declared is not None:
                try:
                    return self.body.decode(declared)
                except (LookupError, TypeError):
                    pass  # "binary", "rot13", a typo: read as UTF-8
                except UnicodeDecodeError as exc:
                    failed = f"body is not valid {declared[:40]}{_decode_reason(exc)}"
                except UnicodeError as exc:
                    # A codec's own error (punycode, "undefined"): its text may quote the body.
                    failed = f"body is not valid {declared[:40]} ({type(exc).__name__})"
                except ValueError:
                    pass  # a name Python cannot even look up (a NUL in it): as a typo is
        if failed is None:
            try:
                return self.body.decode(encoding)
            except UnicodeDecodeError as exc:
                failed = f"body is not valid {encoding[:40]}{_decode_reason(exc)}"
            except UnicodeError as exc:
                failed = f"body is not valid {encoding[:40]} ({type(exc).__name__})"
            except (LookupError, TypeError, ValueError):
                # ValueError: a name Python cannot even look up ("utf-8\x00": a NUL in it).
                # After the clauses above: a UnicodeError is a ValueError too.
                raise InvalidRequest(
                    f"Response.text: {encoding!r:.40} is not a text encoding Python knows",
                    service=self.service,
                    method=self.method,
                    url=self.url,
                ) from None
        # Raised here, not in the except clause: the decode error holds the whole body, which
        # may hold a credential, and would be its context.
        raise self._decode_error(failed)

    @overload
    def json(self) -> Any: ...
    @overload
    def json(self, expect: type[T]) -> T: ...
    def json(self, expect: type[Any] | None = None) -> Any:
        """The body parsed as JSON, optionally checked to be of type ``expect``.

        JSON is read as UTF-8 (RFC 8259), whatever charset the answer names: a server that
        says ``charset=iso-8859-1`` over UTF-8 JSON must not turn "Zoë" into "ZoÃ«". A leading
        byte order mark is ignored, as RFC 8259 allows.

        Raises :class:`ResponseDecodeError` for an empty body, malformed JSON (``NaN`` and
        ``Infinity``, which Python's own parser takes, are not JSON; nor is a number too large
        for a float, which it reads as an infinity), or a value of the wrong type
        (``expect=dict`` for an object, ``list`` for an array, ``int`` for an integer); each
        is logged as a WARNING (``le_transport.engine``: the service, method, redacted URL,
        status and a scrubbed excerpt of the body). A JSON ``true`` or ``false``
        is a boolean, never an ``int``, a ``float`` or a ``numbers.Integral``, ``Real`` or
        ``Number`` (unless ``bool`` is asked for too). JSON has one number type: with
        ``expect=float`` any number is accepted, an integer (``1``) returned as a float
        (``1.0``); with ``expect=int``, a number written with a fraction or an exponent
        (``1.5``, ``1.0``, ``1e2``: Python reads each as a float) is refused.
        """
        if expect is not None:
            _check_expect(expect)
        if not self.body.strip():
            raise self._decode_error("expected a JSON body, got an empty body")
        text = self.text("utf-8")
        if text.startswith("\ufeff"):
            # A byte order mark, which RFC 8259 lets a parser ignore (some servers send one).
            text = text[1:]
        failed: str | None = None
        try:
            value = loads_strict(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            failed = exc.__class__.__name__
        if failed is not None:
            # Outside the except clause: a JSONDecodeError holds the whole body (.doc).
            raise self._decode_error(f"body is not valid JSON ({failed})")
        if expect is not None:
            if type(value) is bool:
                # isinstance(True, int) holds, but a JSON true is no number.
                if _accepts_bool(expect):
                    return value
                failed = _json_kind(bool)
            elif isinstance(value, expect):
                return value
            elif type(value) is int and float in _members(expect):
                # JSON has one number type: 1 is as much a float as 1.0 is.
                try:
                    return float(value)
                except OverflowError:
                    failed = "integer too large for a float"
            elif type(value) is float:
                # 1.0 and 1e2 are floats to json.loads, as 1.5 is: said as written.
                failed = "number written with a fraction or an exponent"
            else:
                failed = _json_kind(type(value))
            raise self._decode_error(
                f"expected a JSON {_json_kind(expect)}, got a JSON {failed}",
                number=type(value) is int or type(value) is float,
            )
        return value

    def _decode_error(self, message: str, *, number: bool = False) -> ResponseDecodeError:
        """The error for a body that is not what was expected, logged: a WARNING saying what
        was asked and what came, with a scrubbed excerpt of the body (never a secret).
        ``number``: the body is one JSON number, shown as written (``1e2``), not as
        :func:`body_excerpt` writes the value it parses (``100.0``); digits hold no secret."""
        limit = 120
        path = URL(self.url).path
        if number and not is_auth_path(path):
            written = self.body.decode("utf-8", "replace").strip()
            excerpt = written if len(written) <= limit else written[:limit] + "…"
        else:
            excerpt = body_excerpt(self.body, path=path, limit=limit)
        err = ResponseDecodeError(
            f"{message}; status {self.status}, body starts {excerpt!r}",
            service=self.service,
            method=self.method,
            url=self.url,
            attempts=self.attempts,
        )
        _log.warning(
            "%s %s: the answer could not be read: %s",
            self.method,
            self.url,
            err.message,
            extra={
                "service": self.service,
                "method": self.method,
                "status": self.status,
                "error": "ResponseDecodeError",
            },
        )
        return err


def _rebuilt_response(
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    method: str,
    url: str,
    service: str,
    attempts: tuple[AttemptRecord, ...],
) -> Response:
    """A :class:`Response` from what :meth:`Response.__reduce__` keeps of one."""
    return Response(
        status, CIMultiDictProxy(CIMultiDict(headers)), body, method, url, service, attempts
    )


# The slots' own setters: what attrs' frozen __init__ reaches through ``object.__setattr__`` by
# name, one lookup per field. Taken once, they make the Response of every successful call in
# half the time (benchmarks/README.md). Same fields, same order; nothing else differs.
_RESPONSE_SLOTS = tuple(
    typing.cast(Any, Response.__dict__[field.name]).__set__ for field in attrs.fields(Response)
)
(
    _set_status,
    _set_headers,
    _set_body,
    _set_method,
    _set_url,
    _set_service,
    _set_attempts,
) = _RESPONSE_SLOTS
_new_object = object.__new__


def _answer(
    status: int,
    headers: CIMultiDictProxy[str],
    body: bytes,
    method: str,
    url: str,
    service: str,
    attempts: tuple[AttemptRecord, ...],
) -> Response:
    """``Response(status, headers, body, method, url, service, attempts)``, made through its
    slots: :meth:`Engine.request`'s hot path."""
    made: Response = _new_object(Response)
    _set_status(made, status)
    _set_headers(made, headers)
    _set_body(made, body)
    _set_method(made, method)
    _set_url(made, url)
    _set_service(made, service)
    _set_attempts(made, attempts)
    return made


def _check_headers(
    headers: Mapping[str, str],
    service: str,
    method: str,
    auth: object = None,
    *,
    socket: bool = False,
) -> None:
    """Refuse headers that are not str to str, names that are no RFC 9110 token, values that
    hold a control character but tab, the headers that frame the body (``Content-Length``,
    ``Transfer-Encoding``: aiohttp's), and those that ask for a protocol upgrade (``Upgrade``,
    a ``Connection`` naming ``upgrade``), before anything is sent (aiohttp would fail while
    writing some, inside the retry loop, after a login, and send the others as they are); and
    a header the ``auth`` provider says its credentials set (its ``credential_headers``: the
    library's providers set ``Authorization``), which they would replace without a word.
    ``socket``: the headers of a WebSocket upgrade (:meth:`Engine.websocket`, and any
    :class:`~le_transport.sockets.EngineDialer`, which checks them when built), which may carry
    none of the upgrade's own (:data:`_SOCKET_OWN_HEADERS`)."""
    refused: str | None = None
    # Compared in lower case, whatever case the provider named them in.
    owned = {h.lower() for h in getattr(auth, "credential_headers", ()) if isinstance(h, str)}
    if not isinstance(headers, Mapping):
        refused = f"headers must be a mapping, got {type(headers).__name__}"
    else:
        for name, value in headers.items():
            refused = _header_fault(name, value, socket=socket)
            if refused is None and owned and name.lower() in owned:
                refused = (
                    (
                        f"headers[{name!r}] would be replaced by the credentials of the "
                        f"socket's auth provider ({type(auth).__name__}), which go in the "
                        "upgrade's headers: leave it out, or place the credentials elsewhere "
                        "(an auth_placement of PATH, FIRST_FRAME, or NONE to send this one instead)"
                    )
                    if socket
                    else (
                        f"headers[{name!r}] would be replaced by the credentials of the "
                        f"engine's auth provider ({type(auth).__name__}), which go on every "
                        "call to the service's host: leave it out, or make this call through "
                        "an engine without an auth provider (StaticBearer gives one a token of "
                        "your own)"
                    )
                )
            if refused is not None:
                break
    if refused is not None:
        raise InvalidRequest(refused, service=service, method=method)


def _header_fault(name: object, value: object, *, socket: bool = False) -> str | None:
    """Why a header cannot be sent, or None; never showing its value.

    A name must be an RFC 9110 token (letters, digits and ``!#$%&'*+-.^_`|~``): a ``:`` or a
    space would make another header of it ("Authorization:Bearer x" past the check of a
    caller's own ``Authorization``), and an empty one a malformed line (ASCII only: no lone
    surrogate either). A value may not hold a control character but tab (RFC 9110 5.5: a CR,
    LF or NUL would start a header of its own, and aiohttp's writer refuses them all, after the
    host was resolved and a login made, with a bare ValueError), nor a character UTF-8 cannot
    encode (aiohttp would drop it, sending another value). ``Content-Length``
    and ``Transfer-Encoding`` are aiohttp's, which frames the body: a value of the caller's
    would cut it short, and the rest would be read as the next request on the connection.
    ``Upgrade``, and a ``Connection`` naming ``upgrade`` (``Upgrade: h2c``), ask the server to
    switch protocols: the engine reads HTTP answers only, and a server that agreed would answer
    101, the server's protocol error to the retry loop though the caller asked for it.
    ``socket``: the headers of a WebSocket upgrade, which may carry none of the upgrade's own
    (:data:`_SOCKET_OWN_HEADERS`: ``Upgrade``, ``Connection`` whatever its value,
    ``Sec-WebSocket-Version``, ``-Key``, ``-Extensions``, ``-Protocol``)."""
    if not isinstance(name, str):
        return f"header names must be str, got a {type(name).__name__}"
    if _TOKEN.fullmatch(name) is None:
        # Not shown: what is not a name may carry a value ("Authorization:Bearer x").
        if not name:
            return "a header name is empty"
        if _HEADER_BREAKERS.search(name):
            return (
                "a header name holds a CR, LF or NUL, which would start a header of its own; "
                "the name is not shown"
            )
        odd = next(c for c in name if _TOKEN.fullmatch(c) is None)
        shown = repr(odd) if odd.isascii() and odd.isprintable() else f"U+{ord(odd):04X}"
        return (
            f"a header name holds {shown}, which is not allowed in a header name (RFC 9110: "
            "letters, digits and !#$%&'*+-.^_`|~ only); the name is not shown, since what "
            "follows a ':' or a space would be sent as a value"
        )
    if not isinstance(value, str):
        # The name only: the value may be a credential.
        return f"header {name[:40]!r} must have a str value"
    lowered = name.lower()
    if lowered in _FRAMING_HEADERS:
        return (
            f"header {name[:40]!r} is not the caller's to set: aiohttp frames the body "
            "(Content-Length, Transfer-Encoding) from the body it sends, and a value of "
            "another length would cut the body short or desynchronise the connection; leave "
            "it out"
        )
    if socket and lowered in _SOCKET_OWN_HEADERS:
        # The value is not shown: the name says it all.
        return _SOCKET_OWN_HEADERS[lowered].format(name=name[:40])
    if lowered in _UPGRADE_HEADERS and (lowered == "upgrade" or _names_upgrade(value)):
        # The value is not shown: the name and the protocol's token say it all.
        return (
            f"header {name[:40]!r} asks the server to switch protocols (an HTTP upgrade, "
            "'Upgrade' or a 'Connection' naming 'upgrade'), which the engine cannot use: it "
            "reads an HTTP answer, and a server that agreed would answer 101, taken for its "
            "protocol error; leave it out (a WebSocket is opened with Engine.websocket, which "
            "sets the upgrade's headers itself)"
        )
    # isprintable() is False for every control character (tab included): a plain value is
    # told by it alone.
    if not value.isprintable():
        if _HEADER_BREAKERS.search(value):
            return (
                f"header {name[:40]!r} has a value holding a CR, LF or NUL, which would start a "
                "header of its own; the value is not shown"
            )
        control = _HEADER_CONTROLS.search(value)
        if control is not None:
            return (
                f"header {name[:40]!r} has a value holding the control character "
                f"U+{ord(control.group()):04X}, which a header may not hold (RFC 9110: tab is "
                "the only one allowed); the value is not shown"
            )
    # aiohttp's writer skips what UTF-8 cannot encode ('agent-\udcff7', as os.environ or
    # os.fsdecode give a byte that is not UTF-8, went out as 'agent-7'). An ASCII value (the
    # usual one) is told by isascii() alone, so that the check costs a plain call nothing.
    if not value.isascii() and not utf8_encodable(value):
        return (
            f"header {name[:40]!r} has a value holding a character UTF-8 cannot encode (a lone "
            "surrogate), which would be dropped from the header, silently sending another "
            "value; the value is not shown"
        )
    return None


#: What ends a header line (aiohttp refuses these while writing the request).
_HEADER_BREAKERS = re.compile("[\r\n\x00]")

#: Every other control character but tab, which aiohttp's writer refuses too (its
#: ``[\x00-\x08\x0a-\x1f\x7f]``; RFC 9110 5.5 allows tab alone in a field value).
_HEADER_CONTROLS = re.compile("[\x01-\x08\x0b-\x1f\x7f]")

#: A header name: an RFC 9110 token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

#: Headers that frame the body, which aiohttp sets from the body itself.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})

#: Why a caller's handshake header is refused on a WebSocket upgrade (``name`` the header's).
_HANDSHAKE_OWN = (
    "header {name!r} is the WebSocket upgrade's own (aiohttp sends 'Upgrade: websocket', "
    "'Connection: Upgrade' and 'Sec-WebSocket-Version: 13'), which a caller's would replace, "
    "and the server would refuse the upgrade; leave it out"
)

#: The headers a WebSocket upgrade's caller may not set (lower case), each with why (``name``
#: the header's; its value never shown). aiohttp sends ``Upgrade``, ``Connection`` and
#: ``Sec-WebSocket-Version`` only where the caller's headers hold none (its setdefault): any
#: other value would have the server refuse every upgrade. It makes a fresh
#: ``Sec-WebSocket-Key`` for each upgrade, and checks the answer against it: a caller's is
#: replaced without a word. The socket speaks no extension (it reads its frames uncompressed)
#: and negotiates no subprotocol (aiohttp checks the server's choice only against its own
#: ``protocols=``, which the socket does not use: a raw header's would go unchecked).
_SOCKET_OWN_HEADERS: Mapping[str, str] = types.MappingProxyType(
    {
        "upgrade": _HANDSHAKE_OWN,
        "connection": _HANDSHAKE_OWN,
        "sec-websocket-version": _HANDSHAKE_OWN,
        "sec-websocket-key": (
            "header {name!r} is the WebSocket upgrade's own: aiohttp makes a fresh key for "
            "every upgrade (and checks the server's answer against it), which would replace "
            "the caller's without a word; leave it out"
        ),
        "sec-websocket-extensions": (
            "header {name!r} asks the server for a WebSocket extension, which the socket "
            "cannot speak (it asks none, and reads its frames uncompressed): a server that "
            "agreed to permessage-deflate would send frames the socket fails on, at every "
            "reconnect; leave it out"
        ),
        "sec-websocket-protocol": (
            "header {name!r} offers the server a WebSocket subprotocol, which the socket does "
            "not negotiate: the server's choice would never be checked against the offer, "
            "nor told to the caller (LiveEngage's sockets use none); leave it out"
        ),
    }
)

#: Headers that ask for a protocol upgrade (RFC 9110 7.8): ``Upgrade``, and a ``Connection``
#: that names ``upgrade``.
_UPGRADE_HEADERS = frozenset({"upgrade", "connection"})


def _names_upgrade(connection: str) -> bool:
    """Whether a ``Connection`` header's value lists the ``upgrade`` option (case-insensitive,
    as RFC 9110 7.6.1 compares connection options)."""
    return any(option.strip(" \t").lower() == "upgrade" for option in connection.split(","))


def _encode_text(data: str, headers: Mapping[str, str]) -> str | bytes:
    """A str body in the charset its Content-Type header names (aiohttp would send UTF-8 under
    any header, and the server would decode it in the charset the header names)."""
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    charset = None if content_type is None else charset_of(content_type)
    if charset is None:
        return data  # no charset named: UTF-8, as aiohttp sends it
    # Raised after the except blocks, so that the error has no context either: a
    # UnicodeEncodeError holds the whole body, which may hold a credential.
    refused: str | None = None
    try:
        codec = codecs.lookup(charset).name
        encoded: str | bytes = data if codec == "utf-8" else data.encode(codec)
    except LookupError:
        refused = (
            f"the Content-Type header names charset {charset[:40]!r}, which is not a text "
            "encoding Python knows: name another, or pass the body as bytes"
        )
    except UnicodeEncodeError as exc:
        refused = (
            f"the str body cannot be written in charset {charset[:40]!r}, which its "
            f"Content-Type header names (character {exc.start} is not in it): name a charset "
            "that holds it (utf-8), or pass the body as bytes"
        )
    if refused is not None:
        raise InvalidRequest(refused)
    return encoded


def _strict_json(value: Any) -> str:
    return _json.dumps(value, allow_nan=False)


#: What a request's arguments may be, for the message of a request aiohttp could not build.
_ARGUMENTS = (
    "params values must be str, int or float; headers str names and values without control "
    "characters; json a JSON-serialisable value without NaN or infinity; data bytes, str or a "
    "flat form mapping"
)


#: The frames of aiohttp's own argument processing: a request built (its params, headers and
#: body) and a JSON body serialised. Read only from the traceback of a refused call.
_BUILDING_CODES = frozenset(
    getattr(getattr(owner, "__init__", None), "__code__", None)
    for owner in (
        aiohttp.ClientRequest,
        aiohttp.payload.JsonPayload,
        getattr(aiohttp.payload, "JsonBytesPayload", None),
    )
) - {None}


def _raised_building_request(exc: BaseException) -> bool:
    """Whether aiohttp raised ``exc`` while it built the request from the call's arguments,
    before the middleware chain ran (not a provider's, nor a middleware's, own error)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in _BUILDING_CODES:
            return True
        tb = tb.tb_next
    return False


def _refused_argument(
    session: aiohttp.ClientSession, params: object, json: object, data: object
) -> str | None:
    """Which of a call's arguments aiohttp refuses, and why, named without its value: each is
    taken again as aiohttp takes it (on the error path only). None when none is refused."""
    if json is not _NO_JSON and json is not None:
        fault = _json_fault(json, session.json_serialize)
        if fault is not None:
            return fault
    if params is not None:
        fault = _params_fault(params)
        if fault is not None:
            return fault
    if data is not None:
        return _data_fault(data)
    return None


#: How a JSON value's place is kept while it is searched: (parent's place, key), or None at
#: the top. Linked, so that a deep value costs no copy of its whole path at each level.
_Place = tuple[Any, object] | None

#: A key that may be shown in a message: a short identifier...
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,39}")
#: ...each of whose parts (between '_', '.' and '-') is words (``conversationId``), then at
#: most four digits (``line2``): what a field's name looks like. A key that is data (a token,
#: a card number, an e-mail address, a hex id) has digits inside a part, or other characters.
_NAME_PART = re.compile(r"(?:[A-Za-z][a-z]*)*[0-9]{0,4}")


@attrs.frozen
class _HiddenKey:
    """A key not shown (it looks like data, not a field's name): said by its position."""

    #: 1 for the first key of its mapping, in the mapping's order.
    position: int
    what: str = "key"

    def __str__(self) -> str:
        n = self.position
        suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
        return f"<{n}{suffix} {self.what}>"


def _looks_like_a_name(key: object) -> bool:
    """Whether a mapping's key may be shown in a message: a field's name (``'items'``,
    ``'conversationId'``, ``'address_line_2'``), a small int, a bool or None, and never data
    used as a key (``'sk_live_51Hc...'``, ``'jane.doe@example.com'``, ``'4111111111111111'``),
    which a message must not repeat."""
    if key is None or isinstance(key, bool):
        return True
    if isinstance(key, int):
        return -10_000 < key < 10_000
    if not isinstance(key, str) or _FIELD_NAME.fullmatch(key) is None:
        return False
    return all(_NAME_PART.fullmatch(part) is not None for part in re.split(r"[_.-]", key) if part)


def _shown_key(key: object, position: int, what: str = "key") -> object:
    """``key``, or its position when it looks like data (see :func:`_looks_like_a_name`)."""
    return key if _looks_like_a_name(key) else _HiddenKey(position, what)


def _json_fault(value: object, serialize: Callable[[Any], str]) -> str | None:
    """Why ``serialize`` refuses ``value`` (a ``json=`` body), naming the key, or None."""
    try:
        serialize(value)
    except RecursionError:
        return "json is nested too deeply to be serialised"
    except (TypeError, ValueError) as exc:
        kind = type(exc).__name__
    else:
        return None
    found = _json_culprit(value)
    if found is not None:
        return found
    return (
        f"json could not be serialised ({kind}): it must be a JSON value (dict with str keys, "
        "list, str, int, finite float, bool, None) without circular references"
    )


def _json_culprit(value: object) -> str | None:
    """The first part of ``value`` that JSON cannot hold, and where it is, or None."""
    stack: list[tuple[object, _Place]] = [(value, None)]
    seen: set[int] = set()
    while stack:
        node, place = stack.pop()
        if node is None or isinstance(node, str | bool | int):
            continue
        if isinstance(node, float):
            if math.isfinite(node):
                continue
            return f"json{_show_place(place)} is NaN or infinity, which JSON cannot hold"
        if isinstance(node, dict | list | tuple):
            if id(node) in seen:  # shared, or a cycle: looked at once
                continue
            seen.add(id(node))
            children: list[tuple[object, _Place]]
            if isinstance(node, dict):
                children = []
                for position, (key, item) in enumerate(node.items(), 1):
                    if not (key is None or isinstance(key, str | int | float)) or (
                        isinstance(key, float) and not math.isfinite(key)
                    ):
                        what = (
                            "a NaN or infinite key"
                            if isinstance(key, float)
                            else f"a key of type {type(key).__name__}"
                        )
                        return (
                            f"json{_show_place(place)} has {what}: JSON object keys are str "
                            "(or int, float, bool, None)"
                        )
                    children.append((item, (place, _shown_key(key, position))))
            else:
                children = [(item, (place, index)) for index, item in enumerate(node)]
            stack.extend(reversed(children))
            continue
        return (
            f"json{_show_place(place)} is a {type(node).__name__}, which JSON cannot hold "
            "(convert it to str, int, float, bool, None, a list or a dict first)"
        )
    return None


def _show_place(place: _Place, keep: int = 6) -> str:
    """``['a'][0]['b']`` for a place in a JSON value (its last ``keep`` keys): keys that look
    like field names, and the position of any other (``['cards'][<1st key>]['exp']``), never
    the values the caller sent."""
    keys: list[object] = []
    while place is not None:
        place, key = place
        keys.append(key)
    keys.reverse()
    shown = "".join(
        f"[{key}]" if isinstance(key, _HiddenKey) else f"[{key!r:.42}]" for key in keys[-keep:]
    )
    return f"[...]{shown}" if len(keys) > keep else shown


#: The URL query parameters are tried on: their encoding does not depend on the URL.
_PROBE_URL = URL("http://probe.invalid/")


def _params_fault(params: object) -> str | None:
    """Why aiohttp (yarl) refuses ``params``, naming the parameter, or None."""
    try:
        _PROBE_URL.extend_query(params)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        pass
    else:
        return None
    if isinstance(params, Mapping):
        for position, (name, value) in enumerate(params.items(), 1):
            if not isinstance(name, str):
                return f"params names must be str, got a {type(name).__name__}"
            try:
                _PROBE_URL.extend_query({name: value})
            except (TypeError, ValueError):
                shown = _shown_key(name, position, "parameter")
                where = f"[{shown}]" if isinstance(shown, _HiddenKey) else f"[{name!r}]"
                return f"params{where} {_query_value_fault(value)}"
    return (
        "params must be a mapping of names to str, int or float values (or lists of them), "
        f"got a {type(params).__name__}"
    )


def _socket_query(params: object, service: str) -> Mapping[str, str | int | float]:
    """A socket's ``params`` as the query its dialer keeps by name, or an
    :class:`~le_transport.errors.InvalidRequest` naming what cannot be sent, never a value.

    A mapping, or a list or tuple of (name, value) pairs (taken as a mapping, as they always
    were): the dialer lays the query over the path's version by name (a str query failed there
    as a raw error); each value sendable, as a request's; a name given twice (in pairs, or in
    a mapping that can repeat one, a ``MultiDict``) is refused (one value per name: a repeat
    would be dropped silently)."""
    pairs = isinstance(params, (list, tuple)) and all(
        isinstance(pair, tuple) and len(pair) == 2 for pair in params
    )
    fault = (
        _params_fault(params) or _params_text_fault(params)
        if isinstance(params, Mapping) or pairs
        else "params must be a mapping of names to str, int or float values (or a "
        f"list of (name, value) pairs), got a {type(params).__name__}"
    )
    if fault is None and type(params) is not dict:
        # Pairs, or a mapping that can hold a name twice (a MultiDict, whose repeat the
        # dialer's query by name kept the first value of, dropping the others silently). The
        # names are str by now (_params_fault): a set tells the first repeat in one pass.
        names: Iterable[str] = (
            (pair[0] for pair in typing.cast(Sequence[tuple[str, Any]], params))
            if pairs
            # Its items, not its keys: a MultiDict's keys() names a repeated name once.
            else (name for name, _ in typing.cast(Mapping[str, Any], params).items())
        )
        seen: set[str] = set()
        for position, name in enumerate(names, 1):
            if name in seen:
                fault = (
                    f"params repeats a name ({'pair' if pairs else 'entry'} {position}): a "
                    "socket's query takes one value per name"
                )
                break
            seen.add(name)
    if fault is not None:
        raise InvalidRequest(redact_text(fault), service=service, method="GET")
    if isinstance(params, Mapping):
        return params
    return dict(typing.cast(Sequence[tuple[str, Any]], params))


def _check_client_properties(properties: object, service: str) -> None:
    """Refuse ``client_properties`` that are not a mapping of JSON values (they go into the
    consumer socket's ``InitConnection`` frame, which would fail at every connect), naming
    the field but never showing a value."""
    refused: str | None = None
    if not isinstance(properties, Mapping):
        refused = (
            f"client_properties must be a mapping of JSON values, got a {type(properties).__name__}"
        )
    else:
        fault = _json_fault(dict(properties), _strict_json)
        if fault is not None:
            refused = "client_properties" + fault.removeprefix("json")
    if refused is not None:
        raise InvalidRequest(redact_text(refused), service=service, method="GET")


def _query_value_fault(value: object) -> str:
    """Why ``value`` cannot be a query parameter's value (never showing it)."""
    if value is None:
        return "is None, which is no query value: leave the parameter out, or pass ''"
    if isinstance(value, bool):
        return "is a bool, which is no query value: pass the text the service expects ('true')"
    if isinstance(value, float):
        return "is a float that is NaN or infinite, which is no query value"
    too_long = _long_int_fault(value, "query") if isinstance(value, int) else None
    if too_long is not None:
        return too_long
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if item is None or isinstance(item, bool) or not isinstance(item, str | int | float):
                return (
                    f"holds a {type(item).__name__} at index {index}, which is no query value: "
                    "each item must be str, int or float"
                )
            too_long = _long_int_fault(item, "query") if isinstance(item, int) else None
            if too_long is not None:
                return f"holds at index {index} an int{too_long[len('is an int') :]}"
        return "holds a float that is NaN or infinite, which is no query value"
    return f"is a {type(value).__name__}, which is no query value: pass str, int or float"


def _form_fault(data: object) -> str | None:
    """Why a form body's field cannot be sent, naming the field, never showing its value; None
    when each can (or ``data`` is no form: bytes, a str, a file...).

    aiohttp url-encodes a mapping, pairs or a url-encoded ``FormData`` with ``str()`` of any
    value: None went out as ``None``, a bool as ``True``, NaN as ``nan``, a dict as its keys,
    a :class:`~le_transport.Secret` as its mask, any object as its repr. A value is a str, an
    int (one Python writes as text: an int past ``sys.get_int_max_str_digits()`` made
    ``str()`` raise ValueError inside aiohttp) or a finite float (or a list or tuple of them,
    for a repeated field), bytes, or, for a multipart form, a file."""
    if isinstance(data, aiohttp.FormData):
        if data.is_multipart:
            # Each field made a payload by aiohttp, which refuses what is none; a number or a
            # list is sent as its text (_multipart_as_sent), so checked as a url-encoded
            # form's is (a NaN, an int too long to write as text).
            numbers = {id(field) for field in _multipart_numbers(data)}
            if not numbers:
                return None
            # Every field in its place (a hidden name is told by its position), only the
            # numbers and lists checked.
            items: Iterable[object] = [
                (field[0].get("name"), field[2] if id(field) in numbers else "")
                for field in data._fields
                if isinstance(field, tuple) and len(field) == 3 and isinstance(field[0], Mapping)
            ]
        else:
            items = [
                (options.get("name"), value)
                for options, _, value in getattr(data, "_fields", ())
                if isinstance(options, Mapping)
            ]
    elif isinstance(data, Mapping):
        items = data.items()
    elif isinstance(data, list | tuple):
        items = data
    else:
        return None
    for position, item in enumerate(items, 1):
        if not isinstance(item, tuple | list) or len(item) != 2:
            return None  # not pairs: aiohttp refuses them (_data_fault says why)
        name, value = item
        fault = _form_value_fault(value)
        if fault is not None:
            shown = _shown_key(name, position, "field")
            where = f"[{shown}]" if isinstance(shown, _HiddenKey) else f"[{name!r}]"
            return f"data{where} {fault}"
    return None


def _form_value_fault(value: object) -> str | None:
    """Why ``value`` cannot be a form field's value (never showing it), or None."""
    kind = type(value)
    if kind is str or kind is bytes:
        return None  # the usual values, told at once
    if type(value) is int:
        return _long_int_fault(value)
    if isinstance(value, float) and math.isfinite(value):
        return None
    if isinstance(value, str | bytes | bytearray | memoryview | io.IOBase):
        return None  # (a file or bytes makes the form multipart, as aiohttp makes it)
    if isinstance(value, int) and not isinstance(value, bool):
        return _long_int_fault(value)
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if isinstance(item, str | bytes):
                continue
            if (
                item is None
                or isinstance(item, bool)
                or not isinstance(item, str | bytes | int | float)
            ):
                return (
                    f"holds a {type(item).__name__} at index {index}, which is no form value: "
                    "each item must be str, int or float"
                )
            if isinstance(item, float):
                if not math.isfinite(item):
                    return (
                        f"holds a float that is NaN or infinite at index {index}, which is no "
                        "form value"
                    )
            elif isinstance(item, int) and _long_int_fault(item) is not None:
                return f"holds an int at index {index} {_TOO_MANY_DIGITS.format(kind='form')}"
        return None
    if value is None:
        return "is None, which is no form value: leave the field out, or pass ''"
    if isinstance(value, bool):
        return "is a bool, which is no form value: pass the text the service expects ('true')"
    if isinstance(value, float):
        return "is a float that is NaN or infinite, which is no form value"
    if isinstance(value, Secret):
        return (
            "is a Secret, which would be sent as its mask: pass its reveal() where the value "
            "must go on the wire (it is not shown)"
        )
    return (
        f"is a {type(value).__name__}, which is no form value (it would be sent as its str()): "
        "pass str, int or float, or a file in a multipart form"
    )


#: Ints of fewer bits than this have fewer than 640 digits, which Python always writes as
#: text (``sys.set_int_max_str_digits`` takes no limit under 640).
_TEXT_BITS = 2000

#: Why an int is no form (or query) value when Python will not write it as text.
_TOO_MANY_DIGITS = (
    "of more digits than Python writes as text (sys.get_int_max_str_digits()), which is no "
    "{kind} value: pass its digits as a str"
)


def _long_int_fault(value: int, kind: str = "form") -> str | None:
    """Why an int cannot be a ``kind`` ("form" or "query") value (``str()`` of one of
    :data:`_TEXT_BITS` bits or more raises ValueError past the interpreter's digit limit,
    deep inside aiohttp or yarl), or None."""
    if value.bit_length() < _TEXT_BITS:
        return None
    try:
        str(value)
    except ValueError:
        return f"is an int {_TOO_MANY_DIGITS.format(kind=kind)}"
    return None


#: Why a str with a lone surrogate cannot go into a URL.
_DROPPED = (
    "holds a character UTF-8 cannot encode (a lone surrogate), which would be dropped from the "
    "URL, silently sending another value"
)


def _plain_params(params: object) -> bool:
    """Whether ``params`` is the usual call's: a dict of ASCII names to ASCII text or numbers
    yarl can write (a finite float, an int short of :data:`_TEXT_BITS`), which yarl takes as it
    is (told at once: the walks of :func:`_params_fault` and :func:`_params_text_fault` cost
    ~1 us a parameter on every call that passes params)."""
    if type(params) is not dict:
        return False
    for name, value in params.items():
        if type(name) is not str or not name.isascii():
            return False
        kind = type(value)
        if kind is str:
            if not value.isascii():
                return False
        elif kind is int:
            if value.bit_length() >= _TEXT_BITS:
                return False
        elif kind is not float or not math.isfinite(value):
            return False
    return True


def _params_text_fault(params: object) -> str | None:
    """Where ``params`` holds a str UTF-8 cannot encode, named, never shown; else None.

    yarl drops such a character from the query (``select=\\ud800`` went out as ``select=``):
    another query than the one given, with the service's credentials. What else is wrong with
    ``params`` is :func:`_params_fault`'s to say."""
    if _plain_params(params):
        return None
    if isinstance(params, str):
        return None if utf8_encodable(params) else f"params (a query string) {_DROPPED}"
    if isinstance(params, Mapping):
        items: Iterable[object] = params.items()
    elif isinstance(params, list | tuple):
        items = params
    else:
        return None
    for position, item in enumerate(items, 1):
        if not isinstance(item, tuple) or len(item) != 2:
            return None  # not pairs: yarl refuses them (_params_fault says why)
        name, value = item
        values = value if isinstance(value, list | tuple) else (value,)
        if (isinstance(name, str) and not utf8_encodable(name)) or any(
            isinstance(v, str) and not utf8_encodable(v) for v in values
        ):
            shown = _shown_key(name, position, "parameter")
            where = f"[{shown}]" if isinstance(shown, _HiddenKey) else f"[{name!r}]"
            return f"params{where} {_DROPPED}; the value is not shown"
    return None


#: The start of a URL: a scheme and '//', or a network-path reference's '//'.
_URL_START = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*:)?//")


def _described(value: object) -> str:
    """What ``value`` is, for a message that must not show it: a number as it is (not a
    bool), anything else by its type, a str by its length and whether it looks like a URL."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return repr(value) if -(10**15) < value < 10**15 else "a very large int"
    if isinstance(value, str):
        kind = "a URL" if _URL_START.match(value) or "://" in value else "a str"
        return f"{kind} of {len(value)} characters (not shown)"
    return f"a {type(value).__name__}"


#: The schemes a URL of the engine's may have: HTTP's, and the sockets' over them.
_URL_SCHEMES = frozenset({"https", "http", "wss", "ws"})


def _service_fault(service: object) -> str | None:
    """Why ``service`` cannot name a service (never showing it), or None."""
    if not isinstance(service, str):
        return f"service must be a str naming a service, got a {type(service).__name__}"
    if not service:
        return "service must name a service, got an empty str"
    if not service.isprintable() or any(c.isspace() for c in service):
        return "service holds whitespace or a control character; it is not shown"
    return None


def _fields_fault(fields: object) -> str | None:
    """Why a keepalive's ``fields`` (filled into its path) cannot be used, never showing a
    value; None when they can: a mapping of str names to str or int values (an account id
    given as a number is written as its digits; a bool is no int here)."""
    if not isinstance(fields, Mapping):
        return f"fields must be a mapping of str names to str values, got a {type(fields).__name__}"
    for position, (name, value) in enumerate(fields.items(), 1):
        if not isinstance(name, str):
            return f"fields names must be str, got a {type(name).__name__}"
        if not (isinstance(value, str) or (type(value) is int and 0 <= value < 10**64)):
            shown = _shown_key(name, position, "field")
            where = f"[{shown}]" if isinstance(shown, _HiddenKey) else f"[{name!r}]"
            return (
                f"fields{where} must be a str or an int from 0 to 64 digits, got a "
                f"{type(value).__name__}"
            )
    return None


def _resolve_at_once(domains: DomainProvider, service: str) -> None:
    """Ask ``domains`` for ``service``'s host here, without awaiting: for
    :meth:`Engine.keepalive`, which is no coroutine, what :meth:`Engine.websocket` awaits at
    the call. A provider that answers at once (the engine's plain :class:`StaticDomains`,
    whose ``resolve`` never suspends) raises its own error here (an
    :class:`~le_transport.errors.UnknownServiceError` naming the services it knows); one that
    would wait is left unasked, and closed."""
    resolving = domains.resolve(service)
    try:
        resolving.send(None)
    except StopIteration:
        return
    finally:
        resolving.close()


def _data_fault(data: object) -> str | None:
    """Why aiohttp refuses ``data`` as a body, or None."""
    if isinstance(data, aiohttp.FormData):
        # Its fields as aiohttp left them (a multipart one is emptied once built): only text
        # UTF-8 cannot encode is told of.
        return _unencodable_data(getattr(data, "_fields", None))
    if isinstance(data, io.IOBase) and data.closed:
        # A file payload is made of it, and fails only when it is read: said as the same
        # body is said under recover=True.
        return f"data is a {type(data).__name__} that is closed: nothing can be read from it"
    try:
        try:
            aiohttp.payload.get_payload(data, disposition=None)
        except aiohttp.payload.LookupError:
            aiohttp.FormData(data)()  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        # A str UTF-8 cannot encode (UnicodeEncodeError is a ValueError; a multipart form
        # raises it as the cause of a TypeError): a str is no wrong type.
        if isinstance(exc, UnicodeEncodeError) or isinstance(exc.__cause__, UnicodeEncodeError):
            return _unencodable_data(data) or f"data {_UNENCODABLE}; it is not shown"
        return (
            "data must be bytes, str, a form mapping or an async iterable of bytes, got a "
            f"{type(data).__name__}"
        )
    return None


#: Why a str with a lone surrogate cannot be a body.
_UNENCODABLE = (
    "holds a character UTF-8 cannot encode (a lone surrogate, as os.fsdecode or os.environ "
    "give a byte that is not UTF-8)"
)


def _unencodable_data(data: object) -> str | None:
    """Where a body (a str, a form mapping or pairs, a ``FormData``'s fields) holds a str
    UTF-8 cannot encode, named, never shown; else None."""
    if isinstance(data, str):
        if utf8_encodable(data):
            return None
        return f"data (a str) {_UNENCODABLE}; the text is not shown: pass it as bytes"
    if isinstance(data, Mapping):
        items: Iterable[object] = data.items()
    elif isinstance(data, list | tuple):
        items = data
    else:
        return None
    for position, item in enumerate(items, 1):
        if not isinstance(item, tuple | list) or len(item) not in (2, 3):
            continue
        if len(item) == 3:  # a FormData's field: (its name and filename, headers, value)
            options, _, value = item
            if not isinstance(options, Mapping):
                continue
            name = options.get("name")
            texts: tuple[object, ...] = (value, *options.values())
        else:
            name, value = item
            # A list of values is a value each (aiohttp's urlencode takes them so).
            texts = (name, *(value if isinstance(value, list | tuple) else (value,)))
        if any(isinstance(text, str) and not utf8_encodable(text) for text in texts):
            shown = _shown_key(name, position, "field")
            where = f"[{shown}]" if isinstance(shown, _HiddenKey) else f"[{name!r}]"
            return f"data{where} {_UNENCODABLE}; the value is not shown"
    return None


#: Successes whose answer need carry no body (RFC 9110 15.3): request_json returns None for
#: one that has none, rather than the decode error of an empty body.
_NO_CONTENT_NEEDED = frozenset({201, 202, 204, 205})


#: 4xx answers a call may not take as answers: the auth middleware cures a 401 (fresh
#: credentials, one replay); a 407 is a proxy's, asking for the session's proxy credentials,
#: never the service's answer; and a 429 is a rate limit, retried after its pause.
_NEVER_ACCEPTED = frozenset({401, 407, 429})


def _per_call_policy(
    policy: RetryPolicy,
    deadline: float | None,
    attempt_timeout: float | None,
    service: str,
    method: str,
) -> RetryPolicy:
    """``policy`` with a call's own ``deadline`` and ``attempt_timeout``; a value the policy
    refuses is the call's argument, named as the caller wrote it (an
    :class:`InvalidRequest`), not a ``RetryPolicy`` field the caller never touched."""
    try:
        return attrs.evolve(
            policy,
            deadline=deadline if deadline is not None else policy.deadline,
            attempt_timeout=(
                attempt_timeout if attempt_timeout is not None else policy.attempt_timeout
            ),
        )
    except ConfigurationError:
        pass  # which one was refused is worked out below, on this error path only
    for name, value in (("deadline", deadline), ("attempt_timeout", attempt_timeout)):
        try:
            if value is not None:
                attrs.evolve(policy, **{name: value})  # type: ignore[arg-type]
        except ConfigurationError:
            break
    else:  # pragma: no cover - each was taken alone: together they are too (no cross check)
        raise AssertionError("RetryPolicy refused a deadline and timeout it takes alone")
    raise InvalidRequest(
        f"{name} must be a finite number of seconds > 0 (or None: the policy's), got "
        f"{_described(value)}",
        service=service,
        method=method,
    )


def _fail_reads_in_flight(session: aiohttp.ClientSession) -> None:
    """Fail every answer still being read on ``session``'s connections (its head or its body),
    before the session is closed.

    aiohttp's connector closes each connection in use, but drops the connection's payload
    before the transport reports the loss, so a body being read is never told: its reader
    waits for bytes that never come, until its attempt timeout (for ever without one), after
    ``Engine.close()`` has returned. Failed here with :class:`ClosedInFlight`, the read raises,
    and the retry loop stops the call with :class:`EngineClosed`; a call still waiting for the
    head of its answer gets the same, rather than the connection's loss (a POST's
    ``ConnectionFailed``, or a GET scheduled for a retry). Private parts of aiohttp, read
    defensively: missing, nothing is done."""
    connector = session.connector
    for proto in tuple(getattr(connector, "_acquired", ())):
        payload = getattr(proto, "_payload", None)
        if payload is not None and getattr(payload, "is_eof", lambda: True)():
            # The previous answer's body, read whole, on a connection reused (acquired again):
            # the call on it waits for the head of its own answer, as on a fresh connection.
            payload = None
        target = payload if payload is not None else proto
        set_exception = getattr(target, "set_exception", None)
        if callable(set_exception):
            set_exception(ClosedInFlight("the engine was closed with the call in flight"))


def _unseen_failure(status: int, ctx: CallContext) -> bool:
    """Whether a failed answer's ``status`` reached :meth:`Engine.request` without the retry
    middleware having returned it: no attempt recorded, or the last one ended otherwise."""
    if status in ctx.accept:
        return False
    attempts = ctx.attempts
    return not attempts or attempts[-1].outcome.status != status


def _unscheduled_failure(
    status: int,
    body: bytes,
    method: str,
    url: str,
    service: str,
    ctx: CallContext,
    retry_after: str | None = None,
    now: float = 0.0,
    epoch: float = 0.0,
    date: str | None = None,
) -> RequestError:
    """The error for a failed answer that reached :meth:`Engine.request` past the retry
    middleware (which raises for every one it sees): made by a middleware around it, or by a
    caller's session that has not got the stack (``Engine(session=...)``). Logged, since the
    retry loop that logs failures never saw it. The answer is an attempt of the call: its
    record is added to ``ctx.attempts`` (and so to the error's ``attempts``), where the
    recovery loop looks for whether the call was acted on
    (:meth:`~le_transport.middleware.context.CallContext.may_resend`). Its ``repeat`` is what
    the call's schedule would have made it, by its ``Classifier`` and the request's
    idempotency: ``RETRYABLE`` for what the schedule retries (a 429, a GET's 5xx),
    ``RETRYABLE_IF_IDEMPOTENT`` when only the request not being idempotent would have stopped
    it (a POST's 5xx: the server may have processed it), ``FINAL`` for what the
    ``Classifier`` makes final (a 4xx, a 501 it names). Its ``Retry-After`` (within the
    policy's ceiling) is kept as the pause of that attempt record, which the recovery loop
    never waits less than; an HTTP-date one is measured from the answer's ``Date`` when it
    has one (its own two-digit year dated against ``epoch``, the wall clock), else from
    ``epoch``, as the retry middleware measures it."""
    policy = ctx.retry if ctx.retry is not None else RetryPolicy()
    asked: float | None = None
    if retry_after is not None:
        if date is not None:
            with contextlib.suppress(InvalidRetryAfter):
                epoch = parse_retry_after_date(date, now_epoch=epoch)
        with contextlib.suppress(InvalidRetryAfter):
            asked = min(parse_retry_after(retry_after, now_epoch=epoch), policy.retry_after_ceiling)
    tries = len(ctx.attempts)
    # What the engine saw is an attempt of the call: the recovery loop asks the attempts
    # whether the call was acted on (CallContext.may_resend).
    ctx.attempts.append(AttemptRecord(tries + 1, Outcome.response(status, asked), asked, now))
    attempts = ctx.attempts
    error = status_error(
        status,
        "",
        body_excerpt(body, path=URL(url).path),
        tries=tries,
        note=(
            "answered outside the retry middleware (by an outer middleware, or a session "
            "without the engine's middlewares), so not retried"
        ),
        service=service,
        method=method,
        url=url,
        attempts=attempts,
    )
    idempotent = ctx.idempotent
    if idempotent is None:
        idempotent = method in IDEMPOTENT_METHODS
    # The call's policy (Engine.request always gives its context one).
    classifier = policy.classifier
    outcome = Outcome.response(status)
    error.repeat = (
        Repeat.RETRYABLE
        if classifier.retryable_for(outcome, idempotent=idempotent)
        else repeat_verdict(classifier, outcome, idempotent=idempotent)
    )
    _log.warning("%s %s: %s", method, url, error.message, extra={"service": service})
    return error


def _accepted(accept: object, service: str, method: str) -> frozenset[int]:
    """``accept`` as a set of 4xx statuses, or :class:`InvalidRequest` saying what is wrong."""
    statuses: frozenset[object] | None = None
    if isinstance(accept, Collection) and not isinstance(accept, str | bytes):
        try:
            statuses = frozenset(accept)
        except TypeError:  # an unhashable item: no status either
            statuses = None
    if statuses is None or not all(
        type(s) is int and 400 <= s < 500 and s not in _NEVER_ACCEPTED for s in statuses
    ):
        odd = next((s for s in statuses or () if type(s) is not int), None)
        shown = (
            f"a {type(accept).__name__}"
            if statuses is None
            else repr(sorted(statuses, key=str))  # all numbers: shown
            if odd is None
            else f"a {type(accept).__name__} holding {_described(odd)}"
        )
        raise InvalidRequest(
            "accept takes the 4xx statuses this call expects as answers (e.g. accept={404}), "
            "not 401 (the auth middleware's), 407 (a proxy's) or 429 (a rate limit, retried); "
            f"got {shown[:80]}",
            service=service,
            method=method,
        )
    return frozenset(s for s in statuses if type(s) is int)


def _check_expect(expect: object) -> None:
    """Refuse an ``expect=`` that isinstance() cannot take (before a request is sent)."""
    try:
        isinstance(None, expect)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidRequest(
            f"expect must be a type (dict, list...), got {type(expect).__name__}"
        ) from None


#: What each Python type is called as a JSON value, in messages.
_JSON_KINDS: dict[object, str] = {
    dict: "object",
    list: "array",
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
    numbers.Integral: "integer",
    numbers.Real: "number",
    numbers.Number: "number",
}


def _members(expect: object) -> tuple[object, ...]:
    """The types an ``expect=`` names: itself, or those of a tuple or a union (``int | str``)."""
    if isinstance(expect, tuple):
        return expect
    if isinstance(expect, types.UnionType) or typing.get_origin(expect) is typing.Union:
        return typing.get_args(expect)
    return (expect,)


def _accepts_bool(expect: object) -> bool:
    """Whether ``expect`` takes a bool for itself, not merely as a number (``bool``,
    ``object``): not ``int``, ``float``, nor a numeric ABC (``numbers.Integral``,
    ``numbers.Real``), under which bool is registered as an int."""
    return any(
        member is bool
        or (
            isinstance(member, type)
            and issubclass(bool, member)
            and not issubclass(member, numbers.Number)
            and member is not int
            and member is not float
        )
        for member in _members(expect)
    )


def _json_kind(tp: object) -> str:
    """A type's name as a JSON value (``integer``), for messages; of a union, each one's."""
    members = _members(tp)
    if members != (tp,):
        return " or ".join(_json_kind(member) for member in members) or "nothing"
    kind = _JSON_KINDS.get(tp)
    return kind if kind is not None else getattr(tp, "__name__", type(tp).__name__)


def _file_content_type(file: object) -> str | None:
    """The ``Content-Type`` aiohttp gives a binary file body: guessed from the file's name
    (``application/json`` for ``report.json``), as its payload guesses it; None when the file
    has no usable name or its name says nothing (aiohttp then sends
    ``application/octet-stream``, as it does for bytes)."""
    name = aiohttp.helpers.guess_filename(file)
    if name is None:
        return None
    guess = getattr(mimetypes, "guess_file_type", mimetypes.guess_type)  # as aiohttp, 3.13+
    content_type: str | None = guess(name)[0]
    return content_type


async def _read_whole(file: io.IOBase) -> tuple[bytes | str | None, str | None]:
    """A file's remaining content (bytes, or a str from a text file), read once; or None and
    what the file is, for a refusal: closed, unreadable, or giving neither bytes nor str."""
    if file.closed:
        return None, f"a {type(file).__name__} that is closed: nothing can be read from it"
    try:
        if isinstance(file, io.BytesIO | io.StringIO):
            content: object = file.read()
        else:
            # A file on disk (or a pipe): read off the loop, as aiohttp reads one.
            content = await asyncio.get_running_loop().run_in_executor(None, file.read)
    except (OSError, ValueError) as exc:  # not readable, closed meanwhile
        return None, f"a {type(file).__name__} that could not be read ({type(exc).__name__})"
    if isinstance(content, str):
        return content, None
    if isinstance(content, bytes | bytearray):
        return bytes(content), None
    return None, f"a {type(file).__name__} whose read() gave no bytes or str"


#: A multipart form's field as aiohttp's ``FormData`` keeps it: its name (and filename), its
#: headers (its ``Content-Type``, if given), its value.
_FormField = tuple[MultiDict[str], dict[str, str], object]


@attrs.frozen
class _FormParts:
    """A multipart form's fields, files read into memory, for every run of ``recover=True``.

    aiohttp builds a multipart ``FormData`` once: it empties the fields into a writer, which
    it closes (with the files of its parts) once the request is sent; the next run got that
    writer, spent, or failed to build the request. :meth:`form` makes a fresh one each run."""

    fields: tuple[_FormField, ...]
    quote_fields: bool
    charset: str | None

    def form(self) -> aiohttp.FormData:
        """A new ``FormData`` with the fields (names, filenames, content types), the charset
        and the quoting of the one given."""
        form = aiohttp.FormData(
            quote_fields=self.quote_fields, charset=self.charset, default_to_multipart=True
        )
        # As add_field() keeps them, copied (aiohttp's add_field would guess again, and warn
        # of a bytes value given without a filename).
        form._fields.extend(
            (MultiDict(options), dict(headers), value) for options, headers, value in self.fields
        )
        return form


def _files_in(data: object) -> list[io.IOBase]:
    """The files in a body: the body itself, or the values of a form (a mapping, pairs, a
    ``FormData``'s fields) that are files."""
    values: list[object]
    if isinstance(data, io.IOBase):
        values = [data]
    elif isinstance(data, aiohttp.FormData):
        fields = getattr(data, "_fields", None)
        values = [f[2] for f in fields or () if isinstance(f, tuple) and len(f) == 3]
    elif isinstance(data, Mapping):
        values = list(data.values())
    elif isinstance(data, list | tuple):
        values = [i[1] if isinstance(i, tuple | list) and len(i) == 2 else i for i in data]
    else:
        return []
    # Not an in-memory buffer: aiohttp leaves one open (a caller reads it after, getvalue()).
    return [
        value
        for value in values
        if isinstance(value, io.IOBase) and not isinstance(value, io.BytesIO | io.StringIO)
    ]


def _holds_file(data: Mapping[object, object] | Sequence[object]) -> bool:
    """Whether a form given as a mapping or pairs holds a file (aiohttp makes it multipart)."""
    if isinstance(data, Mapping):
        return any(isinstance(value, io.IOBase) for value in data.values())
    return any(
        isinstance(item, io.IOBase)
        or (isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[1], io.IOBase))
        for item in data
    )


async def _form_parts(form: aiohttp.FormData) -> _FormParts | str:
    """A multipart ``form``'s fields, each file's remaining content read into memory once
    (with the ``Content-Type`` aiohttp would have given the file); or what the form is, for
    a refusal: it holds a field that can be sent only once (an aiohttp payload, an async
    iterable, a file that is closed or cannot be read), or aiohttp built it already."""
    fields = getattr(form, "_fields", None)
    quote_fields = getattr(form, "_quote_fields", None)
    charset = getattr(form, "_charset", None)
    if (
        not isinstance(fields, list)
        or not isinstance(quote_fields, bool)
        or not (charset is None or isinstance(charset, str))
        or not all(
            isinstance(field, tuple)
            and len(field) == 3
            and isinstance(field[0], MultiDict)
            and isinstance(field[1], dict)
            for field in fields
        )
    ):
        # Private parts of aiohttp, read defensively: refused rather than sent wrong.
        return "a multipart FormData whose fields this aiohttp version does not let be read"
    writer = getattr(form, "_writer", None)
    if not fields and isinstance(writer, aiohttp.MultipartWriter) and len(writer):
        return (
            "a multipart FormData that aiohttp has built already (it builds one once, for the "
            "request that sent it)"
        )
    parts: list[_FormField] = []
    for position, (options, headers, value) in enumerate(fields, 1):
        what: str | None = None
        if isinstance(value, aiohttp.payload.Payload):
            what = f"is an aiohttp payload ({type(value).__name__}), which aiohttp closes once sent"
        elif isinstance(value, io.IOBase):
            content, read_fault = await _read_whole(value)
            what = None if read_fault is None else f"is {read_fault}"
            if isinstance(content, bytes) and aiohttp.hdrs.CONTENT_TYPE not in headers:
                # What aiohttp would have sent for the file (image/png for a .png), not the
                # octet-stream bytes get.
                guessed = _file_content_type(value)
                if guessed is not None:
                    headers = {**headers, aiohttp.hdrs.CONTENT_TYPE: guessed}
            value = content
        elif isinstance(value, AsyncIterable):
            what = f"is an async iterable ({type(value).__name__}), read as it is sent"
        elif isinstance(value, bytearray | memoryview):
            value = bytes(value)  # as it is now, on every run
        elif _is_number(value) or isinstance(value, list | tuple):
            # As sent by _multipart_as_sent, for a form aiohttp was given without it.
            what = _form_value_fault(value)
            if what is None:
                parts.extend(
                    (MultiDict(options), dict(headers), text) for text in _part_values(value)
                )
                continue
        if what is not None:
            name = options.get("name")
            shown = _shown_key(name, position, "field")
            where = str(shown) if isinstance(shown, _HiddenKey) else repr(name)
            return f"a multipart form whose field {where} {what}"
        parts.append((MultiDict(options), dict(headers), value))
    return _FormParts(tuple(parts), quote_fields, charset)


def _is_number(value: object) -> bool:
    """Whether ``value`` is an int (not a bool) or a float: what a form sends as its text."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _part_values(value: object) -> list[object]:
    """A multipart form field's value as aiohttp can put it in parts: a number as its text
    (``str()``, as a url-encoded form writes it), a list or tuple as a part per item (a
    repeated field, as a url-encoded form repeats it); anything else as it is."""
    values = value if isinstance(value, list | tuple) else (value,)
    return [str(item) if _is_number(item) else item for item in values]


def _multipart_numbers(form: aiohttp.FormData) -> list[tuple[object, object, object]]:
    """The fields of a multipart ``form`` (as aiohttp keeps them: options, headers, value)
    whose value is a number or a list or tuple, which aiohttp puts in no part; none where its
    fields cannot be read (``_form_parts`` says so, or aiohttp refuses them)."""
    fields = getattr(form, "_fields", None)
    if not isinstance(fields, list):
        return []
    return [
        field
        for field in fields
        if isinstance(field, tuple)
        and len(field) == 3
        and (_is_number(field[2]) or isinstance(field[2], list | tuple))
    ]


def _multipart_as_sent(data: object) -> object:
    """``data`` as aiohttp can send it: a mapping or pairs holding a file (which aiohttp
    makes a multipart form) whose other values hold a number (or a list) made a ``FormData``
    of the same fields, each number as its text and each list a field per item, as a
    url-encoded form sends them (aiohttp refuses a number in a part: "Can not serialize
    value type"). Anything else is returned as it is, the same object. The values are
    checked first (:func:`_form_fault`).

    A caller's multipart ``FormData`` holding such a value is not changed: a new one is made of
    its fields (names, filenames, content types, charset, quoting, in order), each number as
    its text and each list a field per item, as ``recover=True`` sends it (the caller's was
    refused without it, as a TypeError naming nothing)."""
    if isinstance(data, aiohttp.FormData):
        if not data.is_multipart or not _multipart_numbers(data):
            return data
        form = aiohttp.FormData(
            quote_fields=getattr(data, "_quote_fields", True),
            charset=getattr(data, "_charset", None),
            default_to_multipart=True,
        )
        for options, headers, value in data._fields:
            form._fields.extend(
                (MultiDict(options), dict(headers), item) for item in _part_values(value)
            )
        return form
    if not isinstance(data, Mapping | list | tuple) or not _holds_file(data):
        return data
    pairs = list(data.items()) if isinstance(data, Mapping) else list(data)
    if not any(
        isinstance(pair, tuple | list)
        and len(pair) == 2
        and (_is_number(pair[1]) or isinstance(pair[1], list | tuple))
        for pair in pairs
    ):
        return data
    fields: list[object] = []
    for pair in pairs:
        if isinstance(pair, tuple | list) and len(pair) == 2:
            fields.extend((pair[0], value) for value in _part_values(pair[1]))
        else:
            fields.append(pair)  # a bare file: aiohttp names it by its filename
    return aiohttp.FormData(fields)


async def _replayable(data: object, service: str, method: str) -> tuple[object, str | None]:
    """``data`` as a body that can be sent on every run of ``recover=True`` (which sends the
    request again after a re-login), and the ``Content-Type`` aiohttp would have given it
    (None: the one the body returned gets anyway). A file object's remaining content is read
    once, into memory, before anything is sent: aiohttp closes a file body once it has sent
    it, so none can be sent, or rewound, a second time. A binary file gives bytes, with the
    type aiohttp guesses from its name (:func:`_file_content_type`); a text file a str,
    encoded as a str body is (in the charset the ``Content-Type`` names; ``text/plain`` by
    default, as aiohttp sends a text file).

    A multipart form (a ``FormData`` with a file, a filename or a content type, or made so;
    a mapping or pairs holding a file) gives a :class:`_FormParts`, its files read the same
    way, each number beside them as its text and each list a field per item (as a
    url-encoded form sends them; aiohttp puts no number in a part): aiohttp builds such a
    form once, and closes it (with its files) once sent, so a fresh ``FormData`` is made of
    it for each run (:meth:`_FormParts.form`). Bytes, a str, a
    url-encoded ``FormData`` and a mapping or pairs without a file are returned as they are:
    aiohttp encodes them again each run.

    Refused with :class:`InvalidRequest`, said by their type, before anything is sent: an
    aiohttp ``Payload`` (closed by aiohttp once sent, with the file it reads), an async
    iterable (read as it is sent), a file that is closed or cannot be read; a multipart form
    holding one of them, or one that aiohttp has built already (sent by an earlier call)."""
    what: str | None = None
    form: aiohttp.FormData | None = None
    if isinstance(data, aiohttp.payload.Payload):
        what = (
            f"an aiohttp payload ({type(data).__name__}), which aiohttp closes once it is "
            "sent, and so can be sent only once"
        )
    elif isinstance(data, io.IOBase):
        content, what = await _read_whole(data)
        if isinstance(content, str):
            return content, None
        if isinstance(content, bytes):
            return content, _file_content_type(data)
    elif isinstance(data, AsyncIterable):
        what = (
            f"an async iterable ({type(data).__name__}), read as it is sent, and so can be "
            "sent only once"
        )
    elif isinstance(data, aiohttp.FormData):
        form = data
    elif isinstance(data, Mapping | list | tuple) and _holds_file(data):
        try:
            form = aiohttp.FormData(data)  # as aiohttp makes a form of it
        except (TypeError, ValueError):
            form = None  # aiohttp refuses it on the first run, as without recover=True
    if form is not None and form.is_multipart:
        parts = await _form_parts(form)
        if not isinstance(parts, str):
            return parts, None
        what = parts
    if what is None:
        return data, None
    raise InvalidRequest(
        f"recover=True may send the request again, and the body is {what}: pass bytes, a "
        "str, an open file (read into memory once) or a form of them",
        service=service,
        method=method,
    )


def split_host(host: str) -> tuple[str, int | None]:
    """``("example.com", 8080)`` from ``"example.com:8080"``; IPv6 literals in brackets."""
    if host.startswith("["):
        inside, _, rest = host[1:].partition("]")
        return inside, int(rest[1:]) if rest.startswith(":") else None
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return name, int(port)
    return host, None


#: Which engine each provider is attached to (the last to attach it), by the provider's
#: identity (never its ``==``: two equal providers are two; an unhashable one is one), both
#: held weakly: an engine attaches a socket's own provider only if no open engine has it, and
#: closes only those it still has. A provider that cannot be held weakly is not noted. An
#: engine that let a provider go (its last socket there closed) marks it so (the last flag):
#: free for the next engine, and still the one to close it if none takes it.
_ATTACHED: dict[int, tuple[weakref.ref[object], weakref.ref[Engine], bool]] = {}


def _claim(provider: object, engine: Engine) -> bool:
    """Note ``provider`` as attached to ``engine``; False if it cannot be held weakly."""
    key = id(provider)
    try:
        ref = weakref.ref(provider, functools.partial(_forget, key))
    except TypeError:
        return False
    _ATTACHED[key] = (ref, weakref.ref(engine), False)
    return True


def _forget(key: int, ref: weakref.ref[object]) -> None:
    """A provider noted in :data:`_ATTACHED` is gone: its entry, unless the id was reused."""
    held = _ATTACHED.get(key)
    if held is not None and held[0] is ref:
        del _ATTACHED[key]


def _held_by(provider: object) -> Engine | None:
    """The engine ``provider`` was last attached to, if it is still alive and has it."""
    held = _ATTACHED.get(id(provider))
    if held is None or held[0]() is not provider or held[2]:
        return None
    return held[1]()


def _last_taker(provider: object) -> Engine | None:
    """The engine that last attached ``provider``, if alive, whether or not it let it go."""
    held = _ATTACHED.get(id(provider))
    if held is None or held[0]() is not provider:
        return None
    return held[1]()


#: The engines whose sockets use each provider (by the provider's id), while they do: an
#: engine that closes hands a provider it attached to another still using it.
_SOCKET_USERS: dict[int, weakref.WeakSet[Engine]] = {}


def _known(provider: object) -> bool:
    """Whether an engine attached ``provider`` (and may have let it go since)."""
    held = _ATTACHED.get(id(provider))
    return held is not None and held[0]() is provider


def _release(provider: object, engine: Engine) -> None:
    """``engine`` lets ``provider`` go, if it has it: the next engine attaches it."""
    held = _ATTACHED.get(id(provider))
    if held is not None and held[0]() is provider and _held_by(provider) is engine:
        _ATTACHED[id(provider)] = (held[0], held[1], True)


def _holder(provider: object) -> Engine | None:
    """The open engine ``provider`` is attached to, if any."""
    engine = _held_by(provider)
    return None if engine is None or engine._closed else engine


def _drop_ref(refs: dict[int, weakref.ref[AuthProvider]], key: int, ref: object) -> None:
    """A provider held weakly in ``refs`` is gone: its entry, unless the id was reused."""
    if refs.get(key) is ref:
        del refs[key]


class _SocketAuth:
    """A socket's own auth provider, as the engine holds it while sockets use it."""

    __slots__ = ("provider", "recovery", "sockets")

    def __init__(self, provider: AuthProvider, recovery: Recovery) -> None:
        self.provider = provider
        self.recovery = recovery
        #: How many of the engine's sockets use it.
        self.sockets = 0


class _EngineKeepalive(KeepaliveTask):
    """An engine's HTTP keepalive, told apart from its engine's close.

    A run's :class:`~le_transport.errors.EngineClosed` ends a :class:`KeepaliveTask` quietly,
    as its engine's close would: one INFO line, no error. The engine's runs raise it also when
    its engine is still open but what the run needs was closed on its own (``auth.close()``,
    the engine left open; a caller's aiohttp session the engine was given): a closed provider
    is final, so the schedule stops all the same, but
    that stop is no close anybody asked of the schedule. It is logged once as a WARNING saying
    so (the error's type and its redacted text, which names the provider), reported as a
    ``keepalive_failed`` event with ``stopped=True``, and :attr:`error` (what :meth:`wait`
    returns) holds the ``EngineClosed``.

    Its runs bound their request by the keepalive's ``timeout`` (its deadline, or the Login
    Service refresh's), so the run's own bound waits :attr:`RUN_GRACE` (1 s) longer: a service
    that hangs ends the run with the request's own give-up (a deadline passed in its attempt,
    the keepalive's handled WARNING), not the backstop's bare TimeoutError at the same instant.
    """

    RUN_GRACE: ClassVar[float] = 1.0

    def __init__(
        self,
        policy: Keepalive,
        action: Callable[[], Awaitable[object]],
        *,
        engine_closed: Callable[[], bool],
        what: str,
        clock: Clock,
        hooks: EventHooks,
        name: str,
        on_close: Callable[[KeepaliveTask], object],
        not_final: tuple[type[Exception], ...],
        retry_after_ceiling: float,
    ) -> None:
        super().__init__(
            policy,
            action,
            clock=clock,
            hooks=hooks,
            name=name,
            on_close=on_close,
            not_final=not_final,
            retry_after_ceiling=retry_after_ceiling,
        )
        self._engine_is_closed = engine_closed
        self._needs = what

    def _engine_closed(self, error: EngineClosed) -> None:
        if self._engine_is_closed():
            super()._engine_closed(error)
            return
        self._error = error
        action = self._policy.action
        # On the keepalive's own logger, beside its other lines.
        _keepalive_log.warning(
            "%s: keepalive %s stopped: %s was closed on its own, its engine still open (%s: "
            "%s); it will not run again",
            self._name,
            action,
            self._needs,
            type(error).__name__,
            error_text(error),
            extra={"keepalive": action, "error": type(error).__name__},
        )
        emit(
            self._hooks.on_state,
            StateEvent(
                "keepalive_failed",
                self._name,
                {"action": action, "error": type(error).__name__, "stopped": True},
            ),
        )


class Engine:
    """Sends requests to LiveEngage services through the policy stack.

    - ``domains``: a :class:`DomainProvider`, or a ``{service: host}`` mapping (static).
    - ``scheme``: ``"https"`` (default) or ``"http"`` for loopback servers.
    - ``retry``: the default :class:`RetryPolicy` (the guide's 5/10/15 s).
    - ``clock``: the injected :class:`Clock` for every pause and timeout.
    - ``wall_clock``: epoch seconds, to read a ``Retry-After`` given as an HTTP-date when the
      answer carries no ``Date`` header (an HTTP answer's, in the retry middleware, and a
      refused socket upgrade's, in every socket's dialer), and for the providers made without
      a ``wall_clock`` of their own (a JWT's ``iat``/``exp``, an OAuth1 ``oauth_timestamp``).
      Default (None): the clock's ``wall`` when it has one (a
      :class:`~le_transport.testing.VirtualClock`'s virtual date, which a
      :class:`~le_transport.testing.Simulator` on the same clock dates its tokens by), else
      :func:`time.time` (the :class:`RealClock`'s). Inject it beside ``clock`` to make such
      dates deterministic.
    - ``hooks``: :class:`EventHooks` for retries and give-ups.
    - ``rng``: random source for jitter (seed it to reproduce a run).
    - ``outer_middlewares``: run around the retry middleware (once per logical call).
    - ``wire_middlewares``: run inside it, once per attempt (fault injection goes here). The
      providers' own calls (login, refresh, logout, the Domain API, token requests) pass only
      those that say they may see them, with a ``sees_provider_calls`` attribute that is True (a
      :class:`~le_transport.chaos.FaultInjector` does, so that one plan strikes a login on
      either side): those calls carry credentials (a login's password in its body, the
      session cookie), which a caller's logging or tracing middleware must not meet unasked.
    - The ``bind_clock`` protocol, for a middleware (of either list) that keeps time: if it
      has a method ``bind_clock(clock: Clock) -> None``, the engine calls it once, in its
      ``__init__``, with its own ``clock`` (the outer middlewares first, each list in order);
      no request pays for it. The middleware adopts that clock, or keeps one it was given
      explicitly; it may refuse (a :class:`~le_transport.errors.ConfigurationError` saying
      why), which the engine's construction then raises, the middlewares before it bound
      already. A :class:`~le_transport.chaos.FaultInjector` made without ``clock=`` takes the
      engine's clock this way, so that its delays run on the engine's time.
    - ``max_body_bytes``: larger responses raise :class:`~le_transport.errors.BodyTooLarge`.
      A failed answer (4xx/5xx) over it is judged by its status as any other, its body cut
      to its start (at most 64 KiB, for the error's excerpt) and the connection dropped.
      The same holds on a ``session`` passed in without the stack on it: the engine then
      reads the body itself, to the limit.
    - ``session``: an existing ``aiohttp.ClientSession`` to use as is (the caller then owns
      its middlewares; take ours from :meth:`middlewares`). Otherwise the engine makes one.
    - ``tls``: an ``ssl.SSLContext`` for a private CA or client certificates; default: the
      system's trust store, verification on.
    - ``insecure_tls``: turn certificate verification off. Only for local servers with a
      self-signed certificate; logged loudly at every start. There is no other way to turn
      verification off.
    - ``connection_limit``: the connector's pool size (0: unlimited).
    - ``auth``: an :class:`~le_transport.providers.AuthProvider` (login, OAuth1, OAuth2, bearer,
      consumer JWT). Its credentials go on each request to the host the domain provider named
      for the call's service, and nowhere else; a 401 re-authenticates once and replays once.
      The engine attaches its providers on start and closes them (logout) on close.
    - ``recovery``: the outer loop's :class:`BackoffPolicy` (default
      :meth:`BackoffPolicy.relogin`), used by calls made with ``recover=True``.
    - ``pacer``: the :class:`~le_transport.sockets.ReconnectPacer` every socket's reconnect
      passes (default: one per engine; share one between engines to pace a whole process).
    - ``overload``: an :class:`~le_transport.middleware.overload.OverloadGuard`: the retry
      budget per service and the circuit breaker per service and host, asked by the retry loop
      before each attempt and each pause (a refusal fails the call at once, no pause taken);
      give it a Redis store to share them across a fleet. Default: none.
    """

    def __init__(
        self,
        domains: DomainProvider | Mapping[str, str],
        *,
        scheme: str = "https",
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
        wall_clock: Callable[[], float] | None = None,
        hooks: EventHooks | None = None,
        rng: random.Random | None = None,
        outer_middlewares: Sequence[ClientMiddlewareType] = (),
        wire_middlewares: Sequence[ClientMiddlewareType] = (),
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        session: aiohttp.ClientSession | None = None,
        tls: _ssl.SSLContext | None = None,
        insecure_tls: bool = False,
        connection_limit: int = 100,
        auth: AuthProvider | None = None,
        recovery: BackoffPolicy | None = None,
        pacer: ReconnectPacer | None = None,
        overload: OverloadGuard | None = None,
    ) -> None:
        if scheme not in ("https", "http"):
            raise ConfigurationError(f"Engine.scheme must be 'https' or 'http', got {scheme!r}")
        # Each checked here, by name: a wrong kind would otherwise fail as an AttributeError
        # deep inside the first call, the first socket or the first retry.
        require_option(
            isinstance(domains, Mapping | DomainProvider),
            domains,
            owner="Engine",
            field="domains",
            wants="a DomainProvider or a {service: host} mapping",
        )
        for name, value, kind in (
            ("retry", retry, RetryPolicy),
            ("clock", clock, Clock),
            ("hooks", hooks, EventHooks),
            ("rng", rng, random.Random),
            ("session", session, aiohttp.ClientSession),
            ("recovery", recovery, BackoffPolicy),
            ("pacer", pacer, ReconnectPacer),
        ):
            require_kind(value, kind, owner="Engine", field=name)
        require_option(
            wall_clock is None or callable(wall_clock),
            wall_clock,
            owner="Engine",
            field="wall_clock",
            wants="a function returning epoch seconds (like time.time)",
        )
        require_option(
            overload is None or is_retry_gate(overload),
            overload,
            owner="Engine",
            field="overload",
            wants="an OverloadGuard (or another RetryGate) or None",
        )
        stacks: list[tuple[ClientMiddlewareType, ...]] = []
        for name, stack in (
            ("outer_middlewares", outer_middlewares),
            ("wire_middlewares", wire_middlewares),
        ):
            # None, a number, a bool or an object is no sequence (iterating it raised a raw
            # TypeError); a str, a bytes or a mapping is no sequence of middlewares.
            ok = isinstance(stack, Iterable) and not isinstance(stack, str | bytes | Mapping)
            if ok:
                stack = tuple(stack)  # once: an iterator is not consumed by the check
                ok = all(callable(m) for m in stack)
            require_option(
                ok,
                stack,
                owner="Engine",
                field=name,
                wants="a sequence of aiohttp client middlewares (callables)",
            )
            stacks.append(tuple(stack))
        outer_middlewares, wire_middlewares = stacks
        if (
            isinstance(connection_limit, bool)
            or not isinstance(connection_limit, int)
            or connection_limit < 0
        ):
            raise ConfigurationError(
                f"Engine.connection_limit must be an int >= 0 (0: unlimited), got "
                f"{connection_limit!r}"
            )
        if not isinstance(max_body_bytes, int) or max_body_bytes < 1:
            raise ConfigurationError(
                f"Engine.max_body_bytes must be a positive int, got {max_body_bytes!r}"
            )
        self._domains: DomainProvider = (
            StaticDomains(domains) if isinstance(domains, Mapping) else domains
        )
        # A static map answers at once: no call's deadline needs a timer around it.
        self._resolves_at_once = type(self._domains) is StaticDomains
        #: Its map, read in place by request(): no coroutine per call (benchmarks/README.md).
        self._static_hosts: dict[str, str] = (
            self._domains._hosts if isinstance(self._domains, StaticDomains) else {}
        )
        self._scheme = scheme
        self._retry = retry or RetryPolicy()
        self._clock = clock or RealClock()
        self._wall_clock: Callable[[], float] = (
            wall_of(self._clock) if wall_clock is None else wall_clock
        )
        self._hooks = hooks or EventHooks()
        self._rng = rng or random.Random()
        if tls is not None and not isinstance(tls, _ssl.SSLContext):
            raise ConfigurationError(
                f"Engine.tls must be an ssl.SSLContext or None, got {type(tls).__name__}; "
                "to turn verification off for a local server, pass insecure_tls=True"
            )
        if insecure_tls is not False and insecure_tls is not True:
            raise ConfigurationError(f"Engine.insecure_tls must be a bool, got {insecure_tls!r}")
        self._tls = tls
        self._insecure_tls = insecure_tls
        self._connection_limit = connection_limit
        # Set when the engine closes: calls in progress stop in their pause (EngineClosed)
        # instead of retrying against a session that is gone.
        self._shutdown = asyncio.Event()
        self._retry_mw = RetryMiddleware(
            policy=self._retry,
            clock=self._clock,
            hooks=self._hooks,
            rng=self._rng,
            max_body_bytes=max_body_bytes,
            wall_clock=self._wall_clock,
            gate=overload,
            shutdown=self._shutdown,
        )
        if auth is not None and not isinstance(auth, AuthProvider):
            raise ConfigurationError(
                f"Engine.auth must be an AuthProvider or None, got {type(auth).__name__}"
            )
        account = getattr(auth, "account", None)
        if isinstance(account, str):
            # The engine's calls go to its domain map's hosts with this provider's credentials.
            check_domains_account("Engine", self._domains, account)
        self._auth = auth
        # Auth sits outside the retry middleware: once per logical call (and per redirect hop,
        # where it checks the host again), so a 401 replay gets the whole schedule again.
        self._auth_mw: tuple[ClientMiddlewareType, ...] = (
            (AuthMiddleware(auth=auth, domains=self._domains, scheme=scheme, clock=self._clock),)
            if auth is not None
            else ()
        )
        self._recovery = Recovery(
            domains=self._domains,
            auth=auth,
            clock=self._clock,
            policy=recovery,
            request_policy=self._retry,
            rng=self._rng,
            hooks=self._hooks,
        )
        # Sockets' own auth providers (websocket(auth=...), not the engine's), by identity,
        # while a socket uses them: each with a re-login loop of its own.
        self._socket_auth: dict[int, _SocketAuth] = {}
        # Those attached here (no other engine had them), closed with the engine if still
        # alive and still this engine's then: held weakly, so that a provider its caller let
        # go (one per end user on a long-lived engine) is not kept, with its token, until the
        # engine closes; one that cannot be held weakly is held until then.
        self._attached_auth: dict[int, weakref.ref[AuthProvider]] = {}
        self._attached_strongly: dict[int, AuthProvider] = {}
        # Domain maps a provider handed over brought here (its engine closing): closed with
        # this engine, unless another took them since.
        self._taken_domains: dict[int, weakref.ref[object]] = {}
        self._provider_http: ProviderHttp | None = None
        self._middlewares: tuple[ClientMiddlewareType, ...] = (
            *outer_middlewares,
            *self._auth_mw,
            self._retry_mw,
            *wire_middlewares,
        )
        # Provider calls run the wire middlewares that ask to see them (a FaultInjector: one
        # fault plan strikes a login on either side); no other: they carry credentials.
        self._provider_wire: tuple[ClientMiddlewareType, ...] = tuple(
            mw for mw in wire_middlewares if getattr(mw, "sees_provider_calls", False) is True
        )
        # A middleware that keeps time takes the engine's (duck-typed: ``bind_clock(clock)``,
        # see the class), once, here: no request pays for it. A class given for an instance
        # has the method unbound: not called (it fails as it did before).
        for middleware in (*outer_middlewares, *wire_middlewares):
            bind_clock = getattr(middleware, "bind_clock", None)
            if callable(bind_clock) and not isinstance(middleware, type):
                bind_clock(self._clock)
        self._session = session
        self._owns_session = session is None
        self._closed = False
        # The loop the engine started on (its session, tasks and timers live there), whether
        # it started, and whether a close went all the way through (else __del__ warns).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._close_done = False
        # The close in progress (resolved when it ends), and whether the providers were closed
        # (logout happens once, even when the close that began it was cancelled half-way).
        self._closing: asyncio.Future[None] | None = None
        self._providers_closed = False
        # A close started from a socket's callback runs in this task (see close()).
        self._close_task: asyncio.Task[None] | None = None
        # Checked paths and built URLs (with their redacted form), bounded: a service calls
        # the same few endpoints all day, and checking, building and redacting them again cost
        # a successful call more than its policy decisions (benchmarks/README.md).
        self._checked_paths: set[str] = set()
        #: Service names checked (_check_service) for a domain provider that may fetch.
        self._checked_services: set[str] = set()
        self._urls: dict[tuple[str, str, str], tuple[URL, str]] = {}
        self._pacer = pacer or ReconnectPacer(self._clock)
        self._sockets: set[ResilientSocket] = set()
        # One task serves every socket's keepalive: none per socket (benchmarks/README.md).
        self._socket_keepalives = KeepaliveScheduler(self._clock)
        self._keepalives: set[KeepaliveTask] = set()

    # -- properties -------------------------------------------------------------------------

    @property
    def clock(self) -> Clock:
        """The injected clock."""
        return self._clock

    @property
    def wall_clock(self) -> Callable[[], float]:
        """The wall clock (epoch seconds): the one injected, else the clock's ``wall``, else
        :func:`time.time`. It dates a ``Retry-After`` HTTP-date when the answer has no
        ``Date`` header, and the attached providers that have no wall clock of their own read
        token dates and date OAuth1 timestamps with it."""
        return self._wall_clock

    @property
    def retry(self) -> RetryPolicy:
        """The default request retry policy."""
        return self._retry

    @property
    def hooks(self) -> EventHooks:
        """The event hooks."""
        return self._hooks

    @property
    def domains(self) -> DomainProvider:
        """The domain provider."""
        return self._domains

    @property
    def scheme(self) -> str:
        """``https`` or ``http``."""
        return self._scheme

    @property
    def middlewares(self) -> tuple[ClientMiddlewareType, ...]:
        """The middleware stack, outermost first, for ``ClientSession(middlewares=...)``."""
        return self._middlewares

    @property
    def auth(self) -> AuthProvider | None:
        """The auth provider, if any."""
        return self._auth

    @property
    def recovery(self) -> Recovery:
        """The outer recovery loop (re-resolve, re-login) shared by this engine's calls."""
        return self._recovery

    async def login(self) -> Credentials:
        """Log in now (or reuse the current session) and return the credentials.

        Sockets take the bearer or consumer JWT from the result. Raises
        :class:`~le_transport.errors.ConfigurationError` if the engine has no auth provider,
        :class:`~le_transport.errors.EngineClosed` once it is closed, and
        :class:`~le_transport.errors.ProviderError` when the provider fails with an error of
        its own (not a :class:`~le_transport.errors.TransportError`), that error as the cause;
        :class:`~le_transport.errors.ConnectionFailed` when that error is its own network
        call's failure (an outage, not a bug: see
        :func:`~le_transport.middleware.context.provider_failed`).
        """
        self._check_usable("login")
        auth = self._auth
        if auth is None:
            raise ConfigurationError(
                "Engine.login: the engine has no auth provider (its auth argument)"
            )
        try:
            # Checked as a request's are: headers that cannot be sent, or an answer that is no
            # Credentials, are the provider's bug, typed here rather than at the first call.
            return as_credentials(await auth.credentials("GET", URL("/")))
        except InvalidCredentials as exc:
            raise self._provider_failure("auth", auth, "credentials", exc) from exc
        except TransportError:
            raise
        except Exception as exc:
            raise self._provider_failure("auth", auth, "credentials", exc) from safe_cause(exc)

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session (created on :meth:`start`)."""
        if self._session is None:
            raise TransportError("the engine is not started: use 'async with Engine(...)'")
        return self._session

    def _check_usable(self, entry: str, *, service: str | None = None) -> None:
        """Refuse ``entry`` on an engine that is closed (:class:`EngineClosed`), not started,
        or started on another event loop (:class:`WrongEventLoop`)."""
        if self._closed:
            raise EngineClosed(
                f"Engine.{entry}: the engine is closed; make a new one", service=service
            )
        self.session  # noqa: B018 - raises if the engine is not started
        wrong = self._wrong_loop()
        if wrong is not None:
            raise wrong

    def _wrong_loop(self) -> WrongEventLoop | None:
        """The error for a use from another loop than the one the engine started on, if so."""
        started_on = self._loop
        if started_on is None:
            return None
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is started_on:
            return None
        gone = " (that loop is closed now)" if started_on.is_closed() else ""
        return WrongEventLoop(
            f"this engine started on another event loop{gone}: an engine belongs to the loop "
            "it started on, with its session, connections and tasks. Make one engine per "
            "loop ('async with Engine(...)' inside the coroutine asyncio.run runs), or run "
            "every call on that loop"
        )

    def _provider_failure(
        self,
        role: str,
        provider: object,
        operation: str,
        exc: Exception,
        service: str | None = None,
    ) -> TransportError:
        """The typed error for a provider's own exception (not a TransportError): a
        :class:`WrongEventLoop` when the engine is used from another loop (what made the
        provider fail), else a logged :class:`~le_transport.errors.ProviderError`."""
        wrong = self._wrong_loop()
        if wrong is not None:
            return wrong
        return provider_failed(role, provider, operation, exc, service=service)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the session, if the engine owns one. Idempotent, on the loop it started on.

        Raises :class:`~le_transport.errors.EngineClosed` once the engine is closed (a closed
        engine does not start again: make a new one), and
        :class:`~le_transport.errors.WrongEventLoop` on another loop than the first start's.
        """
        if self._closed:
            raise EngineClosed("Engine.start: the engine is closed; make a new one")
        wrong = self._wrong_loop()
        if wrong is not None:
            raise wrong
        self._loop = asyncio.get_running_loop()
        if self._session is None:
            ssl_arg: _ssl.SSLContext | bool = True if self._tls is None else self._tls
            if self._insecure_tls:
                _log.warning(
                    "TLS CERTIFICATE VERIFICATION IS OFF (insecure_tls=True): any server can "
                    "impersonate LiveEngage. Use this only with a local simulator."
                )
                ssl_arg = False
            connector = aiohttp.TCPConnector(limit=self._connection_limit, ssl=ssl_arg)
            # No total timeout: aiohttp's total spans every attempt made inside a middleware,
            # so retry pauses would eat it. The retry middleware enforces the per-attempt
            # timeout and the call deadline itself, on the injected clock.
            self._session = aiohttp.ClientSession(
                connector=connector,
                middlewares=self._middlewares,
                timeout=aiohttp.ClientTimeout(total=None),
                raise_for_status=False,
                # The Login Service's Session_id cookie is held by the auth provider and sent
                # only on its own refresh and logout; a jar could hand it to other hosts.
                cookie_jar=aiohttp.DummyCookieJar(),
                # NaN and infinity are not JSON: refused here (InvalidRequest), not sent for
                # the server to reject.
                json_serialize=_strict_json,
            )
        self._started = True
        self._attach_providers()

    def _attach_providers(self) -> None:
        http = ProviderHttp(
            session=self._provider_session,
            retry_middleware=self._retry_mw,
            clock=self._clock,
            hooks=self._hooks,
            rng=self._rng,
            scheme=self._scheme,
            wire_middlewares=self._provider_wire,
            wall_clock=self._wall_clock,
        )
        self._provider_http = http
        for provider in (self._domains, self._auth):
            attach = getattr(provider, "attach", None)
            if callable(attach):
                attach(http)
                _claim(provider, self)

    def _provider_session(self) -> aiohttp.ClientSession:
        """The session a provider attached here sends with: an
        :class:`~le_transport.errors.EngineClosed` once it is closed (a provider still used
        after its engine closed failed with aiohttp's bare "Session is closed", taken for the
        provider's own bug)."""
        session = self.session
        if session.closed:
            raise EngineClosed(
                "the engine this provider is attached to is closed: give the provider to an "
                "open engine (or make a new provider)"
            )
        return session

    async def close(self) -> None:
        """Close the providers (logout, keepalive) and the session (if the engine made it).
        Idempotent; a close called while another is in progress returns when that one is
        done. Calls waiting through the recovery loop fail with
        :class:`~le_transport.errors.RecoveryFailed`. Called from a socket's ``on_frame``
        handler or ``on_connect`` callback, it starts the close and returns at once: closing
        that socket waits for the callback to return. Called from inside a re-login round (a
        task an auth provider's re-login started and waits for: its teardown), it runs to its
        end, the logout and the session's close too (the round, left to end alone, ends closed
        once that re-login returns), even when the round's only waiter is a socket it closes.

        Raises :class:`~le_transport.errors.WrongEventLoop`, closing nothing, on another loop
        than the one the engine started on: its session and logout can run only there."""
        wrong = self._wrong_loop()
        if wrong is not None:
            raise wrong
        self._closed = True
        self._shutdown.set()
        current = asyncio.current_task()
        if any(ws._runs_callbacks_in(current) for ws in self._sockets):
            # Waiting here would deadlock (the close waits for this socket, the socket for this
            # callback), and the owner cancels its on_connect task when it closes: the close
            # runs in a task of its own, which a later close() waits for.
            if self._close_task is None or self._close_task.done():
                self._close_task = asyncio.get_running_loop().create_task(
                    self.close(), name="le_transport engine close"
                )
            return
        while (closing := self._closing) is not None:
            # Another task is closing: closing the session now would cut its logout short.
            # asyncio.wait, not await: this caller's cancellation must not cancel that close.
            await asyncio.wait({closing})
        done = self._closing = asyncio.get_running_loop().create_future()
        try:
            # A close from inside a re-login round (a task the round's re-login started and
            # waits for: an auth provider's teardown) closes that loop first, which leaves the
            # round to end alone. After the sockets, too late: a socket escalated to the round
            # was its last waiter, and closing the socket stopped the round, which cancelled
            # the re-login and this close with it, before its logout.
            for recovery in [
                self._recovery,
                *(held.recovery for held in self._socket_auth.values()),
            ]:
                if recovery._inside_round():
                    recovery.close()
            # Sockets and keepalives first: they use the session and the credentials. All at
            # once: each may wait close_timeout for an unanswered close handshake, and one
            # after another that would be minutes for a fleet.
            await asyncio.gather(*(ws.close() for ws in list(self._sockets)))
            # Calls waiting through the recovery loop fail now: a re-login must not outlive the
            # logout below, nor a caller wait out a pause for a session that is gone.
            self._recovery.close()
            for held in self._socket_auth.values():
                held.recovery.close()
            await self._socket_keepalives.close()
            for task in list(self._keepalives):
                await task.close()
            failed: Exception | None = None
            if not self._providers_closed and self._session is not None:
                failed = await self._close_providers()
                # Only now: a close cancelled part-way leaves the rest (a logout) to the next.
                # A provider's close that raised is not tried again: the session it would use
                # is closed below.
                self._providers_closed = True
            cut = False
            if self._owns_session and self._session is not None and not self._session.closed:
                _fail_reads_in_flight(self._session)
                await self._session.close()
                cut = True
            gate = self._retry_mw.gate
            drain = getattr(gate, "drain", None)
            if isinstance(gate, OverloadGuard):
                # An abandoned probe's lock being freed in the fleet's store: bounded, and
                # then cancelled, so that no task of the guard outlives the engine. Once the
                # calls in flight are cut, their probes too: a probe cut here is abandoned a
                # moment later, and its lock's release must not start after the drain (to be
                # cancelled with the loop: the fleet refused for the lock's lease).
                await gate.drain(probes_of=self._session if cut else None)
            elif callable(drain):
                await drain()  # another RetryGate's own
            if failed is not None:
                # Raised as it is, after the session is closed: it used to stop the close
                # before it, and the session leaked. The close did not finish (__del__ says so
                # if the provider is left holding something).
                raise failed
            self._close_done = True
        finally:
            self._closing = None
            done.set_result(None)

    async def _close_providers(self) -> Exception | None:
        """Close the auth provider (logout) and the domain provider, each even if the other's
        close raised: the first error, to raise once the session is closed (a second is
        logged, by type). A cancellation propagates, leaving the rest to the next close."""
        failed: Exception | None = None
        for role, provider, close in self._closers():
            if not callable(close):
                continue
            try:
                await close()
            except Exception as exc:
                if failed is None:
                    failed = exc
                else:
                    _log.warning(
                        "closing the engine: the %s provider %s failed in close() with %s too",
                        role,
                        type(provider).__name__,
                        type(exc).__name__,
                        extra={"provider": type(provider).__name__, "error": type(exc).__name__},
                    )
        return failed

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __del__(self, _warnings: Any = warnings) -> None:
        # aiohttp's pattern: a ResourceWarning naming what was left, and never any I/O here
        # (no logout, no close: the loop may be gone). Attributes read with defaults: an
        # engine whose __init__ failed half-way is collected too.
        if not getattr(self, "_started", False) or getattr(self, "_close_done", True):
            return
        left = self._left_open()
        if not left:
            # Nothing to leave (a caller's session, no login, no socket): no warning.
            return
        if self._closed:
            what = (
                "an Engine's close() did not finish (a provider's close raised, or the close "
                "was cancelled or timed out)"
            )
            advice = "'await engine.close()' again, on the loop it started on, finishes it"
        else:
            what = "an Engine was garbage-collected without close()"
            advice = (
                "use 'async with Engine(...)', or 'await engine.close()' on the loop it started on"
            )
        _warnings.warn(f"{what}, leaving {', '.join(left)}: {advice}", ResourceWarning, source=self)

    def _left_open(self) -> list[str]:
        """What an engine not closed (or whose close did not finish) leaves behind, in words
        (no secret); empty when it leaves nothing."""
        left: list[str] = []
        auth = self._auth
        if isinstance(auth, LoginServiceAuth):
            if auth.session is not None:
                left.append(
                    f"a Login Service session still logged in ({auth.subject}: not logged "
                    "out, it stays valid on the server until its TTL ends)"
                )
            keepalive = auth._keepalive
            if keepalive is not None and not keepalive.done():
                left.append(f"the session keepalive of {auth.subject} running")
        session = self._session
        if self._owns_session and session is not None and not session.closed:
            left.append("its aiohttp session and connections")
        if self._sockets:
            left.append(f"{len(self._sockets)} socket(s) open")
        if self._keepalives:
            left.append(f"{len(self._keepalives)} HTTP keepalive(s) running")
        return left

    # -- requests ---------------------------------------------------------------------------

    async def url_for(self, service: str, path: str, *, scheme: str | None = None) -> URL:
        """The absolute URL of ``path`` on the host serving ``service``.

        :class:`~le_transport.errors.EngineClosed` once the engine is closed; a
        :class:`~le_transport.errors.ProviderError` when the domain provider fails with an
        exception that is not a :class:`~le_transport.errors.TransportError`, or a
        :class:`~le_transport.errors.ConnectionFailed` when that exception is its own network
        call's failure (an outage: a socket's dialer reconnects into it). A ``service`` that
        names no service (not a str, empty, holding whitespace) is an
        :class:`~le_transport.errors.InvalidRequest`, as in :meth:`request`."""
        if self._closed:
            raise EngineClosed("Engine.url_for: the engine is closed", service=service)
        wrong = self._wrong_loop()
        if wrong is not None:
            raise wrong
        if type(service) is not str or service not in self._checked_services:
            # The caller's argument, said as such, not blamed on the domain provider (a list
            # made StaticDomains fail with a TypeError, a ProviderError logged at ERROR).
            self._check_service(service, None)
        if scheme is not None and scheme not in _URL_SCHEMES:
            # As Engine(scheme=...) refuses it: an ftp:// (or any other) URL for a service.
            raise InvalidRequest(
                "url_for scheme must be 'https', 'http', 'wss', 'ws' or None (the engine's), "
                f"got {_described(scheme)}",
                service=service,
            )
        try:
            return (await self._url_for(service, path, scheme))[0]
        except TransportError:
            raise
        except Exception as exc:
            # The domain provider's own bug (the sockets' dialer asks here on every connect):
            # typed and final, as in a request, not an outage to reconnect into; its own
            # network call failing is an outage (ConnectionFailed), reconnected into.
            raise self._provider_failure(
                "domain", self._domains, "resolve", exc, service
            ) from safe_cause(exc)

    async def _url_for(self, service: str, path: str, scheme: str | None) -> tuple[URL, str]:
        """The URL of ``path`` on ``service``'s host, and its redacted form."""
        if type(path) is not str or path not in self._checked_paths:
            self._check_path(service, path)
        resolved = await self._domains.resolve(service)
        key = (scheme or self._scheme, resolved, path)
        built = self._built(key)
        return self._build_url(key, service) if built is None else built

    def _built(self, key: tuple[str, str, str]) -> tuple[URL, str] | None:
        """The URL built for ``key`` before, if it is kept."""
        try:
            return self._urls.get(key)
        except TypeError:  # an unhashable "host" from a domain provider: _build_url refuses it
            return None

    def _build_url(self, key: tuple[str, str, str], service: str) -> tuple[URL, str]:
        """Build (and keep, bounded) the URL of ``key``: scheme, resolved host, checked path."""
        scheme, resolved, path = key
        # Once per host and path, not per call: a domain provider of the caller's own may
        # answer something that is no host (None, a URL), which must fail typed, by name.
        # Built from the host as validate_host writes it ("host." without its dot, an IPv6
        # literal compressed): every layer that keys on the URL's host (the breaker, the
        # credential check) then sees one name for one host.
        host, port = split_host(validate_host(resolved, service=service))
        url = URL.build(scheme=scheme, host=host, port=port, path=path)
        built = (url, redact_url(url))
        if len(self._urls) >= _URL_CACHE_SIZE:
            self._urls.clear()
        self._urls[key] = built
        return built

    def _check_service(self, service: object, method: str | None) -> None:
        """Refuse a ``service`` that names no service (:func:`_service_fault`), as
        :meth:`websocket` does, and keep a good one as checked."""
        refused = _service_fault(service)
        if refused is not None:
            raise InvalidRequest(refused, method=method) from None
        assert isinstance(service, str)
        if len(self._checked_services) >= _URL_CACHE_SIZE:
            self._checked_services.clear()
        self._checked_services.add(service)

    def _check_path(self, service: str, path: str) -> None:
        if not isinstance(path, str) or not path.startswith("/") or path.startswith("//"):
            # Described, never shown: a URL given for a path may carry a token in any segment
            # ("https://host/eyJ..."), its userinfo, its query; a relative path a bearer.
            hint = (
                ": pass the path alone, the host comes from the service"
                if isinstance(path, str) and (_URL_START.match(path) or "://" in path)
                else ""
            )
            raise InvalidRequest(
                "path must be an absolute path starting with a single '/', got "
                f"{_described(path)}{hint}",
                service=service,
            )
        if any(ord(c) < 0x21 or c in "?#\x7f" for c in path):
            raise InvalidRequest(
                "path must not contain whitespace, control characters, '?' or '#' "
                "(pass query parameters as params=)",
                service=service,
            )
        if any(segment in (".", "..") for segment in path.split("/")):
            # The URL normalises them away: "/users/" + "../../x" (an id taken from outside)
            # reached another endpoint of the host, with the service's credentials.
            raise InvalidRequest(
                "path must not contain '.' or '..' segments (a path built from outside input "
                "would reach another endpoint of the host): quote or check what goes into it",
                service=service,
            )
        if not utf8_encodable(path):
            # yarl drops the character: "/users" + "\\ud800" went to /users, another endpoint,
            # with the service's credentials. Refused, and not kept as checked.
            raise InvalidRequest(f"path {_DROPPED}; the path is not shown", service=service)
        if len(self._checked_paths) >= _URL_CACHE_SIZE:
            self._checked_paths.clear()
        self._checked_paths.add(path)

    def _record_unseen(self, ctx: CallContext, statuses: list[int]) -> None:
        """Record answers no retry loop saw (``statuses``, in order) as attempts of the call."""
        now = self._clock.now()
        for status in statuses:
            ctx.attempts.append(
                AttemptRecord(len(ctx.attempts) + 1, Outcome.response(status), None, now)
            )

    async def _read_within_limit(
        self,
        resp: aiohttp.ClientResponse,
        ctx: CallContext,
        method: str,
        shown: str,
        service: str,
    ) -> bytes:
        """``resp``'s body, read to at most ``max_body_bytes``: beyond it, a failed answer the
        call is judged by (a 4xx/5xx not accepted) keeps its start, for its error's excerpt,
        and any other raises :class:`~le_transport.errors.BodyTooLarge`; either way the
        connection is dropped, the rest not read. A body read whole is given to the session's
        ``on_response_chunk_received`` trace hooks, as ``resp.read()`` gives it: by
        ``resp.read()`` itself when ``Content-Length`` is within the limit (and no
        ``Content-Encoding`` inflates it), else once read. The ``BodyTooLarge`` of a call no
        retry loop ran for carries the answer's attempt record (and its redirect hops'), as
        the retry middleware's carries the attempts it ran."""
        limit = self._retry_mw.max_body_bytes
        length = resp.content_length
        if (
            length is not None
            and length <= limit
            and aiohttp.hdrs.CONTENT_ENCODING not in resp.headers
        ):
            # The parser stops at Content-Length, within the limit.
            return await resp.read()
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            chunks.append(chunk)
            if size > limit:
                break
        else:
            body = b"".join(chunks)
            # What resp.read() does once it has the body (aiohttp's own, private, list).
            for trace in getattr(resp, "_traces", ()):
                await trace.send_response_chunk_received(resp.method, resp.url, body)
            return body
        resp.close()
        # A final 1xx is a failure too (raised by the caller, as below), but never gets here:
        # aiohttp reads no body for any 1xx (RFC 9112 6.3), so none is over the limit.
        if resp.status >= 400 and _unseen_failure(resp.status, ctx):
            # Judged by its status (raised by the caller), as the retry middleware judges it.
            return b"".join(chunks)[: min(limit, _FAILED_BODY_KEPT)]
        if ctx.active is None:
            # No retry loop recorded the answer (a caller's session without the stack), nor
            # the redirects before it: attempts of the call, acted on.
            self._record_unseen(ctx, [*(hop.status for hop in resp.history), resp.status])
        err = BodyTooLarge(
            f"response body exceeds the {limit}-byte limit (more than {limit} bytes read); "
            "not read further",
            limit=limit,
            service=service,
            method=method,
            url=shown,
            attempts=tuple(ctx.attempts),
        )
        _log.error(
            "%s %s: %s", method, shown, err.message, extra={"service": service, "method": method}
        )
        raise err

    async def request(
        self,
        method: str,
        service: str,
        path: str,
        *,
        params: Mapping[str, str | int | float] | None = None,
        json: Any = _NO_JSON,
        data: bytes
        | str
        | Mapping[str, str]
        | Sequence[tuple[str, str]]
        | typing.IO[Any]
        | AsyncIterable[bytes]
        | aiohttp.FormData
        | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        retry: RetryPolicy | None = None,
        deadline: float | None = None,
        attempt_timeout: float | None = None,
        allow_redirects: bool = True,
        recover: bool = False,
        accept: Collection[int] = (),
    ) -> Response:
        """Send ``method path`` to ``service`` through the stack; return the whole answer.

        - ``params``: the query, names to str, int or float values (or lists of them, for a
          repeated name), added to the URL, encoded as aiohttp encodes them; anything else (a
          bytes, a bool, None, NaN) is an :class:`~le_transport.errors.InvalidRequest` naming
          the parameter, never showing its value.
        - ``json``: a JSON value sent as the body (``Content-Type: application/json``), without
          NaN or infinity (else :class:`~le_transport.errors.InvalidRequest`). ``json=None``
          sends no body at all, as aiohttp does, not the JSON ``null``: to send ``null``, pass
          ``data="null"`` with that ``Content-Type`` header. Not with ``data``.
        - ``allow_redirects``: follow a 3xx answer's ``Location`` (default), as aiohttp does
          (up to its ``max_redirects``; a loop is a :class:`~le_transport.errors.RequestError`),
          and return the last answer; each hop goes through the stack again, and credentials
          go only to the service's own host, never to a hop elsewhere. A hop to another origin
          than the call's (scheme, host or port) carries none of ``headers``' secret ones
          either (``X-Api-Key``, ``X-Auth-Token``, any name that says it holds a credential;
          aiohttp alone drops only ``Authorization`` and ``Cookie``), with a WARNING naming
          them; a hop on the call's origin keeps them (on a caller's ``session`` without the
          engine's stack, aiohttp's rule alone holds). False returns the 3xx
          answer itself, as a :class:`Response`. Anything but True or False is an
          :class:`~le_transport.errors.InvalidRequest`.
        - ``idempotent``: whether repeating the request is safe. Default: by method (GET, PUT,
          DELETE... yes; POST, PATCH no). A POST is still retried after a connect failure (it
          never left) and a 429 (the server did not process it).
        - ``retry``, ``deadline``, ``attempt_timeout``: override the engine's policy for this
          call (``deadline`` covers the whole call: resolving the host, getting credentials,
          every attempt and pause; the attempt in flight is cancelled when it passes, and a
          login or Domain API fetch shared with other calls goes on for them).
        - ``recover``: when the call still fails after the request schedule (or its login, or
          the Domain API, fails), wait through the outer recovery loop (re-resolve domains,
          re-login on the engine's :class:`BackoffPolicy`) and send it again, instead of
          failing fast. Sent again only when both hold: the failure is not final by nature
          (its :class:`~le_transport.errors.Repeat`, see
          :func:`~le_transport.recovery.repeat_of`: bad credentials, any other 4xx, a status
          its ``Classifier`` makes final, a refused certificate fail at once), and the call
          may be sent again: it is idempotent (``idempotent``, else by its method, not a
          redirect hop's), or nothing of it may have been acted on (every attempt of every hop
          never left, or was answered 401 or 429; on a caller's session without the stack,
          whose redirect hops the engine learns only from a failed answer's history, an
          answer or a request with no answer seen counts as acted on). So a POST answered
          5xx, reset or timed out, or one answered 303 whose GET hop (or the hop's login)
          then failed, fails at once (through a caller's session too); a POST whose login
          met an outage before it was sent, or after a 401, is waited out. ``deadline`` (else
          the policy's) bounds the whole call, recovery included: a pause that would pass it
          is not taken, and each run after a re-login gets only the time left.
          :class:`~le_transport.errors.RecoveryFailed` when the policy gives up or the next
          pause would pass the deadline. True or False only.
        - ``data``: bytes as they are; a str in the charset the ``Content-Type`` header names
          (UTF-8 when it names none; :class:`~le_transport.errors.InvalidRequest` when the
          charset is unknown or cannot hold the text); a mapping (or pairs) form-encoded in
          UTF-8, each value a str, an int Python can write as text or a finite float (or a
          list of them, for a repeated field; sent as their text in a multipart form too), or
          a file or bytes in a multipart form: any other (None, a bool, NaN, a dict,
          a :class:`~le_transport.Secret`, which aiohttp would send as its ``str()``) is an
          :class:`~le_transport.errors.InvalidRequest` naming the field, never showing its value
          (so in a url-encoded ``FormData``); an async iterable of bytes streamed as it comes,
          and so sent at most once: not retried once it went out (a connect failure still is),
          not replayed after a 401, refused with ``recover=True``; a file object (``BytesIO``,
          an open file) from where it stands (aiohttp closes it once sent). With
          ``recover=True`` a file's remaining content is read into memory once, within
          ``deadline``, before anything is sent, and sent whole on every run (a text file's as a
          str is; a binary file's with the ``Content-Type`` aiohttp gives the file); so are the
          files of a multipart form (a ``FormData``, or a mapping or pairs holding a file), made
          afresh for every run with its names, filenames, content types and charset; an aiohttp
          ``Payload``, a closed file, and a form holding either or an async iterable are
          refused. Text UTF-8 cannot encode (a lone surrogate) is an
          :class:`~le_transport.errors.InvalidRequest`. A body that fails while it is sent (a
          file that cannot be read, an async iterable that raises or yields a chunk that is not
          bytes) is a :class:`~le_transport.errors.RequestBodyError`: not retried, not the
          service's failure (the overload guard does not count it), its exception the
          ``__cause__``.
        - ``headers``: str names (RFC 9110 tokens: no space, ``:`` or control character) to
          str values without a control character (tab allowed) or a character UTF-8 cannot
          encode; neither ``Content-Length`` nor ``Transfer-Encoding`` (aiohttp frames the
          body); no protocol upgrade (``Upgrade``, a ``Connection`` naming ``upgrade``: the
          engine reads HTTP answers, and a WebSocket is opened with :meth:`websocket`); none
          that the auth provider's credentials set and would replace (its
          ``credential_headers``: the library's providers set ``Authorization``): each an
          :class:`~le_transport.errors.InvalidRequest`, before anything is sent.
        - ``accept``: 4xx statuses that are answers, not failures, for this call (a 404 for
          "no such user"): such an answer is returned as a :class:`Response`, as a success is,
          with no error, no retry and no log line. Any 4xx but 401 (the auth middleware's to
          cure), 407 (a proxy asking for the session's proxy credentials, never the service's
          answer: it fails as a :class:`~le_transport.errors.ClientStatusError`) and 429 (a rate
          limit, retried); anything else is an :class:`~le_transport.errors.InvalidRequest`.

        Raises :class:`~le_transport.errors.ClientStatusError` for a 4xx (never retried; with an
        auth provider, a 401 that fresh credentials do not cure is
        :class:`~le_transport.errors.AuthenticationError`, and a refused login
        :class:`~le_transport.errors.LoginRejected` or
        :class:`~le_transport.errors.BlockedError`),
        :class:`~le_transport.errors.RetriesExhausted` when the schedule is spent,
        :class:`~le_transport.errors.DeadlineExceeded`, and the other
        :class:`~le_transport.errors.RequestError` subclasses for what they name.
        """
        if type(method) is not str or method not in _UPPER_METHODS:
            # ASCII letters only, checked before upper(): any Unicode letter is alpha, and
            # upper() makes some of them ASCII ('po\u017ft' became POST).
            if not isinstance(method, str) or not method.isascii() or not method.isalpha():
                raise InvalidRequest(
                    "method must be an HTTP method name (ASCII letters only: 'GET'), got "
                    f"{_described(method)}"
                )
            method = method.upper()
        if json is not _NO_JSON and data is not None:
            raise InvalidRequest("pass either json= or data=, not both")
        if data is not None and type(data) is not bytes and type(data) is not str:
            refused = _form_fault(data)
            if refused is not None:
                # Before anything is read (recover=True reads files) or sent.
                raise InvalidRequest(refused, service=service, method=method)
            # Numbers beside a file, which aiohttp puts in no multipart part, as their text.
            data = typing.cast(Any, _multipart_as_sent(data))
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidRequest(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        if idempotent is not None and not isinstance(idempotent, bool):
            raise InvalidRequest(
                f"idempotent must be True, False or None, got {type(idempotent).__name__}"
            )
        # The call's own options, checked before anything is resolved or sent: a caller's
        # mistake is said as such whatever the host's lookup would say (a service a static map
        # lacks, a Domain API outage retried first), as Engine.websocket says it.
        plain = (
            params is None
            and data is None
            and headers is None
            and allow_redirects is True
            and json is _NO_JSON
        )
        if not plain:
            if allow_redirects is not True and allow_redirects is not False:
                raise InvalidRequest(
                    f"allow_redirects must be True or False, got {type(allow_redirects).__name__}",
                    service=service,
                    method=method,
                )
            if headers is not None:
                _check_headers(headers, service, method, self._auth)
                if type(data) is str:
                    data = _encode_text(data, headers)
            if params is not None and not _plain_params(params):
                # What yarl refuses (a value of another type), or would send altered (a str
                # UTF-8 cannot encode): named, never shown.
                dropped = _params_fault(params) or _params_text_fault(params)
                if dropped is not None:
                    raise InvalidRequest(dropped, service=service, method=method)
        if recover is not False:
            if recover is not True:
                raise InvalidRequest(
                    f"recover must be True or False, got {type(recover).__name__}",
                    service=service,
                    method=method,
                )
            refused = _service_fault(service)
            if refused is not None:
                # Before the recovery loop reads a body into memory, or resolves anything.
                raise InvalidRequest(refused, method=method)
            return await self._recovering(
                method,
                service,
                path,
                params=params,
                json=json,
                data=data,
                headers=headers,
                idempotent=idempotent,
                retry=retry,
                deadline=deadline,
                attempt_timeout=attempt_timeout,
                allow_redirects=allow_redirects,
                accept=accept,
            )
        session = self._session
        if session is None:
            if self._closed:
                raise EngineClosed("the engine is closed", service=service, method=method)
            session = self.session  # raises: the engine is not started
        if self._closed:
            raise EngineClosed("the engine is closed", service=service, method=method)
        # _url_for, inline: one coroutine less on every call.
        if type(path) is not str or path not in self._checked_paths:
            self._check_path(service, path)
        policy = retry or self._retry
        if deadline is not None or attempt_timeout is not None:
            policy = _per_call_policy(policy, deadline, attempt_timeout, service, method)
        if type(accept) is tuple and not accept:  # the default: nothing accepted
            handled = _HANDLED_BY.get()
            if handled is None or handled[1] is not asyncio.current_task():
                # CallContext(service, idempotent, policy), its __init__ inline: a class call
                # with a Python __init__ costs more than the stores (benchmarks/README.md).
                ctx = _new_object(CallContext)
                ctx.service = service
                ctx.idempotent = idempotent
                ctx.retry = policy
                ctx.attempts = []
                ctx.started_at = ctx.active = ctx.resign = ctx.first_url = None
            else:
                ctx = HandledCallContext(service, idempotent, policy, fallback=handled[0])
        else:
            # Checked whatever it is: a falsy non-collection (0, False) is refused too.
            accepted = _accepted(accept, service, method)
            ctx = (
                AcceptingCallContext(service, idempotent, policy, accept=accepted)
                if accepted
                else CallContext(service, idempotent, policy)
            )
        # Under a recovery loop, the call is noted for it when it starts (record_call, inline)
        # and when it ends (the ``except`` below, and before returning): the loop asks whether
        # running its callable again may send twice what was acted on. Outside one, this read
        # (and a None check) is all it costs.
        ledger = _CALL_LEDGER.get()
        if ledger is not None:
            ledger.record(ctx, method)
        sent = False
        try:
            try:
                if self._resolves_at_once:
                    # StaticDomains, its map read in place: a service it does not hold fails in
                    # its resolve(), at once, and is checked there (below), on the error path
                    # only (an unhashable one fails here, as there, with a TypeError).
                    resolved = self._static_hosts.get(service)
                    if resolved is None:
                        resolved = await self._domains.resolve(service)
                else:
                    # Checked before a provider that may fetch (a Domain API call for a list,
                    # then blamed on the provider), once per service name, as paths are.
                    if type(service) is not str or service not in self._checked_services:
                        self._check_service(service, method)
                    if policy.deadline is None:
                        resolved = await self._domains.resolve(service)
                    else:
                        # A Domain API fetch runs on its own schedule: the call's deadline
                        # bounds the wait.
                        resolved = await within_deadline(
                            self._clock,
                            ctx,
                            self._domains.resolve(service),
                            "resolving its host",
                            method=method,
                        )
            except TransportError:
                if self._resolves_at_once:
                    # (Its UnknownServiceError: a name websocket() refuses is said as there.)
                    self._check_service(service, method)
                raise
            except Exception as exc:
                if self._resolves_at_once:
                    # (StaticDomains' TypeError for an unhashable service.)
                    self._check_service(service, method)
                # The domain provider's own failure (a bug in a provider of the caller's): typed,
                # with its exception as the cause; not the caller's arguments.
                raise self._provider_failure(
                    "domain", self._domains, "resolve", exc, service
                ) from safe_cause(exc)
            key = (self._scheme, resolved, path)
            try:
                built = self._urls.get(key)
            except TypeError:  # an unhashable "host" from a domain provider: _build_url refuses it
                built = None
            url, redacted = self._build_url(key, service) if built is None else built
            # The context variable set and reset in place, and options passed only when given:
            # each was a measurable share of what a successful call costs (benchmarks/README.md).
            token = _CURRENT.set(ctx)
            sent = True
            try:
                if plain:
                    call = session.request(method, url)
                else:
                    options: dict[str, Any] = {
                        "params": params,
                        "data": data,
                        "headers": headers,
                        "allow_redirects": allow_redirects,
                    }
                    if json is not _NO_JSON:
                        del options["data"]
                        options["json"] = json
                    call = session.request(method, url, **options)
                # Awaited, not ``async with``: what aiohttp's two context managers do on the way out
                # (release, then wait for the request's writer) is done below, without their four
                # coroutines (benchmarks/README.md).
                resp = await call
                try:
                    # The retry middleware has read the body into aiohttp's own field (and released
                    # the connection): a second read() would only await the release again.
                    body = resp._body
                    final = resp.url
                    shown = redacted if final is url or final == url else redact_url(final)
                    if body is None:
                        # Not read by the retry middleware (a caller's session without the
                        # stack): read here, held to max_body_bytes as the middleware holds it.
                        body = await self._read_within_limit(resp, ctx, method, shown, service)
                    if not 200 <= resp.status < 400 and _unseen_failure(resp.status, ctx):
                        # The retry middleware raises for every failed answer it sees (a final
                        # 1xx too), or records it (one the call accepts, or the caller's
                        # classifier calls a success): this one came from around it (an outer
                        # middleware's, or a caller's session without the stack). Never passed
                        # off as an answer.
                        if ctx.active is None and resp.history:
                            # No retry loop recorded the redirects before it either (a POST
                            # answered 303): attempts of the call, acted on.
                            self._record_unseen(ctx, [hop.status for hop in resp.history])
                        raise _unscheduled_failure(
                            resp.status,
                            body,
                            method,
                            shown,
                            service,
                            ctx,
                            resp.headers.get("Retry-After"),
                            self._clock.now(),
                            self._wall_clock(),
                            resp.headers.get("Date"),
                        )
                    if ledger is not None:
                        ledger.finish(ctx, unjudged=ctx.active is None and not self._owns_session)
                    return _answer(
                        resp.status,
                        resp.headers,
                        body,
                        method,
                        shown,
                        service,
                        tuple(ctx.attempts),
                    )
                finally:
                    resp.release()
                    if resp._writer is not None:
                        # Its request still being written (a body the server answered before
                        # it was sent whole): waited for. Without a writer (the body's read
                        # waited for it), wait_for_close() would only release again, through a
                        # coroutine and four calls (benchmarks/README.md).
                        await resp.wait_for_close()
            except TransportError as exc:
                # A provider that failed (ProviderError) because the engine is used from another
                # loop: said as such. Only on the error path, where the check costs nothing.
                wrong = self._wrong_loop()
                if wrong is not None:
                    raise wrong from exc
                raise
            except (aiohttp.ClientError, OSError) as exc:
                # Raised outside the retry middleware (before the chain ran, or while reading a
                # body that the middleware did not buffer). Kept, and raised after the clauses (so
                # without a context).
                late: tuple[RequestError, BaseException | None] = (
                    unsent_request_error(exc, ctx, method, url),
                    safe_cause(exc),
                )
            except (ValueError, TypeError, RecursionError) as exc:
                # aiohttp and yarl refuse what cannot be sent while building the request, before
                # the middleware chain runs (RecursionError: absurdly nested JSON). Only that is
                # the caller's arguments: each is taken again as aiohttp takes it, to name the one
                # refused and why. An error from inside the chain (a middleware's) is none of
                # them: it propagates as it is, with its traceback.
                refused = _refused_argument(session, params, json, data)
                if refused is None:
                    if not _raised_building_request(exc):
                        raise
                    refused = f"invalid request ({type(exc).__name__}): {_ARGUMENTS}"
                # Not chained: the refused value (a header, a parameter) may be a credential, and
                # the error aiohttp or yarl raised repeats it.
                late = (
                    InvalidRequest(
                        # Keys that look like data are said by position; this catches the rest.
                        f"not sent: {redact_text(refused)}",
                        service=service,
                        method=method,
                        url=redact_url(url),
                    ),
                    None,
                )
            except RuntimeError as exc:
                # After the clause above: RecursionError is a RuntimeError too.
                # aiohttp's "Event loop is closed" (or a future of another loop): the engine is
                # used from another loop than the one it started on.
                wrong = self._wrong_loop()
                if wrong is not None:
                    raise wrong from exc
                # aiohttp's "Session is closed": the engine closed while this call resolved its
                # host (or logged in), or the owner of a session passed in closed it.
                if not session.closed:
                    raise
                raise EngineClosed(
                    "the engine is closed" if self._closed else "the engine's session is closed",
                    service=service,
                    method=method,
                    url=redacted,
                ) from None
            finally:
                _CURRENT.reset(token)
            # Only the two except clauses that set ``late`` get here (the block returns, and the
            # other clauses raise). Raised here, not in a clause, so that the error has no context:
            # aiohttp's and yarl's errors repeat the URL or the refused value.
            raise late[0] from late[1]
        except BaseException as exc:
            # Under a recovery loop only: the call ended, and how (CallLedger.finish).
            if ledger is not None:
                # ``unjudged``: sent on a caller's session that no retry schedule ran for
                # (without the stack), and no answer seen (a reset, a timeout): it may have
                # been acted on, unseen. An answer the engine saw is an attempt of it.
                ledger.finish(
                    ctx,
                    exc,
                    unjudged=sent
                    and ctx.active is None
                    and not ctx.attempts
                    and not self._owns_session,
                )
            raise

    async def _recovering(
        self,
        method: str,
        service: str,
        path: str,
        *,
        params: Mapping[str, str | int | float] | None,
        json: Any,
        data: Any,
        headers: Mapping[str, str] | None,
        idempotent: bool | None,
        retry: RetryPolicy | None,
        deadline: float | None,
        attempt_timeout: float | None,
        allow_redirects: bool,
        accept: Collection[int],
    ) -> Response:
        """:meth:`request` with ``recover=True``: each run through the recovery loop is a call
        of its own, bounded by what is left of the whole call's deadline (the call's own, else
        its policy's), whose end is fixed here, once, on the engine's clock. A file body, and
        the files of a multipart form, are read into memory within it (a pipe slower than the
        deadline: ``DeadlineExceeded``); such a form is built afresh for each run."""
        policy = retry or self._retry
        if deadline is not None:
            policy = _per_call_policy(policy, deadline, None, service, method)
        total = policy.deadline
        clock = self._clock
        started = clock.now()
        until = None if total is None else started + total
        read: list[io.IOBase] = []
        if (
            data is not None
            and not isinstance(data, bytes | bytearray | str)
            # A mapping form-encoded again on each run (one holding a file is multipart).
            and (not isinstance(data, Mapping) or _holds_file(data))
        ):
            # What the deadline passed while reading, if it does.
            reading = (
                "its file body was"
                if isinstance(data, io.IOBase)
                else "the files of its multipart form were"
            )
            timeout = timeout_after(clock, None if until is None else until - started)
            files = _files_in(data)
            try:
                async with timeout:
                    data, content_type = await _replayable(data, service, method)
            except TimeoutError:
                if not timeout.expired:
                    raise
                # The read goes on in its thread until the file gives its content; the call
                # does not wait for it.
                err = DeadlineExceeded(
                    f"the call's {total:g} s deadline passed while {reading} read into "
                    "memory (recover=True sends it whole on every run)",
                    elapsed=clock.now() - started,
                    service=service,
                    method=method,
                )
                _log.warning("%s", err, extra={"service": service, "method": method})
                raise err from None
            read = files
            if content_type is not None:
                # What aiohttp would have sent for the file (application/json for a .json),
                # not the octet-stream bytes get; the caller's own Content-Type wins.
                if headers is not None:
                    _check_headers(headers, service, method, self._auth)  # str names only
                if headers is None or not any(k.lower() == "content-type" for k in headers):
                    headers = CIMultiDict(headers or {})
                    headers[aiohttp.hdrs.CONTENT_TYPE] = content_type

        def again() -> Awaitable[Response]:
            left: float | None = None
            if until is not None and total is not None:
                left = until - clock.now()
                if left <= 0:
                    err = DeadlineExceeded(
                        f"the call's {total:g} s deadline passed while it waited to recover",
                        elapsed=total - left,
                        service=service,
                        method=method,
                    )
                    _log.warning("%s", err, extra={"service": service, "method": method})
                    raise err
            return self.request(
                method,
                service,
                path,
                params=params,
                json=json,
                # aiohttp builds a multipart form once: a new one for each run.
                data=data.form() if isinstance(data, _FormParts) else data,
                headers=headers,
                idempotent=idempotent,
                retry=retry,
                deadline=left,
                attempt_timeout=attempt_timeout,
                allow_redirects=allow_redirects,
                accept=accept,
            )

        try:
            # A Retry-After its answers asked for counts toward the outer pause up to the
            # call's own ceiling (its retry= policy's), as its own schedule honoured it.
            return await self._recovery.run(
                again, until=until, retry_after_ceiling=policy.retry_after_ceiling
            )
        finally:
            # Read into memory, they are closed once the call is over, as aiohttp closes a
            # file it sent (they were left open: a descriptor per call).
            for file in read:
                with contextlib.suppress(OSError, ValueError):
                    file.close()

    @overload
    async def request_json(
        self,
        method: str,
        service: str,
        path: str,
        *,
        expect: None = None,
        **kwargs: Unpack[RequestOptions],
    ) -> Any: ...
    @overload
    async def request_json(
        self,
        method: str,
        service: str,
        path: str,
        *,
        expect: type[T],
        **kwargs: Unpack[RequestOptions],
    ) -> T: ...
    async def request_json(
        self,
        method: str,
        service: str,
        path: str,
        *,
        expect: type[Any] | None = None,
        **kwargs: Unpack[RequestOptions],
    ) -> Any:
        """:meth:`request`, then the body as JSON (checked to be of type ``expect`` if given).

        It takes :meth:`request`'s keywords (:class:`RequestOptions`: a type checker catches a
        misspelt one) but ``accept``; with ``expect`` the result is typed as ``expect``.

        It returns only a body, so it takes no ``accept=``: an accepted 404's error body would
        come back as if it were the resource. Use :meth:`request` with ``accept`` and look at
        the answer's ``status``.

        A ``204 No Content`` answer (a DELETE, say), and a ``201 Created``, ``202 Accepted`` or
        ``205 Reset Content`` with an empty body (a POST), return None without ``expect``: the
        call succeeded and there is no body to read (with ``expect``, it is the
        :class:`~le_transport.errors.ResponseDecodeError` of an empty body, as for any other
        status)."""
        if expect is not None:
            _check_expect(expect)
        if "accept" in kwargs:  # an untyped caller's
            raise InvalidRequest(
                "request_json takes no accept=: it returns only the body, so an accepted 4xx's "
                "error body would pass for the resource; use request(..., accept=...) and "
                "check resp.status",
                service=service if isinstance(service, str) else None,
                method=method if isinstance(method, str) else None,
            )
        resp = await self.request(method, service, path, **kwargs)
        if expect is not None:
            return resp.json(expect)
        if resp.status in _NO_CONTENT_NEEDED and not resp.body:
            # The call succeeded: a decode error here would read as a failure, and a caller
            # might send a DELETE or a POST again.
            return None
        return resp.json()

    # -- sockets ----------------------------------------------------------------------------

    async def websocket(
        self,
        service: str,
        path: str,
        *,
        params: Mapping[str, str | int | float]
        | Sequence[tuple[str, str | int | float]]
        | None = None,
        auth: AuthProvider | None = None,
        auth_placement: AuthPlacement | None = None,
        headers: Mapping[str, str] | None = None,
        options: SocketOptions | None = None,
        on_connect: Sequence[OnConnect] = (),
        on_frame: FrameHandler | None = None,
        escalate: ReloginEscalation | None = None,
        client_properties: Mapping[str, Any] | None = None,
    ) -> ResilientSocket:
        """Open a :class:`~le_transport.sockets.ResilientSocket` to ``path`` on ``service``.

        The host comes from the domain provider on every connect; credentials from ``auth``
        (default: the engine's; another provider, such as a consumer's ``ConsumerJwt``
        beside an agent's login, is re-logged in by a re-login loop of its own when the socket
        escalates, and, unless an open engine has it (or its caller attached it), attached to
        this engine and closed with it, if no engine took it as its own meanwhile; the engine
        lets go of it when its last socket closes), placed where the protocol puts them
        (``auth_placement``;
        default: in the path where it has ``{bearer}``, as the UMS brand socket does, else in
        the upgrade's headers, as ``Authorization: jwt`` for the consumer socket;
        :attr:`~le_transport.sockets.AuthPlacement.FIRST_FRAME` sends ``InitConnection``).
        ``on_connect`` callbacks run after every (re)connect, before queued messages go out;
        ``on_frame`` receives unsolicited frames (else ``async for frame in ws``). After
        ``options.escalate_after`` failed reconnects in a row the socket escalates to
        ``escalate`` (default: the re-login loop of the socket's auth provider). The socket
        connects in the background: ``await ws.wait_open()`` to wait for it. Closing the
        engine closes it; :class:`~le_transport.errors.EngineClosed` once the engine is
        closed. Unless
        ``options.keepalive`` says otherwise, a LiveEngage messaging socket (the UMS agent or
        consumer path) runs the guide's ``GetClock`` keepalive every 30 s of silence, and any
        other path none (see :class:`~le_transport.sockets.SocketOptions`).

        - ``path``: an absolute path (one leading ``/``), without whitespace, control
          characters, ``?``, ``#`` or ``.``/``..`` segments, as for :meth:`request`;
          ``{bearer}`` marks where the bearer goes (:func:`~le_transport.sockets.ums_brand_path`).
        - ``params``: the upgrade URL's query, names to str, int or float values (a mapping,
          or a list of (name, value) pairs, each name once, as in a ``MultiDict``), laid name
          by name over the
          protocol's version,
          which a LiveEngage messaging path gets by default
          (:func:`~le_transport.sockets.query_for_path`: ``v=2.1`` on the UMS agent socket,
          ``v=3`` on the consumer's); sent on every connect.
        - ``headers``: the upgrade request's own headers, str names to str values without a
          control character (tab allowed); where the credentials go in the headers
          (``HEADER``), none that the auth provider's credentials set and would replace (its
          ``credential_headers``: ``Authorization`` for the library's providers), as for
          :meth:`request`; no ``Upgrade``, ``Connection``, ``Sec-WebSocket-Version`` nor
          ``Sec-WebSocket-Key`` (the upgrade's own, which aiohttp sets), nor
          ``Sec-WebSocket-Extensions`` (the socket speaks none: a server that agreed to
          compress would send frames it cannot read), nor ``Sec-WebSocket-Protocol`` (the
          socket negotiates no subprotocol: the server's choice would go unchecked). A
          repeated header (a ``CIMultiDict``'s) sends every value, on every connect. The
          :class:`~le_transport.sockets.EngineDialer` checks them, as one built directly
          does.
        - ``client_properties``: what the consumer socket's ``InitConnection`` says about the
          client (its ``.ams.headers.ClientProperties`` header, a mapping of JSON values; used
          only with ``FIRST_FRAME``; default
          :data:`~le_transport.sockets.dial.DEFAULT_CLIENT_PROPERTIES`).
        - ``escalate``: a :class:`~le_transport.sockets.ReloginEscalation`, an async callable.

        A ``path``, ``params``, ``headers`` or ``client_properties`` that cannot be sent is an
        :class:`~le_transport.errors.InvalidRequest`, as the same argument of :meth:`request`
        is; ``options``, ``on_connect``, ``on_frame``, ``escalate`` or ``auth_placement`` of
        the wrong kind (or a placement that needs an auth provider, or ``{bearer}`` in the
        path, and has none) a :class:`~le_transport.errors.ConfigurationError`: both at the
        call, before anything is made, and never showing a credential (a refused path is
        shown with an in-path bearer hidden; params, headers and properties are named, not
        shown). They come first: a plain
        :class:`~le_transport.providers.StaticDomains` map is asked only then, its
        :class:`~le_transport.errors.UnknownServiceError` raised at the call for a service it
        does not hold. A setup mistake only a
        connect finds (an unknown service, a 4xx from the Domain API, a provider's own bug)
        stops the socket at once, typed, as the same call over HTTP fails.
        """
        self._check_usable("websocket", service=service)
        refused = _service_fault(service)
        if refused is not None:
            # At the call, as a request's service is: else any object went into the socket's
            # name, every log line, and failed only at the first connect.
            raise InvalidRequest(refused, method="GET")
        if auth is not None and not isinstance(auth, AuthProvider):
            # As Engine(auth=...) refuses it: else the socket stopped at its first connect with
            # a ProviderError (an AttributeError) blaming the "provider".
            raise ConfigurationError(
                f"Engine.websocket auth must be an AuthProvider or None, got {type(auth).__name__}"
            )
        if options is not None and not isinstance(options, SocketOptions):
            raise ConfigurationError(
                f"Engine.websocket options must be SocketOptions, got {type(options).__name__}"
            )
        # The socket's own check (a sequence of callbacks), here too: before the dialer
        # and the socket are built, so nothing is made for a call refused.
        on_connect = check_on_connect(on_connect)
        if on_frame is not None and not callable(on_frame):
            raise ConfigurationError(
                f"Engine.websocket on_frame takes a callable, got a {type(on_frame).__name__}"
            )
        if escalate is not None and not callable(escalate):
            # Else it would fail only when first asked, after escalate_after failed
            # reconnects, as "the re-login loop gave up".
            raise ConfigurationError(
                "Engine.websocket escalate takes an async callable (a ReloginEscalation), got "
                f"a {type(escalate).__name__}"
            )
        # What goes on the wire is checked as an HTTP call's is, at the call rather than at
        # the first connect, where it would stop the socket.
        if type(path) is not str or path not in self._checked_paths:
            self._check_path(service, path)
        query = None if params is None else _socket_query(params, service)
        if client_properties is not None:
            _check_client_properties(client_properties, service)
        opts = options or SocketOptions()
        provider = auth if auth is not None else self._auth
        dialer = EngineDialer(
            self,
            service,
            path,
            params=query,
            auth=provider,
            placement=auth_placement,
            # Checked by the dialer, as one built without the engine's help checks them.
            headers=headers,
            connect_timeout=opts.connect_timeout,
            prepare_timeout=opts.prepare_timeout,
            max_msg_size=opts.max_msg_size,
            client_properties=client_properties,
            wall_clock=self._wall_clock,
        )
        if self._resolves_at_once:
            # A static map answers at once, as for a request: a service it does not know is an
            # UnknownServiceError here, at the call (a provider that fetches is asked at the
            # first connect, which an outage only delays). After the dialer's checks: the
            # caller's headers and placement are wrong whatever the map holds, and a service
            # it lacked was an UnknownServiceError that hid them.
            await self._domains.resolve(service)
        # Taken last, once nothing more can refuse the call: given back when the socket closes.
        own = None if provider is None or provider is self._auth else self._socket_auth_of(provider)
        recovery = self._recovery if own is None else own.recovery
        ws = ResilientSocket(
            dialer,
            options=opts,
            clock=self._clock,
            hooks=self._hooks,
            # The engine's own source: a Random per socket is 2.5 KiB of Mersenne Twister
            # state, a tenth of what a socket costs in all (benchmarks/README.md).
            rng=self._rng,
            pacer=self._pacer,
            on_connect=on_connect,
            on_frame=on_frame,
            escalate=(
                escalate
                if escalate is not None
                else RecoveryEscalation(recovery, opts.close_policy)
            ),
            on_closed=(
                self._sockets.discard
                if own is None
                else functools.partial(self._socket_closed, own)
            ),
            keepalives=self._socket_keepalives,
        )
        self._sockets.add(ws)
        return ws.start()

    def _socket_auth_of(self, provider: AuthProvider) -> _SocketAuth:
        """What a socket given an auth provider of its own (one that is not the engine's)
        needs of it: a re-login loop over it, on the engine's recovery policy (a socket that
        escalates re-logs in its own provider, not the engine's), and, the first time, the
        provider attached to this engine's HTTP path if no engine has it yet (the library's
        providers fetch their logins and tokens through it: unattached, the socket's first
        connect stopped it for good); one attached here is closed with the engine if a socket
        still uses it then. Counted per socket: when its last socket closes, nothing is kept
        of it here, and the next engine to get it attaches it."""
        held = self._socket_auth.get(id(provider))
        if held is None:
            # Attached elsewhere (another open engine's, or one its caller attached): left
            # there, and never closed here. One an engine let go is attached again.
            free = _holder(provider) is None and (
                _known(provider) or getattr(provider, "_http", None) is None
            )
            if free and callable(getattr(provider, "attach", None)) and not self._take(provider):
                # Held until its last socket here closes (then the caller's again).
                self._attached_strongly[id(provider)] = provider
            recovery = Recovery(
                domains=self._domains,
                auth=provider,
                clock=self._clock,
                policy=self._recovery.policy,
                request_policy=self._retry,
                rng=self._rng,
                hooks=self._hooks,
            )
            held = self._socket_auth[id(provider)] = _SocketAuth(provider, recovery)
            _SOCKET_USERS.setdefault(id(provider), weakref.WeakSet()).add(self)
        held.sockets += 1
        return held

    def _take(self, provider: AuthProvider) -> bool:
        """Attach ``provider`` to this engine's HTTP path and note it as this engine's (to
        close, or hand over, when it closes); False if it cannot be noted (held weakly)."""
        attach = getattr(provider, "attach", None)
        # The library's providers attach their domain provider with them: one that is another
        # open engine's own is given back to it (re-pointed here, it failed that engine's
        # calls once this one closed).
        domains = getattr(provider, "_domains", None)
        owner = None if domains is None else _holder(domains)
        if callable(attach) and self._provider_http is not None:
            attach(self._provider_http)
            if owner is not None and owner is not self:
                given_back = getattr(domains, "attach", None)
                if callable(given_back) and owner._provider_http is not None:
                    given_back(owner._provider_http)
            elif owner is None and domains is not None and _claim(domains, self):
                # No open engine has it (its own engine closing hands this provider over):
                # this one's now, to close, and not the engine's that had it.
                self._taken_domains[id(domains)] = weakref.ref(domains)
        if not _claim(provider, self):
            return False
        key = id(provider)
        self._attached_auth[key] = weakref.ref(
            provider, functools.partial(_drop_ref, self._attached_auth, key)
        )
        return True

    def _closers(self) -> Iterator[tuple[str, object, object]]:
        """What :meth:`_close_providers` closes, as (role, provider, its close), each decided
        as its turn comes: a provider another engine takes while an earlier close is awaited
        (the logout) is that engine's then, and is not closed here."""
        auth = self._auth
        yield "auth", auth, None if auth is None else auth.close
        # A socket's own (a consumer's JWT, another login): before the domain provider, which
        # a logout may still resolve its host with.
        for provider in self._socket_auth_to_close():
            yield "socket auth", provider, provider.close
        for domains in self._taken_domains_to_close():
            yield "domain", domains, getattr(domains, "close", None)
        # Not one a provider handed over took to another engine (that one's now).
        if _last_taker(self._domains) in (self, None):
            yield "domain", self._domains, getattr(self._domains, "close", None)

    def _socket_auth_to_close(self) -> Iterator[AuthProvider]:
        """The sockets' own providers this engine attached, to close as it closes: not one
        another engine attached since (its own now), and not one another open engine's
        sockets still use (handed over to that engine: attached there, its to close)."""
        yield from list(self._attached_strongly.values())
        for ref in list(self._attached_auth.values()):
            provider = ref()
            if provider is None or _last_taker(provider) is not self:
                continue  # gone, or taken by another engine since: that one's
            users = [
                engine
                for engine in _SOCKET_USERS.get(id(provider), ())
                if engine is not self and not engine._closed
            ]
            if users:
                users[0]._take(provider)
                continue
            yield provider

    def _taken_domains_to_close(self) -> Iterator[object]:
        """The domain maps handed-over providers brought here that are still this engine's,
        each decided as its turn comes."""
        for ref in list(self._taken_domains.values()):
            domains = ref()
            if domains is None or domains is self._domains:
                continue
            if _last_taker(domains) is self:
                yield domains

    def _socket_closed(self, held: _SocketAuth, ws: ResilientSocket) -> None:
        """A socket with an auth provider of its own closed: when it was the provider's last
        here, its re-login loop ends and the engine lets go of it (the provider stays the
        caller's, to give to another socket)."""
        self._sockets.discard(ws)
        held.sockets -= 1
        if held.sockets > 0 or self._socket_auth.get(id(held.provider)) is not held:
            return
        del self._socket_auth[id(held.provider)]
        held.recovery.close()
        users = _SOCKET_USERS.get(id(held.provider))
        if users is not None:
            users.discard(self)
            if not users:
                del _SOCKET_USERS[id(held.provider)]
        if not self._closed:
            # Let go: another engine may attach it now (it is that one's then); if none does,
            # this one still closes it as it closes (a login's keepalive, its logout).
            _release(held.provider, self)
            # One held strongly (it cannot be held weakly) is let go too: not kept, with its
            # token, for the engine's life (it stays attached: its caller may give it
            # again). Closing, the engine closes it below instead.
            self._attached_strongly.pop(id(held.provider), None)

    def keepalive(
        self,
        policy: Keepalive,
        service: str,
        *,
        fields: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> KeepaliveTask:
        """Start an HTTP keepalive (:data:`~le_transport.policies.SERVER_CHAT_API_CHAT_INFO`,
        :data:`~le_transport.policies.CHAT_AGENT_API_REFRESH`): ``policy.method`` on
        ``policy.path`` (its ``{account}``-style fields filled from ``fields``) every
        ``policy.interval`` seconds, through the engine's whole stack. Closing the engine stops
        it; so does ``await task.close()``. :class:`~le_transport.errors.EngineClosed` once the
        engine is closed; :class:`~le_transport.errors.WrongEventLoop` with no event loop running
        (called from plain code) or on another loop than the engine's. A ``policy`` whose
        ``transport`` is not HTTP is a :class:`~le_transport.errors.ConfigurationError`.

        ``service`` is checked at the call, as :meth:`websocket` checks it: one that names no
        service (not a str, empty, with whitespace) is an
        :class:`~le_transport.errors.InvalidRequest`; one the engine's static domain map does
        not know (a typo) its :class:`~le_transport.errors.UnknownServiceError`. A domain
        provider that fetches is asked at the first run instead.

        The task goes on through outages (a run that fails after the engine's retries: a 5xx,
        a reset, a timeout, a 408, 425 or 429, the Domain API down), each logged at WARNING.
        A run's request has ``policy.timeout`` as its deadline (the engine's retry policy's
        if that is shorter): the engine's retry schedule gives up within it with the service's
        own answer (its give-up a WARNING, handled by the keepalive, not an ERROR), and a run
        whose answers asked for rest (``Retry-After``,
        up to the engine's ``retry_after_ceiling``; the Login Service refresh's: its
        provider's, below) is followed by none sooner.
        Failures that look final (an unknown service or refused host from a domain provider
        that fetches, a 4xx but 401, 407, 408, 425 and 429: a chat that ended, a blacklisted
        account; credentials refused; a setup mistake) stop it only once every run has failed
        so for :attr:`~le_transport.sockets.keepalive.KeepaliveTask.STOP_AFTER_RUNS` runs in a
        row and :attr:`~le_transport.sockets.keepalive.KeepaliveTask.STOP_AFTER_SECONDS`
        (a gateway's hiccup or a Domain API's bad map a refetch cures is waited out): one
        ERROR line, a ``keepalive_failed`` event with ``stopped=True``, ``task.running`` False,
        ``task.error`` (also what ``await task.wait()`` returns) holding the error, and the
        task leaves the engine. Ask for a new keepalive once the cause is fixed. The Login
        Service refresh (below) is not stopped by a refused login: the provider marks the
        session (or drops it), sends no login of its own again, and later runs keep whichever
        session a call logs in with alive.

        ``headers`` go on every keepalive request, as :meth:`request`'s do: str names to str
        values without a control character (tab allowed), neither ``Content-Length`` nor
        ``Transfer-Encoding``, no protocol upgrade (``Upgrade``, a ``Connection`` naming
        ``upgrade``), and none that the auth provider's credentials set (its
        ``credential_headers``: ``Authorization`` for the library's providers); anything else
        is an :class:`~le_transport.errors.InvalidRequest` here, before the task starts, rather
        than a failure logged at every run.

        The Server Chat API's chat info wants ``Authorization: LivePerson appKey=<key>``: run it
        on an engine whose ``auth`` is an :class:`~le_transport.providers.AppKeyAuth`. On an
        engine whose auth is a Login Service provider it is a
        :class:`~le_transport.errors.ConfigurationError` before the task starts (its bearer
        would be answered 401 at every run, each 401 costing a login).

        The Login Service refresh (:data:`~le_transport.policies.CHAT_AGENT_API_REFRESH`, any
        policy whose :attr:`~le_transport.policies.Keepalive.login_refresh` holds) is no plain
        request: it needs the session's ``Session_id`` cookie and ``csrf``, and a POST without
        them is answered 401, which would cost a login at every run. It runs the engine's
        :class:`~le_transport.providers.LoginServiceAuth` ``refresh()`` every
        ``policy.interval`` instead (no session yet: nothing to refresh, no login), on the
        provider's own host, its rest after a ``Retry-After`` cut to the provider's policy's
        ``retry_after_ceiling`` (its ``retry=``, else the engine's), as the provider's own
        keepalive cuts it; a refresh that gives up on an outage is logged as handled (a
        WARNING), as the provider's own keepalive logs it. Its request too has
        ``policy.timeout`` as its deadline (the provider's retry policy's if shorter): the
        refresh gives up within the run with the Login Service's own answer (a 503 after the
        attempts at 0, 5 and 15 s), never cut in a pause as a bare ``TimeoutError``. The login
        a refused (or redirected) refresh falls back to is waited for within that deadline
        too (a :class:`~le_transport.errors.DeadlineExceeded` then): it is shared with every
        caller waiting for credentials, so it goes on on the provider's own schedule, and its
        give-up is a WARNING the keepalive handles, not an ERROR. That
        interval is the policy's,
        whatever TTL the session's login answered: for a session that lives less than twice the
        interval, keep the provider's own keepalive, or pass a policy scaled down
        (:meth:`~le_transport.policies.Keepalive.scaled`). A
        :class:`~le_transport.errors.ConfigurationError`, before the task starts: without such a
        provider; with one that refreshes its session itself (``keepalive=True``, the default:
        that built-in keepalive is the usual way, timed from each login and within half the
        session's TTL, and a second schedule would only refresh twice; build the provider with
        ``keepalive=False`` to have this one drive it); a ``service`` or ``fields["account"]``
        other than the provider's; ``headers`` (the provider's request carries none of the
        caller's).
        """
        if self._closed:
            raise EngineClosed("Engine.keepalive: the engine is closed", service=service)
        if not isinstance(policy, Keepalive):
            raise ConfigurationError(
                f"Engine.keepalive needs an HTTP Keepalive (SERVER_CHAT_API_CHAT_INFO, "
                f"CHAT_AGENT_API_REFRESH...), got a {type(policy).__name__}"
            )
        if (
            policy.transport is not KeepaliveTransport.HTTP
            or policy.method is None
            or policy.path is None
        ):
            # A socket's keepalive, whatever method and path it also holds: run as a request,
            # it was an HTTP call the policy never asked for.
            raise ConfigurationError(
                f"Engine.keepalive needs an HTTP Keepalive, got the socket keepalive {policy!r}"
            )
        wrong = self._wrong_loop()
        if wrong is not None:
            raise wrong
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            # Before the engine started (no loop of its own to compare with): the task cannot
            # start, and asyncio's bare RuntimeError said nothing of the engine.
            raise WrongEventLoop(
                "Engine.keepalive needs a running event loop: call it from a coroutine on the "
                "loop the engine runs on ('async with Engine(...)' inside the coroutine "
                "asyncio.run runs)"
            ) from None
        refused = _service_fault(service)
        if refused is not None:
            # As websocket() refuses it: else any object went into the task's name and every
            # log line, and failed only at the first run.
            raise InvalidRequest(refused, method=policy.method)
        if fields is not None:
            # Checked as the headers beside them are (an InvalidRequest, nothing shown): else
            # a str or a mapping of other values failed as a raw TypeError, or went into the
            # path as their repr.
            refused = _fields_fault(fields)
            if refused is not None:
                raise InvalidRequest(refused, service=service, method=policy.method)
        action: Callable[[], Awaitable[None]]
        if policy.login_refresh and (
            policy.product == CHAT_AGENT_API_REFRESH.product
            or service == AGENT_VEP
            or (isinstance(self._auth, LoginServiceAuth) and service == self._auth.service)
        ):
            # The Login Service's refresh (the Chat Agent API's, or its path on the Login
            # Service): a keepalive of the caller's own product that POSTs to a /refresh of
            # another service is a plain request.
            auth = self._auth
            where = f"Engine.keepalive({policy.product} {policy.action!r})"
            if not isinstance(auth, LoginServiceAuth):
                raise ConfigurationError(
                    f"{where} refreshes a Login Service session: it needs the session's "
                    "Session_id cookie and csrf, which only the engine's Login Service provider "
                    "holds (UserLogin, AppLogin or ClientCredentialsLogin as its auth), and a POST "
                    f"without them is answered 401; this engine's auth is {type(auth).__name__}"
                )
            owner = type(auth).__name__
            if auth.refreshes_itself:
                raise ConfigurationError(
                    f"{where}: {owner} already refreshes its session itself (keepalive=True, "
                    "the default: every refresh_interval, within half the session's TTL); a "
                    "second schedule would only refresh it twice. Leave this keepalive out, or "
                    "build the provider with keepalive=False to have this one drive the refresh"
                )
            if service != auth.service:
                raise ConfigurationError(
                    f"{where}: the refresh goes to {owner}'s own Login Service "
                    f"({auth.service!r}), not {service!r}"
                )
            account = (fields or {}).get("account")
            if account is not None and str(account) != auth.account:
                raise ConfigurationError(
                    f"{where}: fields name another account than {owner}'s "
                    f"({auth.account!r}): its refresh keeps only its own session alive"
                )
            if headers is not None:
                raise ConfigurationError(
                    f"{where}: the refresh is {owner}'s own request, which carries none of the "
                    "caller's headers; leave headers out"
                )
            provider = auth

            refresh_timeout = policy.timeout

            async def refresh() -> None:
                # Saying, as the provider's own keepalive does, that an outage is handled (the
                # session kept, the refresh tried again): its give-up is a WARNING ending so,
                # not an ERROR at every run while the Login Service is down. The run's timeout
                # is the refresh request's deadline (as for an HTTP keepalive's call below,
                # never longer than the provider's policy's own): its schedule gives up within
                # the run with the Login Service's answer (a 503, the Retry-After it asked
                # for), not cut in a pause as a bare TimeoutError.
                await provider._refresh(_LOGIN_KEEPALIVE_FALLBACK, deadline=refresh_timeout)

            action = refresh
            # Its EngineClosed with the engine open: the provider was closed on its own (or a
            # session the caller gave the engine: the error's text tells which).
            what = f"its auth provider {owner} (or the aiohttp session the engine was given)"
            # A refused fallback login marks the session (no login sent again for it) or drops
            # it: later runs refresh what is there, and keep a caller's next login alive.
            not_final: tuple[type[Exception], ...] = (LoginRejected, BlockedError)
            # The rest its answers asked for is cut as the provider's policy cuts it, as its
            # own keepalive does: the provider owns its session's schedule (its retry= policy,
            # else the engine's), whose pauses honoured that Retry-After up to its ceiling.
            ceiling = (provider._retry or self._retry).retry_after_ceiling
        else:
            method = policy.method
            if headers is not None:
                _check_headers(headers, service, method, self._auth)
            try:
                path = policy.path.format(**(fields or {}))
            except (KeyError, IndexError) as exc:
                raise ConfigurationError(
                    f"Engine.keepalive: the path {policy.path!r} needs the field {exc}"
                ) from None
            # Checked now, as a request's path is, rather than at every run: a field that
            # holds a '/', '..' or a '?' would reach another endpoint.
            if type(path) is not str or path not in self._checked_paths:
                self._check_path(service, path)
            params = dict(policy.params)
            if policy.path == SERVER_CHAT_API_CHAT_INFO.path and isinstance(
                self._auth, LoginServiceAuth
            ):
                # protocol.md: chat info takes "Authorization: LivePerson appKey=<key>". A
                # Login Service bearer is answered 401, and the auth middleware then logs in
                # again: a login every 30 s, each leaving a session behind.
                raise ConfigurationError(
                    f"Engine.keepalive({policy.product} {policy.action!r}) wants "
                    "the Authorization header's LivePerson appKey scheme, which this engine's "
                    f"{type(self._auth).__name__} does not send (its bearer is refused with "
                    "401, and each 401 costs a login): run it on an engine whose auth is "
                    "AppKeyAuth"
                )
            if self._resolves_at_once:
                # A static map answers at once, as for websocket(): a service it does not know
                # (a typo) is an UnknownServiceError here, at the call, not a failure at every
                # run. A provider that fetches is asked at the runs; if it keeps saying the
                # service does not exist, the task stops (KeepaliveTask's final streak).
                _resolve_at_once(self._domains, service)

            # The run's timeout is its request's deadline: the engine's retry schedule gives
            # up within it, with the service's own answer (a 503; a 429 and the Retry-After
            # it asked for, which the task then waits before its next run), rather than
            # being cut in a pause as a bare TimeoutError; a WARNING, the keepalive handling
            # the outage, not an ERROR at every run. Never longer than the deadline the
            # engine's retry policy gives every call: a 3 s one made a 10 s one, and a 503 was
            # answered again 5 s later where every other call gives up at once.
            engine_deadline = self._retry.deadline
            timeout = (
                policy.timeout if engine_deadline is None else min(policy.timeout, engine_deadline)
            )

            async def call() -> None:
                token = _HANDLED_BY.set((_KEEPALIVE_FALLBACK, asyncio.current_task()))
                try:
                    await self.request(
                        method, service, path, params=params, headers=headers, deadline=timeout
                    )
                finally:
                    _HANDLED_BY.reset(token)

            action = call
            what = "its engine's auth or domain provider (or the aiohttp session it was given)"
            # Each run would ask again what was refused (a login at every run): it stops.
            not_final = ()
            ceiling = self._retry.retry_after_ceiling

        task = _EngineKeepalive(
            policy,
            action,
            engine_closed=lambda: self._closed,
            what=what,
            clock=self._clock,
            hooks=self._hooks,
            name=f"{service} {policy.action}",
            on_close=self._keepalives.discard,
            not_final=not_final,
            retry_after_ceiling=ceiling,
        )
        task.start()
        if task.running:
            # Held once started, not before: a start that failed left a task that never ran
            # held (counted as running, warned of at collection). One that ended inside
            # start() (an eager task factory, a clock failing at once) has left already.
            self._keepalives.add(task)
        return task

    def __repr__(self) -> str:
        return f"Engine(domains={self._domains!r}, scheme={self._scheme!r}, retry={self._retry!r})"
