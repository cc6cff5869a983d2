"""DISTRIBUTE_POLICY: assign a published policy to everyone it targets and tell them.

Recipients are the active users holding one of the target roles AND belonging to one of the
target business units (either list may be empty, meaning "any"), plus explicit recipients, plus
the members of a recipient snapshot. They are walked in user-id order, a chunk at a time; for
each chunk one statement inserts assignments and delivery logs (ON CONFLICT DO NOTHING), the
chunk's SEND_NOTIFICATION jobs are recorded, and a checkpoint commits with them. A redelivered
or retried job resumes from its checkpoint; whatever it redoes is idempotent. At the end: the
tenant's policy webhooks, the policy's dashboard counters, and one POLICY_DISTRIBUTED audit
event keyed by this job's id.
"""

from __future__ import annotations

import asyncio
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
from models import (
    Channel,
    DistributePolicyPayload,
    Flow,
    JobType,
    NotificationEventType,
    SendNotificationPayload,
)

# Recipients per transaction: each chunk's rows, its notification jobs and the checkpoint commit
# together, so a crash costs at most one chunk of redone (idempotent) work.
CHUNK_SIZE = 5000
# Recipients per SEND_NOTIFICATION job, by channel. An in-app batch is one INSERT; e-mails go one
# by one under the SMTP rate, so a batch must fit the notification time limit.
BATCH_SIZE = {Channel.IN_APP: 1000, Channel.EMAIL: 100}
ZERO_UUID = UUID(int=0)


class DistributionResult(BaseModel):
    policy_id: UUID
    policy_version: int
    recipients: int
    assignments_created: int
    delivery_logs_created: int
    notification_jobs: int
    chunks: int
    resumed: int


# $1..$4: roles, business units, explicit ids, snapshot id. Each person once (one row per user).
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

# $5 cursor, $6 chunk size, $7 policy, $8 version, $9 due days, $10 job id, $11 per-user channels.
WRITE_CHUNK = f"""
    WITH chunk AS ({AUDIENCE} AND u.id > $5 ORDER BY u.id LIMIT $6),
    assigned AS (
        INSERT INTO policy_assignments (policy_id, policy_version, user_id, status, due_at, job_id)
        SELECT $7, $8, id, 'PENDING_ACKNOWLEDGMENT', now() + make_interval(days => $9), $10 FROM chunk
        ON CONFLICT ON CONSTRAINT policy_assignments_once DO NOTHING
        RETURNING 1
    ),
    logged AS (
        INSERT INTO delivery_logs (policy_id, policy_version, user_id, channel, status, job_id)
        SELECT $7, $8, chunk.id, c.channel, 'QUEUED', $10
          FROM chunk CROSS JOIN unnest($11::text[]) AS c(channel)
        ON CONFLICT ON CONSTRAINT delivery_logs_once DO NOTHING
        RETURNING 1
    )
    SELECT coalesce((SELECT array_agg(id ORDER BY id) FROM chunk), '{{}}') AS ids,
           (SELECT count(*) FROM assigned) AS assignments,
           (SELECT count(*) FROM logged) AS logs
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

    def notification_jobs(self, recipients: list[UUID]) -> list[tuple[UUID, SendNotificationPayload]]:
        jobs = []
        for channel in self.channels:
            size = BATCH_SIZE[channel]
            for start in range(0, len(recipients), size):
                batch = recipients[start : start + size]
                # The id derives from the batch itself: a redone chunk re-submits the same jobs
                # (skipped as duplicates), and per-recipient idempotency keys stop double sends.
                batch_id = uuid5(self.job_id, f"{channel.value}:{batch[0]}:{batch[-1]}:{len(batch)}")
                payload = SendNotificationPayload(
                    event_type=NotificationEventType.POLICY_PUBLISHED,
                    channel=channel,
                    recipient_user_ids=batch,
                    template_data=self.template_data,
                    idempotency_key=f"POLICY_PUBLISHED:{self.policy_id}:v{self.version}",
                )
                jobs.append((batch_id, payload))
        return jobs


async def distribute_policy(ctx: JobContext) -> DistributionResult:
    job: DistributePolicyPayload = ctx.payload
    async with ctx.pool.acquire() as conn:
        plan = await plan_distribution(conn, ctx.job_id, job)
        total = await conn.fetchval(f"SELECT count(*) FROM ({AUDIENCE}) a", *plan.audience)
        checkpoint = await conn.fetchrow(
            """
            INSERT INTO distribution_checkpoints (job_id, policy_id, policy_version) VALUES ($1, $2, $3)
            ON CONFLICT (job_id) DO UPDATE SET resumed = distribution_checkpoints.resumed + 1
            RETURNING *
            """,
            ctx.job_id,
            plan.policy_id,
            plan.version,
        )
        resumed_at = checkpoint["recipients"]
        await ctx.progress(
            5, f"{total} recipients" + (f"; resuming after {resumed_at}" if resumed_at else "")
        )
        await walk_audience(ctx, conn, plan, checkpoint, total)

        webhooks = [
            (uuid5(ctx.job_id, f"WEBHOOK:{url}"), webhook_payload(url, plan))
            for url in (get_settings().policy_webhook_urls if Channel.WEBHOOK in job.channels else ())
        ]
        await ctx.enqueue_many(webhooks, conn=conn)
        progress = await conn.fetchrow(
            "UPDATE distribution_checkpoints SET finished_at = now(), updated_at = now()"
            " WHERE job_id = $1 RETURNING *",
            ctx.job_id,
        )
        result = DistributionResult(
            policy_id=plan.policy_id,
            policy_version=plan.version,
            recipients=progress["recipients"],
            assignments_created=progress["assignments_created"],
            delivery_logs_created=progress["delivery_logs_created"],
            notification_jobs=progress["notification_jobs"] + len(webhooks),
            chunks=progress["chunks"],
            resumed=progress["resumed"],
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
        channels=[c for c in job.channels if c in BATCH_SIZE],
        template_data={
            "policy_id": str(job.policy_id),
            "policy_version": version,
            "policy_title": policy["title"],
            "acknowledgment_days": due_days,
            "message": job.message,
        },
    )


async def walk_audience(
    ctx: JobContext, conn: asyncpg.Connection, plan: Distribution, checkpoint: asyncpg.Record, total: int
) -> None:
    """Write the audience chunk by chunk from the checkpoint.

    A chunk's notification jobs are produced while the next chunk is written, and the checkpoint
    moves past a chunk only once Kafka acknowledged its messages: a crash leaves no recorded but
    unproduced job behind the cursor. A chunk already written (before a crash) is written again
    as a no-op and adds nothing to the counts.
    """
    cursor = checkpoint["produced_through"] or ZERO_UUID
    written_through = checkpoint["written_through"] or ZERO_UUID
    done = checkpoint["recipients"]
    producing: asyncio.Task[int] | None = None
    try:
        while True:
            async with conn.transaction():
                chunk = await conn.fetchrow(
                    WRITE_CHUNK,
                    *plan.audience,
                    cursor,
                    CHUNK_SIZE,
                    plan.policy_id,
                    plan.version,
                    plan.due_days,
                    plan.job_id,
                    [c.value for c in plan.channels],
                )
                ids: list[UUID] = chunk["ids"]
                envelopes = ctx.follow_ups(plan.notification_jobs(ids))
                to_produce = await record_all(conn, envelopes)
                if producing is not None:
                    await producing
                new = bool(ids) and ids[-1] > written_through
                await conn.execute(
                    """
                    UPDATE distribution_checkpoints
                       SET produced_through = $2, written_through = greatest(written_through, $3),
                           recipients = recipients + $4, assignments_created = assignments_created + $5,
                           delivery_logs_created = delivery_logs_created + $6,
                           notification_jobs = notification_jobs + $7, chunks = chunks + $8,
                           updated_at = now()
                     WHERE job_id = $1
                    """,
                    plan.job_id,
                    cursor,
                    ids[-1] if ids else cursor,
                    len(ids) if new else 0,
                    chunk["assignments"],
                    chunk["logs"],
                    len(envelopes) if new else 0,
                    1 if new else 0,
                )
            producing = None
            if not ids:
                return
            cursor = ids[-1]
            done += len(ids) if new else 0
            producing = asyncio.create_task(produce_all(to_produce))
            await ctx.progress(5 + int(85 * done / max(total, 1)), f"{done} of {total} recipients")
    finally:
        if producing is not None and not producing.done():
            producing.cancel()  # the walk failed; the checkpoint has not passed these messages


def webhook_payload(url: str, plan: Distribution) -> SendNotificationPayload:
    return SendNotificationPayload(
        event_type=NotificationEventType.POLICY_PUBLISHED,
        channel=Channel.WEBHOOK,
        webhook_url=url,
        template_data=plan.template_data,
        idempotency_key=f"POLICY_PUBLISHED:{plan.policy_id}:v{plan.version}:{uuid5(plan.policy_id, url)}",
    )


register_flow(
    FlowSpec(
        flow=Flow.POLICY,
        concurrency=5,
        timeout_seconds=30,
        heartbeat=True,  # 30 s without progress; a 100k distribution reports after every phase
        handlers={JobType.DISTRIBUTE_POLICY: distribute_policy},
    )
)
