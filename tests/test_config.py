"""Settings (SPEC §5, §6, §8): endpoints, the https-or-loopback policy, user agents, bounds."""
import dataclasses

import pytest

from oauth_usage_tracker import config as module
from oauth_usage_tracker.errors import ConfigurationError, UsageTrackerError

CODEX_URL_ENV = "OAUTH_USAGE_TRACKER_CODEX_USAGE_URL"
CLAUDE_URL_ENV = "OAUTH_USAGE_TRACKER_CLAUDE_USAGE_URL"
TOKEN_URL_ENV = "OAUTH_USAGE_TRACKER_CLAUDE_TOKEN_URL"
CLAUDE_AGENT_ENV = "OAUTH_USAGE_TRACKER_CLAUDE_USER_AGENT"
TOKEN_AGENT_ENV = "OAUTH_USAGE_TRACKER_CLAUDE_TOKEN_USER_AGENT"


# --- defaults ------------------------------------------------------------------------------------

def test_settings_defaults_use_real_endpoints():
    settings = module.Settings()
    assert settings.codex_usage_url == "https://chatgpt.com/backend-api/wham/usage"
    assert settings.claude_usage_url == "https://api.anthropic.com/api/oauth/usage"
    assert settings.claude_token_url == "https://platform.claude.com/v1/oauth/token"


def test_settings_defaults_use_15_second_timeout_and_automatic_workers():
    settings = module.Settings()
    assert settings.timeout == 15.0
    assert settings.workers is None
    assert settings.allow_token_refresh is True
    assert settings.include_expired is False
    assert settings.max_body_bytes == 1024 * 1024


def test_settings_defaults_use_a_distinct_agent_per_request():
    settings = module.Settings()
    assert settings.claude_user_agent == "claude-code/2.1.0"
    assert settings.claude_token_user_agent == "axios/1.15.2"
    assert settings.codex_user_agent == "codex-cli"
    for agent in (settings.claude_user_agent, settings.claude_token_user_agent,
                  settings.codex_user_agent):
        assert "python-requests" not in agent
        assert "curl" not in agent


def test_claude_client_id_is_the_claude_code_one():
    assert module.CLAUDE_CLIENT_ID == "9d1c250a-e61b-44d9-88ed-5944d1962f5e"


def test_from_environ_empty_environment_gives_defaults():
    assert module.Settings.from_environ({}) == module.Settings()


def test_from_environ_default_reads_os_environ(monkeypatch):
    monkeypatch.setenv(CLAUDE_URL_ENV, "http://127.0.0.1:8765/usage")
    assert module.Settings.from_environ().claude_usage_url == "http://127.0.0.1:8765/usage"


def test_from_environ_explicit_mapping_ignores_os_environ(monkeypatch):
    monkeypatch.setenv(CLAUDE_URL_ENV, "http://127.0.0.1:8765/usage")
    assert module.Settings.from_environ({}).claude_usage_url == module.CLAUDE_USAGE_URL


# --- environment overrides -----------------------------------------------------------------------

def test_from_environ_url_variables_override_the_three_endpoints():
    settings = module.Settings.from_environ({
        CODEX_URL_ENV: "http://127.0.0.1:9001/wham/usage",
        CLAUDE_URL_ENV: "http://localhost:9002/api/oauth/usage",
        TOKEN_URL_ENV: "https://mirror.example.org/v1/oauth/token",
    })
    assert settings.codex_usage_url == "http://127.0.0.1:9001/wham/usage"
    assert settings.claude_usage_url == "http://localhost:9002/api/oauth/usage"
    assert settings.claude_token_url == "https://mirror.example.org/v1/oauth/token"


def test_from_environ_agent_variables_override_the_two_claude_agents():
    settings = module.Settings.from_environ({
        CLAUDE_AGENT_ENV: "claude-code/9.9.9",
        TOKEN_AGENT_ENV: "axios/2.0.0",
    })
    assert settings.claude_user_agent == "claude-code/9.9.9"
    assert settings.claude_token_user_agent == "axios/2.0.0"
    assert settings.codex_user_agent == "codex-cli"


def test_from_environ_one_agent_variable_leaves_the_other_agent_alone():
    settings = module.Settings.from_environ({CLAUDE_AGENT_ENV: "claude-code/3.0.0"})
    assert settings.claude_user_agent == "claude-code/3.0.0"
    assert settings.claude_token_user_agent == "axios/1.15.2"
    settings = module.Settings.from_environ({TOKEN_AGENT_ENV: "axios/9"})
    assert settings.claude_user_agent == "claude-code/2.1.0"
    assert settings.claude_token_user_agent == "axios/9"


def test_from_environ_empty_variable_keeps_default():
    settings = module.Settings.from_environ({CODEX_URL_ENV: "", CLAUDE_AGENT_ENV: ""})
    assert settings.codex_usage_url == module.CODEX_USAGE_URL
    assert settings.claude_user_agent == module.CLAUDE_USER_AGENT


def test_from_environ_surrounding_whitespace_is_stripped():
    settings = module.Settings.from_environ({CODEX_URL_ENV: "  https://example.org/usage\n"})
    assert settings.codex_usage_url == "https://example.org/usage"


def test_from_environ_refused_url_raises_configuration_error():
    with pytest.raises(ConfigurationError) as caught:
        module.Settings.from_environ({CLAUDE_URL_ENV: "http://example.com/api/oauth/usage"})
    assert "http://example.com/api/oauth/usage" in str(caught.value)
    assert "claude usage" in str(caught.value).lower()


@pytest.mark.parametrize("variable", [CODEX_URL_ENV, CLAUDE_URL_ENV, TOKEN_URL_ENV])
def test_from_environ_any_url_variable_is_checked(variable):
    with pytest.raises(ConfigurationError):
        module.Settings.from_environ({variable: "http://10.0.0.1/x"})


def test_from_environ_explicit_value_beats_environment():
    settings = module.Settings.from_environ(
        {CLAUDE_URL_ENV: "http://127.0.0.1:1/env", CLAUDE_AGENT_ENV: "claude-code/env"},
        claude_usage_url="http://127.0.0.1:2/explicit", timeout=3.0)
    assert settings.claude_usage_url == "http://127.0.0.1:2/explicit"
    assert settings.claude_user_agent == "claude-code/env"
    assert settings.timeout == 3.0


def test_from_environ_explicit_none_keeps_environment_or_default():
    settings = module.Settings.from_environ({CLAUDE_URL_ENV: "http://127.0.0.1:1/env"},
                                            claude_usage_url=None, timeout=None, workers=None)
    assert settings.claude_usage_url == "http://127.0.0.1:1/env"
    assert settings.timeout == 15.0
    assert settings.workers is None


def test_from_environ_unknown_setting_raises_type_error():
    with pytest.raises(TypeError):
        module.Settings.from_environ({}, no_such_setting=1)


def test_settings_assignment_raises_frozen_instance_error():
    settings = module.Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.timeout = 1.0


def test_with_changes_one_field_and_validates_again():
    settings = module.Settings()
    changed = settings.with_(timeout=5.0)
    assert changed.timeout == 5.0
    assert settings.timeout == 15.0
    with pytest.raises(ConfigurationError):
        settings.with_(codex_usage_url="http://example.com/")


def test_lock_timeout_covers_three_request_timeouts():
    assert module.Settings(timeout=15.0).lock_timeout == 50.0
    assert module.Settings(timeout=2.0).lock_timeout == 11.0


# --- URL policy ----------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "https://chatgpt.com/backend-api/wham/usage",
    "https://example.com",
    "HTTPS://EXAMPLE.COM/path",
    "https://10.0.0.1:8443/usage",
    "http://127.0.0.1/usage",
    "http://127.0.0.1:8765/usage",
    "http://127.1.2.3:8765/usage",
    "http://127.255.255.254/",
    "http://[::1]:8765/usage",
    "http://[::1]/",
    "http://localhost/usage",
    "http://localhost:8080/usage",
    "http://LOCALHOST:8080/usage",
])
def test_check_url_https_or_loopback_http_is_accepted(url):
    assert module.check_url(url) == url
    module.Settings(codex_usage_url=url, claude_usage_url=url, claude_token_url=url)


@pytest.mark.parametrize("url", [
    "http://example.com",
    "http://example.com/backend-api/wham/usage",
    "http://10.0.0.1",
    "http://10.0.0.1:8080/usage",
    "http://192.168.1.10/usage",
    "http://0.0.0.0:8080/",
    "http://[::]:8080/",
    "http://[2001:db8::1]/",
    "http://128.0.0.1/",
    "http://127.0.0.1.nip.io/",
    "http://localhost.example.com/",
    "http://localhostx/",
    "ftp://127.0.0.1/usage",
    "ftp://example.com/usage",
    "file:///etc/passwd",
    "ws://localhost/usage",
    "javascript:alert(1)",
    "//example.com/usage",
    "example.com/usage",
    "127.0.0.1:8080",
    "localhost",
    "https://",
    "https:///path",
    "http://",
    "http://[::1",
    "not a url",
    "",
])
def test_check_url_anything_else_raises_configuration_error(url):
    with pytest.raises(ConfigurationError):
        module.check_url(url)


def test_check_url_subdomain_of_localhost_raises_configuration_error():
    # SPEC §8 allows exactly 127.0.0.0/8, ::1 and `localhost`. `foo.localhost` is resolved by
    # whatever resolver the host has (often DNS): plain http there may leave the machine.
    with pytest.raises(ConfigurationError):
        module.check_url("http://evil.localhost/api/oauth/usage")


def test_check_url_refusal_is_a_value_error_and_a_tracker_error():
    with pytest.raises(ValueError):
        module.check_url("http://example.com")
    with pytest.raises(UsageTrackerError):
        module.check_url("http://example.com")
    assert issubclass(ConfigurationError, ValueError)


def test_check_url_refusal_names_the_setting_and_the_url():
    with pytest.raises(ConfigurationError) as caught:
        module.check_url("ftp://example.com/token", "Claude token")
    message = str(caught.value)
    assert "Claude token" in message
    assert "ftp://example.com/token" in message


@pytest.mark.parametrize("field", ["codex_usage_url", "claude_usage_url", "claude_token_url"])
def test_settings_refused_url_in_any_endpoint_raises_configuration_error(field):
    with pytest.raises(ConfigurationError):
        module.Settings(**{field: "http://example.com/x"})


@pytest.mark.parametrize("host, expected", [
    ("localhost", True), ("LOCALHOST", True), ("127.0.0.1", True), ("127.10.20.30", True),
    ("::1", True), ("[::1]", True), ("10.0.0.1", False), ("0.0.0.0", False),
    ("example.com", False), ("", False), ("::", False),
])
def test_is_loopback_host_gives_true_only_for_loopback(host, expected):
    assert module.is_loopback_host(host) is expected


# --- bounds --------------------------------------------------------------------------------------

@pytest.mark.parametrize("timeout", [0.001, 1, 15.0, 600])
def test_settings_timeout_in_range_is_accepted(timeout):
    assert module.Settings(timeout=timeout).timeout == timeout


@pytest.mark.parametrize("timeout", [0, 0.0, -1, -15.0, 600.5, 3600, float("nan"),
                                     float("inf")])
def test_settings_timeout_out_of_range_raises_configuration_error(timeout):
    with pytest.raises(ConfigurationError):
        module.Settings(timeout=timeout)


@pytest.mark.parametrize("workers", [None, 1, 8, 16, 256])
def test_settings_workers_in_range_is_accepted(workers):
    assert module.Settings(workers=workers).workers == workers


@pytest.mark.parametrize("workers", [0, -1, 257, 10000])
def test_settings_workers_out_of_range_raises_configuration_error(workers):
    with pytest.raises(ConfigurationError):
        module.Settings(workers=workers)


def test_from_environ_bad_number_raises_configuration_error():
    with pytest.raises(ConfigurationError):
        module.Settings.from_environ({}, timeout=0)
    with pytest.raises(ConfigurationError):
        module.Settings.from_environ({}, workers=0)
