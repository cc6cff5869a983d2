"""Notification texts for each event: a subject, a plain-text body, an HTML body and a link.

Values come from the job's template_data and may be user text (a policy title, a message), so
they are escaped for HTML, URL-quoted in links, folded onto one line in subjects (no header
injection), and never themselves parsed as templates. A line naming a value the producer did
not send is left out, so an omitted optional field gives a shorter message, not an error.
"""

from __future__ import annotations

import html
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from app.config import get_settings
from models import NotificationEventType


@dataclass(frozen=True)
class Template:
    subject: str
    lines: tuple[str, ...]
    link: str | None = None  # a path under the portal


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str
    link: str | None


TEMPLATES: dict[NotificationEventType, Template] = {
    NotificationEventType.POLICY_PUBLISHED: Template(
        subject="New policy to acknowledge: {policy_title}",
        lines=(
            'Version {policy_version} of the policy "{policy_title}" has been published for you.',
            "{message}",
            "Please read and acknowledge it within {acknowledgment_days} days.",
        ),
        link="/policies/{policy_id}",
    ),
    NotificationEventType.ASSESSMENT_ASSIGNED: Template(
        subject="Assessment assigned: {assessment_name}",
        lines=(
            'You have been assigned to the assessment "{assessment_name}".',
            "It is due on {due_date}.",
            "{message}",
        ),
        link="/assessments/{assessment_id}",
    ),
    NotificationEventType.REPORT_READY: Template(
        subject="Your report is ready: {report_name}",
        lines=(
            'The {report_format} report "{report_name}" you requested is ready to download.',
            "The download link is valid until {expires_at}.",
        ),
        link="/reports/{report_id}",
    ),
    NotificationEventType.AUDIT_PACKAGE_READY: Template(
        subject="Audit package ready: {package_name}",
        lines=(
            'The audit package "{package_name}" is ready.',
            "It holds {file_count} files.",
        ),
        link="/audit-packages/{package_id}",
    ),
    NotificationEventType.JOB_FAILED: Template(
        subject="Job failed: {job_type}",
        lines=(
            "A {job_type} job failed for good and was moved to the dead-letter queue.",
            "Job id: {job_id}",
            "{message}",
        ),
        link="/admin/jobs/{job_id}",
    ),
}


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def render(event_type: NotificationEventType, data: dict[str, Any]) -> Rendered:
    template = TEMPLATES[event_type]
    plain = {k: str(v) for k, v in data.items() if v is not None and str(v).strip()}

    def fill(text: str, escape: Callable[[str], str]) -> str:
        return text.format_map({name: escape(plain.get(name, "")) for name in _fields(text)}).strip()

    kept = [line for line in template.lines if all(name in plain for name in _fields(line))]
    subject = fill(template.subject, lambda v: " ".join(v.split())).rstrip(": ")[:200]
    link = None
    if template.link and all(name in plain for name in _fields(template.link)):
        link = get_settings().portal_url.rstrip("/") + fill(template.link, lambda v: quote(v, safe=""))
    text = "\n\n".join(fill(line, str) for line in kept) + (f"\n\n{link}" if link else "")
    body = "".join(f"<p>{fill(line, html.escape)}</p>" for line in kept)
    if link:
        body += f'<p><a href="{html.escape(link)}">Open in the GRC platform</a></p>'
    return Rendered(subject, text, f"<!doctype html><html><body>{body}</body></html>", link)
