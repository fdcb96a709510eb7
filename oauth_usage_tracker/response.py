"""A finished HTTP response (HttpResponse), made once its answer is read: a one-account run
imports this while its request is in flight (run._import_the_rest), not before the request goes
out (Python 3.11 compiles each dataclass's generated methods from source: about a millisecond
each). `http.HttpResponse` names it too."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class HttpResponse:
    """A finished response with its (capped) body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def is_html(self) -> bool:
        """True when the body is an HTML page (a CDN challenge, a login page…)."""
        kind = self.headers.get("Content-Type", "").lower()
        start = self.body.lstrip()[:15].lower()
        return "html" in kind or start.startswith(b"<!doctype html") or start.startswith(b"<html")
