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
from .classify import IDEMPOTENT_METHODS, Classifier, Outcome, OutcomeKind, Verdict
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
    "GUIDE_5XX_PAUSES",
    "IDEMPOTENT_METHODS",
    "LOGIN_RATE_LIMIT_FLOOR",
    "RATE_LIMIT_FLOOR",
    "RECONNECT_CAP",
    "RECONNECT_FIRST_DELAY",
    "RELOGIN_CAP",
    "RELOGIN_FIRST_DELAY",
    "Action",
    "BackoffPolicy",
    "Classifier",
    "Decision",
    "Outcome",
    "OutcomeKind",
    "RetryPolicy",
    "Verdict",
    "parse_retry_after",
]
