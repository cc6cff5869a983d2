"""Inline SVG charts for PDF reports: drawn here, so a report loads no script and no image.

Labels are user text (family titles) and are escaped. Sizes are in CSS pixels; weasyprint
scales them with the page.
"""

from __future__ import annotations

import math
from html import escape

from models import ControlStatus
from models.report import StatusTotals

STATUS_COLOURS = {
    ControlStatus.IMPLEMENTED: "#2e7d32",
    ControlStatus.PARTIALLY_IMPLEMENTED: "#f9a825",
    ControlStatus.NOT_IMPLEMENTED: "#c62828",
    ControlStatus.NOT_ASSESSED: "#9e9e9e",
    ControlStatus.NOT_APPLICABLE: "#cfd8dc",
}
STATUS_LABELS = {
    ControlStatus.IMPLEMENTED: "Implemented",
    ControlStatus.PARTIALLY_IMPLEMENTED: "Partially implemented",
    ControlStatus.NOT_IMPLEMENTED: "Not implemented",
    ControlStatus.NOT_ASSESSED: "Not assessed",
    ControlStatus.NOT_APPLICABLE: "Not applicable",
}
# How legends and tables list the statuses: done, partly done, not done, unknown, out of scope.
LEGEND_ORDER = (
    ControlStatus.IMPLEMENTED,
    ControlStatus.PARTIALLY_IMPLEMENTED,
    ControlStatus.NOT_IMPLEMENTED,
    ControlStatus.NOT_ASSESSED,
    ControlStatus.NOT_APPLICABLE,
)


def score_colour(percent: float | None) -> str:
    if percent is None:
        return STATUS_COLOURS[ControlStatus.NOT_APPLICABLE]
    if percent >= 80:
        return STATUS_COLOURS[ControlStatus.IMPLEMENTED]
    if percent >= 50:
        return STATUS_COLOURS[ControlStatus.PARTIALLY_IMPLEMENTED]
    return STATUS_COLOURS[ControlStatus.NOT_IMPLEMENTED]


def status_donut(totals: StatusTotals, size: int = 170) -> str:
    """A ring of the status shares with the score in its middle, and a legend beside it."""
    radius, stroke = size / 2 - 14, 22
    centre = size / 2
    circumference = 2 * math.pi * radius
    parts = []
    offset = 0.0
    for status in LEGEND_ORDER:
        count = totals.count(status)
        if not count or not totals.controls:
            continue
        length = circumference * count / totals.controls
        parts.append(
            f'<circle cx="{centre}" cy="{centre}" r="{radius:.2f}" fill="none"'
            f' stroke="{STATUS_COLOURS[status]}" stroke-width="{stroke}"'
            f' stroke-dasharray="{length:.2f} {circumference - length:.2f}"'
            f' stroke-dashoffset="{-offset:.2f}" transform="rotate(-90 {centre} {centre})"/>'
        )
        offset += length
    score = "n/a" if totals.compliance_percent is None else f"{totals.compliance_percent:.1f}%"
    legend = []
    for row, status in enumerate(LEGEND_ORDER):
        y = 24 + row * 26
        count = totals.count(status)
        share = f"{100 * count / totals.controls:.1f}%" if totals.controls else "0%"
        legend.append(
            f'<rect x="{size + 16}" y="{y - 11}" width="14" height="14" fill="{STATUS_COLOURS[status]}"/>'
            f'<text x="{size + 38}" y="{y}" font-size="12">{STATUS_LABELS[status]}: {count} ({share})</text>'
        )
    width = size + 300
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{size}"'
        f' viewBox="0 0 {width} {size}" role="img" aria-label="Controls by status">'
        f'<circle cx="{centre}" cy="{centre}" r="{radius:.2f}" fill="none" stroke="#eceff1"'
        f' stroke-width="{stroke}"/>{"".join(parts)}'
        f'<text x="{centre}" y="{centre + 2}" font-size="22" font-weight="bold" text-anchor="middle">'
        f"{score}</text>"
        f'<text x="{centre}" y="{centre + 20}" font-size="10" text-anchor="middle" fill="#555">'
        "compliant</text>"
        f"{''.join(legend)}</svg>"
    )


def family_bars(families: list[tuple[str, StatusTotals]], width: int = 640) -> str:
    """One bar per family: its compliance score, coloured by band, with the count of controls."""
    label_width, row_height, top = 190, 18, 18
    bar_space = width - label_width - 90
    height = top + row_height * len(families) + 6
    rows = []
    for n, (label, totals) in enumerate(families):
        y = top + n * row_height
        percent = totals.compliance_percent
        bar = bar_space * (percent or 0) / 100
        shown = escape(label if len(label) <= 30 else label[:29] + "…")  # what fits left of the bars
        value = "n/a" if percent is None else f"{percent:.0f}%"
        rows.append(
            f'<text x="{label_width - 6}" y="{y + 12}" font-size="10" text-anchor="end">{shown}</text>'
            f'<rect x="{label_width}" y="{y + 2}" width="{bar_space}" height="12" fill="#eceff1"/>'
            f'<rect x="{label_width}" y="{y + 2}" width="{bar:.1f}" height="12"'
            f' fill="{score_colour(percent)}"/>'
            f'<text x="{label_width + bar_space + 6}" y="{y + 12}" font-size="10">{value}'
            f" of {totals.controls}</text>"
        )
    ticks = "".join(
        f'<text x="{x:.1f}" y="11" font-size="9" fill="#777" text-anchor="middle">{t}%</text>'
        f'<line x1="{x:.1f}" y1="14" x2="{x:.1f}" y2="{height - 4}" stroke="#cfd8dc" stroke-width="0.5"/>'
        for t in (0, 25, 50, 75, 100)
        for x in [label_width + bar_space * t / 100]
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" role="img" aria-label="Compliance by family">'
        f"{ticks}{''.join(rows)}</svg>"
    )
