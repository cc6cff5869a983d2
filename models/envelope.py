"""The versioned job envelope: what travels on every flow topic.

``JobEnvelope`` is the common shape; each job type has a concrete subclass (``DistributePolicyJob``,
...) whose ``job_type`` is a literal and whose ``payload`` is that job type's model. The wire form
is therefore a union discriminated on ``job_type`` (published as ``oneOf`` + ``discriminator``), and

    JobEnvelope.model_validate_json(raw_bytes)

returns the concrete subclass with a typed payload. Errors are located from the envelope root,
e.g. ``("payload", "policy_id")``, and an unknown ``job_type`` fails at ``("job_type",)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Annotated, Any, Literal, Self, cast
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, model_validator
from pydantic.config import ExtraValues
from pydantic.json_schema import DEFAULT_REF_TEMPLATE, GenerateJsonSchema, JsonSchemaMode

from models.common import ContractModel, Int, UtcDatetime, utcnow
from models.flows import Flow, JobType
from models.payloads import (
    AnyPayload,
    CollectEvidencePayload,
    DistributePolicyPayload,
    ExportDataPayload,
    FetchEvidenceFromIntegrationPayload,
    GenerateAuditPackagePayload,
    GenerateReportPayload,
    ImportControlsPayload,
    JobPayload,
    RunAssessmentPayload,
    ScheduleAssessmentPayload,
    SendNotificationPayload,
)

SCHEMA_VERSION: Literal["1"] = "1"
DEFAULT_MAX_ATTEMPTS = 5
MAX_ATTEMPTS_LIMIT = 20
DEFAULT_PRIORITY = 5

ENVELOPE_DESCRIPTION = (
    "A job request published on the topic of its job type's flow, keyed by job_id (UTF-8). "
    "job_type selects the payload schema. Delivery is at least once: consumers deduplicate on job_id."
)

#: Printable ASCII only: the correlation id is also sent as a Kafka header and logged verbatim.
CorrelationId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]


def _require_discriminators(schema: dict[str, Any]) -> None:
    # The Python model defaults these two, but producers in other languages must always send
    # them: job_type selects the payload schema and schema_version lets consumers evolve.
    required = schema.setdefault("required", [])
    for name in ("job_type", "schema_version"):
        if name not in required:
            required.append(name)


class JobEnvelope(ContractModel):
    """A job request as published on a flow topic (key: job id; headers: see models.wire).

    Abstract: build one with ``JobEnvelope.for_payload(payload, ...)`` and parse one with
    ``JobEnvelope.model_validate_json(raw)``; both return the job type's concrete subclass.
    """

    model_config = ConfigDict(json_schema_extra=_require_discriminators)

    schema_version: Literal["1"] = Field(
        default=SCHEMA_VERSION, description="Envelope schema version; a breaking change bumps it."
    )
    job_id: UUID = Field(
        default_factory=uuid4,
        description=(
            "Job identity and Kafka message key. Supplying your own makes the request idempotent: "
            "the job layer runs a job id at most once to completion."
        ),
    )
    job_type: JobType = Field(description="Kind of job; selects the payload schema and the topic.")
    payload: AnyPayload = Field(description="Job-type specific parameters.")
    attempt: Int = Field(default=1, ge=1, description="1 for the first delivery, +1 per retry.")
    max_attempts: Int = Field(
        default=DEFAULT_MAX_ATTEMPTS,
        ge=1,
        le=MAX_ATTEMPTS_LIMIT,
        description="Attempts before the job is declared DEAD and dead-lettered.",
    )
    priority: Int = Field(
        default=DEFAULT_PRIORITY, ge=0, le=9, description="0 (lowest) to 9 (most urgent); advisory."
    )
    created_at: UtcDatetime = Field(
        default_factory=utcnow, description="When the job was requested (UTC); unchanged by retries."
    )
    not_before: UtcDatetime | None = Field(
        default=None, description="Do not start before this instant (UTC); null: as soon as possible."
    )
    correlation_id: CorrelationId | None = Field(
        default=None, description="Caller's trace/request id, propagated to job events and logs."
    )
    requested_by: UUID | None = Field(
        default=None, description="User who requested the job; null for system-initiated jobs."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if type(self) is JobEnvelope:
            # Only concrete classes pin job_type to its payload model; parsing dispatches to them.
            raise ValueError("JobEnvelope is abstract: use JobEnvelope.for_payload(payload, ...)")
        if type(self.payload).job_type != self.job_type:
            raise ValueError(f"payload is a {type(self.payload).job_type} payload, not {self.job_type}")
        if self.attempt > self.max_attempts:
            raise ValueError("attempt must not exceed max_attempts")
        return self

    @property
    def flow(self) -> Flow:
        return self.job_type.flow

    @property
    def topic(self) -> str:
        return self.job_type.topic

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts

    @classmethod
    def for_payload(
        cls,
        payload: JobPayload,
        *,
        job_id: UUID | None = None,
        requested_by: UUID | None = None,
        correlation_id: str | None = None,
        priority: int = DEFAULT_PRIORITY,
        not_before: datetime | None = None,
        max_attempts: int | None = None,
    ) -> JobEnvelope:
        """Wrap ``payload`` in the envelope of its job type; omitted values take their defaults."""
        fields: dict[str, Any] = {
            "job_type": payload.job_type,
            "payload": payload,
            "priority": priority,
            "not_before": not_before,
            "correlation_id": correlation_id,
            "requested_by": requested_by,
        }
        if job_id is not None:
            fields["job_id"] = job_id
        if max_attempts is not None:
            fields["max_attempts"] = max_attempts
        return ENVELOPE_MODELS[payload.job_type](**fields)

    def next_attempt(self, *, not_before: datetime | None = None) -> Self:
        """The envelope to republish for a retry (same job id, attempt + 1)."""
        if self.is_last_attempt:
            raise ValueError(f"job {self.job_id} has no attempts left ({self.attempt}/{self.max_attempts})")
        data = dict(self)
        data.update(attempt=self.attempt + 1, not_before=not_before)
        return type(self)(**data)

    # -- parsing: the abstract class dispatches on job_type to the concrete subclass ----------

    @classmethod
    def model_validate(
        cls,
        obj: Any,
        *,
        strict: bool | None = None,
        extra: ExtraValues | None = None,
        from_attributes: bool | None = None,
        context: Any | None = None,
        by_alias: bool | None = None,
        by_name: bool | None = None,
    ) -> Self:
        if isinstance(obj, JobEnvelope) and cls is JobEnvelope:
            target = cast(type[Self], type(obj))
        else:
            target = cls._concrete(_JobTypeProbe.model_validate(obj, from_attributes=from_attributes))
        return target.__pydantic_validator__.validate_python(
            obj,
            strict=strict,
            extra=extra,
            from_attributes=from_attributes,
            context=context,
            by_alias=by_alias,
            by_name=by_name,
        )

    @classmethod
    def model_validate_json(
        cls,
        json_data: str | bytes | bytearray,
        *,
        strict: bool | None = None,
        extra: ExtraValues | None = None,
        context: Any | None = None,
        by_alias: bool | None = None,
        by_name: bool | None = None,
    ) -> Self:
        target = cls._concrete(_JobTypeProbe.model_validate_json(json_data))
        return target.__pydantic_validator__.validate_json(
            json_data, strict=strict, extra=extra, context=context, by_alias=by_alias, by_name=by_name
        )

    @classmethod
    def model_validate_strings(
        cls,
        obj: Any,
        *,
        strict: bool | None = None,
        extra: ExtraValues | None = None,
        context: Any | None = None,
        by_alias: bool | None = None,
        by_name: bool | None = None,
    ) -> Self:
        target = cls._concrete(_JobTypeProbe.model_validate_strings(obj))
        return target.__pydantic_validator__.validate_strings(
            obj, strict=strict, extra=extra, context=context, by_alias=by_alias, by_name=by_name
        )

    @classmethod
    def _concrete(cls, probe: _JobTypeProbe) -> type[Self]:
        # A concrete class validates as itself, so a mismatching job_type fails on its literal.
        if cls is not JobEnvelope:
            return cls
        return cast(type[Self], ENVELOPE_MODELS[probe.job_type])

    @classmethod
    def model_json_schema(
        cls,
        by_alias: bool | None = None,
        ref_template: str = DEFAULT_REF_TEMPLATE,
        schema_generator: type[GenerateJsonSchema] = GenerateJsonSchema,
        mode: JsonSchemaMode = "validation",
        *,
        union_format: Literal["any_of", "primitive_type_array"] = "any_of",
    ) -> dict[str, Any]:
        if cls is not JobEnvelope:
            return super().model_json_schema(
                by_alias, ref_template, schema_generator, mode, union_format=union_format
            )
        schema = _ANY_ENVELOPE.json_schema(
            by_alias=True if by_alias is None else by_alias,
            ref_template=ref_template,
            schema_generator=schema_generator,
            mode=mode,
        )
        return {"title": "JobEnvelope", "description": ENVELOPE_DESCRIPTION, **schema}


class _JobTypeProbe(BaseModel):
    """Reads only ``job_type``, so that the abstract envelope can pick the concrete class."""

    model_config = ConfigDict(extra="ignore", title="JobEnvelope")

    job_type: JobType


class DistributePolicyJob(JobEnvelope):
    """Envelope of a DISTRIBUTE_POLICY job."""

    job_type: Literal[JobType.DISTRIBUTE_POLICY] = JobType.DISTRIBUTE_POLICY
    payload: DistributePolicyPayload


class ScheduleAssessmentJob(JobEnvelope):
    """Envelope of a SCHEDULE_ASSESSMENT job."""

    job_type: Literal[JobType.SCHEDULE_ASSESSMENT] = JobType.SCHEDULE_ASSESSMENT
    payload: ScheduleAssessmentPayload


class RunAssessmentJob(JobEnvelope):
    """Envelope of a RUN_ASSESSMENT job."""

    job_type: Literal[JobType.RUN_ASSESSMENT] = JobType.RUN_ASSESSMENT
    payload: RunAssessmentPayload


class GenerateReportJob(JobEnvelope):
    """Envelope of a GENERATE_REPORT job."""

    job_type: Literal[JobType.GENERATE_REPORT] = JobType.GENERATE_REPORT
    payload: GenerateReportPayload


class CollectEvidenceJob(JobEnvelope):
    """Envelope of a COLLECT_EVIDENCE job."""

    job_type: Literal[JobType.COLLECT_EVIDENCE] = JobType.COLLECT_EVIDENCE
    payload: CollectEvidencePayload


class FetchEvidenceFromIntegrationJob(JobEnvelope):
    """Envelope of a FETCH_EVIDENCE_FROM_INTEGRATION job."""

    job_type: Literal[JobType.FETCH_EVIDENCE_FROM_INTEGRATION] = JobType.FETCH_EVIDENCE_FROM_INTEGRATION
    payload: FetchEvidenceFromIntegrationPayload


class SendNotificationJob(JobEnvelope):
    """Envelope of a SEND_NOTIFICATION job."""

    job_type: Literal[JobType.SEND_NOTIFICATION] = JobType.SEND_NOTIFICATION
    payload: SendNotificationPayload


class GenerateAuditPackageJob(JobEnvelope):
    """Envelope of a GENERATE_AUDIT_PACKAGE job."""

    job_type: Literal[JobType.GENERATE_AUDIT_PACKAGE] = JobType.GENERATE_AUDIT_PACKAGE
    payload: GenerateAuditPackagePayload


class ExportDataJob(JobEnvelope):
    """Envelope of an EXPORT_DATA job."""

    job_type: Literal[JobType.EXPORT_DATA] = JobType.EXPORT_DATA
    payload: ExportDataPayload


class ImportControlsJob(JobEnvelope):
    """Envelope of an IMPORT_CONTROLS job."""

    job_type: Literal[JobType.IMPORT_CONTROLS] = JobType.IMPORT_CONTROLS
    payload: ImportControlsPayload


ENVELOPE_MODELS: Mapping[JobType, type[JobEnvelope]] = MappingProxyType(
    {
        JobType.DISTRIBUTE_POLICY: DistributePolicyJob,
        JobType.SCHEDULE_ASSESSMENT: ScheduleAssessmentJob,
        JobType.RUN_ASSESSMENT: RunAssessmentJob,
        JobType.GENERATE_REPORT: GenerateReportJob,
        JobType.COLLECT_EVIDENCE: CollectEvidenceJob,
        JobType.FETCH_EVIDENCE_FROM_INTEGRATION: FetchEvidenceFromIntegrationJob,
        JobType.SEND_NOTIFICATION: SendNotificationJob,
        JobType.GENERATE_AUDIT_PACKAGE: GenerateAuditPackageJob,
        JobType.EXPORT_DATA: ExportDataJob,
        JobType.IMPORT_CONTROLS: ImportControlsJob,
    }
)

AnyJobEnvelope = Annotated[
    DistributePolicyJob
    | ScheduleAssessmentJob
    | RunAssessmentJob
    | GenerateReportJob
    | CollectEvidenceJob
    | FetchEvidenceFromIntegrationJob
    | SendNotificationJob
    | GenerateAuditPackageJob
    | ExportDataJob
    | ImportControlsJob,
    Field(discriminator="job_type"),
]
_ANY_ENVELOPE: TypeAdapter[JobEnvelope] = TypeAdapter(AnyJobEnvelope)


_JSON_OBJECT: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])


def build_envelope(payload: JobPayload, **options: Any) -> JobEnvelope:
    """Shorthand for :meth:`JobEnvelope.for_payload`."""
    return JobEnvelope.for_payload(payload, **options)


def parse_envelope(data: bytes | bytearray | str | Mapping[str, Any]) -> JobEnvelope:
    """Parse an envelope from Kafka bytes, a JSON string, or an already JSON-decoded mapping.

    A decoded mapping is re-validated as JSON (not as Python objects) so that strings stand for
    UUIDs and datetimes exactly as on the wire.
    """
    if isinstance(data, Mapping):
        data = _JSON_OBJECT.dump_json(dict(data))
    return JobEnvelope.model_validate_json(data)
