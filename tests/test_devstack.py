"""The dev stack is real: each service does the work the app will ask of it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiobotocore.session import ClientCreatorContext, get_session
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from botocore.config import Config
from botocore.exceptions import ClientError

from app.config import Settings, get_settings
from app.devstack import Stack
from app.devstack.kafka import start_tansu

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(stack: Stack) -> Settings:
    return get_settings()


async def _round_trip(bootstrap: str) -> list[tuple[bytes | None, bytes | None]]:
    """Create a topic (auto-creation is off), produce two records, consume them in a group."""
    topic = f"devstack-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k1")
        await producer.send_and_wait(topic, b"world", key=b"k2")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"g-{topic}", auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        records = [await asyncio.wait_for(consumer.getone(), 30) for _ in range(2)]
        await consumer.commit()
    finally:
        await consumer.stop()
    return [(record.key, record.value) for record in records]


async def test_kafka_produce_and_consume(settings: Settings) -> None:
    records = await _round_trip(settings.kafka_bootstrap_servers)
    assert records == [(b"k1", b"hello"), (b"k2", b"world")]


async def test_kafka_does_not_auto_create_topics(settings: Settings) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=1000)
    await producer.start()
    try:
        with pytest.raises(Exception):  # noqa: B017 - aiokafka raises KafkaTimeoutError here
            await producer.send_and_wait(f"undeclared-{uuid.uuid4().hex[:8]}", b"x")
    finally:
        await producer.stop()


async def test_tansu_embedded_broker(tmp_path: Path) -> None:
    broker = await asyncio.to_thread(start_tansu, tmp_path / "tansu")
    try:
        records = await _round_trip(broker.bootstrap)
    finally:
        broker.stop()
    assert records == [(b"k1", b"hello"), (b"k2", b"world")]


async def test_postgres_table_round_trip(settings: Settings) -> None:
    conn = await asyncpg.connect(settings.database_url)
    try:
        assert await conn.fetchval("SELECT current_user || '@' || current_database()") == (
            "governance@governance"
        )
        await conn.execute("CREATE TABLE devstack_probe (id serial PRIMARY KEY, body jsonb NOT NULL)")
        await conn.execute("INSERT INTO devstack_probe (body) VALUES ($1), ($2)", '{"a": 1}', '{"a": 2}')
        total = await conn.fetchval("SELECT sum((body->>'a')::int) FROM devstack_probe")
        await conn.execute("DROP TABLE devstack_probe")
    finally:
        await conn.close()
    assert total == 3


async def test_postgres_requires_the_password(settings: Settings) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(settings.database_url, password="not-the-password")


def _s3(settings: Settings, secret: str | None = None) -> ClientCreatorContext:
    return get_session().create_client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret or settings.s3_secret_access_key,
        region_name=settings.s3_region,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )


async def test_s3_objects_and_presigned_url(settings: Settings) -> None:
    bucket, key, body = settings.s3_bucket, f"devstack/{uuid.uuid4().hex}.bin", bytes(range(256)) * 64
    async with _s3(settings) as s3:
        await s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/octet-stream")
        response = await s3.get_object(Bucket=bucket, Key=key)
        async with response["Body"] as stream:
            assert await stream.read() == body
        listing = await s3.list_objects_v2(Bucket=bucket, Prefix="devstack/")
        assert key in [item["Key"] for item in listing.get("Contents", [])]

        url = await s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=60
        )
        async with aiohttp.ClientSession() as http, http.get(url) as download:
            assert download.status == 200
            assert await download.read() == body
        async with aiohttp.ClientSession() as http, http.get(url.split("?")[0]) as anonymous:
            assert anonymous.status == 403

        await s3.delete_object(Bucket=bucket, Key=key)
        listing = await s3.list_objects_v2(Bucket=bucket, Prefix="devstack/")
        assert listing.get("KeyCount", 0) == 0


async def test_s3_rejects_a_wrong_secret(settings: Settings) -> None:
    async with _s3(settings, secret="not-the-secret") as s3:
        with pytest.raises(ClientError) as error:
            await s3.list_objects_v2(Bucket=settings.s3_bucket)
    assert error.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
