"""Decisions: which nodes to cut or restore now, and which cuts the safety checks hold back.

Pure functions of one assessment and the isolator's memory of when each node changed state.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from isolator.model import Assessment, GlobalVerdict, NodeVerdict, RegionVerdict


class Kind(enum.StrEnum):
    """What a decision asks for."""

    CUT = "cut"
    RESTORE = "restore"
    HOLD = "hold"  # a cut the evidence asks for but a safety check forbids


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision about one node, with the reason or the safety check that applied."""

    kind: Kind
    node: str
    region: str
    reason: str


@dataclass(frozen=True, slots=True)
class Policy:
    """The safety settings that decisions obey."""

    correlation_window_s: float
    restore_hold_s: float
    region_max_cut_fraction: float
    region_min_cut_nodes: int


@dataclass(slots=True)
class Memory:
    """When each node entered its current failed or healthy state, on the monotonic clock."""

    failed_since: dict[str, float]
    healthy_since: dict[str, float]

    @classmethod
    def empty(cls) -> Memory:
        return cls(failed_since={}, healthy_since={})

    def update(self, assessment: Assessment, now: float) -> None:
        """Start or clear the timers from the verdicts of this pass."""
        for name, node in assessment.nodes.items():
            timers = {
                NodeVerdict.FAILED: self.failed_since,
                NodeVerdict.HEALTHY: self.healthy_since,
            }
            for verdict, since in timers.items():
                if node.verdict is verdict:
                    since.setdefault(name, now)
                else:
                    since.pop(name, None)
        for since in (self.failed_since, self.healthy_since):
            for name in since.keys() - assessment.nodes.keys():
                del since[name]


def region_budget(nodes_in_region: int, policy: Policy) -> int:
    """Return how many nodes of a region may be cut at the same time."""
    share = math.floor(nodes_in_region * policy.region_max_cut_fraction)
    return max(share, policy.region_min_cut_nodes)


def decide(
    assessment: Assessment,
    isolated: Mapping[str, str],
    memory: Memory,
    now: float,
    policy: Policy,
) -> list[Decision]:
    """Return the cuts, restores and holds for this pass.

    ``isolated`` maps every node whose Pods are cut to its region.
    """
    if assessment.verdict is GlobalVerdict.FAIL_SAFE:
        return [
            Decision(Kind.HOLD, n.node, n.region, f"global fail-safe: {assessment.reason}")
            for n in assessment.nodes.values()
            if n.verdict is NodeVerdict.FAILED and n.node not in isolated
        ]
    decisions = _restores(assessment, isolated, memory, now, policy)
    decisions += _cuts(assessment, isolated, memory, now, policy)
    return decisions


def _restores(
    assessment: Assessment,
    isolated: Mapping[str, str],
    memory: Memory,
    now: float,
    policy: Policy,
) -> list[Decision]:
    decisions = []
    for name, region in isolated.items():
        since = memory.healthy_since.get(name)
        if since is not None and now - since >= policy.restore_hold_s:
            reason = f"healthy for {now - since:.1f} s"
            decisions.append(Decision(Kind.RESTORE, name, region, reason))
    return decisions


def _cuts(
    assessment: Assessment,
    isolated: Mapping[str, str],
    memory: Memory,
    now: float,
    policy: Policy,
) -> list[Decision]:
    decisions = []
    cut_per_region = Counter(isolated.values())
    for name, node in sorted(assessment.nodes.items()):
        if node.verdict is not NodeVerdict.FAILED or name in isolated:
            continue
        region = assessment.regions[node.region]
        failed_for = now - memory.failed_since.get(name, now)
        if region.verdict is RegionVerdict.PARTITIONED:
            reason = f"region {node.region} is partitioned: {region.reason}"
            decisions.append(Decision(Kind.HOLD, name, node.region, reason))
        elif failed_for < policy.correlation_window_s:
            continue  # still inside the correlation window; a region event may follow
        elif cut_per_region[node.region] >= region_budget(region.nodes, policy):
            reason = (
                f"region budget: {cut_per_region[node.region]} of {region.nodes} nodes already cut"
            )
            decisions.append(Decision(Kind.HOLD, name, node.region, reason))
        else:
            cut_per_region[node.region] += 1
            decisions.append(Decision(Kind.CUT, name, node.region, node.reason))
    return decisions
