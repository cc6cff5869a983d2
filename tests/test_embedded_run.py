"""`make run` keeps working: the embedded stack starts, the demo policy is distributed, the NIST LOW
baseline is imported and its scorecard produced as PDF and XLSX with download links, and a plain
SIGTERM stops all of it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from app.devstack import LOW_BASELINE

pytestmark = pytest.mark.integration

OWN_SERVICES = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "DATABASE_URL",
    "S3_ENDPOINT_URL",
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY",
    "APP_ID",
    "WEB_PORT",
    "JWT_SECRET",
)


async def fetch(url: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        return await resp.read()


def test_make_run_distributes_the_demo_policy_reports_on_a_catalog_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in OWN_SERVICES}
    log = tmp_path / "dev.log"
    command = [str(Path(sys.executable).with_name("governance")), "dev", "--workdir", str(tmp_path / "dev")]
    if LOW_BASELINE.is_file():  # as `make run CATALOG=...` passes it
        command += ["--catalog", str(LOW_BASELINE)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while "Serving until Ctrl-C" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        output = log.read_text()
        assert "COMPLETED  100%" in output
        assert "'recipients': 334" in output  # 500 demo users, two of three business units
        assert "export TOKEN=" in output
        if LOW_BASELINE.is_file():
            assert "149 controls in 18 families, 0 rejected" in output
            links = [
                line.split(": ", 1)[1] for line in output.splitlines() if "download (valid 7 days)" in line
            ]
            assert len(links) == 2 and ".pdf?" in links[0] and ".xlsx?" in links[1]
            assert asyncio.run(fetch(links[0])).startswith(b"%PDF")
            assert asyncio.run(fetch(links[1])).startswith(b"PK")  # a zip: XLSX
        else:
            assert "skipping the report demo" in output
        # A plain `kill` (SIGTERM) stops everything it started, as Ctrl-C does
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0, log.read_text()
        with pytest.raises(ProcessLookupError):  # nothing left of the stack in its process group
            os.killpg(process.pid, 0)
        worker_url = re.search(r"Worker starting at http://127\.0\.0\.1:(\d+)", output)
        assert worker_url is not None
        with pytest.raises(OSError):  # the worker (in a session of its own) is gone too
            socket.create_connection(("127.0.0.1", int(worker_url.group(1))), timeout=2).close()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
