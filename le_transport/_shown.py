"""An error as the library may show it in a log line (a caller's callback or hook raised it):
its text redacted and cut short, and its traceback with every exception line redacted
(:func:`redacted_exc_info`)."""

from __future__ import annotations

import types
from typing import Any

from ._redact import CUT_MARGIN, redact_cut

__all__ = ["SHOWN_LIMIT", "ExcInfo", "error_text", "redacted_exc_info"]

#: The most characters of an error's text a log line shows.
SHOWN_LIMIT = 200

#: What ``exc_info=`` takes: the exception's type, the exception, its traceback.
ExcInfo = tuple[type[BaseException], BaseException, types.TracebackType | None]

#: How many exceptions of a chain (causes, contexts, a group's members) a traceback shows.
_CHAIN_LIMIT = 16

# The stand-in class made for each exception class met (see _stand_in_class): a process meets
# few, and the cache stops growing at this many (past it a class is made for each use).
_STAND_IN_CLASSES: dict[type[BaseException], type[BaseException]] = {}
_CACHED_CLASSES = 256


def error_text(error: BaseException, limit: int = SHOWN_LIMIT) -> str:
    """``error``'s text with credential-looking fragments replaced (redacted, then cut to
    ``limit`` characters, so that a cut never leaves half a secret unrecognised: see
    :func:`~le_transport._redact.redact_cut`), ending in "…" whenever it is not the whole
    text; its type's name when it has no text, or when its ``__str__`` fails."""
    try:
        text = str(error)
    except Exception:
        return type(error).__name__
    if not text:
        return type(error).__name__
    shown = redact_cut(text, limit + 1)
    if len(shown) <= limit and len(text) <= limit + 1 + CUT_MARGIN:
        return shown
    # Longer than the limit, or cut before it was redacted: a long secret shrunk to its
    # marker left a short text whose tail was never read, which must not pass for the whole.
    return shown[:limit] + "…"


def redacted_exc_info(error: BaseException) -> ExcInfo:
    """``exc_info`` for logging ``error``, a caller's exception, without its secrets.

    A formatter prints an exception's traceback with the exception's own text, and that of
    every exception chained to it (cause, context, a group's members, notes), as is: a token
    in a callback's error reached the log through it although the message redacted it. Here
    the exception is replaced by a stand-in of the same class name and module (a class of
    the library's own: a subclass of a built-in class, never of a caller's), whose
    text is :func:`error_text`'s, and whose chain is made of such stand-ins, each with its
    exception's own traceback. The type and the traceback
    (its frames: file, line, the source line) are ``error``'s. Never raises.
    """
    return type(error), _stand_in(error, {}, [0]), error.__traceback__


def _stand_in(
    error: BaseException, made: dict[int, BaseException], count: list[int]
) -> BaseException:
    known = made.get(id(error))
    if known is not None:
        return known
    count[0] += 1
    text = error_text(error)
    members: list[BaseException] = []
    if isinstance(error, BaseExceptionGroup):
        members = [_stand_in(member, made, count) for member in error.exceptions]
    stand_in = _make(type(error), text, members)
    made[id(error)] = stand_in
    try:
        notes = getattr(error, "__notes__", None)
        if isinstance(notes, list):
            stand_in.__notes__ = [
                redact_cut(note, SHOWN_LIMIT) if isinstance(note, str) else "?" for note in notes
            ]
        stand_in.__traceback__ = error.__traceback__
        for link in ("__cause__", "__context__"):
            linked = getattr(error, link)
            if linked is not None and count[0] < _CHAIN_LIMIT:
                setattr(stand_in, link, _stand_in(linked, made, count))
        # After the links: setting a cause sets it too.
        stand_in.__suppress_context__ = error.__suppress_context__
    except Exception:  # a hostile exception class: its chain is left out
        pass
    return stand_in


def _make(cls: type[BaseException], text: str, members: list[BaseException]) -> BaseException:
    """An instance of ``cls``'s stand-in class whose ``str`` is ``text`` (a group's, with
    ``members``); a plain stand-in saying what ``cls`` was when none can be made."""
    try:
        shown_as = _stand_in_class(cls)
        if issubclass(shown_as, BaseExceptionGroup):
            if members:
                return shown_as.__new__(shown_as, text, members)
        else:
            stand_in = shown_as.__new__(shown_as)
            stand_in.args = (text,)
            return stand_in
    except Exception:
        pass
    return _Unshown(f"{cls.__module__}.{cls.__qualname__}: {text}")


def _stand_in_class(cls: type[BaseException]) -> type[BaseException]:
    """A class of the library's own named as ``cls`` (module, qualified name: what a traceback
    prints): a subclass of a built-in ``cls``; for any other, on the standard base ``cls``
    has (an exception group's for a group), not a subclass of ``cls``: subclassing a caller's
    class runs its ``__init_subclass__`` (a registry by class name, overwritten by a
    stand-in) and leaves the stand-in among its ``__subclasses__()``."""
    shown_as = _STAND_IN_CLASSES.get(cls)
    if shown_as is None:
        base: type[BaseException]
        if cls.__module__ == "builtins":
            # Python's own (RuntimeError, OSError...): subclassed, so that a handler that
            # looks at the logged exception's kind still sees it; they run no caller code.
            base = cls
        elif issubclass(cls, BaseExceptionGroup):
            base = ExceptionGroup if issubclass(cls, Exception) else BaseExceptionGroup
        else:
            base = Exception if issubclass(cls, Exception) else BaseException
        namespace: dict[str, Any] = {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__str__": _shown_text,
            "__repr__": _shown_repr,
        }
        shown_as = types.new_class(cls.__name__, (base,), exec_body=lambda ns: ns.update(namespace))
        if len(_STAND_IN_CLASSES) < _CACHED_CLASSES:
            _STAND_IN_CLASSES[cls] = shown_as
    return shown_as


def _shown_text(self: BaseException) -> str:
    return str(self.args[0]) if self.args else ""


def _shown_repr(self: BaseException) -> str:
    return f"{type(self).__name__}({_shown_text(self)!r})"


class _Unshown(Exception):
    """Stands for an exception that no stand-in of its own class could be made for."""
