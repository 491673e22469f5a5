"""A private PostgreSQL server in a folder of ours: for the tests and for ``ivr cluster``.

Debian's ``postgresql`` package supplies the binaries; the cluster is never the system one. It
is made with ``initdb`` in ``folder`` (password authentication only, for a superuser of ours),
listens on one loopback port and a socket in the folder, and runs as an unprivileged user:
PostgreSQL refuses to run as root, so when we are root the folder is handed to ``nobody``.

    with LocalPostgres(tmp / "pg") as pg:
        url = pg.create_database("ivr_test")   # postgresql+psycopg://ivr:...@127.0.0.1:P/ivr_test
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from ivr.errors import IvrError

SUPERUSER = "ivr"
RUN_AS_WHEN_ROOT = "nobody"


class PostgresUnavailable(IvrError):
    """PostgreSQL's programs are not installed, or the server would not start."""


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs (the newest Debian version installed)."""
    override = os.environ.get("IVR_POSTGRES_BIN")
    if override:
        return Path(override)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                      else 0)
    if versions:
        return versions[-1].parent
    found = shutil.which("postgres")
    if found:
        return Path(found).parent
    raise PostgresUnavailable("PostgreSQL is not installed (apt-get install postgresql)")


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class LocalPostgres:
    """One PostgreSQL server: ``start()`` (initdb on first use), ``stop()``, databases."""

    def __init__(self, folder: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.folder = folder.resolve()
        self.data = self.folder / "data"
        self.host = host
        self.port = port or free_tcp_port(host)
        self.bin = postgres_bin()
        self._password_file = self.folder / "superuser.password"
        self._process: subprocess.Popen[bytes] | None = None
        self._user = pwd.getpwnam(RUN_AS_WHEN_ROOT) if os.geteuid() == 0 else None

    @property
    def password(self) -> str:
        """The superuser's password (made at initdb, kept 0600 in the folder)."""
        return self._password_file.read_text().strip()

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of ``database`` as the superuser."""
        return (f"postgresql+psycopg://{SUPERUSER}:{self.password}@{self.host}:{self.port}/"
                f"{database}")

    def _run_as(self) -> dict[str, int]:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid}

    def _give(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def init(self) -> None:
        """Make the cluster if the folder has none (idempotent)."""
        if (self.data / "PG_VERSION").is_file():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)
        if self._user is not None:
            closed = [p for p in self.folder.parents if not p.stat().st_mode & 0o001]
            if closed:
                raise PostgresUnavailable(
                    f"{self.folder}: the server runs as {RUN_AS_WHEN_ROOT} (never as root), "
                    f"who cannot enter {closed[0]}; choose a folder under an open one")
        if not self._password_file.is_file():
            self._password_file.write_text(secrets.token_urlsafe(24) + "\n")
            self._password_file.chmod(0o600)
        # initdb reads the password from a file the server's user can read; removed after.
        pwfile = self.folder / ".initdb-password"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._give(pwfile)
        self.data.mkdir(mode=0o700, exist_ok=True)
        self._give(self.data)
        self._give(self.folder)
        try:
            done = subprocess.run(
                [str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                 f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8",
                 "--locale=C.UTF-8", "--no-instructions"],
                capture_output=True, text=True, check=False, **self._run_as())  # type: ignore[call-overload]
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {done.stderr.strip()[-500:]}")

    def start(self, timeout_s: float = 30.0) -> LocalPostgres:
        """Start the server (initdb first if needed) and wait until it takes connections."""
        self.init()
        log = (self.folder / "server.log").open("ab")
        self._give(self.folder / "server.log")
        self._process = subprocess.Popen(  # type: ignore[call-overload]
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", f"listen_addresses={self.host}", "-c", f"unix_socket_directories={self.folder}",
             "-c", "max_connections=200", "-c", "fsync=on", "-c", "log_min_messages=warning"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **self._run_as())
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process.poll() is not None:
                raise PostgresUnavailable(f"postgres exited ({self._process.returncode}): "
                                          f"{self.log_tail()}")
            if self._accepts():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise PostgresUnavailable(f"postgres did not start in {timeout_s:.0f} s: "
                                          f"{self.log_tail()}")
            time.sleep(0.1)

    def _accepts(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(host=self.host, port=self.port, user=SUPERUSER,
                                 password=self.password, dbname="postgres", connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's log."""
        path = self.folder / "server.log"
        if not path.is_file():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def pid(self) -> int | None:
        """The server's process id while this object runs it."""
        return self._process.pid if self._process is not None else None

    def ensure_database(self, name: str) -> str:
        """The database, made if it does not exist yet; returns its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(host=self.host, port=self.port, user=SUPERUSER,
                             password=self.password, dbname="postgres",
                             autocommit=True) as connection:
            exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                        (name,)).fetchone()
            if exists is None:
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def create_database(self, name: str) -> str:
        """A new empty database (dropped first if it exists); returns its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(host=self.host, port=self.port, user=SUPERUSER,
                             password=self.password, dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def stop(self, timeout_s: float = 20.0) -> None:
        """Fast shutdown (SIGINT: open transactions are rolled back); safe to call twice."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(2)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        with contextlib.suppress(Exception):
            self.stop()
