"""HTTP intake: validate a request, record the job, produce it, answer 202 with where to watch.

A rejected request (401/403, 400 unreadable body, 422 invalid fields, 404 unknown entity)
produces nothing. A request that names its own `job_id` is idempotent: repeating it answers
200 with the existing job instead of running it again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote
from uuid import UUID, uuid4

import asyncpg
from faust.web import Request, Response, View
from pydantic import ValidationError

from app import artifacts, metrics
from app.auth import ADMINS, ANY_USER, AuthError, Caller, authenticate
from app.config import MAX_UPLOAD_BYTES
from app.dispatch import produce_all, record_all
from app.errors import NotFoundError
from app.faust_app import faust_app, settings
from app.resources import resources
from app.storage import object_key, safe_name
from models import (
    DistributePolicyPayload,
    ExportDataPayload,
    ExportEntity,
    GenerateAuditPackagePayload,
    GenerateReportPayload,
    ImportControlsPayload,
    JobEnvelope,
    JobPayload,
    Role,
    ScheduleAssessmentPayload,
)

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 256 * 1024
ENVELOPE_OPTIONS = ("job_id", "correlation_id", "priority")


class BadRequest(Exception):
    status = 400


class TooLarge(BadRequest):
    status = 413


class JobIdReused(Exception):
    """A job_id that names a recorded job, in a request that differs from it."""

    def __init__(self, job_id: UUID, fields: list[str]) -> None:
        super().__init__(f"job_id {job_id} was already used for a different request; send a new job_id")
        self.fields = [
            {"field": name, "message": "differs from the request that first used this job_id"}
            for name in fields
        ]


def recorded_job(envelope: JobEnvelope, earlier: asyncpg.Record, named: set[str]) -> JobEnvelope:
    """The recorded job, answering a request that repeats it; JobIdReused if the request comes
    from someone else, or differs in its job type or in a payload field it names (in its body or
    path). What the intake or the payload fills in by itself (a generated report id, a policy's
    current targets, an upload's key) is not compared."""
    payload = envelope.payload
    if earlier["requested_by"] != envelope.requested_by:  # job ids are not secret: GET /jobs lists them
        raise JobIdReused(envelope.job_id, ["requested_by"])
    if earlier["job_type"] != envelope.job_type.value:
        raise JobIdReused(envelope.job_id, ["job_type"])
    asked, recorded = payload.model_dump(mode="json"), earlier["payload"]
    differing = sorted(name for name in named & asked.keys() if asked[name] != recorded.get(name))
    if differing:
        raise JobIdReused(envelope.job_id, differing)
    return envelope.model_copy(update={"payload": type(payload).model_validate(recorded)})


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {
            "field": ".".join(str(p) for p in err["loc"]) or "(body)",
            # pydantic prefixes our own validators' messages with "Value error, "
            "message": err["msg"].removeprefix("Value error, "),
        }
        for err in exc.errors()
    ]


async def read_json(request: Request) -> dict[str, Any]:
    """The whole body, refused with 413 as soon as it passes MAX_JSON_BYTES (whatever its
    Content-Length says, or without one)."""
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise TooLarge(f"request body is larger than {MAX_JSON_BYTES} bytes")
    raw = bytearray()
    while chunk := await request.content.read(64 * 1024):
        raw += chunk
        if len(raw) > MAX_JSON_BYTES:
            raise TooLarge(f"request body is larger than {MAX_JSON_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested thousands deep
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


class UnknownValues(Exception):
    """Values of one request field that name nothing: a 422 on that field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


async def require_known(conn: asyncpg.Connection, field: str, table: str, ids: Sequence[UUID]) -> None:
    """Every id in a filter names a row of `table`: a filter on nothing would quietly match nothing."""
    if not ids:
        return
    found = {r["id"] for r in await conn.fetch(f"SELECT id FROM {table} WHERE id = ANY($1)", ids)}
    if missing := [str(i) for i in ids if i not in found]:
        raise UnknownValues(field, f"no {table[:-1].replace('_', ' ')} with id {', '.join(missing)}")


async def require_row(conn: asyncpg.Connection, table: str, entity_id: Any) -> asyncpg.Record:
    row = await conn.fetchrow(f"SELECT * FROM {table} WHERE id = $1", entity_id)  # table is ours
    if row is None:
        raise NotFoundError(f"{table[:-1].replace('_', ' ')} {entity_id} does not exist")
    return row


@dataclass(frozen=True)
class IntakeRequest:
    """What an endpoint builds its job from: the caller, the body, path parts, envelope options."""

    conn: asyncpg.Connection
    caller: Caller
    body: dict[str, Any]
    path: dict[str, str]
    options: dict[str, Any]

    def envelope(self, payload: JobPayload) -> JobEnvelope:
        """The caller's envelope options (job_id, correlation_id, priority) are validated with
        the envelope, so a bad one gets a field-level 422 like any payload field."""
        return JobEnvelope.model_validate(
            {
                "job_type": payload.job_type.value,
                "payload": payload.model_dump(mode="json"),
                "requested_by": str(self.caller.user_id),
                **self.options,
            }
        )


class IntakeView(View):
    """One POST endpoint: subclasses name who may call it and how to build the job."""

    allowed: frozenset[Role] = ANY_USER
    endpoint: str = ""

    async def build(self, req: IntakeRequest) -> JobEnvelope:
        raise NotImplementedError

    async def read_body(self, request: Request) -> dict[str, Any]:
        return await read_json(request)

    def extra_answer(self, envelope: JobEnvelope) -> dict[str, Any]:
        """What the caller needs besides the job: the id and URLs of what the job makes."""
        return {}

    async def _record(
        self, conn: asyncpg.Connection, req: IntakeRequest
    ) -> tuple[JobEnvelope, list[JobEnvelope]]:
        """Build the job and record it, with what it creates, in one transaction; returns the
        job and what is left to produce.

        A request naming a `job_id` that exists is the same request again if every field it
        names matches the recorded job: it gets the recorded job (its report or export id, not a
        new one) and writes nothing; a still-QUEUED job is produced again (the first request may
        have failed between the row and the message). Any other reuse of the id is a 409.
        """
        named = set(req.body) | set(req.path)  # before build() adds what it derives
        transaction = conn.transaction()
        await transaction.start()
        try:
            envelope = await self.build(req)
            if "job_id" in req.options:  # two requests with one id (however spelt) take turns
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", str(envelope.job_id))
            earlier = await conn.fetchrow(
                "SELECT job_type, status, payload, requested_by FROM jobs WHERE id = $1", envelope.job_id
            )
            if earlier is None:
                to_produce = await record_all(conn, [envelope])
                await transaction.commit()
                return envelope, to_produce
            recorded = recorded_job(envelope, earlier, named)
        except BaseException:
            await transaction.rollback()
            raise
        await transaction.rollback()  # a repeat writes nothing: what build() wrote is undone
        return recorded, [recorded] if earlier["status"] == "QUEUED" else []

    async def post(self, request: Request, **path: str) -> Response:
        status, answer = await self._handle(request, path)
        metrics.INTAKE_REQUESTS.labels(self.endpoint, str(status)).inc()
        return self.json(answer, status=status)

    async def _handle(self, request: Request, path: dict[str, str]) -> tuple[int, dict[str, Any]]:
        try:
            caller = authenticate(request.headers.get("Authorization"), settings, self.allowed)
            body = await self.read_body(request)
            options = {key: body.pop(key) for key in ENVELOPE_OPTIONS if key in body}
            async with (await resources.pool()).acquire() as conn:
                envelope, to_produce = await self._record(
                    conn, IntakeRequest(conn, caller, body, path, options)
                )
            await produce_all(to_produce)
            created = bool(to_produce)
        except AuthError as exc:
            return exc.status, {"error": str(exc)}
        except BadRequest as exc:
            return exc.status, {"error": str(exc)}
        except ValidationError as exc:
            return 422, {"error": "the request is invalid", "fields": field_errors(exc)}
        except NotFoundError as exc:
            return 404, {"error": str(exc)}
        except UnknownValues as exc:
            return 422, {
                "error": "the request is invalid",
                "fields": [{"field": exc.field, "message": str(exc)}],
            }
        except JobIdReused as exc:
            return 409, {"error": str(exc), "fields": exc.fields}
        except artifacts.ArtifactIdTaken as exc:
            return 409, {"error": str(exc)}
        job_id = str(envelope.job_id)
        answer = {
            "job_id": job_id,
            "job_type": envelope.job_type.value,
            "status": "QUEUED" if created else "ALREADY_SUBMITTED",
            "status_url": f"/jobs/{job_id}",
            **self.extra_answer(envelope),
        }
        log.info("job accepted", extra={"job_id": job_id, "endpoint": self.endpoint, "new_job": created})
        return (202 if created else 200), answer


def _uuid(value: str, what: str) -> UUID:
    try:
        return UUID(value)
    except ValueError as exc:
        raise NotFoundError(f"{what} {value} does not exist") from exc


@faust_app.page("/policies/{policy_id}/publish")
class PublishPolicy(IntakeView):
    allowed = ADMINS
    endpoint = "publish_policy"

    async def build(self, req: IntakeRequest) -> JobEnvelope:
        policy = await require_row(req.conn, "policies", _uuid(req.path["policy_id"], "policy"))
        targets = {
            "policy_version": policy["version"],
            "target_roles": list(policy["target_roles"]),
            "target_business_unit_ids": [str(u) for u in policy["target_business_unit_ids"]],
        }
        payload = DistributePolicyPayload.model_validate(
            {**targets, **req.body, "policy_id": str(policy["id"])}
        )
        return req.envelope(payload)


@faust_app.page("/reports/generate")
class GenerateReport(IntakeView):
    allowed = ANY_USER
    endpoint = "generate_report"

    async def build(self, req: IntakeRequest) -> JobEnvelope:
        payload = GenerateReportPayload.model_validate(req.body)
        await require_row(req.conn, "frameworks", payload.framework_id)
        units, families = payload.filters.business_unit_ids, payload.filters.families
        await require_known(req.conn, "filters.business_unit_ids", "business_units", units)
        if families:
            known = await req.conn.fetch(
                "SELECT ref_id FROM control_families WHERE framework_id = $1", payload.framework_id
            )
            codes = sorted(r["ref_id"] for r in known)
            if unknown := [f for f in families if f not in codes]:
                message = f"not in this framework: {', '.join(unknown)} (it has {', '.join(codes)})"
                raise UnknownValues("filters.families", message)
        envelope = req.envelope(payload)
        await artifacts.record_request(req.conn, payload, req.caller.user_id, envelope.job_id)
        return envelope

    def extra_answer(self, envelope: JobEnvelope) -> dict[str, Any]:
        assert isinstance(envelope.payload, GenerateReportPayload)
        return artifact_answer("reports", envelope.payload.report_id)


def artifact_answer(table: str, artifact_id: UUID) -> dict[str, Any]:
    return {
        f"{table[:-1]}_id": str(artifact_id),
        f"{table[:-1]}_status_url": f"/{table}/{artifact_id}/status",
        "download_url": f"/{table}/{artifact_id}/download",
    }


@faust_app.page("/assessments/schedule")
class ScheduleAssessment(IntakeView):
    allowed = ADMINS
    endpoint = "schedule_assessment"

    async def build(self, req: IntakeRequest) -> JobEnvelope:
        payload = ScheduleAssessmentPayload.model_validate(req.body)
        await require_row(req.conn, "frameworks", payload.framework_id)
        return req.envelope(payload)


@faust_app.page("/audit/packages/generate")
class GenerateAuditPackage(IntakeView):
    allowed = ADMINS
    endpoint = "generate_audit_package"

    async def build(self, req: IntakeRequest) -> JobEnvelope:
        payload = GenerateAuditPackagePayload.model_validate(req.body)
        await require_row(req.conn, "frameworks", payload.framework_id)
        envelope = req.envelope(payload)
        await req.conn.execute(
            """
            INSERT INTO audit_packages (id, framework_id, status, requested_by, job_id)
            VALUES ($1, $2, 'QUEUED', $3, $4) ON CONFLICT (id) DO NOTHING
            """,
            payload.audit_package_id,
            payload.framework_id,
            req.caller.user_id,
            envelope.job_id,
        )
        return envelope


@faust_app.page("/exports")
class ExportData(IntakeView):
    allowed = ANY_USER
    endpoint = "export_data"

    async def build(self, req: IntakeRequest) -> JobEnvelope:
        payload = ExportDataPayload.model_validate(req.body)
        await require_known(req.conn, "filters.framework_ids", "frameworks", payload.filters.framework_ids)
        await require_known(
            req.conn, "filters.business_unit_ids", "business_units", payload.filters.business_unit_ids
        )
        # Each assignment row names a person and their e-mail address: lists of people are for admins.
        if payload.entity is ExportEntity.ASSIGNMENTS and not req.caller.has_any(ADMINS):
            raise AuthError(403, "exporting ASSIGNMENTS (people's names and e-mail addresses) needs ADMIN")
        envelope = req.envelope(payload)
        await artifacts.record_request(req.conn, payload, req.caller.user_id, envelope.job_id)
        return envelope

    def extra_answer(self, envelope: JobEnvelope) -> dict[str, Any]:
        assert isinstance(envelope.payload, ExportDataPayload)
        return artifact_answer("exports", envelope.payload.export_id)


@faust_app.page("/imports")
class ImportControls(IntakeView):
    """JSON naming an object already in the bucket, or multipart with the file itself."""

    allowed = ADMINS
    endpoint = "import_controls"

    async def read_body(self, request: Request) -> dict[str, Any]:
        if not request.content_type.startswith("multipart/"):
            return await read_json(request)
        if request.content_length and request.content_length > MAX_UPLOAD_BYTES:
            raise TooLarge(f"upload is larger than {MAX_UPLOAD_BYTES} bytes")
        body: dict[str, Any] = {}
        reader = await request.multipart()
        async for part in reader:
            if part.name == "file":
                data = await part.read()
                if len(data) > MAX_UPLOAD_BYTES:
                    raise TooLarge(f"upload is larger than {MAX_UPLOAD_BYTES} bytes")
                body["_upload"] = (safe_name(unquote(part.filename or "upload")), bytes(data))
            elif part.name:
                text = await part.text()
                try:
                    body[part.name] = json.loads(text) if part.name == "column_mapping" else text
                except ValueError as exc:
                    raise BadRequest(f"column_mapping is not valid JSON: {exc}") from exc
        if "_upload" not in body:
            raise BadRequest("multipart request needs a 'file' part")
        return body

    async def build(self, req: IntakeRequest) -> JobEnvelope:
        body = req.body
        upload = body.pop("_upload", None)
        storage = await resources.storage()
        if upload is not None:
            name, data = upload
            # Each upload its own object: two files of one name on one day must not overwrite each other.
            body["s3_key"] = object_key("imports", f"{req.caller.user_id}-{uuid4().hex[:12]}-{name}")
            payload = ImportControlsPayload.model_validate_strings(body)
            await storage.put(payload.s3_key, data, "application/octet-stream")
        else:
            payload = ImportControlsPayload.model_validate(body)
            if not await storage.exists(payload.s3_key):
                raise NotFoundError(f"no object {payload.s3_key} in bucket {storage.bucket}")
        return req.envelope(payload)
