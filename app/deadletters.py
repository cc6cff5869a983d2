"""Dead letters: indexed from the DLQ topics into PostgreSQL, and managed by operators.

The topic is the record; the `dead_letters` table is its index, so operators can list, show,
replay and purge without reading Kafka. Replaying gives the job a new id derived from the dead
letter's id, so replaying the same dead letter twice submits one job. Replayed and purged
entries are marked, never deleted. Credentials stay encrypted in the stored envelope (a replay
needs them) and are redacted from everything this module returns.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid5

import asyncpg

from app.logs import redact
from models import Flow, JobEnvelope

log = logging.getLogger(__name__)

_DEAD_LETTER_NAMESPACE = UUID("0c7d5b52-4a43-4d8f-9f0e-6f6a2b7d1c3e")
MAX_RETRY_ALL = 500


def dead_letter_id(topic: str, partition: int, offset: int) -> UUID:
    return uuid5(_DEAD_LETTER_NAMESPACE, f"{topic}:{partition}:{offset}")


async def index(conn: asyncpg.Connection, topic: str, partition: int, offset: int, raw: bytes) -> None:
    """Record one DLQ message; indexing the same position twice changes nothing."""
    letter = json.loads(raw)
    envelope = letter.get("envelope") or {}
    original = letter["original"]
    await conn.execute(
        """
        INSERT INTO dead_letters (id, queue, job_id, job_type, envelope, raw_excerpt, error, attempts,
                                  original_topic, original_partition, original_offset,
                                  dlq_partition, dlq_offset, failed_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
        ON CONFLICT ON CONSTRAINT dead_letters_position DO NOTHING
        """,
        dead_letter_id(topic, partition, offset),
        letter["queue"],
        UUID(envelope["job_id"]) if envelope.get("job_id") else None,
        envelope.get("job_type"),
        letter.get("envelope"),
        letter.get("raw_excerpt"),
        letter["error"],
        int(letter.get("attempts", 0)),
        original["topic"],
        int(original["partition"]),
        int(original["offset"]),
        partition,
        offset,
        datetime.fromisoformat(letter["failed_at"]),
    )


def _view(row: asyncpg.Record, *, full: bool) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": str(row["id"]),
        "queue": row["queue"],
        "job_id": str(row["job_id"]) if row["job_id"] else None,
        "job_type": row["job_type"],
        "error": {"type": row["error"].get("type"), "message": row["error"].get("message")},
        "attempts": row["attempts"],
        "failed_at": row["failed_at"].isoformat(),
        "status": row["status"],
        "retried_job_id": str(row["retried_job_id"]) if row["retried_job_id"] else None,
        "resolved_at": row["resolved_at"].isoformat() if row["resolved_at"] else None,
    }
    if full:
        view.update(
            envelope=row["envelope"],
            raw_excerpt=row["raw_excerpt"],
            stack=row["error"].get("stack"),
            original={
                "topic": row["original_topic"],
                "partition": row["original_partition"],
                "offset": row["original_offset"],
            },
        )
    return dict(redact(view))


async def list_letters(
    conn: asyncpg.Connection,
    queue: Flow,
    *,
    job_type: str | None = None,
    older_than: timedelta | None = None,
    status: str | None = "UNRESOLVED",
    limit: int = 50,
    offset: int = 0,
) -> dict[str, Any]:
    cutoff = datetime.now(UTC) - older_than if older_than else None
    where = """queue = $1 AND ($2::text IS NULL OR job_type = $2)
               AND ($3::timestamptz IS NULL OR failed_at < $3) AND ($4::text IS NULL OR status = $4)"""
    total = await conn.fetchval(
        f"SELECT count(*) FROM dead_letters WHERE {where}", queue.value, job_type, cutoff, status
    )
    rows = await conn.fetch(
        f"SELECT * FROM dead_letters WHERE {where} ORDER BY failed_at DESC, id LIMIT $5 OFFSET $6",
        queue.value,
        job_type,
        cutoff,
        status,
        limit,
        offset,
    )
    return {"total": total, "limit": limit, "offset": offset, "items": [_view(r, full=False) for r in rows]}


async def show(conn: asyncpg.Connection, queue: Flow, letter_id: UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT * FROM dead_letters WHERE id = $1 AND queue = $2", letter_id, queue.value
    )
    return _view(row, full=True) if row else None


Submit = Callable[[asyncpg.Connection, JobEnvelope], Awaitable[bool]]


class ReplayError(Exception):
    """The dead letter cannot be replayed (unknown, purged, or not a readable job)."""


@dataclass(frozen=True)
class Replay:
    dead_letter_id: UUID
    job_id: UUID
    submitted: bool  # False when this dead letter had been replayed before


async def replay(
    conn: asyncpg.Connection, queue: Flow, letter_id: UUID, actor: UUID | None, submit: Submit
) -> Replay:
    """Submit the dead job again under a new id linked to the dead letter, with fresh attempts."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT * FROM dead_letters WHERE id = $1 AND queue = $2 FOR UPDATE", letter_id, queue.value
        )
        if row is None:
            raise ReplayError(f"no dead letter {letter_id} in queue {queue.value}")
        new_id = uuid5(letter_id, "replay")
        if row["status"] == "RETRIED":
            return Replay(letter_id, row["retried_job_id"] or new_id, submitted=False)
        if row["status"] == "PURGED":
            raise ReplayError(f"dead letter {letter_id} was purged")
        if row["envelope"] is None:
            raise ReplayError("the dead letter holds an unreadable message; fix and resend it upstream")
        data = {
            **row["envelope"],
            "job_id": str(new_id),
            "attempt": 1,
            "not_before": None,
            "created_at": datetime.now(UTC).isoformat(),
        }
        envelope = JobEnvelope.model_validate(data)
        submitted = await submit(conn, envelope)
        await conn.execute("UPDATE jobs SET retry_of = $2 WHERE id = $1", new_id, letter_id)
        await conn.execute(
            """
            UPDATE dead_letters SET status = 'RETRIED', retried_job_id = $2, resolved_at = now(),
                                    resolved_by = $3
             WHERE id = $1
            """,
            letter_id,
            new_id,
            actor,
        )
    log.info("dead letter replayed", extra={"dead_letter_id": str(letter_id), "job_id": str(new_id)})
    return Replay(letter_id, new_id, submitted)


async def replay_all(
    conn: asyncpg.Connection, queue: Flow, actor: UUID | None, submit: Submit, *, limit: int = 100
) -> dict[str, Any]:
    ids = await conn.fetch(
        "SELECT id FROM dead_letters WHERE queue = $1 AND status = 'UNRESOLVED' ORDER BY failed_at LIMIT $2",
        queue.value,
        min(limit, MAX_RETRY_ALL),
    )
    retried, failed = [], []
    for row in ids:
        try:
            retried.append(str((await replay(conn, queue, row["id"], actor, submit)).job_id))
        except (ReplayError, ValueError) as exc:
            failed.append({"id": str(row["id"]), "reason": str(exc)})
    return {"retried": len(retried), "failed": len(failed), "job_ids": retried, "failures": failed}


async def purge(conn: asyncpg.Connection, queue: Flow, older_than_days: float, actor: UUID | None) -> int:
    """Mark unresolved dead letters older than the cut-off PURGED; returns how many."""
    status = await conn.execute(
        """
        UPDATE dead_letters SET status = 'PURGED', resolved_at = now(), resolved_by = $3
         WHERE queue = $1 AND status = 'UNRESOLVED' AND failed_at < now() - make_interval(secs => $2)
        """,
        queue.value,
        older_than_days * 86400,
        actor,
    )
    return int(status.rsplit(" ", 1)[-1])


async def unresolved_counts(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT queue, count(*) AS n FROM dead_letters WHERE status = 'UNRESOLVED' GROUP BY queue"
    )
    return {row["queue"]: row["n"] for row in rows}
