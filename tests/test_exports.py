"""EXPORT_DATA through the real intake, Kafka, PostgreSQL and S3: the stored files are opened
(csv, openpyxl, pypdf) and held against the rows in the database."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import openpyxl
import pytest
from pypdf import PdfReader

from app.export_files import PDF_MAX_ROWS
from app.storage import PART_BYTES
from tests.service import Service, running_service
from tests.workers import api, wait_for_job

pytestmark = pytest.mark.integration

FORMULA = '=HYPERLINK("http://127.0.0.1:1/steal","click me")'


@pytest.fixture(scope="module")
async def service(stack, tmp_path_factory) -> AsyncIterator[Service]:  # type: ignore[no-untyped-def]
    async with running_service(stack.env, tmp_path_factory.mktemp("workers"), ["e1"]) as svc:
        yield svc


async def export(
    service: Service, states: tuple[str, ...] = ("COMPLETED",), *, admin: bool = False, **request: Any
) -> dict[str, Any]:
    """Ask for an export (as user 5, or as the admin) and wait for its job to end in one of `states`."""
    token = service.admin_token if admin else service.user_token
    status, answer = await api("POST", f"{service.url}/exports", token=token, json=request)
    assert status == 202, answer
    answer["job"] = await wait_for_job(
        service.url, answer["job_id"], token, ("COMPLETED", "DEAD"), timeout=150
    )
    assert answer["job"]["state"] in states, answer["job"].get("error")
    answer["token"] = token
    return answer


async def fetch(service: Service, answer: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """The export's record and its file, through the download redirect, as whoever asked for it."""
    _, record = await api("GET", f"{service.url}{answer['export_status_url']}", token=answer["token"])
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{service.url}{answer['download_url']}",
            headers={"Authorization": f"Bearer {answer['token']}"},
        ) as resp,
    ):  # aiohttp follows the 302 to the presigned URL
        assert resp.status == 200
        return record, await resp.read()


async def controls_framework(service: Service, count: int, statement: str = "Keep records.") -> UUID:
    framework_id = uuid4()
    async with service.db() as conn:
        await conn.execute(
            "INSERT INTO frameworks (id, name, version) VALUES ($1, $2, '1')",
            framework_id,
            f"Export {framework_id}",
        )
        await conn.execute(
            """
            INSERT INTO controls (framework_id, ref_id, family, title, statement, sort_key)
            SELECT $1, 'EX-' || n, 'EX', 'Control ' || n, $3 || ' (' || n || ')', lpad(n::text, 7, '0')
              FROM generate_series(1, $2) AS n
            """,
            framework_id,
            count,
            statement,
        )
    return framework_id


async def test_controls_export_the_same_rows_in_csv_xlsx_and_pdf_with_formulas_kept_inert(
    service: Service,
) -> None:
    # Given a framework whose text holds a formula, a quote, a comma and line breaks
    framework_id = await controls_framework(service, 30, statement='Review "accounts", then\nlog it')
    async with service.db() as conn:
        await conn.execute(
            "UPDATE controls SET title = $2 WHERE framework_id = $1 AND ref_id = 'EX-2'",
            framework_id,
            FORMULA,
        )
        expected = [
            (r["ref_id"], r["title"], r["statement"])
            for r in await conn.fetch(
                "SELECT ref_id, title, statement FROM controls WHERE framework_id = $1 ORDER BY sort_key",
                framework_id,
            )
        ]
    request = {"entity": "CONTROLS", "filters": {"framework_ids": [str(framework_id)]}}

    # CSV: UTF-8 with a BOM, one row per control, the formula with a leading apostrophe
    answer = await export(service, format="CSV", **request)
    record, data = await fetch(service, answer)
    assert data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert rows[0][:4] == ["Framework", "Version", "Control", "Title"]
    got = [(r[2], r[3], r[8]) for r in rows[1:]]
    assert got == [(ref, "'" + t if t == FORMULA else t, s) for ref, t, s in expected]
    assert record["row_count"] == 30 and record["status"] == "COMPLETED" and record["size_bytes"] == len(data)
    assert record["content_type"] == "text/csv; charset=utf-8"

    # XLSX: the same rows, the formula as a string cell, dates as dates, header frozen and filtered
    answer = await export(service, format="XLSX", **request)
    _, data = await fetch(service, answer)
    sheet = openpyxl.load_workbook(io.BytesIO(data))["Controls"]
    assert sheet.freeze_panes == "A2" and sheet.auto_filter.ref == "A1:K31"
    cells = list(sheet.iter_rows(min_row=2))
    assert [(c[2].value, c[3].value, c[8].value) for c in cells] == expected
    assert cells[1][3].data_type == "s" and isinstance(cells[0][10].value, datetime)

    # PDF: every control id, prose columns named as left out
    answer = await export(service, format="PDF", **request)
    _, data = await fetch(service, answer)
    text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)
    assert (
        "30 rows, exported " in text and "Left out of the PDF (see XLSX or CSV): Statement, Guidance" in text
    )
    assert all(ref in text for ref, _, _ in expected)


async def test_assignments_and_policies_follow_their_business_unit_and_time_filters(service: Service) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    engineering, finance, _ = service.org.business_unit_ids
    policy_id = uuid4()
    async with service.db() as conn:
        await conn.execute(
            "INSERT INTO policies (id, title, target_roles, target_business_unit_ids)"
            " VALUES ($1, $2, $3, $4)",
            policy_id,
            f"Export policy {policy_id.hex[:6]}",
            ["EMPLOYEE"],
            [finance],
        )
        await conn.execute(
            "INSERT INTO policy_assignments (policy_id, policy_version, user_id)"
            " SELECT $1, 1, id FROM users WHERE id = ANY($2::uuid[])",
            policy_id,
            list(service.org.user_ids),
        )
        in_finance = await conn.fetchval(
            "SELECT count(*) FROM users WHERE business_unit_id = $1 AND id = ANY($2::uuid[])",
            finance,
            list(service.org.user_ids),
        )
    request = {
        "entity": "ASSIGNMENTS",
        "format": "XLSX",
        "filters": {"business_unit_ids": [str(finance)], "updated_from": since.isoformat()},
    }
    status, body = await api("POST", f"{service.url}/exports", token=service.user_token, json=request)
    assert status == 403 and "ADMIN" in body["error"]  # a list of people is for admins
    answer = await export(service, admin=True, **request)
    record, data = await fetch(service, answer)
    rows = list(
        openpyxl.load_workbook(io.BytesIO(data))["Assignments"].iter_rows(min_row=2, values_only=True)
    )
    assert len(rows) == record["row_count"] == in_finance > 0
    assert {r[4] for r in rows} == {"Finance"} and {r[5] for r in rows} == {"PENDING_ACKNOWLEDGMENT"}

    answer = await export(
        service,
        entity="POLICIES",
        format="CSV",
        filters={"business_unit_ids": [str(finance)], "updated_from": since.isoformat()},
    )
    _, data = await fetch(service, answer)
    policies = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    assert [(p["Policy"], p["Target business units"]) for p in policies] == [
        (f"Export policy {policy_id.hex[:6]}", "Finance")
    ]
    answer = await export(
        service,
        entity="POLICIES",
        format="CSV",
        filters={"business_unit_ids": [str(engineering)], "updated_from": since.isoformat()},
    )
    record, _ = await fetch(service, answer)
    assert record["row_count"] == 0


async def test_a_large_csv_is_stored_in_parts_and_arrives_whole(service: Service) -> None:
    framework_id = await controls_framework(service, 25_000, statement="x" * 400)
    answer = await export(
        service, entity="CONTROLS", format="CSV", filters={"framework_ids": [str(framework_id)]}
    )
    record, data = await fetch(service, answer)
    assert record["size_bytes"] == len(data) > PART_BYTES  # larger than one part: a multipart upload
    assert data.decode("utf-8-sig").count("\nExport ") == 25_000 == record["row_count"]


async def test_a_pdf_export_over_the_cap_fails_with_its_reason_and_the_flow_carries_on(
    service: Service,
) -> None:
    framework_id = await controls_framework(service, PDF_MAX_ROWS + 1)
    request = {"entity": "CONTROLS", "filters": {"framework_ids": [str(framework_id)]}}
    answer = await export(service, ("DEAD",), format="PDF", **request)
    assert answer["job"]["error"]["type"] == "NonRetryableError"
    assert f"at most {PDF_MAX_ROWS} rows" in answer["job"]["error"]["message"]
    _, record = await api("GET", f"{service.url}{answer['export_status_url']}", token=service.user_token)
    assert record["status"] == "FAILED" and "ask for XLSX or CSV" in record["error"]
    status, body = await api("GET", f"{service.url}{answer['download_url']}", token=service.user_token)
    assert status == 409 and body["status"] == "FAILED"
    # The same rows as XLSX go through
    answer = await export(service, format="XLSX", **request)
    record, _ = await fetch(service, answer)
    assert record["row_count"] == PDF_MAX_ROWS + 1


async def test_filters_that_do_not_apply_are_refused_at_intake(service: Service) -> None:
    status, body = await api(
        "POST",
        f"{service.url}/exports",
        token=service.user_token,
        json={"entity": "POLICIES", "format": "CSV", "filters": {"framework_ids": [str(uuid4())]}},
    )
    assert status == 422
    assert body["fields"] == [{"field": "filters", "message": "framework_ids does not apply to POLICIES"}]
    # A filter naming nothing would quietly export nothing: refused on its field
    nowhere = str(uuid4())
    for field in ("framework_ids", "business_unit_ids"):
        status, body = await api(
            "POST",
            f"{service.url}/exports",
            token=service.user_token,
            json={"entity": "EVIDENCE", "format": "CSV", "filters": {field: [nowhere]}},
        )
        assert status == 422 and body["fields"][0]["field"] == f"filters.{field}", body
        assert nowhere in body["fields"][0]["message"]
