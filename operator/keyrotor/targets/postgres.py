"""PostgreSQL, alternating users: two roles take turns, so old and new logins overlap.

Version N belongs to ``roles[N % 2]``. Activating N sets a fresh password on that role and
allows it to log in; the other role keeps working with its password until N-1 is revoked.
Revoking N-1 retires its role: ``NOLOGIN``, the password cleared, and (by default) its open
sessions ended, so a retired credential grants nothing. This is the AWS "alternating users"
rotation, with keyrotor's overlap and verification in between.

The Secret publishes the password as the slot's value and the role as ``<slot>.username``.
The server never receives the password itself: libpq turns it into a SCRAM-SHA-256 verifier
on keyrotor's side (as psql's password command does), so ``log_statement = 'all'`` logs only the
verifier.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from keyrotor.backends import BackendConflict, BackendUnavailable, Context, measured
from keyrotor.engine.fields import text
from keyrotor.errors import SpecError
from keyrotor.generators import Material, main_value
from keyrotor.targets import USERNAME


@dataclass(frozen=True)
class Server:
    """Where to connect; shared by the target and the ``postgres`` consumer probe."""

    host: str
    port: int = 5432
    database: str = "postgres"
    sslmode: str = "prefer"
    connect_timeout: int = 5

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Server:
        return cls(host=spec["host"], port=int(spec.get("port", 5432)),
                   database=spec.get("database", "postgres"),
                   sslmode=spec.get("sslMode", "prefer"))

    def connect(self, user: str, password: str) -> psycopg.Connection[Any]:
        return psycopg.connect(host=self.host, port=self.port, dbname=self.database,
                               user=user, password=password, sslmode=self.sslmode,
                               connect_timeout=self.connect_timeout, autocommit=True)

    def login(self, user: str, password: str) -> tuple[bool, str]:
        """Log in and run ``SELECT 1``; the message never carries the password."""
        try:
            with self.connect(user, password) as conn:
                conn.execute("SELECT 1").fetchone()
        except psycopg.OperationalError as exc:
            return False, _safe(exc, password)
        return True, f"logged in as {user}"


def _safe(exc: Exception, password: str) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.replace(password, "[redacted]") if password else text


@dataclass(frozen=True)
class PostgresTarget:
    server: Server
    roles: tuple[str, str]
    admin_user: str
    admin_password: str
    member_of: str | None = None
    terminate_sessions: bool = True
    kind: str = "postgres"

    @classmethod
    def from_spec(cls, spec: dict[str, Any], ctx: Context) -> PostgresTarget:
        roles = tuple(spec.get("roles") or ())
        if len(roles) != 2 or roles[0] == roles[1]:
            raise SpecError("spec.target.postgres.roles", "name exactly two different roles")
        ref = spec["adminSecretRef"]
        field = "spec.target.postgres.adminSecretRef"
        user = text(ctx.read_secret_key(ref["name"], ref.get("usernameKey", "username")), field)
        password = text(ctx.read_secret_key(ref["name"], ref.get("passwordKey", "password")),
                        field)
        return cls(server=Server.from_spec(spec), roles=(roles[0], roles[1]),
                   admin_user=user, admin_password=password, member_of=spec.get("memberOf"),
                   terminate_sessions=bool(spec.get("terminateSessions", True)))

    def role(self, version: int) -> str:
        return self.roles[version % 2]

    def _admin(self, operation: str,
               statements: Callable[[psycopg.Connection[Any]], list[sql.Composed]]) -> None:
        with measured("postgres", operation):
            try:
                with self.server.connect(self.admin_user, self.admin_password) as conn:
                    for statement in statements(conn):
                        conn.execute(statement)
            except psycopg.OperationalError as exc:
                raise BackendUnavailable(
                    f"PostgreSQL {self.server.host}:{self.server.port}: "
                    f"{_safe(exc, self.admin_password)}") from None
            except psycopg.Error as exc:
                raise BackendConflict(
                    f"PostgreSQL {operation} failed: {_safe(exc, self.admin_password)}; check "
                    "that the admin role has CREATEROLE") from None

    def describe(self, version: int, material: Material) -> Material:
        return {**material, USERNAME: self.role(version).encode()}

    def activate(self, version: int, material: Material) -> None:
        name = self.role(version)
        role = sql.Identifier(name)

        def statements(conn: psycopg.Connection[Any]) -> list[sql.Composed]:
            verifier = conn.pgconn.encrypt_password(main_value(material), name.encode(),
                                                    b"scram-sha-256").decode()
            return self._activation(name, role, verifier)

        self._admin("activate", statements)

    def _activation(self, name: str, role: sql.Identifier, verifier: str) -> list[sql.Composed]:
        statements: list[sql.Composed] = [
            # CREATE ROLE IF NOT EXISTS does not exist; a DO block keeps this idempotent.
            sql.SQL("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {}) "
                    "THEN CREATE ROLE {} NOLOGIN; END IF; END $$").format(
                        sql.Literal(name), role),
        ]
        if self.member_of:
            statements.append(sql.SQL("GRANT {} TO {}").format(
                sql.Identifier(self.member_of), role))
        statements.append(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(
            role, sql.Literal(verifier)))
        return statements

    def revoke(self, version: int) -> None:
        name = self.role(version)
        statements: list[sql.Composed] = [
            sql.SQL("ALTER ROLE {} WITH NOLOGIN PASSWORD NULL").format(sql.Identifier(name))]
        if self.terminate_sessions:
            statements.append(sql.SQL(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {}"
            ).format(sql.Literal(name)))
        self._admin("revoke", lambda _: statements)

    def check(self, material: Material) -> tuple[bool, str]:
        user = material.get(USERNAME, b"").decode()
        return self.server.login(user, main_value(material).decode())
