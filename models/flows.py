"""Flows, job types and the Kafka topics they travel on.

A flow is one Kafka topic and one family of Faust agents; a job type names the work itself.
Several job types may share a flow (e.g. SCHEDULE_ASSESSMENT and RUN_ASSESSMENT), so workers
route on the envelope's ``job_type`` and partition on its ``job_id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

TOPIC_PREFIX = "governance"

#: Every flow writes job lifecycle events (:class:`models.status.JobEvent`) here, keyed by job id.
JOB_EVENTS_TOPIC = f"{TOPIC_PREFIX}.job-events"


class Flow(StrEnum):
    """A processing flow; its value is the short name, :attr:`topic` the Kafka topic."""

    POLICY = "policy"
    ASSESSMENT = "assessment"
    REPORTING = "reporting"
    EVIDENCE = "evidence"
    NOTIFICATION = "notification"
    EXPORT = "export"
    AUDIT = "audit"
    IMPORT = "import"

    @property
    def topic(self) -> str:
        return f"{TOPIC_PREFIX}.{self.value}"

    @property
    def job_types(self) -> tuple[JobType, ...]:
        return tuple(jt for jt, flow in JOB_TYPE_FLOWS.items() if flow is self)


class JobType(StrEnum):
    """The kind of work a job asks for; the wire value of the envelope's ``job_type``."""

    DISTRIBUTE_POLICY = "DISTRIBUTE_POLICY"
    SCHEDULE_ASSESSMENT = "SCHEDULE_ASSESSMENT"
    RUN_ASSESSMENT = "RUN_ASSESSMENT"
    GENERATE_REPORT = "GENERATE_REPORT"
    COLLECT_EVIDENCE = "COLLECT_EVIDENCE"
    FETCH_EVIDENCE_FROM_INTEGRATION = "FETCH_EVIDENCE_FROM_INTEGRATION"
    SEND_NOTIFICATION = "SEND_NOTIFICATION"
    EXPORT_DATA = "EXPORT_DATA"
    GENERATE_AUDIT_PACKAGE = "GENERATE_AUDIT_PACKAGE"
    IMPORT_CONTROLS = "IMPORT_CONTROLS"

    @property
    def flow(self) -> Flow:
        return JOB_TYPE_FLOWS[self]

    @property
    def topic(self) -> str:
        return JOB_TYPE_FLOWS[self].topic


JOB_TYPE_FLOWS: Mapping[JobType, Flow] = MappingProxyType(
    {
        JobType.DISTRIBUTE_POLICY: Flow.POLICY,
        JobType.SCHEDULE_ASSESSMENT: Flow.ASSESSMENT,
        JobType.RUN_ASSESSMENT: Flow.ASSESSMENT,
        JobType.GENERATE_REPORT: Flow.REPORTING,
        JobType.COLLECT_EVIDENCE: Flow.EVIDENCE,
        JobType.FETCH_EVIDENCE_FROM_INTEGRATION: Flow.EVIDENCE,
        JobType.SEND_NOTIFICATION: Flow.NOTIFICATION,
        JobType.EXPORT_DATA: Flow.EXPORT,
        JobType.GENERATE_AUDIT_PACKAGE: Flow.AUDIT,
        JobType.IMPORT_CONTROLS: Flow.IMPORT,
    }
)

#: All topics the job layer owns (flows first, then job events), e.g. for topic provisioning.
ALL_TOPICS: tuple[str, ...] = (*(flow.topic for flow in Flow), JOB_EVENTS_TOPIC)
