"""The Vault backends (KV v2 and Transit) against a real Vault server."""

from __future__ import annotations

import uuid

import pytest
from hvac import exceptions as vault_errors

from keyrotor.backends import BackendConflict, BackendUnavailable, Context
from keyrotor.backends import vault as vault_backend
from keyrotor.testing.vaultserver import VaultServer


def ctx(token: str) -> Context:
    def read(name: str, key: str) -> bytes:
        assert (name, key) == ("vault-token", "token")
        return token.encode()

    return Context(namespace="ns", name="rs", read_secret_key=read)


def spec(server: VaultServer, **kind: object) -> dict[str, object]:
    return {"address": server.address, "auth": {"tokenSecretRef": {"name": "vault-token"}},
            **kind}


def test_kv_versions_match_and_revocation_destroys(vault: VaultServer) -> None:
    path = f"kv-{uuid.uuid4().hex[:8]}"
    kv = vault_backend.from_spec(spec(vault, kv={"path": path, "length": 24}),
                                 ctx(vault.root_token), keep_history=0)
    one = kv.generate(1)[""]
    assert kv.generate(1)[""] == one  # a replay reads version 1 back, it does not write
    two = kv.generate(2)[""]
    assert one != two
    client = vault.client()
    meta = client.secrets.kv.v2.read_secret_metadata(path)["data"]
    assert meta["current_version"] == 2
    kv.revoke(1)
    meta = client.secrets.kv.v2.read_secret_metadata(path)["data"]
    assert meta["versions"]["1"]["destroyed"] is True
    assert meta["versions"]["2"]["destroyed"] is False
    with pytest.raises(vault_errors.InvalidPath):
        client.secrets.kv.v2.read_secret_version(path, version=1,
                                                 raise_on_deleted_version=True)
    # Someone else writes the path: keyrotor refuses to clobber and says why.
    client.secrets.kv.v2.create_or_update_secret(path, secret={"value": "theirs"})
    with pytest.raises(BackendConflict, match="was not written by RotatingSecret ns/rs"):
        kv.generate(3)
    fresh = vault_backend.from_spec(spec(vault, kv={"path": f"{path}-b"}),
                                    ctx(vault.root_token), keep_history=0)
    with pytest.raises(BackendConflict, match="is at version 0, keyrotor expected 4"):
        fresh.generate(5)


def test_kv_soft_delete_and_history(vault: VaultServer) -> None:
    path = f"kv-{uuid.uuid4().hex[:8]}"
    kv = vault_backend.from_spec(spec(vault, kv={"path": path, "destroy": False}),
                                 ctx(vault.root_token), keep_history=1)
    for version in (1, 2, 3):
        kv.generate(version)
    kv.revoke(2)  # keepHistory 1: version 2 stays decryptable, version 1 goes
    versions = vault.client().secrets.kv.v2.read_secret_metadata(path)["data"]["versions"]
    assert versions["1"]["deletion_time"] != "" and versions["1"]["destroyed"] is False
    assert versions["2"]["deletion_time"] == ""


def test_transit_rotates_in_place_and_trims(vault: VaultServer) -> None:
    key = f"t-{uuid.uuid4().hex[:8]}"
    transit = vault_backend.from_spec(spec(vault, transit={"key": key}),
                                      ctx(vault.root_token), keep_history=0)
    assert transit.generate(1) == {"": f"transit/{key}".encode(), ".key-version": b"1"}
    client = vault.client()
    old = client.secrets.transit.encrypt_data(key, "aGVsbG8=")["data"]["ciphertext"]
    assert old.startswith("vault:v1:")
    transit.generate(2)
    transit.generate(2)  # replay: no second rotation
    assert client.secrets.transit.read_key(key)["data"]["latest_version"] == 2
    transit.revoke(1)
    info = client.secrets.transit.read_key(key)["data"]
    assert info["min_decryption_version"] == 2
    assert set(info["keys"]) == {"2"}  # version 1 trimmed: gone from Vault
    with pytest.raises(vault_errors.InvalidRequest):
        client.secrets.transit.decrypt_data(key, old)


def test_unreachable_and_bad_token(vault: VaultServer) -> None:
    down = {"address": "http://127.0.0.1:9", "auth": {"tokenSecretRef": {"name": "vault-token"}},
            "kv": {"path": "x"}}
    with pytest.raises(BackendUnavailable, match=r"Vault at http://127\.0\.0\.1:9"):
        vault_backend.from_spec(down, ctx("t"), keep_history=0).generate(1)
    bad = vault_backend.from_spec(spec(vault, kv={"path": "x"}), ctx("not-a-token"),
                                  keep_history=0)
    with pytest.raises(BackendConflict, match="denied the request: check the token's policy"):
        bad.generate(1)


async def test_transit_round_trip_probe(vault: VaultServer) -> None:
    from keyrotor.backends.vault import VaultTransit
    from keyrotor.probes.transit import TransitProbe

    key = f"rt-{uuid.uuid4().hex[:8]}"
    transit = vault_backend.from_spec(spec(vault, transit={"key": key}),
                                      ctx(vault.root_token), keep_history=0)
    assert isinstance(transit, VaultTransit)
    transit.generate(1)
    transit.generate(2)
    probe = TransitProbe("roundtrip", transit)
    ok = await probe.check(None, {"candidate_version": "2"})
    assert ok.ok and ok.message == "round trip with version 2 ok"
    missing = await probe.check(None, {"candidate_version": "3"})
    assert not missing.ok and "round trip with version 3 failed" in missing.message
    transit.revoke(1)
    trimmed = await probe.check(None, {"candidate_version": "1"})
    assert not trimmed.ok


def test_rewrap_hook_gates_the_floor(vault: VaultServer) -> None:
    import http.server
    import json
    import threading

    calls: list[dict[str, object]] = []
    answer = {"status": 503}

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            calls.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(answer["status"])
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        key = f"rw-{uuid.uuid4().hex[:8]}"
        url = f"http://127.0.0.1:{server.server_port}/rewrap"
        transit = vault_backend.from_spec(
            spec(vault, transit={"key": key, "rewrapHook": {"url": url}}),
            ctx(vault.root_token), keep_history=0)
        transit.generate(1)
        transit.generate(2)
        with pytest.raises(BackendUnavailable, match="answered HTTP 503; version 1 stays"):
            transit.revoke(1)
        assert vault.client().secrets.transit.read_key(key)["data"][
            "min_decryption_version"] == 1  # nothing raised while the hook says no
        answer["status"] = 204
        transit.revoke(1)
        assert vault.client().secrets.transit.read_key(key)["data"][
            "min_decryption_version"] == 2
        assert calls[-1] == {"key": f"transit/{key}", "retiringVersion": 1,
                             "currentVersion": 2}
        assert len(calls) == 2
    finally:
        server.shutdown()


def test_vault_over_tls_with_ca_bundle() -> None:
    with VaultServer(tls=True) as server:
        assert server.address.startswith("https://127.0.0.1:")
        trusted = vault_backend.from_spec(
            spec(server, kv={"path": "tls"}, caBundle=server.ca_pem), ctx(server.root_token),
            keep_history=0)
        assert len(trusted.generate(1)[""]) == 43
        untrusted = vault_backend.from_spec(spec(server, kv={"path": "tls"}),
                                            ctx(server.root_token), keep_history=0)
        with pytest.raises(BackendUnavailable, match=r"Vault at https://.*: SSLError"):
            untrusted.generate(2)
