"""The resilient WebSocket: lifecycle owner, request/response, outgoing queue, keepalive.

:class:`ResilientSocket` is what :meth:`le_transport.Engine.websocket` returns. Its decisions
come from the pure policies (:class:`~le_transport.policies.ClosePolicy`,
:class:`~le_transport.policies.BackoffPolicy`, :class:`~le_transport.policies.Keepalive`,
:class:`~le_transport.policies.TokenBucket`); this package only acts on them.

``__all__`` is the API. The socket's internals (``Lifecycle``, ``Outbox``, ``Outgoing``,
``PendingRequests``) are not in it: they live in their modules (``le_transport.sockets.lifecycle``,
``.outbox``, ``.correlation``).
"""

from .dial import (
    BEARER_FIELD,
    CONSUMER_SOCKET_QUERY,
    UMS_BRAND_SOCKET_QUERY,
    AuthPlacement,
    Connection,
    Dialer,
    DialFailed,
    EngineDialer,
    consumer_path,
    init_connection_frame,
    ums_brand_path,
)
from .escalation import RecoveryEscalation
from .keepalive import KeepaliveScheduler, KeepaliveTask, watch_socket
from .lifecycle import SocketState
from .options import (
    HEALTHY_AFTER,
    KEEPALIVE_BY_PATH,
    MESSAGING_AGENT_KEEPALIVE,
    MESSAGING_CONSUMER_KEEPALIVE,
    KeepaliveByPath,
    SocketOptions,
    keepalive_for_path,
    query_for_path,
)
from .pacing import ReconnectPacer
from .socket import (
    HANDLER_EXCUSE,
    EscalationRequest,
    FrameHandler,
    OnConnect,
    ReloginEscalation,
    ResilientSocket,
    check_on_connect,
)

__all__ = [
    "BEARER_FIELD",
    "CONSUMER_SOCKET_QUERY",
    "HANDLER_EXCUSE",
    "HEALTHY_AFTER",
    "KEEPALIVE_BY_PATH",
    "MESSAGING_AGENT_KEEPALIVE",
    "MESSAGING_CONSUMER_KEEPALIVE",
    "UMS_BRAND_SOCKET_QUERY",
    "AuthPlacement",
    "Connection",
    "DialFailed",
    "Dialer",
    "EngineDialer",
    "EscalationRequest",
    "FrameHandler",
    "KeepaliveByPath",
    "KeepaliveScheduler",
    "KeepaliveTask",
    "OnConnect",
    "ReconnectPacer",
    "RecoveryEscalation",
    "ReloginEscalation",
    "ResilientSocket",
    "SocketOptions",
    "SocketState",
    "check_on_connect",
    "consumer_path",
    "init_connection_frame",
    "keepalive_for_path",
    "query_for_path",
    "ums_brand_path",
    "watch_socket",
]
