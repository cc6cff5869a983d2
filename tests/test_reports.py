"""GENERATE_REPORT through the real intake, Kafka, PostgreSQL and S3: what lands in the bucket is
opened and read (pypdf, openpyxl, the published JSON Schema) and its totals are held against a
hand-computed oracle and the database."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import jsonschema
import openpyxl
import pytest
from aiokafka import AIOKafkaProducer
from pypdf import PdfReader

from app.auth import issue_token
from app.config import get_settings
from app.devstack import LOW_BASELINE
from app.storage import open_storage
from models import GenerateReportPayload, JobEnvelope, Role
from models.schema import REPORT_SCHEMA_FILE, SCHEMA_DIR
from tests.service import JWT_SECRET, Service, needs_shared_data, run_import, running_service
from tests.workers import api, metric_value, wait_for_job

pytestmark = pytest.mark.integration

IMPL, P, NI, NAS, NA = (
    "IMPLEMENTED",
    "PARTIALLY_IMPLEMENTED",
    "NOT_IMPLEMENTED",
    "NOT_ASSESSED",
    "NOT_APPLICABLE",
)
# control: (results in Engineering, results in Finance, expected status). A list of results is
# oldest first: the newest counts, unless it is a NOT_TESTED placeholder.
SCENARIO: dict[str, tuple[list[str], list[str], str]] = {
    "AC-1": (["PASS"], ["PASS"], IMPL),
    "AC-2": (["PASS"], ["FAIL"], NI),  # the least favourable unit decides
    "AC-3": (["PARTIAL"], ["PASS"], P),
    "AC-4": (["NOT_APPLICABLE"], ["NOT_APPLICABLE"], NA),
    "AC-5": (["PASS"], [], IMPL),
    "AC-6": (["NOT_TESTED"], [], NAS),  # a placeholder alone: not assessed, and no date
    "AU-1": (["PASS"], ["NOT_APPLICABLE"], IMPL),
    "AU-2": (["PASS", "NOT_TESTED"], ["PASS"], IMPL),  # a placeholder does not hide a real result
    "AU-3": (["FAIL", "PASS"], ["PASS"], IMPL),  # the newest result counts
    "AU-6": ([], [], NAS),  # its only result is in a cancelled assessment
}
EXPECTED_TOTALS = {
    "controls": 10,
    "implemented": 5,
    "partially_implemented": 1,
    "not_implemented": 1,
    "not_assessed": 2,
    "not_applicable": 1,
    "compliance_percent": 61.1,  # (5 + 0.5) / (10 - 1)
}
EXPECTED_FAMILIES = {"AC": (6, 50.0), "AU": (4, 75.0)}  # (2 + 0.5) / 5 and 3 / 4


@pytest.fixture(scope="module")
async def service(stack, tmp_path_factory) -> AsyncIterator[Service]:  # type: ignore[no-untyped-def]
    async with running_service(stack.env, tmp_path_factory.mktemp("workers"), ["r1"]) as svc:
        yield svc


async def scenario_framework(service: Service, *, title_of: dict[str, str] | None = None) -> UUID:
    """A framework holding SCENARIO's controls and their results in two business units, plus a
    withdrawn control and a tree level that is not assessed (both out of scope)."""
    framework_id = uuid4()
    engineering, finance = service.org.business_unit_ids[:2]
    titles = title_of or {}
    base = datetime(2026, 1, 1, tzinfo=UTC)
    async with service.db() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO frameworks (id, name, version) VALUES ($1, $2, 'rev5')",
            framework_id,
            f"Scenario {framework_id.hex[:6]}",
        )
        await conn.executemany(
            "INSERT INTO control_families (framework_id, ref_id, title, sort_key) VALUES ($1, $2, $3, $2)",
            [(framework_id, "AC", "Access Control"), (framework_id, "AU", "Audit and Accountability")],
        )
        ids: dict[str, UUID] = {}
        extra = {"AU-4": {"withdrawn": True}, "AU-5": {"assessable": False}}
        for ref in [*SCENARIO, *extra]:
            ids[ref] = await conn.fetchval(
                """
                INSERT INTO controls (framework_id, ref_id, family, title, sort_key, withdrawn, assessable)
                VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id
                """,
                framework_id,
                ref,
                ref[:2],
                titles.get(ref, f"Control {ref}"),
                ref.replace("-", "-0"),
                extra.get(ref, {}).get("withdrawn", False),
                extra.get(ref, {}).get("assessable", True),
            )
        for unit, column in ((engineering, 0), (finance, 1)):
            rounds = max(len(SCENARIO[ref][column]) for ref in SCENARIO)
            for n in range(rounds):
                assessment = await conn.fetchval(
                    "INSERT INTO assessments (name, framework_id, business_unit_id, status)"
                    " VALUES ($1, $2, $3, 'COMPLETED') RETURNING id",
                    f"Round {n}",
                    framework_id,
                    unit,
                )
                for ref, results in SCENARIO.items():
                    if n < len(results[column]):
                        await conn.execute(
                            "INSERT INTO assessment_results (assessment_id, control_id, status,"
                            " notes, updated_at) VALUES ($1, $2, $3, $4, $5)",
                            assessment,
                            ids[ref],
                            results[column][n],
                            f"{ref} round {n}",
                            base + timedelta(days=n),
                        )
        cancelled = await conn.fetchval(
            "INSERT INTO assessments (name, framework_id, business_unit_id, status)"
            " VALUES ('Cancelled', $1, $2, 'CANCELLED') RETURNING id",
            framework_id,
            engineering,
        )
        await conn.execute(
            "INSERT INTO assessment_results (assessment_id, control_id, status) VALUES ($1, $2, 'PASS')",
            cancelled,
            ids["AU-6"],
        )
        await conn.executemany(
            "INSERT INTO evidence (control_id, title, status) VALUES ($1, $2, $3)",
            [(ids["AC-1"], "Access review export", "COLLECTED"), (ids["AC-1"], "Old screenshot", "REJECTED")],
        )
    return framework_id


async def generate(service: Service, token: str, **request: Any) -> dict[str, Any]:
    """Ask for a report, wait for its job; returns the intake's answer with the finished job."""
    status, answer = await api("POST", f"{service.url}/reports/generate", token=token, json=request)
    assert status == 202, answer
    answer["job"] = await wait_for_job(
        service.url, answer["job_id"], token, ("COMPLETED", "DEAD"), timeout=120
    )
    assert answer["job"]["state"] == "COMPLETED", answer["job"].get("error")
    return answer


async def download(service: Service, answer: dict[str, Any], token: str) -> tuple[dict[str, Any], bytes]:
    """Follow GET .../download's redirect as a browser would; returns the status record and the bytes."""
    status, record = await api("GET", f"{service.url}{answer['report_status_url']}", token=token)
    assert status == 200, record
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {token}"}
        async with session.get(
            f"{service.url}{answer['download_url']}", headers=headers, allow_redirects=False
        ) as resp:
            assert resp.status == 302, await resp.text()
            location = resp.headers["Location"]
        assert "X-Amz-Expires=604800" in location  # 7 days
        async with session.get(location) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == record["content_type"]
            return record, await resp.read()


async def report_ready_notifications(service: Service, report_id: str | UUID) -> int:
    """REPORT_READY in-app notifications of a report for its requester (user 5), waiting up to
    20 s for the first: the notification is a job of its own."""
    key = f"REPORT_READY:{report_id}:{service.org.user_ids[5]}:IN_APP"
    for _ in range(100):
        async with service.db() as conn:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM notifications WHERE idempotency_key = $1", key
            )
        if count:
            break
        await asyncio.sleep(0.2)
    return count


def pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


async def test_a_scorecard_says_the_same_in_pdf_xlsx_and_json_and_agrees_with_the_database(
    service: Service,
) -> None:
    framework_id = await scenario_framework(service)
    answers = {
        fmt: await generate(
            service,
            service.user_token,
            report_type="FRAMEWORK_SCORECARD",
            format=fmt,
            framework_id=str(framework_id),
        )
        for fmt in ("JSON", "PDF", "XLSX")
    }
    files = {fmt: await download(service, answer, service.user_token) for fmt, answer in answers.items()}

    # JSON: valid against the published schema, and the oracle's statuses and totals
    record, raw = files["JSON"]
    document = json.loads(raw)
    jsonschema.Draft202012Validator(json.loads((SCHEMA_DIR / REPORT_SCHEMA_FILE).read_text())).validate(
        document
    )
    assert {c["ref_id"]: c["status"] for c in document["controls"]} == {k: v[2] for k, v in SCENARIO.items()}
    assert {k: document["totals"][k] for k in EXPECTED_TOTALS} == EXPECTED_TOTALS
    assert {
        f["ref_id"]: (f["totals"]["controls"], f["totals"]["compliance_percent"])
        for f in document["families"]
    } == (EXPECTED_FAMILIES)
    by_ref = {c["ref_id"]: c for c in document["controls"]}
    assert by_ref["AC-1"]["evidence_count"] == 1
    assert by_ref["AC-1"]["assessed_at"] is not None and by_ref["AC-6"]["assessed_at"] is None
    async with service.db() as conn:
        in_scope = await conn.fetchval(
            "SELECT count(*) FROM controls WHERE framework_id = $1 AND assessable AND NOT withdrawn",
            framework_id,
        )
        rows = {
            r["format"]: r
            for r in await conn.fetch(
                "SELECT * FROM reports WHERE id = ANY($1::uuid[])", [a["report_id"] for a in answers.values()]
            )
        }
    assert in_scope == document["totals"]["controls"] == len(document["controls"])

    # PDF: the ids and totals in its text
    _, pdf = files["PDF"]
    text = pdf_text(pdf)
    for ref in SCENARIO:
        assert ref in text
    assert "61.1%" in text and "compliant across 10 controls in scope" in text
    assert "AU-4" not in text and "AU-5" not in text

    # XLSX: the summary's totals and one row per control
    _, xlsx = files["XLSX"]
    book = openpyxl.load_workbook(io.BytesIO(xlsx))
    assert book.sheetnames == ["Summary", "Controls"]
    summary = {row[0]: row[1:] for row in book["Summary"].iter_rows(values_only=True) if row[0]}
    assert summary["Controls in scope"][0] == 10 and summary["Compliance %"][0] == 61.1
    assert summary["Implemented"][0] == 5 and summary["Not assessed"][0] == 2
    assert summary["All families"][1:8] == (10, 5, 1, 1, 2, 1, 61.1)
    assert summary["AC"][1] == 6 and summary["AU"][7] == 75.0
    controls = book["Controls"]
    assert controls.freeze_panes == "A2" and controls.auto_filter.ref == "A1:G11"
    assert [r[0] for r in controls.iter_rows(min_row=2, values_only=True)] == list(SCENARIO)
    with zipfile.ZipFile(io.BytesIO(xlsx)) as archive:  # openpyxl drops charts when it reads
        charts = [archive.read(n) for n in archive.namelist() if n.startswith("xl/charts/chart")]
    assert sorted(b"<c:doughnutChart>" in c for c in charts) == [False, True]
    assert any(b"<c:barChart>" in c for c in charts)

    # Records: completed, sized, typed, stored under reports/{year}/{month}/report-{id}.{ext}
    now = datetime.now(UTC)
    for fmt, (record, data) in files.items():
        row = rows[fmt]
        assert record["status"] == row["status"] == "COMPLETED" and record["progress"] == 100
        assert row["size_bytes"] == len(data) == record["size_bytes"]
        assert row["s3_key"] == f"reports/{now:%Y}/{now:%m}/report-{row['id']}.{fmt.lower()}"
    assert rows["PDF"]["content_type"] == "application/pdf"

    # REPORT_READY: one in-app notification per report for the requester
    for answer in answers.values():
        assert await report_ready_notifications(service, answer["report_id"]) == 1


async def test_only_the_requester_or_an_admin_sees_and_downloads_a_report(service: Service) -> None:
    framework_id = await scenario_framework(service)
    answer = await generate(
        service, service.user_token, report_type="GAP_ANALYSIS", format="JSON", framework_id=str(framework_id)
    )
    stranger = issue_token(JWT_SECRET, service.org.user_ids[7], [Role.USER])
    for url in (answer["report_status_url"], answer["download_url"]):
        status, body = await api("GET", f"{service.url}{url}", token=stranger)
        assert status == 403, body
        status, _ = await api("GET", f"{service.url}{url}", token=None)
        assert status == 401
    status, body = await api("GET", f"{service.url}{answer['report_status_url']}", token=service.admin_token)
    assert status == 200 and body["status"] == "COMPLETED" and body["job"]["state"] == "COMPLETED"
    status, _ = await api("GET", f"{service.url}/reports/{uuid4()}/status", token=service.admin_token)
    assert status == 404
    status, _ = await api("GET", f"{service.url}/reports/not-a-uuid/download", token=service.admin_token)
    assert status == 400


async def test_a_repeated_job_id_answers_with_the_first_report_and_a_different_request_is_refused(
    service: Service,
) -> None:
    framework_id = await scenario_framework(service)
    job_id = str(uuid4())
    request = {"report_type": "GAP_ANALYSIS", "format": "JSON", "framework_id": str(framework_id)}
    first = await generate(service, service.user_token, job_id=job_id, **request)
    assert first["job"]["max_attempts"] == 2  # the reporting flow's, not the envelope default

    # The same request again: the same report, nothing new recorded or run
    url = f"{service.url}/reports/generate"
    status, again = await api("POST", url, token=service.user_token, json={"job_id": job_id, **request})
    assert (status, again["status"], again["report_id"]) == (200, "ALREADY_SUBMITTED", first["report_id"])
    # The same id for something else: refused, naming what differs
    status, body = await api(
        "POST", url, token=service.user_token, json={"job_id": job_id, **request, "format": "PDF"}
    )
    assert status == 409 and body["fields"][0]["field"] == "format", body
    status, body = await api(
        "POST",
        f"{service.url}/exports",
        token=service.user_token,
        json={"job_id": job_id, "entity": "CONTROLS", "format": "CSV"},
    )
    assert status == 409 and body["fields"][0]["field"] == "job_type", body
    # Someone else's job id is not theirs to repeat
    status, body = await api("POST", url, token=service.admin_token, json={"job_id": job_id, **request})
    assert status == 409 and body["fields"][0]["field"] == "requested_by", body
    # The id spelt in capitals is the same id
    status, again = await api(
        "POST", url, token=service.user_token, json={"job_id": job_id.upper(), **request}
    )
    assert (status, again["report_id"]) == (200, first["report_id"]), again
    # A report id that names a finished report cannot be reused for another report
    reused = {**request, "format": "XLSX", "report_id": first["report_id"]}
    status, body = await api("POST", url, token=service.user_token, json=reused)
    assert status == 409 and "already names a different report" in body["error"], body
    async with service.db() as conn:
        reports = await conn.fetchval("SELECT count(*) FROM reports WHERE job_id = $1", UUID(job_id))
        exports = await conn.fetchval("SELECT count(*) FROM exports WHERE job_id = $1", UUID(job_id))
        attempts = await conn.fetchval("SELECT count(*) FROM job_attempts WHERE job_id = $1", UUID(job_id))
    assert (reports, exports, attempts) == (1, 0, 1)


async def test_one_job_delivered_twice_at_once_runs_once(service: Service) -> None:
    framework_id = await scenario_framework(service)
    payload = GenerateReportPayload(
        report_type="FRAMEWORK_SCORECARD", format="JSON", framework_id=framework_id
    )
    envelope = JobEnvelope.for_payload(payload, requested_by=service.org.user_ids[5])
    duplicates = 'governance_jobs_duplicate_total{queue="reporting"}'
    before = await metric_value(service.url, duplicates)
    # Both copies in one send: they arrive together, as a redelivery beside the original would
    producer = AIOKafkaProducer(bootstrap_servers=service.env["KAFKA_BOOTSTRAP_SERVERS"], acks="all")
    await producer.start()
    try:
        raw, key = envelope.model_dump_json().encode(), str(envelope.job_id).encode()
        sent = [await producer.send(envelope.topic, raw, key=key) for _ in range(2)]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    done = await wait_for_job(service.url, str(envelope.job_id), service.user_token, ("COMPLETED", "DEAD"))
    assert done["state"] == "COMPLETED"
    # The second copy is read after the first has finished: skipped, not run beside it
    assert await metric_value(service.url, duplicates, at_least=before + 1) == before + 1
    assert await report_ready_notifications(service, payload.report_id) == 1


async def report_json(service: Service, framework_id: UUID, **request: Any) -> dict[str, Any]:
    answer = await generate(
        service, service.user_token, format="JSON", framework_id=str(framework_id), **request
    )
    _, raw = await download(service, answer, service.user_token)
    return dict(json.loads(raw))


async def test_gap_analysis_matrix_and_filters_list_what_they_promise(service: Service) -> None:
    framework_id = await scenario_framework(service)
    engineering, finance = service.org.business_unit_ids[:2]

    # Gaps: not implemented first, then partial, then not assessed, family by family
    gaps = await report_json(service, framework_id, report_type="GAP_ANALYSIS")
    assert [(c["ref_id"], c["status"]) for c in gaps["controls"]] == [
        ("AC-2", NI),
        ("AC-3", P),
        ("AC-6", NAS),
        ("AU-6", NAS),
    ]
    assert gaps["totals"]["controls"] == 10  # totals stay over the whole scope
    assert next(c for c in gaps["controls"] if c["ref_id"] == "AC-2")["notes"] == "AC-2 round 0"

    # Filters: one family, one business unit, with evidence
    scoped = await report_json(
        service,
        framework_id,
        report_type="FRAMEWORK_SCORECARD",
        filters={"families": ["AU"], "business_unit_ids": [str(finance)]},
        include_evidence=True,
    )
    assert {c["ref_id"]: c["status"] for c in scoped["controls"]} == {
        "AU-1": NA,
        "AU-2": IMPL,
        "AU-3": IMPL,
        "AU-6": NAS,
    }
    assert scoped["totals"]["compliance_percent"] == 66.7
    assert [u["id"] for u in scoped["business_units"]] == [str(finance)]
    with_evidence = await report_json(
        service,
        framework_id,
        report_type="FRAMEWORK_SCORECARD",
        filters={"families": ["AC"]},
        include_evidence=True,
    )
    ac1 = next(c for c in with_evidence["controls"] if c["ref_id"] == "AC-1")
    assert [e["title"] for e in ac1["evidence"]] == ["Access review export", "Old screenshot"]
    statuses = await report_json(
        service, framework_id, report_type="FRAMEWORK_SCORECARD", filters={"statuses": [NAS, NI]}
    )
    assert sorted(c["ref_id"] for c in statuses["controls"]) == ["AC-2", "AC-6", "AU-6"]

    # Filters that name nothing are refused on their field, not answered with an empty report
    url = f"{service.url}/reports/generate"
    request = {"report_type": "FRAMEWORK_SCORECARD", "format": "JSON", "framework_id": str(framework_id)}
    for filters, field in (
        ({"business_unit_ids": [str(uuid4())]}, "filters.business_unit_ids"),
        ({"families": ["AC", "ac"]}, "filters.families"),
    ):
        status, body = await api("POST", url, token=service.user_token, json={**request, "filters": filters})
        assert status == 422 and body["fields"][0]["field"] == field, body
    assert "ac (it has AC, AU)" in body["fields"][0]["message"]
    gaps_only = {**request, "report_type": "GAP_ANALYSIS", "filters": {"statuses": [IMPL]}}
    status, body = await api("POST", url, token=service.user_token, json=gaps_only)
    assert status == 422 and "lists only gaps" in body["fields"][0]["message"], body

    # Matrix: a column per business unit
    answer = await generate(
        service,
        service.user_token,
        report_type="CONTROL_MATRIX",
        format="XLSX",
        framework_id=str(framework_id),
    )
    _, xlsx = await download(service, answer, service.user_token)
    matrix = openpyxl.load_workbook(io.BytesIO(xlsx))["Matrix"]
    rows = list(matrix.iter_rows(values_only=True))
    assert rows[0] == ("Control", "Title", "Family", "Engineering", "Finance", "Overall", "Evidence")
    by_ref = {row[0]: row for row in rows[1:]}
    assert by_ref["AC-2"][3:6] == ("Implemented", "Not implemented", "Not implemented")
    assert by_ref["AC-5"][3:6] == ("Implemented", "", "Implemented")
    assert engineering  # the first unit of the demo organisation is Engineering


async def test_hostile_control_text_is_shown_not_obeyed_in_pdf_and_xlsx(
    service: Service, listener: tuple[int, list[str]]
) -> None:
    port, requests = listener
    hostile = f'Review <img src="http://127.0.0.1:{port}/x"> file:///etc/passwd'
    formula = '=HYPERLINK("http://127.0.0.1:1/steal","click me")'
    framework_id = await scenario_framework(service, title_of={"AC-1": hostile, "AC-2": formula})
    for kind in ("FRAMEWORK_SCORECARD", "GAP_ANALYSIS", "CONTROL_MATRIX"):
        answer = await generate(
            service, service.user_token, report_type=kind, format="PDF", framework_id=str(framework_id)
        )
        _, pdf = await download(service, answer, service.user_token)
        text = pdf_text(pdf)
        assert "root:" not in text and "/bin/bash" not in text
        if kind == "FRAMEWORK_SCORECARD":
            assert f'<img src="http://127.0.0.1:{port}/x">' in text.replace("\n", " ")
    answer = await generate(
        service,
        service.user_token,
        report_type="FRAMEWORK_SCORECARD",
        format="XLSX",
        framework_id=str(framework_id),
    )
    _, xlsx = await download(service, answer, service.user_token)
    cells = {
        row[0].value: row[1]
        for row in openpyxl.load_workbook(io.BytesIO(xlsx))["Controls"].iter_rows(min_row=2)
    }
    assert (cells["AC-2"].value, cells["AC-2"].data_type) == (formula, "s")  # text, not a formula
    assert cells["AC-1"].value == hostile
    await asyncio.sleep(0.5)
    assert requests == []


@needs_shared_data
async def test_a_scorecard_of_the_real_nist_low_baseline(service: Service) -> None:
    framework = f"NIST SP 800-53 LOW {uuid4().hex[:6]}"
    imported = await run_import(service, LOW_BASELINE.name, LOW_BASELINE.read_bytes(), framework)
    assert imported["state"] == "COMPLETED", imported.get("error")
    framework_id = imported["result"]["framework_id"]
    answer = await generate(
        service,
        service.user_token,
        report_type="FRAMEWORK_SCORECARD",
        format="PDF",
        framework_id=framework_id,
    )
    _, pdf = await download(service, answer, service.user_token)
    text = pdf_text(pdf)
    assert "compliant across 149 controls in scope" in text
    for ref in ("AC-1", "AC-2", "IA-2(1)", "SR-12"):
        assert ref in text
    assert "Supply Chain Risk Management" in text
    answer = await generate(
        service,
        service.user_token,
        report_type="FRAMEWORK_SCORECARD",
        format="XLSX",
        framework_id=framework_id,
    )
    _, xlsx = await download(service, answer, service.user_token)
    book = openpyxl.load_workbook(io.BytesIO(xlsx))
    assert book["Controls"].max_row == 150
    families = [row[0] for row in book["Summary"].iter_rows(values_only=True)]
    assert families.count("AC") == 1 and "SR" in families


async def test_a_worker_killed_while_rendering_leaves_one_report_and_one_notification(
    service: Service,
) -> None:
    # Given a framework large enough that its PDF takes seconds to render
    framework_id = uuid4()
    async with service.db() as conn:
        await conn.execute(
            "INSERT INTO frameworks (id, name, version) VALUES ($1, $2, '1')", framework_id, "Large"
        )
        await conn.execute(
            """
            INSERT INTO controls (framework_id, ref_id, family, title, sort_key)
            SELECT $1, 'LG-' || n, 'LG', 'Generated control number ' || n, lpad(n::text, 6, '0')
              FROM generate_series(1, 1500) AS n
            """,
            framework_id,
        )
    status, answer = await api(
        "POST",
        f"{service.url}/reports/generate",
        token=service.user_token,
        json={"report_type": "FRAMEWORK_SCORECARD", "format": "PDF", "framework_id": str(framework_id)},
    )
    assert status == 202
    report_id = UUID(answer["report_id"])

    # When the worker is killed once rendering has begun
    victim = service.workers[0]
    async with service.db() as conn:
        for _ in range(600):
            progress = await conn.fetchval("SELECT progress FROM reports WHERE id = $1", report_id)
            if progress >= 25:
                break
            await asyncio.sleep(0.05)
    assert progress == 25, progress
    victim.signal(signal.SIGKILL)
    await victim.wait_exit()
    service.workers.remove(victim)
    await service.start_worker("r2")

    # Then the restarted worker finishes it: one object, one completed record, one notification
    done = await wait_for_job(
        service.url, answer["job_id"], service.user_token, ("COMPLETED", "DEAD"), timeout=180
    )
    assert done["state"] == "COMPLETED", done.get("error")
    async with service.db() as conn:
        row = await conn.fetchrow("SELECT * FROM reports WHERE id = $1", report_id)
        attempts = await conn.fetchval(
            "SELECT count(*) FROM job_attempts WHERE job_id = $1", UUID(answer["job_id"])
        )
    assert row["status"] == "COMPLETED" and attempts >= 1
    # The killed worker never finished it; the new one rendered it again from the start.
    finished = f'"msg": "job completed", "job_id": "{answer["job_id"]}"'
    assert finished not in victim.log_path.read_text()
    assert finished in service.workers[-1].log_path.read_text()
    async with open_storage(get_settings()) as storage:
        listed = await storage._client.list_objects_v2(  # a test may look behind the Storage API
            Bucket=storage.bucket, Prefix=row["s3_key"].rsplit(".", 1)[0]
        )
        assert [o["Key"] for o in listed["Contents"]] == [row["s3_key"]]
        assert listed["Contents"][0]["Size"] == row["size_bytes"]
        assert "compliant across 1500 controls" in pdf_text(await storage.get(row["s3_key"]))
    assert await report_ready_notifications(service, report_id) == 1
