"""Benchmark: publish a policy to 100k recipients and time publish-to-COMPLETED.

Baseline, measured in the same run on the same database: a raw asyncpg COPY of the same rows
the distribution writes for each recipient (an assignment, an in-app notification, a delivery
log), so rows per second compare like with like. Starts the services it needs as the tests do
(app.devstack), unless the environment names them. Prints `RESULT <name> <value> <unit>` lines.

    python -m bench.distribution [--recipients 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from uuid import uuid4

import asyncpg

from app.config import get_settings
from app.db import connect
from app.devstack import start_stack
from app.seed import seed_bulk_users
from bench import result
from models import DistributePolicyPayload, JobEnvelope
from tests.service import create_policy, prepare_service, produce_raw


async def copy_baseline(dsn: str, policy_id: object, user_ids: list[object]) -> float:
    """Seconds for a raw COPY of the rows a distribution writes per recipient, then removed again:
    one assignment, one in-app notification, one delivery log."""
    conn = await asyncpg.connect(dsn)
    try:
        # COPY sends binary rows; jsonb's binary form is a version byte and the JSON text.
        await conn.set_type_codec(
            "jsonb",
            schema="pg_catalog",
            format="binary",
            encoder=lambda text: b"\x01" + text.encode(),
            decoder=lambda data: data[1:].decode(),
        )
        data = json.dumps({"policy_id": str(policy_id), "policy_version": 1})
        started = time.perf_counter()
        async with conn.transaction():
            await conn.copy_records_to_table(
                "policy_assignments",
                records=[(policy_id, 1, uid, "PENDING_ACKNOWLEDGMENT") for uid in user_ids],
                columns=["policy_id", "policy_version", "user_id", "status"],
            )
            await conn.copy_records_to_table(
                "notifications",
                records=[
                    (
                        uid,
                        "POLICY_PUBLISHED",
                        "IN_APP",
                        "New policy",
                        "Body",
                        data,
                        f"B:{policy_id}:{uid}:IN_APP",
                    )
                    for uid in user_ids
                ],
                columns=["user_id", "event_type", "channel", "title", "body", "data", "idempotency_key"],
            )
            await conn.copy_records_to_table(
                "delivery_logs",
                records=[(policy_id, 1, uid, "IN_APP", "DELIVERED") for uid in user_ids],
                columns=["policy_id", "policy_version", "user_id", "channel", "status"],
            )
        elapsed = time.perf_counter() - started
        await conn.execute("DELETE FROM notifications WHERE idempotency_key LIKE $1", f"B:{policy_id}:%")
        await conn.execute("DELETE FROM delivery_logs WHERE policy_id = $1", policy_id)
        await conn.execute("DELETE FROM policy_assignments WHERE policy_id = $1", policy_id)
        return elapsed
    finally:
        await conn.close()


async def wait_terminal(conn: asyncpg.Connection, job_id: object) -> str:
    """Poll the job's row every 50 ms (the benchmark's clock resolution) until it finishes."""
    for _ in range(12_000):
        status = await conn.fetchval("SELECT status FROM jobs WHERE id = $1", job_id)
        if status in ("COMPLETED", "DEAD", "FAILED"):
            return str(status)
        await asyncio.sleep(0.05)
    raise TimeoutError("distribution did not finish in 10 minutes")


async def run(recipients: int, workdir: Path) -> None:
    with start_stack(workdir) as stack:
        service = await prepare_service(stack.env, workdir)
        conn = await connect(service.env["DATABASE_URL"])
        try:
            unit = await conn.fetchval(
                "INSERT INTO business_units (name) VALUES ($1) RETURNING id", f"Bench {uuid4()}"
            )
            started = time.perf_counter()
            await seed_bulk_users(conn, recipients, unit, ["USER", "EMPLOYEE"])
            result("seed_users_seconds", time.perf_counter() - started, "s")
            baseline_policy = await create_policy(conn, roles=["EMPLOYEE"], units=[unit], title="Baseline")
            policy_id = await create_policy(conn, roles=["EMPLOYEE"], units=[unit], title="Bench")
            user_ids = [
                r["id"] for r in await conn.fetch("SELECT id FROM users WHERE business_unit_id = $1", unit)
            ]
        finally:
            await conn.close()

        copy_seconds = await copy_baseline(service.env["DATABASE_URL"], baseline_policy, user_ids)
        result("copy_baseline_seconds", copy_seconds, "s")
        copy_rate = 3 * recipients / copy_seconds
        result("copy_baseline_rows_per_second", copy_rate, "rows/s")

        await service.start_worker("bench")
        try:
            payload = DistributePolicyPayload(
                policy_id=policy_id,
                policy_version=1,
                target_roles=["EMPLOYEE"],
                target_business_unit_ids=[unit],
            )
            envelope = JobEnvelope.for_payload(payload)
            conn = await connect(service.env["DATABASE_URL"])
            try:
                started = time.perf_counter()
                await produce_raw(
                    get_settings().kafka_bootstrap_servers,
                    envelope.topic,
                    str(envelope.job_id).encode(),
                    envelope.model_dump_json().encode(),
                )
                status = await wait_terminal(conn, envelope.job_id)
                elapsed = time.perf_counter() - started
                written = await conn.fetchval(
                    """
                    SELECT (SELECT count(*) FROM policy_assignments WHERE policy_id = $1)
                         + (SELECT count(*) FROM delivery_logs WHERE policy_id = $1)
                         + (SELECT count(*) FROM notifications WHERE data->>'policy_id' = $1::text)
                    """,
                    policy_id,
                )
            finally:
                await conn.close()
        finally:
            service.stop_all()
        if status != "COMPLETED":
            raise SystemExit(f"distribution ended {status}")
        result("distribution_publish_to_completed_seconds", elapsed, "s")
        if written != 3 * recipients:
            raise SystemExit(f"distribution wrote {written} rows, expected {3 * recipients}")
        result("distribution_rows_per_second", written / elapsed, "rows/s")
        result("distribution_vs_copy_ratio", (written / elapsed) / copy_rate, "x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-distribution-") as tmp:
        asyncio.run(run(args.recipients, Path(os.environ.get("BENCH_WORKDIR", tmp))))


if __name__ == "__main__":
    main()
