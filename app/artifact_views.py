"""Reports and exports as their requesters read them.

GET /reports/{id}/status     GET /exports/{id}/status
GET /reports/{id}/download   GET /exports/{id}/download

Only the requester or an admin sees a record (anyone else gets 403; an unknown id 404). Status
is one row read, answered by any worker. A download is a 302 to a presigned URL valid 7 days
(SigV4's limit), so files never pass through the workers; the body carries the URL too, for
clients that do not follow redirects. A file that is not ready yet is a 409 with its status.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from faust.web import Request, Response, View

from app.artifacts import EXPORTS, REPORTS, ArtifactKind
from app.auth import ADMINS, ANY_USER, Caller, authenticated
from app.faust_app import faust_app
from app.resources import resources

DOWNLOAD_SECONDS = 7 * 24 * 3600
# What a status answer shows of the record, besides ids and times.
SHOWN = ("status", "progress", "format", "content_type", "size_bytes", "file_name", "error")
SHOWN_BY_KIND = {"reports": ("report_type",), "exports": ("entity", "row_count")}


async def _visible_record(
    view: View, kind: ArtifactKind, caller: Caller, artifact_id: UUID
) -> tuple[Any, Response | None]:
    """The record, or the error answer for this caller."""
    async with (await resources.pool()).acquire() as conn:
        row = await conn.fetchrow(
            f"""
            SELECT a.*, j.status AS job_state, j.attempt AS job_attempt
              FROM {kind.table} a LEFT JOIN jobs j ON j.id = a.job_id
             WHERE a.id = $1
            """,
            artifact_id,
        )
    if row is None:
        return None, view.json({"error": f"no {kind.noun} {artifact_id}"}, status=404)
    if row["requested_by"] != caller.user_id and not caller.has_any(ADMINS):
        return None, view.json(
            {"error": f"only its requester or an admin may see this {kind.noun}"}, status=403
        )
    return row, None


def _status(kind: ArtifactKind, row: Any) -> dict[str, Any]:
    artifact_id = str(row["id"])
    return {
        f"{kind.noun}_id": artifact_id,
        **{name: row[name] for name in (*SHOWN, *SHOWN_BY_KIND[kind.table])},
        "job": {
            "id": str(row["job_id"]) if row["job_id"] else None,
            "state": row["job_state"],
            "attempt": row["job_attempt"],
        },
        "requested_by": str(row["requested_by"]) if row["requested_by"] else None,
        "created_at": row["created_at"].isoformat(),
        "completed_at": row["completed_at"].isoformat() if row["completed_at"] else None,
        "download_url": f"/{kind.table}/{artifact_id}/download" if row["status"] == "COMPLETED" else None,
    }


def status_view(kind: ArtifactKind) -> type[View]:
    class StatusView(View):
        @authenticated(ANY_USER)
        async def get(self, request: Request, caller: Caller, artifact_id: UUID) -> Response:
            row, refusal = await _visible_record(self, kind, caller, artifact_id)
            return refusal or self.json(_status(kind, row))

    return StatusView


def download_view(kind: ArtifactKind) -> type[View]:
    class DownloadView(View):
        @authenticated(ANY_USER)
        async def get(self, request: Request, caller: Caller, artifact_id: UUID) -> Response:
            row, refusal = await _visible_record(self, kind, caller, artifact_id)
            if refusal is not None:
                return refusal
            if row["status"] != "COMPLETED":
                return self.json(
                    {
                        "error": f"the {kind.noun} is not ready",
                        "status": row["status"],
                        "error_detail": row["error"],
                    },
                    status=409,
                )
            storage = await resources.storage()
            url = await storage.presigned_url(row["s3_key"], DOWNLOAD_SECONDS)
            return self.json(
                {"url": url, "expires_in": DOWNLOAD_SECONDS, "file_name": row["file_name"]},
                status=302,
                headers={"Location": url},
            )

    return DownloadView


for _kind in (REPORTS, EXPORTS):
    faust_app.page(f"/{_kind.table}/{{artifact_id}}/status", name=f"{_kind.noun}-status")(status_view(_kind))
    faust_app.page(f"/{_kind.table}/{{artifact_id}}/download", name=f"{_kind.noun}-download")(
        download_view(_kind)
    )
