"""Whether one task waits for another: how a socket tells a request its own callback waits for.

An ``on_frame`` handler runs in the task that reads the connection: a request it waits for could
never be answered. Awaited in that task itself, :func:`asyncio.current_task` says so; awaited
through another task (``asyncio.gather(ws.request(...))``, ``create_task`` then ``await``,
``asyncio.wait_for`` on Python 3.11, a ``TaskGroup``), only what the reading task is suspended on
says so. A task the handler starts and does not wait for is no deadlock, however long the
handler runs: its answer is read once the handler returns. So the socket asks
:func:`waits_for`, which follows what asyncio records of who waits for what:

- down from the waiting task: the future it is suspended on (``Task._fut_waiter``), through the
  tasks it awaits and the children of an ``asyncio.gather``;
- up from the waited-for task: the futures its end completes, held by its done callbacks (the
  task awaiting it, the future of ``wait_for``, ``asyncio.wait``, ``shield`` or a
  ``TaskGroup``), and onward from those.

The task waits for the other when the two meet. These are asyncio's private fields (kept since
Python 3.4): where one is missing the answer is "no", never a false alarm, and the socket
behaves as it did without the check (the request waits for its timeout).
"""

from __future__ import annotations

import asyncio
import functools
import types
from collections.abc import Generator, Iterable
from typing import Any

__all__ = ["waits_for", "yield_once"]

#: The most futures either walk visits: a graph of awaits is small, and a pathological one must
#: not make a request slow.
_LIMIT = 256


def _suspended_on(task: asyncio.Future[Any]) -> asyncio.Future[Any] | None:
    """The future ``task`` is suspended on, or None (not a task, or running, or about to)."""
    waiting = getattr(task, "_fut_waiter", None)
    return waiting if isinstance(waiting, asyncio.Future) else None


def _callbacks(fut: asyncio.Future[Any]) -> list[object]:
    """The done callbacks of ``fut`` (asyncio keeps each with its context)."""
    kept = getattr(fut, "_callbacks", None)
    if not isinstance(kept, list):
        return []
    return [entry[0] if isinstance(entry, tuple) and entry else entry for entry in kept]


def _of_asyncio(function: object) -> bool:
    """Whether ``function`` is asyncio's own (gather's, wait's, shield's, wait_for's, a
    TaskGroup's): only what those hold is what a task's end completes."""
    module = getattr(function, "__module__", None)
    return isinstance(module, str) and (module == "asyncio" or module.startswith("asyncio."))


def _held_futures(callback: object) -> Iterable[asyncio.Future[Any]]:
    """The futures a done callback completes: the task a wake-up belongs to; and, for asyncio's
    own callbacks only, a :func:`functools.partial`'s arguments, a closure's cells, a
    TaskGroup's fields. A callback of anyone else's may hold futures it never completes (one the
    handler waits on, say): followed, it would raise a false alarm."""
    held: list[object] = []
    func = callback.func if isinstance(callback, functools.partial) else callback
    owner = getattr(func, "__self__", None)
    if isinstance(owner, asyncio.Future):
        return [owner]
    if not _of_asyncio(func):
        return []
    if isinstance(callback, functools.partial):
        held.extend(callback.args)
        held.extend(callback.keywords.values())
    callback = func
    if isinstance(owner, asyncio.TaskGroup):
        held.extend(vars(owner).values())
    for cell in getattr(callback, "__closure__", None) or ():
        try:
            held.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    return [value for value in held if isinstance(value, asyncio.Future)]


def waits_for(waiter: asyncio.Task[Any], task: asyncio.Task[Any]) -> bool | None:
    """Whether ``waiter`` is suspended until ``task`` is done (see the module); None when
    ``waiter`` is not suspended (it runs, ``task`` having started eagerly inside it, or is
    about to): it cannot be told yet."""
    first = _suspended_on(waiter)
    if first is None:
        return None
    awaited: set[int] = set()
    stack = [first]
    while stack and len(awaited) < _LIMIT:
        fut = stack.pop()
        if fut is task:
            return True
        if id(fut) in awaited:
            continue
        awaited.add(id(fut))
        inner = _suspended_on(fut)
        if inner is not None:
            stack.append(inner)
        children = getattr(fut, "_children", None)  # the future of asyncio.gather
        if isinstance(children, list):
            stack.extend(child for child in children if isinstance(child, asyncio.Future))
    seen: set[int] = set()
    stack = [task]
    while stack and len(seen) < _LIMIT:
        fut = stack.pop()
        if id(fut) in awaited:
            return True
        if id(fut) in seen:
            continue
        seen.add(id(fut))
        for callback in _callbacks(fut):
            stack.extend(_held_futures(callback))
    return False


@types.coroutine
def yield_once() -> Generator[None, None, None]:
    """Let every other ready task run once (what ``asyncio.sleep(0)`` does, without a clock)."""
    yield
