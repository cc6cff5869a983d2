"""Job lifecycle: events on ``governance.job-events`` and the status view folded from them.

Lifecycle of one job (``n`` is the attempt an event is about)::

    QUEUED(1) -> ACTIVE(n) ... ACTIVE(n) -> COMPLETED(n)
                          \\-> FAILED(n) -> RETRYING(n) -> ACTIVE(n+1) ...
                                        \\-> DEAD(n)

FAILED means "attempt n raised"; the worker then decides RETRYING (attempt n+1 is scheduled)
or DEAD (attempts exhausted or error not retryable; the envelope goes to the dead-letter topic).
COMPLETED and DEAD are terminal.

Several workers may write events for one job (a retry can run on another worker while a slow
attempt is still reporting), so events can arrive out of order. :func:`apply_event` therefore
orders events by content, not by arrival:

1. A terminal status is final: no later event changes its state, attempt, progress, message,
   result or error (it is still recorded in ``history``). If two different terminal events exist
   (a duplicate execution), the first one applied wins.
2. A terminal event always wins over a non-terminal status, whatever its attempt: once any
   attempt completed, the job is done.
3. Otherwise the event with the greatest ``(attempt, phase, at, progress)`` wins, where phase is
   QUEUED < ACTIVE < FAILED < RETRYING. So a late ACTIVE from attempt 1 never overrides
   attempt 2, and a stale progress update never overrides a newer one.

Hence, except for conflicting terminal events, folding any permutation of the same events gives
the same status, and applying an event twice is harmless.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self
from uuid import UUID

from pydantic import BeforeValidator, Field, JsonValue, StringConstraints, model_validator

from models.common import Bool, ContractModel, Int, ShortText, UtcDatetime, truncate, utcnow
from models.envelope import SCHEMA_VERSION, CorrelationId, JobEnvelope
from models.flows import JOB_EVENTS_TOPIC, JobType


class JobState(StrEnum):
    """Lifecycle state of a job; see the module docstring for the transitions."""

    QUEUED = "QUEUED"
    ACTIVE = "ACTIVE"
    RETRYING = "RETRYING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    DEAD = "DEAD"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.DEAD})
_FAILURE_STATES = frozenset({JobState.RETRYING, JobState.FAILED, JobState.DEAD})
_PHASE = {
    JobState.QUEUED: 0,
    JobState.ACTIVE: 1,
    JobState.RETRYING: 2,
    JobState.COMPLETED: 3,
    JobState.FAILED: 3,
    JobState.DEAD: 3,
}

Percent = Annotated[Int, Field(ge=0, le=100)]
Message = Annotated[str, BeforeValidator(truncate(2000)), StringConstraints(max_length=2000)]
ErrorMessage = Annotated[str, BeforeValidator(truncate(4000)), StringConstraints(max_length=4000)]
StackTrace = Annotated[str, BeforeValidator(truncate(8000)), StringConstraints(max_length=8000)]


class JobError(ContractModel):
    """Why an attempt failed; ``type`` is a stable class name, ``message`` is for humans.

    Over-long text is truncated rather than rejected: an event must never be lost to its message.
    """

    type: ShortText = Field(description="Error class, e.g. 'IntegrationTimeout' or 'ValidationError'.")
    message: ErrorMessage = Field(description="Human-readable explanation; never contains secrets.")
    retryable: Bool | None = Field(default=None, description="Whether a retry could succeed, if known.")
    stack: StackTrace | None = Field(
        default=None, description="Redacted, truncated traceback, for operators."
    )


class JobEvent(ContractModel):
    """One lifecycle event, published on governance.job-events keyed by job id."""

    schema_version: Literal["1"] = Field(default=SCHEMA_VERSION, description="Event schema version.")
    job_id: UUID = Field(description="Job the event is about.")
    job_type: JobType | None = Field(description="Job type; null when the job message was unreadable.")
    state: JobState = Field(description="State entered; ACTIVE repeats for progress updates.")
    at: UtcDatetime = Field(
        default_factory=utcnow, description="When it happened (UTC), by the writer's clock."
    )
    attempt: Int = Field(ge=1, description="Attempt the event is about.")
    max_attempts: Int | None = Field(default=None, ge=1, description="The envelope's max_attempts.")
    progress: Percent | None = Field(default=None, description="Percent done, 0..100.")
    message: Message | None = Field(default=None, description="Short human-readable progress or status note.")
    result: dict[str, JsonValue] | None = Field(
        default=None, description="Terminal states only: result summary (ids or object keys of outputs)."
    )
    error: JobError | None = Field(default=None, description="RETRYING, FAILED and DEAD only: the failure.")
    worker: ShortText | None = Field(default=None, description="Worker that wrote the event.")
    correlation_id: CorrelationId | None = Field(default=None, description="Copied from the envelope.")
    requested_by: UUID | None = Field(default=None, description="Copied from the envelope.")

    @model_validator(mode="after")
    def _fields_match_state(self) -> Self:
        if self.result is not None and not self.state.is_terminal:
            raise ValueError("result is only allowed on COMPLETED, FAILED and DEAD events")
        if self.error is not None and self.state not in _FAILURE_STATES:
            raise ValueError("error is only allowed on RETRYING, FAILED and DEAD events")
        return self

    @property
    def topic(self) -> str:
        return JOB_EVENTS_TOPIC

    @classmethod
    def for_envelope(cls, envelope: JobEnvelope, state: JobState, **fields: Any) -> JobEvent:
        """An event about ``envelope``'s current attempt; ``fields`` sets progress, message, ..."""
        base: dict[str, Any] = {
            "job_id": envelope.job_id,
            "job_type": envelope.job_type,
            "state": state,
            "attempt": envelope.attempt,
            "max_attempts": envelope.max_attempts,
            "correlation_id": envelope.correlation_id,
            "requested_by": envelope.requested_by,
        }
        return cls(**(base | fields))


class AttemptRecord(ContractModel):
    """Summary of one attempt, folded from that attempt's events."""

    attempt: Int = Field(ge=1)
    state: JobState = Field(description="Latest state of this attempt.")
    started_at: UtcDatetime | None = Field(default=None, description="First ACTIVE event of the attempt.")
    updated_at: UtcDatetime = Field(description="Time of the event that set `state`.")
    finished_at: UtcDatetime | None = Field(default=None, description="When the attempt ended, if it did.")
    worker: ShortText | None = None
    error: JobError | None = None


class JobStatus(ContractModel):
    """Current view of a job, folded from its events by :func:`apply_event`."""

    job_id: UUID
    job_type: JobType | None = Field(description="First non-null job_type among the events.")
    state: JobState
    progress: Percent | None = None
    message: Message | None = None
    attempt: Int = Field(ge=1, description="Attempt the current state is about.")
    max_attempts: Int | None = Field(default=None, ge=1)
    result: dict[str, JsonValue] | None = None
    error: JobError | None = Field(default=None, description="The failure, when RETRYING, FAILED or DEAD.")
    created_at: UtcDatetime = Field(description="Earliest event time seen for the job.")
    updated_at: UtcDatetime = Field(description="Time of the event the current state comes from.")
    correlation_id: CorrelationId | None = None
    requested_by: UUID | None = None
    history: list[AttemptRecord] = Field(
        default_factory=list, description="One record per attempt, in order."
    )

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal


def apply_event(status: JobStatus | None, event: JobEvent) -> JobStatus:
    """Fold ``event`` into ``status`` (``None`` for the job's first event); see the module docs."""
    if status is None:
        history = [_merge_attempt(None, event)]
        return _status_from(event, history, created_at=event.at, max_attempts=event.max_attempts)
    if status.job_id != event.job_id:
        raise ValueError(f"event for job {event.job_id} applied to the status of job {status.job_id}")

    records = {record.attempt: record for record in status.history}
    records[event.attempt] = _merge_attempt(records.get(event.attempt), event)
    history = [records[attempt] for attempt in sorted(records)]
    created_at = min(status.created_at, event.at)
    max_attempts = event.max_attempts if event.max_attempts is not None else status.max_attempts

    if _supersedes(event, status):
        return _status_from(event, history, created_at=created_at, max_attempts=max_attempts, previous=status)
    return JobStatus(
        **(
            dict(status)
            | {
                "history": history,
                "created_at": created_at,
                "max_attempts": max_attempts,
                "job_type": status.job_type or event.job_type,
                "error": _current_error(status.state, status.attempt, history),
                "correlation_id": status.correlation_id or event.correlation_id,
                "requested_by": status.requested_by or event.requested_by,
            }
        )
    )


def _supersedes(event: JobEvent, status: JobStatus) -> bool:
    if status.state.is_terminal:
        return False
    if event.state.is_terminal:
        return True
    event_key = (event.attempt, _PHASE[event.state], event.at, _progress(event.state, event.progress))
    status_key = (
        status.attempt,
        _PHASE[status.state],
        status.updated_at,
        _progress(status.state, status.progress),
    )
    return event_key > status_key


def _progress(state: JobState, progress: int | None) -> int:
    if progress is None:
        return 100 if state is JobState.COMPLETED else -1
    return progress


def _status_from(
    event: JobEvent,
    history: list[AttemptRecord],
    *,
    created_at: datetime,
    max_attempts: int | None,
    previous: JobStatus | None = None,
) -> JobStatus:
    progress = _progress(event.state, event.progress)
    return JobStatus(
        job_id=event.job_id,
        job_type=(previous.job_type if previous else None) or event.job_type,
        state=event.state,
        progress=None if progress < 0 else progress,
        message=event.message,
        attempt=event.attempt,
        max_attempts=max_attempts,
        result=event.result,
        error=_current_error(event.state, event.attempt, history),
        created_at=created_at,
        updated_at=event.at,
        correlation_id=(previous.correlation_id if previous else None) or event.correlation_id,
        requested_by=(previous.requested_by if previous else None) or event.requested_by,
        history=history,
    )


def _current_error(state: JobState, attempt: int, history: list[AttemptRecord]) -> JobError | None:
    if state not in _FAILURE_STATES:
        return None
    return next((record.error for record in history if record.attempt == attempt), None)


def _merge_attempt(record: AttemptRecord | None, event: JobEvent) -> AttemptRecord:
    """Same ordering rules as the job, restricted to one attempt's events."""
    started_at = event.at if event.state is JobState.ACTIVE else None
    if record is None:
        return _record(event, started_at=started_at, worker=event.worker, error=event.error)
    if record.started_at is not None:
        started_at = record.started_at if started_at is None else min(started_at, record.started_at)
    wins = not record.state.is_terminal and (
        event.state.is_terminal or (_PHASE[event.state], event.at) > (_PHASE[record.state], record.updated_at)
    )
    if not wins:
        return record.model_copy(
            update={
                "started_at": started_at,
                "worker": record.worker or event.worker,
                "error": record.error or event.error,
            }
        )
    return _record(
        event,
        started_at=started_at,
        worker=event.worker or record.worker,
        error=event.error or record.error,
    )


def _record(
    event: JobEvent, *, started_at: datetime | None, worker: str | None, error: JobError | None
) -> AttemptRecord:
    return AttemptRecord(
        attempt=event.attempt,
        state=event.state,
        started_at=started_at,
        updated_at=event.at,
        finished_at=event.at if event.state in _FAILURE_STATES or event.state.is_terminal else None,
        worker=worker,
        error=error,
    )
