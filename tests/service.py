"""A running job service for integration tests: migrated database, topics, a demo org, workers."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from app.auth import issue_token
from app.config import get_settings
from app.db import connect, migrate
from app.devstack import SHARED_DATA
from app.seed import DemoOrg, seed_demo_org
from app.topics import ensure_topics
from models import DistributePolicyPayload, JobEnvelope, Role
from tests.workers import WorkerProcess, api, wait_for_job

JWT_SECRET = "integration-test-secret-of-32-bytes-or-more"
# Without the real catalogs (app.devstack.SHARED_DATA) the real-file tests are skipped and say why.
needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"shared data not found at {SHARED_DATA}"
)
# One consumer group for the whole session, so a module's workers resume where the last stopped.
APP_ID = f"governance-test-{uuid4().hex[:8]}"


@dataclass
class Service:
    env: dict[str, str]
    log_dir: Path
    org: DemoOrg
    admin_token: str
    user_token: str
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.workers[0].url

    async def start_worker(self, name: str, **extra_env: str) -> WorkerProcess:
        worker = WorkerProcess({**self.env, **extra_env}, self.log_dir, name).start()
        self.workers.append(worker)
        await worker.wait_ready()
        return worker

    async def replace_unhealthy(self) -> list[str]:
        """Do what Kubernetes' liveness probe does: restart a worker whose /health fails."""
        replaced = []
        for worker in list(self.workers):
            status, _ = await api("GET", f"{worker.url}/health")
            if status == 503:
                worker.stop()
                self.workers.remove(worker)
                await self.start_worker(f"{worker.name}-relived")
                replaced.append(worker.name)
        return replaced

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()

    @asynccontextmanager
    async def db(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await connect(self.env["DATABASE_URL"])
        try:
            yield conn
        finally:
            await conn.close()


def service_env(stack_env: dict[str, str]) -> dict[str, str]:
    return {
        **stack_env,
        "APP_ID": APP_ID,
        "JWT_SECRET": JWT_SECRET,
        "TOPIC_PARTITIONS": "12",
        # Short group timeouts: workers join and leave in seconds instead of a minute.
        "BROKER_SESSION_TIMEOUT": "10",
        "BROKER_HEARTBEAT_INTERVAL": "1",
        "BROKER_REBALANCE_TIMEOUT": "10",
        "SHUTDOWN_GRACE_SECONDS": "90",
        "LOG_LEVEL": "INFO",
    }


async def prepare_service(stack_env: dict[str, str], log_dir: Path, **extra_env: str) -> Service:
    env = {**service_env(stack_env), **extra_env}
    os.environ.update(env)
    get_settings.cache_clear()
    await migrate(env["DATABASE_URL"])
    await ensure_topics(get_settings())
    conn = await connect(env["DATABASE_URL"])
    try:
        org = await seed_demo_org(conn, users=60)
    finally:
        await conn.close()
    return Service(
        env=env,
        log_dir=log_dir,
        org=org,
        admin_token=issue_token(JWT_SECRET, org.admin_id, [Role.ADMIN]),
        user_token=issue_token(JWT_SECRET, org.user_ids[5], [Role.USER]),
    )


@asynccontextmanager
async def running_service(
    stack_env: dict[str, str], log_dir: Path, workers: Sequence[str], **extra_env: str
) -> AsyncIterator[Service]:
    """A prepared service with the named workers, all stopped on the way out (even if one fails to start)."""
    service = await prepare_service(stack_env, log_dir, **extra_env)
    try:
        for name in workers:
            await service.start_worker(name)
        # A later worker's join rebalances the earlier ones: wait until every one holds partitions.
        for worker in service.workers:
            await worker.wait_ready()
        yield service
    finally:
        service.stop_all()


async def create_policy(
    conn: asyncpg.Connection, *, roles: list[str], units: list[UUID], title: str = "Test policy"
) -> UUID:
    policy_id = uuid4()
    await conn.execute(
        "INSERT INTO policies (id, title, body, target_roles, target_business_unit_ids)"
        " VALUES ($1, $2, 'Body', $3, $4)",
        policy_id,
        title,
        roles,
        units,
    )
    return policy_id


async def counts(conn: asyncpg.Connection, policy_id: UUID) -> dict[str, Any]:
    row = await conn.fetchrow(
        """
        SELECT (SELECT count(*) FROM policy_assignments WHERE policy_id = $1) AS assignments,
               (SELECT count(DISTINCT user_id) FROM policy_assignments WHERE policy_id = $1) AS users,
               (SELECT count(*) FROM delivery_logs WHERE policy_id = $1) AS delivery_logs,
               (SELECT count(*) FROM notifications WHERE data->>'policy_id' = $1::text) AS notifications,
               (SELECT count(*) FROM audit_log WHERE entity_id = $1 AND event_type = 'POLICY_DISTRIBUTED')
                   AS audit_events
        """,
        policy_id,
    )
    return dict(row)


async def produce_raw(
    bootstrap: str, topic: str, key: bytes | None, value: bytes, partition: int | None = None
) -> None:
    """A plain aiokafka producer, as an upstream team without our client would use."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=value, key=key, partition=partition)
    finally:
        await producer.stop()


async def produce_job(service: Service, envelope: JobEnvelope, partition: int | None = None) -> None:
    """Publish an envelope on its flow topic, keyed by job id, with a plain Kafka client."""
    await produce_raw(
        service.env["KAFKA_BOOTSTRAP_SERVERS"],
        envelope.topic,
        str(envelope.job_id).encode(),
        envelope.model_dump_json().encode(),
        partition,
    )


def distribution_envelope(policy_id: UUID, units: list[UUID], job_id: UUID | None = None) -> JobEnvelope:
    """DISTRIBUTE_POLICY to the EMPLOYEEs of `units`."""
    payload = DistributePolicyPayload(
        policy_id=policy_id, policy_version=1, target_roles=["EMPLOYEE"], target_business_unit_ids=units
    )
    return JobEnvelope.for_payload(payload, job_id=job_id)


async def new_distribution(service: Service, units: list[UUID], title: str = "Test policy") -> JobEnvelope:
    """A fresh policy for the EMPLOYEEs of `units`, and the job that distributes it."""
    async with service.db() as conn:
        policy_id = await create_policy(conn, roles=["EMPLOYEE"], units=units, title=title)
    return distribution_envelope(policy_id, units)


async def upload(
    service: Service, name: str, data: bytes, framework: str, version: str = "1", **fields: Any
) -> tuple[int, dict[str, Any]]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name)
    form.add_field("framework_name", framework)
    form.add_field("framework_version", version)
    for key, value in fields.items():
        form.add_field(key, json.dumps(value) if isinstance(value, dict) else str(value))
    status, body = await api("POST", f"{service.url}/imports", token=service.admin_token, data=form)
    assert status == 202, body
    return status, body


async def run_import(
    service: Service, name: str, data: bytes, framework: str, **fields: Any
) -> dict[str, Any]:
    """Upload, wait for the job to finish (either way), return its status."""
    _, body = await upload(service, name, data, framework, **fields)
    return await wait_for_job(
        service.url, body["job_id"], service.admin_token, ("COMPLETED", "DEAD"), timeout=120
    )
