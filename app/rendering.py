"""Rendering reports and exports safely: PDFs that fetch nothing, spreadsheet cells that run nothing,
and CPU-bound rendering kept off the event loop.

- weasyprint gets a URL fetcher that serves only the service's bundled assets (app/report_assets)
  and refuses everything else: remote URLs, `file://` paths outside the assets, local network
  addresses. User text in the HTML must still be escaped by whoever builds it.
- A cell whose text starts with `=`, `+`, `-`, `@`, tab or carriage return would be a formula in a
  spreadsheet: CSV gets it with a leading apostrophe, XLSX gets it as a string cell (never a
  formula), so `=HYPERLINK(...)` arrives as inert text.
- PDF and XLSX rendering runs in a process pool with a time limit; a render that overruns is
  killed with its process, so it never holds up heartbeats, rebalances or other flows.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from weasyprint import HTML, URLFetcher

log = logging.getLogger(__name__)

ASSETS = (Path(__file__).parent / "report_assets").resolve()
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
T = TypeVar("T")


class BundledAssetsOnly(URLFetcher):
    """Serves `file:` URLs inside ASSETS; every other URL is refused before any I/O happens."""

    def fetch(self, url: str, headers: Any = None) -> Any:
        parts = urlsplit(url)
        if parts.scheme == "file":
            path = Path(unquote(parts.path)).resolve()
            if path.is_relative_to(ASSETS) and path.is_file():
                return super().fetch(url, headers)
        log.warning("blocked a resource in rendered content", extra={"url": url[:200]})
        raise ValueError(f"resource not allowed in reports: {url[:200]}")


def render_pdf(html: str) -> bytes:
    """HTML to PDF bytes; relative URLs resolve inside the bundled assets."""
    pdf: bytes = HTML(
        string=html, base_url=f"{ASSETS.as_uri()}/", url_fetcher=BundledAssetsOnly()
    ).write_pdf()
    return pdf


def write_cell(worksheet: Any, row: int, column: int, value: object, cell_format: Any = None) -> None:
    """An xlsxwriter cell: numbers stay numbers, everything else is a string cell, never a formula."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        worksheet.write_string(row, column, "" if value is None else str(value), cell_format)
    else:
        worksheet.write_number(row, column, value, cell_format)


def inert_text(value: object) -> str:
    """A cell value for CSV that no spreadsheet will evaluate."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


class RenderPool:
    """A process pool for CPU-bound rendering, with a time limit per render."""

    def __init__(self, workers: int = 2) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: a forked child would inherit the worker's Kafka and database sockets.
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
        return self._pool

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._executor(), fn, *args), timeout)
        except TimeoutError:
            self.kill()
            raise TimeoutError(f"rendering took longer than {timeout} s and was stopped") from None

    def kill(self) -> None:
        """Stop every render in progress (their processes are terminated) and start afresh."""
        if self._pool is None:
            return
        # The executor cannot cancel a running task; its processes (a private map) are terminated.
        for process in list(getattr(self._pool, "_processes", {}).values()):
            process.terminate()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
