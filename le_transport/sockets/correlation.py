"""Request/response correlation: ``kind: req`` frames matched to their ``resp`` by id.

Each request gets a fresh id and a future. A ``resp`` frame resolves the future whose id is its
``reqId``; when the connection a request went out on is lost, every request of that connection
fails with :class:`~le_transport.errors.SocketClosed` (the caller may retry), so no request is
ever left hanging. An answer that comes after its caller gave up (a timeout) is recognised by
its id, which only this socket hands out, and is not mistaken for a frame the server sent on its
own.

Ids carry a prefix random to the process (``le-3f9a0c1d-7``): an application that sends request
frames of its own with ``send()`` numbers them "1", "2"... as LivePerson's SDKs do, and bare
counts collided with them (the answer to the caller's own frame went to a library request, a
keepalive's ``GetClock`` among them, or was dropped as a late answer).
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Callable
from typing import Any

__all__ = ["PendingRequests", "failure_code"]

#: The prefix of the ids this process's sockets hand out (one str for every socket: a fleet of
#: sockets pays nothing per socket for it).
ID_PREFIX = f"le-{secrets.token_hex(4)}-"


class PendingRequests:
    """The requests waiting for an answer, by id, with the connection epoch they went out on."""

    __slots__ = ("_issued", "_pending", "_prefix")

    def __init__(self, prefix: str = ID_PREFIX) -> None:
        self._prefix = prefix
        # Both made on the first request: one per socket, and many sockets of a large fleet
        # send none between keepalives.
        self._issued = 0
        # id -> (future, epoch it was sent on; None while only queued)
        self._pending: dict[str, tuple[asyncio.Future[dict[str, Any]], int | None]] | None = None

    def __len__(self) -> int:
        return 0 if self._pending is None else len(self._pending)

    def open(self) -> tuple[str, asyncio.Future[dict[str, Any]]]:
        """A fresh request id and the future its answer will resolve."""
        if self._pending is None:
            self._pending = {}
        self._issued += 1
        request_id = f"{self._prefix}{self._issued}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (fut, None)
        return request_id, fut

    def sent(self, request_id: str, epoch: int | None) -> None:
        """Record that ``request_id`` went out on connection ``epoch`` (None: back in the
        queue, not sent after all)."""
        entry = None if self._pending is None else self._pending.get(request_id)
        if entry is not None and self._pending is not None:
            self._pending[request_id] = (entry[0], epoch)

    def sent_on(self, request_id: str) -> int | None:
        """The connection epoch ``request_id`` went out on; None while it is only queued (or
        no longer waits)."""
        entry = None if self._pending is None else self._pending.get(request_id)
        return None if entry is None else entry[1]

    def awaits_answer_on(self, epoch: int) -> bool:
        """Whether a request sent on connection ``epoch`` still waits for its answer (one
        only queued, or sent on another connection, does not count)."""
        return self._pending is not None and any(
            sent_on == epoch for _, sent_on in self._pending.values()
        )

    def waiting(self, request_id: str) -> bool:
        """Whether ``request_id``'s caller still waits for its answer (it did not give up)."""
        return self._pending is not None and request_id in self._pending

    def resolve(self, frame: dict[str, Any]) -> bool:
        """Resolve the request ``frame`` answers; False when no such request waits."""
        request_id = frame.get("reqId")
        if not isinstance(request_id, str):
            return False
        pending = self._pending
        entry = None if pending is None else pending.get(request_id)
        if pending is None or entry is None:
            return False
        if entry[0].done():
            # Its caller's time ran out in this very turn (its future cancelled with its
            # task), and it has not run since: the answer is dropped, as a late one is, and
            # the entry left for the caller, which forgets it as it ends, to tell that the
            # request went out (taken away, it read as one never sent).
            return True
        del pending[request_id]
        entry[0].set_result(frame)
        return True

    def abandoned(self, frame: dict[str, Any]) -> bool:
        """Whether ``frame`` answers a request this socket made and no longer waits for (its
        caller timed out or was cancelled): a late answer, not a frame of the server's own."""
        request_id = frame.get("reqId")
        if not isinstance(request_id, str) or not request_id.startswith(self._prefix):
            return False
        number = request_id[len(self._prefix) :]
        # ASCII digits only, and no longer than the count could be: str.isdigit() accepts
        # other scripts' digits, and int() of a huge string is slow. Written as the socket
        # writes its ids, too: "01" or "007" is no id it handed out, whatever int() makes of it.
        if not (number.isascii() and number.isdigit()) or len(number) > 19:
            return False
        count = int(number)
        return (
            0 < count <= self._issued
            and str(count) == number
            and (self._pending is None or request_id not in self._pending)
        )

    def discard(self, request_id: str) -> None:
        """Forget ``request_id`` (its caller gave up)."""
        if self._pending is not None:
            self._pending.pop(request_id, None)

    def fail_epoch(self, epoch: int, error: Callable[[], BaseException]) -> int:
        """Fail every request sent on connection ``epoch`` with an exception ``error`` makes,
        a fresh one for each request; how many were failed.

        Fresh, not one for all: each caller raises its own, and raising sets an exception's
        ``__context__`` and ``__traceback__``. One shared, every caller's would show what the
        first to raise it was handling (another caller's error, its data with it), and the
        traceback would grow with each caller.

        A request whose future is done already (its caller's time ran out in this turn, its
        future cancelled with its task) is left for its caller, which forgets it as it ends:
        its entry still tells that it went out, and on which connection."""
        pending = self._pending
        if not pending:
            return 0
        failed = [rid for rid, (fut, e) in pending.items() if e == epoch and not fut.done()]
        for rid in failed:
            fut, _ = pending.pop(rid)
            fut.set_exception(error())
        return len(failed)

    def fail_all(
        self,
        error: Callable[[], BaseException],
        unsent: Callable[[], BaseException] | None = None,
    ) -> int:
        """Fail every request, sent or queued, each with a fresh exception ``error`` makes (see
        :meth:`fail_epoch`), or ``unsent`` makes for one only queued, never sent (when given);
        how many were failed. One whose future is done already is left for its caller, as
        :meth:`fail_epoch` leaves it."""
        pending = self._pending
        if not pending:
            return 0
        failed = [rid for rid, (fut, _) in pending.items() if not fut.done()]
        for rid in failed:
            fut, epoch = pending.pop(rid)
            fut.set_exception(error() if epoch is not None or unsent is None else unsent())
        return len(failed)


def failure_code(code: object) -> int | None:
    """The error code an answer's ``code`` says, or None when it says no error.

    JSON has one kind of number: a server that writes its codes as doubles sends 500 as
    ``500.0``, which is the same code. So an error is any number of 400 or more, an int or a
    float (as an int: a fraction part, which no code has, is dropped); not a bool (JSON's
    ``true`` is no number), nor NaN or an infinity (Python's JSON parser reads them, but they
    are no code at all: such an answer, as one whose ``code`` is missing or a str, is returned
    as it came).
    """
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code if code >= 400 else None
    if isinstance(code, float) and math.isfinite(code) and code >= 400:
        return int(code)
    return None
