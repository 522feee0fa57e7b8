"""The ``le-transport`` command: ``demo`` (the main job) and ``simulate`` (a local LiveEngage).

- ``le-transport demo``: an agent-like workload through the engine against the built-in
  simulator while faults are injected; a live timeline, a summary, and exit code 0 only when
  every invariant held. ``--account`` (or ``LE_ACCOUNT`` and friends) runs a shorter workload
  (domains, login, the Users API, a 404) against a real account instead, with client-side
  faults only; a real account's option given without the account is a usage error.
- ``le-transport simulate --port N [--tls] [--plan plan.json [--verbose]]``: the simulator in
  the foreground until Ctrl-C; when it stops, what each rule of the plan injected (and how
  often it was shadowed by an earlier rule), and with ``--verbose`` a line per injected fault
  as it happens. Its records are bounded (``SimulatorConfig.max_records``, the newest 100,000
  of each), so it can serve a long soak; when a record starts dropping its oldest entries, one
  line says so on stderr (the record's name and bound, nothing of the traffic).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from typing import TextIO

from ._args import positive_int

__all__ = ["main"]


#: The demo's --time-scale range: below it schedules are shorter than the loop's own latency.
MIN_TIME_SCALE = 0.001
MAX_TIME_SCALE = 10.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="le-transport",
        description="Resilient transport for LivePerson LiveEngage: demo and local simulator.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="run an agent-like workload under injected faults and show what the library did",
        description="Runs an agent-like workload through the engine while faults are injected, "
        "prints a timeline of what the library did and a summary; exits 0 only if every "
        "invariant held. Without --account it runs against the built-in simulator; with it, "
        "a shorter workload (domains, login, the Users API through two injected 503s, a 404) "
        "runs against that account, with client-side faults only.",
    )
    demo.add_argument(
        "--time-scale",
        type=float,
        default=None,
        help="multiply every schedule (5/10/15 s pauses, re-login minutes, keepalives) by this, "
        "0.001 to 10 (default 0.01 against the simulator: the whole run takes a few seconds; 1 "
        "against a real account)",
    )
    demo.add_argument(
        "--seed", type=_seed, default=7, help="seed of the fault plan, 64 bits (default 7)"
    )
    demo.add_argument(
        "--verbose", action="store_true", help="also show the library's own (redacted) log lines"
    )
    real = demo.add_argument_group(
        "a real account (else the LE_ACCOUNT, LE_USERNAME, LE_PASSWORD, LE_APP_KEY, "
        "LE_APP_SECRET, LE_ACCESS_TOKEN, LE_ACCESS_TOKEN_SECRET, LE_CSDS_HOST, LE_CSDS_SCHEME "
        "variables)"
    )
    real.add_argument("--account", help="LiveEngage account id")
    real.add_argument("--username", help="agent or bot user name")
    real.add_argument("--password", help="the user's password (prefer LE_PASSWORD)")
    real.add_argument("--app-key", help="API key: app key (consumer key)")
    real.add_argument("--app-secret", help="API key: secret (prefer LE_APP_SECRET)")
    real.add_argument("--access-token", help="API key: access token")
    real.add_argument("--access-token-secret", help="API key: access token secret")
    real.add_argument("--csds-host", help="Domain API host (default api.liveperson.net)")

    sim = sub.add_parser(
        "simulate",
        help="run the LiveEngage simulator in the foreground until Ctrl-C",
        description="Serves the Domain API, Login Service, REST resources and messaging "
        "sockets on loopback, with the default test account (see the simulator's docs).",
        epilog="--plan FILE: the JSON form of le_transport.chaos.FaultPlan (FaultPlan.to_dict() "
        "writes it, FaultPlan.from_dict() reads it): a seed and a list of rules, each with an "
        "id, a match (method, path glob, service), a unit (request, ws_session, ws_message), a "
        "fault with its kind and parameters plus a schedule (or a sequence of faults, null "
        "to pass), and a probability p. See examples/fault_plan.json and the README's "
        '"Fault plan files".',
    )
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    sim.add_argument("--port", type=_port, default=0, help="port (default: a free one)")
    sim.add_argument(
        "--public-address",
        help="host:port the Domain API hands out (when clients reach it through a proxy)",
    )
    sim.add_argument(
        "--tls",
        action="store_true",
        help="serve https/wss; with no --cert/--key, a self-signed certificate for 127.0.0.1, "
        "::1 and localhost is generated with the openssl command",
    )
    sim.add_argument("--cert", help="PEM certificate chain: serves https/wss (implies --tls)")
    sim.add_argument("--key", help="PEM private key for --cert")
    sim.add_argument(
        "--plan",
        metavar="FILE",
        help="a fault plan (a JSON file, at most 1 MiB) to apply from the start; what each "
        "rule injected is printed when the simulator stops. The format is FaultPlan.to_dict()'s: "
        '{"seed": 7, '
        '"rules": [{"id": "burst", "match": {"method": "GET", "path": "*/users"}, "fault": '
        '{"kind": "status", "code": 503}, "schedule": {"fail_next": 2}}]}, fields left out '
        "taking their defaults; a complete example is examples/fault_plan.json, described in "
        'the README\'s "Fault plan files"',
    )
    sim.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also print a line for each fault as it is injected (rule, kind, unit, method "
        "and redacted path; a client's text that does not print is shown escaped)",
    )
    sim.add_argument(
        "--max-records",
        type=_max_records,
        default=None,
        help="how many entries each record keeps (requests, faults, messages, nonces): the "
        "newest; default 100000, so that a long soak keeps bounded memory (an ended socket's "
        "record costs about 5 KB: a soak that churns sockets may want 10000)",
    )
    return parser


def _port(text: str) -> int:
    """A TCP port number for argparse: 0 (a free one) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r:.20}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {port}")
    return port


#: An int's text as ``int()`` reads it: ``\d`` is any decimal digit (category Nd), as for
#: ``int()``; the digits' runs are unambiguous, so it matches in one pass at any length.
_INT_TEXT = re.compile(r"\s*[+-]?\d+(?:_\d+)*\s*")


def _seed(text: str) -> int:
    """A seed for argparse: any int, its 64-bit range checked with the demo's other options.

    Past Python's limit on an int's digits (4,300), ``int()`` refuses it and argparse would
    show the whole text: such a seed is as far past 64 bits as a shorter one, said as one.
    """
    try:
        return int(text)
    except ValueError:
        # An int's text as int() reads it (any decimal digit, "_" between two, one sign,
        # blanks around), refused only for its length; else no int at any length.
        if _INT_TEXT.fullmatch(text):
            from .chaos.plan import MAX_SEED, MIN_SEED

            return MIN_SEED - 1 if text.strip().startswith("-") else MAX_SEED + 1
        raise argparse.ArgumentTypeError(f"not an int: {text!r:.20}") from None


def _max_records(text: str) -> int:
    """A record bound for argparse: an int from 1 to ``sys.maxsize``."""
    value = positive_int(text)
    if value > sys.maxsize:
        # No record can be that long: refused here rather than failing at the first request.
        raise argparse.ArgumentTypeError(f"must be at most {sys.maxsize}, got {text:.20}...")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``le-transport`` console script; returns the exit code.

    Usage errors are 2. Ctrl-C ends a demo quietly with 130 once it has cleaned up (logged
    out), SIGTERM with 143 and SIGHUP (unless ignored) with 129 likewise; an output
    whose reader went away (``le-transport demo | head -1``) ends either command quietly with
    1 (Python's "Note on SIGPIPE"), and one that cannot be written (a full disk) with 1 and
    one line on stderr; so does a demo started with no output at all (``>&-``)."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _drop_stdout()
        return 1
    except OSError as exc:
        if exc.errno is None or exc.errno not in _WRITE_ERRNOS:
            raise
        with contextlib.suppress(OSError):
            why = os.strerror(exc.errno)
            print(f"le-transport: cannot write the output: {why}", file=sys.stderr)
        _drop_stdout()
        return 1


#: The errors of a write to an output that cannot take it (a full disk or quota, a file
#: too large, an I/O error): said in one line, not a traceback.
_WRITE_ERRNOS = frozenset(
    number
    for number in (
        errno.ENOSPC,
        errno.EIO,
        errno.EFBIG,
        getattr(errno, "EDQUOT", None),
    )
    if number is not None
)


def _drop_stdout() -> None:
    """Point stdout at ``os.devnull``: what is still buffered for the closed pipe must not
    fail again (a second traceback) when the interpreter flushes it on exit."""
    with contextlib.suppress(OSError, ValueError):  # not a real file (a test's capture)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from .chaos.plan import MAX_SEED, MIN_SEED
        from .demo import DEFAULT_TIME_SCALE, AccountOptionsError, account_from, run_demo

        try:
            account = account_from(
                {
                    "account": args.account,
                    "username": args.username,
                    "password": args.password,
                    "app_key": args.app_key,
                    "app_secret": args.app_secret,
                    "access_token": args.access_token,
                    "access_token_secret": args.access_token_secret,
                    "csds_host": args.csds_host,
                }
            )
        except AccountOptionsError as exc:
            print(f"le-transport demo: {exc}", file=sys.stderr)
            return 2
        scale = args.time_scale
        if scale is None:
            scale = DEFAULT_TIME_SCALE if account is None else 1.0
        if not MIN_TIME_SCALE <= scale <= MAX_TIME_SCALE:
            # Below the floor the schedules are shorter than the loop's own latency (a 30 s
            # keepalive at 1e-5 is 0.3 ms) and the demo measures noise; far above it the
            # schedules overflow into values the providers refuse, or take days.
            print(
                f"le-transport demo: --time-scale must be between {MIN_TIME_SCALE:g} and "
                f"{MAX_TIME_SCALE:g}, got {scale:g}",
                file=sys.stderr,
            )
            return 2
        if not MIN_SEED <= args.seed <= MAX_SEED:
            # The plan refuses it: said here, before the demo starts, as a usage error.
            print(
                f"le-transport demo: --seed must be an int of 64 bits, between {MIN_SEED} and "
                f"{MAX_SEED}",
                file=sys.stderr,
            )
            return 2
        # Started with its output closed (``le-transport demo >&-``), run_demo says so and
        # returns 1 without running.
        return run_demo(time_scale=scale, seed=args.seed, account=account, verbose=args.verbose)
    if args.command == "simulate":
        from .testing.simulator.serve import serve_forever

        with _records_notices(), _fault_lines(args.verbose):
            code: int = serve_forever(
                host=args.host,
                port=args.port,
                public_address=args.public_address,
                tls=args.tls,
                cert=args.cert,
                key=args.key,
                plan_path=args.plan,
                max_records=args.max_records,
            )
        return code
    return 2  # pragma: no cover - argparse rejects unknown commands


@contextlib.contextmanager
def _fault_lines(verbose: bool) -> Iterator[None]:
    """With ``verbose``, show each injected fault on stdout while serving: the DEBUG line the
    fault run logs (rule, kind, unit, method, redacted path, time since the plan started).
    What a client wrote (a message's ``type``, a path) is escaped where it does not print:
    the fault run writes such a field as its ``repr``, and the line is written through
    :class:`_PrintableFormatter` besides."""
    if not verbose:
        yield
        return
    with _shown("le_transport.chaos.faults", sys.stdout, "fault: %(message)s", logging.DEBUG):
        yield


@contextlib.contextmanager
def _records_notices() -> Iterator[None]:
    """While serving, show on stderr the INFO line a bounded record logs (once) when it starts
    dropping its oldest entries: it names the record and its bound only, never a request."""
    if _configured(logging.getLogger("le_transport.records")):
        yield  # logging is configured already: it decides
        return
    with _shown(
        "le_transport.records", sys.stderr, "le-transport simulate: %(message)s", logging.INFO
    ):
        yield


def _configured(logger: logging.Logger) -> bool:
    """Whether a record of ``logger`` reaches a handler the application set: ``hasHandlers``,
    not counting a :class:`logging.NullHandler` (le_transport's own, on its top logger)."""
    current: logging.Logger | None = logger
    while current is not None:
        if any(not isinstance(h, logging.NullHandler) for h in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


class _PrintableFormatter(logging.Formatter):
    """Writes each line with every character that does not print (a control character, an
    escape sequence's ESC, a line break inside a record) escaped as ``repr`` escapes it: a
    terminal shows what a client sent, and a client cannot write to the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if text.isprintable():
            return text
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _OutputHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that stops writing, quietly, once its output cannot be written: its
    reader went away (``le-transport simulate -v | head -1``) or the disk is full. Each line
    after that was a "--- Logging error ---" traceback on stderr, one per injected fault, for
    as long as the simulator served; it goes on serving, as it does without ``-v``."""

    gone = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.gone:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, BrokenPipeError) or (
            isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS
        ):
            self.gone = True
            if self.stream is sys.stdout:
                _drop_stdout()  # what is buffered must not fail again at exit
            return
        super().handleError(record)


@contextlib.contextmanager
def _shown(name: str, stream: TextIO, fmt: str, level: int) -> Iterator[None]:
    """While the block runs, write logger ``name``'s records from ``level`` up to ``stream``
    (the logger lowered to ``level`` if it was higher; each line escaped where it does not
    print, :class:`_PrintableFormatter`), then put it back as it was."""
    logger = logging.getLogger(name)
    handler = _OutputHandler(stream)
    handler.setFormatter(_PrintableFormatter(fmt))
    handler.setLevel(level)
    before = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
