"""The content of a compliance report, whatever its file format.

GENERATE_REPORT computes one ReportDocument from the database and renders it as PDF, XLSX or
JSON; the JSON file *is* this model, published as `models/schemas/report-document.schema.json`,
so a consumer of JSON reports codes against the same schema as the PDF and XLSX show.

A control's status comes from assessment results: the newest result per control and business
unit (PASS, PARTIAL, FAIL, NOT_APPLICABLE, NOT_TESTED), and across business units the least
favourable (see STATUS_ORDER). Score: implemented counts 1, partially implemented 0.5, not
applicable is left out of the denominator, not assessed counts 0.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from models.payloads import ControlStatus, ReportFilters, ReportFormat, ReportType

REPORT_SCHEMA_VERSION = "1"

#: Least favourable first: across business units a control takes the first of its statuses here.
STATUS_ORDER = (
    ControlStatus.NOT_IMPLEMENTED,
    ControlStatus.PARTIALLY_IMPLEMENTED,
    ControlStatus.NOT_ASSESSED,
    ControlStatus.IMPLEMENTED,
    ControlStatus.NOT_APPLICABLE,
)
#: What an assessment result means for a control's implementation.
RESULT_STATUS = {
    "PASS": ControlStatus.IMPLEMENTED,
    "PARTIAL": ControlStatus.PARTIALLY_IMPLEMENTED,
    "FAIL": ControlStatus.NOT_IMPLEMENTED,
    "NOT_APPLICABLE": ControlStatus.NOT_APPLICABLE,
    "NOT_TESTED": ControlStatus.NOT_ASSESSED,
}
SCORING_RULE = (
    "compliance % = (implemented + 0.5 x partially implemented) / (controls - not applicable) x 100; "
    "a control's status is the newest assessment result per business unit, the least favourable across units"
)


class ReportModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StatusTotals(ReportModel):
    """How many controls are in each status, and the score they make."""

    controls: int = Field(description="Controls counted.")
    implemented: int
    partially_implemented: int
    not_implemented: int
    not_assessed: int
    not_applicable: int
    compliance_percent: float | None = Field(
        description="Score by the scoring rule, one decimal; null when every control is not applicable."
    )

    @classmethod
    def of(cls, statuses: list[ControlStatus]) -> StatusTotals:
        count = {status: 0 for status in ControlStatus}
        for status in statuses:
            count[status] += 1
        applicable = len(statuses) - count[ControlStatus.NOT_APPLICABLE]
        # In halves, so the percentage is exact before it is rounded half up (56.25 -> 56.3)
        halves = 2 * count[ControlStatus.IMPLEMENTED] + count[ControlStatus.PARTIALLY_IMPLEMENTED]
        return cls(
            controls=len(statuses),
            implemented=count[ControlStatus.IMPLEMENTED],
            partially_implemented=count[ControlStatus.PARTIALLY_IMPLEMENTED],
            not_implemented=count[ControlStatus.NOT_IMPLEMENTED],
            not_assessed=count[ControlStatus.NOT_ASSESSED],
            not_applicable=count[ControlStatus.NOT_APPLICABLE],
            compliance_percent=(
                float((Decimal(100 * halves) / (2 * applicable)).quantize(Decimal("0.1"), ROUND_HALF_UP))
                if applicable
                else None
            ),
        )

    def count(self, status: ControlStatus) -> int:
        return int(getattr(self, status.value.lower()))


class FrameworkRef(ReportModel):
    id: UUID
    name: str
    version: str


class BusinessUnitRef(ReportModel):
    id: UUID | None = Field(description="null: assessments made for the whole organisation.")
    name: str


class FamilySummary(ReportModel):
    ref_id: str = Field(description="Family code, e.g. 'AC'; '(none)' for controls without a family.")
    title: str
    totals: StatusTotals


class UnitStatus(ReportModel):
    business_unit_id: UUID | None
    status: ControlStatus
    assessed_at: datetime | None
    notes: str


class EvidenceItem(ReportModel):
    title: str
    source: str
    status: str
    collected_at: datetime
    s3_key: str | None


class ControlLine(ReportModel):
    ref_id: str
    title: str
    family: str
    kind: str = Field(description="control, enhancement, or a level of the framework's tree.")
    status: ControlStatus = Field(description="Least favourable status across the business units.")
    assessed_at: datetime | None = Field(description="When the newest result that counts was recorded.")
    notes: str = Field(description="Assessor notes of the results that decided the status.")
    by_business_unit: list[UnitStatus] = Field(
        description="Newest result per business unit; empty when the control was never assessed."
    )
    evidence_count: int
    evidence: list[EvidenceItem] | None = Field(
        description="The control's evidence, newest first, when the request asked for it; else null."
    )


class ReportInfo(ReportModel):
    id: UUID
    type: ReportType
    format: ReportFormat
    title: str
    generated_at: datetime
    requested_by: UUID | None


class ReportDocument(ReportModel):
    """One report: its scope, the totals, a summary per family, and the controls it lists."""

    schema_version: str = REPORT_SCHEMA_VERSION
    report: ReportInfo
    framework: FrameworkRef
    filters: ReportFilters
    scoring_rule: str = SCORING_RULE
    totals: StatusTotals = Field(description="Over every control in scope.")
    families: list[FamilySummary] = Field(description="In catalogue order.")
    business_units: list[BusinessUnitRef] = Field(description="Business units with results in scope.")
    controls: list[ControlLine] = Field(
        description="Every control in scope in catalogue order; a GAP_ANALYSIS lists only the gaps "
        "(not implemented, partially implemented, not assessed), least favourable first within a family."
    )

    @property
    def evidence_asked(self) -> bool:
        """The request asked for evidence: every line then carries a list, empty or not."""
        return any(line.evidence is not None for line in self.controls)
