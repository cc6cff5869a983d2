"""Prometheus metrics of the job layer, on one registry that /metrics serves."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

# Buckets follow the design's job duration summary: notifications take milliseconds,
# audit packages minutes.
DURATION_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)

JOBS_COMPLETED = Counter(
    "governance_jobs_completed_total", "Jobs that completed", ["queue", "job_type"], registry=REGISTRY
)
JOBS_FAILED = Counter(
    "governance_jobs_failed_total",
    "Job attempts that failed, by error type",
    ["queue", "job_type", "error_type"],
    registry=REGISTRY,
)
JOBS_SKIPPED_DUPLICATE = Counter(
    "governance_jobs_duplicate_total",
    "Deliveries of a job id that had already finished, skipped",
    ["queue"],
    registry=REGISTRY,
)
JOB_DURATION = Histogram(
    "governance_job_duration_seconds",
    "Wall time of one job attempt",
    ["queue", "job_type"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
JOBS_ACTIVE = Gauge("governance_jobs_active", "Jobs running on this worker", ["queue"], registry=REGISTRY)
JOBS_WAITING = Gauge(
    "governance_jobs_waiting",
    "Consumer lag: messages in this worker's partitions not yet processed",
    ["queue"],
    registry=REGISTRY,
)
INTAKE_REQUESTS = Counter(
    "governance_intake_requests_total",
    "HTTP intake requests by endpoint and status code",
    ["endpoint", "status"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "governance_job_retries_total",
    "Jobs republished to a retry tier",
    ["queue", "tier"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "governance_dead_letters_total",
    "Jobs and unreadable messages sent to a dead-letter topic",
    ["queue", "error_type"],
    registry=REGISTRY,
)
DLQ_UNRESOLVED = Gauge(
    "governance_queue_dlq_jobs_total",
    "Dead letters not yet retried or purged (from PostgreSQL at scrape time)",
    ["queue"],
    registry=REGISTRY,
)
POLICY_ASSIGNMENTS = Counter(
    "governance_policy_assignments_total",
    "Policy assignments created by distributions",
    registry=REGISTRY,
)
NOTIFICATIONS_SENT = Counter(
    "governance_notifications_sent_total",
    "Notifications delivered (in-app rows, e-mails accepted by the server, webhook 2xx)",
    ["channel"],
    registry=REGISTRY,
)
RATE_LIMIT_WAIT = Histogram(
    "governance_rate_limit_wait_seconds",
    "Time spent waiting for a deployment-wide rate limit",
    ["limit"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30),
    registry=REGISTRY,
)
