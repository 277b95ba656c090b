"""The ``transit`` consumer probe: an encrypt/decrypt round trip with the version under test.

For a RotatingSecret whose versions are Vault Transit key versions, the most direct consumer
check is Vault itself: encrypt a random plaintext with exactly the candidate key version and
decrypt it again. It proves the version exists, is usable for both directions, and is not
below ``min_decryption_version``; no key material is involved.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from dataclasses import dataclass
from typing import Any

from keyrotor.backends import BackendError
from keyrotor.backends.vault import VaultTransit
from keyrotor.engine.model import ConsumerResult


@dataclass(frozen=True)
class TransitProbe:
    name: str
    backend: VaultTransit

    def _round_trip(self, version: int) -> ConsumerResult:
        mount, key = self.backend.spec["transit"].get("mount", "transit"), \
            self.backend.spec["transit"]["key"]
        plaintext = base64.b64encode(secrets.token_bytes(16)).decode()
        try:
            transit = self.backend.client().secrets.transit
            sealed = transit.encrypt_data(key, plaintext, key_version=version,
                                          mount_point=mount)["data"]["ciphertext"]
            opened = transit.decrypt_data(key, sealed, mount_point=mount)["data"]["plaintext"]
        except BackendError as exc:
            return ConsumerResult(self.name, False, str(exc))
        except Exception as exc:  # hvac raises one class per HTTP status; all mean "no"
            return ConsumerResult(self.name, False,
                                  f"round trip with version {version} failed: "
                                  f"{type(exc).__name__}")
        if opened != plaintext:
            return ConsumerResult(self.name, False,
                                  f"round trip with version {version} returned other data")
        return ConsumerResult(self.name, True, f"round trip with version {version} ok")

    async def check(self, session: Any, values: dict[str, str]) -> ConsumerResult:
        return await asyncio.to_thread(self._round_trip, int(values["candidate_version"]))
