"""Shared fixtures: an auth directory, a clean environment, a strict `responses` mock."""
import logging
import os
import time

import pytest
import responses as responses_lib

from support import AuthDir


@pytest.fixture
def auth_dir(tmp_path):
    """An empty auth directory in tmp_path, with helpers to add CLIProxyAPI-shaped files."""
    return AuthDir(tmp_path / "auth")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No test sees the user's endpoints, auth dir or time zone; HOME points into tmp_path."""
    for name in list(os.environ):
        if name.startswith("OAUTH_USAGE_TRACKER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    time.tzset()


@pytest.fixture(autouse=True)
def package_logger_restored():
    """cli.main() points the package logger at the sys.stderr of the moment (a capture that is
    closed after the test) and stops it from propagating. Put it back after every test, so that
    a later test's caplog sees package records whatever pytest's version (only some attach their
    handler to non-propagating loggers) and nothing writes into a closed stream."""
    logger = logging.getLogger("oauth_usage_tracker")
    saved = (list(logger.handlers), logger.level, logger.propagate, logger.disabled)
    yield
    logger.handlers[:], logger.level, logger.propagate, logger.disabled = saved


@pytest.fixture(autouse=True)
def fresh_refresh_memory():
    """Each test starts as a new process would: no refresh tokens remembered as unclear, and
    refreshes allowed."""
    from oauth_usage_tracker.refresh import GUARD
    GUARD.reset()
    yield
    GUARD.reset()


@pytest.fixture
def fake():
    """The loopback fake of both providers that --demo uses, stopped afterwards (a module may
    override it: with latency, or module-scoped)."""
    from oauth_usage_tracker import demo
    with demo.FakeProviders() as server:
        yield server


@pytest.fixture
def session():
    """A session from the package's factory (two connections per host), closed afterwards."""
    from oauth_usage_tracker import http
    session = http.make_session(2)
    yield session
    session.close()


@pytest.fixture
def mocked_responses():
    """A `responses` mock in which every registered response must be used."""
    with responses_lib.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock
