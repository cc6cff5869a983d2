"""Shared fixtures: one real Kafka + PostgreSQL + S3 stack per test session.

Services named by KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL / S3_ENDPOINT_URL (+ keys) are used
as given; the rest are started locally (see app.devstack). DEVSTACK_EMBEDDED=1 swaps Apache
Kafka for the bundled Tansu broker.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web

from app.config import get_settings
from app.devstack import Stack, start_stack
from tests.workers import free_port

_startup_key = pytest.StashKey[dict[str, float]]()


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The started services; their env vars are in os.environ so get_settings() sees them."""
    workdir = tmp_path_factory.mktemp("devstack")
    started = start_stack(workdir, embedded=os.environ.get("DEVSTACK_EMBEDDED") == "1")
    request.config.stash[_startup_key] = started.startup_seconds()
    saved = {name: os.environ.get(name) for name in started.env}
    os.environ.update(started.env)
    get_settings.cache_clear()
    try:
        yield started
    finally:
        started.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Report service start-up times: they are most of the integration suite's fixed cost."""
    startup = config.stash.get(_startup_key, None)
    if startup:
        times = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in startup.items())
        terminalreporter.write_line(f"devstack start-up: {times}")


@pytest.fixture
async def listener() -> AsyncIterator[tuple[int, list[str]]]:
    """A real HTTP server on loopback that records the path of every request it gets (and answers
    each with a stylesheet, so a renderer that did fetch would also use what it got)."""
    requests: list[str] = []

    async def record(request: web.Request) -> web.Response:
        requests.append(request.path)
        return web.Response(body=b"body{color:red}", content_type="text/css")

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port, requests
    finally:
        await runner.cleanup()
