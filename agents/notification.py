"""SEND_NOTIFICATION: deliver one event to a batch of recipients on one channel.

IN_APP: each (event, recipient, channel) has an idempotency key, enforced by a unique index, so
a redelivered batch never notifies anyone twice.
WEBHOOK: one signed POST per job. A 2xx is recorded under the job's idempotency key and never
posted again; the window between a 2xx and that record (a crash in between) can repeat a post,
so every post carries `X-Idempotency-Key` for the receiver to deduplicate. A 429 is a rate
limit (retried after its Retry-After without using an attempt), 5xx and network errors are
retried, other 4xx are not.
EMAIL is not available in this version and fails as unsupported, visibly.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import aiohttp
from pydantic import BaseModel

from app.config import get_settings
from app.errors import NonRetryableError, RateLimitedError, UnsupportedJobError
from app.runner import FlowSpec, JobContext, register_flow
from models import Channel, Flow, JobType, NotificationEventType, SendNotificationPayload

TITLES = {
    NotificationEventType.POLICY_PUBLISHED: "New policy to acknowledge: {policy_title}",
    NotificationEventType.ASSESSMENT_ASSIGNED: "Assessment assigned: {assessment_name}",
    NotificationEventType.REPORT_READY: "Your report is ready",
    NotificationEventType.AUDIT_PACKAGE_READY: "Audit package ready",
    NotificationEventType.JOB_FAILED: "Job failed: {job_type}",
}


class NotificationResult(BaseModel):
    channel: Channel
    recipients: int
    delivered: int
    already_delivered: int


def render_title(event_type: NotificationEventType, data: dict[str, object]) -> str:
    template = TITLES[event_type]
    try:
        return template.format_map({k: str(v) for k, v in data.items()})
    except KeyError:
        return template.split(":")[0]


WEBHOOK_TIMEOUT = aiohttp.ClientTimeout(total=5)
SIGNATURE_HEADER = "X-Governance-Signature"


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def post_webhook(ctx: JobContext, job: SendNotificationPayload) -> NotificationResult:
    url = str(job.webhook_url)
    async with ctx.pool.acquire() as conn:
        if await conn.fetchval(
            "SELECT 1 FROM webhook_deliveries WHERE idempotency_key = $1", job.idempotency_key
        ):
            return NotificationResult(channel=job.channel, recipients=1, delivered=0, already_delivered=1)
    body = json.dumps(
        {
            "event_type": job.event_type.value,
            "data": job.template_data,
            "idempotency_key": job.idempotency_key,
        }
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Idempotency-Key": job.idempotency_key,
        SIGNATURE_HEADER: sign(body, get_settings().webhook_signing_secret),
    }
    async with (
        aiohttp.ClientSession(timeout=WEBHOOK_TIMEOUT) as session,
        session.post(url, data=body, headers=headers, allow_redirects=False) as response,
    ):
        status = response.status
        retry_after = response.headers.get("Retry-After", "1")
    if status == 429:
        raise RateLimitedError("webhook answered 429", retry_after=_seconds(retry_after))
    if status >= 500:
        raise RuntimeError(f"webhook answered {status}")
    if status >= 300:
        raise NonRetryableError(f"webhook answered {status}")
    async with ctx.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO webhook_deliveries (idempotency_key, url, status_code, job_id)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (idempotency_key) DO NOTHING",
            job.idempotency_key,
            url,
            status,
            ctx.job_id,
        )
    return NotificationResult(channel=job.channel, recipients=1, delivered=1, already_delivered=0)


def _seconds(retry_after: str) -> float:
    """Retry-After in seconds; the HTTP-date form counts as one second."""
    try:
        return max(0.0, float(retry_after))
    except ValueError:
        return 1.0


async def send_notification(ctx: JobContext) -> NotificationResult:
    job: SendNotificationPayload = ctx.payload
    if job.channel is Channel.WEBHOOK:
        return await post_webhook(ctx, job)
    if job.channel is not Channel.IN_APP:
        raise UnsupportedJobError(f"channel {job.channel.value} is not available in this version")
    title = render_title(job.event_type, job.template_data)
    body = str(job.template_data.get("message", ""))
    recipients = [str(u) for u in job.recipient_user_ids]
    async with ctx.pool.acquire() as conn, conn.transaction():
        inserted = await conn.fetch(
            """
            INSERT INTO notifications (user_id, event_type, channel, title, body, data, idempotency_key)
            SELECT u.id, $2, $3, $4, $5, $6, $7 || ':' || u.id || ':' || $3
              FROM users u WHERE u.id = ANY($1::uuid[])
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING user_id
            """,
            recipients,
            job.event_type.value,
            job.channel.value,
            title,
            body,
            job.template_data,
            job.idempotency_key,
        )
        if job.event_type is NotificationEventType.POLICY_PUBLISHED:
            await conn.execute(
                """
                UPDATE delivery_logs SET status = 'DELIVERED'
                 WHERE policy_id = $1 AND policy_version = $2 AND channel = $3
                   AND user_id = ANY($4::uuid[]) AND status <> 'DELIVERED'
                """,
                job.template_data["policy_id"],
                int(job.template_data["policy_version"]),
                job.channel.value,
                recipients,
            )
    return NotificationResult(
        channel=job.channel,
        recipients=len(recipients),
        delivered=len(inserted),
        already_delivered=len(recipients) - len(inserted),
    )


register_flow(
    FlowSpec(
        flow=Flow.NOTIFICATION,
        concurrency=10,
        timeout_seconds=10,
        handlers={JobType.SEND_NOTIFICATION: send_notification},
    )
)
