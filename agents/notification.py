"""SEND_NOTIFICATION: deliver one event to a batch of recipients on one channel.

Each (event, recipient, channel) has an idempotency key, enforced by a unique index, so a
redelivered batch never notifies anyone twice. This version delivers the IN_APP channel; the
other channels fail as unsupported, visibly, rather than pretending to send.
"""

from __future__ import annotations

from pydantic import BaseModel

from app.errors import UnsupportedJobError
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


async def send_notification(ctx: JobContext) -> NotificationResult:
    job: SendNotificationPayload = ctx.payload
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
