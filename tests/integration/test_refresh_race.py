"""The refresh race (SPEC §6 "Token refresh"): many real processes, one expired Claude token.

Anthropic refresh tokens are single-use. If two of our processes (cron overlapping a --watch,
two timers…) both send the same one, the second gets invalid_grant and the login can be revoked.
These tests start real OS processes on one credential file, release them at the same moment, and
check that exactly one refresh reaches the token endpoint, that every process still gets its
usage, and that a reader polling the file the whole time never sees it torn by our writes.
"""
import json
import os
import select
import stat
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from oauth_usage_tracker import demo

WORKER = Path(__file__).with_name("race_worker.py")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 6
TIMEOUT = 60.0
EMAIL = "racer@example.com"
ACCESS, REFRESH = "race-access-original", "race-refresh-original"
USER_KEYS = {"label": "main", "priority": 3, "headers": {"X-A": "b"}, "excluded_models": ["m"],
             "disable_cooling": True}


@pytest.fixture
def fake():
    # Latency on every answer widens the window in which the others queue behind the lock.
    with demo.FakeProviders(latency=0.05) as server:
        yield server


@pytest.fixture
def credential(fake, tmp_path):
    """One Claude credential file whose token expired an hour ago, known to the fake."""
    directory = tmp_path / "auth"
    directory.mkdir()
    fake.add_account(demo.FakeAccount("claude", EMAIL), ACCESS, REFRESH)
    fake.expire_access(ACCESS)
    path = demo.write_credential(str(directory), "claude", EMAIL, ACCESS, REFRESH,
                                 datetime.now(timezone.utc) - timedelta(hours=1), **USER_KEYS)
    return Path(path)


@pytest.fixture
def worker_env(fake):
    env = dict(os.environ)
    env.update(fake.environ())
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT),
                                                      env.get("PYTHONPATH")]))
    return env


class Race:
    """The processes of one race; kills whatever is still running when the test ends."""

    def __init__(self, env):
        self.env = env
        self.processes = []
        self.deadline = time.monotonic() + TIMEOUT

    def spawn(self, mode, *args):
        process = subprocess.Popen([sys.executable, str(WORKER), mode] + [str(a) for a in args],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=self.env, bufsize=0)
        self.processes.append(process)
        return process

    def wait_ready(self, process):
        """Read the child's `ready` line straight from the pipe, within the deadline."""
        line = b""
        while not line.endswith(b"\n"):
            left = self.deadline - time.monotonic()
            readable, _, _ = select.select([process.stdout], [], [], max(0.0, left))
            if not readable:
                pytest.fail("a race process was not ready within %s s" % TIMEOUT)
            chunk = os.read(process.stdout.fileno(), 1)
            if not chunk:
                _, err = process.communicate(timeout=TIMEOUT)
                pytest.fail("a race process died before the race:\n%s" % err.decode())
            line += chunk
        assert line == b"ready\n"

    @staticmethod
    def go(processes):
        for process in processes:
            process.stdin.write(b"go\n")
        for process in processes:
            process.stdin.flush()

    def outcome(self, process):
        """Wait for the child and return the JSON object on its last line."""
        out, err = process.communicate(timeout=max(1.0, self.deadline - time.monotonic()))
        assert process.returncode == 0, err.decode()
        return json.loads(out.decode().strip().splitlines()[-1])

    def close(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.communicate()


@pytest.fixture
def race(worker_env):
    race = Race(worker_env)
    yield race
    race.close()


def run_race(race, credential, tmp_path, extra=()):
    """Start the fetchers (and `extra` processes), then the reader; release everyone at once;
    return (fetch outcomes, reader outcome, extra outcomes)."""
    stop_file = tmp_path / "stop-reading"
    fetchers = [race.spawn("fetch", credential.parent) for _ in range(PROCESSES)]
    others = [race.spawn(*args) for args in extra]
    for process in fetchers + others:
        race.wait_ready(process)
    reader = race.spawn("reader", credential, stop_file)
    race.wait_ready(reader)
    race.go(fetchers + others)
    results = [race.outcome(process) for process in fetchers]
    other_results = [race.outcome(process) for process in others]
    stop_file.touch()
    return results, race.outcome(reader), other_results


def read_json(path):
    return json.loads(Path(path).read_text())


def test_refresh_race_processes_send_one_refresh_and_all_get_usage(fake, credential, race,
                                                                   tmp_path):
    before = read_json(credential)
    inode_before = os.stat(credential).st_ino
    results, reading, _ = run_race(race, credential, tmp_path)
    token_posts = fake.count(demo.TOKEN_PATH)
    print("\nrefresh race: %d processes, %d refresh request(s) seen, reader: %d reads, "
          "%d torn, %d distinct refresh tokens seen"
          % (len(results), token_posts, reading["reads"], reading["torn"],
             reading["refresh_tokens_seen"]))

    assert token_posts == 1
    assert [(r["error"], r["is_loading"]) for r in results] == [(None, False)] * PROCESSES
    assert all(r["windows"] > 0 for r in results)
    assert sum(r["token_refreshed"] for r in results) == 1
    assert reading["reads"] > 0
    assert reading["torn"] == 0, reading["kinds"]

    after = read_json(credential)
    for key, value in USER_KEYS.items():
        assert after[key] == value and type(after[key]) is type(value), key
    unchanged = {k: v for k, v in before.items()
                 if k not in ("access_token", "refresh_token", "expired", "last_refresh")}
    assert {k: after[k] for k in unchanged} == unchanged
    assert set(after) == set(before)
    assert stat.S_IMODE(os.stat(credential).st_mode) == 0o600
    # Replaced by a rename (a new inode), not rewritten in place: the reader above can miss a
    # short in-place window, this cannot.
    assert os.stat(credential).st_ino != inode_before
    assert sorted(p.name for p in credential.parent.glob("*.json")) == [credential.name]
    assert after["refresh_token"] != REFRESH and after["access_token"] != ACCESS
    # The written expiry is in the future (the fake grants 8 hours), so nothing refreshes again.
    assert after["expired"].endswith("Z") and after["expired"] > before["expired"]

    # The file holds the rotated pair the fake issued: its access token reads usage, and its
    # refresh token is still unspent (a further refresh succeeds; the original one is dead).
    with requests.Session() as session:
        session.trust_env = False
        usage = session.get(fake.base_url + demo.CLAUDE_PATH, timeout=15,
                            headers={"Authorization": "Bearer " + after["access_token"]})
        assert usage.status_code == 200
        spent = session.post(fake.base_url + demo.TOKEN_PATH, timeout=15, data={
            "grant_type": "refresh_token", "refresh_token": REFRESH})
        assert spent.status_code == 400 and spent.json()["error"] == "invalid_grant"
        further = session.post(fake.base_url + demo.TOKEN_PATH, timeout=15, data={
            "grant_type": "refresh_token", "refresh_token": after["refresh_token"]})
        assert further.status_code == 200 and further.json()["access_token"]


# The writer rewrites the file at once (our processes mostly find it empty and re-read it), or
# a little later, when one of ours has typically sent the spent token already and gets
# invalid_grant, then must find the writer's tokens by polling the file while it is torn.
@pytest.mark.parametrize("writer_delay", [0.0, 0.1], ids=["at-start", "mid-refresh"])
def test_refresh_race_with_in_place_writer_ends_without_parse_errors(fake, credential, race,
                                                                     tmp_path, writer_delay):
    results, reading, (written,) = run_race(
        race, credential, tmp_path,
        extra=[("writer", credential, fake.base_url + demo.TOKEN_PATH, writer_delay)])
    token_posts = fake.count(demo.TOKEN_PATH)
    print("\nrefresh race with an in-place writer (%s s in): %d processes + 1 writer, %d refresh "
          "request(s) seen, reader: %d reads, %d torn %s"
          % (writer_delay, len(results), token_posts, reading["reads"], reading["torn"],
             reading["kinds"]))

    # The writer spent the original refresh token before the race; ours can only have tried it
    # once (getting invalid_grant, then adopting the writer's tokens from the file).
    assert 1 <= token_posts <= 2
    assert [(r["error"], r["is_loading"]) for r in results] == [(None, False)] * PROCESSES
    assert all(r["windows"] > 0 for r in results)
    assert not any(r["token_refreshed"] for r in results)
    assert reading["reads"] > 0

    after = read_json(credential)
    assert isinstance(after, dict)
    assert after["refresh_token"] == written["refresh_token"]
    assert after["access_token"] == written["access_token"]
    for key, value in USER_KEYS.items():
        assert after[key] == value and type(after[key]) is type(value), key
    assert stat.S_IMODE(os.stat(credential).st_mode) == 0o600
