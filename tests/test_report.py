"""Exit status rules of SPEC §8."""
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from oauth_usage_tracker import report as module
from oauth_usage_tracker.models import AccountState, AccountUsage, Provider, Skipped, UsageWindow

NOW = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)


def usage(left=50.0, error=None):
    windows = () if error else (UsageWindow("five_hour", "5-hour", 100.0 - left),)
    return AccountUsage(id="a.json", provider=Provider.CLAUDE, windows=windows, error=error)


def make(accounts=(), skipped=()):
    return module.Report(accounts=tuple(accounts), skipped=tuple(skipped), generated_at=NOW)


def test_exit_status_all_fetched_is_0():
    assert module.exit_status(make([usage(), usage()])) == 0


def test_exit_status_nothing_to_query_is_0():
    assert module.exit_status(make([], [Skipped("x.json", "disabled",
                                                state=AccountState.DISABLED)])) == 0


def test_exit_status_failed_account_is_1():
    assert module.exit_status(make([usage(), usage(error="boom")])) == 1


def test_exit_status_unreadable_file_is_1():
    unreadable = Skipped("x.json", "unreadable: file is empty", state=AccountState.UNREADABLE)
    assert module.exit_status(make([usage()], [unreadable])) == 1


def test_exit_status_expired_account_needs_a_human_and_is_1():
    expired = Skipped("c.json", "expired", Provider.CLAUDE, state=AccountState.EXPIRED)
    assert module.exit_status(make([usage()], [expired])) == 1


def test_exit_status_decides_from_the_state_not_the_reason_text():
    reworded = Skipped("x.json", "unreadable: reworded", state=AccountState.DISABLED)
    assert module.exit_status(make([usage()], [reworded])) == 0


def test_state_counts_every_state_present_and_unsupported_files_not_counted():
    report = make([replace(usage(), state=AccountState.OK),
                   replace(usage(error="x"), state=AccountState.LOGIN_FAILED)],
                  [Skipped("g.json", "unsupported type 'gemini'"),
                   Skipped("d.json", "disabled", state=AccountState.DISABLED)])
    counts = report.state_counts()
    assert set(counts) == set(AccountState)
    assert {s.value: n for s, n in counts.items() if n} == {"ok": 1, "login_failed": 1,
                                                           "disabled": 1}


def test_exit_status_unsupported_type_is_not_a_failure():
    assert module.exit_status(make([usage()], [Skipped("g.json", "unsupported type 'gemini'")])) == 0


@pytest.mark.parametrize("left, threshold, expected", [(9.9, 10, 3), (10.0, 10, 0), (50, 10, 0)])
def test_exit_status_fail_below_boundary(left, threshold, expected):
    assert module.exit_status(make([usage(left)]), fail_below=threshold) == expected


def test_exit_status_fail_below_wins_over_failure():
    assert module.exit_status(make([usage(5.0), usage(error="boom")]), fail_below=10) == 3


def test_exit_status_unknown_percent_never_crosses_threshold():
    unknown = AccountUsage(id="a.json", provider=Provider.CODEX,
                           windows=(UsageWindow("primary_window", "5-hour", None),))
    assert module.exit_status(make([unknown]), fail_below=100) == 0


def test_exit_status_fail_below_compares_effective_remaining_not_model_scoped_windows():
    scoped = AccountUsage(id="a.json", provider=Provider.CLAUDE, windows=(
        UsageWindow("five_hour", "5-hour", 20.0), UsageWindow("seven_day", "Weekly", 30.0),
        UsageWindow("seven_day_opus", "Weekly (Opus)", 100.0)))
    assert scoped.effective_remaining_percent == 70.0
    assert module.exit_status(make([scoped]), fail_below=10) == 0
    assert module.exit_status(make([scoped]), fail_below=70.5) == 3
    codex_feature = AccountUsage(id="c.json", provider=Provider.CODEX, windows=(
        UsageWindow("spark:primary_window", "Spark 5-hour", 100.0),))
    assert module.exit_status(make([codex_feature]), fail_below=50) == 0
