"""Hysteresis on region verdicts and on the global fail-safe: a more severe verdict applies at
once, a milder one only after the evidence has supported it for a hold time.

Without it a region whose silent nodes hover at the partition threshold flips between
partitioned and normal on consecutive passes. Each flip resets the split-horizon timers, and a
single pass judged normal could let a cut through in a region that is really cut off. The same
holds for the estate: while regions come back one by one after a central fault, one pass under
the fail-safe threshold would let cuts through on evidence that is still settling.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from isolator.model import Assessment, GlobalVerdict, RegionAssessment, RegionVerdict

# Most severe first. A partition stops every cut in the region, lost monitoring hides the
# site's own view, and a degraded region has failed nodes.
SEVERITY = (
    RegionVerdict.PARTITIONED,
    RegionVerdict.MONITORING_DEGRADED,
    RegionVerdict.DEGRADED,
    RegionVerdict.NORMAL,
)


def more_severe(first: RegionVerdict, second: RegionVerdict) -> bool:
    """Tell whether ``first`` is a more severe region verdict than ``second``."""
    return SEVERITY.index(first) < SEVERITY.index(second)


@dataclass(slots=True)
class _InForce:
    verdict: RegionAssessment  # the verdict in force
    milder_since: float | None = None  # monotonic time the evidence first pointed milder


@dataclass(slots=True)
class _FailSafe:
    reason: str  # why the estate went fail-safe
    normal_since: float | None = None  # monotonic time the evidence first pointed normal


class RegionHysteresis:
    """Keeps each region's verdict until a milder one has held for ``hold_s`` seconds, and the
    global fail-safe until the estate has looked normal for as long.

    The counts of nodes, silent and failed nodes always come from the current pass; only the
    verdicts and their reasons are kept. A hold time of 0 passes every verdict through.
    """

    def __init__(self, hold_s: float) -> None:
        self._hold_s = hold_s
        self._held: dict[str, _InForce] = {}
        self._fail_safe: _FailSafe | None = None

    def apply(self, assessment: Assessment, now: float) -> Assessment:
        """Return ``assessment`` with every region's verdict and the global one after hysteresis."""
        regions = {
            name: self._settle(name, current, now) for name, current in assessment.regions.items()
        }
        for removed in self._held.keys() - regions.keys():
            del self._held[removed]
        verdict, reason = self._settle_global(assessment, now)
        return dataclasses.replace(assessment, verdict=verdict, reason=reason, regions=regions)

    def _settle_global(self, current: Assessment, now: float) -> tuple[GlobalVerdict, str]:
        if current.verdict is GlobalVerdict.FAIL_SAFE:
            self._fail_safe = _FailSafe(current.reason)
            return current.verdict, current.reason
        held = self._fail_safe
        if held is None:
            return current.verdict, current.reason
        if held.normal_since is None:
            held.normal_since = now
        waited = now - held.normal_since
        if waited >= self._hold_s:
            self._fail_safe = None
            return current.verdict, current.reason
        reason = (
            f"{held.reason}; kept for {self._hold_s - waited:.1f} s more, the estate now looks "
            f"{current.verdict.value}: {current.reason}"
        )
        return GlobalVerdict.FAIL_SAFE, reason

    def _settle(self, name: str, current: RegionAssessment, now: float) -> RegionAssessment:
        held = self._held.get(name)
        if held is None or not more_severe(held.verdict.verdict, current.verdict):
            # The same verdict, a more severe one, or a region seen for the first time.
            self._held[name] = _InForce(current)
            return current
        if held.milder_since is None:
            held.milder_since = now
        waited = now - held.milder_since
        if waited >= self._hold_s:
            self._held[name] = _InForce(current)
            return current
        reason = (
            f"{held.verdict.reason}; kept for {self._hold_s - waited:.1f} s more, the evidence "
            f"now points to {current.verdict.value}: {current.reason}"
        )
        return dataclasses.replace(current, verdict=held.verdict.verdict, reason=reason)
