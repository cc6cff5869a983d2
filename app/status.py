"""Live job status: a Faust table keyed by job id, fed by the job-events topic.

Faust shards a table by the key of the stream that writes it, so every flow publishes its
lifecycle events to one topic keyed by job id, and a single agent folds them into the table.
`GET /jobs/{id}` is routed to the worker that owns the id's partition; when the table has no
entry (expired, or before any event), the PostgreSQL record answers instead.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from faust.web import Request, Response, View

from app import jobstore
from app.auth import ANY_USER, Caller, authenticated
from app.faust_app import faust_app, settings
from app.resources import resources
from models import JOB_EVENTS_TOPIC, JobEvent, JobState, JobStatus, JobType, apply_event
from models.wire import event_record

log = logging.getLogger(__name__)

job_events_topic = faust_app.topic(
    JOB_EVENTS_TOPIC,
    key_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
    partitions=settings.topic_partitions,
)

# Keys are bytes so Faust serializes them raw: the job id's UTF-8 text, exactly the key the
# job-events topic carries, so the router hashes a request to the partition that holds the job.
status_table = faust_app.Table(
    "job-status",
    default=None,
    key_type=bytes,
    partitions=settings.topic_partitions,
)


async def publish_event(event: JobEvent) -> None:
    """Send a lifecycle event and wait for the broker's ack, so status never lags the work."""
    record = event_record(event)
    delivery = await job_events_topic.send(key=record.key, value=record.value, headers=list(record.headers))
    await delivery


@faust_app.agent(job_events_topic, name="job-status", concurrency=1)
async def fold_job_events(stream: Any) -> None:
    async for job_id, raw in stream.items():
        try:
            event = JobEvent.model_validate_json(raw)
        except ValueError:
            log.warning("unreadable job event skipped", extra={"job_key": repr(job_id)})
            continue
        current = status_table.get(job_id)
        previous = JobStatus.model_validate(current) if current else None
        # Assign, never mutate in place: only assignment writes the changelog.
        status_table[job_id] = apply_event(previous, event).model_dump(mode="json")


@faust_app.page("/jobs/{job_id}")
class JobStatusView(View):
    @faust_app.table_route(table=status_table, match_info="job_id")
    @authenticated(ANY_USER)
    async def get(self, request: Request, caller: Caller, job_id: UUID) -> Response:
        current = status_table.get(str(job_id).encode())
        if current is not None:
            return self.json({**current, "source": "live"})
        async with (await resources.pool()).acquire() as conn:
            stored = await jobstore.get(conn, job_id)
        if stored is None:
            return self.json({"error": f"no job {job_id}"}, status=404)
        return self.json(stored)


@faust_app.page("/jobs")
class JobListView(View):
    """Jobs from PostgreSQL, newest first: works for any job, long after topic retention."""

    @authenticated(ANY_USER)
    async def get(self, request: Request, caller: Caller) -> Response:
        try:
            limit = min(max(int(request.query.get("limit", "50")), 1), 500)
        except ValueError:
            return self.json({"error": "limit must be an integer"}, status=400)
        # A misspelt filter would otherwise answer an empty list, as if there were no such jobs.
        job_type, status = request.query.get("type"), request.query.get("status")
        for name, value, known in (("type", job_type, JobType), ("status", status, JobState)):
            if value and value not in known.__members__:
                choices = ", ".join(known.__members__)
                return self.json({"error": f"{name} must be one of {choices}"}, status=400)
        async with (await resources.pool()).acquire() as conn:
            jobs = await jobstore.list_jobs(conn, job_type=job_type, status=status, limit=limit)
        return self.json({"jobs": jobs, "count": len(jobs)})
