"""SEND_NOTIFICATION: deliver one event to a batch of recipients on one channel.

IN_APP: each (event, recipient, channel) has an idempotency key, enforced by a unique index, so
a redelivered batch never notifies anyone twice.
WEBHOOK: one signed POST per job. A 2xx is recorded under the job's idempotency key and never
posted again; the window between a 2xx and that record (a crash in between) can repeat a post,
so every post carries `X-Idempotency-Key` for the receiver to deduplicate. A 429 is a rate
limit (retried after its Retry-After without using an attempt), 5xx and network errors are
retried, other 4xx are not.
EMAIL: one message per recipient over a reused SMTP connection, recorded per (event, recipient)
in email_deliveries: SENDING before the SMTP transaction, SENT once the server accepted it. The
one window left open is a crash between the server's acceptance and that update: the next
attempt sends that single message again, with the same Message-ID so mail clients can fold the
two. It is one message per crashed worker, and the time between the 250 reply and a one-row
update (about a millisecond). A permanent refusal (5xx) marks that recipient REJECTED.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from email.message import EmailMessage
from email.utils import formataddr

import aiohttp
import aiosmtplib
import asyncpg
from pydantic import BaseModel

from app import metrics, ratelimit
from app.config import get_settings
from app.errors import NonRetryableError, RateLimitedError
from app.resources import resources
from app.runner import FlowSpec, JobContext, register_flow
from app.templates import render
from models import Channel, Flow, JobType, NotificationEventType, SendNotificationPayload


class NotificationResult(BaseModel):
    channel: Channel
    recipients: int
    delivered: int
    already_delivered: int
    rejected: int = 0


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
    metrics.NOTIFICATIONS_SENT.labels(job.channel.value).inc()
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
    if job.channel is Channel.EMAIL:
        return await send_emails(ctx, job)
    return await add_in_app(ctx, job)


async def add_in_app(ctx: JobContext, job: SendNotificationPayload) -> NotificationResult:
    message = render(job.event_type, job.template_data)
    recipients = [str(u) for u in job.recipient_user_ids]
    async with ctx.pool.acquire() as conn, conn.transaction():
        inserted = await conn.fetch(
            """
            INSERT INTO notifications (user_id, event_type, channel, title, body, data, idempotency_key)
            SELECT u.id, $2, $3, $4, $5, $6, $7 || ':' || u.id || ':' || $3
              FROM users u WHERE u.id = ANY($1::uuid[]) AND u.active
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING user_id
            """,
            recipients,
            job.event_type.value,
            job.channel.value,
            message.subject,
            message.text,
            {**job.template_data, "link": message.link},
            job.idempotency_key,
        )
        await mark_policy_delivery(conn, job, recipients, "DELIVERED")
    metrics.NOTIFICATIONS_SENT.labels(job.channel.value).inc(len(inserted))
    return NotificationResult(
        channel=job.channel,
        recipients=len(recipients),
        delivered=len(inserted),
        already_delivered=len(recipients) - len(inserted),
    )


async def mark_policy_delivery(
    conn: asyncpg.Connection, job: SendNotificationPayload, user_ids: list[str], status: str
) -> None:
    """Delivery logs exist for policy notifications only; other events have none to update."""
    if job.event_type is not NotificationEventType.POLICY_PUBLISHED or not user_ids:
        return
    await conn.execute(
        """
        UPDATE delivery_logs SET status = $5
         WHERE policy_id = $1 AND policy_version = $2 AND channel = $3
           AND user_id = ANY($4::uuid[]) AND status <> $5
        """,
        job.template_data["policy_id"],
        int(job.template_data["policy_version"]),
        job.channel.value,
        user_ids,
        status,
    )


async def send_emails(ctx: JobContext, job: SendNotificationPayload) -> NotificationResult:
    """One message per recipient, each at most once per idempotency key (see email_deliveries).

    Every message takes a unit of the deployment-wide e-mail rate; when the next unit is further
    away than this attempt's time allows, the job is deferred (RateLimitedError) and a later run
    skips the messages already sent.
    """
    settings = get_settings()
    message = render(job.event_type, job.template_data)
    async with ctx.pool.acquire() as conn:
        pending = await conn.fetch(
            """
            WITH wanted AS (
                SELECT u.id AS user_id, u.email, u.display_name, $2 || ':' || u.id || ':EMAIL' AS key
                  FROM users u WHERE u.id = ANY($1::uuid[]) AND u.active
            ), recorded AS (
                INSERT INTO email_deliveries
                       (idempotency_key, user_id, to_address, event_type, message_id, job_id)
                SELECT key, user_id, email, $3, '<' || md5(key) || '@governance.jobs>', $4 FROM wanted
                ON CONFLICT (idempotency_key) DO UPDATE SET attempts = email_deliveries.attempts + 1
                 WHERE email_deliveries.status = 'SENDING'
                RETURNING idempotency_key, message_id
            )
            SELECT w.user_id, w.email, w.display_name, r.idempotency_key, r.message_id
              FROM wanted w JOIN recorded r ON r.idempotency_key = w.key
             ORDER BY w.user_id
            """,
            job.recipient_user_ids,
            job.idempotency_key,
            job.event_type.value,
            ctx.job_id,
        )
    sender = resources.mailer()
    rejected = 0
    for row in pending:
        await ratelimit.acquire(
            ctx.pool, "channel:EMAIL", settings.email_rate_per_second, within=ctx.time_left() - 2
        )
        email = EmailMessage()
        email["From"] = settings.smtp_sender
        email["To"] = formataddr((row["display_name"], row["email"]))
        email["Subject"] = message.subject
        email["Message-ID"] = row["message_id"]
        email["X-Idempotency-Key"] = row["idempotency_key"]
        email.set_content(message.text)
        email.add_alternative(message.html, subtype="html")
        outcome, error = "SENT", None
        try:
            await sender.send(email)
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code < 500:
                raise
            outcome, error = "REJECTED", f"{exc.code} {exc.message}"[:500]
            rejected += 1
        else:
            metrics.NOTIFICATIONS_SENT.labels(job.channel.value).inc()
        async with ctx.pool.acquire() as conn:
            await conn.execute(
                "UPDATE email_deliveries SET status = $2, error = $3, sent_at = now()"
                " WHERE idempotency_key = $1",
                row["idempotency_key"],
                outcome,
                error,
            )
    recipients = [str(u) for u in job.recipient_user_ids]
    async with ctx.pool.acquire() as conn:
        await mark_policy_delivery(conn, job, recipients, "SENT")
    return NotificationResult(
        channel=job.channel,
        recipients=len(recipients),
        delivered=len(pending) - rejected,
        already_delivered=len(recipients) - len(pending),
        rejected=rejected,
    )


register_flow(
    FlowSpec(
        flow=Flow.NOTIFICATION,
        concurrency=10,
        timeout_seconds=10,
        rate_per_second=get_settings().notification_rate_per_second,
        handlers={JobType.SEND_NOTIFICATION: send_notification},
    )
)
