"""A real Vault API server on loopback, for tests and demos of the Vault/OpenBao backend.

Not the in-memory ``-dev`` mode: the server keeps its data in a file backend in a temporary
directory, so it can be stopped in the middle of a rotation and started again with everything
intact (it comes back sealed and is unsealed with the key from its initialisation). KV v2 is
mounted at ``secret/`` and Transit at ``transit/``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import hvac
import requests

from keyrotor.testing.controlplane import _ca_and_serving_cert, free_port
from keyrotor.testing.processes import spawn, stop, wait_until
from keyrotor.testing.toolchain import ensure_vault


@dataclass
class VaultServer:
    binary: Path | None = None
    tls: bool = False  # serve https with a certificate from a CA made here (``ca_pem``)
    startup_timeout: float = 60.0
    port: int = field(default_factory=free_port)
    workdir: Path = field(init=False)
    root_token: str = field(init=False, default="")
    unseal_key: str = field(init=False, default="")
    proc: subprocess.Popen[bytes] | None = field(init=False, default=None)

    @property
    def address(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_pem(self) -> str:
        return (self.workdir / "ca.crt").read_text()

    @property
    def _verify(self) -> str | bool:
        return str(self.workdir / "ca.crt") if self.tls else True

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.address, token=token or self.root_token, timeout=10,
                           verify=self._verify)

    def __enter__(self) -> VaultServer:
        self.workdir = Path(tempfile.mkdtemp(prefix="keyrotor-vault-"))
        self.binary = self.binary or ensure_vault()
        if self.tls:
            _, cert, key = _ca_and_serving_cert(self.workdir)
            listener_tls = f'tls_cert_file = "{cert}"\n tls_key_file = "{key}"'
        else:
            listener_tls = "tls_disable = true"
        (self.workdir / "config.hcl").write_text(
            f'storage "file" {{ path = "{self.workdir / "data"}" }}\n'
            f'listener "tcp" {{ address = "127.0.0.1:{self.port}"\n {listener_tls} }}\n'
            f'disable_mlock = true\napi_addr = "{self.address}"\nui = false\n')
        try:
            self.start()
            self._initialise()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def start(self) -> None:
        """Start (or restart) the server and unseal it if it was initialised before."""
        assert self.binary is not None
        self.proc = spawn([str(self.binary), "server", f"-config={self.workdir / 'config.hcl'}"],
                          self.workdir / "vault.log",
                          env={"HOME": str(self.workdir), "VAULT_LOG_LEVEL": "warn"})
        self._wait(lambda: self._health() is not None, "the listener")
        if self.unseal_key:
            self.client().sys.submit_unseal_key(self.unseal_key)
            self._wait(lambda: self._health() == 200, "unsealed and active")

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None

    def _health(self) -> int | None:
        try:
            return requests.get(f"{self.address}/v1/sys/health", timeout=1,
                                verify=self._verify).status_code
        except requests.RequestException:
            return None

    def _wait(self, check: Callable[[], bool], what: str) -> None:
        assert self.proc is not None
        wait_until(check, self.proc, self.workdir / "vault.log", f"vault ({what})",
                   timeout=self.startup_timeout)

    def _initialise(self) -> None:
        result = hvac.Client(url=self.address, verify=self._verify).sys.initialize(
            secret_shares=1, secret_threshold=1)
        self.root_token, self.unseal_key = result["root_token"], result["keys"][0]
        self.client().sys.submit_unseal_key(self.unseal_key)
        self._wait(lambda: self._health() == 200, "unsealed and active")
        client = self.client()
        client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
        client.sys.enable_secrets_engine("transit", path="transit")
