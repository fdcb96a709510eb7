"""What the script imports, and when: a module a plain run never needs is never imported by it
(each dataclass costs about a millisecond to create, a third of a one-account run is start-up),
and the collector turned off for start-up is turned back on. The import checks run in a fresh
interpreter (this one has imported everything already)."""
import gc
import json
import subprocess
import sys

import pytest

import oauth_usage_tracker.cli as module

# Modules that only events, remote proxies, --watch or a token refresh need.
NEVER_IN_A_PLAIN_RUN = (
    "oauth_usage_tracker.refresh", "oauth_usage_tracker.grant", "oauth_usage_tracker.events", "oauth_usage_tracker.event_memory",
    "oauth_usage_tracker.notify", "oauth_usage_tracker.management",
    "oauth_usage_tracker.remote", "oauth_usage_tracker.lockout", "oauth_usage_tracker.watch",
)
# Imported by a run once it knows it will fetch (the tracker, with requests) or while the
# fetches are in flight (the renderers, with the report and the pool view): never by parsing
# the flags.
NOT_BEFORE_A_RUN = NEVER_IN_A_PLAIN_RUN + (
    "oauth_usage_tracker.demo", "oauth_usage_tracker.tracker", "oauth_usage_tracker.http", "oauth_usage_tracker.providers",
    "oauth_usage_tracker.render", "oauth_usage_tracker.report", "oauth_usage_tracker.pool",
    "requests",
    "concurrent.futures",
)

# A plain one-account JSON run (a Claude account whose token is valid: nothing to refresh), in
# process, against the loopback fake the demo uses; then the names of the modules it imported
# (the fake's own imports are no package module above).
PLAIN_RUN = """\
import json, os, sys, tempfile
from oauth_usage_tracker import demo
with demo.FakeProviders() as fake, tempfile.TemporaryDirectory() as tmp:
    auth = os.path.join(tmp, "auth")
    os.mkdir(auth)
    demo.populate(fake, auth, claude=1, codex=0)
    os.environ.update(fake.environ(), XDG_STATE_HOME=os.path.join(tmp, "state"))
    from oauth_usage_tracker import cli
    status = cli.main(["--auth-dir", auth, "--json", "-q", "--output",
                       os.path.join(tmp, "report.json")])
print(json.dumps({"status": status, "modules": sorted(sys.modules)}))
"""

# The classes a usage answer is read into (usage.py: windows, pace, readings, account details;
# result.py: an account's result): created while a run's request is in flight or once its answer
# is read, never before the request goes out, even when a stored entry (windows, details,
# readings) is read first and the tracker publishes its accounts as loading (nobody listens).
NOT_BEFORE_THE_REQUEST = ("oauth_usage_tracker.usage", "oauth_usage_tracker.result")

# The same plain run, but with an entry stored by an earlier run (in a process of its own, so that
# this one starts fresh); the modules imported when the run's socket connects, and at its end.
RUN_WITH_A_STORED_ENTRY = """\
import json, os, subprocess, sys, tempfile
from oauth_usage_tracker import demo
at_connect = []
def hook(event, args):
    if event == "socket.connect" and not at_connect:
        at_connect.append(sorted(sys.modules))
with demo.FakeProviders() as fake, tempfile.TemporaryDirectory() as tmp:
    auth = os.path.join(tmp, "auth")
    os.mkdir(auth)
    demo.populate(fake, auth, claude=1, codex=0)
    os.environ.update(fake.environ(), XDG_STATE_HOME=os.path.join(tmp, "state"))
    flags = ["--auth-dir", auth, "--json", "-q", "--output", os.path.join(tmp, "report.json")]
    subprocess.run([sys.executable, "-m", "oauth_usage_tracker"] + flags, check=True)
    stored = os.path.exists(os.path.join(tmp, "state", "oauth-usage-tracker", "state.json"))
    with open(os.path.join(tmp, "report.json")) as handle:
        windows = len(json.load(handle)["accounts"][0]["windows"])
    sys.addaudithook(hook)
    from oauth_usage_tracker import cli
    status = cli.main(flags)
print(json.dumps({"status": status, "stored": stored, "windows": windows,
                  "at_connect": at_connect[0], "modules": sorted(sys.modules)}))
"""


def imported_by(code):
    """Run `code` in a fresh interpreter; return what it printed last, parsed as JSON."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_importing_the_cli_imports_no_module_a_run_defers():
    modules = imported_by("import json, sys\nimport oauth_usage_tracker.cli\n"
                          "print(json.dumps(sorted(sys.modules)))")
    assert "oauth_usage_tracker.cli" in modules
    assert [name for name in NOT_BEFORE_A_RUN if name in modules] == []


def test_what_a_request_needs_to_go_out_leaves_the_answers_class_for_later():
    modules = imported_by("import json, sys\nimport oauth_usage_tracker.cli\n"
                          "import oauth_usage_tracker.tracker, oauth_usage_tracker.providers\n"
                          "print(json.dumps(sorted(sys.modules)))")
    assert "oauth_usage_tracker.providers.claude" in modules
    assert "oauth_usage_tracker.http" in modules
    assert "oauth_usage_tracker.response" not in modules


def test_plain_one_account_json_run_never_imports_refresh_events_remote_or_watch():
    ran = imported_by(PLAIN_RUN)
    assert ran["status"] == 0
    assert "oauth_usage_tracker.tracker" in ran["modules"]  # it did fetch
    assert "oauth_usage_tracker.response" in ran["modules"]  # and read an answer
    assert [name for name in NEVER_IN_A_PLAIN_RUN if name in ran["modules"]] == []


def test_a_run_with_a_stored_entry_sends_its_request_before_an_answers_classes_exist():
    ran = imported_by(RUN_WITH_A_STORED_ENTRY)
    assert ran["status"] == 0
    assert ran["stored"] and ran["windows"] > 0  # an earlier run stored windows to read
    assert "oauth_usage_tracker.state" in ran["at_connect"]  # the stored entry was read
    assert [name for name in NOT_BEFORE_THE_REQUEST if name in ran["at_connect"]] == []
    assert [name for name in NOT_BEFORE_THE_REQUEST if name not in ran["modules"]] == []


def test_the_answers_classes_keep_their_names_and_are_made_once():
    modules = imported_by(
        "import json, sys\n"
        "import oauth_usage_tracker.models as models, oauth_usage_tracker.pace as pace\n"
        "before = 'oauth_usage_tracker.usage' in sys.modules\n"
        "from oauth_usage_tracker import AccountUsage, UsageWindow\n"
        "from oauth_usage_tracker.models import Pace\n"
        "same = [models.UsageWindow is UsageWindow, models.AccountUsage is AccountUsage,\n"
        "        pace.Reading is sys.modules['oauth_usage_tracker.usage'].Reading,\n"
        "        models.Pace is Pace, 'UsageWindow' in vars(models)]\n"
        "print(json.dumps({'before': before, 'same': same}))")
    assert modules == {"before": False, "same": [True] * 5}
    from oauth_usage_tracker import models, pace
    with pytest.raises(AttributeError, match="NoSuchName"):
        getattr(models, "NoSuchName")
    with pytest.raises(AttributeError, match="NoSuchName"):
        getattr(pace, "NoSuchName")


def test_started_imports_the_tracker_and_turns_the_collector_back_on():
    gc.disable()
    try:
        module._started()
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0
        assert "oauth_usage_tracker.tracker" in sys.modules
    finally:
        gc.unfreeze()
        gc.enable()


def test_the_entry_point_imports_the_cli_with_the_collector_off(monkeypatch):
    import oauth_usage_tracker.__main__ as entry
    seen = []
    monkeypatch.setattr(module, "run", lambda **flags: seen.append(gc.isenabled()))
    try:
        entry.main()
    finally:
        gc.enable()
    assert seen == [False]


def test_a_token_grant_is_still_reachable_from_credentials():
    from oauth_usage_tracker import credentials, grant
    assert credentials.TokenGrant is grant.TokenGrant
    assert repr(credentials.TokenGrant("secret-a", "secret-r")) == "TokenGrant(expires_in=3600.0)"
    with pytest.raises(AttributeError, match="NoSuchName"):
        getattr(credentials, "NoSuchName")
