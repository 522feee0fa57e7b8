"""``le-transport demo`` end to end: a subprocess, its exit code, its timeline and summary.

Real time at a small scale (the demo runs the real clock); nothing here asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

from le_transport.cli import main
from le_transport.demo import DemoAccount, _give_back_signals, _stop_on_signals, run_demo
from le_transport.testing.simulator import DEFAULT_PASSWORD

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LE_")}
    return subprocess.run(
        [sys.executable, "-m", "le_transport.cli", "demo", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


def test_the_demo_shows_the_timeline_and_summary_and_exits_0_when_every_invariant_held() -> None:
    result = _run("--time-scale", "0.01")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for label in (
        "retry ",
        "4xx ",
        "login ",
        "refresh ",
        "relogin ",
        "socket ",
        "subscribe ",
        "keepalive ",
    ):
        assert f"] {label}" in out, label
    assert "summary" in out
    assert "nothing lost" in out
    assert "[FAILED]" not in out
    assert out.rstrip().endswith("every invariant held")
    assert DEFAULT_PASSWORD not in out + result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_time_scale_is_refused_with_exit_code_2() -> None:
    assert main(["demo", "--time-scale", "0"]) == 2


def test_a_real_account_comes_from_flags_or_le_environment_variables() -> None:
    env = {"LE_ACCOUNT": "123", "LE_USERNAME": "bot", "LE_PASSWORD": "pw-from-env"}
    account = DemoAccount.from_env(env, account=None, password=None)
    assert account is not None
    assert account.account == "123"
    assert account.password == "pw-from-env"
    assert "pw-from-env" not in repr(account)
    flagged = DemoAccount.from_env(env, account="456")
    assert flagged is not None
    assert flagged.account == "456"
    assert DemoAccount.from_env({}) is None


def test_the_real_account_path_runs_against_any_liveengage_like_server() -> None:
    """The --account path, pointed at the simulator: client-side faults only, same verdict."""
    import asyncio
    import io

    from le_transport.demo import _main
    from le_transport.testing.simulator import DEFAULT_ACCOUNT, DEFAULT_USER, Simulator

    async def scenario() -> tuple[bool, str]:
        out = io.StringIO()
        async with Simulator() as sim:
            account = DemoAccount(
                account=DEFAULT_ACCOUNT,
                username=DEFAULT_USER,
                password=DEFAULT_PASSWORD,
                csds_host=sim.host,
                scheme="http",
            )
            ok = await _main(time_scale=0.01, seed=3, out=out, account=account, verbose=False)
            assert sim.count("GET", "*/le-users/users") == 1  # the 503s were client-side
        return ok, out.getvalue()

    ok, out = asyncio.run(scenario())
    assert ok, out
    assert "retry " in out
    assert DEFAULT_PASSWORD not in out


def test_the_real_account_path_counts_only_the_users_api_calls_retries() -> None:
    """A login retried before the Users API call is not one of that call's retries: the check
    counted every retry since the start, and failed (or passed) for the wrong reason."""
    import asyncio
    import io

    from le_transport.demo import _main
    from le_transport.testing.simulator import DEFAULT_ACCOUNT, DEFAULT_USER, Simulator

    async def scenario() -> tuple[bool, str]:
        out = io.StringIO()
        async with Simulator() as sim:
            sim.faults.script("POST", "*/login", [503], id="login-503-once")
            account = DemoAccount(
                account=DEFAULT_ACCOUNT,
                username=DEFAULT_USER,
                password=DEFAULT_PASSWORD,
                csds_host=sim.host,
                scheme="http",
            )
            ok = await _main(time_scale=0.01, seed=3, out=out, account=account, verbose=False)
            assert sim.count("POST", "*/login") == 2  # the login was retried once
        return ok, out.getvalue()

    ok, out = asyncio.run(scenario())
    assert "[ok] the Users API call was retried twice" in out, out
    assert ok, out


def test_the_demos_docstring_says_what_runs_against_a_real_account() -> None:
    import le_transport.demo

    doc = " ".join((le_transport.demo.__doc__ or "").split())
    assert "the same workload runs against LiveEngage" not in doc
    assert "a shorter workload runs against LiveEngage itself, with client-side faults" in doc


def _mine(signum: int, frame: object) -> None:
    """A program's own signal handler."""


def test_run_demo_gives_back_the_signal_handlers_it_found() -> None:
    """asyncio's removal of a handler leaves the default action: a program that ran the demo
    lost its own SIGTERM and SIGHUP handlers (its next SIGHUP, a reload, killed it), and an
    ignored SIGTERM was taken over."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, _mine)
        assert run_demo(time_scale=0.01, seed=1, out=io.StringIO()) == 0
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGHUP) is _mine
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_a_second_signal_does_not_cut_the_clean_up_short() -> None:
    """Every signal cancelled the run again: a SIGHUP right after the SIGTERM (systemd stops
    a session so) cut the clean-up, the logout included, short."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}

    async def scenario() -> tuple[list[int], int]:
        stopped: list[int] = []
        task = asyncio.ensure_future(asyncio.sleep(3600))
        watched = _stop_on_signals(task, stopped)
        try:
            assert set(watched) == {signal.SIGTERM, signal.SIGHUP}
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGHUP)
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return stopped, task.cancelling()
        finally:
            _give_back_signals(watched)

    try:
        stopped, cancels = asyncio.run(scenario())
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    assert stopped == [signal.SIGTERM]
    assert cancels == 1
