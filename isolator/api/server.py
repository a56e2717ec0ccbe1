"""Assembles the isolator service: adapters, controller and API, under one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from functools import partial
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from isolator.api.app import create_app
from isolator.clock import SystemClock
from isolator.engine.grey import GreyScorer
from isolator.engine.loop import Controller
from isolator.learning import DEFAULT_MODEL_PATH, GreyFailureModel
from isolator.metrics import Metrics
from isolator.settings import Settings
from isolator.sources.agents import AgentProber
from isolator.sources.alertmanager import AlertmanagerSource
from isolator.sources.kubernetes import KubernetesSource
from isolator.sources.kubernetes.tokenreview import KubernetesTokenReviewer
from isolator.sources.leader import LeaderElector
from isolator.sources.prometheus import PrometheusSource
from isolator.tls import CertificateReloader

logger = logging.getLogger(__name__)


async def run_service(settings: Settings) -> None:
    """Run the control loop and the API until the process is stopped."""
    clock = SystemClock()
    metrics = Metrics()
    cluster = await KubernetesSource.create(
        settings.kubeconfig,
        agent_port=settings.agent_port,
        agent_scheme="https" if settings.probe_ca_file is not None else "http",
        dry_run=settings.dry_run,
        verify_timeout_s=settings.verify_timeout_s,
    )
    prometheus = PrometheusSource(
        settings.prometheus_url,
        timeout_s=settings.prometheus_timeout_s,
        agent_job=settings.agent_job,
        federation_job=settings.federation_job,
        kubelet_job=settings.kubelet_job,
        metrics=metrics,
        clock=clock,
    )
    probe_ssl = settings.probe_ssl_context()
    prober = AgentProber(
        timeout_s=settings.probe_timeout_s,
        ssl_context=probe_ssl,
        server_name=settings.probe_tls_server_name,
    )
    alerts = (
        AlertmanagerSource(settings.alertmanager_url, timeout_s=settings.prometheus_timeout_s)
        if settings.alertmanager_url
        else None
    )
    grey = None
    if settings.grey_scoring:
        model_path = Path(settings.grey_model_path) if settings.grey_model_path else None
        grey = GreyScorer(GreyFailureModel.load(model_path or DEFAULT_MODEL_PATH))
    elector = None
    if settings.leader_election:
        elector = await LeaderElector.create(
            settings.kubeconfig,
            settings.leader_election_namespace,
            settings.leader_election_lease_name,
            settings.leader_election_identity,
            clock,
            lease_duration_s=settings.leader_election_lease_duration_s,
            renew_deadline_s=settings.leader_election_renew_deadline_s,
            retry_period_s=settings.leader_election_retry_period_s,
            pod_name=settings.leader_election_pod_name,
        )
    controller = Controller(
        settings,
        cluster,
        prometheus,
        prober,
        metrics,
        clock,
        alert_reader=alerts,
        grey_scorer=grey,
        leading=None if elector is None else (lambda: elector.is_leader),
    )
    if elector is not None:
        elector.on_change = partial(_leadership_changed, controller)
    reviewer = None
    if settings.auth_token_review:
        reviewer = await KubernetesTokenReviewer.create(
            settings.kubeconfig,
            audiences=settings.auth_token_review_audiences,
            request_timeout_s=settings.auth_token_review_timeout_s,
        )
    app = create_app(controller, metrics, clock, elector, reviewer)
    config = api_server_config(app, settings)
    # Loaded here instead of in serve(), so that the reloader gets uvicorn's SSLContext.
    config.load()
    server = uvicorn.Server(config)
    reloaders = tls_reloaders(settings, config.ssl, probe_ssl, metrics)
    logger.info(
        "isolator started",
        extra={
            "port": settings.listen_port,
            "tls": settings.tls_cert_file is not None,
            "mutual_tls": settings.tls_client_ca_file is not None,
            "token_review": settings.auth_token_review,
            "probe_tls": settings.probe_ca_file is not None,
            "tls_reload_interval_s": settings.tls_reload_interval_s if reloaders else None,
            "dry_run": settings.dry_run,
            "identity": None if elector is None else elector.identity,
        },
    )
    tasks = [asyncio.create_task(controller.run(), name="control-loop")]
    if elector is not None:
        tasks.append(asyncio.create_task(elector.run(), name="leader-election"))
    for reloader in reloaders:
        run = reloader.run(clock, settings.tls_reload_interval_s)
        tasks.append(asyncio.create_task(run, name=f"tls-reload-{reloader.name}"))
    # The API without its control loop would report stale verdicts, and without its elector
    # it could never act again, so it stops with either. A reloader ends only through a bug,
    # and stopping then beats serving a certificate until it expires.
    for task in tasks:
        task.add_done_callback(lambda _: setattr(server, "should_exit", True))
    try:
        await server.serve()
    finally:
        # The control loop stops first, so that nothing acts after the Lease is released.
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if elector is not None:
            await elector.close()
        await prober.close()
        if reviewer is not None:
            await reviewer.close()
        prometheus.close()
        await cluster.close()
        logger.info("isolator stopped")


def api_server_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    """Build the uvicorn configuration of the API: plain HTTP, or TLS from the settings.

    The files were loaded once when the settings were validated, so uvicorn loading them again
    fails only if they changed in between.
    """
    client_ca = settings.tls_client_ca_file
    return uvicorn.Config(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        log_config=None,
        access_log=False,
        lifespan="off",
        ssl_certfile=settings.tls_cert_file,
        ssl_keyfile=settings.tls_key_file,
        ssl_ca_certs=client_ca,
        ssl_cert_reqs=ssl.CERT_NONE if client_ca is None else ssl.CERT_REQUIRED,
    )


def tls_reloaders(
    settings: Settings,
    api_ssl: ssl.SSLContext | None,
    probe_ssl: ssl.SSLContext | None,
    metrics: Metrics,
) -> list[CertificateReloader]:
    """Build a reloader for each TLS context that the settings give files for.

    ``api_ssl`` is uvicorn's context after ``Config.load()``, and ``probe_ssl`` the prober's.
    Returns an empty list when ``tls_reload_interval_s`` is 0.
    """
    if settings.tls_reload_interval_s == 0:
        return []
    reloaders = []
    if api_ssl is not None and settings.tls_cert_file and settings.tls_key_file:
        client_ca = None
        if settings.tls_client_ca_file is not None:
            client_ca = (settings.tls_client_ca_file, "ISOLATOR_TLS_CLIENT_CA_FILE")
        reloader = CertificateReloader(
            api_ssl,
            "api",
            cert=(settings.tls_cert_file, "ISOLATOR_TLS_CERT_FILE"),
            key=(settings.tls_key_file, "ISOLATOR_TLS_KEY_FILE"),
            ca=client_ca,
            count=lambda result: metrics.tls_reloads.labels("api", result).inc(),
        )
        reloaders.append(reloader)
    if probe_ssl is not None and settings.probe_ca_file is not None:
        reloader = CertificateReloader(
            probe_ssl,
            "probe",
            ca=(settings.probe_ca_file, "ISOLATOR_PROBE_CA_FILE"),
            count=lambda result: metrics.tls_reloads.labels("probe", result).inc(),
        )
        reloaders.append(reloader)
    return reloaders


def _leadership_changed(controller: Controller, leading: bool) -> None:
    # Losing the Lease stops every action at once, not at the next pass. Gaining it takes
    # effect at the next pass, which first recovers the recorded isolations.
    if not leading:
        controller.stand_down()
