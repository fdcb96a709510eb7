"""One module per service, with the same two functions: `parse_usage` (pure) and `fetch_usage`."""
from __future__ import annotations

from ..models import Provider
from . import claude, codex

FETCHERS = {
    Provider.CODEX: codex.fetch_usage,
    Provider.CLAUDE: claude.fetch_usage,
}

__all__ = ["FETCHERS", "claude", "codex"]
