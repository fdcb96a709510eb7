"""The data model (SPEC §2): providers, windows, results, accounts. No I/O here."""
import dataclasses
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from freezegun import freeze_time

from oauth_usage_tracker import models as module
from oauth_usage_tracker.models import (AccountUsage, AuthAccount, Discovery, Provider, Skipped,
                                        UsageWindow)

RESET = datetime(2026, 11, 24, 17, 0, tzinfo=timezone.utc)


def make_account(expired=None, **changes):
    values = dict(id="claude-alice@example.com.json", provider=Provider.CLAUDE,
                  email="alice@example.com", display_name="alice@example.com",
                  path="/auth/claude-alice@example.com.json", expired=expired)
    values.update(changes)
    return AuthAccount(**values)


# --- Provider ------------------------------------------------------------------------------------

def test_provider_values_are_the_lower_case_type_strings():
    assert Provider.CODEX.value == "codex"
    assert Provider.CLAUDE.value == "claude"
    assert Provider("claude") is Provider.CLAUDE
    assert Provider("codex") is Provider.CODEX
    assert {p.value for p in Provider} == {"claude", "codex"}


def test_provider_str_and_label_give_value_and_capitalized_name():
    assert str(Provider.CLAUDE) == "claude"
    assert "%s" % Provider.CODEX == "codex"
    assert Provider.CLAUDE.label == "Claude"
    assert Provider.CODEX.label == "Codex"


def test_provider_sorted_by_value_puts_claude_before_codex():
    # Declaration order is CODEX, CLAUDE: sorting must not follow it.
    assert list(Provider)[0] is Provider.CODEX
    assert sorted([Provider.CODEX, Provider.CLAUDE]) == [Provider.CLAUDE, Provider.CODEX]
    assert sorted([Provider.CODEX, Provider.CLAUDE], key=lambda p: p.value) == [
        Provider.CLAUDE, Provider.CODEX]
    assert Provider.CLAUDE < Provider.CODEX


def test_provider_unknown_value_raises_value_error():
    with pytest.raises(ValueError):
        Provider("gemini")


# --- UsageWindow ---------------------------------------------------------------------------------

@pytest.mark.parametrize("used, remaining", [
    (0.0, 100.0), (37.0, 63.0), (99.5, 0.5), (100.0, 0.0), (104.0, 0.0), (250.0, 0.0),
])
def test_remaining_percent_used_known_gives_hundred_minus_used_never_below_zero(used, remaining):
    window = UsageWindow(key="five_hour", title="5-hour", used_percent=used)
    assert window.remaining_percent == pytest.approx(remaining)
    assert window.remaining_percent >= 0


def test_remaining_percent_used_unknown_gives_none():
    window = UsageWindow(key="five_hour", title="5-hour", reset_date=RESET)
    assert window.used_percent is None
    assert window.remaining_percent is None


def test_usage_window_defaults_are_none():
    window = UsageWindow(key="seven_day", title="Weekly")
    assert (window.used_percent, window.reset_date, window.reset_text) == (None, None, None)


def test_usage_window_assignment_raises_frozen_instance_error():
    window = UsageWindow(key="five_hour", title="5-hour", used_percent=37.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        window.used_percent = 0.0
    assert window.used_percent == 37.0


def test_usage_window_equal_fields_compare_and_hash_equal():
    first = UsageWindow("five_hour", "5-hour", 37.0, RESET, "in 3 hours")
    second = UsageWindow("five_hour", "5-hour", 37.0, RESET, "in 3 hours")
    assert first == second
    assert first is not second
    assert hash(first) == hash(second)
    assert len({first, second}) == 1


def test_usage_window_different_field_compares_unequal():
    base = UsageWindow("five_hour", "5-hour", 37.0, RESET, "in 3 hours")
    assert base != dataclasses.replace(base, used_percent=38.0)
    assert base != dataclasses.replace(base, reset_date=RESET + timedelta(seconds=1))
    assert base != dataclasses.replace(base, key="seven_day")


# --- AccountUsage --------------------------------------------------------------------------------

def test_account_usage_defaults_describe_an_empty_finished_result():
    usage = AccountUsage(id="codex-bob@example.com.json", provider=Provider.CODEX)
    assert usage.email is None
    assert usage.is_loading is False
    assert usage.windows == ()
    assert usage.error is None
    assert usage.updated_at is None
    assert usage.token_refreshed is False


def test_account_usage_assignment_raises_frozen_instance_error():
    usage = AccountUsage(id="x.json", provider=Provider.CLAUDE, is_loading=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        usage.is_loading = False


def test_account_usage_equal_fields_compare_equal():
    window = UsageWindow("five_hour", "5-hour", 10.0)
    assert AccountUsage("a.json", Provider.CLAUDE, windows=(window,)) == AccountUsage(
        "a.json", Provider.CLAUDE, windows=(UsageWindow("five_hour", "5-hour", 10.0),))


# --- AuthAccount ---------------------------------------------------------------------------------

def test_is_expired_expiry_unknown_is_false():
    assert make_account(expired=None).is_expired is False


def test_is_expired_expiry_in_past_is_true():
    assert make_account(expired=datetime(2000, 1, 1, tzinfo=timezone.utc)).is_expired is True


def test_is_expired_expiry_in_future_is_false():
    assert make_account(expired=datetime(2999, 1, 1, tzinfo=timezone.utc)).is_expired is False


def test_is_expired_same_object_is_evaluated_when_read():
    expiry = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)
    with freeze_time("2026-11-24T13:59:00Z") as frozen:
        account = make_account(expired=expiry)
        assert account.is_expired is False
        frozen.move_to("2026-11-24T13:59:59Z")
        assert account.is_expired is False
        frozen.move_to("2026-11-24T14:00:00Z")
        assert account.is_expired is True
        frozen.move_to("2026-11-24T15:00:00Z")
        assert account.is_expired is True


def test_is_expired_offset_expiry_compares_as_instant():
    # 14:39:03+02:00 is 12:39:03 UTC.
    expiry = datetime(2026, 8, 22, 14, 39, 3, tzinfo=timezone(timedelta(hours=2)))
    with freeze_time("2026-08-22T12:39:02Z") as frozen:
        account = make_account(expired=expiry)
        assert account.is_expired is False
        frozen.move_to("2026-08-22T12:39:04Z")
        assert account.is_expired is True


def test_auth_account_fields_hold_no_token():
    names = {f.name for f in dataclasses.fields(AuthAccount)}
    assert names == {"id", "provider", "email", "display_name", "path", "expired", "is_disabled",
                     "source", "remote", "directory_id"}
    assert not any("token" in name for name in names)


def test_auth_account_assignment_raises_frozen_instance_error():
    account = make_account()
    with pytest.raises(dataclasses.FrozenInstanceError):
        account.is_disabled = True


def test_auth_account_defaults_are_enabled_and_unknown_expiry():
    account = AuthAccount(id="a.json", provider=Provider.CODEX, email=None, display_name="a.json",
                          path="/auth/a.json")
    assert account.expired is None
    assert account.is_disabled is False
    assert account.is_expired is False


# --- Skipped and Discovery -----------------------------------------------------------------------

def test_skipped_defaults_have_no_provider_or_email():
    skipped = Skipped("gemini-x.json", "unsupported type 'gemini'")
    assert skipped.provider is None
    assert skipped.email is None
    assert skipped == Skipped("gemini-x.json", "unsupported type 'gemini'")


def test_discovery_accounts_lists_claude_then_codex():
    claude = make_account()
    codex = make_account(id="codex-bob.json", provider=Provider.CODEX, email="bob@example.com",
                         display_name="bob@example.com", path="/auth/codex-bob.json")
    found = Discovery(codex=(codex,), claude=(claude,))
    assert found.accounts == (claude, codex)
    assert found.skipped == ()
    assert found.auth_dir is None


def test_discovery_empty_has_no_accounts():
    assert module.Discovery().accounts == ()


def test_account_state_needs_human_only_for_login_expired_unreadable():
    from oauth_usage_tracker.models import AccountState
    assert {s.value for s in AccountState if s.needs_human} == {"login_failed", "expired",
                                                                 "unreadable"}
    assert str(AccountState.RATE_LIMITED) == "rate_limited"


def test_effective_remaining_percent_ignores_model_scoped_windows():
    from oauth_usage_tracker.models import AccountUsage, Provider, UsageWindow
    usage = AccountUsage(id="a.json", provider=Provider.CLAUDE, windows=(
        UsageWindow("five_hour", "5-hour", 30.0), UsageWindow("seven_day", "Weekly", 55.0),
        UsageWindow("seven_day_opus", "Weekly (Opus)", 99.0)))
    assert usage.effective_remaining_percent == 45.0
    assert AccountUsage(id="b.json", provider=Provider.CODEX).effective_remaining_percent is None


def test_effective_remaining_percent_counts_titled_equivalents_not_feature_limits():
    from oauth_usage_tracker.models import AccountUsage, Provider, UsageWindow
    codex = AccountUsage(id="c.json", provider=Provider.CODEX, windows=(
        UsageWindow("primary_window", "5-hour", 20.0),
        UsageWindow("gpt_5_3_codex_spark:primary_window", "GPT-5.3-Codex-Spark 5-hour", 99.0),
        UsageWindow("gpt_5_3_codex_spark:secondary_window", "GPT-5.3-Codex-Spark Weekly", 97.0)))
    assert codex.effective_remaining_percent == 80.0
    generic = AccountUsage(id="g.json", provider=Provider.CODEX, windows=(
        UsageWindow("weekly", "Weekly", 70.0), UsageWindow("full", "Full", 10.0)))
    assert generic.effective_remaining_percent == 30.0
    scoped_only = AccountUsage(id="s.json", provider=Provider.CLAUDE, windows=(
        UsageWindow("weekly_scoped:opus", "Weekly (Opus)", 100.0),))
    assert scoped_only.effective_remaining_percent is None


def test_effective_remaining_percent_ignores_rolled_over_stale_windows():
    from oauth_usage_tracker.parsing import roll_over
    now = datetime(2026, 11, 24, 14, 0, tzinfo=timezone.utc)
    five = roll_over(UsageWindow("five_hour", "5-hour", 95.0, now - timedelta(minutes=5)), now)
    week = UsageWindow("seven_day", "Weekly", 40.0, now + timedelta(days=2))
    assert five.rolled_over and five.remaining_percent == 100.0
    both = AccountUsage(id="a.json", provider=Provider.CLAUDE, windows=(five, week), stale=True)
    assert both.effective_remaining_percent == 60.0
    alone = AccountUsage(id="a.json", provider=Provider.CLAUDE, windows=(five,), stale=True)
    assert alone.effective_remaining_percent is None


def test_every_dataclass_field_type_resolves_with_get_type_hints():
    # Annotations are strings in every module (PEP 563); tools that read a result's fields
    # (cattrs, dacite, pydantic) resolve them with typing.get_type_hints, which must find every
    # name, the answer's classes made on first use included.
    import dataclasses
    import importlib
    import pkgutil
    import typing

    import oauth_usage_tracker

    checked = []
    for info in pkgutil.walk_packages(oauth_usage_tracker.__path__, "oauth_usage_tracker."):
        module = importlib.import_module(info.name)
        for value in list(vars(module).values()):
            if isinstance(value, type) and dataclasses.is_dataclass(value) \
                    and value.__module__ == module.__name__:
                localns = {}
                if value.__name__ == "AuthAccount":  # its proxy record lives with the proxy client
                    from oauth_usage_tracker.remote import RemoteAccount
                    localns = {"RemoteAccount": RemoteAccount}
                hints = typing.get_type_hints(value, localns=localns)
                assert set(hints) >= {field.name for field in dataclasses.fields(value)}
                checked.append(value.__name__)
    assert {"AccountUsage", "UsageWindow", "AccountDetails", "Settings", "AccountState"} \
        <= set(checked)


FORK_WHILE_MAKING = r'''
import importlib.abc, importlib.machinery, os, signal, sys, threading, time
class Slow(importlib.abc.MetaPathFinder):
    """Makes usage.py's import take half a second, so that a fork lands inside it."""
    def find_spec(self, name, path, target=None):
        if name != "oauth_usage_tracker.usage":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        real = spec.loader.exec_module
        def exec_module(module):
            time.sleep(0.5)
            real(module)
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, Slow())
from oauth_usage_tracker import models
assert "oauth_usage_tracker.usage" not in sys.modules
threading.Thread(target=lambda: models.UsageWindow("k", "t")).start()
time.sleep(0.1)
pid = os.fork()
if pid == 0:
    signal.alarm(5)
    models.UsageWindow("k", "t")
    models.AccountUsage("a.json", models.Provider.CLAUDE)
    os._exit(0)
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
'''


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_process_forked_while_a_thread_makes_the_answers_classes_can_make_them():
    # The first worker to get an answer imports usage.py; a library that forks meanwhile (a
    # pre-fork server, multiprocessing) must not leave its child waiting on that import's lock.
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", FORK_WHILE_MAKING],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0"]  # the child made both; -14 would be its alarm


def test_the_deferred_classes_are_listed_and_star_imported():
    code = ("import oauth_usage_tracker as package, sys\n"
            "from oauth_usage_tracker import models, pace\n"
            "assert 'oauth_usage_tracker.usage' not in sys.modules\n"
            "assert {'UsageWindow', 'AccountUsage', 'Pace'} <= set(dir(models))\n"
            "assert 'Reading' in dir(pace) and 'AccountUsage' in dir(package)\n"
            "names = {}\n"
            "exec('from oauth_usage_tracker.models import *', names)\n"
            "assert names['UsageWindow'] is models.UsageWindow\n"
            "assert names['AccountUsage'] is package.AccountUsage\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
