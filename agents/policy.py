"""DISTRIBUTE_POLICY: assign a published policy to everyone it targets and tell them.

Recipients are the active users holding one of the target roles AND belonging to one of the
target business units (either list may be empty, meaning "any"), plus explicit recipients, plus
the members of a recipient snapshot: each person once.

The first attempt cuts the user-id space into ranges of about CHUNK_SIZE recipients and records
them (distribution_chunks). Ranges are written PARALLELISM at a time, each in one transaction
with one set-based statement: assignments, in-app notifications, delivery logs, all ON CONFLICT
DO NOTHING, plus the range's e-mail SEND_NOTIFICATION jobs and its done mark. The jobs are
produced after the commit and the range marked produced. A retried or redelivered job redoes
only ranges not yet marked produced, so it resumes instead of starting over, and whatever it
redoes adds nothing twice.

In-app notifications are rows in our own database, so they are written here in the same
statement, and their delivery logs are DELIVERED at once: a job per batch would add a Kafka
round trip and an UPDATE of every delivery log. E-mail goes through SEND_NOTIFICATION batches
(rate-limited, retried on their own); a WEBHOOK channel posts once to each of the tenant's
policy webhooks. At the end: the policy's dashboard counters and one POLICY_DISTRIBUTED audit
event keyed by this job's id.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid5

import asyncpg
from pydantic import BaseModel

from app import metrics
from app.config import get_settings
from app.dispatch import produce_all, record_all
from app.errors import NonRetryableError, NotFoundError
from app.runner import FlowSpec, JobContext, register_flow
from app.templates import render
from models import (
    Channel,
    DistributePolicyPayload,
    Flow,
    JobType,
    NotificationEventType,
    SendNotificationPayload,
)

# Recipients per range: each range commits on its own, so a crash costs at most the ranges in flight.
CHUNK_SIZE = 5000
# Ranges written at once, each on its own connection: PostgreSQL runs one statement per core.
PARALLELISM = 2
# Recipients per e-mail SEND_NOTIFICATION job: sent one by one under the SMTP rate limit, a batch
# must fit the notification time limit.
EMAIL_BATCH_SIZE = 100
FIRST_UUID, LAST_UUID = UUID(int=0), UUID(int=(1 << 128) - 1)


class DistributionResult(BaseModel):
    policy_id: UUID
    policy_version: int
    recipients: int
    assignments_created: int
    delivery_logs_created: int
    in_app_notifications_created: int
    notification_jobs: int
    chunks: int
    attempts: int


# $1..$4: roles, business units, explicit ids, snapshot id.
AUDIENCE = """
    SELECT u.id FROM users u
     WHERE u.active
       AND (((cardinality($1::text[]) > 0 OR cardinality($2::uuid[]) > 0)
              AND (cardinality($1::text[]) = 0 OR EXISTS (
                      SELECT 1 FROM user_roles r WHERE r.user_id = u.id AND r.role = ANY($1::text[])))
              AND (cardinality($2::uuid[]) = 0 OR u.business_unit_id = ANY($2::uuid[])))
            OR u.id = ANY($3::uuid[])
            OR EXISTS (SELECT 1 FROM recipient_snapshot_members m
                        WHERE m.snapshot_id = $4::uuid AND m.user_id = u.id))
"""

# $5: recipients per range. Every $5-th recipient (in id order) ends a range.
RANGE_ENDS = f"""
    SELECT id FROM (SELECT id, row_number() OVER (ORDER BY id) AS n, count(*) OVER () AS total
                      FROM ({AUDIENCE}) a) numbered
     WHERE n % $5 = 0 AND n < total
     ORDER BY id
"""

# $5, $6: the range (after, through]; $7 policy; $8 version; $9 due days; $10 job id;
# $11 per-user channels; $12 in-app title; $13 in-app body; $14 in-app data; $15 idempotency key.
WRITE_RANGE = f"""
    WITH chunk AS ({AUDIENCE} AND u.id > $5 AND u.id <= $6),
    assigned AS (
        INSERT INTO policy_assignments (policy_id, policy_version, user_id, status, due_at, job_id)
        SELECT $7, $8, id, 'PENDING_ACKNOWLEDGMENT', now() + make_interval(days => $9), $10 FROM chunk
        ON CONFLICT ON CONSTRAINT policy_assignments_once DO NOTHING
        RETURNING 1
    ),
    notified AS (
        INSERT INTO notifications (user_id, event_type, channel, title, body, data, idempotency_key)
        SELECT id, 'POLICY_PUBLISHED', 'IN_APP', $12, $13, $14, $15 || ':' || id || ':IN_APP'
          FROM chunk WHERE 'IN_APP' = ANY($11::text[])
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING 1
    ),
    logged AS (
        INSERT INTO delivery_logs (policy_id, policy_version, user_id, channel, status, job_id)
        SELECT $7, $8, chunk.id, c.channel,
               CASE c.channel WHEN 'IN_APP' THEN 'DELIVERED' ELSE 'QUEUED' END, $10
          FROM chunk CROSS JOIN unnest($11::text[]) AS c(channel)
        ON CONFLICT ON CONSTRAINT delivery_logs_once DO NOTHING
        RETURNING 1
    )
    SELECT coalesce((SELECT array_agg(id ORDER BY id) FROM chunk), '{{}}') AS ids,
           (SELECT count(*) FROM assigned) AS assignments,
           (SELECT count(*) FROM logged) AS logs,
           (SELECT count(*) FROM notified) AS notifications
"""


@dataclass(frozen=True)
class Distribution:
    """One job's resolved plan: the policy version, whom it addresses, and how to tell them."""

    job_id: UUID
    policy_id: UUID
    version: int
    audience: tuple[list[str], list[UUID], list[UUID], UUID | None]  # roles, units, explicit, snapshot
    due_days: int
    channels: list[Channel]  # per-user channels (those with delivery logs)
    template_data: dict[str, Any]

    @property
    def idempotency_key(self) -> str:
        return f"POLICY_PUBLISHED:{self.policy_id}:v{self.version}"

    def email_jobs(self, recipients: list[UUID]) -> list[tuple[UUID, SendNotificationPayload]]:
        if Channel.EMAIL not in self.channels:
            return []
        jobs = []
        for start in range(0, len(recipients), EMAIL_BATCH_SIZE):
            batch = recipients[start : start + EMAIL_BATCH_SIZE]
            # The id derives from the batch itself: a redone range re-submits the same jobs (skipped
            # as duplicates), and per-recipient idempotency keys stop double sends.
            batch_id = uuid5(self.job_id, f"EMAIL:{batch[0]}:{batch[-1]}:{len(batch)}")
            payload = SendNotificationPayload(
                event_type=NotificationEventType.POLICY_PUBLISHED,
                channel=Channel.EMAIL,
                recipient_user_ids=batch,
                template_data=self.template_data,
                idempotency_key=self.idempotency_key,
            )
            jobs.append((batch_id, payload))
        return jobs

    def webhook_jobs(self) -> list[tuple[UUID, SendNotificationPayload]]:
        return [
            (
                uuid5(self.job_id, f"WEBHOOK:{url}"),
                SendNotificationPayload(
                    event_type=NotificationEventType.POLICY_PUBLISHED,
                    channel=Channel.WEBHOOK,
                    webhook_url=url,
                    template_data=self.template_data,
                    idempotency_key=f"{self.idempotency_key}:{uuid5(self.policy_id, url)}",
                ),
            )
            for url in get_settings().policy_webhook_urls
        ]


async def distribute_policy(ctx: JobContext) -> DistributionResult:
    job: DistributePolicyPayload = ctx.payload
    async with ctx.pool.acquire() as conn:
        plan = await plan_distribution(conn, ctx.job_id, job)
        pending = await chunks_to_do(conn, plan)
    await ctx.progress(5, f"{len(pending)} ranges of about {CHUNK_SIZE} recipients to write")
    await write_ranges(ctx, plan, pending)

    async with ctx.pool.acquire() as conn:
        webhooks = plan.webhook_jobs() if Channel.WEBHOOK in job.channels else []
        await ctx.enqueue_many(webhooks, conn=conn)
        totals = await conn.fetchrow(
            """
            SELECT count(*) AS chunks, sum(recipients) AS recipients,
                   sum(assignments_created) AS assignments, sum(delivery_logs_created) AS logs,
                   sum(notifications_created) AS notifications, sum(notification_jobs) AS jobs,
                   max(c.attempts) AS attempts
              FROM distribution_chunks d JOIN distribution_checkpoints c USING (job_id)
             WHERE job_id = $1
            """,
            ctx.job_id,
        )
        result = DistributionResult(
            policy_id=plan.policy_id,
            policy_version=plan.version,
            recipients=totals["recipients"] or 0,
            assignments_created=totals["assignments"] or 0,
            delivery_logs_created=totals["logs"] or 0,
            in_app_notifications_created=totals["notifications"] or 0,
            notification_jobs=(totals["jobs"] or 0) + len(webhooks),
            chunks=totals["chunks"],
            attempts=totals["attempts"],
        )
        async with conn.transaction():
            await conn.execute(
                """
                UPDATE policies
                   SET status = 'PUBLISHED', published_at = coalesce(published_at, now()),
                       last_distributed_at = now(),
                       recipients_count = (SELECT count(*) FROM policy_assignments
                                            WHERE policy_id = $1 AND policy_version = $2)
                 WHERE id = $1
                """,
                plan.policy_id,
                plan.version,
            )
            await conn.execute(
                "UPDATE distribution_checkpoints SET finished_at = now() WHERE job_id = $1", ctx.job_id
            )
            await conn.execute(
                """
                INSERT INTO audit_log (event_type, actor_id, entity_type, entity_id, details, idempotency_key)
                VALUES ('POLICY_DISTRIBUTED', $1, 'policy', $2, $3, $4)
                ON CONFLICT (idempotency_key) DO NOTHING
                """,
                ctx.envelope.requested_by,
                plan.policy_id,
                {
                    **result.model_dump(mode="json"),
                    "channels": [c.value for c in job.channels],
                    "job_id": str(ctx.job_id),
                },
                f"POLICY_DISTRIBUTED:{ctx.job_id}",
            )
    metrics.POLICY_ASSIGNMENTS.inc(result.assignments_created)
    metrics.NOTIFICATIONS_SENT.labels(Channel.IN_APP.value).inc(result.in_app_notifications_created)
    return result


async def plan_distribution(
    conn: asyncpg.Connection, job_id: UUID, job: DistributePolicyPayload
) -> Distribution:
    policy = await conn.fetchrow(
        "SELECT title, version, target_roles, target_business_unit_ids, acknowledgment_days"
        " FROM policies WHERE id = $1",
        job.policy_id,
    )
    if policy is None:
        raise NotFoundError(f"policy {job.policy_id} does not exist")
    if job.recipient_snapshot_id and not await conn.fetchval(
        "SELECT 1 FROM recipient_snapshots WHERE id = $1", job.recipient_snapshot_id
    ):
        raise NotFoundError(f"recipient snapshot {job.recipient_snapshot_id} does not exist")
    roles = [str(r) for r in job.target_roles] or list(policy["target_roles"])
    units = list(job.target_business_unit_ids) or list(policy["target_business_unit_ids"])
    if not (roles or units or job.recipient_user_ids or job.recipient_snapshot_id):
        raise NonRetryableError("the policy targets nobody: no roles, business units or recipients")
    version = job.policy_version or policy["version"]
    due_days = job.acknowledgment_due_days or policy["acknowledgment_days"]
    return Distribution(
        job_id=job_id,
        policy_id=job.policy_id,
        version=version,
        audience=(roles, units, list(job.recipient_user_ids), job.recipient_snapshot_id),
        due_days=due_days,
        channels=[c for c in job.channels if c is not Channel.WEBHOOK],
        template_data={
            "policy_id": str(job.policy_id),
            "policy_version": version,
            "policy_title": policy["title"],
            "acknowledgment_days": due_days,
            "message": job.message,
        },
    )


async def chunks_to_do(conn: asyncpg.Connection, plan: Distribution) -> list[asyncpg.Record]:
    """The ranges this attempt must (re)write: all of them the first time, afterwards only those
    whose notification messages were never acknowledged."""
    async with conn.transaction():
        attempts = await conn.fetchval(
            """
            INSERT INTO distribution_checkpoints (job_id, policy_id, policy_version) VALUES ($1, $2, $3)
            ON CONFLICT (job_id) DO UPDATE SET attempts = distribution_checkpoints.attempts + 1
            RETURNING attempts
            """,
            plan.job_id,
            plan.policy_id,
            plan.version,
        )
        if attempts == 1:
            ends = [r["id"] for r in await conn.fetch(RANGE_ENDS, *plan.audience, CHUNK_SIZE)]
            bounds = [FIRST_UUID, *ends, LAST_UUID]
            await conn.executemany(
                "INSERT INTO distribution_chunks (job_id, seq, after_user_id, through_user_id)"
                " VALUES ($1, $2, $3, $4)",
                [(plan.job_id, seq, low, high) for seq, (low, high) in enumerate(itertools.pairwise(bounds))],
            )
    return list(
        await conn.fetch(
            "SELECT seq, after_user_id, through_user_id FROM distribution_chunks"
            " WHERE job_id = $1 AND produced_at IS NULL ORDER BY seq",
            plan.job_id,
        )
    )


async def write_ranges(ctx: JobContext, plan: Distribution, pending: list[asyncpg.Record]) -> None:
    """Write the pending ranges, PARALLELISM at a time, reporting progress after each."""
    message = render(NotificationEventType.POLICY_PUBLISHED, plan.template_data)
    in_app_data = {**plan.template_data, "link": message.link}
    queue: asyncio.Queue[asyncpg.Record] = asyncio.Queue()
    for chunk in pending:
        queue.put_nowait(chunk)
    finished = 0

    async def writer() -> None:
        nonlocal finished
        while not queue.empty():
            chunk = queue.get_nowait()
            async with ctx.pool.acquire() as conn:
                async with conn.transaction():
                    written = await conn.fetchrow(
                        WRITE_RANGE,
                        *plan.audience,
                        chunk["after_user_id"],
                        chunk["through_user_id"],
                        plan.policy_id,
                        plan.version,
                        plan.due_days,
                        plan.job_id,
                        [c.value for c in plan.channels],
                        message.subject,
                        message.text,
                        in_app_data,
                        plan.idempotency_key,
                    )
                    envelopes = ctx.follow_ups(plan.email_jobs(written["ids"]))
                    to_produce = await record_all(conn, envelopes)
                    # Counts are kept from the first write only: a redone range creates nothing.
                    await conn.execute(
                        """
                        UPDATE distribution_chunks
                           SET recipients = coalesce(recipients, $3),
                               assignments_created = coalesce(assignments_created, $4),
                               delivery_logs_created = coalesce(delivery_logs_created, $5),
                               notifications_created = coalesce(notifications_created, $6),
                               notification_jobs = coalesce(notification_jobs, $7),
                               done_at = coalesce(done_at, now())
                         WHERE job_id = $1 AND seq = $2
                        """,
                        plan.job_id,
                        chunk["seq"],
                        len(written["ids"]),
                        written["assignments"],
                        written["logs"],
                        written["notifications"],
                        len(envelopes),
                    )
                await produce_all(to_produce)
                await conn.execute(
                    "UPDATE distribution_chunks SET produced_at = now() WHERE job_id = $1 AND seq = $2",
                    plan.job_id,
                    chunk["seq"],
                )
            finished += 1
            await ctx.progress(
                5 + 85 * finished // len(pending), f"{finished} of {len(pending)} ranges written"
            )

    try:
        async with asyncio.TaskGroup() as writers:  # one failing cancels the other
            for _ in range(min(PARALLELISM, len(pending))):
                writers.create_task(writer())
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None


register_flow(
    FlowSpec(
        flow=Flow.POLICY,
        concurrency=5,
        timeout_seconds=30,
        heartbeat=True,  # 30 s without progress; a distribution reports after every range
        handlers={JobType.DISTRIBUTE_POLICY: distribute_policy},
    )
)
