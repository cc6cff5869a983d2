"""Turning an export's spool (the CSV PostgreSQL's COPY wrote) into the file the user asked for.

This runs in a render process (app.rendering.RenderPool). It reads the spool one row at a time
and writes one row at a time: xlsxwriter in constant-memory mode, the csv module, or (for PDF,
which is capped at PDF_MAX_ROWS) an HTML table for weasyprint. Memory stays bounded by a row,
not by the export. Every text cell is made inert (no formulas) on the way.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path

import xlsxwriter
from xlsxwriter.worksheet import Worksheet

from app.rendering import inert_text, render_pdf, write_cell
from models import ExportFormat

# weasyprint lays out the whole document in memory: about 5 s and 150 MB per 1,000 rows of a wide table.
PDF_MAX_ROWS = 5000
# Excel's limit is 1,048,576 rows a sheet; an export that is longer continues on another sheet.
ROWS_PER_SHEET = 1_000_000
CONTENT_TYPES = {
    ExportFormat.XLSX: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ExportFormat.CSV: "text/csv; charset=utf-8",
    ExportFormat.PDF: "application/pdf",
}


@dataclass(frozen=True)
class Column:
    title: str
    sql: str  # an expression over the entity's FROM clause, cast to text by the query
    kind: str = "text"  # text | int | date (ISO 8601 in UTC from the query)
    width: int = 16  # characters, for XLSX
    in_pdf: bool = True  # long prose (a control's statement) stays out of a PDF table


@dataclass(frozen=True)
class ExportLayout:
    title: str
    columns: tuple[Column, ...]


def _spool_rows(spool: Path) -> Iterator[list[str]]:
    with spool.open(newline="", encoding="utf-8") as source:
        reader = csv.reader(source)
        next(reader, None)  # COPY's header row
        yield from reader


def _typed(column: Column, text: str) -> object:
    if text == "":
        return None
    if column.kind == "int":
        return int(text)
    if column.kind == "date":
        return datetime.fromisoformat(text)
    return text


def write_export(layout: ExportLayout, fmt: ExportFormat, spool: Path, path: Path) -> int:
    """Write the spool's rows to `path` in `fmt`; returns how many rows were written."""
    if fmt is ExportFormat.XLSX:
        return _write_xlsx(layout, spool, path)
    if fmt is ExportFormat.CSV:
        return _write_csv(layout, spool, path)
    return _write_pdf(layout, spool, path)


def _write_csv(layout: ExportLayout, spool: Path, path: Path) -> int:
    count = 0
    # With a byte-order mark, Excel opens UTF-8 text as UTF-8 instead of the local code page.
    with path.open("w", newline="", encoding="utf-8-sig") as out:
        writer = csv.writer(out)
        writer.writerow([c.title for c in layout.columns])
        for row in _spool_rows(spool):
            writer.writerow([inert_text(value) for value in row])
            count += 1
    return count


def _write_xlsx(layout: ExportLayout, spool: Path, path: Path) -> int:
    columns = layout.columns
    count = 0
    with xlsxwriter.Workbook(path, {"constant_memory": True}) as book:
        header = book.add_format({"bold": True, "bg_color": "#F0F2F5", "bottom": 1})
        date = book.add_format({"num_format": "yyyy-mm-dd hh:mm"})
        sheet: Worksheet | None = None
        row_in_sheet = sheets = 0
        for row in _spool_rows(spool):
            count += 1
            if sheet is None or row_in_sheet == ROWS_PER_SHEET:
                if sheet is not None:
                    sheet.autofilter(0, 0, row_in_sheet, len(columns) - 1)
                sheets += 1
                sheet = _new_sheet(
                    book, f"{layout.title} {sheets}" if sheets > 1 else layout.title, columns, header
                )
                row_in_sheet = 0
            row_in_sheet += 1
            for n, (column, text) in enumerate(zip(columns, row, strict=True)):
                write_cell(
                    sheet, row_in_sheet, n, _typed(column, text), date if column.kind == "date" else None
                )
        if sheet is None:
            sheet = _new_sheet(book, layout.title, columns, header)
        sheet.autofilter(0, 0, max(row_in_sheet, 1), len(columns) - 1)
    return count


def _new_sheet(book: xlsxwriter.Workbook, name: str, columns: Sequence[Column], header: object) -> Worksheet:
    sheet = book.add_worksheet(name[:31])
    for n, column in enumerate(columns):
        sheet.set_column(n, n, column.width)
        write_cell(sheet, 0, n, column.title, header)
    sheet.freeze_panes(1, 0)
    return sheet


def _write_pdf(layout: ExportLayout, spool: Path, path: Path) -> int:
    shown = [n for n, column in enumerate(layout.columns) if column.in_pdf]
    left_out = [c.title for c in layout.columns if not c.in_pdf]
    rows = []
    for row in _spool_rows(spool):
        cells = []
        for n in shown:
            value = _typed(layout.columns[n], row[n])
            text = value.strftime("%Y-%m-%d %H:%M UTC") if isinstance(value, datetime) else row[n]
            cells.append(f"<td>{escape(text)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    head = "".join(f"<th>{escape(layout.columns[n].title)}</th>" for n in shown)
    note = f"<p>Left out of the PDF (see XLSX or CSV): {escape(', '.join(left_out))}.</p>" if left_out else ""
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><link rel="stylesheet" href="report.css">'
        f"<title>{escape(layout.title)}</title></head><body class='export'><h1>{escape(layout.title)}</h1>"
        f"<p>{len(rows)} row{'s' * (len(rows) != 1)}, exported {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.</p>"
        f"{note}<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
        "</table></body></html>"
    )
    path.write_bytes(render_pdf(html))
    return len(rows)
