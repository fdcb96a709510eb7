"""What ships in scripts/: alert rules under `promtool`, the systemd units under
`systemd-analyze`, and a cron line that agrees with them."""
import re
import shlex
import subprocess
from pathlib import Path

from support import require_tool

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
RULES = SCRIPTS / "prometheus" / "oauth-usage-tracker.rules.yml"
RULE_TESTS = SCRIPTS / "prometheus" / "oauth-usage-tracker.rules.test.yml"
SERVICE = SCRIPTS / "systemd" / "oauth-usage-tracker.service"
TIMER = SCRIPTS / "systemd" / "oauth-usage-tracker.timer"
CRON = SCRIPTS / "cron" / "oauth-usage-tracker"
README = Path(__file__).resolve().parents[1] / "README.md"
DEBIAN_TEXTFILE = "/var/lib/prometheus/node-exporter"
UPSTREAM_TEXTFILE = "/var/lib/node_exporter/textfile_collector"


def run(command, cwd=None):
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_promtool_check_rules_accepts_the_alert_rules():
    result = run([require_tool("promtool"), "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_promtool_test_rules_passes_the_rule_unit_tests():
    result = run([require_tool("promtool"), "test", "rules", RULE_TESTS.name],
                 cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def unit_lines(path):
    """The unit's directives as (section, key, value), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    section, out = None, []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key, value))
    return out


def directive(path, key):
    return [value for _, name, value in unit_lines(path) if name == key]


def test_systemd_analyze_verify_is_clean_on_the_units(tmp_path):
    analyze = require_tool("systemd-analyze")
    # verify checks that ExecStart= exists: point it at a real program in a copy.
    service = SERVICE.read_text().replace("/usr/local/bin/oauth-usage-tracker", "/bin/true")
    (tmp_path / SERVICE.name).write_text(service)
    (tmp_path / TIMER.name).write_text(TIMER.read_text())
    result = run([analyze, "verify", str(tmp_path / SERVICE.name), str(tmp_path / TIMER.name)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stderr


def test_systemd_analyze_security_rates_the_service_2_or_lower():
    analyze = require_tool("systemd-analyze")
    result = run([analyze, "security", "--offline=true", "--no-pager", str(SERVICE)])
    assert result.returncode == 0, result.stdout + result.stderr
    score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)[1])
    assert score <= 2.0, result.stdout


def test_service_is_started_by_the_timer_only_and_optional_paths_are_optional():
    sections = {section for section, _, _ in unit_lines(SERVICE)}
    assert "Install" not in sections
    assert directive(SERVICE, "Type") == ["oneshot"]
    assert directive(TIMER, "Persistent") == ["true"] and directive(TIMER, "RandomizedDelaySec")
    writable = " ".join(directive(SERVICE, "ReadWritePaths")).split()
    assert "-" + DEBIAN_TEXTFILE in writable and "-" + UPSTREAM_TEXTFILE in writable
    assert "/home/cliproxy/.cli-proxy-api" in writable  # token write-back: required


def exec_args():
    return shlex.split(directive(SERVICE, "ExecStart")[0])


def test_service_cron_and_readme_agree_on_paths():
    args = exec_args()
    assert args[0] == "/usr/local/bin/oauth-usage-tracker"
    metrics = args[args.index("--prometheus") + 1]
    assert metrics == DEBIAN_TEXTFILE + "/oauth_usage.prom"
    writable = " ".join(directive(SERVICE, "ReadWritePaths")).split()
    assert any(metrics.startswith(path.lstrip("-") + "/") for path in writable)
    state_dir = args[args.index("--state-dir") + 1]
    assert state_dir == "/var/lib/" + directive(SERVICE, "StateDirectory")[0]
    cron = [line for line in CRON.read_text().splitlines() if line and not line[0] in "#SP"]
    [entry] = cron
    assert "test -d /run/systemd/system || oauth-usage-tracker -q " in entry
    assert shlex.split(entry.split("|| ", 1)[1])[1:] == args[1:]
    readme = README.read_text()
    for text in ("PIPX_HOME=/opt/pipx PIPX_BIN_DIR=/usr/local/bin pipx install",
                 DEBIAN_TEXTFILE, UPSTREAM_TEXTFILE, "--refresh-expired"):
        assert text in readme, text
