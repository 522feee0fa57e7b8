"""A LiveEngage stand-in for tests and demos: ``async with Simulator() as sim:``.

See :class:`Simulator` for the endpoints it serves, :class:`SimFaults` (``sim.faults``) for
scripting faults with the shared :mod:`le_transport.chaos` vocabulary,
:class:`~.sockets.SocketHub` (``sim.sockets``) for the messaging sockets, and
:meth:`Simulator.add_route` (:class:`SimRoute`) to serve endpoints of your own beside
LiveEngage's, with the same faults, records and credentials checks.
"""

from .auth import LoginSession, Token, TokenStore
from .config import (
    DEFAULT_ACCOUNT,
    DEFAULT_APP_KEY,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    SERVICES,
    Account,
    AppKey,
    SimulatorConfig,
)
from .server import RecordedRequest, RouteHandler, SimFaults, SimRoute, Simulator
from .sockets import PublishedMessage, SimSocket, SocketHub

__all__ = [
    "DEFAULT_ACCOUNT",
    "DEFAULT_APP_KEY",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_PASSWORD",
    "DEFAULT_USER",
    "SERVICES",
    "Account",
    "AppKey",
    "LoginSession",
    "PublishedMessage",
    "RecordedRequest",
    "RouteHandler",
    "SimFaults",
    "SimRoute",
    "SimSocket",
    "Simulator",
    "SimulatorConfig",
    "SocketHub",
    "Token",
    "TokenStore",
]
