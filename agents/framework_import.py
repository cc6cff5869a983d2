"""IMPORT_CONTROLS: load a control framework from a file in the bucket, idempotently.

The file is streamed to a temporary file, its format detected (or taken from the request), and
its records read in batches of `batch_size` off the event loop. Each batch is one transaction:
controls are upserted by (framework, ref_id); a control whose content hash differs is updated and
its previous version kept in control_history; an identical one is left alone and counted as
unchanged. So importing the same file twice changes nothing and says so. Parents are linked by
ref_id once every row is in, so rows may come in any order.

Rejected rows and nodes go to a validation report stored next to the file
(`<key>.report.json`) and summarised in the result. The request's error mode decides whether the
first rejection stops the import, a threshold does, or bad rows are skipped. A stopped import
keeps the batches already committed (importing the fixed file completes it) and fails the job
with the first reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
from pydantic import BaseModel

from app.catalogs import Record, detect_format, read_records
from app.errors import NonRetryableError
from app.resources import resources
from app.runner import FlowSpec, JobContext, register_flow
from models import Flow, ImportControlsPayload, ImportErrorMode, ImportFormat, JobType
from models.catalog import ControlRecord, FamilyRecord, RowError

MAX_IMPORT_BYTES = 200 * 1024 * 1024
REPORT_ERRORS_IN_RESULT = 20


class ImportResult(BaseModel):
    import_id: UUID
    framework_id: UUID
    format: ImportFormat
    families: int
    controls: int
    created: int
    updated: int
    unchanged: int
    rejected: int
    report_key: str
    errors: list[dict[str, str]]


async def import_controls(ctx: JobContext) -> ImportResult:
    job: ImportControlsPayload = ctx.payload
    async with ctx.pool.acquire() as conn:
        framework_id = await conn.fetchval(
            """
            INSERT INTO frameworks (name, version) VALUES ($1, $2)
            ON CONFLICT ON CONSTRAINT frameworks_name_version DO UPDATE SET name = EXCLUDED.name
            RETURNING id
            """,
            job.framework_name,
            job.framework_version,
        )
    storage = await resources.storage()
    with tempfile.TemporaryDirectory(prefix="import-") as workdir:
        path = Path(workdir) / "source"
        try:
            await storage.download(job.s3_key, path, MAX_IMPORT_BYTES)
        except ValueError as exc:
            raise NonRetryableError(str(exc)) from exc
        fmt = job.format if job.format is not ImportFormat.AUTO else detect_format(path, job.s3_key)
        async with ctx.pool.acquire() as conn:
            await conn.execute(
                """
                INSERT INTO framework_imports (id, framework_id, job_id, s3_key, format)
                VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (id) DO UPDATE SET status = 'RUNNING', started_at = now(), finished_at = NULL,
                    created = 0, updated = 0, unchanged = 0, rejected = 0, error = NULL
                """,
                job.import_id,
                framework_id,
                ctx.job_id,
                job.s3_key,
                fmt.value,
            )
        await ctx.progress(5, f"reading {fmt.value}")
        tally = Tally()
        try:
            stop = await _load(ctx, job, framework_id, path, fmt, tally)
        except NonRetryableError as exc:
            async with ctx.pool.acquire() as conn:
                await conn.execute(
                    "UPDATE framework_imports SET status = 'FAILED', error = $2, finished_at = now()"
                    " WHERE id = $1",
                    job.import_id,
                    str(exc),
                )
            raise

        async with ctx.pool.acquire() as conn:
            tally.errors.extend(await _link_parents(conn, framework_id))
        report_key = f"{job.s3_key}.report.json"
        result = ImportResult(
            import_id=job.import_id,
            framework_id=framework_id,
            format=fmt,
            families=tally.families,
            controls=tally.controls,
            created=tally.created,
            updated=tally.updated,
            unchanged=tally.unchanged,
            rejected=len(tally.errors),
            report_key=report_key,
            errors=[asdict(e) for e in tally.errors[:REPORT_ERRORS_IN_RESULT]],
        )
        report = {
            **result.model_dump(mode="json"),
            "errors": [asdict(e) for e in tally.errors],
            "stopped_at": asdict(stop) if stop else None,
        }
        await storage.put(report_key, json.dumps(report, indent=1).encode(), "application/json")
        reason = f"stopped at {stop.location}, {stop.field}: {stop.reason}" if stop else None
        async with ctx.pool.acquire() as conn:
            await conn.execute(
                """
                UPDATE framework_imports
                   SET status = $2, created = $3, updated = $4, unchanged = $5, rejected = $6,
                       report_key = $7, error = $8, finished_at = now()
                 WHERE id = $1
                """,
                job.import_id,
                "FAILED" if stop else "COMPLETED",
                tally.created,
                tally.updated,
                tally.unchanged,
                len(tally.errors),
                report_key,
                reason,
            )
    if stop is not None:
        raise NonRetryableError(f"import {reason} ({len(tally.errors)} rejected; report {report_key})")
    return result


async def _load(
    ctx: JobContext,
    job: ImportControlsPayload,
    framework_id: UUID,
    path: Path,
    fmt: ImportFormat,
    tally: Tally,
) -> RowError | None:
    """Read and upsert every batch; returns the error the request's error mode stopped at, if any.
    Rows after that error are not written."""
    records = await asyncio.to_thread(
        read_records, path, fmt, mapping=job.column_mapping, sheet=job.sheet_name
    )
    seen: dict[str, str] = {}  # ref_id -> where it first appeared
    # The next batch is read (and hashed) in a thread while this one is written.
    reading = asyncio.create_task(asyncio.to_thread(_next_batch, records, job.batch_size))
    try:
        while batch := await reading:
            reading = asyncio.create_task(asyncio.to_thread(_next_batch, records, job.batch_size))
            families: list[FamilyRecord] = []
            controls: list[ControlRecord] = []
            stop: RowError | None = None
            for record in batch:
                if isinstance(record, ControlRecord) and record.ref_id in seen:
                    where = seen[record.ref_id]
                    record = RowError(
                        record.location, "ref_id", f"{record.ref_id} already appeared at {where}"
                    )
                if isinstance(record, FamilyRecord):
                    families.append(record)
                elif isinstance(record, ControlRecord):
                    seen[record.ref_id] = record.location
                    controls.append(record)
                else:
                    tally.errors.append(record)
                    if _must_stop(job, len(tally.errors)):
                        stop = record
                        break
            async with ctx.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", str(framework_id))
                await _upsert_families(conn, framework_id, families)
                await _upsert_controls(conn, framework_id, job.import_id, controls, tally)
            tally.families += len(families)
            await ctx.progress(min(90, 5 + tally.controls // 100), f"{tally.controls} controls read")
            if stop is not None:
                return stop
        return None
    finally:
        with contextlib.suppress(Exception):  # let a read in flight finish before the file goes away
            await reading


class Tally:
    def __init__(self) -> None:
        self.families = self.controls = self.created = self.updated = self.unchanged = 0
        self.errors: list[RowError] = []


def _next_batch(records: Iterator[Record], size: int) -> list[Record]:
    """Up to `size` controls, with the families and errors read along the way. Each control's
    content hash is computed here, off the event loop (the record caches it)."""
    batch: list[Record] = []
    controls = 0
    for record in records:
        batch.append(record)
        if isinstance(record, ControlRecord):
            _ = record.content_hash
            controls += 1
            if controls >= size:
                break
    return batch


def _must_stop(job: ImportControlsPayload, rejected: int) -> bool:
    if job.error_mode is ImportErrorMode.STOP_FIRST:
        return True
    return job.error_mode is ImportErrorMode.THRESHOLD and rejected >= (job.error_threshold or 1)


async def _upsert_families(
    conn: asyncpg.Connection, framework_id: UUID, families: list[FamilyRecord]
) -> None:
    await conn.executemany(
        """
        INSERT INTO control_families (framework_id, ref_id, title, sort_key) VALUES ($1, $2, $3, $4)
        ON CONFLICT (framework_id, ref_id) DO UPDATE SET title = EXCLUDED.title, sort_key = EXCLUDED.sort_key
        """,
        [(framework_id, f.ref_id, f.title, f.sort_key) for f in families],
    )


async def _upsert_controls(
    conn: asyncpg.Connection, framework_id: UUID, import_id: UUID, controls: list[ControlRecord], tally: Tally
) -> None:
    """One statement per batch. The unique index decides insert or update (no plan can turn it into
    a scan of the framework, which a pre-read by ref_id became once the table grew); an update
    happens only when the content hash differs, and the history trigger keeps the old version."""
    await conn.execute("SELECT set_config('governance.import_id', $1, true)", str(import_id))
    written = await conn.fetch(
        """
        INSERT INTO controls
               (framework_id, ref_id, title, sort_key, source_id, kind, depth, assessable, family,
                parent_ref, statement, guidance, withdrawn, params, links, properties, content_hash)
        SELECT $1, ref_id, title, sort_key, source_id, kind, depth, assessable, family,
               parent_ref, statement, guidance, withdrawn, params::jsonb, links::jsonb, properties::jsonb,
               hash
          FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[], $8::bool[],
                      $9::text[], $10::text[], $11::text[], $12::text[], $13::bool[], $14::text[],
                      $15::text[], $16::text[], $17::text[])
               AS t(ref_id, title, sort_key, source_id, kind, depth, assessable, family, parent_ref,
                    statement, guidance, withdrawn, params, links, properties, hash)
        ON CONFLICT ON CONSTRAINT controls_framework_ref DO UPDATE
           SET title = EXCLUDED.title, sort_key = EXCLUDED.sort_key, source_id = EXCLUDED.source_id,
               kind = EXCLUDED.kind, depth = EXCLUDED.depth, assessable = EXCLUDED.assessable,
               family = EXCLUDED.family, parent_ref = EXCLUDED.parent_ref, statement = EXCLUDED.statement,
               guidance = EXCLUDED.guidance, withdrawn = EXCLUDED.withdrawn, params = EXCLUDED.params,
               links = EXCLUDED.links, properties = EXCLUDED.properties, content_hash = EXCLUDED.content_hash
         WHERE controls.content_hash IS DISTINCT FROM EXCLUDED.content_hash
        RETURNING xmax = 0 AS created
        """,
        framework_id,
        *_columns(controls),
    )
    created = sum(row["created"] for row in written)
    tally.controls += len(controls)
    tally.created += created
    tally.updated += len(written) - created
    tally.unchanged += len(controls) - len(written)


def _columns(controls: list[ControlRecord]) -> list[list[Any]]:
    """One list per column, for a set-based insert through unnest()."""
    return [
        [c.ref_id for c in controls],
        [c.title for c in controls],
        [c.sort_key for c in controls],
        [c.source_id for c in controls],
        [c.kind for c in controls],
        [c.depth for c in controls],
        [c.assessable for c in controls],
        [c.family for c in controls],
        [c.parent_ref for c in controls],
        [c.statement for c in controls],
        [c.guidance for c in controls],
        [c.withdrawn for c in controls],
        [json.dumps(c.params) for c in controls],
        [json.dumps(c.links) for c in controls],
        [json.dumps(c.properties) for c in controls],
        [c.content_hash for c in controls],
    ]


async def _link_parents(conn: asyncpg.Connection, framework_id: UUID) -> list[RowError]:
    """Resolve parent_ref to parent_id for the whole framework; report refs that name no control.

    The parent is found by a correlated lookup on the unique (framework, ref_id) index, never by
    a join the planner could turn into nested scans: right after a bulk import the table's
    statistics are stale, and a join plan took 120 s for 100k rows.
    """
    parent = "(SELECT p.id FROM controls p WHERE p.framework_id = c.framework_id AND p.ref_id = c.parent_ref)"
    await conn.execute(
        f"""
        UPDATE controls c SET parent_id = {parent}
         WHERE c.framework_id = $1 AND (c.parent_ref IS NOT NULL OR c.parent_id IS NOT NULL)
           AND c.parent_id IS DISTINCT FROM {parent}
        """,
        framework_id,
    )
    dangling = await conn.fetch(
        "SELECT ref_id, parent_ref FROM controls"
        " WHERE framework_id = $1 AND parent_ref IS NOT NULL AND parent_id IS NULL ORDER BY sort_key",
        framework_id,
    )
    return [
        RowError(
            f"control {r['ref_id']}", "parent_ref", f"{r['parent_ref']} is not a control of this framework"
        )
        for r in dangling
    ]


register_flow(
    FlowSpec(
        flow=Flow.IMPORT,
        concurrency=2,
        timeout_seconds=120,
        heartbeat=True,  # 2 minutes per batch: progress after every batch renews it
        handlers={JobType.IMPORT_CONTROLS: import_controls},
    )
)
