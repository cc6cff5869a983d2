"""Retry schedules, retry-tier topics and dead-letter topics of every flow.

A failed job is not retried in place (that would block its partition); it is republished to
the retry tier of its next delay, `governance.<flow>.retry.<delay>`, where a consumer holds it
until due and runs it again. Every message in one tier has the same delay, so each tier is
ordered by due time and the consumer only ever waits for its head. A job that cannot succeed
ends in `governance.<flow>.dlq` with the reason.

Schedules default to the design's table and can be overridden per flow with
`RETRY_<FLOW>=<max attempts>:<delay>,<delay>,...` (seconds), e.g. `RETRY_POLICY=5:2,10,30,60`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from models import Flow, JobEnvelope

# Rate-limited retries do not use up attempts, but there is a limit to patience.
MAX_RATE_LIMIT_DEFERRALS = 20


@dataclass(frozen=True)
class RetrySchedule:
    max_attempts: int
    delays: tuple[float, ...]  # delay after the 1st, 2nd, ... failure; the last one repeats

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait before attempt + 1, after attempt `attempt` failed."""
        return self.delays[min(attempt, len(self.delays)) - 1]

    @property
    def tiers(self) -> tuple[float, ...]:
        return tuple(sorted(set(self.delays)))

    def tier_for(self, delay: float) -> float:
        """The shortest tier at least `delay` long (the longest tier if none is)."""
        return next((tier for tier in self.tiers if tier >= delay), self.tiers[-1])

    @classmethod
    def parse(cls, text: str) -> RetrySchedule:
        attempts, _, delays = text.partition(":")
        schedule = cls(int(attempts), tuple(float(d) for d in delays.split(",") if d.strip()))
        if schedule.max_attempts < 1 or not schedule.delays or min(schedule.delays) <= 0:
            raise ValueError(f"bad retry schedule {text!r}: want '<attempts>:<seconds>,<seconds>,...'")
        return schedule


DEFAULT_SCHEDULES: dict[Flow, RetrySchedule] = {
    Flow.POLICY: RetrySchedule(5, (2, 10, 30, 60)),
    Flow.ASSESSMENT: RetrySchedule(3, (5,)),
    Flow.REPORTING: RetrySchedule(2, (10,)),
    Flow.EVIDENCE: RetrySchedule(5, (3, 6, 12, 24)),
    Flow.NOTIFICATION: RetrySchedule(10, (1,)),
    Flow.EXPORT: RetrySchedule(3, (5, 10)),
    Flow.AUDIT: RetrySchedule(2, (30,)),
    Flow.IMPORT: RetrySchedule(3, (5, 10)),
}


def schedule_for(flow: Flow) -> RetrySchedule:
    override = os.environ.get(f"RETRY_{flow.name}")
    return RetrySchedule.parse(override) if override else DEFAULT_SCHEDULES[flow]


def capped(envelope: JobEnvelope) -> JobEnvelope:
    """The envelope with max_attempts no higher than its flow's schedule: what the runner enforces,
    and so what job rows and status answers show."""
    cap = schedule_for(envelope.flow).max_attempts
    return envelope if envelope.max_attempts <= cap else envelope.model_copy(update={"max_attempts": cap})


def tier_label(delay: float) -> str:
    return f"{delay:g}s"


def retry_topic(flow: Flow, delay: float) -> str:
    return f"{flow.topic}.retry.{tier_label(delay)}"


def dead_letter_topic(flow: Flow) -> str:
    return f"{flow.topic}.dlq"


def reliability_topics() -> tuple[str, ...]:
    """Every retry tier and dead-letter topic, for provisioning."""
    names: list[str] = []
    for flow in Flow:
        names.extend(retry_topic(flow, tier) for tier in schedule_for(flow).tiers)
        names.append(dead_letter_topic(flow))
    return tuple(names)
