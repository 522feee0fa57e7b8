"""The providers' own HTTP path: the engine's retry schedule, without the auth middleware.

A provider's calls (the Domain API fetch, login, refresh, logout, token requests) must follow the
engine's request schedule, but must never pass through the auth middleware: that would make a
login call ask for credentials, i.e. log in, i.e. re-enter itself (aiohttp trap 6). So every
provider call goes through :class:`ProviderHttp`, which sends on the engine's session with
``middlewares=(retry_middleware, *wire_middlewares)``: the schedule, timeouts, logging and typed
errors apply, and so do those of the engine's wire middlewares that ask to see provider calls
(``sees_provider_calls``: a fault injector, which strikes a login as it strikes any call, as the
simulator's fault plan does), once per attempt; the auth middleware, any outer middleware and
any other wire middleware do not (provider calls carry credentials).

Provider calls never follow redirects: a login body is a credential, and a redirect must not
carry it to another host. A 3xx is an answer like any other, and the provider treats it as an
error.

The engine builds one :class:`ProviderHttp` and hands it to each provider's ``attach``; a
provider used on its own can be given one built from any session and
:class:`~le_transport.middleware.RetryMiddleware`.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Iterable, Mapping
from http.cookies import SimpleCookie
from typing import Any

import aiohttp
import attrs
from aiohttp import ClientMiddlewareType
from yarl import URL

from .._checks import require_option, utf8_encodable
from .._redact import Secret, redact_url
from ..clock import Clock, wall_of
from ..errors import BodyTooLarge, ConfigurationError, TransportError
from ..events import EventHooks, GiveUpEvent, StateEvent, emit
from ..middleware.context import (
    CallContext,
    HandledCallContext,
    call_context,
    safe_cause,
    unsent_request_error,
)
from ..middleware.retry import RetryMiddleware
from ..policies._validate import finite_number
from ..policies.retry import RetryPolicy

__all__ = [
    "ProviderHttp",
    "ProviderResponse",
    "answer_finite",
    "answer_number",
    "cookie_safe",
    "emit_state",
    "header_safe",
    "provider_url",
    "require_attached",
    "require_option",
    "require_secret",
    "require_text",
    "split_host",
    "validate_account",
]

_log = logging.getLogger("le_transport.retry")


@attrs.frozen(repr=False)
class ProviderResponse:
    """A provider call's answer: status, body, and the cookies it set (values are secrets)."""

    status: int
    body: bytes
    cookies: Mapping[str, str] = attrs.field(factory=dict)

    def __repr__(self) -> str:
        return f"ProviderResponse(status={self.status}, {len(self.body)} bytes)"


def _middleware_tuple(value: Iterable[ClientMiddlewareType]) -> tuple[ClientMiddlewareType, ...]:
    return tuple(value)


@attrs.frozen(eq=False)
class ProviderHttp:
    """Sends a provider's requests on the engine's session through the retry middleware and,
    inside it, the engine's wire middlewares (never the auth or outer middlewares).

    - ``session``: returns the aiohttp session to send on (the engine's, once started).
    - ``retry_middleware``: the engine's :class:`RetryMiddleware` (its policy is the default).
    - ``clock``, ``hooks``, ``rng``: the engine's, for TTLs, keepalive and events.
    - ``scheme``: the engine's scheme (``https``, or ``http`` for loopback servers).
    - ``wire_middlewares``: the engine's wire middlewares that ask to see provider calls
      (``sees_provider_calls``; none by default), run once per attempt inside the retry
      middleware, as they run on the engine's own calls: a
      :class:`~le_transport.chaos.FaultInjector` there applies its plan to the login, refresh,
      logout and Domain API calls too, as the simulator applies the same plan to them.
    - ``wall_clock``: the engine's wall clock (Unix seconds; default: the date of ``clock``):
      what a provider made without a ``wall_clock`` of its own reads a JWT's ``iat``/``exp``
      against and dates an OAuth1 ``oauth_timestamp`` with (on a
      :class:`~le_transport.testing.VirtualClock`, the clock's virtual date).
    """

    session: Callable[[], aiohttp.ClientSession]
    retry_middleware: RetryMiddleware
    clock: Clock
    hooks: EventHooks = attrs.field(factory=EventHooks)
    rng: random.Random = attrs.field(factory=random.Random)
    scheme: str = "https"
    wire_middlewares: tuple[ClientMiddlewareType, ...] = attrs.field(
        default=(), converter=_middleware_tuple
    )
    #: Unix seconds for the providers attached with it; default: the date that goes with
    #: ``clock`` (:func:`~le_transport.clock.wall_of`: a VirtualClock's own, else
    #: :func:`time.time`), as the engine's.
    wall_clock: Callable[[], float] = attrs.field(
        default=attrs.Factory(lambda self: wall_of(self.clock), takes_self=True)
    )

    @wall_clock.validator
    def _check_wall_clock(self, attribute: object, value: object) -> None:
        if not callable(value):
            raise ConfigurationError(
                f"ProviderHttp.wall_clock must be a function returning Unix seconds, got "
                f"{type(value).__name__}"
            )

    @property
    def policy(self) -> RetryPolicy:
        """The engine's default request policy."""
        return self.retry_middleware.policy

    async def request(
        self,
        method: str,
        url: URL,
        *,
        service: str,
        json: Any = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        idempotent: bool | None = None,
        fallback: str | Callable[[], str | None] | None = None,
    ) -> ProviderResponse:
        """Send one provider call on ``retry`` (default: the engine's policy); return the answer.

        Raises the retry middleware's typed errors: :class:`~le_transport.errors.ClientStatusError`
        for a 4xx, :class:`~le_transport.errors.RetriesExhausted` when the schedule is spent, ...
        A ``fallback`` says the provider handles an outage of the call itself, and how, in a
        few words true whatever happens next (a token fetched early: "the current token is
        kept ..."): the retry middleware then logs its giving up as a WARNING, not an ERROR,
        ending with those words, and its give-up event has ``handled_by_caller`` (see
        :class:`~le_transport.middleware.context.HandledCallContext`). A callable is asked for
        them when the call gives up, and returns None if by then nothing is handled (a Domain
        API refresh whose map went past ``max_stale`` meanwhile).

        The answer's body is held to the retry middleware's ``max_body_bytes`` whether or not
        it buffers bodies (``buffer_body``): past it,
        :class:`~le_transport.errors.BodyTooLarge`.
        """
        ctx = (
            CallContext(service, idempotent, retry)
            if fallback is None
            else HandledCallContext(service, idempotent, retry, fallback=fallback)
        )
        session = self.session()
        try:
            with call_context(ctx):
                async with session.request(
                    method,
                    url,
                    json=json,
                    data=data,
                    headers=headers,
                    allow_redirects=False,
                    middlewares=(self.retry_middleware, *self.wire_middlewares),
                ) as resp:
                    # The retry middleware has read the body (within its limit), unless it was
                    # built with buffer_body=False: then it is read here, to the same limit.
                    body = resp._body
                    if body is None:
                        body = await self._read_bounded(resp, method, url, ctx)
                    return ProviderResponse(
                        status=resp.status, body=body, cookies=_cookies(resp.cookies)
                    )
        except TransportError:
            raise
        except (aiohttp.ClientError, OSError) as exc:
            unsent = unsent_request_error(exc, ctx, method, url), safe_cause(exc)
        # Raised here, so that an aiohttp error that shows the URL is not its context.
        raise unsent[0] from unsent[1]

    async def _read_bounded(
        self, resp: aiohttp.ClientResponse, method: str, url: URL, ctx: CallContext
    ) -> bytes:
        """``resp``'s body, read to the retry middleware's ``max_body_bytes`` at most: past it,
        the connection is dropped and :class:`~le_transport.errors.BodyTooLarge` raised,
        logged and fired as a GiveUpEvent (a login endpoint, or anything in between, streaming
        without end)."""
        limit = self.retry_middleware.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        # Counted as it decompresses: a Content-Length counts compressed bytes.
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > limit:
                resp.close()
                err = BodyTooLarge(
                    f"the provider call's answer exceeds the {limit}-byte limit "
                    f"(more than {limit} bytes read); not read further",
                    limit=limit,
                    service=ctx.service,
                    method=method,
                    url=redact_url(url),
                    attempts=ctx.attempts,
                )
                _log.warning("%s", err, extra={"service": ctx.service, "method": method})
                # The call's end, as the retry loop reports one it gives up on when buffering.
                started = ctx.started_at
                clock = self.retry_middleware.clock
                emit(
                    self.retry_middleware.hooks.on_giveup,
                    GiveUpEvent(
                        service=ctx.service or "?",
                        method=method,
                        url=redact_url(url),
                        attempts=len(ctx.attempts),
                        outcome=None,
                        reason=str(err),
                        elapsed=0.0 if started is None else clock.now() - started,
                    ),
                )
                raise err
            chunks.append(chunk)
        return b"".join(chunks)


def _cookies(jar: SimpleCookie) -> dict[str, str]:
    return {name: morsel.value for name, morsel in jar.items()}


def emit_state(hooks: EventHooks, log: logging.Logger, level: int, event: StateEvent) -> None:
    """Log a state transition (details are never secrets) and hand it to ``on_state`` hooks.
    A str detail that is not printable (a user id from a login answer holding a line break)
    is logged quoted, so that it cannot write a log line of its own; the event keeps it."""
    log.log(
        level,
        "%s: %s %s",
        event.subject,
        event.name.replace("_", " "),
        " ".join(f"{k}={_shown_detail(v)}" for k, v in event.details.items()),
        extra={"event": event.name, "subject": event.subject, "details": event.details},
    )
    emit(hooks.on_state, event)


def _shown_detail(value: object) -> object:
    """A state event's detail as its log line shows it: a str that is not printable quoted."""
    return repr(value) if isinstance(value, str) and not value.isprintable() else value


def require_attached(http: ProviderHttp | None, owner: object) -> ProviderHttp:
    """``http``, or a :class:`ConfigurationError` saying the provider is not attached."""
    if http is None:
        raise ConfigurationError(
            f"{type(owner).__name__} is not attached to an engine: pass it to the Engine "
            "(its auth or domains argument) and start the engine, or call "
            "attach(ProviderHttp(...)) yourself (inside a provider of your own that wraps it, "
            "the wrapper must forward attach(): the engine attaches only the provider it is "
            "given)"
        )
    return http


# Not dots alone: "." and ".." are dot segments, which URL resolution removes ("/api/account/../
# login" is "/api/login"), and an id made only of dots is no account id anyway.
_ACCOUNT = re.compile(r"(?!\.+\Z)[A-Za-z0-9._-]{1,64}")


def validate_account(account: object, *, owner: str) -> str:
    """``account`` if it is a plausible LiveEngage account id; else :class:`ConfigurationError`.

    It goes into URL paths, so anything that could change the path is refused: any character
    but letters, digits, ``.``, ``_`` and ``-``, and an id made only of dots (``.`` and ``..``
    are dot segments, which would take the request to another path).
    """
    if not isinstance(account, str) or not _ACCOUNT.fullmatch(account):
        # Never the value itself: arguments given in the wrong order put a password here.
        shown = (
            f"a str of {len(account)} characters"
            if isinstance(account, str)
            else type(account).__name__
        )
        raise ConfigurationError(
            f"{owner}.account must be a LiveEngage account id (1 to 64 letters, digits, '.', "
            f"'_', '-', not only dots), got {shown}"
        )
    return account


def require_secret(value: object, *, owner: str, field: str) -> Secret:
    """``value`` as a :class:`Secret`; a :class:`ConfigurationError` (never echoing it) if
    empty, or if it is not text UTF-8 can encode (see :func:`utf8_encodable`)."""
    if isinstance(value, Secret):
        secret = value
    elif isinstance(value, str):
        secret = Secret(value)
    else:
        raise ConfigurationError(
            f"{owner}.{field} must be a non-empty str or Secret, got {type(value).__name__}"
        )
    if not secret:
        raise ConfigurationError(f"{owner}.{field} must not be empty")
    if not utf8_encodable(secret.reveal()):
        raise ConfigurationError(_NOT_UTF8.format(owner=owner, field=field))
    return secret


def require_text(value: object, *, owner: str, field: str) -> str:
    """``value`` if it is a non-empty str UTF-8 can encode (a username: it goes into a request
    body); else a :class:`ConfigurationError` that does not echo it (a password given in the
    wrong place must not show)."""
    if not isinstance(value, str) or not value:
        shown = "an empty str" if isinstance(value, str) else type(value).__name__
        raise ConfigurationError(f"{owner}.{field} must be a non-empty str, got {shown}")
    if not utf8_encodable(value):
        raise ConfigurationError(_NOT_UTF8.format(owner=owner, field=field))
    return value


_NOT_UTF8 = (
    "{owner}.{field} holds a lone surrogate, which UTF-8 cannot encode (os.environ gives one "
    "for a byte that is not UTF-8): check how the value was read, e.g. the environment's "
    "encoding; the value is not shown"
)


def provider_url(scheme: str, host: str, path: str, query: Mapping[str, str] | None = None) -> URL:
    """``scheme://host/path?query`` from a validated ``host`` (``name`` or ``name:port``)."""
    name, port = split_host(host)
    return URL.build(scheme=scheme, host=name, port=port, path=path, query=query or {})


def split_host(host: str) -> tuple[str, int | None]:
    """``("example.com", 8080)`` from ``"example.com:8080"``; IPv6 literals in brackets."""
    if host.startswith("["):
        inside, _, rest = host[1:].partition("]")
        return inside, int(rest[1:]) if rest.startswith(":") else None
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return name, int(port)
    return host, None


# What a token may hold to travel in a header: visible ASCII, no whitespace or control
# character (a server answering "x\r\nX-Injected: 1" must not write our headers).
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
# A cookie value additionally must not end the cookie or open a quoted string.
_COOKIE_UNSAFE = frozenset(';,"\\')


def header_safe(value: str) -> bool:
    """Whether ``value`` can be sent in a header as is (visible ASCII only)."""
    return bool(_HEADER_SAFE.fullmatch(value))


def cookie_safe(value: str) -> bool:
    """Whether ``value`` can be sent as a cookie value as is."""
    return header_safe(value) and not (_COOKIE_UNSAFE & set(value))


def answer_number(value: object) -> float | None:
    """A positive number a server answered (a number, or a string of one), if it is a usable
    one: not a bool, NaN, infinite, <= 0, nor an int past float's range. None otherwise: an
    answer without a usable expiry or TTL has none."""
    result = answer_finite(value)
    return result if result is not None and result > 0 else None


def answer_finite(value: object) -> float | None:
    """A number a server answered (a number, or a string of one), of any sign, if it is a
    finite one: not a bool, NaN, infinite, nor an int past float's range. None otherwise."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)  # digits past float's range make inf here, not an error
        except ValueError:
            return None
    # finite_number, not float() then math.isfinite: float() of a JSON int past float's range
    # raises OverflowError, an untyped error from a server's answer.
    if not finite_number(number):
        return None
    assert isinstance(number, (int, float))
    return float(number)


def check_domains_account(owner: str, domains: object, account: str) -> None:
    """A :class:`~le_transport.providers.CsdsDomains` of another account than the provider's
    is a :class:`~le_transport.errors.ConfigurationError`: the provider's credentials would go
    to that account's hosts (and a login's map would be merged into it)."""
    from .csds import CsdsDomains  # (here: csds builds on this module's neighbours)

    if isinstance(domains, CsdsDomains) and domains.account != account:
        raise ConfigurationError(
            f"{owner} of account {account!r} was given the CsdsDomains of account "
            f"{domains.account!r}: its credentials would go to that account's hosts"
        )
