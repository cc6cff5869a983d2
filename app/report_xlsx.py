"""A report document as an XLSX workbook: a Summary sheet with native charts, then one sheet for
the report's listing (Controls, Gaps or Matrix) and one for evidence if asked for.

Written in xlsxwriter's constant-memory mode (each row is flushed once the next begins), every
cell through app.rendering.write_cell, so user text that looks like a formula stays text.
Percentages are numbers from 0 to 100, as in the JSON form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import xlsxwriter

from app.charts import LEGEND_ORDER, STATUS_COLOURS, STATUS_LABELS
from app.rendering import write_cell
from models import ReportType
from models.report import ControlLine, ReportDocument, StatusTotals

FAMILY_COLUMNS = (
    "Family",
    "Title",
    "Controls",
    "Implemented",
    "Partially implemented",
    "Not implemented",
    "Not assessed",
    "Not applicable",
    "Compliance %",
)


def write_report_xlsx(document: ReportDocument, path: Path) -> None:
    with xlsxwriter.Workbook(path, {"constant_memory": True}) as book:
        formats = _formats(book)
        _summary_sheet(book, formats, document)
        kind = document.report.type
        if kind is ReportType.FRAMEWORK_SCORECARD:
            header = ["Control", "Title", "Family", "Kind", "Status", "Assessed", "Evidence"]
            rows = (
                [
                    c.ref_id,
                    c.title,
                    c.family,
                    c.kind,
                    STATUS_LABELS[c.status],
                    c.assessed_at,
                    c.evidence_count,
                ]
                for c in document.controls
            )
            _table_sheet(book, formats, "Controls", header, rows, [12, 60, 10, 12, 20, 12, 9])
        elif kind is ReportType.GAP_ANALYSIS:
            header = ["Family", "Control", "Title", "Status", "Assessor notes", "Assessed"]
            rows = (
                [c.family, c.ref_id, c.title, STATUS_LABELS[c.status], c.notes, c.assessed_at]
                for c in document.controls
            )
            _table_sheet(book, formats, "Gaps", header, rows, [10, 12, 60, 20, 60, 12])
        else:
            units = document.business_units
            header = ["Control", "Title", "Family", *(u.name for u in units), "Overall", "Evidence"]
            rows = (_matrix_row(c, [u.id for u in units]) for c in document.controls)
            widths = [12, 50, 10, *(18 for _ in units), 20, 9]
            _table_sheet(book, formats, "Matrix", header, rows, widths)
        if document.evidence_asked:
            header = ["Control", "Evidence", "Source", "Status", "Collected", "Object key"]
            rows = (
                [c.ref_id, e.title, e.source, e.status, e.collected_at, e.s3_key]
                for c in document.controls
                for e in c.evidence or []
            )
            _table_sheet(book, formats, "Evidence", header, rows, [12, 50, 14, 12, 12, 50])


def _formats(book: Any) -> dict[str, Any]:
    return {
        "title": book.add_format({"bold": True, "font_size": 16}),
        "label": book.add_format({"bold": True, "font_color": "#555555"}),
        "header": book.add_format({"bold": True, "bg_color": "#F0F2F5", "bottom": 1, "text_wrap": True}),
        "total": book.add_format({"bold": True, "top": 1}),
        "percent": book.add_format({"num_format": '0.0"%"'}),
        "total_percent": book.add_format({"num_format": '0.0"%"', "bold": True, "top": 1}),
        "date": book.add_format({"num_format": "yyyy-mm-dd"}),
        "wrap": book.add_format({"text_wrap": True, "valign": "top"}),
    }


def _totals_cells(totals: StatusTotals) -> list[Any]:
    return [
        totals.controls,
        totals.implemented,
        totals.partially_implemented,
        totals.not_implemented,
        totals.not_assessed,
        totals.not_applicable,
        totals.compliance_percent,
    ]


def _summary_sheet(book: Any, formats: dict[str, Any], document: ReportDocument) -> None:
    sheet = book.add_worksheet("Summary")
    sheet.set_column(0, 0, 24)
    sheet.set_column(1, 1, 40)
    sheet.set_column(2, 8, 13)
    totals = document.totals
    write_cell(sheet, 0, 0, document.report.title, formats["title"])
    facts = [
        ("Framework", f"{document.framework.name} {document.framework.version}"),
        ("Generated (UTC)", document.report.generated_at),
        ("Report id", str(document.report.id)),
        ("Controls in scope", totals.controls),
        ("Compliance %", totals.compliance_percent),
        ("Scoring", document.scoring_rule),
    ]
    for row, (label, value) in enumerate(facts, start=1):
        write_cell(sheet, row, 0, label, formats["label"])
        style = {"Generated (UTC)": "date", "Compliance %": "percent"}.get(label)
        write_cell(sheet, row, 1, value, formats[style] if style else None)

    status_top = len(facts) + 2
    for column, name in enumerate(("Status", "Controls", "Share %")):
        write_cell(sheet, status_top, column, name, formats["header"])
    for offset, status in enumerate(LEGEND_ORDER, start=1):
        count = totals.count(status)
        write_cell(sheet, status_top + offset, 0, STATUS_LABELS[status])
        write_cell(sheet, status_top + offset, 1, count)
        share = round(100 * count / totals.controls, 1) if totals.controls else 0.0
        write_cell(sheet, status_top + offset, 2, share, formats["percent"])
    status_end = status_top + len(LEGEND_ORDER)
    write_cell(sheet, status_end + 1, 0, "Total", formats["total"])
    write_cell(sheet, status_end + 1, 1, totals.controls, formats["total"])

    family_top = status_end + 3
    for column, name in enumerate(FAMILY_COLUMNS):
        write_cell(sheet, family_top, column, name, formats["header"])
    for offset, family in enumerate(document.families, start=1):
        write_cell(sheet, family_top + offset, 0, family.ref_id)
        write_cell(sheet, family_top + offset, 1, family.title)
        for column, value in enumerate(_totals_cells(family.totals), start=2):
            write_cell(sheet, family_top + offset, column, value, formats["percent"] if column == 8 else None)
    family_end = family_top + len(document.families)
    write_cell(sheet, family_end + 1, 0, "All families", formats["total"])
    write_cell(sheet, family_end + 1, 1, "", formats["total"])
    for column, value in enumerate(_totals_cells(totals), start=2):
        write_cell(sheet, family_end + 1, column, value, formats["total_percent" if column == 8 else "total"])

    pie = book.add_chart({"type": "doughnut"})
    pie.add_series(
        {
            "name": "Controls by status",
            "categories": ["Summary", status_top + 1, 0, status_end, 0],
            "values": ["Summary", status_top + 1, 1, status_end, 1],
            "points": [{"fill": {"color": STATUS_COLOURS[s]}} for s in LEGEND_ORDER],
        }
    )
    pie.set_title({"name": "Controls by status"})
    sheet.insert_chart(1, 10, pie, {"x_scale": 1.1, "y_scale": 1.1})
    if document.families:
        bars = book.add_chart({"type": "bar"})
        bars.add_series(
            {
                "name": "Compliance %",
                "categories": ["Summary", family_top + 1, 0, family_end, 0],
                "values": ["Summary", family_top + 1, 8, family_end, 8],
                "fill": {"color": STATUS_COLOURS[LEGEND_ORDER[0]]},
                "gap": 40,
            }
        )
        bars.set_title({"name": "Compliance by family"})
        bars.set_x_axis({"min": 0, "max": 100, "num_format": '0"%"'})
        bars.set_y_axis({"reverse": True})
        bars.set_legend({"none": True})
        height = max(1.0, min(len(document.families), 60) / 12)
        sheet.insert_chart(19, 10, bars, {"x_scale": 1.3, "y_scale": height})


def _table_sheet(
    book: Any, formats: dict[str, Any], name: str, header: list[str], rows: Any, widths: list[int]
) -> None:
    """A listing: header row frozen, autofilter over every row, column widths set."""
    sheet = book.add_worksheet(name)
    for column, width in enumerate(widths):
        sheet.set_column(column, column, width)
    for column, title in enumerate(header):
        write_cell(sheet, 0, column, title, formats["header"])
    sheet.freeze_panes(1, 0)
    count = 0
    for count, values in enumerate(rows, start=1):
        for column, value in enumerate(values):
            write_cell(sheet, count, column, value, formats["date"] if hasattr(value, "year") else None)
    sheet.autofilter(0, 0, max(count, 1), len(header) - 1)


def _matrix_row(line: ControlLine, unit_ids: list[Any]) -> list[Any]:
    by_unit = {u.business_unit_id: STATUS_LABELS[u.status] for u in line.by_business_unit}
    return [
        line.ref_id,
        line.title,
        line.family,
        *(by_unit.get(unit, "") for unit in unit_ids),
        STATUS_LABELS[line.status],
        line.evidence_count,
    ]
