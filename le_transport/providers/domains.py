"""Domain providers: given a LiveEngage service name, the host that serves it.

Every LiveEngage API's host comes from the Domain API (CSDS) per account and service name. The
:class:`DomainProvider` protocol is what the engine asks; :class:`StaticDomains` answers from a
fixed mapping (custom endpoints, local servers, tests).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from yarl import URL

from ..errors import (
    ConfigurationError,
    HostConfigurationError,
    HostileHostError,
    UnknownServiceError,
)

__all__ = ["DomainProvider", "StaticDomains", "validate_host"]

# A bare hostname (RFC 1123 labels) or an IPv4 address, optionally with a port; or a bracketed
# IPv6 literal with an optional port. Nothing else: no scheme, path, userinfo, whitespace.
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOST = re.compile(
    rf"^(?:(?:{_LABEL})(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{{1,5}}))?$"
)


def validate_host(host: object, *, service: str = "?", account: str | None = None) -> str:
    """``host`` if it is a bare hostname with an optional port; else :class:`HostileHostError`.

    An IPv6 literal is returned compressed, as a URL built with it names its host (yarl's
    ``URL.host``, to which the engine's credential check compares it): ``[0:0:0:0:0:0:0:1]``
    is ``[::1]``. A name's trailing dot is dropped (``name.:8443`` is ``name:8443``). A name
    with an ``xn--`` (internationalised) label that does not decode is refused (a URL built
    with it cannot name its host).

    The value is never echoed whole in the error (it may be an attacker's payload): only its
    length and a short, printable prefix.
    """
    if not isinstance(host, str) or not host or len(host) > 260:
        got = (
            type(host).__name__
            if not isinstance(host, str)
            else "an empty str"
            if not host
            else f"a str of {len(host)} characters"
        )
        raise HostileHostError(
            f"refusing the host for service {service!r}: not a non-empty string of at most 260 "
            f"characters (got {got})",
            account=account,
        )
    canonical = _canonical(host)
    if canonical is None:
        raise HostileHostError(
            f"refusing the host {_shown_host(host)} for service {service!r}: a host must be a "
            "bare hostname with an optional port (no scheme, path, userinfo, whitespace or "
            "control characters); no credential is sent to it",
            account=account,
        )
    return canonical


def _canonical(host: str) -> str | None:
    """``host`` as :func:`validate_host` returns it, or None if it is refused."""
    # fullmatch: '$' alone would let a trailing newline through.
    m = _HOST.fullmatch(host)
    if m is None or (m.group("port") is not None and not 0 < int(m.group("port")) < 65536):
        return None
    if host.startswith("["):
        inside, _, rest = host[1:].partition("]")
        compressed = _url_host(inside) if _is_ipv6(inside) else None
        return None if compressed is None else f"[{compressed}]{rest}"
    name, colon, port = host.partition(":")
    name = name.rstrip(".")
    if "xn--" in name.lower() and _url_host(name) is None:
        return None
    # The trailing dot goes before a port too: "name.:8443" is "name:8443", as "name." is
    # "name" (else one host was two, and a URL named a host its certificate does not carry).
    return f"{name}{colon}{port}"


def _url_host(name: str) -> str | None:
    """The host of a URL built with ``name`` (yarl's ``URL.host``), or None if yarl cannot
    build or decode it."""
    try:
        return URL.build(scheme="https", host=name).host
    except ValueError:  # UnicodeError included: an xn-- label that does not decode
        return None


#: What a host and its port are made of (an IPv6 literal in brackets, or a name), and so what
#: a refusal may show of one.
_HOSTLIKE = re.compile(r"(?:\[[0-9A-Fa-f:.]*\]?|[A-Za-z0-9.\-]*)(?::[0-9]*)?")
_SHOWN = 40


def _shown_host(host: str) -> str:
    """A refused host as its message shows it: only the hostname-like part it starts with (up
    to 40 characters) and the first character that cannot be in a host. Userinfo (before an
    ``@``: a password, an access key) and what follows a host (a token in a query or a path)
    may be secrets and are never shown; nor is a name and port before a ``/``, ``?`` or ``#``
    that an ``@`` follows (``key:4711/x@host``: an access key and a password's first digits,
    cut short there): only the value's length is."""
    prefix = ""
    # Userinfo is what stands before an '@' in the authority only: one in a path, a query or a
    # fragment (an e-mail address in a parameter) is not, and what follows it is no host.
    authority = re.split(r"[/?#]", host.partition("://")[2] if "://" in host else host)[0]
    if "@" in authority:
        prefix = "***@"
        host = host[host.index(authority) + authority.rindex("@") + 1 :]
    head = _HOSTLIKE.match(host)
    end = head.end() if head is not None else 0
    userinfo_like = not (prefix or host.startswith("[") or "://" in host)
    if userinfo_like and "@" in host[end:] and ":" in host[:end]:
        # A '/', '?' or '#' in a password ends the authority where it stands ("bot:4711/x@h"):
        # what stands before it, read as a name and a port, may be a username and the
        # password's first digits, and the name an access key: none of it is shown.
        return f"'***' ({len(host)} characters, maybe userinfo, not shown)"
    shown = repr(prefix + host[: min(end, _SHOWN)])
    if end > _SHOWN:
        return f"{shown}... ({len(host) - _SHOWN} more characters, not shown)"
    if end >= len(host):
        return shown
    return f"{shown} (then {host[end]!r}: {len(host) - end - 1} more characters, not shown)"


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def require_service(owner: str, service: object) -> None:
    """A :class:`~le_transport.errors.ConfigurationError` if ``service`` is no str (a list or
    a dict made ``dict.get`` raise an untyped ``TypeError``); its value is not shown."""
    if not isinstance(service, str):
        raise ConfigurationError(
            f"{owner}.resolve: the service must be a str naming a service, got "
            f"{type(service).__name__}"
        )


@runtime_checkable
class DomainProvider(Protocol):
    """Resolves a service name to its host (``name`` or ``name:port``)."""

    async def resolve(self, service: str) -> str:
        """The host for ``service``; :class:`UnknownServiceError` if there is none."""
        ...

    async def invalidate(self) -> None:
        """Forget cached answers, so that the next :meth:`resolve` asks again (outer recovery)."""
        ...


class StaticDomains:
    """A fixed ``{service: host}`` mapping, validated once at construction: a host that is
    not a bare hostname with an optional port is a
    :class:`~le_transport.errors.HostConfigurationError` (a ConfigurationError)."""

    __slots__ = ("_hosts",)

    def __init__(self, hosts: Mapping[str, str]) -> None:
        if not isinstance(hosts, Mapping) or not all(isinstance(svc, str) and svc for svc in hosts):
            raise ConfigurationError(
                "StaticDomains.hosts must be a mapping of non-empty service names to hosts, "
                f"got {type(hosts).__name__}"
            )
        try:
            self._hosts = {svc: validate_host(h, service=svc) for svc, h in hosts.items()}
        except HostileHostError as exc:
            # The caller's own configuration: a ConfigurationError too, found here.
            raise HostConfigurationError(str(exc)) from None

    async def resolve(self, service: str) -> str:
        """The configured host for ``service``; a ``service`` that is no str is a
        :class:`~le_transport.errors.ConfigurationError`."""
        require_service("StaticDomains", service)
        try:
            return self._hosts[service]
        except KeyError:
            known = sorted(self._hosts)
            raise UnknownServiceError(
                f"unknown service {service!r}; known services: {', '.join(known) or 'none'} "
                "(names are case sensitive)",
                service=service,
                known=known,
            ) from None

    async def invalidate(self) -> None:
        """Nothing to forget."""

    @property
    def hosts(self) -> Mapping[str, str]:
        """The mapping."""
        return dict(self._hosts)

    def __repr__(self) -> str:
        return f"StaticDomains({self._hosts!r})"
