"""Delivering events: `--on-event` commands and the `--events-log` file (SPEC §15).

A command gets one event: its JSON on stdin, its type in `OAUTH_USAGE_EVENT`, its sentence in
`OAUTH_USAGE_EVENT_MESSAGE`. It runs without a shell, in its own process group, with this
process's environment minus the variables that can hold a secret of ours, and with a deadline;
its output goes to our stderr (cron mails it, the journal keeps it). A command that fails, hangs
or does not exist is a warning: it never changes the run's exit status, and the next event's
command runs anyway. Commands run one after another, in event order, so that a hook need not be
safe to run twice at once (a mail, a line appended to a file); the price is that a hung hook
delays the events after it by the deadline each.

At most MAX_HOOK_EVENTS events of one run reach the commands (each command runs once for each):
a proxy, or a file, can make a run produce thousands of events, and thousands of mails or
pushes (or of 30-second waits for a hung hook) help nobody. The rest still go to the events log
and to the library's callbacks, and one warning says how many the commands did not get.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import stat
import subprocess
from datetime import datetime
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence

from . import files
from .config import ENV_PREFIX
from .events import Event, EventLedger
from .models import AccountUsage, Skipped
from .text import printable

if TYPE_CHECKING:
    from .report import Report

logger = logging.getLogger(__name__)

EVENT_ENV = "OAUTH_USAGE_EVENT"
MESSAGE_ENV = "OAUTH_USAGE_EVENT_MESSAGE"
DEADLINE = 30.0
#: After the deadline: SIGTERM to the command's process group, then SIGKILL this much later.
KILL_GRACE = 2.0
#: Variables never passed to a command: ours (CPA management key, endpoints) and CLIProxyAPI's
#: management key.
SECRET_PREFIXES = (ENV_PREFIX,)
SECRET_NAMES = frozenset({"MANAGEMENT_PASSWORD"})
#: At most this many events of one run are handed to the --on-event commands.
MAX_HOOK_EVENTS = 50


def split_command(text: str) -> List[str]:
    """Given an `--on-event` value, return its argv, split like a shell would (quotes honoured,
    no expansion). Raise ValueError if it is empty or its quotes do not close."""
    argv = shlex.split(text)
    if not argv:
        raise ValueError("empty command")
    return argv


def event_line(event: Event) -> bytes:
    """Return the event as one line of JSON (ASCII: any consumer can read it)."""
    return (json.dumps(event.to_json(), ensure_ascii=True, sort_keys=True) + "\n").encode("ascii")


def command_environment(event: Event, environ: Mapping[str, str]) -> Dict[str, str]:
    """Given an event and this process's environment, return the command's environment: the
    same, without any variable that can hold a secret, plus the event's type and sentence."""
    env = {name: value for name, value in environ.items()
           if name not in SECRET_NAMES and not name.startswith(SECRET_PREFIXES)}
    env[EVENT_ENV] = event.type.value
    env[MESSAGE_ENV] = event.message
    return env


def run_command(argv: Sequence[str], event: Event, environ: Optional[Mapping[str, str]] = None,
                deadline: float = DEADLINE) -> Optional[int]:
    """Run one command for one event and wait at most `deadline` seconds; return its exit
    status, or None when it did not run or was killed. Never raises (but lets Ctrl-C and SIGTERM
    through after killing the command): every failure is a warning."""
    name = printable(argv[0])
    try:
        process = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=2, stderr=2, close_fds=True,
            env=command_environment(event, os.environ if environ is None else environ),
            start_new_session=True)  # its own process group: a timeout kills its children too
    except OSError as error:
        logger.warning("Event command %s could not be started (%s); %s not delivered to it",
                       name, error.strerror or type(error).__name__, event.type.value)
        return None
    try:
        process.communicate(event_line(event), timeout=deadline)
    except subprocess.TimeoutExpired:
        logger.warning("Event command %s did not finish within %g s for %s; killed it", name,
                       deadline, event.type.value)
        _kill_group(process)
        return None
    except BaseException:
        _kill_group(process)  # Ctrl-C or SIGTERM while waiting: leave no orphan behind
        raise
    if process.returncode != 0:
        logger.warning("Event command %s %s for %s", name, _status(process.returncode),
                       event.type.value)
    return process.returncode


def _status(code: int) -> str:
    if code < 0:
        try:
            return "was killed by %s" % signal.Signals(-code).name
        except ValueError:
            return "was killed by signal %d" % -code
    return "exited with status %d" % code


def _kill_group(process: "subprocess.Popen[bytes]") -> None:
    """Terminate the command's process group, then kill it if it lingers; reap the command."""
    for number, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, number)
        except OSError:
            pass  # already gone
        try:
            process.wait(wait)
            if number == signal.SIGTERM:
                # The leader is gone; its children may not be.
                os.killpg(process.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue
        except OSError:
            return


def append_to_log(path: str, events: Sequence[Event]) -> None:
    """Append the events as JSON lines to `path`, creating it with mode 0600. The final name is
    never followed as a symlink, and only a regular file with one link is accepted, or, in a
    directory nobody else can write (`files.trusted_directory`), a FIFO or character device,
    written into within `files.WRITE_DEADLINE`: run as root in a directory others can write,
    the log must not become a way to append to another file, to hand the events to a planted
    FIFO's reader, or to hang on one that never drains. Failures are warnings."""
    if not events:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                     | os.O_NONBLOCK | os.O_NOCTTY, 0o600)
    except OSError as error:
        logger.warning("Cannot open the events log %s (%s)", path, error.strerror or error)
        return
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
            raise OSError(0, "it has other hard links; refusing to append")
        if not stat.S_ISREG(info.st_mode):
            if not (stat.S_ISFIFO(info.st_mode) or stat.S_ISCHR(info.st_mode)):
                raise OSError(0, "not a regular file")
            if not files.trusted_directory(os.path.dirname(os.path.abspath(path))):
                raise OSError(0, "not a regular file, in a directory others can write; "
                                 "refusing to write into it")
        # One write per line: O_APPEND keeps lines whole.
        files.write_before_deadline(fd, (event_line(event) for event in events), path)
    except OSError as error:
        logger.warning("Cannot append to the events log %s (%s)", path, error.strerror or error)
    finally:
        os.close(fd)


class Notifier:
    """The script's event delivery: decide a finished run's events with the ledger, append
    them to the log, run the commands."""

    def __init__(self, ledger: EventLedger, commands: Sequence[Sequence[str]] = (),
                 log_path: Optional[str] = None, deadline: float = DEADLINE):
        self.ledger = ledger
        self.commands = [list(argv) for argv in commands]
        self.log_path = log_path
        self.deadline = deadline

    def deliver(self, events: Sequence[Event]) -> None:
        """Log the events, then run every command for each of the first MAX_HOOK_EVENTS of
        them in turn (one warning names how many more the commands did not get)."""
        if self.log_path:
            append_to_log(self.log_path, events)
        for number, event in enumerate(events):
            logger.info("Event %s for %s", event.type.value, printable(event.account_id))
            if number < MAX_HOOK_EVENTS:
                for argv in self.commands:
                    run_command(argv, event, deadline=self.deadline)
        left = len(events) - MAX_HOOK_EVENTS
        if self.commands and left > 0:
            logger.warning("%d events in this run: the --on-event commands got the first %d; "
                           "the other %d were not passed to them (%s)", len(events),
                           MAX_HOOK_EVENTS, left, "they are in the events log %s"
                           % self.log_path if self.log_path else "see the log above, or use "
                           "--events-log")

    def handle(self, accounts: Sequence[AccountUsage], skipped: Sequence[Skipped],
               now: datetime) -> List[Event]:
        """Decide and deliver the events of one finished run; return them."""
        events = self.ledger.record(accounts, skipped, now)
        self.deliver(events)
        return events

    def handle_report(self, report: "Report") -> List[Event]:
        """Decide and deliver the events of a finished run's report; return them."""
        return self.handle(report.accounts, report.skipped, report.generated_at)
