"""Newer payload shapes (SPEC §11): Claude limits[] and extra usage, Codex extra limits, plan and
credits, unknown codename buckets, and older shapes parsed exactly as before."""
import json
from datetime import datetime, timezone

from prometheus_client.parser import text_string_to_metric_families

from oauth_usage_tracker.json_forms import details_to_json
from oauth_usage_tracker.models import AccountDetails, AccountUsage, Provider
from oauth_usage_tracker.providers import claude, codex
from oauth_usage_tracker.render import render_json, render_prometheus, render_table
from oauth_usage_tracker.report import Report
from oauth_usage_tracker.state import StateStore, from_store, next_state
from support import load_payload


def details_json(module, payload):
    """What a provider's parser finds besides the windows, in its JSON form."""
    return details_to_json(module.parse_details(payload))


NOW = datetime(2026, 10, 1, 12, 0, tzinfo=timezone.utc)


def summary(windows):
    return [(w.key, w.title, w.used_percent, w.severity, w.is_active) for w in windows]


def test_claude_weekly_scoped_limit_becomes_its_own_window():
    windows = claude.parse_usage(load_payload("claude_limits_array"), NOW)
    assert summary(windows) == [
        ("five_hour", "5-hour", 96.0, "critical", True),
        ("seven_day", "Weekly", 71.0, "warning", False),
        ("weekly_scoped:fable", "Weekly (Fable)", 100.0, "critical", False),
    ]
    assert windows[2].reset_date == datetime(2026, 10, 5, 9, 0, 0, 593224, tzinfo=timezone.utc)


def test_claude_session_and_weekly_all_fill_only_missing_flat_buckets():
    payload = load_payload("claude_limits_array")
    payload["five_hour"] = None
    del payload["seven_day"]
    windows = claude.parse_usage(payload, NOW)
    assert summary(windows)[:2] == [("five_hour", "5-hour", 96.0, "critical", True),
                                    ("seven_day", "Weekly", 71.0, "warning", False)]
    flat = claude.parse_usage(load_payload("claude_max"), NOW)
    assert flat[0].used_percent == 34.0 and flat[1].used_percent == 57.0


def test_claude_no_window_ever_appears_twice():
    payload = load_payload("claude_max")
    payload["seven_day_opus"] = {"utilization": 19.0, "resets_at": None}
    payload["limits"] = payload["limits"] * 2
    windows = claude.parse_usage(payload, NOW)
    titles = [w.title for w in windows]
    assert len(titles) == len(set(titles))
    opus = [w for w in windows if w.title == "Weekly (Opus)"]
    assert [(w.key, w.used_percent, w.severity) for w in opus] == [
        ("seven_day_opus", 19.0, "normal")]


def test_claude_extra_usage_window_and_amounts_when_enabled():
    payload = load_payload("claude_max")
    windows = claude.parse_usage(payload, NOW)
    assert (windows[-1].key, windows[-1].title, windows[-1].used_percent) == (
        "extra_usage", "Extra usage", 24.8)
    assert details_json(claude, payload) == {"extra_usage": {
        "used": 12.4, "limit": 50.0, "currency": "USD", "utilization": 24.8}}
    payload["extra_usage"]["decimal_places"] = 0
    assert details_json(claude, payload)["extra_usage"]["limit"] == 5000.0
    del payload["extra_usage"]["decimal_places"]
    assert details_json(claude, payload)["extra_usage"]["used"] == 12.4


def test_claude_extra_usage_disabled_adds_nothing():
    payload = load_payload("claude_limits_array")
    assert all(w.key != "extra_usage" for w in claude.parse_usage(payload, NOW))
    assert details_json(claude, payload) == {}


def test_claude_locked_reason_is_kept_and_shown():
    payload = load_payload("claude_max")
    payload["seven_day"]["locked_reason"] = "weekly_limit_reached"
    windows = claude.parse_usage(payload, NOW)
    assert windows[1].locked_reason == "weekly_limit_reached"
    assert windows[0].locked_reason is None
    usage = AccountUsage(id="c.json", provider=Provider.CLAUDE, email="c@example.com",
                         windows=tuple(windows))
    text = render_table(Report(accounts=(usage,), skipped=(), generated_at=NOW))
    assert "locked: weekly_limit_reached" in text


def test_claude_unknown_codename_buckets_follow_known_ones_with_readable_titles():
    payload = load_payload("claude_max")
    payload["seven_day_tangelo"] = {"utilization": 12.0, "resets_at": None}
    payload["cinder_cove"] = {"utilization": None, "resets_at": None}
    payload["spend"] = {"percent": 24}
    windows = claude.parse_usage(payload, NOW)
    titles = [w.title for w in windows]
    assert titles == ["5-hour", "Weekly", "Weekly (Opus)", "Weekly (Cowork)", "Nimbus Quill",
                      "Weekly (Tangelo)", "Extra usage"]
    assert claude.codename_title("iguana_necktie") == "Iguana Necktie"


def test_claude_legacy_pro_parsed_exactly_as_before():
    windows = claude.parse_usage(load_payload("claude_legacy_pro"), NOW)
    assert [(w.key, w.title, w.used_percent, w.severity, w.locked_reason) for w in windows] == [
        ("five_hour", "5-hour", 6.0, None, None), ("seven_day", "Weekly", 35.0, None, None),
        ("seven_day_opus", "Weekly (Opus)", 0.0, None, None),
        ("seven_day_sonnet", "Weekly (Sonnet)", 1.0, None, None)]
    assert details_json(claude, load_payload("claude_legacy_pro")) == {}


def test_codex_additional_rate_limits_titles_and_stable_keys():
    windows = codex.parse_usage(load_payload("codex_plus"), NOW)
    assert [(w.key, w.title, w.used_percent) for w in windows] == [
        ("primary_window", "5-hour", 23.0), ("secondary_window", "Weekly", 41.0),
        ("gpt_5_3_codex_spark:primary_window", "GPT-5.3-Codex-Spark 5-hour", 0.0),
        ("gpt_5_3_codex_spark:secondary_window", "GPT-5.3-Codex-Spark Weekly", 3.0)]


def test_codex_additional_rate_limits_junk_entries_are_ignored():
    payload = load_payload("codex_plus")
    payload["additional_rate_limits"] += [None, "x", {"limit_name": 3}, {"limit_name": "!!"},
                                          {"limit_name": "Empty", "rate_limit": None}]
    assert len(codex.parse_usage(payload, NOW)) == 4


def test_codex_plan_and_credits_string_or_number_balance():
    assert details_json(codex, load_payload("codex_limit_reached")) == {
        "plan": "pro", "credits": {"balance": 31.84, "unlimited": False, "has_credits": True}}
    payload = load_payload("codex_limit_reached")
    payload["credits"]["balance"] = 7
    payload["credits"]["unlimited"] = True
    assert details_json(codex, payload)["credits"]["balance"] == 7.0
    assert details_json(codex, payload)["credits"]["unlimited"] is True


def test_codex_spend_control_individual_limit_on_credits():
    credits = details_json(codex, load_payload("codex_team_spend_control"))["credits"]
    assert credits["spend_limit"] == {"limit": 3000.0, "used": 462.04, "remaining": 2537.96,
                                      "used_percent": 15.0, "reset_date": "2026-10-31T00:00:00Z"}


def usage_from(payload_name, provider, module):
    payload = load_payload(payload_name)
    return module.parse_details(payload).apply(AccountUsage(
        id="%s-%s.json" % (provider.value, payload_name), provider=provider,
        email="x@example.com", windows=tuple(module.parse_usage(payload, NOW)), updated_at=NOW))


def test_new_shapes_reach_table_json_and_prometheus():
    accounts = (usage_from("claude_max", Provider.CLAUDE, claude),
                usage_from("codex_team_spend_control", Provider.CODEX, codex),
                usage_from("codex_plus", Provider.CODEX, codex))
    report = Report(accounts=accounts, skipped=(), generated_at=NOW)
    text = render_table(report)
    assert "Codex  x@example.com  [team]" in text and "Codex  x@example.com  [plus]" in text
    assert "spend limit: 462.04 of 3000 used" in text
    assert "extra usage: 12.4 of 50 USD used" in text
    assert "GPT-5.3-Codex-Spark Weekly" in text
    document = json.loads(render_json(report))
    first, second = document["accounts"][0], document["accounts"][1]
    assert first["extra_usage"]["currency"] == "USD" and first["plan"] is None
    assert second["plan"] == "team" and second["credits"]["spend_limit"]["limit"] == 3000.0
    scoped = next(w for w in first["windows"] if w["key"] == "weekly_scoped:opus")
    assert scoped["severity"] == "normal" and scoped["is_active"] is False
    keys = {s.labels["window"] for family in text_string_to_metric_families(
        render_prometheus(report)) if family.name == "oauth_usage_window_used_ratio"
        for s in family.samples}
    assert {"weekly_scoped:opus", "extra_usage", "nimbus_quill",
            "gpt_5_3_codex_spark:primary_window"} <= keys


def test_state_store_keeps_new_fields_for_stale_display(tmp_path):
    usage = usage_from("claude_limits_array", Provider.CLAUDE, claude)
    codex_usage = usage_from("codex_limit_reached", Provider.CODEX, codex)
    store = StateStore(str(tmp_path))
    store.save([(("claude", usage.id), next_state(None, NOW, windows=usage.windows)),
                (("codex", codex_usage.id), next_state(
                    None, NOW, windows=codex_usage.windows,
                    details=AccountDetails(plan="pro", credits=codex_usage.credits)))])
    loaded = store.load()
    assert summary(loaded[("claude", usage.id)].windows) == summary(usage.windows)
    from oauth_usage_tracker.models import AuthAccount
    account = AuthAccount(id=codex_usage.id, provider=Provider.CODEX, email="x@example.com",
                          display_name="x", path="/x")
    stale = from_store(account, loaded[("codex", codex_usage.id)], NOW, stale=True)
    assert stale.plan == "pro" and stale.credits.balance == 31.84 and stale.stale
