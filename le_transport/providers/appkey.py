"""The Server Chat API's app key: ``Authorization: LivePerson appKey=<key>`` on each request.

LiveEngage's Server Chat API ("Retrieve Chat Information", the call that keeps a chat alive
every 30 s: :data:`~le_transport.policies.SERVER_CHAT_API_CHAT_INFO`) authorises a request by
the application's key alone, in its own header form; neither a Login Service bearer nor an
OAuth 1.0 signature stands in for it. :class:`AppKeyAuth` is the
:class:`~le_transport.providers.AuthProvider` that writes that header.

There is no session: nothing to log in to, refresh or log out of. A 401 therefore cannot be
cured by a login: the auth middleware's one replay sends the same key again, and its second
401 is an :class:`~le_transport.errors.AuthenticationError` (check the key and the account
it belongs to).
"""

from __future__ import annotations

from typing import ClassVar

from yarl import URL

from .._redact import Secret
from ..errors import ConfigurationError
from ._http import header_safe, validate_account
from .auth import Credentials, _unsendable

__all__ = ["AppKeyAuth"]

#: The header's scheme and parameter, as LiveEngage writes them.
_PREFIX = "LivePerson appKey="


def _app_key(value: object) -> Secret:
    """``value`` as a :class:`Secret` that can go in the header; never echoed when refused."""
    if isinstance(value, str):
        value = Secret(value)
    if not isinstance(value, Secret):
        problem = f"got {type(value).__name__}"
    else:
        text = value.reveal()
        if text.lower().startswith(("liveperson ", "appkey=")):
            # Sent as is, the header would read "LivePerson appKey=appKey=...": refused.
            problem = (
                "it starts with the header's own words: pass the key alone; AppKeyAuth "
                "writes the Authorization header itself, as LivePerson appKey=<key>"
            )
        elif text[:7].lower() == "bearer ":
            # Told as StaticBearer's mistake, it named the wrong class: an app key is no
            # bearer, and the header AppKeyAuth writes is its own.
            problem = (
                "it starts with 'Bearer ': an app key is no bearer (StaticBearer takes a "
                "bearer); pass the key alone, which AppKeyAuth sends in its "
                "Authorization header as LivePerson appKey=<key>"
            )
        elif header_safe(text):
            return value
        else:
            problem = _unsendable(text)
    raise ConfigurationError(
        "AppKeyAuth.app_key must be a non-empty str or Secret of visible ASCII characters "
        f"(no whitespace or control characters): {problem}"
    )


class AppKeyAuth:
    """An application's key for the Server Chat API: ``Authorization: LivePerson appKey=<key>``.

    - ``account``: the LiveEngage account id the key belongs to (checked as every provider
      checks it; :attr:`account`).
    - ``app_key``: the key, a str or a :class:`~le_transport.Secret`. It is a credential:
      never shown in a repr, a log or an error's text.

    Use it on an engine of its own for the Server Chat API's chat-info keepalive::

        auth = AppKeyAuth("123", app_key)
        async with Engine(domains, auth=auth) as engine:
            engine.keepalive(SERVER_CHAT_API_CHAT_INFO, "agentVep",
                             fields={"account": "123", "chat_id": chat_id})

    It cannot re-authenticate: :meth:`invalidate` keeps the key (a 401's replay sends it again
    and its second 401 is an :class:`~le_transport.errors.AuthenticationError`), it has no
    ``relogin`` (the outer recovery loop re-resolves the domains only), and :meth:`update`
    replaces the key. It gives no bearer: a socket that needs one (the UMS path, a consumer
    JWT) cannot use it. It holds no session: :meth:`close` ends nothing, and one instance may
    serve several engines, one after another or at once (each closes its auth provider as it
    closes).
    """

    __slots__ = ("_account", "_generation", "_key")
    #: The header its credentials set (see :class:`~le_transport.providers.AuthProvider`).
    credential_headers: ClassVar[frozenset[str]] = frozenset({"authorization"})

    def __init__(self, account: str, app_key: str | Secret) -> None:
        self._account = validate_account(account, owner="AppKeyAuth")
        self._key = _app_key(app_key)
        self._generation = 0

    @property
    def account(self) -> str:
        """The account id."""
        return self._account

    def update(self, app_key: str | Secret) -> None:
        """Replace the key (rotated elsewhere). A key that cannot be sent is a
        :class:`~le_transport.errors.ConfigurationError`; the old one stays."""
        self._key = _app_key(app_key)
        self._generation += 1

    async def credentials(self, method: str, url: URL) -> Credentials:
        """``Authorization: LivePerson appKey=<key>``."""
        return Credentials(
            headers={"Authorization": _PREFIX + self._key.reveal()},
            generation=self._generation,
        )

    async def invalidate(self, rejected: Credentials) -> None:
        """Nothing to drop: the key is the caller's, and no login can replace it."""

    async def close(self) -> None:
        """Nothing to close: no session (the key stays the caller's, usable again)."""

    def __repr__(self) -> str:
        return f"AppKeyAuth(account={self._account!r}, app_key={self._key!r})"
