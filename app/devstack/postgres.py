"""A throwaway PostgreSQL cluster: initdb into a temp dir, start on a free loopback port.

Tests get a real server with the production auth path (password over TCP) and durability
switched off for speed. initdb and postgres refuse to run as root, and CI runs as root, so
under root both run as an unprivileged user (``postgres`` if it exists, else ``governance-dev``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from app.devstack import DevstackError, free_port, log_tail

DB_NAME = "governance"
DB_USER = "governance"
SUPERUSER = "postgres"  # the database superuser, reached over the unix socket only
OS_USER = "postgres"  # Debian's postgresql package creates it
FALLBACK_USER = "governance-dev"

SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


def pg_bindir() -> Path:
    """The server binaries: $PG_BINDIR, ``pg_config --bindir``, or the newest Debian install."""
    candidates: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(result.stdout.strip()))
    installs = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(installs, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)[::-1]
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise DevstackError("PostgreSQL server binaries (initdb, pg_ctl) not found; install `postgresql`")


def _server_user() -> pwd.struct_passwd | None:
    """The account to run the server as when we are root; None means "as ourselves"."""
    if os.geteuid() != 0:
        return None
    for name in (OS_USER, FALLBACK_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    cmd = ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    subprocess.run([*cmd, FALLBACK_USER], capture_output=True, check=False)  # may race: recheck
    try:
        return pwd.getpwnam(FALLBACK_USER)
    except KeyError:
        raise DevstackError(f"could not create the system user {FALLBACK_USER!r} for PostgreSQL") from None


@dataclass
class PostgresCluster:
    """A running cluster; ``dsn`` connects as the ``governance`` role to its own database."""

    name: str
    dsn: str
    root: Path  # data dir, unix socket and server log
    workdir: Path  # differs from root when the server user needed a private temp dir
    run_as: list[str]
    bindir: Path
    startup_seconds: float = 0.0

    @property
    def env(self) -> dict[str, str]:
        return {"DATABASE_URL": self.dsn}

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def stop(self) -> None:
        """Fast shutdown (disconnect clients, no checkpoint wait), then drop a private root."""
        pg_ctl = [*self.run_as, str(self.bindir / "pg_ctl"), "stop", "-D", str(self.root / "data")]
        subprocess.run([*pg_ctl, "-m", "fast", "-w", "-t", "30"], capture_output=True, check=False)
        if self.root != self.workdir:
            if self.log.is_file():
                shutil.copy(self.log, self.workdir / "postgres.log")
            shutil.rmtree(self.root, ignore_errors=True)


def _run(cmd: list[str], what: str, *, log: Path | None = None, cwd: Path | None = None) -> None:
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, check=False, cwd=cwd, start_new_session=True
    )
    if result.returncode != 0:
        server_log = f"\n--- server log ---\n{log_tail(log)}" if log else ""
        raise DevstackError(
            f"{what} failed ({result.returncode}):\n{result.stdout}{result.stderr}{server_log}"
        )


def start_postgres(workdir: Path, *, password: str = "governance") -> PostgresCluster:
    """initdb, start with test-friendly settings, create role and database ``governance``."""
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    bindir, user = pg_bindir(), _server_user()
    if user is None:
        cluster = PostgresCluster("postgres", "", workdir, workdir, [], bindir)
    else:
        # The server user usually cannot traverse the caller's (0700) temp dirs: give it its own.
        root = Path(tempfile.mkdtemp(prefix="governance-pg-"))
        os.chown(root, user.pw_uid, user.pw_gid)
        run_as = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]
        cluster = PostgresCluster("postgres", "", root, workdir, run_as, bindir)
    try:
        port = _init_and_start(cluster, password)
    except BaseException:
        cluster.stop()
        raise
    cluster.dsn = f"postgresql://{DB_USER}:{quote(password, safe='')}@127.0.0.1:{port}/{DB_NAME}"
    cluster.startup_seconds = time.monotonic() - started
    return cluster


def _init_and_start(cluster: PostgresCluster, password: str) -> int:
    root, datadir, run_as, port = cluster.root, cluster.root / "data", cluster.run_as, free_port()
    initdb = [str(cluster.bindir / "initdb"), "-D", str(datadir), "-U", SUPERUSER, "-E", "UTF8"]
    initdb += [
        "--no-locale",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "--no-sync",
        "--no-instructions",
    ]
    _run([*run_as, *initdb], "initdb", cwd=root)
    settings = {**SETTINGS, "port": str(port), "unix_socket_directories": f"'{root}'"}
    with (datadir / "postgresql.conf").open("a") as conf:
        conf.write("".join(f"{key} = {value}\n" for key, value in settings.items()))

    pg_ctl = [str(cluster.bindir / "pg_ctl"), "start", "-D", str(datadir), "-l", str(cluster.log)]
    _run([*run_as, *pg_ctl, "-w", "-t", "60"], "pg_ctl start", log=cluster.log, cwd=root)

    # psql is happy to run as root; trust on the unix socket lets it act as the superuser.
    psql = [str(cluster.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(root)]
    psql += ["-p", str(port), "-U", SUPERUSER, "-d", "postgres"]
    literal = password.replace("'", "''")
    # CREATEDB (not superuser): tests may isolate themselves in a database of their own.
    psql += ["-c", f"CREATE ROLE {DB_USER} LOGIN CREATEDB PASSWORD '{literal}'"]
    psql += ["-c", f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}"]
    _run(psql, "creating the governance role and database", log=cluster.log)
    return port
