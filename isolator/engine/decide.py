"""Decisions: which nodes to cut or restore now, and which cuts the safety checks hold back.

Functions of one assessment and of the isolator's memory: when each node changed state, the
recent automatic cuts and the regions on hold. Deciding updates that memory and nothing else.
"""

from __future__ import annotations

import enum
import math
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field

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


RATE_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class Policy:
    """The safety settings that decisions obey."""

    correlation_window_s: float
    restore_hold_s: float
    region_max_cut_fraction: float
    region_min_cut_nodes: int
    startup_grace_s: float = 0.0
    cuts_per_minute: int = 1_000_000
    region_cooldown_s: float = 0.0


@dataclass(slots=True)
class Memory:
    """What decisions remember between passes, on the monotonic clock."""

    started_at: float
    failed_since: dict[str, float] = field(default_factory=dict)
    healthy_since: dict[str, float] = field(default_factory=dict)
    cut_times: deque[float] = field(default_factory=deque)  # automatic cuts, newest last
    region_held_until: dict[str, float] = field(default_factory=dict)

    @classmethod
    def empty(cls, started_at: float = 0.0) -> Memory:
        return cls(started_at=started_at)

    def cuts_in_window(self, now: float) -> int:
        while self.cut_times and now - self.cut_times[0] >= RATE_WINDOW_S:
            self.cut_times.popleft()
        return len(self.cut_times)

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
    flagged: dict[str, list[str]] = {}
    for name, node in sorted(assessment.nodes.items()):
        if node.verdict is NodeVerdict.FAILED and name not in isolated:
            flagged.setdefault(node.region, []).append(name)

    for region_name, names in flagged.items():
        region = assessment.regions[region_name]
        budget = region_budget(region.nodes, policy)
        if cut_per_region[region_name] + len(names) > budget:
            # More nodes flagged than the region may lose looks like a site-wide event: hold
            # the whole region for a person instead of cutting an arbitrary few.
            memory.region_held_until[region_name] = now + policy.region_cooldown_s
            reason = (
                f"region budget exceeded: {len(names)} flagged and "
                f"{cut_per_region[region_name]} cut of {region.nodes} nodes, budget {budget}"
            )
            decisions += [Decision(Kind.HOLD, n, region_name, reason) for n in names]
            continue
        for name in names:
            decision = _cut_one(assessment, name, memory, now, policy)
            if decision is not None:
                decisions.append(decision)
    return decisions


def _cut_one(
    assessment: Assessment, name: str, memory: Memory, now: float, policy: Policy
) -> Decision | None:
    """Decide on one flagged node within its region's budget; None while it is still settling."""
    node = assessment.nodes[name]
    region = assessment.regions[node.region]

    def hold(reason: str) -> Decision:
        return Decision(Kind.HOLD, name, node.region, reason)

    if region.verdict is RegionVerdict.PARTITIONED:
        return hold(f"region partitioned: {region.reason}")
    if now - memory.failed_since.get(name, now) < policy.correlation_window_s:
        return None  # still inside the correlation window; a region event may follow
    held_until = memory.region_held_until.get(node.region, 0.0)
    if now < held_until:
        return hold(f"region cooldown: {held_until - now:.0f} s left after a budget breach")
    if now - memory.started_at < policy.startup_grace_s:
        return hold("start-up grace: evidence is still being gathered")
    if memory.cuts_in_window(now) >= policy.cuts_per_minute:
        return hold(f"rate limit: {policy.cuts_per_minute} automatic cuts per minute reached")
    memory.cut_times.append(now)
    return Decision(Kind.CUT, name, node.region, node.reason)
