"""The durable record of jobs in PostgreSQL: who asked, each attempt, how it ended.

The status table in Kafka is the live view; these rows outlive topic retention and are what
`GET /jobs` lists. Writes are idempotent so a redelivered message changes nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg

from app.retry import capped
from models import JobEnvelope, JobState

TERMINAL = (JobState.COMPLETED.value, JobState.FAILED.value, JobState.DEAD.value)


def _job_values(envelope: JobEnvelope, status: JobState) -> tuple[Any, ...]:
    return (
        envelope.job_id,
        envelope.job_type.value,
        envelope.flow.value,
        status.value,
        envelope.attempt,
        capped(envelope).max_attempts,
        envelope.payload.model_dump(mode="json"),
        envelope.requested_by,
        envelope.correlation_id,
        envelope.created_at,
    )


async def record_queued(conn: asyncpg.Connection, envelopes: Sequence[JobEnvelope]) -> set[UUID]:
    """Insert QUEUED jobs in one statement; returns the ids that should be produced now.

    That is every new id, and every id that exists but is still QUEUED (an earlier submit may
    have failed between the row and the message); ids past QUEUED are left alone.
    """
    if not envelopes:
        return set()
    columns = list(zip(*(_job_values(e, JobState.QUEUED) for e in envelopes), strict=True))
    rows = await conn.fetch(
        """
        WITH incoming AS (
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::int[],
                                 $7::text[], $8::uuid[], $9::text[], $10::timestamptz[])
                     AS t(id, job_type, flow, status, attempt, max_attempts, payload, requested_by,
                          correlation_id, created_at)
        ), inserted AS (
            INSERT INTO jobs (id, job_type, flow, status, attempt, max_attempts, payload,
                              requested_by, correlation_id, created_at, updated_at)
            SELECT id, job_type, flow, status, attempt, max_attempts, payload::jsonb, requested_by,
                   correlation_id, created_at, now()
              FROM incoming
            ON CONFLICT (id) DO NOTHING
            RETURNING id
        )
        SELECT id FROM inserted
        UNION
        SELECT j.id FROM jobs j JOIN incoming USING (id) WHERE j.status = 'QUEUED'
        """,
        *[list(col) for col in columns[:6]],
        [json.dumps(p) for p in columns[6]],
        *[list(col) for col in columns[7:]],
    )
    return {row["id"] for row in rows}


async def claim(conn: asyncpg.Connection, envelope: JobEnvelope, worker: str) -> bool:
    """Mark the job ACTIVE for this attempt; False when it already finished or a later attempt
    has started (a duplicate or stale delivery)."""
    async with conn.transaction():
        row = await conn.fetchrow(
            """
            INSERT INTO jobs (id, job_type, flow, status, attempt, max_attempts, payload,
                              requested_by, correlation_id, created_at, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now())
            ON CONFLICT (id) DO UPDATE
               SET status = 'ACTIVE', attempt = EXCLUDED.attempt, updated_at = now()
             WHERE jobs.status <> ALL($11::text[]) AND jobs.attempt <= EXCLUDED.attempt
            RETURNING id
            """,
            *_job_values(envelope, JobState.ACTIVE),
            list(TERMINAL),
        )
        if row is None:
            return False
        await conn.execute(
            """
            INSERT INTO job_attempts (job_id, attempt, state, started_at, worker)
            VALUES ($1, $2, 'ACTIVE', now(), $3)
            ON CONFLICT (job_id, attempt) DO UPDATE
               SET state = 'ACTIVE', started_at = now(), worker = EXCLUDED.worker,
                   finished_at = NULL, error = NULL
            """,
            envelope.job_id,
            envelope.attempt,
            worker,
        )
        return True


async def finish(
    conn: asyncpg.Connection,
    job_id: UUID,
    attempt: int,
    state: JobState,
    *,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> None:
    async with conn.transaction():
        await conn.execute(
            """
            UPDATE jobs
               SET status = $2, result = $3, error = $4, updated_at = now(),
                   finished_at = CASE WHEN $2 = ANY($5::text[]) THEN now() END,
                   progress = CASE WHEN $2 = 'COMPLETED' THEN 100 ELSE progress END
             WHERE id = $1
            """,
            job_id,
            state.value,
            result,
            error,
            list(TERMINAL),
        )
        await conn.execute(
            """
            UPDATE job_attempts SET state = $3, finished_at = now(), error = $4
             WHERE job_id = $1 AND attempt = $2
            """,
            job_id,
            attempt,
            state.value,
            error,
        )


async def record_rejected(
    conn: asyncpg.Connection, job_id: UUID, job_type: str, flow: str, raw: bytes, error: dict[str, Any]
) -> None:
    """Keep a message that could not be read as a DEAD job, so the sender can find out why."""
    excerpt = raw[:2048].decode("utf-8", errors="replace")
    await conn.execute(
        """
        INSERT INTO jobs (id, job_type, flow, status, attempt, max_attempts, payload, error,
                          created_at, updated_at, finished_at)
        VALUES ($1, $2, $3, 'DEAD', 1, 1, $4, $5, now(), now(), now())
        ON CONFLICT (id) DO NOTHING
        """,
        job_id,
        job_type,
        flow,
        {"raw_excerpt": excerpt},
        error,
    )


async def get(conn: asyncpg.Connection, job_id: UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
    if row is None:
        return None
    attempts = await conn.fetch(
        "SELECT attempt, state, started_at, finished_at, worker, error FROM job_attempts"
        " WHERE job_id = $1 ORDER BY attempt",
        job_id,
    )
    return _job_view(row, [dict(a) for a in attempts])


async def list_jobs(
    conn: asyncpg.Connection, *, job_type: str | None, status: str | None, limit: int
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """
        SELECT * FROM jobs
         WHERE ($1::text IS NULL OR job_type = $1) AND ($2::text IS NULL OR status = $2)
         ORDER BY created_at DESC
         LIMIT $3
        """,
        job_type,
        status,
        limit,
    )
    return [_job_view(row, None) for row in rows]


def _job_view(row: asyncpg.Record, attempts: list[dict[str, Any]] | None) -> dict[str, Any]:
    view = {
        "job_id": str(row["id"]),
        "job_type": row["job_type"],
        "state": row["status"],
        "attempt": row["attempt"],
        "max_attempts": row["max_attempts"],
        "progress": row["progress"],
        "result": row["result"],
        "error": row["error"],
        "requested_by": str(row["requested_by"]) if row["requested_by"] else None,
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat() if row["updated_at"] else None,
        "finished_at": row["finished_at"].isoformat() if row["finished_at"] else None,
        "source": "database",
    }
    if attempts is not None:
        view["history"] = json.loads(json.dumps(attempts, default=str))
    return view
