"""Classification: turn the evidence of one instant into node, region and global verdicts.

The functions here are pure. They read evidence and settings and return verdicts with reasons;
deciding what to do about a verdict belongs to the decision step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from isolator.model import (
    Assessment,
    GlobalVerdict,
    NodeAssessment,
    NodeEvidence,
    NodeVerdict,
    RegionAssessment,
    RegionEvidence,
    RegionVerdict,
    SiteSample,
)

# Verdicts of a node that the cloud cannot hear but has not confirmed dead.
_DARK = frozenset({NodeVerdict.SUSPECT, NodeVerdict.UNREACHABLE})


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The timing limits that classification needs, taken from the settings."""

    heartbeat_timeout_s: float
    site_max_age_s: float
    fail_safe_region_fraction: float
    component_failure_count: int = 3


def _fresh(sample: SiteSample | None, max_age_s: float) -> SiteSample | None:
    if sample is None or sample.age_s > max_age_s:
        return None
    return sample


def _age(since: float | None, now: float) -> float | None:
    return None if since is None else now - since


def classify_node(evidence: NodeEvidence, now: float, limits: Thresholds) -> NodeAssessment:
    """Judge one node from its heartbeats, probes and in-site view."""
    silent_for = _age(evidence.last_heartbeat_at, now)

    silent = silent_for is not None and silent_for > limits.heartbeat_timeout_s

    def verdict(value: NodeVerdict, reason: str, component: str | None = None) -> NodeAssessment:
        return NodeAssessment(
            evidence.node, evidence.region, value, reason, silent_for, component, silent
        )

    if evidence.last_heartbeat_at is None or evidence.last_probe_ok_at is None:
        return verdict(NodeVerdict.UNKNOWN, "not yet seen both ways (heartbeat and probe)")

    assert silent_for is not None  # last_heartbeat_at was checked above
    if silent_for <= limits.heartbeat_timeout_s:
        failed = sorted(
            name
            for name, count in evidence.component_failures.items()
            if count >= limits.component_failure_count
        )
        kubelet = _fresh(evidence.site_kubelet_up, limits.site_max_age_s)
        down_scrapes = evidence.site_kubelet_down_scrapes
        if kubelet is not None and down_scrapes >= limits.component_failure_count:
            # A live heartbeat does not veto a dead kubelet seen from inside the site.
            reason = f"edge Prometheus scraped its kubelet down {down_scrapes} times in a row"
            return verdict(NodeVerdict.FAILED, reason, component="kubelet")
        if failed:
            # A live heartbeat does not veto a failure the agent itself reports.
            reason = f"{', '.join(failed)} failed {limits.component_failure_count} checks in a row"
            return verdict(NodeVerdict.FAILED, reason, component=failed[0])
        return verdict(NodeVerdict.HEALTHY, "heartbeats on time")

    probe_age = _age(evidence.last_probe_ok_at, now)
    if probe_age is not None and probe_age <= limits.heartbeat_timeout_s:
        return verdict(NodeVerdict.UNREACHABLE, "heartbeats lost but probes answered")

    return _judge_silent_node(evidence, limits, verdict)


def _judge_silent_node(
    evidence: NodeEvidence,
    limits: Thresholds,
    verdict: Callable[[NodeVerdict, str], NodeAssessment],
) -> NodeAssessment:
    """Judge a node the cloud cannot hear, from what its edge Prometheus scrapes inside the site.

    The node is failed only when every target the site has fresh data for is down: a dead
    agent next to a kubelet that still answers is an agent crash on a serving node.
    """
    agent = _fresh(evidence.site_up, limits.site_max_age_s)
    kubelet = _fresh(evidence.site_kubelet_up, limits.site_max_age_s)
    if agent is None and kubelet is None:
        return verdict(NodeVerdict.SUSPECT, "silent, and no fresh in-site view")
    if agent is not None and agent.value >= 1:
        return verdict(NodeVerdict.UNREACHABLE, "silent to the cloud, edge Prometheus scrapes it")
    if kubelet is not None and kubelet.value >= 1:
        return verdict(NodeVerdict.UNREACHABLE, "agent down, edge Prometheus scrapes its kubelet")
    return verdict(NodeVerdict.FAILED, "silent, and the edge Prometheus scrapes it down")


def classify_region(
    evidence: RegionEvidence, nodes: Iterable[NodeAssessment], limits: Thresholds
) -> RegionAssessment:
    """Judge one region from its nodes' verdicts and its federation path."""
    members = list(nodes)
    total = len(members)
    dark = sum(1 for n in members if n.silent and n.verdict in _DARK)
    failed = sum(1 for n in members if n.verdict is NodeVerdict.FAILED)
    silent = sum(1 for n in members if n.silent)
    federation = _fresh(evidence.federation_up, limits.site_max_age_s)
    monitoring_ok = federation is not None and federation.value >= 1

    def verdict(value: RegionVerdict, reason: str) -> RegionAssessment:
        return RegionAssessment(evidence.region, value, reason, total, silent, failed)

    if total and dark * 2 > total:
        return verdict(RegionVerdict.PARTITIONED, f"{dark} of {total} nodes silent, not confirmed")
    if not monitoring_ok:
        state = "unknown" if federation is None else "down"
        return verdict(RegionVerdict.MONITORING_DEGRADED, f"federation target {state}")
    if failed:
        return verdict(RegionVerdict.DEGRADED, f"{failed} of {total} nodes failed")
    return verdict(RegionVerdict.NORMAL, "all nodes accounted for")


def classify(
    nodes: Mapping[str, NodeEvidence],
    regions: Mapping[str, RegionEvidence],
    now: float,
    limits: Thresholds,
) -> Assessment:
    """Judge every node, every region and the estate as a whole."""
    node_verdicts = {name: classify_node(ev, now, limits) for name, ev in nodes.items()}
    by_region: dict[str, list[NodeAssessment]] = {region: [] for region in regions}
    for verdict in node_verdicts.values():
        by_region.setdefault(verdict.region, []).append(verdict)
    region_verdicts = {
        region: classify_region(ev, by_region[region], limits) for region, ev in regions.items()
    }
    # A region counts as dark when most of its nodes are silent, confirmed dead or not: all
    # sites failing together is far likelier a central fault than many independent ones.
    dark = [r for r in region_verdicts.values() if r.nodes and r.silent * 2 > r.nodes]
    if len(region_verdicts) >= 2 and len(dark) >= limits.fail_safe_region_fraction * len(
        region_verdicts
    ):
        reason = f"{len(dark)} of {len(region_verdicts)} regions silent at once: suspect central"
        return Assessment(GlobalVerdict.FAIL_SAFE, reason, region_verdicts, node_verdicts)
    return Assessment(GlobalVerdict.NORMAL, "regions independent", region_verdicts, node_verdicts)
