"""Vault / OpenBao backends through hvac: KV v2 values and Transit keys.

* ``kv``: each version is a fresh random value written to KV v2 with check-and-set
  (``cas`` = N-1), so two writers cannot clobber each other and keyrotor's version N is KV's
  version N. The Kubernetes Secret is published from it. Revocation destroys (or, with
  ``destroy: false``, soft-deletes) the version that leaves ``revocation.keepHistory``.
* ``transit``: version N is the Transit key's version N (create for 1, rotate after). No key
  material leaves Vault: the Secret publishes the key's name. Revocation raises
  ``min_decryption_version`` and trims older versions.

Authentication is a token read from a Kubernetes Secret, or Vault's Kubernetes auth method
with the operator's ServiceAccount token (Vault asks the API server to review it). Tokens are
held in memory only and never logged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import hvac
import requests
from hvac import exceptions as vault_errors

from keyrotor.backends import BackendConflict, BackendUnavailable, Context, ca_file, measured
from keyrotor.engine.fields import text
from keyrotor.errors import SpecError
from keyrotor.generators import Material
from keyrotor.generators.local import RandomString

SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
TRANSIENT = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
             vault_errors.VaultDown, vault_errors.InternalServerError,
             vault_errors.BadGateway, vault_errors.RateLimitExceeded)


def _client(spec: dict[str, Any], ctx: Context) -> hvac.Client:
    """An authenticated hvac client for ``generator.vault`` (``spec``)."""
    address = spec.get("address")
    if not address:
        raise SpecError("spec.generator.vault.address", "required, e.g. https://vault:8200")
    verify: bool | str = ca_file(spec["caBundle"]) if spec.get("caBundle") else True
    client = hvac.Client(url=address, verify=verify, timeout=10)
    auth = spec.get("auth") or {}
    with measured("vault", "login"):
        try:
            if ref := auth.get("tokenSecretRef"):
                client.token = text(ctx.read_secret_key(ref["name"], ref.get("key", "token")),
                                    "spec.generator.vault.auth.tokenSecretRef")
            elif kube := auth.get("kubernetes"):
                jwt_path = Path(kube.get("tokenPath") or SA_TOKEN)
                try:
                    jwt = jwt_path.read_text().strip()
                except (OSError, UnicodeDecodeError) as exc:  # no token mounted (not a pod?)
                    raise SpecError("spec.generator.vault.auth.kubernetes.tokenPath",
                                    f"cannot read a ServiceAccount token from {jwt_path} "
                                    f"({type(exc).__name__}); mount one or set tokenPath"
                                    ) from None
                client.auth.kubernetes.login(kube["role"], jwt,
                                             mount_point=kube.get("mount", "kubernetes"))
            else:
                raise SpecError("spec.generator.vault.auth",
                                "set tokenSecretRef or kubernetes: {role: ...}")
        except TRANSIENT as exc:
            raise BackendUnavailable(f"Vault at {address} unreachable: "
                                     f"{type(exc).__name__}") from None
        except vault_errors.Forbidden as exc:
            raise BackendConflict(f"Vault at {address} refused the login: {exc.errors or ''}; "
                                  "check the role or the token") from None
    return client


@contextmanager
def _translated(address: str) -> Iterator[None]:
    """Vault's failures as keyrotor's: transient ones retry, a refusal needs a human."""
    try:
        yield
    except TRANSIENT as exc:
        raise BackendUnavailable(f"Vault at {address}: {type(exc).__name__}") from None
    except vault_errors.Forbidden:
        raise BackendConflict(f"Vault at {address} denied the request: check the token's "
                              "policy (keyrotor needs its KV path or Transit key)") from None


@dataclass
class _VaultBackend:
    """What KV and Transit share: the spec, the login (once, lazily), error translation."""

    # Versions live in Vault until revoked: generate() hands an existing one back (drift repair).
    recoverable: ClassVar[bool] = True

    spec: dict[str, Any]
    ctx: Context
    keep_history: int = 0
    _client: hvac.Client | None = field(default=None, repr=False)

    def client(self) -> hvac.Client:
        if self._client is None:
            self._client = _client(self.spec, self.ctx)
        return self._client

    def generate(self, version: int) -> Material:
        with _translated(self.spec["address"]):
            return self._generate(version)

    def _generate(self, version: int) -> Material:
        raise NotImplementedError


@dataclass
class VaultKV(_VaultBackend):
    kind: str = "vault.kv"

    @property
    def _kv(self) -> dict[str, Any]:
        kv: dict[str, Any] = self.spec["kv"]
        return kv

    def _current_kv_version(self) -> int:
        kv = self.client().secrets.kv.v2
        try:
            with measured("vault", "kv.read_metadata"):
                meta = kv.read_secret_metadata(self._kv["path"],
                                               mount_point=self._kv.get("mount", "secret"))
        except vault_errors.InvalidPath:
            return 0
        return int(meta["data"]["current_version"])

    @property
    def _owner(self) -> str:
        return f"{self.ctx.namespace}/{self.ctx.name}"

    def _read_version(self, version: int) -> bytes:
        kv = self.client().secrets.kv.v2
        with measured("vault", "kv.read"):
            got = kv.read_secret_version(self._kv["path"], version=version,
                                         mount_point=self._kv.get("mount", "secret"),
                                         raise_on_deleted_version=True)
        data = got["data"]["data"]
        # Each value carries who wrote it: a replay only ever takes back keyrotor's own write.
        if data.get("keyrotor-owner") != self._owner or \
                data.get("keyrotor-version") != str(version):
            raise BackendConflict(
                f"KV {self._kv.get('mount', 'secret')}/{self._kv['path']} version {version} "
                f"was not written by RotatingSecret {self._owner}; point "
                "spec.generator.vault.kv.path at a path only keyrotor writes")
        return str(data["value"]).encode()

    def _generate(self, version: int) -> Material:
        mount, path = self._kv.get("mount", "secret"), self._kv["path"]
        existing = self._current_kv_version()
        if existing >= version:
            # A replay after a crash: version N is already written, and it is ours.
            return {"": self._read_version(version)}
        if existing != version - 1:
            raise BackendConflict(
                f"KV {mount}/{path} is at version {existing}, keyrotor expected {version - 1}: "
                "keyrotor owns this path and its versions match keyrotor's; point "
                "spec.generator.vault.kv.path at a path only keyrotor writes")
        value = RandomString.from_spec(self._kv).generate(version)[""]
        try:
            with measured("vault", "kv.write"):
                self.client().secrets.kv.v2.create_or_update_secret(
                    path, secret={"value": value.decode(), "keyrotor-version": str(version),
                                  "keyrotor-owner": self._owner},
                    cas=version - 1, mount_point=mount)
        except vault_errors.InvalidRequest as exc:
            raise BackendConflict(f"KV {mount}/{path}: check-and-set for version {version} "
                                  f"failed ({exc.errors}); another writer changed it") from None
        return {"": value}

    def revoke(self, version: int) -> None:
        gone = version - self.keep_history
        if gone < 1:
            return
        mount, path = self._kv.get("mount", "secret"), self._kv["path"]
        with _translated(self.spec["address"]):
            kv = self.client().secrets.kv.v2
            if self._kv.get("destroy", True):
                with measured("vault", "kv.destroy"):
                    kv.destroy_secret_versions(path, [gone], mount_point=mount)
            else:
                with measured("vault", "kv.delete"):
                    kv.delete_secret_versions(path, [gone], mount_point=mount)


@dataclass
class VaultTransit(_VaultBackend):
    kind: str = "vault.transit"

    @property
    def _names(self) -> tuple[str, str]:
        transit = self.spec["transit"]
        return transit.get("mount", "transit"), transit["key"]

    def _latest(self) -> int:
        mount, key = self._names
        try:
            with measured("vault", "transit.read_key"):
                got = self.client().secrets.transit.read_key(key, mount_point=mount)
        except vault_errors.InvalidPath:
            return 0
        return int(got["data"]["latest_version"])

    def _generate(self, version: int) -> Material:
        mount, key = self._names
        latest = self._latest()
        transit = self.client().secrets.transit
        if latest < version:
            if latest != version - 1:
                raise BackendConflict(
                    f"Transit key {mount}/{key} is at version {latest}, keyrotor expected "
                    f"{version - 1}; point spec.generator.vault.transit.key at a key only "
                    "keyrotor rotates")
            if latest == 0:
                with measured("vault", "transit.create_key"):
                    transit.create_key(key, key_type=self.spec["transit"].get(
                        "type", "aes256-gcm96"), mount_point=mount)
            else:
                with measured("vault", "transit.rotate_key"):
                    transit.rotate_key(key, mount_point=mount)
        return {"": f"{mount}/{key}".encode(), ".key-version": str(version).encode()}

    def _rewrap(self, old: int, new: int) -> None:
        """Ask the data owner to rewrap ciphertexts before old versions stop decrypting."""
        hook = self.spec["transit"].get("rewrapHook")
        if not hook:
            return
        mount, key = self._names
        try:
            response = requests.post(hook["url"], json={
                "key": f"{mount}/{key}", "retiringVersion": old, "currentVersion": new,
            }, timeout=float(hook.get("timeoutSeconds", 30)))
        except requests.RequestException as exc:
            raise BackendUnavailable(f"rewrap hook {hook['url']} unreachable: "
                                     f"{type(exc).__name__}; version {old} stays "
                                     "decryptable") from None
        if not 200 <= response.status_code < 300:
            raise BackendUnavailable(f"rewrap hook {hook['url']} answered HTTP "
                                     f"{response.status_code}; version {old} stays decryptable")

    def revoke(self, version: int) -> None:
        keep_from = version + 1 - self.keep_history
        if keep_from < 2:
            return
        self._rewrap(version, version + 1)
        mount, key = self._names
        with _translated(self.spec["address"]):
            transit = self.client().secrets.transit
            with measured("vault", "transit.update_key"):
                # Trimming needs both floors set; encryption uses the current version only.
                # (Posted directly: hvac's own check wrongly rejects equal floors.)
                self.client().adapter.post(f"/v1/{mount}/keys/{key}/config", json={
                    "min_decryption_version": keep_from,
                    "min_encryption_version": version + 1})
            with measured("vault", "transit.trim_key"):
                transit.trim_key(key, min_version=keep_from, mount_point=mount)


def from_spec(spec: dict[str, Any], ctx: Context, *, keep_history: int) -> VaultKV | VaultTransit:
    if spec.get("kv") is not None and spec.get("transit") is None:
        if not spec["kv"].get("path"):
            raise SpecError("spec.generator.vault.kv.path", "required, e.g. payments/api-key")
        return VaultKV(spec, ctx, keep_history=keep_history)
    if spec.get("transit") is not None and spec.get("kv") is None:
        if not spec["transit"].get("key"):
            raise SpecError("spec.generator.vault.transit.key", "required, e.g. payments")
        return VaultTransit(spec, ctx, keep_history=keep_history)
    raise SpecError("spec.generator.vault", "set exactly one of kv or transit")
