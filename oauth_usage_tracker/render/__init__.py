"""Renderers: (Report, …) -> str. They never print and never write files."""
from .json_report import render_json
from .prometheus import render_prometheus
from .table import render_table

__all__ = ["render_json", "render_prometheus", "render_table"]
