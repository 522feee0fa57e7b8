"""A provider of one's own that wraps a library provider, as the README shows it.

The README said a wrapper adding a header makes new credentials with ``attrs.evolve``, and
nothing more: written from that sentence, the wrapper never attached the library's provider
inside (the engine attaches only the provider it is given), and every call failed with "not
attached to an engine: pass it to Engine(..., auth=...)", which the user had done. The README
now shows the wrapper forwarding ``attach``, ``relogin`` and ``generation``, and the error
says what a wrapper has to forward.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from yarl import URL

from le_transport import (
    AuthProvider,
    Credentials,
    Engine,
    StaticDomains,
    UserLogin,
)
from le_transport.errors import ConfigurationError
from le_transport.providers import ProviderHttp
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import DEFAULT_PASSWORD, DEFAULT_USER, Simulator

USERS = "/api/account/{}/configuration/le-users/users"


class Tracing:
    """The README's wrapper: adds a trace header to another provider's credentials."""

    credential_headers = frozenset({"authorization"})

    def __init__(self, inner: UserLogin) -> None:
        self.inner = inner

    def attach(self, http: ProviderHttp) -> None:
        self.inner.attach(http)

    async def relogin(self) -> Credentials:
        return await self.inner.relogin()

    @property
    def generation(self) -> int:
        return self.inner.generation

    async def credentials(self, method: str, url: URL) -> Credentials:
        creds = await self.inner.credentials(method, url)
        return attrs.evolve(creds, headers={**creds.headers, "X-Trace": "t1"})

    async def invalidate(self, rejected: Credentials) -> None:
        await self.inner.invalidate(rejected)

    async def close(self) -> None:
        await self.inner.close()


class Unforwarding:
    """A wrapper with the protocol's three methods only."""

    def __init__(self, inner: UserLogin) -> None:
        self.inner = inner

    async def credentials(self, method: str, url: URL) -> Credentials:
        return await self.inner.credentials(method, url)

    async def invalidate(self, rejected: Credentials) -> None:
        await self.inner.invalidate(rejected)

    async def close(self) -> None:
        await self.inner.close()


def _login(sim: Simulator, domains: StaticDomains) -> UserLogin:
    return UserLogin(sim.account.id, DEFAULT_USER, DEFAULT_PASSWORD, domains=domains)


async def test_the_readmes_wrapper_logs_in_and_replays_a_401_through_the_inner_provider(
    clock: VirtualClock,
) -> None:
    async with Simulator(clock=clock) as sim:
        domains = StaticDomains(sim.domains)
        auth = Tracing(_login(sim, domains))
        assert isinstance(auth, AuthProvider)
        path = USERS.format(sim.account.id)
        async with Engine(domains, auth=auth, scheme="http", clock=clock) as engine:
            assert await engine.request_json("GET", "accountConfigReadOnly", path)
            before = auth.generation
            sim.tokens.revoke()
            assert await engine.request_json("GET", "accountConfigReadOnly", path)
            assert auth.generation == before + 1, "the 401 replay logged in again through it"
            sent = [r for r in sim.requests if r.path == path]
            assert [r.headers.get("X-Trace") for r in sent] == ["t1"] * 3


async def test_a_wrapper_that_does_not_forward_attach_is_told_so(clock: VirtualClock) -> None:
    async with Simulator(clock=clock) as sim:
        domains = StaticDomains(sim.domains)
        auth: Any = Unforwarding(_login(sim, domains))
        async with Engine(domains, auth=auth, scheme="http", clock=clock) as engine:
            with pytest.raises(ConfigurationError, match=r"must forward attach\(\)"):
                await engine.request("GET", "accountConfigReadOnly", USERS.format(sim.account.id))
