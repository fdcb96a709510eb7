"""Metrics v2 (SPEC §13): names, labels, one-hot states, no duplicate series, escaping, and
Prometheus's own `promtool check metrics` on every rendered document."""
import subprocess
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from oauth_usage_tracker import __version__
from oauth_usage_tracker.models import AccountState, AccountUsage, Provider, Skipped, UsageWindow
from oauth_usage_tracker.render import prometheus as module
from oauth_usage_tracker.report import Report
from support import require_tool

NOW = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)
RESET = datetime(2026, 11, 24, 17, 0, tzinfo=timezone.utc)
V1_NAMES = ("oauth_usage_window_used_percent", "oauth_usage_window_remaining_percent",
            "oauth_usage_account_up", "oauth_usage_account_stale")


def usage(name, state, provider=Provider.CLAUDE, email=None, windows=(), **extra):
    return AccountUsage(id=name, provider=provider, email=email, windows=tuple(windows),
                        state=state, **extra)


def planted_report():
    five = UsageWindow("five_hour", "5-hour", 37.0, RESET, "x")
    week = UsageWindow("seven_day", "Weekly", 80.0, RESET + timedelta(days=3), "y")
    opus = UsageWindow("seven_day_opus", "Weekly (Opus)", 99.0, None, None)
    fetched = NOW - timedelta(minutes=12)
    accounts = (
        usage("claude-ok.json", AccountState.OK, email="ok@example.com", windows=(five, week, opus),
              fetched_at=NOW, plan="max"),
        usage("claude-stale.json", AccountState.STALE, email="stale@example.com", windows=(five,),
              stale=True, fetched_at=fetched, error="429",
              cooldown_until=NOW + timedelta(minutes=3)),
        usage("codex-limited.json", AccountState.RATE_LIMITED, Provider.CODEX, error="429",
              cooldown_until=NOW + timedelta(minutes=5)),
        usage("codex-cf.json", AccountState.BLOCKED, Provider.CODEX, error="HTML"),
        usage("claude-dead.json", AccountState.LOGIN_FAILED, error="invalid_grant",
              login_problem=True, cooldown_until=NOW - timedelta(minutes=1)),
    )
    skipped = (Skipped("claude-old.json", "expired", Provider.CLAUDE, "old@example.com",
                       state=AccountState.EXPIRED),
               Skipped("codex-off.json", "disabled", Provider.CODEX, state=AccountState.DISABLED),
               Skipped("torn.json", "unreadable: not a JSON object",
                       state=AccountState.UNREADABLE),
               Skipped("gemini.json", "unsupported type 'gemini'"))
    return Report(accounts=accounts, skipped=skipped, generated_at=NOW, duration_seconds=2.5)


def families(text):
    return {family.name: family for family in text_string_to_metric_families(text)}


def series(family):
    return {tuple(sorted(sample.labels.items())): sample.value for sample in family.samples}


def test_render_names_are_v2_with_help_and_type_and_no_v1_names():
    text = module.render_prometheus(planted_report())
    for name, _ in module.METRICS:
        assert "# HELP %s " % name in text and "# TYPE %s gauge\n" % name in text
    assert not any(old in text for old in V1_NAMES)


def test_render_account_state_is_one_hot_for_every_credential_file():
    found = families(module.render_prometheus(planted_report()))["oauth_usage_account_state"]
    by_account = {}
    for sample in found.samples:
        by_account.setdefault(sample.labels["account"], {})[sample.labels["state"]] = sample.value
    assert set(by_account) == {"claude-ok.json", "claude-stale.json", "codex-limited.json",
                               "codex-cf.json", "claude-dead.json", "claude-old.json",
                               "codex-off.json", "torn.json"}  # not the gemini file
    for name, states in by_account.items():
        assert set(states) == {state.value for state in AccountState}, name
        assert sum(states.values()) == 1, name
    current = {name: next(s for s, v in states.items() if v == 1)
               for name, states in by_account.items()}
    assert current == {"claude-ok.json": "ok", "claude-stale.json": "stale",
                       "codex-limited.json": "rate_limited", "codex-cf.json": "blocked",
                       "claude-dead.json": "login_failed", "claude-old.json": "expired",
                       "codex-off.json": "disabled", "torn.json": "unreadable"}
    unreadable = next(s for s in found.samples if s.labels["account"] == "torn.json")
    assert unreadable.labels["provider"] == "" and unreadable.labels["source"] == "local"


def test_render_email_and_plan_only_on_account_info():
    found = families(module.render_prometheus(planted_report()))
    for name, family in found.items():
        for sample in family.samples:
            assert ("email" in sample.labels) == (name == "oauth_usage_account_info"), name
    info = {s.labels["account"]: (s.labels["email"], s.labels["plan"], s.value)
            for s in found["oauth_usage_account_info"].samples}
    assert info["claude-ok.json"] == ("ok@example.com", "max", 1)
    assert info["claude-old.json"] == ("old@example.com", "", 1)


def test_render_ratios_timestamps_and_cooldown_only_while_running():
    found = families(module.render_prometheus(planted_report()))
    used = series(found["oauth_usage_window_used_ratio"])
    key = (("account", "claude-ok.json"), ("provider", "claude"), ("source", "local"))
    assert used[key + (("window", "five_hour"),)] == 0.37
    assert used[key + (("window", "seven_day_opus"),)] == 0.99
    # Effective remaining: the least over account-wide windows, the Opus window ignored.
    assert series(found["oauth_usage_account_remaining_ratio"])[key] == 0.2
    resets = series(found["oauth_usage_window_reset_timestamp_seconds"])
    assert resets[key + (("window", "five_hour"),)] == RESET.timestamp()
    success = {dict(k)["account"]: v for k, v in
               series(found["oauth_usage_account_last_success_timestamp_seconds"]).items()}
    assert success == {"claude-ok.json": NOW.timestamp(),
                       "claude-stale.json": (NOW - timedelta(minutes=12)).timestamp()}
    cooldown = {dict(k)["account"]: v for k, v in
                series(found["oauth_usage_account_cooldown_until_timestamp_seconds"]).items()}
    assert cooldown == {"claude-stale.json": (NOW + timedelta(minutes=3)).timestamp(),
                        "codex-limited.json": (NOW + timedelta(minutes=5)).timestamp()}


def test_render_per_run_series_carry_the_name_and_count_states():
    found = families(module.render_prometheus(planted_report(), name="pool-a"))
    assert series(found["oauth_usage_last_run_timestamp_seconds"]) == {
        (("name", "pool-a"),): NOW.timestamp()}
    assert series(found["oauth_usage_run_duration_seconds"]) == {(("name", "pool-a"),): 2.5}
    assert series(found["oauth_usage_tracker_build_info"]) == {
        (("name", "pool-a"), ("version", __version__)): 1}
    counts = {dict(k)["state"]: v for k, v in series(found["oauth_usage_accounts"]).items()}
    assert counts == {"ok": 1, "stale": 1, "rate_limited": 1, "blocked": 1, "error": 0,
                      "login_failed": 1, "expired": 1, "disabled": 1, "unreadable": 1}


@pytest.mark.parametrize("path, name", [
    ("/var/lib/prometheus/node-exporter/oauth_usage.prom", "oauth_usage"),
    ("pool-b.prom", "pool-b"), ("/tmp/metrics.txt", "metrics.txt"), (None, "oauth_usage"),
])
def test_metrics_name_defaults_to_the_file_name_without_prom(path, name):
    assert module.metrics_name(path) == name


def test_render_never_writes_a_series_twice():
    report = planted_report()
    twin = replace(report.accounts[0], state=AccountState.ERROR, email="other@example.com")
    doubled = replace(report, accounts=report.accounts + (twin,),
                      skipped=report.skipped + report.skipped)
    text = module.render_prometheus(doubled)
    samples = [line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")]
    assert len(samples) == len(set(samples))
    info = [line for line in text.splitlines()
            if line.startswith("oauth_usage_account_info") and "claude-ok.json" in line]
    assert len(info) == 1 and "ok@example.com" in info[0]  # the first file wins, whole
    # A second source with the same file name is another account, not a duplicate.
    remote = replace(report.accounts[0], source="proxy.example:8317")
    found = families(module.render_prometheus(replace(report, accounts=(report.accounts[0],
                                                                        remote))))
    assert {s.labels["source"] for s in found["oauth_usage_account_remaining_ratio"].samples} \
        == {"local", "proxy.example:8317"}


def test_escape_label_is_total_and_keeps_lines_whole():
    assert module.escape_label('a\\b"c') == 'a\\\\b\\"c'
    escaped = module.escape_label("x\ny\u202e\ud800\x1b[2J")
    assert "\n" not in escaped and "\x1b" not in escaped and "\u202e" not in escaped
    escaped.encode("utf-8")  # a lone surrogate would raise here


def test_render_hostile_names_parse_and_encode():
    hostile = usage('we"ird\\\n\ud800\u202e.json', AccountState.OK, email="a\nb\x1b@example.com",
                    windows=(UsageWindow('k"\n', "t", 10.0),))
    text = module.render_prometheus(Report((hostile,), (), NOW))
    text.encode("utf-8")
    info = families(text)["oauth_usage_account_info"].samples[0]
    assert "\n" not in info.labels["email"] and "\x1b" not in info.labels["email"]
    assert info.labels["account"].startswith('we"ird\\')


def promtool_check(text):
    promtool = require_tool("promtool")
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode("utf-8"),
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_promtool_check_metrics_accepts_the_planted_report():
    promtool_check(module.render_prometheus(planted_report(), name="oauth_usage"))


def test_promtool_check_metrics_accepts_an_empty_run():
    promtool_check(module.render_prometheus(Report((), (), NOW)))


@settings(max_examples=25, deadline=None)
@given(st.text(max_size=30), st.text(max_size=30), st.text(max_size=20),
       st.floats(min_value=0, max_value=100))
def test_promtool_check_metrics_accepts_any_text_in_labels(name, email, key, used):
    hostile = usage(name or "x", AccountState.OK, email=email,
                    windows=(UsageWindow(key or "k", "t", used, RESET),))
    text = module.render_prometheus(Report((hostile,), (), NOW), name=name)
    assert families(text)["oauth_usage_tracker_build_info"].samples[0].value == 1
    promtool_check(text)


def test_render_projected_exhaustion_only_when_a_window_runs_out_before_its_reset():
    from oauth_usage_tracker.models import Pace
    soon = NOW + timedelta(hours=1)
    running_out = UsageWindow("five_hour", "5-hour", 80.0, RESET, "x",
                              pace=Pace(40.0, 40.0, soon, True))
    fine = UsageWindow("seven_day", "Weekly", 10.0, RESET + timedelta(days=3), "y",
                       pace=Pace(50.0, -40.0, RESET + timedelta(days=9), False))
    report = Report(accounts=(usage("claude-a.json", AccountState.OK,
                                    windows=(running_out, fine)),),
                    skipped=(), generated_at=NOW)
    found = families(module.render_prometheus(report))
    projected = series(found["oauth_usage_window_projected_exhaustion_timestamp_seconds"])
    assert projected == {(("account", "claude-a.json"), ("provider", "claude"),
                          ("source", "local"), ("window", "five_hour")): soon.timestamp()}
