"""The success path makes each window and each result once (issue 19): a window is made with
its flags (a limit's severity and activity, a lock's reason, a Codex limit's title prefix), and
the result with its details, instead of being made and then copied by `dataclasses.replace`.
Claude's parse_usage also keeps its known keys and title order as constants rather than making
them on every answer. These properties check the new code against the code it replaced, kept
here as written, on arbitrary answers shaped like the providers' and on every recorded
payload."""
import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oauth_usage_tracker import parsing
from oauth_usage_tracker.errors import ProviderError
from oauth_usage_tracker.models import AccountUsage, AuthAccount, Provider
from oauth_usage_tracker.providers import answer, claude, codex
from oauth_usage_tracker.response import HttpResponse

PROPERTY = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
UTC = timezone.utc
PAYLOADS = Path(__file__).parent / "payloads"


# The code replaced, as it was.
def old_parse_bucket(key, title, raw, now):
    if not isinstance(raw, dict):
        return None
    used = parsing.number_value(raw.get("utilization"))
    if used is None:
        return None
    window = parsing.make_window(key, title, used, parsing.parse_timestamp(raw.get("resets_at")),
                                 now, parsing.title_length(title))
    locked = raw.get("locked_reason")
    if window is not None and isinstance(locked, str) and locked.strip():
        window = replace(window, locked_reason=locked.strip())
    return window


def old_with_limit_flags(window, entry):
    severity = entry.get("severity")
    active = entry.get("is_active")
    return replace(window, severity=severity if isinstance(severity, str) else None,
                   is_active=active if isinstance(active, bool) else None)


def old_limit_window(entry, key, title, now):
    window = parsing.make_window(key, title, parsing.number_value(entry.get("percent")),
                                 parsing.parse_timestamp(entry.get("resets_at")), now,
                                 parsing.title_length(title))
    return window and old_with_limit_flags(window, entry)


def old_rate_limit_windows(rate_limit, now, key_prefix="", title_prefix=""):
    if not isinstance(rate_limit, dict):
        return []
    windows = []
    for key, title in codex._WINDOWS:
        window = codex.parse_window(key_prefix + key, title, rate_limit.get(key), now)
        if window is not None:
            windows.append(replace(window, title=title_prefix + window.title))
    return windows


def old_usage_from_answer(account, response, what, parse_usage, parse_details, now):
    if response.status != 200:
        raise AssertionError("only successes are compared")
    payload = json.loads(response.body)
    windows = parse_usage(payload, now)
    assert windows
    return parse_details(payload).apply(AccountUsage(
        id=account.id, provider=account.provider, email=account.email, windows=tuple(windows),
        updated_at=now))


def same(new, old):
    """Equal, and equal in every field (repr shows the ones equality leaves out)."""
    assert new == old
    assert repr(new) == repr(old)


def old_claude_windows(payload, now):
    if not isinstance(payload, dict):
        return []
    windows = {}
    for key, title in claude.BUCKETS:
        window = old_parse_bucket(key, title, payload.get(key), now)
        if window is not None:
            windows[title] = window
    limits = payload.get("limits")
    for entry in limits if isinstance(limits, list) else []:
        if not isinstance(entry, dict):
            continue
        kind = entry.get("kind")
        name = claude._scoped_name(entry) if kind == "weekly_scoped" else None
        if kind == "session":
            key, title = "five_hour", "5-hour"
        elif kind == "weekly_all":
            key, title = "seven_day", "Weekly"
        elif name:
            key, title = "weekly_scoped:" + parsing.slug(name), "Weekly (%s)" % name
        else:
            continue
        if title in windows:
            windows[title] = old_with_limit_flags(windows[title], entry)
        else:
            window = old_limit_window(entry, key, title, now)
            if window is not None:
                windows[title] = window
    known = {key for key, _ in claude.BUCKETS} | claude._NOT_BUCKETS
    for key, raw in payload.items():
        if isinstance(key, str) and key not in known:
            window = old_parse_bucket(key, claude.codename_title(key), raw, now)
            if window is not None and window.title not in windows:
                windows[window.title] = window
    extra = payload.get("extra_usage")
    if isinstance(extra, dict) and extra.get("is_enabled") is True:
        window = parsing.make_window("extra_usage", "Extra usage",
                                     parsing.number_value(extra.get("utilization")), None, now)
        if window is not None:
            windows[window.title] = window
    order = [title for _, title in claude.BUCKETS]
    return parsing.unique_keys(sorted(windows.values(), key=lambda w: (
        order.index(w.title) if w.title in order else len(order))))


def old_codex_windows(payload, now):
    with mock.patch.object(codex, "_rate_limit_windows", old_rate_limit_windows):
        return codex.parse_usage(payload, now)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 200), st.floats(-5, 200),
                    st.sampled_from(["", " ", "normal", " warning ", "critical", "x", "50",
                                     "2026-10-05T09:00:00Z", "2026-10-05T09:00:00.5+02:00"]))
moments = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1),
                       timezones=st.just(UTC))
reset_moments = st.one_of(st.none(), st.sampled_from(["2026-10-05T09:00:00Z",
                                                      "2026-10-01T12:59:59.593033+00:00"]),
                          scalars)
claude_bucket = st.one_of(scalars, st.fixed_dictionaries({}, optional={
    "utilization": scalars, "resets_at": reset_moments, "locked_reason": scalars}))
claude_limit = st.one_of(scalars, st.fixed_dictionaries({}, optional={
    "kind": st.sampled_from(["session", "weekly_all", "weekly_scoped", "other", ""]),
    "percent": scalars, "resets_at": reset_moments, "severity": scalars, "is_active": scalars,
    "scope": st.one_of(scalars, st.fixed_dictionaries({"model": st.fixed_dictionaries(
        {}, optional={"display_name": scalars, "id": scalars})}))}))
claude_payloads = st.fixed_dictionaries({}, optional={
    **{key: claude_bucket for key, _ in claude.BUCKETS},
    "nimbus_quill": claude_bucket, "seven_day_tangelo": claude_bucket,
    "five_hour_nimbus": claude_bucket, "": claude_bucket,
    "limits": st.one_of(scalars, st.lists(claude_limit, max_size=5)),
    "extra_usage": st.one_of(scalars, st.fixed_dictionaries({}, optional={
        "is_enabled": st.booleans(), "utilization": scalars, "monthly_limit": scalars,
        "used_credits": scalars, "currency": scalars}))})
codex_window = st.one_of(scalars, st.fixed_dictionaries({}, optional={
    "used_percent": scalars, "limit_window_seconds": st.one_of(scalars, st.sampled_from(
        [18000, 604800, 2592000, 86400, 7200])), "reset_after_seconds": scalars,
    "reset_at": st.one_of(scalars, st.integers(1_700_000_000, 1_900_000_000))}))
codex_rate_limit = st.one_of(scalars, st.fixed_dictionaries({}, optional={
    "primary_window": codex_window, "secondary_window": codex_window}))
codex_payloads = st.fixed_dictionaries({}, optional={
    "rate_limit": codex_rate_limit, "plan_type": scalars,
    "credits": st.one_of(scalars, st.fixed_dictionaries({}, optional={
        "balance": scalars, "unlimited": scalars, "has_credits": scalars})),
    "additional_rate_limits": st.one_of(scalars, st.lists(st.one_of(
        scalars, st.fixed_dictionaries({}, optional={
            "limit_name": st.one_of(scalars, st.sampled_from(["GPT-5 Codex", " Spark ", "!"])),
            "rate_limit": codex_rate_limit})), max_size=3))})


@PROPERTY
@given(payload=claude_payloads, now=moments)
def test_claude_parse_usage_windows_made_with_their_flags_as_copies_were(payload, now):
    same(claude.parse_usage(payload, now), old_claude_windows(payload, now))


@PROPERTY
@given(payload=codex_payloads, now=moments)
def test_codex_parse_usage_windows_made_with_their_title_prefix_as_copies_were(payload, now):
    same(codex.parse_usage(payload, now), old_codex_windows(payload, now))


def account_for(provider):
    return AuthAccount(id="%s-p@example.com.json" % provider.value, provider=provider,
                       email="p@example.com", display_name="p@example.com",
                       path="/nonexistent")


def new_and_old(module, provider, response, now):
    """usage_from_answer's result at `now`, and what the replaced code gave for the answer."""
    moment = mock.Mock(now=mock.Mock(return_value=now))
    with mock.patch.object(answer, "datetime", moment):
        new = answer.usage_from_answer(account_for(provider), response, "x", module.parse_usage,
                                       module.parse_details)
    old = old_usage_from_answer(account_for(provider), response, "x",
                                old_claude_windows if module is claude else old_codex_windows,
                                module.parse_details, now)
    return new, old


@pytest.mark.parametrize("name", sorted(path.name for path in PAYLOADS.glob("c*.json")
                                        if "token" not in path.name))
def test_usage_from_answer_recorded_payload_same_result_as_details_applied(name):
    provider = Provider.CLAUDE if name.startswith("claude") else Provider.CODEX
    module = claude if provider is Provider.CLAUDE else codex
    body = (PAYLOADS / name).read_bytes()
    now = datetime(2026, 10, 1, 12, tzinfo=UTC)
    response = HttpResponse(200, {"Content-Type": "application/json"}, body)
    moment = mock.Mock(now=mock.Mock(return_value=now))
    if not module.parse_usage(json.loads(body), now):  # no windows: the same error as before
        with mock.patch.object(answer, "datetime", moment), \
                pytest.raises(ProviderError, match=answer.NO_WINDOWS):
            answer.usage_from_answer(account_for(provider), response, "x", module.parse_usage,
                                     module.parse_details)
        return
    same(*new_and_old(module, provider, response, now))


@PROPERTY
@given(payload=st.one_of(claude_payloads, codex_payloads), now=moments)
def test_usage_from_answer_any_answer_same_result_as_details_applied(payload, now):
    module = claude if any(key in payload for key, _ in claude.BUCKETS) or "limits" in payload \
        else codex
    provider = Provider.CLAUDE if module is claude else Provider.CODEX
    if not module.parse_usage(payload, now):
        return
    response = HttpResponse(200, {}, json.dumps(payload).encode())
    same(*new_and_old(module, provider, response, now))
