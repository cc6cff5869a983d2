"""Submitting a job from inside the service: record it, produce it, announce it.

Intake endpoints and handlers that fan out follow-up jobs both come through here, so every
job the service itself creates has a QUEUED row in PostgreSQL before its message exists.
"""

from __future__ import annotations

import asyncpg

from app import jobstore
from app.faust_app import faust_app
from app.status import publish_event
from models import JobEnvelope, JobEvent, JobState
from models.wire import envelope_record


async def produce(envelope: JobEnvelope) -> None:
    """Send the envelope to its flow's topic and wait for the broker's ack."""
    record = envelope_record(envelope)
    topic = faust_app.topic(record.topic, key_serializer="raw", value_serializer="raw")
    delivery = await topic.send(key=record.key, value=record.value, headers=list(record.headers))
    await delivery


async def submit(conn: asyncpg.Connection, envelope: JobEnvelope) -> bool:
    """Record and produce a job; False if that job id was already submitted and is past QUEUED.

    A job id still QUEUED is produced again: the first attempt may have failed between the
    row and the message, and consumers skip a job id that already ran.
    """
    created = await jobstore.record_queued(conn, envelope)
    if not created:
        status = await conn.fetchval("SELECT status FROM jobs WHERE id = $1", envelope.job_id)
        if status != JobState.QUEUED.value:
            return False
    await produce(envelope)
    await publish_event(JobEvent.for_envelope(envelope, JobState.QUEUED, progress=0, message="queued"))
    return True
