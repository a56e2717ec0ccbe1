"""Every metric the isolator service exports, named ``isolator_<subsystem>_<name>_<unit>``.

Labels stay small and bounded: region and verdict names, never Pod names or UIDs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from isolator.model import NodeVerdict, RegionVerdict


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
        for kind in ("cut", "restore"):
            for result in ("verified", "unverified", "error", "dry_run"):
                self.actions.labels(kind, result)
        for result in ("ok", "error"):
            self.probes.labels(result)
            self.prometheus_queries.labels(result)

    def set_region(
        self, region: str, verdict: RegionVerdict, nodes: dict[NodeVerdict, int]
    ) -> None:
        """Publish one region's verdict and node counts, zeroing the other verdicts."""
        for candidate in RegionVerdict:
            self.region_verdict.labels(region, candidate.value).set(int(candidate is verdict))
        for node_verdict in NodeVerdict:
            self.node_verdicts.labels(region, node_verdict.value).set(nodes.get(node_verdict, 0))
