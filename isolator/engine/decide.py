"""Decisions: which nodes to cut or restore now, and which cuts the safety checks hold back.

Functions of one assessment and of the isolator's memory: when each node changed state, the
recent automatic cuts and the regions on hold. Deciding updates that memory and nothing else.
"""

from __future__ import annotations

import enum
import math
from collections import Counter, deque
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field

from isolator.engine.capacity import ServiceCapacity
from isolator.engine.ports import CutScope
from isolator.model import Assessment, GlobalVerdict, NodeVerdict, RegionVerdict


class Kind(enum.StrEnum):
    """The kind of a decision."""

    CUT = "cut"
    RESTORE = "restore"
    HOLD = "hold"  # a cut the evidence calls for but a safety check forbids


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
    ingress_components: tuple[str, ...] = ()  # components whose failure takes the ingress scope


@dataclass(slots=True)
class Memory:
    """State that decisions keep between passes, on the monotonic clock."""

    started_at: float
    failed_since: dict[str, float] = field(default_factory=dict)
    healthy_since: dict[str, float] = field(default_factory=dict)
    cut_times: deque[float] = field(default_factory=deque)  # automatic cuts, newest last
    region_held_until: dict[str, float] = field(default_factory=dict)
    # Nodes a person restored, whose automatic cuts are held until then.
    cut_held_until: dict[str, float] = field(default_factory=dict)
    partitioned_since: dict[str, float] = field(default_factory=dict)  # region -> since
    reachable_since: dict[str, float] = field(default_factory=dict)  # region -> since

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
        for region, judged in assessment.regions.items():
            partitioned = judged.verdict is RegionVerdict.PARTITIONED
            active, cleared = (
                (self.partitioned_since, self.reachable_since)
                if partitioned
                else (self.reachable_since, self.partitioned_since)
            )
            active.setdefault(region, now)
            cleared.pop(region, None)


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
    manual: Set[str] = frozenset(),
    capacity: ServiceCapacity | None = None,
) -> list[Decision]:
    """Return the cuts, restores and holds for this pass.

    ``isolated`` maps every node whose Pods are cut to its region, and ``manual`` names the
    ones a person isolated: only a person or the isolation's TTL restores those. ``capacity``
    stops every cut that would leave a Service under its minimum of ready endpoints, and it
    counts the cuts decided here. None skips that check.
    """
    if assessment.verdict is GlobalVerdict.FAIL_SAFE:
        return [
            Decision(Kind.HOLD, n.node, n.region, f"global fail-safe: {assessment.reason}")
            for n in assessment.nodes.values()
            if n.verdict is NodeVerdict.FAILED and n.node not in isolated
        ]
    automatic = {name: region for name, region in isolated.items() if name not in manual}
    decisions = _restores(assessment, automatic, memory, now, policy)
    decisions += _cuts(assessment, isolated, memory, now, policy, capacity)
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
    capacity: ServiceCapacity | None,
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
            decision = _cut_one(assessment, name, memory, now, policy, capacity)
            if decision is not None:
                decisions.append(decision)
    return decisions


def _cut_one(
    assessment: Assessment,
    name: str,
    memory: Memory,
    now: float,
    policy: Policy,
    capacity: ServiceCapacity | None,
) -> Decision | None:
    """Decide on one flagged node within its region's budget; None while it is still settling."""
    node = assessment.nodes[name]
    region = assessment.regions[node.region]

    def hold(reason: str) -> Decision:
        return Decision(Kind.HOLD, name, node.region, reason)

    if region.verdict is RegionVerdict.PARTITIONED:
        return hold(f"region partitioned: {region.reason}")
    if now < memory.cut_held_until.get(name, 0.0):
        return hold("manual restore: a person restored this node")
    if now - memory.failed_since.get(name, now) < policy.correlation_window_s:
        return None  # still inside the correlation window; a region event may follow
    held_until = memory.region_held_until.get(node.region, 0.0)
    if now < held_until:
        return hold(f"region cooldown: {held_until - now:.0f} s left after a budget breach")
    if now - memory.started_at < policy.startup_grace_s:
        return hold("start-up grace: evidence is still being gathered")
    if memory.cuts_in_window(now) >= policy.cuts_per_minute:
        return hold(f"rate limit: {policy.cuts_per_minute} automatic cuts per minute reached")
    if capacity is not None:
        pods = capacity.removed_by(name, cut_scope(node.component, policy.ingress_components))
        reason = capacity.hold_reason(pods)
        if reason is not None:
            return hold(reason)
        capacity.remove(pods)  # the next node of this pass counts without them
    memory.cut_times.append(now)
    return Decision(Kind.CUT, name, node.region, node.reason)


# Narrowest first: a wider scope takes out more of a node.
_SCOPE_ORDER = (CutScope.INGRESS, CutScope.COMPONENT, CutScope.NODE)


# Components that are the node's kubelet. A dead kubelet cannot recompute Ready from the gate,
# so its failure needs the whole-node cut that sets Ready itself.
KUBELET_COMPONENTS = frozenset({"kubelet", "edgecore"})


def cut_scope(component: str | None, ingress_components: Sequence[str]) -> CutScope:
    """Return the scope of a cut for a node whose ``component`` failed (None: the whole node)."""
    if component is None or component in KUBELET_COMPONENTS:
        return CutScope.NODE
    if component in ingress_components:
        return CutScope.INGRESS
    return CutScope.COMPONENT


def widens(current: str, wanted: CutScope) -> bool:
    """Tell whether a cut in ``wanted`` takes out more than one in ``current`` did."""
    return _SCOPE_ORDER.index(wanted) > _SCOPE_ORDER.index(CutScope(current))


@dataclass(frozen=True, slots=True)
class RegionDecision:
    """A split horizon (CUT), its end (RESTORE) or a held split (HOLD) for one region."""

    kind: Kind
    region: str
    reason: str


def decide_splits(
    assessment: Assessment,
    split: Mapping[str, bool],
    memory: Memory,
    now: float,
    policy: Policy,
) -> list[RegionDecision]:
    """Return the split-horizon changes for this pass.

    ``split`` maps every region whose cloud-side routes are on their fallback to whether a
    person split it. A region is split once it has stayed partitioned for the correlation
    window, and put back once it has stayed reachable (any verdict but partitioned) for the
    restore hold. In the global fail-safe nothing changes automatically. A manual split ends
    only by a person or its TTL.
    """
    if assessment.verdict is GlobalVerdict.FAIL_SAFE:
        return [
            RegionDecision(Kind.HOLD, name, f"global fail-safe: {assessment.reason}")
            for name, region in assessment.regions.items()
            if region.verdict is RegionVerdict.PARTITIONED and name not in split
        ]
    decisions = []
    for name in sorted(assessment.regions):
        decision = _split_change(name, split, memory, now, policy)
        if decision is not None:
            decisions.append(decision)
    return decisions


def _split_change(
    region: str, split: Mapping[str, bool], memory: Memory, now: float, policy: Policy
) -> RegionDecision | None:
    if region not in split:
        since = memory.partitioned_since.get(region)
        if since is None or now - since < policy.correlation_window_s:
            return None
        return RegionDecision(Kind.CUT, region, f"partitioned for {now - since:.1f} s")
    if split[region]:
        return None  # A person split it.
    since = memory.reachable_since.get(region)
    if since is None or now - since < policy.restore_hold_s:
        return None
    return RegionDecision(Kind.RESTORE, region, f"reachable for {now - since:.1f} s")
