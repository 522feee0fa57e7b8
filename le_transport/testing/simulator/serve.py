"""Running the simulator from the command line (``le-transport simulate``), optionally over TLS.

:func:`self_signed_certificate` makes a throwaway certificate for ``127.0.0.1``, ``::1`` and
``localhost`` with the ``openssl`` command (no Python dependency is added for it), so that
clients that hard-code ``https://`` and ``wss://`` can be pointed at the simulator; trust it
with ``ssl.create_default_context(cafile=cert)`` (``Engine(tls=...)``).

When it stops, ``le-transport simulate`` prints what each rule of its plan did
(:func:`fault_summary`); with ``--verbose``, a line for each fault as it is injected.

``le-transport simulate --tls`` without ``--cert``/``--key`` writes that certificate to a file
of its own in the temporary directory (``le-simulator-cert-*.pem``, readable by its user only),
prints its path, and removes it when the simulator stops; the key never leaves a private
temporary directory, removed too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from ...chaos.plan import FaultPlan
from ...errors import ConfigurationError
from .config import DEFAULT_ACCOUNT, DEFAULT_MAX_RECORDS, DEFAULT_USER, SimulatorConfig
from .server import SimFaults, Simulator, _bracketed

__all__ = ["fault_summary", "self_signed_certificate", "serve_forever", "server_tls_context"]


def self_signed_certificate(directory: Path, *, days: int = 2) -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` for 127.0.0.1, ::1 and localhost into ``directory``.

    Uses the ``openssl`` command; :class:`ConfigurationError` if it is not installed.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ConfigurationError(
            "--tls without --cert/--key needs the openssl command to make a self-signed "
            "certificate; install openssl or pass --cert and --key"
        )
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            str(days),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def server_tls_context(cert: Path | str, key: Path | str) -> ssl.SSLContext:
    """A server-side TLS context for the simulator."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _publish_certificate(made: Path) -> Path:
    """Copy the certificate ``made`` to a new file in the temporary directory, for clients to
    trust, and return its path.

    ``mkstemp``: a name of its own (a second simulator must not overwrite the certificate the
    first one's clients trust), created exclusively (a link planted there is not followed),
    readable and writable by its user only.
    """
    fd, name = tempfile.mkstemp(prefix="le-simulator-cert-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(made.read_bytes())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    return Path(name)


def _remove(path: Path) -> None:
    """Remove ``path`` if it is still there (the user may have removed it already)."""
    with contextlib.suppress(OSError):
        path.unlink()


class _CannotServe(Exception):
    """Why the simulator cannot start, for the command's one-line error (exit 2)."""


def _self_signed_context(stack: contextlib.ExitStack) -> ssl.SSLContext:
    """A TLS context with a fresh self-signed certificate, whose file is published for clients
    and printed; what it made is removed when ``stack`` closes. :class:`_CannotServe` if it
    cannot be made."""
    try:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="le-simulator-"))
    except OSError as exc:  # no temporary directory, or none this user may write to
        raise _CannotServe(f"cannot write the self-signed certificate: {exc}") from None
    try:
        made_cert, made_key = self_signed_certificate(Path(tmp))
    except (ConfigurationError, subprocess.CalledProcessError) as exc:
        raise _CannotServe(str(exc)) from None
    except OSError as exc:  # openssl gone since shutil.which found it, or not runnable
        raise _CannotServe(f"cannot run openssl: {exc}") from None
    try:
        trusted = _publish_certificate(made_cert)
    except OSError as exc:  # a full disk, a quota
        raise _CannotServe(f"cannot write the self-signed certificate: {exc}") from None
    stack.callback(_remove, trusted)
    print(f"self-signed certificate (made with openssl): {trusted}")
    return server_tls_context(made_cert, made_key)


class _CannotListen(Exception):
    """Binding the simulator's address failed: the one error blamed on listening."""


async def _serve(sim: Simulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGHUP too: a closed terminal or a lost ssh session must stop it as Ctrl-C does, removing
    # what it made (a --tls key and certificate in the temporary directory) and printing the
    # plan's summary; its default action killed the process with nothing cleaned up.
    # Not when it is ignored (nohup, setsid and daemon wrappers ignore it so that the process
    # outlives the terminal): a handler would replace that.
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is not None and signal.getsignal(hangup) is signal.SIG_IGN:
        hangup = None
    for sig in (signal.SIGINT, signal.SIGTERM, *(() if hangup is None else (hangup,))):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await sim.start()
    except (OSError, UnicodeError) as exc:
        # Address in use, not ours to bind, or not an address of this machine (a name that
        # does not encode is refused up front: see _host_problem).
        raise _CannotListen(getattr(exc, "strerror", None) or str(exc)) from None
    # Only the bind is "cannot listen": an error while serving (a closed stdout) is its own.
    async with sim:  # already started: stops it however the block ends
        print(f"LiveEngage simulator on {sim.url} (sockets on {sim.ws_scheme}://{sim.host})")
        print(
            f"  Domain API: {sim.url}/api/account/{DEFAULT_ACCOUNT}/service/baseURI.json"
            f"?version=1.0"
        )
        print(
            f"  account {DEFAULT_ACCOUNT}, user {DEFAULT_USER}; the test credentials are in "
            "le_transport.testing.simulator.config"
        )
        print("  Ctrl-C to stop", flush=True)
        await stop.wait()
    print("stopped", flush=True)
    summary = fault_summary(sim.faults)
    if summary:
        print("\n".join(summary), flush=True)


def fault_summary(faults: SimFaults) -> list[str]:
    """What each rule of the plan did, one line per rule (none without rules): the lines
    ``le-transport simulate`` prints when it stops, so that a chaos run from the command line
    can be checked. Exact counts (:meth:`SimFaults.rule_counts`), never the traffic itself.

    A rule that was due but injected nothing because an earlier rule fired first on the
    same unit every time (rules do not add up) is marked, as is one that matched nothing."""
    plan = faults.plan
    counts = faults.rule_counts()
    if not counts:
        return []
    units = {rule.id: rule.unit for rule in plan.rules}
    lines = [f"faults injected, by rule (plan seed {plan.seed}):"]
    for rule_id, c in counts.items():
        shown = rule_id if rule_id.isprintable() else repr(rule_id)
        line = f"  {shown[:80]} ({units.get(rule_id, 'removed')}): injected {c.injected}"
        details = [f"matched {c.matched}"]
        details += [
            f"{name} {value}"
            for name, value in (
                ("shadowed", c.shadowed),
                ("skipped", c.skipped),
                ("admitted", c.admitted),
                ("forced", c.forced),
            )
            if value
        ]
        line += f" ({', '.join(details)})"
        if c.always_shadowed:
            line += "; never injected: an earlier rule fired first every time it was due"
        elif c.matched == 0 and c.forced == 0:
            line += "; matched nothing"
        lines.append(line)
    return lines


def serve_forever(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    public_address: str | None = None,
    tls: bool = False,
    cert: str | None = None,
    key: str | None = None,
    plan_path: str | None = None,
    max_records: int | None = None,
) -> int:
    """Run a simulator in the foreground until SIGINT/SIGTERM; returns the exit code.

    ``max_records`` bounds each of its records (``SimulatorConfig.max_records``; None: the
    default bound, never unbounded here: this is the long-running simulator). ``plan_path``
    must name a regular file of at most :data:`MAX_PLAN_BYTES`. Every mistake in the
    arguments (a host that is no name, a plan that cannot be read) and an address that
    cannot be bound is a one-line message on stderr and 2; an error while serving (stdout
    closed: :class:`BrokenPipeError`) is raised."""
    problem = _host_problem(host) if isinstance(host, str) else None
    if problem is not None:
        print(f"le-transport simulate: {problem}", file=sys.stderr)
        return 2
    plan = None
    if plan_path is not None:
        try:
            plan = FaultPlan.from_dict(json.loads(_read_plan_file(plan_path)))
        except _BadPlanFile as exc:
            print(f"le-transport simulate: cannot read the fault plan: {exc}", file=sys.stderr)
            return 2
        except RecursionError:
            # JSON nested past the parser's recursion limit: not a plan, and no traceback.
            print(
                "le-transport simulate: cannot read the fault plan: it is nested too deeply",
                file=sys.stderr,
            )
            return 2
        except (OSError, ValueError, OverflowError) as exc:
            # ValueError: bad JSON, text that is not UTF-8, or a plan the library refuses
            # (ConfigurationError). OverflowError: a number no plan field can hold, should one
            # slip past the plan's own checks.
            print(f"le-transport simulate: cannot read the fault plan: {exc}", file=sys.stderr)
            return 2
    try:
        config = SimulatorConfig(
            public_address=public_address,
            max_records=DEFAULT_MAX_RECORDS if max_records is None else max_records,
        )
    except ConfigurationError as exc:
        print(f"le-transport simulate: {exc}", file=sys.stderr)
        return 2
    # What is made for a self-signed certificate (its key's directory, the published
    # certificate) is removed when the simulator stops, however it stops.
    with contextlib.ExitStack() as stack:
        ctx = None
        if cert == "" or key == "":
            # An empty --cert= or --key= (an unset shell variable) names no file: refused, not
            # taken as "no certificate" and served as plain HTTP.
            print(
                "le-transport simulate: --cert and --key name files; got an empty value",
                file=sys.stderr,
            )
            return 2
        if tls or cert is not None or key is not None:
            if (cert is None) != (key is None):
                print("le-transport simulate: give both --cert and --key", file=sys.stderr)
                return 2
            if cert is None:
                try:
                    ctx = _self_signed_context(stack)
                except _CannotServe as exc:
                    print(f"le-transport simulate: {exc}", file=sys.stderr)
                    return 2
            else:
                assert key is not None
                try:
                    ctx = server_tls_context(cert, key)
                except (OSError, ssl.SSLError) as exc:
                    print(
                        f"le-transport simulate: cannot load --cert/--key: {exc}", file=sys.stderr
                    )
                    return 2
        try:
            sim = Simulator(config, host=host, port=port, ssl=ctx, plan=plan)
        except ConfigurationError as exc:
            # A --host holding a port ("localhost:8080"), a --port out of range.
            print(f"le-transport simulate: {exc}", file=sys.stderr)
            return 2
        # KeyboardInterrupt only if it arrives before the signal handler is installed.
        with contextlib.suppress(KeyboardInterrupt):
            try:
                asyncio.run(_serve(sim))
            except _CannotListen as exc:
                print(
                    f"le-transport simulate: cannot listen on {_bracketed(host)}:{port}: {exc}",
                    file=sys.stderr,
                )
                return 2
    return 0


def _host_problem(host: str) -> str | None:
    """Why ``host`` cannot be listened on as given, or None. A name is checked as the
    resolver will encode it (IDNA): an empty label (``a..b``, ``.``) or one longer than 63
    characters failed with a ``UnicodeError`` traceback when binding. Other mistakes (a port
    in it, a path) are the :class:`Simulator`'s to refuse."""
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not name or ":" in name:
        return None  # empty, or an IPv6 literal: Simulator.host checks those
    try:
        name.encode("idna")
    except UnicodeError as exc:
        why = (
            "a dot-separated label is empty or longer than 63 characters"
            if "label" in str(exc)
            else "it does not encode as a host name (IDNA)"
        )
        return f"--host {host[:60]!r} is not a host name: {why}"
    return None


#: The largest fault plan ``--plan`` reads, in bytes. A plan is a few KB; what a wrong path
#: (a log, a disk image) could cost is bounded.
MAX_PLAN_BYTES = 1 << 20


class _BadPlanFile(Exception):
    """The ``--plan`` path is not a file a plan can be read from (the message says why)."""


def _read_plan_file(path: str) -> str:
    """The text of the plan file ``path``: a regular file of at most :data:`MAX_PLAN_BYTES`,
    in UTF-8. :class:`_BadPlanFile` for anything else: a FIFO (reading it waited for a writer
    for ever), a device (``/dev/zero`` was read until memory ran out), a directory."""
    shown = repr(path[:200])
    # O_NONBLOCK: opening a FIFO for reading otherwise waits for a writer; it is refused
    # below, and changes nothing for a regular file, set back to blocking before reading.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _BadPlanFile(str(exc)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _BadPlanFile(
                f"{shown} is not a regular file ({_file_kind(mode)}): give a JSON file"
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as file:
        data = file.read(MAX_PLAN_BYTES + 1)
    if len(data) > MAX_PLAN_BYTES:
        raise _BadPlanFile(
            f"{shown} is larger than {MAX_PLAN_BYTES:,} bytes: not a fault plan (a plan is a "
            "few KB)"
        )
    return data.decode("utf-8")


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a file"
