"""Running the simulator from the command line (``le-transport simulate``), optionally over TLS.

:func:`self_signed_certificate` makes a throwaway certificate for ``127.0.0.1`` and
``localhost`` with the ``openssl`` command (no Python dependency is added for it), so that
clients that hard-code ``https://`` and ``wss://`` can be pointed at the simulator; trust it
with ``ssl.create_default_context(cafile=cert)`` (``Engine(tls=...)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

from ...chaos.plan import FaultPlan
from ...errors import ConfigurationError
from .config import DEFAULT_ACCOUNT, DEFAULT_MAX_RECORDS, DEFAULT_USER, SimulatorConfig
from .server import Simulator

__all__ = ["self_signed_certificate", "serve_forever", "server_tls_context"]


def self_signed_certificate(directory: Path, *, days: int = 2) -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` for 127.0.0.1 and localhost into ``directory``.

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
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
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


async def _serve(sim: Simulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with sim:
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
    default bound, never unbounded here: this is the long-running simulator)."""
    plan = None
    if plan_path is not None:
        try:
            plan = FaultPlan.from_dict(json.loads(Path(plan_path).read_text()))
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
    with tempfile.TemporaryDirectory(prefix="le-simulator-") as tmp:
        ctx = None
        if tls or cert or key:
            if (cert is None) != (key is None):
                print("le-transport simulate: give both --cert and --key", file=sys.stderr)
                return 2
            if cert is None:
                try:
                    made_cert, made_key = self_signed_certificate(Path(tmp))
                except (ConfigurationError, subprocess.CalledProcessError) as exc:
                    print(f"le-transport simulate: {exc}", file=sys.stderr)
                    return 2
                # Copy the certificate out of the temporary directory so clients can trust it.
                trusted = Path(tempfile.gettempdir()) / "le-simulator-cert.pem"
                trusted.write_bytes(made_cert.read_bytes())
                print(f"self-signed certificate (made with openssl): {trusted}")
                ctx = server_tls_context(made_cert, made_key)
            else:
                assert key is not None
                try:
                    ctx = server_tls_context(cert, key)
                except (OSError, ssl.SSLError) as exc:
                    print(
                        f"le-transport simulate: cannot load --cert/--key: {exc}", file=sys.stderr
                    )
                    return 2
        sim = Simulator(config, host=host, port=port, ssl=ctx, plan=plan)
        # KeyboardInterrupt only if it arrives before the signal handler is installed.
        with contextlib.suppress(KeyboardInterrupt):
            try:
                asyncio.run(_serve(sim))
            except OSError as exc:
                # Address in use, not ours to bind, or not an address of this machine.
                print(
                    f"le-transport simulate: cannot listen on {host}:{port}: {exc.strerror or exc}",
                    file=sys.stderr,
                )
                return 2
    return 0
