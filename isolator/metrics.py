"""Every metric the isolator service exports, named ``isolator_<subsystem>_<name>_<unit>``.

Labels stay small and bounded: region, node and verdict names, never Pod names or UIDs.
"""

from __future__ import annotations

import contextlib
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self.node_verdict = Gauge(
            "isolator_node_verdict_info",
            "1 for the current verdict of each node, 0 for the others.",
            ["region", "node", "verdict"],
            registry=r,
        )
        self.node_heartbeat_age = Gauge(
            "isolator_node_heartbeat_age_seconds",
            "Time since the node's last accepted heartbeat, on the isolator's monotonic clock.",
            ["region", "node"],
            registry=r,
        )
        self.node_probe_age = Gauge(
            "isolator_node_probe_age_seconds",
            "Time since the node's agent last answered a probe from the isolator.",
            ["region", "node"],
            registry=r,
        )
        self.node_probe_failures = Gauge(
            "isolator_node_probe_consecutive_failures",
            "Probes of the node's agent that failed in a row since the last answered one.",
            ["region", "node"],
            registry=r,
        )
        self.node_site_up = Gauge(
            "isolator_node_site_up",
            "The edge Prometheus's up for the node's agent, as last read through federation.",
            ["region", "node"],
            registry=r,
        )
        self.node_site_age = Gauge(
            "isolator_node_site_sample_age_seconds",
            "Age of that federated up sample when the isolator last read it.",
            ["region", "node"],
            registry=r,
        )
        self.node_clock_skew = Gauge(
            "isolator_node_clock_skew_seconds",
            "Isolator wall clock minus the sent_at of the node's last heartbeat.",
            ["region", "node"],
            registry=r,
        )
        self.node_firing_alerts = Gauge(
            "isolator_node_firing_alerts",
            "Alertmanager alerts recorded as firing for the node.",
            ["region", "node"],
            registry=r,
        )
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
        """Publish one node's verdict and evidence, with ages measured at monotonic ``now``.

        A signal the isolator has not seen yet has no series, so a dashboard shows it as
        missing instead of as 0.
        """
        labels = (node.region, node.node)
        for candidate in NodeVerdict:
            self.node_verdict.labels(*labels, candidate.value).set(int(candidate is node.verdict))
        heartbeat_age = (
            None if evidence.last_heartbeat_at is None else now - evidence.last_heartbeat_at
        )
        probe_age = None if evidence.last_probe_ok_at is None else now - evidence.last_probe_ok_at
        site = evidence.site_up
        _set_or_remove(self.node_heartbeat_age, labels, heartbeat_age)
        _set_or_remove(self.node_probe_age, labels, probe_age)
        _set_or_remove(self.node_probe_failures, labels, evidence.probe_failures)
        _set_or_remove(self.node_site_up, labels, None if site is None else site.value)
        _set_or_remove(self.node_site_age, labels, None if site is None else site.age_s)
        _set_or_remove(self.node_clock_skew, labels, evidence.clock_skew_s)
        _set_or_remove(self.node_firing_alerts, labels, len(evidence.firing_alerts))

    def forget_node(self, region: str, node: str) -> None:
        """Remove every per-node series of a node that left the inventory."""
        for gauge in (
            self.node_heartbeat_age,
            self.node_probe_age,
            self.node_probe_failures,
            self.node_site_up,
            self.node_site_age,
            self.node_clock_skew,
            self.node_firing_alerts,
        ):
            _set_or_remove(gauge, (region, node), None)
        for candidate in NodeVerdict:
            _set_or_remove(self.node_verdict, (region, node, candidate.value), None)

    def set_isolations(self, isolations: list[tuple[str, str, str, str]]) -> None:
        """Replace the isolation series with one per (region, node, reason, state).

        ``reason`` must be one of the engine's constant phrases, never text formatted with
        values, so that the label set stays bounded. ``state`` is pending, verified,
        unverified or dry_run.
        """
        self.isolation.clear()
        for region, node, reason, state in isolations:
            self.isolation.labels(region, node, reason, state).set(1)


def _set_or_remove(gauge: Gauge, labels: tuple[str, ...], value: float | None) -> None:
    if value is None:
        # prometheus-client 0.26 ignores an unknown label set here; older releases may raise.
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)
        return
    gauge.labels(*labels).set(value)


def _package_version() -> str:
    try:
        return metadata.version("isolator")
    except metadata.PackageNotFoundError:
        return "unknown"
