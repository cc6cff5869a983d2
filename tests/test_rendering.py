"""Safe rendering: a PDF built from hostile control text fetches nothing and reads no local file,
spreadsheet cells that look like formulas stay text, an overrunning render is stopped, and render
processes do not outlive their worker.

The PDF is rendered the way reports will be, in the spawn-based process pool, and the hostile
URLs point at a real HTTP server on loopback that counts every request it gets.
"""

from __future__ import annotations

import asyncio
import csv
import html
import io
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openpyxl
import pytest
import xlsxwriter
from pypdf import PdfReader

from app.rendering import ASSETS, BundledAssetsOnly, RenderPool, inert_text, render_pdf, write_cell

HOSTILE = 'Review <img src="http://127.0.0.1:{port}/x"> and file:///etc/passwd =HYPERLINK("http://evil")'


@pytest.fixture(scope="module")
def pool() -> Iterator[RenderPool]:
    renderer = RenderPool(workers=2)
    yield renderer
    renderer.close()


async def test_a_pdf_from_hostile_text_fetches_nothing_and_reads_no_local_file(
    listener: tuple[int, list[str]], pool: RenderPool
) -> None:
    port, requests = listener
    text = HOSTILE.format(port=port)
    # Escaped, as report builders must do; and, behind that, markup that escaped nobody's escaping.
    document = f"""<!doctype html><html><head><link rel="stylesheet" href="report.css">
      <link rel="stylesheet" href="http://127.0.0.1:{port}/remote.css">
      <style>@import url("http://127.0.0.1:{port}/import.css");
             body {{ background: url(file:///etc/passwd) }}</style>
      </head><body><h1>Scorecard</h1><p>{html.escape(text)}</p>
      <img src="http://127.0.0.1:{port}/raw.png"><img src="file:///etc/passwd"><img src="http://169.254.169.254/x">
      <iframe src="file:///etc/passwd"></iframe><object data="file:///etc/hostname"></object></body></html>"""
    pdf = await pool.run(render_pdf, document, timeout=60)
    assert pdf.startswith(b"%PDF")
    words = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    assert f'<img src="http://127.0.0.1:{port}/x">' in words  # the user's text, shown, not obeyed
    assert "root:" not in words and "/bin/" not in words
    await asyncio.sleep(0.5)
    assert requests == []


def test_only_bundled_assets_are_served() -> None:
    fetcher = BundledAssetsOnly()
    assert fetcher.fetch((ASSETS / "report.css").as_uri()) is not None
    for url in (
        "file:///etc/passwd",
        (ASSETS / ".." / "config.py").as_uri(),  # a path that climbs out of the assets
        "http://127.0.0.1:1/x",
        "https://example.com/logo.png",
        "ftp://10.0.0.1/x",
    ):
        with pytest.raises(ValueError, match="not allowed"):
            fetcher.fetch(url)


def test_formula_cells_come_out_inert_in_csv_and_xlsx(tmp_path: Path) -> None:
    values = ['=HYPERLINK("http://evil","click")', "+1+1", "-2", "@SUM(A1)", "\tx", "\rx", "plain", 42]
    out = io.StringIO()
    csv.writer(out).writerow([inert_text(v) for v in values])
    row = next(csv.reader(io.StringIO(out.getvalue())))
    assert row[:6] == ["'" + str(v) for v in values[:6]] and row[6:] == ["plain", "42"]

    path = tmp_path / "cells.xlsx"
    with xlsxwriter.Workbook(path) as book:
        sheet = book.add_worksheet("Export")
        for column, value in enumerate(values):
            write_cell(sheet, 0, column, value)
    cells = next(openpyxl.load_workbook(path).active.iter_rows())
    assert [c.data_type for c in cells] == ["s"] * 7 + ["n"]  # strings, never formulas
    assert cells[0].value == values[0] and cells[7].value == 42


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def test_a_render_that_overruns_is_stopped_alone_and_the_pool_recovers(pool: RenderPool) -> None:
    started = time.monotonic()
    # Given a render of another job running beside it
    neighbour = asyncio.create_task(pool.run(_sleep, 3, timeout=30))
    # When one render overruns its limit
    with pytest.raises(TimeoutError, match="stopped"):
        await pool.run(_sleep, 30, timeout=1)
    # Then it is stopped at its limit, the neighbour finishes, and the pool has both processes again
    assert time.monotonic() - started < 5
    assert await neighbour == 3
    assert await asyncio.gather(pool.run(_sleep, 0, timeout=30), pool.run(_sleep, 0, timeout=30)) == [0, 0]


# A stand-in worker: starts a render pool, prints the pid of its render process, then waits.
WORKER_WITH_POOL = """
import asyncio, os
from app.rendering import RenderPool

async def main():
    print(await RenderPool(workers=1).run(os.getpid, timeout=60), flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # exited; a zombie waits only for its new parent to reap it


def test_render_processes_exit_when_their_worker_is_killed() -> None:
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER_WITH_POOL], stdout=subprocess.PIPE, cwd=Path(__file__).parents[1]
    )
    try:
        assert worker.stdout is not None
        render_pid = int(worker.stdout.readline())
        assert not _gone(render_pid)
        worker.kill()  # no shutdown, no pool.close()
        worker.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not _gone(render_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(render_pid), "the render process outlived its worker"
    finally:
        worker.kill()
