"""PostgreSQL access: the bounded connection pool and the schema migrator.

Migrations are the numbered ``app/migrations/NNNN_name.sql`` files shipped inside the package, so the
image that runs the code also carries the schema it expects. Run them with ``python -m app.db`` (a k8s
init container or a pod at start-up); every pod may do so at once, the advisory lock serialises them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Sequence
from importlib import resources
from typing import Any

import asyncpg

from app.config import Settings, get_settings

log = logging.getLogger(__name__)

_MIGRATION_FILE = re.compile(r"^(?P<version>\d{4})_(?P<label>[a-z0-9_]+)\.sql$")

# Key of the session-level advisory lock held while migrating. Any constant works as long as every pod
# uses the same one; advisory locks are per database, so migrations of different databases never wait
# for each other. (Bytes of "grc_migr", kept below 2**63 to fit PostgreSQL's bigint.)
MIGRATION_LOCK_KEY = int.from_bytes(b"grc_migr", "big")

_SCHEMA_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version       text PRIMARY KEY,
    name          text NOT NULL,
    checksum      text NOT NULL,          -- sha256 of the file's bytes when it was applied
    applied_at    timestamptz NOT NULL DEFAULT now(),
    execution_ms  integer NOT NULL
)
"""


class MigrationError(RuntimeError):
    """The migration files and the database disagree; a human has to decide what to do."""


@dataclasses.dataclass(frozen=True)
class Migration:
    """One migration file: ``version`` is its 4-digit prefix, ``name`` the whole file name."""

    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def load_migrations() -> list[Migration]:
    """Read the packaged migration files in version order.

    A ``.sql`` file that does not follow ``NNNN_lower_snake.sql`` is an error rather than skipped:
    silently ignoring a misnamed migration would leave the schema behind the code.
    """
    root = resources.files("app").joinpath("migrations")
    found: dict[str, Migration] = {}
    for entry in root.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _MIGRATION_FILE.match(entry.name)
        if match is None:
            raise MigrationError(f"migration file {entry.name!r} is not named NNNN_lower_snake_case.sql")
        version = match["version"]
        if version in found:
            raise MigrationError(
                f"two migration files share version {version}: {found[version].name} and {entry.name}"
            )
        found[version] = Migration(version=version, name=entry.name, sql=entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found, key=int)]


async def migrate(dsn: str, *, migrations: Sequence[Migration] | None = None) -> list[str]:
    """Apply pending migrations and return the versions applied now (empty when up to date).

    Each file runs in its own transaction together with its ``schema_migrations`` row, so a failure
    leaves the schema at the previous version. A session-level advisory lock makes concurrent callers
    (several pods starting together) queue: the first applies, the rest find nothing pending.
    ``migrations`` defaults to the packaged files; tests pass their own.
    """
    wanted = list(load_migrations() if migrations is None else migrations)
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    try:
        # Released by closing the connection below, also when a migration fails.
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        return await _apply_pending(conn, wanted)
    finally:
        await conn.close()


async def _apply_pending(conn: asyncpg.Connection, wanted: list[Migration]) -> list[str]:
    # Created under the lock: two concurrent CREATE TABLE IF NOT EXISTS can still collide in pg_type.
    await conn.execute(_SCHEMA_MIGRATIONS_DDL)
    rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
    applied = {row["version"]: row for row in rows}

    changed = [
        f"{m.name} (applied as {applied[m.version]['name']} with sha256 {applied[m.version]['checksum']}, "
        f"file now {m.checksum})"
        for m in wanted
        if m.version in applied and applied[m.version]["checksum"] != m.checksum
    ]
    if changed:
        raise MigrationError(
            "applied migration files were modified: "
            + "; ".join(changed)
            + ". Restore the original file and put the change in a new migration."
        )
    unknown = sorted(set(applied) - {m.version for m in wanted}, key=int)
    if unknown:
        # Normal during a rolling deploy: a newer pod already migrated further than this code knows.
        log.warning("database has migrations this code does not know: %s", ", ".join(unknown))

    done: list[str] = []
    for m in wanted:
        if m.version in applied:
            continue
        started = time.monotonic()
        async with conn.transaction():
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum, execution_ms) "
                "VALUES ($1, $2, $3, $4)",
                m.version,
                m.name,
                m.checksum,
                int((time.monotonic() - started) * 1000),
            )
        log.info("applied migration %s", m.name)
        done.append(m.version)
    return done


def _json_default(value: Any) -> Any:
    """Encode the non-JSON types job payloads commonly carry instead of failing the write."""
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps_json(value: Any) -> str:
    """The encoder used for json/jsonb parameters (compact, UUIDs and datetimes as strings)."""
    return json.dumps(value, default=_json_default, separators=(",", ":"))


async def init_connection(conn: asyncpg.Connection) -> None:
    """Make json/jsonb parameters and results plain Python values (dict, list, ...).

    Without this asyncpg passes json as ``str`` both ways. Note that a ``str`` argument is now encoded
    as a JSON string literal, so pass the dict, not ``json.dumps(dict)``.
    """
    for type_name in ("jsonb", "json"):
        await conn.set_type_codec(
            type_name, schema="pg_catalog", encoder=dumps_json, decoder=json.loads, format="text"
        )


async def connect(dsn: str) -> asyncpg.Connection:
    """A single connection with the same codecs as the pool (scripts, seeding, tests)."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    await init_connection(conn)
    return conn


async def create_pool(settings: Settings | None = None) -> asyncpg.Pool:
    """The process-wide pool, bounded by DB_POOL_MIN/DB_POOL_MAX.

    The upper bound matters more than speed: every worker pod holds up to ``db_pool_max`` connections,
    and pods x pool size must stay under the server's max_connections.
    """
    settings = settings or get_settings()
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn=settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        init=init_connection,
    )
    return pool


async def _main() -> None:
    logging.basicConfig(level=get_settings().log_level)
    applied = await migrate(get_settings().database_url)
    log.info("migrations applied: %s", ", ".join(applied) if applied else "none (up to date)")


if __name__ == "__main__":
    asyncio.run(_main())
