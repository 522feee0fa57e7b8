"""The user-facing surface: login signatures, the sockets package's API, the library's logger,
the README's pytest-plugin snippet, the simulator's public address, the quick-start venv."""

from __future__ import annotations

import inspect
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import le_transport.sockets
from le_transport.errors import ConfigurationError
from le_transport.providers import (
    AppLogin,
    ClientCredentialsLogin,
    StaticDomains,
    UserLogin,
)
from le_transport.providers.login import LoginServiceAuth
from le_transport.sockets.wrapping import SocketWrapper
from le_transport.testing.simulator import SimulatorConfig

ROOT = Path(__file__).resolve().parent.parent


# -- the login classes spell out their options ------------------------------------------------

LOGINS = [UserLogin, AppLogin, ClientCredentialsLogin]


def _options(cls: type) -> list[tuple[str, object, object]]:
    """The keyword-only parameters of ``cls``'s constructor: (name, default, annotation)."""
    params = inspect.signature(cls).parameters.values()
    keyword_only = inspect.Parameter.KEYWORD_ONLY
    return [(p.name, p.default, p.annotation) for p in params if p.kind is keyword_only]


@pytest.mark.parametrize("cls", LOGINS, ids=lambda c: c.__name__)
def test_each_login_spells_out_the_options_of_the_login_service_auth(cls: type) -> None:
    # They took **options: Any, so mypy --strict let "refresh_intervall=5" through.
    params = inspect.signature(cls).parameters.values()
    assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in params)
    assert _options(cls) == _options(LoginServiceAuth)


@pytest.mark.parametrize("cls", LOGINS, ids=lambda c: c.__name__)
def test_each_login_passes_every_option_on_unchanged(cls: type) -> None:
    domains = StaticDomains({"agentVep": "va.example"})
    credentials = {
        UserLogin: ("123", "bot", "pw"),
        AppLogin: ("123", "bot", "k", "s", "t", "ts"),
        ClientCredentialsLogin: ("123", "bot", "id", "secret"),
    }[cls]
    auth = cls(
        *credentials,
        domains=domains,
        service="otherVep",
        version="2.0",
        refresh_interval=7.0,
        keepalive=False,
        logout_on_close=False,
    )
    assert isinstance(auth, LoginServiceAuth)
    assert (auth._domains, auth._service, auth._version) == (domains, "otherVep", "2.0")
    assert (auth._refresh_interval, auth._keepalive_on, auth._logout_on_close) == (
        7.0,
        False,
        False,
    )
    with pytest.raises(TypeError, match="refresh_intervall"):
        cls(*credentials, domains=domains, refresh_intervall=5)


# -- le_transport.sockets: its API, not its internals ----------------------------------------

INTERNALS = {"Lifecycle", "Outbox", "Outgoing", "PendingRequests", "is_async_callable"}


def test_the_sockets_package_exports_its_api_and_not_its_internals() -> None:
    exported = set(le_transport.sockets.__all__)
    assert exported.isdisjoint(INTERNALS)
    assert all(hasattr(le_transport.sockets, name) for name in exported)
    # Still importable where they live.
    from le_transport._checks import is_async_callable
    from le_transport.sockets.correlation import PendingRequests
    from le_transport.sockets.lifecycle import Lifecycle
    from le_transport.sockets.outbox import Outbox, Outgoing

    assert callable(is_async_callable)
    assert all(isinstance(c, type) for c in (PendingRequests, Lifecycle, Outbox, Outgoing))


def test_the_socket_wrapper_protocol_documents_its_members() -> None:
    active = inspect.getattr_static(SocketWrapper, "active")
    assert isinstance(active, property)
    assert "dialer skips it" in (active.__doc__ or "")
    assert "in place of ``ws``" in (SocketWrapper.wrap_socket.__doc__ or "")


# -- the library's logger ---------------------------------------------------------------------


def test_the_library_logger_has_a_null_handler_and_nothing_else() -> None:
    handlers = logging.getLogger("le_transport").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_an_application_without_logging_configured_prints_none_of_the_librarys_records() -> None:
    # Without a handler on its logger, Python's last resort printed the library's warnings on
    # stderr of any application that had not configured logging.
    done = _python(
        "import logging, le_transport\n"
        "logging.getLogger('le_transport.retry').warning('library warning 7f3a')\n"
    )
    assert done.returncode == 0, done.stderr
    assert "library warning 7f3a" not in done.stderr


def test_an_application_with_logging_configured_gets_the_librarys_records() -> None:
    done = _python(
        "import logging, le_transport\n"
        "logging.basicConfig(format='%(name)s %(message)s')\n"
        "logging.getLogger('le_transport.retry').warning('library warning 7f3a')\n"
    )
    assert "le_transport.retry library warning 7f3a" in done.stderr


def test_the_simulators_record_notices_are_still_shown_beside_the_null_handler() -> None:
    # The command shows them unless logging is configured; the NullHandler is not that.
    done = _python(
        "import logging\n"
        "from le_transport import cli\n"
        "with cli._records_notices():\n"
        "    logging.getLogger('le_transport.records').info('requests dropped 9c1e')\n"
    )
    assert "le-transport simulate: requests dropped 9c1e" in done.stderr


def test_the_caplog_fixture_still_captures_the_librarys_records(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="le_transport"):
        logging.getLogger("le_transport.retry").warning("captured 51d0")
    assert "captured 51d0" in caplog.text


# -- the README's pytest-plugin snippet, as written -------------------------------------------


def _plugin_snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("Installing le_transport registers a pytest plugin")
    found = re.compile(r"```python\n(.*?)```", re.S).search(readme, start)
    assert found is not None
    return found.group(1)


def test_the_readmes_plugin_snippet_passes_in_pytest_asyncios_default_strict_mode(
    tmp_path: Path,
) -> None:
    # It had no @pytest.mark.asyncio: in strict mode (the default) the test was not run, and
    # it used names it did not import.
    (tmp_path / "test_readme_snippet.py").write_text(_plugin_snippet())
    # No asyncio_mode: pytest-asyncio's default, strict.
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\naddopts = -p no:cacheprovider\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-W", "error::pytest.PytestWarning"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


# -- the simulator's public address ----------------------------------------------------------


@pytest.mark.parametrize(
    "address", ["h:99999", "h:-1", "a:b:c", "h:0", "h:", ":80", "::1", "[::1]:70000", "a..b"]
)
def test_a_public_address_that_no_client_would_take_is_refused(address: str) -> None:
    with pytest.raises(ConfigurationError, match=r"SimulatorConfig\.public_address"):
        SimulatorConfig(public_address=address)


@pytest.mark.parametrize(
    "address", ["le.example.test", "le.example.test:8443", "127.0.0.1:1", "[::1]:65535"]
)
def test_a_public_address_a_client_takes_is_accepted(address: str) -> None:
    assert SimulatorConfig(public_address=address).public_address == address


# -- scripts/_env.sh: the venv follows $PYTHON ------------------------------------------------


def _identity(python: str) -> str:
    return subprocess.run(
        [
            python,
            "-c",
            "import os, platform, sys; print(platform.python_version(), "
            "os.path.realpath(getattr(sys, '_base_executable', sys.executable)))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()


#: This test run's own interpreter (the one behind its venv).
BASE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def _another_python() -> str | None:
    """An interpreter (3.11 or newer) other than this run's, if the machine has one."""
    candidates = [shutil.which(n) for n in ("python3.13", "python3.12", "python3.11", "python3")]
    candidates += [str(p) for p in Path("/root/.pyenv/versions").glob("3.1[1-9]*/bin/python3")]
    mine = _identity(BASE_PYTHON)
    for candidate in candidates:
        if candidate is None:
            continue
        try:
            identity = _identity(candidate)
        except (OSError, subprocess.SubprocessError):
            continue  # a pyenv shim for a version that is not selected, say
        version = tuple(int(p) for p in identity.split()[0].split(".")[:2])
        if version >= (3, 11) and identity != mine:
            return candidate
    return None


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the script and pyproject.toml, with a .venv made by this run's Python whose
    pip only records what it is asked (``pip.log``): nothing is installed or downloaded."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "_env.sh", tmp_path / "scripts" / "_env.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    subprocess.run(
        [BASE_PYTHON, "-m", "venv", "--without-pip", str(tmp_path / ".venv")],
        check=True,
        timeout=120,
    )
    purelib = subprocess.run(
        [
            str(tmp_path / ".venv" / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    fake = Path(purelib) / "pip"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text(
        "import os, sys\n"
        "with open(os.environ['FAKE_PIP_LOG'], 'a') as f:\n"
        "    f.write(' '.join(sys.argv[1:]) + '\\n')\n"
    )
    return tmp_path


def _source_env(project: Path, python: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV")}
    env["FAKE_PIP_LOG"] = str(project / "pip.log")
    env["PIP_NO_INDEX"] = "1"  # should a real pip run: never the network
    # The interpreters a bare `python3` may find: this run's first.
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


def _pip_calls(project: Path) -> list[str]:
    log = project / "pip.log"
    return log.read_text().splitlines() if log.exists() else []


def _venv_version(project: Path) -> str:
    cfg = (project / ".venv" / "pyvenv.cfg").read_text()
    found = re.search(r"^version(?:_info)?\s*=\s*(\S+)", cfg, re.M)
    assert found is not None, cfg
    return found.group(1)


def test_env_script_records_the_interpreter_and_installs_again_only_when_something_changed(
    project: Path,
) -> None:
    first = _source_env(project)
    assert first.returncode == 0, first.stderr
    assert any("-e .[dev]" in call for call in _pip_calls(project))
    stamp = (project / ".venv" / ".le_transport_stamp").read_text()
    assert stamp.startswith(f"python {_identity(BASE_PYTHON)}; pyproject ")
    installs = len(_pip_calls(project))
    # Nothing changed: nothing is installed, whether PYTHON names the same interpreter or not.
    for python in (None, BASE_PYTHON):
        again = _source_env(project, python)
        assert again.returncode == 0, again.stderr
        assert "making .venv anew" not in again.stderr
    assert len(_pip_calls(project)) == installs
    # pyproject.toml changed: installed again, in the same venv.
    with (project / "pyproject.toml").open("a") as f:
        f.write("\n# changed\n")
    assert _source_env(project).returncode == 0
    assert len(_pip_calls(project)) > installs


def test_env_script_takes_over_a_stamp_from_before_without_installing(project: Path) -> None:
    import hashlib

    digest = hashlib.sha256((project / "pyproject.toml").read_bytes()).hexdigest()
    (project / ".venv" / ".le_transport_stamp").write_text(digest + "\n")
    done = _source_env(project)
    assert done.returncode == 0, done.stderr
    assert _pip_calls(project) == []
    assert (project / ".venv" / ".le_transport_stamp").read_text().startswith("python ")


def test_env_script_makes_the_venv_anew_when_python_names_another_interpreter(
    project: Path,
) -> None:
    # PYTHON=python3.13 ./scripts/test silently reused a 3.11 .venv.
    other = _another_python()
    if other is None:
        pytest.skip("no second Python 3.11+ on this machine")
    done = _source_env(project, other)
    assert "making .venv anew" in done.stderr, done.stderr
    assert _venv_version(project) == _identity(other).split()[0]
    # The new venv's pip is a real one, offline here: whether it could install is not the
    # point; the venv was made with the interpreter asked for.


def test_env_script_makes_the_venv_anew_when_its_interpreter_is_gone(project: Path) -> None:
    # That Python was removed or upgraded: the venv's link to it dangles.
    for link in (project / ".venv" / "bin").glob("python*"):
        if link.is_symlink() and os.path.isabs(os.readlink(link)):
            link.unlink()
            link.symlink_to("/nonexistent/python3")
    python = project / ".venv" / "bin" / "python"
    assert not python.exists()
    done = _source_env(project, BASE_PYTHON)
    assert "has no working Python" in done.stderr, done.stderr
    assert subprocess.run([str(python), "-c", "pass"], timeout=60).returncode == 0
