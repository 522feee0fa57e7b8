"""aiohttp client middlewares: the policies applied to real requests.

Each middleware is a hashable callable ``(request, handler) -> response`` that can be put on
any ``aiohttp.ClientSession(middlewares=...)``; :class:`le_transport.Engine` builds the stack.
"""

from .context import CallContext, call_context, current_call
from .retry import RetryMiddleware

__all__ = ["CallContext", "RetryMiddleware", "call_context", "current_call"]
