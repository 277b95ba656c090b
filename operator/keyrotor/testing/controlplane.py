"""A real, local Kubernetes control plane: etcd and kube-apiserver, no controllers.

This is what controller-runtime calls envtest: enough of Kubernetes to test an operator for real
(admission, CRD schemas and CEL rules, resourceVersion conflicts, finalizers, the status
subresource, RBAC, watches), started in a few seconds on free loopback ports.

Design choices:

* Everything lives in one temporary directory (certificates, tokens, the etcd data, the
  kubeconfig). :meth:`ControlPlane.stop` kills both processes and removes it.
* Children get ``PR_SET_PDEATHSIG`` when ``attached`` (tests): if the Python process is killed
  outright, the kernel kills them too. A later start removes directories left by dead owners.
* Authentication is a static token file with two users: ``admin`` in ``system:masters`` and
  ``nobody`` with no rights at all, so RBAC denials can be tested.
* The apiserver serves with a certificate signed by a CA made here, so clients verify TLS.
* No controllers run: namespaces stay Terminating, no garbage collection, no default service
  accounts (the ``ServiceAccount`` admission plugin is disabled for that reason).
* Faults on demand, for the fault tests: :meth:`ControlPlane.stop_apiserver` /
  :meth:`ControlPlane.start_apiserver` take kube-apiserver away and bring it back on the same
  port with the same certificates and tokens (clients reconnect with the kubeconfig they
  have); :meth:`ControlPlane.pause_etcd` / :meth:`ControlPlane.resume_etcd` freeze etcd with
  SIGSTOP and thaw it with SIGCONT (a hung disk or a stalled member, as the apiserver sees it).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from keyrotor.testing.processes import spawn, stop, wait_until
from keyrotor.testing.toolchain import Binaries, ensure_binaries
from keyrotor.testing.waiting import wait_for

DIR_PREFIX = "keyrotor-cp-"
# Called with each plane just before it stops, while its API server still answers: the test
# suite's secret scan (tests/secretscan.py) reads every object from it there. An exception
# from a hook is raised once both processes are stopped.
STOP_HOOKS: list[Callable[[ControlPlane], None]] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def remove_stale_dirs(base: Path | None = None) -> list[Path]:
    """Remove control-plane directories whose owner process is gone (e.g. after a SIGKILL)."""
    removed = []
    for path in Path(base or tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        try:
            owner = int((path / "owner.pid").read_text())
        except (OSError, ValueError):
            owner = 0
        if owner and _pid_alive(owner):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _ca_and_serving_cert(folder: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyrotor-envtest-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("kubernetes.default.svc"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path, cert_path = folder / "ca.crt", folder / "apiserver.crt"
    key_path = folder / "apiserver.key"
    ca_path.write_bytes(ca_cert.public_bytes(pem))
    cert_path.write_bytes(cert.public_bytes(pem))
    key_path.write_bytes(
        key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


def _service_account_key(folder: Path) -> Path:
    # One RSA key both signs and verifies service-account tokens.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = folder / "sa.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return path


@dataclass
class ControlPlane:
    """etcd + kube-apiserver in a temporary directory. Use as a context manager."""

    binaries: Binaries | None = None
    attached: bool = True
    startup_timeout: float = 60.0
    base_dir: Path | None = None
    extra_apiserver_flags: list[str] = field(default_factory=list)

    workdir: Path = field(init=False)
    api_port: int = field(init=False, default=0)
    etcd_port: int = field(init=False, default=0)
    admin_token: str = field(init=False, default="")
    user_token: str = field(init=False, default="")
    ready_seconds: float = field(init=False, default=0.0)
    _procs: dict[str, subprocess.Popen[bytes]] = field(init=False, default_factory=dict)
    _apiserver_args: list[str] = field(init=False, default_factory=list)
    etcd_paused: bool = field(init=False, default=False)

    # ---- public surface -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "ca.crt"

    @property
    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self._procs.items()}

    def kubectl(self, *args: str, user: str = "admin", check: bool = True,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this control plane as ``admin`` or ``nobody``."""
        assert self.binaries is not None
        return subprocess.run(
            [str(self.binaries.kubectl), "--kubeconfig", str(self.kubeconfig),
             "--context", user, *args],
            capture_output=True, text=True, check=check, input=input, timeout=120,
        )

    def wait_established(self, *crds: str, timeout: float = 60) -> None:
        """Poll until each CRD is Established (``kubectl wait`` fails at once on a CRD that
        has no conditions yet, which happens right after an apply)."""
        for name in crds:
            def established(name: str = name) -> bool:
                result = self.kubectl("get", "crd", name, "-o", 'jsonpath={.status.conditions'
                                      '[?(@.type=="Established")].status}', check=False)
                return result.returncode == 0 and result.stdout.strip() == "True"

            wait_for(established, timeout=timeout, what=f"CRD {name} established")

    def start(self) -> ControlPlane:
        started = time.monotonic()
        self.binaries = self.binaries or ensure_binaries()
        remove_stale_dirs(self.base_dir)
        self.workdir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=self.base_dir))
        (self.workdir / "owner.pid").write_text(str(os.getpid()))
        try:
            self._start_etcd()
            self._start_apiserver()
            self._write_kubeconfig()
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Kill both processes (apiserver first) and remove the directory. Safe to call twice."""
        etcd = self._procs.get("etcd")
        if etcd is not None and etcd.poll() is None:
            os.kill(etcd.pid, signal.SIGCONT)  # a paused etcd would not see SIGTERM
            self.etcd_paused = False
        failure: Exception | None = None
        if self.apiserver_running and self.kubeconfig.is_file():
            for hook in list(STOP_HOOKS):
                try:
                    hook(self)
                except Exception as exc:  # stop the servers first, then report it
                    failure = failure or exc
        for name in ("kube-apiserver", "etcd"):
            stop(self._procs.pop(name, None))
        if self.attached and getattr(self, "workdir", None) is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if failure is not None:
            raise failure

    # ---- faults ----------------------------------------------------------------------------

    def stop_apiserver(self, *, grace: float = 5.0) -> None:
        """Take kube-apiserver away: SIGTERM (its graceful shutdown), SIGKILL if it still runs
        after ``grace`` seconds (open watches can hold a graceful shutdown up to a minute).
        etcd and the data stay; :meth:`start_apiserver` brings it back on the same port."""
        proc = self._procs.pop("kube-apiserver", None)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            stop(proc, signal.SIGKILL)

    def start_apiserver(self) -> None:
        """Start kube-apiserver again after :meth:`stop_apiserver`, with the same flags: the
        same port, serving certificate and tokens, so existing kubeconfigs keep working.
        Returns once ``/readyz`` answers 200."""
        if "kube-apiserver" in self._procs and self._procs["kube-apiserver"].poll() is None:
            return
        self._run_apiserver()

    @property
    def apiserver_running(self) -> bool:
        proc = self._procs.get("kube-apiserver")
        return proc is not None and proc.poll() is None

    def pause_etcd(self) -> None:
        """Freeze etcd (SIGSTOP): it keeps its port and connections but answers nothing, so
        the apiserver's requests hang until their own timeouts."""
        os.kill(self._procs["etcd"].pid, signal.SIGSTOP)
        self.etcd_paused = True

    def resume_etcd(self) -> None:
        """Thaw etcd (SIGCONT) after :meth:`pause_etcd`."""
        os.kill(self._procs["etcd"].pid, signal.SIGCONT)
        self.etcd_paused = False

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---- the two servers ------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        proc = spawn(args, self.workdir / f"{name}.log", attached=self.attached)
        self._procs[name] = proc
        return proc

    def _wait_until(self, name: str, check: Callable[[], bool]) -> None:
        wait_until(check, self._procs[name], self.workdir / f"{name}.log", name,
                   timeout=self.startup_timeout)

    def _start_etcd(self) -> None:
        assert self.binaries is not None
        self.etcd_port, peer_port = free_port(), free_port()
        client_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._spawn("etcd", [
            str(self.binaries.etcd),
            "--name", "keyrotor",
            "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"keyrotor={peer_url}",
            "--unsafe-no-fsync",
            "--log-level", "warn",
        ])

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{client_url}/health", timeout=1) as resp:  # noqa: S310
                    return bool(json.load(resp).get("health") == "true")
            except (OSError, ValueError):
                return False

        self._wait_until("etcd", healthy)

    def _start_apiserver(self) -> None:
        assert self.binaries is not None
        _, cert, key = _ca_and_serving_cert(self.workdir)
        sa_key = _service_account_key(self.workdir)
        self.admin_token = secrets.token_urlsafe(24)
        self.user_token = secrets.token_urlsafe(24)
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(
            f'{self.admin_token},admin,admin-uid,"system:masters"\n'
            f"{self.user_token},nobody,nobody-uid\n"
        )
        self.api_port = free_port()
        self._apiserver_args = [
            str(self.binaries.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--secure-port={self.api_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--cert-dir={self.workdir / 'certs'}",
            f"--tls-cert-file={cert}",
            f"--tls-private-key-file={key}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--disable-admission-plugins=ServiceAccount",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={sa_key}",
            f"--service-account-signing-key-file={sa_key}",
            "--allow-privileged=true",
            "--v=0",
            *self.extra_apiserver_flags,
        ]
        self._run_apiserver()

    def _run_apiserver(self) -> None:
        self._spawn("kube-apiserver", self._apiserver_args)
        context = ssl.create_default_context(cafile=str(self.ca_file))

        def ready() -> bool:
            req = urllib.request.Request(  # noqa: S310 - loopback https only
                f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"}
            )
            try:
                with urllib.request.urlopen(req, timeout=2, context=context) as resp:  # noqa: S310
                    return bool(resp.status == 200)
            except (OSError, urllib.error.URLError):
                return False

        self._wait_until("kube-apiserver", ready)

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": "keyrotor-envtest",
                "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)},
            }],
            "users": [
                {"name": "admin", "user": {"token": self.admin_token}},
                {"name": "nobody", "user": {"token": self.user_token}},
            ],
            "contexts": [
                {"name": "admin", "context": {"cluster": "keyrotor-envtest", "user": "admin"}},
                {"name": "nobody", "context": {"cluster": "keyrotor-envtest", "user": "nobody"}},
            ],
            "current-context": "admin",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)


@contextlib.contextmanager
def running(**kwargs: object) -> Iterator[ControlPlane]:
    """``with running() as cp:`` starts a control plane and always stops it."""
    plane = ControlPlane(**kwargs)  # type: ignore[arg-type]
    with plane:
        yield plane
