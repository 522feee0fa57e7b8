"""The outgoing queue: messages sent while the socket is down, held in order, bounded.

Bounded twice: by the number of messages (``max_queued``) and by their size
(``max_queued_bytes``, the characters of their wire text), so that a queue of large frames
cannot take the process's memory while the socket is down.

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

    ``order`` is where the message stands among its socket's sends: the socket numbers each
    send (from 1) when it is made, whether it goes straight out or is queued, and the number
    stays with the message through the queue. A write that fails with its connection is put
    back by it (:meth:`Outbox.put_back`), so that what was sent goes out in the order it was
    sent, whatever order the failures came in. Unnumbered (0 or None, as code of the caller's
    own may make them): put back first, and queued as made after any numbered one.
    """

    text: str
    request_id: str | None = None
    #: Set by :meth:`Outbox.withdraw` on the message it took out of the queue.
    withdrawn: bool = False
    order: int | None = 0


class Outbox:
    """A bounded FIFO of :class:`Outgoing` messages, in the order they were sent.

    ``limit``: how many messages it may hold. ``max_bytes``: how many characters of wire text
    they may hold in all (0: no bound on their size). A :meth:`put` past either bound is
    refused with :class:`SocketQueueFull`, a message larger than ``max_bytes`` on its own
    too (even into an empty queue); :meth:`put_back` is never refused, but counts.
    """

    __slots__ = ("_bytes", "_items", "_limit", "_max_bytes")

    def __init__(self, limit: int, max_bytes: int = 0) -> None:
        self._limit = limit
        self._max_bytes = max_bytes
        # Made on the first message: most sockets of a large fleet never queue one.
        self._items: deque[Outgoing] | None = None
        # The characters of the queued messages' texts, in all.
        self._bytes = 0

    def __len__(self) -> int:
        return 0 if self._items is None else len(self._items)

    @property
    def limit(self) -> int:
        """How many messages the queue may hold."""
        return self._limit

    @property
    def max_bytes(self) -> int:
        """How many characters of wire text the queue may hold in all (0: no bound)."""
        return self._max_bytes

    @property
    def queued_bytes(self) -> int:
        """The characters of wire text the queue holds now."""
        return self._bytes

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
        size = len(item.text)
        bound = self._max_bytes
        if bound and self._bytes + size > bound:
            raise SocketQueueFull(
                f"the socket is down and its queue may hold {bound} characters of messages "
                f"(max_queued_bytes), {self._bytes} already: the message ({size} characters) "
                "was refused (not sent, not lost); retry after the socket is open or raise "
                "max_queued_bytes"
            )
        self._items.append(item)
        self._bytes += size

    def put_back(self, item: Outgoing) -> None:
        """Return ``item``, which was taken, or written straight out, but could not be written.
        Never refused (it was sent before what was queued after it).

        It goes back where its ``order`` puts it: before the first message not sent before it
        (messages of the same ``order``, such as unnumbered ones, it goes ahead of). That is
        at the head, or among the other writes put back, for every write a connection failed
        (taken from the head, or written straight out while the queue was empty): writes that
        all fail when their connection ends go out on the next one in the order they were
        made, whatever order their failures came in, and ahead of what was queued meanwhile.
        """
        items = self._items
        if items is None:
            items = self._items = deque()
        # Unnumbered messages (an Outgoing made without ``order``, or with None, by code of
        # the caller's own): one put back goes first, and one queued is taken as made after
        # any numbered one, as the queue did before it numbered them.
        order = item.order or 0
        self._bytes += len(item.text)
        # From the head: a write put back was made before nearly everything queued.
        for index, queued in enumerate(items):
            if not queued.order or queued.order >= order:
                items.insert(index, item)
                return
        items.append(item)

    def take(self) -> Outgoing | None:
        """The next message, or None when the queue is empty."""
        items = self._items
        if not items:
            return None
        item = items.popleft()
        self._bytes -= len(item.text)
        return item

    def withdraw(self, request_id: str) -> bool:
        """Take the queued request ``request_id`` out of the queue: it is no longer wanted.
        Whether it was queued."""
        items = self._items
        if not items:
            return False
        for index, item in enumerate(items):
            if item.request_id == request_id:
                del items[index]
                self._bytes -= len(item.text)
                item.withdrawn = True
                return True
        return False

    def texts(self, *, requests: bool = True) -> list[str]:
        """The wire texts left in the queue, in order; without the requests' when
        ``requests`` is False (their callers hear of them by their own errors)."""
        return [i.text for i in self._items or () if requests or i.request_id is None]

    def clear(self) -> list[Outgoing]:
        """Empty the queue; the messages it held."""
        items = list(self._items or ())
        self._items = None
        self._bytes = 0
        return items
