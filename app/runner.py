"""How every flow consumes its topic: read, claim, run, record, and only then acknowledge.

Faust acks an event whose handler raised and, with agent concurrency > 1, can commit past an
event still running (FAUST_NOTES §1). So each flow has one actor that takes up to
`concurrency` events at once, runs them concurrently, and lets Faust ack the batch only after
every job in it has finished and its outcome is recorded. A worker killed mid-batch has
committed none of the batch, and redelivered jobs that already finished are skipped by their
job id. No exception ever leaves the loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid5

import asyncpg
from pydantic import BaseModel, ValidationError

from app import jobstore, metrics
from app.dispatch import submit
from app.errors import InvalidJobError, JobError, UnsupportedJobError
from app.faust_app import faust_app, settings
from app.logs import redact
from app.resources import resources
from app.status import publish_event
from models import Flow, JobEnvelope, JobEvent, JobState, JobType

log = logging.getLogger(__name__)

WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"
_REJECTED_NAMESPACE = UUID("5b0f6c1e-3d7a-4f55-9a51-6f2f4f3f9b11")


class JobContext:
    """What a handler gets: its typed payload, the database, and a way to report progress."""

    def __init__(self, envelope: JobEnvelope, pool: asyncpg.Pool) -> None:
        self.envelope = envelope
        self.pool = pool

    @property
    def job_id(self) -> UUID:
        return self.envelope.job_id

    @property
    def payload(self) -> Any:
        return self.envelope.payload

    async def enqueue(self, payload: BaseModel, *, job_id: UUID, conn: asyncpg.Connection) -> bool:
        """Submit a follow-up job on behalf of the same requester and correlation."""
        envelope = JobEnvelope.for_payload(
            payload,
            job_id=job_id,
            requested_by=self.envelope.requested_by,
            correlation_id=self.envelope.correlation_id or str(self.job_id),
        )
        return await submit(conn, envelope)

    async def progress(self, percent: int, message: str) -> None:
        await publish_event(self._event(JobState.ACTIVE, progress=percent, message=message))

    def _event(self, state: JobState, **fields: Any) -> JobEvent:
        return JobEvent.for_envelope(self.envelope, state, worker=WORKER_NAME, **fields)


Handler = Callable[[JobContext], Awaitable[BaseModel | dict[str, Any] | None]]


@dataclass(frozen=True)
class FlowSpec:
    flow: Flow
    concurrency: int
    timeout_seconds: float
    handlers: Mapping[JobType, Handler]


def register_flow(spec: FlowSpec) -> None:
    """Declare the flow's topic and the agent that consumes it."""
    topic = faust_app.topic(
        spec.flow.topic,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topic_partitions,
    )

    async def consume(stream: Any) -> None:
        async for batch in stream.take_events(spec.concurrency, within=0.05):
            await asyncio.gather(*(run_message(spec, event) for event in batch))

    consume.__name__ = f"consume_{spec.flow.name.lower()}"
    faust_app.agent(topic, name=f"flow-{spec.flow.value}", concurrency=1)(consume)


async def run_message(spec: FlowSpec, event: Any) -> None:
    """Everything that happens to one message; it returns only once the outcome is durable."""
    try:
        envelope = parse_envelope(event.value, spec.flow)
    except InvalidJobError as exc:
        await reject_message(spec.flow, event.message, event.value, exc)
        return
    while True:
        try:
            await run_job(spec, envelope)
            return
        except Exception:
            # Recording the outcome failed (database or broker down). Leaving would ack the
            # message, so hold it and try again; the job id makes the rerun safe.
            log.exception("recording job outcome failed; retrying", extra={"job_id": str(envelope.job_id)})
            await asyncio.sleep(1)


def parse_envelope(raw: bytes | None, flow: Flow) -> JobEnvelope:
    if raw is None:
        raise InvalidJobError("empty message")
    try:
        envelope = JobEnvelope.model_validate_json(raw)
    except ValidationError as exc:
        fields = [{"loc": ".".join(str(p) for p in err["loc"]), "msg": err["msg"]} for err in exc.errors()]
        raise InvalidJobError(json.dumps(fields)) from exc
    if envelope.flow is not flow:
        raise InvalidJobError(f"job type {envelope.job_type.value} belongs on {envelope.topic}")
    return envelope


async def run_job(spec: FlowSpec, envelope: JobEnvelope) -> None:
    queue = spec.flow.value
    job_type = envelope.job_type.value
    pool = await resources.pool()
    async with pool.acquire() as conn:
        claimed = await jobstore.claim(conn, envelope, WORKER_NAME)
    if not claimed:
        metrics.JOBS_SKIPPED_DUPLICATE.labels(queue).inc()
        log.info("duplicate delivery skipped", extra={"job_id": str(envelope.job_id), "queue": queue})
        return
    ctx = JobContext(envelope, pool)
    await publish_event(ctx._event(JobState.ACTIVE, progress=0, message="started"))
    log.info("job started", extra={"job_id": str(envelope.job_id), "job_type": job_type})
    started = time.monotonic()
    metrics.JOBS_ACTIVE.labels(queue).inc()
    try:
        handler = spec.handlers.get(envelope.job_type)
        if handler is None:
            raise UnsupportedJobError(f"no handler for {job_type} in this version")
        async with asyncio.timeout(spec.timeout_seconds):
            outcome = await handler(ctx)
    except Exception as exc:
        error = describe_error(exc)
        metrics.JOBS_FAILED.labels(queue, job_type, error["type"]).inc()
        log.warning("job failed", extra={"job_id": str(envelope.job_id), "error": error})
        await record_outcome(ctx, JobState.FAILED, error=error)
    else:
        result = outcome.model_dump(mode="json") if isinstance(outcome, BaseModel) else outcome
        metrics.JOBS_COMPLETED.labels(queue, job_type).inc()
        log.info("job completed", extra={"job_id": str(envelope.job_id), "job_type": job_type})
        await record_outcome(ctx, JobState.COMPLETED, result=result)
    finally:
        metrics.JOBS_ACTIVE.labels(queue).dec()
        metrics.JOB_DURATION.labels(queue, job_type).observe(time.monotonic() - started)


async def record_outcome(
    ctx: JobContext,
    state: JobState,
    *,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> None:
    async with ctx.pool.acquire() as conn:
        await jobstore.finish(conn, ctx.job_id, ctx.envelope.attempt, state, result=result, error=error)
    progress = 100 if state is JobState.COMPLETED else None
    await publish_event(ctx._event(state, progress=progress, result=result, error=error))


def describe_error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, TimeoutError):
        message = "job exceeded its time limit"
    else:
        message = str(exc) or type(exc).__name__
    return redact(
        {
            "type": type(exc).__name__,
            "message": message,
            "retryable": exc.retryable if isinstance(exc, JobError) else True,
            "stack": "".join(traceback.format_exception(exc, limit=8))[-4000:],
        }
    )


async def reject_message(flow: Flow, message: Any, raw: bytes | None, exc: InvalidJobError) -> None:
    """A message we cannot read is recorded as FAILED with its reason; the flow carries on."""
    raw = raw or b""
    job_id, job_type = _identify(raw, f"{message.topic}:{message.partition}:{message.offset}")
    error = {"type": "InvalidJobError", "message": str(exc), "retryable": False}
    log.warning("message rejected", extra={"job_id": str(job_id), "topic": message.topic, "error": error})
    metrics.JOBS_FAILED.labels(flow.value, job_type, "InvalidJobError").inc()
    while True:
        try:
            async with (await resources.pool()).acquire() as conn:
                await jobstore.record_rejected(conn, job_id, job_type, flow.value, raw, error)
            await publish_event(
                JobEvent(
                    job_id=job_id,
                    job_type=None,
                    state=JobState.FAILED,
                    attempt=1,
                    error=error,
                    worker=WORKER_NAME,
                )
            )
            return
        except Exception:
            log.exception("recording a rejected message failed; retrying")
            await asyncio.sleep(1)


def _identify(raw: bytes, position: str) -> tuple[UUID, str]:
    """The job id and type a broken message claims, or an id derived from where it sits."""
    job_type = "UNKNOWN"
    try:
        data = json.loads(raw)
        if isinstance(data, dict):
            if isinstance(data.get("job_type"), str) and data["job_type"] in JobType.__members__:
                job_type = data["job_type"]
            return UUID(str(data.get("job_id"))), job_type
    except ValueError:
        pass
    return uuid5(_REJECTED_NAMESPACE, position), job_type
