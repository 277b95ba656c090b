"""keyrotor's Prometheus alert rules, generated into a rules file (``groups:`` format).

Run ``python -m monitoring.alerts`` from the repository root to rewrite
``helm/keyrotor/files/keyrotor-alerts.yaml`` (the Helm chart wraps its groups into a
PrometheusRule); ``--check`` exits 1 when the checked-in file differs. promtool checks and
unit-tests the file (tests/monitoring/alerts_test.yaml), and tests/monitoring/
test_dashboard_live.py evaluates every rule against a real Prometheus scraping a real operator.

Each rule carries ``signals``: the queries behind its condition (the expression without its
final comparison, or each side of it). An alert is silent when all is well, so the live test
checks that each signal returns series, i.e. that the rule reads metrics that exist under the
names and labels it uses.

Joining consumer-library metrics (``keyrotor_client_*``, label ``secret``: the folder the Secret
is mounted at) with operator metrics (labels ``namespace``, ``name``) assumes the mount folder
is named after the RotatingSecret, e.g. ``/etc/secrets/payments-api-key``. Operator metrics
are not filtered by scrape job, except ``up`` in KeyrotorOperatorAbsent when
``--operator-job`` is given (by default it finds the operator by ``keyrotor_build_info``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

OUTPUT = Path(__file__).resolve().parent.parent / "helm" / "keyrotor" / "files" / \
    "keyrotor-alerts.yaml"
RSEC = "{{ $labels.namespace }}/{{ $labels.name }}"


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    duration: str  # the rule's ``for:``
    severity: str
    summary: str
    description: str
    runbook: str
    signals: tuple[str, ...] = field(default=())

    def rule(self) -> dict[str, Any]:
        return {"alert": self.name, "expr": self.expr, "for": self.duration,
                "labels": {"severity": self.severity},
                "annotations": {"summary": self.summary, "description": self.description,
                                "runbook": self.runbook}}


# ---- building blocks -------------------------------------------------------------------------

NEXT = "keyrotor_next_rotation_timestamp_seconds"
CREATED = "keyrotor_current_version_created_timestamp_seconds"
OVERDUE = f"time() - {NEXT}"
PERIOD = f"{NEXT} - {CREATED}"

PROBE_FAILURE_RATE = ('sum by (namespace, name, consumer) '
                      '(rate(keyrotor_consumer_probes_total{result="failure"}[10m]))')
PROBE_RATE = "sum by (namespace, name, consumer) (rate(keyrotor_consumer_probes_total[10m]))"

BACKEND_ERROR_RATE = "sum by (backend, operation) (rate(keyrotor_backend_errors_total[5m]))"
BACKEND_RATE = "sum by (backend, operation) (rate(keyrotor_backend_requests_total[5m]))"

# The operator's current version per RotatingSecret, labelled ``secret`` like the client's
# metrics (several operator processes, i.e. a standby with an old value: the highest wins).
OPERATOR_CURRENT = ('max by (secret) (label_replace(keyrotor_current_version, '
                     '"secret", "$1", "name", "(.*)"))')
MOUNT_BEHIND = ('max by (job, instance, secret) (keyrotor_client_secret_version{slot="current"})'
                f"\n  - on (secret) group_left\n{OPERATOR_CURRENT}")
PRESENTED = "keyrotor_client_presentations_total"
PREVIOUS_SHARE = (
    f'(sum by (job, instance, secret) (rate({PRESENTED}{{slot="previous", result!="rejected"}}'
    f"[10m]))\n  or sum by (job, instance, secret) (rate({PRESENTED}[10m])) * 0)\n"
    f"/ sum by (job, instance, secret) (rate({PRESENTED}[10m]))")

# The versions a consumer may still hold, per RotatingSecret, as a ``version`` label (PromQL
# compares label values only as strings, so count_values turns each number into a label):
# current always; during an overlap also current - 1 (previous) and current + 1 (next).
_CURRENT = "max by (name) (keyrotor_current_version)"
_OVERLAP = "(max by (name) (keyrotor_overlap_active) == 1)"
VALID_VERSIONS = (
    'label_replace(\n'
    f'    count_values by (name) ("version", {_CURRENT})\n'
    f'  or count_values by (name) ("version", ({_CURRENT} - 1) and on (name) {_OVERLAP})\n'
    f'  or count_values by (name) ("version", ({_CURRENT} + 1) and on (name) {_OVERLAP}),\n'
    '  "secret", "$1", "name", "(.*)")')
USED_PRESENTED = (f'sum by (job, instance, secret, version) (rate({PRESENTED}'
                  '{version!="", result!="rejected"}[2m]))')
USED_VERIFIED = ('sum by (job, instance, secret, version) (rate('
                 'keyrotor_client_verifications_total{version!="", slot!="none"}[2m]))')


# Decoys and rate limiting, from the consumer library (issue 11): they need no operator.
DECOYS = ("sum by (job, instance, secret) "
          "(increase(keyrotor_client_decoy_presentations_total[10m]))")
FAILURE_RATE = ("sum by (job, instance, secret) "
                "(rate(keyrotor_client_verification_failures_total[5m]))")
LIMITED_RATE = "sum by (job, instance, secret) (rate(keyrotor_client_rate_limited_total[5m]))"
FAILURES_PER_SECOND = 1  # 300 failed verifications in 5 minutes at one consumer
LIMITED_PER_SECOND = 0.2  # 60 refusals of blocked identities in 5 minutes

# Secrets the operator knows (a consumer of some other secret is none of these rules' business).
KNOWN_SECRETS = ('label_replace(max by (name) (keyrotor_current_version), '
                 '"secret", "$1", "name", "(.*)")')


def _revoked(used: str) -> str:
    return (f"(\n  ({used} > 0)\n  unless on (secret, version)\n{_indent(VALID_VERSIONS)}\n)\n"
            f"and on (secret) {KNOWN_SECRETS}")


def _indent(text: str, by: str = "  ") -> str:
    return "\n".join(by + line for line in text.splitlines())


def _operator_up(job: str) -> str:
    selector = f'{{job=~"{job}"}}' if job else ""
    return f"up{selector} == 1 and on (job, instance) keyrotor_build_info"


def alerts(operator_job: str = "") -> list[Alert]:
    return [
        Alert(
            "KeyrotorRotationOverdue",
            f"{OVERDUE}\n  > clamp_min(0.1 * ({PERIOD}), 900)",
            "15m", "warning",
            f"Rotation of {RSEC} is overdue",
            f"The current version of {RSEC} is past its rotation period by "
            "{{ $value | humanizeDuration }} (more than 10% of the period and at least "
            "15 minutes): its next rotation has not promoted a new version.",
            "A rotation that falls due starts at once, so one this late is stuck before "
            "promotion, or the RotatingSecret is suspended (spec.rotation.suspend). Check "
            "`kubectl get rsec -n NS NAME` (phase, Ready and Degraded conditions) and its "
            "events (`kubectl describe rsec`). Generating/Activating: look at "
            "KeyrotorBackendErrors and the target. VerifyingAcceptance: an acceptor does not "
            "accept the new version (see the consumers in status). Degraded: fix the reason "
            "it names. If the operator is down, see KeyrotorOperatorAbsent.",
            (OVERDUE, PERIOD)),
        Alert(
            "KeyrotorStuckInOverlap",
            "keyrotor_overlap_active == 1", "24h", "warning",
            f"{RSEC} has had two valid versions for a day",
            f"{RSEC} has been in an overlap (next or previous set) for more than 24 hours: the "
            "old version stays valid and the rotation does not finish.",
            "An overlap ends when retirement is verified and minOverlap has passed. Look at "
            "status.phase and status.consumers: consumers that are pending (a rollout that "
            "does not finish) or a Prometheus consumer query that never reaches its "
            "expectation keep the old version alive. Fix the consumer, or if the old version "
            "must die now, follow the documented emergency revocation.",
            ("keyrotor_overlap_active",)),
        Alert(
            "KeyrotorHolding",
            "keyrotor_rotation_holding == 1", "5m", "critical",
            f"Rotation of {RSEC} is Holding",
            f"{RSEC} holds its rotation past maxOverlap because consumers still fail: nothing "
            "is revoked until they pass.",
            "Holding protects the consumers: keyrotor refuses to revoke a version somebody "
            "still needs. `kubectl describe rsec -n NS NAME` names the failing consumers and "
            "their last message (also the Holding Warning event). Fix those consumers (stale "
            "mounts, a subPath mount that never updates, an app that caches the key, an "
            "acceptor that lost the new version); the rotation continues by itself once "
            "they pass.",
            ("keyrotor_rotation_holding",)),
        Alert(
            "KeyrotorConsumersFailing",
            f"{PROBE_FAILURE_RATE}\n  / {PROBE_RATE}\n  > 0.5", "15m", "warning",
            "Consumer {{ $labels.consumer }} of " + RSEC + " keeps failing its probes",
            "More than half of the probes of consumer {{ $labels.consumer }} of " + RSEC +
            " failed over the last 10 minutes ({{ $value | humanizePercentage }}).",
            "keyrotor probes each consumer with the version under test. Read the consumer's "
            "message in `kubectl get rsec -n NS NAME -o jsonpath='{.status.consumers}'` and "
            "the ConsumerFailing events. An HTTP consumer answering 401/403 does not have the "
            "new version yet (mount delay, cache); a Prometheus consumer shows the query "
            "value it got. Until the probes pass the rotation waits, and past maxOverlap it "
            "holds (KeyrotorHolding).",
            (PROBE_FAILURE_RATE, PROBE_RATE)),
        Alert(
            "KeyrotorBackendErrors",
            f"{BACKEND_ERROR_RATE}\n  / {BACKEND_RATE}\n  > 0.2", "10m", "warning",
            "keyrotor's {{ $labels.backend }} backend fails {{ $labels.operation }}",
            "{{ $value | humanizePercentage }} of the {{ $labels.operation }} requests to the "
            "{{ $labels.backend }} backend failed over the last 5 minutes.",
            "keyrotor retries with backoff and revokes nothing meanwhile, but no new version "
            "can be generated. Check the backend itself (Vault sealed or unreachable, token or "
            "Kubernetes auth role expired, HSM token missing or PIN wrong); the Degraded "
            "condition and Warning events of the affected RotatingSecrets carry the error "
            "message. The dashboard's backend panels show which operation fails and its "
            "latency.",
            (BACKEND_ERROR_RATE, BACKEND_RATE)),
        Alert(
            "KeyrotorDegraded",
            # Holding also sets Degraded: KeyrotorHolding (critical) says it more precisely.
            "keyrotor_degraded == 1\nunless on (namespace, name) keyrotor_rotation_holding == 1",
            "10m", "warning",
            f"{RSEC} is Degraded",
            f"The Degraded condition of {RSEC} has been True for 10 minutes (not counting "
            "Holding, which has its own alert).",
            "`kubectl get rsec -n NS NAME -o yaml`: the Degraded condition's reason and "
            "message say what is wrong (BackendUnavailable, PermissionDenied with the verb "
            "and resource the operator lacks, an invalid spec, Holding). keyrotor keeps "
            "retrying with backoff and never revokes while Degraded; fix the cause and the "
            "condition clears at the next reconcile.",
            ("keyrotor_degraded", "keyrotor_rotation_holding")),
        Alert(
            "KeyrotorOperatorAbsent",
            f"absent({_operator_up(operator_job)})", "5m", "critical",
            "No keyrotor operator is running",
            "Prometheus has not scraped a running keyrotor operator for 5 minutes: nothing "
            "rotates, verifies or revokes.",
            "Check the operator's Deployment and pods (`kubectl -n keyrotor-system get "
            "deploy,pods -l app.kubernetes.io/name=keyrotor`, `kubectl logs`). If the pods "
            "run, check that Prometheus scrapes them: the ServiceMonitor (Helm value "
            "monitoring.serviceMonitor.enabled) and the metrics Service. The expression "
            "finds the operator by keyrotor_build_info, whatever its job label.",
            (_operator_up(operator_job),)),
        Alert(
            "KeyrotorNoLeader",
            "max by (job) (keyrotor_leader) < 1", "5m", "critical",
            "No keyrotor operator process holds the leader Lease",
            "Every keyrotor operator process of job {{ $labels.job }} is on standby: none "
            "holds the leader Lease, so nothing rotates.",
            "Look at the operator logs for leader election messages and at the Lease "
            "(`kubectl -n keyrotor-system get lease keyrotor -o yaml`): a holder that does "
            "not renew, or operators denied get/update on leases (RBAC).",
            ("max by (job) (keyrotor_leader)",)),
        Alert(
            "KeyrotorPresentersOnPrevious",
            f"(\n{_indent(MOUNT_BEHIND)}\n  < 0\n)\nor\n(\n{_indent(PREVIOUS_SHARE)}\n  > 0.5\n)",
            "30m", "warning",
            "Consumers of {{ $labels.secret }} are still on the previous version",
            "{{ $labels.instance }} (job {{ $labels.job }}) still uses the previous version "
            "of {{ $labels.secret }} 30 minutes after promotion: its mounted Secret's current "
            "is behind the operator's, or most of its presentations fall back to previous.",
            "The Secret was promoted but this consumer did not follow. Mounted Secrets "
            "update within a minute or two unless mounted with subPath (never updated: "
            "mount the whole Secret) or copied into environment variables (restart needed: "
            "add the workload to rolloutRestartTargets). An app that reads the key once at "
            "start must use keyrotor.client or reload. Until it follows, retirement cannot "
            "be verified and the rotation will hold.",
            (MOUNT_BEHIND, PREVIOUS_SHARE)),
        Alert(
            "KeyrotorRevokedVersionPresented",
            f"{_revoked(USED_PRESENTED)}\nor\n{_revoked(USED_VERIFIED)}", "5m", "critical",
            "Revoked version {{ $labels.version }} of {{ $labels.secret }} is still in use",
            "{{ $labels.instance }} (job {{ $labels.job }}) still presents or accepts "
            "version {{ $labels.version }} of {{ $labels.secret }}, which is no longer in the "
            "Secret (current, next during an overlap, previous during an overlap).",
            "A revoked version in use means a consumer keeps a copy outside the Secret (env "
            "variable, cache, a stale subPath mount) or an acceptor still accepts a key that "
            "should be dead. For a presenter: requests with it fail or will fail; restart "
            "it and fix how it reads the key. For an acceptor: it accepts a revoked "
            "credential, which is a security problem if the key was revoked because it "
            "leaked; restart it at once.",
            (VALID_VERSIONS, USED_PRESENTED, USED_VERIFIED)),
        Alert(
            "KeyrotorDecoyPresented",
            f"{DECOYS} > 0", "0m", "critical",
            "A decoy of {{ $labels.secret }} was presented: the Secret has leaked",
            "{{ $labels.instance }} (job {{ $labels.job }}) was presented a decoy of "
            "{{ $labels.secret }} in the last 10 minutes. Decoys are published in the Secret "
            "only and no legitimate client holds one: whoever presented it read the Secret.",
            "Treat the Secret as leaked. Find who presented it: the Warning event "
            "DecoyPresented on the RotatingSecret (`kubectl describe rsec -n NS NAME`) and "
            "the audit trail (action decoy.presented) name the identity the acceptor saw; "
            "so does the acceptor's log. Revoke at once with `keyrotor revoke-now NAME -n "
            "NS` (approved with TOTP), which also replaces the decoys, then find how the "
            "Secret was read (RBAC on secrets, node or backup access).",
            (DECOYS,)),
        Alert(
            "KeyrotorVerificationFailuresSpike",
            f"{FAILURE_RATE} > {FAILURES_PER_SECOND}\nor\n{LIMITED_RATE} > {LIMITED_PER_SECOND}",
            "2m", "warning",
            "Many failed verifications of {{ $labels.secret }} at {{ $labels.instance }}",
            "{{ $labels.instance }} (job {{ $labels.job }}) refuses presented values of "
            "{{ $labels.secret }} at a high rate (over "
            f"{FAILURES_PER_SECOND} failed verification a second, or over "
            f"{LIMITED_PER_SECOND} refusals of rate-limited identities a second, over 5 "
            "minutes): someone is guessing, or clients hold a revoked key.",
            "If keyrotor_client_rate_limited_total rises, identities are being blocked after "
            "repeated failures: look at the acceptor's logs for the identities (IPs, users, "
            "API keys) and block them upstream. If only failures rise and no identity is "
            "blocked, the callers are spread out (many IPs) or pass no identity to verify(). "
            "Right after a rotation, failures from a consumer still on a revoked version "
            "show up as KeyrotorRevokedVersionPresented too.",
            (FAILURE_RATE, LIMITED_RATE)),
    ]


class _Dumper(yaml.SafeDumper):
    pass


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def render(operator_job: str = "") -> str:
    doc = {"groups": [{"name": "keyrotor", "rules": [a.rule() for a in alerts(operator_job)]}]}
    header = ("# Generated by monitoring/alerts.py (python -m monitoring.alerts); do not edit.\n"
              "# Checked by promtool (tests/monitoring/alerts_test.yaml) and against a real\n"
              "# Prometheus (tests/monitoring/test_dashboard_live.py).\n")
    return header + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100,
                              allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the checked-in file differs from the generated one")
    parser.add_argument("--operator-job", default="", metavar="REGEX",
                        help="also match the operator's up series by this job regex")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render(args.operator_job)
    if args.check:
        if not args.output.exists() or args.output.read_text() != text:
            print(f"{args.output} is stale: run python -m monitoring.alerts", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}: {len(alerts(args.operator_job))} alerts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
