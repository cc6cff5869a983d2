"""Control-framework import on the real catalogs in ../shared/data and on small hand-made files,
through the real intake (multipart upload), Kafka, PostgreSQL and S3."""

from __future__ import annotations

import json
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import pytest
import xlsxwriter

from app.config import get_settings
from app.devstack import LOW_BASELINE, SHARED_DATA
from app.storage import open_storage
from tests.service import Service, needs_shared_data, run_import, running_service, upload
from tests.workers import api, wait_for_job

pytestmark = pytest.mark.integration

CSF = SHARED_DATA / "frameworks" / "nist-csf-2.0.yaml"


@pytest.fixture(scope="module")
async def service(stack, tmp_path_factory) -> AsyncIterator[Service]:  # type: ignore[no-untyped-def]
    async with running_service(stack.env, tmp_path_factory.mktemp("workers"), ["i1"]) as svc:
        yield svc


async def report(key: str) -> dict[str, Any]:
    async with open_storage(get_settings()) as storage:
        return json.loads(await storage.get(key))


@needs_shared_data
async def test_the_nist_low_baseline_imports_with_its_families_enhancements_and_resolved_parameters(
    service: Service,
) -> None:
    framework = f"NIST SP 800-53 LOW {uuid4().hex[:6]}"
    done = await run_import(service, LOW_BASELINE.name, LOW_BASELINE.read_bytes(), framework)
    assert done["state"] == "COMPLETED", done.get("error")
    result = done["result"]
    assert result["format"] == "OSCAL"
    assert (result["families"], result["controls"], result["created"], result["rejected"]) == (
        18,
        149,
        149,
        0,
    )

    status, detail = await api(
        "GET", f"{service.url}/frameworks/{result['framework_id']}", token=service.user_token
    )
    assert status == 200
    counts = detail["counts"]
    assert (counts["families"], counts["controls"], counts["enhancements"], counts["withdrawn"]) == (
        18,
        131,
        18,
        0,
    )
    assert detail["families"][0] == {"ref_id": "AC", "title": "Access Control"}
    assert detail["imports"][0]["created"] == 149

    async with service.db() as conn:
        rows = {
            r["ref_id"]: r
            for r in await conn.fetch(
                "SELECT c.ref_id, c.statement, c.guidance, c.params, c.properties, p.ref_id AS parent"
                " FROM controls c LEFT JOIN controls p ON p.id = c.parent_id WHERE c.framework_id = $1",
                UUID(result["framework_id"]),
            )
        }
    assert rows["IA-2(1)"]["parent"] == "IA-2" and rows["IA-2"]["parent"] is None
    assert sum(r["parent"] is not None for r in rows.values()) == 18
    ac2 = rows["AC-2"]
    assert (
        "c. Require [Assignment: organization-defined prerequisites and criteria] for group"
        in ac2["statement"]
    )
    assert "  1. Authorized users of the system;" in ac2["statement"]  # nested parts stay readable
    assert "{{ insert: param, ac-02_odp.01 }}" in ac2["properties"]["statement_raw"]  # raw form kept
    assert not any("{{" in r["statement"] for r in rows.values())
    # A label that already says "organization-defined" is not prefixed again
    assert (
        "a. Develop, document, and disseminate to [Assignment: organization-defined personnel or roles]:"
        in (rows["AC-1"]["statement"])
    )
    assert not any("organization-defined organization-defined" in r["statement"] for r in rows.values())
    assert (
        "[Selection (one or more): organization-level; mission/business process-level; system-level]"
        in (rows["AC-1"]["statement"])
    )
    assert ac2["guidance"].startswith("Examples of system account types include")

    again = await run_import(service, LOW_BASELINE.name, LOW_BASELINE.read_bytes(), framework)
    assert (again["result"]["created"], again["result"]["updated"], again["result"]["unchanged"]) == (
        0,
        0,
        149,
    )


@needs_shared_data
async def test_the_nist_csf_library_rebuilds_its_tree_from_parent_urns(service: Service) -> None:
    framework = f"NIST CSF {uuid4().hex[:6]}"
    done = await run_import(service, CSF.name, CSF.read_bytes(), framework, version="2.0")
    assert done["state"] == "COMPLETED", done.get("error")
    result = done["result"]
    assert (result["format"], result["controls"], result["families"]) == ("CISO_ASSISTANT_YAML", 134, 6)
    async with service.db() as conn:
        kinds = dict(
            await conn.fetch(
                "SELECT kind, count(*) FROM controls WHERE framework_id = $1 GROUP BY kind",
                UUID(result["framework_id"]),
            )
        )
        assessable = await conn.fetchval(
            "SELECT count(*) FROM controls WHERE framework_id = $1 AND assessable",
            UUID(result["framework_id"]),
        )
        chain = await conn.fetch(
            """
            WITH RECURSIVE up AS (
                SELECT id, ref_id, title, parent_id, 0 AS n FROM controls
                 WHERE framework_id = $1 AND ref_id = 'GV.OC-01'
                UNION ALL
                SELECT c.id, c.ref_id, c.title, c.parent_id, up.n + 1
                  FROM controls c JOIN up ON c.id = up.parent_id
            ) SELECT ref_id, title FROM up ORDER BY n
            """,
            UUID(result["framework_id"]),
        )
        orphans = await conn.fetchval(
            "SELECT count(*) FROM controls WHERE framework_id = $1 AND depth > 1 AND parent_id IS NULL",
            UUID(result["framework_id"]),
        )
    assert kinds == {"function": 6, "category": 22, "subcategory": 106}
    assert assessable == 106 and orphans == 0
    assert [(r["ref_id"], r["title"]) for r in chain] == [
        ("GV.OC-01", "GV.OC-01"),  # leaves have no name: the ref_id is the title
        ("GV.OC", "Organizational Context"),
        ("GV", "GOVERN"),
    ]
    again = await run_import(service, CSF.name, CSF.read_bytes(), framework, version="2.0")
    assert (again["result"]["created"], again["result"]["updated"], again["result"]["unchanged"]) == (
        0,
        0,
        134,
    )

    status, page = await api(
        "GET",
        f"{service.url}/frameworks/{result['framework_id']}/controls?family=GV&q=mission&limit=5",
        token=service.user_token,
    )
    assert status == 200
    assert page["items"] and all(item["family"] == "GV" for item in page["items"])
    assert "GV.OC-01" in [item["ref_id"] for item in page["items"]]


async def test_a_changed_control_is_updated_and_its_previous_text_kept(service: Service) -> None:
    framework = f"Hand-made {uuid4().hex[:6]}"
    first = b"ref_id,title,description,family\nHM-1,Access policy,Have one.,HM\nHM-2,Backups,Daily.,HM\n"
    done = await run_import(service, "controls.csv", first, framework)
    assert done["result"]["created"] == 2
    second = first.replace(b"Daily.", b"Hourly.")
    done = await run_import(service, "controls.csv", second, framework)
    assert (done["result"]["created"], done["result"]["updated"], done["result"]["unchanged"]) == (0, 1, 1)
    async with service.db() as conn:
        history = await conn.fetch(
            "SELECT h.previous FROM control_history h JOIN controls c ON c.id = h.control_id"
            " WHERE c.framework_id = $1",
            UUID(done["result"]["framework_id"]),
        )
        current = await conn.fetchval(
            "SELECT statement FROM controls WHERE framework_id = $1 AND ref_id = 'HM-2'",
            UUID(done["result"]["framework_id"]),
        )
    assert len(history) == 1 and history[0]["previous"]["statement"] == "Daily."
    assert current == "Hourly."


async def test_two_uploads_of_one_file_name_each_import_their_own_file(service: Service) -> None:
    files = (b"ref_id,title\nUP-1,One\n", b"ref_id,title\nUP-1,One\nUP-2,Two\n")
    # Both uploaded before either is imported: a shared object key would hand both the second file
    answers = [
        (await upload(service, "controls.csv", data, f"Upload {uuid4().hex[:6]}"))[1] for data in files
    ]
    done = [await wait_for_job(service.url, a["job_id"], service.admin_token, timeout=120) for a in answers]
    assert [d["result"]["created"] for d in done] == [1, 2]
    async with service.db() as conn:
        keys = await conn.fetch(
            "SELECT payload->>'s3_key' AS key FROM jobs WHERE id = ANY($1::uuid[])",
            [UUID(a["job_id"]) for a in answers],
        )
    assert len({k["key"] for k in keys}) == 2


async def test_a_malformed_column_mapping_is_a_400(service: Service) -> None:
    form = aiohttp.FormData()
    form.add_field("file", b"ref_id,title\nX-1,One\n", filename="controls.csv")
    form.add_field("framework_name", "Malformed mapping")
    form.add_field("column_mapping", "{nope")
    status, body = await api("POST", f"{service.url}/imports", token=service.admin_token, data=form)
    assert status == 400 and "column_mapping is not valid JSON" in body["error"]


async def test_csv_quirks_are_read(service: Service) -> None:
    """BOM, semicolons, a quoted cell over three lines, a ragged row, Windows-1252, a tab file,
    and a column mapping with headers nobody would guess."""
    cases = {
        "bom-semicolon.csv": (
            "\ufeffref_id;title;statement\r\n"
            'Q-1;Multi;"line one\r\nline two; still\r\nline three"\r\n'
            "Q-2;Short\r\n"
        ).encode(),
        "cp1252.csv": "ref_id,title\nQ-1,Caf\xe9 r\xe8gles \u2013 d\xe9but\nQ-2,Na\xefve\n".encode("cp1252"),
        "tabs.tsv": b"ref_id\ttitle\textra\nQ-1\tTabbed\tx\ty\tz\nQ-2\tTwo\n",
    }
    for name, data in cases.items():
        done = await run_import(service, name, data, f"Quirks {name} {uuid4().hex[:4]}")
        assert done["state"] == "COMPLETED", (name, done.get("error"))
        assert (done["result"]["controls"], done["result"]["rejected"]) == (2, 0), name
    async with service.db() as conn:
        multi = await conn.fetchval(
            "SELECT statement FROM controls WHERE title = 'Multi' ORDER BY created_at DESC"
        )
        cafe = await conn.fetchval("SELECT title FROM controls WHERE ref_id = 'Q-1' AND title LIKE 'Caf%'")
    assert multi == "line one\r\nline two; still\r\nline three"
    assert cafe == "Caf\xe9 r\xe8gles \u2013 d\xe9but"

    mapped = b"Control Number,Requirement Name,Narrative\nM-1,Mapped,Text\n"
    done = await run_import(
        service,
        "mapped.csv",
        mapped,
        f"Mapped {uuid4().hex[:4]}",
        column_mapping={"ref_id": "Control Number", "title": "Requirement Name", "statement": "Narrative"},
    )
    assert (done["result"]["controls"], done["result"]["rejected"]) == (1, 0)


BAD_ROWS = (
    b"ref_id,title\n"
    b"B-1,Good\n"
    b",No id\n"  # row 3
    b"B-2,\n"  # row 4
    b"B-1,Again\n"  # row 5
    b"B-3,Good too\n" + b"B-" + b"9" * 120 + b",Too long\n"  # row 7
)


async def test_each_row_error_is_reported_with_its_location_and_the_error_mode_decides(
    service: Service,
) -> None:
    done = await run_import(service, "bad.csv", BAD_ROWS, f"Bad {uuid4().hex[:4]}", error_mode="SKIP")
    assert done["state"] == "COMPLETED"
    assert (done["result"]["controls"], done["result"]["rejected"]) == (2, 4)
    stored = await report(done["result"]["report_key"])
    assert [(e["location"], e["field"]) for e in stored["errors"]] == [
        ("row 3", "ref_id"),
        ("row 4", "title"),
        ("row 5", "ref_id"),
        ("row 7", "ref_id"),
    ]
    assert stored["errors"][2]["reason"] == "B-1 already appeared at row 2"

    stopped = await run_import(service, "bad.csv", BAD_ROWS, f"Bad {uuid4().hex[:4]}")  # STOP_FIRST
    assert stopped["state"] == "DEAD" and stopped["attempt"] == 1
    assert "stopped at row 3, ref_id: empty" in stopped["error"]["message"]

    limited = await run_import(
        service, "bad.csv", BAD_ROWS, f"Bad {uuid4().hex[:4]}", error_mode="THRESHOLD", error_threshold=2
    )
    assert "stopped at row 4, title: empty" in limited["error"]["message"]

    missing = await run_import(service, "nohead.csv", b"code,label\nX,Y\n", f"Bad {uuid4().hex[:4]}")
    assert missing["state"] == "DEAD"
    assert "no column for ['ref_id', 'title']" in missing["error"]["message"]


def write_xlsx(path: Path, sheet: str, rows: list[list[Any]], *, constant_memory: bool) -> bytes:
    with xlsxwriter.Workbook(path, {"constant_memory": constant_memory}) as book:
        book.add_worksheet("Notes").write(0, 0, "not the controls")
        worksheet = book.add_worksheet(sheet)
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                if value is not None:
                    worksheet.write(r, c, value)
    return path.read_bytes()


async def test_xlsx_reads_the_named_sheet_with_missing_and_inline_cells(
    service: Service, tmp_path: Path
) -> None:
    rows = [
        ["ref_id", "title", "guidance"],
        ["X-1", "First", None],
        ["X-2", "Second", "Some guidance"],
        [None, None],
    ]
    # constant_memory makes xlsxwriter store strings inline instead of in the shared-strings table
    for constant_memory in (False, True):
        data = write_xlsx(
            tmp_path / f"c{constant_memory}.xlsx", "Controls", rows, constant_memory=constant_memory
        )
        if constant_memory:
            with zipfile.ZipFile(tmp_path / f"c{constant_memory}.xlsx") as archive:
                assert b"inlineStr" in archive.read("xl/worksheets/sheet2.xml")
        done = await run_import(service, "book.xlsx", data, f"Book {uuid4().hex[:4]}", sheet_name="Controls")
        assert done["state"] == "COMPLETED", done.get("error")
        assert (done["result"]["format"], done["result"]["controls"], done["result"]["rejected"]) == (
            "XLSX",
            2,
            0,
        )

    wrong = await run_import(service, "book.xlsx", data, f"Book {uuid4().hex[:4]}", sheet_name="Missing")
    assert wrong["state"] == "DEAD" and "no sheet 'Missing'" in wrong["error"]["message"]


async def test_hostile_files_construct_nothing_and_read_nothing(service: Service, tmp_path: Path) -> None:
    marker = tmp_path / "pwned-by-import"
    yaml_bomb = f"objects:\n  framework: !!python/object/apply:os.system ['touch {marker}']\n".encode()
    done = await run_import(service, "evil.yaml", yaml_bomb, f"Evil {uuid4().hex[:4]}")
    assert done["state"] == "DEAD" and "not valid YAML" in done["error"]["message"]
    assert not marker.exists()

    # An XLSX whose sheet declares an external entity pointing at a local file.
    source = tmp_path / "plain.xlsx"
    write_xlsx(source, "Controls", [["ref_id", "title"], ["E-1", "placeholder"]], constant_memory=True)
    evil = tmp_path / "evil.xlsx"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(evil, "w") as forged:
        for item in original.infolist():
            content = original.read(item.filename)
            if item.filename == "xl/worksheets/sheet2.xml":
                content = content.replace(
                    b"?>", b'?><!DOCTYPE x [<!ENTITY leak SYSTEM "file:///etc/passwd">]>', 1
                ).replace(b"placeholder", b"&leak;")
            forged.writestr(item, content)
    done = await run_import(service, "evil.xlsx", evil.read_bytes(), f"Evil {uuid4().hex[:4]}")
    assert done["state"] == "DEAD" and "unreadable XLSX" in done["error"]["message"]
    async with service.db() as conn:
        leaked = await conn.fetchval("SELECT count(*) FROM controls WHERE title LIKE '%root:%'")
    assert leaked == 0
