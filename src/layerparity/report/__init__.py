"""Renderers of a :class:`~layerparity.result.Report`: text (Rich or plain), JSON, HTML.

>>> from layerparity.report import format_table, print_report, write_json, read_json, write_html
"""

from .aggregate import aggregate_reports
from .html import render_html, write_html
from .json import (
    ReportFormatError,
    load_report,
    read_json,
    report_from_dict,
    validate_report,
    write_json,
)
from .text import DEFAULT_MAX_ROWS, format_report, format_summary, format_table, print_report

__all__ = [
    "DEFAULT_MAX_ROWS",
    "aggregate_reports",
    "ReportFormatError",
    "format_report",
    "format_summary",
    "format_table",
    "load_report",
    "print_report",
    "read_json",
    "render_html",
    "report_from_dict",
    "validate_report",
    "write_html",
    "write_json",
]
