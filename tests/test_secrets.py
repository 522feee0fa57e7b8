"""No test credential ever reaches a log record, an exception message or a repr.

The check itself (``no_secret_in_logs`` in ``tests/conftest.py``) runs around every test; these
tests prove that it catches each way a credential can reach a record, and that the library's
public objects hide their secrets in reprs.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from le_transport import Engine
from le_transport._redact import Secret
from le_transport.errors import ClientStatusError
from le_transport.providers import (
    AppLogin,
    ClientCredentialsLogin,
    ConsumerJwt,
    CsdsDomains,
    OAuth1Auth,
    SentinelClientCredentials,
    UserLogin,
)
from le_transport.providers.auth import Credentials, StaticBearer
from le_transport.testing import VirtualClock
from le_transport.testing.simulator import Simulator, SimulatorConfig
from le_transport.testing.simulator.config import Account, AppKey
from tests import known_secrets
from tests.known_secrets import (
    ACCESS_TOKEN,
    ACCESS_TOKEN_SECRET,
    APP_SECRET,
    BEARER,
    CLIENT_SECRET,
    CSRF,
    JWT,
    PASSWORD,
    SecretLeakHandler,
)

ACCOUNT = "12345678"

ROOT = Path(__file__).resolve().parent.parent


def _emit(handler: SecretLeakHandler, msg: str, *args: object, **kwargs: object) -> None:
    logger = logging.getLogger("le_transport.test_secrets.probe")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        logger.debug(msg, *args, **kwargs)  # type: ignore[arg-type]
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


@pytest.mark.parametrize(
    ("how", "msg", "args", "kwargs"),
    [
        ("in the message", f"logging in with {PASSWORD}", (), {}),
        ("in an argument", "logging in with %s", (PASSWORD,), {}),
        ("in an extra field", "logging in", (), {"extra": {"body": {"password": PASSWORD}}}),
        ("in a repr'd argument", "headers %r", ({"Authorization": f"Bearer {BEARER}"},), {}),
    ],
)
def test_secret_check_catches_a_credential(
    how: str, msg: str, args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    """Whichever way a credential reaches a record, the handler reports it (not its value)."""
    handler = SecretLeakHandler(set(known_secrets.ALL))
    _emit(handler, msg, *args, **kwargs)
    assert len(handler.leaks) == 1, how
    assert PASSWORD not in handler.leaks[0]
    assert BEARER not in handler.leaks[0]


def test_secret_check_catches_a_credential_in_a_chained_exception_message() -> None:
    handler = SecretLeakHandler(set(known_secrets.ALL))
    try:
        try:
            raise ValueError(f"csrf was {CSRF}")
        except ValueError as inner:
            raise RuntimeError("refresh failed") from inner
    except RuntimeError:
        _emit(handler, "refresh failed", exc_info=True)
    assert handler.leaks == [
        "le_transport.test_secrets.probe:DEBUG record shows CSRF",
    ]


def test_secret_check_finds_a_value_learnt_after_the_record_was_emitted() -> None:
    """A bearer the simulator issued is known to the test only later: rescan catches it."""
    secrets: set[str] = set()
    handler = SecretLeakHandler(secrets)
    _emit(handler, "socket url %s", "/messaging/brand/issued-at-runtime-1234")
    assert handler.leaks == []
    secrets.add("issued-at-runtime-1234")
    handler.rescan()
    assert handler.leaks == [
        "le_transport.test_secrets.probe:DEBUG record shows a run-time credential"
    ]


def test_secret_check_passes_redacted_records() -> None:
    handler = SecretLeakHandler(set(known_secrets.ALL))
    _emit(handler, "headers %r", {"Authorization": "***"}, extra={"url": "/login?token=***"})
    assert handler.leaks == []


def test_a_test_that_logs_a_credential_fails(tmp_path: Path) -> None:
    """The autouse fixture really fails a test: run one that logs a password, in pytest."""
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        textwrap.dedent(
            """
            import logging
            from tests.known_secrets import PASSWORD

            def test_logs_password_at_debug():
                logging.getLogger("le_transport.anything").debug("pw=%s", PASSWORD)

            def test_logs_nothing_secret():
                logging.getLogger("le_transport.anything").debug("pw=***")
            """
        )
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.conftest",
            "--rootdir",
            str(tmp_path),
            "-o",
            "asyncio_mode=auto",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            "-p",
            "no:logging",
            str(probe),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    # The offending test passes its body and errors in teardown; the clean one just passes.
    assert "2 passed, 1 error" in out, out
    assert "ERROR" in out
    assert "test_logs_password_at_debug" in out
    assert "a credential reached a log record" in out
    assert "record shows PASSWORD" in out


# -- reprs -----------------------------------------------------------------------------------


def _public_objects_holding_secrets() -> list[object]:
    bearer = StaticBearer(BEARER)
    return [
        Secret(PASSWORD),
        bearer,
        Credentials(
            headers={"Authorization": f"Bearer {BEARER}", "X-CSRF-Token": CSRF},
            bearer=Secret(JWT),
        ),
        Engine({"svc": "127.0.0.1:1"}, scheme="http"),
        ClientStatusError(
            "401 unauthorized",
            status=401,
            url="http://127.0.0.1:1/x?token=***",
            body_excerpt="",
        ),
    ]


@pytest.mark.parametrize("obj", _public_objects_holding_secrets(), ids=lambda o: type(o).__name__)
def test_repr_and_str_of_public_objects_hide_every_credential(obj: object) -> None:
    shown = f"{obj!r} {obj!s}"
    assert known_secrets.find_secrets(shown, known_secrets.ALL) == []


async def test_static_bearer_credentials_put_the_bearer_on_the_wire_but_not_in_the_repr() -> None:
    creds = await StaticBearer(BEARER).credentials("GET", URL("https://h/x"))
    assert creds.headers["Authorization"] == f"Bearer {BEARER}"
    assert BEARER not in repr(creds)


# -- live objects, after real logins against the simulator -----------------------------------


def _sim_config() -> SimulatorConfig:
    """The simulator's account with this suite's credentials instead of its defaults."""
    return SimulatorConfig(
        accounts=(
            Account(
                id=ACCOUNT,
                users={"agent": PASSWORD},
                app_keys=(AppKey("app-key-1", APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET),),
                clients={"client-1": CLIENT_SECRET},
            ),
        )
    )


def _shown(obj: object) -> str:
    return f"{obj!r} {obj!s}"


async def test_reprs_of_every_provider_engine_and_socket_hide_secrets_after_real_logins(
    secret_values: set[str],
) -> None:
    """Log in with every method against the simulator, make calls, open a socket; then no
    repr or str of any public object (providers, their sessions and tokens, credentials, the
    engine and its middlewares, the socket) shows a configured or issued credential."""
    clock = VirtualClock()
    async with Simulator(_sim_config(), clock=clock) as sim:
        domains = CsdsDomains(ACCOUNT, csds_host=sim.host, scheme="http")
        providers: list[Any] = [
            UserLogin(ACCOUNT, "agent", PASSWORD, domains=domains),
            AppLogin(
                ACCOUNT,
                "bot",
                "app-key-1",
                APP_SECRET,
                ACCESS_TOKEN,
                ACCESS_TOKEN_SECRET,
                domains=domains,
            ),
            ClientCredentialsLogin(ACCOUNT, "bot", "client-1", CLIENT_SECRET, domains=domains),
            OAuth1Auth("app-key-1", APP_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET),
            SentinelClientCredentials(ACCOUNT, "client-1", CLIENT_SECRET, domains=domains),
            ConsumerJwt(ACCOUNT, domains=domains),
        ]
        shown: list[str] = []
        for auth in providers:
            async with Engine(domains, scheme="http", clock=clock, auth=auth) as engine:
                creds = await engine.login()
                if creds.bearer is not None:
                    secret_values.add(creds.bearer.reveal())
                for value in creds.headers.values():
                    secret_values.add(value.split(" ", 1)[-1])
                shown += [_shown(auth), _shown(creds), _shown(engine)]
                shown += [_shown(mw) for mw in engine.middlewares]
                shown += [
                    _shown(getattr(auth, "session", None)),
                    _shown(getattr(auth, "token", None)),
                ]
                if isinstance(auth, UserLogin):
                    ws = await engine.websocket(
                        "facadeMsg",
                        f"/ws_api/account/{ACCOUNT}/messaging/brand/{{bearer}}",
                        params={"v": "2.1"},
                    )
                    await ws.wait_open(timeout=60)
                    await ws.request(".GetClock")
                    shown += [_shown(ws), _shown(ws.options)]
                    await ws.close()
        shown += [_shown(sim.config), _shown(sim.account), _shown(domains)]
    issued = {s for s in secret_values if len(s) >= 8} - {"***"}
    everything = "\n".join(shown)
    assert known_secrets.find_secrets(everything, issued | set(known_secrets.ALL)) == []


def test_demo_output_shows_no_credential() -> None:
    """``le-transport demo --verbose`` (its timeline and the library's own log lines) shows
    neither the simulator's credentials nor any bearer or JWT it was issued."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LE_")}
    proc = subprocess.run(
        [sys.executable, "-m", "le_transport.cli", "demo", "--verbose"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-2000:]
    assert len(out.splitlines()) > 10, out
    values = (*known_secrets.ALL, *known_secrets.simulator_defaults())
    assert known_secrets.find_secrets(out, values) == []
    # Issued tokens are not known in advance: look for their shapes instead.
    assert re.findall(r"(?i)\bbearer\s+(?!\*\*\*)[A-Za-z0-9._~+/=-]{8,}", out) == []
    assert re.findall(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}", out) == []
