"""The pool view for people: the summary that heads the table, and the `lines` layout (one line
per account, 80 columns, for pools of dozens to hundreds of accounts and for cron mail)."""
from __future__ import annotations

import math
import textwrap
from datetime import datetime
from typing import Callable, List, Optional, Sequence

from .. import pool
from ..models import (
    ACCOUNT_WIDE_KEYS,
    FIVE_HOUR_TITLE,
    WEEKLY_TITLE,
    AccountState,
    AccountUsage,
    UsageWindow,
)
from ..report import Report
from ..text import printable

Paint = Callable[[str, Optional[str]], str]
Level = Callable[[Optional[float]], Optional[str]]

WIDTH = 80
ACCOUNT_WIDTH = 24
STATE_WIDTH = 12
MARK = "!"
LEGEND = MARK + " runs out before its reset at the current pace"
HEADER = "  %-6s  %-*s  %4s  %-11s  %-11s  %s" % ("", ACCOUNT_WIDTH, "account", "left", "5-hour",
                                                  "weekly", "state")


def fit(text: str, width: int) -> str:
    """Given text (already printable) and a width, return it cut to the width with `…`."""
    return text if len(text) <= width else text[:width - 1] + "…"


def until(moment: Optional[datetime], now: datetime) -> str:
    """A short time to a moment, at most 5 characters: `<1m`, `42m`, `4h05m`, `16h`, `3d21h`, `29d`
    (`now` when it has passed, `?` when unknown)."""
    if moment is None:
        return "?"
    seconds = (moment - now).total_seconds()
    if seconds <= 0:
        return "now"
    # Rounded to the nearest unit shown, as the reset texts of the blocks are.
    minutes = int(seconds / 60 + 0.5)
    if minutes < 1:
        return "<1m"
    if minutes < 60:
        return "%dm" % minutes
    if minutes < 10 * 60:
        return "%dh%02dm" % divmod(minutes, 60)
    if minutes < 24 * 60 - 30:
        return "%dh" % int(minutes / 60 + 0.5)
    days, hours = divmod(int(minutes / 60 + 0.5), 24)
    return "%dd%02dh" % (days, hours) if days < 10 else "%dd" % int(days + hours / 24 + 0.5)


def left(value: Optional[float]) -> str:
    """A remaining percentage in 4 columns, rounded down (never more than is left)."""
    return "   ?" if value is None else "%3d%%" % math.floor(value)


def runs_out(window: UsageWindow) -> bool:
    """True when the window's pace says it runs out before its reset."""
    return window.pace is not None and window.pace.runs_out_before_reset


def _column(account: AccountUsage, title: str) -> Optional[UsageWindow]:
    return next((w for w in account.windows if w.key in ACCOUNT_WIDE_KEYS and w.title == title),
                None)


def _cell(window: Optional[UsageWindow], now: datetime, paint: Paint, level: Level) -> str:
    if window is None:
        return "%-11s" % "   -"
    when = "reset" if window.rolled_over else until(window.reset_date, now)
    mark = MARK if runs_out(window) else " "
    return "%s %-5s%s" % (paint(left(window.remaining_percent), level(window.remaining_percent)),
                          when, paint(mark, "red") if mark != " " else mark)


def _state(account: AccountUsage, paint: Paint) -> str:
    state = account.state
    if state is None or state is AccountState.OK:
        return ""
    return paint(state.value, "red" if state.needs_human else "yellow")


def account_line(account: AccountUsage, now: datetime, paint: Paint, level: Level) -> str:
    """One account on one line: a mark when a window runs out before its reset, provider,
    e-mail, effective remaining, 5-hour and weekly remaining with time to reset, the state when
    it is not `ok`."""
    gutter = paint(MARK, "red") + " " if any(runs_out(w) for w in account.windows) else "  "
    name = fit(printable(account.email or account.id), ACCOUNT_WIDTH)
    effective = account.effective_remaining_percent
    line = "%s%-6s  %-*s  %s  %s  %s  %s" % (
        gutter, account.provider.value, ACCOUNT_WIDTH, name, paint(left(effective),
                                                                   level(effective)),
        _cell(_column(account, FIVE_HOUR_TITLE), now, paint, level),
        _cell(_column(account, WEEKLY_TITLE), now, paint, level), _state(account, paint))
    return line.rstrip()


def render_lines(accounts: Sequence[AccountUsage], now: datetime, paint: Paint,
                 level: Level) -> List[str]:
    """The `lines` layout: a header, one line per account, and the legend when a mark shows."""
    lines = [paint(HEADER.rstrip(), "bold")]
    lines.extend(account_line(account, now, paint, level) for account in accounts)
    if any(runs_out(w) for account in accounts for w in account.windows):
        lines.extend(["", LEGEND])
    return lines


def summary_lines(report: Report, paint: Paint) -> List[str]:
    """Per provider: how many accounts are usable, the next to free up, and the accounts by
    state (wrapped at 80 columns)."""
    lines = []
    for item in pool.summarize(report):
        head = "%-6s  %d of %d usable (%s%% left or more)" % (
            item.provider.label, item.usable, item.total,
            ("%.1f" % report.usable_above).rstrip("0").rstrip("."))
        lines.append(paint(head[:6], "bold") + head[6:])
        if item.next_free is not None and item.next_free_account is not None:
            prefix = " " * 8 + "next to free up in %s: " % until(item.next_free,
                                                                    report.generated_at)
            who = printable(item.next_free_account.email or item.next_free_account.id)
            lines.append(prefix + fit(who, WIDTH - len(prefix)))
        states = ", ".join("%d %s" % (count, state.value) for state, count in item.states.items())
        lines.extend(textwrap.wrap(states, WIDTH, initial_indent=" " * 8,
                                   subsequent_indent=" " * 8))
    return lines
