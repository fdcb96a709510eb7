"""cli: which sources a run reads (--cpa-url, the key, the local directory)."""
import argparse

import pytest

from oauth_usage_tracker import cli as module
from oauth_usage_tracker import lockout
from oauth_usage_tracker.errors import ConfigurationError

KEY = "cpa-UNITcliKEYnotREAL-9911"


@pytest.fixture(autouse=True)
def fresh_rejections():
    lockout.clear_memory()
    yield
    lockout.clear_memory()


def args(*argv: str) -> argparse.Namespace:
    return module.build_parser().parse_args(list(argv))


def test_no_cpa_url_reads_the_local_directory_only():
    run = module._run(args(), {})
    assert run.proxies == () and run.read_local


@pytest.mark.parametrize("argv, environ, read_local", [
    (["--cpa-url", "https://a.example.net"], {}, False),
    (["--cpa-url", "https://a.example.net", "--auth-dir", "/srv/auth"], {}, True),
    (["--cpa-url", "https://a.example.net"], {"OAUTH_USAGE_TRACKER_AUTH_DIR": "/srv/auth"}, True),
])
def test_cpa_url_reads_the_local_directory_only_when_named(argv, environ, read_local):
    run = module._run(args(*argv), dict(environ, OAUTH_USAGE_TRACKER_CPA_KEY=KEY))
    assert [proxy.source for proxy in run.proxies] == ["a.example.net:443"]
    assert run.read_local is read_local


def test_urls_from_the_environment_split_and_duplicates_dropped():
    environ = {"OAUTH_USAGE_TRACKER_CPA_URL": "https://a.example.net, https://a.example.net/ "
                                              "http://127.0.0.1:8317",
               "OAUTH_USAGE_TRACKER_CPA_KEY": KEY}
    run = module._run(args("--no-state"), environ)
    assert [proxy.source for proxy in run.proxies] == ["a.example.net:443", "127.0.0.1:8317"]


def test_flag_urls_win_over_the_environment():
    environ = {"OAUTH_USAGE_TRACKER_CPA_URL": "https://a.example.net",
               "OAUTH_USAGE_TRACKER_CPA_KEY": KEY}
    run = module._run(args("--cpa-url", "https://b.example.net"), environ)
    assert [proxy.source for proxy in run.proxies] == ["b.example.net:443"]


def test_key_file_wins_over_the_environment_and_its_version_is_kept(tmp_path):
    path = tmp_path / "key"
    path.write_text("from-the-file\n")
    path.chmod(0o600)
    run = module._run(args("--cpa-url", "https://a.example.net", "--cpa-key-file", str(path)),
                      {"OAUTH_USAGE_TRACKER_CPA_KEY": KEY})
    proxy = run.proxies[0]
    assert proxy.key_version is not None
    assert proxy.key_fingerprint == lockout.fingerprint(proxy.url, "from-the-file")


def test_state_directory_holds_the_rejected_keys(tmp_path):
    run = module._run(args("--cpa-url", "https://a.example.net", "--state-dir", str(tmp_path)),
                      {"OAUTH_USAGE_TRACKER_CPA_KEY": KEY})
    assert run.proxies[0].rejected.path == str(tmp_path / lockout.REJECTED_FILE)
    assert module._run(args("--cpa-url", "https://a.example.net", "--no-state"),
                       {"OAUTH_USAGE_TRACKER_CPA_KEY": KEY}).proxies[0].rejected.path is None


def test_missing_key_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="needs the management key"):
        module._run(args("--cpa-url", "https://a.example.net"), {})
