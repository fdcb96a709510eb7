"""node_exporter textfile-collector metrics, version 2 (SPEC §13): gauges with HELP and TYPE.

Per window and per account, series are labelled `source`, `provider`, `account` (the credential
file's name); the e-mail and plan appear on `oauth_usage_account_info` only. Per-run series carry
a `name` label, so that two runs writing two files into one textfile directory never produce the
same series. Every credential file with a state has all nine `oauth_usage_account_state` series,
so an alert on an account never resolves just because the account stopped being queried.
"""
from __future__ import annotations

from datetime import datetime
from typing import Dict, List, Optional, Set, Tuple

from .. import __version__
from ..models import AccountState
from ..report import Report
from ..text import printable

METRICS = (
    ("oauth_usage_window_used_ratio", "Share of the quota window used (0-1)."),
    ("oauth_usage_window_reset_timestamp_seconds", "When the quota window resets (unix time)."),
    ("oauth_usage_window_projected_exhaustion_timestamp_seconds",
     "When the quota window runs out at the current pace, if that is before its reset "
     "(unix time)."),
    ("oauth_usage_account_state",
     "1 for the credential file's state in the last run, 0 for the other states."),
    ("oauth_usage_account_info", "The account's e-mail and plan (always 1)."),
    ("oauth_usage_account_remaining_ratio",
     "Effective remaining quota: the least share left over the account-wide windows (0-1)."),
    ("oauth_usage_account_last_success_timestamp_seconds",
     "When the account's windows were last fetched (unix time)."),
    ("oauth_usage_account_cooldown_until_timestamp_seconds",
     "Until when no request is sent for the account after a 429 (unix time)."),
    ("oauth_usage_last_run_timestamp_seconds", "When this report was generated (unix time)."),
    ("oauth_usage_run_duration_seconds", "How long the run took."),
    ("oauth_usage_accounts", "Credential files in each state in the last run."),
    ("oauth_usage_tracker_build_info", "The version of oauth-usage-tracker (always 1)."),
)

Labels = Tuple[Tuple[str, str], ...]


def escape_label(value: str) -> str:
    """Given any text, return it as a label value the exposition format accepts: control,
    bidi and surrogate characters written as visible escapes (text.printable), then backslash,
    quote and newline escaped. Total: never raises on any `str`."""
    return printable(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else "%d" % value


def metrics_name(path: Optional[str]) -> str:
    """Given the metrics file's path, return the default `name` label: its file name without
    `.prom` (`oauth_usage` for `/var/lib/…/oauth_usage.prom`)."""
    base = (path or "").replace("\\", "/").rsplit("/", 1)[-1]
    return base[:-len(".prom")] if base.endswith(".prom") else (base or "oauth_usage")


class _Samples:
    """Samples by metric, each label set at most once: a second identical series (two files
    claiming one account name in one source) is dropped, never written twice."""

    def __init__(self) -> None:
        self.lines: Dict[str, List[str]] = {name: [] for name, _ in METRICS}
        self.seen: Dict[str, Set[Labels]] = {name: set() for name, _ in METRICS}

    def add(self, name: str, labels: Dict[str, str], value: Optional[float]) -> None:
        if value is None:
            return
        key = tuple((label, escape_label(text)) for label, text in labels.items())
        if key in self.seen[name]:
            return
        self.seen[name].add(key)
        rendered = ",".join('%s="%s"' % pair for pair in key)
        self.lines[name].append("%s{%s} %s" % (name, rendered, _number(value)))

    def render(self) -> str:
        out = []
        for name, help_text in METRICS:
            out.append("# HELP %s %s" % (name, help_text))
            out.append("# TYPE %s gauge" % name)
            out.extend(self.lines[name])
        return "\n".join(out) + "\n"


def _seen_before(seen: Set[Labels], labels: Dict[str, str]) -> bool:
    """Record `labels`; return True when they had been seen already."""
    key = tuple(labels.items())
    if key in seen:
        return True
    seen.add(key)
    return False


def _ratio(percent: Optional[float]) -> Optional[float]:
    """A percentage as a 0–1 ratio (None stays None: no sample)."""
    return None if percent is None else round(percent / 100.0, 6)


def _stamp(moment: Optional[datetime]) -> Optional[int]:
    """A moment as whole Unix seconds (None stays None: no sample)."""
    return None if moment is None else int(moment.timestamp())


def render_prometheus(report: Report, name: str = "oauth_usage") -> str:
    """Given a report and the run's `name` label, return the textfile-collector document."""
    samples = _Samples()
    described: Set[Labels] = set()
    for entry, state in report.states():
        base = {"source": entry.source,
                "provider": entry.provider.value if entry.provider else "",
                "account": entry.id}
        if _seen_before(described, base):  # one account, one state and one info series
            continue
        for each in AccountState:
            samples.add("oauth_usage_account_state", dict(base, state=each.value),
                        1 if each is state else 0)
        samples.add("oauth_usage_account_info",
                    dict(base, email=entry.email or "", plan=getattr(entry, "plan", None) or ""),
                    1)
    measured: Set[Labels] = set()
    for account in report.accounts:
        base = {"source": account.source, "provider": account.provider.value,
                "account": account.id}
        if _seen_before(measured, base):
            continue
        samples.add("oauth_usage_account_remaining_ratio", base,
                    _ratio(account.effective_remaining_percent))
        samples.add("oauth_usage_account_last_success_timestamp_seconds", base,
                    _stamp(account.fetched_at))
        cooling = account.cooldown_until is not None \
            and account.cooldown_until > report.generated_at
        samples.add("oauth_usage_account_cooldown_until_timestamp_seconds", base,
                    _stamp(account.cooldown_until) if cooling else None)
        for window in account.windows:
            labels = dict(base, window=window.key)
            samples.add("oauth_usage_window_used_ratio", labels, _ratio(window.used_percent))
            samples.add("oauth_usage_window_reset_timestamp_seconds", labels,
                        _stamp(window.reset_date))
            pace = window.pace
            if pace is not None and pace.runs_out_before_reset:
                samples.add("oauth_usage_window_projected_exhaustion_timestamp_seconds", labels,
                            _stamp(pace.projected_exhaustion))
    run = {"name": name}
    samples.add("oauth_usage_last_run_timestamp_seconds", run, _stamp(report.generated_at))
    if report.duration_seconds is not None:
        samples.add("oauth_usage_run_duration_seconds", run, round(report.duration_seconds, 3))
    for state, count in report.state_counts().items():
        samples.add("oauth_usage_accounts", dict(run, state=state.value), count)
    samples.add("oauth_usage_tracker_build_info", dict(run, version=__version__), 1)
    return samples.render()
