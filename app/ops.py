"""Endpoints for operators and Kubernetes: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faust.web import Request, Response, View
from prometheus_client import generate_latest

from app import deadletters, metrics
from app.config import get_settings
from app.faust_app import faust_app
from app.resources import resources
from models import Flow

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 3.0
_TOPIC_QUEUE = {flow.topic: flow.value for flow in Flow}


class Lifecycle:
    """Set when SIGTERM arrives, so readiness fails at once and the pod leaves the Service."""

    stopping = False


class Stalls:
    """Flow partitions with waiting jobs whose committed offset has not moved for a while.

    Faust can leave a partition unfetched after a rebalance until the next one (faust-streaming
    #629; seen here after a worker was killed). The jobs are safe (uncommitted) but wait. A
    worker that is idle while one of its flow partitions has lag that does not move is reported
    unhealthy, so Kubernetes' liveness probe restarts it and the rebalance hands the partition
    out again. Flow topics never hold a message (early jobs are parked in retry tiers), so lag
    that stands still there while no job runs means nobody is consuming it.
    """

    progress: dict[str, tuple[int, float]] = {}  # partition -> (committed offset, when it last moved)
    stalled: list[str] = []


def find_stalls(
    progress: dict[str, tuple[int, float]],
    partitions: list[tuple[str, int, int]],
    *,
    now: float,
    limit: float,
    busy: bool,
) -> list[str]:
    """Partitions (name, committed, highwater) whose lag has stood still for `limit` seconds on an
    idle worker. `progress` remembers each one's committed offset and when it last moved."""
    stalled = []
    for name, committed, highwater in partitions:
        previous = progress.get(name)
        if previous is None or previous[0] != committed or highwater <= committed or busy:
            progress[name] = (committed, now)
        elif now - previous[1] > limit:
            stalled.append(f"{name} lag {highwater - committed} for {now - previous[1]:.0f} s")
    return stalled


@faust_app.timer(5.0)
async def watch_for_stalls() -> None:
    try:
        consumer = faust_app.consumer
        partitions = [
            (
                f"{tp.topic}[{tp.partition}]",
                consumer._committed_offset.get(tp) or 0,
                consumer.highwater(tp) or 0,
            )
            for tp in consumer.assignment()
            if tp.topic in _TOPIC_QUEUE
        ]
        busy = faust_app.rebalancing or any(
            sample.value > 0 for sample in metrics.JOBS_ACTIVE.collect()[0].samples
        )
        stalled = find_stalls(
            Stalls.progress,
            partitions,
            now=asyncio.get_running_loop().time(),
            limit=get_settings().partition_stall_seconds,
            busy=busy,
        )
        if stalled and not Stalls.stalled:
            log.error("flow partitions stalled; reporting unhealthy", extra={"stalled": stalled})
        Stalls.stalled = stalled
    except Exception:
        log.exception("stall check failed")


@faust_app.page("/health")
class Health(View):
    async def get(self, request: Request) -> Response:
        healthy = not Stalls.stalled
        body = {
            "status": "ok" if healthy else "stalled",
            "stalled": Stalls.stalled,
            "stopping": Lifecycle.stopping,
        }
        return self.json(body, status=200 if healthy else 503)


async def _check(name: str, probe: Any) -> tuple[str, str | None]:
    try:
        await asyncio.wait_for(probe(), CHECK_TIMEOUT)
    except Exception as exc:
        return name, f"{type(exc).__name__}: {exc}"[:300]
    return name, None


async def _database() -> None:
    async with (await resources.pool()).acquire() as conn:
        await conn.fetchval("SELECT 1")


async def _storage() -> None:
    await (await resources.storage()).check()


async def _kafka() -> None:
    client = faust_app.producer._ensure_producer().client  # type: ignore[attr-defined]
    if not await client.force_metadata_update():
        raise RuntimeError("broker metadata could not be refreshed")


async def _partitions() -> None:
    if faust_app.rebalancing or getattr(faust_app, "in_recovery", False):
        raise RuntimeError("rebalancing: partitions are being reassigned or recovered")
    if not faust_app.consumer.assignment():
        raise RuntimeError("no partitions assigned yet")


@faust_app.page("/ready")
class Ready(View):
    async def get(self, request: Request) -> Response:
        results = dict(
            await asyncio.gather(
                _check("kafka", _kafka),
                _check("database", _database),
                _check("storage", _storage),
                _check("partitions", _partitions),
            )
        )
        if Lifecycle.stopping:
            results["lifecycle"] = "shutting down"
        ready = not any(results.values())
        checks = {name: (error or "ok") for name, error in results.items()}
        return self.json({"ready": ready, "checks": checks}, status=200 if ready else 503)


def refresh_lag() -> None:
    """Waiting jobs per queue: messages in this worker's partitions not yet committed."""
    consumer = faust_app.consumer
    waiting: dict[str, int] = dict.fromkeys(_TOPIC_QUEUE.values(), 0)
    for tp in consumer.assignment():
        queue = _TOPIC_QUEUE.get(tp.topic)
        if queue is None:
            continue
        try:
            highwater = consumer.highwater(tp)
        except Exception:
            continue
        committed = consumer._committed_offset.get(tp) or 0
        waiting[queue] += max(0, (highwater or 0) - committed)
    for queue, count in waiting.items():
        metrics.JOBS_WAITING.labels(queue).set(count)


async def refresh_dead_letters() -> None:
    async with (await resources.pool()).acquire() as conn:
        counts = await deadletters.unresolved_counts(conn)
    for flow in Flow:
        metrics.DLQ_UNRESOLVED.labels(flow.value).set(counts.get(flow.value, 0))


@faust_app.page("/metrics")
class Metrics(View):
    async def get(self, request: Request) -> Response:
        try:
            refresh_lag()
            await asyncio.wait_for(refresh_dead_letters(), CHECK_TIMEOUT)
        except Exception:
            log.exception("lag or dead-letter gauges not available")
        return self.bytes(generate_latest(metrics.REGISTRY), content_type="text/plain; version=0.0.4")
