"""Rendering reports and exports safely: PDFs that fetch nothing, spreadsheet cells that run nothing,
and CPU-bound rendering kept off the event loop.

- weasyprint gets a URL fetcher that serves only the service's bundled assets (app/report_assets)
  and refuses everything else: remote URLs, `file://` paths outside the assets, local network
  addresses. User text in the HTML must still be escaped by whoever builds it.
- A cell whose text starts with `=`, `+`, `-`, `@`, tab or carriage return would be a formula in a
  spreadsheet: CSV gets it with a leading apostrophe, XLSX gets it as a string cell (never a
  formula), so `=HYPERLINK(...)` arrives as inert text.
- PDF and XLSX rendering runs in a process pool with a time limit; a render that overruns is
  killed with its process (and only that one), so it never holds up heartbeats, rebalances or
  other flows. A render process exits by itself once its worker is gone, however the worker
  ended (SIGKILL, the shutdown grace exceeded, the OOM killer).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from weasyprint import HTML, URLFetcher

log = logging.getLogger(__name__)

ASSETS = (Path(__file__).parent / "report_assets").resolve()
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
PARENT_CHECK_SECONDS = 1.0
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
    """An xlsxwriter cell: numbers stay numbers, datetimes become Excel dates in UTC (give a date
    `cell_format`), everything else is a string cell, never a formula."""
    if value is None:
        return  # a blank cell (xlsxwriter writes nothing for it)
    if isinstance(value, datetime):
        naive = value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
        worksheet.write_datetime(row, column, naive, cell_format)
    elif isinstance(value, bool) or not isinstance(value, int | float):
        worksheet.write_string(row, column, str(value), cell_format)
    else:
        worksheet.write_number(row, column, value, cell_format)


def inert_text(value: object) -> str:
    """A cell value for CSV that no spreadsheet will evaluate."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


class RenderPool:
    """Processes for CPU-bound rendering, each running one render at a time, with a time limit.

    Every process is a single-worker executor of its own, so a render that overruns (or whose
    job was cancelled) is stopped by terminating its process alone: renders of other jobs in the
    other processes carry on, and a fresh process takes the stopped one's place.
    """

    def __init__(self, workers: int = 2) -> None:
        self.workers = workers
        self._idle: asyncio.Queue[ProcessPoolExecutor] | None = None

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float) -> T:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for _ in range(self.workers):
                self._idle.put_nowait(_new_process())
        executor = await self._idle.get()
        try:
            future = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            _terminate(executor)
            executor = _new_process()
            raise TimeoutError(f"rendering took longer than {timeout:.0f} s and was stopped") from None
        except (asyncio.CancelledError, BrokenProcessPool):
            _terminate(executor)  # a cancelled job's render would otherwise run on unseen
            executor = _new_process()
            raise
        finally:
            self._idle.put_nowait(executor)

    def close(self) -> None:
        """Stop the idle processes (renders in progress have finished by the time a worker stops)."""
        while self._idle is not None and not self._idle.empty():
            self._idle.get_nowait().shutdown(wait=True, cancel_futures=True)
        self._idle = None


def _new_process() -> ProcessPoolExecutor:
    # spawn: a forked child would inherit the worker's Kafka and database sockets.
    return ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_exit_with_parent,
        initargs=(os.getpid(),),
    )


def _exit_with_parent(parent_pid: int) -> None:
    """In a render process: exit once the worker that started it is gone. A worker that dies
    without shutting its pool down would otherwise leave its render processes behind for good."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _terminate(executor: ProcessPoolExecutor) -> None:
    # An executor cannot cancel a running call; its process (in a private map) is terminated.
    for process in list(getattr(executor, "_processes", {}).values()):
        process.terminate()
    executor.shutdown(wait=False, cancel_futures=True)
