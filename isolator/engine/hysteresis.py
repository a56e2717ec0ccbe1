"""Hysteresis on region verdicts: a more severe verdict applies at once, a milder one only after
the evidence has supported it for a hold time.

Without it a region whose silent nodes hover at the partition threshold flips between
partitioned and normal on consecutive passes. Each flip resets the split-horizon timers, and a
single pass judged normal could let a cut through in a region that is really cut off.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from isolator.model import Assessment, RegionAssessment, RegionVerdict

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


class RegionHysteresis:
    """Keeps each region's verdict until a milder one has held for ``hold_s`` seconds.

    The counts of nodes, silent and failed nodes always come from the current pass; only the
    verdict and its reason are kept. A hold time of 0 passes every verdict through.
    """

    def __init__(self, hold_s: float) -> None:
        self._hold_s = hold_s
        self._held: dict[str, _InForce] = {}

    def apply(self, assessment: Assessment, now: float) -> Assessment:
        """Return ``assessment`` with every region's verdict after hysteresis."""
        regions = {
            name: self._settle(name, current, now) for name, current in assessment.regions.items()
        }
        for removed in self._held.keys() - regions.keys():
            del self._held[removed]
        return dataclasses.replace(assessment, regions=regions)

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
