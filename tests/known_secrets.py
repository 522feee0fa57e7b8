"""The test credentials, in one place, and the check that none of them ever reaches a log.

Every test that needs a credential takes it from here, so that the test-wide check in
``tests/conftest.py`` knows what to look for: a :class:`SecretLeakHandler` is attached to the
root logger at DEBUG for every test, and the test fails if any record (its message, its ``extra``
fields, or the message of an exception it carries) contains one of these values.

The values are long and distinctive, so that a hit is never a coincidence. The simulator's own
default credentials (``le_transport.testing.simulator``) are added when it exists, and a test
can add values it learns at run time (a bearer the simulator issued) through the
``secret_values`` fixture.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable

__all__ = [
    "ACCESS_TOKEN",
    "ACCESS_TOKEN_SECRET",
    "ALL",
    "APP_SECRET",
    "BEARER",
    "CLIENT_SECRET",
    "CSRF",
    "JWT",
    "PASSWORD",
    "SESSION_ID",
    "SecretLeakHandler",
    "find_secrets",
    "simulator_defaults",
]

PASSWORD = "s3cr3t-PASSWORD-do-not-log"
APP_SECRET = "s3cr3t-APPSECRET-do-not-log"
ACCESS_TOKEN = "s3cr3t-ACCESSTOKEN-do-not-log"
ACCESS_TOKEN_SECRET = "s3cr3t-TOKENSECRET-do-not-log"
CLIENT_SECRET = "s3cr3t-CLIENTSECRET-do-not-log"
BEARER = "s3cr3t-BEARER-do-not-log"
CSRF = "s3cr3t-CSRF-do-not-log"
SESSION_ID = "s3cr3t-SESSIONID-do-not-log"
# A JWT-shaped value (header {"alg":"HS256","typ":"JWT"}), so that shape-based redaction is
# exercised too; the payload segment spells out what it is.
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.czNjcjN0LUpXVC1kby1ub3QtbG9n.c2lnbmF0dXJl"

#: Every credential defined here.
ALL: tuple[str, ...] = (
    PASSWORD,
    APP_SECRET,
    ACCESS_TOKEN,
    ACCESS_TOKEN_SECRET,
    CLIENT_SECRET,
    BEARER,
    CSRF,
    SESSION_ID,
    JWT,
)

_NAMES = {
    value: name
    for name, value in list(globals().items())
    if name.isupper() and isinstance(value, str) and value in ALL
}

# Fields every LogRecord has; anything else on a record came from ``extra``.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None).__dict__
) | {"message", "asctime", "taskName"}

# Values shorter than this are not searched for: a simulator default like "secret" would
# match harmless words.
_MIN_LEN = 8


@functools.cache
def simulator_defaults() -> tuple[str, ...]:
    """The simulator's default credentials (password, secrets, tokens), if it defines any.

    Read by name from ``le_transport.testing.simulator`` so that this module keeps working
    whatever the simulator calls its defaults and before it exists.
    """
    try:
        from le_transport.testing import simulator
    except ImportError:
        return ()
    found: set[str] = set()
    for module in _simulator_modules(simulator):
        for name, value in vars(module).items():
            if _looks_secret_name(name):
                found.update(_strings(value))
    return tuple(v for v in sorted(found) if len(v) >= _MIN_LEN)


def _simulator_modules(package: object) -> list[object]:
    import importlib
    import pkgutil

    modules = [package]
    path = getattr(package, "__path__", None)
    if path is not None:
        for info in pkgutil.iter_modules(path):
            try:
                modules.append(importlib.import_module(f"{package.__name__}.{info.name}"))  # type: ignore[attr-defined]
            except ImportError:
                continue
    return modules


def _looks_secret_name(name: str) -> bool:
    upper = name.upper()
    return upper.startswith("DEFAULT") and any(
        part in upper for part in ("PASSWORD", "SECRET", "TOKEN", "BEARER", "CSRF", "JWT", "KEY")
    )


def _strings(value: object) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            yield from _strings(v)
    else:
        # An attrs/dataclass value holding the defaults: look at its string fields by name.
        for attr in dir(value):
            if attr.startswith("_") or not any(
                p in attr.lower() for p in ("password", "secret", "token", "bearer", "csrf", "jwt")
            ):
                continue
            try:
                field = getattr(value, attr)
            except Exception:
                continue
            reveal = getattr(field, "reveal", None)
            if callable(reveal):
                field = reveal()
            if isinstance(field, str):
                yield field


def find_secrets(text: str, secrets: Iterable[str]) -> list[str]:
    """The secrets that occur in ``text``."""
    return [s for s in secrets if s and s in text]


def record_text(record: logging.LogRecord) -> str:
    """Everything a log record could show: message, ``extra`` fields, exception messages."""
    parts: list[str] = []
    try:
        parts.append(record.getMessage())
    except Exception:
        parts.append(f"{record.msg!r} % {record.args!r}")
    for key, value in record.__dict__.items():
        if key not in _STANDARD_ATTRS:
            parts.append(f"{key}={value!r}")
            parts.append(f"{key}={value!s}")
    if record.exc_info and record.exc_info[1] is not None:
        parts.extend(exception_messages(record.exc_info[1]))
    if record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts)


def exception_messages(exc: BaseException) -> list[str]:
    """``str`` and ``repr`` of an exception and of every exception chained to it."""
    seen: set[int] = set()
    out: list[str] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        try:
            out.append(str(e))
            out.append(repr(e))
        except Exception:
            out.append(f"<unprintable {type(e).__name__}>")
        todo.extend((e.__cause__, e.__context__))
        todo.extend(getattr(e, "exceptions", ()))
    return out


class SecretLeakHandler(logging.Handler):
    """Scans every record as it is emitted and remembers the ones that show a secret.

    ``secrets`` is kept by reference, so values a test adds while it runs are searched for in
    every later record; :meth:`rescan` checks the records kept so far (at most ``keep``, so a
    long soak run does not make the handler grow) against values learnt late.
    """

    def __init__(self, secrets: set[str], *, keep: int = 5000) -> None:
        super().__init__(level=logging.DEBUG)
        self.secrets = secrets
        self.leaks: list[str] = []
        self._kept: list[tuple[str, str]] = []
        self._keep = keep

    def emit(self, record: logging.LogRecord) -> None:
        """Check one record."""
        text = record_text(record)
        where = f"{record.name}:{record.levelname}"
        self._check(where, text)
        if len(self._kept) < self._keep:
            self._kept.append((where, text))

    def rescan(self) -> None:
        """Check the kept records again, against every value known now."""
        self.leaks.clear()
        for where, text in self._kept:
            self._check(where, text)

    def _check(self, where: str, text: str) -> None:
        hits = find_secrets(text, self.secrets)
        if hits:
            names = ", ".join(_NAMES.get(h, "a run-time credential") for h in hits)
            self.leaks.append(f"{where} record shows {names}")
