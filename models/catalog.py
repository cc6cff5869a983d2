"""What a framework file turns into, whatever its format: families, controls, and rejected rows."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

# Longest ref_id / title we store; longer values are rejected with a clear reason, not truncated.
MAX_REF_ID = 100
MAX_TITLE = 500


@dataclass(frozen=True)
class FamilyRecord:
    ref_id: str
    title: str
    sort_key: str


@dataclass(frozen=True)
class ControlRecord:
    ref_id: str  # the framework's display id, e.g. 'AC-2(1)', 'GV.OC-01'; unique within the framework
    title: str
    sort_key: str
    location: str  # where it came from, for the report: 'row 12', '$.catalog.groups[0].controls[3]'
    source_id: str | None = None
    kind: str = "control"
    depth: int = 1
    assessable: bool = True
    family: str | None = None
    parent_ref: str | None = None
    statement: str = ""
    guidance: str = ""
    withdrawn: bool = False
    params: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    properties: dict[str, Any] = field(default_factory=dict)

    def content(self) -> dict[str, Any]:
        """Everything an import stores, without where it came from."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "location"}

    @cached_property
    def content_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.content(), sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class RowError:
    location: str  # 'row 7', '$.objects.framework.requirement_nodes[12]'
    field: str
    reason: str


def sort_key_of(*numbers: int) -> str:
    """Zero-padded position in the file, so ORDER BY sort_key is the catalogue's order."""
    return ".".join(f"{n:06d}" for n in numbers)
