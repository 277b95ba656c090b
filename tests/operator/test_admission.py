"""Malformed RotatingSecrets are rejected at admission, with a message naming field and fix."""

from __future__ import annotations

import pytest
import yaml

from keyrotor.testing.controlplane import ControlPlane

VALID = {"secretName": "ok", "generator": {"random": {"length": 32}}}

CASES = [
    ("no generator", {"secretName": "x", "generator": {}},
     "spec.generator must set exactly one of random, symmetric, keyPair, vault or hsm"),
    ("two generators",
     {**VALID, "generator": {"random": {}, "symmetric": {"algorithm": "AES-256"}}},
     "spec.generator must set exactly one of random, symmetric, keyPair, vault or hsm"),
    ("bad duration", {**VALID, "rotation": {"every": "30 days"}},
     "spec.rotation.every must be a duration such as 720h, 90m or 1h30m"),
    ("every and schedule", {**VALID, "rotation": {"every": "24h", "schedule": "0 3 * * *"}},
     "set either every (a duration) or schedule (a cron expression), not both"),
    ("min over max", {**VALID, "rotation": {"minOverlap": "2h", "maxOverlap": "1h"}},
     "spec.rotation.minOverlap must not exceed spec.rotation.maxOverlap"),
    ("every too short", {**VALID, "rotation": {"every": "500ms"}},
     "spec.rotation.every must be between 1s and 87600h"),
    ("cron with four fields", {**VALID, "rotation": {"schedule": "0 3 * *"}},
     "spec.rotation.schedule must be a cron expression with five fields"),
    ("bad secret name", {**VALID, "secretName": "Not_A_Name"},
     "spec.secretName must be a valid Secret name"),
    ("custom without alphabet", {**VALID, "generator": {"random": {"encoding": "custom"}}},
     "spec.generator.random.alphabet is required when encoding is custom"),
    ("alphabet without custom", {**VALID, "generator": {"random": {"alphabet": "abc"}}},
     "spec.generator.random.alphabet is only used with encoding: custom"),
    ("random too short", {**VALID, "generator": {"random": {"length": 8}}},
     "spec.generator.random.length: Invalid value: 8: spec.generator.random.length in body "
     "should be greater than or equal to 16"),
    ("unknown key algorithm", {**VALID, "generator": {"keyPair": {"algorithm": "DSA"}}},
     'spec.generator.keyPair.algorithm: Unsupported value: "DSA"'),
    ("consumer without probe", {**VALID, "consumers": [{"name": "api"}]},
     "each entry of spec.consumers needs exactly one probe: set http,"),
    ("prometheus expect not a comparison", {**VALID, "consumers": [{"name": "fleet", "prometheus": {
        "url": "http://p:9090", "query": "up", "expect": "zero"}}]},
     "spec.consumers[].prometheus.expect must be a comparison with a number"),
    ("target probe without target", {**VALID, "consumers": [{"name": "svc", "target": {}}]},
     "spec.consumers[].target asks spec.target, which is not set"),
    ("two targets", {**VALID, "target": {"webhook": {"url": "http://w"}, "postgres": {
        "host": "db", "roles": ["a", "b"], "adminSecretRef": {"name": "pg"}}}},
     "spec.target must set exactly one of postgres or webhook"),
    ("same role twice", {**VALID, "target": {"postgres": {
        "host": "db", "roles": ["a", "a"], "adminSecretRef": {"name": "pg"}}}},
     "spec.target.postgres.roles must name two different roles"),
    ("zero failure threshold", {**VALID, "verification": {"failureThreshold": 0}},
     "spec.verification.failureThreshold in body should be greater than or equal to 1"),
    ("consumer during a phase that does not exist", {**VALID, "consumers": [
        {"name": "api", "during": "Always", "http": {"url": "http://a"}}]},
     'spec.consumers[0].during: Unsupported value: "Always"'),
    ("restart unknown kind", {**VALID, "rolloutRestartTargets": [{"kind": "Pod", "name": "x"}]},
     'spec.rolloutRestartTargets[0].kind: Unsupported value: "Pod"'),
    ("consumer url scheme", {**VALID, "consumers": [{"name": "api", "http": {"url": "ftp://x"}}]},
     "spec.consumers[].http.url must start with http:// or https://"),
    ("duplicate consumers", {**VALID, "consumers": [
        {"name": "api", "http": {"url": "http://a"}}, {"name": "api", "http": {"url": "http://b"}}]},
     'spec.consumers[1]: Duplicate value: {"name":"api"}'),
    ("ca and insecure", {**VALID, "consumers": [{"name": "api", "http": {
        "url": "https://a", "caBundle": "x", "insecureSkipTLSVerify": True}}]},
     "caBundle and insecureSkipTLSVerify exclude each other"),
    ("zero successes", {**VALID, "verification": {"successesRequired": 0}},
     "spec.verification.successesRequired in body should be greater than or equal to 1"),
    ("bad strategy", {**VALID, "strategy": "ThreeKeys"},
     'spec.strategy: Unsupported value: "ThreeKeys"'),
    ("bad deletion policy", {**VALID, "deletionPolicy": "Orphan"},
     'spec.deletionPolicy: Unsupported value: "Orphan"'),
    ("missing secretName", {"generator": {"random": {}}}, "spec.secretName: Required value"),
]


@pytest.mark.parametrize(("spec", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_is_rejected(control_plane: ControlPlane, crds: None, namespace: str,
                               spec: dict[str, object], message: str) -> None:
    manifest = yaml.safe_dump({"apiVersion": "keyrotor.io/v1alpha1", "kind": "RotatingSecret",
                               "metadata": {"name": "bad"}, "spec": spec})
    result = control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=manifest,
                                   check=False)
    assert result.returncode != 0
    assert message in " ".join(result.stderr.split())


def test_valid_one_is_accepted_with_defaults(control_plane: ControlPlane, crds: None,
                                             namespace: str) -> None:
    manifest = yaml.safe_dump({"apiVersion": "keyrotor.io/v1alpha1", "kind": "RotatingSecret",
                               "metadata": {"name": "good"}, "spec": VALID})
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    got = yaml.safe_load(control_plane.kubectl("get", "rsec", "good", "-n", namespace,
                                               "-o", "yaml").stdout)
    spec = got["spec"]
    assert spec["strategy"] == "TwoKeys" and spec["deletionPolicy"] == "Retain"
    assert spec["rotation"] == {"minOverlap": "10m", "maxOverlap": "24h", "suspend": False}
    assert spec["verification"] == {"interval": "15s", "successesRequired": 3,
                                    "failureThreshold": 3}
    assert spec["generator"]["random"] == {"length": 32, "encoding": "base64url"}


def test_explain_documents_every_field(control_plane: ControlPlane, crds: None) -> None:
    out = control_plane.kubectl("explain", "rotatingsecret.spec", "--recursive").stdout
    for field in ("secretName", "deletionPolicy", "strategy", "minOverlap", "maxOverlap",
                  "schedule", "keyPair", "successesRequired", "expectStatus"):
        assert field in out
    out = control_plane.kubectl("explain", "rotatingsecret.spec.rotation.maxOverlap").stdout
    assert "keyrotor holds: it never revokes" in " ".join(out.split())
