"""The tracker with accounts listed by remote proxies: read through the proxy, `source` on every
result, state kept apart per source, sources taking turns in the pool."""
import json
from dataclasses import replace

import pytest

import oauth_usage_tracker.tracker as module
from oauth_usage_tracker import account_fetch, lanes, lockout, management, remote
from oauth_usage_tracker.config import Settings
from oauth_usage_tracker.models import LOCAL_SOURCE, AuthAccount, Provider
from support import load_payload

KEY = "cpa-UNITtrackerKEYnotREAL-4455"
NAME = "claude-same@example.com.json"


@pytest.fixture(autouse=True)
def fresh_rejections():
    lockout.clear_memory()
    yield
    lockout.clear_memory()


def listed(url):
    proxy = management.Proxy(url, KEY)
    return remote.accounts_from_listing({"files": [{
        "name": NAME, "type": "claude", "email": "same@example.com",
        "auth_index": "00000000000000aa"}]}, proxy).claude[0]


def envelope(status, payload, headers=None):
    return {"status_code": status, "header": headers or {}, "body": json.dumps(payload)}


def test_same_file_name_at_two_proxies_keeps_two_cooldowns(mocked_responses, tmp_path):
    first, second = listed("https://a.example.net"), listed("https://b.example.net")
    mocked_responses.post("https://a.example.net/v0/management/api-call",
                          json=envelope(429, load_payload("claude_429"), {"Retry-After": ["600"]}))
    for _ in range(2):
        mocked_responses.post("https://b.example.net/v0/management/api-call",
                              json=envelope(200, load_payload("claude_max")))
    with module.OAuthUsageTracker(settings=Settings(), state_dir=tmp_path) as tracker:
        results = tracker.refresh_and_wait((), (first, second))
        by_source = {usage.source: usage for usage in results}
        assert set(by_source) == {"a.example.net:443", "b.example.net:443"}
        assert "429" in by_source["a.example.net:443"].error
        assert by_source["b.example.net:443"].windows
        # Second refresh: A cools down without a request, B is asked again.
        again = {u.source: u for u in tracker.refresh_and_wait((), (first, second))}
    assert "cooldown" in again["a.example.net:443"].error
    assert again["b.example.net:443"].error is None
    assert len(mocked_responses.calls) == 3
    stored = json.loads((tmp_path / "state.json").read_text())["accounts"]
    assert set(stored) == {"claude/a.example.net:443/" + NAME, "claude/b.example.net:443/" + NAME}


def test_remote_failure_after_success_shows_stale_values_like_local_mode(mocked_responses,
                                                                         tmp_path):
    account = listed("https://a.example.net")
    url = "https://a.example.net/v0/management/api-call"
    mocked_responses.post(url, json=envelope(200, load_payload("claude_max")))
    mocked_responses.post(url, status=502, json={"error": "request failed"})
    with module.OAuthUsageTracker(settings=Settings(), state_dir=tmp_path) as tracker:
        good = tracker.refresh_and_wait((), (account,))[0]
        later = tracker.refresh_and_wait((), (account,))[0]
    assert later.stale and [w.key for w in later.windows] == [w.key for w in good.windows]
    assert "502" in later.error and not later.login_problem


def test_placeholders_and_skipped_carry_the_source(tmp_path):
    account = listed("https://a.example.net")
    disabled = replace(account, is_disabled=True)
    with module.OAuthUsageTracker(settings=Settings(), state_dir=False) as tracker:
        handle = tracker.refresh((), (disabled,))
        assert handle.result(10) == []
    assert [s.source for s in handle.skipped] == ["a.example.net:443"]


def local(name):
    return AuthAccount(id=name, provider=Provider.CLAUDE, email=None, display_name=name,
                       path="/nowhere/" + name)


def test_interleaved_lets_sources_take_turns():
    a = [replace(local("a%d" % i), source="a:1") for i in range(3)]
    b = [replace(local("b%d" % i), source="b:1") for i in range(1)]
    mine = [local("l%d" % i) for i in range(2)]
    order = [x.id for x in lanes.interleaved(a + mine + b)]
    assert order == ["a0", "l0", "b0", "a1", "l1", "a2"]
    assert lanes.interleaved([]) == []


def test_account_name_prefixes_the_source_for_remote_accounts():
    assert account_fetch.account_name(local("x.json")) == "x.json"
    assert account_fetch.account_name(replace(local("x.json"), source="h:1")) == "h:1/x.json"
    assert local("x.json").source == LOCAL_SOURCE


def proxied(url, count, workers):
    proxy = management.Proxy(url, KEY, workers=workers)
    return list(remote.accounts_from_listing({"files": [{
        "name": "claude-%d.json" % index, "type": "claude", "email": "u%d@example.com" % index,
        "auth_index": "%016x" % index} for index in range(count)]}, proxy).claude)


def test_lanes_let_a_proxy_in_only_as_its_calls_finish():
    slow = proxied("https://a.example.net", 3, workers=1)
    mine = [local("l%d" % i) for i in range(2)]
    queue = lanes.Lanes(lanes.interleaved(slow + mine))
    taken = [queue.take() for _ in range(3)]
    assert [account.id for _, account in taken] == ["claude-0.json", "l0", "l1"]
    assert queue.take() is None  # the proxy's one slot is busy: nothing else may start
    queue.done(taken[1][1])  # a local account has no lane: that frees nothing
    assert queue.take() is None
    queue.done(taken[0][1])
    assert queue.take()[1].id == "claude-1.json"
    assert queue.take() is None


def test_superseded_refresh_never_sends_the_accounts_still_waiting(tmp_path):
    import threading
    import responses as responses_lib
    accounts = proxied("https://a.example.net", 4, workers=1)
    started, release, calls = threading.Event(), threading.Event(), []

    def callback(request):
        calls.append(json.loads(request.body)["auth_index"])
        started.set()
        release.wait(10)
        return 200, {}, json.dumps(envelope(200, load_payload("claude_max")))

    with responses_lib.RequestsMock() as mock:
        mock.add_callback("POST", "https://a.example.net/v0/management/api-call",
                          callback=callback)
        with module.OAuthUsageTracker(settings=Settings(), state_dir=tmp_path) as tracker:
            old = tracker.refresh((), accounts)
            assert started.wait(10)
            new = tracker.refresh((), accounts[:1])  # supersedes; the old one's queue is dropped
            release.set()
            assert len(new.result(10)) == 1
            assert old.superseded
    assert len(calls) == 2  # the old generation's running call and the new one, nothing more
    assert "claude/a.example.net:443/claude-0.json" in (tmp_path / "state.json").read_text()


def test_state_keys_of_two_proxies_never_collide_when_both_parts_hold_a_slash(
        mocked_responses, tmp_path):
    """`h:443` + `x/a.json` and `h:443/x` + `a.json` would both be `h:443/x/a.json` unescaped."""
    def named(url, name, index):
        return remote.accounts_from_listing({"files": [{
            "name": name, "type": "claude", "auth_index": index}]},
            management.Proxy(url, KEY)).claude[0]
    first, second = named("https://h.example.net", "x/a.json", "01"), \
        named("https://h.example.net/x", "a.json", "02")
    assert first.source == "h.example.net:443" and second.source == "h.example.net:443/x"
    assert module.state_key(first) != module.state_key(second)
    mocked_responses.post("https://h.example.net/v0/management/api-call",
                          json=envelope(429, load_payload("claude_429"), {"Retry-After": ["600"]}))
    mocked_responses.post("https://h.example.net/x/v0/management/api-call",
                          json=envelope(200, load_payload("claude_max")))
    mocked_responses.post("https://h.example.net/x/v0/management/api-call",
                          json=envelope(200, load_payload("claude_max")))
    with module.OAuthUsageTracker(settings=Settings(), state_dir=tmp_path) as tracker:
        tracker.refresh_and_wait((), (first, second))
        again = {u.source: u for u in tracker.refresh_and_wait((), (first, second))}
    assert "cooldown" in again["h.example.net:443"].error  # its own 429, remembered
    assert again["h.example.net:443/x"].error is None  # not the other one's cooldown
    assert len(mocked_responses.calls) == 3
    stored = json.loads((tmp_path / "state.json").read_text())["accounts"]
    assert set(stored) == {"claude/h.example.net:443/x%2Fa.json",
                           "claude/h.example.net:443%2Fx/a.json"}
    # A proxy that cannot be listed gets back exactly its own remembered accounts.
    remembered = [("claude", k.partition("/")[2]) for k in stored] + [("claude", "local.json")]
    for proxy_url, name in (("https://h.example.net", "x/a.json"),
                            ("https://h.example.net/x", "a.json")):
        proxy = management.Proxy(proxy_url, KEY)
        found = remote._unlisted(proxy, "down", remembered, login_problem=False)
        assert [a.id for a in found.claude] == [name]


def test_local_state_keys_keep_their_format():
    account = AuthAccount(id="claude-a%2F.json", provider=Provider.CLAUDE, email=None,
                          display_name="a", path="/x/claude-a%2F.json")
    assert module.state_key(account) == ("claude", "claude-a%2F.json")


@pytest.mark.parametrize("outcome", ["accepted", "stopped"])
def test_lanes_hold_a_proxy_to_one_call_until_its_probe_is_answered(outcome):
    import threading
    from oauth_usage_tracker.errors import ProviderError
    accounts = proxied("https://a.example.net", 4, workers=4)
    proxy = accounts[0].remote.proxy
    mine = local("l0")
    queue = lanes.Lanes(lanes.interleaved(accounts + [mine]))
    probe = queue.take()
    assert probe[1].id == "claude-0.json" and queue.take()[1].id == "l0"
    got, waiting = [], threading.Event()

    def worker():
        waiting.set()
        got.append(queue.take())
    thread = threading.Thread(target=worker)
    thread.start()
    assert waiting.wait(5)
    thread.join(0.3)
    assert thread.is_alive() and not got  # gated: it waits for the probe, it does not leave
    queue.done(mine)  # a local account finishing opens nothing
    thread.join(0.3)
    assert thread.is_alive()
    if outcome == "accepted":
        proxy._accept("api-call")
    else:
        proxy.stop(ProviderError("rejected", status=401, login_problem=True))
    queue.done(probe[1])
    thread.join(5)
    assert not thread.is_alive() and got[0][1].id == "claude-1.json"
    assert [queue.take()[1].id for _ in range(2)] == ["claude-2.json", "claude-3.json"]


def test_lanes_leave_when_nothing_is_gated():
    accounts = proxied("https://a.example.net", 3, workers=4)
    queue = lanes.Lanes(accounts)
    accounts[0].remote.proxy._accept("api-call")
    assert [queue.take()[1].id for _ in range(3)] == [a.id for a in accounts]
    assert queue.take() is None  # nothing waiting: no wait
