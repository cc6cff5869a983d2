"""Demo and load-test data.

Every id is derived (uuid5 / md5 of a stable key), and every insert is ``ON CONFLICT DO NOTHING``, so
seeding is idempotent: running it again, or from two test processes, creates nothing new. Rows that
already exist are left as they are (a policy someone published stays published).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

# Fixed namespace for every seeded id; changing it would orphan previously seeded data.
SEED_NAMESPACE = uuid.UUID("52caf007-3f2b-4a69-ac2e-386fcd23c16f")

DEMO_BUSINESS_UNITS: tuple[str, ...] = ("Engineering", "Finance", "Operations")
DEMO_EMAIL_DOMAIN = "demo.example"
DEMO_POLICY_TITLE = "Acceptable Use Policy"

# Every n-th demo user (offset 1) is a compliance officer; user 0 is the admin.
_COMPLIANCE_OFFICER_EVERY = 10


def seed_id(kind: str, key: object) -> uuid.UUID:
    """The deterministic id of a seeded row, e.g. ``seed_id("user", 7)``."""
    return uuid.uuid5(SEED_NAMESPACE, f"{kind}:{key}")


@dataclass(frozen=True)
class DemoOrg:
    """Ids of what :func:`seed_demo_org` created (or found), for tests and demos to refer to."""

    business_unit_ids: tuple[uuid.UUID, ...]
    user_ids: tuple[uuid.UUID, ...]
    admin_id: uuid.UUID
    compliance_officer_ids: tuple[uuid.UUID, ...]
    policy_id: uuid.UUID
    # Active EMPLOYEE users of the policy's target units: who a distribution of the policy must reach.
    targeted_user_ids: frozenset[uuid.UUID]


def _demo_roles(index: int) -> list[str]:
    roles = ["USER", "EMPLOYEE"]
    if index == 0:
        roles.append("ADMIN")
    elif index % _COMPLIANCE_OFFICER_EVERY == 1:
        roles.append("COMPLIANCE_OFFICER")
    return roles


async def seed_demo_org(conn: asyncpg.Connection, *, users: int = 50) -> DemoOrg:
    """Create the demo organisation: 3 business units, ``users`` users, one DRAFT policy.

    Users are spread round-robin over the units. Everyone is USER and EMPLOYEE; user 0 is also ADMIN
    and every tenth user (1, 11, 21, ...) also COMPLIANCE_OFFICER. The policy targets EMPLOYEE in the
    first two units. Needs a migrated database.
    """
    if users < 1:
        raise ValueError("the demo organisation needs at least one user (its admin)")

    bu_ids = tuple(seed_id("business_unit", name) for name in DEMO_BUSINESS_UNITS)
    user_ids = tuple(seed_id("user", i) for i in range(users))
    user_bu = [bu_ids[i % len(bu_ids)] for i in range(users)]
    role_pairs = [(user_ids[i], role) for i in range(users) for role in _demo_roles(i)]
    officer_ids = tuple(uid for uid, role in role_pairs if role == "COMPLIANCE_OFFICER")
    policy_id = seed_id("policy", DEMO_POLICY_TITLE)
    target_bus = list(bu_ids[:2])

    async with conn.transaction():
        await conn.execute(
            "INSERT INTO business_units (id, name) SELECT * FROM unnest($1::uuid[], $2::text[]) "
            "ON CONFLICT (id) DO NOTHING",
            list(bu_ids),
            list(DEMO_BUSINESS_UNITS),
        )
        # Conflict target is the id only: a different user already holding a demo e-mail address
        # should fail loudly rather than leave DemoOrg pointing at ids that do not exist.
        await conn.execute(
            "INSERT INTO users (id, email, display_name, business_unit_id) "
            "SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[]) "
            "ON CONFLICT (id) DO NOTHING",
            list(user_ids),
            [f"user{i:05d}@{DEMO_EMAIL_DOMAIN}" for i in range(users)],
            [f"Demo User {i}" for i in range(users)],
            user_bu,
        )
        await conn.execute(
            "INSERT INTO user_roles (user_id, role) SELECT * FROM unnest($1::uuid[], $2::text[]) "
            "ON CONFLICT DO NOTHING",
            [uid for uid, _ in role_pairs],
            [role for _, role in role_pairs],
        )
        await conn.execute(
            """
            INSERT INTO policies (id, title, body, version, status, target_roles, target_business_unit_ids,
                                  created_by)
            VALUES ($1, $2, $3, 1, 'DRAFT', $4::text[], $5::uuid[], $6)
            ON CONFLICT (id) DO NOTHING
            """,
            policy_id,
            DEMO_POLICY_TITLE,
            "Company systems are for business use. Report lost devices within 24 hours. "
            "Do not share credentials.",
            ["EMPLOYEE"],
            target_bus,
            officer_ids[0] if officer_ids else user_ids[0],
        )

    targeted = frozenset(uid for uid, bu in zip(user_ids, user_bu, strict=True) if bu in target_bus)
    return DemoOrg(
        business_unit_ids=bu_ids,
        user_ids=user_ids,
        admin_id=user_ids[0],
        compliance_officer_ids=officer_ids,
        policy_id=policy_id,
        targeted_user_ids=targeted,
    )


async def seed_bulk_users(
    conn: asyncpg.Connection,
    count: int,
    business_unit_id: uuid.UUID | None,
    role: str | Sequence[str],
    *,
    start: int = 0,
) -> int:
    """Create users ``start .. start+count-1`` of a (unit, role) cohort in one statement; return how many
    were new.

    Set-based (``generate_series``) so 100k users take seconds, for load tests of policy distribution.
    Ids are ``md5(cohort:n)``, so repeating a call adds nothing and ``start`` lets callers grow a cohort
    in batches. ``role`` may be a list, e.g. ``["USER", "EMPLOYEE"]``; the first names the cohort.
    """
    if count < 0 or start < 0:
        raise ValueError("count and start must not be negative")
    roles = [role] if isinstance(role, str) else list(role)
    if not roles:
        raise ValueError("at least one role is needed")
    if count == 0:
        return 0
    cohort = seed_id("bulk_cohort", f"{business_unit_id}:{roles[0]}").hex[:12]
    inserted: int = await conn.fetchval(
        """
        WITH new_users AS (
            INSERT INTO users (id, email, display_name, business_unit_id)
            SELECT md5($1 || ':' || n)::uuid,
                   'load' || n || '@' || $1 || '.load.example',
                   'Load User ' || n,
                   $4::uuid
            FROM generate_series($2::bigint, $3::bigint) AS n
            ON CONFLICT (id) DO NOTHING
            RETURNING id
        ), new_roles AS (
            INSERT INTO user_roles (user_id, role)
            SELECT u.id, r.role FROM new_users u CROSS JOIN unnest($5::text[]) AS r(role)
            ON CONFLICT DO NOTHING
        )
        SELECT count(*) FROM new_users
        """,
        cohort,
        start,
        start + count - 1,
        business_unit_id,
        roles,
    )
    return inserted


async def seed_demo_assessment(
    conn: asyncpg.Connection, framework_id: uuid.UUID, business_unit_ids: Sequence[uuid.UUID]
) -> int:
    """A completed demo assessment per business unit with generated results for every assessable
    control, so a demo scorecard has something to show. Results are drawn from a hash of
    (unit, control): the same framework always gets the same results. Returns the results written."""
    written: int = await conn.fetchval(
        """
        WITH created AS (
            INSERT INTO assessments (id, name, framework_id, business_unit_id, status, completed_at)
            SELECT md5($1::uuid::text || ':' || unit)::uuid, 'Demo assessment (generated results)',
                   $1::uuid, unit, 'COMPLETED', now()
              FROM unnest($2::uuid[]) AS unit
            ON CONFLICT (id) DO NOTHING
            RETURNING id, business_unit_id
        ), results AS (
            INSERT INTO assessment_results (assessment_id, control_id, status, notes)
            SELECT a.id, c.id,
                   CASE WHEN draw < 55 THEN 'PASS' WHEN draw < 70 THEN 'PARTIAL' WHEN draw < 85 THEN 'FAIL'
                        WHEN draw < 90 THEN 'NOT_APPLICABLE' ELSE 'NOT_TESTED' END,
                   'Generated for the demo'
              FROM created a JOIN controls c ON c.framework_id = $1::uuid AND c.assessable AND NOT c.withdrawn
             CROSS JOIN LATERAL (
                 SELECT get_byte(decode(md5(a.business_unit_id::text || c.ref_id), 'hex'), 0) * 100 / 256
             ) AS d(draw)
            ON CONFLICT DO NOTHING
            RETURNING 1
        )
        SELECT count(*) FROM results
        """,
        framework_id,
        list(business_unit_ids),
    )
    return written
