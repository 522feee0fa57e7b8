"""Fault injection: one seeded, serialisable fault vocabulary, and the client-side injector.

:class:`FaultPlan` describes what goes wrong and when; the simulator's scripting
(``sim.faults``) and :class:`FaultInjector` (an aiohttp client middleware) both apply it.
The library never imports this package.
"""

from .injector import FaultInjector
from .plan import (
    HTTP_FAULTS,
    UNITS,
    WS_FAULTS,
    Delay,
    EmptyResponse,
    Fault,
    FaultDecision,
    FaultPlan,
    FaultRule,
    FaultRun,
    Hang,
    Injection,
    MalformedBody,
    Match,
    Reset,
    Schedule,
    Status,
    TruncatedBody,
    WsClose,
    WsDrop,
    WsRejectHandshake,
    WsSilence,
    draw,
    fault_from_dict,
    fault_to_dict,
)

__all__ = [
    "HTTP_FAULTS",
    "UNITS",
    "WS_FAULTS",
    "Delay",
    "EmptyResponse",
    "Fault",
    "FaultDecision",
    "FaultInjector",
    "FaultPlan",
    "FaultRule",
    "FaultRun",
    "Hang",
    "Injection",
    "MalformedBody",
    "Match",
    "Reset",
    "Schedule",
    "Status",
    "TruncatedBody",
    "WsClose",
    "WsDrop",
    "WsRejectHandshake",
    "WsSilence",
    "draw",
    "fault_from_dict",
    "fault_to_dict",
]
