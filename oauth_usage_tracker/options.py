"""What a run of the script was asked to do, once the flags are parsed: a frozen value the run
reads, never argparse's namespace. Pure."""
from __future__ import annotations

import argparse
from typing import FrozenSet, NamedTuple, Optional, Tuple

from .models import Provider

# The defaults of flags whose meaning lives in modules a run imports late or never (the report,
# the events machinery, the pool view): defined here, and imported by those modules, so that
# parsing the flags does not import them (each dataclass costs about a millisecond to create at
# start-up).
DEFAULT_MAX_STALE = 3600.0
"""`--max-stale`: stale values younger than this many seconds still count as success."""
DEFAULT_USABLE_ABOVE = 10.0
"""`--usable-above`: an account with at least this effective remaining percent is usable."""
DEFAULT_BELOW = 10.0
"""`--event-below`: quota_low when a window has less than this percentage left."""
DEFAULT_FAILING_AFTER = 1800.0
"""`--failing-after`: account_failing once a failure has lasted this many seconds."""
SORTS = ("name", "headroom", "reset")
"""`--sort`: the table orders of the pool view (pool.sort_accounts)."""


class Options(NamedTuple):
    """The choices of one run that the run itself reads (the settings of a fetch are
    `config.Settings`; where the accounts come from is the run's own).

    A NamedTuple, not a frozen dataclass: every run makes this class, and a dataclass of its
    nineteen fields cost about 12 M instructions to make (its methods are compiled from source
    at each start-up), a named tuple about 4 M; it is as frozen, and compares and prints by
    field."""

    providers: FrozenSet[Provider] = frozenset(Provider)
    """The providers whose accounts are queried (`--provider`, default both)."""
    json: bool = False
    """Print the JSON report instead of the table."""
    output: Optional[str] = None
    """Write the report to this file instead of stdout."""
    prometheus: Optional[str] = None
    """Also write textfile metrics to this file."""
    metrics_name: Optional[str] = None
    """The per-run metrics' `name` label (default: from the metrics file's name)."""
    layout: str = "auto"
    sort: str = "name"
    fail_below: Optional[float] = None
    max_stale: float = DEFAULT_MAX_STALE
    usable_above: float = DEFAULT_USABLE_ABOVE
    max_age: float = 0.0
    watch: Optional[float] = None
    """Seconds between refreshes with `--watch`, else None (run once)."""
    state_dir: Optional[str] = None
    """`--state-dir`, else None (the default directory)."""
    keep_state: bool = True
    """False with `--no-state`."""
    on_event: Tuple[Tuple[str, ...], ...] = ()
    """The `--on-event` commands, each already split into its arguments."""
    events_log: Optional[str] = None
    event_below: float = DEFAULT_BELOW
    failing_after: float = DEFAULT_FAILING_AFTER

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Options":
        """Given the parsed flags, return the options they set."""
        return cls(
            providers=frozenset(Provider(p) for p in args.provider) if args.provider
            else frozenset(Provider),
            json=args.json, output=args.output, prometheus=args.prometheus,
            metrics_name=args.metrics_name, layout=args.layout, sort=args.sort,
            fail_below=args.fail_below, max_stale=args.max_stale,
            usable_above=args.usable_above, max_age=args.max_age, watch=args.watch,
            state_dir=args.state_dir, keep_state=not args.no_state,
            on_event=tuple(tuple(command) for command in args.on_event or ()),
            events_log=args.events_log, event_below=args.event_below,
            failing_after=args.failing_after)

    @property
    def wants_events(self) -> bool:
        """True when events are delivered somewhere (a command or the events log)."""
        return bool(self.on_event or self.events_log)
