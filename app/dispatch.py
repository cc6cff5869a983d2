"""Submitting a job from inside the service: record it, produce it, announce it.

Intake endpoints and handlers that fan out follow-up jobs both come through here, so every
job the service itself creates has a QUEUED row in PostgreSQL before its message exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg

from app import jobstore
from app.faust_app import faust_app
from app.retry import capped
from app.status import publish_event
from models import JobEnvelope, JobEvent, JobState
from models.wire import envelope_record


async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
    """Produce one record and wait for the broker's ack (acks=all)."""
    channel = faust_app.topic(topic, key_serializer="raw", value_serializer="raw")
    delivery = await channel.send(key=key, value=value, headers=headers)
    await delivery


async def produce(envelope: JobEnvelope) -> None:
    """Send the envelope to its flow's topic."""
    record = envelope_record(envelope)
    await send(record.topic, record.key, record.value, list(record.headers))


async def submit(conn: asyncpg.Connection, envelope: JobEnvelope) -> bool:
    """Record and produce one job; False if its id was already submitted and is past QUEUED."""
    return await submit_many(conn, [envelope]) == 1


async def submit_many(conn: asyncpg.Connection, envelopes: Sequence[JobEnvelope]) -> int:
    """Record jobs with one statement, then produce them. Returns how many were produced."""
    return await produce_all(await record_all(conn, envelopes))


async def record_all(conn: asyncpg.Connection, envelopes: Sequence[JobEnvelope]) -> list[JobEnvelope]:
    """Record QUEUED rows; returns the jobs still to be produced.

    A job id still QUEUED is produced again: the first attempt may have failed between the
    row and the message, and consumers skip a job id that already ran.
    """
    to_produce = await jobstore.record_queued(conn, envelopes)
    return [e for e in envelopes if e.job_id in to_produce]


async def produce_all(envelopes: Sequence[JobEnvelope]) -> int:
    """Produce jobs and their QUEUED events concurrently; returns how many. Each carries its
    flow's attempt cap, so the message and the status say what the runner will allow."""
    envelopes = [capped(e) for e in envelopes]
    await asyncio.gather(*(produce(e) for e in envelopes))
    await asyncio.gather(
        *(
            publish_event(JobEvent.for_envelope(e, JobState.QUEUED, progress=0, message="queued"))
            for e in envelopes
        )
    )
    return len(envelopes)
