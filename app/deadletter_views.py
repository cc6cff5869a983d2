"""The dead-letter indexer agent and the admin HTTP endpoints for dead letters.

  GET  /dlq/{queue}?job_type=&older_than_hours=&status=&limit=&offset=
  GET  /dlq/{queue}/{id}
  POST /dlq/{queue}/{id}/retry
  POST /dlq/{queue}/retry-all?limit=
  POST /dlq/{queue}/purge?older_than_days=
All need a bearer token with ADMIN or SUPER_ADMIN.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import wraps
from typing import Any
from uuid import UUID

from faust.web import Request, Response, View

from app import deadletters
from app.auth import ADMINS, Caller, authenticated
from app.dispatch import submit
from app.faust_app import faust_app
from app.resources import resources
from app.retry import dead_letter_topic
from models import Flow

log = logging.getLogger(__name__)

dlq_topics = faust_app.topic(
    *(dead_letter_topic(flow) for flow in Flow), key_serializer="raw", value_serializer="raw"
)


@faust_app.agent(dlq_topics, name="dead-letter-indexer", concurrency=1)
async def index_dead_letters(stream: Any) -> None:
    async for event in stream.events():
        message = event.message
        while True:
            try:
                async with (await resources.pool()).acquire() as conn:
                    await deadletters.index(
                        conn, message.topic, message.partition, message.offset, event.value
                    )
                break
            except (ValueError, KeyError, TypeError):
                log.exception("unreadable dead letter skipped", extra={"topic": message.topic})
                break
            except Exception:
                log.exception("indexing a dead letter failed; retrying")
                await asyncio.sleep(1)


Handler = Callable[..., Awaitable[Response]]


def admin_queue(handler: Handler) -> Handler:
    """Authenticate an admin and resolve the `{queue}` path part before the handler runs."""

    @authenticated(ADMINS)
    @wraps(handler)
    async def checked(self: View, request: Request, caller: Caller, queue: str, **path: Any) -> Response:
        try:
            flow = Flow(queue)
        except ValueError:
            return self.json({"error": f"no queue {queue!r}; queues: {[f.value for f in Flow]}"}, status=404)
        return await handler(self, request, caller, flow, **path)

    return checked


def _number(request: Request, name: str, default: float | None) -> float | None:
    value = request.query.get(name)
    return default if value is None else float(value)


@faust_app.page("/dlq/{queue}")
class DeadLetterList(View):
    @admin_queue
    async def get(self, request: Request, caller: Caller, flow: Flow) -> Response:
        try:
            hours = _number(request, "older_than_hours", None)
            limit = int(_number(request, "limit", 50) or 50)
            offset = int(_number(request, "offset", 0) or 0)
        except ValueError:
            return self.json({"error": "older_than_hours, limit and offset must be numbers"}, status=400)
        async with (await resources.pool()).acquire() as conn:
            page = await deadletters.list_letters(
                conn,
                flow,
                job_type=request.query.get("job_type"),
                older_than=timedelta(hours=hours) if hours is not None else None,
                status=request.query.get("status", "UNRESOLVED") or None,
                limit=max(1, min(limit, 500)),
                offset=max(0, offset),
            )
        return self.json(page)


@faust_app.page("/dlq/{queue}/{letter_id}/retry")
class DeadLetterRetry(View):
    @admin_queue
    async def post(self, request: Request, caller: Caller, flow: Flow, letter_id: UUID) -> Response:
        try:
            async with (await resources.pool()).acquire() as conn:
                replayed = await deadletters.replay(conn, flow, letter_id, caller.user_id, submit)
        except deadletters.ReplayError as exc:
            return self.json({"error": str(exc)}, status=404 if "no dead letter" in str(exc) else 409)
        return self.json(
            {
                "dead_letter_id": str(replayed.dead_letter_id),
                "job_id": str(replayed.job_id),
                "status": "QUEUED" if replayed.submitted else "ALREADY_RETRIED",
                "status_url": f"/jobs/{replayed.job_id}",
            },
            status=202 if replayed.submitted else 200,
        )


@faust_app.page("/dlq/{queue}/retry-all")
class DeadLetterRetryAll(View):
    @admin_queue
    async def post(self, request: Request, caller: Caller, flow: Flow) -> Response:
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return self.json({"error": "limit must be an integer"}, status=400)
        async with (await resources.pool()).acquire() as conn:
            outcome = await deadletters.replay_all(conn, flow, caller.user_id, submit, limit=limit)
        return self.json(outcome)


@faust_app.page("/dlq/{queue}/purge")
class DeadLetterPurge(View):
    @admin_queue
    async def post(self, request: Request, caller: Caller, flow: Flow) -> Response:
        try:
            days = float(request.query["older_than_days"])
        except (KeyError, ValueError):
            return self.json({"error": "older_than_days (a number) is required"}, status=400)
        async with (await resources.pool()).acquire() as conn:
            purged = await deadletters.purge(conn, flow, days, caller.user_id)
        return self.json({"purged": purged})


# Registered last: its {letter_id} pattern would otherwise shadow retry-all and purge.
@faust_app.page("/dlq/{queue}/{letter_id}")
class DeadLetterDetail(View):
    @admin_queue
    async def get(self, request: Request, caller: Caller, flow: Flow, letter_id: UUID) -> Response:
        async with (await resources.pool()).acquire() as conn:
            letter = await deadletters.show(conn, flow, letter_id)
        if letter is None:
            return self.json({"error": f"no dead letter {letter_id} in {flow.value}"}, status=404)
        return self.json(letter)
