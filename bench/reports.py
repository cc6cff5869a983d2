"""Benchmark: FRAMEWORK_SCORECARD PDF and XLSX for a 1,200+ control catalog, and EXPORT_DATA of
100k policy assignments to XLSX and CSV, with peak memory.

The catalog is the shared NIST SP 800-53 LOW baseline repeated with new ids (bench.imports),
imported through the service and given a generated assessment per demo business unit. Each job
is timed from publishing it to COMPLETED (polling its row). Baselines in the same run: weasyprint
and xlsxwriter writing a bare table of the same controls in this process (what rendering alone
costs), and for the export a raw asyncpg COPY of the same query plus xlsxwriter writing its rows.
Peak memory is VmHWM from /proc: of the worker, and of its render processes, measured on a fresh
worker that does only the export.

    python -m bench.reports [--copies 9] [--rows 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import html
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import xlsxwriter

from agents.export import QUERIES, export_query
from app.db import connect
from app.devstack import start_stack
from app.export_files import write_export
from app.rendering import render_pdf
from app.seed import seed_bulk_users, seed_demo_assessment
from bench import result, time_job
from bench.imports import enlarged_catalog, import_and_time, peak_rss_mb
from models import (
    ExportDataPayload,
    ExportEntity,
    ExportFormat,
    GenerateReportPayload,
    JobEnvelope,
    JobPayload,
)
from tests.service import Service, prepare_service
from tests.workers import WorkerProcess

RUNS = 3


async def run_job(service: Service, payload: JobPayload) -> tuple[float, dict[str, Any]]:
    """Seconds from publishing the job, as the demo admin's, to COMPLETED, and its result."""
    return await time_job(service.env, JobEnvelope.for_payload(payload, requested_by=service.org.admin_id))


def bare_pdf(rows: list[tuple[str, str, str]]) -> float:
    """Seconds for weasyprint to lay out a plain table of the same controls (no charts, no service)."""
    body = "".join(
        f"<tr><td>{html.escape(r)}</td><td>{html.escape(t)}</td><td>{f}</td></tr>" for r, t, f in rows
    )
    started = time.perf_counter()
    head = '<head><link rel="stylesheet" href="report.css"></head>'
    render_pdf(f"<html>{head}<body><table>{body}</table></body></html>")
    return time.perf_counter() - started


def bare_xlsx(rows: list[tuple[str, str, str]], path: Path) -> float:
    started = time.perf_counter()
    with xlsxwriter.Workbook(path, {"constant_memory": True}) as book:
        sheet = book.add_worksheet()
        for n, row in enumerate(rows):
            sheet.write_row(n, 0, row)
    return time.perf_counter() - started


def render_process_peaks(worker: WorkerProcess) -> list[float]:
    """Peak RSS (MB) of every process the worker started: its render processes (and the
    multiprocessing resource tracker)."""
    assert worker.process is not None
    pid = worker.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [peak_rss_mb(int(child)) for child in children]


async def scorecards(service: Service, framework_id: UUID, controls: int) -> None:
    for fmt in ("PDF", "XLSX"):
        times = []
        for _ in range(RUNS):
            payload = GenerateReportPayload(
                report_type="FRAMEWORK_SCORECARD", format=fmt, framework_id=framework_id
            )
            seconds, summary = await run_job(service, payload)
            assert summary["controls"] == controls, summary
            times.append(seconds)
        result(f"scorecard_{fmt.lower()}_seconds_median", statistics.median(times), "s")
        result(f"scorecard_{fmt.lower()}_seconds_max", max(times), "s")
        result(f"scorecard_{fmt.lower()}_bytes", summary["size_bytes"], "bytes")


async def assignments(service: Service, rows: int) -> UUID:
    """A policy assigned to `rows` people of one business unit; returns the unit."""
    unit = service.org.business_unit_ids[2]
    conn = await connect(service.env["DATABASE_URL"])
    try:
        await seed_bulk_users(conn, rows, unit, ["USER", "EMPLOYEE"])
        policy = await conn.fetchval("INSERT INTO policies (title) VALUES ('Bench policy') RETURNING id")
        await conn.execute(
            """
            INSERT INTO policy_assignments (policy_id, policy_version, user_id, due_at)
            SELECT $1, 1, u.id, now() + interval '30 days' FROM users u WHERE u.business_unit_id = $2
            """,
            policy,
            unit,
        )
        await conn.execute("ANALYZE users; ANALYZE policy_assignments")
    finally:
        await conn.close()
    return unit


async def export_baseline(dsn: str, job: ExportDataPayload, workdir: Path) -> tuple[float, float, int]:
    """Seconds of a raw COPY of the export's query, then of writing its rows to XLSX."""
    query, args = export_query(job)
    spool = workdir / "baseline.csv"
    conn = await connect(dsn)
    try:
        started = time.perf_counter()
        status = await conn.copy_from_query(query, *args, output=spool, format="csv", header=True)
        copy_seconds = time.perf_counter() - started
    finally:
        await conn.close()
    started = time.perf_counter()
    write_export(QUERIES[job.entity].layout, ExportFormat.XLSX, spool, workdir / "baseline.xlsx")
    return copy_seconds, time.perf_counter() - started, int(status.split()[-1])


async def run(copies: int, rows: int, workdir: Path) -> None:
    with start_stack(workdir) as stack:
        service = await prepare_service(stack.env, workdir)
        try:
            worker = await service.start_worker("bench")
            seconds, imported = await import_and_time(
                service.env, f"imports/bench-{uuid4()}.json", enlarged_catalog(copies), "Report bench"
            )
            framework_id = UUID(imported["framework_id"])
            conn = await connect(service.env["DATABASE_URL"])
            try:
                await seed_demo_assessment(conn, framework_id, service.org.business_unit_ids)
                controls = [
                    (r["ref_id"], r["title"], r["family"])
                    for r in await conn.fetch(
                        "SELECT ref_id, title, family FROM controls"
                        " WHERE framework_id = $1 ORDER BY sort_key",
                        framework_id,
                    )
                ]
            finally:
                await conn.close()
            result("catalog_controls", len(controls), "controls")
            result("baseline_bare_table_pdf_seconds", bare_pdf(controls), "s")
            result("baseline_bare_table_xlsx_seconds", bare_xlsx(controls, workdir / "bare.xlsx"), "s")
            await scorecards(service, framework_id, len(controls))
            assert worker.process is not None
            result("scorecard_worker_peak_rss_megabytes", peak_rss_mb(worker.process.pid), "MB")
            result("scorecard_render_process_peak_rss_megabytes", max(render_process_peaks(worker)), "MB")
            service.stop_all()
            service.workers.clear()

            unit = await assignments(service, rows)
            job = ExportDataPayload(
                entity=ExportEntity.ASSIGNMENTS,
                format=ExportFormat.XLSX,
                filters={"business_unit_ids": [unit]},
            )
            copy_seconds, xlsx_seconds, baseline_rows = await export_baseline(
                service.env["DATABASE_URL"], job, workdir
            )
            result("baseline_export_copy_seconds", copy_seconds, "s")
            result("baseline_export_xlsxwriter_seconds", xlsx_seconds, "s")
            worker = await service.start_worker("export")  # fresh: its peaks are the export's alone
            seconds, summary = await run_job(service, job)
            assert summary["rows"] == baseline_rows >= rows, (summary, baseline_rows)
            result("export_rows", summary["rows"], "rows")
            result("export_xlsx_seconds", seconds, "s")
            result("export_xlsx_megabytes", summary["size_bytes"] / 1e6, "MB")
            result("export_xlsx_vs_copy_plus_xlsxwriter_ratio", seconds / (copy_seconds + xlsx_seconds), "x")
            assert worker.process is not None
            result("export_worker_peak_rss_megabytes", peak_rss_mb(worker.process.pid), "MB")
            result("export_render_process_peak_rss_megabytes", max(render_process_peaks(worker)), "MB")
            seconds, summary = await run_job(
                service, job.model_copy(update={"format": ExportFormat.CSV, "export_id": uuid4()})
            )
            result("export_csv_seconds", seconds, "s")
        finally:
            service.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--copies", type=int, default=9, help="copies of the LOW baseline (149 controls each)"
    )
    parser.add_argument("--rows", type=int, default=100_000, help="policy assignments to export")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-reports-") as tmp:
        asyncio.run(run(args.copies, args.rows, Path(os.environ.get("BENCH_WORKDIR", tmp))))


if __name__ == "__main__":
    main()
