"""Retry tiers, error classes and dead letters against real Kafka and PostgreSQL.

Failures are real: a PostgreSQL trigger makes the policy handler's insert fail, counting every
execution with a sequence (sequences ignore rollbacks), so a test knows exactly how often the
handler ran.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.auth import issue_token
from app.crypto import encrypt_secret, generate_key
from app.seed import seed_id
from models import (
    Channel,
    FetchEvidenceFromIntegrationPayload,
    IntegrationType,
    JobEnvelope,
    NotificationEventType,
    Role,
    SendNotificationPayload,
)
from tests.service import (
    JWT_SECRET,
    Service,
    create_policy,
    distribution_envelope,
    new_distribution,
    produce_job,
    produce_raw,
    running_service,
)
from tests.workers import GOVERNANCE, api, free_port, wait_for_job

pytestmark = pytest.mark.integration

# Short tiers keep the suite fast; the mechanism is the same at 2/10/30/60 s.
RETRY_POLICY = "4:1,2,3"
TIERS = (1.0, 2.0, 3.0)
PAYLOAD_KEY = generate_key()
WEBHOOK_SECRET = "webhook-signing-secret-for-tests"
ON_CALL = seed_id("user", 0)  # the demo organisation's admin


@pytest.fixture(scope="module")
async def service(stack, tmp_path_factory) -> AsyncIterator[Service]:  # type: ignore[no-untyped-def]
    async with running_service(
        stack.env,
        tmp_path_factory.mktemp("workers"),
        ["r1"],
        RETRY_POLICY=RETRY_POLICY,
        PAYLOAD_ENCRYPTION_KEY=PAYLOAD_KEY,
        WEBHOOK_SIGNING_SECRET=WEBHOOK_SECRET,
        ONCALL_USER_IDS=str(ON_CALL),
    ) as svc:
        try:
            yield svc
        finally:
            async with svc.db() as conn:  # the injected failures must not slow later modules
                for (name,) in await conn.fetch(
                    "SELECT tgname FROM pg_trigger WHERE tgname LIKE 'fail\\_%' AND NOT tgisinternal"
                ):
                    await conn.execute(f"DROP TRIGGER {name} ON policy_assignments")


async def failing_policy(service: Service, failures: int) -> tuple[UUID, str]:
    """A policy whose assignment insert fails `failures` times; returns its id and the counter."""
    units = [service.org.business_unit_ids[0]]
    counter = f"fail_{uuid4().hex[:12]}"
    async with service.db() as conn:
        policy_id = await create_policy(conn, roles=["EMPLOYEE"], units=units)
        await conn.execute(f"CREATE SEQUENCE {counter}")
        await conn.execute(
            f"""
            CREATE FUNCTION {counter}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.policy_id = '{policy_id}' AND nextval('{counter}') <= {failures} THEN
                    RAISE EXCEPTION 'injected failure %', currval('{counter}');
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER {counter} BEFORE INSERT ON policy_assignments
                FOR EACH ROW EXECUTE FUNCTION {counter}();
            """
        )
    return policy_id, counter


async def runs(service: Service, counter: str) -> int:
    """How often the trigger ran: once per failed attempt, once per row of a successful one."""
    async with service.db() as conn:
        return int(await conn.fetchval(f"SELECT last_value FROM {counter}"))


async def successful_runs(service: Service, counter: str, failures: int, policy_id: UUID) -> float:
    async with service.db() as conn:
        rows = await conn.fetchval("SELECT count(*) FROM policy_assignments WHERE policy_id = $1", policy_id)
    return (await runs(service, counter) - failures) / rows


async def dead_letters_on(service: Service, topic: str) -> list[dict]:
    consumer = AIOKafkaConsumer(bootstrap_servers=service.env["KAFKA_BOOTSTRAP_SERVERS"])
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(12)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        batch = await consumer.getmany(timeout_ms=3000, max_records=10_000)
        return [json.loads(r.value) for records in batch.values() for r in records]
    finally:
        await consumer.stop()


async def test_each_retry_tier_fires_within_ten_percent_of_its_delay(service: Service) -> None:
    policy_id, counter = await failing_policy(service, failures=3)
    envelope = distribution_envelope(policy_id, [service.org.business_unit_ids[0]])
    await produce_job(service, envelope)
    done = await wait_for_job(service.url, str(envelope.job_id), service.admin_token, timeout=60)
    assert done["attempt"] == 4
    async with service.db() as conn:
        attempts = await conn.fetch(
            "SELECT attempt, state, started_at, finished_at FROM job_attempts"
            " WHERE job_id = $1 ORDER BY attempt",
            envelope.job_id,
        )
    assert [a["state"] for a in attempts] == ["RETRYING", "RETRYING", "RETRYING", "COMPLETED"]
    for failed, retried, delay in zip(attempts, attempts[1:], TIERS, strict=False):
        waited = (retried["started_at"] - failed["finished_at"]).total_seconds()
        print(f"retry tier {delay:g}s fired after {waited:.3f}s")
        assert abs(waited - delay) <= 0.1 * delay, (delay, waited)
    assert await successful_runs(service, counter, 3, policy_id) == 1


async def test_exhausted_retries_end_in_the_dead_letter_topic(service: Service) -> None:
    policy_id, counter = await failing_policy(service, failures=1000)
    envelope = distribution_envelope(policy_id, [service.org.business_unit_ids[0]])
    await produce_job(service, envelope)
    dead = await wait_for_job(service.url, str(envelope.job_id), service.admin_token, ("DEAD",), timeout=60)
    assert dead["attempt"] == 4 and "injected failure" in dead["error"]["message"]
    assert await runs(service, counter) == 4
    letters = [
        letter
        for letter in await dead_letters_on(service, "governance.policy.dlq")
        if letter["envelope"] and letter["envelope"]["job_id"] == str(envelope.job_id)
    ]
    assert len(letters) == 1
    letter = letters[0]
    assert letter["attempts"] == 4 and letter["error"]["type"] == "RaiseError"
    assert "injected failure" in letter["error"]["stack"]
    assert letter["original"]["topic"] == "governance.policy" and letter["original"]["offset"] >= 0


async def test_a_non_retryable_error_goes_straight_to_the_dead_letter_topic(service: Service) -> None:
    envelope = distribution_envelope(uuid4(), [service.org.business_unit_ids[0]])  # no such policy
    await produce_job(service, envelope)
    dead = await wait_for_job(service.url, str(envelope.job_id), service.admin_token, ("DEAD",))
    assert dead["attempt"] == 1 and dead["error"]["type"] == "NotFoundError"
    async with service.db() as conn:
        for _ in range(50):
            row = await conn.fetchrow("SELECT * FROM dead_letters WHERE job_id = $1", envelope.job_id)
            if row:
                break
            await asyncio.sleep(0.2)
    assert row is not None and row["attempts"] == 1 and row["status"] == "UNRESOLVED"
    # The on-call person hears about it once, in-app.
    async with service.db() as conn:
        for _ in range(50):
            told = await conn.fetch(
                "SELECT user_id, title FROM notifications WHERE idempotency_key LIKE $1",
                f"JOB_FAILED:{envelope.job_id}:%",
            )
            if told:
                break
            await asyncio.sleep(0.2)
    assert [(r["user_id"], r["title"]) for r in told] == [(ON_CALL, "Job failed: DISTRIBUTE_POLICY")]


async def test_poison_messages_go_to_the_dead_letter_topic_and_the_agent_keeps_serving(
    service: Service,
) -> None:
    marker = uuid4().hex
    bootstrap = service.env["KAFKA_BOOTSTRAP_SERVERS"]
    await produce_raw(bootstrap, "governance.policy", None, f"not json {marker}".encode())
    await produce_raw(
        bootstrap,
        "governance.policy",
        None,
        json.dumps(
            {"schema_version": "1", "job_type": "DISTRIBUTE_POLICY", "payload": {"x": marker}}
        ).encode(),
    )
    await produce_raw(
        bootstrap, "governance.policy", None, b'{"pad": "' + marker.encode() + b"x" * 600_000 + b'"}'
    )
    units = [service.org.business_unit_ids[1]]
    good = await new_distribution(service, units)
    await produce_job(service, good)
    await wait_for_job(service.url, str(good.job_id), service.admin_token)
    letters = [
        letter
        for letter in await dead_letters_on(service, "governance.policy.dlq")
        if marker in (letter["raw_excerpt"] or "")
    ]
    reasons = sorted(letter["error"]["message"][:40] for letter in letters)
    assert len(letters) == 3, reasons
    assert any("exceeds" in letter["error"]["message"] for letter in letters)
    assert any("payload.policy_id" in letter["error"]["message"] for letter in letters)
    assert all(letter["envelope"] is None and letter["attempts"] == 0 for letter in letters)


async def test_a_worker_killed_while_a_retry_waits_retries_it_exactly_once(service: Service) -> None:
    policy_id, counter = await failing_policy(service, failures=3)
    envelope = distribution_envelope(policy_id, [service.org.business_unit_ids[0]])
    await produce_job(service, envelope)
    worker = service.workers[0]
    # Attempt 3 fails and waits 3 s in the 3s tier. Kill the worker during that wait, after the
    # commit interval (1 s) has committed attempt 3's own message, so only the wait is lost.
    async with service.db() as conn:
        for _ in range(400):
            state = await conn.fetchval(
                "SELECT state FROM job_attempts WHERE job_id = $1 AND attempt = 3", envelope.job_id
            )
            if state == "RETRYING":
                break
            await asyncio.sleep(0.025)
    assert state == "RETRYING"
    await asyncio.sleep(1.5)
    worker.signal(signal.SIGKILL)
    await worker.wait_exit()
    service.workers.remove(worker)
    replacement = await service.start_worker("r2")
    done = await wait_for_job(replacement.url, str(envelope.job_id), service.admin_token, timeout=90)
    assert done["attempt"] == 4
    assert await successful_runs(service, counter, 3, policy_id) == 1  # the retry ran exactly once


async def test_dead_letters_are_managed_over_http_with_admin_rights(service: Service) -> None:
    envelopes = [distribution_envelope(uuid4(), [service.org.business_unit_ids[0]]) for _ in range(3)]
    for envelope in envelopes:
        await produce_job(service, envelope)
    for envelope in envelopes:
        await wait_for_job(service.url, str(envelope.job_id), service.admin_token, ("DEAD",))
    base = f"{service.url}/dlq/policy"
    assert (await api("GET", base))[0] == 401
    assert (await api("GET", base, token=service.user_token))[0] == 403
    assert (await api("GET", f"{service.url}/dlq/nope", token=service.admin_token))[0] == 404
    ids: dict[str, str] = {}
    for _ in range(50):
        status, page = await api(
            "GET", f"{base}?job_type=DISTRIBUTE_POLICY&limit=500", token=service.admin_token
        )
        ids = {item["job_id"]: item["id"] for item in page["items"]}
        if all(str(e.job_id) in ids for e in envelopes):
            break
        await asyncio.sleep(0.2)
    assert status == 200 and all(str(e.job_id) in ids for e in envelopes)

    first = ids[str(envelopes[0].job_id)]
    status, letter = await api("GET", f"{base}/{first}", token=service.admin_token)
    assert status == 200 and letter["error"]["type"] == "NotFoundError"
    assert letter["original"]["topic"] == "governance.policy"

    status, replay = await api("POST", f"{base}/{first}/retry", token=service.admin_token)
    assert status == 202 and replay["job_id"] != str(envelopes[0].job_id)
    again = await api("POST", f"{base}/{first}/retry", token=service.admin_token)
    assert (
        again[0] == 200 and again[1]["status"] == "ALREADY_RETRIED" and again[1]["job_id"] == replay["job_id"]
    )
    async with service.db() as conn:
        linked = await conn.fetchval("SELECT retry_of FROM jobs WHERE id = $1", UUID(replay["job_id"]))
        assert str(linked) == first
        assert await conn.fetchval("SELECT count(*) FROM jobs WHERE retry_of = $1", UUID(first)) == 1
    # The policy still does not exist, so the replay dies again: a new dead letter, not a loop.
    await wait_for_job(service.url, replay["job_id"], service.admin_token, ("DEAD",))

    status, outcome = await api("POST", f"{base}/retry-all?limit=500", token=service.admin_token)
    # Two of the three are still unresolved; unreadable (poison) letters cannot be replayed.
    assert status == 200 and outcome["retried"] >= 2
    assert all("unreadable" in failure["reason"] for failure in outcome["failures"])

    assert (await api("POST", f"{base}/purge", token=service.admin_token))[0] == 400
    status, purged = await api("POST", f"{base}/purge?older_than_days=0", token=service.admin_token)
    assert status == 200 and purged["purged"] >= 1
    status, page = await api("GET", f"{base}?status=PURGED&limit=500", token=service.admin_token)
    assert page["total"] >= purged["purged"]
    status, metrics_text = await api("GET", f"{service.url}/metrics")
    assert 'governance_queue_dlq_jobs_total{queue="policy"} 0.0' in metrics_text
    assert "governance_job_retries_total" in metrics_text


async def test_the_dlq_cli_lists_and_replays(service: Service) -> None:
    envelope = distribution_envelope(uuid4(), [service.org.business_unit_ids[0]])
    await produce_job(service, envelope)
    await wait_for_job(service.url, str(envelope.job_id), service.admin_token, ("DEAD",))
    env = {**os.environ, **service.env}

    async def cli(*args: str) -> dict:
        process = await asyncio.create_subprocess_exec(
            GOVERNANCE, "dlq", *args, env=env, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0
        return dict(json.loads(out))

    letter_id = None
    for _ in range(50):
        page = await cli("list", "policy", "--limit", "500")
        letter_id = next((i["id"] for i in page["items"] if i["job_id"] == str(envelope.job_id)), None)
        if letter_id:
            break
        await asyncio.sleep(0.2)
    assert letter_id
    assert (await cli("show", "policy", letter_id))["job_id"] == str(envelope.job_id)
    replayed = await cli("retry", "policy", letter_id)
    assert replayed["submitted"] is True
    await wait_for_job(service.url, replayed["job_id"], service.admin_token, ("DEAD",))
    assert (await cli("retry", "policy", letter_id))["submitted"] is False
    outcome = await cli("retry-all", "policy", "--limit", "1")
    assert outcome["retried"] + outcome["failed"] <= 1
    before = (await cli("list", "policy"))["total"]
    purged = (await cli("purge", "policy", "--older-than-days", "0"))["purged"]
    assert purged >= before


async def test_no_credential_appears_in_a_dead_letter(service: Service) -> None:
    secret = f"s3cr3t-{uuid4().hex}"
    payload = FetchEvidenceFromIntegrationPayload(
        integration_id=uuid4(),
        integration_type=IntegrationType.QUALYS,
        control_ids=[uuid4()],
        credentials=encrypt_secret(json.dumps({"username": "svc", "password": secret}), PAYLOAD_KEY),
    )
    envelope = JobEnvelope.for_payload(payload)
    await produce_job(service, envelope)
    dead = await wait_for_job(service.url, str(envelope.job_id), service.admin_token, ("DEAD",))
    letters = await dead_letters_on(service, "governance.evidence.dlq")
    raw = json.dumps(letters)
    assert str(envelope.job_id) in raw and secret not in raw
    assert secret not in json.dumps(dead)
    admin = issue_token(JWT_SECRET, service.org.admin_id, [Role.ADMIN])
    letter_id = None
    for _ in range(50):
        _, page = await api("GET", f"{service.url}/dlq/evidence?limit=500", token=admin)
        letter_id = next((i["id"] for i in page["items"] if i["job_id"] == str(envelope.job_id)), None)
        if letter_id:
            break
        await asyncio.sleep(0.2)
    _, shown = await api("GET", f"{service.url}/dlq/evidence/{letter_id}", token=admin)
    assert secret not in json.dumps(shown)
    assert shown["envelope"]["payload"]["credentials"] == "[REDACTED]"


async def test_a_rate_limited_job_waits_for_retry_after_without_using_attempts(service: Service) -> None:
    """A real HTTP receiver answers 429 (Retry-After: 1) twice, then 200."""
    received: list[tuple[float, bytes, dict[str, str]]] = []

    async def receive(request: web.Request) -> web.Response:
        received.append((time.monotonic(), await request.read(), dict(request.headers)))
        if len(received) <= 2:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(status=204)

    server = web.Application()
    server.router.add_post("/hook", receive)
    runner = web.AppRunner(server)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        payload = SendNotificationPayload(
            event_type=NotificationEventType.REPORT_READY,
            channel=Channel.WEBHOOK,
            webhook_url=f"http://127.0.0.1:{port}/hook",
            template_data={"report_id": str(uuid4())},
            idempotency_key=f"REPORT_READY:{uuid4()}",
        )
        envelope = JobEnvelope.for_payload(payload)
        await produce_job(service, envelope)
        done = await wait_for_job(service.url, str(envelope.job_id), service.admin_token, timeout=60)
    finally:
        await runner.cleanup()
    assert done["attempt"] == 1  # rate limits did not use up attempts
    assert len(received) == 3
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(received)]
    assert all(gap >= 1.0 for gap in gaps), gaps
    for _, body, headers in received:
        expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Governance-Signature"] == expected
        assert headers["X-Idempotency-Key"] == payload.idempotency_key
    async with service.db() as conn:
        delivered = await conn.fetchval(
            "SELECT status_code FROM webhook_deliveries WHERE idempotency_key = $1", payload.idempotency_key
        )
    assert delivered == 204


async def test_a_job_is_not_run_before_its_not_before_time(service: Service) -> None:
    units = [service.org.business_unit_ids[2]]
    async with service.db() as conn:
        policy_id = await create_policy(conn, roles=["EMPLOYEE"], units=units)
    due = datetime.now(UTC) + timedelta(seconds=2.5)
    payload = distribution_envelope(policy_id, units).payload
    envelope = JobEnvelope.for_payload(payload, not_before=due)
    await produce_job(service, envelope)
    done = await wait_for_job(service.url, str(envelope.job_id), service.admin_token, timeout=30)
    async with service.db() as conn:
        started = await conn.fetchval(
            "SELECT started_at FROM job_attempts WHERE job_id = $1 AND attempt = 1", envelope.job_id
        )
    assert done["attempt"] == 1
    assert due <= started <= due + timedelta(seconds=0.5)
