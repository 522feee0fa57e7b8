"""The architecture's dependency rules, made executable by parsing imports and calls with ast.

- ``le_transport/policies/`` imports only the standard library (not asyncio, time, socket or
  other I/O), attrs and ``le_transport.errors``: policies are pure values (h11's "Rule 1").
- Nothing in the library outside ``testing/`` and ``chaos/`` imports ``le_transport.testing``
  or ``le_transport.chaos`` (except the command line, ``cli.py`` and ``demo.py``, which runs
  the simulator and its faults): production code never loads the testing tools. The dialer
  finds the fault injector by a protocol of its own (``sockets/wrapping.py``).
- Nothing in the library outside ``clock.py`` and ``testing/`` sleeps or reads time by itself:
  no ``asyncio.sleep``, ``time.monotonic``, ``time.time`` or ``loop.time`` (calls or references),
  except the call sites in :data:`TIME_ALLOWED`, each with its reason, and ``time.time`` as
  the default of an injectable ``wall_clock`` parameter or field: an epoch (for a Retry-After
  HTTP-date, a token's expiry, an OAuth timestamp), never a duration, and replaceable by tests.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "le_transport"

#: Standard-library modules a pure policy must not touch: I/O, time, concurrency, randomness
#: drawn by itself.
IMPURE_STDLIB = frozenset(
    {
        "asyncio",
        "time",
        "socket",
        "ssl",
        "select",
        "selectors",
        "threading",
        "multiprocessing",
        "subprocess",
        "os",
        "random",
        "secrets",
        "logging",
        "http",
        "urllib",
    }
)

#: Time and sleep references allowed outside clock.py and testing/, as (file, name): why.
TIME_ALLOWED: dict[tuple[str, str], str] = {
    ("demo.py", "time.monotonic"): "stamps the demo's printed lines; no policy timing",
}

FORBIDDEN_TIME = frozenset(
    {"asyncio.sleep", "time.monotonic", "time.time", "time.sleep", "loop.time"}
)


def modules(root: Path = PACKAGE) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def relative(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def imported_modules(path: Path) -> list[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ["le_transport", *path.relative_to(PACKAGE).parent.parts]
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            names.append(mod)
            # "from . import testing" names the module in the alias.
            names.extend(f"{mod}.{alias.name}" for alias in node.names)
    return names


def dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for an attribute chain on a name, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def wall_clock_defaults(tree: ast.AST) -> set[int]:
    """ids of the nodes that are the default of a ``wall_clock`` parameter or field."""
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign | ast.Assign) and node.value is not None:
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "wall_clock" for t in targets):
                ids.add(id(node.value))
        elif isinstance(node, ast.arguments):
            positional = [*node.posonlyargs, *node.args]
            for arg, default in zip(
                positional[len(positional) - len(node.defaults) :], node.defaults, strict=True
            ):
                if arg.arg == "wall_clock":
                    ids.add(id(default))
            for arg, kw_default in zip(node.kwonlyargs, node.kw_defaults, strict=True):
                if arg.arg == "wall_clock" and kw_default is not None:
                    ids.add(id(kw_default))
    return ids


def time_references(path: Path) -> list[tuple[int, str]]:
    """Every reference to a forbidden time source: ``asyncio.sleep``, ``time.time``, a
    ``<something>loop.time`` / ``loop.time()``, or a ``from time import monotonic``; except
    ``time.time`` as the default of a ``wall_clock`` parameter or field."""
    tree = ast.parse(path.read_text(), filename=str(path))
    epoch_defaults = wall_clock_defaults(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.expr)
            and id(node) in epoch_defaults
            and dotted(node) == "time.time"
        ):
            continue
        if isinstance(node, ast.Attribute):
            name = dotted(node)
            if name is None:
                if node.attr == "time" and isinstance(node.value, ast.Call):
                    callee = dotted(node.value.func) or ""
                    if callee.endswith(("get_running_loop", "get_event_loop")):
                        found.append((node.lineno, "loop.time"))
                continue
            if name in FORBIDDEN_TIME:
                found.append((node.lineno, name))
            elif name.endswith("loop.time") or name.endswith("_loop.time"):
                found.append((node.lineno, "loop.time"))
        elif isinstance(node, ast.ImportFrom) and node.module in ("time", "asyncio"):
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                if name in FORBIDDEN_TIME:
                    found.append((node.lineno, name))
    return found


def is_stdlib(name: str) -> bool:
    return name.split(".")[0] in sys.stdlib_module_names or name == "__future__"


def test_policies_import_only_pure_stdlib_attrs_and_errors() -> None:
    bad: list[str] = []
    policy_files = modules(PACKAGE / "policies")
    assert policy_files, "no policy modules found"
    for path in policy_files:
        for name in imported_modules(path):
            top = name.split(".")[0]
            if name.startswith("le_transport.policies") or name in ("le_transport.errors",):
                continue
            if name.startswith("le_transport.errors."):
                continue
            if top == "attrs" or top == "attr":
                continue
            if is_stdlib(name) and top not in IMPURE_STDLIB:
                continue
            bad.append(f"{relative(path)} imports {name}")
    assert bad == []


@pytest.mark.parametrize("package", ["testing", "chaos"])
def test_the_library_never_imports_its_testing_tools(package: str) -> None:
    bad: list[str] = []
    banned = f"le_transport.{package}"
    for path in modules():
        rel = relative(path)
        # cli.py and demo.py are the command line, an application of the library whose job is
        # to run the simulator (le-transport simulate, le-transport demo); nothing imports them.
        if rel.startswith(("testing/", "chaos/")) or rel in ("cli.py", "demo.py"):
            continue
        bad.extend(
            f"{rel} imports {name}"
            for name in imported_modules(path)
            if name == banned or name.startswith(banned + ".")
        )
    assert bad == []


def test_importing_the_library_loads_neither_testing_tool() -> None:
    # The rule above, as Python sees it: a fresh interpreter importing the package.
    import subprocess

    probe = (
        "import sys, le_transport, le_transport.engine, le_transport.sockets\n"
        "print(sorted(m for m in sys.modules if m.startswith(('le_transport.chaos', "
        "'le_transport.testing'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_the_fault_injector_is_the_socket_wrapper_the_dialer_looks_for() -> None:
    from le_transport.chaos import FaultInjector, FaultRule, Match, WsDrop
    from le_transport.sockets.wrapping import SocketWrapper, socket_wrapper

    idle = FaultInjector([])
    armed = FaultInjector([FaultRule("drop", WsDrop(), match=Match(path="/ws"), unit="ws_session")])
    assert isinstance(armed, SocketWrapper)
    # An injector with no rules is skipped; plain middlewares are not wrappers.
    assert socket_wrapper([idle, print, armed]) is armed
    assert socket_wrapper([idle]) is None


def test_the_library_reads_time_and_sleeps_only_through_a_clock() -> None:
    bad: list[str] = []
    used_allowances: set[tuple[str, str]] = set()
    for path in modules():
        rel = relative(path)
        if rel == "clock.py" or rel.startswith("testing/"):
            continue
        for line, name in time_references(path):
            if (rel, name) in TIME_ALLOWED:
                used_allowances.add((rel, name))
                continue
            bad.append(f"{rel}:{line} uses {name}")
    assert bad == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import asyncio\nasync def f():\n    await asyncio.sleep(1)\n", ["asyncio.sleep"]),
        ("import time\nx = time.monotonic()\n", ["time.monotonic"]),
        ("from time import monotonic\n", ["time.monotonic"]),
        ("import asyncio\nt = asyncio.get_running_loop().time()\n", ["loop.time"]),
        ("def f(self):\n    return self._loop.time()\n", ["loop.time"]),
        ("async def f(clock):\n    await clock.sleep(1)\n", []),
        ("import time\ndef f(*, wall_clock=time.time):\n    return wall_clock()\n", []),
        ("import time\nclass C:\n    wall_clock: object = time.time\n", []),
        ("import time\ndef f(*, wall_clock=time.time):\n    return time.time()\n", ["time.time"]),
    ],
)
def test_the_time_scanner_finds_what_it_forbids(
    source: str, expected: list[str], tmp_path: Path
) -> None:
    path = tmp_path / "m.py"
    path.write_text(source)
    assert [name for _, name in time_references(path)] == expected


def test_the_import_scanner_resolves_relative_imports() -> None:
    names = imported_modules(PACKAGE / "policies" / "retry.py")
    assert "le_transport.errors" in names
    assert "le_transport.policies.classify" in names
