"""Every metric the isolator service exports, named ``isolator_<subsystem>_<name>_<unit>``.

Labels stay small and bounded: region, node and verdict names, never Pod names or UIDs.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import metadata
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from isolator.model import NodeAssessment, NodeEvidence, NodeVerdict, RegionVerdict


class Metrics:
    """The service's metrics in their own registry, so tests can create as many as they like."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.heartbeats = Counter(
            "isolator_heartbeat_received_total", "Heartbeats accepted from agents.", registry=r
        )
        self.heartbeats_rejected = Counter(
            "isolator_heartbeat_rejected_total",
            "Heartbeat requests rejected, by reason.",
            ["reason"],
            registry=r,
        )
        self.probes = Counter(
            "isolator_probe_total", "Probes sent to agents, by result.", ["result"], registry=r
        )
        self.prometheus_queries = Counter(
            "isolator_prometheus_queries_total",
            "Queries sent to the central Prometheus, by result.",
            ["result"],
            registry=r,
        )
        self.prometheus_query_seconds = Histogram(
            "isolator_prometheus_query_duration_seconds",
            "Duration of one Prometheus query.",
            registry=r,
        )
        self.webhook_alerts = Counter(
            "isolator_webhook_alerts_total",
            "Alerts received from Alertmanager, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.loop_seconds = Histogram(
            "isolator_loop_duration_seconds", "Duration of one control-loop pass.", registry=r
        )
        self.loop_errors = Counter(
            "isolator_loop_errors_total", "Control-loop passes that raised.", registry=r
        )
        self.node_verdicts = Gauge(
            "isolator_node_verdict_nodes",
            "Nodes per verdict, by region.",
            ["region", "verdict"],
            registry=r,
        )
        self.region_verdict = Gauge(
            "isolator_region_verdict_info",
            "1 for the current verdict of each region, 0 for the others.",
            ["region", "verdict"],
            registry=r,
        )
        self.fail_safe = Gauge(
            "isolator_fail_safe_engaged",
            "1 while the global fail-safe holds every automatic change.",
            registry=r,
        )
        self.leader = Gauge(
            "isolator_leader",
            "1 while this replica acts: it holds the leader Lease, or runs without leader "
            "election. 0 on a follower.",
            registry=r,
        )
        self.isolated_nodes = Gauge(
            "isolator_isolation_nodes", "Nodes whose Pods are currently cut.", registry=r
        )
        self.actions = Counter(
            "isolator_action_total",
            "Cut and restore actions, by kind and result.",
            ["kind", "result"],
            registry=r,
        )
        self.cuts_held = Counter(
            "isolator_action_held_total",
            "Cuts decided but held by a safety check, by check.",
            ["check"],
            registry=r,
        )
        self.cut_drift = Counter(
            "isolator_cut_drift_total",
            "Verified cuts found undone when read back again, by target kind (node, pod, "
            "region) and outcome (reapplied, degraded when the retry budget was spent).",
            ["kind", "outcome"],
            registry=r,
        )
        self.tls_reloads = Counter(
            "isolator_tls_reloads_total",
            "Attempts to load changed certificate, key or CA files, by TLS context (api, probe) "
            "and result (ok, or error when the previous files stay in use).",
            ["context", "result"],
            registry=r,
        )
        self.token_reviews = Counter(
            "isolator_auth_token_reviews_total",
            "TokenReview requests sent to the Kubernetes API for bearer tokens that the token "
            "file does not contain, by result (authenticated, unauthenticated, or error when "
            "the API server could not be reached or refused the review). Answers from the "
            "review cache are not counted.",
            ["result"],
            registry=r,
        )
        for result in ("authenticated", "unauthenticated", "error"):
            self.token_reviews.labels(result)
        for context in ("api", "probe"):
            for result in ("ok", "error"):
                self.tls_reloads.labels(context, result)
        for kind in ("node", "pod", "region"):
            for outcome in ("reapplied", "degraded"):
                self.cut_drift.labels(kind, outcome)
        for kind in ("cut", "restore"):
            for result in ("verified", "unverified", "error", "dry_run"):
                self.actions.labels(kind, result)
        for result in ("ok", "error"):
            self.probes.labels(result)
            self.prometheus_queries.labels(result)
        self._add_monitoring_metrics(r)

    def _add_monitoring_metrics(self, r: CollectorRegistry) -> None:
        """Create the metrics that the dashboards and alert rules need beyond the ones above.

        The per-node series carry the evidence a person reads on the node dashboard. Their
        cardinality is one series per edge node and signal, bounded by the inventory.
        """
        self.build_info = Gauge(
            "isolator_build_info",
            "Always 1; carries the version of the running isolator.",
            ["version"],
            registry=r,
        )
        self.build_info.labels(_package_version()).set(1)
        self.nodes = NodeSeries()
        r.register(self.nodes)
        self.isolation = Gauge(
            "isolator_isolation_info",
            "1 for each node whose Pods are cut, with the reason and the state of the cut.",
            ["region", "node", "reason", "state"],
            registry=r,
        )
        self.kubernetes_requests = Counter(
            "isolator_kubernetes_requests_total",
            "Requests to the Kubernetes API, by operation and result (ok or error).",
            ["operation", "result"],
            registry=r,
        )

    def set_region(
        self, region: str, verdict: RegionVerdict, nodes: dict[NodeVerdict, int]
    ) -> None:
        """Publish one region's verdict and node counts, zeroing the other verdicts."""
        for candidate in RegionVerdict:
            self.region_verdict.labels(region, candidate.value).set(int(candidate is verdict))
        for node_verdict in NodeVerdict:
            self.node_verdicts.labels(region, node_verdict.value).set(nodes.get(node_verdict, 0))

    def set_node(self, node: NodeAssessment, evidence: NodeEvidence, now: float) -> None:
        """Publish one node's verdict and evidence, with ages measured at monotonic ``now``."""
        self.nodes.set(node, evidence, now)

    def forget_node(self, region: str, node: str) -> None:
        """Remove every per-node series of a node that left the inventory."""
        self.nodes.forget(region, node)

    def set_isolations(self, isolations: list[tuple[str, str, str, str]]) -> None:
        """Replace the isolation series with one per (region, node, reason, state).

        ``reason`` must be one of the engine's constant phrases, never text formatted with
        values, so that the label set stays bounded. ``state`` is pending, verified,
        unverified or dry_run.
        """
        self.isolation.clear()
        for region, node, reason, state in isolations:
            self.isolation.labels(region, node, reason, state).set(1)


class NodeSample(NamedTuple):
    """One node's verdict and evidence as of the latest pass; None where nothing was seen."""

    verdict: NodeVerdict
    heartbeat_age_s: float | None
    probe_age_s: float | None
    probe_failures: int
    site_up: float | None
    site_age_s: float | None
    clock_skew_s: float | None
    firing_alerts: int


# Sample field, metric name and help of each per-node gauge.
_NODE_GAUGES = (
    (
        "heartbeat_age_s",
        "isolator_node_heartbeat_age_seconds",
        "Time since the node's last accepted heartbeat, on the isolator's monotonic clock.",
    ),
    (
        "probe_age_s",
        "isolator_node_probe_age_seconds",
        "Time since the node's agent last answered a probe from the isolator.",
    ),
    (
        "probe_failures",
        "isolator_node_probe_consecutive_failures",
        "Probes of the node's agent that failed in a row since the last answered one.",
    ),
    (
        "site_up",
        "isolator_node_site_up",
        "The edge Prometheus's up for the node's agent, as last read through federation.",
    ),
    (
        "site_age_s",
        "isolator_node_site_sample_age_seconds",
        "Age of that federated up sample when the isolator last read it.",
    ),
    (
        "clock_skew_s",
        "isolator_node_clock_skew_seconds",
        "Isolator wall clock minus the sent_at of the node's last heartbeat.",
    ),
    (
        "firing_alerts",
        "isolator_node_firing_alerts",
        "Alertmanager alerts recorded as firing for the node.",
    ),
)
_VERDICT_NAME = "isolator_node_verdict_info"
_VERDICT_HELP = "1 for the current verdict of each node, 0 for the others."


class NodeSeries(Collector):
    """The per-node series, built when Prometheus scrapes instead of on every pass.

    Setting a dozen labelled gauges per node on every pass took about a seventh of the
    isolator's busy CPU at 10,000 nodes. A pass now stores one tuple per node, and a scrape
    turns the latest tuples into series. A signal the isolator has not seen yet has no series,
    so a dashboard shows it as missing instead of as 0.
    """

    def __init__(self) -> None:
        self._samples: dict[tuple[str, str], NodeSample] = {}

    def set(self, node: NodeAssessment, evidence: NodeEvidence, now: float) -> None:
        """Keep one node's verdict and evidence, with ages measured at monotonic ``now``."""
        heartbeat_at, probe_ok_at = evidence.last_heartbeat_at, evidence.last_probe_ok_at
        site = evidence.site_up
        self._samples[(node.region, node.node)] = NodeSample(
            verdict=node.verdict,
            heartbeat_age_s=None if heartbeat_at is None else now - heartbeat_at,
            probe_age_s=None if probe_ok_at is None else now - probe_ok_at,
            probe_failures=evidence.probe_failures,
            site_up=None if site is None else site.value,
            site_age_s=None if site is None else site.age_s,
            clock_skew_s=evidence.clock_skew_s,
            firing_alerts=len(evidence.firing_alerts),
        )

    def forget(self, region: str, node: str) -> None:
        """Drop a node that left the inventory; unknown nodes are ignored."""
        self._samples.pop((region, node), None)

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        verdict, *gauges = families = self._families()
        for (region, node), sample in list(self._samples.items()):
            for candidate in NodeVerdict:
                value = int(candidate is sample.verdict)
                verdict.add_metric([region, node, candidate.value], value)
            for family, (field, _, _) in zip(gauges, _NODE_GAUGES, strict=True):
                reading = getattr(sample, field)
                if reading is not None:
                    family.add_metric([region, node], reading)
        yield from families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        verdict = GaugeMetricFamily(
            _VERDICT_NAME, _VERDICT_HELP, labels=["region", "node", "verdict"]
        )
        gauges = [
            GaugeMetricFamily(name, help_text, labels=["region", "node"])
            for _, name, help_text in _NODE_GAUGES
        ]
        return [verdict, *gauges]


def _package_version() -> str:
    try:
        return metadata.version("isolator")
    except metadata.PackageNotFoundError:
        return "unknown"
