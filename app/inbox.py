"""In-app notifications as their recipient sees them: list, and mark as read.

GET  /users/{user_id}/notifications?unread=true&limit=&before=   (the user, or an admin)
POST /notifications/{notification_id}/read                      (the recipient only)
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from faust.web import Request, Response, View

from app.auth import ADMINS, ANY_USER, Caller, authenticated
from app.faust_app import faust_app
from app.resources import resources


@faust_app.page("/users/{user_id}/notifications")
class UserNotifications(View):
    @authenticated(ANY_USER)
    async def get(self, request: Request, caller: Caller, user_id: UUID) -> Response:
        try:
            limit = max(1, min(int(request.query.get("limit", "50")), 200))
            before = datetime.fromisoformat(request.query["before"]) if "before" in request.query else None
        except ValueError as exc:
            return self.json({"error": f"bad limit or before: {exc}"}, status=400)
        if caller.user_id != user_id and not caller.has_any(ADMINS):
            return self.json({"error": "you can only read your own notifications"}, status=403)
        unread_only = request.query.get("unread", "false").lower() == "true"
        async with (await resources.pool()).acquire() as conn:
            rows = await conn.fetch(
                """
                SELECT id, event_type, channel, title, body, data, read_at, created_at
                  FROM notifications
                 WHERE user_id = $1 AND (NOT $2 OR read_at IS NULL)
                   AND ($3::timestamptz IS NULL OR created_at < $3)
                 ORDER BY created_at DESC, id DESC
                 LIMIT $4
                """,
                user_id,
                unread_only,
                before,
                limit,
            )
            unread = await conn.fetchval(
                "SELECT count(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL", user_id
            )
        items = [
            {
                **{k: row[k] for k in ("event_type", "channel", "title", "body", "data")},
                "id": str(row["id"]),
                "read_at": row["read_at"].isoformat() if row["read_at"] else None,
                "created_at": row["created_at"].isoformat(),
            }
            for row in rows
        ]
        return self.json({"unread": unread, "items": items})


@faust_app.page("/notifications/{notification_id}/read")
class MarkRead(View):
    @authenticated(ANY_USER)
    async def post(self, request: Request, caller: Caller, notification_id: UUID) -> Response:
        async with (await resources.pool()).acquire() as conn:
            row = await conn.fetchrow(
                """
                UPDATE notifications SET read_at = coalesce(read_at, now())
                 WHERE id = $1 AND user_id = $2
                RETURNING read_at
                """,
                notification_id,
                caller.user_id,
            )
        if row is None:  # unknown, or someone else's: do not say which
            return self.json({"error": f"no notification {notification_id} for you"}, status=404)
        return self.json({"id": str(notification_id), "read_at": row["read_at"].isoformat()})
