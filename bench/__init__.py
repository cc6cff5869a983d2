"""Benchmarks, one module each (`python -m bench.<name>`); `make bench` runs them all."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from app.db import connect
from models import JobEnvelope
from tests.service import produce_raw


def result(name: str, value: float, unit: str) -> None:
    """One figure, in the form `make bench` output and bench/RESULTS.md quote."""
    print(f"RESULT {name} {value:.3f} {unit}", flush=True)


async def time_job(env: dict[str, str], envelope: JobEnvelope) -> tuple[float, dict[str, Any]]:
    """Seconds from publishing the job (with a plain Kafka client) to its COMPLETED row, and its
    result; a job that ends DEAD stops the benchmark with its error."""
    conn = await connect(env["DATABASE_URL"])
    try:
        started = time.perf_counter()
        await produce_raw(
            env["KAFKA_BOOTSTRAP_SERVERS"],
            envelope.topic,
            str(envelope.job_id).encode(),
            envelope.model_dump_json().encode(),
        )
        while True:
            row = await conn.fetchrow("SELECT status, result, error FROM jobs WHERE id = $1", envelope.job_id)
            if row is not None and row["status"] in ("COMPLETED", "DEAD"):
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    if row["status"] != "COMPLETED":
        raise SystemExit(f"{envelope.job_type.value} job ended {row['status']}: {row['error']}")
    return elapsed, row["result"]
