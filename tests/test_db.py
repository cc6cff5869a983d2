"""Integration tests of the schema, the migrator and the seeders against a real PostgreSQL.

Each test gets its own freshly created database (dropped afterwards; a fresh schema when the role may
not create databases), so tests neither see each other's rows nor depend on order, and the migrator is
exercised from an empty database every time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from app.config import Settings
from app.db import MigrationError, connect, create_pool, load_migrations, migrate
from app.seed import DemoOrg, seed_bulk_users, seed_demo_org

pytestmark = pytest.mark.integration

EXPECTED_TABLES = {
    "schema_migrations",
    "business_units",
    "users",
    "roles",
    "user_roles",
    "policies",
    "policy_assignments",
    "delivery_logs",
    "notifications",
    "frameworks",
    "controls",
    "assessment_schedules",
    "assessments",
    "assessment_results",
    "evidence",
    "integrations",
    "reports",
    "audit_packages",
    "jobs",
    "job_attempts",
    "audit_log",
    "scheduled_runs",
}


@pytest.fixture(scope="session")
def database_url(stack: Any) -> str:
    """DSN of the stack's PostgreSQL; used only as the admin connection that creates test databases."""
    return str(stack.env["DATABASE_URL"])


def _with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


def _with_search_path(dsn: str, schema: str) -> str:
    # asyncpg passes unknown DSN query parameters to the server as settings.
    url = urlsplit(dsn)
    query = "&".join(p for p in (url.query, urlencode({"search_path": schema})) if p)
    return urlunsplit(url._replace(query=query))


@pytest.fixture
async def fresh_dsn(database_url: str) -> AsyncIterator[str]:
    """A DSN pointing at a new, empty database that is dropped after the test.

    If the stack's role may not create databases (no CREATEDB), the test gets a fresh schema of the
    stack's database instead (first on its search_path): the same isolation for everything the
    migrations create, except that advisory locks are shared, which only makes migrations queue.
    """
    name = f"test_db_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(database_url)
    try:
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
            isolated = _with_database(database_url, name)
            # FORCE ends connections a failed test may have leaked.
            drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
        except asyncpg.InsufficientPrivilegeError:
            await admin.execute(f'CREATE SCHEMA "{name}"')
            isolated = _with_search_path(database_url, name)
            drop = f'DROP SCHEMA IF EXISTS "{name}" CASCADE'
    finally:
        await admin.close()
    try:
        yield isolated
    finally:
        admin = await asyncpg.connect(database_url)
        try:
            await admin.execute(drop)
        finally:
            await admin.close()


@pytest.fixture
async def conn(fresh_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection (with the app's json codecs) to a fully migrated fresh database."""
    await migrate(fresh_dsn)
    connection = await connect(fresh_dsn)
    try:
        yield connection
    finally:
        await connection.close()


async def _applied_versions(dsn: str) -> list[str]:
    c = await asyncpg.connect(dsn)
    try:
        return [r["version"] for r in await c.fetch("SELECT version FROM schema_migrations ORDER BY version")]
    finally:
        await c.close()


def test_packaged_migrations_are_ordered_and_unique() -> None:
    versions = [m.version for m in load_migrations()]
    assert versions, "no migration files found in the package"
    assert versions[0] == "0001"
    assert versions == sorted(versions, key=int)
    assert len(set(versions)) == len(versions)


async def test_migrate_applies_all_then_nothing(fresh_dsn: str) -> None:
    every = [m.version for m in load_migrations()]
    assert await migrate(fresh_dsn) == every
    assert await migrate(fresh_dsn) == []
    c = await asyncpg.connect(fresh_dsn)
    try:
        rows = await c.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
    finally:
        await c.close()
    expected = [(m.version, m.checksum) for m in load_migrations()]
    assert [(r["version"], r["checksum"]) for r in rows] == expected


async def test_every_expected_table_exists(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
    )
    missing = EXPECTED_TABLES - {r["table_name"] for r in rows}
    assert not missing, f"tables missing after migrate: {sorted(missing)}"
    roles = {r["name"] for r in await conn.fetch("SELECT name FROM roles")}
    assert {"USER", "ADMIN", "SUPER_ADMIN", "COMPLIANCE_OFFICER", "AUDITOR", "EMPLOYEE"} <= roles


async def test_changed_checksum_is_refused(fresh_dsn: str) -> None:
    migrations = load_migrations()
    assert len(migrations) >= 2
    assert await migrate(fresh_dsn, migrations=migrations[:1]) == ["0001"]

    edited = dataclasses.replace(migrations[0], sql=migrations[0].sql + "\n-- an innocent-looking edit\n")
    with pytest.raises(MigrationError, match=r"0001_initial\.sql"):
        await migrate(fresh_dsn, migrations=[edited, *migrations[1:]])
    # Refused before doing anything: the pending migrations were not applied either.
    assert await _applied_versions(fresh_dsn) == ["0001"]

    # The untouched files still migrate, and a mismatch recorded in the database is caught too.
    assert await migrate(fresh_dsn) == [m.version for m in migrations[1:]]
    c = await asyncpg.connect(fresh_dsn)
    try:
        await c.execute(
            "UPDATE schema_migrations SET checksum = repeat('0', 64) WHERE version = $1",
            migrations[1].version,
        )
    finally:
        await c.close()
    with pytest.raises(MigrationError, match=migrations[1].name.replace(".", r"\.")):
        await migrate(fresh_dsn)


async def test_concurrent_migrations_apply_once(fresh_dsn: str) -> None:
    every = [m.version for m in load_migrations()]
    results = await asyncio.gather(*(migrate(fresh_dsn) for _ in range(4)))
    assert sorted(results, key=len) == [[], [], [], every]
    assert await _applied_versions(fresh_dsn) == every


async def _row_counts(conn: asyncpg.Connection) -> dict[str, int]:
    tables = ("business_units", "users", "user_roles", "policies")
    return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in tables}


async def test_seed_demo_org_is_idempotent(conn: asyncpg.Connection) -> None:
    first = await seed_demo_org(conn)
    counts = await _row_counts(conn)
    second = await seed_demo_org(conn)
    assert await _row_counts(conn) == counts
    assert first == second

    assert counts["business_units"] == 3
    assert counts["users"] == 50
    assert counts["policies"] == 1
    assert await conn.fetchval("SELECT count(*) FROM user_roles WHERE role = 'ADMIN'") == 1
    officers = await conn.fetchval("SELECT count(*) FROM user_roles WHERE role = 'COMPLIANCE_OFFICER'")
    assert officers == len(first.compliance_officer_ids) == 5

    policy = await conn.fetchrow("SELECT * FROM policies WHERE id = $1", first.policy_id)
    assert policy["status"] == "DRAFT"
    assert policy["target_roles"] == ["EMPLOYEE"]
    assert set(policy["target_business_unit_ids"]) == set(first.business_unit_ids[:2])

    # DemoOrg.targeted_user_ids agrees with the targeting the schema encodes.
    targeted = await conn.fetch(
        """
        SELECT u.id FROM users u JOIN user_roles r ON r.user_id = u.id
        WHERE u.active AND r.role = ANY($1::text[]) AND u.business_unit_id = ANY($2::uuid[])
        """,
        policy["target_roles"],
        policy["target_business_unit_ids"],
    )
    assert {r["id"] for r in targeted} == first.targeted_user_ids
    assert 0 < len(first.targeted_user_ids) < 50


async def test_seed_demo_org_grows_deterministically(conn: asyncpg.Connection) -> None:
    small: DemoOrg = await seed_demo_org(conn, users=5)
    large: DemoOrg = await seed_demo_org(conn, users=12)
    assert large.user_ids[:5] == small.user_ids
    assert await conn.fetchval("SELECT count(*) FROM users") == 12


async def test_seed_bulk_users_is_set_based_and_idempotent(conn: asyncpg.Connection) -> None:
    org = await seed_demo_org(conn, users=3)
    bu = org.business_unit_ids[2]
    assert await seed_bulk_users(conn, 20_000, bu, "EMPLOYEE") == 20_000
    assert await seed_bulk_users(conn, 20_000, bu, "EMPLOYEE") == 0
    assert await seed_bulk_users(conn, 5_000, bu, ["EMPLOYEE", "USER"], start=20_000) == 5_000
    assert await seed_bulk_users(conn, 0, bu, "EMPLOYEE") == 0
    in_unit = await conn.fetchval("SELECT count(*) FROM users WHERE business_unit_id = $1", bu)
    assert in_unit == 25_000 + 1  # plus demo user 2, who lands in the third unit
    employees = await conn.fetchval(
        "SELECT count(*) FROM user_roles r JOIN users u ON u.id = r.user_id "
        "WHERE r.role = 'EMPLOYEE' AND u.business_unit_id = $1",
        bu,
    )
    assert employees == 25_001
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await seed_bulk_users(conn, 1, bu, "NO_SUCH_ROLE")


async def test_unique_constraints_reject_duplicates(conn: asyncpg.Connection) -> None:
    org = await seed_demo_org(conn, users=3)
    user = org.user_ids[1]
    job = uuid.uuid4()

    insert_assignment = (
        "INSERT INTO policy_assignments (policy_id, policy_version, user_id, job_id) VALUES ($1, 1, $2, $3)"
    )
    await conn.execute(insert_assignment, org.policy_id, user, job)
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(insert_assignment, org.policy_id, user, uuid.uuid4())
    # A new policy version is a new assignment.
    await conn.execute(insert_assignment.replace("$1, 1,", "$1, 2,"), org.policy_id, user, job)

    insert_delivery = (
        "INSERT INTO delivery_logs (policy_id, policy_version, user_id, channel, status, job_id) "
        "VALUES ($1, 1, $2, $3, 'SENT', $4)"
    )
    await conn.execute(insert_delivery, org.policy_id, user, "EMAIL", job)
    await conn.execute(insert_delivery, org.policy_id, user, "IN_APP", job)
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(insert_delivery, org.policy_id, user, "EMAIL", job)

    insert_notification = (
        "INSERT INTO notifications (user_id, event_type, title, idempotency_key) "
        "VALUES ($1, 'policy.assigned', 'New policy', $2)"
    )
    await conn.execute(insert_notification, user, f"{job}:{user}:policy.assigned")
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(insert_notification, user, f"{job}:{user}:policy.assigned")

    # The pattern job handlers use: a redelivered job writes its audit event once.
    for _ in range(2):
        await conn.execute(
            "INSERT INTO audit_log (event_type, entity_type, entity_id, details, idempotency_key) "
            "VALUES ('policy.published', 'policy', $1, $2, $3) ON CONFLICT (idempotency_key) DO NOTHING",
            org.policy_id,
            {"version": 1},
            f"{job}:policy.published",
        )
    assert await conn.fetchval("SELECT count(*) FROM audit_log") == 1

    insert_attempt = "INSERT INTO job_attempts (job_id, attempt, worker) VALUES ($1, 1, 'w1')"
    await conn.execute(
        "INSERT INTO jobs (id, job_type, flow) VALUES ($1, 'policy.distribute', 'policy')", job
    )
    await conn.execute(insert_attempt, job)
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(insert_attempt, job)

    # Timer claims: of two workers firing for the same slot, exactly one wins.
    slot = dt.datetime(2025, 1, 1, 2, 0, tzinfo=dt.UTC)
    claim = (
        "INSERT INTO scheduled_runs (job_name, slot, claimed_by) VALUES ('overdue-sweep', $1, $2) "
        "ON CONFLICT DO NOTHING RETURNING claimed_by"
    )
    assert await conn.fetchval(claim, slot, "worker-a") == "worker-a"
    assert await conn.fetchval(claim, slot, "worker-b") is None

    await conn.execute("INSERT INTO frameworks (name, version) VALUES ('NIST SP 800-53', 'rev5')")
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute("INSERT INTO frameworks (name, version) VALUES ('NIST SP 800-53', 'rev5')")
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(
            "INSERT INTO users (email, display_name) VALUES ($1, 'Duplicate')", "user00001@demo.example"
        )


async def test_check_constraints_and_append_only_audit(conn: asyncpg.Connection) -> None:
    org = await seed_demo_org(conn, users=2)
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute(
            "INSERT INTO policy_assignments (policy_id, policy_version, user_id, status) "
            "VALUES ($1, 1, $2, 'DONE')",
            org.policy_id,
            org.user_ids[0],
        )
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute(
            "INSERT INTO reports (report_type, format, status) VALUES ('x', 'PDF', 'COMPLETED')"
        )
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("UPDATE policies SET status = 'PUBLISHED' WHERE id = $1", org.policy_id)
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("INSERT INTO users (email, display_name) VALUES ('Mixed@Case.example', 'x')")

    await conn.execute("INSERT INTO audit_log (event_type) VALUES ('test.event')")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await conn.execute("UPDATE audit_log SET event_type = 'tampered'")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await conn.execute("DELETE FROM audit_log")


async def test_controls_parent_must_be_in_same_framework(conn: asyncpg.Connection) -> None:
    fw_a, fw_b = uuid.uuid4(), uuid.uuid4()
    parent = uuid.uuid4()
    await conn.execute(
        "INSERT INTO frameworks (id, name, version) VALUES ($1, 'A', '1'), ($2, 'B', '1')", fw_a, fw_b
    )
    insert_control = (
        "INSERT INTO controls (id, framework_id, ref_id, parent_id, title, sort_key) "
        "VALUES ($1, $2, $3, $4, $3, $3)"
    )
    # Deferred FK: a child may be inserted before its parent within one transaction.
    async with conn.transaction():
        await conn.execute(insert_control, uuid.uuid4(), fw_a, "AC-2(1)", parent)
        await conn.execute(insert_control, parent, fw_a, "AC-2", None)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        async with conn.transaction():
            await conn.execute(insert_control, uuid.uuid4(), fw_b, "AC-2(2)", parent)


async def test_pool_is_bounded_and_round_trips_jsonb(fresh_dsn: str) -> None:
    await migrate(fresh_dsn)
    settings = Settings(database_url=fresh_dsn, db_pool_min=1, db_pool_max=3)
    pool = await create_pool(settings)
    try:
        assert pool.get_max_size() == 3
        job_id, actor = uuid.uuid4(), uuid.uuid4()
        when = dt.datetime(2025, 6, 1, 12, 30, tzinfo=dt.UTC)
        payload = {"policy_id": actor, "due": when, "targets": ["EMPLOYEE"], "nested": {"n": 1}}
        await pool.execute(
            "INSERT INTO jobs (id, job_type, flow, payload, requested_by) "
            "VALUES ($1, 'report', 'reports', $2, $3)",
            job_id,
            payload,
            actor,
        )
        row = await pool.fetchrow("SELECT payload, result, status, attempt FROM jobs WHERE id = $1", job_id)
        assert row["payload"] == {
            "policy_id": str(actor),
            "due": when.isoformat(),
            "targets": ["EMPLOYEE"],
            "nested": {"n": 1},
        }
        assert row["result"] is None
        assert (row["status"], row["attempt"]) == ("QUEUED", 0)

        # updated_at is maintained by trigger, not by writers.
        before = await pool.fetchval("SELECT updated_at FROM jobs WHERE id = $1", job_id)
        await pool.execute("UPDATE jobs SET status = 'ACTIVE', result = $2 WHERE id = $1", job_id, {"ok": 1})
        after = await pool.fetchval("SELECT updated_at FROM jobs WHERE id = $1", job_id)
        assert after > before
        assert await pool.fetchval("SELECT result FROM jobs WHERE id = $1", job_id) == {"ok": 1}

        # More concurrent users than connections: they queue instead of opening more.
        async def hold() -> int:
            async with pool.acquire() as c:
                return int(await c.fetchval("SELECT count(*) FROM pg_sleep(0.05)"))

        assert sum(await asyncio.gather(*(hold() for _ in range(10)))) == 10
        assert pool.get_size() <= 3
    finally:
        await pool.close()
