"""Create or check the job layer's topics with explicit partitions, replication and retention.

Topics are provisioned before workers start (FAUST_NOTES: an agent whose topic is missing
subscribes to nothing until restart). An existing topic with too few partitions is reported,
not silently grown: adding partitions remaps keys and would split a job's status history.

The status table's changelog is provisioned here too, compacted and with the same partition
count as the job-events topic, under the name Faust gives it (`<APP_ID>-job-status-changelog`):
a worker that had to create it itself could write to it before the broker's metadata knew
it, and Faust then crashes the status agent with a partitions mismatch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from app.config import Settings
from app.retry import reliability_topics
from models import ALL_TOPICS


@dataclass(frozen=True)
class TopicReport:
    name: str
    action: str  # "created", "ok" or "mismatch: ..."


def topic_configs(settings: Settings, name: str) -> dict[str, str]:
    if name == changelog_topic(settings):
        policy = {"cleanup.policy": "compact"}
    else:
        policy = {"cleanup.policy": "delete", "retention.ms": str(settings.topic_retention_ms)}
    return {**policy, "min.insync.replicas": str(settings.topic_min_insync_replicas)}


def changelog_topic(settings: Settings) -> str:
    return f"{settings.app_id}-job-status-changelog"


async def ensure_topics(settings: Settings, names: tuple[str, ...] | None = None) -> list[TopicReport]:
    names = names or (*ALL_TOPICS, *reliability_topics(), changelog_topic(settings))
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=15000)
    await admin.start()
    try:
        # list_topics, unlike a metadata request naming a topic, never auto-creates one.
        present = set(await admin.list_topics())
        missing = [name for name in names if name not in present]
        reports: list[TopicReport] = [TopicReport(name, "created") for name in missing]
        if missing:
            new = [
                NewTopic(
                    name=name,
                    num_partitions=settings.topic_partitions,
                    replication_factor=settings.topic_replication_factor,
                    topic_configs=topic_configs(settings, name),
                )
                for name in missing
            ]
            # Another pod may create them between our listing and create.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
        existing = [name for name in names if name in present]
        for meta in await admin.describe_topics(existing) if existing else []:
            partitions = len(meta["partitions"])
            replicas = min((len(p["replicas"]) for p in meta["partitions"]), default=0)
            problems = []
            if partitions < settings.topic_partitions:
                problems.append(f"{partitions} partitions, want {settings.topic_partitions}")
            if replicas < settings.topic_replication_factor:
                problems.append(f"replication {replicas}, want {settings.topic_replication_factor}")
            action = "mismatch: " + "; ".join(problems) if problems else "ok"
            reports.append(TopicReport(meta["topic"], action))
        return sorted(reports, key=lambda r: r.name)
    finally:
        await admin.close()
