"""Window keys are unique within an account (SPEC §12): Codex limit names and Claude scoped limits
that differ only in case or punctuation, through the installed script against real loopback
servers, in the JSON report and in the metrics (no duplicate series for node_exporter to drop).
"""
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone

from prometheus_client.parser import text_string_to_metric_families

import hostile_server as hs
from hostile_server import CLAUDE_PATH, CODEX_PATH

COMMAND = ([shutil.which("oauth-usage-tracker")] if shutil.which("oauth-usage-tracker")
           else [sys.executable, "-m", "oauth_usage_tracker"])


def _payloads():
    later = (datetime.now(timezone.utc) + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    window = {"used_percent": 10, "limit_window_seconds": 18000, "reset_after_seconds": 3600}
    codex = {"rate_limit": {"primary_window": window},
             "additional_rate_limits": [
                 {"limit_name": name, "rate_limit": {"primary_window": dict(window,
                                                                            used_percent=i)}}
                 for i, name in enumerate(["GPT-5 Codex", "gpt-5-codex", "GPT_5.codex",
                                           "gpt 5 codex"])]}
    claude = {"five_hour": {"utilization": 10, "resets_at": later},
              "weekly_scoped:opus_4": {"utilization": 3, "resets_at": later},
              "limits": [{"kind": "weekly_scoped", "percent": p, "resets_at": later,
                          "scope": {"model": {"display_name": name}}}
                         for p, name in ((20, "Opus 4"), (30, "opus-4"), (40, "OPUS_4"))]}
    return codex, claude


def test_similar_limit_names_get_unique_keys_in_json_and_metrics(auth_dir, tmp_path):
    auth_dir.codex()
    auth_dir.claude()
    codex, claude = _payloads()
    metrics = tmp_path / "usage.prom"
    with hs.HostileServer(hs.send_json(codex), CODEX_PATH) as codex_server, \
            hs.HostileServer(hs.send_json(claude), CLAUDE_PATH) as claude_server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTH_USAGE_TRACKER_")}
        env.update(hs.endpoint_environ(codex_server.base_url, claude_server.base_url,
                                       claude_server.base_url))
        env["HOME"] = str(tmp_path / "home")
        result = subprocess.run(COMMAND + ["--auth-dir", str(auth_dir), "--json", "--no-state",
                                           "--prometheus", str(metrics)],
                                env=env, capture_output=True, text=True, timeout=60,
                                stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    accounts = {a["provider"]: a for a in json.loads(result.stdout)["accounts"]}
    codex_keys = [w["key"] for w in accounts["codex"]["windows"]]
    claude_keys = [w["key"] for w in accounts["claude"]["windows"]]
    assert codex_keys == ["primary_window", "gpt_5_codex:primary_window",
                          "gpt_5_codex:primary_window~2", "gpt_5_codex:primary_window~3",
                          "gpt_5_codex:primary_window~4"]
    assert [w["used_percent"] for w in accounts["codex"]["windows"]] == [10, 0, 1, 2, 3]
    assert len(set(claude_keys)) == len(claude_keys) == 5
    assert claude_keys[:4] == ["five_hour", "weekly_scoped:opus_4", "weekly_scoped:opus_4~2",
                               "weekly_scoped:opus_4~3"]
    series = Counter((sample.name, tuple(sorted(sample.labels.items())))
                     for family in text_string_to_metric_families(metrics.read_text())
                     for sample in family.samples)
    assert series and max(series.values()) == 1
    used = [labels for (name, labels) in series if name == "oauth_usage_window_used_ratio"]
    assert len(used) == 10
