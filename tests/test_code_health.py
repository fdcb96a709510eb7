"""The package's code health, checked with every test run: mypy (`disallow_untyped_defs`, set in
setup.cfg) and ruff (ruff.toml) report nothing, `py.typed` ships, and the lazily imported public
names have their real types for a type checker."""
import configparser
import subprocess
import sys
from pathlib import Path

from setuptools.config.setupcfg import read_configuration

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "oauth_usage_tracker"


def run_module(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_mypy_reports_no_error_in_the_package():
    result = run_module("mypy", PACKAGE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


def test_mypy_checks_with_disallow_untyped_defs():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config.getboolean("mypy", "disallow_untyped_defs")


def test_ruff_reports_no_finding_in_the_package():
    result = run_module("ruff", "check", "--no-cache", PACKAGE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_py_typed_ships_as_package_data():
    assert (ROOT / PACKAGE / "py.typed").is_file()
    options = read_configuration(str(ROOT / "setup.cfg"))["options"]
    assert "py.typed" in options["package_data"][PACKAGE]


def test_lazy_public_names_have_their_real_types_for_a_type_checker(tmp_path):
    import oauth_usage_tracker as module
    names = sorted(module._LAZY)
    program = tmp_path / "uses_public_names.py"
    program.write_text("from oauth_usage_tracker import %s\n" % ", ".join(names)
                       + "".join("reveal_type(%s)\n" % name for name in names))
    result = run_module("mypy", "--no-incremental", str(program))
    assert result.returncode == 0, result.stdout + result.stderr
    revealed = [line for line in result.stdout.splitlines() if "Revealed type" in line]
    assert len(revealed) == len(names), result.stdout
    for name, line in zip(names, revealed):
        assert 'Revealed type is "Any"' not in line, line
        assert PACKAGE + "." in line, (name, line)


def test_the_answers_deferred_classes_have_their_real_types_for_a_type_checker(tmp_path):
    from oauth_usage_tracker import models
    names = sorted(models._DEFERRED)
    program = tmp_path / "uses_deferred_names.py"
    program.write_text("from oauth_usage_tracker.models import %s\n" % ", ".join(names)
                       + "from oauth_usage_tracker.pace import Reading\n"
                       + "".join("reveal_type(%s)\n" % name for name in names + ["Reading"]))
    result = run_module("mypy", "--no-incremental", str(program))
    assert result.returncode == 0, result.stdout + result.stderr
    revealed = [line for line in result.stdout.splitlines() if "Revealed type" in line]
    assert len(revealed) == len(names) + 1, result.stdout
    for name, line in zip(names + ["Reading"], revealed):
        assert line.startswith("%s:" % program) and '"def (' in line, (name, line)
        assert line.endswith(') -> %s.%s.%s"' % (PACKAGE, "result" if name == "AccountUsage"
                                                  else "usage", name)), (name, line)

def test_ci_runs_exactly_the_readme_test_command_with_a_coverage_gate():
    marked = [line for line in (ROOT / "README.md").read_text().splitlines()
              if line.endswith("# the tests (what CI runs)")]
    assert len(marked) == 1
    command = marked[0].split("#")[0].strip()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci_lines[-1] == command
    assert "--cov-branch" in command and "--cov-fail-under=" in command
    assert int(command.split("--cov-fail-under=")[1].split()[0]) >= 90
