"""Request/response correlation: ``kind: req`` frames matched to their ``resp`` by id.

Each request gets a fresh id and a future. A ``resp`` frame resolves the future whose id is its
``reqId``; when the connection a request went out on is lost, every request of that connection
fails with :class:`~le_transport.errors.SocketClosed` (the caller may retry), so no request is
ever left hanging.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

__all__ = ["PendingRequests"]


class PendingRequests:
    """The requests waiting for an answer, by id, with the connection epoch they went out on."""

    __slots__ = ("_ids", "_pending", "_prefix")

    def __init__(self, prefix: str = "") -> None:
        self._prefix = prefix
        # Both made on the first request: one per socket, and many sockets of a large fleet
        # send none between keepalives.
        self._ids: itertools.count[int] | None = None
        # id -> (future, epoch it was sent on; None while only queued)
        self._pending: dict[str, tuple[asyncio.Future[dict[str, Any]], int | None]] | None = None

    def __len__(self) -> int:
        return 0 if self._pending is None else len(self._pending)

    def open(self) -> tuple[str, asyncio.Future[dict[str, Any]]]:
        """A fresh request id and the future its answer will resolve."""
        if self._ids is None:
            self._ids = itertools.count(1)
        if self._pending is None:
            self._pending = {}
        request_id = f"{self._prefix}{next(self._ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (fut, None)
        return request_id, fut

    def sent(self, request_id: str, epoch: int | None) -> None:
        """Record that ``request_id`` went out on connection ``epoch`` (None: back in the
        queue, not sent after all)."""
        entry = None if self._pending is None else self._pending.get(request_id)
        if entry is not None and self._pending is not None:
            self._pending[request_id] = (entry[0], epoch)

    def resolve(self, frame: dict[str, Any]) -> bool:
        """Resolve the request ``frame`` answers; False when no such request waits."""
        request_id = frame.get("reqId")
        if not isinstance(request_id, str):
            return False
        entry = None if self._pending is None else self._pending.pop(request_id, None)
        if entry is None:
            return False
        if not entry[0].done():
            entry[0].set_result(frame)
        return True

    def discard(self, request_id: str) -> None:
        """Forget ``request_id`` (its caller gave up)."""
        if self._pending is not None:
            self._pending.pop(request_id, None)

    def fail_epoch(self, epoch: int, error: BaseException) -> int:
        """Fail every request sent on connection ``epoch``; how many were failed."""
        pending = self._pending
        if not pending:
            return 0
        failed = [rid for rid, (_, e) in pending.items() if e == epoch]
        for rid in failed:
            fut, _ = pending.pop(rid)
            if not fut.done():
                fut.set_exception(error)
        return len(failed)

    def fail_all(self, error: BaseException) -> int:
        """Fail every request, sent or queued; how many were failed."""
        pending = self._pending
        if not pending:
            return 0
        count = len(pending)
        for fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(error)
        pending.clear()
        return count
