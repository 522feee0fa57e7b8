"""Refused hosts: what their message may show of a value that may hold userinfo."""

from __future__ import annotations

import pytest

from le_transport.errors import HostileHostError
from le_transport.providers.domains import validate_host


@pytest.mark.parametrize(
    ("host", "hidden"),
    [
        ("AKIAIOSFODNN7EXAMPLE:90210/x@evil.example", "AKIAIOSFODNN7EXAMPLE"),
        ("consumer-key-123:4711?x@evil.example", "consumer-key-123"),
        ("k3y:8080#frag@evil.example", "k3y"),
    ],
)
def test_a_refused_host_never_shows_a_username_cut_short_by_a_slash(host: str, hidden: str) -> None:
    """``key:1234/x@host``: a '/', '?' or '#' in the password ends the authority there, and
    what stands before the ':' is userinfo's name (an access key), as secret as the rest."""
    with pytest.raises(HostileHostError) as info:
        validate_host(host, service="agentVep")
    message = str(info.value)
    assert hidden not in message
    assert f"{len(host)} characters" in message
