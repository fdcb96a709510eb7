"""Renderers: the table for people, the JSON report v1, the Prometheus textfile."""
import json
from datetime import datetime, timezone

from prometheus_client.parser import text_string_to_metric_families

from oauth_usage_tracker.models import (AccountState, AccountUsage, Credits, ExtraUsage, Provider,
                                        Skipped, SpendLimit, UsageWindow)
from oauth_usage_tracker.render import json_report, prometheus, table
from oauth_usage_tracker.report import Report

NOW = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)
RESET = datetime(2026, 11, 24, 17, 0, tzinfo=timezone.utc)


def sample_report():
    alice = AccountUsage(
        id="claude-alice@example.com.json", provider=Provider.CLAUDE, email="alice@example.com",
        windows=(UsageWindow("five_hour", "5-hour", 37.0, RESET,
                             "in 3 hours (Nov 24, 2026, 5:00 PM)"),
                 UsageWindow("seven_day", "Weekly", 95.5, None, None)),
        updated_at=NOW, state=AccountState.OK)
    bob = AccountUsage(id="codex-bob@example.com.json", provider=Provider.CODEX,
                       email="bob@example.com", error="Codex usage request timed out after 15 s",
                       state=AccountState.ERROR)
    skipped = (Skipped("gemini-x.json", "unsupported type 'gemini'"),
               Skipped("claude-old@example.com.json", "expired", Provider.CLAUDE,
                       "old@example.com", state=AccountState.EXPIRED))
    return Report(accounts=(alice, bob), skipped=skipped, generated_at=NOW, duration_seconds=1.25)


def test_render_json_matches_spec_shape():
    report = json.loads(json_report.render_json(sample_report()))
    assert report["version"] == 1
    assert report["generated_at"] == "2026-11-24T14:00:00Z"
    assert report["accounts"][0] == {
        "id": "claude-alice@example.com.json", "provider": "claude", "email": "alice@example.com",
        "windows": [
            {"key": "five_hour", "title": "5-hour", "used_percent": 37.0,
             "remaining_percent": 63.0, "reset_date": "2026-11-24T17:00:00Z",
             "reset_text": "in 3 hours (Nov 24, 2026, 5:00 PM)", "severity": None,
             "is_active": None, "locked_reason": None, "length_seconds": None, "pace": None},
            {"key": "seven_day", "title": "Weekly", "used_percent": 95.5,
             "remaining_percent": 4.5, "reset_date": None, "reset_text": None,
             "severity": None, "is_active": None, "locked_reason": None,
             "length_seconds": None, "pace": None}],
        "error": None, "updated_at": "2026-11-24T14:00:00Z", "token_refreshed": False,
        "stale": False, "fetched_at": None, "plan": None, "credits": None, "extra_usage": None,
        "effective_remaining_percent": 4.5, "state": "ok", "cooldown_until": None,
        "source": "local"}
    assert report["accounts"][1]["error"] == "Codex usage request timed out after 15 s"
    assert report["accounts"][1]["updated_at"] is None
    assert report["accounts"][1]["state"] == "error"
    assert report["skipped"] == [
        {"id": "gemini-x.json", "provider": None, "email": None,
         "reason": "unsupported type 'gemini'", "state": None, "source": "local"},
        {"id": "claude-old@example.com.json", "provider": "claude", "email": "old@example.com",
         "reason": "expired", "state": "expired", "source": "local"}]


def test_render_table_blocks_errors_and_skipped_without_colour():
    text = table.render_table(sample_report())
    assert "\x1b[" not in text
    lines = text.splitlines()
    assert lines[0] == "2 accounts, 1 failed, 2 skipped (2026-11-24 14:00 UTC)"
    assert "Claude  alice@example.com  4.5% left" in lines  # ok says nothing
    five = next(line for line in lines if "5-hour" in line)
    assert "63% left" in five and five.endswith("resets in 3 hours (Nov 24, 2026, 5:00 PM)")
    assert any("Weekly" in line and "4.5% left" in line for line in lines)
    assert "  error: Codex usage request timed out after 15 s" in lines
    assert "Codex  bob@example.com  (error)" in lines
    expired = next(line for line in lines if "claude-old@example.com.json" in line)
    assert expired.split()[1] == "expired" and "--refresh-expired" in expired
    assert lines[lines.index("Skipped") + 1].split() == ["gemini-x.json", "unsupported", "type",
                                                        "'gemini'"]


def test_render_table_colour_marks_low_windows_red():
    text = table.render_table(sample_report(), colour=True)
    assert "\x1b[31m4.5% left" in text
    assert "\x1b[32m63% left" in text


def test_render_table_no_accounts_says_so():
    report = Report(accounts=(), skipped=(), generated_at=NOW)
    assert "No accounts to query." in table.render_table(report)


def test_stale_account_in_json_table_and_prometheus():
    fetched = NOW.replace(hour=13, minute=48)
    stale = AccountUsage(id="claude-s@example.com.json", provider=Provider.CLAUDE,
                         email="s@example.com", error="Claude usage API returned 429",
                         windows=(UsageWindow("five_hour", "5-hour", 20.0, RESET, "x"),),
                         updated_at=fetched, stale=True, fetched_at=fetched,
                         state=AccountState.STALE)
    report = Report(accounts=(stale,), skipped=(), generated_at=NOW)
    account = json.loads(json_report.render_json(report))["accounts"][0]
    assert account["stale"] is True and account["fetched_at"] == "2026-11-24T13:48:00Z"
    assert "Claude  s@example.com  80% left  (stale: values from 12 minutes ago)" in \
        table.render_table(report)
    families = {f.name: f for f in text_string_to_metric_families(
        prometheus.render_prometheus(report))}
    states = {s.labels["state"]: s.value for s in families["oauth_usage_account_state"].samples}
    assert states["stale"] == 1 and sum(states.values()) == 1
    assert families["oauth_usage_account_last_success_timestamp_seconds"].samples[0].value == \
        fetched.timestamp()
    assert families["oauth_usage_window_used_ratio"].samples[0].value == 0.2
    assert families["oauth_usage_account_remaining_ratio"].samples[0].value == 0.8


def test_render_table_groups_by_source_in_both_layouts_with_one_legend():
    from dataclasses import replace as with_
    from oauth_usage_tracker.models import Pace
    base = sample_report()
    marked = with_(base.accounts[0], windows=tuple(
        with_(w, pace=Pace(50.0, 45.0, projected_exhaustion=datetime(2026, 11, 24, 15, 0,
                                                                     tzinfo=timezone.utc),
                           runs_out_before_reset=True)) for w in
        base.accounts[0].windows))
    remote_account = with_(marked, id="claude-r.json", email="r@example.com", source="cpa:8317")
    report = with_(base, accounts=(marked, base.accounts[1], remote_account),
                   skipped=base.skipped + (Skipped("claude-off.json", "disabled",
                                                   source="cpa:8317"),))
    for layout in ("blocks", "lines"):
        text = table.render_table(report, layout=layout)
        assert text.index("== local ==") < text.index("alice@example.com") \
            < text.index("== cpa:8317 ==") < text.index("r@example.com")
        assert "cpa:8317/claude-off.json" in text
    assert table.render_table(report, layout="lines").count("runs out before its reset") == 1
    assert "== local ==" not in table.render_table(base)


# --- JSON streamed account by account --------------------------------------------------------

def whole_document(report):
    """What render_json wrote before it streamed: one json.dumps of the whole tree."""
    return json.dumps(json_report.report_json(report), indent=2, ensure_ascii=True) + "\n"


def test_render_json_streamed_is_byte_identical_to_one_dump_of_the_tree():
    tricky = AccountUsage(id="codex-t\u00e9st\n\"q\".json", provider=Provider.CODEX,
                          email="line\nbreak\u2028@example.com", error="tab\there",
                          credits=Credits(balance=0.0, unlimited=False,
                                          spend_limit=SpendLimit(limit=1.5, reset_date=NOW)),
                          extra_usage=ExtraUsage(currency="\u2028\"x\"\n"), plan="plus")
    report = sample_report()
    report = Report(accounts=report.accounts + (tricky,), skipped=report.skipped,
                    generated_at=NOW)
    assert json_report.render_json(report) == whole_document(report)


def test_render_json_streamed_empty_arrays_are_identical_too():
    report = Report(accounts=(), skipped=(), generated_at=NOW)
    assert json_report.render_json(report) == whole_document(report)
    assert json.loads(json_report.render_json(report))["accounts"] == []


def test_iter_json_yields_one_piece_per_account_not_the_whole_document():
    report = sample_report()
    pieces = list(json_report.iter_json(report))
    assert "".join(pieces) == whole_document(report)
    holding = [piece for piece in pieces if '"id": "' in piece and '"provider": ' in piece]
    assert len(holding) == len(report.accounts) + len(report.skipped)
    assert all(piece.count('"id": "') == 1 for piece in holding)
