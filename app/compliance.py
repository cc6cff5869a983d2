"""A framework's compliance as reports show it, computed from assessment results in PostgreSQL.

The rules (status per control, score) are stated in models.report. Three statements do the
work: the controls in scope, the newest result per control and business unit, and evidence per
control; they are combined here in Python because each control's status depends on all of its
business units at once.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from app.errors import NotFoundError
from models import ControlStatus, GenerateReportPayload, ReportType
from models.payloads import GAP_STATUSES
from models.report import (
    RESULT_STATUS,
    STATUS_ORDER,
    BusinessUnitRef,
    ControlLine,
    EvidenceItem,
    FamilySummary,
    FrameworkRef,
    ReportDocument,
    ReportInfo,
    StatusTotals,
    UnitStatus,
)

NO_FAMILY = "(none)"
ORGANISATION_WIDE = "Organisation-wide"
REPORT_TITLES = {
    ReportType.FRAMEWORK_SCORECARD: "Framework scorecard",
    ReportType.GAP_ANALYSIS: "Gap analysis",
    ReportType.CONTROL_MATRIX: "Control matrix",
}

# Withdrawn controls and tree levels that are not assessed (a CISO Assistant function) are not in scope.
CONTROLS = """
    SELECT id, ref_id, title, coalesce(family, $2) AS family, kind
      FROM controls
     WHERE framework_id = $1 AND assessable AND NOT withdrawn
       AND (cardinality($3::text[]) = 0 OR family = ANY($3))
     ORDER BY sort_key
"""
# The newest result per control and business unit; a NOT_TESTED placeholder of a running assessment
# does not hide an earlier real result.
NEWEST_RESULTS = """
    SELECT DISTINCT ON (r.control_id, a.business_unit_id)
           r.control_id, a.business_unit_id, r.status, r.notes, r.updated_at
      FROM assessment_results r JOIN assessments a ON a.id = r.assessment_id
     WHERE a.framework_id = $1 AND a.status <> 'CANCELLED'
       AND (cardinality($2::uuid[]) = 0 OR a.business_unit_id = ANY($2))
     ORDER BY r.control_id, a.business_unit_id, r.status = 'NOT_TESTED', r.updated_at DESC
"""
# Evidence of the framework's controls; with a business-unit filter, evidence gathered for other
# units' assessments is left out (evidence for no assessment in particular stays).
EVIDENCE = """
    SELECT e.control_id, e.title, e.source, e.status, e.collected_at, e.s3_key
      FROM evidence e JOIN controls c ON c.id = e.control_id
      LEFT JOIN assessments a ON a.id = e.assessment_id
     WHERE c.framework_id = $1
       AND (cardinality($2::uuid[]) = 0 OR e.assessment_id IS NULL OR a.business_unit_id = ANY($2))
     ORDER BY e.control_id, e.collected_at DESC
"""


def least_favourable(statuses: list[ControlStatus]) -> ControlStatus:
    return min(statuses, key=STATUS_ORDER.index) if statuses else ControlStatus.NOT_ASSESSED


async def build_report(
    conn: asyncpg.Connection, job: GenerateReportPayload, requested_by: UUID | None
) -> ReportDocument:
    framework = await conn.fetchrow(
        "SELECT id, name, version FROM frameworks WHERE id = $1", job.framework_id
    )
    if framework is None:
        raise NotFoundError(f"framework {job.framework_id} does not exist")
    units = job.filters.business_unit_ids
    controls = await conn.fetch(CONTROLS, job.framework_id, NO_FAMILY, job.filters.families)
    results: dict[UUID, list[UnitStatus]] = defaultdict(list)
    for row in await conn.fetch(NEWEST_RESULTS, job.framework_id, units):
        results[row["control_id"]].append(
            UnitStatus(
                business_unit_id=row["business_unit_id"],
                status=RESULT_STATUS[row["status"]],
                # A NOT_TESTED placeholder says when the assessment began, not when anything was assessed.
                assessed_at=None if row["status"] == "NOT_TESTED" else row["updated_at"],
                notes=row["notes"],
            )
        )
    evidence: dict[UUID, list[EvidenceItem]] = defaultdict(list)
    for row in await conn.fetch(EVIDENCE, job.framework_id, units):
        item = EvidenceItem(**{k: v for k, v in row.items() if k != "control_id"})
        evidence[row["control_id"]].append(item)
    family_titles = dict(
        await conn.fetch(
            "SELECT ref_id, title FROM control_families WHERE framework_id = $1", job.framework_id
        )
    )
    unit_ids = {u.business_unit_id for lines in results.values() for u in lines}
    unit_names = dict(
        await conn.fetch("SELECT id, name FROM business_units WHERE id = ANY($1)", [u for u in unit_ids if u])
    )

    lines = [_line(row, results.get(row["id"], []), evidence.get(row["id"], []), job) for row in controls]
    if job.filters.statuses:
        lines = [line for line in lines if line.status in job.filters.statuses]
    families: dict[str, list[ControlStatus]] = {}
    for line in lines:
        families.setdefault(line.family, []).append(line.status)
    listed = lines
    if job.report_type is ReportType.GAP_ANALYSIS:
        # Catalogue order of families, least favourable first inside each (sorted() is stable).
        order = {family: n for n, family in enumerate(families)}
        listed = sorted(
            (line for line in lines if line.status in GAP_STATUSES),
            key=lambda line: (order[line.family], STATUS_ORDER.index(line.status)),
        )
    title = f"{REPORT_TITLES[job.report_type]}: {framework['name']} {framework['version']}"
    return ReportDocument(
        report=ReportInfo(
            id=job.report_id,
            type=job.report_type,
            format=job.format,
            title=title,
            generated_at=datetime.now(UTC),
            requested_by=requested_by,
        ),
        framework=FrameworkRef(**dict(framework)),
        filters=job.filters,
        totals=StatusTotals.of([line.status for line in lines]),
        families=[
            FamilySummary(ref_id=ref, title=family_titles.get(ref, ref), totals=StatusTotals.of(statuses))
            for ref, statuses in families.items()
        ],
        business_units=sorted(
            (BusinessUnitRef(id=unit, name=unit_names.get(unit, ORGANISATION_WIDE)) for unit in unit_ids),
            key=lambda unit: (unit.id is not None, unit.name),
        ),
        controls=listed,
    )


def _line(
    row: Any, units: list[UnitStatus], evidence: list[EvidenceItem], job: GenerateReportPayload
) -> ControlLine:
    status = least_favourable([u.status for u in units])
    deciding = [u for u in units if u.status is status]
    dates = [u.assessed_at for u in deciding if u.assessed_at is not None]
    return ControlLine(
        ref_id=row["ref_id"],
        title=row["title"],
        family=row["family"],
        kind=row["kind"],
        status=status,
        assessed_at=max(dates) if dates else None,
        notes="; ".join(dict.fromkeys(u.notes for u in deciding if u.notes)),
        by_business_unit=units,
        evidence_count=sum(1 for e in evidence if e.status == "COLLECTED"),
        evidence=evidence if job.include_evidence else None,
    )
