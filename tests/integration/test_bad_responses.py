"""Bad responses (SPEC §5, §6, §9): whatever a real loopback server sends, or fails to send, the
account gets a sentence for people within the timeout, the run ends in bounded time, the other
accounts are fetched as usual, a failed token refresh leaves the credential file as it was and is
never sent twice, and no token reaches stdout or stderr, at -vv included.

Each run is the script in-process (`cli.main`) with `--json --timeout 1 -vv` against a
`HostileServer` that answers healthy tokens properly and the victim's requests with one fault.
"""
import json
import os
import re
from dataclasses import dataclass
from typing import Optional

import pytest

from oauth_usage_tracker import refresh as refresh_module
from oauth_usage_tracker import credentials, demo
from support import (CLAUDE_ACCESS, CLAUDE_REFRESH, CODEX_ACCESS, SECRETS,
                     claude_credentials, codex_credentials, write_compact)

import hostile_server as hs
from hostile_server import CLAUDE_PATH, CODEX_PATH, TOKEN_PATH

TIMEOUT = 1
BOUND = 3 * TIMEOUT + 2
PAST = "2000-01-01T00:00:00Z"

HEALTHY = {
    "claude": ("healthy-claude-access-4f1c2a9e7b3d5f60a1b2c3d4e5f60718293a4b5c",
               "healthy-claude-refresh-8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b"),
    "codex": ("healthy-codex-access-1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d",
              "healthy-codex-refresh-9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c"),
}
HEALTHY_IDS = {"claude": "claude-healthy@example.com.json",
               "codex": "codex-healthy@example.com.json"}
VICTIM_IDS = {"claude": "claude-victim@example.com.json", "codex": "codex-victim@example.com.json"}
USER_KEYS = {"label": "main", "priority": 3, "headers": {"X-A": "b"}, "excluded_models": ["m"]}
ALL_TOKENS = SECRETS + tuple(token for pair in HEALTHY.values() for token in pair)

CLOUDFLARE = demo.CLOUDFLARE_PAGE
CF_HEADERS = {"cf-mitigated": "challenge", "Server": "cloudflare"}
OK = "ok"  # the body is valid after all: the victim gets windows, no error


@dataclass(frozen=True)
class Kind:
    """One way a response can go wrong, and what the victim's result must look like."""

    fault: hs.Fault
    expect: str
    """A regex the error must match (case-insensitive), or OK for windows."""
    status: Optional[int] = None
    """The HTTP status of the fault, when it has one (401/403 may trigger one Claude refresh)."""
    either: bool = False
    """True when both a clear error matching `expect` and valid windows are acceptable."""


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(credentials, "READ_PAUSE", 0.001)
    real = refresh_module.refresh_tokens

    def short_invalid_grant_poll(*args, **kwargs):
        kwargs["invalid_grant_wait"] = 0.2
        return real(*args, **kwargs)

    monkeypatch.setattr(refresh_module, "refresh_tokens", short_invalid_grant_poll)


# --- the faults ---------------------------------------------------------------------------------

def truncated(provider):
    payload = json.dumps(_good_payload(provider)).encode()
    return hs.send_response(200, payload[:len(payload) // 2])


def _good_payload(provider):
    from datetime import datetime, timezone
    now = datetime.now(timezone.utc)
    return (demo.claude_payload if provider == "claude" else demo.codex_payload)([10.0, 20.0], now)


def nan_body(provider):
    if provider == "codex":
        text = ('{"rate_limit": {"primary_window": {"used_percent": NaN, "reset_at": Infinity, '
                '"limit_window_seconds": -Infinity, "reset_after_seconds": NaN}, '
                '"secondary_window": {"used_percent": Infinity, "reset_at": -Infinity}}}')
    else:
        text = ('{"five_hour": {"utilization": NaN, "resets_at": Infinity}, '
                '"seven_day": {"utilization": Infinity, "resets_at": NaN}, '
                '"seven_day_opus": {"utilization": -Infinity}}')
    return hs.send_response(200, text.encode())


def big_body(provider, chunked=False):
    payload = _good_payload(provider)
    payload["padding"] = "x" * (5 * 1024 * 1024)
    body = json.dumps(payload).encode()
    if chunked:
        pieces = [body[i:i + 65536] for i in range(0, len(body), 65536)]
        return hs.send_chunked(hs.chunked(pieces))
    return hs.send_response(200, body)


def valid_chunked(provider):
    body = json.dumps(_good_payload(provider)).encode()
    return hs.send_chunked(hs.chunked([body[:7], body[7:40], body[40:]]))


def valid_http10(provider):
    body = json.dumps(_good_payload(provider)).encode()
    return hs.send(hs.head(200, {"Content-Type": "application/json"}, version="HTTP/1.0") + body)


def continue_then_valid(provider):
    body = json.dumps(_good_payload(provider)).encode()
    return hs.send(hs.head(100, {}, reason="Continue") + hs.response(200, body))


def bom_body(provider):
    return hs.send_response(200, b"\xef\xbb\xbf" + json.dumps(_good_payload(provider)).encode())


def length_garbage(provider):
    body = json.dumps(_good_payload(provider)).encode()
    return hs.send(hs.head(200, {"Content-Type": "application/json", "Content-Length": "abc",
                                 "Connection": "close"}) + body)


def length_short(provider):
    body = json.dumps(_good_payload(provider)).encode()
    return hs.send(hs.head(200, {"Content-Type": "application/json",
                                 "Content-Length": str(len(body) // 3),
                                 "Connection": "close"}) + body)


def redirect(status):
    def fault(server, conn, request):
        conn.sendall(hs.response(status, b"", {"Location": server.base_url + hs.STOLEN_PATH}))
    return fault


def echo_token(status):
    """An error page that quotes the credential it was sent, in the body and in headers."""
    def fault(server, conn, request):
        secret = request.credential
        body = json.dumps({"error": {"message": "bad token %s" % secret, "token": secret,
                                     "type": "authentication_error"}}).encode()
        conn.sendall(hs.response(status, body, {"X-Echo": secret, "Retry-After": secret,
                                                "WWW-Authenticate": "Bearer " + secret}))
    return fault


def many_headers():
    headers = {"X-H%d" % i: "v" for i in range(200)}
    headers.update({"Content-Length": "2", "Content-Type": "application/json"})
    return hs.send(hs.head(200, headers) + b"{}")


def deep(levels, kind="array"):
    if kind == "array":
        body = b"[" * levels + b"]" * levels
    else:
        body = b'{"a":' * levels + b"1" + b"}" * levels
    return hs.send_response(200, body)


def generic_kinds(provider):
    """Faults that either usage endpoint can send."""
    return {
        "html-200-cloudflare-challenge": Kind(hs.send_response(200, CLOUDFLARE, CF_HEADERS,
                                                               "text/html"), "HTML"),
        "html-403-cloudflare-challenge": Kind(hs.send_response(403, CLOUDFLARE, CF_HEADERS,
                                                               "text/html"), "HTML|403", 403),
        "html-200-without-content-type": Kind(hs.send_response(200, CLOUDFLARE, {}, None),
                                              "HTML"),
        "html-503-maintenance-page": Kind(hs.send_response(503, b"<html><body>down</body></html>",
                                                           {}, "text/html"), "503", 503),
        "empty-200": Kind(hs.send_response(200, b""), "empty"),
        "empty-200-no-length-then-close": Kind(hs.send(hs.head(200, {"Connection": "close"})),
                                               "empty"),
        "whitespace-200": Kind(hs.send_response(200, b" \r\n\t "), "empty"),
        "truncated-json": Kind(truncated(provider), "not valid JSON"),
        "nan-and-infinity": Kind(nan_body(provider), "windows"),
        "body-5mib-with-length": Kind(big_body(provider), "larger than"),
        "body-5mib-chunked": Kind(big_body(provider, chunked=True), "larger than"),
        "arrays-nested-100000-deep": Kind(deep(100000), "not valid JSON"),
        "objects-nested-100000-deep": Kind(deep(100000, "object"), "not valid JSON"),
        "arrays-nested-900-deep": Kind(deep(900), "windows"),
        "plain-text-200": Kind(hs.send_response(200, b"OK", {}, "text/plain"), "not valid JSON"),
        "invalid-utf8-200": Kind(hs.send_response(200, b'{"x": "\xff\xfe\xfa"}'),
                                 "not valid JSON"),
        "utf8-bom-before-json": Kind(bom_body(provider), "not valid JSON", either=True),
        "json-null": Kind(hs.send_response(200, b"null"), "windows"),
        "json-list": Kind(hs.send_response(200, b"[1, 2, 3]"), "windows"),
        "json-number": Kind(hs.send_response(200, b"42"), "windows"),
        "json-string": Kind(hs.send_response(200, b'"five_hour"'), "windows"),
        "json-true": Kind(hs.send_response(200, b"true"), "windows"),
        "json-empty-object": Kind(hs.send_response(200, b"{}"), "windows"),
        "429-without-retry-after": Kind(hs.send_response(429, b'{"error": {"type": '
                                                         b'"rate_limit_error"}}'), "429", 429),
        "429-retry-after-300": Kind(hs.send_response(429, b"{}", {"Retry-After": "300"}),
                                    "429", 429),
        "429-retry-after-http-date": Kind(hs.send_response(
            429, b"{}", {"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}), "429", 429),
        "429-retry-after-garbage": Kind(hs.send_response(429, b"{}", {"Retry-After": "soon-ish"}),
                                        "429", 429),
        "429-retry-after-negative": Kind(hs.send_response(429, b"{}", {"Retry-After": "-5"}),
                                         "429", 429),
        "429-retry-after-huge": Kind(hs.send_response(429, b"{}", {"Retry-After": "1e400"}),
                                     "429", 429),
        "500-json": Kind(hs.send_response(500, b'{"error": "internal"}'), "500", 500),
        "502-text": Kind(hs.send_response(502, b"Bad Gateway", {}, "text/plain"), "502", 502),
        "503-html": Kind(hs.send_response(503, CLOUDFLARE, {}, "text/html"), "503", 503),
        "504-empty": Kind(hs.send_response(504, b""), "504", 504),
        "301-redirect-elsewhere": Kind(redirect(301), "301|redirect", 301),
        "302-redirect-elsewhere": Kind(redirect(302), "302|redirect", 302),
        "307-redirect-elsewhere": Kind(redirect(307), "307|redirect", 307),
        "204-no-content": Kind(hs.send_response(204, b"", {}, None), "204", 204),
        "status-999": Kind(hs.send_response(999, b"{}"), "999", 999),
        "error-page-echoes-the-token": Kind(echo_token(500), "500", 500),
        "401-echoes-the-token": Kind(echo_token(401), "401", 401),
        "accept-and-never-answer": Kind(hs.never_answer, "timed out"),
        "headers-then-stall": Kind(hs.headers_then_stall, "timed out"),
        "part-of-body-then-stall": Kind(hs.body_then_stall, "timed out"),
        "body-one-byte-every-200ms": Kind(hs.slow_drip(0.2, BOUND + 0.5), "timed out"),
        "close-mid-body": Kind(hs.close_mid_body, "broke off|closed|connection"),
        "close-without-answer": Kind(hs.close_without_answer, "closed|reset|connection"),
        "reset-before-answer": Kind(hs.reset_before_answer, "reset"),
        "reset-mid-body": Kind(hs.reset_mid_body, "reset|broke off"),
        "gzip-bomb-64mib": Kind(hs.send_response(200, hs.gzip_bomb(64),
                                                 {"Content-Encoding": "gzip"}), "larger than"),
        "bad-gzip-encoding": Kind(hs.send_response(200, b"this is not gzip",
                                                   {"Content-Encoding": "gzip"}),
                                  "decod|broke off|compress|gzip|connection"),
        "bad-deflate-encoding": Kind(hs.send_response(200, b"\x00\x01garbage",
                                                      {"Content-Encoding": "deflate"}),
                                     "decod|broke off|compress|deflate|connection"),
        "chunked-garbage-size": Kind(hs.send_chunked(b"zz\r\nhello\r\n0\r\n\r\n"),
                                     "broke off|chunk|connection"),
        "chunked-without-last-chunk": Kind(hs.send_chunked(hs.chunked([b'{"a": '], False)),
                                           "broke off|chunk|connection|not valid JSON"),
        "chunked-valid": Kind(valid_chunked(provider), OK),
        "http-1.0-no-length-valid": Kind(valid_http10(provider), OK),
        "100-continue-then-valid": Kind(continue_then_valid(provider), OK),
        "garbage-status-line": Kind(hs.send(b"HELLO THERE\r\n\r\n"), "connection|response|reset"),
        "header-line-100kib": Kind(hs.send(hs.head(200, {"X-Big": "a" * 102400,
                                                         "Content-Length": "2"}) + b"{}"),
                                   "connection|header|reset"),
        "200-headers": Kind(many_headers(), "connection|header|reset"),
        "content-length-shorter-than-body": Kind(length_short(provider), "not valid JSON"),
        "content-length-garbage": Kind(length_garbage(provider), "connection|length|JSON",
                                       either=True),
    }


def codex_payload_kinds():
    """Valid JSON of the wrong shape at every level of wham/usage."""
    good = {"used_percent": 22, "limit_window_seconds": 18000, "reset_at": 4102444800}
    weekly = {"used_percent": 40, "limit_window_seconds": 604800, "reset_after_seconds": 3600}

    def body(primary=good, secondary=weekly, **top):
        payload = {"plan_type": "plus", "rate_limit": {"primary_window": primary,
                                                       "secondary_window": secondary}}
        payload.update(top)
        return payload

    def window(**changes):
        result = dict(good)
        result.update(changes)
        return result

    kinds = {
        # The generic parser may find the windows in the list: either outcome is fine.
        "rate_limit-as-list": ({"rate_limit": [good, weekly]}, OK),
        "rate_limit-as-list-of-garbage": ({"rate_limit": [1, "x", None, []]}, "windows"),
        "rate_limit-as-string": ({"rate_limit": "primary_window"}, "windows"),
        "rate_limit-as-number": ({"rate_limit": 5}, "windows"),
        "rate_limit-null-no-other-windows": ({"rate_limit": None, "plan_type": "plus"}, "windows"),
        "primary_window-as-string": (body(primary="22%"), OK),
        "primary_window-as-list": (body(primary=[good], secondary=None), "windows"),
        "both-windows-null": (body(primary=None, secondary=None), "windows"),
        "used_percent-as-numeric-string": (body(primary=window(used_percent="22")), OK),
        "used_percent-as-garbage-string": (body(primary=window(used_percent="lots")), OK),
        "used_percent-as-bool": (body(primary=window(used_percent=True, reset_at="x")), OK),
        "used_percent-null": (body(primary=window(used_percent=None)), OK),
        "used_percent-negative": (body(primary=window(used_percent=-50)), OK),
        "used_percent-250": (body(primary=window(used_percent=250)), OK),
        "used_percent-1e308": (body(primary=window(used_percent=1e308)), OK),
        "used_percent-as-object": (body(primary=window(used_percent={"v": 1})), OK),
        "reset_at-garbage": (body(primary=window(reset_at="tomorrow-ish")), OK),
        "reset_at-1e300": (body(primary=window(reset_at=1e300)), OK),
        "reset_at-negative-huge": (body(primary=window(reset_at=-1e300)), OK),
        "reset_at-as-list": (body(primary=window(reset_at=[1, 2])), OK),
        "limit_window_seconds-garbage": (body(primary=window(limit_window_seconds="five")), OK),
        "limit_window_seconds-negative": (body(primary=window(limit_window_seconds=-18000)), OK),
        "reset_after_seconds-1e30": (body(primary=window(reset_at=None,
                                                         reset_after_seconds=1e30)), OK),
        "additional_rate_limits-garbage": (body(additional_rate_limits=[
            1, "x", None, {"rate_limit": "x"}, {"limit_name": 5, "rate_limit": {
                "primary_window": "y", "secondary_window": [1]}}]), OK),
        "additional_rate_limits-as-object": (body(additional_rate_limits={"a": 1}), OK),
        "credits-and-plan-garbage": (body(credits="lots", plan_type=5,
                                          spend_control=[None]), OK),
    }
    return {name: Kind(hs.send_json(payload), expect) for name, (payload, expect) in kinds.items()}


def claude_payload_kinds():
    """Valid JSON of the wrong shape at every level of oauth/usage."""
    good = {"utilization": 37.0, "resets_at": "2099-11-24T17:00:00.123456+00:00"}

    def body(**buckets):
        payload = {"five_hour": good, "seven_day": None}
        payload.update(buckets)
        return payload

    def bucket(**changes):
        result = dict(good)
        result.update(changes)
        return result

    kinds = {
        "five_hour-as-list-only-bucket": ({"five_hour": [good]}, "windows"),
        "five_hour-as-string-only-bucket": ({"five_hour": "37%"}, "windows"),
        "five_hour-as-number-only-bucket": ({"five_hour": 37}, "windows"),
        "every-bucket-null": ({key: None for key in ("five_hour", "seven_day", "seven_day_opus",
                                                     "seven_day_sonnet")}, "windows"),
        "utilization-as-object": ({"five_hour": bucket(utilization={"v": 37})}, "windows"),
        "utilization-as-bool": ({"five_hour": bucket(utilization=True)}, "windows"),
        "utilization-null": ({"five_hour": bucket(utilization=None)}, "windows"),
        "utilization-as-numeric-string": (body(five_hour=bucket(utilization="37")), OK),
        "utilization-with-percent-sign": (body(five_hour=bucket(utilization="37%")), OK),
        "utilization-negative": (body(five_hour=bucket(utilization=-5)), OK),
        "utilization-101": (body(five_hour=bucket(utilization=101)), OK),
        "resets_at-as-unix-number": (body(five_hour=bucket(resets_at=4102444800)), OK),
        "resets_at-garbage": (body(five_hour=bucket(resets_at="when it's done")), OK),
        "resets_at-as-object": (body(five_hour=bucket(resets_at={"at": 1})), OK),
        "resets_at-year-0001": (body(five_hour=bucket(resets_at="0001-01-01T00:00:00Z")), OK),
        "resets_at-year-9999": (body(five_hour=bucket(resets_at="9999-12-31T23:59:59Z")), OK),
        "limits-as-string": (body(limits="weekly"), OK),
        "limits-with-wrong-types": (body(limits=[1, None, "x", {"kind": 5, "percent": "lots",
                                                                "scope": "x", "resets_at": []},
                                                 {"kind": "weekly_scoped", "scope": {
                                                     "model": "Opus"}, "percent": None}]), OK),
        "extra_usage-garbage": (body(extra_usage={"is_enabled": "yes", "utilization": {},
                                                  "monthly_limit": "NaN",
                                                  "used_credits": [1]}), OK),
        "extra_usage-as-list": (body(extra_usage=[1, 2]), OK),
        "unknown-bucket-shapes": (body(seven_day_iguana={"utilization": "x"}, iguana_necktie=[],
                                       seven_day_breakdown="x"), OK),
    }
    return {name: Kind(hs.send_json(payload), expect) for name, (payload, expect) in kinds.items()}


def token_kinds():
    """Faults of the token endpoint (the victim's token has expired, so it refreshes first)."""
    def grant(**fields):
        return hs.send_json(fields)

    return {
        "500-json": Kind(hs.send_response(500, b'{"error": "server_error"}'), "500", 500),
        "502-html": Kind(hs.send_response(502, CLOUDFLARE, {}, "text/html"), "502", 502),
        "503-retry-after": Kind(hs.send_response(503, b"", {"Retry-After": "30"}), "503", 503),
        "html-200-challenge": Kind(hs.send_response(200, CLOUDFLARE, CF_HEADERS, "text/html"),
                                   "access token|HTML"),
        "html-403-challenge": Kind(hs.send_response(403, CLOUDFLARE, CF_HEADERS, "text/html"),
                                   "403|HTML", 403),
        "garbage-200": Kind(hs.send_response(200, b"tokens? what tokens", {}, "text/plain"),
                            "access token|JSON"),
        "empty-200": Kind(hs.send_response(200, b""), "access token|empty"),
        "truncated-json-200": Kind(hs.send_response(200, b'{"access_token": "sk-ant-oat01-ab'),
                                   "access token|JSON"),
        "json-list-200": Kind(hs.send_response(200, b'["access_token"]'), "access token"),
        "access_token-as-number": Kind(grant(access_token=12345, expires_in=28800),
                                       "access token"),
        "access_token-empty": Kind(grant(access_token="", refresh_token="r" * 40),
                                   "access token"),
        "access_token-null": Kind(grant(access_token=None, refresh_token="r" * 40),
                                  "access token"),
        "nan-and-infinity-200": Kind(hs.send_response(200, b'{"access_token": NaN, '
                                                      b'"expires_in": Infinity}'),
                                     "access token"),
        "body-5mib": Kind(hs.send_response(200, b'{"pad": "' + b"x" * (5 << 20) + b'"}'),
                          "larger than"),
        "gzip-bomb-64mib": Kind(hs.send_response(200, hs.gzip_bomb(64),
                                                 {"Content-Encoding": "gzip"}), "larger than"),
        "chunked-garbage-size": Kind(hs.send_chunked(b"-1\r\nx\r\n"),
                                     "broke off|chunk|connection"),
        "accept-and-never-answer": Kind(hs.never_answer, "timed out"),
        "part-of-body-then-stall": Kind(hs.body_then_stall, "timed out"),
        "body-one-byte-every-200ms": Kind(hs.slow_drip(0.2, BOUND + 0.5), "timed out"),
        "close-mid-body": Kind(hs.close_mid_body, "broke off|closed|connection"),
        "close-without-answer": Kind(hs.close_without_answer, "closed|reset|connection"),
        "reset-before-answer": Kind(hs.reset_before_answer, "reset"),
        "429-retry-after-300": Kind(hs.send_response(429, b'{"error": {"type": '
                                                     b'"rate_limit_error"}}',
                                                     {"Retry-After": "300"}), "429", 429),
        "429-without-retry-after": Kind(hs.send_response(429, b"{}"), "429", 429),
        "400-invalid_grant": Kind(hs.send_response(400, b'{"error": "invalid_grant", '
                                                   b'"error_description": "spent"}'),
                                  "invalid_grant|log in again", 400),
        "400-invalid_request": Kind(hs.send_response(400, b'{"error": "invalid_request"}'),
                                    "400", 400),
        "401-echoes-the-refresh-token": Kind(echo_token(401), "401", 401),
        "500-echoes-the-refresh-token": Kind(echo_token(500), "500", 500),
        "302-redirect-elsewhere": Kind(redirect(302), "302|redirect", 302),
    }


# --- the scene ----------------------------------------------------------------------------------

class Scene:
    """An auth directory with a healthy account of each provider and one victim."""

    def __init__(self, auth_dir, victim, expired=False):
        self.auth_dir = auth_dir
        self.victim = victim
        for provider, (access, refresh) in HEALTHY.items():
            maker = claude_credentials if provider == "claude" else codex_credentials
            data = maker(email="healthy@example.com", access_token=access, refresh_token=refresh)
            if provider == "codex":
                data["id_token"] = ""
            write_compact(auth_dir.path / HEALTHY_IDS[provider], data)
        if victim == "claude":
            data = claude_credentials(email="victim@example.com",
                                      expired=PAST if expired else "2099-01-01T00:00:00Z",
                                      **USER_KEYS)
        else:
            data = codex_credentials(email="victim@example.com", **USER_KEYS)
        self.victim_path = write_compact(auth_dir.path / VICTIM_IDS[victim], data)
        self.victim_bytes = self.victim_path.read_bytes()
        self.victim_token = CLAUDE_ACCESS if victim == "claude" else CODEX_ACCESS

    def run(self, environ, monkeypatch, capsys, *extra):
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
        return hs.run_cli(["--auth-dir", str(self.auth_dir), "--json", "--timeout",
                           str(TIMEOUT), "-vv"] + list(extra), capsys)


def healthy_tokens():
    return {token for pair in HEALTHY.values() for token in pair}


def check_run(run, scene, kind, tokens=()):
    """What every run must show, whatever the fault."""
    assert run.elapsed < BOUND, "the run took %.1f s with a %d s timeout" % (run.elapsed, TIMEOUT)
    hs.assert_no_tokens(ALL_TOKENS + tuple(tokens), run.stdout, run.stderr)
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout
    assert all(line.startswith("oauth-usage-tracker: ") for line in run.stderr.splitlines()), \
        run.stderr
    by_id = run.accounts()
    for provider, account_id in HEALTHY_IDS.items():
        healthy = by_id[account_id]
        assert healthy["error"] is None, healthy["error"]
        assert healthy["windows"], "a healthy account lost its windows"
    victim = by_id[VICTIM_IDS[scene.victim]]
    error = victim["error"]
    if kind.expect == OK and not kind.either:
        assert error is None, error
        assert victim["windows"]
    elif kind.either and error is None:
        assert victim["windows"]
    else:
        hs.assert_sentence(error)
        assert re.search(kind.expect, error, re.IGNORECASE), error
        assert not error.startswith("Unexpected"), error
        assert run.status == 1
    for window in victim["windows"]:
        assert window["used_percent"] is None or 0 <= window["used_percent"] <= 100
        assert window["remaining_percent"] is None or 0 <= window["remaining_percent"] <= 100
    if error is None:
        assert run.status == 0, run.stderr
    return victim


USAGE_CASES = ([("codex", name, kind) for name, kind in generic_kinds("codex").items()]
               + [("codex", name, kind) for name, kind in codex_payload_kinds().items()]
               + [("claude", name, kind) for name, kind in generic_kinds("claude").items()]
               + [("claude", name, kind) for name, kind in claude_payload_kinds().items()])


@pytest.mark.parametrize("provider,name,kind", USAGE_CASES,
                         ids=["%s-usage-%s" % (p, n) for p, n, _ in USAGE_CASES])
def test_usage_endpoint_bad_response_is_that_accounts_error_only(auth_dir, monkeypatch, capsys,
                                                                 provider, name, kind):
    scene = Scene(auth_dir, provider)
    path = CODEX_PATH if provider == "codex" else CLAUDE_PATH
    with hs.HostileServer(kind.fault, path, healthy_tokens()) as server:
        run = scene.run(server.environ(), monkeypatch, capsys)
    check_run(run, scene, kind, server.issued)
    victim_usage = [r for r in server.requests if r.path == path
                    and r.credential not in healthy_tokens()]
    assert server.count(hs.STOLEN_PATH) == 0, "a redirect was followed"
    if provider == "claude" and kind.status in (401, 403):
        # One forced refresh and one retry at most (SPEC §6).
        assert server.count(TOKEN_PATH) <= 1
        assert len(victim_usage) <= 2
    else:
        assert server.count(TOKEN_PATH) == 0, "a token was refreshed for a non-auth failure"
        assert len(victim_usage) == 1, "the usage request was sent %d times" % len(victim_usage)
        assert scene.victim_path.read_bytes() == scene.victim_bytes


TOKEN_CASES = sorted(token_kinds().items())


@pytest.mark.parametrize("name,kind", TOKEN_CASES, ids=["claude-token-%s" % n for n, _ in
                                                        TOKEN_CASES])
def test_token_endpoint_fault_leaves_file_unchanged_and_is_not_resent(auth_dir, monkeypatch,
                                                                      capsys, name, kind):
    scene = Scene(auth_dir, "claude", expired=True)
    with hs.HostileServer(kind.fault, TOKEN_PATH, healthy_tokens()) as server:
        run = scene.run(server.environ(), monkeypatch, capsys, "--refresh-expired")
    check_run(run, scene, kind, server.issued)
    assert server.count(TOKEN_PATH) == 1, "the refresh was sent %d times" % server.count(
        TOKEN_PATH)
    assert scene.victim_path.read_bytes() == scene.victim_bytes
    assert server.count(hs.STOLEN_PATH) == 0
    victim_usage = [r for r in server.requests if r.path == CLAUDE_PATH
                    and r.credential not in healthy_tokens()]
    assert victim_usage == [], "usage was read with a token that failed to refresh"
    victim = run.accounts()[VICTIM_IDS["claude"]]
    assert victim["token_refreshed"] is False
    leftovers = [name for name in os.listdir(str(auth_dir)) if not name.endswith((".json",
                                                                                 ".lock"))]
    assert leftovers == []


ODD_GRANTS = {
    "expires_in-garbage": {"expires_in": "soon"},
    "expires_in-nan": {"expires_in": float("nan")},
    "expires_in-negative": {"expires_in": -5},
    "refresh_token-as-number": {"refresh_token": 12345},
    "extra-fields-of-wrong-types": {"account": "x", "organization": [1], "scope": {"a": None},
                                    "token_type": 5},
}


@pytest.mark.parametrize("name", sorted(ODD_GRANTS))
def test_token_endpoint_odd_but_valid_grant_is_written_back_once(auth_dir, monkeypatch, capsys,
                                                                 name):
    access = "odd-grant-access-%s" % os.urandom(16).hex()
    refresh = "odd-grant-refresh-%s" % os.urandom(16).hex()
    payload = {"token_type": "Bearer", "access_token": access, "refresh_token": refresh,
               "expires_in": 28800}
    payload.update(ODD_GRANTS[name])
    body = json.dumps(payload).encode()  # allow_nan: NaN goes out as the literal NaN
    scene = Scene(auth_dir, "claude", expired=True)
    kind = Kind(hs.send_response(200, body), OK)
    with hs.HostileServer(kind.fault, TOKEN_PATH, healthy_tokens()) as server:
        run = scene.run(server.environ(), monkeypatch, capsys, "--refresh-expired")
    check_run(run, scene, kind, (access, refresh))
    assert server.count(TOKEN_PATH) == 1
    written = json.loads(scene.victim_path.read_text())
    assert written["access_token"] == access
    expected_refresh = refresh if isinstance(payload["refresh_token"], str) else CLAUDE_REFRESH
    assert written["refresh_token"] == expected_refresh
    for key, value in USER_KEYS.items():
        assert written[key] == value
    assert run.accounts()[VICTIM_IDS["claude"]]["token_refreshed"] is True


DEAD = [(endpoint, death) for endpoint in ("codex-usage", "claude-usage", "claude-token")
        for death in ("connection-refused", "never-accepted")]


@pytest.mark.parametrize("endpoint,death", DEAD, ids=["%s-%s" % pair for pair in DEAD])
def test_dead_endpoint_fails_its_accounts_in_bounded_time(auth_dir, monkeypatch, capsys,
                                                          endpoint, death):
    """Nothing listening, or a listener that never accepts: every account of that endpoint fails
    with a sentence; the other provider's accounts are fetched."""
    victim = "codex" if endpoint == "codex-usage" else "claude"
    scene = Scene(auth_dir, victim, expired=endpoint == "claude-token")
    listener = hs.accept_never_read_listener() if death == "never-accepted" else None
    dead_base = ("http://127.0.0.1:%d" % (listener.getsockname()[1] if listener
                                           else hs.refused_port()))
    try:
        with hs.HostileServer() as server:
            bases = {"codex-usage": server.base_url, "claude-usage": server.base_url,
                     "claude-token": server.base_url}
            bases[endpoint] = dead_base
            environ = hs.endpoint_environ(bases["codex-usage"], bases["claude-usage"],
                                          bases["claude-token"])
            run = scene.run(environ, monkeypatch, capsys, "--refresh-expired")
    finally:
        if listener is not None:
            listener.close()
    assert run.elapsed < BOUND
    hs.assert_no_tokens(ALL_TOKENS + tuple(server.issued), run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    by_id = run.accounts()
    other = "claude" if victim == "codex" else "codex"
    assert by_id[HEALTHY_IDS[other]]["error"] is None and by_id[HEALTHY_IDS[other]]["windows"]
    failed = [by_id[VICTIM_IDS[victim]]]
    if endpoint != "claude-token":
        failed.append(by_id[HEALTHY_IDS[victim]])  # same endpoint, same fate
    else:
        assert by_id[HEALTHY_IDS["claude"]]["error"] is None
    expect = "refused" if death == "connection-refused" else "timed out"
    for account in failed:
        hs.assert_sentence(account["error"])
        assert re.search(expect, account["error"], re.IGNORECASE), account["error"]
    assert scene.victim_path.read_bytes() == scene.victim_bytes
    assert run.status == 1


def test_claude_usage_cloudflare_challenge_does_not_rotate_the_token(auth_dir, monkeypatch,
                                                                     capsys):
    """A 403 HTML challenge comes from the CDN, not from the API (FACTS: "a CDN block, not an
    auth failure"): refreshing would spend the single-use refresh token for nothing."""
    scene = Scene(auth_dir, "claude")
    fault = hs.send_response(403, CLOUDFLARE, CF_HEADERS, "text/html")
    with hs.HostileServer(fault, CLAUDE_PATH, healthy_tokens()) as server:
        run = scene.run(server.environ(), monkeypatch, capsys)
    hs.assert_no_tokens(ALL_TOKENS + tuple(server.issued), run.stdout, run.stderr)
    error = run.accounts()[VICTIM_IDS["claude"]]["error"]
    hs.assert_sentence(error)
    assert server.count(TOKEN_PATH) == 0, "a Cloudflare page made us rotate the refresh token"
    assert scene.victim_path.read_bytes() == scene.victim_bytes


def test_many_faults_in_one_run_each_stay_with_their_account(auth_dir, monkeypatch, capsys):
    """Every Codex fault at once, one victim account each, on 16 workers: each account gets
    its own error, the healthy ones their windows, and the run still ends in bounded time."""
    # The slow drip has its own test; here it would only stretch the run while it fails.
    kinds = {name: kind for name, kind in generic_kinds("codex").items()
             if name != "body-one-byte-every-200ms"}
    by_token = {}
    for index, (name, kind) in enumerate(sorted(kinds.items())):
        token = "victim-%02d-%s" % (index, os.urandom(12).hex())
        by_token[token] = (name, kind)
        data = codex_credentials(email="v%02d@example.com" % index, access_token=token,
                                 id_token="")
        write_compact(auth_dir.path / ("codex-v%02d.json" % index), data)
    for provider, (access, refresh) in HEALTHY.items():
        maker = claude_credentials if provider == "claude" else codex_credentials
        write_compact(auth_dir.path / HEALTHY_IDS[provider],
                      maker(email="healthy@example.com", access_token=access,
                            refresh_token=refresh, id_token=""))

    def dispatch(server, conn, request):
        by_token[request.credential][1].fault(server, conn, request)

    with hs.HostileServer(dispatch, CODEX_PATH, healthy_tokens()) as server:
        for name, value in server.environ().items():
            monkeypatch.setenv(name, value)
        run = hs.run_cli(["--auth-dir", str(auth_dir), "--json", "--timeout", str(TIMEOUT),
                          "--workers", "16", "-vv"], capsys)
    # 60 accounts on 16 workers: a few rounds of timeouts, never one per account in a row.
    assert run.elapsed < 4 * BOUND
    hs.assert_no_tokens(ALL_TOKENS + tuple(by_token), run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    by_id = run.accounts()
    for account_id in HEALTHY_IDS.values():
        assert by_id[account_id]["error"] is None and by_id[account_id]["windows"]
    for index, (name, kind) in enumerate(sorted(kinds.items())):
        account = by_id["codex-v%02d.json" % index]
        if kind.expect == OK or (kind.either and account["error"] is None):
            assert account["windows"], name
        else:
            hs.assert_sentence(account["error"])
            assert re.search(kind.expect, account["error"], re.IGNORECASE), (name,
                                                                               account["error"])
