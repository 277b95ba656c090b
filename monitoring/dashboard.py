"""The keyrotor Grafana dashboard, generated with grafana-foundation-sdk.

Run ``python -m monitoring.dashboard`` from the repository root to rewrite
``helm/keyrotor/files/keyrotor-dashboard.json`` (the Helm chart ships it as a ConfigMap for
Grafana's dashboard sidecar); ``--check`` exits 1 when the checked-in file differs.
tests/monitoring/test_dashboard.py runs the check, and tests/monitoring/test_dashboard_live.py
runs every query of the file against a real Prometheus scraping a real operator.

Template variables: ``datasource`` (any Prometheus), ``job`` (the operator's scrape job, from
``keyrotor_build_info``), ``namespace`` and ``name`` (the RotatingSecret), and ``secret`` (the
consumer library's ``secret`` label: the folder the Secret is mounted at, by convention named
after the Secret and the RotatingSecret).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, dashboard, stat, statetimeline, timeseries
from grafana_foundation_sdk.builders.common import (
    ReduceDataOptions,
    StackingConfig,
    VizLegendOptions,
    VizTooltipOptions,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

from keyrotor.engine.model import Phase

OUTPUT = Path(__file__).resolve().parent.parent / "helm" / "keyrotor" / "files" / \
    "keyrotor-dashboard.json"
UID = "keyrotor"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")

# Label selectors shared by the queries.
JOB = 'job=~"$job"'
RSEC = 'job=~"$job", namespace=~"$namespace", name=~"$name"'
CLIENT = 'secret=~"$secret"'

# Phase -> the number the phase panel shows (value mappings turn it back into the name).
PHASES = {phase.value: index for index, phase in enumerate(Phase)}
PHASE_COLORS = {"Idle": "green", "Holding": "red", "Failed": "dark-red"}


def query(expr: str, legend: str = "", ref: str = "A") -> Dataquery:
    return (Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref)
            .datasource(DATASOURCE).range())


def thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(
        [Threshold(value=value, color=color) for value, color in steps])


def value_map(mapping: dict[int, tuple[str, str]]) -> ValueMap:
    return ValueMap(options={str(value): ValueMappingResult(text=text, color=color, index=i)
                             for i, (value, (text, color)) in enumerate(mapping.items())})


def legend() -> VizLegendOptions:
    return (VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM).show_legend(True))


def tooltip() -> VizTooltipOptions:
    return VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(
        common.SortOrder.DESCENDING)


def series(title: str, description: str, unit: str, *targets: Dataquery, bars: bool = False,
           stacked: bool = False, width: int = 12, height: int = 8) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).unit(unit)
             .datasource(DATASOURCE).span(width).height(height).targets(list(targets))
             .fill_opacity(20 if stacked else 10).min(0).legend(legend()).tooltip(tooltip()))
    if bars:
        panel = panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(80)
    if stacked:
        panel = panel.stacking(StackingConfig().mode(common.StackingMode.NORMAL))
    return panel


def timeline(title: str, description: str, mapping: dict[int, tuple[str, str]],
             *targets: Dataquery, width: int = 12, height: int = 8) -> statetimeline.Panel:
    return (statetimeline.Panel().title(title).description(description)
            .datasource(DATASOURCE).span(width).height(height).targets(list(targets))
            .mappings([value_map(mapping)]).show_value(common.VisibilityMode.AUTO)
            .merge_values(True).row_height(0.9).fill_opacity(70).line_width(0)
            .legend(legend()).tooltip(tooltip()))


def bars(title: str, description: str, unit: str, target: Dataquery,
         steps: dashboard.ThresholdsConfig, *, maximum: float | None = None,
         width: int = 8) -> bargauge.Panel:
    panel = (bargauge.Panel().title(title).description(description).unit(unit)
             .datasource(DATASOURCE).span(width).height(8).with_target(target.instant())
             .thresholds(steps).display_mode(common.BarGaugeDisplayMode.GRADIENT)
             .orientation(common.VizOrientation.HORIZONTAL)
             .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    if maximum is not None:
        panel = panel.max(maximum)
    return panel


def phase_query() -> str:
    """One series per RotatingSecret whose value is its phase's number."""
    branches = " or ".join(f'(keyrotor_phase{{{RSEC}, phase="{phase}"}} == 1) * {index}'
                           for phase, index in PHASES.items())
    return f"max by (namespace, name) ({branches})"


def rotation_rows() -> list[Any]:
    age = f"time() - keyrotor_current_version_created_timestamp_seconds{{{RSEC}}}"
    # The rotation period is when the next rotation falls due, counted from the current
    # version's promotion: keyrotor computes next = created + every (or the next cron tick).
    period = (f"keyrotor_next_rotation_timestamp_seconds{{{RSEC}}} - "
              f"keyrotor_current_version_created_timestamp_seconds{{{RSEC}}}")
    return [
        dashboard.Row("Rotations"),
        series("Rotations by result",
               "Rotations finished (revocation of the old version done) per interval, by "
               "RotatingSecret and result (keyrotor_rotations_total).", "short",
               query(f"sum by (namespace, name, result) (increase(keyrotor_rotations_total"
                     f"{{{RSEC}}}[$__rate_interval]))", "{{namespace}}/{{name}} {{result}}"),
               bars=True, stacked=True),
        series("Current version age against its rotation period",
               "Solid: how old the current version is (time() - "
               "keyrotor_current_version_created_timestamp_seconds). Dashed: its policy, the "
               "age at which the next rotation falls due (next rotation time - creation "
               "time, i.e. rotation.every or the next schedule tick). A solid line above its "
               "dashed line is an overdue rotation.", "s",
               query(age, "{{namespace}}/{{name}} age"),
               query(period, "{{namespace}}/{{name}} policy", "B"))
        .override_by_regexp(".* policy$", [DynamicConfigValue(
            id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})]),
        bars("Age as a share of the rotation period",
             "Current version age divided by its rotation period: 100% means the next "
             "rotation is due now; far above 100% means it is overdue (see the "
             "KeyrotorRotationOverdue alert).", "percentunit",
             query(f"({age}) / ({period})", "{{namespace}}/{{name}}"),
             thresholds((None, "green"), (0.9, "yellow"), (1.1, "red")), maximum=1.5),
        bars("Time to the next rotation",
             "keyrotor_next_rotation_timestamp_seconds - time(). Negative while a rotation "
             "is under way (it started when this reached zero) or overdue.", "s",
             query(f"keyrotor_next_rotation_timestamp_seconds{{{RSEC}}} - time()",
                   "{{namespace}}/{{name}}"),
             thresholds((None, "red"), (0, "green"))),
        bars("Mean rotation duration",
             "Mean time from the start of a rotation to the revocation of the old version "
             "over the dashboard's time range (keyrotor_rotation_duration_seconds).", "s",
             query(f"sum by (namespace, name) (increase(keyrotor_rotation_duration_seconds_sum"
                   f"{{{RSEC}}}[$__range])) / sum by (namespace, name) (increase("
                   f"keyrotor_rotation_duration_seconds_count{{{RSEC}}}[$__range]))",
                   "{{namespace}}/{{name}}"),
             thresholds((None, "green"))),
    ]


def phase_rows() -> list[Any]:
    phases = {index: (phase, PHASE_COLORS.get(phase, "blue")) for phase, index in
              PHASES.items()}
    flags = {0: ("no", "green"), 1: ("yes", "red")}
    return [
        dashboard.Row("Phases, overlap, Holding and Degraded"),
        timeline("Phase of each RotatingSecret",
                 "The phase (status.phase) each RotatingSecret was in, from keyrotor_phase. "
                 "Holding: consumers still fail past maxOverlap and nothing is revoked.",
                 phases, query(phase_query(), "{{namespace}}/{{name}}"), width=24),
        timeline("Overlap (two versions valid)",
                 "keyrotor_overlap_active: 1 while next or previous holds a version, i.e. "
                 "while a rotation is between staging and revocation.",
                 {0: ("one version", "green"), 1: ("overlap", "blue")},
                 query(f"keyrotor_overlap_active{{{RSEC}}}", "{{namespace}}/{{name}}")),
        bars("Time spent in overlap",
             "Share of the dashboard's time range each RotatingSecret spent with two valid "
             "versions (avg_over_time of keyrotor_overlap_active).", "percentunit",
             query(f"avg_over_time(keyrotor_overlap_active{{{RSEC}}}[$__range])",
                   "{{namespace}}/{{name}}"),
             thresholds((None, "green"), (0.5, "yellow"), (0.9, "red")), maximum=1, width=12),
        timeline("Holding and Degraded",
                 "keyrotor_rotation_holding (a rotation holds past maxOverlap with failing "
                 "consumers: nothing is revoked) and keyrotor_degraded (the Degraded "
                 "condition: reconcile errors, backend unavailable, missing permissions).",
                 flags,
                 query(f"keyrotor_rotation_holding{{{RSEC}}}", "{{namespace}}/{{name}} holding"),
                 query(f"keyrotor_degraded{{{RSEC}}}", "{{namespace}}/{{name}} degraded", "B"),
                 width=24),
    ]


def consumer_rows() -> list[Any]:
    presented = f"keyrotor_client_presentations_total{{{CLIENT}}}"
    on_previous = f'keyrotor_client_presentations_total{{{CLIENT}, slot="previous"}}'
    return [
        dashboard.Row("Consumers"),
        series("Consumer probe failures",
               "Failed probes of each consumer per second (keyrotor_consumer_probe_"
               "failures_total). Failures during verification are expected for a moment; "
               "lasting ones hold the rotation (and end in Holding past maxOverlap).", "ops",
               query(f"sum by (namespace, name, consumer) (rate("
                     f"keyrotor_consumer_probe_failures_total{{{RSEC}}}[$__rate_interval]))",
                     "{{namespace}}/{{name}} {{consumer}}")),
        series("Consumer probes by result",
               "Probes per second by consumer and result (keyrotor_consumer_probes_total).",
               "ops",
               query(f"sum by (namespace, name, consumer, result) (rate("
                     f"keyrotor_consumer_probes_total{{{RSEC}}}[$__rate_interval]))",
                     "{{namespace}}/{{name}} {{consumer}} {{result}}"), stacked=True),
        series("Presentations by slot (consumer library)",
               "Credentials presented by services using keyrotor.client, per second, by the "
               "slot they came from and the target's answer "
               "(keyrotor_client_presentations_total; call_with_fallback and sign_jwt count "
               "them). Presentations from previous mean presenters fell back.", "ops",
               query(f"sum by (secret, slot, result) (rate({presented}[$__rate_interval]))",
                     "{{secret}} {{slot}} {{result}}"), stacked=True),
        series("Share of presentations from previous",
               "Presentations from the previous slot over all presentations. A rising share "
               "means presenters lag: their target no longer takes current, or their mount "
               "has not caught up (alert KeyrotorPresentersOnPrevious).", "percentunit",
               query(f"(sum by (secret) (rate({on_previous}[$__rate_interval])) or "
                     f"sum by (secret) (rate({presented}[$__rate_interval])) * 0) / "
                     f"sum by (secret) (rate({presented}[$__rate_interval]))", "{{secret}}")),
        series("Verifications by slot (consumer library)",
               "Credentials checked by acceptors using keyrotor.client, per second, by the "
               "slot that matched (none: rejected) "
               "(keyrotor_client_verifications_total).", "ops",
               query(f"sum by (secret, slot) (rate(keyrotor_client_verifications_total"
                     f"{{{CLIENT}}}[$__rate_interval]))", "{{secret}} {{slot}}"),
               stacked=True),
        series("Versions held by consumers",
               "The version each slot of each consumer's mounted Secret holds "
               "(keyrotor_client_secret_version), beside the operator's current version "
               "(keyrotor_current_version). A consumer whose current stays below the "
               "operator's has a stale mount (subPath mounts never update).", "none",
               query(f"max by (secret, slot) (keyrotor_client_secret_version{{{CLIENT}}})",
                     "{{secret}} {{slot}}"),
               query(f"max by (namespace, name) (keyrotor_current_version{{{RSEC}}})",
                     "{{namespace}}/{{name}} operator current", "B")),
    ]


def backend_rows() -> list[Any]:
    duration = (f"sum by (le, backend, operation) (rate("
                f"keyrotor_backend_request_duration_seconds_bucket{{{JOB}}}[$__rate_interval]))")
    return [
        dashboard.Row("Key backends (Vault, HSM)"),
        series("Backend requests and errors",
               "Requests to key backends per second and the failed ones "
               "(keyrotor_backend_requests_total, keyrotor_backend_errors_total), by backend "
               "and operation.", "reqps",
               query(f"sum by (backend, operation) (rate(keyrotor_backend_requests_total"
                     f"{{{JOB}}}[$__rate_interval]))", "{{backend}} {{operation}}"),
               query(f"sum by (backend, operation) (rate(keyrotor_backend_errors_total"
                     f"{{{JOB}}}[$__rate_interval]))", "{{backend}} {{operation}} errors",
                     "B"))
        .override_by_regexp(".* errors$", [DynamicConfigValue(
            id_val="color", value={"mode": "fixed", "fixedColor": "red"})]),
        series("Backend latency",
               "Median and 95th percentile duration of backend requests "
               "(keyrotor_backend_request_duration_seconds), by backend and operation.", "s",
               query(f"histogram_quantile(0.5, {duration})", "{{backend}} {{operation}} p50"),
               query(f"histogram_quantile(0.95, {duration})", "{{backend}} {{operation}} p95",
                     "B")),
    ]


def operator_rows() -> list[Any]:
    return [
        dashboard.Row("Operator"),
        series("Reconcile errors",
               "Failed reconciles per second by reason (keyrotor_reconcile_errors_total); "
               "each also sets Degraded and posts a Warning event.", "ops",
               query(f"sum by (namespace, name, reason) (rate(keyrotor_reconcile_errors_total"
                     f"{{{RSEC}}}[$__rate_interval]))", "{{namespace}}/{{name}} {{reason}}"),
               width=8),
        timeline("Leader",
                 "keyrotor_leader per operator process: 1 while it holds the leader Lease "
                 "(or runs without --leader-elect), 0 on standby. Exactly one should lead.",
                 {0: ("standby", "blue"), 1: ("leader", "green")},
                 query(f"keyrotor_leader{{{JOB}}}", "{{instance}}"), width=8),
        series("Leadership changes",
               "Lease acquisitions per interval (keyrotor_leader_changes_total), by process. "
               "More than one now and then means leaders crash or cannot renew.", "short",
               query(f"sum by (instance) (increase(keyrotor_leader_changes_total{{{JOB}}}"
                     f"[$__rate_interval]))", "{{instance}}"), bars=True, width=8),
        stat.Panel().title("Operator processes up")
        .description("Scrape targets of the operator's job that answer (up). 0, or no value, "
                     "means no operator is being scraped (alert KeyrotorOperatorAbsent).")
        .unit("none").datasource(DATASOURCE).span(8).height(6)
        .with_target(query(f"sum(up{{{JOB}}})", "up").instant())
        .thresholds(thresholds((None, "red"), (1, "green")))
        .graph_mode(common.BigValueGraphMode.AREA)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"])),
        stat.Panel().title("Leaders")
        .description("Operator processes that lead now: should be exactly 1.")
        .unit("none").datasource(DATASOURCE).span(8).height(6)
        .with_target(query(f"sum(keyrotor_leader{{{JOB}}})", "leaders").instant())
        .thresholds(thresholds((None, "red"), (1, "green"), (2, "red")))
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"])),
        stat.Panel().title("keyrotor version")
        .description("keyrotor_build_info of each operator process.")
        .datasource(DATASOURCE).span(8).height(6)
        .with_target(query(f"count by (version) (keyrotor_build_info{{{JOB}}})",
                           "{{version}}").instant())
        .text_mode(common.BigValueTextMode.NAME)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"])),
    ]


def variable(name: str, label: str, expr: str, description: str, *,
             all_value: str | None = ".*") -> dashboard.QueryVariable:
    """A multi-value variable from ``label_values``. "All" is ``.*`` (one short regex however
    many RotatingSecrets there are) unless ``all_value`` is None: then Grafana joins the
    variable's own values, which keeps ``up{job=~"$job"}`` to the operator's jobs."""
    built = (dashboard.QueryVariable(name).label(label).description(description)
             .datasource(DATASOURCE).query({"query": expr, "refId": name})
             .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
             .multi(True).include_all(True)
             .current(VariableOption(selected=True, text="All", value="$__all")))
    return built.all_value(all_value) if all_value is not None else built


def build() -> dashboard.Dashboard:
    board = (dashboard.Dashboard("keyrotor").uid(UID)
             .description("Secret rotations by keyrotor: schedule, phases, overlap, consumers, "
                          "key backends and operator health. Generated by "
                          "monitoring/dashboard.py; do not edit by hand.")
             .tags(["keyrotor", "secrets", "generated"]).editable().refresh("30s")
             .time("now-6h", "now").timezone("browser")
             .tooltip(DashboardCursorSync.CROSSHAIR)
             .with_variable(dashboard.DatasourceVariable("datasource").label("Data source")
                            .type("prometheus").description("The Prometheus scraping keyrotor"))
             .with_variable(variable("job", "Operator job",
                                     "label_values(keyrotor_build_info, job)",
                                     "The scrape job of the keyrotor operator",
                                     all_value=None))
             .with_variable(variable("namespace", "Namespace",
                                     'label_values(keyrotor_phase{job=~"$job"}, namespace)',
                                     "Namespace of the RotatingSecrets"))
             .with_variable(variable("name", "RotatingSecret",
                                     'label_values(keyrotor_phase{job=~"$job", '
                                     'namespace=~"$namespace"}, name)',
                                     "Name of the RotatingSecret"))
             .with_variable(variable("secret", "Mounted secret (consumers)",
                                     "label_values(keyrotor_client_secret_version, secret)",
                                     "The consumer library's secret label: the folder the "
                                     "Secret is mounted at")))
    for row in (rotation_rows(), phase_rows(), consumer_rows(), backend_rows(),
                operator_rows()):
        for item in row:
            board = board.with_row(item) if isinstance(item, dashboard.Row) else \
                board.with_panel(item)
    return board


def render() -> str:
    model = build().build()
    return JSONEncoder(sort_keys=True, indent=2).encode(model) + "\n"


def panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel of a dashboard JSON document (rows are not panels)."""
    return [p for p in doc["panels"] if p.get("type") != "row"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the checked-in JSON differs from the generated one")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.output.exists() or args.output.read_text() != text:
            print(f"{args.output} is stale: run python -m monitoring.dashboard",
                  file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}: {len(panels(json.loads(text)))} panels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
