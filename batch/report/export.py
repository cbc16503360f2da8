"""A copy of the results table that is safe to open in a spreadsheet.

``results.csv`` stays exact (resume reads it back), so an id or a path that
begins with ``=``, ``+``, ``-`` or ``@`` is written as it is, and Excel,
LibreOffice and Google Sheets would run it as a formula (CSV injection). The
export prefixes such cells with an apostrophe, which spreadsheets read as
"this is text" and do not show, as OWASP's CSV-injection advice says; plain
numbers (a rotation of -90) are left alone, since no number is a formula.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from batch.durable import atomic_file
from batch.report.api import merged_rows
from batch.report.table import Results
from batch.results import COLUMNS

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")


def spreadsheet_cell(text: str) -> str:
    if text.startswith(_FORMULA_START) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def write_spreadsheet_csv(results: Results, target: Path) -> int:
    """The newest row per id of the folders' tables (in the manifest's order when there are several), every
    cell made safe, as UTF-8 CSV with a BOM (so that Excel reads it as UTF-8); returns the row count."""
    rows, _ = merged_rows(results)
    count = 0
    with atomic_file(target, "w", newline="", encoding="utf-8-sig") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([spreadsheet_cell(row[c]) for c in COLUMNS])
            count += 1
    return count
