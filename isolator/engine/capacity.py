"""Service capacity: the ready endpoints each Service keeps when nodes or Pods are cut.

A cut that would leave a Service with fewer ready endpoints than its minimum is held whole,
never done in part. A Service without a ready endpoint fails every request, while a failed
replica behind it fails only the requests routed to that replica, so failing open is the lesser
harm. Only the endpoints a cut really removes count: an ingress-scope cut removes the ingress
controller's Pods alone, and a Pod whose endpoint is already not ready removes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass

from isolator.engine.ports import CutScope, EndpointCensus
from isolator.model import MIN_READY_ANNOTATION

# The check names that hold reasons start with; the metrics label held cuts by them.
MIN_READY_CHECK = "min ready endpoints"
UNKNOWN_CHECK = "ready endpoints unknown"

# Services named in one hold reason before the rest are only counted.
MAX_NAMED_SERVICES = 3


@dataclass(frozen=True, slots=True)
class Shortfall:
    """A Service that a cut would leave under its minimum of ready endpoints."""

    service: str  # "namespace/name"
    left: int
    minimum: int
    from_annotation: bool

    def describe(self) -> str:
        source = MIN_READY_ANNOTATION if self.from_annotation else "ISOLATOR_MIN_READY_ENDPOINTS"
        return (
            f"Service {self.service} would keep {self.left} ready endpoints, "
            f"minimum {self.minimum} ({source})"
        )


class ServiceCapacity:
    """The ready endpoints of every Service, less those that cuts take out.

    Built once per pass from the latest census. Every cut that is in force, in flight or
    decided earlier in the same pass is subtracted, so a census read before those cuts still
    gives the right count. ``census`` None means the endpoints are unknown, and then every
    cut is held, with ``unknown_reason`` as the reason.
    """

    def __init__(
        self, census: EndpointCensus | None, default_min: int, unknown_reason: str = ""
    ) -> None:
        self._census = census
        self._default_min = default_min
        self._unknown_reason = unknown_reason or "the EndpointSlices were not read yet"
        self._removed: set[str] = set()
        self._ready_on: dict[str, set[str]] = {}  # node -> its Pods with a ready endpoint
        self._ingress: Set[str] = frozenset()
        if census is not None:
            self._ingress = census.ingress_pods
            for service in census.services:
                for pod, node in service.ready_pods.items():
                    self._ready_on.setdefault(node, set()).add(pod)

    @property
    def known(self) -> bool:
        return self._census is not None

    def removed_by(self, node: str, scope: CutScope) -> set[str]:
        """Return the Pods with a ready endpoint that a cut of ``node`` in ``scope`` takes out."""
        pods = self._ready_on.get(node, set())
        if scope is CutScope.INGRESS:
            return {pod for pod in pods if pod in self._ingress}
        return set(pods)

    def remove(self, pods: Iterable[str]) -> None:
        """Count ``pods`` as cut from now on."""
        self._removed.update(pods)

    def shortfalls(self, pods: Set[str]) -> list[Shortfall]:
        """Return the Services that cutting ``pods`` would leave under their minimum.

        A Service none of whose ready endpoints is among ``pods`` is never a shortfall, even
        when it is already under its minimum: the cut does not make it worse.
        """
        if self._census is None:
            return []
        found = []
        for service in self._census.services:
            ready = service.ready_pods.keys() - self._removed
            if ready.isdisjoint(pods):
                continue
            left = len(ready - pods) + service.other_ready
            overridden = service.min_ready is not None
            minimum = service.min_ready if service.min_ready is not None else self._default_min
            if left < minimum:
                found.append(Shortfall(service.service, left, minimum, overridden))
        return sorted(found, key=lambda shortfall: shortfall.service)

    def hold_reason(self, pods: Set[str]) -> str | None:
        """Return why a cut of ``pods`` must wait, or None when every Service keeps enough."""
        if self._census is None:
            return f"{UNKNOWN_CHECK}: {self._unknown_reason}"
        found = self.shortfalls(pods)
        if not found:
            return None
        return f"{MIN_READY_CHECK}: {describe(found)}"


def describe(shortfalls: list[Shortfall]) -> str:
    """Return one line that names the first few Services and counts the rest."""
    shown = "; ".join(s.describe() for s in shortfalls[:MAX_NAMED_SERVICES])
    rest = len(shortfalls) - MAX_NAMED_SERVICES
    return f"{shown}; and {rest} more Services" if rest > 0 else shown


@dataclass(slots=True)
class CensusCache:
    """The latest census of ready endpoints, when it was read and for which cut candidates.

    It is read only while a cut may follow, so a quiet estate costs no requests, and read again
    once it is ``max_age_s`` old or a new node became a candidate since the last read.
    """

    max_age_s: float
    census: EndpointCensus | None = None
    error: str = ""
    read_at: float | None = None  # monotonic start of the latest read
    read_for: frozenset[str] = frozenset()  # the cut candidates of that read

    def due(self, candidates: frozenset[str], now: float) -> bool:
        """Tell whether to read again for these cut candidates."""
        if not candidates:
            return False
        if self.read_at is None or now - self.read_at >= self.max_age_s:
            return True
        return not candidates <= self.read_for

    def started(self, candidates: frozenset[str], now: float) -> None:
        self.read_at, self.read_for = now, candidates

    def store(self, census: EndpointCensus) -> None:
        self.census, self.error = census, ""

    def fail(self, error: str) -> None:
        """Forget the census after a failed read; the next pass reads again."""
        self.census, self.error, self.read_at = None, error, None

    def capacity(self, default_min: int) -> ServiceCapacity:
        reason = f"the EndpointSlices could not be read: {self.error}" if self.error else ""
        return ServiceCapacity(self.census, default_min, reason)
