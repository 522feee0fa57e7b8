"""The outgoing queue: messages sent while the socket is down, held in order, bounded.

Nothing is silently dropped: a message either goes into the queue or is refused with
:class:`~le_transport.errors.SocketQueueFull`. A queued request whose caller gave up (timeout,
cancellation) is marked withdrawn and skipped, never sent late.
"""

from __future__ import annotations

from collections import deque

import attrs

from ..errors import SocketQueueFull

__all__ = ["Outbox", "Outgoing"]


@attrs.define(eq=False)
class Outgoing:
    """One message waiting to be sent: its wire text and, for a request, its id."""

    text: str
    request_id: str | None = None
    withdrawn: bool = False


class Outbox:
    """A bounded FIFO of :class:`Outgoing` messages."""

    __slots__ = ("_items", "_limit")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        # Made on the first message: most sockets of a large fleet never queue one.
        self._items: deque[Outgoing] | None = None

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
        """Return ``item`` to the head: it was taken but could not be written."""
        if self._items is None:
            self._items = deque()
        self._items.appendleft(item)

    def take(self) -> Outgoing | None:
        """The next message that is still wanted, or None when the queue is empty."""
        while self._items:
            item = self._items.popleft()
            if not item.withdrawn:
                return item
        return None

    def withdraw(self, request_id: str) -> bool:
        """Mark the queued request ``request_id`` as no longer wanted."""
        for item in self._items or ():
            if item.request_id == request_id:
                item.withdrawn = True
                return True
        return False

    def texts(self) -> list[str]:
        """The wire texts still wanted, in order, left in the queue."""
        return [i.text for i in self._items or () if not i.withdrawn]

    def clear(self) -> list[Outgoing]:
        """Empty the queue; the messages that were still wanted."""
        items = [i for i in self._items or () if not i.withdrawn]
        self._items = None
        return items
