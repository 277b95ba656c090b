"""The http probe against a real local HTTPS server: caBundle trusted, unknown CA refused,
insecureSkipTLSVerify accepted, expected statuses honoured, headers templated."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keyrotor.probes.http import HttpProbe, probe_all


def _self_signed(tmp: Path) -> tuple[Path, Path, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp / "tls.crt").write_bytes(pem)
    (tmp / "tls.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return tmp / "tls.crt", tmp / "tls.key", pem.decode()


@pytest.fixture
async def https_server(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    cert, key, pem = _self_signed(tmp_path)

    async def check(request: web.Request) -> web.Response:
        ok = request.headers.get("Authorization") == "Bearer good-key-0123456789"
        return web.Response(status=204 if ok else 403)

    app = web.Application()
    app.router.add_route("*", "/", check)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    yield f"https://127.0.0.1:{port}/", pem
    await runner.cleanup()


def probe(url: str, **http: object) -> HttpProbe:
    return HttpProbe.from_spec({"name": "tls", "http": {
        "url": url, "headers": {"Authorization": "Bearer {{ candidate }}"},
        "expectStatus": [204], **http}})


async def test_https_probe(https_server: tuple[str, str]) -> None:
    url, pem = https_server
    good = {"candidate": "good-key-0123456789"}
    bad = {"candidate": "wrong-key-0123456789"}
    trusted = probe(url, caBundle=pem)
    (result,) = await probe_all([trusted], good)
    assert result.ok and result.message == "HTTP 204"
    (result,) = await probe_all([trusted], bad)
    assert not result.ok and result.message == "HTTP 403 (expected 204)"
    (result,) = await probe_all([probe(url)], good)  # system CAs do not know this one
    assert not result.ok and "certificate verify failed" in result.message
    (result,) = await probe_all([probe(url, insecureSkipTLSVerify=True)], good)
    assert result.ok
    async with aiohttp.ClientSession() as session:
        missing = await probe(url, caBundle=pem).check(session, {})
    assert not missing.ok and missing.message == "{{ candidate }} has no value now"
