"""Endpoints for operators and Kubernetes: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faust.web import Request, Response, View
from prometheus_client import generate_latest

from app import deadletters, metrics
from app.faust_app import faust_app
from app.resources import resources
from models import Flow

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 3.0
_TOPIC_QUEUE = {flow.topic: flow.value for flow in Flow}


class Lifecycle:
    """Set when SIGTERM arrives, so readiness fails at once and the pod leaves the Service."""

    stopping = False


@faust_app.page("/health")
class Health(View):
    async def get(self, request: Request) -> Response:
        return self.json({"status": "ok", "stopping": Lifecycle.stopping})


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
