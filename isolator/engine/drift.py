"""Re-verification of held cuts: noticing a cut that something undid after it was verified.

Reading back verifies a cut once, right after it is written. Later a kubelet may mark a Pod
ready again, a person may edit a Pod or an EndpointSlice, or a deployment tool may reapply an
Ingress. Every ``cut_recheck_interval_s`` the controller reads all held cuts back in one check.
An undone cut turns unverified and goes back to the retry path, which applies it again while
the retry budget (``action_retry_limit`` further attempts over the isolation's life) lasts.
Once the budget is spent the isolation is marked degraded and left for a person; only a wider
cut of its node applies it again.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from isolator.clock import Clock
from isolator.engine.ports import Cluster, CutDrift, HeldCut, TargetKind
from isolator.metrics import Metrics
from isolator.sources.errors import SourceError

if TYPE_CHECKING:
    from isolator.engine.loop import Isolation

logger = logging.getLogger(__name__)

# In-flight key of the check; a colon never occurs in a node name, so it collides with none.
RECHECK_KEY = "recheck:held-cuts"
# Writer named in the audit when the managedFields of an undone object name no other manager.
UNKNOWN_WRITER = "unknown writer"


@dataclass(frozen=True, slots=True)
class Undone:
    """A held isolation found undone, and what the controller does about it."""

    isolation: Isolation
    drift: CutDrift
    outcome: str  # "reapplied": handed to the retry path; "degraded": the budget is spent
    detail: str


def is_held(isolation: Isolation) -> bool:
    """Tell whether the isolation is a written, verified cut that the check reads back."""
    return isolation.verified and not isolation.dry_run and not isolation.degraded


def held_cut(isolation: Isolation) -> HeldCut:
    """Describe the isolation for the adapter; a Pod isolation always covers its own Pod."""
    objects = isolation.pods
    if isolation.kind is TargetKind.POD:
        objects = tuple(sorted({*objects, isolation.target}))
    return HeldCut(isolation.kind.value, isolation.name, isolation.scope, objects)


class CutRecheck:
    """Schedules the re-verification of held cuts and judges what it finds."""

    def __init__(
        self,
        cluster: Cluster,
        metrics: Metrics,
        clock: Clock,
        *,
        interval_s: float,
        retry_limit: int,
    ) -> None:
        self._cluster = cluster
        self._metrics = metrics
        self._clock = clock
        self._interval_s = interval_s
        self._retry_limit = retry_limit
        self._next_at = clock.monotonic() + interval_s

    def due(self, now: float) -> bool:
        """Tell whether a check should start at monotonic ``now``; never when turned off."""
        return self._interval_s > 0 and now >= self._next_at

    async def check(self, isolations: Sequence[Isolation], busy: Container[str]) -> list[Undone]:
        """Read every held isolation back and hand each undone one to the retry path.

        Isolations whose key is in ``busy`` (an action runs on them) are left out, and so is
        any that an action changed while the check was reading.
        """
        self._next_at = self._clock.monotonic() + self._interval_s
        held = {
            (isolation.kind.value, isolation.name): isolation
            for isolation in isolations
            if is_held(isolation) and isolation.key not in busy
        }
        if not held:
            return []
        try:
            drifts = await self._cluster.check_held_cuts([held_cut(i) for i in held.values()])
        except SourceError as err:
            logger.warning(
                "reading held cuts back failed, will retry at the next check",
                extra={"isolations": len(held), "error": str(err)},
            )
            return []
        found = []
        for drift in drifts:
            isolation = held.get((drift.kind, drift.target))
            if isolation is None or not is_held(isolation) or isolation.key in busy:
                continue
            found.append(self._judge(isolation, drift))
        return found

    def _judge(self, isolation: Isolation, drift: CutDrift) -> Undone:
        """Mark the isolation unverified, and either due for another attempt or degraded."""
        writer = drift.writer or UNKNOWN_WRITER
        isolation.verified = False
        isolation.drifts += 1
        undone = f"cut undone by {writer} after it was verified: {drift.detail}"
        # ``attempts`` counts the first cut too, so the budget is spent above the limit.
        if isolation.attempts > self._retry_limit:
            isolation.degraded = True
            outcome, message = "degraded", "undone cut left degraded, retry budget spent"
            detail = (
                f"{undone}; not applied again, because its {isolation.attempts} attempts "
                f"spent the retry budget: find and stop that writer, then isolate again"
            )
        else:
            isolation.retry_at = self._clock.monotonic()
            outcome, message = "reapplied", "undone cut will be applied again"
            detail = (
                f"{undone}; applying it again, attempt {isolation.attempts + 1} of "
                f"{self._retry_limit + 1}"
            )
        logger.warning(
            message,
            extra={"target": isolation.name, "writer": writer, "attempts": isolation.attempts},
        )
        isolation.detail = detail
        self._metrics.cut_drift.labels(isolation.kind.value, outcome).inc()
        return Undone(isolation, drift, outcome, detail)
