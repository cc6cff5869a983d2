"""The job contract: models, published schemas, secrets, status folding, record layout.

Pure unit tests: no Kafka, PostgreSQL or S3.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from app import producer as producer_module
from app.config import get_settings
from app.crypto import (
    MissingEncryptionKeyError,
    SecretDecryptionError,
    decrypt_secret,
    encrypt_secret,
    generate_key,
)
from app.producer import JobProducer, message_headers
from models import (
    ALL_TOPICS,
    JOB_EVENTS_TOPIC,
    MAX_EXPLICIT_RECIPIENTS,
    PAYLOAD_MODELS,
    Channel,
    DistributePolicyJob,
    DistributePolicyPayload,
    EncryptedSecret,
    FetchEvidenceFromIntegrationPayload,
    Flow,
    ImportControlsPayload,
    IntegrationType,
    JobEnvelope,
    JobEvent,
    JobState,
    JobStatus,
    JobType,
    Role,
    SendNotificationPayload,
    apply_event,
    build_envelope,
    envelope_record,
    event_record,
    parse_envelope,
    payload_model_for,
)
from models.schema import (
    ASYNCAPI_PATH,
    ENVELOPE_SCHEMA_FILE,
    SCHEMA_DIR,
    asyncapi_document,
    generated_files,
    json_schemas,
    payload_schema_file,
    stale_files,
)

KEY = generate_key()
OTHER_KEY = generate_key()
PLAIN_SECRET = "s3cr3t-P@ssw0rd-never-on-the-wire"


def uid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


SAMPLES: dict[JobType, dict[str, Any]] = {
    JobType.DISTRIBUTE_POLICY: {
        "policy_id": uid(1),
        "policy_version": 3,
        "target_roles": ["USER"],
        "target_business_unit_ids": [uid(2)],
        "channels": ["IN_APP", "EMAIL"],
        "acknowledgment_due_days": 14,
        "message": "Please read the new acceptable use policy.",
    },
    JobType.SCHEDULE_ASSESSMENT: {
        "schedule_id": uid(7),
        "assessment_id": uid(3),
        "framework_id": uid(4),
        "cron": "0 9 1 * *",
        "timezone": "Europe/Paris",
        "assignee_ids": [uid(5), uid(6)],
        "start_at": "2025-01-01T00:00:00Z",
        "end_at": "2026-01-01T00:00:00+01:00",
    },
    JobType.RUN_ASSESSMENT: {
        "assessment_id": uid(3),
        "schedule_id": uid(7),
        "scheduled_for": "2025-02-01T08:00:00Z",
    },
    JobType.GENERATE_REPORT: {
        "report_id": uid(8),
        "report_type": "GAP_ANALYSIS",
        "format": "PDF",
        "framework_id": uid(4),
        "filters": {"families": ["AC", "A.5"], "statuses": ["NOT_IMPLEMENTED"], "business_unit_ids": []},
        "include_evidence": True,
    },
    JobType.COLLECT_EVIDENCE: {
        "control_ids": [uid(9)],
        "integration_ids": [],
        "trigger": "NIGHTLY",
        "run_date": "2025-03-31",
    },
    JobType.FETCH_EVIDENCE_FROM_INTEGRATION: {
        "integration_id": uid(10),
        "integration_type": "SPLUNK",
        "control_ids": [uid(9), uid(11)],
        "query": "search index=auth action=failure | stats count by user",
        "credentials": {"ciphertext": encrypt_secret(PLAIN_SECRET, KEY).ciphertext},
    },
    JobType.SEND_NOTIFICATION: {
        "event_type": "REPORT_READY",
        "channel": "IN_APP",
        "recipient_user_ids": [uid(12)],
        "template_data": {"report_url": "/reports/1", "count": 3, "tags": ["a"], "nested": {"ok": True}},
        "idempotency_key": "REPORT_READY:report-1",
    },
    JobType.EXPORT_DATA: {
        "export_id": uid(13),
        "entity": "CONTROLS",
        "format": "CSV",
        "filters": {"framework_ids": [uid(4)], "updated_from": "2025-01-01T00:00:00Z"},
    },
    JobType.GENERATE_AUDIT_PACKAGE: {
        "audit_package_id": uid(14),
        "framework_id": uid(4),
        "period_start": "2024-01-01",
        "period_end": "2024-12-31",
        "include_matrices": False,
    },
    JobType.IMPORT_CONTROLS: {
        "import_id": uid(15),
        "s3_key": "imports/2025/nist-800-53 rev5.xlsx",
        "format": "XLSX",
        "framework_name": "NIST SP 800-53",
        "framework_version": "rev5",
        "column_mapping": {"ref_id": "Control ID", "name": "Control Name"},
        "sheet_name": "Controls",
        "error_mode": "THRESHOLD",
        "error_threshold": 25,
        "batch_size": 250,
    },
}


def wire(job_type: JobType, payload: dict[str, Any] | None = None, **envelope: Any) -> dict[str, Any]:
    return {
        "schema_version": "1",
        "job_id": uid(99),
        "job_type": job_type.value,
        "payload": SAMPLES[job_type] if payload is None else payload,
        "created_at": "2025-01-01T12:00:00Z",
        **envelope,
    }


def errors_of(raw: dict[str, Any] | str) -> list[Any]:
    data = raw if isinstance(raw, str) else json.dumps(raw)
    with pytest.raises(ValidationError) as caught:
        JobEnvelope.model_validate_json(data)
    return caught.value.errors()


def locs(errors: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [tuple(error["loc"]) for error in errors]


def schema_validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


# --------------------------------------------------------------------------- published files


def test_published_files_are_up_to_date() -> None:
    stale = stale_files()
    assert not stale, (
        "generated contract files are stale; run `python -m models.schema` and commit the result: "
        + ", ".join(str(path) for path in stale)
    )


def test_generation_is_deterministic_and_canonical() -> None:
    first, second = generated_files(), generated_files()
    assert first == second
    for path, content in first.items():
        assert content.endswith("\n") and not content.endswith("\n\n"), path
        if path.suffix == ".json":
            assert (
                content
                == json.dumps(json.loads(content), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
            )


def test_one_schema_file_per_payload_plus_envelope() -> None:
    names = set(json_schemas())
    assert ENVELOPE_SCHEMA_FILE in names
    assert {payload_schema_file(job_type) for job_type in JobType} <= names
    for name, schema in json_schemas().items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"].endswith("2020-12/schema"), name


def test_schema_carries_descriptions_and_constraints() -> None:
    schema = json_schemas()[payload_schema_file(JobType.DISTRIBUTE_POLICY)]
    recipients = schema["properties"]["recipient_user_ids"]
    assert recipients["maxItems"] == MAX_EXPLICIT_RECIPIENTS
    assert recipients["uniqueItems"] is True
    assert str(MAX_EXPLICIT_RECIPIENTS) in recipients["description"]
    assert schema["additionalProperties"] is False
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"{name} has no description"


def test_envelope_schema_is_a_union_discriminated_on_job_type() -> None:
    schema = json_schemas()[ENVELOPE_SCHEMA_FILE]
    assert schema["discriminator"]["propertyName"] == "job_type"
    assert set(schema["discriminator"]["mapping"]) == {job_type.value for job_type in JobType}
    assert len(schema["oneOf"]) == len(JobType)
    variant = schema["$defs"]["DistributePolicyJob"]
    assert {"job_type", "schema_version", "payload"} <= set(variant["required"])


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in _refs(item)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_asyncapi_document_describes_every_topic() -> None:
    document = asyncapi_document()
    assert document["asyncapi"] == "3.0.0"
    assert yaml.safe_load(ASYNCAPI_PATH.read_text(encoding="utf-8")) == document
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == set(ALL_TOPICS)
    for ref in _refs(document):
        assert _resolve(document, ref) is not None, ref

    for job_type in JobType:
        channel = document["channels"][job_type.flow.value]
        assert channel["address"] == job_type.topic
        message = _resolve(document, channel["messages"][job_type.value]["$ref"])
        assert message["headers"]["properties"]["job-type"]["const"] == job_type.value
        assert set(message["headers"]["required"]) == {"job-id", "job-type", "schema-version"}
        assert "correlation-id" in message["headers"]["properties"]
        assert message["bindings"]["kafka"]["key"]["format"] == "uuid"
        payload = _resolve(document, message["payload"]["$ref"])
        assert payload["properties"]["job_type"]["const"] == job_type.value

    events = document["channels"]["job-events"]
    assert events["address"] == JOB_EVENTS_TOPIC
    event_message = _resolve(document, events["messages"]["JobEvent"]["$ref"])
    assert _resolve(document, event_message["payload"]["$ref"])["title"] == "JobEvent"
    assert document["operations"]["sendJobEvents"]["action"] == "send"
    # AsyncAPI's Schema Object wants a string discriminator, never OpenAPI's object form.
    assert '"discriminator": {' not in json.dumps(document)


# --------------------------------------------------------------------------- flows


def test_flows_job_types_and_topics() -> None:
    expected = {
        JobType.DISTRIBUTE_POLICY: "governance.policy",
        JobType.SCHEDULE_ASSESSMENT: "governance.assessment",
        JobType.RUN_ASSESSMENT: "governance.assessment",
        JobType.GENERATE_REPORT: "governance.reporting",
        JobType.COLLECT_EVIDENCE: "governance.evidence",
        JobType.FETCH_EVIDENCE_FROM_INTEGRATION: "governance.evidence",
        JobType.SEND_NOTIFICATION: "governance.notification",
        JobType.EXPORT_DATA: "governance.export",
        JobType.GENERATE_AUDIT_PACKAGE: "governance.audit",
        JobType.IMPORT_CONTROLS: "governance.import",
    }
    assert {job_type: job_type.topic for job_type in JobType} == expected
    assert len(Flow) == 8 and all(flow.job_types for flow in Flow)
    assert JOB_EVENTS_TOPIC == "governance.job-events"
    assert ALL_TOPICS[-1] == JOB_EVENTS_TOPIC and len(set(ALL_TOPICS)) == 9
    assert set(PAYLOAD_MODELS) == set(JobType)
    assert [role.value for role in Role] == ["USER", "ADMIN", "SUPER_ADMIN"]


# --------------------------------------------------------------------------- happy paths


@pytest.mark.parametrize("job_type", list(JobType), ids=str)
def test_each_payload_parses_from_the_wire(job_type: JobType) -> None:
    raw = json.dumps(wire(job_type)).encode()
    envelope = JobEnvelope.model_validate_json(raw)
    assert type(envelope).__name__.endswith("Job") and type(envelope) is not JobEnvelope
    assert isinstance(envelope.payload, payload_model_for(job_type))
    assert envelope.job_type is job_type and envelope.flow is job_type.flow
    assert envelope.job_id == UUID(uid(99))
    assert envelope.created_at == datetime(2025, 1, 1, 12, tzinfo=UTC)

    again = JobEnvelope.model_validate_json(envelope.model_dump_json())
    assert again == envelope
    assert parse_envelope(json.loads(raw)) == envelope
    assert JobEnvelope.model_validate(envelope.model_dump(mode="json")) == envelope

    # The published schemas accept what the models accept and what the models produce.
    dumped = json.loads(envelope.model_dump_json())
    schema_validator(ENVELOPE_SCHEMA_FILE).validate(dumped)
    schema_validator(payload_schema_file(job_type)).validate(dumped["payload"])


@pytest.mark.parametrize("job_type", list(JobType), ids=str)
def test_each_payload_builds_an_envelope_in_python(job_type: JobType) -> None:
    payload = payload_model_for(job_type).model_validate(SAMPLES[job_type])
    requester, job_id = uuid4(), uuid4()
    envelope = build_envelope(
        payload, job_id=job_id, requested_by=requester, correlation_id="req-42", priority=7
    )
    assert envelope.payload is payload
    assert (envelope.job_id, envelope.requested_by, envelope.priority) == (job_id, requester, 7)
    assert envelope.topic == job_type.topic
    assert (envelope.attempt, envelope.max_attempts, envelope.schema_version) == (1, 5, "1")
    assert envelope.created_at.tzinfo is UTC
    assert JobEnvelope.for_payload(payload).job_id != JobEnvelope.for_payload(payload).job_id


def test_defaults_of_distribute_policy() -> None:
    payload = DistributePolicyPayload.model_validate(
        {"policy_id": uid(1), "policy_version": 1, "recipient_user_ids": [uid(2)]}
    )
    assert payload.channels == [Channel.IN_APP]
    assert payload.target_roles == [] and payload.acknowledgment_due_days is None


def test_datetimes_are_normalised_to_utc() -> None:
    envelope = JobEnvelope.model_validate_json(
        json.dumps(wire(JobType.RUN_ASSESSMENT, created_at="2025-01-01T14:00:00+02:00"))
    )
    assert envelope.created_at == datetime(2025, 1, 1, 12, tzinfo=UTC)
    assert envelope.created_at.utcoffset() == timedelta(0)
    assert '"created_at":"2025-01-01T12:00:00Z"' in envelope.model_dump_json()


def test_form_fields_validate_through_model_validate_strings() -> None:
    form = {
        "s3_key": "imports/a.csv",
        "format": "CSV",
        "framework_name": "ISO 27001",
        "framework_version": "2022",
    }
    payload = ImportControlsPayload.model_validate_strings({**form, "batch_size": "100"})
    assert payload.batch_size == 100
    with pytest.raises(ValidationError):
        ImportControlsPayload.model_validate({**form, "batch_size": "100"})


def test_next_attempt_keeps_identity() -> None:
    envelope = JobEnvelope.model_validate_json(json.dumps(wire(JobType.EXPORT_DATA, max_attempts=2)))
    later = datetime(2025, 1, 2, tzinfo=UTC)
    retry = envelope.next_attempt(not_before=later)
    assert (retry.job_id, retry.attempt, retry.not_before, retry.created_at) == (
        envelope.job_id,
        2,
        later,
        envelope.created_at,
    )
    assert retry.is_last_attempt
    with pytest.raises(ValueError, match="no attempts left"):
        retry.next_attempt()


# --------------------------------------------------------------------------- invalid input


def _set(job_type: JobType, **changes: Any) -> dict[str, Any]:
    return {**SAMPLES[job_type], **changes}


def _without(job_type: JobType, *names: str) -> dict[str, Any]:
    return {key: value for key, value in SAMPLES[job_type].items() if key not in names}


INVALID_PAYLOADS: list[tuple[str, JobType, dict[str, Any], tuple[Any, ...], str]] = [
    (
        "bad-uuid",
        JobType.DISTRIBUTE_POLICY,
        _set(JobType.DISTRIBUTE_POLICY, policy_id="nope"),
        ("policy_id",),
        "uuid",
    ),
    (
        "version-as-string",
        JobType.DISTRIBUTE_POLICY,
        _set(JobType.DISTRIBUTE_POLICY, policy_version="3"),
        ("policy_version",),
        "integer",
    ),
    (
        "no-audience",
        JobType.DISTRIBUTE_POLICY,
        _without(JobType.DISTRIBUTE_POLICY, "target_roles", "target_business_unit_ids"),
        (),
        "at least one of",
    ),
    (
        "unknown-channel",
        JobType.DISTRIBUTE_POLICY,
        _set(JobType.DISTRIBUTE_POLICY, channels=["SMS"]),
        ("channels", 0),
        "EMAIL",
    ),
    (
        "malformed-role",
        JobType.DISTRIBUTE_POLICY,
        _set(JobType.DISTRIBUTE_POLICY, target_roles=["not a role"]),
        ("target_roles", 0),
        "pattern",
    ),
    (
        "duplicate-ids",
        JobType.DISTRIBUTE_POLICY,
        _set(JobType.DISTRIBUTE_POLICY, recipient_user_ids=[uid(5), uid(5)]),
        ("recipient_user_ids",),
        "unique",
    ),
    (
        "misspelt-field",
        JobType.DISTRIBUTE_POLICY,
        _set(JobType.DISTRIBUTE_POLICY, chanels=["EMAIL"]),
        ("chanels",),
        "Extra inputs",
    ),
    (
        "cron-too-frequent",
        JobType.SCHEDULE_ASSESSMENT,
        _set(JobType.SCHEDULE_ASSESSMENT, cron="*/5 * * * *"),
        ("cron",),
        "hourly",
    ),
    (
        "cron-garbage",
        JobType.SCHEDULE_ASSESSMENT,
        _set(JobType.SCHEDULE_ASSESSMENT, cron="every monday 9am"),
        ("cron",),
        "cron",
    ),
    (
        "cron-never-fires",
        JobType.SCHEDULE_ASSESSMENT,
        _set(JobType.SCHEDULE_ASSESSMENT, cron="0 0 30 2 *"),
        ("cron",),
        "never fires",
    ),
    (
        "cron-seconds-field",
        JobType.SCHEDULE_ASSESSMENT,
        _set(JobType.SCHEDULE_ASSESSMENT, cron="0 0 9 * * *"),
        ("cron",),
        "five fields",
    ),
    (
        "unknown-timezone",
        JobType.SCHEDULE_ASSESSMENT,
        _set(JobType.SCHEDULE_ASSESSMENT, timezone="Mars/Olympus"),
        ("timezone",),
        "time zone",
    ),
    (
        "end-before-start",
        JobType.SCHEDULE_ASSESSMENT,
        _set(JobType.SCHEDULE_ASSESSMENT, end_at="2024-01-01T00:00:00Z"),
        (),
        "after start_at",
    ),
    (
        "naive-datetime",
        JobType.SCHEDULE_ASSESSMENT,
        _set(JobType.SCHEDULE_ASSESSMENT, start_at="2025-01-01T00:00:00"),
        ("start_at",),
        "timezone",
    ),
    (
        "epoch-datetime",
        JobType.SCHEDULE_ASSESSMENT,
        _set(JobType.SCHEDULE_ASSESSMENT, start_at=1735689600),
        ("start_at",),
        "ISO 8601",
    ),
    (
        "no-assignees",
        JobType.SCHEDULE_ASSESSMENT,
        _set(JobType.SCHEDULE_ASSESSMENT, assignee_ids=[]),
        ("assignee_ids",),
        "at least 1",
    ),
    (
        "unknown-format",
        JobType.GENERATE_REPORT,
        _set(JobType.GENERATE_REPORT, format="DOCX"),
        ("format",),
        "PDF",
    ),
    (
        "bool-as-int",
        JobType.GENERATE_REPORT,
        _set(JobType.GENERATE_REPORT, include_evidence=1),
        ("include_evidence",),
        "boolean",
    ),
    (
        "nested-filter",
        JobType.GENERATE_REPORT,
        _set(JobType.GENERATE_REPORT, filters={"statuses": ["DONE"]}),
        ("filters", "statuses", 0),
        "IMPLEMENTED",
    ),
    (
        "bad-date",
        JobType.COLLECT_EVIDENCE,
        _set(JobType.COLLECT_EVIDENCE, run_date="yesterday"),
        ("run_date",),
        "date",
    ),
    (
        "missing-trigger",
        JobType.COLLECT_EVIDENCE,
        _without(JobType.COLLECT_EVIDENCE, "trigger"),
        ("trigger",),
        "required",
    ),
    (
        "plain-credentials",
        JobType.FETCH_EVIDENCE_FROM_INTEGRATION,
        _set(JobType.FETCH_EVIDENCE_FROM_INTEGRATION, credentials="hunter2"),
        ("credentials",),
        "object",
    ),
    (
        "fake-ciphertext",
        JobType.FETCH_EVIDENCE_FROM_INTEGRATION,
        _set(JobType.FETCH_EVIDENCE_FROM_INTEGRATION, credentials={"ciphertext": "gA" + "x" * 120}),
        ("credentials", "ciphertext"),
        "Fernet",
    ),
    (
        "unknown-integration",
        JobType.FETCH_EVIDENCE_FROM_INTEGRATION,
        _set(JobType.FETCH_EVIDENCE_FROM_INTEGRATION, integration_type="JIRA"),
        ("integration_type",),
        "SPLUNK",
    ),
    (
        "webhook-without-url",
        JobType.SEND_NOTIFICATION,
        _set(JobType.SEND_NOTIFICATION, channel="WEBHOOK", recipient_user_ids=[]),
        (),
        "webhook_url is required",
    ),
    (
        "email-without-recipients",
        JobType.SEND_NOTIFICATION,
        _set(JobType.SEND_NOTIFICATION, channel="EMAIL", recipient_user_ids=[]),
        (),
        "recipient_user_ids is required",
    ),
    (
        "batch-too-big",
        JobType.SEND_NOTIFICATION,
        _set(JobType.SEND_NOTIFICATION, recipient_user_ids=[uid(n) for n in range(1001)]),
        ("recipient_user_ids",),
        "at most 1000",
    ),
    (
        "bad-idempotency-key",
        JobType.SEND_NOTIFICATION,
        _set(JobType.SEND_NOTIFICATION, idempotency_key="a b"),
        ("idempotency_key",),
        "pattern",
    ),
    (
        "unknown-entity",
        JobType.EXPORT_DATA,
        _set(JobType.EXPORT_DATA, entity="USERS"),
        ("entity",),
        "CONTROLS",
    ),
    (
        "period-reversed",
        JobType.GENERATE_AUDIT_PACKAGE,
        _set(JobType.GENERATE_AUDIT_PACKAGE, period_end="2023-12-31"),
        (),
        "period_end",
    ),
    (
        "threshold-missing",
        JobType.IMPORT_CONTROLS,
        _without(JobType.IMPORT_CONTROLS, "error_threshold"),
        (),
        "error_threshold",
    ),
    (
        "batch-size-as-string",
        JobType.IMPORT_CONTROLS,
        _set(JobType.IMPORT_CONTROLS, batch_size="500"),
        ("batch_size",),
        "integer",
    ),
    (
        "batch-size-zero",
        JobType.IMPORT_CONTROLS,
        _set(JobType.IMPORT_CONTROLS, batch_size=0),
        ("batch_size",),
        "greater than or equal to 1",
    ),
    (
        "path-traversal",
        JobType.IMPORT_CONTROLS,
        _set(JobType.IMPORT_CONTROLS, s3_key="imports/../secrets.csv"),
        ("s3_key",),
        "..",
    ),
    ("sheet-for-csv", JobType.IMPORT_CONTROLS, _set(JobType.IMPORT_CONTROLS, format="CSV"), (), "sheet_name"),
]


@pytest.mark.parametrize(
    ("job_type", "payload", "field", "fragment"),
    [case[1:] for case in INVALID_PAYLOADS],
    ids=[case[0] for case in INVALID_PAYLOADS],
)
def test_invalid_payload_errors_name_the_field(
    job_type: JobType, payload: dict[str, Any], field: tuple[Any, ...], fragment: str
) -> None:
    errors = errors_of(wire(job_type, payload))
    assert ("payload", *field) in locs(errors), errors
    messages = " | ".join(error["msg"] for error in errors)
    assert fragment.lower() in messages.lower()


def test_unknown_job_type_is_rejected_at_job_type() -> None:
    errors = errors_of({**wire(JobType.EXPORT_DATA), "job_type": "DELETE_EVERYTHING"})
    assert locs(errors) == [("job_type",)]
    assert errors[0]["type"] == "enum"

    missing = dict(wire(JobType.EXPORT_DATA))
    del missing["job_type"]
    assert locs(errors_of(missing)) == [("job_type",)]


def test_payload_of_another_job_type_is_rejected() -> None:
    errors = errors_of(wire(JobType.EXPORT_DATA, SAMPLES[JobType.GENERATE_REPORT]))
    assert all(loc[0] == "payload" for loc in locs(errors))
    assert ("payload", "entity") in locs(errors)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"priority": 10}, ("priority",)),
        ({"priority": "5"}, ("priority",)),
        ({"attempt": 0}, ("attempt",)),
        ({"max_attempts": 21}, ("max_attempts",)),
        ({"attempt": 4, "max_attempts": 3}, ()),
        ({"schema_version": "2"}, ("schema_version",)),
        ({"job_id": "42"}, ("job_id",)),
        ({"created_at": "2025-01-01T12:00:00"}, ("created_at",)),
        ({"correlation_id": "has spaces"}, ("correlation_id",)),
        ({"trace": "x"}, ("trace",)),
    ],
    ids=str,
)
def test_invalid_envelope_fields(changes: dict[str, Any], field: tuple[Any, ...]) -> None:
    assert field in locs(errors_of(wire(JobType.EXPORT_DATA, **changes)))


def test_non_json_and_non_object_input() -> None:
    assert errors_of("not json")[0]["type"] == "json_invalid"
    assert errors_of("[1, 2]")[0]["type"] == "model_type"


def test_abstract_envelope_cannot_be_instantiated() -> None:
    payload: Any = payload_model_for(JobType.EXPORT_DATA).model_validate(SAMPLES[JobType.EXPORT_DATA])
    with pytest.raises(ValidationError, match="abstract"):
        JobEnvelope(job_type=JobType.EXPORT_DATA, payload=payload)


def test_concrete_envelope_rejects_another_job_type() -> None:
    with pytest.raises(ValidationError):
        DistributePolicyJob.model_validate_json(json.dumps(wire(JobType.EXPORT_DATA)))


# --------------------------------------------------------------------------- recipient cap


def test_explicit_recipient_cap() -> None:
    base = {"policy_id": uid(1), "policy_version": 1}
    at_cap = [str(uuid4()) for _ in range(MAX_EXPLICIT_RECIPIENTS)]
    payload = DistributePolicyPayload.model_validate({**base, "recipient_user_ids": at_cap})
    assert len(payload.recipient_user_ids) == MAX_EXPLICIT_RECIPIENTS == 1000

    with pytest.raises(ValidationError) as caught:
        DistributePolicyPayload.model_validate({**base, "recipient_user_ids": [*at_cap, str(uuid4())]})
    (error,) = caught.value.errors()
    assert error["loc"] == ("recipient_user_ids",)
    assert error["type"] == "too_long" and error["ctx"]["max_length"] == MAX_EXPLICIT_RECIPIENTS

    # Larger audiences go through selectors, which have no per-user size.
    DistributePolicyPayload.model_validate({**base, "target_roles": ["USER"]})


# --------------------------------------------------------------------------- secrets


def _fetch_payload(secret: EncryptedSecret) -> FetchEvidenceFromIntegrationPayload:
    return FetchEvidenceFromIntegrationPayload(
        integration_id=uuid4(),
        integration_type=IntegrationType.QUALYS,
        control_ids=[uuid4()],
        credentials=secret,
    )


def test_secret_round_trip() -> None:
    secret = encrypt_secret(PLAIN_SECRET, KEY)
    assert secret.ciphertext.startswith("gAAAA") and PLAIN_SECRET not in secret.ciphertext
    assert decrypt_secret(secret, KEY) == PLAIN_SECRET
    assert decrypt_secret(secret.ciphertext, KEY.encode()) == PLAIN_SECRET
    assert encrypt_secret(PLAIN_SECRET, KEY) != secret  # fresh IV every time

    envelope = build_envelope(_fetch_payload(secret))
    parsed = JobEnvelope.model_validate_json(envelope.model_dump_json())
    assert isinstance(parsed.payload, FetchEvidenceFromIntegrationPayload)
    assert decrypt_secret(parsed.payload.credentials, KEY) == PLAIN_SECRET


def test_secret_never_shows_in_dumps_or_repr() -> None:
    secret = encrypt_secret(PLAIN_SECRET, KEY)
    payload = _fetch_payload(secret)
    envelope = build_envelope(payload)
    renderings = [
        repr(secret),
        str(secret),
        repr(payload),
        str(payload),
        repr(envelope),
        payload.model_dump_json(),
        str(payload.model_dump()),
        envelope.model_dump_json(),
        envelope_record(envelope).value.decode(),
    ]
    for text in renderings:
        assert PLAIN_SECRET not in text
    # The token itself stays out of repr/str too (logs), but is what goes on the wire.
    assert secret.ciphertext not in repr(envelope) and secret.ciphertext not in str(secret)
    assert secret.ciphertext in envelope.model_dump_json()


def test_wrong_key_and_tampering_fail_without_leaking() -> None:
    secret = encrypt_secret(PLAIN_SECRET, KEY)
    with pytest.raises(SecretDecryptionError) as caught:
        decrypt_secret(secret, OTHER_KEY)
    assert secret.ciphertext not in str(caught.value) and OTHER_KEY not in str(caught.value)
    tampered = (
        secret.ciphertext[:-8] + ("A" if secret.ciphertext[-8] != "A" else "B") + secret.ciphertext[-7:]
    )
    with pytest.raises(SecretDecryptionError):
        decrypt_secret(tampered, KEY)


def test_key_rotation_with_comma_separated_keys() -> None:
    old = encrypt_secret(PLAIN_SECRET, KEY)
    rotated = f"{OTHER_KEY},{KEY}"
    assert decrypt_secret(old, rotated) == PLAIN_SECRET
    new = encrypt_secret(PLAIN_SECRET, rotated)
    assert decrypt_secret(new, OTHER_KEY) == PLAIN_SECRET
    with pytest.raises(SecretDecryptionError):
        decrypt_secret(new, KEY)


def test_key_comes_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYLOAD_ENCRYPTION_KEY", KEY)
    get_settings.cache_clear()
    try:
        assert decrypt_secret(encrypt_secret(PLAIN_SECRET), KEY) == PLAIN_SECRET
        monkeypatch.setenv("PAYLOAD_ENCRYPTION_KEY", "")
        get_settings.cache_clear()
        with pytest.raises(MissingEncryptionKeyError):
            encrypt_secret(PLAIN_SECRET)
        with pytest.raises(ValueError, match="not a valid Fernet key") as caught:
            encrypt_secret(PLAIN_SECRET, "not-a-key")
        assert "not-a-key" not in str(caught.value)
    finally:
        get_settings.cache_clear()


# --------------------------------------------------------------------------- status folding

JOB = uuid4()
T0 = datetime(2025, 1, 1, 9, tzinfo=UTC)


def event(state: JobState, attempt: int = 1, minutes: int = 0, **fields: Any) -> JobEvent:
    return JobEvent(
        job_id=JOB,
        job_type=JobType.GENERATE_REPORT,
        state=state,
        attempt=attempt,
        at=T0 + timedelta(minutes=minutes),
        **fields,
    )


def fold(events: list[JobEvent], status: JobStatus | None = None) -> JobStatus:
    for item in events:
        status = apply_event(status, item)
    assert status is not None
    return status


RETRIED_JOB = [
    event(JobState.QUEUED, 1, 0, max_attempts=3),
    event(JobState.ACTIVE, 1, 1, progress=10, worker="w1"),
    event(JobState.RETRYING, 1, 2, error={"type": "IntegrationTimeout", "message": "splunk timed out"}),
    event(JobState.ACTIVE, 2, 3, progress=50, worker="w2"),
    event(JobState.COMPLETED, 2, 4, result={"object_key": "reports/1.pdf"}),
]


def test_events_fold_into_status() -> None:
    status = fold(RETRIED_JOB)
    assert status.state is JobState.COMPLETED and status.is_terminal
    assert (status.attempt, status.max_attempts, status.progress) == (2, 3, 100)
    assert status.result == {"object_key": "reports/1.pdf"} and status.error is None
    assert (status.created_at, status.updated_at) == (T0, T0 + timedelta(minutes=4))
    first, second = status.history
    assert (first.attempt, first.state, first.worker) == (1, JobState.RETRYING, "w1")
    assert first.error is not None and first.error.type == "IntegrationTimeout"
    assert first.started_at == T0 + timedelta(minutes=1) and first.finished_at == T0 + timedelta(minutes=2)
    assert (second.state, second.worker, second.finished_at) == (JobState.COMPLETED, "w2", status.updated_at)

    retrying = fold(RETRIED_JOB[:3])
    assert retrying.state is JobState.RETRYING and retrying.error == first.error


def test_fold_is_independent_of_arrival_order() -> None:
    expected = fold(RETRIED_JOB)
    for order in itertools.permutations(RETRIED_JOB):
        assert fold(list(order)) == expected, [item.state for item in order]


def test_terminal_state_never_goes_back() -> None:
    done = fold(RETRIED_JOB)
    for late in (
        event(JobState.ACTIVE, 2, 9, progress=99),
        event(JobState.ACTIVE, 3, 9, progress=1),
        event(JobState.QUEUED, 1, 9),
        event(JobState.RETRYING, 2, 9),
    ):
        after = apply_event(done, late)
        assert (after.state, after.attempt, after.progress, after.updated_at) == (
            JobState.COMPLETED,
            2,
            100,
            done.updated_at,
        )

    dead = fold(
        [event(JobState.ACTIVE, 3, 1), event(JobState.DEAD, 3, 2, error={"type": "X", "message": "y"})]
    )
    assert apply_event(dead, event(JobState.ACTIVE, 3, 5, progress=40)).state is JobState.DEAD
    failed = fold([event(JobState.FAILED, 1, 1, error={"type": "InvalidJobError", "message": "bad"})])
    assert apply_event(failed, event(JobState.ACTIVE, 2, 5)).state is JobState.FAILED


def test_terminal_event_wins_whatever_its_attempt_and_first_terminal_stays() -> None:
    running_retry = fold([event(JobState.ACTIVE, 2, 5, progress=30)])
    finished = apply_event(running_retry, event(JobState.COMPLETED, 1, 4))  # a slow attempt 1 finished
    assert (finished.state, finished.attempt) == (JobState.COMPLETED, 1)
    conflicting = apply_event(finished, event(JobState.DEAD, 2, 6, error={"type": "X", "message": "y"}))
    assert conflicting.state is JobState.COMPLETED
    assert conflicting.history[1].state is JobState.DEAD  # recorded, not applied


def test_stale_and_duplicate_events_change_nothing() -> None:
    status = fold([event(JobState.ACTIVE, 1, 5, progress=60, message="batch 6/10")])
    assert apply_event(status, event(JobState.ACTIVE, 1, 3, progress=30)).progress == 60
    assert apply_event(status, event(JobState.QUEUED, 1, 0)).state is JobState.ACTIVE
    same = event(JobState.ACTIVE, 1, 5, progress=60, message="batch 6/10")
    assert apply_event(status, same) == status == apply_event(apply_event(status, same), same)


def test_fold_rejects_another_job_and_fills_unknown_job_type() -> None:
    status = fold([event(JobState.ACTIVE)])
    other = JobEvent(job_id=uuid4(), job_type=JobType.GENERATE_REPORT, state=JobState.ACTIVE, attempt=1)
    with pytest.raises(ValueError, match="applied to the status of job"):
        apply_event(status, other)

    rejected = JobEvent(job_id=JOB, job_type=None, state=JobState.FAILED, attempt=1, at=T0)
    unknown = apply_event(None, rejected)
    assert unknown.job_type is None
    assert apply_event(unknown, event(JobState.QUEUED)).job_type is JobType.GENERATE_REPORT


def test_status_survives_a_json_round_trip() -> None:
    status = fold(RETRIED_JOB)
    assert JobStatus.model_validate(status.model_dump(mode="json")) == status
    assert JobStatus.model_validate_json(status.model_dump_json()) == status


def test_event_fields_must_match_state() -> None:
    with pytest.raises(ValidationError, match="result is only allowed"):
        event(JobState.ACTIVE, result={"x": 1})
    with pytest.raises(ValidationError, match="error is only allowed"):
        event(JobState.COMPLETED, error={"type": "X", "message": "y"})
    with pytest.raises(ValidationError):
        event(JobState.ACTIVE, progress=101)


def test_event_accepts_worker_errors_and_truncates_long_text() -> None:
    error = {"type": "ValueError", "message": "x" * 10_000, "retryable": False, "stack": "Traceback" * 2000}
    failed = event(JobState.FAILED, error=error, message="m" * 5000)
    assert (
        failed.error is not None and len(failed.error.message) == 4000 and failed.error.message.endswith("…")
    )
    assert failed.error.stack is not None and len(failed.error.stack) == 8000
    assert failed.message is not None and len(failed.message) == 2000


def test_event_for_envelope_copies_identity() -> None:
    envelope = JobEnvelope.model_validate_json(json.dumps(wire(JobType.EXPORT_DATA, correlation_id="c-1")))
    active = JobEvent.for_envelope(envelope, JobState.ACTIVE, progress=5)
    assert (active.job_id, active.job_type, active.attempt, active.correlation_id, active.progress) == (
        envelope.job_id,
        JobType.EXPORT_DATA,
        1,
        "c-1",
        5,
    )
    record = event_record(active)
    assert record.topic == JOB_EVENTS_TOPIC and record.key == str(envelope.job_id).encode()
    assert ("job-type", b"EXPORT_DATA") in record.headers and ("correlation-id", b"c-1") in record.headers
    unreadable = JobEvent(job_id=uuid4(), job_type=None, state=JobState.FAILED, attempt=1)
    assert "job-type" not in dict(event_record(unreadable).headers)


# --------------------------------------------------------------------------- record layout and producer


def test_envelope_record_layout() -> None:
    envelope = JobEnvelope.model_validate_json(
        json.dumps(wire(JobType.IMPORT_CONTROLS, correlation_id="req-7"))
    )
    record = envelope_record(envelope)
    assert record.topic == "governance.import"
    assert record.key == uid(99).encode("utf-8")
    assert JobEnvelope.model_validate_json(record.value) == envelope
    assert dict(record.headers) == {
        "job-id": uid(99).encode(),
        "job-type": b"IMPORT_CONTROLS",
        "schema-version": b"1",
        "correlation-id": b"req-7",
    }
    without = JobEnvelope.model_validate_json(json.dumps(wire(JobType.IMPORT_CONTROLS)))
    assert "correlation-id" not in dict(message_headers(without))


class FakeSender:
    def __init__(self, **options: Any) -> None:
        self.options = options
        self.sent: list[dict[str, Any]] = []
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any:
        self.sent.append({"topic": topic, "value": value, "key": key, "headers": headers})
        return "metadata"


async def test_producer_enqueue_publishes_keyed_envelope(monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[FakeSender] = []

    def factory(**options: Any) -> FakeSender:
        created.append(FakeSender(**options))
        return created[-1]

    monkeypatch.setattr(producer_module, "AIOKafkaProducer", factory)
    payload = SendNotificationPayload.model_validate(SAMPLES[JobType.SEND_NOTIFICATION])
    job_id, requester = uuid4(), uuid4()
    async with JobProducer("broker:9092") as jobs:
        envelope = await jobs.enqueue(payload, job_id=job_id, requested_by=requester, correlation_id="r-1")
    (sender,) = created
    assert sender.options["acks"] == "all" and sender.options["enable_idempotence"] is True
    assert sender.options["bootstrap_servers"] == "broker:9092"
    assert sender.started and sender.stopped
    (sent,) = sender.sent
    assert sent["topic"] == "governance.notification"
    assert sent["key"] == str(job_id).encode()
    assert ("job-type", b"SEND_NOTIFICATION") in sent["headers"]
    assert ("correlation-id", b"r-1") in sent["headers"]
    assert JobEnvelope.model_validate_json(sent["value"]) == envelope
    assert (envelope.job_id, envelope.requested_by) == (job_id, requester)


async def test_producer_refuses_to_send_before_start_or_with_bad_options() -> None:
    sender = FakeSender()
    jobs = JobProducer(sender=sender)
    payload = SendNotificationPayload.model_validate(SAMPLES[JobType.SEND_NOTIFICATION])
    with pytest.raises(RuntimeError, match="not started"):
        await jobs.enqueue(payload)
    async with jobs:
        with pytest.raises(ValidationError):
            await jobs.enqueue(payload, priority=11)
        assert await jobs.send_envelope(build_envelope(payload)) == "metadata"
    assert len(sender.sent) == 1


def test_producer_durability_cannot_be_overridden() -> None:
    with pytest.raises(TypeError):
        JobProducer(acks=1)
