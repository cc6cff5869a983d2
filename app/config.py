"""Service configuration, read once from environment variables.

Every variable is listed (with its default) in README.md; defaults suit a developer laptop,
production overrides them in k8s/.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from uuid import UUID


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, str(default)))


# Largest file accepted by an upload endpoint (POST /imports).
MAX_UPLOAD_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    app_id: str = field(default_factory=lambda: _env("APP_ID", "governance-jobs"))
    kafka_bootstrap_servers: str = field(
        default_factory=lambda: _env("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
    )
    topic_partitions: int = field(default_factory=lambda: _env_int("TOPIC_PARTITIONS", 12))
    topic_replication_factor: int = field(default_factory=lambda: _env_int("TOPIC_REPLICATION_FACTOR", 1))
    topic_min_insync_replicas: int = field(default_factory=lambda: _env_int("TOPIC_MIN_INSYNC_REPLICAS", 1))
    topic_retention_ms: int = field(
        default_factory=lambda: _env_int("TOPIC_RETENTION_MS", 7 * 24 * 3600 * 1000)
    )
    # Short group timeouts make local runs and tests rebalance in seconds; production keeps
    # Kafka's safer defaults through these variables.
    broker_session_timeout: float = field(default_factory=lambda: _env_float("BROKER_SESSION_TIMEOUT", 60.0))
    broker_heartbeat_interval: float = field(
        default_factory=lambda: _env_float("BROKER_HEARTBEAT_INTERVAL", 3.0)
    )
    broker_rebalance_timeout: float = field(
        default_factory=lambda: _env_float("BROKER_REBALANCE_TIMEOUT", 60.0)
    )
    database_url: str = field(
        default_factory=lambda: _env("DATABASE_URL", "postgresql://governance@localhost:5432/governance")
    )
    db_pool_min: int = field(default_factory=lambda: _env_int("DB_POOL_MIN", 1))
    db_pool_max: int = field(default_factory=lambda: _env_int("DB_POOL_MAX", 10))
    s3_endpoint_url: str = field(default_factory=lambda: _env("S3_ENDPOINT_URL", "http://localhost:9000"))
    s3_access_key_id: str = field(default_factory=lambda: _env("S3_ACCESS_KEY_ID", "governance"))
    s3_secret_access_key: str = field(
        default_factory=lambda: _env("S3_SECRET_ACCESS_KEY", "governance-secret")
    )
    s3_region: str = field(default_factory=lambda: _env("S3_REGION", "us-east-1"))
    s3_bucket: str = field(default_factory=lambda: _env("S3_BUCKET", "governance"))
    web_host: str = field(default_factory=lambda: _env("WEB_HOST", "127.0.0.1"))
    web_port: int = field(default_factory=lambda: _env_int("WEB_PORT", 6066))
    # The URL other workers use to reach this one when they route a status request here;
    # in k8s it is the pod IP from the downward API.
    canonical_url: str = field(default_factory=lambda: _env("NODE_CANONICAL_URL", ""))
    jwt_algorithm: str = field(default_factory=lambda: _env("JWT_ALGORITHM", "HS256"))
    jwt_secret: str = field(default_factory=lambda: _env("JWT_SECRET", ""))
    jwt_public_key: str = field(default_factory=lambda: _env("JWT_PUBLIC_KEY", ""))
    payload_encryption_key: str = field(default_factory=lambda: _env("PAYLOAD_ENCRYPTION_KEY", ""))
    shutdown_grace_seconds: float = field(default_factory=lambda: _env_float("SHUTDOWN_GRACE_SECONDS", 60.0))
    # Key of the HMAC-SHA256 signature on every webhook we post (X-Governance-Signature).
    webhook_signing_secret: str = field(default_factory=lambda: _env("WEBHOOK_SIGNING_SECRET", ""))
    # People told (in-app JOB_FAILED) when a job goes to a dead-letter topic.
    oncall_user_ids: tuple[UUID, ...] = field(
        default_factory=lambda: tuple(UUID(u) for u in _env("ONCALL_USER_IDS", "").split(",") if u.strip())
    )
    log_level: str = field(default_factory=lambda: _env("LOG_LEVEL", "INFO"))
    # Outgoing mail. SMTP_STARTTLS upgrades the connection before AUTH (required when a username is
    # set unless SMTP_STARTTLS=false is chosen explicitly for a local relay); SMTP_CA_FILE trusts a
    # private CA. One connection per worker is reused across jobs.
    smtp_host: str = field(default_factory=lambda: _env("SMTP_HOST", "localhost"))
    smtp_port: int = field(default_factory=lambda: _env_int("SMTP_PORT", 587))
    smtp_username: str = field(default_factory=lambda: _env("SMTP_USERNAME", ""))
    smtp_password: str = field(default_factory=lambda: _env("SMTP_PASSWORD", ""))
    smtp_starttls: bool = field(default_factory=lambda: _env("SMTP_STARTTLS", "true").lower() != "false")
    smtp_ca_file: str = field(default_factory=lambda: _env("SMTP_CA_FILE", ""))
    smtp_sender: str = field(default_factory=lambda: _env("SMTP_SENDER", "GRC Platform <grc@localhost>"))
    # Deployment-wide limits, shared by every pod through PostgreSQL (app.ratelimit).
    notification_rate_per_second: float = field(
        default_factory=lambda: _env_float("NOTIFICATION_RATE_PER_SECOND", 100.0)
    )
    email_rate_per_second: float = field(default_factory=lambda: _env_float("EMAIL_RATE_PER_SECOND", 50.0))
    # Where a policy distribution with the WEBHOOK channel posts (comma-separated URLs).
    policy_webhook_urls: tuple[str, ...] = field(
        default_factory=lambda: tuple(
            u.strip() for u in _env("POLICY_WEBHOOK_URLS", "").split(",") if u.strip()
        )
    )
    # A flow partition with waiting jobs that no one consumes for this long makes /health fail.
    partition_stall_seconds: float = field(
        default_factory=lambda: _env_float("PARTITION_STALL_SECONDS", 120.0)
    )
    # Processes rendering PDF and XLSX files (reports, exports), shared by every flow of a worker.
    render_processes: int = field(default_factory=lambda: _env_int("RENDER_PROCESSES", 2))
    # Links in notifications point here, e.g. {portal_url}/policies/<id>.
    portal_url: str = field(default_factory=lambda: _env("PORTAL_URL", "http://localhost:3000"))

    @property
    def node_url(self) -> str:
        return self.canonical_url or f"http://{self.web_host}:{self.web_port}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
