"""The bad-input campaign, in-process: thousands of generated specs and statuses through what the
operator runs before any I/O.

Each RotatingSecret spec (tests/security/specs.py: schema-driven from the CRD, or an example
with fields made hostile) goes through ``RotationSpec.parse``, the generator, the target, the
consumer probes (with a stand-in Context whose Secret reads return bytes, non-UTF-8 bytes
included, or raise ``SpecError`` as a missing Secret does), then ``probe_due``, ``step``,
``next_rotation_time`` and the status encoding over a few states and times. The rule: a spec
is either handled or rejected with a ``SpecError`` whose message starts with ``spec.`` and
names the field; any other exception is a defect.

A corrupted ``.status`` (hand-edited, or written by another version) goes through
``status.from_status``: it yields a state the engine can step from, or a ``KeyrotorError``
naming the ``status.`` field; never a ``TypeError``.

The run is derandomized (the same examples on every machine, no example database), so CI
is reproducible; ``KEYROTOR_FUZZ_EXAMPLES`` raises the count for a longer local hunt.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from keyrotor import generators, targets
from keyrotor import status as status_io
from keyrotor.backends import Context
from keyrotor.engine.model import (
    ConsumerResult,
    Phase,
    ProbeRound,
    RotationSpec,
    RotationState,
)
from keyrotor.engine.rotation import probe_due, step
from keyrotor.engine.schedule import next_rotation_time
from keyrotor.errors import KeyrotorError, SpecError
from keyrotor.reconciler import _probes
from tests.security.specs import HOSTILE, UNICODE, specs

EXAMPLES = int(os.environ.get("KEYROTOR_FUZZ_EXAMPLES", "0"))
CAMPAIGN = settings(max_examples=EXAMPLES or 1800, derandomize=True, database=None,
                    deadline=None, suppress_health_check=list(HealthCheck))
STATUSES = settings(max_examples=EXAMPLES or 1000, derandomize=True, database=None,
                    deadline=None, suppress_health_check=list(HealthCheck))

T0 = datetime.datetime(2026, 12, 3, 4, 0, tzinfo=datetime.UTC)
TIMES = (T0, T0 + datetime.timedelta(seconds=1), T0 + datetime.timedelta(days=400),
         datetime.datetime(9000, 1, 1, tzinfo=datetime.UTC))


def _states() -> tuple[RotationState, ...]:
    """One state per phase the engine resumes from, consistent as the engine writes them."""
    base = RotationState(current=3, latest=3, current_version_time=T0,
                         phase_start_time=T0, rotation_start_time=T0)
    consumers = (ConsumerResult("api", False, "HTTP 401", version=4, consecutive_failures=2,
                                time=T0),)
    return (
        RotationState(),
        base,
        base.evolve(phase=Phase.GENERATING, next=4, latest=4),
        base.evolve(phase=Phase.VERIFYING_ACCEPTANCE, next=4, latest=4, consumers=consumers),
        base.evolve(phase=Phase.PROMOTING, next=4, latest=4, verified_time=T0),
        base.evolve(phase=Phase.VERIFYING_RETIREMENT, current=4, previous=3, latest=4),
        base.evolve(phase=Phase.ACTIVATING, current=4, previous=3, latest=4),
        base.evolve(phase=Phase.HOLDING, current=4, previous=3, latest=4, consumers=consumers),
        base.evolve(phase=Phase.REVOKING, current=4, previous=3, latest=4, verified_time=T0),
        base.evolve(phase=Phase.FAILED),
    )


STATES = _states()


def assert_names_a_field(exc: SpecError) -> None:
    """``spec.<path>: <message>`` (or ``spec: ...`` when the spec itself is not an object)."""
    message = str(exc)
    assert exc.field == "spec" or exc.field.startswith("spec."), \
        f"SpecError without a field path: {message!r}"
    assert message.startswith(exc.field + ": "), message


def stand_in_context(secret_bytes: bytes | None) -> Context:
    """Secrets read as ``secret_bytes``, or missing (a SpecError, as the reconciler's reader
    raises for a Secret or key that is not there)."""
    def read(name: str, key: str) -> bytes:
        if secret_bytes is None:
            raise SpecError("spec.generator", f"no Secret ns/{name}: create it with the "
                            f"credential under key {key!r}")
        return secret_bytes

    return Context(namespace="ns", name="fuzzed", read_secret_key=read)


def run_spec(spec: Any, secret_bytes: bytes | None, trigger: str | None) -> str:
    """Everything the operator does with a spec before I/O; 'rejected' or 'handled'."""
    try:
        rspec = RotationSpec.parse(spec)
        ctx = stand_in_context(secret_bytes)
        keep = int((spec.get("revocation") or {}).get("keepHistory", 0))
        generator = generators.from_spec(spec.get("generator") or {}, ctx, keep_history=keep)
        target = targets.from_spec(spec.get("target"), ctx)
        _probes(spec.get("consumers") or (), generator, target)
        assert isinstance(spec["secretName"], str)
    except SpecError as exc:
        assert_names_a_field(exc)
        return "rejected"
    for state in STATES:
        for now in TIMES:
            version = probe_due(rspec, state, now)
            probe = None
            if version is not None:
                probe = ProbeRound(version, tuple(
                    ConsumerResult(name, ok=len(name) % 2 == 0, message="probed")
                    for name in rspec.expected(state.stage)))
            held = {"current": state.current or 1}
            result = step(rspec, state, now=now, trigger=trigger, probe=probe, held=held)
            assert result.requeue_after >= 0
            next_rotation_time(every=rspec.every, schedule=rspec.schedule,
                               since=result.state.current_version_time)
            status = status_io.to_status(result.state)
            status_io.conditions(result.state, now=now, generation=1)
            assert status_io.from_status(status) == result.state
    return "handled"


@CAMPAIGN
@given(spec=specs(),
       secret_bytes=st.one_of(st.none(), st.binary(max_size=24),
                              st.sampled_from((b"token", b"\xff\xfe\x00", "pässwörd".encode()))),
       trigger=st.one_of(st.none(), st.sampled_from(("manual-1", "", "x" * 300))))
def test_generated_specs_are_handled_or_name_a_field(spec: dict[str, Any],
                                                     secret_bytes: bytes | None,
                                                     trigger: str | None) -> None:
    event(run_spec(spec, secret_bytes, trigger))


@settings(CAMPAIGN, max_examples=EXAMPLES or 200)
@given(spec=st.one_of(st.sampled_from(HOSTILE), UNICODE, st.lists(st.integers(), max_size=3)))
def test_a_spec_that_is_not_an_object_names_the_spec(spec: Any) -> None:
    assert run_spec(spec, b"token", None) == "rejected"


# ---- corrupted statuses ------------------------------------------------------------------------

STATUS_FIELDS = ("phase", "currentVersion", "previousVersion", "nextVersion", "latestVersion",
                 "rotationCount", "currentVersionTime", "lastRotationTime", "rotationStartTime",
                 "phaseStartTime", "lastProbeTime", "verifiedTime", "successfulRounds",
                 "lastTrigger", "lastResult", "message", "consumers", "emergency")
ODD = st.one_of(st.sampled_from(HOSTILE), UNICODE, st.integers(-5, 10),
                st.sampled_from(("2026-12-03T04:00:00Z", "yesterday", "2026-13-45T99:99:99Z",
                                 "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", *Phase)),
                st.lists(st.fixed_dictionaries({}, optional={
                    "name": st.one_of(UNICODE, st.sampled_from(HOSTILE)),
                    "ok": st.sampled_from(HOSTILE), "version": st.sampled_from(HOSTILE),
                    "consecutiveFailures": st.sampled_from(HOSTILE),
                    "lastProbeTime": st.sampled_from(("x", "2026-12-03T04:00:00Z", 5))}),
                    max_size=2),
                st.fixed_dictionaries({}, optional={
                    "request": st.sampled_from(HOSTILE), "approvedBy": st.sampled_from(HOSTILE),
                    "startTime": st.sampled_from(("x", "2026-12-03T04:00:00Z", 5)),
                    "lastResult": st.sampled_from(HOSTILE),
                    "revoking": st.sampled_from(([3], ["x"], 3, [None]))}))


@st.composite
def corrupted_statuses(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 19)) == 0:
        return draw(st.sampled_from(HOSTILE))  # not even an object
    state = draw(st.sampled_from(STATES))
    status: dict[str, Any] = {k: v for k, v in status_io.to_status(state).items()
                              if v is not None}
    for field in draw(st.lists(st.sampled_from(STATUS_FIELDS), min_size=1, max_size=4)):
        if draw(st.booleans()):
            status.pop(field, None)
        else:
            status[field] = draw(ODD)
    return status


@STATUSES
@given(status=corrupted_statuses(), now=st.sampled_from(TIMES))
def test_corrupted_status_is_a_keyrotor_error_or_a_state_the_engine_steps(status: Any,
                                                                          now: Any) -> None:
    try:
        state = status_io.from_status(status)
    except KeyrotorError as exc:
        assert str(exc).startswith("status"), str(exc)
        return
    rspec = RotationSpec(consumer_names=("api",))
    probe = None
    if (version := probe_due(rspec, state, now)) is not None:
        probe = ProbeRound(version, (ConsumerResult("api", True, "ok"),))
    result = step(rspec, state, now=now, probe=probe,
                  held={"current": state.current} if state.current else {})
    status_io.conditions(result.state, now=now, generation=1)
    status_io.to_status(result.state)


# ---- the defects the campaign found, one example each (each failed before its fix) ---------

def _spec(**fields: Any) -> dict[str, Any]:
    return {"secretName": "api-key", "generator": {"random": {"length": 32}}, **fields}


FOUND = [
    # Admission accepts these (the CRD bounds neither overlap); the engine then overflowed
    # datetime arithmetic (OverflowError in the policies) on every reconcile.
    (_spec(rotation={"minOverlap": "99999999h", "maxOverlap": "99999999h"}),
     "spec.rotation.minOverlap"),
    (_spec(rotation={"maxOverlap": "9" * 30 + "h"}), "spec.rotation.maxOverlap"),
    (_spec(revocation={"delay": "99999999h"}), "spec.revocation.delay"),
    # Past admission only without the CRD's rules; each was a TypeError, AttributeError,
    # KeyError or ValueError in the parser or the adapters, or a busy loop.
    (_spec(verification=" "), "spec.verification"),
    (_spec(rotation={"every": "0s"}), "spec.rotation.every"),  # rotated without pause
    (_spec(verification={"interval": "0s"}), "spec.verification.interval"),  # probed so too
    (_spec(generator={"hsm": ""}), "spec.generator.hsm"),
    (_spec(generator={"vault": ""}), "spec.generator.vault"),
    (_spec(generator={"random": {"length": "abc"}}), "spec.generator.random.length"),
    (_spec(generator={"random": {"length": None}}), "spec.generator.random.length"),
    (_spec(revocation={"keepHistory": "all"}), "spec.revocation.keepHistory"),
    (_spec(verification={"successesRequired": 1.5}), "spec.verification.successesRequired"),
    (_spec(rolloutRestartTargets=[{"name": "api"}]), "spec.rolloutRestartTargets[0].kind"),
    (_spec(consumers=[{"name": "api", "http": {"url": 5}}]), "spec.consumers[api].http.url"),
    (_spec(consumers=["api"]), "spec.consumers[0]"),
    (_spec(target={"webhook": {"url": "http://x", "timeout": []}}),
     "spec.target.webhook.timeout"),
    (_spec(emergency={"approvals": "2"}), "spec.emergency.approvals"),
    (_spec(decoys={"count": -1}), "spec.decoys.count"),
    (_spec(strategy=None), "spec.strategy"),
    ({"generator": {"random": {}}}, "spec.secretName"),  # KeyError in the reconciler
    # Admitted; found by the cluster campaign: a UnicodeDecodeError when the first version
    # was activated at the target.
    (_spec(generator={"symmetric": {"algorithm": "AES-256"}},
           target={"webhook": {"url": "http://keys:8080"}}), "spec.generator.symmetric"),
    ([], "spec"),
]


@pytest.mark.parametrize(("spec", "field"), FOUND, ids=[f for _, f in FOUND])
def test_found_spec_defects_are_spec_errors_naming_the_field(spec: Any, field: str) -> None:
    with pytest.raises(SpecError) as raised:
        RotationSpec.parse(spec)
    assert raised.value.field == field
    assert_names_a_field(raised.value)


@pytest.mark.parametrize("target", [
    {"webhook": {"url": "http://keys:8080", "authSecretRef": {"name": "admin"}}},
    {"postgres": {"host": "db", "roles": ["a", "b"], "adminSecretRef": {"name": "admin"}}},
])
def test_a_credential_that_is_not_utf8_names_the_reference(target: dict[str, Any]) -> None:
    """Admission cannot see a referenced Secret: bytes that are not UTF-8 were a
    UnicodeDecodeError."""
    kind = next(iter(target))
    ref = "authSecretRef" if kind == "webhook" else "adminSecretRef"
    with pytest.raises(SpecError) as raised:
        targets.from_spec(target, stand_in_context(b"\xff\xfe token"))
    assert raised.value.field == f"spec.target.{kind}.{ref}"


FOUND_STATUSES = [
    ({"phase": "Rotating"}, "status.phase"),  # ValueError
    ({"phase": ["Idle"]}, "status.phase"),  # TypeError
    ({"phase": "Generating", "currentVersion": 3, "latestVersion": 3},
     "status.nextVersion"),  # AssertionError in the engine
    ({"phase": "Activating", "latestVersion": 3}, "status.currentVersion"),
    ({"currentVersion": 5, "latestVersion": 2}, "status.latestVersion"),  # reused versions
    ({"currentVersion": "5"}, "status.currentVersion"),
    ({"latestVersion": " "}, "status.latestVersion"),  # ValueError
    ({"currentVersionTime": "yesterday"}, "status.currentVersionTime"),  # ValueError
    ({"currentVersion": 1, "latestVersion": 1, "currentVersionTime": "9999-12-31T23:59:59Z"},
     "status.currentVersionTime"),  # OverflowError scheduling the next rotation
    ({"consumers": " "}, "status.consumers"),  # TypeError
    ({"consumers": [{"ok": True}]}, "status.consumers[0]"),  # KeyError
    ({"emergency": " "}, "status.emergency"),  # AttributeError
    ({"emergency": {"request": "r1"}}, "status.emergency.startTime"),  # AssertionError
    ([], "status"),
]


@pytest.mark.parametrize(("status", "field"), FOUND_STATUSES,
                         ids=[f for _, f in FOUND_STATUSES])
def test_found_status_defects_are_keyrotor_errors_naming_the_field(status: Any,
                                                                   field: str) -> None:
    with pytest.raises(status_io.StatusError) as raised:
        status_io.from_status(status)
    assert raised.value.field == field
    assert str(raised.value).startswith(field + ": ")
    assert isinstance(raised.value, KeyrotorError) and not raised.value.temporary


def test_vault_kubernetes_auth_without_a_token_file_names_the_field(tmp_path: Any) -> None:
    """Found by the cluster campaign: outside a pod (or with a wrong tokenPath) the login was
    a FileNotFoundError, reported as an unexpected InternalError."""
    from keyrotor.backends import vault

    spec = {"address": "http://127.0.0.1:9", "transit": {"key": "k"},
            "auth": {"kubernetes": {"role": "r", "tokenPath": str(tmp_path / "none")}}}
    backend = generators.from_spec({"vault": spec}, stand_in_context(b"t"))
    assert isinstance(backend, vault.VaultTransit)
    with pytest.raises(SpecError) as raised:
        backend.client()
    assert raised.value.field == "spec.generator.vault.auth.kubernetes.tokenPath"


def test_a_vault_token_or_hsm_pin_that_is_not_utf8_names_the_reference() -> None:
    """A Vault token or PKCS#11 PIN Secret holding other bytes was a UnicodeDecodeError at the
    first backend call (an unexpected InternalError)."""
    ctx = stand_in_context(b"\xff\xfe")
    vault = generators.from_spec({"vault": {
        "address": "http://127.0.0.1:9", "kv": {"path": "p"},
        "auth": {"tokenSecretRef": {"name": "vault-token"}}}}, ctx)
    with pytest.raises(SpecError) as raised:
        vault.client()  # type: ignore[attr-defined]
    assert raised.value.field == "spec.generator.vault.auth.tokenSecretRef"
    hsm = generators.from_spec({"hsm": {"module": "/nowhere.so", "tokenLabel": "t",
                                        "pinSecretRef": {"name": "pin"}}}, ctx)
    with pytest.raises(SpecError) as raised:
        hsm._session()  # type: ignore[attr-defined]
    assert raised.value.field == "spec.generator.hsm.pinSecretRef"
