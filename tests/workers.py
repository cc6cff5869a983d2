"""Real `governance worker` processes for integration tests, which a test may SIGTERM or SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

GOVERNANCE = str(Path(sys.executable).with_name("governance"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WorkerProcess:
    def __init__(self, env: dict[str, str], log_dir: Path, name: str) -> None:
        self.port = free_port()
        self.name = name
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "WEB_PORT": str(self.port), "WEB_HOST": "127.0.0.1"}
        self.log_path = log_dir / f"worker-{name}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [GOVERNANCE, "worker"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        return self

    async def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    async with session.get(f"{self.url}/ready", timeout=aiohttp.ClientTimeout(5)) as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.5)
        raise TimeoutError(f"worker {self.name} not ready in {timeout}s:\n{self.log_tail()}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait_exit(self, timeout: float = 60) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {self.name} did not exit:\n{self.log_tail()}")
            await asyncio.sleep(0.2)
        return self.process.returncode

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


async def api(
    method: str, url: str, *, token: str | None = None, json: Any = None, data: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, url, json=json, data=data, headers=headers, timeout=aiohttp.ClientTimeout(30)
        ) as resp,
    ):
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


async def metric_value(base_url: str, sample: str, *, at_least: float = 0, timeout: float = 20) -> float:
    """A Prometheus sample from /metrics (its lines starting with `sample`, summed; 0 while absent),
    polled until it reaches `at_least` or `timeout` seconds pass; the last value read."""
    deadline = time.monotonic() + timeout
    while True:
        _, text = await api("GET", f"{base_url}/metrics")
        value = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample))
        if value >= at_least or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


async def wait_for_job(
    base_url: str, job_id: str, token: str, states: tuple[str, ...] = ("COMPLETED",), timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        status, body = await api("GET", f"{base_url}/jobs/{job_id}", token=token)
        last = (status, body)
        if status == 200 and body.get("state") in states:
            return dict(body)
        await asyncio.sleep(0.3)
    raise TimeoutError(f"job {job_id} not in {states} after {timeout}s; last answer {last}")
