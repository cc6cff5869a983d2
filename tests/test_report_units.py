"""Pure logic of reports and exports: scoring, status precedence, chart markup, export queries,
the spool-to-file writers. No services needed."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import openpyxl

from agents.export import QUERIES, export_query
from app.charts import family_bars, status_donut
from app.compliance import least_favourable
from app.export_files import Column, ExportLayout, write_export
from app.report_pdf import report_html
from models import (
    ControlStatus,
    ExportDataPayload,
    ExportEntity,
    ExportFormat,
    ReportFilters,
    ReportFormat,
    ReportType,
)
from models.report import ControlLine, FrameworkRef, ReportDocument, ReportInfo, StatusTotals

S = ControlStatus


def test_the_score_counts_partial_as_half_and_leaves_not_applicable_out() -> None:
    totals = StatusTotals.of([S.IMPLEMENTED, S.PARTIALLY_IMPLEMENTED, S.NOT_IMPLEMENTED, S.NOT_APPLICABLE])
    assert totals.compliance_percent == 50.0  # 1.5 of 3 applicable
    assert (totals.controls, totals.not_applicable, totals.count(S.PARTIALLY_IMPLEMENTED)) == (4, 1, 1)
    assert StatusTotals.of([S.NOT_APPLICABLE]).compliance_percent is None
    assert StatusTotals.of([]).compliance_percent is None
    assert StatusTotals.of([S.IMPLEMENTED, S.NOT_ASSESSED, S.NOT_ASSESSED]).compliance_percent == 33.3
    # 4.5 of 8 is 56.25 %: rounded half up, as a reader rounds, not to the even 56.2
    assert (
        StatusTotals.of(
            [S.IMPLEMENTED] * 4 + [S.PARTIALLY_IMPLEMENTED] + [S.NOT_IMPLEMENTED] * 3
        ).compliance_percent
        == 56.3
    )


def test_across_business_units_the_least_favourable_status_wins() -> None:
    assert least_favourable([S.IMPLEMENTED, S.NOT_IMPLEMENTED]) is S.NOT_IMPLEMENTED
    assert least_favourable([S.IMPLEMENTED, S.NOT_ASSESSED]) is S.NOT_ASSESSED
    assert least_favourable([S.NOT_APPLICABLE, S.IMPLEMENTED]) is S.IMPLEMENTED
    assert least_favourable([S.NOT_APPLICABLE, S.NOT_APPLICABLE]) is S.NOT_APPLICABLE
    assert least_favourable([]) is S.NOT_ASSESSED


def test_chart_labels_are_escaped() -> None:
    totals = StatusTotals.of([S.IMPLEMENTED])
    bars = family_bars([('<script>alert("x")</script>', totals)])
    assert "<script>" not in bars and "&lt;script&gt;" in bars
    assert "100.0%" in status_donut(totals)


def test_export_queries_take_only_the_filters_given_as_parameters() -> None:
    framework, unit = uuid4(), uuid4()
    job = ExportDataPayload(
        entity=ExportEntity.EVIDENCE,
        format=ExportFormat.CSV,
        filters={
            "framework_ids": [framework],
            "business_unit_ids": [unit],
            "updated_from": "2026-01-01T00:00:00Z",
        },
    )
    query, args = export_query(job)
    assert "c.framework_id = ANY($1::uuid[])" in query and "a.business_unit_id = ANY($2::uuid[])" in query
    assert "e.collected_at >= $3" in query and "LIMIT" not in query
    assert args == [[framework], [unit], datetime(2026, 1, 1, tzinfo=UTC)]
    policies, args = export_query(
        ExportDataPayload(
            entity=ExportEntity.POLICIES, format=ExportFormat.PDF, filters={"business_unit_ids": [unit]}
        )
    )
    assert "p.target_business_unit_ids &&($1::uuid[])" in policies and "LIMIT 5001" in policies
    bare, args = export_query(ExportDataPayload(entity=ExportEntity.CONTROLS, format=ExportFormat.XLSX))
    assert " WHERE " not in bare and args == []
    assert set(QUERIES) == set(ExportEntity)


def test_a_spool_becomes_typed_xlsx_and_inert_csv(tmp_path: Path) -> None:
    layout = ExportLayout(
        "Things", (Column("Name", "x"), Column("Count", "y", kind="int"), Column("When", "z", kind="date"))
    )
    spool = tmp_path / "spool.csv"
    with spool.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["x", "y", "z"])
        writer.writerow(['=HYPERLINK("http://evil")', "7", "2026-12-04T05:00:00Z"])
        writer.writerow(["plain, with comma", "", ""])
    assert write_export(layout, ExportFormat.XLSX, spool, tmp_path / "out.xlsx") == 2
    sheet = openpyxl.load_workbook(tmp_path / "out.xlsx")["Things"]
    first, second = list(sheet.iter_rows(min_row=2))
    assert (first[0].data_type, first[1].value, first[2].value) == ("s", 7, datetime(2026, 12, 4, 5, 0))
    assert (second[0].value, second[1].value) == ("plain, with comma", None)  # empty is blank
    assert write_export(layout, ExportFormat.CSV, spool, tmp_path / "out.csv") == 2
    rows = list(csv.reader(io.StringIO((tmp_path / "out.csv").read_text(encoding="utf-8-sig"))))
    assert rows == [
        ["Name", "Count", "When"],
        ['\'=HYPERLINK("http://evil")', "7", "2026-12-04T05:00:00Z"],
        ["plain, with comma", "", ""],
    ]


def test_evidence_asked_for_but_absent_is_said_not_left_out() -> None:
    line = ControlLine(
        ref_id="AC-1",
        title="Policy",
        family="AC",
        kind="control",
        status=S.IMPLEMENTED,
        assessed_at=None,
        notes="",
        by_business_unit=[],
        evidence_count=0,
        evidence=[],  # asked for; none recorded
    )
    document = ReportDocument(
        report=ReportInfo(
            id=uuid4(),
            type=ReportType.FRAMEWORK_SCORECARD,
            format=ReportFormat.PDF,
            title="Scorecard",
            generated_at=datetime.now(UTC),
            requested_by=None,
        ),
        framework=FrameworkRef(id=uuid4(), name="Framework", version="1"),
        filters=ReportFilters(),
        totals=StatusTotals.of([line.status]),
        families=[],
        business_units=[],
        controls=[line],
    )
    assert "No evidence is recorded for these controls." in report_html(document)
    not_asked = document.model_copy(update={"controls": [line.model_copy(update={"evidence": None})]})
    assert "<h2>Evidence</h2>" not in report_html(not_asked)
