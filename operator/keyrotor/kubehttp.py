"""A thin synchronous client for the Kubernetes API: urllib3, JSON in and out, nothing generated.

The operator process used the official ``kubernetes`` package for a dozen calls on plain dicts;
importing it (its generated models, ``requests``, ``oauthlib``, ``google-auth`` hooks) cost more
memory than everything else keyrotor keeps at a thousand objects. This module does what keyrotor
needs of it and no more:

* credentials the way client-go finds them: in a pod the ServiceAccount token and CA
  (``KUBERNETES_SERVICE_HOST``/``_PORT``), the token file re-read every minute as client-go's
  cached token source does (bound tokens are rotated by the kubelet); otherwise a kubeconfig
  (``$KUBECONFIG``, a list like kubectl's, else ``~/.kube/config``): client certificate and key
  (file or data), bearer token or token file, basic auth, CA (file or data) or
  ``insecure-skip-tls-verify``. Exec and auth-provider plugins are not supported (keyrotor runs
  in-cluster or with a plain kubeconfig); a kubeconfig that needs one is refused at start.
* one connection pool (``pool_size`` keep-alive connections), one retry of a failed connection
  as the official client did with ``retries=1``, no redirects;
* non-2xx answers raise :class:`ApiError` with the status, reason, headers and the decoded
  ``Status`` body. Mapping them to keyrotor's errors is :mod:`keyrotor.kube`'s job.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REFRESH = 60.0  # seconds between re-reads of a token file (client-go: one minute)
USER_AGENT = "keyrotor"


class ConfigError(Exception):
    """No usable credentials (no in-cluster ServiceAccount, no usable kubeconfig)."""


class ApiError(Exception):
    """The API server answered outside 2xx."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str] | None = None,
                 body: bytes = b"") -> None:
        self.status, self.reason, self.headers, self.body = status, reason, headers or {}, body
        message = ""
        with contextlib.suppress(ValueError, AttributeError):
            message = str(json.loads(body).get("message") or "")
        super().__init__(f"HTTP {status} {reason}" + (f": {message}" if message else ""))


@dataclass
class Credentials:
    """Where the API server is and who keyrotor is to it."""

    server: str
    ca_file: str | None = None
    ca_data: bytes | None = None  # PEM
    cert_file: str | None = None
    key_file: str | None = None
    cert_data: bytes | None = None  # PEM
    key_data: bytes | None = None  # PEM
    token: str | None = None
    token_file: str | None = None
    username: str | None = None
    password: str | None = None
    insecure: bool = False
    tls_server_name: str | None = None
    namespace: str | None = None  # the context's (or the pod's) namespace


def in_cluster() -> Credentials | None:
    """The pod's ServiceAccount, as client-go's rest.InClusterConfig finds it; None outside."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT")
    token = SA_DIR / "token"
    if not host or not port or not token.is_file():
        return None
    if ":" in host:  # IPv6
        host = f"[{host}]"
    ca = SA_DIR / "ca.crt"
    namespace = SA_DIR / "namespace"
    return Credentials(server=f"https://{host}:{port}",
                       ca_file=str(ca) if ca.is_file() else None, token_file=str(token),
                       namespace=namespace.read_text().strip() if namespace.is_file() else None)


def _data(value: Any) -> bytes | None:
    return base64.b64decode(value) if value else None


def from_kubeconfig(path: str | None = None, context: str | None = None) -> Credentials:
    """Credentials from a kubeconfig (``path``, else ``$KUBECONFIG``, else ``~/.kube/config``).
    Several files merge as kubectl merges them: the first to name a thing wins. Relative file
    names are relative to the file that holds them."""
    spec = path or os.environ.get("KUBECONFIG") or "~/.kube/config"
    files = [Path(os.path.expanduser(p)) for p in spec.split(os.pathsep) if p.strip()]
    current: str | None = None
    named: dict[str, dict[str, tuple[dict[str, Any], Path]]] = {
        "contexts": {}, "clusters": {}, "users": {}}
    read = 0
    for file in files:
        if not file.is_file():
            continue
        config = yaml.safe_load(file.read_text()) or {}
        read += 1
        current = current or config.get("current-context")
        for section, key in (("contexts", "context"), ("clusters", "cluster"),
                             ("users", "user")):
            for item in config.get(section) or ():
                named[section].setdefault(item["name"], (item.get(key) or {}, file.parent))
    if not read:
        raise ConfigError(f"no kubeconfig found (looked for {spec})")
    name = context or current
    if not name or name not in named["contexts"]:
        raise ConfigError(f"kubeconfig context {name!r} not found")
    ctx, _ = named["contexts"][name]
    if ctx.get("cluster") not in named["clusters"]:
        raise ConfigError(f"kubeconfig cluster {ctx.get('cluster')!r} not found")
    cluster, cluster_dir = named["clusters"][ctx["cluster"]]
    user, user_dir = named["users"].get(ctx.get("user") or "", ({}, cluster_dir))
    if user.get("exec") or user.get("auth-provider"):
        raise ConfigError("kubeconfig user needs an exec or auth-provider plugin, which "
                          "keyrotor does not run: use a token or a client certificate")

    def path_in(value: Any, base: Path) -> str | None:
        return str(base / os.path.expanduser(str(value))) if value else None

    return Credentials(
        server=str(cluster.get("server") or ""),
        ca_file=path_in(cluster.get("certificate-authority"), cluster_dir),
        ca_data=_data(cluster.get("certificate-authority-data")),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        tls_server_name=cluster.get("tls-server-name"),
        cert_file=path_in(user.get("client-certificate"), user_dir),
        key_file=path_in(user.get("client-key"), user_dir),
        cert_data=_data(user.get("client-certificate-data")),
        key_data=_data(user.get("client-key-data")),
        token=user.get("token"), token_file=path_in(user.get("tokenFile"), user_dir),
        username=user.get("username"), password=user.get("password"),
        namespace=ctx.get("namespace"))


def load(kubeconfig: str | None = None, context: str | None = None) -> Credentials:
    """In-cluster credentials when running in a pod, else the kubeconfig (as before: the
    official client's ``load_incluster_config`` first, then ``load_kube_config``)."""
    return in_cluster() or from_kubeconfig(kubeconfig, context)


def _ssl_context(creds: Credentials) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=creds.ca_file,
        cadata=creds.ca_data.decode() if creds.ca_data else None)
    if creds.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if creds.cert_file or creds.cert_data:
        if creds.cert_data or creds.key_data:
            # The ssl module loads keys from files only: a private file for the moment it
            # takes (the official client writes them to temporary files too).
            with tempfile.TemporaryDirectory(prefix="keyrotor-tls-") as folder:
                cert = Path(folder) / "tls.crt"
                key = Path(folder) / "tls.key"
                cert.write_bytes(creds.cert_data or Path(str(creds.cert_file)).read_bytes())
                key.touch(0o600)
                key.write_bytes(creds.key_data or Path(str(creds.key_file)).read_bytes())
                context.load_cert_chain(str(cert), str(key))
        else:
            context.load_cert_chain(str(creds.cert_file), creds.key_file)
    return context


@dataclass
class Client:
    """One API server, one pool of keep-alive connections; thread-safe."""

    credentials: Credentials
    pool_size: int = 4
    retries: int = 1  # connection failures retried once, as the official client did
    _pool: urllib3.HTTPConnectionPool = field(init=False, repr=False)
    _prefix: str = field(init=False, repr=False)
    _token: str | None = field(init=False, default=None, repr=False)
    _token_read: float = field(init=False, default=float("-inf"), repr=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        creds = self.credentials
        url = urllib.parse.urlsplit(creds.server)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise ConfigError(f"the API server's address {creds.server!r} is not a URL")
        self._prefix = url.path.rstrip("/")
        options: dict[str, Any] = {"maxsize": self.pool_size, "block": False,
                                   "retries": urllib3.Retry(total=self.retries, redirect=False)}
        if url.scheme == "https":
            options["ssl_context"] = _ssl_context(creds)
            if creds.insecure:
                options["cert_reqs"] = "CERT_NONE"
                options["assert_hostname"] = False
            elif creds.tls_server_name:
                options["server_hostname"] = creds.tls_server_name
                options["assert_hostname"] = creds.tls_server_name
        self._pool = urllib3.connection_from_url(
            f"{url.scheme}://{url.netloc}", **options)
        self._token = creds.token

    def close(self) -> None:
        self._pool.close()

    # ---- authentication --------------------------------------------------------------------

    def _authorization(self) -> str | None:
        creds = self.credentials
        if creds.token_file:
            with self._lock:
                now = time.monotonic()
                if now - self._token_read >= TOKEN_REFRESH:
                    try:
                        self._token = Path(creds.token_file).read_text().strip()
                        self._token_read = now
                    except OSError:
                        if self._token is None:
                            raise
                token = self._token
        else:
            token = creds.token
        if token:
            return f"Bearer {token}"
        if creds.username is not None:
            pair = f"{creds.username}:{creds.password or ''}".encode()
            return "Basic " + base64.b64encode(pair).decode()
        return None

    # ---- requests --------------------------------------------------------------------------

    def url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        query = {k: ("true" if v is True else "false" if v is False else str(v))
                 for k, v in (params or {}).items() if v is not None}
        return self._prefix + path + ("?" + urllib.parse.urlencode(query) if query else "")

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                body: Any = None, content_type: str = "application/json",
                accept: str = "application/json",
                timeout: tuple[float, float] | None = None,
                stream: bool = False) -> urllib3.BaseHTTPResponse:
        """One request; the response (``stream``: unread, for a watch). Non-2xx raises
        :class:`ApiError`; an unanswered request raises urllib3's errors."""
        headers = {"Accept": accept, "User-Agent": USER_AGENT}
        auth = self._authorization()
        if auth:
            headers["Authorization"] = auth
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        response = self._pool.urlopen(
            method.upper(), self.url(path, params), body=data, headers=headers,
            timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]) if timeout
            else urllib3.Timeout(connect=None, read=None),
            preload_content=not stream, redirect=False, release_conn=not stream)
        if not 200 <= response.status < 300:
            raw = response.read() if stream else response.data
            if stream:
                response.release_conn()
            raise ApiError(response.status, response.reason or "", dict(response.headers),
                           raw or b"")
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """:meth:`request`, the answer decoded."""
        return json.loads(self.request(method, path, **kwargs).data)


def keep_official_client_out() -> None:
    """Make ``import kubernetes`` fail in this process (``keyrotor run`` calls it first).

    kopf imports the official package at its own import whenever it is installed (for its
    model helpers) and logs in through it; keyrotor needs neither, and the import alone costs
    tens of megabytes. A ``None`` in ``sys.modules`` turns the import into an ImportError, which
    kopf handles as "not installed". Does nothing where it is imported already."""
    import sys

    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
