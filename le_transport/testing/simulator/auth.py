"""The simulator's credential store: Login Service sessions, Sentinel and consumer JWTs, nonces.

Every token is random, lives on the simulator's clock, and can be expired or revoked by a test
(:meth:`TokenStore.expire_all`, :meth:`TokenStore.revoke`), which is how token expiry and
revocation are scripted.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import secrets
from typing import Any

import attrs

from ...clock import Clock

__all__ = ["SWEEP_AFTER", "LoginSession", "SeenNonces", "Token", "TokenStore", "make_jwt"]


@attrs.define(repr=False)
class LoginSession:
    """A Login Service session: bearer, csrf, wsuk and ``Session_id`` cookie value."""

    account: str
    user_id: str
    login_name: str
    bearer: str
    csrf: str
    wsuk: str
    session_id: str
    expires_at: float
    revoked: bool = False
    kind: str = "user"

    def __repr__(self) -> str:
        return (
            f"LoginSession(account={self.account!r}, login_name={self.login_name!r}, "
            f"kind={self.kind!r}, expires_at={self.expires_at!r}, revoked={self.revoked!r})"
        )


@attrs.define(repr=False)
class Token:
    """A JWT handed out by Sentinel (``kind="sentinel"``) or the idp (``kind="consumer"``)."""

    account: str
    subject: str
    value: str
    expires_at: float
    kind: str
    revoked: bool = False

    def __repr__(self) -> str:
        return (
            f"Token(kind={self.kind!r}, account={self.account!r}, expires_at={self.expires_at!r})"
        )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(payload: dict[str, Any], key: bytes) -> str:
    """An HS256 JWT of ``payload`` signed with ``key``."""
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64url(json.dumps(payload, separators=(",", ":")).encode())
    sig = hmac.new(key, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64url(sig)}"


class SeenNonces:
    """The OAuth 1.0 nonces a gateway has seen, the newest ``maxlen`` of them (all when None).

    A simulator serving a long soak to an application-login client sees a nonce per request:
    kept for ever, they would grow its memory with every call. A replay of a nonce older than
    the last ``maxlen`` is no longer caught (a gateway bounds its memory the same way, with a
    timestamp window: ``SimulatorConfig.oauth1_timestamp_window`` refuses old stamps outright).
    """

    __slots__ = ("_order", "_seen")

    def __init__(self, maxlen: int | None = None) -> None:
        self._seen: set[tuple[str, str, str]] = set()
        self._order: collections.deque[tuple[str, str, str]] = collections.deque(maxlen=maxlen)

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, nonce: tuple[str, str, str]) -> None:
        """Remember ``nonce`` (the oldest one is forgotten when full)."""
        if nonce in self._seen:
            return
        order = self._order
        if order.maxlen is not None and len(order) == order.maxlen:
            self._seen.discard(order[0])
        order.append(nonce)
        self._seen.add(nonce)


#: How many sessions (and, apart, JWTs) the store holds before it first sweeps out the dead.
SWEEP_AFTER = 1024


class TokenStore:
    """Sessions by bearer and by ``Session_id``, JWTs by value, OAuth 1.0 nonces seen (the
    newest ``max_nonces``).

    Dead sessions and JWTs (expired or revoked) answer as unknown ones do, so a store that
    holds :data:`SWEEP_AFTER` of either, or twice what its last sweep kept, drops its dead ones
    when it issues the next: a simulator serving a long soak keeps what is live, not every
    login it ever saw. Below that (every test's scale) nothing is dropped, so a test can still
    read every credential it was issued.
    """

    def __init__(self, clock: Clock, epoch: float, *, max_nonces: int | None = None) -> None:
        self._clock = clock
        self._epoch = epoch
        self._key = secrets.token_bytes(32)
        self.sessions: dict[str, LoginSession] = {}
        self._by_cookie: dict[str, LoginSession] = {}
        self.tokens: dict[str, Token] = {}
        self.nonces = SeenNonces(max_nonces)
        self._sweep_sessions_at = SWEEP_AFTER
        self._sweep_tokens_at = SWEEP_AFTER
        #: Counters tests can assert on.
        self.logins = 0
        self.refreshes = 0
        self.logouts = 0
        self.jwts_issued = 0

    def epoch_now(self) -> float:
        """Seconds since the Unix epoch, as the simulator's clock sees it."""
        return self._epoch + self._clock.now()

    # -- Login Service ---------------------------------------------------------------------

    def login(self, account: str, login_name: str, ttl: float, kind: str) -> LoginSession:
        """Start a session."""
        self.logins += 1
        # surrogatepass, as the password's comparison: JSON can carry a lone surrogate ("\ud800"
        # in an application login's username), which a strict encode refused with a 500.
        digest = hashlib.sha256(login_name.encode("utf-8", "surrogatepass")).hexdigest()
        session = LoginSession(
            account=account,
            user_id=f"{account}.{int(digest[:8], 16)}",
            login_name=login_name,
            bearer=secrets.token_hex(32),
            csrf=secrets.token_hex(16),
            wsuk=secrets.token_hex(8),
            session_id=secrets.token_hex(16),
            expires_at=self._clock.now() + ttl,
            kind=kind,
        )
        if len(self.sessions) >= self._sweep_sessions_at:
            self._sweep_sessions()
        self.sessions[session.bearer] = session
        self._by_cookie[session.session_id] = session
        return session

    def _sweep_sessions(self) -> None:
        live = {bearer: s for bearer, s in self.sessions.items() if self._alive(s)}
        self.sessions = live
        self._by_cookie = {s.session_id: s for s in live.values()}
        self._sweep_sessions_at = max(SWEEP_AFTER, 2 * len(live))

    def valid_session(self, bearer: str, account: str) -> LoginSession | None:
        """The live session with this bearer on ``account``, if any."""
        session = self.sessions.get(bearer)
        if session is None or session.account != account or not self._alive(session):
            return None
        return session

    def session_by_cookie(self, session_id: str) -> LoginSession | None:
        """The live session with this ``Session_id`` cookie, if any."""
        session = self._by_cookie.get(session_id)
        return session if session is not None and self._alive(session) else None

    def refresh(self, session: LoginSession, ttl: float) -> None:
        """Extend a session's life by ``ttl`` from now."""
        self.refreshes += 1
        session.expires_at = self._clock.now() + ttl

    def logout(self, session: LoginSession) -> None:
        """End a session."""
        self.logouts += 1
        session.revoked = True

    def _alive(self, session: LoginSession) -> bool:
        return not session.revoked and self._clock.now() < session.expires_at

    # -- JWTs ------------------------------------------------------------------------------

    def issue_jwt(self, account: str, subject: str, ttl: float, kind: str) -> Token:
        """A fresh JWT whose ``exp`` is ``ttl`` seconds from now (epoch seconds)."""
        self.jwts_issued += 1
        now = self.epoch_now()
        value = make_jwt(
            {
                "iss": "le-simulator",
                "sub": subject,
                "aud": account,
                "iat": int(now),
                "exp": int(now + ttl),
                "jti": secrets.token_hex(8),
            },
            self._key,
        )
        token = Token(account, subject, value, self._clock.now() + ttl, kind)
        if len(self.tokens) >= self._sweep_tokens_at:
            now = self._clock.now()
            self.tokens = {
                v: t for v, t in self.tokens.items() if not t.revoked and now < t.expires_at
            }
            self._sweep_tokens_at = max(SWEEP_AFTER, 2 * len(self.tokens))
        self.tokens[value] = token
        return token

    def valid_jwt(self, value: str, account: str, kind: str | None = None) -> Token | None:
        """The live JWT with this value on ``account`` (of ``kind``, if given)."""
        token = self.tokens.get(value)
        if token is None or token.account != account or token.revoked:
            return None
        if kind is not None and token.kind != kind:
            return None
        return token if self._clock.now() < token.expires_at else None

    # -- test controls ---------------------------------------------------------------------

    def expire_all(self) -> None:
        """Every session and JWT expires now (as if their TTL had passed)."""
        now = self._clock.now()
        for session in self.sessions.values():
            session.expires_at = min(session.expires_at, now)
        for token in self.tokens.values():
            token.expires_at = min(token.expires_at, now)

    def revoke(self, bearer: str | None = None) -> None:
        """Revoke one session (by bearer), or every session and JWT when ``bearer`` is None."""
        if bearer is not None:
            if bearer in self.sessions:
                self.sessions[bearer].revoked = True
            if bearer in self.tokens:
                self.tokens[bearer].revoked = True
            return
        for session in self.sessions.values():
            session.revoked = True
        for token in self.tokens.values():
            token.revoked = True

    def live_sessions(self) -> list[LoginSession]:
        """Sessions that are neither expired nor revoked."""
        return [s for s in self.sessions.values() if self._alive(s)]
