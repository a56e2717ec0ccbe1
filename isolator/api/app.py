"""The isolator's HTTP API: heartbeats, the Alertmanager webhook, the read endpoints and the
manual API, each behind a bearer token of the role it needs (see ``auth``)."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from isolator.api.auth import READERS, Authenticator, Caller, Role, require
from isolator.api.manual import create_router
from isolator.api.schemas import AlertmanagerWebhook, Heartbeat, error_responses
from isolator.api.tokenreview import TokenReviewer
from isolator.api.views import node_view, region_view, status_view
from isolator.clock import Clock
from isolator.engine.alerts import AlertOutcome, IncomingAlert
from isolator.engine.evidence import HeartbeatOutcome
from isolator.engine.loop import Controller
from isolator.engine.manual import ManualActions
from isolator.logs import truncate
from isolator.metrics import Metrics
from isolator.model import INGRESS_COMPONENT
from isolator.sources.leader import LeaderElector

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20


def _field_errors(err: RequestValidationError) -> list[dict[str, str]]:
    fields = []
    for item in err.errors():
        location = [str(part) for part in item.get("loc", ()) if part != "body"]
        fields.append({"field": ".".join(location) or "body", "problem": str(item.get("msg"))})
    return fields


class BodySizeLimit:
    """Middleware that rejects with 413 a request whose Content-Length is not a number or
    exceeds MAX_BODY_BYTES.

    It is plain ASGI on purpose. Starlette's ``@app.middleware("http")`` runs every request
    through a task group and memory streams, which took about 0.3 ms of CPU per heartbeat
    against 0.1 ms for all the rest of the app (measured in-process with starlette 1.10).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = Headers(scope=scope).get("content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
                response = JSONResponse(
                    {"error": f"request body larger than {MAX_BODY_BYTES} bytes"}, status_code=413
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    controller: Controller,
    metrics: Metrics,
    clock: Clock,
    elector: LeaderElector | None = None,
    token_reviewer: TokenReviewer | None = None,
) -> FastAPI:
    """Build the API around a running controller, and its leader elector if there is one.

    ``token_reviewer`` is required when the settings turn on ``auth_token_review``. Raises
    TokenFileError when the settings name a token file that cannot be loaded.
    """
    # The generated documentation pages would be the only endpoints without a token.
    app = FastAPI(
        title="isolator",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        responses=error_responses(400, 401, 403, 413, 422),
    )
    ledger = controller.alerts
    settings = controller.settings
    app.state.authenticator = Authenticator.from_settings(settings, token_reviewer, clock, metrics)
    app.state.manual = ManualActions(controller, clock)
    app.state.elector = elector
    readers = [Depends(require(*READERS))]

    app.add_middleware(BodySizeLimit)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, err: RequestValidationError) -> JSONResponse:
        fields = _field_errors(err)
        body = err.body if isinstance(err.body, str | bytes) else repr(err.body)
        logger.warning(
            "request rejected",
            extra={"path": request.url.path, "fields": fields, "body": truncate(body)},
        )
        if request.url.path == "/v1/heartbeats":
            metrics.heartbeats_rejected.labels("invalid").inc()
        return JSONResponse({"error": "invalid request", "fields": fields}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        if err.status_code < 500:
            logger.warning(
                "request rejected",
                extra={"path": request.url.path, "status": err.status_code, "error": err.detail},
            )
        return JSONResponse(
            {"error": str(err.detail)}, status_code=err.status_code, headers=err.headers
        )

    @app.post("/v1/heartbeats", responses=error_responses(404))
    async def receive_heartbeat(
        beat: Heartbeat, caller: Annotated[Caller, Depends(require(Role.AGENT))]
    ) -> JSONResponse:
        if caller.role is Role.AGENT and caller.node != beat.node:
            # An agent's token is good for its own node only, so a leaked token cannot keep
            # another node looking alive.
            metrics.heartbeats_rejected.labels("forbidden").inc()
            message = f"{caller.name} may send heartbeats for node {caller.node!r} only"
            logger.warning(
                "request rejected",
                extra={"path": "/v1/heartbeats", "status": 403, "caller": caller.name},
            )
            return JSONResponse({"error": message, "field": "node"}, status_code=403)
        health = dict(beat.components)
        if beat.ingress_ok is not None:
            health[INGRESS_COMPONENT] = beat.ingress_ok
        outcome = controller.store.record_heartbeat(
            beat.node,
            beat.region,
            beat.seq,
            beat.sent_at,
            clock.monotonic(),
            clock.wall(),
            components=health,
        )
        if outcome is HeartbeatOutcome.UNKNOWN_NODE:
            metrics.heartbeats_rejected.labels("unknown_node").inc()
            message = f"node {beat.node!r} is not an edge node with a region label"
            return JSONResponse({"error": message, "field": "node"}, status_code=404)
        if outcome is HeartbeatOutcome.WRONG_REGION:
            metrics.heartbeats_rejected.labels("wrong_region").inc()
            expected = controller.store.nodes[beat.node].region
            message = f"node {beat.node!r} is in region {expected!r}, not {beat.region!r}"
            return JSONResponse({"error": message, "field": "region"}, status_code=422)
        if outcome is HeartbeatOutcome.ACCEPTED:
            metrics.heartbeats.inc()
        return JSONResponse({"outcome": outcome.value})

    @app.post("/v1/alerts/webhook", dependencies=[Depends(require(Role.ALERTMANAGER))])
    async def receive_alerts(notification: AlertmanagerWebhook) -> dict[str, Any]:
        outcomes: Counter[str] = Counter()
        unmapped = []
        for alert in notification.alerts:
            outcome = ledger.record(
                IncomingAlert(
                    fingerprint=alert.fingerprint,
                    starts_at=alert.startsAt,
                    firing=alert.status == "firing",
                    alertname=alert.labels.get("alertname", ""),
                    node=alert.labels.get("node"),
                )
            )
            outcomes[outcome.value] += 1
            metrics.webhook_alerts.labels(outcome.value).inc()
            if outcome is AlertOutcome.UNMAPPED and "node" in alert.labels:
                unmapped.append(truncate(alert.labels["node"], 64))
        reread = None
        if notification.truncatedAlerts:
            # The notification holds only part of its group, so its alerts and labels do not
            # describe the scope: read every active alert from Alertmanager instead.
            reread = "scheduled" if controller.request_alert_reread() else "unavailable"
            logger.warning(
                "notification truncated",
                extra={
                    "truncated": notification.truncatedAlerts,
                    "group": truncate(notification.groupKey, 128),
                    "reread": reread,
                },
            )
        return {"alerts": dict(outcomes), "unmapped_nodes": unmapped, "reread": reread}

    @app.get("/v1/status", dependencies=readers)
    async def read_status() -> dict[str, Any]:
        return status_view(controller)

    @app.get("/v1/nodes", dependencies=readers)
    async def list_nodes() -> list[dict[str, Any]]:
        return [node_view(controller, name, clock) for name in sorted(controller.store.nodes)]

    @app.get("/v1/nodes/{name}", dependencies=readers, responses=error_responses(404))
    async def read_node(name: str) -> Any:
        if name not in controller.store.nodes:
            return JSONResponse({"error": f"node {name!r} not found"}, status_code=404)
        return node_view(controller, name, clock)

    @app.get("/v1/regions", dependencies=readers)
    async def list_regions() -> list[dict[str, Any]]:
        return [region_view(controller, name) for name in sorted(controller.store.regions)]

    @app.get("/v1/audit", dependencies=readers)
    async def list_audit() -> list[dict[str, Any]]:
        return list(controller.audit)

    # /healthz and /readyz need no token: a probe carries none, and they reveal nothing
    # beyond whether the control loop runs and which replica leads.
    def loop_running() -> bool:
        last = controller.state.last_pass_at
        stale_after = max(5 * settings.loop_interval_s, 5.0)
        return last is not None and clock.monotonic() - last <= stale_after

    loop_stopped: dict[int | str, dict[str, Any]] = {
        503: {"description": "The control loop made no pass recently."}
    }

    @app.get("/healthz", responses=loop_stopped)
    async def healthz() -> JSONResponse:
        if not loop_running():
            return JSONResponse({"status": "control loop not running"}, status_code=503)
        return JSONResponse({"status": "ok"})

    # A follower is ready too: it serves the read API, and a readiness that only the leader
    # passed would stall every rolling update. The isolator Service reaches the leader alone
    # through the isolator.io/leader Pod label.
    @app.get("/readyz", responses=loop_stopped)
    async def readyz() -> JSONResponse:
        running = loop_running()
        body = {
            "status": "ok" if running else "control loop not running",
            "leader": controller.acting,
            "identity": None if elector is None else elector.identity,
            "leader_identity": None if elector is None else elector.leader_identity,
        }
        return JSONResponse(body, status_code=200 if running else 503)

    @app.get("/metrics", dependencies=readers, response_class=PlainTextResponse)
    async def read_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(create_router(controller, clock, elector))
    return app
