"""`governance` command: worker, migrate, topics, enqueue, token, schema, dlq, dev, preview."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from uuid import UUID

from app.config import get_settings


def cmd_worker(args: argparse.Namespace) -> None:
    from app.worker import run_worker

    run_worker()


def cmd_migrate(args: argparse.Namespace) -> None:
    from app.db import migrate

    applied = asyncio.run(migrate(get_settings().database_url))
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")


def cmd_topics_ensure(args: argparse.Namespace) -> None:
    from app.topics import ensure_topics

    reports = asyncio.run(ensure_topics(get_settings()))
    for report in reports:
        print(f"{report.name}: {report.action}")
    if any(r.action.startswith("mismatch") for r in reports):
        sys.exit(1)


def cmd_enqueue(args: argparse.Namespace) -> None:
    from app.producer import JobProducer
    from models import JobType, payload_model_for

    job_type = JobType(args.job_type)
    payload = payload_model_for(job_type).model_validate_json(Path(args.data).read_bytes())

    async def send() -> None:
        async with JobProducer() as producer:
            envelope = await producer.enqueue(
                payload,
                job_id=UUID(args.job_id) if args.job_id else None,
                requested_by=UUID(args.requested_by) if args.requested_by else None,
            )
        print(json.dumps({"job_id": str(envelope.job_id), "topic": envelope.topic}))

    asyncio.run(send())


def cmd_token(args: argparse.Namespace) -> None:
    from app.auth import issue_token
    from models import Role

    secret = get_settings().jwt_secret
    if not secret:
        sys.exit("JWT_SECRET is not set")
    print(issue_token(secret, UUID(args.user), [Role(r) for r in args.roles]))


def cmd_schema(args: argparse.Namespace) -> None:
    from models.schema import main as write_schemas

    write_schemas()


def cmd_dev(args: argparse.Namespace) -> None:
    from app.devstack.embedded import run_embedded

    run_embedded(Path(args.workdir), Path(args.catalog) if args.catalog else None)


def cmd_preview(args: argparse.Namespace) -> None:
    from app.devstack.embedded import preview_scorecard

    preview_scorecard(
        Path(args.workdir), Path(args.catalog) if args.catalog else None, Path(args.out), args.pages
    )


def cmd_dlq(args: argparse.Namespace) -> None:
    """Dead-letter management straight against PostgreSQL and Kafka (no worker needed)."""
    from datetime import timedelta

    from app import deadletters, jobstore
    from app.db import connect
    from app.producer import JobProducer
    from models import Flow, JobEnvelope

    async def run() -> object:
        queue = Flow(args.queue)
        conn = await connect(get_settings().database_url)
        try:
            if args.action == "list":
                older = timedelta(hours=args.older_than_hours) if args.older_than_hours else None
                return await deadletters.list_letters(
                    conn,
                    queue,
                    job_type=args.job_type,
                    older_than=older,
                    limit=args.limit,
                    offset=args.offset,
                )
            if args.action == "show":
                return await deadletters.show(conn, queue, UUID(args.id)) or {"error": "not found"}
            if args.action == "purge":
                return {"purged": await deadletters.purge(conn, queue, args.older_than_days, None)}
            async with JobProducer() as producer:

                async def submit(conn: object, envelope: JobEnvelope) -> bool:
                    if await jobstore.record_queued(conn, [envelope]):
                        await producer.send_envelope(envelope)
                        return True
                    return False

                if args.action == "retry":
                    replayed = await deadletters.replay(conn, queue, UUID(args.id), None, submit)
                    return {"job_id": str(replayed.job_id), "submitted": replayed.submitted}
                return await deadletters.replay_all(conn, queue, None, submit, limit=args.limit)
        finally:
            await conn.close()

    print(json.dumps(asyncio.run(run()), indent=2, default=str))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="governance", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="run a Faust worker (HTTP on WEB_PORT)").set_defaults(func=cmd_worker)
    sub.add_parser("migrate", help="apply pending database migrations").set_defaults(func=cmd_migrate)
    topics = sub.add_parser("topics", help="topic administration").add_subparsers(
        dest="action", required=True
    )
    topics.add_parser("ensure", help="create or check every topic").set_defaults(func=cmd_topics_ensure)
    enqueue = sub.add_parser("enqueue", help="publish a job read from a JSON payload file")
    enqueue.add_argument("job_type")
    enqueue.add_argument("--data", required=True, help="file holding the payload as JSON")
    enqueue.add_argument("--job-id", help="make the request idempotent with your own UUID")
    enqueue.add_argument("--requested-by", help="UUID of the requesting user")
    enqueue.set_defaults(func=cmd_enqueue)
    token = sub.add_parser("token", help="issue a development token signed with JWT_SECRET")
    token.add_argument("--user", required=True)
    token.add_argument("--roles", nargs="+", default=["ADMIN"])
    token.set_defaults(func=cmd_token)
    dlq = sub.add_parser("dlq", help="dead letters: list, show, retry, retry-all, purge")
    dlq_actions = dlq.add_subparsers(dest="action", required=True)
    listing = dlq_actions.add_parser("list")
    listing.add_argument("queue")
    listing.add_argument("--job-type")
    listing.add_argument("--older-than-hours", type=float)
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--offset", type=int, default=0)
    for action in ("show", "retry"):
        one = dlq_actions.add_parser(action)
        one.add_argument("queue")
        one.add_argument("id")
    retry_all = dlq_actions.add_parser("retry-all")
    retry_all.add_argument("queue")
    retry_all.add_argument("--limit", type=int, default=100)
    purge = dlq_actions.add_parser("purge")
    purge.add_argument("queue")
    purge.add_argument("--older-than-days", type=float, required=True)
    dlq.set_defaults(func=cmd_dlq)
    sub.add_parser("schema", help="regenerate JSON Schema and AsyncAPI files").set_defaults(func=cmd_schema)
    dev = sub.add_parser("dev", help="embedded stack + worker + the main jobs on demo data, until Ctrl-C")
    dev.add_argument("--workdir", default=os.environ.get("DEV_WORKDIR", "var/dev"))
    dev.add_argument(
        "--catalog", help="OSCAL catalog to import and report on (default: the shared LOW baseline)"
    )
    dev.set_defaults(func=cmd_dev)
    preview = sub.add_parser("preview", help="a scorecard PDF of a catalog, its first pages as PNG")
    preview.add_argument("--workdir", default="var/preview-stack")
    preview.add_argument("--catalog", help="OSCAL catalog (default: the shared LOW baseline)")
    preview.add_argument("--out", default="var/preview")
    preview.add_argument("--pages", type=int, default=4)
    preview.set_defaults(func=cmd_preview)
    args = parser.parse_args(argv)
    args.func(args)
