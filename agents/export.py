"""EXPORT_DATA: controls, assessments, evidence, policies or assignments to XLSX, CSV or PDF.

Input: governance.export. Output: the file at `exports/{year}/{month}/export-{id}.{ext}` and its
`exports` row (status, progress, rows, size). Progress: 10 querying, 25 rendering, 75 storing,
90 stored, 100 done.

Streamed so that 100k+ rows take bounded memory: PostgreSQL writes the rows with COPY to a spool
file on the worker's disk (no row passes through Python on the event loop), a render process
turns the spool into the format row by row (app.export_files), and the file is stored in parts.
A PDF export is refused with a clear reason above PDF_MAX_ROWS rows (XLSX and CSV have no cap).

Idempotent by export id: every attempt writes the same key; a redelivery of a COMPLETED export
changes nothing. Failure policy: 3 attempts (5 s, 10 s), 3 minutes each; a dead job marks the
export FAILED with the error.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from app import artifacts
from app.artifacts import EXPORTS
from app.errors import NonRetryableError
from app.export_files import CONTENT_TYPES, PDF_MAX_ROWS, Column, ExportLayout, write_export
from app.runner import FlowSpec, JobContext, register_flow
from app.storage import safe_name
from models import ExportDataPayload, ExportEntity, ExportFormat, Flow, JobType


@dataclass(frozen=True)
class EntityQuery:
    """Where an entity's rows come from and which expressions its filters apply to."""

    layout: ExportLayout
    source: str  # FROM ... JOIN ...
    order_by: str
    updated: str  # expression filtered by updated_from / updated_to
    framework: str | None = None  # expression compared with filters.framework_ids
    units: str | None = None  # expression compared with filters.business_unit_ids
    units_overlap: bool = False  # `units` is an array that must share a unit with the filter


def _utc(expr: str) -> str:
    return f"""to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""


def _yes_no(expr: str) -> str:
    return f"CASE WHEN {expr} THEN 'yes' ELSE 'no' END"


QUERIES: dict[ExportEntity, EntityQuery] = {
    ExportEntity.CONTROLS: EntityQuery(
        layout=ExportLayout(
            "Controls",
            (
                Column("Framework", "f.name", width=24),
                Column("Version", "f.version", width=10),
                Column("Control", "c.ref_id", width=14),
                Column("Title", "c.title", width=50),
                Column("Family", "c.family", width=10),
                Column("Kind", "c.kind", width=12),
                Column("Parent", "c.parent_ref", width=12),
                Column("Withdrawn", _yes_no("c.withdrawn"), width=10),
                Column("Statement", "c.statement", width=80, in_pdf=False),
                Column("Guidance", "c.guidance", width=80, in_pdf=False),
                Column("Updated", _utc("c.updated_at"), kind="date", width=17),
            ),
        ),
        source="controls c JOIN frameworks f ON f.id = c.framework_id",
        order_by="f.name, f.version, c.sort_key",
        framework="c.framework_id",
        updated="c.updated_at",
    ),
    ExportEntity.ASSESSMENTS: EntityQuery(
        layout=ExportLayout(
            "Assessments",
            (
                Column("Assessment", "a.name", width=30),
                Column("Framework", "f.name || ' ' || f.version", width=24),
                Column("Business unit", "b.name", width=20),
                Column("Status", "a.status", width=12),
                Column("Scheduled for", _utc("a.scheduled_for"), kind="date", width=17),
                Column("Started", _utc("a.started_at"), kind="date", width=17),
                Column("Completed", _utc("a.completed_at"), kind="date", width=17),
                Column("Results", "r.results", kind="int", width=9),
                Column("Passed", "r.passed", kind="int", width=9),
                Column("Partial", "r.partial", kind="int", width=9),
                Column("Failed", "r.failed", kind="int", width=9),
                Column("Not applicable", "r.not_applicable", kind="int", width=9),
                Column("Not tested", "r.not_tested", kind="int", width=9),
                Column("Updated", _utc("a.updated_at"), kind="date", width=17),
            ),
        ),
        source="""assessments a JOIN frameworks f ON f.id = a.framework_id
                  LEFT JOIN business_units b ON b.id = a.business_unit_id
                  CROSS JOIN LATERAL (
                      SELECT count(*) AS results,
                             count(*) FILTER (WHERE x.status = 'PASS') AS passed,
                             count(*) FILTER (WHERE x.status = 'PARTIAL') AS partial,
                             count(*) FILTER (WHERE x.status = 'FAIL') AS failed,
                             count(*) FILTER (WHERE x.status = 'NOT_APPLICABLE') AS not_applicable,
                             count(*) FILTER (WHERE x.status = 'NOT_TESTED') AS not_tested
                        FROM assessment_results x WHERE x.assessment_id = a.id) r""",
        order_by="a.created_at, a.id",
        framework="a.framework_id",
        units="a.business_unit_id",
        updated="a.updated_at",
    ),
    ExportEntity.EVIDENCE: EntityQuery(
        layout=ExportLayout(
            "Evidence",
            (
                Column("Evidence", "e.title", width=40),
                Column("Control", "c.ref_id", width=14),
                Column("Framework", "f.name || ' ' || f.version", width=24),
                Column("Assessment", "a.name", width=24),
                Column("Business unit", "b.name", width=20),
                Column("Source", "e.source", width=12),
                Column("Integration", "i.name", width=20),
                Column("Status", "e.status", width=12),
                Column("Content type", "e.content_type", width=18),
                Column("Bytes", "e.size_bytes", kind="int", width=12),
                Column("SHA-256", "e.sha256", width=20, in_pdf=False),
                Column("Object key", "e.s3_key", width=40, in_pdf=False),
                Column("Collected", _utc("e.collected_at"), kind="date", width=17),
            ),
        ),
        source="""evidence e LEFT JOIN controls c ON c.id = e.control_id
                  LEFT JOIN frameworks f ON f.id = c.framework_id
                  LEFT JOIN assessments a ON a.id = e.assessment_id
                  LEFT JOIN business_units b ON b.id = a.business_unit_id
                  LEFT JOIN integrations i ON i.id = e.integration_id""",
        order_by="e.collected_at, e.id",
        framework="c.framework_id",
        units="a.business_unit_id",
        updated="e.collected_at",
    ),
    ExportEntity.POLICIES: EntityQuery(
        layout=ExportLayout(
            "Policies",
            (
                Column("Policy", "p.title", width=40),
                Column("Version", "p.version", kind="int", width=9),
                Column("Status", "p.status", width=12),
                Column("Target roles", "array_to_string(p.target_roles, ', ')", width=24),
                Column(
                    "Target business units",
                    "(SELECT string_agg(b.name, ', ' ORDER BY b.name) FROM business_units b"
                    " WHERE b.id = ANY(p.target_business_unit_ids))",
                    width=30,
                ),
                Column("Recipients", "p.recipients_count", kind="int", width=11),
                Column("Published", _utc("p.published_at"), kind="date", width=17),
                Column("Last distributed", _utc("p.last_distributed_at"), kind="date", width=17),
                Column("Updated", _utc("p.updated_at"), kind="date", width=17),
            ),
        ),
        source="policies p",
        order_by="p.title, p.id",
        units="p.target_business_unit_ids",
        units_overlap=True,
        updated="p.updated_at",
    ),
    ExportEntity.ASSIGNMENTS: EntityQuery(
        layout=ExportLayout(
            "Assignments",
            (
                Column("Policy", "p.title", width=30),
                Column("Version", "pa.policy_version", kind="int", width=9),
                Column("Person", "u.display_name", width=24),
                Column("E-mail", "u.email", width=30),
                Column("Business unit", "b.name", width=20),
                Column("Status", "pa.status", width=24),
                Column("Assigned", _utc("pa.created_at"), kind="date", width=17),
                Column("Due", _utc("pa.due_at"), kind="date", width=17),
                Column("Acknowledged", _utc("pa.acknowledged_at"), kind="date", width=17),
            ),
        ),
        source="""policy_assignments pa JOIN policies p ON p.id = pa.policy_id
                  JOIN users u ON u.id = pa.user_id
                  LEFT JOIN business_units b ON b.id = u.business_unit_id""",
        order_by="p.title, pa.policy_version, u.email",
        units="u.business_unit_id",
        updated="pa.updated_at",
    ),
}


def export_query(job: ExportDataPayload) -> tuple[str, list[Any]]:
    """The COPY query for the job's entity and filters, and its arguments."""
    spec = QUERIES[job.entity]
    filters = job.filters
    clauses: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if filters.framework_ids and spec.framework:
        clauses.append(f"{spec.framework} = ANY({arg(filters.framework_ids)}::uuid[])")
    if filters.business_unit_ids and spec.units:
        op = "&&" if spec.units_overlap else "= ANY"
        clauses.append(f"{spec.units} {op}({arg(filters.business_unit_ids)}::uuid[])")
    if filters.updated_from:
        clauses.append(f"{spec.updated} >= {arg(filters.updated_from)}")
    if filters.updated_to:
        clauses.append(f"{spec.updated} < {arg(filters.updated_to)}")
    # For a PDF, one row past the cap is enough to refuse the export.
    limit = f" LIMIT {PDF_MAX_ROWS + 1}" if job.format is ExportFormat.PDF else ""
    select = ", ".join(f"({c.sql})::text" for c in spec.layout.columns)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    return f"SELECT {select} FROM {spec.source}{where} ORDER BY {spec.order_by}{limit}", args


class ExportResult(BaseModel):
    export_id: UUID
    entity: ExportEntity
    format: ExportFormat
    rows: int
    s3_key: str
    file_name: str
    size_bytes: int
    download_url: str


async def export_data(ctx: JobContext) -> ExportResult:
    job: ExportDataPayload = ctx.payload
    async with ctx.pool.acquire() as conn:
        await artifacts.record_request(conn, job, ctx.envelope.requested_by, ctx.job_id)
        record = await artifacts.begin(conn, EXPORTS, job.export_id)
    if record["status"] != "COMPLETED":
        await _export(ctx, job, record)
        async with ctx.pool.acquire() as conn:
            record = await conn.fetchrow("SELECT * FROM exports WHERE id = $1", job.export_id)
    return ExportResult(
        export_id=job.export_id,
        entity=job.entity,
        format=job.format,
        rows=record["row_count"],
        s3_key=record["s3_key"],
        file_name=record["file_name"],
        size_bytes=record["size_bytes"],
        download_url=f"/exports/{job.export_id}/download",
    )


async def _export(ctx: JobContext, job: ExportDataPayload, record: Any) -> None:
    await artifacts.progress(ctx, EXPORTS, job.export_id, 10, f"querying {job.entity.value.lower()}")
    query, args = export_query(job)
    extension = job.format.value.lower()
    # The id's first characters keep two exports of one day apart in a downloads folder.
    day, short_id = f"{record['created_at']:%Y-%m-%d}", str(job.export_id)[:8]
    file_name = safe_name(f"{job.entity.value.lower()} export {day} {short_id}.{extension}")
    key = artifacts.object_key(EXPORTS, job.export_id, record["created_at"], extension)
    with tempfile.TemporaryDirectory(prefix="export-") as workdir:
        spool = Path(workdir) / "rows.csv"
        async with ctx.pool.acquire() as conn:
            status = await conn.copy_from_query(query, *args, output=spool, format="csv", header=True)
        rows = int(status.split()[-1])  # "COPY <rows>"
        if job.format is ExportFormat.PDF and rows > PDF_MAX_ROWS:
            raise NonRetryableError(
                f"a PDF export holds at most {PDF_MAX_ROWS} rows and this one has more; "
                "ask for XLSX or CSV, or narrow the filters"
            )
        await artifacts.progress(
            ctx, EXPORTS, job.export_id, 25, f"rendering {rows} rows as {job.format.value}"
        )
        size, written = await artifacts.render_and_store(
            ctx,
            EXPORTS,
            job.export_id,
            key,
            write_export,
            (QUERIES[job.entity].layout, job.format, spool),
            content_type=CONTENT_TYPES[job.format],
            download_name=file_name,
        )
    await artifacts.progress(ctx, EXPORTS, job.export_id, 90, f"stored {size} bytes")
    async with ctx.pool.acquire() as conn:
        await artifacts.complete(
            conn,
            EXPORTS,
            job.export_id,
            key=key,
            file_name=file_name,
            content_type=CONTENT_TYPES[job.format],
            size_bytes=size,
            extra={"row_count": written},
        )


async def export_failed(ctx: JobContext, error: dict[str, Any]) -> None:
    job: ExportDataPayload = ctx.payload
    await artifacts.fail(ctx.pool, EXPORTS, job.export_id, f"{error['type']}: {error['message']}")


register_flow(
    FlowSpec(
        flow=Flow.EXPORT,
        concurrency=2,
        timeout_seconds=180,
        handlers={JobType.EXPORT_DATA: export_data},
        on_dead=export_failed,
    )
)
