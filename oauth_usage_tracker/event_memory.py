"""The memory behind events: what was last seen and already announced, per account.

Kept between runs in the state store's `events.json` (see `events.EventLedger`): small, bounded,
and never a token. Reading it checks every field by type, since a damaged file must only cost a
fresh start, never a run.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Dict, Mapping, Optional, Tuple

from .models import AccountState
from .parsing import format_timestamp, parse_timestamp

VERSION = 1
#: At most this many window marks are kept per account.
MAX_MARKS = 64

Mark = Tuple[str, Optional[datetime]]
"""(window key, reset moment of the period it was set in; None when the window had none)."""
Key = Tuple[str, str]
"""(source, credential file id): file names are unique within one source."""


@dataclass(frozen=True)
class AccountMemory:
    """What was last seen and already announced for one account. Never a token."""

    seen_at: datetime
    state: Optional[AccountState] = None
    failing_since: Optional[datetime] = None
    """When the current failing episode began (None: not failing)."""
    failing_announced: bool = False
    login_announced: bool = False
    """`login_failed` was announced and no `login_recovered` yet."""
    low: Tuple[Mark, ...] = ()
    """Windows that fired `quota_low` in the period named by the mark."""
    runs_out: Tuple[Mark, ...] = ()
    """Windows that fired `runs_out_before_reset` in the period named by the mark."""

    def to_json(self, key: Key) -> Dict[str, Any]:
        """Return this memory (and its key) as a JSON object."""
        return {"source": key[0], "id": key[1], "seen_at": format_timestamp(self.seen_at),
                "state": self.state.value if self.state is not None else None,
                "failing_since": _stamp(self.failing_since),
                "failing_announced": self.failing_announced,
                "login_announced": self.login_announced,
                "low": [[k, _stamp(moment)] for k, moment in self.low],
                "runs_out": [[k, _stamp(moment)] for k, moment in self.runs_out]}

    @staticmethod
    def from_json(raw: Any) -> Optional[Tuple[Key, "AccountMemory"]]:
        """Given one stored object, return (key, memory), or None when it is not one of ours.
        Every field is checked by type: a damaged file must not break a run."""
        if not isinstance(raw, dict) or not all(isinstance(raw.get(name), str) and raw[name]
                                                for name in ("source", "id")):
            return None
        seen_at = parse_timestamp(raw.get("seen_at"))
        if seen_at is None:
            return None
        try:
            state = AccountState(raw.get("state")) if raw.get("state") is not None else None
        except ValueError:
            state = None
        return (raw["source"], raw["id"]), AccountMemory(
            seen_at=seen_at, state=state, failing_since=parse_timestamp(raw.get("failing_since")),
            failing_announced=raw.get("failing_announced") is True,
            login_announced=raw.get("login_announced") is True,
            low=_marks_from_json(raw.get("low")), runs_out=_marks_from_json(raw.get("runs_out")))


def _marks_from_json(raw: Any) -> Tuple[Mark, ...]:
    if not isinstance(raw, list):
        return ()
    return tuple((item[0], parse_timestamp(item[1])) for item in raw[:MAX_MARKS]
                 if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str))


Memory = Dict[Key, AccountMemory]


def memory_to_json(memory: Mapping[Key, AccountMemory]) -> Dict[str, Any]:
    """Return the whole memory as one JSON object."""
    return {"version": VERSION,
            "accounts": [entry.to_json(key) for key, entry in sorted(memory.items())]}


def memory_from_json(raw: Any) -> Memory:
    """Given what memory_to_json returned (or anything else), return the memory it holds."""
    accounts = raw.get("accounts") if isinstance(raw, dict) else None
    if not isinstance(accounts, list):
        return {}
    pairs = (AccountMemory.from_json(item) for item in accounts)
    return dict(pair for pair in pairs if pair is not None)


def _stamp(moment: Optional[datetime]) -> Optional[str]:
    return format_timestamp(moment) if moment is not None else None
