"""The outgoing queue: messages sent while the socket is down, held in order, bounded.

Nothing is silently dropped: a message either goes into the queue or is refused with
:class:`~le_transport.errors.SocketQueueFull`. A queued request whose caller gave up (timeout,
cancellation) is withdrawn: taken out of the queue, never sent late, and no longer counted
against the bound.
"""

from __future__ import annotations

from collections import deque

import attrs

from ..errors import SocketQueueFull

__all__ = ["Outbox", "Outgoing"]


@attrs.define(eq=False)
class Outgoing:
    """One message waiting to be sent: its wire text and, for a request, its id.

    ``order`` is where a message written straight out on an open socket stood among the
    socket's sends (None for one that was queued first): when several such writes fail with
    their connection, :meth:`Outbox.put_back` puts them back in that order, whatever order
    their failures came in.
    """

    text: str
    request_id: str | None = None
    #: Set by :meth:`Outbox.withdraw` on the message it took out of the queue.
    withdrawn: bool = False
    order: int | None = None


class Outbox:
    """A bounded FIFO of :class:`Outgoing` messages."""

    __slots__ = ("_items", "_limit", "_returned")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        # Made on the first message: most sockets of a large fleet never queue one.
        self._items: deque[Outgoing] | None = None
        # How many messages at the head were put back since the queue was last taken from:
        # the writes one connection failed, kept in the order they were sent.
        self._returned = 0

    def __len__(self) -> int:
        return 0 if self._items is None else len(self._items)

    @property
    def limit(self) -> int:
        """How many messages the queue may hold."""
        return self._limit

    def put(self, item: Outgoing) -> None:
        """Queue ``item`` last, or raise :class:`SocketQueueFull`."""
        if self._items is None:
            self._items = deque()
        if len(self._items) >= self._limit:
            raise SocketQueueFull(
                f"the socket is down and its queue holds {self._limit} messages already: "
                "the message was refused (not sent, not lost); retry after the socket is open "
                "or raise max_queued"
            )
        self._items.append(item)

    def put_back(self, item: Outgoing) -> None:
        """Return ``item`` to the head: it was taken, or written straight out, but could not be
        written. Never refused (it was sent before anything now queued).

        The messages put back since the queue was last taken from stay ahead of everything
        else, among themselves in the order they were sent (their ``order``; one without goes
        first: it was taken from the head): writes waiting on one connection that all fail
        when it ends go out on the next in the order they were made.
        """
        items = self._items
        if items is None:
            items = self._items = deque()
        at = self._returned
        if item.order is None:
            at = 0
        else:
            for index in range(self._returned):
                before = items[index].order
                if before is not None and before > item.order:
                    at = index
                    break
        items.insert(at, item)
        self._returned += 1

    def take(self) -> Outgoing | None:
        """The next message, or None when the queue is empty."""
        self._returned = 0
        items = self._items
        return items.popleft() if items else None

    def withdraw(self, request_id: str) -> bool:
        """Take the queued request ``request_id`` out of the queue: it is no longer wanted.
        Whether it was queued."""
        items = self._items
        if not items:
            return False
        for index, item in enumerate(items):
            if item.request_id == request_id:
                del items[index]
                item.withdrawn = True
                if index < self._returned:
                    self._returned -= 1
                return True
        return False

    def texts(self) -> list[str]:
        """The wire texts left in the queue, in order."""
        return [i.text for i in self._items or ()]

    def clear(self) -> list[Outgoing]:
        """Empty the queue; the messages it held."""
        items = list(self._items or ())
        self._items = None
        self._returned = 0
        return items
