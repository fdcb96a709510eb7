"""What both providers do with a usage answer that is not a token rejection. Pure."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .. import http, models
from ..errors import ProviderError
from ..models import AuthAccount

if TYPE_CHECKING:  # made once an answer arrives (usage.py): looked up through models when made
    from ..models import AccountDetails, AccountUsage, UsageWindow

NO_WINDOWS = "Usage response did not include quota windows"


def usage_from_answer(account: AuthAccount, response: "http.HttpResponse", what: str,
                      parse_usage: Callable[[Any, datetime], Sequence[UsageWindow]],
                      parse_details: Callable[[Any], AccountDetails]) -> AccountUsage:
    """Given an account, the usage endpoint's answer, the request's name in messages and the
    provider's parsers, return the account's AccountUsage, read now. Raise ProviderError for a
    failed status, a body that is no JSON, or one without windows."""
    if response.status != 200:
        raise http.status_error(response, what)
    now = datetime.now(timezone.utc)
    payload = http.decode_json(response, what)
    windows = parse_usage(payload, now)
    if not windows:
        raise ProviderError(NO_WINDOWS)
    details = parse_details(payload)
    # Made once with its details (what `details.apply(...)` would give, without the copy).
    return models.AccountUsage(
        id=account.id, provider=account.provider, email=account.email, windows=tuple(windows),
        updated_at=now, plan=details.plan, credits=details.credits,
        extra_usage=details.extra_usage)
