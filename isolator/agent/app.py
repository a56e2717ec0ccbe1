"""The node agent: heartbeats to the isolator, answers its probes, and serves /metrics.

The agent runs on every edge node. Its edge Prometheus scrapes ``/metrics`` from inside the
site, so the isolator can tell "the node is down" from "the cloud cannot hear the node".
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import aiohttp
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from isolator.agent.checks import CheckResult, check_components, check_url
from isolator.clock import Clock, SystemClock
from isolator.logs import truncate
from isolator.settings import AgentSettings
from isolator.tls import CertificateReloader

logger = logging.getLogger(__name__)


class AgentMetrics:
    """The agent's own metrics, named ``isolator_agent_<name>``."""

    def __init__(self, settings: AgentSettings) -> None:
        self.registry = CollectorRegistry()
        self.info = Gauge(
            "isolator_agent_info",
            "Always 1; carries the node and region the agent reports for.",
            ["node", "region"],
            registry=self.registry,
        )
        self.info.labels(settings.node, settings.region).set(1)
        self.heartbeats = Counter(
            "isolator_agent_heartbeats_total",
            "Heartbeats sent to the isolator, by result.",
            ["result"],
            registry=self.registry,
        )
        for result in ("ok", "rejected", "error"):
            self.heartbeats.labels(result)
        self.probes = Counter(
            "isolator_agent_probes_total", "Probes answered.", registry=self.registry
        )
        self.component_up = Gauge(
            "isolator_agent_component_up",
            "1 while the component's health endpoint answers 2xx, 0 when it does not.",
            ["component"],
            registry=self.registry,
        )
        self.ingress_up = Gauge(
            "isolator_agent_ingress_check_up",
            "1 while a request through the node's ingress succeeds, 0 when it fails.",
            registry=self.registry,
        )
        self.tls_reloads = Counter(
            "isolator_agent_tls_reloads_total",
            "Attempts to load changed certificate, key or CA files, by TLS context (serving, "
            "heartbeat) and result (ok, or error when the previous files stay in use).",
            ["context", "result"],
            registry=self.registry,
        )
        for context in ("serving", "heartbeat"):
            for result in ("ok", "error"):
                self.tls_reloads.labels(context, result)
        self.ingress_seconds = Gauge(
            "isolator_agent_ingress_check_duration_seconds",
            "Duration of the latest request through the node's ingress.",
            registry=self.registry,
        )


class TokenFile:
    """The agent's API token, read again whenever its file changes.

    The kubelet rotates a projected ServiceAccount token before it expires by swapping the
    files behind the path, so a stat before each heartbeat picks up the new token without a
    rejected heartbeat. A token that cannot be read is logged and heartbeats go without it:
    the isolator then rejects them with 401, which shows on the heartbeat metric and in the
    log.
    """

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._signature: tuple[int, int, int, int] | None = None
        self._token: str | None = None
        self._unreadable = False

    def current(self) -> str | None:
        """Return the token in the file, reading it only when the file has changed."""
        if self._path is None:
            return None
        try:
            info = os.stat(self._path)
            signature = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
            if signature != self._signature:
                with open(self._path, encoding="utf-8") as file:
                    self._token = file.read().strip() or None
                self._signature = signature
        except OSError as err:
            # Logged when the file turns unreadable, not on every heartbeat after that.
            if not self._unreadable:
                logger.error(
                    "API token file unreadable", extra={"path": self._path, "error": str(err)}
                )
            self._unreadable = True
            self._signature = None
            self._token = None
            return None
        self._unreadable = False
        return self._token


class Agent:
    """Sends heartbeats on a fixed period and serves the probe and metrics endpoints."""

    def __init__(self, settings: AgentSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.metrics = AgentMetrics(settings)
        self.seq = 0
        self._clock = clock or SystemClock()
        self._last_result = ""
        self.components: dict[str, CheckResult] = {}
        self.ingress: CheckResult | None = None
        self._token = TokenFile(settings.token_file)
        self._isolator_ssl = settings.isolator_ssl_context()
        self._serving_ssl = settings.serving_ssl_context()
        self.tls_reloaders = self._tls_reloaders()

    def _tls_reloaders(self) -> list[CertificateReloader]:
        """Build a reloader for each TLS context with files, none when the interval is 0."""
        settings = self.settings
        if settings.tls_reload_interval_s == 0:
            return []
        reloaders = []
        if self._serving_ssl is not None and settings.tls_cert_file and settings.tls_key_file:
            reloader = CertificateReloader(
                self._serving_ssl,
                "serving",
                cert=(settings.tls_cert_file, "ISOLATOR_AGENT_TLS_CERT_FILE"),
                key=(settings.tls_key_file, "ISOLATOR_AGENT_TLS_KEY_FILE"),
                count=lambda result: self.metrics.tls_reloads.labels("serving", result).inc(),
            )
            reloaders.append(reloader)
        cert = key = ca = None
        if settings.isolator_client_cert_file and settings.isolator_client_key_file:
            cert = (settings.isolator_client_cert_file, "ISOLATOR_AGENT_ISOLATOR_CLIENT_CERT_FILE")
            key = (settings.isolator_client_key_file, "ISOLATOR_AGENT_ISOLATOR_CLIENT_KEY_FILE")
        if settings.isolator_ca_file is not None:
            ca = (settings.isolator_ca_file, "ISOLATOR_AGENT_ISOLATOR_CA_FILE")
        if self._isolator_ssl is not None and (cert is not None or ca is not None):
            reloader = CertificateReloader(
                self._isolator_ssl,
                "heartbeat",
                cert=cert,
                key=key,
                ca=ca,
                count=lambda result: self.metrics.tls_reloads.labels("heartbeat", result).inc(),
            )
            reloaders.append(reloader)
        return reloaders

    def _headers(self) -> dict[str, str]:
        token = self._token.current()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def web_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/probe", self._probe)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        return app

    async def start_server(self) -> web.AppRunner:
        """Serve the web app on the listen address, over TLS when the settings give a certificate.

        The caller cleans the returned runner up.
        """
        runner = web.AppRunner(self.web_app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(
            runner,
            self.settings.listen_host,
            self.settings.listen_port,
            ssl_context=self._serving_ssl,
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        return runner

    async def reload_certificates(self) -> None:
        """Load changed TLS files every reload interval until cancelled."""
        interval_s = self.settings.tls_reload_interval_s
        async with asyncio.TaskGroup() as group:
            for reloader in self.tls_reloaders:
                group.create_task(reloader.run(self._clock, interval_s))

    async def _probe(self, _: web.Request) -> web.Response:
        self.metrics.probes.inc()
        body = {"node": self.settings.node, "region": self.settings.region, "seq": self.seq}
        return web.json_response(body)

    async def _metrics(self, _: web.Request) -> web.Response:
        output = generate_latest(self.metrics.registry)
        return web.Response(body=output, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def run_checks(self) -> None:
        """Check components and the ingress path once per heartbeat interval until cancelled."""
        if not self.settings.components and self.settings.ingress_check_url is None:
            return
        timeout = aiohttp.ClientTimeout(total=self.settings.check_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                started = self._clock.monotonic()
                await self.check_once(session)
                elapsed = self._clock.monotonic() - started
                await self._clock.sleep(self.settings.heartbeat_interval_s - elapsed)

    async def check_once(self, session: aiohttp.ClientSession) -> None:
        """Run every configured check once and publish the results."""
        self.components = await check_components(session, self.settings.components)
        for name, result in self.components.items():
            self.metrics.component_up.labels(name).set(int(result.ok))
        if self.settings.ingress_check_url is not None:
            self.ingress = await check_url(session, self.settings.ingress_check_url)
            self.metrics.ingress_up.set(int(self.ingress.ok))
            self.metrics.ingress_seconds.set(self.ingress.duration_s)

    def isolator_session(self) -> aiohttp.ClientSession:
        """Open the session for heartbeats, with TLS from the settings when the URL is https."""
        timeout = aiohttp.ClientTimeout(total=self.settings.heartbeat_timeout_s)
        connector = None
        if self._isolator_ssl is not None:
            connector = aiohttp.TCPConnector(ssl=self._isolator_ssl)
        return aiohttp.ClientSession(timeout=timeout, connector=connector)

    async def send_heartbeats(self) -> None:
        """Send one heartbeat per interval until cancelled; failures are logged and counted."""
        url = f"{self.settings.isolator_url.rstrip('/')}/v1/heartbeats"
        async with self.isolator_session() as session:
            while True:
                started = self._clock.monotonic()
                await self.send_one(session, url)
                elapsed = self._clock.monotonic() - started
                await self._clock.sleep(self.settings.heartbeat_interval_s - elapsed)

    async def send_one(self, session: aiohttp.ClientSession, url: str) -> None:
        """Send the next heartbeat; the sequence number advances whatever the result."""
        body = {
            "node": self.settings.node,
            "region": self.settings.region,
            "seq": self.seq,
            "sent_at": time.time(),
            "components": {name: result.ok for name, result in self.components.items()},
            "ingress_ok": None if self.ingress is None else self.ingress.ok,
        }
        self.seq += 1
        try:
            async with session.post(url, json=body, headers=self._headers()) as response:
                if response.status < 300:
                    self._note("ok")
                    return
                text = await response.text()
                self._note("rejected", status=response.status, body=truncate(text))
        except aiohttp.ClientConnectorCertificateError as err:
            # The next heartbeat fails alike until the files change, so the log names them.
            self._note(
                "error",
                error=str(err.certificate_error),
                hint=(
                    "the isolator's TLS certificate failed verification; check "
                    "ISOLATOR_AGENT_ISOLATOR_CA_FILE and the host in ISOLATOR_AGENT_ISOLATOR_URL"
                ),
            )
        except (aiohttp.ClientError, TimeoutError) as err:
            self._note("error", error=repr(err))

    def _note(self, result: str, **fields: object) -> None:
        """Count a result, and log only when the result changes, so an outage logs once."""
        self.metrics.heartbeats.labels(result).inc()
        if result != self._last_result:
            level = logging.INFO if result == "ok" else logging.WARNING
            logger.log(level, "heartbeat result changed", extra={"result": result, **fields})
            self._last_result = result


async def run_agent(settings: AgentSettings) -> None:
    """Serve the agent's endpoints and send heartbeats until cancelled."""
    agent = Agent(settings)
    runner = await agent.start_server()
    logger.info(
        "agent started",
        extra={
            "node": settings.node,
            "region": settings.region,
            "port": settings.listen_port,
            "tls": settings.tls_cert_file is not None,
            "isolator_tls": settings.isolator_https,
        },
    )
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(agent.run_checks())
            group.create_task(agent.send_heartbeats())
            group.create_task(agent.reload_certificates())
    finally:
        await runner.cleanup()
