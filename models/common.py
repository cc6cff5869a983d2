"""Building blocks shared by every contract model: type strictness, UTC datetimes, bounded lists."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from datetime import UTC, date, datetime
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
)

T = TypeVar("T", bound=Hashable)


class ContractModel(BaseModel):
    """Base of all wire models.

    Types are strict where coercion hides producer bugs: numbers and booleans must be JSON numbers
    and booleans (``"5"``, ``5.0`` or ``1`` for ``true`` are rejected; see :data:`Int`, :data:`Bool`)
    and datetimes must be ISO strings, not epoch numbers. Types that JSON can only carry as strings
    (UUID, datetime, date, enums, URLs) are accepted from strings in Python dicts too, so a
    JSON-decoded dict validates the same as raw JSON. HTML form fields (all strings) go through
    ``model_validate_strings``.
    ``extra="forbid"``: a misspelt optional field must fail loudly instead of being dropped.
    ``frozen``: an envelope is a message; derive a new one with ``model_copy(update=...)``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


#: An integer that must arrive as an integer (no "5", 5.0 or true).
Int = StrictInt
#: A boolean that must arrive as true/false (no 1, "yes").
Bool = StrictBool


def utcnow() -> datetime:
    return datetime.now(UTC)


def _not_a_number(value: Any) -> Any:
    # Epoch numbers are ambiguous (seconds or milliseconds?); the contract says ISO 8601.
    if isinstance(value, int | float):
        raise ValueError("expected an ISO 8601 string, not a number")
    return value


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


#: A timezone-aware datetime, normalised to UTC (naive datetimes are rejected: they are ambiguous).
UtcDatetime = Annotated[AwareDatetime, BeforeValidator(_not_a_number), AfterValidator(_to_utc)]
#: A calendar date, as an ISO string ("2025-03-31") on the wire.
CalendarDate = Annotated[date, BeforeValidator(_not_a_number)]


def _unique(items: list[T]) -> list[T]:
    if len(set(items)) != len(items):
        raise ValueError("items must be unique")
    return items


#: A list without duplicates (published as JSON Schema ``uniqueItems``). Callers add the size
#: bound: every list on the wire is bounded so one message stays far below Kafka's 1 MiB limit.
UniqueList = Annotated[list[T], AfterValidator(_unique), Field(json_schema_extra={"uniqueItems": True})]


def truncate(limit: int) -> Callable[[Any], Any]:
    """Before-validator cutting human-readable text to ``limit`` characters.

    Used on status and error text, where losing a job event because its message was long would be
    worse than shortening the message.
    """

    def cut(value: Any) -> Any:
        if isinstance(value, str) and len(value) > limit:
            return value[: limit - 1] + "…"
        return value

    return cut


ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200)]
