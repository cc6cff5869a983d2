"""Imported control frameworks as people and dashboards read them.

GET /frameworks                                   every framework with its counts
GET /frameworks/{id}                              counts, families and import history
GET /frameworks/{id}/controls?family=&q=&limit=&after=   controls in catalogue order, paged
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from faust.web import Request, Response, View

from app.auth import ANY_USER, Caller, authenticated
from app.faust_app import faust_app
from app.resources import resources

COUNTS = """
    SELECT f.id, f.name, f.version, f.created_at, f.updated_at,
           (SELECT count(*) FROM control_families cf WHERE cf.framework_id = f.id) AS families,
           count(c.id) FILTER (WHERE c.kind <> 'enhancement') AS controls,
           count(c.id) FILTER (WHERE c.kind = 'enhancement') AS enhancements,
           count(c.id) FILTER (WHERE c.assessable) AS assessable,
           count(c.id) FILTER (WHERE c.withdrawn) AS withdrawn,
           count(c.id) AS total
      FROM frameworks f LEFT JOIN controls c ON c.framework_id = f.id
"""


def _framework(row: Any) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "version": row["version"],
        "counts": {
            k: row[k] for k in ("families", "controls", "enhancements", "assessable", "withdrawn", "total")
        },
        "updated_at": row["updated_at"].isoformat(),
    }


@faust_app.page("/frameworks")
class Frameworks(View):
    @authenticated(ANY_USER)
    async def get(self, request: Request, caller: Caller) -> Response:
        async with (await resources.pool()).acquire() as conn:
            rows = await conn.fetch(f"{COUNTS} GROUP BY f.id ORDER BY f.name, f.version")
        return self.json({"items": [_framework(r) for r in rows]})


@faust_app.page("/frameworks/{framework_id}")
class FrameworkDetail(View):
    @authenticated(ANY_USER)
    async def get(self, request: Request, caller: Caller, framework_id: UUID) -> Response:
        async with (await resources.pool()).acquire() as conn:
            row = await conn.fetchrow(f"{COUNTS} WHERE f.id = $1 GROUP BY f.id", framework_id)
            if row is None:
                return self.json({"error": f"no framework {framework_id}"}, status=404)
            families = await conn.fetch(
                "SELECT ref_id, title FROM control_families WHERE framework_id = $1 ORDER BY sort_key",
                framework_id,
            )
            imports = await conn.fetch(
                """
                SELECT id, job_id, s3_key, format, status, created, updated, unchanged, rejected, report_key,
                       error, started_at, finished_at
                  FROM framework_imports WHERE framework_id = $1 ORDER BY started_at DESC LIMIT 50
                """,
                framework_id,
            )
        return self.json(
            {
                **_framework(row),
                "families": [{"ref_id": f["ref_id"], "title": f["title"]} for f in families],
                "imports": [
                    {
                        **{
                            k: i[k] for k in ("s3_key", "format", "status", "created", "updated", "unchanged")
                        },
                        **{k: i[k] for k in ("rejected", "report_key", "error")},
                        "import_id": str(i["id"]),
                        "job_id": str(i["job_id"]),
                        "started_at": i["started_at"].isoformat(),
                        "finished_at": i["finished_at"].isoformat() if i["finished_at"] else None,
                    }
                    for i in imports
                ],
            }
        )


@faust_app.page("/frameworks/{framework_id}/controls")
class FrameworkControls(View):
    """Keyset-paged by sort key: `after` is the `next` value of the previous page."""

    @authenticated(ANY_USER)
    async def get(self, request: Request, caller: Caller, framework_id: UUID) -> Response:
        try:
            limit = max(1, min(int(request.query.get("limit", "100")), 500))
        except ValueError as exc:
            return self.json({"error": f"bad limit: {exc}"}, status=400)
        family = request.query.get("family") or None
        # Matched as a literal substring: LIKE's wildcards in the query are escaped.
        escaped = (
            (request.query.get("q") or "")
            .strip()
            .replace("\\", "\\\\")
            .replace("%", "\\%")
            .replace("_", "\\_")
        )
        search = escaped or None
        after = request.query.get("after") or ""
        async with (await resources.pool()).acquire() as conn:
            if not await conn.fetchval("SELECT 1 FROM frameworks WHERE id = $1", framework_id):
                return self.json({"error": f"no framework {framework_id}"}, status=404)
            rows = await conn.fetch(
                """
                SELECT ref_id, title, family, kind, depth, assessable, parent_ref, withdrawn, statement,
                       sort_key
                  FROM controls
                 WHERE framework_id = $1 AND ($2::text IS NULL OR family = $2) AND sort_key > $3
                   AND ($4::text IS NULL OR ref_id ILIKE $4 || '%'
                        OR title ILIKE '%' || $4 || '%' OR statement ILIKE '%' || $4 || '%')
                 ORDER BY sort_key
                 LIMIT $5
                """,
                framework_id,
                family,
                after,
                search,
                limit + 1,
            )
        page = rows[:limit]
        return self.json(
            {
                "items": [{k: v for k, v in dict(r).items() if k != "sort_key"} for r in page],
                "next": page[-1]["sort_key"] if len(rows) > limit else None,
            }
        )
