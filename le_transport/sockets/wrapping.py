"""What a resilient socket's dialer offers a middleware that wraps the sockets it opens.

The dialer does not import the fault injector (``le_transport.chaos``, a testing tool that
production code never loads): it finds one among the engine's middlewares by this protocol,
as the engine finds a middleware's ``bind_clock``, and sets the two context variables below
while it upgrades, for such a middleware to match and record the upgrade by.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

__all__ = ["UPGRADE_PATH", "UPGRADE_SERVICE", "SocketWrapper", "socket_wrapper"]

#: While a resilient socket dials, its upgrade's path as it may be shown and matched: the path
#: template's, with the bearer's place named (``{bearer}`` → ``bearer``), never its value. Set
#: by the socket's dialer; a plain ``ws_connect`` leaves it unset and the real path is used
#: (where ``redact_url`` hides the UMS path's bearer).
UPGRADE_PATH: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "le_transport_upgrade_path", default=None
)
#: While a resilient socket dials, the service it belongs to: an upgrade runs in no call of the
#: engine's (no call context names its service), and a rule's ``Match(service=...)`` must match
#: it as the simulator's does. Set by the socket's dialer, beside :data:`UPGRADE_PATH`.
UPGRADE_SERVICE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "le_transport_upgrade_service", default=None
)


@runtime_checkable
class SocketWrapper(Protocol):
    """A middleware that wraps each socket a resilient socket opens (the fault injector).

    ``active``: whether it has anything to do (the dialer skips it when not);
    ``wrap_socket(ws, path, service=...)``: the socket to use in place of ``ws``, just opened
    on ``path`` (the template's, bearer hidden) for ``service``.
    """

    @property
    def active(self) -> bool:
        """Whether it has anything to do (a fault injector: whether it holds any rule). When
        False the dialer skips it: the socket is used as it was opened, nothing wrapped."""
        ...

    async def wrap_socket(self, ws: Any, path: str, *, service: str | None = None) -> Any:
        """The socket to use in place of ``ws``, an aiohttp WebSocket the dialer has just
        opened (its upgrade accepted by the server).

        - ``path``: the upgrade's path as it may be shown and matched: the path template's,
          the bearer's place named, never its value (see :data:`UPGRADE_PATH`).
        - ``service``: the service the socket belongs to (see :data:`UPGRADE_SERVICE`), None
          when unknown.

        Returns an object with ``ws``'s interface (``ws`` itself when it has nothing to do on
        this socket), which the connection then reads and writes instead of ``ws``. If it
        raises (a cancellation included), the dialer closes ``ws`` and the connect fails.
        """
        ...


def socket_wrapper(middlewares: Iterable[object]) -> SocketWrapper | None:
    """The first active :class:`SocketWrapper` among ``middlewares``, or None."""
    for middleware in middlewares:
        if isinstance(middleware, SocketWrapper) and middleware.active:
            return middleware
    return None
