"""The socket's lifecycle as an explicit state machine with one owner.

LivePerson's reconnect storms came from state spread over callbacks: handlers of a superseded
socket stayed attached and each started its own reconnect. Here a socket's life is one
:class:`Lifecycle` value, changed only by the socket's owner task, through a transition table;
an illegal transition raises :class:`~le_transport.errors.InvalidSocketTransition`. Each
connection gets a new ``epoch``: anything that reports about a connection carries its epoch, and
the owner ignores reports whose epoch is not the current one.
"""

from __future__ import annotations

import enum

from ..errors import InvalidSocketTransition

__all__ = ["Lifecycle", "SocketState"]


class SocketState(enum.Enum):
    """Where a resilient socket is in its life."""

    #: Made, not started.
    NEW = "new"
    #: One connect (resolve, credentials, upgrade, first-frame auth) is in flight.
    CONNECTING = "connecting"
    #: Connected: ``on_connect`` callbacks, then queued messages, then live traffic.
    OPEN = "open"
    #: Lost or failed to connect; waiting out the backoff and pacing before the next connect.
    RECONNECTING = "reconnecting"
    #: ``close()`` was called (or a final failure happened); tearing down.
    CLOSING = "closing"
    #: For good. Nothing runs any more.
    CLOSED = "closed"


_ALLOWED: dict[SocketState, frozenset[SocketState]] = {
    SocketState.NEW: frozenset({SocketState.CONNECTING, SocketState.CLOSING}),
    SocketState.CONNECTING: frozenset(
        {SocketState.OPEN, SocketState.RECONNECTING, SocketState.CLOSING}
    ),
    SocketState.OPEN: frozenset({SocketState.RECONNECTING, SocketState.CLOSING}),
    SocketState.RECONNECTING: frozenset({SocketState.CONNECTING, SocketState.CLOSING}),
    SocketState.CLOSING: frozenset({SocketState.CLOSED}),
    SocketState.CLOSED: frozenset(),
}


class Lifecycle:
    """The state and connection epoch of one socket; only its owner calls :meth:`to`."""

    __slots__ = ("_epoch", "_state")

    def __init__(self) -> None:
        self._state = SocketState.NEW
        self._epoch = 0

    @property
    def state(self) -> SocketState:
        """The current state."""
        return self._state

    @property
    def epoch(self) -> int:
        """The number of the current (or last) connection; 0 before the first."""
        return self._epoch

    def can(self, target: SocketState) -> bool:
        """Whether ``target`` is reachable from the current state in one step."""
        return target in _ALLOWED[self._state]

    def to(self, target: SocketState) -> int:
        """Move to ``target``; entering ``OPEN`` starts a new epoch. Returns the epoch."""
        if target not in _ALLOWED[self._state]:
            raise InvalidSocketTransition(
                f"a socket cannot go from {self._state.value} to {target.value}",
                current=self._state.value,
                target=target.value,
            )
        self._state = target
        if target is SocketState.OPEN:
            self._epoch += 1
        return self._epoch

    def is_current(self, epoch: int) -> bool:
        """Whether ``epoch`` is the live connection (an older one is superseded)."""
        return self._state is SocketState.OPEN and epoch == self._epoch

    def __repr__(self) -> str:
        return f"Lifecycle({self._state.value}, epoch={self._epoch})"
