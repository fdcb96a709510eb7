"""The table for people: one block per account, readable in a terminal and in a mail from cron.

Every string that came from a file or a server (e-mails, file names, plans, titles, reasons,
currencies, error sentences quoting them) goes through `text.printable` here, in colour and plain
modes alike: the only control characters in the table are its own newlines and colour codes."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import List, Optional

from .. import pool
from ..models import LOCAL_SOURCE, AccountState, AccountUsage, Credits, UsageWindow
from ..parsing import reset_text
from ..report import Report
from ..text import printable
from . import lines as lines_layout

BAR_WIDTH = 20
LAYOUTS = ("auto", "blocks", "lines")
#: `auto` shows blocks up to this many accounts, one line per account above.
AUTO_BLOCKS = 10
_RESET = "\033[0m"
_COLOURS = {"red": "\033[31m", "yellow": "\033[33m", "green": "\033[32m", "bold": "\033[1m",
            "dim": "\033[2m"}


class _Painter:
    def __init__(self, colour: bool):
        self.colour = colour

    def __call__(self, text: str, style: Optional[str]) -> str:
        if not self.colour or style is None:
            return text
        return _COLOURS[style] + text + _RESET


def _level(remaining: Optional[float]) -> Optional[str]:
    if remaining is None:
        return None
    if remaining < 10:
        return "red"
    if remaining < 30:
        return "yellow"
    return "green"


def _bar(remaining: Optional[float]) -> str:
    """A bar of what is left, so it reads with the "N% left" beside it."""
    if remaining is None:
        return "[" + " " * BAR_WIDTH + "]"
    filled = int(round(remaining / 100.0 * BAR_WIDTH))
    return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"


def _percent(value: float) -> str:
    return ("%.1f" % value).rstrip("0").rstrip(".")


def _pace_line(window: UsageWindow, title_width: int, paint: _Painter, now: datetime) -> str:
    """The note under a window that runs out before its reset at the current pace."""
    pace = window.pace
    assert pace is not None and pace.projected_exhaustion is not None
    # Stale values keep the pace of their reading, whose projection may lie in the past now.
    verb = "runs out" if pace.projected_exhaustion > now else "ran out"
    return "  %-*s  %s" % (title_width, "", paint("! at this pace, %s %s" % (
        verb, reset_text(pace.projected_exhaustion, now)), "red"))


def _window_line(window: UsageWindow, title_width: int, paint: _Painter) -> str:
    remaining = window.remaining_percent
    left = "%s%% left" % _percent(remaining) if remaining is not None else "usage unknown"
    line = "  %-*s  %s %s" % (title_width, printable(window.title), _bar(remaining),
                              paint("%-10s" % left, _level(remaining)))
    if window.reset_text:
        line += "  " + ("" if window.reset_text.startswith("reset ") else "resets ") \
            + printable(window.reset_text)
    if window.locked_reason:
        line += "  " + paint("locked: " + printable(window.locked_reason), "red")
    return line.rstrip()


def _amount(value: Optional[float]) -> str:
    return "?" if value is None else ("%.2f" % value).rstrip("0").rstrip(".")


def _detail_lines(account: AccountUsage) -> List[str]:
    lines = []
    credits = account.credits or Credits(reported=False)
    if credits.unlimited:
        lines.append("credits: unlimited")
    elif credits.has_credits or credits.balance:
        lines.append("credits: %s left" % _amount(credits.balance))
    spend = credits.spend_limit
    if spend is not None:
        lines.append("spend limit: %s of %s used" % (_amount(spend.used), _amount(spend.limit)))
    extra = account.extra_usage
    if extra is not None:
        lines.append("extra usage: %s of %s%s used" % (
            _amount(extra.used), _amount(extra.limit),
            " " + printable(extra.currency) if extra.currency else ""))
    return ["  " + line for line in lines]


def _age(delta: timedelta) -> str:
    seconds = max(0.0, delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return "%d %s%s ago" % (count, unit, "" if count == 1 else "s")
    return "just now"


def _account_block(account: AccountUsage, paint: _Painter, now: datetime) -> List[str]:
    header = "%s  %s" % (paint(account.provider.label, "bold"),
                            printable(account.email or account.id))
    if account.plan:
        header += "  [%s]" % printable(account.plan)
    effective = account.effective_remaining_percent
    if effective is not None:
        header += "  " + paint("%s%% left" % _percent(effective), _level(effective))
    notes = []
    if account.state not in (None, AccountState.OK, AccountState.STALE):
        notes.append(account.state.value)  # stale says so below, with the values' age
    if account.token_refreshed:
        notes.append("token refreshed")
    if account.stale and account.fetched_at is not None:
        notes.append("stale: values from %s" % _age(now - account.fetched_at))
    if notes:
        header += "  " + paint("(%s)" % ", ".join(notes), "dim")
    lines = [header]
    if account.error:
        lines.append("  " + paint("error: " + printable(account.error), "red"))
    width = max((len(printable(window.title)) for window in account.windows), default=0)
    for window in account.windows:
        lines.append(_window_line(window, width, paint))
        if lines_layout.runs_out(window) and window.remaining_percent:  # 0 % left says it
            lines.append(_pace_line(window, width, paint, now))
    lines.extend(_detail_lines(account))
    return lines


def render_table(report: Report, colour: bool = False, layout: str = "auto",
                 sort: str = "name") -> str:
    """Given a report, return the table for people: the summary, then the accounts in `sort`
    order (pool.SORTS) as `blocks` or `lines` (`auto`: blocks up to AUTO_BLOCKS accounts,
    lines above), then the skipped files; ANSI colour only when `colour` is true."""
    if layout not in LAYOUTS:
        raise ValueError("unknown layout %r" % layout)
    paint = _Painter(colour)
    failed = len(report.failed)
    summary = "%d account%s, %d failed, %d skipped (%s UTC)" % (
        len(report.accounts), "" if len(report.accounts) == 1 else "s", failed,
        len(report.skipped), report.generated_at.strftime("%Y-%m-%d %H:%M"))
    lines = [summary] + lines_layout.summary_lines(report, paint) + [""]
    if not report.accounts:
        lines.extend(["No accounts to query.", ""])
    sources = sorted({a.source for a in report.accounts} | {s.source for s in report.skipped},
                     key=lambda source: (source != LOCAL_SOURCE, source))
    grouped = len(sources) > 1
    as_lines = layout == "lines" or (layout == "auto" and len(report.accounts) > AUTO_BLOCKS)
    legend = False
    for source in sources if grouped else [None]:
        accounts = pool.sort_accounts([a for a in report.accounts
                                       if source is None or a.source == source], sort)
        if not accounts:
            continue
        if grouped:
            lines.extend([paint("== %s ==" % printable(source or ""), "bold"), ""])
        if as_lines:
            block = lines_layout.render_lines(accounts, report.generated_at, paint, _level)
            if block[-2:] == ["", lines_layout.LEGEND]:  # said once, after every group
                block, legend = block[:-2], True
            lines.extend(block + [""])
        else:
            for account in accounts:
                lines.extend(_account_block(account, paint, report.generated_at))
                lines.append("")
    if legend:
        lines.extend([lines_layout.LEGEND, ""])
    if report.skipped:
        lines.append(paint("Skipped", "bold"))
        names = [printable("%s/%s" % (s.source, s.id) if grouped and s.source != LOCAL_SOURCE
                           and s.source != s.id else s.id) for s in report.skipped]
        width = max(len(name) for name in names)
        for name, skipped in zip(names, report.skipped):
            line = "  %-*s  %s" % (width, name, printable(skipped.reason))
            if skipped.state is AccountState.EXPIRED:
                line += "  (log in again with CLIProxyAPI, or run with --refresh-expired)"
            lines.append(line)
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
