"""DISTRIBUTE_POLICY: assign a published policy to everyone it targets and tell them.

Every step is set-based and idempotent, so a redelivered job (after a crash or rebalance)
re-runs cheaply and adds nothing twice:
  1. resolve recipients in SQL and insert assignments (ON CONFLICT DO NOTHING);
  2. insert one delivery log per recipient and channel (ON CONFLICT DO NOTHING);
  3. fan out SEND_NOTIFICATION jobs in batches whose job ids derive from their contents;
  4. write the POLICY_DISTRIBUTED audit event once, keyed by this job's id.
Recipients are the active users holding one of the target roles AND belonging to one of the
target business units (either list may be empty, meaning "any"), plus any explicit recipients.
"""

from __future__ import annotations

from uuid import UUID, uuid5

from pydantic import BaseModel

from app.errors import NonRetryableError, NotFoundError
from app.runner import FlowSpec, JobContext, register_flow
from models import (
    DistributePolicyPayload,
    Flow,
    JobType,
    NotificationEventType,
    SendNotificationPayload,
)

NOTIFICATION_BATCH_SIZE = 1000


class DistributionResult(BaseModel):
    policy_id: UUID
    policy_version: int
    recipients: int
    assignments_created: int
    delivery_logs_created: int
    notification_jobs: int


async def distribute_policy(ctx: JobContext) -> DistributionResult:
    job: DistributePolicyPayload = ctx.payload
    async with ctx.pool.acquire() as conn:
        policy = await conn.fetchrow(
            "SELECT id, title, version, target_roles, target_business_unit_ids, acknowledgment_days"
            " FROM policies WHERE id = $1",
            job.policy_id,
        )
        if policy is None:
            raise NotFoundError(f"policy {job.policy_id} does not exist")
        version = job.policy_version or policy["version"]
        roles = [str(r) for r in job.target_roles] or list(policy["target_roles"])
        units = list(job.target_business_unit_ids) or list(policy["target_business_unit_ids"])
        explicit = list(job.recipient_user_ids or [])
        if not (roles or units or explicit):
            raise NonRetryableError("the policy targets nobody: no roles, business units or recipients")
        due_days = job.acknowledgment_due_days or policy["acknowledgment_days"]
        channels = [c.value for c in job.channels]

        await ctx.progress(10, "resolving recipients")
        async with conn.transaction():
            assignments_created = _rowcount(
                await conn.execute(
                    """
                    WITH targeted AS (
                        SELECT u.id FROM users u
                         WHERE u.active
                           AND (cardinality($3::text[]) > 0 OR cardinality($4::uuid[]) > 0)
                           AND (cardinality($3::text[]) = 0 OR EXISTS (
                                   SELECT 1 FROM user_roles r
                                    WHERE r.user_id = u.id AND r.role = ANY($3::text[])))
                           AND (cardinality($4::uuid[]) = 0 OR u.business_unit_id = ANY($4::uuid[]))
                        UNION
                        SELECT u.id FROM users u WHERE u.active AND u.id = ANY($5::uuid[])
                    )
                    INSERT INTO policy_assignments
                           (policy_id, policy_version, user_id, status, due_at, job_id)
                    SELECT $1, $2, id, 'PENDING_ACKNOWLEDGMENT', now() + make_interval(days => $6), $7
                      FROM targeted
                    ON CONFLICT ON CONSTRAINT policy_assignments_once DO NOTHING
                    """,
                    job.policy_id,
                    version,
                    roles,
                    units,
                    explicit,
                    due_days,
                    ctx.job_id,
                )
            )
            await ctx.progress(40, f"{assignments_created} assignments created")
            delivery_logs_created = _rowcount(
                await conn.execute(
                    """
                    INSERT INTO delivery_logs (policy_id, policy_version, user_id, channel, status, job_id)
                    SELECT a.policy_id, a.policy_version, a.user_id, c.channel, 'QUEUED', $3
                      FROM policy_assignments a CROSS JOIN unnest($4::text[]) AS c(channel)
                     WHERE a.policy_id = $1 AND a.policy_version = $2
                    ON CONFLICT ON CONSTRAINT delivery_logs_once DO NOTHING
                    """,
                    job.policy_id,
                    version,
                    ctx.job_id,
                    channels,
                )
            )
            await conn.execute(
                "UPDATE policies SET status = 'PUBLISHED', published_at = coalesce(published_at, now())"
                " WHERE id = $1 AND status <> 'PUBLISHED'",
                job.policy_id,
            )
        recipients = [
            r["user_id"]
            for r in await conn.fetch(
                "SELECT user_id FROM policy_assignments WHERE policy_id = $1 AND policy_version = $2"
                " ORDER BY user_id",
                job.policy_id,
                version,
            )
        ]
        await ctx.progress(60, f"notifying {len(recipients)} recipients")

        batches: list[tuple[UUID, SendNotificationPayload]] = []
        for channel in job.channels:
            for start in range(0, len(recipients), NOTIFICATION_BATCH_SIZE):
                batch = recipients[start : start + NOTIFICATION_BATCH_SIZE]
                # The id derives from the batch's contents, so a rerun re-submits the same jobs
                # (skipped as duplicates) and a changed audience yields new ones rather than
                # silently dropping people; per-recipient idempotency keys stop double sends.
                batch_id = uuid5(ctx.job_id, f"{channel.value}:{batch[0]}:{batch[-1]}:{len(batch)}")
                payload = SendNotificationPayload(
                    event_type=NotificationEventType.POLICY_PUBLISHED,
                    channel=channel,
                    recipient_user_ids=batch,
                    template_data={
                        "policy_id": str(job.policy_id),
                        "policy_version": version,
                        "policy_title": policy["title"],
                        "message": job.message or "",
                    },
                    idempotency_key=f"POLICY_PUBLISHED:{job.policy_id}:v{version}",
                )
                batches.append((batch_id, payload))
        notification_jobs = len(batches)
        await ctx.enqueue_many(batches, conn=conn)
        await ctx.progress(95, f"{notification_jobs} notification batches queued")

        result = DistributionResult(
            policy_id=job.policy_id,
            policy_version=version,
            recipients=len(recipients),
            assignments_created=assignments_created,
            delivery_logs_created=delivery_logs_created,
            notification_jobs=notification_jobs,
        )
        await conn.execute(
            """
            INSERT INTO audit_log (event_type, actor_id, entity_type, entity_id, details, idempotency_key)
            VALUES ('POLICY_DISTRIBUTED', $1, 'policy', $2, $3, $4)
            ON CONFLICT (idempotency_key) DO NOTHING
            """,
            ctx.envelope.requested_by,
            job.policy_id,
            {**result.model_dump(mode="json"), "channels": channels, "job_id": str(ctx.job_id)},
            f"POLICY_DISTRIBUTED:{ctx.job_id}",
        )
    return result


def _rowcount(status: str) -> int:
    """asyncpg returns the command tag, e.g. 'INSERT 0 42'."""
    return int(status.rsplit(" ", 1)[-1])


register_flow(
    FlowSpec(
        flow=Flow.POLICY,
        concurrency=5,
        timeout_seconds=30,
        heartbeat=True,  # 30 s without progress; a 100k distribution reports after every phase
        handlers={JobType.DISTRIBUTE_POLICY: distribute_policy},
    )
)
