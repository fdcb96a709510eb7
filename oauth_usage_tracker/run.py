"""One configured invocation of the script: discover the accounts, refresh them once or on an
interval, render and write the report, deliver the events; and on the way out, let running
token writes finish."""
from __future__ import annotations

import logging
import os
import sys
import time
from datetime import datetime, timezone
from typing import (
    TYPE_CHECKING,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from . import files
from .accounts import discover_accounts, resolve_auth_dir, select_accounts
from .config import Settings
from .errors import USAGE_ERROR, ConfigurationError
from .models import AuthAccount, Discovery, Provider
from .options import Options

if TYPE_CHECKING:  # the tracker pulls in requests: imported when a run needs it
    from .cli import Shutdown
    from .management import Proxy
    from .notify import Notifier
    from .report import Report  # imported while the fetches are in flight, with the renderers
    from .tracker import OAuthUsageTracker, RefreshHandle

logger = logging.getLogger("oauth_usage_tracker")

#: Seconds the workers have the interpreter to themselves to send their first requests before
#: the main thread imports the renderers (_import_the_rest); no wait once the refresh is done.
SEND_HEAD_START = 0.005


class Run:
    """One configured invocation: which accounts, which settings, where the report goes."""

    def __init__(self, options: Options, settings: Settings, auth_dir: Optional[str],
                 state_dir: Union[str, bool, None] = None,
                 make_proxies: Optional[Callable[[], List["Proxy"]]] = None,
                 read_local: bool = True):
        self.options = options
        self.state_dir = (state_dir or options.state_dir or True) if options.keep_state \
            else False
        self.settings = settings
        self.auth_dir = auth_dir
        #: Builds this run's proxies (the key file read again): once, or once per --watch cycle.
        self.make_proxies = make_proxies
        self.proxies: Tuple["Proxy", ...] = tuple(make_proxies()) if make_proxies else ()
        #: False when only remote proxies are read (--cpa-url without an explicit auth dir).
        self.read_local = read_local
        # --watch: the combined discovery behind each running refresh, for its report.
        self._watched: Dict[int, Discovery] = {}
        self.last_report: Optional["Report"] = None
        self.notifier: Optional["Notifier"] = None

    def selected(self, discovery: Discovery
                 ) -> Tuple[Tuple[AuthAccount, ...], Tuple[AuthAccount, ...]]:
        """The discovered accounts of the chosen providers: (codex, claude)."""
        providers = self.options.providers
        return (discovery.codex if Provider.CODEX in providers else (),
                discovery.claude if Provider.CLAUDE in providers else ())

    def enabled_ids(self, discovery: Discovery) -> FrozenSet[str]:
        """The ids of the discovered accounts a refresh would query (chosen providers, enabled,
        not expired unless asked): --watch refreshes at once when this set changes."""
        codex, claude = self.selected(discovery)
        kept, _ = select_accounts(codex + claude, self.settings.include_expired)
        return frozenset(account.id for account in kept)

    def report(self, discovery: Discovery, handle: "RefreshHandle", started: float) -> "Report":
        """The report of a finished refresh: its results, what discovery skipped and what the
        refresh left out."""
        from .report import Report
        return Report(accounts=tuple(handle.result()), skipped=discovery.skipped + handle.skipped,
                      generated_at=datetime.now(timezone.utc),
                      duration_seconds=time.monotonic() - started,
                      max_stale_seconds=self.options.max_stale,
                      usable_above=self.options.usable_above)

    def emit(self, report: "Report") -> int:
        """Print or write the report (and metrics); return the exit status."""
        from .render import iter_json, render_prometheus, render_table
        from .render.prometheus import metrics_name
        from .report import exit_status
        if self.options.json:
            pieces: Iterable[str] = iter_json(report)  # account by account: never held whole
        else:
            colour = (self.options.output is None and sys.stdout.isatty()
                      and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb")
            text = render_table(report, colour=colour, layout=self.options.layout,
                                sort=self.options.sort)
            pieces = [text]
        try:
            if self.options.output:
                files.write_output(self.options.output,
                                   (piece.encode("utf-8", "backslashreplace") for piece in pieces),
                                   files.REPORT_MODE)
            else:
                # Total over text whatever the locale: what stdout's encoding cannot carry
                # (CJK in an e-mail under a Latin-1 locale) is written as a backslash escape.
                encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
                for piece in pieces:
                    sys.stdout.write(piece.encode(encoding, "backslashreplace").decode(encoding))
                sys.stdout.flush()
            if self.options.prometheus:
                name = self.options.metrics_name or metrics_name(self.options.prometheus)
                files.write_output(self.options.prometheus,
                                   render_prometheus(report, name).encode("utf-8",
                                                                          "backslashreplace"),
                                   files.METRICS_MODE)
        except OSError as error:
            logger.error("Cannot write the report: %s (%s)", error.strerror or error,
                         getattr(error, "filename", None) or "")
            return USAGE_ERROR
        for account in report.failed:
            logger.debug("%s failed: %s", account.id, account.error)
        return exit_status(report, self.options.fail_below)

    def finish(self, report: "Report") -> int:
        """Emit a finished run's report, then its events (which never change the status)."""
        status = self.emit(report)
        if self.notifier is not None:
            self.notifier.handle_report(report)
        return status

    def discover_local(self) -> Discovery:
        """The auth directory's accounts, unless only proxies are read."""
        return discover_accounts(self.auth_dir) if self.read_local else Discovery()

    def discover_remote(self, proxies: Sequence["Proxy"]) -> Discovery:
        """The proxies' accounts, listed at once (and those earlier runs read at a proxy that
        cannot be listed now)."""
        if not proxies:
            return Discovery()
        from .remote import list_proxies
        from .state import StateStore
        remembered = StateStore(self.state_dir).load() if isinstance(self.state_dir, str) else {}
        return list_proxies(proxies, self.settings, remembered)

    def discover(self) -> Discovery:
        """The accounts of this run: the auth directory's, then each proxy's."""
        return self.discover_local() + self.discover_remote(self.proxies)

    def start_watched(self, tracker: "OAuthUsageTracker", local: Discovery) -> "RefreshHandle":
        """--watch: start one refresh of the local accounts and, listed again now with fresh
        proxies (the key file read again; a rejected key stays remembered), the remote ones."""
        discovery = local
        if self.make_proxies is not None:
            try:
                discovery = discovery + self.discover_remote(self.make_proxies())
            except ConfigurationError as error:
                logger.error("%s", error)
        handle = tracker.refresh(*self.selected(discovery))
        self._watched[handle.generation] = discovery
        return handle

    def report_watched(self, handle: "RefreshHandle", started: float) -> None:
        """--watch: emit the report of a finished refresh."""
        discovery = self._watched.pop(handle.generation, Discovery())
        for generation in [g for g in self._watched if g < handle.generation]:
            del self._watched[generation]  # superseded: never reported
        self.finish(self.report(discovery, handle, started))

    def once(self, tracker: "OAuthUsageTracker") -> int:
        """Discover, refresh once, emit the report; return the exit status."""
        started = time.monotonic()
        discovery = self.discover()
        handle = tracker.refresh(*self.selected(discovery))
        # From here on only the skipped files are needed: each account is let go once fetched.
        discovery = Discovery(skipped=discovery.skipped, auth_dir=discovery.auth_dir)
        _import_the_rest(handle)
        self.last_report = self.report(discovery, handle, started)
        return self.finish(self.last_report)

    def watch(self, tracker: "OAuthUsageTracker", shutdown: "Shutdown", interval: float) -> int:
        """Refresh every `interval` seconds and when the accounts change, emitting each report,
        until a signal asks to stop; return 0. Raise ConfigurationError for a missing auth
        directory."""
        from .watch import Watcher
        directory: Optional[str] = None
        if self.read_local:
            directory = resolve_auth_dir(self.auth_dir)
            if not os.path.isdir(directory):
                discover_accounts(directory)  # raises ConfigurationError with the sentence

        watcher = Watcher(directory, interval, self.enabled_ids,
                          lambda discovery: self.start_watched(tracker, discovery),
                          lambda _, handle, started: self.report_watched(handle, started),
                          discover=self.discover_local)
        watcher.run(lambda: shutdown.requested)
        return 0

    def execute(self, shutdown: "Shutdown") -> int:
        """Run once or watch; on the way out, whatever happened, running fetches finish (and
        with them any token write) before this returns."""
        from .tracker import OAuthUsageTracker
        tracker = OAuthUsageTracker(settings=self.settings, state_dir=self.state_dir,
                                    max_age=self.options.max_age)
        if self.options.wants_events:
            self.notifier = _notifier(self.options, tracker)
        try:
            if self.options.watch:
                return self.watch(tracker, shutdown, self.options.watch)
            return self.once(tracker)
        finally:
            shutdown.raise_first = False  # from here on a signal must not cut the wait short
            if shutdown.requested:
                logger.info("Stopping: waiting for running requests and token writes")
                # Imported by the first token refresh; when none ran, nothing is to refuse, but the
                # guard still refuses any that would start from here on.
                from . import refresh
                refresh.GUARD.refuse_new()
                tracker.stop_reads()  # usage reads end now; token writes never do
            tracker.close()


def _import_the_rest(handle: "RefreshHandle") -> None:
    """Import what the end of a run needs (the renderers, the class of the HTTP answer each
    request comes back as, and the classes an answer is read into: usage.py, result.py) while
    the fetches are in flight: workers waiting on their sockets
    leave the interpreter free, so the time these imports take is spent during the network's
    latency, not after the answers. First the workers get the interpreter to themselves for a
    moment (SEND_HEAD_START, or until the refresh is done): each needs it for a millisecond or
    two to prepare and send its request, and an import in this thread holding it meanwhile held
    the first request back by about the imports' own duration (measured: the request left about
    3 ms later)."""
    handle.wait(SEND_HEAD_START)
    from . import render, response, result, usage  # noqa: F401


def _notifier(options: Options, tracker: "OAuthUsageTracker") -> "Notifier":
    """The event delivery of a run: memory in the tracker's state store, when it has one."""
    from .events import EventLedger, Thresholds
    from .notify import Notifier
    if tracker.state is None and not options.watch:
        logger.warning("--no-state: events are decided without memory of earlier runs, so "
                       "each run announces what it finds as new")
    ledger = EventLedger(tracker.state, Thresholds(options.event_below, options.failing_after))
    return Notifier(ledger, options.on_event, options.events_log)
