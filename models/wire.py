"""Kafka record layout of envelopes and job events: topic, key, value and headers.

The key is the job id as UTF-8 text, so every message about one job (its retries and its events)
lands on the same partition and keeps its order. Headers repeat the routing facts of the body so
consumers, proxies and tooling can route, filter or trace without parsing JSON; the body remains
the source of truth.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID

from models.envelope import SCHEMA_VERSION, JobEnvelope
from models.flows import JobType
from models.status import JobEvent

HEADER_JOB_TYPE = "job-type"
HEADER_SCHEMA_VERSION = "schema-version"
HEADER_CORRELATION_ID = "correlation-id"
HEADER_JOB_ID = "job-id"

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """Everything needed for ``producer.send(topic, value=..., key=..., headers=list(headers))``."""

    topic: str
    key: bytes
    value: bytes
    headers: Headers


def job_key(job_id: UUID) -> bytes:
    """Kafka key of every message about ``job_id``: its canonical text form, UTF-8 encoded."""
    return str(job_id).encode("utf-8")


def _headers(job_id: UUID, job_type: JobType | None, correlation_id: str | None) -> Headers:
    headers = [(HEADER_JOB_ID, str(job_id).encode("utf-8"))]
    if job_type is not None:
        headers.append((HEADER_JOB_TYPE, job_type.value.encode("utf-8")))
    headers.append((HEADER_SCHEMA_VERSION, SCHEMA_VERSION.encode("utf-8")))
    if correlation_id is not None:
        headers.append((HEADER_CORRELATION_ID, correlation_id.encode("utf-8")))
    return tuple(headers)


def envelope_record(envelope: JobEnvelope) -> KafkaRecord:
    """The record publishing ``envelope`` on its flow topic."""
    return KafkaRecord(
        topic=envelope.topic,
        key=job_key(envelope.job_id),
        value=envelope.model_dump_json().encode("utf-8"),
        headers=_headers(envelope.job_id, envelope.job_type, envelope.correlation_id),
    )


def event_record(event: JobEvent) -> KafkaRecord:
    """The record publishing ``event`` on governance.job-events (no job-type header if unknown)."""
    return KafkaRecord(
        topic=event.topic,
        key=job_key(event.job_id),
        value=event.model_dump_json().encode("utf-8"),
        headers=_headers(event.job_id, event.job_type, event.correlation_id),
    )


def decode_headers(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Kafka headers as text (last value wins; undecodable or empty values are dropped)."""
    decoded: dict[str, str] = {}
    for name, value in headers or ():
        if value:
            try:
                decoded[name] = value.decode("utf-8")
            except UnicodeDecodeError:
                continue
    return decoded
