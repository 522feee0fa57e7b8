"""The CLI and the demo: invariants that cannot pass vacuously, usage errors said plainly."""

from __future__ import annotations

import asyncio
import copy
import io
import math
import os
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import pytest

from le_transport import demo
from le_transport.cli import main
from le_transport.clock import RealClock
from le_transport.errors import ConfigurationError
from le_transport.events import EventHooks
from le_transport.testing import VirtualClock

# -- the demo checks that every retry's pause was waited, the last one too ----------------------


class _DemoTime:
    """The demo's ``time`` module, its ``monotonic()`` set back a long way by each pause a
    :func:`_skipping` clock skips: the skipped pause reads as not waited however long the
    rest of the call takes (a loaded machine), not only when it takes less than the pause."""

    def __init__(self) -> None:
        self.set_back = 0.0

    def monotonic(self) -> float:
        return time.monotonic() - self.set_back

    def get_clock_info(self, name: Literal["monotonic"]) -> Any:
        return time.get_clock_info(name)


def _skipping(pause: float, monkeypatch: pytest.MonkeyPatch) -> type[RealClock]:
    """A RealClock whose sleeps of ``pause`` seconds end at once: a retry schedule that
    announces that pause and does not wait it (the demo's time set back, see
    :class:`_DemoTime`)."""
    demo_time = _DemoTime()
    monkeypatch.setattr(demo, "time", demo_time)

    class Skipping(RealClock):
        async def sleep(self, seconds: float) -> None:
            if math.isclose(seconds, pause, rel_tol=1e-9):
                demo_time.set_back += 1000.0
                await asyncio.sleep(0)
                return
            await super().sleep(seconds)

    return Skipping


def test_the_demo_fails_when_the_users_call_s_last_pause_is_not_waited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Users API call's second pause (10 s scaled: 0.1 s) announced, not waited: only
    the first was checked (the gap to the next retry), the last never was."""
    monkeypatch.setattr(demo, "RealClock", _skipping(10 * 0.01, monkeypatch))
    out = io.StringIO()
    code = demo.run_demo(time_scale=0.01, seed=7, out=out)
    text = out.getvalue()
    assert "[FAILED] the Users API call's retries paused the guide's 5 and 10 s (scaled)" in text
    assert code == 1, text[-1500:]


def test_the_demo_fails_when_the_domain_api_s_pause_is_not_waited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Domain API's one retry: its 5 s (scaled) pause announced, not waited."""
    monkeypatch.setattr(demo, "RealClock", _skipping(5 * 0.01, monkeypatch))
    out = io.StringIO()
    code = demo.run_demo(time_scale=0.01, seed=7, out=out)
    text = out.getvalue()
    assert "[FAILED] the Domain API's retry paused the guide's 5 s (scaled)" in text
    assert code == 1, text[-1500:]


# -- scripts/_env.sh: a .venv left without pip is repaired, not a dead end ----------------------

ROOT = Path(__file__).resolve().parent.parent
#: This test run's own interpreter (the one behind its venv).
BASE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def _env_project(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "_env.sh", tmp_path / "scripts" / "_env.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _source_env(project: Path, python: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV")}
    env["PIP_NO_INDEX"] = "1"  # never the network: the install itself fails offline
    env["PATH"] = f"{Path(BASE_PYTHON).parent}{os.pathsep}{env.get('PATH', '')}"
    if python is not None:
        env["PYTHON"] = python
    return subprocess.run(
        ["bash", "-c", "source scripts/_env.sh"],
        cwd=project,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _has_pip(project: Path) -> bool:
    python = project / ".venv" / "bin" / "python"
    found = subprocess.run(
        [str(python), "-c", "import pip"], capture_output=True, timeout=60, check=False
    )
    return found.returncode == 0


def test_env_script_gives_pip_to_a_venv_that_has_none(tmp_path: Path) -> None:
    """A .venv without pip (what Debian's ``python3 -m venv`` leaves when python3-venv is
    missing, before it fails): every later run failed with "No module named pip" until the
    .venv was removed by hand."""
    project = _env_project(tmp_path)
    subprocess.run(
        [BASE_PYTHON, "-m", "venv", "--without-pip", str(project / ".venv")],
        check=True,
        timeout=120,
    )
    done = _source_env(project)
    assert "No module named pip" not in done.stderr, done.stderr
    assert _has_pip(project), done.stderr


def test_env_script_leaves_no_half_made_venv_when_making_it_fails(tmp_path: Path) -> None:
    """Debian without python3-venv: ``python3 -m venv`` makes .venv, then fails for want of
    ensurepip. The half-made .venv must not be taken for a made one by the next run."""
    project = _env_project(tmp_path)
    broken = tmp_path / "python-without-ensurepip"
    broken.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then\n'
        f'  "{BASE_PYTHON}" -m venv --without-pip "$3"\n'
        '  echo "The virtual environment was not successfully created because ensurepip is '
        'not available." >&2\n'
        "  exit 1\n"
        "fi\n"
        f'exec "{BASE_PYTHON}" "$@"\n'
    )
    broken.chmod(0o755)
    first = _source_env(project, str(broken))
    assert first.returncode != 0
    assert "ensurepip is not available" in first.stderr
    assert not (project / ".venv").exists(), "a half-made .venv was left behind"


# -- event hooks: a refused value is named by its type, never shown ---------------------------

SECRET = "s3cret-token-value"


@pytest.mark.parametrize("value", [SECRET, [SECRET], (print, SECRET), SECRET.encode()])
def test_refused_hooks_are_named_by_type_never_shown(value: object) -> None:
    """A value given where hooks go may be a credential put in the wrong place: the message
    says what kind of value it was, as every other option check does, not the value."""
    with pytest.raises(ConfigurationError) as caught:
        EventHooks(on_retry=value)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "s3cret" not in message, message
    assert "str" in message or "bytes" in message, message


# -- VirtualClock.sleep refuses what RealClock.sleep refuses ------------------------------------


@pytest.mark.parametrize("seconds", ["1", b"1", Decimal("1")])
def test_virtual_sleep_refuses_what_the_real_clock_refuses(seconds: object) -> None:
    """A str (or bytes, or a Decimal) pause is a TypeError on the real clock; the virtual one
    took it as a number, so a test on virtual time passed where production fails."""

    async def sleep(clock: object) -> None:
        await asyncio.wait_for(clock.sleep(seconds), 5)  # type: ignore[attr-defined]

    with pytest.raises(TypeError):
        asyncio.run(sleep(RealClock()))
    clock = VirtualClock()
    with pytest.raises(TypeError):
        asyncio.run(sleep(clock))
    assert clock.now() == 0.0
    assert list(clock.sleeps) == []


# -- the demo with its standard output closed --------------------------------------------------


def test_the_demo_with_no_standard_output_says_so_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``le-transport demo >&-``: Python's sys.stdout is None. The whole run went to nowhere,
    then ended in an AttributeError traceback (``None.flush()``)."""
    for name in list(os.environ):
        if name.startswith("LE_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(sys, "stdout", None)
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "le-transport demo: no standard output" in err, err
    assert "Traceback" not in err


# -- the demo's Terminated survives a copy or a pickle -------------------------------------------


@pytest.mark.parametrize(
    "again", [copy.copy, copy.deepcopy, lambda e: pickle.loads(pickle.dumps(e))]
)
def test_terminated_copies_and_pickles_as_itself(again: Callable[[object], object]) -> None:
    """Its __init__ takes the signal, not the message: a copy was made from the message,
    "stopped by signal stopped by signal 15"."""
    made = again(demo.Terminated(15))
    assert isinstance(made, demo.Terminated)
    assert made.signum == 15
    assert str(made) == "stopped by signal 15"
    assert made.args == demo.Terminated(15).args
