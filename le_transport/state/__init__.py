"""Where shared state lives: in memory (the default, one process) or in Redis (a fleet).

Through a :class:`StateStore` the processes of a fleet share the session (one login per account
and user), the domain map, the retry budget and breaker trips, and the reconnect pace. The Redis
store is an optional extra (``pip install 'le_transport[redis]'``); wrap it in
:class:`FallbackStore` so that Redis failing never fails a call.
"""

from .domains import SharedDomainMap
from .fallback import DEFAULT_PRIMARY_TIMEOUT, DEFAULT_RETRY_INTERVAL, FallbackStore
from .memory import MemoryStore
from .pacing import FleetPacer
from .redis_store import DEFAULT_OP_TIMEOUT, DEFAULT_PREFIX, RedisStore
from .session import SharedSession, SharedToken
from .store import Entry, StateStore, state_key

__all__ = [
    "DEFAULT_OP_TIMEOUT",
    "DEFAULT_PREFIX",
    "DEFAULT_PRIMARY_TIMEOUT",
    "DEFAULT_RETRY_INTERVAL",
    "Entry",
    "FallbackStore",
    "FleetPacer",
    "MemoryStore",
    "RedisStore",
    "SharedDomainMap",
    "SharedSession",
    "SharedToken",
    "StateStore",
    "state_key",
]
