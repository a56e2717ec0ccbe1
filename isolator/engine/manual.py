"""Manual isolations: a person isolates or restores a node, a Pod or a region.

A manual isolation names who requested it and why, and ends at its TTL unless a person ends it
first. The control loop never restores it on its own; an expired TTL turns into a restore that
must read back verified. Manual actions skip the automatic safety checks and work in the global
fail-safe, because a person decides. The one exception is the minimum of ready endpoints per
Service: a cut that would leave a Service under it is rejected unless the request sets
``force``, and the audit records the override. A person restoring a node also holds automatic
cuts of that node for ``manual_restore_hold_s``, so the control loop does not undo that decision.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from dataclasses import dataclass

from isolator.clock import Clock
from isolator.engine.capacity import ServiceCapacity, describe
from isolator.engine.decide import widens
from isolator.engine.loop import Controller, Isolation, Outcome, target_key
from isolator.engine.ports import CutScope, TargetKind

logger = logging.getLogger(__name__)


class ManualError(Exception):
    """A manual request that cannot be carried out; the message gives the reason."""


class TargetNotFoundError(ManualError):
    """The node or region is not in the edge inventory."""


class NotIsolatedError(ManualError):
    """A restore names a target that has no isolation."""


class InvalidManualRequestError(ManualError):
    """A request for something the settings do not allow, such as a TTL too long."""


class BelowMinReadyError(ManualError):
    """The cut would leave a Service under its minimum of ready endpoints; ``force`` overrides."""


@dataclass(frozen=True, slots=True)
class ManualRequest:
    """The requester of a manual action, the reason, the TTL and whether only as a plan."""

    who: str
    reason: str
    ttl_s: float | None = None  # None: the default TTL from the settings
    dry_run: bool = False
    force: bool = False  # cut even below a Service's minimum of ready endpoints


@dataclass(frozen=True, slots=True)
class ManualOutcome:
    """Result of a manual action: verified, unverified, dry_run or error."""

    result: str
    detail: str
    isolation: Isolation | None  # the isolation after the action; None once it has ended


class ManualActions:
    """The manual isolate and restore operations on top of a running controller."""

    def __init__(self, controller: Controller, clock: Clock) -> None:
        self._controller = controller
        self._settings = controller.settings
        self._clock = clock

    def _expiry(self, ttl_s: float | None, wall_s: float) -> float | None:
        ttl = self._settings.manual_default_ttl_s if ttl_s is None else ttl_s
        if ttl > self._settings.manual_max_ttl_s:
            raise InvalidManualRequestError(
                f"ttl_s {ttl:g} exceeds the maximum of {self._settings.manual_max_ttl_s:g} s "
                "(ISOLATOR_MANUAL_MAX_TTL_S)"
            )
        return None if ttl == 0 else wall_s + ttl

    def _dry_run(self, request: ManualRequest) -> bool:
        return request.dry_run or self._settings.dry_run

    async def isolate_node(
        self, node: str, request: ManualRequest, scope: CutScope = CutScope.NODE
    ) -> ManualOutcome:
        """Cut the node's Pods in ``scope``; an existing cut of the node is taken over."""
        evidence = self._controller.store.nodes.get(node)
        if evidence is None:
            raise TargetNotFoundError(f"node {node!r} is not an edge node with a region label")
        fresh = self._new(TargetKind.NODE, node, evidence.region, request, scope=scope.value)
        return await self._isolate(fresh, request)

    async def isolate_pod(self, pod: str, request: ManualRequest) -> ManualOutcome:
        """Cut one Pod ("namespace/name"); a restore of its node leaves it cut."""
        return await self._isolate(self._new(TargetKind.POD, pod, "", request), request)

    async def isolate_region(self, region: str, request: ManualRequest) -> ManualOutcome:
        """Move the region's cloud-side Ingress routes to its fallback (split horizon)."""
        if region not in self._controller.store.regions:
            raise TargetNotFoundError(f"region {region!r} has no edge nodes")
        isolation = self._new(TargetKind.REGION, region, region, request, scope="split")
        return await self._isolate(isolation, request)

    async def restore(self, kind: TargetKind, name: str, request: ManualRequest) -> ManualOutcome:
        """End the isolation of a node, Pod or region, whether automatic or manual."""
        controller = self._controller

        async def act() -> ManualOutcome:
            isolation = self._table(kind).get(name)
            if isolation is None:
                raise NotIsolatedError(f"{kind.value} {name!r} is not isolated")
            if self._dry_run(request):
                planned = await controller.preview(
                    "restore", isolation, request.reason, request.who
                )
                return _outcome(planned, isolation, dry_run=True)
            logger.info(
                "manual restore requested",
                extra={"who": request.who, "kind": kind.value, "target": name},
            )
            outcome = await controller.release(isolation, request.reason, request.who)
            if kind is TargetKind.NODE and outcome is not None and outcome.verified:
                controller.hold_cuts(name)
            ended = name not in self._table(kind)
            remaining = None if ended else isolation
            return _outcome(outcome, remaining, dry_run=False, error=self._last_error(name))

        return await controller.run_keyed(target_key(kind, name), act)

    def _last_error(self, target: str) -> str:
        """Return the detail of the latest audit record about ``target``."""
        for record in reversed(self._controller.audit):
            if record.get("target") == target:
                return str(record.get("detail", ""))
        return ""

    def _table(self, kind: TargetKind) -> dict[str, Isolation]:
        if kind is TargetKind.NODE:
            return self._controller.isolations
        if kind is TargetKind.POD:
            return self._controller.pod_isolations
        return self._controller.splits

    def _new(
        self, kind: TargetKind, name: str, region: str, request: ManualRequest, scope: str = "node"
    ) -> Isolation:
        wall = self._clock.wall()
        return Isolation(
            node=name if kind is TargetKind.NODE else "",
            region=region,
            incident=uuid.uuid4().hex[:12],
            reason=request.reason,
            started_at=wall,
            dry_run=self._dry_run(request),
            kind=kind,
            target="" if kind is TargetKind.NODE else name,
            scope=scope,
            who=request.who,
            expires_at=self._expiry(request.ttl_s, wall),
        )

    async def _isolate(self, fresh: Isolation, request: ManualRequest) -> ManualOutcome:
        controller = self._controller

        async def act() -> ManualOutcome:
            existing = self._table(fresh.kind).get(fresh.name)
            isolation = fresh if existing is None else _taken_over(existing, fresh)
            override = await self._check_endpoints(isolation, request)
            if isolation.dry_run:
                planned = await controller.preview("cut", isolation, request.reason, request.who)
                return _outcome(planned, existing, dry_run=True)
            logger.info(
                "manual isolation requested",
                extra={"who": request.who, "kind": fresh.kind.value, "target": fresh.name},
            )
            if override:
                controller.record(
                    "override", isolation, request.reason, request.who, "forced", override
                )
            outcome = await controller.apply(isolation, new=existing is None)
            listed = self._table(fresh.kind).get(fresh.name)
            return _outcome(outcome, listed, dry_run=False, error=self._last_error(fresh.name))

        return await controller.run_keyed(fresh.key, act)

    async def _check_endpoints(self, isolation: Isolation, request: ManualRequest) -> str:
        """Reject a cut that would leave a Service under its minimum of ready endpoints, unless
        the request forces it. Return what a forced cut overrides, or "" when nothing.

        Endpoints that the isolation's earlier cut already took out do not count again.
        """
        if isolation.kind is TargetKind.REGION:
            return ""  # a split horizon moves cloud-side routes and takes out no endpoint
        capacity = await self._controller.read_service_capacity()
        pods = _pods_cut(capacity, isolation)
        if not capacity.known:
            problem = capacity.hold_reason(pods) or ""
        else:
            problem = describe(capacity.shortfalls(pods))
        if not problem:
            return ""
        if request.force:
            logger.warning(
                "manual isolation forced below the minimum of ready endpoints",
                extra={"who": request.who, "target": isolation.name, "detail": problem},
            )
            return problem
        raise BelowMinReadyError(
            f"{isolation.kind.value} {isolation.name} not isolated: {problem}. Send force: true "
            "to isolate it anyway."
        )


def _pods_cut(capacity: ServiceCapacity, isolation: Isolation) -> set[str]:
    """Return the Pods with a ready endpoint that the isolation's cut takes out."""
    if isolation.kind is TargetKind.POD:
        return {isolation.target}
    return capacity.removed_by(isolation.node, CutScope(isolation.scope))


def _taken_over(existing: Isolation, fresh: Isolation) -> Isolation:
    """Hand an existing isolation to the person: their name, reason and TTL, the wider scope.

    For a dry run a copy is changed, so the isolation in force stays as it is.
    """
    isolation = dataclasses.replace(existing, dry_run=True) if fresh.dry_run else existing
    isolation.who = fresh.who
    isolation.reason = fresh.reason
    isolation.expires_at = fresh.expires_at
    if isolation.kind is TargetKind.NODE and widens(isolation.scope, CutScope(fresh.scope)):
        isolation.scope = fresh.scope
    isolation.attempts = 0
    isolation.retry_at = 0.0
    return isolation


def _outcome(
    outcome: Outcome | None, isolation: Isolation | None, *, dry_run: bool, error: str = ""
) -> ManualOutcome:
    if outcome is None:
        return ManualOutcome("error", error or "the Kubernetes request failed", isolation)
    if dry_run:
        return ManualOutcome("dry_run", outcome.detail, isolation)
    result = "verified" if outcome.verified else "unverified"
    return ManualOutcome(result, outcome.detail, isolation)
