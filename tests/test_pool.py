"""The pool view (SPEC §14): states, usable accounts, the next reset that frees one, sorting."""
import json
from datetime import datetime, timedelta, timezone

import pytest

from oauth_usage_tracker import pool as module
from oauth_usage_tracker.models import AccountState, AccountUsage, Pace, Provider, Skipped, \
    UsageWindow
from oauth_usage_tracker.render import json_report
from oauth_usage_tracker.report import Report

NOW = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)


def acct(email, five=None, week=None, provider=Provider.CLAUDE, five_reset=2.0, week_reset=48.0,
         **changes):
    """An account whose 5-hour / weekly windows have `five` / `week` percent left."""
    windows = []
    if five is not None:
        windows.append(UsageWindow("five_hour", "5-hour", 100.0 - five,
                                   NOW + timedelta(hours=five_reset)))
    if week is not None:
        windows.append(UsageWindow("seven_day", "Weekly", 100.0 - week,
                                   NOW + timedelta(hours=week_reset)))
    changes.setdefault("state", AccountState.OK)
    return AccountUsage(id="%s-%s.json" % (provider.value, email), provider=provider,
                        email=email, windows=tuple(windows), **changes)


def report(accounts, skipped=(), usable_above=10.0):
    return Report(accounts=tuple(accounts), skipped=tuple(skipped), generated_at=NOW,
                  usable_above=usable_above)


# --- states ------------------------------------------------------------------------------------

def test_summarize_reads_states_never_derives_them_from_errors_or_reasons():
    accounts = [acct("a", 50, error="x", state=AccountState.BLOCKED),
                acct("b", 50, error="timed out", state=None)]
    skipped = [Skipped("claude-x.json", "unreadable: not valid JSON", Provider.CLAUDE),
               Skipped("torn.json", "unreadable: not valid JSON"),
               Skipped("claude-y.json", "disabled", Provider.CLAUDE,
                       state=AccountState.EXPIRED)]
    [claude] = module.summarize(report(accounts, skipped))
    assert claude.states == {AccountState.BLOCKED: 1, AccountState.EXPIRED: 1}
    assert claude.usable == 0
    assert module.unattributed_unreadable(report(accounts, skipped)) == 0


# --- summary -----------------------------------------------------------------------------------

def test_summarize_counts_states_usable_and_next_reset_per_provider():
    accounts = [
        acct("ok", 50, 60),
        acct("edge", 10, 90),                               # exactly at the threshold: usable
        acct("low5", 5, 80, five_reset=3.0),                # frees at its 5-hour reset (+3 h)
        acct("lowboth", 5, 2, five_reset=1.0, week_reset=30.0),  # needs both: frees at +30 h
        acct("down", error="timed out", state=AccountState.ERROR),
        acct("cx", 3, 50, provider=Provider.CODEX, five_reset=4.0),
    ]
    skipped = [Skipped("claude-off.json", "disabled", Provider.CLAUDE,
                       state=AccountState.DISABLED),
               Skipped("torn.json", "unreadable: not valid JSON",
                       state=AccountState.UNREADABLE),
               Skipped("g.json", "unsupported type 'gemini'")]
    claude, codex = module.summarize(report(accounts, skipped))
    assert claude.provider is Provider.CLAUDE
    assert claude.states == {AccountState.OK: 4, AccountState.ERROR: 1,
                             AccountState.DISABLED: 1}
    assert claude.total == 6 and claude.usable == 2
    assert claude.next_free == NOW + timedelta(hours=3)
    assert claude.next_free_account.email == "low5"
    assert module.frees_at(accounts[3], 10.0) == NOW + timedelta(hours=30)
    assert module.frees_at(accounts[0], 10.0) is None
    assert (codex.usable, codex.next_free) == (0, NOW + timedelta(hours=4))
    assert module.unattributed_unreadable(report(accounts, skipped)) == 1


def test_summarize_failing_and_unknown_accounts_are_never_usable_nor_freed_by_a_reset():
    accounts = [acct("a", 3, error="401", login_problem=True, stale=True,
                     state=AccountState.LOGIN_FAILED),
                acct("b"), acct("c", 3, 50, five_reset=-1.0)]
    [claude] = module.summarize(report(accounts))
    assert claude.usable == 0
    assert claude.next_free is None  # a's login needs a person; c's reset is already past


def test_summarize_ties_on_next_reset_name_the_first_account_by_name():
    accounts = [acct("zed", 1, 50), acct("amy", 1, 50)]
    [claude] = module.summarize(report(accounts))
    assert claude.next_free_account.email == "amy"


def test_summarize_usable_above_is_the_reports_threshold():
    accounts = [acct("a", 40, 90), acct("b", 60, 90)]
    assert module.summarize(report(accounts, usable_above=50.0))[0].usable == 1
    assert module.summarize(report(accounts, usable_above=0.0))[0].usable == 2


def test_summarize_skips_providers_without_files():
    assert module.summarize(report([])) == []
    assert [s.provider for s in module.summarize(report([acct("c", 5, provider=Provider.CODEX)]))] \
        == [Provider.CODEX]


def test_json_summary_and_pace_are_additive_keys():
    paced = UsageWindow("five_hour", "5-hour", 80.0, NOW + timedelta(hours=1),
                        length_seconds=18000.0,
                        pace=Pace(80.0 - 1e-9, 1e-9, NOW + timedelta(minutes=30), True, "recent"))
    accounts = [AccountUsage(id="claude-a.json", provider=Provider.CLAUDE, email="a",
                             windows=(paced,), state=AccountState.OK),
                acct("b", 2, 70, five_reset=2.5)]
    data = json.loads(json_report.render_json(report(accounts, [
        Skipped("torn.json", "unreadable: file is empty", state=AccountState.UNREADABLE)])))
    assert data["accounts"][0]["effective_remaining_percent"] == 20.0
    assert data["accounts"][0]["windows"][0]["length_seconds"] == 18000.0
    assert data["accounts"][0]["windows"][0]["pace"] == {
        "expected_used_percent": 80.0, "delta_percent": 0.0,
        "projected_exhaustion": "2026-11-24T14:30:00Z", "runs_out_before_reset": True,
        "basis": "recent"}
    assert data["accounts"][1]["windows"][0]["pace"] is None
    assert data["summary"] == {
        "usable_above": 10.0,
        "providers": {"claude": {"accounts": 2, "states": {"ok": 2}, "usable": 1,
                                 "next_usable_at": "2026-11-24T16:30:00Z",
                                 "next_usable_account": "claude-b.json"}},
        "unreadable_unknown_provider": 1}


# --- sorting -----------------------------------------------------------------------------------

def test_sort_headroom_most_first_ties_by_name_unknown_last():
    accounts = [acct("dora", 40, 90), acct("Bob", 70, 80), acct("al", 40, 40),
                acct("cy", None, None, error="timed out", state=AccountState.ERROR),
                acct("abe", 80, 40),
                acct("eve", 40, 100, provider=Provider.CODEX), acct("ann")]
    order = [a.email for a in module.sort_accounts(accounts, "headroom")]
    # 70 (Bob), then 40: al, abe, dora (claude by name), eve (codex); unknown: ann, cy by name.
    assert order == ["Bob", "abe", "al", "dora", "eve", "ann", "cy"]


def test_sort_headroom_model_scoped_window_does_not_count():
    scoped = AccountUsage(id="s.json", provider=Provider.CLAUDE, email="s", windows=(
        UsageWindow("weekly_scoped:opus", "Weekly (Opus)", 0.0),))
    order = module.sort_accounts([scoped, acct("t", 1)], "headroom")
    assert [a.email for a in order] == ["t", "s"]


def test_sort_reset_soonest_binding_reset_first_unknown_last():
    accounts = [acct("late", 5, 90, five_reset=4.0), acct("soon", 5, 90, five_reset=1.0),
                acct("weekbound", 80, 20, five_reset=0.5, week_reset=24.0),
                acct("none"), acct("tie", 5, 90, five_reset=1.0)]
    order = [a.email for a in module.sort_accounts(accounts, "reset")]
    assert order == ["soon", "tie", "late", "weekbound", "none"]


def test_sort_name_is_provider_then_email_and_unknown_sort_is_refused():
    accounts = [acct("b", provider=Provider.CODEX), acct("B"), acct("a")]
    assert [a.email for a in module.sort_accounts(accounts)] == ["a", "B", "b"]
    with pytest.raises(ValueError):
        module.sort_accounts(accounts, "random")
