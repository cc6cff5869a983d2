"""A report document as HTML for weasyprint: cover, summary with charts, family table, and the
section of the report's type (controls, gaps or the matrix), then evidence if asked for.

Every value from the database is escaped here; the HTML loads nothing but the bundled
stylesheet (app.rendering refuses anything else).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from html import escape
from pathlib import Path

from app.charts import LEGEND_ORDER, STATUS_LABELS, family_bars, status_donut
from app.rendering import render_pdf
from models import ControlStatus, ReportType
from models.report import ControlLine, ReportDocument, StatusTotals

# A family chart taller than this many bars is split, so no chart is cut at a page end.
BARS_PER_CHART = 34
# More business units than this do not fit across a landscape page; the XLSX and JSON have them all.
MATRIX_UNIT_COLUMNS = 10


def write_report_pdf(document: ReportDocument, path: Path) -> None:
    path.write_bytes(render_pdf(report_html(document)))


def report_html(document: ReportDocument) -> str:
    sections = [_cover(document), _summary(document)]
    if document.report.type is ReportType.FRAMEWORK_SCORECARD:
        sections.append(_controls_table("Controls", document.controls))
    elif document.report.type is ReportType.GAP_ANALYSIS:
        sections.append(_gaps(document))
    else:
        sections.append(_matrix(document))
    if document.evidence_asked:
        sections.append(_evidence(document.controls))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<title>{escape(document.report.title)}</title><link rel="stylesheet" href="report.css"></head>'
        f"<body>{''.join(sections)}</body></html>"
    )


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d") if moment else "—"


def _percent(totals: StatusTotals) -> str:
    return "n/a" if totals.compliance_percent is None else f"{totals.compliance_percent:.1f}%"


def _share(totals: StatusTotals, status: ControlStatus) -> str:
    return f"{100 * totals.count(status) / totals.controls if totals.controls else 0:.1f}%"


def _status(status: ControlStatus) -> str:
    return f'<span class="status {status.value.lower()}">{STATUS_LABELS[status]}</span>'


def _cover(document: ReportDocument) -> str:
    report, framework, filters = document.report, document.framework, document.filters
    scope = [
        ("Families", ", ".join(filters.families)),
        ("Statuses", ", ".join(STATUS_LABELS[s] for s in filters.statuses)),
        ("Business units", ", ".join(u.name for u in document.business_units if filters.business_unit_ids)),
    ]
    scope_rows = "".join(
        f"<tr><th>{name}</th><td>{escape(value or 'all')}</td></tr>" for name, value in scope
    )
    return f"""
    <section class="cover">
      <p class="kicker">Compliance report</p>
      <h1>{escape(report.title)}</h1>
      <p class="score">{_percent(document.totals)}</p>
      <p class="score-note">compliant across {document.totals.controls} controls in scope</p>
      <table class="facts">
        <tr><th>Framework</th><td>{escape(framework.name)} {escape(framework.version)}</td></tr>
        <tr><th>Generated</th><td>{report.generated_at:%Y-%m-%d %H:%M} UTC</td></tr>
        <tr><th>Report id</th><td>{report.id}</td></tr>
        {scope_rows}
      </table>
      <p class="rule">Scoring: {escape(document.scoring_rule)}.</p>
    </section>"""


def _summary(document: ReportDocument) -> str:
    totals = document.totals
    status_rows = "".join(
        f"<tr><td>{_status(status)}</td><td class='num'>{totals.count(status)}</td>"
        f"<td class='num'>{_share(totals, status)}</td></tr>"
        for status in LEGEND_ORDER
    )
    families = [
        (f"{f.ref_id} {f.title}" if f.title != f.ref_id else f.ref_id, f.totals) for f in document.families
    ]
    charts = "".join(
        f'<div class="chart">{family_bars(families[start : start + BARS_PER_CHART])}</div>'
        for start in range(0, len(families), BARS_PER_CHART)
    )
    family_rows = "".join(
        f"<tr><td>{escape(f.ref_id)}</td><td>{escape(f.title)}</td><td class='num'>{f.totals.controls}</td>"
        f"<td class='num'>{f.totals.implemented}</td><td class='num'>{f.totals.partially_implemented}</td>"
        f"<td class='num'>{f.totals.not_implemented}</td><td class='num'>{f.totals.not_assessed}</td>"
        f"<td class='num'>{f.totals.not_applicable}</td><td class='num'>{_percent(f.totals)}</td></tr>"
        for f in document.families
    )
    return f"""
    <section>
      <h2>Summary</h2>
      <div class="chart">{status_donut(totals)}</div>
      <table class="totals">
        <thead><tr><th>Status</th><th class="num">Controls</th><th class="num">Share</th></tr></thead>
        <tbody>{status_rows}</tbody>
        <tfoot><tr><th>Total</th><th class="num">{totals.controls}</th><th class="num">100%</th></tr></tfoot>
      </table>
      <h2>Compliance by family</h2>
      {charts}
      <table class="families">
        <thead><tr><th>Family</th><th>Title</th><th class="num">Controls</th><th class="num">Impl.</th>
          <th class="num">Partial</th><th class="num">Not impl.</th><th class="num">Not assessed</th>
          <th class="num">N/A</th><th class="num">Score</th></tr></thead>
        <tbody>{family_rows}</tbody>
        <tfoot><tr><th colspan="2">All families</th><th class="num">{totals.controls}</th>
          <th class="num">{totals.implemented}</th><th class="num">{totals.partially_implemented}</th>
          <th class="num">{totals.not_implemented}</th><th class="num">{totals.not_assessed}</th>
          <th class="num">{totals.not_applicable}</th><th class="num">{_percent(totals)}</th></tr></tfoot>
      </table>
    </section>"""


def _controls_table(heading: str, lines: Iterable[ControlLine]) -> str:
    rows = "".join(
        f"<tr><td class='ref'>{escape(line.ref_id)}</td><td>{escape(line.title)}</td>"
        f"<td>{escape(line.family)}</td><td>{_status(line.status)}</td><td>{_when(line.assessed_at)}</td>"
        f"<td class='num'>{line.evidence_count}</td></tr>"
        for line in lines
    )
    return f"""
    <section class="listing">
      <h2>{escape(heading)}</h2>
      <table>
        <thead><tr><th>Control</th><th>Title</th><th>Family</th><th>Status</th><th>Assessed</th>
          <th class="num">Evidence</th></tr></thead>
        <tbody>{rows}</tbody>
      </table>
    </section>"""


def _gaps(document: ReportDocument) -> str:
    if not document.controls:
        return (
            '<section class="listing"><h2>Gaps</h2>'
            "<p>No gaps: every control in scope is implemented or not applicable.</p></section>"
        )
    titles = {f.ref_id: f.title for f in document.families}
    by_family: dict[str, list[ControlLine]] = {}
    for line in document.controls:
        by_family.setdefault(line.family, []).append(line)
    parts = []
    for family, lines in by_family.items():
        rows = "".join(
            f"<tr><td class='ref'>{escape(line.ref_id)}</td><td>{escape(line.title)}</td>"
            f"<td>{_status(line.status)}</td><td>{escape(line.notes) or '—'}</td></tr>"
            for line in lines
        )
        gaps = f"{len(lines)} gap{'s' * (len(lines) != 1)}"
        parts.append(
            f"<h3>{escape(family)} {escape(titles.get(family, ''))} · {gaps}</h3><table><thead><tr>"
            "<th>Control</th><th>Title</th><th>Status</th><th>Assessor notes</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
    return f'<section class="listing"><h2>Gaps ({len(document.controls)})</h2>{"".join(parts)}</section>'


def _matrix(document: ReportDocument) -> str:
    units = document.business_units[:MATRIX_UNIT_COLUMNS]
    left_out = len(document.business_units) - len(units)
    head = "".join(f"<th>{escape(unit.name)}</th>" for unit in units)
    rows = []
    for line in document.controls:
        by_unit = {u.business_unit_id: u.status for u in line.by_business_unit}
        cells = "".join(
            f"<td>{_status(by_unit[unit.id]) if unit.id in by_unit else '—'}</td>" for unit in units
        )
        rows.append(
            f"<tr><td class='ref'>{escape(line.ref_id)}</td><td>{escape(line.title)}</td>{cells}"
            f"<td>{_status(line.status)}</td><td class='num'>{line.evidence_count}</td></tr>"
        )
    note = f"<p>{left_out} more business units are in the XLSX and JSON forms of this report.</p>"
    return f"""
    <section class="listing matrix">
      <h2>Control matrix</h2>{note if left_out else ""}
      <table>
        <thead><tr><th>Control</th><th>Title</th>{head}<th>Overall</th>
          <th class="num">Evidence</th></tr></thead>
        <tbody>{"".join(rows)}</tbody>
      </table>
    </section>"""


def _evidence(lines: list[ControlLine]) -> str:
    rows = "".join(
        f"<tr><td class='ref'>{escape(line.ref_id)}</td><td>{escape(item.title)}</td>"
        f"<td>{escape(item.source)}</td><td>{escape(item.status)}</td><td>{_when(item.collected_at)}</td></tr>"
        for line in lines
        for item in line.evidence or []
    )
    if not rows:
        return (
            '<section class="listing"><h2>Evidence</h2>'
            "<p>No evidence is recorded for these controls.</p></section>"
        )
    return f"""
    <section class="listing">
      <h2>Evidence</h2>
      <table>
        <thead><tr><th>Control</th><th>Evidence</th><th>Source</th><th>Status</th><th>Collected</th></tr></thead>
        <tbody>{rows}</tbody>
      </table>
    </section>"""
