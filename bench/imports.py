"""Benchmark: IMPORT_CONTROLS of a 1,200+ control OSCAL catalog and of a 100k-row CSV.

The catalog is the shared NIST SP 800-53 LOW baseline repeated with new ids (each copy's groups
and controls get a suffix), so it keeps the real structure: nested enhancements, parameters,
multi-level parts. Each import is timed from publishing the job (the file already in the bucket,
as an upstream producer would do) to COMPLETED, and the worker's peak resident memory (VmHWM) is
read from /proc after each. Baseline in the same run: a raw asyncpg COPY of the same 100k
control rows into the same table.

    python -m bench.imports [--copies 9] [--rows 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import csv
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg

from app.config import get_settings
from app.devstack import LOW_BASELINE, start_stack
from app.storage import open_storage
from bench import result, time_job
from models import ImportControlsPayload, JobEnvelope
from tests.service import prepare_service


def enlarged_catalog(copies: int) -> bytes:
    """The LOW baseline `copies` times; ids, labels and group ids get a per-copy suffix."""
    source = json.loads(LOW_BASELINE.read_bytes())
    groups = []
    for n in range(copies):
        for group in source["catalog"]["groups"]:
            clone = copy.deepcopy(group)
            clone["id"] = f"{group['id']}{n}"
            stack: list[dict[str, Any]] = list(clone.get("controls", []))
            while stack:
                control = stack.pop()
                control["id"] = f"{control['id']}-c{n}"
                for prop in control.get("props", []):
                    if prop.get("name") == "label":
                        prop["value"] = f"{prop['value']}-C{n}"
                stack.extend(control.get("controls", []))
            groups.append(clone)
    source["catalog"]["groups"] = groups
    return json.dumps(source).encode()


def control_row(n: int) -> tuple[str, str, str, str, str]:
    """ref_id, title, statement (two lines), guidance, family of generated control n."""
    family = f"F{n % 20:02d}"
    statement = f"The organization reviews accounts for control {n} every {n % 12 + 1} months;\n"
    statement += "exceptions are logged."
    return (
        f"{family}-{n}",
        f"Control {n}: keep records of access reviews",
        statement,
        "Reviews cover privileged and shared accounts.",
        family,
    )


def large_csv(rows: int) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["ref_id", "title", "statement", "guidance", "family"])
    writer.writerows(control_row(n) for n in range(rows))
    return out.getvalue().encode()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def import_and_time(
    env: dict[str, str], key: str, data: bytes, name: str
) -> tuple[float, dict[str, Any]]:
    async with open_storage(get_settings()) as storage:
        await storage.put(key, data, "application/octet-stream")
    payload = ImportControlsPayload(
        s3_key=key, framework_name=name, framework_version="bench", batch_size=500
    )
    return await time_job(env, JobEnvelope.for_payload(payload))


async def copy_baseline(dsn: str, rows: int) -> float:
    """Seconds for a raw COPY of the CSV's rows into controls (a throwaway framework)."""
    conn = await asyncpg.connect(dsn)
    try:
        framework = await conn.fetchval(
            "INSERT INTO frameworks (name, version) VALUES ($1, 'copy') RETURNING id", f"Copy {uuid4()}"
        )
        records = [(framework, *control_row(n), f"{n:06d}") for n in range(rows)]
        started = time.perf_counter()
        await conn.copy_records_to_table(
            "controls",
            records=records,
            columns=["framework_id", "ref_id", "title", "statement", "guidance", "family", "sort_key"],
        )
        elapsed = time.perf_counter() - started
        await conn.execute("DELETE FROM frameworks WHERE id = $1", framework)
        return elapsed
    finally:
        await conn.close()


async def run(copies: int, rows: int, workdir: Path) -> None:
    with start_stack(workdir) as stack:
        service = await prepare_service(stack.env, workdir)
        worker = await service.start_worker("bench")
        try:
            catalog = enlarged_catalog(copies)
            seconds, summary = await import_and_time(
                service.env, f"imports/bench-{uuid4()}.json", catalog, "Catalog"
            )
            result("catalog_controls", summary["controls"], "controls")
            result("catalog_import_seconds", seconds, "s")
            result("catalog_controls_per_second", summary["controls"] / seconds, "controls/s")
            seconds, summary = await import_and_time(
                service.env, f"imports/bench-{uuid4()}.json", catalog, "Catalog"
            )
            result("catalog_reimport_unchanged_seconds", seconds, "s")

            data = large_csv(rows)
            result("csv_megabytes", len(data) / 1e6, "MB")
            copy_seconds = await copy_baseline(service.env["DATABASE_URL"], rows)
            result("copy_baseline_seconds", copy_seconds, "s")
            result("copy_baseline_rows_per_second", rows / copy_seconds, "rows/s")
            seconds, summary = await import_and_time(service.env, f"imports/bench-{uuid4()}.csv", data, "CSV")
            assert summary["controls"] == rows, summary
            result("csv_import_seconds", seconds, "s")
            result("csv_rows_per_second", rows / seconds, "rows/s")
            result("csv_vs_copy_ratio", (rows / seconds) / (rows / copy_seconds), "x")
            assert worker.process is not None
            result("worker_peak_rss_megabytes", peak_rss_mb(worker.process.pid), "MB")
        finally:
            service.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--copies", type=int, default=9, help="copies of the LOW baseline (149 controls each)"
    )
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-imports-") as tmp:
        asyncio.run(run(args.copies, args.rows, Path(os.environ.get("BENCH_WORKDIR", tmp))))


if __name__ == "__main__":
    main()
