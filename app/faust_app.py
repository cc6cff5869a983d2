"""The Faust application: one per worker process, imported by every agent module.

Settings follow ../docs/decisions.md: at-least-once delivery, agent concurrency 1 (parallelism
comes from batches, see app.runner), raw bytes on the wire with pydantic at the edges, and an
in-memory table store because the only table (job status) is small and rebuilt from its
changelog; PostgreSQL is the durable record.
"""

from __future__ import annotations

from typing import Any

import faust

from app.config import MAX_UPLOAD_BYTES, get_settings
from app.logs import JsonFormatter

settings = get_settings()


def logging_config(level: str) -> dict[str, Any]:
    """dictConfig for the Faust worker, so its own log lines are JSON and redacted too."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json"}},
        "root": {"handlers": ["stdout"], "level": level.upper()},
        "loggers": {
            name: {"level": "WARNING"} for name in ("aiokafka", "faust.transport", "faust.tables", "mode")
        },
    }


faust_app = faust.App(
    settings.app_id,
    broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
    store="memory://",
    processing_guarantee="at_least_once",
    key_serializer="raw",
    value_serializer="raw",
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=settings.topic_replication_factor,
    topic_allow_declare=True,
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=settings.broker_session_timeout,
    broker_heartbeat_interval=settings.broker_heartbeat_interval,
    broker_rebalance_timeout=settings.broker_rebalance_timeout,
    broker_commit_interval=1.0,
    broker_max_poll_records=200,
    stream_buffer_maxsize=512,
    stream_wait_empty=True,
    producer_acks=-1,
    table_standby_replicas=0,
    web_port=settings.web_port,
    web_bind="0.0.0.0",
    web_host=settings.web_host,
    canonical_url=settings.node_url,
    web_tables_enabled=False,
    # aiohttp refuses bodies over 1 MB by default; uploads (POST /imports) may be larger.
    web_application_options={"client_max_size": MAX_UPLOAD_BYTES + 1024 * 1024},
    timezone="UTC",
    logging_config=logging_config(settings.log_level),
    worker_redirect_stdouts=False,
    stream_recovery_delay=0.5,
)
