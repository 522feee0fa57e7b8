"""Escalating a socket that keeps failing to reconnect to the session's outer re-login loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..errors import ConnectionFailed
from ..policies.close_codes import CloseAction, ClosePolicy
from ..recovery import Recovery
from .dial import Connection, DialFailed
from .socket import EscalationRequest

__all__ = ["RecoveryEscalation"]


class RecoveryEscalation:
    """A :class:`~le_transport.sockets.ReloginEscalation` over an engine's
    :class:`~le_transport.recovery.Recovery`: connect attempts run inside the re-login loop,
    which pauses on its own (longer) schedule and re-resolves domains and re-logs in between
    them, until one connects or the loop gives up (:class:`~le_transport.errors.RecoveryFailed`,
    which stops the socket).

    Sockets of one engine share its loop, so a fleet of failing sockets causes one re-login per
    round, not one per socket. The round's pause ends for all of them at once, but each connect
    goes through the socket's reconnect pacer (``connect`` waits for a slot), so they reconnect
    at the pacer's rate rather than together; and a socket escalates only after it waited out
    its own backoff pause, jittered, so a fleet that fails together does not escalate, and
    make its first connect of the loop, together.
    """

    def __init__(self, recovery: Recovery, close_policy: ClosePolicy | None = None) -> None:
        self._recovery = recovery
        self._close_policy = close_policy or ClosePolicy()

    async def __call__(
        self, request: EscalationRequest, connect: Callable[[], Awaitable[Connection]]
    ) -> Connection | None:
        """Connect through the re-login loop; the first connection that opens."""

        async def attempt() -> Connection:
            try:
                return await connect()
            except DialFailed as exc:
                verdict = self._close_policy.classify(exc.disconnect)
                if verdict.action is CloseAction.FAIL:
                    raise
                # A connect failure is what the outer loop exists for: make it recoverable.
                raise ConnectionFailed(
                    f"{request.subject}: {exc.disconnect.describe()}", never_sent=True
                ) from exc

        return await self._recovery.run(attempt)
