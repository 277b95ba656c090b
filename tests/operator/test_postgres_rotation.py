"""PostgreSQL, alternating users, against a real server: five rotations, and a connection pool
that keeps using the credentials it started with until their role is retired."""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass, field

import psycopg

from keyrotor.kube import KubeApi
from keyrotor.publishing.secret import decode
from keyrotor.testing.controlplane import ControlPlane
from keyrotor.testing.postgresserver import PostgresServer
from tests.operator.conftest import OperatorProcess, remember_secret, rotating_secret
from tests.operator.helpers import events_of, stop_rotating, wait_status

ROLES = ["app_blue", "app_green"]


@dataclass
class Pool:
    """Opens a new connection for every query with the credentials it holds, like a pool
    that grows; it takes fresh credentials from the Secret only when a login fails."""

    server: PostgresServer
    kapi: KubeApi
    namespace: str
    successes: dict[int, int] = field(default_factory=dict)
    used_while_previous: set[int] = field(default_factory=set)
    failed_logins: dict[int, str] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    passwords: set[str] = field(default_factory=set)  # every password the Secret held
    stop: threading.Event = field(default_factory=threading.Event)

    def slots(self) -> dict[str, int]:
        held, _ = decode(self.kapi.get_secret(self.namespace, "db-creds"))
        self.passwords.update(v.material[""].decode() for v in held.filled().values())
        return {slot: v.version for slot, v in held.filled().items()}

    def credentials(self) -> tuple[int, str, str]:
        secret = self.kapi.get_secret(self.namespace, "db-creds")
        remember_secret(secret)
        held, _ = decode(secret)
        assert held.current is not None
        material = held.current.material
        return held.current.version, material[".username"].decode(), material[""].decode()

    def run(self) -> None:
        version, user, password = self.credentials()
        while not self.stop.is_set():
            before = self.slots()
            try:
                with self.server.connect(user, password) as conn:
                    conn.execute("INSERT INTO orders (item) VALUES (%s)", (f"v{version}",))
            except psycopg.OperationalError as exc:
                after = self.slots()
                # A login may fail only once the Secret no longer offers the version.
                if version in after.values():
                    self.violations.append(f"version {version} ({user}) refused while the "
                                           f"Secret still holds it: {after}: {exc}")
                self.failed_logins[version] = user
                version, user, password = self.credentials()
                continue
            self.successes[version] = self.successes.get(version, 0) + 1
            if before.get("previous") == version:
                self.used_while_previous.add(version)
            time.sleep(0.02)


def test_alternating_users_five_rotations(control_plane: ControlPlane, kapi: KubeApi,
                                          namespace: str, operator: OperatorProcess,
                                          postgres: PostgresServer) -> None:
    kapi.core.create_namespaced_secret(namespace, {
        "metadata": {"name": "pg-admin"},
        "data": {"username": base64.b64encode(b"rotator").decode(),
                 "password": base64.b64encode(postgres.rotator_password.encode()).decode()}})
    server = {"host": postgres.host, "port": postgres.port, "sslMode": "disable"}
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=rotating_secret(
        "db-creds", strategy="TwoKeys", generator={"random": {"length": 32}},
        rotation={"every": "1s", "minOverlap": "2s", "maxOverlap": "2m"},
        verification={"interval": "300ms", "successesRequired": 2},
        target={"postgres": {**server, "roles": ROLES, "memberOf": "app",
                             "adminSecretRef": {"name": "pg-admin"}}},
        consumers=[{"name": "db", "postgres": server}]))
    wait_status(kapi, namespace, "db-creds", lambda s: s.get("currentVersion") == 1,
                what="version 1")
    pool = Pool(postgres, kapi, namespace)
    thread = threading.Thread(target=pool.run, daemon=True)
    thread.start()
    try:
        wait_status(kapi, namespace, "db-creds", lambda s: s.get("rotationCount", 0) >= 5,
                    timeout=180, what="five rotations")
        status = stop_rotating(control_plane, kapi, namespace, "db-creds")
    finally:
        pool.stop.set()
        thread.join(10)

    assert not pool.violations, pool.violations
    # The pool kept working with old credentials during each overlap, and was turned away
    # once their role was retired: for several versions, both happened.
    assert len(pool.used_while_previous) >= 3, pool
    assert len(pool.failed_logins) >= 3, pool
    # Versions alternate between the two roles.
    for version, user in pool.failed_logins.items():
        assert user == ROLES[version % 2]
    with postgres.superuser() as conn:
        rows = dict(conn.execute("SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = "
                                 "ANY(%s)", (ROLES,)).fetchall())
        written = conn.execute("SELECT count(*) FROM orders").fetchone()
    current = status["currentVersion"]
    assert rows == {ROLES[current % 2]: True, ROLES[(current + 1) % 2]: False}
    assert written is not None and written[0] >= sum(pool.successes.values())
    # Retirement came only after verification: every Revoked follows a Retired verdict of
    # the same rotation, and the db probe logged in with each new version first.
    reasons = [e["reason"] for e in events_of(kapi, namespace, "db-creds")]
    assert reasons.count("Revoked") >= 5
    for i, reason in enumerate(reasons):
        if reason == "Revoked":
            since = max(j for j, r in enumerate(reasons[:i]) if r == "Promoted")
            assert "Retired" in reasons[since:i], reasons
    # The server logged every statement, ALTER ROLE included, and never a password: keyrotor
    # sends SCRAM verifiers.
    log = postgres.log
    assert "ALTER ROLE" in log and "SCRAM-SHA-256$" in log
    assert len(pool.passwords) >= 5
    assert not [p for p in pool.passwords if p in log]
    consumers = {c["name"]: c for c in status.get("consumers") or ()}
    assert consumers["db"]["ok"] and consumers["db"]["message"].startswith("logged in as app_")
