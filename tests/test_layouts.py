"""The table's layouts (SPEC §14) for 1, 10 and 200 accounts, against golden files.

After a deliberate change of the table, rewrite the golden files with
`UPDATE_GOLDEN=1 python -m pytest tests/test_layouts.py` and review the diff.
"""
import os
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from oauth_usage_tracker import pace
from oauth_usage_tracker.models import AccountState, AccountUsage, Provider, Skipped, UsageWindow
from oauth_usage_tracker.parsing import reset_text, roll_over
from oauth_usage_tracker.render import lines as module
from oauth_usage_tracker.render.table import render_table
from oauth_usage_tracker.report import Report

NOW = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)
GOLDEN = Path(__file__).parent / "golden"
FIVE, WEEK = 5 * 3600.0, 7 * 86400.0


def window(key, title, used, reset_in, length):
    reset = NOW + timedelta(seconds=reset_in)
    made = UsageWindow(key, title, used, reset, reset_text(reset, NOW), length_seconds=length)
    return replace(made, pace=pace.pace(made, NOW))


def pool_account(index):
    """Account `index` of a made-up pool: every kind an operator meets, in a fixed mix."""
    provider = Provider.CLAUDE if index % 3 else Provider.CODEX
    email = "user%03d@example.com" % index
    kind = index % 10
    five_used = (index * 37) % 101
    week_used = (index * 53) % 97
    five_reset = 600 + (index * 811) % int(FIVE - 600)
    week_reset = 3600 + (index * 7919) % int(WEEK - 3600)
    five_key, week_key = (("five_hour", "seven_day") if provider is Provider.CLAUDE
                          else ("primary_window", "secondary_window"))
    windows = [window(five_key, "5-hour", float(five_used), five_reset, FIVE),
               window(week_key, "Weekly", float(week_used), week_reset, WEEK)]
    if provider is Provider.CLAUDE:
        windows.append(window("seven_day_opus", "Weekly (Opus)", float(index % 100),
                              week_reset, WEEK))
    changes = {"state": AccountState.OK}
    if kind == 3:
        return AccountUsage(id="%s-%s.json" % (provider.value, email), provider=provider,
                            email=email, error="Claude usage request timed out after 15 s",
                            state=AccountState.ERROR)
    if kind == 5:
        changes = {"error": "Claude usage returned 401 after refresh retry",
                   "login_problem": True, "state": AccountState.LOGIN_FAILED}
        windows = []
    if kind == 7:
        windows[0] = roll_over(windows[0], NOW + timedelta(seconds=five_reset + 60))
        changes = {"error": "Claude usage API returned 429", "stale": True,
                   "fetched_at": NOW - timedelta(minutes=12), "state": AccountState.STALE}
    if kind == 8:
        email = "a.very.long.mailbox.name.for.a.pool.account%03d@example.com" % index
    if kind == 9:
        email = "evil\x1b[31m%03d\u202e@example.com" % index
    return AccountUsage(id="%s-%s.json" % (provider.value, email), provider=provider,
                        email=email, windows=tuple(windows), updated_at=NOW,
                        plan="plus" if provider is Provider.CODEX else None, **changes)


def pool_report(count):
    accounts = tuple(pool_account(i) for i in range(1, count + 1))
    skipped = (Skipped("gemini-x.json", "unsupported type 'gemini'"),
               Skipped("claude-off@example.com.json", "disabled", Provider.CLAUDE,
                       "off@example.com", state=AccountState.DISABLED))
    return Report(accounts=accounts, skipped=skipped, generated_at=NOW)


def rows(text):
    """The account lines of a `lines` table."""
    lines = text.splitlines()
    start = lines.index(module.HEADER.rstrip()) + 1
    return lines[start:lines.index("", start)]


def check_golden(name, text):
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("count", [1, 10, 200])
def test_lines_layout_golden_at_80_columns(count):
    text = render_table(pool_report(count), layout="lines")
    check_golden("lines-%d.txt" % count, text)
    assert max(len(line) for line in text.splitlines()[:-3]) <= 80  # skipped ids may be long
    assert len(rows(text)) == count


@pytest.mark.parametrize("count", [1, 10])
def test_blocks_layout_golden(count):
    text = render_table(pool_report(count), layout="blocks")
    check_golden("blocks-%d.txt" % count, text)


@pytest.mark.parametrize("count, layout", [(1, "blocks"), (10, "blocks"), (11, "lines"),
                                           (200, "lines")])
def test_auto_layout_is_blocks_up_to_ten_accounts(count, layout):
    report = pool_report(count)
    assert render_table(report) == render_table(report, layout=layout)


def test_lines_layout_marks_states_and_pace_and_escapes_hostile_text():
    text = render_table(pool_report(10), layout="lines")
    lines = text.splitlines()
    assert "\x1b" not in text and "\u202e" not in text
    assert "evil\\x1b[31m009\\u202e@e…" in text
    assert any(line.endswith("login_failed") for line in lines)
    assert any(line.rstrip().endswith("stale") and " reset " in line for line in lines)
    assert "a.very.long.mailbox.nam…" in text
    marked = [line for line in rows(text) if line.startswith("! ")]
    assert marked and all("!" in line[2:] for line in marked)  # which window, in its cell
    assert module.LEGEND in lines


def test_lines_layout_colour_only_when_asked():
    report = pool_report(10)
    assert "\x1b[" not in render_table(report, layout="lines")
    coloured = render_table(report, layout="lines", colour=True)
    assert "\x1b[31m!" in coloured and "\x1b[31mlogin_failed" in coloured


def test_table_sort_headroom_puts_most_headroom_first_unknown_last():
    text = render_table(pool_report(10), layout="lines", sort="headroom")
    values = [line[36:40].strip() for line in rows(text)]
    assert len(values) == 10
    known = [int(v.rstrip("%")) for v in values if v != "?"]
    assert known == sorted(known, reverse=True)
    assert values[-1] == "?" and "?" not in values[:len(known)]


def test_summary_heads_the_table_with_usable_counts_and_next_reset():
    text = render_table(pool_report(10), layout="lines")
    head = text.splitlines()[:6]
    assert head[0] == "10 accounts, 2 failed, 2 skipped (2026-11-24 14:00 UTC)"
    assert head[1] == "Claude  5 of 8 usable (10% left or more)"
    assert head[2] == "        next to free up in 1h58m: a.very.long.mailbox.name.for.a.pool.account00…"
    assert head[3] == "        5 ok, 1 stale, 1 login_failed, 1 disabled"
    assert head[4] == "Codex   2 of 3 usable (10% left or more)"
    assert head[5] == "        2 ok, 1 error"


@pytest.mark.parametrize("seconds, expected", [
    (None, "?"), (-5, "now"), (20, "<1m"), (89, "1m"), (59 * 60, "59m"), (4 * 3600 + 299, "4h05m"),
    (16 * 3600 + 24 * 60, "16h"), (23 * 3600 + 40 * 60, "1d00h"),
    (3 * 86400 + 21 * 3600 + 1700, "3d21h"), (30 * 86400, "30d")])
def test_until_is_at_most_five_characters(seconds, expected):
    moment = None if seconds is None else NOW + timedelta(seconds=seconds)
    assert module.until(moment, NOW) == expected


def test_unknown_layout_or_sort_is_refused():
    with pytest.raises(ValueError):
        render_table(pool_report(1), layout="grid")
    with pytest.raises(ValueError):
        render_table(pool_report(1), sort="random")


def test_cli_flags_default_and_refuse_bad_values():
    from oauth_usage_tracker import cli
    parser = cli.build_parser()
    args = parser.parse_args([])
    assert (args.layout, args.sort, args.usable_above) == ("auto", "name", 10.0)
    args = parser.parse_args(["--layout", "lines", "--sort", "headroom", "--usable-above", "25"])
    assert (args.layout, args.sort, args.usable_above) == ("lines", "headroom", 25.0)
    for bad in (["--layout", "grid"], ["--sort", "random"], ["--usable-above", "101"],
                ["--usable-above", "nan"], ["--usable-above", "-1"]):
        assert cli.main(bad) == 2


def test_blocks_pace_note_says_when_and_is_left_out_when_nothing_is_left():
    five = window("five_hour", "5-hour", 60.0, 3600, FIVE)   # 80 % elapsed, 60 % used: no
    week = window("seven_day", "Weekly", 90.0, 2 * 86400, WEEK)  # 90 % in 5 of 7 days: yes
    empty = window("seven_day_opus", "Weekly (Opus)", 100.0, 2 * 86400, WEEK)
    account = AccountUsage(id="claude-a.json", provider=Provider.CLAUDE, email="a@example.com",
                           windows=(five, week, empty))
    text = render_table(Report(accounts=(account,), skipped=(), generated_at=NOW))
    notes = [line.strip() for line in text.splitlines() if "at this pace" in line]
    # 90 points in 5 days: the last 10 take 0.56 days, about 13 hours.
    assert notes == ["! at this pace, runs out in 13 hours (Nov 25, 2026, 3:20 AM)"]
    later = Report(accounts=(account,), skipped=(), generated_at=NOW + timedelta(days=1))
    assert "! at this pace, ran out 11 hours ago" in render_table(later)
