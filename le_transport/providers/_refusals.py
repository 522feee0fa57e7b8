"""How a failed credential request (a login, a token fetch) surfaces: one mapping for both.

A 451 becomes :class:`~le_transport.errors.BlockedError` and any other 4xx
:class:`~le_transport.errors.LoginRejected`, both with the provider's own message and never
retried; but a 408, 425 or 429 that failed at once
(:data:`~le_transport.policies.close_codes.RETRY_HANDSHAKE_STATUSES`: a load balancer's
timeout, "too early", "too many") asks to try again as it was, and says nothing of the
credentials: it becomes an :class:`~le_transport.errors.UnexpectedAnswer`, an outage whose
verdict is ``RETRYABLE`` (``recover=True`` waits it out as a 503, a session or token that still
lives is kept, a keepalive never judges it final). Any other
:class:`~le_transport.errors.RequestError` (an outage) passes unchanged. Each is reported as a
``login_failed`` state event first: ERROR for a refusal, WARNING for an outage.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

from ..errors import (
    BlockedError,
    ClientStatusError,
    LoginRejected,
    RequestError,
    UnexpectedAnswer,
)
from ..events import StateEvent
from ..policies.close_codes import RETRY_HANDSHAKE_STATUSES
from ._http import ProviderHttp, emit_state

__all__ = ["credential_refusals", "report_login_failed"]

_log = logging.getLogger("le_transport.auth")


def report_login_failed(
    http: ProviderHttp, subject: str, exc: Exception, status: int | None
) -> None:
    """Emit ``login_failed`` for ``exc``; ``status`` is the answer's, or None without one.

    A WARNING for an outage (no answer, a 5xx, an :class:`UnexpectedAnswer`: a maintenance
    page is waited out as a 503 is), an ERROR for a refusal (the credentials)."""
    outage = status is None or status >= 500 or isinstance(exc, UnexpectedAnswer)
    emit_state(
        http.hooks,
        _log,
        logging.WARNING if outage else logging.ERROR,
        StateEvent("login_failed", subject, {"error": type(exc).__name__, "status": status}),
    )


@contextlib.contextmanager
def credential_refusals(
    http: ProviderHttp,
    subject: str,
    *,
    blocked: str,
    refused: Callable[[int], str],
    keep_attempts: bool = True,
    report_outages: bool = True,
) -> Iterator[None]:
    """Map the failure of the credential request made inside the block (see the module).

    ``blocked`` is the message for a 451, ``refused(status)`` the one for another 4xx. With
    ``keep_attempts`` false the :class:`~le_transport.errors.BlockedError` does not carry the
    attempts of the request. With ``report_outages`` false an outage passes unreported: the
    caller decides whether it failed anything (a token fetched early, while the current one
    still works).
    """
    try:
        yield
    except BlockedError as exc:
        report_login_failed(http, subject, exc, 451)
        raise BlockedError(
            blocked,
            status=451,
            service=exc.service,
            method=exc.method,
            url=exc.url,
            attempts=exc.attempts if keep_attempts else (),
        ) from None
    except ClientStatusError as exc:
        if exc.status in RETRY_HANDSHAKE_STATUSES:
            # Try again, as it was: an outage, not a refusal. Taken for one, a one-off 408 from
            # a load balancer dropped a valid session (relogin) or had its login withheld for
            # good after a redirected refresh ("check the credentials").
            outage = UnexpectedAnswer(
                f"{subject}: answered {exc.status} to the credential request (try again as it "
                "was: a timeout or a request too early, most likely from something in "
                "between); an outage, not a refusal of the credentials",
                status=exc.status,
                service=exc.service,
            )
            if report_outages:
                report_login_failed(http, subject, outage, exc.status)
            raise outage from None
        report_login_failed(http, subject, exc, exc.status)
        raise LoginRejected(refused(exc.status), status=exc.status) from None
    except RequestError as exc:
        if report_outages:
            report_login_failed(http, subject, exc, None)
        raise
