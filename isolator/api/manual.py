"""The manual API: list isolations, and isolate or restore a node, a Pod or a region by hand.

| method and path | role | purpose |
|---|---|---|
| ``GET /v1/isolations`` | viewer, operator | every isolation: who, why, when, expiry |
| ``POST /v1/isolations/nodes/{node}`` | operator | cut a node's Pods |
| ``POST /v1/isolations/pods/{namespace}/{name}`` | operator | cut one Pod |
| ``POST /v1/isolations/regions/{region}`` | operator | split horizon for a region |
| ``POST .../restore`` on each of the three | operator | end the isolation |

An action returns 200 when reading back confirmed it (or for a dry run), 202 when it was
written but not yet confirmed (the control loop tries the cut again), 404 for an unknown
target, 409 when the cut would leave a Service under its minimum of ready endpoints and the
body does not set ``force``, 422 for an invalid body, 502 when Kubernetes failed the request,
and 503 on a replica that is not the leader, with the leader's identity in the body.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from isolator.api.auth import READERS, Caller, Role, require
from isolator.api.schemas import NODE_NAME_PATTERN, error_responses
from isolator.clock import Clock
from isolator.engine.loop import Controller, Isolation
from isolator.engine.manual import (
    BelowMinReadyError,
    InvalidManualRequestError,
    ManualActions,
    ManualOutcome,
    ManualRequest,
    NotIsolatedError,
    TargetNotFoundError,
)
from isolator.engine.ports import CutScope, TargetKind
from isolator.sources.leader import LeaderElector

# A namespace is an RFC 1123 label; a Pod name is an RFC 1123 subdomain.
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"

NodePath = Annotated[str, Path(min_length=1, max_length=253, pattern=NODE_NAME_PATTERN)]
NamespacePath = Annotated[str, Path(min_length=1, max_length=63, pattern=NAMESPACE_PATTERN)]
PodPath = Annotated[str, Path(min_length=1, max_length=253, pattern=NODE_NAME_PATTERN)]
RegionPath = Annotated[str, Path(min_length=1, max_length=63)]

STATUS_BY_RESULT = {"verified": 200, "dry_run": 200, "unverified": 202, "error": 502}
ACTION_RESPONSES = {
    202: {"description": "Written but not yet confirmed by reading back; the loop tries again."},
    **error_responses(404, 409, 502, 503),
}

# Module level, so that FastAPI resolves the handlers' string annotations that name it.
operator = require(Role.OPERATOR)


class RestoreRequest(BaseModel):
    """Body of a manual restore."""

    # Strict, so that "false" or 0 is not read as a boolean such as dry_run or force.
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: str = Field(min_length=1, max_length=500, description="Why, for the audit.")
    dry_run: bool = Field(False, description="Plan the action and write nothing.")


class IsolateRequest(RestoreRequest):
    """Body of a manual isolation."""

    ttl_s: float | None = Field(
        None,
        gt=0,
        description=(
            "Seconds until the isolation ends with a restore. Unset takes the default TTL "
            "(ISOLATOR_MANUAL_DEFAULT_TTL_S); at most ISOLATOR_MANUAL_MAX_TTL_S."
        ),
    )

    @field_validator("ttl_s")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number of seconds")
        return value


class CutRequest(IsolateRequest):
    """Body of a manual isolation that takes endpoints out: of a node or of a Pod."""

    force: bool = Field(
        False,
        description=(
            "Cut even when a Service would keep fewer ready endpoints than its minimum "
            "(ISOLATOR_MIN_READY_ENDPOINTS or its isolator.io/min-ready-endpoints annotation). "
            "The audit records the override."
        ),
    )


class NodeIsolateRequest(CutRequest):
    """Body of a manual isolation of a node."""

    scope: Literal["node", "component", "ingress"] = Field(
        "node",
        description=(
            "node: Ready and the serving gate False on every Pod; component: the serving gate "
            "False (the live kubelet recomputes Ready); ingress: the ingress-controller Pods."
        ),
    )


def isolation_view(isolation: Isolation, wall_now: float) -> dict[str, Any]:
    """Return one isolation for people: what, who, why, since when and until when."""
    expires_in = None if isolation.expires_at is None else isolation.expires_at - wall_now
    return {
        "kind": isolation.kind.value,
        "target": isolation.name,
        "node": isolation.node,
        "region": isolation.region,
        "manual": isolation.who is not None,
        "who": isolation.who or "isolator",
        "reason": isolation.reason,
        "incident": isolation.incident,
        "started_at": isolation.started_at,
        "expires_at": isolation.expires_at,
        "expires_in_s": None if expires_in is None else round(max(expires_in, 0.0), 3),
        "scope": isolation.scope,
        "verified": isolation.verified,
        "detail": isolation.detail,
        "objects": list(isolation.pods),
        "attempts": isolation.attempts,
        "drifts": isolation.drifts,
        "degraded": isolation.degraded,
        "dry_run": isolation.dry_run,
    }


def listed(isolation: Isolation) -> bool:
    """Tell whether an isolation is listed: an automatic split that moved no Ingress, because
    the region has none, isolates nothing and is left out."""
    return not (
        isolation.kind is TargetKind.REGION
        and isolation.who is None
        and isolation.verified
        and not isolation.pods
    )


def _actions(request: Request) -> ManualActions:
    actions: ManualActions = request.app.state.manual
    return actions


def _answer(outcome: ManualOutcome, clock: Clock) -> JSONResponse:
    isolation = outcome.isolation
    body = {
        "result": outcome.result,
        "detail": outcome.detail,
        "isolation": None if isolation is None else isolation_view(isolation, clock.wall()),
    }
    return JSONResponse(body, status_code=STATUS_BY_RESULT[outcome.result])


def _request(caller: Caller, body: RestoreRequest, ttl_s: float | None = None) -> ManualRequest:
    force = isinstance(body, CutRequest) and body.force
    return ManualRequest(
        who=caller.name, reason=body.reason, ttl_s=ttl_s, dry_run=body.dry_run, force=force
    )


def create_router(
    controller: Controller, clock: Clock, elector: LeaderElector | None = None
) -> APIRouter:
    """Build the router of the manual API around a running controller."""
    router = APIRouter(prefix="/v1/isolations")

    async def run(action: Any) -> JSONResponse:
        if not controller.acting:
            action.close()  # the coroutine never started, so closing it writes nothing
            leader = None if elector is None else elector.leader_identity
            message = "this replica is not the leader; send the request to the leader"
            return JSONResponse({"error": message, "leader": leader}, status_code=503)
        try:
            outcome = await action
        except (TargetNotFoundError, NotIsolatedError) as err:
            return JSONResponse({"error": str(err)}, status_code=404)
        except BelowMinReadyError as err:
            return JSONResponse({"error": str(err)}, status_code=409)
        except InvalidManualRequestError as err:
            return JSONResponse({"error": str(err)}, status_code=422)
        return _answer(outcome, clock)

    @router.get("", dependencies=[Depends(require(*READERS))])
    async def list_isolations() -> list[dict[str, Any]]:
        wall = clock.wall()
        return [isolation_view(i, wall) for i in controller.all_isolations() if listed(i)]

    @router.post("/nodes/{node}", responses=ACTION_RESPONSES)
    async def isolate_node(
        node: NodePath,
        body: NodeIsolateRequest,
        caller: Annotated[Caller, Depends(operator)],
        actions: Annotated[ManualActions, Depends(_actions)],
    ) -> JSONResponse:
        request = _request(caller, body, body.ttl_s)
        return await run(actions.isolate_node(node, request, CutScope(body.scope)))

    @router.post("/nodes/{node}/restore", responses=ACTION_RESPONSES)
    async def restore_node(
        node: NodePath,
        body: RestoreRequest,
        caller: Annotated[Caller, Depends(operator)],
        actions: Annotated[ManualActions, Depends(_actions)],
    ) -> JSONResponse:
        return await run(actions.restore(TargetKind.NODE, node, _request(caller, body)))

    @router.post("/pods/{namespace}/{name}", responses=ACTION_RESPONSES)
    async def isolate_pod(
        namespace: NamespacePath,
        name: PodPath,
        body: CutRequest,
        caller: Annotated[Caller, Depends(operator)],
        actions: Annotated[ManualActions, Depends(_actions)],
    ) -> JSONResponse:
        request = _request(caller, body, body.ttl_s)
        return await run(actions.isolate_pod(f"{namespace}/{name}", request))

    @router.post("/pods/{namespace}/{name}/restore", responses=ACTION_RESPONSES)
    async def restore_pod(
        namespace: NamespacePath,
        name: PodPath,
        body: RestoreRequest,
        caller: Annotated[Caller, Depends(operator)],
        actions: Annotated[ManualActions, Depends(_actions)],
    ) -> JSONResponse:
        pod = f"{namespace}/{name}"
        return await run(actions.restore(TargetKind.POD, pod, _request(caller, body)))

    @router.post("/regions/{region}", responses=ACTION_RESPONSES)
    async def isolate_region(
        region: RegionPath,
        body: IsolateRequest,
        caller: Annotated[Caller, Depends(operator)],
        actions: Annotated[ManualActions, Depends(_actions)],
    ) -> JSONResponse:
        request = _request(caller, body, body.ttl_s)
        return await run(actions.isolate_region(region, request))

    @router.post("/regions/{region}/restore", responses=ACTION_RESPONSES)
    async def restore_region(
        region: RegionPath,
        body: RestoreRequest,
        caller: Annotated[Caller, Depends(operator)],
        actions: Annotated[ManualActions, Depends(_actions)],
    ) -> JSONResponse:
        return await run(actions.restore(TargetKind.REGION, region, _request(caller, body)))

    return router
