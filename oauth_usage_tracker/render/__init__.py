"""Renderers: (Report, …) -> str (`iter_json` yields the JSON in pieces). They never print and
never write files."""
from __future__ import annotations

from .json_report import iter_json, render_json
from .prometheus import render_prometheus
from .table import render_table

__all__ = ["iter_json", "render_json", "render_prometheus", "render_table"]
