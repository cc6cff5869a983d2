"""Rate limits that hold for the whole deployment, not per pod.

A limiter is one row in PostgreSQL holding its theoretical arrival time (the generic cell rate
algorithm): taking n units moves it n/rate seconds later and hands the caller the moment its
units start. The clock is PostgreSQL's, shared by every pod, so three pods together still send
at most `rate` per second, and there is no burst beyond the rate. Waiting happens in the caller;
nothing is failed and no attempt is used.
"""

from __future__ import annotations

import asyncio

import asyncpg

from app import metrics
from app.errors import RateLimitedError
from app.faust_app import faust_app
from app.ops import Lifecycle

# One reservation reaches at most this far ahead; beyond it the caller waits and asks again, so a
# stopping worker does not hold slots it will never use.
RESERVE_AHEAD_SECONDS = 2.0


async def reserve(
    pool: asyncpg.Pool, name: str, rate: float, units: int, max_wait: float
) -> tuple[bool, float]:
    """Try to take `units` from limiter `name`: (True, seconds until they start) when reserved,
    (False, seconds until the limiter is free) when the start would be more than `max_wait` away.

    A limiter's row is created by its first call, which the same statement's UPDATE cannot see
    yet: that call answers (False, 0) and the caller's next try reserves."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            """
            WITH clock AS (SELECT clock_timestamp() AS t),
            ensured AS (
                INSERT INTO rate_limits (name, tat) SELECT $1, t FROM clock
                ON CONFLICT (name) DO NOTHING
            ),
            taken AS (
                UPDATE rate_limits r
                   SET tat = greatest(r.tat, clock.t) + make_interval(secs => $2)
                  FROM clock
                 WHERE r.name = $1 AND r.tat - clock.t <= make_interval(secs => $3)
                RETURNING extract(epoch FROM r.tat - clock.t)::float8 - $2 AS wait
            )
            SELECT (SELECT wait FROM taken) AS reserved_wait,
                   (SELECT extract(epoch FROM r.tat - clock.t)::float8
                      FROM rate_limits r, clock WHERE r.name = $1) AS busy_wait
            """,
            name,
            units / rate,
            max_wait,
        )
    if row["reserved_wait"] is not None:
        return True, max(0.0, row["reserved_wait"])
    return False, max(0.0, row["busy_wait"] or 0.0)


async def acquire(
    pool: asyncpg.Pool, name: str, rate: float, units: int = 1, *, within: float | None = None
) -> None:
    """Wait until `units` may go under limiter `name`.

    Gives up with RateLimitedError, which sends the job to a retry tier without using an
    attempt, when the start is more than `within` seconds away (a job that must finish inside
    its time limit) or when the worker starts rebalancing or stopping.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = None if within is None else started + within
    while True:
        ahead = (
            RESERVE_AHEAD_SECONDS if deadline is None else min(RESERVE_AHEAD_SECONDS, deadline - loop.time())
        )
        reserved, wait = await reserve(pool, name, rate, units, ahead)
        if reserved:
            await asyncio.sleep(wait)
            metrics.RATE_LIMIT_WAIT.labels(name).observe(loop.time() - started)
            return
        out_of_time = deadline is not None and loop.time() + wait > deadline
        if out_of_time or faust_app.rebalancing or Lifecycle.stopping:
            raise RateLimitedError(f"rate limit {name} is busy for {wait:.1f} s", retry_after=wait)
        await asyncio.sleep(max(0.05, min(wait - ahead / 2, RESERVE_AHEAD_SECONDS)))
