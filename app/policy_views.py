"""A policy's distribution as a dashboard shows it: who has it, how it reached them, how far the
latest distribution job got.

GET /policies/{policy_id}/distribution   (admins)
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from faust.web import Request, Response, View

from app.auth import ADMINS, Caller, authenticated
from app.faust_app import faust_app
from app.resources import resources


@faust_app.page("/policies/{policy_id}/distribution")
class PolicyDistribution(View):
    @authenticated(ADMINS)
    async def get(self, request: Request, caller: Caller, policy_id: UUID) -> Response:
        async with (await resources.pool()).acquire() as conn:
            policy = await conn.fetchrow(
                "SELECT version, status, recipients_count, last_distributed_at FROM policies WHERE id = $1",
                policy_id,
            )
            if policy is None:
                return self.json({"error": f"no policy {policy_id}"}, status=404)
            assignments = await conn.fetch(
                "SELECT status, count(*) AS n FROM policy_assignments"
                " WHERE policy_id = $1 AND policy_version = $2 GROUP BY status",
                policy_id,
                policy["version"],
            )
            deliveries = await conn.fetch(
                "SELECT channel, status, count(*) AS n FROM delivery_logs"
                " WHERE policy_id = $1 AND policy_version = $2 GROUP BY channel, status",
                policy_id,
                policy["version"],
            )
            latest = await conn.fetchrow(
                """
                SELECT c.job_id, c.attempts, c.finished_at, count(d.seq) AS ranges,
                       count(d.done_at) AS ranges_done, coalesce(sum(d.recipients), 0) AS recipients_written
                  FROM distribution_checkpoints c LEFT JOIN distribution_chunks d USING (job_id)
                 WHERE c.policy_id = $1
                 GROUP BY c.job_id ORDER BY c.created_at DESC LIMIT 1
                """,
                policy_id,
            )
        delivery: dict[str, dict[str, int]] = {}
        for row in deliveries:
            delivery.setdefault(row["channel"], {})[row["status"]] = row["n"]
        return self.json(
            {
                "policy_id": str(policy_id),
                "version": policy["version"],
                "status": policy["status"],
                "recipients": policy["recipients_count"],
                "last_distributed_at": _iso(policy["last_distributed_at"]),
                "assignments": {row["status"]: row["n"] for row in assignments},
                "deliveries": delivery,
                "latest_job": None
                if latest is None
                else {
                    "job_id": str(latest["job_id"]),
                    "attempts": latest["attempts"],
                    "ranges": latest["ranges"],
                    "ranges_done": latest["ranges_done"],
                    "recipients_written": latest["recipients_written"],
                    "finished_at": _iso(latest["finished_at"]),
                },
            }
        )


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
