"""The LiveEngage simulator: a real aiohttp server on loopback that speaks LiveEngage's protocol.

``async with Simulator() as sim:`` starts it on a free port of 127.0.0.1. It serves:

- the Domain API (``/api/account/{id}/service/baseURI.json``, the one-service form, and the
  ``/csdr/`` prefix), pointing every service at the address the client reached it by (the
  ``Host`` header) or at ``config.public_address``;
- the Login Service (user and application login, refresh, logout; tokens expire after
  ``config.session_ttl`` on the simulator's clock);
- Sentinel OAuth2 ``app/token`` (client credentials → JWT) and the idp (consumer JWTs);
- REST resources that check their credentials (``Bearer``, OAuth 1.0 signatures verified per
  RFC 5849, or ``LivePerson appKey=``): the Users API, an Engagement History search, the Chat
  Agent ``agentSession`` (a Login Service bearer only) and Server Chat "chat info"
  (``LivePerson appKey=`` with one of the account's app keys only);
- the UMS agent socket and the consumer socket (see :mod:`.sockets`).

Endpoints of your own are served beside these: ``sim.add_route("GET",
"/api/account/{account}/widgets", handler, service="widgets")`` before the simulator starts (or
``Simulator(routes=[SimRoute(...)])``). The fault plan strikes them (a handler that upgrades
to a WebSocket gets the socket faults too: :mod:`.custom_ws`), ``sim.requests`` records them,
``auth=True`` checks credentials as the REST resources do, and their service joins
``sim.domains`` and the Domain API's answers (see :meth:`Simulator.add_route`).

Faults are scripted with the shared vocabulary of :mod:`le_transport.chaos`:
``sim.faults.script("GET", "/api/*/users", [503, 503, 200])`` or ``sim.faults.add(rule)``.
A 5xx on a request signed with OAuth 1.0 comes from behind the gateway, as on LiveEngage: the
signature is checked and its nonce spent first, so a retry that repeats the nonce gets a 401.
Every request is recorded in ``sim.requests`` (method, redacted path and headers, the clock
time, the service, the fault applied). No secret is logged: aiohttp's access log is off.

Records are bounded by ``config.max_records`` (default 100,000), so a simulator serving a long
soak keeps bounded memory: ``sim.requests`` (a :class:`~le_transport.chaos.plan.RecordLog`,
read as a list) keeps the newest requests and :attr:`Simulator.records_dropped` counts the
older ones dropped; ``sim.faults`` and ``sim.sockets`` keep their records the same way. The
first drop of each record is logged once, at INFO on ``le_transport.records``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import hmac
import ipaddress
import logging
import re
import socket
import ssl as _ssl
import struct
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, cast

import attrs
from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.payload import Payload
from yarl import URL

from ..._checks import is_async_callable, require_kind
from ..._json import loads_strict
from ..._redact import redact_headers, redact_url
from ...chaos.injector import require_clock
from ...chaos.plan import (
    DEFAULT_MAX_RECORDS,
    HTTP_FAULTS,
    UPGRADE_FAULTS,
    WS_FAULTS,
    Delay,
    EmptyResponse,
    Fault,
    FaultPlan,
    FaultRule,
    FaultRun,
    Hang,
    MalformedBody,
    Match,
    Quota,
    RecordLog,
    Reset,
    RuleCounts,
    SlowBody,
    Status,
    TruncatedBody,
    WsClose,
    WsDrop,
    WsRejectHandshake,
    WsSilence,
    _printable,
    as_plan,
)
from ...clock import Clock, RealClock, timeout_after, wall_of
from ...errors import ConfigurationError
from ...policies._validate import finite_number
from . import oauth1
from .auth import LoginSession, Token, TokenStore
from .body_cut import BODY_CUT_KEY, BODY_PACE_KEY, AnswerCut, BodyCut, BodyPace, bodiless
from .config import SERVICES, Account, SimulatorConfig
from .custom_ws import CUSTOM_SOCKET_KEY, CustomSocket
from .sockets import SocketHub

__all__ = ["FAULT_HEADER", "RecordedRequest", "RouteHandler", "SimFaults", "SimRoute", "Simulator"]

_log = logging.getLogger("le_transport.simulator")


class _UnreadableBodyFilter(logging.Filter):
    """Keeps aiohttp's ERROR about a request body it could not read out of the logs (a DEBUG
    line on ``le_transport.simulator`` instead).

    A body that cannot be read as sent (``Content-Encoding: gzip`` on a body that is not gzip)
    is the client's mistake, answered 400 (:meth:`Simulator._unreadable_body_middleware`).
    aiohttp then reads what is left of the body before it would reuse the connection (its
    "lingering" read), meets the same error again, logs it at ERROR with a traceback
    ("Unhandled exception") and closes the connection. The close is right; the ERROR was not: a
    test that fails on ERROR records failed on its client's bug, which the simulator had
    answered.

    A request aiohttp's parser refuses (an :class:`~aiohttp.http_exceptions.HttpProcessingError`:
    a control character in a header value, a line too long, a bad request line) is answered 400
    by aiohttp, which logs it at ERROR ("Error handling request"), the exception's message
    holding the offending line as received: ``Authorization: Bearer <token>\x7f`` put the bearer
    in the log. Such a record is dropped too, for a DEBUG line naming the exception's type only
    (never its message). (A handler raising one is no refusal: the simulator's own middleware
    answers it 500 and logs it at ERROR, with its frames, not its text.) Every other record
    passes as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            _log.debug(
                "a request aiohttp could not parse (%s): refused, its connection closed",
                type(exc).__name__,
            )
            return False
        if not isinstance(exc, web.RequestPayloadError):
            return True
        cause = exc.__cause__
        _log.debug(
            "a request body that could not be read (%s): its connection closed",
            type(cause if cause is not None else exc).__name__,
        )
        return False


#: What the simulator's aiohttp servers log through: a child of aiohttp's own
#: ``aiohttp.server`` (whatever is set up for that one applies), with the filter above.
_server_log = logging.getLogger("aiohttp.server.le_simulator")
_server_log.addFilter(_UnreadableBodyFilter())

#: The per-request override header (off unless ``SimulatorConfig.fault_header``).
FAULT_HEADER = "X-LE-Fault"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: A custom route's handler: an async function from the request to its answer (aiohttp's).
RouteHandler = Handler

_SIM_KEY: web.AppKey[Simulator] = web.AppKey("le_sim", object)  # type: ignore[arg-type]

#: The routes whose answer to an upgrade request is a WebSocket, not a body.
_SOCKET_ROUTES = frozenset({"facadeMsg.brand", "asyncMessagingEnt.consumer"})


def _is_upgrade(request: web.Request) -> bool:
    """Whether ``request`` asks to upgrade to a WebSocket."""
    return request.headers.get(hdrs.UPGRADE, "").strip().lower() == "websocket"


def _bracketed(host: str) -> str:
    """``host`` as a URL's authority needs it: an IPv6 literal in brackets (once)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _same_secret(expected: str | None, given: object) -> bool:
    """Whether ``given`` is the credential ``expected``: both strings, equal.

    None never matches (an unknown user's "password" is not None), nor does a value of another
    type. Compared in constant time, on UTF-8 bytes: ``hmac.compare_digest`` refuses str with
    non-ASCII characters (surrogatepass: JSON can carry a lone surrogate)."""
    if expected is None or not isinstance(given, str):
        return False
    return hmac.compare_digest(
        expected.encode("utf-8", "surrogatepass"), given.encode("utf-8", "surrogatepass")
    )


def _host_arg(host: object) -> str:
    """``Simulator.host`` checked, without brackets: a non-empty str naming a host alone."""
    if not isinstance(host, str) or not host.strip("[]"):
        raise ConfigurationError(
            f"Simulator.host must be a non-empty str (an address or a name, like '127.0.0.1'), "
            f"got {host!r:.40}"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigurationError(
                f"Simulator.host {host[:60]!r} holds a ':' but is not an IPv6 address: give the "
                "host alone, and the port as port="
            ) from None
    elif any(c.isspace() or c in "/[]@?#" for c in host):
        raise ConfigurationError(
            f"Simulator.host must be a host alone (an address or a name), got {host[:60]!r}"
        )
    return host


def _real_time_date(value: str | None) -> bool:
    """Whether a ``Date`` header is aiohttp's own, real time (within 2 s of it: aiohttp's
    cached value may have been made in the second before), not one a handler set."""
    if value is None:
        return False
    try:
        date = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return False
    return abs(date - RealClock.wall()) <= 2.0


def _is_decimal(text: str) -> bool:
    """ASCII digits only: RFC 5849's "positive integer" for ``oauth_timestamp``. ``float()``
    would take "nan" (inside every window: ``abs(nan - now) > window`` is False), "inf",
    "1e9" and " 12"; ``int()`` takes "1_700", "+12" and non-ASCII digits."""
    return text.isascii() and text.isdigit()


#: The simulator's own routes: (method, path, handler's attribute, route name). The route
#: name's part before the first dot is the service the fault plan matches (``csds.*``:
#: ``csds``, the service the engine's Domain API calls name).
#: A GET is served for HEAD too (aiohttp's ``add_get``).
_BUILTIN_ROUTES: tuple[tuple[str, str, str, str], ...] = (
    *(
        (method, prefix + path, handler, f"{name}{prefix.replace('/', '.')}")
        for prefix in ("/api", "/csdr")
        for method, path, handler, name in (
            ("GET", "/account/{account}/service/baseURI.json", "_csds_all", "csds.all"),
            ("GET", "/account/{account}/service/{service}/baseURI.json", "_csds_one", "csds.one"),
        )
    ),
    ("POST", "/api/account/{account}/login", "_login", "agentVep.login"),
    ("POST", "/api/account/{account}/refresh", "_refresh", "agentVep.refresh"),
    ("POST", "/api/account/{account}/logout", "_logout", "agentVep.logout"),
    ("POST", "/api/account/{account}/agentSession", "_agent_session", "agentVep.session"),
    ("POST", "/sentinel/api/account/{account}/app/token", "_app_token", "sentinel.token"),
    ("POST", "/api/account/{account}/signup", "_signup", "idp.signup"),
    ("POST", "/api/account/{account}/authenticate", "_authenticate", "idp.auth"),
    (
        "GET",
        "/api/account/{account}/configuration/le-users/users",
        "_users",
        "accountConfigReadOnly.users",
    ),
    (
        "GET",
        "/api/account/{account}/configuration/le-users/users/{user}",
        "_user",
        "accountConfigReadOnly.user",
    ),
    ("GET", "/api/account/{account}/chat/{chat}/info", "_chat_info", "agentVep.chatinfo"),
    (
        "POST",
        "/interaction_history/api/account/{account}/interactions/search",
        "_interactions",
        "engHistDomain.search",
    ),
    (
        "GET",
        "/ws_api/account/{account}/messaging/brand/{bearer}",
        "_brand_socket",
        "facadeMsg.brand",
    ),
    (
        "GET",
        "/ws_api/account/{account}/messaging/consumer",
        "_consumer_socket",
        "asyncMessagingEnt.consumer",
    ),
)

#: An HTTP method: RFC 9110's token.
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


#: A ``{name:regex}`` variable of an aiohttp path template (its regex may hold braces once).
_REGEX_VARIABLE = re.compile(r"\{[^{}:]*:((?:[^{}]|\{[^{}]*\})*)\}")
#: A character class in a variable's regex (escapes inside it included).
_REGEX_CLASS = re.compile(r"\[\^?\]?(?:\\.|[^\]\\])*\]")
#: What a variable's regex may be made of, classes aside, and still never match a '/':
#: word characters, ``\d``, ``\w``, an escaped ``.``/``-``/``_``, quantifiers, groups and
#: alternation. Anything else (``.``, ``\S``, ``[^x]``, a lookaround) may match one.
_NO_SLASH_REGEX = re.compile(r"(?:\\[dw.\-_]|[\w\-+*?{},()|:]|\x00)*")


def _spans(regex: str) -> bool:
    """Whether a variable's ``regex`` may match a ``/`` (so a request path's segments
    beyond its own): judged from what it is made of, erring on "it may"."""
    classes: list[str] = []

    def _class(found: re.Match[str]) -> str:
        classes.append(found.group(0))
        return "\x00"

    rest = _REGEX_CLASS.sub(_class, regex)
    if not _NO_SLASH_REGEX.fullmatch(rest):
        return True
    for cls in classes:
        try:
            if re.fullmatch(cls, "/") is not None:
                return True
        except re.error:
            return True
    return False


#: aiohttp's path variables: ``{name}`` (one segment: ``[^{}/]+``) and ``{name:regex}``.
_PATH_VARIABLE = re.compile(
    r"\{(?P<var>[_a-zA-Z][_a-zA-Z0-9]*)(?::(?P<re>(?:[^{}]|\{[^{}]*\})+))?\}"
)
#: One token of a variable's regex, for its literal ends: an escape, a class, a counted
#: quantifier, or one character.
_REGEX_TOKEN = re.compile(r"\\.|\[\^?\]?(?:\\.|[^\]\\])*\]|\{\d*(?:,\d*)?\}|.", re.DOTALL)


@attrs.frozen
class _Part:
    """A route path segment that holds a variable: what it matches, and for one that may
    span segments, the literal text every match starts and ends with."""

    pattern: re.Pattern[str] | None  # None: not compiled here (counted as matching anything)
    spans: bool
    head: str = ""
    tail: str = ""


def _regex_ends(tokens: list[str]) -> tuple[str, str]:
    """The literal text a regex's every match starts and ends with ('' where not known)."""
    if any(tok in ("|", "(") for tok in tokens):
        # Alternation, groups and inline flags ((?i)) make the ends a guess: none is known.
        return "", ""
    literal: list[str | None] = []
    for tok in tokens:
        if tok[0] in "*+?" or (tok[0] == "{" and len(tok) > 1):
            if literal:
                literal[-1] = None  # a quantified character is not certain
            literal.append(None)
        elif len(tok) == 2 and tok[0] == "\\" and not tok[1].isalnum():
            literal.append(tok[1])
        elif len(tok) == 1 and tok not in ".^$[]{}()\\":
            literal.append(tok)
        else:
            literal.append(None)
    head = ""
    for ch in literal:
        if ch is None:
            break
        head += ch
    tail = ""
    for ch in reversed(literal):
        if ch is None:
            break
        tail = ch + tail
    return head, tail


def _part(part: str) -> _Part:
    """A segment with variables, as aiohttp compiles it."""
    pattern, tokens, spans, pos = "", [], False, 0
    for found in _PATH_VARIABLE.finditer(part):
        text = part[pos : found.start()]
        pattern += re.escape(text)
        tokens += [re.escape(ch) if not ch.isalnum() else ch for ch in text]
        regex = found.group("re")
        if regex is None:
            pattern += "[^{}/]+"
            tokens.append("[^{}/]")
            tokens.append("+")
        else:
            pattern += f"(?:{regex})"
            spans = spans or _spans(regex)
            tokens += _REGEX_TOKEN.findall(regex)
        pos = found.end()
    text = part[pos:]
    pattern += re.escape(text)
    tokens += [re.escape(ch) if not ch.isalnum() else ch for ch in text]
    head, tail = _regex_ends(tokens) if spans else ("", "")
    try:
        return _Part(re.compile(pattern), spans, head, tail)
    except re.error:
        return _Part(None, True)


def _segments(path: str) -> list[str | _Part]:
    """A route path's segments: literal ones as text, one with a variable as a :class:`_Part`
    (a ``{variable}`` matches one segment; one whose regex may match a ``/``, as ``{rest:.*}``
    does, one segment or more)."""
    parts, depth, start = [], 0, 0
    for at, ch in enumerate(path):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(depth - 1, 0)
        elif ch == "/" and depth == 0:  # a '/' inside a variable's regex splits nothing
            parts.append(path[start:at])
            start = at + 1
    parts.append(path[start:])
    return [part if "{" not in part else _part(part) for part in parts]


def _part_may_match(part: _Part, segments: Sequence[str | _Part]) -> bool:
    """Whether a request's ``segments`` (built-in ones: text, or a ``{name}`` variable) could
    be matched by the custom ``part``. Errs on "it could"."""
    if part.pattern is None:
        return True
    if all(isinstance(seg, str) for seg in segments):
        return part.pattern.fullmatch("/".join(map(str, segments))) is not None
    # A built-in variable among them: compare the literal text at either end only.
    lead: list[str] = []
    for seg in segments:
        if not isinstance(seg, str):
            lead.append("")  # a variable follows this '/': the lead ends with it
            break
        lead.append(seg)
    trail: list[str] = []
    for seg in reversed(segments):
        if not isinstance(seg, str):
            trail.append("")
            break
        trail.append(seg)
    head, tail = "/".join(lead), "/".join(reversed(trail))
    if not (head.startswith(part.head) or part.head.startswith(head)):
        return False
    return tail.endswith(part.tail) or part.tail.endswith(tail)


def _overlaps(custom: str, builtin: str) -> bool:
    """Whether some request path could match both the ``custom`` route path and the
    ``builtin`` one (whose variables are plain ``{name}`` ones): segment by segment, each
    equal, or matched by the other side's variable; a custom variable that may match a ``/``
    stands for one segment or more, and must be able to match their text. Errs on "it could":
    such a route is refused, not shadowed."""
    sa, sb = _segments(custom), _segments(builtin)
    # reach[j]: whether the custom segments so far can match the first j built-in ones.
    reach = [True] + [False] * len(sb)
    for x in sa:
        nxt = [False] * (len(sb) + 1)
        for j, ok in enumerate(reach):
            if not ok:
                continue
            if isinstance(x, _Part) and x.spans:
                for k in range(j + 1, len(sb) + 1):
                    nxt[k] = nxt[k] or _part_may_match(x, sb[j:k])
            elif j < len(sb):
                y = sb[j]
                if isinstance(x, str):
                    fits = not isinstance(y, str) or x == y
                else:
                    fits = _part_may_match(x, [y])
                nxt[j + 1] = nxt[j + 1] or fits
        reach = nxt
    return reach[len(sb)]


def _methods_overlap(custom: str, builtin: str) -> bool:
    """Whether a custom route's method is one a built-in route answers (a GET answers HEAD)."""
    return custom == builtin or (builtin == "GET" and custom == "HEAD")


def _route_method(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


@attrs.frozen
class SimRoute:
    """A route of your own, served by the simulator beside LiveEngage's (see
    :meth:`Simulator.add_route`, which makes one; or pass a list to ``Simulator(routes=...)``).

    - ``method``: the HTTP method it answers (``"GET"``, ``"POST"``...; one per route).
    - ``path``: an aiohttp path template, from ``/`` (``/api/account/{account}/widgets``).
    - ``handler``: an async function ``(aiohttp.web.Request) -> aiohttp.web.StreamResponse``.
      One that upgrades (``ws = web.WebSocketResponse(); await ws.prepare(request)``) serves a
      WebSocket, which the plan's ``ws_session`` and ``ws_message`` rules strike as they strike
      the simulator's own sockets (see :mod:`.custom_ws`).
    - ``service``: the LiveEngage-style service name it belongs to: a fault rule's
      ``Match(service=...)`` matches it, ``sim.domains`` and the Domain API point it at the
      simulator. None: no service (rules that name one do not match it).
    - ``auth``: check the credentials the simulator's REST resources take (a Login Service
      bearer, a Sentinel JWT, OAuth 1.0, ``LivePerson appKey=``) for the account in the path
      before the handler runs, and answer 401 without calling it when they do not hold. The
      path must then have an ``{account}`` part.

    Each field is checked when it is made: anything else is a
    :class:`~le_transport.errors.ConfigurationError` naming the field.
    """

    method: str = attrs.field(converter=_route_method)
    path: str = attrs.field()
    handler: RouteHandler = attrs.field()
    service: str | None = attrs.field(default=None, kw_only=True)
    auth: bool = attrs.field(default=False, kw_only=True)

    @method.validator
    def _check_method(self, attribute: attrs.Attribute[str], value: object) -> None:
        if not isinstance(value, str) or not _METHOD.fullmatch(value) or value == "*":
            raise ConfigurationError(
                f"SimRoute.method must be one HTTP method, like 'GET' or 'POST', got {value!r:.40}"
            )

    @path.validator
    def _check_path(self, attribute: attrs.Attribute[str], value: object) -> None:
        if not isinstance(value, str):
            raise ConfigurationError(f"SimRoute.path must be a str, got {type(value).__name__}")
        if not value.startswith("/"):
            raise ConfigurationError(
                f"SimRoute.path must start with '/' (a path on the simulator, not a URL), "
                f"got {value!r:.80}"
            )
        outside = _PATH_VARIABLE.sub("", value)  # a variable's regex may hold '?': (?:a|b)
        if "?" in outside or "#" in outside:
            raise ConfigurationError(
                f"SimRoute.path must be a path without a query or fragment, got {value!r:.80}"
            )
        try:
            web.UrlDispatcher().add_route("GET", value, _not_called)
        except ValueError as exc:
            raise ConfigurationError(
                f"SimRoute.path {value!r:.80} is not an aiohttp path template: {exc}"
            ) from None

    @handler.validator
    def _check_handler(self, attribute: attrs.Attribute[RouteHandler], value: object) -> None:
        if isinstance(value, type) or not callable(value) or not is_async_callable(value):
            raise ConfigurationError(
                "SimRoute.handler must be an async function (request) -> aiohttp.web."
                f"StreamResponse, got {type(value).__name__}"
            )

    @service.validator
    def _check_service(self, attribute: attrs.Attribute[str | None], value: object) -> None:
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigurationError(
                f"SimRoute.service must be a non-empty str or None, got {value!r:.40}"
            )

    @auth.validator
    def _check_auth(self, attribute: attrs.Attribute[bool], value: object) -> None:
        require_kind(value, bool, owner="SimRoute", field="auth", optional=False)
        if value and "{account}" not in self.path:
            raise ConfigurationError(
                f"SimRoute {self.method} {self.path}: a route with auth set checks "
                "credentials for the account in the path, and the path has no '{account}' part"
            )


async def _not_called(request: web.Request) -> web.StreamResponse:  # pragma: no cover
    """Stands in for a handler while a path template is checked."""
    raise AssertionError("not served")


@attrs.frozen
class RecordedRequest:
    """One request the simulator received. ``path`` and ``headers`` are redacted."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    at: float
    service: str | None
    fault: str | None = None
    rule_id: str | None = None


class SimFaults:
    """The simulator's fault script: a :class:`FaultPlan` being applied, and its decision log.

    The log and :meth:`injected` keep the newest ``max_records`` entries each (the
    simulator's ``config.max_records``); :meth:`injected_counts` keeps exact totals."""

    def __init__(
        self,
        plan: FaultPlan | Sequence[FaultRule] | None = None,
        *,
        origin: float | None = None,
        max_records: int | None = DEFAULT_MAX_RECORDS,
    ) -> None:
        self.run = FaultRun(
            FaultPlan() if plan is None else as_plan(plan, owner="Simulator"),
            origin=origin,
            max_records=max_records,
        )
        self._auto = 0

    @property
    def plan(self) -> FaultPlan:
        """The plan in force."""
        return self.run.plan

    @property
    def log(self) -> RecordLog[Any]:
        """The decision log (:class:`~le_transport.chaos.FaultDecision` entries): the newest
        ``max_records`` decisions, read as a list (``log.dropped``: how many were dropped)."""
        return self.run.log

    def load(self, plan: FaultPlan | Sequence[FaultRule], *, origin: float | None = None) -> None:
        """Replace the plan (a :class:`FaultPlan`, or a list of rules: seed 0); counters and log
        start over; time windows count from ``origin``, default the next request's time."""
        self.run.reset(as_plan(plan, owner="SimFaults.load"), origin=origin)

    def add(self, rule: FaultRule) -> FaultRule:
        """Add a rule to the plan (its counter starts at 0, even under the id of a rule removed
        by :meth:`clear`: nothing of that rule's is carried over)."""
        self.run.change_plan(self.run.plan.with_rule(rule))
        return rule

    def script(
        self,
        method: str | None,
        path: str,
        outcomes: Sequence[int | Fault | None],
        *,
        service: str | None = None,
        unit: str = "request",
        id: str | None = None,
    ) -> FaultRule:
        """Script the answers to the next matching requests, in order, then pass.

        ``outcomes``: a list of a status code (below 300: let the request through), a fault, or
        None (pass). ``script("GET", "/api/*/users", [503, 503, 200])`` fails twice, then
        serves. Anything else (a bare ``503``, None) is a
        :class:`~le_transport.errors.ConfigurationError`, and nothing is added; so is an empty
        list, a rule that would never answer anything.
        """
        if isinstance(outcomes, (str, bytes, Mapping)) or not isinstance(outcomes, Iterable):
            raise ConfigurationError(
                "SimFaults.script outcomes must be a list of status codes, faults or None "
                f"(one per matching request: [503] for one 503), got {type(outcomes).__name__}"
            )
        scripted = list(outcomes)
        if not scripted:
            # Taken, it added a rule that matched and passed every request: a test scripting
            # failures it built from an empty list silently saw none.
            raise ConfigurationError(
                "SimFaults.script outcomes must hold at least one status code, fault or None "
                "(one per matching request: [503] for one 503), got an empty list"
            )
        self._auto += 1
        rule = FaultRule(
            id=id or f"script-{self._auto}",
            match=Match(method=method, path=path, service=service),
            unit=unit,
            sequence=scripted,
        )
        return self.add(rule)

    def clear(self) -> None:
        """Remove every rule, and their counters and totals (:meth:`rule_counts`); the log is
        kept."""
        self.run.change_plan(FaultPlan(seed=self.run.plan.seed))

    def injected(self) -> list[Any]:
        """The decisions that injected a fault: the newest ``max_records`` of them."""
        return self.run.injected()

    def injected_counts(self) -> dict[str, int]:
        """``{rule id: faults injected}`` since each rule was added (or the plan loaded),
        exact however many records were dropped; :meth:`clear` forgets the removed rules'."""
        return self.run.injected_counts()

    def rule_counts(self) -> dict[str, RuleCounts]:
        """``{rule id: RuleCounts}`` for every rule (matched, injected, shadowed, skipped ...)
        since each rule was added (or the plan loaded), exact: a rule that injected nothing
        shows why."""
        return self.run.rule_counts()


class Simulator:
    """A LiveEngage stand-in on a real loopback aiohttp server.

    - ``config``: accounts, credentials, token lifetimes (:class:`SimulatorConfig`).
    - ``clock``: token expiry, idle sockets, ``GetClock`` and injected delays run on it
      (pass the test's ``VirtualClock``).
    - ``host``/``port``: where to listen (default 127.0.0.1 and a free port). An IPv6
      literal (``::1``, or ``[::1]``) is bracketed in :attr:`host` and the URLs.
    - ``ssl``: an ``ssl.SSLContext`` with the server certificate: serves https/wss.
    - ``plan``: a :class:`FaultPlan` (or a list of its rules: seed 0) to apply from the start;
      anything else is a :class:`~le_transport.errors.ConfigurationError`.
    - ``epoch``: Unix time at clock 0, for ``GetClock``, JWT ``iat``/``exp`` and the OAuth1
      timestamp check (see :attr:`wall_clock`). Default: the clock's own, when it has a
      ``wall()`` (a :class:`~le_transport.testing.VirtualClock`: ``clock.wall() -
      clock.now()``, so the simulator's date is the one an engine on that clock reads); else
      now.
    - ``routes``: routes of your own to serve beside LiveEngage's (:class:`SimRoute`; see
      :meth:`add_route`, which adds one).

    Each argument is checked here: a ``config`` that is not a :class:`SimulatorConfig`, a
    ``clock`` that is not a :class:`~le_transport.clock.Clock` instance (``time.monotonic``, or
    the class ``VirtualClock`` for ``VirtualClock()``), a ``host`` that is not a non-empty str
    (or holds a port: give it as ``port``), a ``port`` not an int in 0..65535, an ``ssl`` not an
    ``ssl.SSLContext``, an ``epoch`` not a finite number, or ``routes`` not a list of
    :class:`SimRoute` is a :class:`~le_transport.errors.ConfigurationError` naming it.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        clock: Clock | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl: _ssl.SSLContext | None = None,
        plan: FaultPlan | Sequence[FaultRule] | None = None,
        epoch: float | None = None,
        routes: Sequence[SimRoute] = (),
    ) -> None:
        # Each checked here, by name: a wrong kind failed later, as an AttributeError at the
        # first token (a clock's class), at start() (a host or port) or on the first request.
        require_kind(config, SimulatorConfig, owner="Simulator", field="config")
        require_kind(ssl, _ssl.SSLContext, owner="Simulator", field="ssl")
        host = _host_arg(host)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigurationError(
                f"Simulator.port must be an int in 0..65535 (0: a free port), got {port!r:.40}"
            )
        if epoch is not None and not finite_number(epoch):
            raise ConfigurationError(
                "Simulator.epoch must be None or a finite number of Unix seconds, got "
                f"{epoch!r:.40}"
            )
        if isinstance(routes, (str, bytes, SimRoute)) or not isinstance(routes, Sequence):
            raise ConfigurationError(
                f"Simulator.routes must be a list of SimRoute, got {type(routes).__name__}"
            )
        self.config = config or SimulatorConfig()
        self.clock: Clock = (
            RealClock() if clock is None else require_clock(clock, owner="Simulator")
        )
        # Bound without brackets, shown with them (host, url, socket URLs).
        self._bind_host = host
        self._port = port
        self._ssl = ssl
        self._routes: list[SimRoute] = []
        #: While it runs: the custom routes by the aiohttp route serving each.
        self._served: dict[web.AbstractRoute, SimRoute] = {}
        # Time windows in the plan count from the simulator's creation.
        self.faults = SimFaults(plan, origin=self.clock.now(), max_records=self.config.max_records)
        if epoch is None:
            # The clock's own date when it has one (a VirtualClock's wall): an engine and its
            # token providers on the same clock read it too, and so agree with the simulator's
            # tokens and its timestamp check however far virtual time runs.
            date = wall_of(self.clock)()
            if not finite_number(date) or not finite_number(date - self.clock.now()):
                raise ConfigurationError(
                    f"Simulator: the clock's wall() gave no finite Unix time ({date!r:.40}); "
                    "pass epoch= (Unix seconds at clock 0)"
                )
            epoch = date - self.clock.now()
        self.tokens = TokenStore(self.clock, epoch, max_nonces=self.config.max_records)
        self.sockets = SocketHub(self)
        #: The requests received, in order: the newest ``config.max_records`` of them (reads
        #: as a list: ``len``, ``[-1]``, slices; :attr:`records_dropped` counts older ones).
        self.requests: RecordLog[RecordedRequest] = RecordLog(
            self.config.max_records, name="simulator requests"
        )
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        # start() and stop() one at a time (two starts at once made two listeners), on the
        # loop they run on: made again for another loop (a simulator started again there).
        self._lifecycle: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        #: The custom routes' WebSockets being served (their handlers running).
        self._custom_sockets: set[CustomSocket] = set()
        self.starts = 0
        for route in routes:
            if not isinstance(route, SimRoute):
                raise ConfigurationError(
                    f"Simulator.routes must hold SimRoute values, got {type(route).__name__}"
                )
            self._add(route)

    # -- addresses -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port it listens on (known once started)."""
        if not self._port:
            raise RuntimeError("the simulator is not started")
        return self._port

    @property
    def host(self) -> str:
        """``127.0.0.1:port`` (``[::1]:port`` on IPv6): what a domain provider should answer
        for every service."""
        return f"{_bracketed(self._bind_host)}:{self.port}"

    @property
    def wall_clock(self) -> Callable[[], float]:
        """The simulator's wall clock: Unix seconds as its clock sees them (``epoch +
        clock.now()``), by which it dates its JWTs (``iat``, ``exp``), answers ``GetClock``
        and checks OAuth1 timestamps. On a :class:`~le_transport.testing.VirtualClock` (and
        no ``epoch`` given) it is the clock's :meth:`~le_transport.testing.VirtualClock.wall`,
        which an engine on that clock uses already; pass it as ``wall_clock=`` to a provider or
        engine that runs on another clock."""
        return self.tokens.epoch_now

    @property
    def scheme(self) -> str:
        """``https`` with TLS, else ``http``."""
        return "https" if self._ssl is not None else "http"

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:41234``."""
        return f"{self.scheme}://{self.host}"

    @property
    def ws_scheme(self) -> str:
        """``wss`` with TLS, else ``ws``."""
        return "wss" if self._ssl is not None else "ws"

    @property
    def services(self) -> tuple[str, ...]:
        """Every service name it answers for: LiveEngage's (:data:`SERVICES`), then those of
        the custom routes (:meth:`add_route`'s ``service``), in the order they were added."""
        custom = (r.service for r in self._routes if r.service is not None)
        return tuple(dict.fromkeys((*SERVICES, *custom)))

    @property
    def domains(self) -> dict[str, str]:
        """``{service: host}`` for every service (:attr:`services`, custom routes' included),
        for ``Engine(sim.domains)``."""
        return dict.fromkeys(self.services, self.host)

    @property
    def account(self) -> Account:
        """The first (default) account."""
        return self.config.accounts[0]

    def brand_socket_url(self, bearer: str, account: str | None = None) -> str:
        """The UMS agent socket URL (it holds the bearer: never log it unredacted)."""
        acc = account or self.account.id
        return f"{self.ws_scheme}://{self.host}/ws_api/account/{acc}/messaging/brand/{bearer}?v=2.1"

    def consumer_socket_url(self, account: str | None = None) -> str:
        """The consumer socket URL."""
        acc = account or self.account.id
        return f"{self.ws_scheme}://{self.host}/ws_api/account/{acc}/messaging/consumer?v=3"

    # -- lifecycle -------------------------------------------------------------------------

    def _lifecycle_lock(self) -> asyncio.Lock:
        """The lock :meth:`start` and :meth:`stop` take, for the running loop."""
        loop = asyncio.get_running_loop()
        if self._lifecycle is None or self._lifecycle[0] is not loop:
            self._lifecycle = (loop, asyncio.Lock())
        return self._lifecycle[1]

    async def start(self) -> None:
        """Start listening (on the same port as before, after a :meth:`stop`). A call while
        another is starting it waits for that one, and finds it started. It may be started
        again on another event loop once stopped (an ``asyncio.run`` per phase)."""
        async with self._lifecycle_lock():
            await self._start()

    async def _start(self) -> None:
        if self._runner is not None:
            return
        self._closing = asyncio.Event()
        # handler_cancellation: a hang ends when its client gives up, not at shutdown.
        # logger: aiohttp's, but for its error re-reading a body the simulator answered 400
        # (_UnreadableBodyFilter). Not lingering_time=0, which would skip that re-read: a
        # connection whose body a handler left unread would then close under a keep-alive
        # answer, and the client's next request on it meet a reset.
        runner = web.AppRunner(
            self._app(),
            access_log=None,
            shutdown_timeout=1.0,
            handler_cancellation=True,
            logger=_server_log,
        )
        await runner.setup()
        site = web.TCPSite(
            runner, self._bind_host, self._port, ssl_context=self._ssl, reuse_address=True
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]
        self.starts += 1
        _log.info("simulator listening on %s", self.url, extra={"port": self._port})

    async def stop(self) -> None:
        """Stop listening: open sockets are dropped (the simulator's own and those of custom
        routes, a close under way included), hanging and delayed requests end. The port,
        sessions and fault counters are kept, so :meth:`start` resumes where it was."""
        async with self._lifecycle_lock():
            runner, self._runner = self._runner, None
            if runner is None:
                return
            self._closing.set()
            await self.sockets.drop_all()
            for custom in list(self._custom_sockets):
                custom.drop()
            await runner.cleanup()
        _log.info("simulator stopped", extra={"port": self._port})

    async def restart(self, down_for: float = 0.0) -> None:
        """Stop, stay down for ``down_for`` seconds of the clock, start on the same port.

        ``down_for`` must be a finite number >= 0, else a
        :class:`~le_transport.errors.ConfigurationError`, raised before anything stops."""
        if not finite_number(down_for) or down_for < 0:
            raise ConfigurationError(
                "Simulator.restart down_for must be a finite number of seconds >= 0, got "
                f"{down_for!r:.40}"
            )
        await self.stop()
        if down_for > 0:
            await self.clock.sleep(down_for)
        await self.start()

    @property
    def running(self) -> bool:
        """Whether it is listening."""
        return self._runner is not None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- test controls ---------------------------------------------------------------------

    async def expire_tokens(self, *, close_sockets: bool = True) -> None:
        """Every bearer and JWT expires now; open sockets are closed with 4401 (LiveEngage's
        "token expired"), unless ``close_sockets`` is False."""
        self.tokens.expire_all()
        if close_sockets:
            await self.sockets.close_all(4401, "token expired")

    def count(self, method: str | None = None, path: str = "*") -> int:
        """How many recorded requests match ``method`` and the glob ``path`` (redacted form).

        It counts the requests still kept in :attr:`requests`, the newest
        ``config.max_records``: once :attr:`records_dropped` is above 0, older requests are no
        longer counted (a total per path would itself grow without bound: any path can be
        sent). ``sim.requests.total`` (kept plus dropped) is the exact number received since
        the start (or the last ``sim.requests.clear()``)."""
        m = Match(method=method, path=path)
        return sum(1 for r in self.requests if m.matches(r.method, r.path))

    @property
    def records_dropped(self) -> int:
        """How many of the oldest requests :attr:`requests` dropped to keep its bound."""
        return self.requests.dropped

    # -- custom routes ---------------------------------------------------------------------

    def add_route(
        self,
        method: str,
        path: str,
        handler: RouteHandler,
        *,
        service: str | None = None,
        auth: bool = False,
    ) -> SimRoute:
        """Serve ``handler`` for ``method path`` on the simulator, beside LiveEngage's routes,
        from the next :meth:`start` on (add routes before it, or while the simulator is
        stopped).

        The route is one of the simulator's own as far as the rest goes: the fault plan's
        rules (unit ``request``, matched on method, path and ``service``) strike it as they
        strike the built-in routes, with the same kinds (a 5xx, a reset, a slow body ...);
        every request to it is recorded in :attr:`requests` (with its ``service``); with
        ``auth=True`` the credentials the simulator's REST resources take are checked for the
        ``{account}`` in the path, and a request without them is answered 401 without reaching
        ``handler``. ``service`` (any name: ``"myService"``) joins :attr:`services`, so
        :attr:`domains` and the Domain API point it at the simulator: ``Engine(sim.domains)``
        resolves it with the rest. Built-in routes are matched first; custom ones in the order
        they were added.

        A handler that upgrades to a WebSocket gets the plan's socket faults as the UMS socket
        does (:mod:`.custom_ws`): a ``ws_session`` rule, matched on ``GET``, the path and
        ``service``, is decided before the handler runs (``WsRejectHandshake`` answers without
        calling it, ``Delay`` calls it later; ``WsClose``/``WsDrop``/``WsSilence`` strike as the
        client's ``after_messages``-th frame arrives); a ``ws_message`` rule strikes each
        request frame the client sends (``{"kind": "req", ...}``, matched on its ``type``:
        ``WsAppError``/``Status`` answer it in the handler's place, ``Hang`` loses it) and each
        text frame the handler sends (``WsDelay``, ``WsDropMessage``). The handler's own
        ``web.WebSocketResponse`` is wrapped for this; its code is unchanged. Such a socket is
        not one of :attr:`sockets` (the simulator's own). The session being decided before the
        handler runs, an upgrade the handler refuses itself spends a rule's turn (the
        client-side injector decides once the server accepted).

        With the pytest plugin, whose ``le_simulator`` is already running in a test, routes are
        given by overriding the ``le_simulator_routes`` fixture.

        Refused with a :class:`~le_transport.errors.ConfigurationError`: a bad field (see
        :class:`SimRoute`: a path not starting with ``/``, a handler that is not an async
        function, ``auth=True`` without ``{account}`` in the path), a route added while the
        simulator runs, a second route for the same method and path, and a path that a
        built-in route of the same method could also match (the built-in one would answer; a
        variable whose regex may match a ``/``, as ``{rest:.*}``, stands for one segment or
        more).

        Example::

            async def widgets(request: web.Request) -> web.Response:
                return web.json_response({"widgets": [], "account": request.match_info["account"]})

            sim = Simulator(clock=clock)
            sim.add_route("GET", "/api/account/{account}/widgets", widgets, service="widgets")
            sim.faults.script("GET", "/api/*/widgets", [503, 503])  # then served
            async with sim, Engine(sim.domains, scheme="http", clock=clock) as engine:
                body = await engine.request_json(
                    "GET", "widgets", f"/api/account/{sim.account.id}/widgets"
                )
            assert sim.count("GET", "/api/*/widgets") == 3
        """
        return self._add(SimRoute(method, path, handler, service=service, auth=auth))

    @property
    def routes(self) -> tuple[SimRoute, ...]:
        """The custom routes, in the order they were added."""
        return tuple(self._routes)

    def _add(self, route: SimRoute) -> SimRoute:
        where = f"{route.method} {route.path[:80]}"
        if self.running:
            raise ConfigurationError(
                f"Simulator.add_route({where}): the simulator is running, and its routes were "
                "set when it started: add routes before start() (or while it is stopped; an "
                "engine built meanwhile keeps the domains it was given). With the pytest "
                "plugin, override the le_simulator_routes fixture to return SimRoute values"
            )
        for method, path, _, name in _BUILTIN_ROUTES:
            if _methods_overlap(route.method, method) and _overlaps(route.path, path):
                raise ConfigurationError(
                    f"Simulator.add_route({where}) collides with the built-in route "
                    f"{method} {path} ({name}), which would answer first: pick another path"
                )
        for known in self._routes:
            if known.method == route.method and known.path == route.path:
                raise ConfigurationError(
                    f"Simulator.add_route({where}): there is a route for it already"
                )
        self._routes.append(route)
        return route

    def _custom_handler(self, route: SimRoute) -> Handler:
        """``route``'s handler, with the plan's socket faults on a WebSocket it opens, behind
        the credentials check when it asks for one."""
        handler = self._socket_faults_around(route)
        if not route.auth:
            return handler

        async def guarded(request: web.Request) -> web.StreamResponse:
            acc = self._account(request)
            # The body too: an OAuth 1.0 signature covers a form's fields (read once, cached
            # for the handler).
            body = await request.read()
            if acc is None or self._authorize(request, acc.id, body) is None:
                return self._unauthorized()
            return await handler(request)

        return guarded

    def _socket_faults_around(self, route: SimRoute) -> Handler:
        """``route``'s handler, with an upgrade request's session decided first (as the
        simulator's own sockets are, after the credentials check) and the WebSocket the
        handler opens wrapped with the plan's socket faults (:mod:`.custom_ws`)."""
        handler = route.handler
        where = f"{route.method} {route.path}"

        async def serve(request: web.Request) -> web.StreamResponse:
            if not _is_upgrade(request):
                return await handler(request)
            fault = await self._session_fault(request, route.service)
            if isinstance(fault, web.Response):
                return fault
            custom = CustomSocket(self, request, fault, name=where[:80])
            request[CUSTOM_SOCKET_KEY] = custom
            # Known to stop(), which drops it as it drops the simulator's own sockets.
            self._custom_sockets.add(custom)
            try:
                try:
                    answer = await handler(request)
                except BaseException:
                    await custom.finish(flush=False)  # failed or cancelled (a stop): forgotten
                    raise
                await custom.finish()  # returned: what is held still goes out, when due
            finally:
                self._custom_sockets.discard(custom)
            return answer

        return serve

    # -- the app ---------------------------------------------------------------------------

    def _app(self) -> web.Application:
        # The unreadable body's first: it answers for whatever below it reads the body (a
        # handler, the credentials check, the gateway's signature check under a 5xx fault).
        app = web.Application(
            middlewares=[self._unreadable_body_middleware, self._fault_middleware]
        )
        app[_SIM_KEY] = self
        # Finds the WebSocket a custom route's handler prepares (CustomSocket.attach), and an
        # answer a handler streams under a body fault (BodyCut.attach).
        app.on_response_prepare.append(self._on_prepare)
        r = app.router
        for method, path, handler, name in _BUILTIN_ROUTES:
            serve: Handler = getattr(self, handler)
            if method == "GET":
                r.add_get(path, serve, name=name)  # and HEAD
            else:
                r.add_route(method, path, serve, name=name)
        # After the built-in ones, through the same middleware: faults, records and all.
        self._served = {
            r.add_route(route.method, route.path, self._custom_handler(route)): route
            for route in self._routes
        }
        return app

    # -- recording and faults --------------------------------------------------------------

    @web.middleware
    async def _unreadable_body_middleware(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        """A request whose body cannot be read as sent (not in the ``Content-Encoding`` it
        declares: gzip that is not gzip, zlib for raw deflate; a broken chunked encoding) is
        answered 400, as LiveEngage answers a request it cannot read: the client's mistake.

        aiohttp raises :class:`~aiohttp.web.RequestPayloadError` to whatever reads the body
        (the Login Service, the idp, the Engagement History search, a custom route's
        credentials check, the gateway's OAuth 1.0 check). Uncaught it was a 500, logged at
        ERROR with a traceback, and an engine retried an idempotent call three times (5, 10,
        15 s) as a server fault, although it could never pass. The connection is closed after
        the answer (``Connection: close``): aiohttp closes it once it meets the error again,
        and a client that kept it for its next request would meet that close instead."""
        try:
            response = await handler(request)
        except web.RequestPayloadError as exc:
            cause = exc.__cause__
            _log.debug(
                "%s %s: its body could not be read (%s): answered 400",
                request.method,
                redact_url(request.rel_url.with_query(None)),
                type(cause if cause is not None else exc).__name__,
            )
            answer = web.json_response(
                {
                    "error": "the request body could not be read (not in the Content-Encoding "
                    "or Transfer-Encoding it declares)"
                },
                status=400,
            )
            answer.force_close()
            return answer
        except HttpProcessingError as exc:
            # Raised by a handler (aiohttp's multipart or line reader inside it), not by the
            # parser: a 500 of the simulator's own, which must reach ERROR. Re-raised as
            # such, so that _UnreadableBodyFilter, which drops the parser's refusals (their
            # message holds a raw header line), lets it through.
            # Its text is a raw line of the request as received (a body's client_secret, as
            # like as not): the frames are kept, the text is not.
            _log.error(
                "%s %s: a handler raised aiohttp's %s (its text, a raw line of the request, not "
                "shown): answered 500",
                request.method,
                redact_url(request.rel_url.with_query(None)),
                type(exc).__name__,
                exc_info=(RuntimeError, RuntimeError(type(exc).__name__), exc.__traceback__),
            )
            answer = web.json_response({"error": "internal error"}, status=500)
            answer.force_close()
            return answer
        broken = isinstance(request.content.exception(), web.RequestPayloadError)
        if broken and not response.prepared:
            # A body the handler never read, broken all the same: aiohttp closes the connection
            # after the answer, which must not invite the client to keep it.
            response.force_close()
        return response

    @web.middleware
    async def _fault_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route
        name = route.name or ""
        custom = self._served.get(route)
        # A built-in route's service is its name's prefix; the Domain API's is "csds", as the
        # engine names its own calls to it (the client-side injector matches on that too).
        service = custom.service if custom is not None else name.split(".", 1)[0] or None
        path = redact_url(request.rel_url.with_query(None))
        # An upgrade has no body to cut or pace: a rule of those kinds does not match it (not
        # counted, not logged), so its turn goes to the next request it can strike. A custom
        # route's handler may upgrade too.
        upgrade = (name in _SOCKET_ROUTES or custom is not None) and _is_upgrade(request)
        # The same kinds as the client-side injector applies to an upgrade (UPGRADE_FAULTS: a
        # second answer written on the upgraded connection would fail too).
        kinds = UPGRADE_FAULTS if upgrade else HTTP_FAULTS
        forced = request.headers.get(FAULT_HEADER) if self.config.fault_header else None
        if forced:
            injection = None
            if not any(rule.id == forced for rule in self.faults.plan.rules):
                # A typo in a test's header would otherwise take the request out of the plan
                # without a word. The value is a test's text (a rule id), shown cut and escaped.
                _log.warning(
                    "the %s header names no rule of the plan (%s): nothing is forced on %s %s, "
                    "and the request is not put to the plan either",
                    FAULT_HEADER,
                    _shown_rule_id(forced),
                    request.method,
                    path,
                    extra={"fault_header": True},
                )
            # Checked first: force() logs the rule as forced, whether or not it can apply here.
            elif (forced_kind := self._forced_kind(forced)) in kinds:
                injection = self.faults.run.force(
                    forced,
                    unit="request",
                    method=request.method,
                    path=request.path,
                    at=self.clock.now(),
                )
            else:
                # A rule of the plan that cannot strike this request: said, as a typo is.
                _log.warning(
                    "the %s header names rule %s, %s: nothing is forced on %s %s, and the "
                    "request is not put to the plan's request rules either",
                    FAULT_HEADER,
                    _shown_rule_id(forced),
                    "which injects no fault (its sequence holds none)"
                    if forced_kind is None
                    else f"whose {forced_kind} cannot strike "
                    + ("a WebSocket upgrade" if upgrade else "an HTTP request"),
                    request.method,
                    path,
                    extra={"fault_header": True},
                )
        else:
            injection = self.faults.run.decide(
                "request",
                method=request.method,
                path=request.path,
                service=service,
                at=self.clock.now(),
                kinds=kinds,
            )
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=path,
                query={k: v for k, v in URL(redact_url(request.rel_url)).query.items()},
                headers=redact_headers(request.headers.items()),
                at=self.clock.now(),
                service=service,
                fault=None if injection is None else injection.fault.kind,
                rule_id=None if injection is None else injection.rule_id,
            )
        )
        if injection is None:
            return await handler(request)
        fault = injection.fault
        # The rule id is a plan file's text: escaped, it cannot start a log line of its own.
        rule = _printable(injection.rule_id)
        _log.debug(
            "injecting %s on %s %s (rule %s, unit %d)",
            fault.kind,
            request.method,
            path,
            rule,
            injection.index,
            extra={"rule": rule, "fault": fault.kind},
        )
        if isinstance(fault, Status):
            if fault.code >= 500 and not await self._gateway_passes(request):
                return self._unauthorized()
            return web.Response(
                status=fault.code,
                body=fault.response_body(),
                headers=fault.response_headers(),
                # Header names are case-insensitive: a "content-type" of the fault's is its
                # Content-Type (aiohttp refuses a content_type beside one).
                content_type=None if fault.has_header("Content-Type") else "application/json",
            )
        if isinstance(fault, Quota):
            assert injection.retry_after is not None
            return web.Response(
                status=fault.status,
                body=fault.response_body(),
                headers={"Retry-After": str(injection.retry_after)},
                content_type="application/json",
            )
        if isinstance(fault, Delay):
            if not await self._pause(injection.delay_s):
                return self._ended_by_stop(request)
            return await handler(request)
        if isinstance(fault, SlowBody):
            # An answer the handler streams itself is paced as it is written (BodyPace).
            pace = BodyPace(
                fault.chunk_bytes, fault.chunk_delay_ms / 1000.0, self._pause, request=request
            )
            request[BODY_PACE_KEY] = pace
            raised: web.HTTPException | None = None
            try:
                real = await handler(request)
            except web.HTTPException as exc:
                # An answer raised (a custom handler's, the 404 of a path no route serves) is
                # an answer like any other: paced, as the client-side injector paces it.
                if pace.attached:
                    raise
                real = raised = exc
            finally:
                pace.armed = False
            if pace.attached:
                return real
            paced = await self._dribble(request, real, fault)
            if paced is raised:
                raise raised  # nothing to pace (no body): aiohttp sends it as it would
            return paced
        if isinstance(fault, MalformedBody):
            return await self._malformed(request, handler, fault, upgrade=upgrade)
        transport = request.transport
        if isinstance(fault, Reset):
            if transport is not None:
                _reset(transport)
            return web.Response(status=500)
        if isinstance(fault, EmptyResponse):
            if transport is not None:
                transport.close()
            return web.Response(status=500)
        if isinstance(fault, Hang):
            await self._hang(fault)
            if transport is not None:
                transport.close()
            return web.Response(status=500)
        if isinstance(fault, TruncatedBody):
            return await self._truncated(request, handler, fault)
        raise AssertionError(f"unhandled fault {fault!r}")  # pragma: no cover

    async def _run_cut(
        self, request: web.Request, handler: Handler, keep: int | None, *, kind: str
    ) -> tuple[web.StreamResponse | None, BodyCut]:
        """Run ``handler`` with the answer it may stream itself cut (:mod:`.body_cut`:
        ``keep`` bytes of it, or every byte when None), under a fault of ``kind``. Returns its
        answer (a ``web.HTTPException`` it raised is one), or None if its streamed answer was
        cut before its headers, or if it raised anything else and the fault replaces the
        answer (``malformed_body``) or had cut it already; else that exception propagates."""
        cut = BodyCut(request, keep)
        request[BODY_CUT_KEY] = cut
        try:
            return await handler(request), cut
        except web.HTTPException as exc:
            if cut.attached:
                return None, cut
            return exc, cut  # an answer like any other (a 404 raised), reworked as one
        except AnswerCut:
            return None, cut
        except Exception as exc:
            if kind != "malformed_body" and not cut.attached:
                raise
            # The request was processed; its answer is replaced (or was cut) all the same.
            # The exception's type only: its text may hold what the handler was given.
            _log.debug(
                "the handler of %s %s raised %s under an injected %s: its answer replaced",
                request.method,
                redact_url(request.rel_url.with_query(None)),
                type(exc).__name__,
                kind,
            )
            return None, cut
        finally:
            cut.armed = False

    async def _truncated(
        self, request: web.Request, handler: Handler, fault: TruncatedBody
    ) -> web.StreamResponse:
        """The real answer's status, headers and cookies, and its first ``keep_bytes`` bytes of
        body, then the connection closed (a Content-Length announcing more). An answer the
        handler streams itself is cut as it goes (:mod:`.body_cut`); an answer with no body
        (to a HEAD, a 1xx, 204 or 304) is cut before its headers, as the client-side injector
        cuts it."""
        transport = request.transport
        real, cut = await self._run_cut(request, handler, fault.keep_bytes, kind=fault.kind)
        if real is None or cut.attached or real.prepared:
            await cut.finish()  # the answer it cut, if not ended: its kept bytes first
            if transport is not None:
                transport.close()  # cut already, or as it ended; this closes the rest
            return real if real is not None and real.prepared else web.Response(status=500)
        if bodiless(request.method, real.status):
            # Nothing to cut after the headers: cut before them, as the injector does.
            await _discard(real)
            if transport is not None:
                transport.close()
            return web.Response(status=500)
        if isinstance(real, web.Response) and real.compression:
            # Its handler's enable_compression(): sent as aiohttp compresses it, cut on the wire.
            return await _shaped_compressed(request, real, BodyCut(request, fault.keep_bytes))
        if isinstance(real, web.FileResponse):
            # Its file is cut as aiohttp sends it: its status and headers as aiohttp makes them.
            file_cut = BodyCut(request, fault.keep_bytes)
            shaped = await _shaped_file(request, real, file_cut)
            if shaped is not None:
                return shaped
        body = real.body if isinstance(real, web.Response) else b""
        if isinstance(body, Payload):
            # Streamed through the cut as it is written (it may not end: a stream held open).
            return await _shaped_payload(request, real, body, BodyCut(request, fault.keep_bytes))
        # A bytearray too (aiohttp keeps one as it was given): its bytes, not an empty body.
        data = bytes(body) if isinstance(body, (bytes, bytearray)) else b""
        resp = web.StreamResponse(status=real.status, reason=real.reason, headers=real.headers)
        # The cookies too: aiohttp writes a response's cookies into its headers only when
        # it is sent, so real.headers does not hold them (the login's Session_id).
        for name, morsel in real.cookies.items():
            resp.cookies[name] = morsel
        kept = data[: fault.keep_bytes]
        # The whole body's length, or one byte more than it when all of it is kept (as the
        # injector announces it): never keep_bytes + 1, which may be a terabyte.
        resp.content_length = max(len(data), len(kept) + 1)
        await resp.prepare(request)
        await resp.write(kept)
        if transport is not None:
            transport.close()
        return resp

    async def _malformed(
        self, request: web.Request, handler: Handler, fault: MalformedBody, *, upgrade: bool
    ) -> web.StreamResponse:
        """``fault``'s answer in place of the real one: the request is processed first (its
        handler runs, its side effects happen, as the client-side injector's sends it), then
        its answer is thrown away, whether the handler returned it or raised (an exception of
        the handler's is logged at DEBUG, by type). An upgrade is answered without running the
        handler: its real answer would be the socket (the injector does not send it either).

        An answer the handler streams itself (prepares) is on its way before it returns, and
        cannot be replaced: it is cut instead (:mod:`.body_cut`: its status and headers, its
        body short of what its headers announce, then the connection closed), so the client
        still meets a broken answer, as the fault's count says."""
        if not upgrade:
            real, cut = await self._run_cut(request, handler, None, kind=fault.kind)
            if cut.attached or (real is not None and real.prepared):
                await cut.finish()  # the answer it cut, if not ended: its bytes first
                transport = request.transport
                if transport is not None:
                    transport.close()
                return real if real is not None and real.prepared else web.Response(status=500)
            await _discard(real)
        # As bytes: ``text=`` would add "; charset=utf-8", which the injector's does not say.
        return web.Response(
            status=fault.code, body=fault.body.encode(), content_type="application/json"
        )

    def _forced_kind(self, rule_id: str) -> str | None:
        """The kind of fault :meth:`FaultRun.force` would inject for rule ``rule_id`` (its
        fault, or its sequence's first), or None if it would inject nothing."""
        rule = next((r for r in self.faults.plan.rules if r.id == rule_id), None)
        if rule is None:
            return None
        fault = rule.fault
        if fault is None and rule.sequence is not None:
            fault = next((f for f in rule.sequence if f is not None), None)
        return None if fault is None else fault.kind

    async def _gateway_passes(self, request: web.Request) -> bool:
        """Whether LiveEngage's gateway lets an OAuth 1.0 request through to the service.

        A 5xx comes from behind the gateway, which has checked the signature and spent the
        nonce by then: a client that retries with the same nonce meets a 401, as it would on
        LiveEngage. Requests not signed with OAuth 1.0 pass (their services check them).
        """
        header = request.headers.get(hdrs.AUTHORIZATION, "")
        if header.partition(" ")[0].lower() != "oauth":
            return True
        account = request.match_info.get("account")
        if account is None:
            return True
        return self._verify_oauth1(request, account, header, await request.read())

    async def _dribble(
        self, request: web.Request, real: web.StreamResponse, fault: SlowBody
    ) -> web.StreamResponse:
        """Send ``real``'s status and headers now and its body in pieces, pausing between them
        on the simulator's clock. An answer with no body on the wire (to a HEAD, a 204 or 304)
        has nothing to dribble: it goes out as it would without the fault (aiohttp sends a
        HEAD's headers, its Content-Length the body a GET would get, and no body; a 204 or 304
        without a Content-Length), as the client-side injector hands it on."""
        if bodiless(request.method, real.status):
            return real
        if isinstance(real, web.Response) and real.compression:
            # Its handler's enable_compression(): sent as aiohttp compresses it, paced.
            pace = BodyPace(
                fault.chunk_bytes, fault.chunk_delay_ms / 1000.0, self._pause, request=request
            )
            return await _shaped_compressed(request, real, pace)
        if isinstance(real, web.FileResponse):
            # Its file is paced as aiohttp sends it (past write, with sendfile, otherwise).
            pace = BodyPace(
                fault.chunk_bytes, fault.chunk_delay_ms / 1000.0, self._pause, request=request
            )
            shaped = await _shaped_file(request, real, pace)
            if shaped is not None:
                return shaped
        body = real.body if isinstance(real, web.Response) else None
        if isinstance(body, Payload):
            # Paced as it is written (it may not end: a stream held open).
            pace = BodyPace(
                fault.chunk_bytes, fault.chunk_delay_ms / 1000.0, self._pause, request=request
            )
            return await _shaped_payload(request, real, body, pace)
        if not isinstance(body, (bytes, bytearray)):
            # A streamed answer (a socket upgrade) is sent as it is.
            return real
        body = bytes(body)  # a bytearray too (aiohttp keeps one as it was given): paced
        resp = _head_of(real)
        resp.content_length = len(body)
        pause = fault.chunk_delay_ms / 1000.0
        try:
            await resp.prepare(request)
            for i, piece in enumerate(fault.pieces(body)):
                if i and not await self._pause(pause):
                    break  # shutting down: the client sees the body cut short
                await resp.write(piece)
            else:
                await resp.write_eof()
        except ConnectionError:
            pass  # the client gave up mid-body (its attempt timeout, most likely)
        return resp

    async def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` on the clock; False if the simulator began stopping meanwhile."""
        if seconds <= 0:
            return not self._closing.is_set()
        with contextlib.suppress(TimeoutError):
            async with timeout_after(self.clock, seconds):
                await self._closing.wait()
        return not self._closing.is_set()

    def _ended_by_stop(self, request: web.Request) -> web.Response:
        """The answer to a request whose fault was waiting when the simulator began stopping:
        none, its connection closed (as a hanging request's is), at once rather than at
        aiohttp's shutdown timeout."""
        transport = request.transport
        if transport is not None:
            transport.close()
        return web.Response(status=500)

    async def _hang(self, fault: Hang) -> None:
        seconds = None if fault.duration_ms is None else fault.duration_ms / 1000.0
        with contextlib.suppress(TimeoutError):
            async with timeout_after(self.clock, seconds):
                await self._closing.wait()

    # -- helpers ---------------------------------------------------------------------------

    def _public_host(self, request: web.Request) -> str:
        """The authority the client addressed: ``public_address`` if set, else the Host
        header's; for an absolute-form target (``GET http://h:p/x``, as a proxy forwards), the
        target's own authority, port and brackets included (aiohttp's ``request.host`` then
        keeps neither)."""
        if self.config.public_address:
            return self.config.public_address
        target = request.raw_path
        if not target.startswith("/"):
            try:
                # (Never a userinfo: "user:pw@" echoed as every service's host.)
                authority = URL(target, encoded=True).raw_authority.rpartition("@")[2]
            except ValueError:
                authority = ""
            if authority:
                return authority
        # (Never a userinfo from the Host header either.)
        return (request.host or self.host).rpartition("@")[2]

    def _account(self, request: web.Request) -> Account | None:
        return self.config.account(request.match_info["account"])

    def _base_uris(self, request: web.Request, account: str) -> list[dict[str, str]]:
        host = self._public_host(request)
        return [{"service": s, "account": account, "baseURI": host} for s in self.services]

    async def _json_body(self, request: web.Request) -> dict[str, Any] | None:
        """The body as a JSON object, or None for anything else (the caller answers 4xx).

        ValueError: not JSON (``NaN``, ``Infinity`` and numbers too large for a float included:
        :func:`~le_transport._json.loads_strict`), not in its charset (UnicodeDecodeError).
        LookupError: a charset Python does not know (``charset=bogus``). RecursionError: nested
        past the parser's limit. Uncaught, each was a 500 with an ERROR traceback from
        aiohttp."""
        try:
            # Strict: json.loads takes NaN, Infinity and 1e400 (as inf), which are not JSON
            # (LiveEngage's Java side refuses them); taken, a NaN reached a comparison.
            body = await request.json(loads=loads_strict)
        except (ValueError, LookupError, RecursionError):
            return None
        return body if isinstance(body, dict) else None

    def _authorize(self, request: web.Request, account: str, body: bytes = b"") -> str | None:
        """Who the request is from (``user``/``app``/``sentinel``), or None if unauthorised."""
        header = request.headers.get(hdrs.AUTHORIZATION, "")
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer" and value:
            if self.tokens.valid_session(value, account) is not None:
                return "user"
            if self.tokens.valid_jwt(value, account, "sentinel") is not None:
                return "sentinel"
            return None
        if scheme == "oauth":
            return "app" if self._verify_oauth1(request, account, header, body) else None
        if scheme == "liveperson":
            key = value.partition("=")[2] if value.lower().startswith("appkey=") else ""
            acc = self.config.account(account)
            if acc is not None and any(k.key == key for k in acc.app_keys):
                return "app"
        return None

    def _app_key_header(self, request: web.Request, account: str) -> bool:
        """Whether the request carries ``Authorization: LivePerson appKey=<key>`` with one of
        ``account``'s app keys (the Server Chat API's credential)."""
        scheme, _, value = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        value = value.strip()
        if scheme.lower() != "liveperson" or not value.lower().startswith("appkey="):
            return False
        key = value.partition("=")[2]
        acc = self.config.account(account)
        return acc is not None and bool(key) and any(k.key == key for k in acc.app_keys)

    def _verify_oauth1(self, request: web.Request, account: str, header: str, body: bytes) -> bool:
        acc = self.config.account(account)
        if acc is None:
            return False
        try:
            params = oauth1.parse_oauth_header(header)
        except oauth1.OAuth1Error:
            return False
        if params.get("oauth_signature_method") != "HMAC-SHA1":
            return False
        if params.get("oauth_version", "1.0") != "1.0":
            return False  # RFC 5849 §3.1: OPTIONAL, and if present MUST be "1.0"
        key = next(
            (
                k
                for k in acc.app_keys
                if k.key == params.get("oauth_consumer_key")
                and k.access_token == params.get("oauth_token")
            ),
            None,
        )
        if key is None:
            return False
        stamp = params.get("oauth_timestamp", "")
        if not _is_decimal(stamp):
            return False  # RFC 5849 §3.3: a positive integer, in decimal
        if not params.get("oauth_nonce"):
            # RFC 5849 §3.1: REQUIRED with HMAC-SHA1 (only PLAINTEXT may omit it), and §3.3's
            # replay check has nothing to hold a request without one to.
            return False
        window = self.config.oauth1_timestamp_window
        if window is not None:
            try:
                skew = abs(int(stamp) - self.tokens.epoch_now())
            except (ValueError, OverflowError):
                return False  # more digits than int() converts, or than a float holds
            if skew > window:
                return False
        extra: list[tuple[str, str]] = list(request.rel_url.query.items())
        # aiohttp's parse of the header: the media type lower-cased, the charset if named.
        if request.content_type == "application/x-www-form-urlencoded" and body:
            from urllib.parse import parse_qsl

            charset = request.charset or "utf-8"
            try:
                text = body.decode(charset)
                form = parse_qsl(text, keep_blank_values=True, encoding=charset, errors="strict")
            except (LookupError, UnicodeError, ValueError):
                return False  # a gateway cannot verify a form it cannot read
            extra.extend(form)
        scheme = self.config.public_scheme or self.scheme
        # The path as it was sent (rel_url.raw_path: the request line's target, query and any
        # fragment dropped, an absolute-form target reduced to its path), never request.path,
        # which is decoded: the client signed "/users/a%2Fb", not "/users/a/b". The authority
        # as received (RFC 5849 §3.4.1.2: lower case, a default port left out, else as sent),
        # never normalised: a client that wrote, and signed, "[0:0::1]" is verified as such.
        try:
            url = oauth1.received_base_string_uri(
                scheme, self._public_host(request), request.rel_url.raw_path
            )
        except oauth1.OAuth1Error:
            return False  # a Host that is no authority ("h/x"): nothing to verify against
        if not oauth1.verify(
            method=request.method,
            url=url,
            oauth=params,
            extra_params=extra,
            consumer_secret=key.secret,
            token_secret=key.access_token_secret,
        ):
            return False
        nonce = (key.key, params.get("oauth_timestamp", ""), params.get("oauth_nonce", ""))
        if nonce in self.tokens.nonces:
            return False  # a replayed signature
        self.tokens.nonces.add(nonce)
        return True

    @staticmethod
    def _unauthorized(message: str = "Unauthorized") -> web.Response:
        return web.json_response({"error": {"message": message, "internalCode": 1}}, status=401)

    # -- Domain API ------------------------------------------------------------------------

    async def _csds_all(self, request: web.Request) -> web.Response:
        account = request.match_info["account"]
        if self._account(request) is None:
            return web.json_response({"error": f"account {account[:20]} not found"}, status=400)
        return web.json_response({"baseURIs": self._base_uris(request, account)})

    async def _csds_one(self, request: web.Request) -> web.Response:
        account = request.match_info["account"]
        service = request.match_info["service"]
        if self._account(request) is None:
            return web.json_response({"error": f"account {account[:20]} not found"}, status=400)
        if service not in self.services:
            return web.json_response({"error": "service not found"}, status=400)
        return web.json_response(
            {"service": service, "account": account, "baseURI": self._public_host(request)}
        )

    # -- Login Service ---------------------------------------------------------------------

    async def _login(self, request: web.Request) -> web.Response:
        acc = self._account(request)
        body = await self._json_body(request)
        if body is None:
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        username = body.get("username")
        if acc is None or not isinstance(username, str):
            return web.json_response({"error": "username and credentials required"}, status=400)
        kind: str | None = None
        if "password" in body:
            password = body["password"]
            if not isinstance(password, str):
                return web.json_response({"error": "password must be a string"}, status=400)
            # A known user and their password: an unknown user's is None, which a null
            # "password" once matched.
            if _same_secret(acc.users.get(username), password):
                kind = "user"
        elif "appKey" in body:
            app_key, secret = body.get("appKey"), body.get("secret")
            token, token_secret = body.get("accessToken"), body.get("accessTokenSecret")
            if any(
                k.key == app_key
                and _same_secret(k.secret, secret)
                and k.access_token == token
                and _same_secret(k.access_token_secret, token_secret)
                for k in acc.app_keys
            ):
                kind = "app"
            elif isinstance(app_key, str) and _same_secret(acc.clients.get(app_key), secret):
                kind = "oauth2"
        else:
            return web.json_response({"error": "password or appKey required"}, status=400)
        if kind is None:
            return web.json_response(
                {"error": {"message": "Authentication failed", "internalCode": 3}}, status=401
            )
        session = self.tokens.login(acc.id, username, self.config.session_ttl, kind)
        ttl_ms = int(self.config.session_ttl * 1000)
        now_ms = int(self.tokens.epoch_now() * 1000)
        resp = web.json_response(
            {
                "csrf": session.csrf,
                "wsuk": session.wsuk,
                "bearer": session.bearer,
                "sessionTTl": str(ttl_ms),
                "config": {
                    "userId": session.user_id,
                    "loginName": username,
                    "accountId": acc.id,
                    "serverCurrentTime": now_ms,
                    "isLPA": False,
                },
                "accountData": {"agentGroupsData": {"items": []}},
                "csdsCollectionResponse": {"baseURIs": self._base_uris(request, acc.id)},
            }
        )
        resp.set_cookie("Session_id", session.session_id, httponly=True, path="/")
        return resp

    def _session_from_cookie(self, request: web.Request) -> LoginSession | None:
        session_id = request.cookies.get("Session_id")
        if not session_id:
            return None
        session = self.tokens.session_by_cookie(session_id)
        if session is None or session.account != request.match_info["account"]:
            return None
        return session

    @staticmethod
    def _csrf_invalid() -> web.Response:
        return web.json_response(
            {
                "error": {
                    "message": "CSRF token invalid! Please re-login.",
                    "internalCode": 10,
                    "time": 0,
                }
            },
            status=401,
        )

    async def _refresh(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        session = self._session_from_cookie(request)
        if session is None:
            return self._unauthorized("session expired or unknown")
        if body is None or body.get("csrf") != session.csrf:
            return self._csrf_invalid()
        self.tokens.refresh(session, self.config.session_ttl)
        return web.Response(status=200)

    async def _logout(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        session = self._session_from_cookie(request)
        if session is None:
            return self._unauthorized("session expired or unknown")
        if body is None or body.get("csrf") != session.csrf:
            return self._csrf_invalid()
        self.tokens.logout(session)
        return web.Response(status=200)

    # -- OAuth2 and consumer tokens --------------------------------------------------------

    async def _app_token(self, request: web.Request) -> web.Response:
        acc = self._account(request)
        try:
            form = await request.post()
        except web.HTTPException:
            raise  # aiohttp's own answer: 413 for a body too large, 400 for too many fields
        except Exception:
            # Whatever else request.post() raises is about the body the client sent: multipart
            # that is malformed (aiohttp's InvalidHeader, whose text is the raw line: as like as
            # not the client_secret), without a boundary or nested; a form not in its charset,
            # or in one Python does not know; an unknown transfer encoding. Uncaught, it was a
            # 500, and aiohttp logged the error's text at ERROR. A 400, and nothing logged.
            return web.json_response({"error": "invalid_request"}, status=400)
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        client_id, secret = form.get("client_id"), form.get("client_secret")
        # A known client and its secret: an unknown client's is None, which a form without
        # client_secret once matched.
        if (
            acc is None
            or not isinstance(client_id, str)
            or not _same_secret(acc.clients.get(client_id), secret)
        ):
            return web.json_response({"error": "invalid_client"}, status=401)
        token = self.tokens.issue_jwt(acc.id, client_id, self.config.jwt_ttl, "sentinel")
        return web.json_response(
            {
                "access_token": token.value,
                "token_type": "Bearer",
                "expires_in": int(self.config.jwt_ttl),
            }
        )

    async def _signup(self, request: web.Request) -> web.Response:
        acc = self._account(request)
        if acc is None:
            return web.json_response({"error": "account not found"}, status=400)
        token = self.tokens.issue_jwt(acc.id, "consumer", self.config.jwt_ttl, "consumer")
        return web.json_response({"jwt": token.value})

    async def _authenticate(self, request: web.Request) -> web.Response:
        acc = self._account(request)
        body = await self._json_body(request)
        code = None if body is None else body.get("authCode")
        if acc is None or not isinstance(code, str) or not code:
            return web.json_response({"error": "authCode required"}, status=401)
        token = self.tokens.issue_jwt(
            acc.id, f"consumer:{code[:8]}", self.config.jwt_ttl, "consumer"
        )
        return web.json_response({"jwt": token.value})

    # -- REST resources --------------------------------------------------------------------

    def _users_list(self, acc: Account) -> list[dict[str, Any]]:
        return [
            {
                "id": str(i),
                "deleted": False,
                "loginName": name,
                "nickname": name.title(),
                "fullName": f"Simulated {name.title()}",
                "email": f"{name}@example.invalid",
                "isEnabled": True,
                "skillIds": [],
                "profileIds": [],
            }
            for i, name in enumerate(sorted(acc.users), start=1)
        ]

    async def _users(self, request: web.Request) -> web.Response:
        acc = self._account(request)
        if acc is None or self._authorize(request, acc.id) is None:
            return self._unauthorized()
        return web.json_response(self._users_list(acc))

    async def _user(self, request: web.Request) -> web.Response:
        acc = self._account(request)
        if acc is None or self._authorize(request, acc.id) is None:
            return self._unauthorized()
        for user in self._users_list(acc):
            if user["id"] == request.match_info["user"]:
                return web.json_response(user)
        return web.json_response({"error": "user not found"}, status=404)

    async def _agent_session(self, request: web.Request) -> web.Response:
        # A Login Service bearer only (protocol: "Authorization: Bearer ...", its keepalive the
        # Login Service refresh): neither a Sentinel JWT, an OAuth 1.0 signature nor an app key.
        acc = self._account(request)
        if acc is None or self._authorize(request, acc.id) != "user":
            return self._unauthorized()
        # The scheme clients use (public_scheme behind a TLS front) with the host they address.
        scheme = self.config.public_scheme or self.scheme
        link = f"{scheme}://{self._public_host(request)}/api/account/{acc.id}/agentSession/1"
        return web.json_response(
            {"agentSessionLocation": {"link": {"@href": link, "@rel": "location"}}},
            status=201,
            headers={"Location": link},
        )

    async def _chat_info(self, request: web.Request) -> web.Response:
        # "Authorization: LivePerson appKey=<key>" with one of the account's app keys only: a
        # bearer (Login Service or Sentinel) or an OAuth 1.0 signature is refused.
        acc = self._account(request)
        if acc is None or not self._app_key_header(request, acc.id):
            return self._unauthorized()
        return web.json_response(
            {
                "info": {
                    "chatId": request.match_info["chat"],
                    "state": "chatting",
                    "lastUpdate": int(self.tokens.epoch_now() * 1000),
                }
            }
        )

    async def _interactions(self, request: web.Request) -> web.Response:
        acc = self._account(request)
        body = await request.read()
        if acc is None or self._authorize(request, acc.id, body) is None:
            return self._unauthorized()
        return web.json_response(
            {"_metadata": {"count": 0, "self": {"rel": "self"}}, "interactionHistoryRecords": []}
        )

    # -- sockets ---------------------------------------------------------------------------

    async def _session_fault(
        self, request: web.Request, service: str | None
    ) -> web.Response | WsClose | WsDrop | WsSilence | None:
        """Decide an upgrade's session (unit ``ws_session``, every session kind): the answer
        that refuses it (``ws_reject_handshake``), or the fault for the socket it opens (None:
        none). A ``delay`` is waited here."""
        injection = self.faults.run.decide(
            "ws_session",
            method=request.method,
            path=request.path,
            service=service,
            at=self.clock.now(),
            kinds=WS_FAULTS,
        )
        if injection is None:
            return None
        fault = injection.fault
        if isinstance(fault, WsRejectHandshake):
            self.sockets.rejected.append(fault.status)
            return web.Response(status=fault.status, text=fault.body)
        if isinstance(fault, Delay):
            if not await self._pause(injection.delay_s):
                return self._ended_by_stop(request)  # stopping: no socket is opened
            return None
        assert isinstance(fault, (WsClose, WsDrop, WsSilence))
        return fault

    async def _open_socket(
        self,
        request: web.Request,
        *,
        kind: str,
        account: str,
        authenticated: bool,
        consumer_token: Token | None = None,
    ) -> web.StreamResponse:
        # The socket's service, as the client-side injector matches it (its route's prefix).
        name = request.match_info.route.name or ""
        fault = await self._session_fault(request, name.split(".", 1)[0] or None)
        if isinstance(fault, web.Response):
            return fault
        return await self.sockets.serve(
            request,
            kind=kind,
            account=account,
            authenticated=authenticated,
            session_fault=fault,
            consumer_token=consumer_token,
        )

    async def _on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """A response is being prepared: a custom route's WebSocket gets its socket faults, an
        answer a handler streams under a ``TruncatedBody`` or ``MalformedBody`` is cut, and
        one under a ``SlowBody`` paced. Every answer is dated by the simulator's own date
        (``Date``, unless its handler set one): a ``Retry-After`` HTTP-date a plan dates from
        :attr:`wall_clock` is read against it, as far as virtual time has run (aiohttp's own,
        real time, put it hours off)."""
        if _real_time_date(response.headers.get("Date")):
            # aiohttp's own (real time, set before this hook runs), not one a handler set.
            response.headers["Date"] = email.utils.formatdate(self.tokens.epoch_now(), usegmt=True)
        custom = request.get(CUSTOM_SOCKET_KEY)
        if custom is not None and isinstance(response, web.WebSocketResponse):
            custom.attach(response)
        cut = request.get(BODY_CUT_KEY)
        if cut is not None and cut.armed and not isinstance(response, web.WebSocketResponse):
            cut.attach(response)  # an answer the handler streams under a body fault: cut
        pace = request.get(BODY_PACE_KEY)
        if pace is not None and pace.armed and not isinstance(response, web.WebSocketResponse):
            pace.attach(response)  # one it streams under a SlowBody: paced

    async def _brand_socket(self, request: web.Request) -> web.StreamResponse:
        acc = self._account(request)
        bearer = request.match_info["bearer"]
        if acc is None or self.tokens.valid_session(bearer, acc.id) is None:
            self.sockets.rejected.append(401)
            return self._unauthorized("invalid or expired bearer")
        return await self._open_socket(request, kind="brand", account=acc.id, authenticated=True)

    async def _consumer_socket(self, request: web.Request) -> web.StreamResponse:
        acc = self._account(request)
        if acc is None:
            return web.json_response({"error": "account not found"}, status=400)
        header = request.headers.get(hdrs.AUTHORIZATION)
        authenticated = False
        token: Token | None = None
        if header is not None:
            scheme, _, value = header.partition(" ")
            # A consumer JWT only, as InitConnection takes: not a Sentinel (app) token.
            token = self.tokens.valid_jwt(value.strip(), acc.id, "consumer")
            if scheme.lower() != "jwt" or token is None:
                self.sockets.rejected.append(401)
                return self._unauthorized("invalid or expired consumer JWT")
            authenticated = True
        return await self._open_socket(
            request,
            kind="consumer",
            account=acc.id,
            authenticated=authenticated,
            consumer_token=token,
        )


class _PayloadEnded(Exception):
    """Raised into a payload writing itself once its shaped answer wants no more of it."""


class _PayloadSink:
    """What a payload writes itself to (``Payload.write(writer)`` calls ``writer.write``):
    ``resp``'s write, shaped by ``shaper``, until the shaper has ended the answer."""

    def __init__(self, resp: web.StreamResponse, shaper: BodyCut | BodyPace) -> None:
        self._resp = resp
        self._shaper = shaper

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._shaper.ended:
            raise _PayloadEnded
        await self._resp.write(chunk)
        if self._shaper.ended:
            raise _PayloadEnded


def _head_of(real: web.StreamResponse) -> web.StreamResponse:
    """A new, unsent answer with ``real``'s status, reason, headers (but its framing:
    ``Content-Length``, ``Transfer-Encoding``, which the shaped body sets anew) and cookies,
    closing its connection after it if ``real``'s handler said so (``force_close``)."""
    resp = web.StreamResponse(status=real.status, reason=real.reason)
    for name, value in real.headers.items():
        if name.lower() not in ("content-length", "transfer-encoding"):
            resp.headers.add(name, value)
    for name, morsel in real.cookies.items():
        resp.cookies[name] = morsel
    if real.keep_alive is False:
        resp.force_close()  # its handler's: the connection closed after it, as it said
    return resp


async def _shaped_payload(
    request: web.Request, real: web.StreamResponse, body: Payload, shaper: BodyCut | BodyPace
) -> web.StreamResponse:
    """``real``, an answer its handler returned unsent whose body is a payload object (a file
    object, an async iterable given as ``body=``), sent with its status, headers and cookies
    and its payload written as it comes through ``shaper`` (a ``TruncatedBody``'s cut, a
    ``SlowBody``'s pace), as an answer the handler streams itself is: never read whole first,
    which a payload that does not end (a stream held open) would never let go. Framed as
    aiohttp frames ``real``: by the ``Content-Length`` its handler announced, else chunked if
    its handler asked for that, else by the payload's size when it knows it, else chunked;
    its connection closed after it if its handler said so (``force_close``). The payload is
    closed at the end."""
    resp = _head_of(real)
    told = real.headers.get(hdrs.CONTENT_LENGTH)
    if told is not None:
        resp.content_length = int(told)
    elif real.chunked:
        resp.enable_chunked_encoding()
    elif body.size is not None:
        resp.content_length = body.size  # else chunked, as aiohttp sends an unknown length
    try:
        shaper.attach(resp)
    except AnswerCut:
        # Cut before its headers (an HTTP/1.0 answer of unknown length): the connection closed.
        await body.close()
        return web.Response(status=500)
    if isinstance(shaper, BodyPace):
        shaper.whole_pieces = True  # paced by its bytes, not by the pieces aiohttp reads
    try:
        await resp.prepare(request)
        await body.write(cast("AbstractStreamWriter", _PayloadSink(resp, shaper)))
        await resp.write_eof()
    except (_PayloadEnded, ConnectionError):
        pass  # cut, the simulator stopping, or the client gone: no more of it is wanted
    finally:
        await body.close()
    return resp


async def _shaped_compressed(
    request: web.Request, real: web.Response, shaper: BodyCut | BodyPace
) -> web.StreamResponse:
    """``real``, an answer its handler returned unsent with compression enabled
    (``enable_compression()``), sent now with ``shaper`` (a ``TruncatedBody``'s cut, a
    ``SlowBody``'s pace) on it, as on an answer its handler prepares itself: aiohttp
    compresses it as it would without the fault (its ``Content-Encoding``, the compressed
    ``Content-Length``, or chunked for a payload), and the shaper cuts or paces the body
    aiohttp sends (the compressed bytes of a body held whole; a payload's as it is written,
    ``keep_bytes`` counting them before aiohttp compresses them). A copy of its status and
    headers would drop the compression its handler asked for. Returns the answer, sent, or a
    placeholder if it was cut before its headers (the connection closed)."""
    if isinstance(shaper, BodyCut):
        request[BODY_CUT_KEY] = shaper
    else:
        request[BODY_PACE_KEY] = shaper
    try:
        await real.prepare(request)  # the shaper attaches here
        await real.write_eof()
    except AnswerCut:
        # Cut before its headers (the connection is closed): its payload is never written,
        # and is closed (a file object stays open otherwise, until collected).
        await _discard(real)
        return web.Response(status=500)
    except ConnectionError:
        pass  # the client gone (its attempt timeout, most likely)
    finally:
        shaper.armed = False
    if isinstance(shaper, BodyCut):
        await shaper.finish()  # the connection closed: the cut made, whatever was sent
    return real


#: How much of a file :func:`_shaped_file` reads at a time (aiohttp's own chunk size).
_FILE_READ_BYTES = 256 * 1024


async def _shaped_file(
    request: web.Request, real: web.FileResponse, shaper: BodyCut | BodyPace
) -> web.StreamResponse | None:
    """``real``, a ``web.FileResponse`` its handler returned unsent, sent now with ``shaper``
    (a ``TruncatedBody``'s cut, a ``SlowBody``'s pace) on it, as on an answer its handler
    prepares itself (found through ``on_response_prepare``): its status and
    headers as aiohttp makes them (a 206 for a range, a 304, a 404 for a missing file), and
    its file written through the shaped ``write``, where aiohttp sends it past ``write``
    (``loop.sendfile``, or its writer). Returns the answer, for aiohttp to find sent; a
    placeholder if the cut came before its headers (a 304: the connection is closed); None if
    this aiohttp has no ``FileResponse._sendfile`` to take over (the answer goes out unshaped,
    as the caller's own path has it)."""
    if not callable(getattr(real, "_sendfile", None)):  # aiohttp's, 3.12 to 3.14 at least
        return None
    loop = asyncio.get_running_loop()

    async def shaped_sendfile(
        req: web.BaseRequest, fobj: Any, offset: int, count: int
    ) -> AbstractStreamWriter:
        writer = await web.StreamResponse.prepare(real, req)  # the shaper attaches here
        assert writer is not None
        await loop.run_in_executor(None, fobj.seek, offset)
        while count > 0 and not shaper.ended:
            chunk = await loop.run_in_executor(None, fobj.read, min(_FILE_READ_BYTES, count))
            if not chunk:
                break
            count -= len(chunk)
            await real.write(chunk)
        return writer

    real._sendfile = shaped_sendfile  # type: ignore[method-assign,assignment]
    shaper.file_through_write = True  # its file comes through write: nothing to reroute
    if isinstance(shaper, BodyCut):
        request[BODY_CUT_KEY] = shaper
    else:
        shaper.whole_pieces = True  # paced by its bytes, not by the pieces it is read in
        request[BODY_PACE_KEY] = shaper
    try:
        await real.prepare(request)  # aiohttp closes the file it opened once it returns
        await real.write_eof()
    except AnswerCut:
        return web.Response(status=500)  # cut before its headers: the connection is closed
    except ConnectionError:
        pass  # the client gone (its attempt timeout, most likely)
    finally:
        shaper.armed = False
    # Sent: aiohttp's own prepare of it would open and send the file again.
    real.prepare = functools.partial(web.StreamResponse.prepare, real)  # type: ignore[method-assign]
    return real


async def _discard(real: web.StreamResponse | None) -> None:
    """Close the payload of ``real``, an answer its handler returned that is thrown away
    unsent (a file object given as its body stays open otherwise, until collected)."""
    if isinstance(real, web.Response):
        body = real.body
        if body is not None and not isinstance(body, (bytes, bytearray, memoryview)):
            await body.close()


#: The most characters of an ``X-LE-Fault`` value a log line shows.
_SHOWN_RULE_ID = 64


def _shown_rule_id(value: str) -> str:
    """An ``X-LE-Fault`` value for a log line: escaped (``repr``: no control character reaches
    the log as it is), at most :data:`_SHOWN_RULE_ID` characters of it."""
    if len(value) <= _SHOWN_RULE_ID:
        return repr(value)
    return f"{value[:_SHOWN_RULE_ID]!r}..."


#: SO_LINGER on, with a zero timeout: closing the socket resets the connection.
_LINGER_RESET = struct.pack("ii", 1, 0)


def _reset(transport: asyncio.Transport) -> None:
    """End the connection with a TCP reset (an RST, what Toxiproxy's ``reset_peer`` and
    WireMock's ``CONNECTION_RESET_BY_PEER`` send): SO_LINGER on with a zero timeout makes the
    kernel reset it as the abort closes the socket, where a bare ``abort()`` sends a FIN (the
    client then sees the server close, not reset, the connection). A transport without a socket
    to reach, or one that refuses the option, is aborted as it is."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()
