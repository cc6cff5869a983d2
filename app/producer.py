"""Typed producer for upstream services: publish jobs straight to Kafka.

Built on aiokafka rather than Faust so that a producing service does not need a Faust app,
its web server or its tables; only the contract in ``models`` and a broker connection.

    async with JobProducer() as jobs:
        envelope = await jobs.enqueue(GenerateReportPayload(...), requested_by=user_id)
        # envelope.job_id is what GET /jobs/{id} answers about

Delivery: ``acks="all"`` plus the idempotent producer, so an acknowledged job survives a broker
failure and a producer-internal retry never writes it twice. A caller that retries ``enqueue``
itself (after a timeout, say) must pass the same ``job_id``; the workers run a job id once.
"""

from __future__ import annotations

from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self
from uuid import UUID

from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from app.config import get_settings
from models.envelope import DEFAULT_PRIORITY, JobEnvelope
from models.payloads import JobPayload
from models.wire import envelope_record


class _Sender(Protocol):
    """The part of AIOKafkaProducer this module uses (lets tests substitute a fake)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> RecordMetadata: ...


def message_headers(envelope: JobEnvelope) -> list[tuple[str, bytes]]:
    """Kafka headers of ``envelope``: job-id, job-type, schema-version and correlation-id if any."""
    return list(envelope_record(envelope).headers)


class JobProducer:
    """Publishes job envelopes to their flow topics, keyed by job id; an async context manager."""

    def __init__(
        self,
        bootstrap_servers: str | None = None,
        *,
        client_id: str = "governance-jobs-producer",
        sender: _Sender | None = None,
        **producer_options: Any,
    ) -> None:
        """``producer_options`` go to AIOKafkaProducer (e.g. security_protocol, sasl_*); the
        durability settings ``acks`` and ``enable_idempotence`` cannot be overridden."""
        if sender is None:
            sender = AIOKafkaProducer(
                **producer_options,
                bootstrap_servers=bootstrap_servers or get_settings().kafka_bootstrap_servers,
                client_id=client_id,
                acks="all",
                enable_idempotence=True,
            )
        self._sender = sender
        self._started = False

    async def start(self) -> None:
        if not self._started:
            await self._sender.start()
            self._started = True

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self._sender.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def enqueue(
        self,
        payload: JobPayload,
        *,
        job_id: UUID | None = None,
        requested_by: UUID | None = None,
        correlation_id: str | None = None,
        priority: int = DEFAULT_PRIORITY,
        not_before: datetime | None = None,
        max_attempts: int | None = None,
    ) -> JobEnvelope:
        """Wrap ``payload`` in an envelope, publish it, and return it once the broker acked it.

        Raises ``pydantic.ValidationError`` for invalid envelope options (nothing is sent) and
        aiokafka's ``KafkaError`` subclasses when the broker does not acknowledge the message.
        """
        envelope = JobEnvelope.for_payload(
            payload,
            job_id=job_id,
            requested_by=requested_by,
            correlation_id=correlation_id,
            priority=priority,
            not_before=not_before,
            max_attempts=max_attempts,
        )
        await self.send_envelope(envelope)
        return envelope

    async def send_envelope(self, envelope: JobEnvelope) -> RecordMetadata:
        """Publish an already built envelope (e.g. a retry) and wait for the broker's ack."""
        if not self._started:
            raise RuntimeError("JobProducer is not started: use `async with JobProducer() as producer`")
        record = envelope_record(envelope)
        return await self._sender.send_and_wait(
            record.topic, value=record.value, key=record.key, headers=list(record.headers)
        )
