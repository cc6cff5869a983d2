"""One payload model per job type: what upstream producers put in ``JobEnvelope.payload``.

Conventions (they end up in the published JSON Schema):

* every list is bounded and duplicate-free, so one message stays far below Kafka's 1 MiB limit
  and a retry never fans out to the same target twice;
* every id is a UUID of an entity the platform already stored: payloads reference, not copy;
* an ``*_id`` naming the job's output (``report_id``, ``export_id``, ...) makes the job
  idempotent: a redelivered or retried job overwrites the same output instead of creating another.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from types import MappingProxyType
from typing import Annotated, ClassVar, Self
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter
from pydantic import (
    AfterValidator,
    Field,
    HttpUrl,
    JsonValue,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from models.common import Bool, CalendarDate, ContractModel, Int, ShortText, UniqueList, UtcDatetime
from models.flows import JobType
from models.secrets import EncryptedSecret

#: Cap on DISTRIBUTE_POLICY.recipient_user_ids. Explicit lists are for small ad-hoc audiences;
#: larger ones use the role / business-unit selectors, which the worker expands in the database
#: and fans out in batches (1000 UUIDs is ~40 KB of JSON, well inside one Kafka message).
MAX_EXPLICIT_RECIPIENTS = 1000
#: Cap on SEND_NOTIFICATION.recipient_user_ids: one notification job is one delivery batch.
MAX_NOTIFICATION_RECIPIENTS = 1000
MAX_BUSINESS_UNITS = 500
MAX_CONTROLS = 5000
MAX_FETCH_CONTROLS = 1000
MAX_INTEGRATIONS = 100
MAX_ASSIGNEES = 200
#: Assessments run at most hourly; a cron firing more often is almost always a typo ("* * * * *").
MIN_SCHEDULE_INTERVAL = timedelta(hours=1)


# --------------------------------------------------------------------------- enums


class Role(StrEnum):
    """Platform role, used to target an audience."""

    USER = "USER"
    ADMIN = "ADMIN"
    SUPER_ADMIN = "SUPER_ADMIN"


#: A role name as stored in the roles table: platform roles (USER, ADMIN, SUPER_ADMIN) and the
#: organisation's domain roles (EMPLOYEE, COMPLIANCE_OFFICER, ...).
RoleName = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9_]*$", max_length=64)]


class Channel(StrEnum):
    """Delivery channel for policies and notifications."""

    EMAIL = "EMAIL"
    IN_APP = "IN_APP"
    WEBHOOK = "WEBHOOK"


class ReportType(StrEnum):
    FRAMEWORK_SCORECARD = "FRAMEWORK_SCORECARD"
    GAP_ANALYSIS = "GAP_ANALYSIS"
    CONTROL_MATRIX = "CONTROL_MATRIX"


class ReportFormat(StrEnum):
    PDF = "PDF"
    XLSX = "XLSX"
    JSON = "JSON"


class ControlStatus(StrEnum):
    """Implementation status of a control, as assessed."""

    NOT_ASSESSED = "NOT_ASSESSED"
    NOT_IMPLEMENTED = "NOT_IMPLEMENTED"
    PARTIALLY_IMPLEMENTED = "PARTIALLY_IMPLEMENTED"
    IMPLEMENTED = "IMPLEMENTED"
    NOT_APPLICABLE = "NOT_APPLICABLE"


#: A gap analysis lists the controls in these statuses.
GAP_STATUSES = (
    ControlStatus.NOT_IMPLEMENTED,
    ControlStatus.PARTIALLY_IMPLEMENTED,
    ControlStatus.NOT_ASSESSED,
)


class EvidenceTrigger(StrEnum):
    NIGHTLY = "NIGHTLY"
    ON_DEMAND = "ON_DEMAND"


class IntegrationType(StrEnum):
    SPLUNK = "SPLUNK"
    QUALYS = "QUALYS"
    NESSUS = "NESSUS"
    AWS = "AWS"
    AZURE = "AZURE"


class NotificationEventType(StrEnum):
    """What happened; selects the notification template."""

    POLICY_PUBLISHED = "POLICY_PUBLISHED"
    ASSESSMENT_ASSIGNED = "ASSESSMENT_ASSIGNED"
    REPORT_READY = "REPORT_READY"
    AUDIT_PACKAGE_READY = "AUDIT_PACKAGE_READY"
    JOB_FAILED = "JOB_FAILED"


class ExportEntity(StrEnum):
    CONTROLS = "CONTROLS"
    ASSESSMENTS = "ASSESSMENTS"
    EVIDENCE = "EVIDENCE"
    POLICIES = "POLICIES"
    ASSIGNMENTS = "ASSIGNMENTS"


class ExportFormat(StrEnum):
    XLSX = "XLSX"
    CSV = "CSV"
    PDF = "PDF"


class ImportFormat(StrEnum):
    OSCAL = "OSCAL"
    CISO_ASSISTANT_YAML = "CISO_ASSISTANT_YAML"
    CSV = "CSV"
    XLSX = "XLSX"
    AUTO = "AUTO"


class ImportErrorMode(StrEnum):
    """What an import does with invalid rows."""

    STOP_FIRST = "STOP_FIRST"
    THRESHOLD = "THRESHOLD"
    SKIP = "SKIP"


# --------------------------------------------------------------------------- field types


def _check_cron(expression: str) -> str:
    if len(expression.split()) != 5:
        raise ValueError("cron must have five fields: minute hour day-of-month month day-of-week")
    if not croniter.is_valid(expression):
        raise ValueError("cron is not a valid cron expression")
    # A fixed reference instant keeps validation deterministic.
    runs = croniter(expression, datetime(2025, 1, 1, tzinfo=UTC))
    try:
        fire_times = [runs.get_next(datetime) for _ in range(50)]
    except (CroniterBadDateError, CroniterBadCronError):
        raise ValueError("cron never fires") from None
    if min(b - a for a, b in pairwise(fire_times)) < MIN_SCHEDULE_INTERVAL:
        raise ValueError("cron fires more often than hourly")
    return expression


def _check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA time zone {name!r}") from None
    return name


_PATH_TRAVERSAL = re.compile(r"(^|/)\.\.(/|$)")


def _check_s3_key(key: str) -> str:
    if _PATH_TRAVERSAL.search(key):
        raise ValueError("s3_key must not contain '..' segments")
    return key


CronExpression = Annotated[str, StringConstraints(min_length=9, max_length=120), AfterValidator(_check_cron)]
TimezoneName = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_check_timezone)]
VersionLabel = Annotated[
    str, StringConstraints(min_length=1, max_length=50, pattern=r"^[0-9A-Za-z][0-9A-Za-z._+-]*$")
]
FamilyCode = Annotated[str, StringConstraints(min_length=1, max_length=50)]
IdempotencyKey = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")
]
S3Key = Annotated[
    str,
    StringConstraints(min_length=1, max_length=1024, pattern=r"^[^/\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"),
    AfterValidator(_check_s3_key),
]
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]
ColumnHeader = Annotated[str, StringConstraints(min_length=1, max_length=200)]


# --------------------------------------------------------------------------- payloads


class JobPayload(ContractModel):
    """Base of all payloads; ``job_type`` binds a payload class to its job type."""

    job_type: ClassVar[JobType]


class DistributePolicyPayload(JobPayload):
    """Send a published policy version to an audience and track acknowledgments.

    The audience is (users holding any of ``target_roles``, if given) AND (users in any of
    ``target_business_unit_ids``, if given), plus ``recipient_user_ids``, plus the members of
    ``recipient_snapshot_id``. At least one must be given: a producer distributing to the
    policy's stored targets copies them in, so the job itself records whom it addressed.
    """

    job_type: ClassVar[JobType] = JobType.DISTRIBUTE_POLICY

    policy_id: UUID = Field(description="Policy to distribute.")
    policy_version: Int = Field(
        ge=1, description="Published version; recipients acknowledge this exact version."
    )
    target_roles: UniqueList[RoleName] = Field(
        default_factory=list,
        max_length=50,
        description="Select users holding any of these roles (platform or domain roles, e.g. EMPLOYEE).",
    )
    target_business_unit_ids: UniqueList[UUID] = Field(
        default_factory=list,
        max_length=MAX_BUSINESS_UNITS,
        description="Select users belonging to any of these business units.",
    )
    recipient_user_ids: UniqueList[UUID] = Field(
        default_factory=list,
        max_length=MAX_EXPLICIT_RECIPIENTS,
        description=(
            f"Explicit extra recipients, at most {MAX_EXPLICIT_RECIPIENTS}; "
            "larger audiences must use target_roles / target_business_unit_ids or a recipient snapshot."
        ),
    )
    recipient_snapshot_id: UUID | None = Field(
        default=None,
        description=(
            "A recipient snapshot stored in PostgreSQL (recipient_snapshots) whose members are "
            "recipients too: the way to address a large hand-picked audience."
        ),
    )
    channels: UniqueList[Channel] = Field(
        default=[Channel.IN_APP],
        min_length=1,
        max_length=len(Channel),
        description="Delivery channels; WEBHOOK posts to the tenant's configured policy webhooks.",
    )
    acknowledgment_due_days: Int | None = Field(
        default=None,
        ge=1,
        le=365,
        description="Days recipients have to acknowledge; null: the policy's configured period.",
    )
    message: str | None = Field(
        default=None, min_length=1, max_length=2000, description="Optional note shown with the policy."
    )

    @model_validator(mode="after")
    def _has_audience(self) -> Self:
        if not (
            self.target_roles
            or self.target_business_unit_ids
            or self.recipient_user_ids
            or self.recipient_snapshot_id
        ):
            raise ValueError(
                "at least one of target_roles, target_business_unit_ids, recipient_user_ids, "
                "recipient_snapshot_id is required"
            )
        return self


class ScheduleAssessmentPayload(JobPayload):
    """Create or replace the recurring schedule of an assessment.

    Re-sending with the same ``schedule_id`` replaces that schedule (upsert), so editing a
    schedule is just another SCHEDULE_ASSESSMENT job. Each firing produces a RUN_ASSESSMENT job.
    """

    job_type: ClassVar[JobType] = JobType.SCHEDULE_ASSESSMENT

    schedule_id: UUID = Field(
        default_factory=uuid4,
        description="Identity of the schedule; the same id replaces it. Generated if omitted.",
    )
    assessment_id: UUID = Field(description="Assessment template to run.")
    framework_id: UUID = Field(description="Framework whose controls are assessed.")
    cron: CronExpression = Field(
        description=(
            "Five-field cron expression (minute hour day-of-month month day-of-week), evaluated in "
            "`timezone`; must not fire more often than hourly."
        ),
        examples=["0 9 1 * *"],
    )
    timezone: TimezoneName = Field(
        default="UTC", description="IANA time zone the cron expression is evaluated in, e.g. Europe/Paris."
    )
    assignee_ids: UniqueList[UUID] = Field(
        min_length=1, max_length=MAX_ASSIGNEES, description="Users assigned to every run."
    )
    start_at: UtcDatetime = Field(description="No run fires before this instant.")
    end_at: UtcDatetime | None = Field(
        default=None, description="No run fires after this instant; null: no end."
    )

    @model_validator(mode="after")
    def _fires_within_window(self) -> Self:
        if self.end_at is not None:
            if self.end_at <= self.start_at:
                raise ValueError("end_at must be after start_at")
            start = self.start_at.astimezone(ZoneInfo(self.timezone))
            first = croniter(self.cron, start).get_next(datetime)
            if first > self.end_at:
                raise ValueError("the schedule never fires between start_at and end_at")
        return self


class RunAssessmentPayload(JobPayload):
    """One firing of an assessment schedule (produced by the scheduler, rarely by hand).

    ``(schedule_id, scheduled_for)`` identifies the run, so a redelivered job does not create
    a second assessment run.
    """

    job_type: ClassVar[JobType] = JobType.RUN_ASSESSMENT

    assessment_id: UUID = Field(description="Assessment template to run.")
    schedule_id: UUID = Field(description="Schedule that fired (SCHEDULE_ASSESSMENT.schedule_id).")
    scheduled_for: UtcDatetime = Field(description="Fire time this run stands for.")


class ReportFilters(ContractModel):
    """Restricts a report; an empty list means no restriction on that dimension."""

    families: UniqueList[FamilyCode] = Field(
        default_factory=list, max_length=200, description="Control family codes, e.g. 'AC' or 'A.5'."
    )
    statuses: UniqueList[ControlStatus] = Field(
        default_factory=list, max_length=len(ControlStatus), description="Control statuses to include."
    )
    business_unit_ids: UniqueList[UUID] = Field(
        default_factory=list, max_length=MAX_BUSINESS_UNITS, description="Business units to include."
    )


class GenerateReportPayload(JobPayload):
    """Render a compliance report for a framework and store it under ``report_id``."""

    job_type: ClassVar[JobType] = JobType.GENERATE_REPORT

    report_id: UUID = Field(
        default_factory=uuid4,
        description="Report record to fill; retries overwrite the same file. Generated if omitted.",
    )
    report_type: ReportType = Field(description="Which report to build.")
    format: ReportFormat = Field(description="Output file format.")
    framework_id: UUID = Field(description="Framework the report covers.")
    filters: ReportFilters = Field(default_factory=ReportFilters, description="Restrictions; default none.")
    include_evidence: Bool = Field(default=False, description="Append evidence references per control.")

    @model_validator(mode="after")
    def _gaps_are_gaps(self) -> Self:
        if self.report_type is ReportType.GAP_ANALYSIS and (
            others := [s.value for s in self.filters.statuses if s not in GAP_STATUSES]
        ):
            gaps = ", ".join(s.value for s in GAP_STATUSES)
            raise ValueError(
                f"a GAP_ANALYSIS lists only gaps ({gaps}); filters.statuses has {', '.join(others)}"
            )
        return self


class CollectEvidencePayload(JobPayload):
    """Collect evidence for controls from integrations; fans out FETCH_EVIDENCE_FROM_INTEGRATION jobs."""

    job_type: ClassVar[JobType] = JobType.COLLECT_EVIDENCE

    control_ids: UniqueList[UUID] = Field(
        default_factory=list,
        max_length=MAX_CONTROLS,
        description="Controls to collect for; empty: every control with an automated evidence source.",
    )
    integration_ids: UniqueList[UUID] = Field(
        default_factory=list,
        max_length=MAX_INTEGRATIONS,
        description="Integrations to query; empty: every enabled integration.",
    )
    trigger: EvidenceTrigger = Field(description="Why the collection runs.")
    run_date: CalendarDate = Field(
        description="Business date collected for; one NIGHTLY collection per run_date is kept."
    )


class FetchEvidenceFromIntegrationPayload(JobPayload):
    """Query one integration and attach the result as evidence to controls."""

    job_type: ClassVar[JobType] = JobType.FETCH_EVIDENCE_FROM_INTEGRATION

    integration_id: UUID = Field(description="Configured integration to query.")
    integration_type: IntegrationType = Field(description="Kind of integration; selects the connector.")
    control_ids: UniqueList[UUID] = Field(
        min_length=1, max_length=MAX_FETCH_CONTROLS, description="Controls the evidence is attached to."
    )
    query: str | None = Field(
        default=None,
        min_length=1,
        max_length=10_000,
        description="Connector-specific query (e.g. Splunk SPL); null uses the integration's default.",
    )
    credentials: EncryptedSecret = Field(
        description="Connector credentials as an encrypted JSON object; keys depend on integration_type."
    )


class SendNotificationPayload(JobPayload):
    """Deliver one notification batch on one channel.

    EMAIL and IN_APP need ``recipient_user_ids`` and no ``webhook_url``; WEBHOOK needs
    ``webhook_url`` and no recipients.
    """

    job_type: ClassVar[JobType] = JobType.SEND_NOTIFICATION

    event_type: NotificationEventType = Field(description="What happened; selects the template.")
    channel: Channel = Field(description="Delivery channel.")
    recipient_user_ids: UniqueList[UUID] = Field(
        default_factory=list,
        max_length=MAX_NOTIFICATION_RECIPIENTS,
        description=f"Recipients of this batch, at most {MAX_NOTIFICATION_RECIPIENTS}.",
    )
    webhook_url: HttpUrl | None = Field(default=None, description="Target URL when channel is WEBHOOK.")
    template_data: dict[str, JsonValue] = Field(
        default_factory=dict, max_length=50, description="Values substituted into the event's template."
    )
    idempotency_key: IdempotencyKey = Field(
        description="Deliveries are made at most once per (idempotency_key, recipient), across retries."
    )

    @model_validator(mode="after")
    def _target_matches_channel(self) -> Self:
        if self.channel is Channel.WEBHOOK:
            if self.webhook_url is None:
                raise ValueError("webhook_url is required when channel is WEBHOOK")
            if self.recipient_user_ids:
                raise ValueError("recipient_user_ids must be empty when channel is WEBHOOK")
        else:
            if self.webhook_url is not None:
                raise ValueError("webhook_url is only allowed when channel is WEBHOOK")
            if not self.recipient_user_ids:
                raise ValueError(f"recipient_user_ids is required when channel is {self.channel}")
        return self


class GenerateAuditPackagePayload(JobPayload):
    """Assemble the archive handed to auditors for one framework and audit period."""

    job_type: ClassVar[JobType] = JobType.GENERATE_AUDIT_PACKAGE

    audit_package_id: UUID = Field(
        default_factory=uuid4,
        description="Audit package record to fill; retries overwrite it. Generated if omitted.",
    )
    framework_id: UUID = Field(description="Framework under audit.")
    period_start: CalendarDate = Field(description="First day of the audit period (inclusive).")
    period_end: CalendarDate = Field(description="Last day of the audit period (inclusive).")
    include_controls: Bool = Field(default=True, description="Include the control catalogue.")
    include_evidence: Bool = Field(default=True, description="Include evidence collected in the period.")
    include_matrices: Bool = Field(default=True, description="Include control matrices.")
    include_results: Bool = Field(default=True, description="Include assessment results of the period.")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.period_end < self.period_start:
            raise ValueError("period_end must not be before period_start")
        if not (
            self.include_controls or self.include_evidence or self.include_matrices or self.include_results
        ):
            raise ValueError("at least one include_* flag must be true")
        return self


class ExportFilters(ContractModel):
    """Restricts an export; empty lists and nulls mean no restriction."""

    framework_ids: UniqueList[UUID] = Field(default_factory=list, max_length=100, description="Frameworks.")
    business_unit_ids: UniqueList[UUID] = Field(
        default_factory=list, max_length=MAX_BUSINESS_UNITS, description="Business units."
    )
    updated_from: UtcDatetime | None = Field(default=None, description="Only rows updated at or after this.")
    updated_to: UtcDatetime | None = Field(default=None, description="Only rows updated before this.")

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.updated_from and self.updated_to and self.updated_to <= self.updated_from:
            raise ValueError("updated_to must be after updated_from")
        return self


class ExportDataPayload(JobPayload):
    """Export one entity table to a file stored under ``export_id``."""

    job_type: ClassVar[JobType] = JobType.EXPORT_DATA

    export_id: UUID = Field(
        default_factory=uuid4,
        description="Export record to fill; retries overwrite the same file. Generated if omitted.",
    )
    entity: ExportEntity = Field(description="What to export.")
    format: ExportFormat = Field(description="Output file format.")
    filters: ExportFilters = Field(
        default_factory=ExportFilters,
        description="Restrictions; default none. framework_ids applies to CONTROLS, ASSESSMENTS and "
        "EVIDENCE; business_unit_ids to ASSESSMENTS, EVIDENCE, POLICIES (targeted units) and "
        "ASSIGNMENTS (the assignee's unit).",
    )

    @field_validator("filters")
    @classmethod
    def _filters_apply(cls, filters: ExportFilters, info: ValidationInfo) -> ExportFilters:
        entity = info.data.get("entity")  # absent when entity itself was invalid
        if filters.framework_ids and entity in (ExportEntity.POLICIES, ExportEntity.ASSIGNMENTS):
            raise ValueError(f"framework_ids does not apply to {entity.value}")
        if filters.business_unit_ids and entity is ExportEntity.CONTROLS:
            raise ValueError("business_unit_ids does not apply to CONTROLS")
        return filters


class ImportControlsPayload(JobPayload):
    """Import a control framework from a file already uploaded to the platform bucket."""

    job_type: ClassVar[JobType] = JobType.IMPORT_CONTROLS

    import_id: UUID = Field(
        default_factory=uuid4,
        description="Import record receiving progress and the row report. Generated if omitted.",
    )
    s3_key: S3Key = Field(
        description="Object key of the uploaded file in the platform bucket (other buckets are not readable)."
    )
    format: ImportFormat = Field(default=ImportFormat.AUTO, description="File format; AUTO detects it.")
    framework_name: ShortText = Field(description="Framework the controls belong to, e.g. 'NIST SP 800-53'.")
    framework_version: VersionLabel = Field(description="Framework version, e.g. 'rev5'.")
    column_mapping: dict[FieldName, ColumnHeader] | None = Field(
        default=None,
        max_length=50,
        description="CSV/XLSX: control field -> source column header; null uses the default headers.",
    )
    sheet_name: str | None = Field(
        default=None, min_length=1, max_length=31, description="XLSX: sheet to read; null: the first sheet."
    )
    error_mode: ImportErrorMode = Field(
        default=ImportErrorMode.STOP_FIRST,
        description="STOP_FIRST: abort at the first bad row; THRESHOLD: after error_threshold; SKIP: never.",
    )
    error_threshold: Int | None = Field(
        default=None, ge=1, le=100_000, description="THRESHOLD only: abort once this many rows were rejected."
    )
    batch_size: Int = Field(default=500, ge=1, le=5000, description="Rows committed per transaction.")

    @model_validator(mode="after")
    def _options_match_format(self) -> Self:
        tabular = {ImportFormat.CSV, ImportFormat.XLSX, ImportFormat.AUTO}
        if self.column_mapping is not None and self.format not in tabular:
            raise ValueError("column_mapping only applies to CSV, XLSX or AUTO")
        if self.sheet_name is not None and self.format not in {ImportFormat.XLSX, ImportFormat.AUTO}:
            raise ValueError("sheet_name only applies to XLSX or AUTO")
        if (self.error_mode is ImportErrorMode.THRESHOLD) != (self.error_threshold is not None):
            raise ValueError("error_threshold is required with error_mode THRESHOLD and only then")
        return self


AnyPayload = (
    DistributePolicyPayload
    | ScheduleAssessmentPayload
    | RunAssessmentPayload
    | GenerateReportPayload
    | CollectEvidencePayload
    | FetchEvidenceFromIntegrationPayload
    | SendNotificationPayload
    | GenerateAuditPackagePayload
    | ExportDataPayload
    | ImportControlsPayload
)

PAYLOAD_MODELS: Mapping[JobType, type[JobPayload]] = MappingProxyType(
    {
        model.job_type: model
        for model in (
            DistributePolicyPayload,
            ScheduleAssessmentPayload,
            RunAssessmentPayload,
            GenerateReportPayload,
            CollectEvidencePayload,
            FetchEvidenceFromIntegrationPayload,
            SendNotificationPayload,
            GenerateAuditPackagePayload,
            ExportDataPayload,
            ImportControlsPayload,
        )
    }
)


def payload_model_for(job_type: JobType) -> type[JobPayload]:
    """The payload model of ``job_type``."""
    return PAYLOAD_MODELS[job_type]
