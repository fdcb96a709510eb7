"""The `oauth-usage-tracker` script: parse flags, configure logging, handle signals, build the
run the flags describe (run.py), exit with its status."""
from __future__ import annotations

import argparse
import atexit
import gc
import logging
import os
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager
from types import FrameType
from typing import (
    TYPE_CHECKING,
    Any,
    Iterator,
    List,
    Mapping,
    Optional,
)

from . import __version__
from .accounts import AUTH_DIR_ENV
from .config import (
    CPA_KEY_ENV,
    CPA_URL_ENV,
    DEFAULT_CPA_WORKERS,
    DEFAULT_TIMEOUT,
    DEFAULT_WORKERS,
    ENV_PREFIX,
    URL_ENV,
    Settings,
)
from .errors import USAGE_ERROR, ConfigurationError
from .models import Provider
from .options import (
    DEFAULT_BELOW,
    DEFAULT_FAILING_AFTER,
    DEFAULT_MAX_STALE,
    DEFAULT_USABLE_ABOVE,
    SORTS,
    Options,
)
from .run import Run
from .state import default_state_dir
from .text import printable

if TYPE_CHECKING:  # the tracker pulls in requests: imported when a run needs it, so that
    from .management import Proxy  # --version and --help start fast

logger = logging.getLogger("oauth_usage_tracker")

EPILOG = """\
exit status: 0 every queried account returned windows; 1 an account failed, or a credential file
is unreadable or expired (it needs a human); 2 usage or configuration error; 3 --fail-below
crossed (wins over 1).
endpoint overrides: %s
(https://, or http:// to a loopback address).""" % ", ".join(
    [URL_ENV["codex_usage_url"]] + [URL_ENV[name][len(ENV_PREFIX) - 1:]
                                    for name in ("claude_usage_url", "claude_token_url")])


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C."""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser."""
    parser = argparse.ArgumentParser(
        prog="oauth-usage-tracker", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show how much Claude and Codex subscription quota is left for every\n"
                    "account CLIProxyAPI keeps, refreshing expired Claude tokens safely.")
    parser.add_argument("--auth-dir", metavar="DIR",
                        help="credential directory (default $%s, else ~/.cli-proxy-api)"
                        % AUTH_DIR_ENV)
    parser.add_argument("--cpa-url", action="append", metavar="URL",
                        help="a remote CLIProxyAPI to read through its management API "
                             "(repeatable; env $%s, space-separated); the auth directory is "
                             "then read only when --auth-dir or $%s names it"
                             % (CPA_URL_ENV, AUTH_DIR_ENV))
    parser.add_argument("--cpa-key-file", metavar="FILE",
                        help="file holding the proxies' management key (else env $%s)"
                             % CPA_KEY_ENV)
    parser.add_argument("--cpa-workers", type=_positive_int, default=DEFAULT_CPA_WORKERS,
                        metavar="N", help="calls in flight per proxy (default %d)"
                                          % DEFAULT_CPA_WORKERS)
    parser.add_argument("--cpa-allow-http", action="store_true",
                        help="allow plain http:// to a proxy that is not on this host (the key "
                             "then crosses the network in clear text)")
    parser.add_argument("--provider", action="append", choices=[p.value for p in Provider],
                        help="only this provider (repeatable; default both)")
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    parser.add_argument("--output", metavar="FILE",
                        help="write the report to FILE atomically instead of stdout")
    parser.add_argument("--prometheus", metavar="FILE",
                        help="also write node_exporter textfile metrics to FILE atomically")
    parser.add_argument("--metrics-name", metavar="NAME",
                        help="the `name` label of the per-run metrics (default: the metrics "
                             "file's name without .prom)")
    parser.add_argument("--workers", type=_positive_int, metavar="N",
                        help="parallel fetches (default min(%d, accounts))" % DEFAULT_WORKERS)
    parser.add_argument("--timeout", type=_positive_float, default=DEFAULT_TIMEOUT, metavar="S",
                        help="seconds per request (default %g)" % DEFAULT_TIMEOUT)
    parser.add_argument("--no-token-refresh", action="store_true",
                        help="read only: never refresh a token, never write a credential file")
    parser.add_argument("--refresh-expired", action="store_true",
                        help="query expired accounts too (Claude ones are refreshed first)")
    parser.add_argument("--fail-below", type=float, metavar="PCT",
                        help="exit 3 when an account's effective remaining (the least of its "
                             "account-wide windows) is below PCT %%")
    parser.add_argument("--layout", choices=("blocks", "lines", "auto"), default="auto",
                        help="table layout: a block per account, one line per account, or "
                             "auto (blocks up to 10 accounts; default)")
    parser.add_argument("--sort", choices=SORTS, default="name",
                        help="table order: provider and e-mail (default), most headroom "
                             "first, or soonest reset of the limiting window first")
    parser.add_argument("--usable-above", type=_percent, default=DEFAULT_USABLE_ABOVE,
                        metavar="PCT",
                        help="an account with at least PCT %%%% effective remaining counts as "
                             "usable in the summary (default %g)" % DEFAULT_USABLE_ABOVE)
    parser.add_argument("--state-dir", metavar="DIR",
                        help="where cooldowns and last good values are kept (default "
                             "$XDG_STATE_HOME/oauth-usage-tracker, else "
                             "~/.local/state/oauth-usage-tracker)")
    parser.add_argument("--no-state", action="store_true",
                        help="keep no state: no cooldowns, no last good values")
    parser.add_argument("--max-stale", type=_non_negative_float, default=DEFAULT_MAX_STALE,
                        metavar="SECONDS", help="stale values younger than this still count "
                                                "as success for the exit status (default %g)"
                                                % DEFAULT_MAX_STALE)
    parser.add_argument("--max-age", type=_non_negative_float, default=0.0, metavar="SECONDS",
                        help="reuse a stored result younger than this instead of asking again "
                             "(default 0: always ask)")
    parser.add_argument("--watch", type=_positive_float, metavar="SECONDS",
                        help="keep running: refresh every SECONDS and when accounts change")
    parser.add_argument("--on-event", action="append", type=_command, metavar="CMD",
                        help="run CMD (split like a shell would, run without one) for each event, "
                             "the event's JSON on stdin, its type in $OAUTH_USAGE_EVENT "
                             "(repeatable)")
    parser.add_argument("--events-log", metavar="FILE", help="append each event to FILE as a "
                                                             "JSON line")
    parser.add_argument("--event-below", type=_percent, default=DEFAULT_BELOW, metavar="PCT",
                        help="quota_low when a window has less than PCT %%%% left (default %g)"
                             % DEFAULT_BELOW)
    parser.add_argument("--failing-after", type=_non_negative_float,
                        default=DEFAULT_FAILING_AFTER, metavar="SECONDS",
                        help="account_failing once a failure has lasted this long (default %g)"
                             % DEFAULT_FAILING_AFTER)
    parser.add_argument("--demo", action="store_true",
                        help="run against a built-in fake of both providers (no network)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging on stderr (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be zero or a positive number")
    return value


def _percent(text: str) -> float:
    value = float(text)
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError("must be a percentage above 0, at most 100")
    return value


def _command(text: str) -> List[str]:
    from .notify import split_command
    try:
        return split_command(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError("not a command: %s" % error) from None


class _PrintableFormatter(logging.Formatter):
    """Log arguments (file names, e-mails, server text) are made printable (text.printable): no
    escape sequence reaches the terminal, no newline forges a log line, no lone surrogate fails
    to encode. The package's own format strings are trusted as they are."""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)  # other handlers keep the original
        if isinstance(record.args, Mapping):
            record.args = {key: _printable_arg(value) for key, value in record.args.items()}
        elif record.args:
            record.args = tuple(_printable_arg(value) for value in record.args)
        else:
            record.msg = printable(str(record.msg))
        return super().format(record)

    def formatException(self, ei: Any) -> str:
        return "\n".join(printable(line) for line in super().formatException(ei).split("\n"))


def _printable_arg(value: object) -> object:
    return value if isinstance(value, (int, float)) else printable(str(value))


def configure_logging(verbose: int, quiet: bool) -> None:
    """Log to stderr: warnings by default, info with -v, debug with -vv, errors only with -q."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO)[min(verbose, 1)]
    if verbose >= 2:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter("oauth-usage-tracker: %(levelname)s: %(message)s"))
    root = logging.getLogger("oauth_usage_tracker")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class Shutdown:
    """SIGTERM and SIGINT, acted on once. The first one stops the run: a one-shot run unwinds
    like Ctrl-C (pending fetches are cancelled, running reads are cut, token exchanges finish),
    --watch ends its loop. Later ones are only noted (once): exiting then could cut off a token
    write, after which the spent refresh token's successor would be lost.

    In a process about to exit (`then_ignore`), both signals are ignored once the run is over:
    restoring the default handlers on the way out (as the interpreter itself does when it
    finalises, for every signal with a Python handler) would let the next signal of a storm kill
    the process by its default action (status -15 or -2) instead of the documented 143, 130
    or 0. Ignored signals are left alone by the interpreter."""

    def __init__(self, raise_first: bool):
        self.raise_first = raise_first
        self.signal: Optional[int] = None
        self._noted = False
        #: The first signal whose exception waits until the main thread has left the import
        #: machinery and logging (see handle), retried by a SIGALRM every RETRY seconds.
        self._deferred: Optional[int] = None

    @property
    def requested(self) -> bool:
        """True once a signal asked the run to stop."""
        return self.signal is not None

    def handle(self, number: int, frame: Optional[FrameType]) -> None:
        """The signal handler: the first signal stops the run, later ones are only noted.

        The exception that stops a one-shot run is never raised inside the import machinery or
        logging (`frame`, the interrupted code, or one of its callers, is theirs): both take a
        lock and release it in a `finally` they enter one step later, and an exception raised
        between the two leaves the lock held for good. The main thread does not notice (those
        locks are re-entrant), but a worker that then imports a module or logs a line waits
        forever, and so does the run's end, which waits for its workers. There, the exception
        is deferred: a SIGALRM every RETRY seconds tries again, and any later signal does too."""
        # Only plain assignments here: a handler that takes a lock the interrupted code holds
        # would deadlock.
        if self.signal is not None:
            if not self._noted:  # once: a storm must not flood the log
                self._noted = True
                os.write(2, b"oauth-usage-tracker: still finishing token writes; "
                            b"not exiting yet\n")
            return
        if self.raise_first and _holds_library_locks(frame):
            if self._deferred is None:
                self._deferred = number
            signal.setitimer(signal.ITIMER_REAL, RETRY)
            return
        self.signal = number
        self._deferred = None
        if self.raise_first:
            raise _Terminated() if number == signal.SIGTERM else KeyboardInterrupt()

    def _retry(self, _number: int, frame: Optional[FrameType]) -> None:
        """The SIGALRM handler: handle the deferred signal now (or defer it again)."""
        if self._deferred is not None and self.signal is None:
            self.handle(self._deferred, frame)

    @contextmanager
    def installed(self, then_ignore: bool = False) -> Iterator[None]:
        """Handle both signals for the duration (main thread only; elsewhere, do nothing); then
        restore the previous handlers or, with `then_ignore`, ignore both signals."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            if self.raise_first:  # only a run that raises ever defers (handle)
                previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._retry)
            for number in (signal.SIGTERM, signal.SIGINT):
                previous[number] = signal.signal(number, self.handle)
        try:
            yield
        finally:
            self.raise_first = False
            if signal.SIGALRM in previous:
                signal.setitimer(signal.ITIMER_REAL, 0)
            if self.signal is None and self._deferred is not None:
                self.signal = self._deferred  # received, never raised: the run still says so
            for number, handler in previous.items():
                if handler is None:  # installed outside Python: nothing to put back
                    continue
                if number == signal.SIGALRM:
                    signal.signal(number, handler)
                else:
                    signal.signal(number, signal.SIG_IGN if then_ignore else handler)


#: Seconds between retries of a signal whose exception was deferred (Shutdown.handle).
RETRY = 0.005

# The code an exception must not be raised into (Shutdown.handle): the import machinery and the
# logging module, each of which holds a process-wide lock across steps that a signal can fall
# between.
_LOGGING_FILE = logging.__file__


def _holds_library_locks(frame: Optional[FrameType]) -> bool:
    """Given the frame a signal interrupted, return True when it or one of its callers is the
    import machinery's or the logging module's."""
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith("<frozen importlib") or name == _LOGGING_FILE:
            return True
        frame = frame.f_back
    return False


def _settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    return Settings.from_environ(environ, timeout=args.timeout, workers=args.workers,
                                 allow_token_refresh=not args.no_token_refresh,
                                 include_expired=args.refresh_expired)


def cpa_urls(args: argparse.Namespace, environ: Mapping[str, str]) -> List[str]:
    """The proxy URLs: --cpa-url, else $OAUTH_USAGE_TRACKER_CPA_URL (space or comma separated)."""
    return list(args.cpa_url or environ.get(CPA_URL_ENV, "").replace(",", " ").split())


def remote_proxies(args: argparse.Namespace, environ: Mapping[str, str],
                   state_dir: Optional[str]) -> List["Proxy"]:
    """The proxies named by --cpa-url (else $OAUTH_USAGE_TRACKER_CPA_URL), each with the key
    from --cpa-key-file (else $OAUTH_USAGE_TRACKER_CPA_KEY). Raise ConfigurationError for a
    refused URL or a missing or unusable key (never quoted)."""
    urls = cpa_urls(args, environ)
    if not urls:
        return []
    from .lockout import RejectedKeys
    from .management import Proxy, check_key, read_key_file
    if args.cpa_key_file:
        key, version = read_key_file(args.cpa_key_file)
    elif environ.get(CPA_KEY_ENV):
        key, version = check_key(environ[CPA_KEY_ENV]), None
    else:
        raise ConfigurationError("--cpa-url needs the management key: --cpa-key-file FILE or %s"
                                 % CPA_KEY_ENV)
    rejected = RejectedKeys(state_dir)
    proxies: dict = {}
    for url in urls:
        proxy = Proxy(url, key, workers=args.cpa_workers, allow_http=args.cpa_allow_http,
                      key_version=version, rejected=rejected)
        proxies.setdefault(proxy.url, proxy)
    return list(proxies.values())


def _run(args: argparse.Namespace, environ: Mapping[str, str]) -> Run:
    """The run the flags describe: local files, remote proxies, or both."""
    settings = _settings(args, environ)
    state_dir = None if args.no_state else (args.state_dir or default_state_dir(environ))
    remote = bool(cpa_urls(args, environ))
    if remote:
        from .lockout import warn_if_unremembered
        warn_if_unremembered(state_dir)
    read_local = not remote or bool(args.auth_dir or environ.get(AUTH_DIR_ENV))
    return Run(Options.from_args(args), settings, args.auth_dir, state_dir=state_dir,
               read_local=read_local,
               make_proxies=(lambda: remote_proxies(args, environ, state_dir)) if remote else None)


def run_demo(args: argparse.Namespace, shutdown: Shutdown) -> int:
    """Run the whole pipeline against the built-in fake on sample accounts in a temporary
    directory. Return 0 when the demo behaved as designed (its planted failure included)."""
    from .demo import STORY, FakeProviders, behaved_as_designed, create_demo_accounts
    with FakeProviders() as fake, tempfile.TemporaryDirectory(prefix="oauth-usage-demo-") as tmp:
        auth_dir = os.path.join(tmp, "auth")
        os.mkdir(auth_dir, 0o700)
        failing = create_demo_accounts(fake, auth_dir)
        settings = Settings.from_environ(fake.environ(), timeout=min(args.timeout, 5.0),
                                         workers=args.workers, include_expired=True,
                                         allow_token_refresh=not args.no_token_refresh)
        run = Run(Options.from_args(args), settings, auth_dir,
                  state_dir=os.path.join(tmp, "state"))
        status = run.execute(shutdown)
    if not args.json and not args.quiet:
        sys.stderr.write("demo: %s\n" % STORY)
    as_designed = run.last_report is not None and behaved_as_designed(run.last_report, failing)
    return 0 if as_designed and status in (0, 1) else (status or 1)


def run(end_at_once: bool = False) -> None:
    """The console script: run main() and exit with its status; once the run is over, SIGTERM
    and SIGINT are ignored until the process is gone, and the interpreter's last garbage
    collection is skipped: the system takes the memory back, while that collection would walk
    every object of every module imported, about 15 ms with requests, more than a one-account
    run's own work (objects not in cycles are still freed, atexit handlers still run). The
    collector is also off during start-up (see _started).

    With `end_at_once` (the script's own entry point, __main__.main), a run that returned ends
    the process without the interpreter's finalisation (end_process)."""
    gc.disable()
    status = main(process_exit=True)
    gc.freeze()
    if end_at_once:
        end_process(status)  # returns only when the interpreter must end the process itself
    sys.exit(status)


def end_process(status: int) -> None:
    """End the process now with `status`, skipping the interpreter's finalisation, once all it
    would still do that anyone can see is done: the atexit handlers run (logging.shutdown()
    flushes and closes the log handlers), stdout and stderr are flushed. What is skipped is the
    teardown of every module and object, which the system does faster by taking the memory back:
    about 10 M instructions, 4 ms, after a one-account run's state is saved.

    Return without ending it (the caller then exits as usual, and the interpreter does what it
    always did) when that teardown may still matter: a thread the interpreter would wait for is
    still running, a tracer or profiler is attached (a debugger, coverage or cProfile reports
    from the normal exit), or flushing stdout or stderr fails (a closed pipe, a full disk: the
    interpreter's own exit reports it, with the status it gives it, as before)."""
    main_thread = threading.main_thread()
    if any(thread is not main_thread and not thread.daemon and thread.is_alive()
           for thread in threading.enumerate()):
        return
    if _observed():
        return
    atexit._run_exitfuncs()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None and not stream.closed:
                stream.flush()
    except Exception:  # whatever it is, the interpreter's exit meets it again and reports it
        return
    os._exit(status)


def _observed() -> bool:
    """True when a tracer or profiler watches this interpreter (sys.settrace, sys.setprofile,
    or a sys.monitoring tool on Python 3.12 and later)."""
    if sys.gettrace() is not None or sys.getprofile() is not None:
        return True
    monitoring = getattr(sys, "monitoring", None)
    return monitoring is not None and any(monitoring.get_tool(tool) is not None
                                          for tool in range(6))


def _started() -> None:
    """The end of the script's start-up: import what every run needs (the tracker, and with it
    requests), then put every object alive now out of the cyclic collector's sight
    (`gc.freeze()`) and turn the collector back on (run() turned it off). Start-up allocates
    the modules' classes, functions and tables, all kept until the process exits: the
    collections their allocation would trigger (about thirty while importing requests) find no
    garbage, yet walk them, and every later full collection would walk them again."""
    from . import tracker  # noqa: F401
    gc.freeze()
    gc.enable()


def main(argv: Optional[List[str]] = None, process_exit: bool = False) -> int:
    """Run the script with `argv` (default sys.argv[1:]); return the exit status. The SIGTERM and
    SIGINT handlers are restored on return; with `process_exit` (the process exits right after:
    run()) both signals are ignored instead, and the collector run() turned off is turned back
    on once the run's modules are imported (_started)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else USAGE_ERROR
    configure_logging(args.verbose, args.quiet)
    shutdown = Shutdown(raise_first=not args.watch)
    try:
        with shutdown.installed(then_ignore=process_exit):
            if process_exit:
                _started()
            if args.demo:
                status = run_demo(args, shutdown)
            else:
                status = _run(args, os.environ).execute(shutdown)
    except ConfigurationError as error:
        logger.error("%s", error)
        return USAGE_ERROR
    except _Terminated:
        return _stopped(signal.SIGTERM)
    except KeyboardInterrupt:
        return _stopped(signal.SIGINT)
    if shutdown.signal is not None and not args.watch:
        # The handler's exception can be lost: one raised inside a callback the interpreter
        # runs for itself (an import lock's, a weakref's) is printed as "ignored" and the run
        # goes on. The signal was still received, and a one-shot run stopped by it says so.
        return _stopped(shutdown.signal)
    return status


def _stopped(number: int) -> int:
    """Log how a one-shot run stopped on signal `number`; return its exit status (130, 143)."""
    if number == signal.SIGTERM:
        logger.warning("Terminated; in-flight token writes were finished first")
    else:
        logger.warning("Interrupted; in-flight token writes were finished first")
    return 128 + number

