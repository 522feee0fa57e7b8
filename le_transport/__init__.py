"""le_transport: keeps connections to LivePerson LiveEngage APIs alive and correct under failure.

The engine sends requests through a stack of small composable policies (classification, the
guide's 5/10/15 s retry schedule, exponential outer recovery, keepalive, reconnect, fault
injection) applied as aiohttp client middlewares, on injected time.

It logs under the ``le_transport`` logger (records already redacted), which holds a
:class:`logging.NullHandler` and nothing else, as a library's should: what is shown, and where,
is the application's logging configuration (without one, nothing is, not even the warnings).
"""

import logging as _logging

from ._redact import Secret
from .clock import Clock, RealClock, timeout_after
from .engine import Engine, Response
from .errors import *  # noqa: F403
from .errors import __all__ as _errors_all
from .events import EventHooks, GiveUpEvent, RetryEvent, StateEvent
from .middleware import RetryMiddleware
from .middleware.overload import OverloadGuard
from .policies import (
    GUIDE_5XX_PAUSES,
    BackoffPolicy,
    CircuitBreaker,
    Classifier,
    Keepalive,
    Outcome,
    OutcomeKind,
    RetryBudget,
    RetryPolicy,
)
from .providers import (
    AppKeyAuth,
    AppLogin,
    AuthProvider,
    BodySigningAuth,
    ClientCredentialsLogin,
    ConsumerJwt,
    Credentials,
    CsdsDomains,
    DomainProvider,
    OAuth1Auth,
    SentinelClientCredentials,
    StaticBearer,
    StaticDomains,
    UserLogin,
)
from .recovery import Recovery
from .sockets import AuthPlacement, ResilientSocket, SocketOptions, SocketState

__version__ = "0.1.0"

# The standard practice for a library: records go to the application's handlers, and when it
# has none, Python's last-resort handler does not print them to stderr.
_logging.getLogger(__name__).addHandler(_logging.NullHandler())

__all__ = [
    "GUIDE_5XX_PAUSES",
    "AppKeyAuth",
    "AppLogin",
    "AuthPlacement",
    "AuthProvider",
    "BackoffPolicy",
    "BodySigningAuth",
    "CircuitBreaker",
    "Classifier",
    "ClientCredentialsLogin",
    "Clock",
    "ConsumerJwt",
    "Credentials",
    "CsdsDomains",
    "DomainProvider",
    "Engine",
    "EventHooks",
    "GiveUpEvent",
    "Keepalive",
    "OAuth1Auth",
    "Outcome",
    "OutcomeKind",
    "OverloadGuard",
    "RealClock",
    "Recovery",
    "ResilientSocket",
    "Response",
    "RetryEvent",
    "RetryBudget",
    "RetryMiddleware",
    "RetryPolicy",
    "Secret",
    "SentinelClientCredentials",
    "SocketOptions",
    "SocketState",
    "StateEvent",
    "StaticBearer",
    "StaticDomains",
    "UserLogin",
    "timeout_after",
    *_errors_all,
]
