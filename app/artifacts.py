"""Files the service makes for people (reports, exports): their records, keys, progress, storage.

A record goes QUEUED -> PROCESSING -> COMPLETED, or FAILED with the error once its job is dead;
while a job waits for a retry its record stays PROCESSING (GET .../status shows the job's state).
The object key comes from the record's id and the month it was requested,
`reports/{year}/{month}/report-{id}.{ext}`, so every attempt writes the same key and a retry
overwrites whatever a crashed attempt left. The file is rendered into a temporary file by the
render pool and stored from there, so nothing large is held in memory.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

from app.errors import NonRetryableError
from app.resources import resources
from app.runner import JobContext
from models import ExportDataPayload, GenerateReportPayload

# Rendering gets the attempt's time less this much, which is kept for storing the file.
STORE_RESERVE_SECONDS = 20.0


class ArtifactIdTaken(NonRetryableError):
    """A report or export id given for a request other than the one it was first used for."""


@dataclass(frozen=True)
class ArtifactKind:
    table: str  # also the key prefix
    noun: str


REPORTS = ArtifactKind("reports", "report")
EXPORTS = ArtifactKind("exports", "export")


async def record_request(
    conn: asyncpg.Connection,
    job: GenerateReportPayload | ExportDataPayload,
    requested_by: UUID | None,
    job_id: UUID,
) -> None:
    """Create the file's record (QUEUED) unless it exists. The intake creates it, and so does the
    worker, because a producer may publish the job without going through the intake."""
    columns: dict[str, Any]
    if isinstance(job, GenerateReportPayload):
        kind, columns = REPORTS, {"id": job.report_id, "report_type": job.report_type.value}
    else:
        kind, columns = EXPORTS, {"id": job.export_id, "entity": job.entity.value}
    columns |= {
        "format": job.format.value,
        "parameters": job.model_dump(mode="json"),
        "requested_by": requested_by,
        "job_id": job_id,
    }
    placeholders = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
    created = await conn.fetchval(
        f"INSERT INTO {kind.table} ({', '.join(columns)}) VALUES ({placeholders})"
        " ON CONFLICT (id) DO NOTHING RETURNING id",
        *columns.values(),
    )
    if created is None:
        # The id exists: fine for the same request again (a retry, a replayed dead letter), not
        # for another one, which would otherwise be answered with (or rendered into) this file.
        stored = await conn.fetchval(f"SELECT parameters FROM {kind.table} WHERE id = $1", columns["id"])
        if any(stored.get(name) != value for name, value in columns["parameters"].items()):
            raise ArtifactIdTaken(
                f"{kind.noun}_id {columns['id']} already names a different {kind.noun}; "
                f"leave {kind.noun}_id out or send a new one"
            )


def object_key(kind: ArtifactKind, artifact_id: UUID, requested_at: datetime, extension: str) -> str:
    return f"{kind.table}/{requested_at:%Y}/{requested_at:%m}/{kind.noun}-{artifact_id}.{extension}"


async def begin(conn: asyncpg.Connection, kind: ArtifactKind, artifact_id: UUID) -> asyncpg.Record:
    """Mark the record PROCESSING (again, on a retry) unless it is already COMPLETED; return it."""
    row = await conn.fetchrow(
        f"""
        UPDATE {kind.table} SET status = 'PROCESSING', error = NULL, progress = 0, completed_at = NULL
         WHERE id = $1 AND status <> 'COMPLETED' RETURNING *
        """,
        artifact_id,
    )
    return row or await conn.fetchrow(f"SELECT * FROM {kind.table} WHERE id = $1", artifact_id)


async def progress(
    ctx: JobContext, kind: ArtifactKind, artifact_id: UUID, percent: int, message: str
) -> None:
    """Report progress on the job and on the record (the record is what the status endpoint reads)."""
    async with ctx.pool.acquire() as conn:
        await conn.execute(f"UPDATE {kind.table} SET progress = $2 WHERE id = $1", artifact_id, percent)
    await ctx.progress(percent, message)


async def render_and_store(
    ctx: JobContext,
    kind: ArtifactKind,
    artifact_id: UUID,
    key: str,
    render: Callable[..., Any],
    args: tuple[Any, ...],
    *,
    content_type: str,
    download_name: str,
) -> tuple[int, Any]:
    """Run `render(*args, path)` in the render pool, then store the file at `key`.
    Returns the stored size and what `render` returned."""
    with tempfile.TemporaryDirectory(prefix="render-") as workdir:
        path = Path(workdir) / "file"
        timeout = max(ctx.time_left() - STORE_RESERVE_SECONDS, 1.0)
        rendered = await resources.render_pool().run(render, *args, path, timeout=timeout)
        await progress(ctx, kind, artifact_id, 75, f"storing {path.stat().st_size} bytes")
        storage = await resources.storage()
        size = await storage.upload_file(key, path, content_type, download_name)
    return size, rendered


async def complete(
    conn: asyncpg.Connection,
    kind: ArtifactKind,
    artifact_id: UUID,
    *,
    key: str,
    file_name: str,
    content_type: str,
    size_bytes: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """Record the stored file; `extra` sets further columns of the record (e.g. row_count)."""
    columns = {"s3_key": key, "file_name": file_name, "content_type": content_type, "size_bytes": size_bytes}
    columns.update(extra or {})
    assignments = ", ".join(f"{name} = ${n}" for n, name in enumerate(columns, start=2))
    await conn.execute(
        f"""
        UPDATE {kind.table} SET {assignments}, status = 'COMPLETED', progress = 100, error = NULL,
               completed_at = now()
         WHERE id = $1
        """,
        artifact_id,
        *columns.values(),
    )


async def fail(pool: asyncpg.Pool, kind: ArtifactKind, artifact_id: UUID, error: str) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            f"UPDATE {kind.table} SET status = 'FAILED', error = $2 WHERE id = $1 AND status <> 'COMPLETED'",
            artifact_id,
            error[:2000],
        )
