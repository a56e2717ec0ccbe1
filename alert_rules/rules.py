"""The isolator's Prometheus rules as data: recording rules first, then one alert per fault.

Every alert carries a ``severity`` label (critical pages, warning goes to a queue), ``summary``
and ``description`` annotations, and a ``runbook_url`` pointing at its section of
docs/runbooks.md. Alertmanager routes every alert to the isolator's webhook too, where those
with a ``node`` label become evidence for that node.

Recording rules follow Prometheus's ``level:metric:operations`` convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from isolator.lab.monitoring import AGENT_JOB, ISOLATOR_JOB

RUNBOOK_PAGE = "docs/runbooks.md"
RULES_FILE_NAME = "isolator.rules.yml"

# Held-cut checks that mean a safety budget ran out. The engine labels isolator_action_held_total
# with the text of a hold reason before its first colon.
BUDGET_CHECKS = (
    "region budget exceeded",
    "region cooldown",
    "rate limit",
    "min ready endpoints",
    "ready endpoints unknown",
)

# IsolatorHeartbeatIngestLagging fires when the isolator accepts a smaller share than this of
# the heartbeats that the agents report sending.
INGEST_MIN_ACCEPTED_RATIO = 0.8
# IsolatorPrometheusQueriesFailing fires when a larger share than this of the queries fails.
QUERY_ERROR_RATIO = 0.25

HEARTBEAT_RECEIVED_RATE = "job:isolator_heartbeat_received:rate2m"
AGENT_HEARTBEATS_RATE = "job:isolator_agent_heartbeats:rate2m"
QUERY_ERROR_RATIO_RATE = "job:isolator_prometheus_query_errors_per_queries:ratio_rate5m"
QUERY_DURATION_BUCKET_RATE = "job_le:isolator_prometheus_query_duration_seconds_bucket:rate5m"
LOOP_DURATION_BUCKET_RATE = "job_le:isolator_loop_duration_seconds_bucket:rate5m"


@dataclass(frozen=True)
class Alert:
    """One alerting rule with the text an on-call engineer reads."""

    name: str
    expr: str
    severity: str  # critical or warning
    summary: str
    description: str
    for_: str = "0s"
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def anchor(self) -> str:
        """The runbook section's anchor: GitHub lowercases a heading made of one word."""
        return self.name.lower()

    def to_rule(self) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": self.name, "expr": self.expr}
        if self.for_ != "0s":
            rule["for"] = self.for_
        rule["labels"] = {"severity": self.severity, **self.labels}
        rule["annotations"] = {
            "summary": self.summary,
            "description": self.description,
            "runbook_url": f"{RUNBOOK_PAGE}#{self.anchor}",
        }
        return rule


RECORDING_RULES: list[dict[str, str]] = [
    {
        "record": HEARTBEAT_RECEIVED_RATE,
        "expr": "sum by (job) (rate(isolator_heartbeat_received_total[2m]))",
    },
    {
        "record": AGENT_HEARTBEATS_RATE,
        "expr": f'sum by (job) (rate(isolator_agent_heartbeats_total{{job="{AGENT_JOB}"}}[2m]))',
    },
    {
        "record": QUERY_ERROR_RATIO_RATE,
        "expr": (
            'sum by (job) (rate(isolator_prometheus_queries_total{result="error"}[5m]))\n'
            "/\n"
            "sum by (job) (rate(isolator_prometheus_queries_total[5m]))"
        ),
    },
    {
        "record": QUERY_DURATION_BUCKET_RATE,
        "expr": "sum by (job, le) (rate(isolator_prometheus_query_duration_seconds_bucket[5m]))",
    },
    {
        "record": LOOP_DURATION_BUCKET_RATE,
        "expr": "sum by (job, le) (rate(isolator_loop_duration_seconds_bucket[5m]))",
    },
]

_BUDGET_MATCHER = "|".join(BUDGET_CHECKS)

ALERTS: list[Alert] = [
    Alert(
        name="IsolatorNodeIsolated",
        expr="max by (region, node, reason, state) (isolator_isolation_info) == 1",
        severity="warning",
        summary="Node {{ $labels.node }} in region {{ $labels.region }} is isolated",
        description=(
            "The isolator cut the Pod traffic of {{ $labels.node }} because: "
            "{{ $labels.reason }}. The cut is {{ $labels.state }}. It is restored "
            "automatically once the node stays healthy for the restore hold time."
        ),
    ),
    Alert(
        name="IsolatorRegionPartitioned",
        expr='max by (region) (isolator_region_verdict_info{verdict="partitioned"}) == 1',
        for_="30s",
        severity="critical",
        summary="Region {{ $labels.region }} is cut off from the cloud",
        description=(
            "Most nodes of {{ $labels.region }} are silent to the cloud without being "
            "confirmed dead from inside the site. The isolator cuts nothing there; the site "
            "may still serve its local users."
        ),
    ),
    Alert(
        name="IsolatorMonitoringPathDegraded",
        expr='max by (region) (isolator_region_verdict_info{verdict="monitoring_degraded"}) == 1',
        for_="2m",
        severity="warning",
        summary="The monitoring path of region {{ $labels.region }} is degraded",
        description=(
            "The central Prometheus cannot federate the edge Prometheus of "
            "{{ $labels.region }} while its heartbeats arrive. Without the in-site view the "
            "isolator cannot confirm a node dead, so it cuts nothing in this region."
        ),
    ),
    Alert(
        name="IsolatorFailSafeEngaged",
        expr="max by (job) (isolator_fail_safe_engaged) == 1",
        severity="critical",
        summary="The isolator's fail-safe holds every automatic change",
        description=(
            "Too many regions went dark at once, which points at a central fault. The "
            "isolator makes no automatic change until the regions come back."
        ),
    ),
    Alert(
        name="IsolatorSafetyBudgetExhausted",
        expr=(
            "sum by (job, check) "
            f'(increase(isolator_action_held_total{{check=~"{_BUDGET_MATCHER}"}}[5m])) > 0'
        ),
        severity="warning",
        summary="The isolator holds cuts: {{ $labels.check }}",
        description=(
            "Nodes were judged failed but a safety check holds their cuts "
            "({{ $labels.check }}); {{ $value | humanize }} held decisions in 5 minutes. "
            "Their endpoints still receive traffic until a person decides."
        ),
    ),
    Alert(
        name="IsolatorIsolationFailed",
        expr=(
            "sum by (job, kind, result) "
            '(increase(isolator_action_total{result=~"error|unverified"}[10m])) > 0'
        ),
        severity="critical",
        summary="An isolator {{ $labels.kind }} ended {{ $labels.result }}",
        description=(
            "{{ $value | humanize }} {{ $labels.kind }} actions in 10 minutes ended "
            "{{ $labels.result }}: either the Kubernetes API rejected the change or reading "
            "it back did not show it, for example because an admission webhook undid it."
        ),
    ),
    Alert(
        name="IsolatorDown",
        expr=f'up{{job="{ISOLATOR_JOB}"}} == 0 or absent(up{{job="{ISOLATOR_JOB}"}})',
        for_="1m",
        severity="critical",
        summary="The isolator is down or not scraped",
        description=(
            "Prometheus cannot scrape the isolator ({{ $labels.instance }}), or has no "
            "isolator target at all. Nothing cuts failed edge nodes until it is back; "
            "upstream Kubernetes drops their endpoints only after about a minute."
        ),
    ),
    Alert(
        name="IsolatorHeartbeatIngestStopped",
        expr=(
            f"sum by (job) ({HEARTBEAT_RECEIVED_RATE}) == 0\n"
            "and on (job)\n"
            "sum by (job) (isolator_node_verdict_nodes) > 0"
        ),
        for_="1m",
        severity="critical",
        summary="The isolator accepts no heartbeats",
        description=(
            "The isolator tracks edge nodes but accepted no heartbeat in 2 minutes. Every "
            "node then looks silent; check the isolator's ingress and the agents' logs."
        ),
    ),
    Alert(
        name="IsolatorHeartbeatIngestLagging",
        expr=(
            f"sum({HEARTBEAT_RECEIVED_RATE}) / sum({AGENT_HEARTBEATS_RATE})"
            f" < {INGEST_MIN_ACCEPTED_RATIO}\n"
            f"and\n"
            f"sum({HEARTBEAT_RECEIVED_RATE}) > 0"
        ),
        for_="5m",
        severity="warning",
        summary="The isolator accepts too few of the heartbeats the agents send",
        description=(
            "Agents report sending heartbeats that the isolator does not accept: it accepts "
            "{{ $value | humanizePercentage }} of them. Late or lost heartbeats make healthy "
            "nodes look silent."
        ),
    ),
    Alert(
        name="IsolatorPrometheusQueriesFailing",
        expr=f"{QUERY_ERROR_RATIO_RATE} > {QUERY_ERROR_RATIO}",
        for_="2m",
        severity="critical",
        summary="The isolator's queries to the central Prometheus fail",
        description=(
            "{{ $value | humanizePercentage }} of the isolator's queries fail. Without the "
            "in-site view no node can be confirmed dead, so the isolator cuts nothing."
        ),
    ),
    Alert(
        name="IsolatorEdgeAgentDown",
        expr=f'up{{job="{AGENT_JOB}"}} == 0',
        for_="10s",
        severity="warning",
        summary="The edge Prometheus cannot scrape the agent on {{ $labels.node }}",
        description=(
            "Seen from inside region {{ $labels.region }}, the isolator agent on "
            "{{ $labels.node }} does not answer. Alertmanager also sends this alert to the "
            "isolator as evidence for the node."
        ),
    ),
]


def rule_groups() -> dict[str, Any]:
    """Return the rule file's content: the recording group, then the alerting group."""
    return {
        "groups": [
            {"name": "isolator.recording", "rules": [dict(rule) for rule in RECORDING_RULES]},
            {"name": "isolator.alerts", "rules": [alert.to_rule() for alert in ALERTS]},
        ]
    }


__all__ = ["ALERTS", "RECORDING_RULES", "RULES_FILE_NAME", "Alert", "rule_groups"]
