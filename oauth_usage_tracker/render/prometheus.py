"""node_exporter textfile-collector metrics: gauges with HELP and TYPE, labels escaped."""
from typing import Dict, List, Optional

from ..report import Report

_WINDOW_LABELS = ("provider", "email", "account", "window")

METRICS = (
    ("oauth_usage_window_used_percent", "Percentage of the quota window used."),
    ("oauth_usage_window_remaining_percent", "Percentage of the quota window left."),
    ("oauth_usage_window_reset_timestamp_seconds", "When the quota window resets (unix time)."),
    ("oauth_usage_account_up", "1 if the account's usage was fetched, 0 if it failed."),
    ("oauth_usage_account_stale", "1 if the windows shown are the last good values, not fresh."),
    ("oauth_usage_account_last_success_timestamp_seconds",
     "When the account's windows were last fetched (unix time)."),
    ("oauth_usage_last_run_timestamp_seconds", "When this report was generated (unix time)."),
    ("oauth_usage_run_duration_seconds", "How long the run took."),
)


def escape_label(value: str) -> str:
    """Escape a label value as the exposition format requires: backslash, quote, newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Dict[str, str]) -> str:
    if not pairs:
        return ""
    return "{%s}" % ",".join('%s="%s"' % (name, escape_label(value)) for name, value in pairs.items())


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else "%d" % value


def render_prometheus(report: Report) -> str:
    """Given a report, return the textfile-collector document."""
    samples: Dict[str, List[str]] = {name: [] for name, _ in METRICS}

    def add(name: str, labels: Dict[str, str], value: Optional[float]) -> None:
        if value is not None:
            samples[name].append("%s%s %s" % (name, _labels(labels), _number(value)))

    for account in report.accounts:
        base = {"provider": account.provider.value, "email": account.email or "",
                "account": account.id}
        add("oauth_usage_account_up", base, 0 if account.error else 1)
        add("oauth_usage_account_stale", base, 1 if account.stale else 0)
        if account.fetched_at is not None:
            add("oauth_usage_account_last_success_timestamp_seconds", base,
                int(account.fetched_at.timestamp()))
        for window in account.windows:
            labels = dict(base, window=window.key)
            add("oauth_usage_window_used_percent", labels, window.used_percent)
            add("oauth_usage_window_remaining_percent", labels, window.remaining_percent)
            if window.reset_date is not None:
                add("oauth_usage_window_reset_timestamp_seconds", labels,
                    int(window.reset_date.timestamp()))
    add("oauth_usage_last_run_timestamp_seconds", {}, int(report.generated_at.timestamp()))
    if report.duration_seconds is not None:
        add("oauth_usage_run_duration_seconds", {}, round(report.duration_seconds, 3))
    lines = []
    for name, help_text in METRICS:
        lines.append("# HELP %s %s" % (name, help_text))
        lines.append("# TYPE %s gauge" % name)
        lines.extend(samples[name])
    return "\n".join(lines) + "\n"
