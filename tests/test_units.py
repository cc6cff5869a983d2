"""Pure logic: redaction, tokens, object keys. No infrastructure."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from uuid import uuid4

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.auth import ADMINS, ANY_USER, AuthError, authenticate, issue_token
from app.catalogs.ciso import parse_library
from app.catalogs.oscal import parse_catalog
from app.config import Settings
from app.logs import REDACTED, JsonFormatter, redact
from app.ops import find_stalls
from app.runner import TimeLimit
from app.storage import object_key, safe_name
from app.templates import TEMPLATES, render
from models import NotificationEventType, Role
from models.catalog import ControlRecord, FamilyRecord, RowError

SECRET = "unit-test-secret-that-is-long-enough-for-hs256"


def test_redaction_masks_sensitive_keys_at_any_depth() -> None:
    payload = {
        "integration": {"credentials": {"user": "svc"}, "apiKey": "k-123", "name": "Qualys"},
        "items": [{"password": "hunter2"}, {"client_secret": "s"}, {"note": "fine"}],
        "Authorization": "Bearer abc.def.ghi",
        "dsn": "postgresql://app:pa55word@db:5432/x",
        "message": "calling with Bearer abc.def.ghi",
    }
    cleaned = redact(payload)
    text = json.dumps(cleaned)
    for secret in ("k-123", "hunter2", "pa55word", "abc.def.ghi", '"s"'):
        assert secret not in text
    assert cleaned["integration"]["credentials"] == REDACTED
    assert cleaned["items"][2] == {"note": "fine"}
    assert cleaned["integration"]["name"] == "Qualys"


def test_json_log_lines_are_redacted() -> None:
    record = logging.makeLogRecord(
        {"msg": "job failed", "levelname": "WARNING", "name": "t", "error": {"token": "t0k3n"}}
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "job failed" and line["error"]["token"] == REDACTED


def settings(**overrides: str) -> Settings:
    return Settings(**{"jwt_secret": SECRET, **overrides})  # type: ignore[arg-type]


def test_tokens_carry_user_and_roles() -> None:
    user = uuid4()
    caller = authenticate(f"Bearer {issue_token(SECRET, user, [Role.ADMIN])}", settings(), ADMINS)
    assert caller.user_id == user and caller.roles == {Role.ADMIN}


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 401),
        ("Basic dXNlcjpwYXNz", 401),
        ("Bearer not-a-token", 401),
        (f"Bearer {issue_token('another-secret-that-is-long-enough-too', uuid4(), [Role.ADMIN])}", 401),
        (f"Bearer {issue_token(SECRET, uuid4(), [Role.ADMIN], ttl=timedelta(seconds=-1))}", 401),
        (f"Bearer {issue_token(SECRET, uuid4(), [Role.USER])}", 403),
    ],
)
def test_bad_or_insufficient_tokens_are_refused(header: str | None, status: int) -> None:
    with pytest.raises(AuthError) as refused:
        authenticate(header, settings(), ADMINS)
    assert refused.value.status == status


def test_rs256_tokens_verify_with_the_public_key() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    user = uuid4()
    token = jwt.encode({"sub": str(user), "roles": ["USER"], "exp": 4102444800}, key, algorithm="RS256")
    rs = settings(jwt_algorithm="RS256", jwt_public_key=public_pem, jwt_secret="")
    assert authenticate(f"Bearer {token}", rs, ANY_USER).user_id == user
    # An HS256 token signed with the public key as secret (algorithm confusion) is refused.
    forged = jwt.encode(
        {"sub": str(user), "roles": ["ADMIN"], "exp": 4102444800}, "x" * 40, algorithm="HS256"
    )
    with pytest.raises(AuthError):
        authenticate(f"Bearer {forged}", rs, ANY_USER)


def test_object_keys_are_laid_out_by_kind_and_date_with_safe_names() -> None:
    from datetime import UTC, datetime

    key = object_key("reports", "../../etc/passwd", datetime(2026, 12, 3, tzinfo=UTC))
    assert key == "reports/2026/12/03/passwd"
    assert safe_name("Q3 report (final).pdf") == "Q3_report_final_.pdf"
    assert safe_name("..") == "file"


async def test_a_heartbeat_time_limit_is_renewed_by_progress_and_a_deadline_is_not() -> None:
    async with TimeLimit(0.2, heartbeat=True) as limit:
        for _ in range(4):
            await asyncio.sleep(0.1)
            limit.beat()
    with pytest.raises(TimeoutError):
        async with TimeLimit(0.2, heartbeat=True) as limit:
            await asyncio.sleep(0.3)
    with pytest.raises(TimeoutError):
        async with TimeLimit(0.2, heartbeat=False) as limit:
            for _ in range(4):
                await asyncio.sleep(0.1)
                limit.beat()


def test_notification_templates_escape_user_text_and_drop_lines_without_values() -> None:
    data = {
        "policy_id": "5f1c0d1e-0000-4000-8000-000000000001",
        "policy_version": 3,
        "policy_title": 'Travel <img src=x onerror="alert(1)">\r\nBcc: victim@example.com',
        "message": "<b>Read</b> & sign",
    }
    message = render(NotificationEventType.POLICY_PUBLISHED, data)
    assert "\n" not in message.subject and "\r" not in message.subject  # no header injection
    assert "<img" not in message.html and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in message.html
    assert "&lt;b&gt;Read&lt;/b&gt; &amp; sign" in message.html
    assert "<b>Read</b> & sign" in message.text
    assert "acknowledge it within" not in message.text  # acknowledgment_days was not given
    assert message.link is not None and message.link.endswith(
        "/policies/5f1c0d1e-0000-4000-8000-000000000001"
    )
    # every event has a template that renders with no data at all
    for event in NotificationEventType:
        assert event in TEMPLATES
        assert render(event, {}).subject


def test_template_links_quote_values() -> None:
    message = render(NotificationEventType.REPORT_READY, {"report_id": "../../admin?x=1", "report_name": "Q"})
    assert message.link is not None and message.link.endswith("/reports/..%2F..%2Fadmin%3Fx%3D1")


def test_a_flow_partition_is_stalled_only_when_its_lag_stands_still_on_an_idle_worker() -> None:
    progress: dict[str, tuple[int, float]] = {}

    def check(committed: int, highwater: int, now: float, busy: bool = False) -> list[str]:
        return find_stalls(progress, [("flow[3]", committed, highwater)], now=now, limit=15, busy=busy)

    assert check(10, 11, now=0) == []  # first sight
    assert check(10, 11, now=10) == []  # lag, but not for long
    assert check(10, 11, now=16) == ["flow[3] lag 1 for 16 s"]
    assert check(11, 12, now=17) == []  # the offset moved: a fresh start
    assert check(11, 12, now=40, busy=True) == []  # a job is running: the batch may be slow
    assert check(11, 12, now=50) == []
    assert check(12, 12, now=100) == []  # no lag, nothing waits


def test_oscal_parser_nests_enhancements_reads_withdrawn_in_any_case_and_reports_json_paths() -> None:
    def control(cid: str, label: str, **extra: object) -> dict[str, object]:
        return {"id": cid, "title": f"Title {cid}", "props": [{"name": "label", "value": label}], **extra}

    catalog = {
        "catalog": {
            "groups": [
                {
                    "id": "xx",
                    "title": "Example family",
                    "controls": [
                        control(
                            "xx-1",
                            "XX-1",
                            params=[{"id": "xx-1_prm_1", "select": {"choice": ["daily", "weekly"]}}],
                            parts=[{"name": "statement", "prose": "Review {{ insert: param, xx-1_prm_1 }}."}],
                            controls=[
                                control(
                                    "xx-1.1",
                                    "XX-1(1)",
                                    props=[
                                        {"name": "label", "value": "XX-1(1)"},
                                        {"name": "status", "value": "Withdrawn"},
                                    ],
                                ),
                            ],
                        ),
                        control(
                            "xx-2",
                            "XX-2",
                            props=[
                                {"name": "label", "value": "XX-02", "class": "zero-padded"},
                                {"name": "label", "value": "XX-2"},
                                {"name": "status", "value": "withdrawn"},
                            ],
                        ),
                        {"id": "xx-3"},
                        control(
                            "xx-4",
                            "XX-4",
                            parts=[{"name": "statement", "prose": "{{ insert: param, nope }}"}],
                        ),
                    ],
                },
                {"id": "yy"},
            ]
        }
    }
    records = list(parse_catalog(catalog))
    controls = {r.ref_id: r for r in records if isinstance(r, ControlRecord)}
    errors = [r for r in records if isinstance(r, RowError)]
    assert [f.ref_id for f in records if isinstance(f, FamilyRecord)] == ["XX"]
    assert controls["XX-1(1)"].parent_ref == "XX-1" and controls["XX-1(1)"].kind == "enhancement"
    assert controls["XX-1(1)"].withdrawn and controls["XX-2"].withdrawn and not controls["XX-1"].withdrawn
    assert controls["XX-1"].statement == "Review [Selection (one): daily; weekly]."
    assert controls["XX-4"].statement == "[Assignment: not defined]"  # a dangling placeholder stays readable
    assert [(e.location, e.field) for e in errors] == [
        ("$.catalog.groups[0].controls[2]", "title"),
        ("$.catalog.groups[1]", "title"),
    ]
    assert next(iter(parse_catalog({"not": "oscal"}))).field == "catalog"


def test_ciso_parser_rebuilds_the_tree_whatever_the_order_and_reports_orphans() -> None:
    prefix = "urn:x:req_node:demo"
    library = {
        "objects": {
            "framework": {
                "requirement_nodes": [
                    {
                        "urn": f"{prefix}:a.1",
                        "parent_urn": f"{prefix}:a",
                        "assessable": True,
                        "description": "Leaf",
                    },
                    {"urn": f"{prefix}:a", "ref_id": "A", "name": "Caf\u00e9"},
                    {"urn": f"{prefix}:b.1", "parent_urn": f"{prefix}:missing", "ref_id": "B.1"},
                ]
            }
        }
    }
    records = list(parse_library(library))
    controls = {r.ref_id: r for r in records if isinstance(r, ControlRecord)}
    assert controls["a.1"].parent_ref == "A" and controls["a.1"].title == "a.1"  # urn tail, no name
    assert controls["a.1"].family == "A" and controls["a.1"].assessable and controls["a.1"].depth == 2
    assert controls["A"].title == "Caf\u00e9"
    (orphan,) = [r for r in records if isinstance(r, RowError)]
    assert orphan.location.endswith("[2]") and orphan.field == "parent_urn"
