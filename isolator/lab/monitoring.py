"""Real monitoring for the lab: edge Prometheus per region, central Prometheus, Alertmanager.

Each edge Prometheus runs inside its region's namespace on <prometheus_ip>:9090 and scrapes that
region's agents. The central Prometheus runs in the root namespace, federates every edge
Prometheus and evaluates the rule files. Alertmanager sends every alert to the isolator's
webhook. Binaries are Debian's ``prometheus`` 2.42 and ``prometheus-alertmanager`` 0.25.

The config builders also produce the example configs in deploy/monitoring/ (``make generate``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yaml

from isolator.lab.netns import RegionNetwork
from isolator.lab.process import ManagedProcess, ProcessFailedError, log_tail

logger = logging.getLogger(__name__)

PROMETHEUS_BINARY = "prometheus"
ALERTMANAGER_BINARY = "prometheus-alertmanager"
EDGE_PORT = 9090
AGENT_JOB = "isolator-agent"
ISOLATOR_JOB = "isolator"  # the central's scrape of the isolator's own /metrics
FEDERATE_JOB = "federate"
KUBELET_JOB = "kubelet"
FEDERATE_MATCHERS = [
    f'{{job="{AGENT_JOB}"}}',
    f'{{job="{KUBELET_JOB}"}}',
    '{__name__=~"isolator_agent_.*"}',
]
WEBHOOK_RECEIVER = "isolator"
RULES_FILE = Path("alert_rules") / "isolator.rules.yml"  # generated, relative to the repository

# Attempts at starting a root-namespace server on a free port: another process can take the
# port between the probe that picked it and the server's bind.
_START_ATTEMPTS = 3


@dataclass
class MonitoringOptions:
    """Intervals and timeouts of the lab's monitoring, short so that tests stay fast."""

    scrape_interval_s: float = 1.0  # edge scrapes of agents
    scrape_timeout_s: float = 0.9  # must not exceed scrape_interval_s
    federation_interval_s: float = 1.0  # central scrapes of each edge /federate
    federation_timeout_s: float = 0.9  # must not exceed federation_interval_s
    evaluation_interval_s: float = 1.0  # rule evaluation on the central Prometheus
    rule_files: list[Path] = field(default_factory=list)  # loaded by the central Prometheus
    # --rules.alert.resend-delay of the central. Prometheus 2.42 drops the alerts of its first
    # evaluation when the notifier has not yet discovered the Alertmanager, and then waits this
    # long (default 1m) before sending them again. Firing alerts also carry
    # endsAt = now + 4 * max(resend delay, evaluation interval), so Alertmanager resolves them
    # that soon after the central stops.
    alert_resend_delay_s: float = 1.0
    retention: str = "1h"  # --storage.tsdb.retention.time of every Prometheus
    alert_group_by: list[str] = field(default_factory=lambda: ["alertname", "region"])
    group_wait_s: float = 1.0  # Alertmanager's wait before the first notification of a group
    group_interval_s: float = 1.0  # wait before notifying changes to a group
    repeat_interval_s: float = 60.0  # wait before resending an unchanged group
    ready_timeout_s: float = 30.0  # deadline for each server to return 200 on /-/ready
    # Whether the central also scrapes the isolator's /metrics, at the host and port of the
    # webhook URL: the isolator serves both on one listener.
    scrape_isolator: bool = False


def generated_rule_files(repo_root: Path) -> list[Path]:
    """Return the rule files that ``make generate`` writes, for the central Prometheus.

    Raises FileNotFoundError when they are missing: Prometheus would start without them and
    no alert would ever fire.
    """
    path = repo_root / RULES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"rule file {path} not found; run `make generate`")
    return [path]


def prometheus_duration(seconds: float) -> str:
    """Format seconds as a Prometheus duration: whole seconds as "5s", anything else in ms."""
    if seconds <= 0:
        raise ValueError(f"invalid duration {seconds!r}: it must be positive")
    millis = round(seconds * 1000)
    if millis % 1000 == 0:
        return f"{millis // 1000}s"
    return f"{millis}ms"


def edge_prometheus_config(
    region: str,
    targets: Mapping[str, str],
    options: MonitoringOptions,
    kubelet_targets: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Build the edge Prometheus config: one static target per node, labelled node=<name>.

    ``targets`` maps node name to "ip:port" of its agent, and ``kubelet_targets`` to "ip:port"
    of its kubelet metrics, scraped as job ``kubelet`` so that the isolator can tell a dead
    agent on a serving node from a dead node.
    """
    scrape_configs: list[dict[str, Any]] = [
        {
            "job_name": AGENT_JOB,
            "static_configs": [
                {"targets": [address], "labels": {"node": node}}
                for node, address in sorted(targets.items())
            ],
        }
    ]
    if kubelet_targets:
        scrape_configs.append(
            {
                "job_name": KUBELET_JOB,
                "static_configs": [
                    {"targets": [address], "labels": {"node": node}}
                    for node, address in sorted(kubelet_targets.items())
                ],
            }
        )
    return {
        "global": {
            "scrape_interval": prometheus_duration(options.scrape_interval_s),
            "scrape_timeout": prometheus_duration(options.scrape_timeout_s),
            "evaluation_interval": prometheus_duration(options.evaluation_interval_s),
            "external_labels": {"region": region},
        },
        "scrape_configs": scrape_configs,
    }


def central_prometheus_config(
    edges: Mapping[str, str],
    alertmanager: str,
    options: MonitoringOptions,
    isolator_targets: Sequence[str] = (),
    isolator_credentials_file: str | None = None,
) -> dict[str, Any]:
    """Build the central Prometheus config that federates every edge Prometheus.

    ``edges`` maps region to "ip:port" of its edge Prometheus, and ``alertmanager`` is the
    "host:port" of the Alertmanager. honor_labels keeps the job, instance and node labels of
    the edge series, and the edge adds its region from external_labels. Each of
    ``isolator_targets`` ("host:port") is scraped as job ``isolator``, with
    ``Authorization: Bearer <the file's content>`` when ``isolator_credentials_file`` is set.
    """
    scrape_configs: list[dict[str, Any]] = [
        {
            "job_name": FEDERATE_JOB,
            "honor_labels": True,
            "metrics_path": "/federate",
            "params": {"match[]": list(FEDERATE_MATCHERS)},
            "static_configs": [
                {"targets": [address], "labels": {"region": region}}
                for region, address in sorted(edges.items())
            ],
        }
    ]
    if isolator_targets:
        job: dict[str, Any] = {
            "job_name": ISOLATOR_JOB,
            "static_configs": [{"targets": list(isolator_targets)}],
        }
        if isolator_credentials_file is not None:
            job["authorization"] = {"type": "Bearer", "credentials_file": isolator_credentials_file}
        scrape_configs.append(job)
    return {
        "global": {
            "scrape_interval": prometheus_duration(options.federation_interval_s),
            "scrape_timeout": prometheus_duration(options.federation_timeout_s),
            "evaluation_interval": prometheus_duration(options.evaluation_interval_s),
        },
        "rule_files": [str(path) for path in options.rule_files],
        "alerting": {
            "alertmanagers": [
                {"api_version": "v2", "static_configs": [{"targets": [alertmanager]}]}
            ]
        },
        "scrape_configs": scrape_configs,
    }


def alertmanager_config(
    webhook_url: str, options: MonitoringOptions, credentials_file: str | None = None
) -> dict[str, Any]:
    """Build an Alertmanager config that sends every alert to one webhook.

    Alertmanager 0.25 posts version "4" webhook payloads. max_alerts 0 sends every alert of a
    group, and send_resolved reports resolutions too. With ``credentials_file``, every request
    carries ``Authorization: Bearer <the file's content>``, read by Alertmanager at send time.
    """
    webhook: dict[str, Any] = {"url": webhook_url, "send_resolved": True, "max_alerts": 0}
    if credentials_file is not None:
        webhook["http_config"] = {
            "authorization": {"type": "Bearer", "credentials_file": credentials_file}
        }
    return {
        "route": {
            "receiver": WEBHOOK_RECEIVER,
            "group_by": list(options.alert_group_by),
            "group_wait": prometheus_duration(options.group_wait_s),
            "group_interval": prometheus_duration(options.group_interval_s),
            "repeat_interval": prometheus_duration(options.repeat_interval_s),
        },
        "receivers": [{"name": WEBHOOK_RECEIVER, "webhook_configs": [webhook]}],
    }


def write_yaml(path: Path, config: Mapping[str, Any]) -> Path:
    """Write a config as YAML (UTF-8, so region names stay readable) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(config), allow_unicode=True, sort_keys=False))
    return path


# Listening ports come from below Linux's default ephemeral range (32768-60999), because the
# kernel hands ports from that range to outgoing connections at any moment, and the lab's own
# scrapes and heartbeats open many: a port picked there is often taken before the server binds.
LISTEN_PORTS = range(20000, 32000)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port below the ephemeral range that is free on ``host`` at the call."""
    for _ in range(200):
        port = random.choice(LISTEN_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {LISTEN_PORTS.start}-{LISTEN_PORTS.stop - 1} on {host}")


async def wait_ready(
    session: aiohttp.ClientSession, process: ManagedProcess, url: str, timeout_s: float
) -> None:
    """Poll ``url`` until it returns 200; raise ProcessFailedError if the process exits first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        process.check_running()
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1.0)) as response:
                if response.status == 200:
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        if loop.time() > deadline:
            raise ProcessFailedError(
                f"{process.name} did not return 200 on {url} within {timeout_s} s; "
                f"last lines of {process.log_path}:\n{log_tail(process.log_path)}"
            )
        await asyncio.sleep(0.1)


def _prometheus_argv(
    config: Path, data: Path, listen: str, options: MonitoringOptions
) -> list[str]:
    return [
        PROMETHEUS_BINARY,
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--storage.tsdb.retention.time={options.retention}",
        f"--rules.alert.resend-delay={prometheus_duration(options.alert_resend_delay_s)}",
        f"--web.listen-address={listen}",
        "--web.enable-lifecycle",
    ]


class Monitoring:
    """The lab's Prometheus servers and Alertmanager, started and stopped together."""

    def __init__(
        self,
        work_dir: Path,
        regions: list[RegionNetwork],
        agent_targets: Mapping[str, Mapping[str, str]],
        webhook_url: str,
        options: MonitoringOptions | None = None,
        kubelet_targets: Mapping[str, Mapping[str, str]] | None = None,
        webhook_credentials_file: Path | None = None,
        isolator_credentials_file: Path | None = None,
    ) -> None:
        """``webhook_credentials_file`` and ``isolator_credentials_file`` hold the bearer tokens
        that Alertmanager sends to the webhook and the central Prometheus to /metrics."""
        self.work_dir = work_dir
        self.regions = {region.region: region for region in regions}
        self.agent_targets = agent_targets
        self.kubelet_targets = kubelet_targets or {}
        self.webhook_url = webhook_url
        self.webhook_credentials_file = webhook_credentials_file
        self.isolator_credentials_file = isolator_credentials_file
        self.options = options or MonitoringOptions()
        unknown = set(agent_targets) - set(self.regions)
        if unknown:
            raise ValueError(f"agent targets name regions without a network: {sorted(unknown)}")
        self._edges: dict[str, ManagedProcess] = {}
        self._central: ManagedProcess | None = None
        self._alertmanager: ManagedProcess | None = None
        self._central_port = 0
        self._alertmanager_port = 0

    @property
    def central_url(self) -> str:
        return f"http://127.0.0.1:{self._central_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self._alertmanager_port}"

    def edge_url(self, region: str) -> str:
        """Return the base URL of a region's edge Prometheus, reachable from the root side."""
        return f"http://{self.regions[region].prometheus_ip}:{EDGE_PORT}"

    async def start(self) -> None:
        """Start every server and wait until each returns 200 on /-/ready.

        If any server fails to start, every server is stopped before the error propagates.
        """
        try:
            async with aiohttp.ClientSession() as session:
                await asyncio.gather(
                    self._start_root_servers(session),
                    *(self._start_edge(session, region) for region in self.regions.values()),
                )
        except BaseException:
            await self.stop()
            raise
        logger.info(
            "monitoring started",
            extra={"central_url": self.central_url, "alertmanager_url": self.alertmanager_url},
        )

    async def stop(self) -> None:
        """Stop every server that is running; safe to call more than once."""
        processes = [*self._edges.values(), self._central, self._alertmanager]
        await asyncio.gather(
            *(asyncio.to_thread(process.stop) for process in processes if process is not None)
        )
        logger.info("monitoring stopped")

    def kill_central(self) -> None:
        """Kill the central Prometheus with SIGKILL, as a crash would."""
        if self._central is not None:
            self._central.kill()
            logger.info("central prometheus killed", extra={"url": self.central_url})

    async def start_central(self) -> None:
        """Start the central Prometheus again on the same port and data directory."""
        if self._central is not None and self._central.running():
            return
        async with aiohttp.ClientSession() as session:
            await self._start_central(session, port=self._central_port)

    async def _start_edge(self, session: aiohttp.ClientSession, network: RegionNetwork) -> None:
        directory = self.work_dir / f"edge-{network.index}"
        targets = self.agent_targets.get(network.region, {})
        kubelets = self.kubelet_targets.get(network.region, {})
        config = edge_prometheus_config(network.region, targets, self.options, kubelets)
        argv = _prometheus_argv(
            write_yaml(directory / "prometheus.yml", config),
            directory / "data",
            f"{network.prometheus_ip}:{EDGE_PORT}",
            self.options,
        )
        process = ManagedProcess(
            f"edge-prometheus-{network.index}", network.wrap(argv), directory / "prometheus.log"
        )
        self._edges[network.region] = process
        process.start()
        url = f"{self.edge_url(network.region)}/-/ready"
        await wait_ready(session, process, url, self.options.ready_timeout_s)

    async def _start_root_servers(self, session: aiohttp.ClientSession) -> None:
        # The central's config names the Alertmanager's port, so the Alertmanager comes first.
        await self._start_on_free_port(session, self._alertmanager_process, port=0)
        await self._start_central(session)

    async def _start_central(self, session: aiohttp.ClientSession, port: int = 0) -> None:
        await self._start_on_free_port(session, self._central_process, port)

    async def _start_on_free_port(
        self,
        session: aiohttp.ClientSession,
        make_process: Callable[[int], ManagedProcess],
        port: int,
    ) -> None:
        """Start a root-namespace server, picking a new port if the chosen one was taken.

        A fixed ``port`` (a restart) is tried only once.
        """
        attempts = 1 if port else _START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            chosen = port or free_port()
            process = make_process(chosen)
            process.start()
            url = f"http://127.0.0.1:{chosen}/-/ready"
            try:
                await wait_ready(session, process, url, self.options.ready_timeout_s)
                return
            except ProcessFailedError:
                process.stop()
                port_taken = "address already in use" in log_tail(process.log_path)
                if attempt == attempts or not port_taken:
                    raise
                logger.warning(
                    "port taken before the server bound it, will retry",
                    extra={"process_name": process.name, "port": chosen, "attempt": attempt},
                )

    def _alertmanager_process(self, port: int) -> ManagedProcess:
        directory = self.work_dir / "alertmanager"
        credentials = self.webhook_credentials_file
        config = write_yaml(
            directory / "alertmanager.yml",
            alertmanager_config(
                self.webhook_url,
                self.options,
                credentials_file=None if credentials is None else str(credentials),
            ),
        )
        argv = [
            ALERTMANAGER_BINARY,
            f"--config.file={config}",
            f"--storage.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            # An empty address turns off the HA cluster, which would otherwise bind :9094.
            "--cluster.listen-address=",
        ]
        self._alertmanager_port = port
        self._alertmanager = ManagedProcess("alertmanager", argv, directory / "alertmanager.log")
        return self._alertmanager

    def _central_process(self, port: int) -> ManagedProcess:
        directory = self.work_dir / "central"
        edges = {
            region: f"{network.prometheus_ip}:{EDGE_PORT}"
            for region, network in self.regions.items()
        }
        alertmanager = f"127.0.0.1:{self._alertmanager_port}"
        isolator = [urlsplit(self.webhook_url).netloc] if self.options.scrape_isolator else []
        credentials = self.isolator_credentials_file
        config = write_yaml(
            directory / "prometheus.yml",
            central_prometheus_config(
                edges,
                alertmanager,
                self.options,
                isolator,
                isolator_credentials_file=None if credentials is None else str(credentials),
            ),
        )
        argv = _prometheus_argv(config, directory / "data", f"127.0.0.1:{port}", self.options)
        self._central_port = port
        self._central = ManagedProcess("central-prometheus", argv, directory / "prometheus.log")
        return self._central
