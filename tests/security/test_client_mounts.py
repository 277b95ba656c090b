"""The consumer library (keyrotor.client) on malformed mounts: missing folder or files, bad JSON
in versions.json, binary garbage in every file, a ``..data`` link to nowhere, a half-written
folder, and hypothesis-generated contents.

The rule, from the module's contract: each call returns what it documents or raises
:class:`keyrotor.client.SecretError` with a message naming the folder; never another exception
type, never a hang. (The module does not promise to keep serving the last good value after a
failed reload: a reload that fails raises SecretError on each call until the mount is sound.)

The campaign found three defects in client.py, now fixed, each with its test below: a version
in versions.json that is not a whole number, garbage in jwks.json or the JWK files, and an
empty ``current`` file that made an empty credential verify.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from keyrotor.client import RotatingSecret, SecretError
from keyrotor.testing.secretmount import KubeletMount

FILES = ("current", "next", "previous", "versions.json", "jwks.json", "current.jwk",
         "current.pub.jwk")


def open_secret(path: Path) -> RotatingSecret:
    return RotatingSecret(path, refresh=0, registry=CollectorRegistry(), rate_limit=None)


def mounted(root: Path, data: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    KubeletMount(root).write(data)
    return root


def bounded(call: Callable[[], Any], seconds: float = 5.0) -> Any:
    """``call()``, failing if it takes longer than ``seconds`` (no hang)."""
    started = time.monotonic()
    try:
        return call()
    finally:
        assert time.monotonic() - started < seconds, "the call took too long"


# ---- the cases named in the brief ------------------------------------------------------------


def test_a_missing_folder_is_a_secret_error(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="does not exist"):
        open_secret(tmp_path / "nowhere")


def test_a_file_where_the_folder_should_be_is_a_secret_error(tmp_path: Path) -> None:
    (tmp_path / "api-key").write_bytes(b"value-0123456789")
    with pytest.raises(SecretError):
        open_secret(tmp_path / "api-key")


def test_missing_files_are_a_secret_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SecretError, match="no 'current'"):
        open_secret(tmp_path / "empty")
    root = mounted(tmp_path / "only-next", {"next": b"n-0123456789", "versions.json": b"{}"})
    with pytest.raises(SecretError, match="no 'current'"):
        open_secret(root)


def test_bad_json_in_versions_json_still_serves_the_values(tmp_path: Path) -> None:
    """versions.json is optional (Secrets not written by keyrotor have none): unreadable, the
    versions are unknown and the values still verify."""
    for junk in (b"{", b"\xff\xfe\x00", b"[1, 2]", b'"x"', b"null", b"{}" * 1000):
        root = mounted(tmp_path / f"v{len(os.listdir(tmp_path))}", {
            "current": b"c-0123456789", "versions.json": junk})
        secret = open_secret(root)
        assert secret.verify(b"c-0123456789") == "current"
        assert secret.version() is None


def test_binary_garbage_in_every_file(tmp_path: Path) -> None:
    garbage = bytes(range(256)) * 3
    root = mounted(tmp_path / "garbage", {name: garbage for name in FILES})
    secret = open_secret(root)
    assert secret.verify(garbage) == "current"
    assert secret.verify(b"something else") is None
    assert secret.current() == garbage
    assert secret.version() is None


def test_a_data_link_to_nowhere_is_a_secret_error_until_the_mount_is_sound(
        tmp_path: Path) -> None:
    root = tmp_path / "api-key"
    root.mkdir()
    mount = KubeletMount(root)
    mount.write({"current": b"c-0123456789"})
    secret = open_secret(root)
    assert secret.verify(b"c-0123456789") == "current"
    # kubelet's link now points at a folder that is gone
    tmp = root / "..data_tmp"
    tmp.symlink_to("..2026_12_03_00_00_00.999999")
    os.replace(tmp, root / "..data")
    with pytest.raises(SecretError, match="no 'current'"):
        bounded(lambda: secret.verify(b"c-0123456789"))
    with pytest.raises(SecretError):
        open_secret(root)
    mount.write({"current": b"c-9876543210"})  # a sound update arrives
    assert secret.verify(b"c-9876543210") == "current"


def test_a_half_written_folder_is_a_secret_error(tmp_path: Path) -> None:
    """A swap to a folder that has only some of the files (a writer that died halfway)."""
    root = mounted(tmp_path / "api-key", {"current": b"c-0123456789", "next": b"n-0123456789"})
    secret = open_secret(root)
    half = root / "..2026_12_03_00_00_01.000001"
    half.mkdir()
    (half / "next").write_bytes(b"n-0123456789")
    tmp = root / "..data_tmp"
    tmp.symlink_to(half.name)
    os.replace(tmp, root / "..data")
    with pytest.raises(SecretError):
        bounded(lambda: secret.current())


def test_a_symlink_loop_and_a_fifo_do_not_hang(tmp_path: Path) -> None:
    root = tmp_path / "odd"
    root.mkdir()
    (root / "current").write_bytes(b"c-0123456789")
    (root / "next").symlink_to("next")  # a loop
    os.mkfifo(root / "previous")  # reading it would block forever
    secret = bounded(lambda: open_secret(root))
    assert bounded(lambda: secret.verify(b"c-0123456789")) == "current"


# ---- defects this campaign found in client.py (fixed; each test failed before) -----------


@pytest.mark.parametrize("version", ["abc", 1.5, None, True, {"a": 1}])
def test_a_version_that_is_not_a_number_is_a_secret_error(tmp_path: Path,
                                                          version: Any) -> None:
    root = mounted(tmp_path / "api-key", {"current": b"c-0123456789",
                                          "versions.json": json.dumps({"current": version})
                                          .encode()})
    with pytest.raises(SecretError):
        open_secret(root)


@pytest.mark.parametrize("junk", [b"\xff\xfe garbage", b"[1, 2]", b'{"keys": 5}'])
def test_garbage_jwks_is_a_secret_error(tmp_path: Path, junk: bytes) -> None:
    root = mounted(tmp_path / "api-key", {"current": b"c-0123456789", "jwks.json": junk,
                                          "current.jwk": junk})
    secret = open_secret(root)
    with pytest.raises(SecretError):
        secret.verify_jwt("eyJhbGciOiJFZERTQSIsImtpZCI6IngifQ.e30.c2ln")
    with pytest.raises(SecretError):
        secret.sign_jwt({"sub": "x"})


def test_an_empty_current_is_never_a_valid_credential(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    root.mkdir()
    (root / "current").write_bytes(b"")
    try:
        secret = open_secret(root)
    except SecretError:
        return  # refusing the mount is right too
    assert not secret.verify(b"")


# ---- hypothesis-generated contents -----------------------------------------------------------

CONTENTS = st.one_of(
    st.binary(max_size=64),
    st.sampled_from((b"", b"{", b"null", b"[]", b'{"current": 1}', b'{"current": "x"}',
                     b'{"keys": []}', b'{"keys": [{"kid": "x"}]}', b'{"retired": {"1": 5}}',
                     b'{"retired": []}', b"\x00" * 32)),
    st.dictionaries(st.sampled_from(("current", "next", "previous", "retired", "keys", "kid",
                                     "alg", "kty")),
                    st.one_of(st.integers(-3, 10), st.text(max_size=8), st.none(),
                              st.lists(st.integers(), max_size=2)),
                    max_size=4).map(lambda d: json.dumps(d).encode()),
)


@settings(max_examples=300, derandomize=True, database=None, deadline=2000,
          suppress_health_check=list(HealthCheck))
@given(files=st.dictionaries(st.sampled_from(FILES), CONTENTS, max_size=len(FILES)),
       kubelet=st.booleans(), presented=st.binary(max_size=16))
def test_generated_mounts_are_served_or_a_secret_error(tmp_path_factory: pytest.TempPathFactory,
                                                      files: dict[str, bytes], kubelet: bool,
                                                      presented: bytes) -> None:
    root = tmp_path_factory.mktemp("mount") / "api-key"
    if kubelet:
        mounted(root, files)
    else:
        root.mkdir()
        for name, content in files.items():
            (root / name).write_bytes(content)
    calls: list[Callable[[RotatingSecret], Any]] = [
        lambda s: s.verify(presented), lambda s: s.current(), lambda s: s.version(),
        lambda s: s.version("next"), lambda s: s.files(), lambda s: s.decoy_fingerprints(),
        lambda s: s.verify_signature(b"m", "00"), lambda s: s.verify_jwt("a.b.c"),
        lambda s: s.sign_jwt({"sub": "x"}),
    ]
    try:
        secret = bounded(lambda: open_secret(root))
    except SecretError as exc:
        assert str(root) in str(exc)
        return
    assert "current" in files
    for call in calls:
        try:
            bounded(lambda call=call: call(secret))
        except SecretError as exc:
            assert str(root) in str(exc)


def test_a_reload_between_the_swap_and_the_new_keys_link_sees_the_new_key(
        tmp_path: Path) -> None:
    """kubelet swaps ``..data`` first and links a new key (``next``) after: a reload in
    between must still see it, or the acceptor rejects the staged version until the Secret
    changes again (the kill test once stalled a rotation for minutes on exactly this)."""
    root = mounted(tmp_path / "api-key", {"current": b"c-0123456789",
                                          "versions.json": b'{"current": 1}'})
    secret = open_secret(root)
    assert secret.verify(b"c-0123456789") == "current"
    folder = root / "..2026_12_03_06_38_57.000099"
    folder.mkdir()
    for key, value in {"current": b"c-0123456789", "next": b"n-0123456789",
                       "versions.json": b'{"current": 1, "next": 2}'}.items():
        (folder / key).write_bytes(value)
    (root / "..data_tmp").symlink_to(folder.name)
    os.replace(root / "..data_tmp", root / "..data")  # swapped; the ``next`` link not yet made
    assert not (root / "next").exists()
    assert secret.verify(b"n-0123456789") == "next"
    assert secret.version("next") == 2
