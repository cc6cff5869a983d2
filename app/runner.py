"""How every flow consumes its topics: read, claim, run, record, and only then acknowledge.

Faust acks an event whose handler raised and, with agent concurrency > 1, can commit past an
event still running (FAUST_NOTES §1). So each flow has one actor that takes up to
`concurrency` events at once, runs them concurrently, and lets Faust ack the batch only after
every job in it has finished and its outcome is recorded. A worker killed mid-batch has
committed none of the batch, and redelivered jobs that already finished are skipped by their
job id. No exception ever leaves the loop.

A failed job goes, by its error class, to the retry tier of its next delay (retryable), to the
dead-letter topic (not retryable, or out of attempts), or back to a retry tier without using
an attempt (rate limited). Each retry tier has a consumer that holds a message until it is
due and then runs it here again (see app.retry).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid5

import asyncpg
from pydantic import BaseModel, ValidationError

from app import jobstore, metrics, ratelimit
from app.config import get_settings
from app.dispatch import send, submit, submit_many
from app.errors import InvalidJobError, JobError, RateLimitedError, UnsupportedJobError
from app.faust_app import faust_app, settings
from app.logs import redact
from app.ops import Lifecycle
from app.resources import resources
from app.retry import (
    MAX_RATE_LIMIT_DEFERRALS,
    capped,
    dead_letter_topic,
    retry_topic,
    schedule_for,
    tier_label,
)
from app.status import publish_event
from models import (
    Channel,
    Flow,
    JobEnvelope,
    JobEvent,
    JobPayload,
    JobState,
    JobType,
    NotificationEventType,
    SendNotificationPayload,
)
from models.wire import decode_headers, envelope_record

log = logging.getLogger(__name__)

WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"
# Envelopes are bounded far below this (lists are capped); anything larger is not a job of ours.
MAX_MESSAGE_BYTES = 512 * 1024
_REJECTED_NAMESPACE = UUID("5b0f6c1e-3d7a-4f55-9a51-6f2f4f3f9b11")

# Headers a retry or dead letter carries besides the envelope's own.
H_ORIGINAL_TOPIC = "original-topic"
H_ORIGINAL_PARTITION = "original-partition"
H_ORIGINAL_OFFSET = "original-offset"
H_RETRY_REASON = "retry-reason"
H_ERROR_TYPE = "error-type"
H_DEFERRALS = "rate-limit-deferrals"


@dataclass(frozen=True)
class Delivery:
    """Where a job first arrived, and how often a rate limit has deferred it since."""

    topic: str
    partition: int
    offset: int
    deferrals: int = 0

    @classmethod
    def of(cls, message: Any) -> Delivery:
        headers = decode_headers(_header_items(message.headers))
        if H_ORIGINAL_TOPIC in headers:
            return cls(
                headers[H_ORIGINAL_TOPIC],
                int(headers.get(H_ORIGINAL_PARTITION, -1)),
                int(headers.get(H_ORIGINAL_OFFSET, -1)),
                int(headers.get(H_DEFERRALS, 0)),
            )
        return cls(message.topic, message.partition, message.offset)

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            (H_ORIGINAL_TOPIC, self.topic.encode()),
            (H_ORIGINAL_PARTITION, str(self.partition).encode()),
            (H_ORIGINAL_OFFSET, str(self.offset).encode()),
            (H_DEFERRALS, str(self.deferrals).encode()),
        ]


def _header_items(headers: Any) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers)


class TimeLimit:
    """An attempt's time limit: a hard deadline, or a heartbeat window that progress renews.

    Long batch jobs (a distribution to 100k people) use the heartbeat form: the attempt may run
    as long as it needs while it reports progress at least once per window.
    """

    def __init__(self, seconds: float, *, heartbeat: bool) -> None:
        self.seconds = seconds
        self.heartbeat = heartbeat
        self._timeout: asyncio.Timeout | None = None

    async def __aenter__(self) -> TimeLimit:
        self._timeout = asyncio.timeout(self.seconds)  # the clock starts when the handler does
        await self._timeout.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        assert self._timeout is not None
        return await self._timeout.__aexit__(*exc_info)

    def remaining(self) -> float:
        when = self._timeout.when() if self._timeout is not None else None
        return self.seconds if when is None else when - asyncio.get_running_loop().time()

    def beat(self) -> None:
        if self.heartbeat and self._timeout is not None:
            self._timeout.reschedule(asyncio.get_running_loop().time() + self.seconds)


class JobContext:
    """What a handler gets: its typed payload, the database, and a way to report progress."""

    def __init__(self, envelope: JobEnvelope, pool: asyncpg.Pool, time_limit: TimeLimit) -> None:
        self.envelope = envelope
        self.pool = pool
        self.time_limit = time_limit

    @property
    def job_id(self) -> UUID:
        return self.envelope.job_id

    @property
    def payload(self) -> Any:
        return self.envelope.payload

    def follow_ups(self, jobs: Sequence[tuple[UUID, JobPayload]]) -> list[JobEnvelope]:
        """Envelopes for follow-up jobs (id, payload), on behalf of the same requester and correlation."""
        return [
            JobEnvelope.for_payload(
                payload,
                job_id=job_id,
                requested_by=self.envelope.requested_by,
                correlation_id=self.envelope.correlation_id or str(self.job_id),
            )
            for job_id, payload in jobs
        ]

    async def enqueue_many(self, jobs: Sequence[tuple[UUID, JobPayload]], *, conn: asyncpg.Connection) -> int:
        """Record and produce follow-up jobs."""
        return await submit_many(conn, self.follow_ups(jobs))

    def time_left(self) -> float:
        """Seconds before this attempt's time limit (or heartbeat window) runs out."""
        return self.time_limit.remaining()

    async def progress(self, percent: int, message: str) -> None:
        self.time_limit.beat()
        log.info("job progress", extra={"job_id": str(self.job_id), "progress": percent, "note": message})
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
    # True: the limit is a window without progress rather than a deadline for the attempt.
    heartbeat: bool = False
    # Jobs per second this flow may start across the whole deployment (app.ratelimit); None: no limit.
    rate_per_second: float | None = None
    # Called once a job of the flow is dead (out of attempts or not retryable), with its error, so
    # the flow can record the failure where people look for it (a report's status, say).
    on_dead: Callable[[JobContext, dict[str, Any]], Awaitable[None]] | None = None


def register_flow(spec: FlowSpec) -> None:
    """Declare the flow's topic, its retry tiers and the agents that consume them."""

    def declare(name: str) -> Any:
        return faust_app.topic(
            name, key_serializer="raw", value_serializer="raw", partitions=settings.topic_partitions
        )

    async def consume(stream: Any) -> None:
        async for batch in stream.take_events(spec.concurrency, within=0.05):
            await run_batch(spec, batch, tier=None)

    def retry_consumer(tier: float) -> Callable[[Any], Awaitable[None]]:
        async def consume_retries(stream: Any) -> None:
            async for batch in stream.take_events(spec.concurrency, within=0.05):
                await run_batch(spec, batch, tier=tier)

        return consume_retries

    faust_app.agent(declare(spec.flow.topic), name=f"flow-{spec.flow.value}", concurrency=1)(consume)
    # One agent per tier: a batch then holds messages of one delay, due at about the same time,
    # so a message never waits behind a batch due later than itself.
    for tier in schedule_for(spec.flow).tiers:
        name = f"retry-{spec.flow.value}-{tier_label(tier)}"
        faust_app.agent(declare(retry_topic(spec.flow, tier)), name=name, concurrency=1)(retry_consumer(tier))


async def run_batch(spec: FlowSpec, batch: list[Any], *, tier: float | None) -> None:
    """Run a batch's messages together, except that messages with one key (one job id, delivered
    twice) run one after the other: the second then finds the job finished and is skipped, where
    together both would have claimed it (a claim must accept a job left ACTIVE by a crash)."""
    by_key: dict[Any, list[Any]] = {}
    for event in batch:
        by_key.setdefault(event.message.key or id(event), []).append(event)

    async def in_turn(events: list[Any]) -> None:
        for event in events:
            await run_message(spec, event, tier=tier)

    await asyncio.gather(*(in_turn(events) for events in by_key.values()))


async def run_message(spec: FlowSpec, event: Any, *, tier: float | None) -> None:
    """Everything that happens to one message; it returns only once the outcome is durable.

    `tier` is the delay of the retry tier the message came from (None: the flow topic). The
    flow topic never holds a message: one not yet due (a producer's `not_before`) is parked in
    the retry tier that fits its wait. A tier holds a message at most for its own delay, so a
    job due hours ahead goes round the longest tier instead of blocking its head.
    """
    delivery = Delivery.of(event.message)
    try:
        envelope = parse_envelope(event.value, spec.flow)
    except InvalidJobError as exc:
        await reject_message(spec.flow, delivery, event.value, exc)
        return
    if tier is not None and envelope.not_before is not None:
        hold_until = min(envelope.not_before, datetime.now(UTC) + timedelta(seconds=tier))
        if not await wait_until_due(hold_until):
            # Rebalance or shutdown: waiting would hold up the group, so put the message back
            # on its tier (same bytes, same due time) before this copy is acknowledged.
            await send(
                event.message.topic, event.message.key, event.value, _header_items(event.message.headers)
            )
            return
    if (wait := seconds_until(envelope.not_before)) > 0:
        await park(spec.flow, envelope, delivery, wait)
        return
    await until_recorded(lambda: run_job(spec, envelope, delivery), envelope.job_id)


def seconds_until(moment: datetime | None) -> float:
    return 0.0 if moment is None else (moment - datetime.now(UTC)).total_seconds()


async def park(flow: Flow, envelope: JobEnvelope, delivery: Delivery, wait: float) -> None:
    tier = schedule_for(flow).tier_for(wait)
    record = envelope_record(envelope)
    await send(retry_topic(flow, tier), record.key, record.value, [*record.headers, *delivery.headers()])


async def wait_until_due(not_before: datetime | None) -> bool:
    """Sleep until `not_before` in short steps; False if the worker starts rebalancing or stopping."""
    while (remaining := seconds_until(not_before)) > 0:
        if faust_app.rebalancing or Lifecycle.stopping:
            return False
        await asyncio.sleep(min(remaining, 0.2))
    return True


async def until_recorded(record: Callable[[], Awaitable[None]], job_id: UUID) -> None:
    """Run `record` until it succeeds. Returning early would let Faust ack a message whose
    outcome is nowhere (database or broker down); the job id makes every rerun safe."""
    while True:
        try:
            await record()
            return
        except Exception:
            log.exception("recording a job's outcome failed; retrying", extra={"job_id": str(job_id)})
            await asyncio.sleep(1)


def parse_envelope(raw: bytes | None, flow: Flow) -> JobEnvelope:
    if raw is None:
        raise InvalidJobError("empty message")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidJobError(f"message of {len(raw)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        envelope = JobEnvelope.model_validate_json(raw)
    except ValidationError as exc:
        fields = [{"loc": ".".join(str(p) for p in err["loc"]), "msg": err["msg"]} for err in exc.errors()]
        raise InvalidJobError(json.dumps(fields)) from exc
    if envelope.flow is not flow:
        raise InvalidJobError(f"job type {envelope.job_type.value} belongs on {envelope.topic}")
    return capped(envelope)


async def run_job(spec: FlowSpec, envelope: JobEnvelope, delivery: Delivery) -> None:
    queue = spec.flow.value
    job_type = envelope.job_type.value
    pool = await resources.pool()
    async with pool.acquire() as conn:
        claimed = await jobstore.claim(conn, envelope, WORKER_NAME)
    if not claimed:
        metrics.JOBS_SKIPPED_DUPLICATE.labels(queue).inc()
        log.info("duplicate delivery skipped", extra={"job_id": str(envelope.job_id), "queue": queue})
        return
    ctx = JobContext(envelope, pool, TimeLimit(spec.timeout_seconds, heartbeat=spec.heartbeat))
    await publish_event(ctx._event(JobState.ACTIVE, progress=0, message="started"))
    log.info("job started", extra={"job_id": str(envelope.job_id), "job_type": job_type})
    started = time.monotonic()
    metrics.JOBS_ACTIVE.labels(queue).inc()
    try:
        if spec.rate_per_second:
            await ratelimit.acquire(pool, f"queue:{queue}", spec.rate_per_second)
        handler = spec.handlers.get(envelope.job_type)
        if handler is None:
            raise UnsupportedJobError(f"no handler for {job_type} in this version")
        async with ctx.time_limit:
            outcome = await handler(ctx)
    except Exception as exc:
        metrics.JOBS_FAILED.labels(queue, job_type, type(exc).__name__).inc()
        await handle_failure(spec, ctx, exc, delivery)
    else:
        result = outcome.model_dump(mode="json") if isinstance(outcome, BaseModel) else outcome
        metrics.JOBS_COMPLETED.labels(queue, job_type).inc()
        log.info("job completed", extra={"job_id": str(envelope.job_id), "job_type": job_type})
        await record_outcome(ctx, JobState.COMPLETED, result=result)
    finally:
        metrics.JOBS_ACTIVE.labels(queue).dec()
        metrics.JOB_DURATION.labels(queue, job_type).observe(time.monotonic() - started)


async def handle_failure(spec: FlowSpec, ctx: JobContext, exc: Exception, delivery: Delivery) -> None:
    """Route a failed attempt: rate-limited and retryable errors to a retry tier, the rest to the DLQ."""
    envelope, error = ctx.envelope, describe_error(exc)
    schedule = schedule_for(spec.flow)
    max_attempts = min(envelope.max_attempts, schedule.max_attempts)
    if isinstance(exc, RateLimitedError) and delivery.deferrals < MAX_RATE_LIMIT_DEFERRALS:
        delay = min(max(exc.retry_after, 0.0), schedule.tiers[-1])
        retry = envelope.model_copy(update={"not_before": datetime.now(UTC) + timedelta(seconds=delay)})
        deferred = Delivery(delivery.topic, delivery.partition, delivery.offset, delivery.deferrals + 1)
        await schedule_retry(spec.flow, retry, delay, deferred, error, "rate limited")
    elif error["retryable"] and envelope.attempt < max_attempts:
        delay = schedule.delay_after(envelope.attempt)
        retry = envelope.next_attempt(not_before=datetime.now(UTC) + timedelta(seconds=delay))
        await schedule_retry(spec.flow, retry, delay, delivery, error, "failed")
    else:
        if spec.on_dead is not None:
            try:
                await spec.on_dead(ctx, error)
            except Exception:  # the dead letter matters more; the job's own state still says DEAD
                log.exception("recording a dead job in its flow failed", extra={"job_id": str(ctx.job_id)})
        await dead_letter(spec.flow, ctx, error, delivery)
        return
    log.warning(
        "job will be retried",
        extra={"job_id": str(envelope.job_id), "error": error, "not_before": str(retry.not_before)},
    )
    await record_outcome(ctx, JobState.RETRYING, error=error)


async def schedule_retry(
    flow: Flow, retry: JobEnvelope, delay: float, delivery: Delivery, error: dict[str, Any], reason: str
) -> None:
    tier = schedule_for(flow).tier_for(delay)
    record = envelope_record(retry)
    headers = [
        *record.headers,
        *delivery.headers(),
        (H_RETRY_REASON, reason.encode()),
        (H_ERROR_TYPE, error["type"].encode()),
    ]
    await send(retry_topic(flow, tier), record.key, record.value, headers)
    metrics.RETRIES.labels(flow.value, tier_label(tier)).inc()


async def dead_letter(flow: Flow, ctx: JobContext, error: dict[str, Any], delivery: Delivery) -> None:
    envelope = ctx.envelope
    log.error("job is dead", extra={"job_id": str(envelope.job_id), "error": error})
    await send_dead_letter(flow, delivery, envelope.model_dump(mode="json"), None, error, envelope.attempt)
    await record_outcome(ctx, JobState.DEAD, error=error)
    if not (
        isinstance(envelope.payload, SendNotificationPayload)
        and envelope.payload.event_type is NotificationEventType.JOB_FAILED
    ):
        await notify_on_call(envelope, error)


async def send_dead_letter(
    flow: Flow,
    delivery: Delivery,
    envelope: dict[str, Any] | None,
    raw: bytes | None,
    error: dict[str, Any],
    attempts: int,
) -> None:
    letter = {
        "queue": flow.value,
        "envelope": envelope,
        "raw_excerpt": raw[:2048].decode("utf-8", errors="replace") if raw is not None else None,
        "error": error,
        "attempts": attempts,
        "failed_at": datetime.now(UTC).isoformat(),
        "original": {"topic": delivery.topic, "partition": delivery.partition, "offset": delivery.offset},
    }
    key = str(envelope["job_id"]).encode() if envelope else None
    await send(dead_letter_topic(flow), key, json.dumps(letter).encode(), delivery.headers())
    metrics.DEAD_LETTERS.labels(flow.value, error["type"]).inc()


async def notify_on_call(envelope: JobEnvelope, error: dict[str, Any]) -> None:
    """A JOB_FAILED in-app notification to the on-call people, once per dead job."""
    on_call = get_settings().oncall_user_ids
    if not on_call:
        return
    payload = SendNotificationPayload(
        event_type=NotificationEventType.JOB_FAILED,
        channel=Channel.IN_APP,
        recipient_user_ids=list(on_call),
        template_data={
            "job_id": str(envelope.job_id),
            "job_type": envelope.job_type.value,
            "message": f"{error['type']}: {error['message']}"[:500],
        },
        idempotency_key=f"JOB_FAILED:{envelope.job_id}",
    )
    job = JobEnvelope.for_payload(payload, job_id=uuid5(envelope.job_id, "job-failed"))
    async with (await resources.pool()).acquire() as conn:
        await submit(conn, job)


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


async def reject_message(flow: Flow, delivery: Delivery, raw: bytes | None, exc: InvalidJobError) -> None:
    """A message we cannot read goes to the dead-letter topic with its reason; the flow carries on."""
    raw = raw or b""
    job_id, job_type = _identify(raw, f"{delivery.topic}:{delivery.partition}:{delivery.offset}")
    error = {"type": "InvalidJobError", "message": str(exc), "retryable": False}
    log.warning("message rejected", extra={"job_id": str(job_id), "topic": delivery.topic, "error": error})
    metrics.JOBS_FAILED.labels(flow.value, job_type, "InvalidJobError").inc()

    async def record() -> None:
        await send_dead_letter(flow, delivery, None, raw, error, 0)
        async with (await resources.pool()).acquire() as conn:
            await jobstore.record_rejected(conn, job_id, job_type, flow.value, raw, error)
        await publish_event(
            JobEvent(
                job_id=job_id, job_type=None, state=JobState.DEAD, attempt=1, error=error, worker=WORKER_NAME
            )
        )

    await until_recorded(record, job_id)


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
