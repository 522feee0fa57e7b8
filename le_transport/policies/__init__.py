"""Pure decisions: classification, retry schedule, backoff.

Nothing in this package does I/O, reads a clock or draws a random number by itself: time and
randomness come in as arguments, so every schedule can be proved on virtual time. It imports
only the standard library, attrs and :mod:`le_transport.errors` (a test enforces this).
"""

from .backoff import (
    RECONNECT_CAP,
    RECONNECT_FIRST_DELAY,
    RELOGIN_CAP,
    RELOGIN_FIRST_DELAY,
    BackoffPolicy,
)
from .breaker import (
    BREAKER_BREAK,
    BREAKER_FAILURE_RATIO,
    BREAKER_MAX_BREAK,
    BREAKER_MINIMUM_THROUGHPUT,
    BREAKER_SAMPLING_WINDOW,
    BREAKER_SLOW_CALL,
    Admission,
    BreakerState,
    BreakerStatus,
    CircuitBreaker,
)
from .budget import (
    BUDGET_MIN_RETRIES_PER_SECOND,
    BUDGET_RATIO,
    BUDGET_WINDOW,
    BudgetState,
    RetryBudget,
)
from .classify import IDEMPOTENT_METHODS, Classifier, Outcome, OutcomeKind, Verdict
from .close_codes import (
    REAUTH_CLOSE_CODES,
    CloseAction,
    ClosePolicy,
    CloseVerdict,
    Disconnect,
    DisconnectKind,
)
from .keepalive import (
    CHAT_AGENT_API_REFRESH,
    GUIDE_KEEPALIVES,
    MESSAGING_AGENT_SDK_GETCLOCK,
    MESSAGING_WINDOW_API_GETCLOCK,
    SERVER_CHAT_API_CHAT_INFO,
    Keepalive,
    KeepaliveDecision,
    KeepaliveStep,
    KeepaliveTransport,
)
from .pacing import Reservation, TokenBucket
from .retry import (
    GUIDE_5XX_PAUSES,
    LOGIN_RATE_LIMIT_FLOOR,
    RATE_LIMIT_FLOOR,
    Action,
    Decision,
    RetryPolicy,
)
from .retry_after import parse_retry_after

__all__ = [
    "BREAKER_BREAK",
    "BREAKER_FAILURE_RATIO",
    "BREAKER_MAX_BREAK",
    "BREAKER_MINIMUM_THROUGHPUT",
    "BREAKER_SAMPLING_WINDOW",
    "BREAKER_SLOW_CALL",
    "BUDGET_MIN_RETRIES_PER_SECOND",
    "BUDGET_RATIO",
    "BUDGET_WINDOW",
    "CHAT_AGENT_API_REFRESH",
    "GUIDE_5XX_PAUSES",
    "GUIDE_KEEPALIVES",
    "IDEMPOTENT_METHODS",
    "LOGIN_RATE_LIMIT_FLOOR",
    "MESSAGING_AGENT_SDK_GETCLOCK",
    "MESSAGING_WINDOW_API_GETCLOCK",
    "RATE_LIMIT_FLOOR",
    "REAUTH_CLOSE_CODES",
    "RECONNECT_CAP",
    "RECONNECT_FIRST_DELAY",
    "RELOGIN_CAP",
    "RELOGIN_FIRST_DELAY",
    "SERVER_CHAT_API_CHAT_INFO",
    "Action",
    "Admission",
    "BackoffPolicy",
    "BreakerState",
    "BreakerStatus",
    "BudgetState",
    "CircuitBreaker",
    "Classifier",
    "CloseAction",
    "ClosePolicy",
    "CloseVerdict",
    "Decision",
    "Disconnect",
    "DisconnectKind",
    "Keepalive",
    "KeepaliveDecision",
    "KeepaliveStep",
    "KeepaliveTransport",
    "Outcome",
    "OutcomeKind",
    "Reservation",
    "RetryBudget",
    "RetryPolicy",
    "TokenBucket",
    "Verdict",
    "parse_retry_after",
]
