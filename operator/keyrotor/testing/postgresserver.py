"""A real PostgreSQL server (Debian's packages) on loopback, for the postgres target and probe.

``initdb`` into a temporary directory, ``postgres`` on a free port with password (SCRAM) logins
over TCP only. Besides the superuser it creates what a real deployment would give keyrotor:
``rotator``, a role with CREATEROLE (and pg_signal_backend, to end a retired role's sessions)
but no superuser, and a group role ``app`` holding the application's privileges.
"""

from __future__ import annotations

import glob
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql

from keyrotor.testing.controlplane import free_port
from keyrotor.testing.processes import ServerError, give_to, spawn, stop, wait_until

USER = "postgres"  # the system account the server runs as when the tests run as root


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise ServerError("PostgreSQL is not installed: apt-get install postgresql "
                          "(scripts/test installs it)")
    return Path(found[-1]).parent


@dataclass
class PostgresServer:
    port: int = field(default_factory=free_port)
    superuser_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    rotator_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    workdir: Path = field(init=False)
    proc: Any = field(init=False, default=None)

    host = "127.0.0.1"

    def __enter__(self) -> PostgresServer:
        self.workdir = Path(tempfile.mkdtemp(prefix="keyrotor-pg-"))
        try:
            self._init()
            self.start()
            self._roles()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        stop(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _init(self) -> None:
        pwfile = self.workdir / "pw"
        pwfile.write_text(self.superuser_password)
        give_to(self.workdir, USER)
        log = self.workdir / "initdb.log"
        proc = spawn([str(pg_bin() / "initdb"), "-D", str(self.workdir / "data"), "-U",
                      "postgres", f"--pwfile={pwfile}", "--auth-host=scram-sha-256",
                      "--auth-local=reject", "--no-sync", "-E", "UTF8"], log, user=USER)
        if proc.wait(120) != 0:
            raise ServerError(f"initdb failed:\n{log.read_text(errors='replace')[-3000:]}")
        pwfile.unlink()

    def start(self) -> None:
        log = self.workdir / "postgres.log"
        self.proc = spawn([str(pg_bin() / "postgres"), "-D", str(self.workdir / "data"),
                           "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                           "-c", f"unix_socket_directories={self.workdir}",
                           "-c", "fsync=off", "-c", "max_connections=200",
                           # Every statement is logged, so tests can show no password is.
                           "-c", "log_statement=all"], log, user=USER)
        wait_until(self._ready, self.proc, log, "postgres")

    @property
    def log(self) -> str:
        return (self.workdir / "postgres.log").read_text(errors="replace")

    def _ready(self) -> bool:
        try:
            with self.connect("postgres", self.superuser_password):
                return True
        except psycopg.OperationalError:
            return False

    def connect(self, user: str, password: str, database: str = "postgres"
                ) -> psycopg.Connection[Any]:
        return psycopg.connect(host=self.host, port=self.port, dbname=database, user=user,
                               password=password, connect_timeout=5, autocommit=True)

    def superuser(self) -> psycopg.Connection[Any]:
        return self.connect("postgres", self.superuser_password)

    def _roles(self) -> None:
        with self.superuser() as conn:
            conn.execute(sql.SQL("CREATE ROLE rotator LOGIN CREATEROLE PASSWORD {}").format(
                sql.Literal(self.rotator_password)))
            conn.execute("GRANT pg_signal_backend TO rotator")
            conn.execute("CREATE ROLE app NOLOGIN")
            conn.execute("GRANT app TO rotator WITH ADMIN OPTION")
            conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text)")
            conn.execute("GRANT SELECT, INSERT ON orders TO app")
            conn.execute("GRANT USAGE ON SEQUENCE orders_id_seq TO app")
