"""End-to-end behaviour of the worker against real Kafka, PostgreSQL and S3."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.auth import issue_token
from app.config import get_settings
from app.seed import seed_bulk_users
from app.storage import object_key, open_storage
from models import Role
from tests.service import (
    JWT_SECRET,
    Service,
    counts,
    create_policy,
    distribution_envelope,
    new_distribution,
    produce_job,
    produce_raw,
    running_service,
)
from tests.workers import GOVERNANCE, api, metric_value, wait_for_job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def service(stack, tmp_path_factory) -> AsyncIterator[Service]:  # type: ignore[no-untyped-def]
    async with running_service(stack.env, tmp_path_factory.mktemp("workers"), ["a"]) as svc:
        yield svc


async def test_job_from_a_plain_kafka_client_is_processed(service: Service) -> None:
    units = list(service.org.business_unit_ids[:2])
    envelope = await new_distribution(service, units)
    policy_id = envelope.payload.policy_id
    await produce_job(service, envelope)
    status = await wait_for_job(service.url, str(envelope.job_id), service.admin_token)
    expected = len(service.org.targeted_user_ids)
    assert status["result"]["recipients"] == expected
    assert status["progress"] == 100
    # The notification batch is a job of its own; wait until its rows are there.
    async with service.db() as conn:
        for _ in range(100):
            found = await counts(conn, policy_id)
            if found["notifications"] == expected:
                break
            await asyncio.sleep(0.2)
        stored = await conn.fetchrow("SELECT status, result FROM jobs WHERE id = $1", envelope.job_id)
        policy_status = await conn.fetchval("SELECT status FROM policies WHERE id = $1", policy_id)
    assert found == {
        "assignments": expected,
        "users": expected,
        "delivery_logs": expected,
        "notifications": expected,
        "audit_events": 1,
    }
    assert stored["status"] == "COMPLETED"
    assert stored["result"]["assignments_created"] == expected
    assert policy_status == "PUBLISHED"


async def test_malformed_messages_are_recorded_and_the_agent_keeps_going(service: Service) -> None:
    bootstrap = service.env["KAFKA_BOOTSTRAP_SERVERS"]
    bad_schema_id = uuid4()
    unknown_type_id = uuid4()
    garbage = f"this is not json {uuid4()}"
    await produce_raw(bootstrap, "governance.policy", b"k1", garbage.encode())
    await produce_raw(
        bootstrap,
        "governance.policy",
        str(bad_schema_id).encode(),
        json.dumps(
            {
                "schema_version": "1",
                "job_id": str(bad_schema_id),
                "job_type": "DISTRIBUTE_POLICY",
                "payload": {"policy_id": "not-a-uuid", "policy_version": 1},
            }
        ).encode(),
    )
    await produce_raw(
        bootstrap,
        "governance.policy",
        str(unknown_type_id).encode(),
        json.dumps(
            {"schema_version": "1", "job_id": str(unknown_type_id), "job_type": "MAKE_COFFEE", "payload": {}}
        ).encode(),
    )
    # A valid job after the bad ones still runs: the agent did not stop.
    units = [service.org.business_unit_ids[0]]
    good = await new_distribution(service, units)
    await produce_job(service, good)
    await wait_for_job(service.url, str(good.job_id), service.admin_token)

    bad_schema = await wait_for_job(service.url, str(bad_schema_id), service.admin_token, ("DEAD",))
    assert "payload.policy_id" in bad_schema["error"]["message"]
    unknown = await wait_for_job(service.url, str(unknown_type_id), service.admin_token, ("DEAD",))
    assert "job_type" in unknown["error"]["message"]
    async with service.db() as conn:
        rows = await conn.fetch("SELECT status, error FROM jobs WHERE payload->>'raw_excerpt' = $1", garbage)
    assert len(rows) == 1 and rows[0]["status"] == "DEAD"
    assert rows[0]["error"]["type"] == "InvalidJobError"


async def test_a_duplicate_job_id_creates_no_duplicate_rows(service: Service) -> None:
    units = list(service.org.business_unit_ids[1:3])
    envelope = await new_distribution(service, units)
    policy_id = envelope.payload.policy_id
    raw = envelope.model_dump_json().encode()
    bootstrap = service.env["KAFKA_BOOTSTRAP_SERVERS"]
    await produce_raw(bootstrap, "governance.policy", str(envelope.job_id).encode(), raw)
    await wait_for_job(service.url, str(envelope.job_id), service.admin_token)
    await produce_raw(bootstrap, "governance.policy", str(envelope.job_id).encode(), raw)
    # The duplicate is visible in the metric once the worker has read it.
    duplicates = 'governance_jobs_duplicate_total{queue="policy"}'
    assert await metric_value(service.url, duplicates, at_least=1) >= 1
    async with service.db() as conn:
        found = await counts(conn, policy_id)
        attempts = await conn.fetchval("SELECT count(*) FROM job_attempts WHERE job_id = $1", envelope.job_id)
        jobs = await conn.fetchval("SELECT count(*) FROM jobs WHERE id = $1", envelope.job_id)
    assert found["assignments"] == found["users"] > 0
    assert found["audit_events"] == 1
    assert (jobs, attempts) == (1, 1)


async def test_intake_authenticates_validates_and_produces_only_accepted_jobs(service: Service) -> None:
    policy_id = service.org.policy_id
    url = f"{service.url}/policies/{policy_id}/publish"
    async with service.db() as conn:
        jobs_before = await conn.fetchval("SELECT count(*) FROM jobs")

    assert (await api("POST", url))[0] == 401
    assert (await api("POST", url, token="not.a.jwt"))[0] == 401
    assert (await api("POST", url, token=service.user_token))[0] == 403
    status, body = await api("POST", url, token=service.admin_token, json={"channels": ["PIGEON"]})
    assert status == 422
    assert body["fields"][0]["field"] == "channels.0"
    status, body = await api("POST", url, token=service.admin_token, data=b"{not json")
    assert status == 400
    status, body = await api("POST", url, token=service.admin_token, data=b"[" * 100_000)  # deep, not big
    assert status == 400 and "not valid JSON" in body["error"]
    # Bodies over 256 KiB are refused whole: valid JSON padded past the limit, with a
    # Content-Length and chunked without one
    padded = b'{"channels": ["IN_APP"]' + b" " * (300 * 1024) + b"}"
    status, body = await api("POST", url, token=service.admin_token, data=padded)
    assert status == 413 and "larger than" in body["error"]

    async def chunked() -> AsyncIterator[bytes]:
        yield b'{"channels": ["IN_APP"]'
        for _ in range(5):
            yield b" " * (64 * 1024)
        yield b"}"

    status, body = await api("POST", url, token=service.admin_token, data=chunked())
    assert status == 413 and "larger than" in body["error"]
    status, body = await api("POST", f"{service.url}/policies/{uuid4()}/publish", token=service.admin_token)
    assert status == 404
    status, body = await api("POST", url, token=service.admin_token, json={"job_id": "nope"})
    assert status == 422 and body["fields"][0]["field"] == "job_id"
    too_many = [str(uuid4()) for _ in range(1001)]  # explicit lists are capped; audiences use selectors
    status, body = await api("POST", url, token=service.admin_token, json={"recipient_user_ids": too_many})
    assert status == 422 and body["fields"][0]["field"] == "recipient_user_ids"
    assert "1000" in body["fields"][0]["message"]
    async with service.db() as conn:
        assert await conn.fetchval("SELECT count(*) FROM jobs") == jobs_before

    job_id = str(uuid4())
    status, body = await api("POST", url, token=service.admin_token, json={"job_id": job_id})
    assert status == 202, body
    assert body["job_id"] == job_id and body["status_url"] == f"/jobs/{job_id}"
    done = await wait_for_job(service.url, job_id, service.admin_token)
    assert done["result"]["recipients"] == len(service.org.targeted_user_ids)
    assert done["requested_by"] == str(service.org.admin_id)
    # The same job id again is answered, not run again.
    status, body = await api("POST", url, token=service.admin_token, json={"job_id": job_id})
    assert (status, body["status"]) == (200, "ALREADY_SUBMITTED")

    status, body = await api(
        "GET",
        f"{service.url}/jobs?type=DISTRIBUTE_POLICY&status=COMPLETED&limit=500",
        token=service.user_token,
    )
    assert status == 200
    assert job_id in {job["job_id"] for job in body["jobs"]}
    assert all(job["state"] == "COMPLETED" for job in body["jobs"])
    for query in ("type=DISTRIBUTE_POLCY", "status=done"):  # misspelt: 400, not an empty list
        status, body = await api("GET", f"{service.url}/jobs?{query}", token=service.user_token)
        assert status == 400 and "must be one of" in body["error"], body


async def test_status_is_answered_by_a_worker_that_does_not_own_the_job(service: Service) -> None:
    second = await service.start_worker("b")
    try:
        # Wait until both workers hold partitions, then find a job owned by each.
        for _ in range(120):
            status_a, _ = await api("GET", f"{service.workers[0].url}/ready")
            status_b, _ = await api("GET", f"{second.url}/ready")
            if status_a == status_b == 200:
                break
            await asyncio.sleep(0.5)
        units = [service.org.business_unit_ids[2]]
        async with service.db() as conn:
            policy_id = await create_policy(conn, roles=["EMPLOYEE"], units=units)
        envelopes = [distribution_envelope(policy_id, units) for _ in range(8)]
        for envelope in envelopes:
            await produce_job(service, envelope)
        for envelope in envelopes:
            for worker in (service.workers[0], second):
                answer = await wait_for_job(worker.url, str(envelope.job_id), service.admin_token)
                assert answer["source"] == "live"
                assert answer["job_id"] == str(envelope.job_id)
        # With 12 partitions over two workers, some of the 8 jobs live on each: every answer
        # above from the non-owner was routed.
        routed = await _owners(service, [str(e.job_id) for e in envelopes])
        assert len(set(routed.values())) == 2, routed
    finally:
        second.stop()
        service.workers.remove(second)


async def _owners(service: Service, job_ids: list[str]) -> dict[str, str]:
    """Which worker owns each job's partition, as Faust's router reports it."""
    owners: dict[str, str] = {}
    for job_id in job_ids:
        status, answer = await api("GET", f"{service.workers[0].url}/router/job-status/{job_id}/")
        assert status == 200
        owners[job_id] = str(answer)
    return owners


async def test_sigterm_lets_a_running_job_finish(service: Service) -> None:
    async with service.db() as conn:
        unit = await conn.fetchval(
            "INSERT INTO business_units (name) VALUES ($1) RETURNING id", f"Load {uuid4().hex[:6]}"
        )
        await seed_bulk_users(conn, 20_000, unit, ["USER", "EMPLOYEE"])
        policy_id = await create_policy(conn, roles=["EMPLOYEE"], units=[unit])
    envelope = distribution_envelope(policy_id, [unit])
    worker = service.workers[0]
    await produce_job(service, envelope)
    await wait_for_job(worker.url, str(envelope.job_id), service.admin_token, ("ACTIVE",))
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit(timeout=120) == 0
    async with service.db() as conn:
        stored = await conn.fetchrow("SELECT status, result FROM jobs WHERE id = $1", envelope.job_id)
        assigned = await conn.fetchval(
            "SELECT count(*) FROM policy_assignments WHERE policy_id = $1", policy_id
        )
    assert stored["status"] == "COMPLETED"
    assert assigned == stored["result"]["recipients"] == 20_000
    service.workers.remove(worker)
    await service.start_worker("a2")


async def test_health_ready_and_metrics_answer(service: Service) -> None:
    status, body = await api("GET", f"{service.url}/health")
    assert (status, body["status"]) == (200, "ok")
    status, body = await api("GET", f"{service.url}/ready")
    assert status == 200 and body["checks"] == {
        "kafka": "ok",
        "database": "ok",
        "storage": "ok",
        "partitions": "ok",
    }
    status, text = await api("GET", f"{service.url}/metrics")
    assert status == 200
    assert "# TYPE governance_job_duration_seconds histogram" in text
    assert 'governance_jobs_waiting{queue="policy"}' in text


async def test_job_events_carry_the_job_id_key(service: Service) -> None:
    """Status events are keyed by job id, so the table and the router agree on the partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=service.env["KAFKA_BOOTSTRAP_SERVERS"])
    await consumer.start()
    try:
        tps = [TopicPartition("governance.job-events", p) for p in range(12)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        batch = await consumer.getmany(timeout_ms=5000, max_records=50)
        records = [r for recs in batch.values() for r in recs]
    finally:
        await consumer.stop()
    assert records
    for record in records:
        assert record.key == json.loads(record.value)["job_id"].encode()


async def test_every_intake_endpoint_accepts_valid_and_refuses_unknown_entities(service: Service) -> None:
    async with service.db() as conn:
        framework_id = await conn.fetchval(
            "INSERT INTO frameworks (name, version) VALUES ($1, 'v1') RETURNING id", f"FW {uuid4()}"
        )
    admin, user, base = service.admin_token, service.user_token, service.url
    missing = str(uuid4())
    report = {"report_type": "FRAMEWORK_SCORECARD", "format": "PDF", "framework_id": str(framework_id)}
    assert (
        await api("POST", f"{base}/reports/generate", token=user, json={**report, "framework_id": missing})
    )[0] == 404
    status, body = await api("POST", f"{base}/reports/generate", token=user, json=report)
    assert status == 202, body
    async with service.db() as conn:
        stored = await conn.fetchrow(
            "SELECT status, job_id FROM reports WHERE job_id = $1", UUID(body["job_id"])
        )
    assert stored["status"] == "QUEUED"

    schedule = {
        "assessment_id": str(uuid4()),
        "framework_id": str(framework_id),
        "cron": "0 6 * * 1",
        "timezone": "Europe/Berlin",
        "assignee_ids": [str(service.org.admin_id)],
        "start_at": "2027-01-01T00:00:00Z",
    }
    assert (await api("POST", f"{base}/assessments/schedule", token=user, json=schedule))[0] == 403
    status, body = await api(
        "POST", f"{base}/assessments/schedule", token=admin, json={**schedule, "cron": "bad"}
    )
    assert status == 422 and body["fields"][0]["field"] == "cron"
    assert (await api("POST", f"{base}/assessments/schedule", token=admin, json=schedule))[0] == 202

    package = {"framework_id": missing, "period_start": "2026-01-01", "period_end": "2026-06-30"}
    assert (await api("POST", f"{base}/audit/packages/generate", token=admin, json=package))[0] == 404
    package["framework_id"] = str(framework_id)
    status, packaged = await api("POST", f"{base}/audit/packages/generate", token=admin, json=package)
    assert status == 202

    assert (await api("POST", f"{base}/exports", token=user, json={"entity": "CONTROLS"}))[0] == 422
    status, body = await api(
        "POST", f"{base}/exports", token=user, json={"entity": "CONTROLS", "format": "CSV"}
    )
    assert status == 202 and body["export_status_url"] == f"/exports/{body['export_id']}/status"
    # Flows without a handler in this version end DEAD with the reason, visibly.
    failed = await wait_for_job(base, packaged["job_id"], admin, ("DEAD",))
    assert failed["error"]["type"] == "UnsupportedJobError"

    names = {"framework_name": "Uploaded", "framework_version": "1"}
    status, _ = await api(
        "POST", f"{base}/imports", token=admin, json={**names, "s3_key": "imports/none.csv"}
    )
    assert status == 404
    form = aiohttp.FormData()
    form.add_field("file", b"ref_id,title\nAC-1,Policy\n", filename="../../controls.csv")
    for key, value in names.items():
        form.add_field(key, value)
    status, body = await api("POST", f"{base}/imports", token=admin, data=form)
    assert status == 202, body
    async with service.db() as conn:
        payload = await conn.fetchval("SELECT payload FROM jobs WHERE id = $1", UUID(body["job_id"]))
    assert payload["s3_key"].startswith("imports/") and payload["s3_key"].endswith("-controls.csv")
    async with open_storage(get_settings()) as storage:
        assert await storage.get(payload["s3_key"]) == b"ref_id,title\nAC-1,Policy\n"


async def test_storage_serves_presigned_downloads(service: Service) -> None:
    async with open_storage(get_settings()) as storage:
        await storage.ensure_bucket()
        key = object_key("reports", f"report-{uuid4()}.json")
        await storage.put(key, b'{"ok": true}', "application/json")
        url = await storage.presigned_url(key, expires_seconds=60)
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == b'{"ok": true}'
    assert "X-Amz-Expires=60" in url


async def test_governance_enqueue_publishes_a_job_from_a_file(service: Service, tmp_path) -> None:  # type: ignore[no-untyped-def]
    units = [service.org.business_unit_ids[0]]
    async with service.db() as conn:
        policy_id = await create_policy(conn, roles=["EMPLOYEE"], units=units)
    data = tmp_path / "payload.json"
    data.write_text(
        json.dumps(
            {"policy_id": str(policy_id), "policy_version": 1, "target_business_unit_ids": [str(units[0])]}
        )
    )
    job_id = str(uuid4())
    enqueue = await asyncio.create_subprocess_exec(
        GOVERNANCE,
        "enqueue",
        "DISTRIBUTE_POLICY",
        "--data",
        str(data),
        "--job-id",
        job_id,
        env={**os.environ, **service.env},
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await asyncio.wait_for(enqueue.communicate(), timeout=60)
    assert enqueue.returncode == 0
    assert json.loads(stdout) == {"job_id": job_id, "topic": "governance.policy"}
    status = await wait_for_job(service.url, job_id, service.admin_token)
    assert status["result"]["recipients"] > 0


async def test_recipients_read_their_in_app_notifications(service: Service) -> None:
    units = [service.org.business_unit_ids[0]]
    async with service.db() as conn:
        reader = await conn.fetchval(
            "SELECT id FROM users WHERE business_unit_id = $1 AND id = ANY($2::uuid[]) ORDER BY id LIMIT 1",
            units[0],
            list(service.org.user_ids),
        )
    envelope = await new_distribution(service, units, title="Clean desk policy")
    policy_id = envelope.payload.policy_id
    await produce_job(service, envelope)
    await wait_for_job(service.url, str(envelope.job_id), service.admin_token)
    token = issue_token(JWT_SECRET, reader, [Role.USER])
    inbox = f"{service.url}/users/{reader}/notifications?unread=true"
    mine: list[dict] = []
    for _ in range(100):
        status, body = await api("GET", inbox, token=token)
        mine = [n for n in body["items"] if n["data"].get("policy_id") == str(policy_id)]
        if mine:
            break
        await asyncio.sleep(0.2)
    assert status == 200 and len(mine) == 1
    assert mine[0]["title"] == "New policy to acknowledge: Clean desk policy"
    unread_before = body["unread"]

    assert (await api("GET", inbox, token=service.user_token))[0] == 403  # someone else's inbox
    assert (await api("GET", inbox, token=service.admin_token))[0] == 200
    read_url = f"{service.url}/notifications/{mine[0]['id']}/read"
    assert (await api("POST", read_url, token=service.user_token))[0] == 404  # not theirs
    status, body = await api("POST", read_url, token=token)
    assert status == 200 and body["read_at"]
    status, body = await api("GET", inbox, token=token)
    assert body["unread"] == unread_before - 1
    assert all(n["id"] != mine[0]["id"] for n in body["items"])
