"""Object storage on any S3-compatible endpoint (MinIO, SeaweedFS, AWS S3).

Keys are laid out by kind and date (`reports/2026/12/03/<name>`) so an operator can find and
expire objects by prefix; downloads go through presigned URLs, never through the workers.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from app.config import Settings

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Multipart uploads: S3 wants parts of at least 5 MiB (except the last).
PART_BYTES = 8 * 1024 * 1024


def safe_name(name: str) -> str:
    """A file name with no path and no characters that need quoting."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _UNSAFE.sub("_", base).strip("._") or "file"
    return cleaned[:120]


def object_key(kind: str, name: str, when: datetime | None = None) -> str:
    when = when or datetime.now(UTC)
    return f"{safe_name(kind)}/{when:%Y/%m/%d}/{safe_name(name)}"


class Storage:
    def __init__(self, client: Any, bucket: str) -> None:
        self._client = client
        self.bucket = bucket

    async def ensure_bucket(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except ClientError:
            await self._client.create_bucket(Bucket=self.bucket)

    async def check(self) -> None:
        """Raise unless the bucket is reachable (readiness; creating it is start-up's job)."""
        await self._client.head_bucket(Bucket=self.bucket)

    async def put(self, key: str, body: bytes, content_type: str) -> None:
        await self._client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)

    async def upload_file(self, key: str, path: Path, content_type: str, download_name: str) -> int:
        """Store a local file, in parts of PART_BYTES once it is larger than one part, so memory
        stays bounded whatever the file's size. Downloads save it as `download_name`."""
        headers = {
            "ContentType": content_type,
            "ContentDisposition": f'attachment; filename="{safe_name(download_name)}"',
        }
        with path.open("rb") as source:
            size = os.fstat(source.fileno()).st_size
            if size <= PART_BYTES:
                await self._client.put_object(Bucket=self.bucket, Key=key, Body=source.read(), **headers)
                return size
            upload = await self._client.create_multipart_upload(Bucket=self.bucket, Key=key, **headers)
            target = {"Bucket": self.bucket, "Key": key, "UploadId": upload["UploadId"]}
            try:
                parts: list[dict[str, Any]] = []
                while chunk := source.read(PART_BYTES):
                    number = len(parts) + 1
                    answer = await self._client.upload_part(**target, PartNumber=number, Body=chunk)
                    parts.append({"ETag": answer["ETag"], "PartNumber": number})
                await self._client.complete_multipart_upload(**target, MultipartUpload={"Parts": parts})
            except BaseException:
                with contextlib.suppress(Exception):  # the original error matters more
                    await self._client.abort_multipart_upload(**target)
                raise
        return size

    async def get(self, key: str) -> bytes:
        response = await self._client.get_object(Bucket=self.bucket, Key=key)
        async with response["Body"] as stream:
            return bytes(await stream.read())

    async def download(self, key: str, path: Path, max_bytes: int) -> int:
        """Stream an object to a local file in 1 MB pieces; refuse one larger than `max_bytes`."""
        response = await self._client.get_object(Bucket=self.bucket, Key=key)
        if response["ContentLength"] > max_bytes:
            response["Body"].close()
            raise ValueError(f"{key} is {response['ContentLength']} bytes; the limit is {max_bytes}")
        size = 0
        async with response["Body"] as stream:
            with path.open("wb") as out:
                while chunk := await stream.read(1 << 20):
                    size += len(chunk)
                    out.write(chunk)
        return size

    async def exists(self, key: str) -> bool:
        try:
            await self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError:
            return False
        return True

    async def presigned_url(self, key: str, expires_seconds: int = 7 * 24 * 3600) -> str:
        return str(
            await self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_seconds
            )
        )


@asynccontextmanager
async def open_storage(settings: Settings) -> AsyncIterator[Storage]:
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=settings.s3_endpoint_url,
                aws_access_key_id=settings.s3_access_key_id,
                aws_secret_access_key=settings.s3_secret_access_key,
                region_name=settings.s3_region,
                config=AioConfig(
                    s3={"addressing_style": "path"},
                    signature_version="s3v4",
                    connect_timeout=5,
                    read_timeout=60,
                    retries={"max_attempts": 3},
                ),
            )
        )
        yield Storage(client, settings.s3_bucket)
