"""What a token endpoint gives back (TokenGrant): only a token refresh makes one, so a run that
refreshes no token never creates this dataclass (Python 3.11 compiles each dataclass's generated
methods from source: about a millisecond each). `credentials.TokenGrant` names it too."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class TokenGrant:
    """What the token endpoint gave back."""

    access_token: str = field(repr=False)
    refresh_token: Optional[str] = field(repr=False, default=None)
    """None means: keep the old refresh token."""
    expires_in: float = 3600.0
