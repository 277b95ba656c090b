"""A SoftHSM2 token in a temporary directory, for tests and demos of the PKCS#11 backend.

SoftHSM2 reads its configuration from ``$SOFTHSM2_CONF``; this writes one that keeps tokens in
the given folder, initialises a token with ``softhsm2-util``, and returns what a RotatingSecret
needs to reach it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)


@dataclass(frozen=True)
class SoftHsmToken:
    module: str
    label: str
    pin: str
    conf: Path

    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}


def module_path() -> str:
    for candidate in MODULE_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    raise FileNotFoundError("libsofthsm2.so not found: apt-get install softhsm2")


def init_token(folder: Path, label: str = "keyrotor") -> SoftHsmToken:
    util = shutil.which("softhsm2-util")
    if util is None:
        raise FileNotFoundError("softhsm2-util not found: apt-get install softhsm2")
    tokens = folder / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = folder / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    pin, so_pin = secrets.token_hex(4), secrets.token_hex(4)
    subprocess.run([util, "--init-token", "--free", "--label", label, "--pin", pin,
                    "--so-pin", so_pin], check=True, capture_output=True,
                   env={**os.environ, "SOFTHSM2_CONF": str(conf)})
    return SoftHsmToken(module=module_path(), label=label, pin=pin, conf=conf)
