"""GENERATE_REPORT: a compliance report for one framework as PDF, XLSX or JSON, stored in S3.

Input: governance.reporting. Output: the file at `reports/{year}/{month}/report-{id}.{ext}` (the
month the report was requested), its `reports` row, and a REPORT_READY in-app notification to
the requester. Progress: 10 gathering results, 25 rendering, 75 storing, 90 stored, 100 done.

Idempotent by report id: every attempt writes the same key, and a redelivery of a report that is
already COMPLETED only makes sure the notification went out (its job id is derived from the
report id, so it is sent once). Failure policy: 2 attempts, 10 s apart, 5 minutes each; a dead
job marks the report FAILED with the error. Rendering runs in the render pool, never on the loop.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid5

from pydantic import BaseModel

from app import artifacts
from app.artifacts import REPORTS
from app.compliance import REPORT_TITLES, build_report
from app.report_files import CONTENT_TYPES, write_report
from app.runner import FlowSpec, JobContext, register_flow
from app.storage import safe_name
from models import (
    Channel,
    Flow,
    GenerateReportPayload,
    JobType,
    NotificationEventType,
    SendNotificationPayload,
)


class ReportResult(BaseModel):
    report_id: UUID
    s3_key: str
    file_name: str
    content_type: str
    size_bytes: int
    controls: int
    compliance_percent: float | None
    download_url: str


async def generate_report(ctx: JobContext) -> ReportResult:
    job: GenerateReportPayload = ctx.payload
    requester = ctx.envelope.requested_by
    async with ctx.pool.acquire() as conn:
        await artifacts.record_request(conn, job, requester, ctx.job_id)
        record = await artifacts.begin(conn, REPORTS, job.report_id)
    if record["status"] == "COMPLETED":
        await _announce(ctx, job, record["requested_by"], record["file_name"])
        return _result(job, record, record["parameters"].get("summary", {}))

    await artifacts.progress(ctx, REPORTS, job.report_id, 10, "gathering assessment results")
    async with ctx.pool.acquire() as conn:
        document = await build_report(conn, job, record["requested_by"])
    totals = document.totals
    await artifacts.progress(
        ctx, REPORTS, job.report_id, 25, f"rendering {job.format.value} for {totals.controls} controls"
    )
    extension = job.format.value.lower()
    key = artifacts.object_key(REPORTS, job.report_id, record["created_at"], extension)
    file_name = safe_name(
        f"{REPORT_TITLES[job.report_type]} {document.framework.name} {document.framework.version}"
        f" {record['created_at']:%Y-%m-%d}.{extension}"
    )
    size, _ = await artifacts.render_and_store(
        ctx,
        REPORTS,
        job.report_id,
        key,
        write_report,
        (document,),
        content_type=CONTENT_TYPES[job.format],
        download_name=file_name,
    )
    await artifacts.progress(ctx, REPORTS, job.report_id, 90, f"stored {size} bytes")
    summary = {"controls": totals.controls, "compliance_percent": totals.compliance_percent}
    async with ctx.pool.acquire() as conn:
        await artifacts.complete(
            conn,
            REPORTS,
            job.report_id,
            key=key,
            file_name=file_name,
            content_type=CONTENT_TYPES[job.format],
            size_bytes=size,
            extra={"parameters": {**record["parameters"], "summary": summary}},
        )
        record = await conn.fetchrow("SELECT * FROM reports WHERE id = $1", job.report_id)
    await _announce(ctx, job, record["requested_by"], file_name)
    return _result(job, record, summary)


def _result(job: GenerateReportPayload, record: Any, summary: dict[str, Any]) -> ReportResult:
    return ReportResult(
        report_id=job.report_id,
        s3_key=record["s3_key"],
        file_name=record["file_name"],
        content_type=record["content_type"],
        size_bytes=record["size_bytes"],
        controls=summary.get("controls", 0),
        compliance_percent=summary.get("compliance_percent"),
        download_url=f"/reports/{job.report_id}/download",
    )


async def _announce(ctx: JobContext, job: GenerateReportPayload, requester: UUID | None, name: str) -> None:
    """REPORT_READY to the requester, in the app; once per report, whatever the redeliveries."""
    if requester is None:
        return
    notification = SendNotificationPayload(
        event_type=NotificationEventType.REPORT_READY,
        channel=Channel.IN_APP,
        recipient_user_ids=[requester],
        template_data={
            "report_name": name,
            "report_format": job.format.value,
            "report_id": str(job.report_id),
        },
        idempotency_key=f"REPORT_READY:{job.report_id}",
    )
    async with ctx.pool.acquire() as conn:
        await ctx.enqueue_many([(uuid5(job.report_id, "report-ready"), notification)], conn=conn)


async def report_failed(ctx: JobContext, error: dict[str, Any]) -> None:
    job: GenerateReportPayload = ctx.payload
    await artifacts.fail(ctx.pool, REPORTS, job.report_id, f"{error['type']}: {error['message']}")


register_flow(
    FlowSpec(
        flow=Flow.REPORTING,
        concurrency=2,
        timeout_seconds=300,
        handlers={JobType.GENERATE_REPORT: generate_report},
        on_dead=report_failed,
    )
)
