"""OAuth 1.0 over form-encoded bodies (RFC 5849 3.4.1.3.1): the auth middleware hands a form
body's parameters to a body-signing provider, the simulator's verifier (which signs them, as
LiveEngage's gateway does) accepts the request, a JSON body stays out of the signature, a
replay is signed anew over the same form, and a form that cannot be read or decoded is refused
before anything is sent, without showing its contents."""

from __future__ import annotations

import asyncio
import io
import itertools
import re
from collections.abc import AsyncIterator, Sequence
from urllib.parse import unquote, urlencode

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import MultiDict
from yarl import URL

from le_transport import AuthenticationError, BodySigningAuth, UnsignableBody
from le_transport.middleware.auth import AuthMiddleware, form_charset, parse_form
from le_transport.middleware.retry import RetryMiddleware
from le_transport.providers import (
    AuthProvider,
    Credentials,
    OAuth1Auth,
    OAuth1Signer,
    StaticBearer,
    StaticDomains,
)
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator
from le_transport.testing.simulator import oauth1 as verifier
from tests.known_secrets import (
    ACCESS_TOKEN,
    ACCESS_TOKEN_SECRET,
    APP_SECRET,
    BEARER,
    PASSWORD,
    exception_messages,
)
from tests.test_providers import ACCOUNT, APP_KEY, USER, make_sim, sim, sim_engine

__all__ = ["sim"]

SEARCH = f"/interaction_history/api/account/{ACCOUNT}/interactions/search"
FORM = "application/x-www-form-urlencoded"


class RecordingOAuth1(OAuth1Auth):
    """:class:`OAuth1Auth` that remembers what it was asked to sign and what it handed out."""

    __slots__ = ("calls",)

    def __init__(self, **kwargs: object) -> None:
        super().__init__(APP_KEY, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET, **kwargs)  # type: ignore[arg-type]
        self.calls: list[tuple[str, str, list[tuple[str, str]] | None, Credentials]] = []

    async def credentials(self, method: str, url: URL) -> Credentials:
        creds = await super().credentials(method, url)
        self.calls.append((method, url.path, None, creds))
        return creds

    async def credentials_for_form(
        self, method: str, url: URL, form: Sequence[tuple[str, str]]
    ) -> Credentials:
        creds = await super().credentials_for_form(method, url, form)
        self.calls.append((method, url.path, list(form), creds))
        return creds


class UrlOnlyProvider:
    """A third-party provider written against the original protocol: no idea of bodies."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.asked: list[tuple[str, str]] = []

    async def credentials(self, method: str, url: URL) -> Credentials:
        self.asked.append((method, url.path))
        return Credentials(headers={"Authorization": f"Bearer {self.token}"})

    async def invalidate(self, rejected: Credentials) -> None:
        """Nothing to drop."""

    async def close(self) -> None:
        """Nothing to close."""


def oauth_params(creds: Credentials) -> dict[str, str]:
    header = creds.headers["Authorization"]
    assert header.startswith("OAuth ")
    return {k: unquote(v) for k, v in re.findall(r'(\w+)="([^"]*)"', header)}


# -- the simulator accepts signed form bodies -------------------------------------------------


async def test_a_form_body_from_a_dict_is_signed_over_its_parameters_and_accepted(
    sim: Simulator, clock: VirtualClock
) -> None:
    auth = RecordingOAuth1()
    form = {"source": "bot", "note": "café ☃ 1+1=2 & more", "empty": ""}
    async with sim_engine(sim, clock, domains=StaticDomains(sim.domains), auth=auth) as engine:
        resp = await engine.request("POST", "engHistDomain", SEARCH, data=form)
    assert resp.status == 200
    assert sim.count("POST", SEARCH) == 1  # accepted at once: no 401, no replay
    assert [(m, p, f) for m, p, f, _ in auth.calls] == [("POST", SEARCH, list(form.items()))]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("a=1&b=%E2%98%83&a=2&flag", FORM),
        (b"a=1&b=caf%C3%A9+au+lait&a=2&flag", FORM),
        ("name=Zoë&q=x y", f"{FORM}; charset=UTF-8"),
        (b"name=Zo\xc3\xab&q=x+y", f"{FORM};charset=utf-8"),
        (b"name=Zo\xeb&q=caf%E9", f"{FORM}; charset=ISO-8859-1"),
        ("name=Zoë&q=café", f"{FORM}; charset=ISO-8859-1"),
        (b"a=1&b=2", "Application/X-WWW-Form-URLEncoded"),
    ],
    ids=[
        "str",
        "bytes",
        "str-raw-utf8-with-charset",
        "bytes-raw-utf8-with-charset",
        "bytes-latin1-with-charset",
        "str-raw-latin1-with-charset",
        "media-type-in-another-case",
    ],
)
async def test_a_str_or_bytes_form_body_with_an_explicit_content_type_is_signed_and_accepted(
    sim: Simulator, clock: VirtualClock, body: str | bytes, content_type: str
) -> None:
    auth = RecordingOAuth1()
    async with sim_engine(sim, clock, domains=StaticDomains(sim.domains), auth=auth) as engine:
        resp = await engine.request(
            "POST", "engHistDomain", SEARCH, data=body, headers={"Content-Type": content_type}
        )
    assert resp.status == 200
    assert sim.count("POST", SEARCH) == 1
    [(_, _, form, _)] = auth.calls
    charset = "latin-1" if "8859" in content_type else "utf-8"
    text = body.decode(charset) if isinstance(body, bytes) else body
    assert form == [(k, v) for k, v in _pairs(text, charset)]


def _pairs(text: str, charset: str = "utf-8") -> list[tuple[str, str]]:
    """The form's pairs, decoded by hand (independently of parse_qsl)."""
    out = []
    for part in text.split("&"):
        name, _, value = part.partition("=")
        out.append(
            (
                unquote(name.replace("+", " "), encoding=charset),
                unquote(value.replace("+", " "), encoding=charset),
            )
        )
    return out


async def test_a_query_and_a_form_with_repeated_keys_and_non_ascii_values_are_accepted(
    sim: Simulator, clock: VirtualClock
) -> None:
    auth = RecordingOAuth1()
    query = MultiDict([("v", "1"), ("tag", "ü"), ("tag", "☃ b+c"), ("tag", "")])
    body = urlencode([("tag", "日本"), ("tag", "ü"), ("v", "2"), ("x", "a&b=c")])
    async with sim_engine(sim, clock, domains=StaticDomains(sim.domains), auth=auth) as engine:
        resp = await engine.request(
            "POST",
            "engHistDomain",
            SEARCH,
            params=query,
            data=body,
            headers={"Content-Type": FORM},
        )
    assert resp.status == 200
    assert sim.count("POST", SEARCH) == 1
    [(_, _, form, _)] = auth.calls
    assert form == [("tag", "日本"), ("tag", "ü"), ("v", "2"), ("x", "a&b=c")]


# -- bodies that are not forms stay out of the signature --------------------------------------


async def test_a_json_body_is_signed_over_the_url_only(sim: Simulator, clock: VirtualClock) -> None:
    auth = RecordingOAuth1()
    async with sim_engine(sim, clock, domains=StaticDomains(sim.domains), auth=auth) as engine:
        resp = await engine.request("POST", "engHistDomain", SEARCH, json={"a": "b=c&d"})
    assert resp.status == 200
    assert [(m, p, f) for m, p, f, _ in auth.calls] == [("POST", SEARCH, None)]


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/json", "multipart/form-data; boundary=x"],
)
async def test_a_body_of_another_media_type_is_signed_over_the_url_only(
    sim: Simulator, clock: VirtualClock, content_type: str
) -> None:
    auth = RecordingOAuth1()
    async with sim_engine(sim, clock, domains=StaticDomains(sim.domains), auth=auth) as engine:
        await engine.request(
            "POST", "engHistDomain", SEARCH, data="a=b", headers={"Content-Type": content_type}
        )
    assert [(m, p, f) for m, p, f, _ in auth.calls] == [("POST", SEARCH, None)]


async def test_a_request_without_a_body_is_signed_over_the_url_only(
    sim: Simulator, clock: VirtualClock
) -> None:
    auth = RecordingOAuth1()
    users = f"/api/account/{ACCOUNT}/configuration/le-users/users"
    async with sim_engine(sim, clock, domains=StaticDomains(sim.domains), auth=auth) as engine:
        resp = await engine.request("GET", "accountConfigReadOnly", users, params={"v": "6.0"})
    assert resp.status == 200
    assert [(m, p, f) for m, p, f, _ in auth.calls] == [("GET", users, None)]


# -- the 401 replay ---------------------------------------------------------------------------


async def test_a_401_replay_is_signed_with_a_fresh_nonce_and_timestamp_over_the_same_form(
    sim: Simulator, clock: VirtualClock
) -> None:
    sim.faults.script("POST", SEARCH, [401])
    nonces = (f"nonce{i}" for i in itertools.count())
    stamps = iter([1_700_000_000.0, 1_700_000_007.0])
    auth = RecordingOAuth1(nonce=lambda: next(nonces), wall_clock=lambda: next(stamps))
    form = {"q": "ünïcode", "page": "2"}
    async with sim_engine(sim, clock, domains=StaticDomains(sim.domains), auth=auth) as engine:
        resp = await engine.request("POST", "engHistDomain", SEARCH, data=form)
    assert resp.status == 200
    assert sim.count("POST", SEARCH) == 2
    (_, _, first_form, first), (_, _, second_form, second) = auth.calls
    assert first_form == second_form == list(form.items())
    a, b = oauth_params(first), oauth_params(second)
    assert (a["oauth_nonce"], b["oauth_nonce"]) == ("nonce0", "nonce1")
    assert (a["oauth_timestamp"], b["oauth_timestamp"]) == ("1700000000", "1700000007")
    assert a["oauth_signature"] != b["oauth_signature"]


async def test_a_form_rejected_twice_is_an_authentication_error_and_no_signature_is_logged(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    """The signatures are credentials too: the test-wide check looks for them in every log
    record of the 401, the replay and the final error."""
    sim.faults.script("POST", SEARCH, [401, 401])
    auth = RecordingOAuth1()
    async with sim_engine(sim, clock, domains=StaticDomains(sim.domains), auth=auth) as engine:
        with pytest.raises(AuthenticationError, match="401 again") as info:
            await engine.request("POST", "engHistDomain", SEARCH, data={"q": "x"})
    assert sim.count("POST", SEARCH) == 2
    signatures = {oauth_params(creds)["oauth_signature"] for _, _, _, creds in auth.calls}
    assert len(signatures) == 2
    secret_values.update(signatures)
    shown = "\n".join([*exception_messages(info.value), *map(repr, auth.calls), repr(auth)])
    assert not [s for s in signatures if s in shown]


# -- forms that cannot be signed --------------------------------------------------------------


async def test_an_undecodable_form_is_refused_before_sending_without_showing_its_contents(
    sim: Simulator, clock: VirtualClock
) -> None:
    auth = RecordingOAuth1()
    body = f"password={PASSWORD}&x=".encode() + b"\xff\xfe"
    async with sim_engine(sim, clock, domains=StaticDomains(sim.domains), auth=auth) as engine:
        with pytest.raises(UnsignableBody, match="cannot be decoded as 'utf-8'") as info:
            await engine.request(
                "POST", "engHistDomain", SEARCH, data=body, headers={"Content-Type": FORM}
            )
    assert sim.count("POST", SEARCH) == 0
    assert auth.calls == []
    shown = "\n".join(exception_messages(info.value))
    assert PASSWORD not in shown
    assert "password" not in shown


async def test_an_undecodable_percent_escape_is_refused_like_an_undecodable_byte(
    sim: Simulator, clock: VirtualClock
) -> None:
    auth = RecordingOAuth1()
    async with sim_engine(sim, clock, domains=StaticDomains(sim.domains), auth=auth) as engine:
        with pytest.raises(UnsignableBody, match="cannot be decoded"):
            await engine.request(
                "POST", "engHistDomain", SEARCH, data="a=%FF", headers={"Content-Type": FORM}
            )
    assert sim.count("POST", SEARCH) == 0


@pytest.mark.parametrize("charset", ["x-no-such-charset", "rot13"])
async def test_a_form_in_a_charset_python_cannot_decode_text_with_is_refused_before_sending(
    sim: Simulator, clock: VirtualClock, charset: str
) -> None:
    """An unknown charset, or a codec that is not a text encoding."""
    auth = RecordingOAuth1()
    async with sim_engine(sim, clock, domains=StaticDomains(sim.domains), auth=auth) as engine:
        with pytest.raises(UnsignableBody, match=f"charset '{charset}', which Python"):
            await engine.request(
                "POST",
                "engHistDomain",
                SEARCH,
                data=b"a=b",
                headers={"Content-Type": f"{FORM}; charset={charset}"},
            )
    assert sim.count("POST", SEARCH) == 0
    assert auth.calls == []


async def _stream() -> AsyncIterator[bytes]:
    yield b"a=b"


@pytest.mark.parametrize("kind", ["file-like", "async-iterator"])
async def test_a_streaming_form_body_is_refused_before_sending_and_not_consumed(
    sim: Simulator, clock: VirtualClock, kind: str
) -> None:
    auth = RecordingOAuth1()
    middleware = AuthMiddleware(
        auth=auth, domains=StaticDomains(sim.domains), allowed_hosts={sim.host}
    )
    source = io.BytesIO(b"a=b")
    data: object = source if kind == "file-like" else _stream()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        with pytest.raises(UnsignableBody, match="streaming body") as info:
            await session.post(
                f"{sim.url}{SEARCH}",
                data=data,
                headers={"Content-Type": FORM},
                middlewares=(middleware, RetryMiddleware(clock=clock)),
            )
    assert info.value.method == "POST"
    assert sim.count("POST", SEARCH) == 0
    assert auth.calls == []
    if kind == "file-like":
        assert source.read() == b"a=b"  # nothing was read from it


# -- providers that do not sign bodies --------------------------------------------------------


async def test_a_provider_written_against_the_url_only_protocol_still_works_with_a_form_body(
    sim: Simulator, clock: VirtualClock, secret_values: set[str]
) -> None:
    issued = sim.tokens.login(ACCOUNT, USER, 3600, "user").bearer
    secret_values.add(issued)
    provider = UrlOnlyProvider(issued)
    assert isinstance(provider, AuthProvider)
    assert not isinstance(provider, BodySigningAuth)
    middleware = AuthMiddleware(
        auth=provider, domains=StaticDomains(sim.domains), allowed_hosts={sim.host}
    )
    # Even a stream is fine: a provider that does not sign bodies never has it read.
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
        session.post(
            f"{sim.url}{SEARCH}",
            data=_stream(),
            headers={"Content-Type": FORM},
            middlewares=(middleware, RetryMiddleware(clock=clock)),
        ) as resp,
    ):
        assert resp.status == 200
    assert provider.asked == [("POST", SEARCH)]


async def test_a_provider_that_does_not_sign_bodies_never_has_the_form_read(
    sim: Simulator, clock: VirtualClock, secret_values: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path: for a bearer, the middleware's only extra work is one attribute read."""

    async def must_not_run(*args: object) -> None:
        raise AssertionError("the form was read for a provider that does not sign bodies")

    monkeypatch.setattr(AuthMiddleware, "_read_form", must_not_run)
    issued = sim.tokens.login(ACCOUNT, USER, 3600, "user").bearer
    secret_values.add(issued)
    async with sim_engine(
        sim, clock, domains=StaticDomains(sim.domains), auth=StaticBearer(issued)
    ) as engine:
        resp = await engine.request("POST", "engHistDomain", SEARCH, data={"a": "b"})
    assert resp.status == 200


def test_oauth1_auth_is_a_body_signing_provider_and_a_bearer_is_not() -> None:
    assert isinstance(
        OAuth1Auth(APP_KEY, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET), BodySigningAuth
    )
    assert not isinstance(StaticBearer(BEARER), BodySigningAuth)


# -- the pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "charset"),
    [
        (FORM, "utf-8"),
        ("APPLICATION/x-www-form-urlencoded", "utf-8"),
        (f"{FORM}; charset=ISO-8859-1", "ISO-8859-1"),
        (f'{FORM} ; Charset="latin-1"', "latin-1"),
        (f"{FORM}; boundary=x; charset=cp1252", "cp1252"),
        (f"{FORM}; charset=", "utf-8"),
        ("application/json", None),
        ("text/plain; charset=utf-8", None),
        (f"{FORM}x", None),
        ("multipart/form-data", None),
        ("", None),
    ],
)
def test_only_the_exact_form_media_type_is_read_as_a_form(
    content_type: str, charset: str | None
) -> None:
    """The media type compares case-insensitively and exactly; the charset defaults to utf-8."""
    assert form_charset(content_type) == charset


_value = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=0, max_size=10
)
_latin1_value = st.text(alphabet=st.characters(max_codepoint=0xFF), min_size=0, max_size=10)
_keys = st.sampled_from(["a", "tag", "q", "ü", "x y", "k&=", ""])


@st.composite
def _forms(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]]]:
    charset = draw(st.sampled_from(["utf-8", "iso-8859-1", "cp1252"]))
    values = _value if charset == "utf-8" else _latin1_value
    if charset == "cp1252":
        values = values.filter(lambda s: _encodable(s, "cp1252"))
    pairs = draw(st.lists(st.tuples(_keys, values), max_size=6))
    return charset, pairs


def _encodable(text: str, charset: str) -> bool:
    try:
        text.encode(charset)
    except UnicodeEncodeError:
        return False
    return True


@settings(max_examples=200)
@given(
    form=_forms(),
    query=st.lists(st.tuples(_keys, _value), max_size=4),
    method=st.sampled_from(["POST", "PUT", "PATCH"]),
)
def test_a_form_as_read_from_its_body_signs_what_the_simulators_verifier_expects(
    form: tuple[str, list[tuple[str, str]]], query: list[tuple[str, str]], method: str
) -> None:
    """Property: for any query and form (repeated keys, empty values, non-ASCII text, any of
    three charsets), the form parsed back from its encoded body equals the form sent, and a
    signature over it verifies with the simulator's independent verifier given the original
    query and form parameters."""
    charset, pairs = form
    body = urlencode(pairs, encoding=charset).encode("ascii")
    parsed = parse_form(body, charset)
    assert parsed == pairs
    url = URL.build(scheme="https", host="va.example.net", path="/api/x", query=query)
    signer = OAuth1Signer(APP_KEY, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET)
    header = signer.header(method, url, body_params=parsed)
    assert verifier.verify(
        method=method,
        url=url,
        oauth=verifier.parse_oauth_header(header),
        extra_params=[*query, *pairs],
        consumer_secret=APP_SECRET,
        token_secret=ACCESS_TOKEN_SECRET,
    )


async def _post_form(query: list[tuple[str, str]], pairs: list[tuple[str, str]]) -> int:
    clock = VirtualClock()
    async with make_sim(clock) as simulator:
        auth = OAuth1Auth(APP_KEY, APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET)
        async with sim_engine(
            simulator, clock, domains=StaticDomains(simulator.domains), auth=auth
        ) as engine:
            resp = await engine.request(
                "POST",
                "engHistDomain",
                SEARCH,
                params=MultiDict(query),
                data=urlencode(pairs),
                headers={"Content-Type": FORM},
            )
        assert simulator.count("POST", SEARCH) == 1
        return resp.status


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    query=st.lists(st.tuples(_keys.filter(bool), _value), max_size=4),
    pairs=st.lists(st.tuples(_keys, _value), max_size=5),
)
def test_any_query_and_form_with_repeated_keys_is_accepted_by_the_simulator_at_once(
    query: list[tuple[str, str]], pairs: list[tuple[str, str]]
) -> None:
    """Property: on the real stack, a POST with any query and any UTF-8 form (repeated keys,
    empty and non-ASCII values) is accepted by the simulator's verifier on the first attempt."""
    assert asyncio.run(_post_form(query, pairs)) == 200
