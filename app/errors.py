"""Error classes that decide what happens to a failed job.

Unknown exceptions are retryable by default; handlers raise the classes below when they know
better. (Retry topics and dead letters act on these classes; see docs/decisions.md.)
"""

from __future__ import annotations


class JobError(Exception):
    """Base for errors a handler raises on purpose."""

    retryable = True


class NonRetryableError(JobError):
    """Running the job again cannot succeed: invalid data, missing entity, no permission."""

    retryable = False


class InvalidJobError(NonRetryableError):
    """The message is not a job we can read: not JSON, wrong schema, unknown type."""


class NotFoundError(NonRetryableError):
    """An entity the job refers to does not exist."""


class UnsupportedJobError(NonRetryableError):
    """No handler for this job type runs on this worker version."""


class RateLimitedError(JobError):
    """The remote side asked us to slow down; retry after `retry_after` seconds.

    A rate-limited retry does not use up an attempt (up to a cap), because nothing about the
    job itself failed.
    """

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
