"""Writing a report document to a file in its format; this runs in a render process
(app.rendering.RenderPool), so it imports nothing that starts the worker."""

from __future__ import annotations

from pathlib import Path

from app.report_pdf import write_report_pdf
from app.report_xlsx import write_report_xlsx
from models import ReportFormat
from models.report import ReportDocument

CONTENT_TYPES = {
    ReportFormat.PDF: "application/pdf",
    ReportFormat.XLSX: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ReportFormat.JSON: "application/json",
}


def write_report(document: ReportDocument, path: Path) -> int:
    """Write the document as its report's format; returns the file's size in bytes."""
    fmt = document.report.format
    if fmt is ReportFormat.PDF:
        write_report_pdf(document, path)
    elif fmt is ReportFormat.XLSX:
        write_report_xlsx(document, path)
    else:
        path.write_text(document.model_dump_json(indent=1), encoding="utf-8")
    return path.stat().st_size
