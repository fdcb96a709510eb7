"""One process of the refresh race (run by test_refresh_race.py, not collected by pytest).

    race_worker.py fetch  AUTH_DIR             refresh one Claude account with the tracker
    race_worker.py reader FILE STOP_FILE       read FILE as fast as possible until STOP_FILE exists
    race_worker.py writer FILE TOKEN_URL DELAY CLIProxyAPI-style: rotate the token, then DELAY s
                                               after the start rewrite the file in place

Each prints `ready` once everything slow (imports, discovery, its own token request) is done, then
waits for a line on stdin, so that all processes start the race at the same moment (the reader
starts polling at once). The last line printed is a JSON object with the outcome.
"""
import json
import os
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone


def ready_then_wait_for_go() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()


def fetch(auth_dir: str) -> dict:
    from oauth_usage_tracker import OAuthUsageTracker, Settings, discover_accounts

    found = discover_accounts(auth_dir)
    (account,) = found.claude
    settings = Settings.from_environ(os.environ, include_expired=True)
    tracker = OAuthUsageTracker(settings=settings)
    ready_then_wait_for_go()
    try:
        (result,) = tracker.refresh_and_wait([], [account])
    finally:
        tracker.close()
    return {"pid": os.getpid(), "error": result.error, "windows": len(result.windows),
            "is_loading": result.is_loading, "token_refreshed": result.token_refreshed}


def reader(path: str, stop_file: str) -> dict:
    reads = torn = 0
    kinds = {}
    tokens = set()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        if reads % 32 == 0 and os.path.exists(stop_file):
            break
        reads += 1
        problem = None
        try:
            with open(path, "rb") as handle:
                data = handle.read()
            parsed = json.loads(data.decode("utf-8"))
            if isinstance(parsed, dict):
                tokens.add(parsed.get("refresh_token"))
            else:
                problem = "not an object"
        except FileNotFoundError:
            problem = "missing"
        except ValueError:
            problem = "empty" if not data.strip() else "partial"
        if problem:
            torn += 1
            kinds[problem] = kinds.get(problem, 0) + 1
    return {"reads": reads, "torn": torn, "kinds": kinds, "refresh_tokens_seen": len(tokens)}


def writer(path: str, token_url: str, delay: str) -> dict:
    with open(path, "rb") as handle:
        data = json.loads(handle.read().decode("utf-8"))
    form = urllib.parse.urlencode({"grant_type": "refresh_token",
                                   "client_id": "9d1c250a-e61b-44d9-88ed-5944d1962f5e",
                                   "refresh_token": data["refresh_token"]}).encode("ascii")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(token_url, data=form, headers={
        "Content-Type": "application/x-www-form-urlencoded", "User-Agent": "Go-http-client/1.1"})
    with opener.open(request, timeout=15) as response:
        grant = json.loads(response.read().decode("utf-8"))
    now = datetime.now(timezone.utc)
    data.update(access_token=grant["access_token"], refresh_token=grant["refresh_token"],
                expired=(now + timedelta(seconds=grant["expires_in"])).isoformat(),
                last_refresh=now.isoformat())
    body = json.dumps(data, separators=(",", ":")).encode("utf-8")
    ready_then_wait_for_go()
    time.sleep(float(delay))
    # What CLIProxyAPI's os.WriteFile amounts to, slowed down: O_TRUNC, then the bytes, here in
    # two halves, so readers can catch the file empty and then cut off mid-document.
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        time.sleep(0.05)
        os.write(fd, body[: len(body) // 2])
        time.sleep(0.01)
        os.write(fd, body[len(body) // 2:])
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"pid": os.getpid(), "access_token": grant["access_token"],
            "refresh_token": grant["refresh_token"]}


def main(argv) -> int:
    mode, args = argv[1], argv[2:]
    outcome = {"fetch": fetch, "reader": reader, "writer": writer}[mode](*args)
    sys.stdout.write(json.dumps(outcome) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
