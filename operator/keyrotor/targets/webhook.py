"""Any service whose API can create, check and revoke keys: the webhook contract.

keyrotor generates each version and tells the service about it over HTTP (JSON bodies; an
``Authorization: Bearer`` header from ``authSecretRef`` when set)::

    PUT    {url}/keys/{version}   {"version": 7, "key": "...", "rotatingSecret": "ns/name"}
           -> 2xx: the service accepts the key. A two-key service keeps the older key valid
              too (TwoKeys); a one-key service replaces it (OneKey). Repeating the call for
              the same version replaces that version's key (keyrotor may retry after a crash).
    POST   {url}/keys/check       {"key": "..."}
           -> 200: valid; 401, 403 or 404: not valid (anything else is an error)
    DELETE {url}/keys/{version}
           -> 2xx or 404: the version is gone (idempotent)

docs/webhook-target.md has the full contract and a reference service.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import requests

from keyrotor.backends import BackendConflict, BackendUnavailable, Context, ca_file, measured
from keyrotor.engine.durations import parse_duration
from keyrotor.engine.fields import text
from keyrotor.generators import Material, main_value

REJECTED = (401, 403, 404)


@dataclass(frozen=True)
class WebhookTarget:
    url: str
    owner: str
    token: str | None = None
    ca_bundle: str | None = None
    timeout: float = 10.0
    kind: str = "webhook"

    @classmethod
    def from_spec(cls, spec: dict[str, Any], ctx: Context) -> WebhookTarget:
        token = None
        if ref := spec.get("authSecretRef"):
            token = text(ctx.read_secret_key(ref["name"], ref.get("key", "token")),
                         "spec.target.webhook.authSecretRef").strip()
        return cls(url=spec["url"].rstrip("/"), owner=f"{ctx.namespace}/{ctx.name}",
                   token=token, ca_bundle=spec.get("caBundle"),
                   timeout=parse_duration(spec.get("timeout", "10s"),
                                          field="spec.target.webhook.timeout"))

    def _call(self, operation: str, method: str, path: str,
              body: dict[str, Any] | None = None) -> requests.Response:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        with measured("webhook", operation):
            try:
                return requests.request(method, f"{self.url}{path}", headers=headers,
                                        data=json.dumps(body) if body is not None else None,
                                        timeout=self.timeout,
                                        verify=ca_file(self.ca_bundle) if self.ca_bundle
                                        else True,
                                        allow_redirects=False)
            except requests.RequestException as exc:
                raise BackendUnavailable(
                    f"webhook {method} {self.url}{path}: {type(exc).__name__}") from None

    def _expect_ok(self, response: requests.Response, what: str, *ok: int) -> None:
        if response.status_code in ok or 200 <= response.status_code < 300:
            return
        error = BackendUnavailable if response.status_code >= 500 else BackendConflict
        raise error(f"webhook {what}: HTTP {response.status_code} from {self.url}; see the "
                    "webhook contract in docs/webhook-target.md")

    def describe(self, version: int, material: Material) -> Material:
        return material

    def activate(self, version: int, material: Material) -> None:
        response = self._call("activate", "PUT", f"/keys/{version}", {
            "version": version, "key": main_value(material).decode(),
            "rotatingSecret": self.owner})
        self._expect_ok(response, f"create key version {version}")

    def revoke(self, version: int) -> None:
        response = self._call("revoke", "DELETE", f"/keys/{version}")
        self._expect_ok(response, f"revoke key version {version}", 404)

    def check(self, material: Material) -> tuple[bool, str]:
        response = self._call("check", "POST", "/keys/check",
                              {"key": main_value(material).decode()})
        if response.status_code == 200:
            return True, "the service accepts the key"
        if response.status_code in REJECTED:
            return False, f"the service rejects the key (HTTP {response.status_code})"
        self._expect_ok(response, "check key")
        return False, f"HTTP {response.status_code}"
