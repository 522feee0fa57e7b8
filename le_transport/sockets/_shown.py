"""An error's text as the socket layer may show it in a log line: redacted and cut short."""

from __future__ import annotations

from .._redact import redact_text

__all__ = ["SHOWN_LIMIT", "error_text"]

#: The most characters of an error's text a log line shows.
SHOWN_LIMIT = 200


def error_text(error: BaseException, limit: int = SHOWN_LIMIT) -> str:
    """``error``'s text with credential-looking fragments replaced (redacted whole, then cut to
    ``limit`` characters, so that a cut never leaves half a secret unrecognised); its type's
    name when it has no text, or when its ``__str__`` fails."""
    try:
        text = str(error)
    except Exception:
        return type(error).__name__
    if not text:
        return type(error).__name__
    shown = redact_text(text)
    return shown if len(shown) <= limit else shown[:limit] + "…"
