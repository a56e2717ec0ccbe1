"""The evidence store: what the isolator has seen of every edge node and region.

All times are readings of the receiver's monotonic clock. Sender timestamps only feed the
clock-skew figure; they never decide freshness.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping
from typing import TypeVar

from isolator.model import (
    INGRESS_COMPONENT,
    EdgeNode,
    NodeEvidence,
    RegionEvidence,
    SiteSample,
    SiteView,
)

_T = TypeVar("_T")


class HeartbeatOutcome(enum.StrEnum):
    """Outcome of one heartbeat."""

    ACCEPTED = "accepted"
    UNKNOWN_NODE = "unknown_node"
    WRONG_REGION = "wrong_region"
    REPLAYED = "replayed"  # a sequence number at or below one already seen since a restart


HISTORY_KEPT = 30  # samples of each recent-history series kept per node


def _push(history: deque[_T], value: _T) -> None:
    history.append(value)
    while len(history) > HISTORY_KEPT:
        history.popleft()


class EvidenceStore:
    """Per-node and per-region evidence, updated by the API, the prober and the loop."""

    def __init__(self, outage_gap_s: float = float("inf")) -> None:
        # A heartbeat gap longer than this ends an outage: the recent history restarts, so that
        # failures from the outage do not read as a grey failure of the recovered node.
        self._outage_gap_s = outage_gap_s
        self.nodes: dict[str, NodeEvidence] = {}
        self.regions: dict[str, RegionEvidence] = {}
        self.agent_urls: dict[str, str] = {}

    def sync_inventory(self, inventory: Iterable[EdgeNode]) -> None:
        """Track exactly the listed nodes, keeping the evidence of those already known."""
        listed = {node.name: node for node in inventory}
        for name in self.nodes.keys() - listed.keys():
            del self.nodes[name]
            self.agent_urls.pop(name, None)
        for node in listed.values():
            known = self.nodes.get(node.name)
            if known is None or known.region != node.region:
                self.nodes[node.name] = NodeEvidence(node=node.name, region=node.region)
            if node.agent_url:
                self.agent_urls[node.name] = node.agent_url
            else:
                self.agent_urls.pop(node.name, None)
        regions = {node.region for node in listed.values()}
        for region in self.regions.keys() - regions:
            del self.regions[region]
        for region in regions:
            self.regions.setdefault(region, RegionEvidence(region=region))

    def record_heartbeat(
        self,
        node: str,
        region: str,
        seq: int,
        sent_at: float,
        now: float,
        wall_now: float,
        components: Mapping[str, bool] | None = None,
    ) -> HeartbeatOutcome:
        """Record one heartbeat received at monotonic time ``now``.

        ``components`` maps each checked component, and the ingress path, to its health.
        """
        evidence = self.nodes.get(node)
        if evidence is None:
            return HeartbeatOutcome.UNKNOWN_NODE
        if evidence.region != region:
            return HeartbeatOutcome.WRONG_REGION
        # A lower sequence number means the agent restarted, which is normal; only an exact
        # repeat within one agent run is a replay.
        if evidence.heartbeat_seq is not None and seq == evidence.heartbeat_seq:
            return HeartbeatOutcome.REPLAYED
        if evidence.last_heartbeat_at is not None:
            gap = now - evidence.last_heartbeat_at
            if gap > self._outage_gap_s:
                _restart_history(evidence, now)
            else:
                _push(evidence.heartbeat_gaps, gap)
        evidence.last_heartbeat_at = now
        evidence.heartbeat_seq = seq
        evidence.heartbeat_count += 1
        evidence.clock_skew_s = wall_now - sent_at
        health = components or {}
        _count_failures(evidence.component_failures, health)
        if INGRESS_COMPONENT in health:
            _push(evidence.ingress_results, health[INGRESS_COMPONENT])
        return HeartbeatOutcome.ACCEPTED

    def record_probe(self, node: str, ok: bool, now: float, rtt_s: float | None = None) -> None:
        """Record the result of one probe from the isolator to the node's agent."""
        evidence = self.nodes.get(node)
        if evidence is None:
            return
        # The first successful probe after an outage in the probe direction (a half-open link,
        # say) starts the history afresh, as a heartbeat after silence does.
        last_ok = evidence.last_probe_ok_at
        if ok and last_ok is not None and now - last_ok > self._outage_gap_s:
            _restart_history(evidence, now)
        _push(evidence.probe_rtts, rtt_s if ok else None)
        if ok:
            evidence.last_probe_ok_at = now
            evidence.probe_failures = 0
        else:
            evidence.last_probe_failed_at = now
            evidence.probe_failures += 1

    def apply_site_view(self, view: SiteView | None) -> None:
        """Replace the in-site view; None means the central Prometheus could not be read."""
        for name, evidence in self.nodes.items():
            evidence.site_up = view.agents.get(name) if view else None
            kubelet = view.kubelets.get(name) if view else None
            _count_down_scrapes(evidence, kubelet)
            evidence.site_kubelet_up = kubelet
        for region, region_evidence in self.regions.items():
            region_evidence.federation_up = view.federation.get(region) if view else None

    def record_alert(self, node: str, fingerprint: str, alertname: str, firing: bool) -> bool:
        """Record one alert about a node; returns False when the node is not tracked.

        Alerts are kept by fingerprint: several alerts may share a name on one node (one per
        Pod or per disk, say), and one of them resolving must not hide the others.
        """
        evidence = self.nodes.get(node)
        if evidence is None:
            return False
        if firing:
            evidence.firing_fingerprints[fingerprint] = alertname
        else:
            evidence.firing_fingerprints.pop(fingerprint, None)
        evidence.firing_alerts = set(evidence.firing_fingerprints.values())
        return True


def _restart_history(evidence: NodeEvidence, now: float) -> None:
    """Forget the history that grey scoring reads: it describes the node before an outage."""
    evidence.history_reset_at = now
    evidence.probe_rtts.clear()
    evidence.heartbeat_gaps.clear()
    evidence.ingress_results.clear()


def _count_failures(failures: dict[str, int], health: Mapping[str, bool]) -> None:
    """Count consecutive failed reports per component; a component no longer reported is
    forgotten, so a check that was removed cannot keep a node failed."""
    for name in failures.keys() - health.keys():
        del failures[name]
    for name, ok in health.items():
        failures[name] = 0 if ok else failures.get(name, 0) + 1


def _count_down_scrapes(evidence: NodeEvidence, sample: SiteSample | None) -> None:
    """Count consecutive kubelet scrapes that found it down.

    A sample no older than the previous reading is a new scrape: the same sample read twice
    only grows older.
    """
    previous = evidence.site_kubelet_up
    if sample is None:
        evidence.site_kubelet_down_scrapes = 0
    elif previous is None or sample.age_s <= previous.age_s:
        down = sample.value < 1
        evidence.site_kubelet_down_scrapes = evidence.site_kubelet_down_scrapes + 1 if down else 0
