"""CSV files the product writes, safe to open in a spreadsheet.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read
as a formula by Excel, LibreOffice and Google Sheets, so a site name or an uploaded
value such as ``=HYPERLINK("https://evil.example", "x")`` would run when a coordinator
opens an export. Following OWASP's "CSV Injection" guidance, such a text cell is written
with a leading ``'``, which spreadsheets show as text and do not display.

Only text is changed: numbers stay numbers (``-0.25`` written as a float is still
``-0.25``), and so does text that is just a number (``"-5"`` read from an uploaded CSV
and echoed back), which no spreadsheet evaluates as a formula.
Every CSV the product writes goes through ``writer`` (exports, the experiment log,
prediction downloads); no Django here, so the core and the agent may use it too.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from typing import Any, TextIO

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def safe_cell(value: Any) -> Any:
    """``value`` as a spreadsheet will not evaluate it; non-text values unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


class SafeWriter:
    """``csv.writer`` whose rows go through ``safe_cell``."""

    def __init__(self, out: TextIO, **kwargs: Any) -> None:
        self._writer = csv.writer(out, **kwargs)

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._writer.writerow([safe_cell(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def writer(out: TextIO, **kwargs: Any) -> SafeWriter:
    """A CSV writer for ``out`` (``csv.writer``'s options) that neutralises formulas."""
    return SafeWriter(out, **kwargs)
