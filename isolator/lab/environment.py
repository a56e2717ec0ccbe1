"""The whole lab in one object: control plane, regions, monitoring, agents and the isolator.

Everything runs for real: kube-apiserver with the endpoint controllers and KWOK, one network
namespace per region with its agents and edge Prometheus, a central Prometheus, Alertmanager,
and ``isolator serve`` as its own process. Faults are injected the way they happen: an agent
killed, a link taken down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from isolator.lab import cluster, nodesim
from isolator.lab.controlplane import ControlPlane, locate_binaries
from isolator.lab.monitoring import (
    EDGE_PORT,
    Monitoring,
    MonitoringOptions,
    free_port,
    generated_rule_files,
)
from isolator.lab.netns import (
    FilterRule,
    LabLock,
    NetnsCommandError,
    RegionNetwork,
    remove_stale_namespaces,
)
from isolator.lab.process import ManagedProcess, wait_listening

logger = logging.getLogger(__name__)

AGENT_PORT = 9910
REPO_ROOT = Path(__file__).resolve().parents[2]

# With LabSpec.per_node_uids, the agent of node j in region i runs as user
# FIRST_AGENT_UID + 256 * i + j. Every agent of a region sends from the namespace's first
# address, so only the socket's owner tells one node's heartbeats from another's.
FIRST_AGENT_UID = 61000
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")


def _fast_isolator_settings(heartbeat_interval_s: float) -> dict[str, str]:
    """Isolator settings scaled to a heartbeat interval, for a lab that must react quickly."""
    interval = heartbeat_interval_s
    return {
        "ISOLATOR_HEARTBEAT_INTERVAL_S": str(interval),
        "ISOLATOR_HEARTBEAT_MISS_COUNT": "3",
        "ISOLATOR_PROBE_TIMEOUT_S": str(round(interval * 0.8, 3)),
        "ISOLATOR_PROMETHEUS_TIMEOUT_S": str(round(interval * 2, 3)),
        "ISOLATOR_LOOP_INTERVAL_S": str(round(interval / 2, 3)),
        "ISOLATOR_CORRELATION_WINDOW_S": str(interval * 2),
        "ISOLATOR_SITE_MAX_AGE_S": "5",
        "ISOLATOR_RESTORE_HOLD_S": "5",
        "ISOLATOR_STARTUP_GRACE_S": str(interval * 6),
        "ISOLATOR_INVENTORY_REFRESH_S": "2",
        "ISOLATOR_VERIFY_TIMEOUT_S": "5",
    }


@dataclass
class LabSpec:
    """The shape of a lab: regions, nodes, the Service under test and the timings."""

    regions: list[str] = field(default_factory=lambda: ["r1", "r2", "r3"])
    nodes_per_region: int = 4
    pods_per_node: int = 1
    namespace: str = "default"
    service: str = "media"
    heartbeat_interval_s: float = 0.5
    monitoring: MonitoringOptions = field(
        default_factory=lambda: MonitoringOptions(
            scrape_interval_s=0.5,
            scrape_timeout_s=0.4,
            federation_interval_s=0.5,
            federation_timeout_s=0.4,
            evaluation_interval_s=1.0,
            rule_files=generated_rule_files(REPO_ROOT),
            scrape_isolator=True,
        )
    )
    isolator_settings: dict[str, str] = field(default_factory=dict)  # ISOLATOR_* overrides
    # Run each agent as its own user, so that packet filters can cut single nodes off.
    per_node_uids: bool = False
    # Start `isolator serve` under libfaketime (Debian package faketime), so that its wall
    # clock can be stepped with Lab.step_isolator_wall_clock while its monotonic clock runs on.
    # libfaketime intercepts every clock read: the lab's API responded about nine times slower
    # under it (120 ms against 13 ms a request, measured on 2 loaded cores).
    fake_isolator_clock: bool = False
    # Route the isolator's Kubernetes traffic through a relay (isolator.lab.relay), so that
    # Lab.cut_apiserver_path can make the API unavailable to the isolator alone.
    apiserver_relay: bool = False
    # ISOLATOR_LAB_KEEP=1 keeps the work folder with every log after the lab stops.
    keep_files: bool = field(default_factory=lambda: os.environ.get("ISOLATOR_LAB_KEEP") == "1")


@dataclass(frozen=True)
class LabTokens:
    """The lab's API tokens and the files that carry them: the isolator's token file (digests
    only), one token file per agent, and the credential files of Alertmanager and Prometheus."""

    directory: Path
    operator: str
    viewer: str
    alertmanager: str
    agents: dict[str, str]  # node -> its agent's token

    @property
    def token_file(self) -> Path:
        return self.directory / "tokens.yaml"

    @property
    def webhook_credentials(self) -> Path:
        return self.directory / "alertmanager.token"

    @property
    def metrics_credentials(self) -> Path:
        return self.directory / "prometheus.token"

    def agent_file(self, node: str) -> Path:
        return self.directory / f"agent-{node}.token"

    @classmethod
    def create(
        cls, directory: Path, nodes: list[str], owner_of: Callable[[str], int] | None = None
    ) -> LabTokens:
        """Write fresh random tokens for the isolator and every client.

        ``owner_of`` returns the user an agent runs as, when agents run as their own users:
        its token file then belongs to that user alone.
        """
        directory.mkdir(parents=True, exist_ok=True)
        tokens = cls(
            directory,
            operator=secrets.token_urlsafe(32),
            viewer=secrets.token_urlsafe(32),
            alertmanager=secrets.token_urlsafe(32),
            agents={node: secrets.token_urlsafe(32) for node in nodes},
        )
        entries = {
            tokens.operator: ("lab-operator", "operator"),
            tokens.viewer: ("lab-viewer", "viewer"),
            tokens.alertmanager: ("alertmanager", "alertmanager"),
            **{token: (node, "agent") for node, token in tokens.agents.items()},
        }
        lines = [
            f'"sha256:{hashlib.sha256(token.encode()).hexdigest()}": {{name: {name}, role: {role}}}'
            for token, (name, role) in entries.items()
        ]
        _write_secret(tokens.token_file, "\n".join(lines) + "\n")
        _write_secret(tokens.webhook_credentials, tokens.alertmanager)
        _write_secret(tokens.metrics_credentials, tokens.viewer)
        for node, token in tokens.agents.items():
            uid = None if owner_of is None else owner_of(node)
            _write_secret(tokens.agent_file(node), token, uid)
        if owner_of is not None:
            # Agents of other users must reach their files: traverse, but not list.
            for folder in (directory, directory.parent):
                folder.chmod(0o711)
        return tokens


def _write_secret(path: Path, text: str, uid: int | None = None) -> None:
    path.write_text(text)
    if uid is not None:
        os.chown(path, uid, uid)
    path.chmod(0o400 if uid is not None else 0o600)


def node_name(region_index: int, node_index: int) -> str:
    """Return the Node name of node ``node_index`` in region ``region_index`` (both 0-based)."""
    return f"r{region_index + 1}-n{node_index + 1:02d}"


class Lab:
    """A running lab; use ``async with Lab(spec) as lab``."""

    def __init__(self, spec: LabSpec | None = None, work_dir: Path | None = None) -> None:
        self.spec = spec or LabSpec()
        self._own_dir = work_dir is None
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="isolator-lab-"))
        self.networks: dict[str, RegionNetwork] = {}
        self.nodes: dict[str, str] = {}  # node -> region
        self.pods: dict[str, str] = {}  # pod -> node
        self.agents: dict[str, ManagedProcess] = {}
        self.node_sims: dict[str, ManagedProcess] = {}
        self.isolator_port = 0
        self.isolator_settings: dict[str, str] = {}  # the ISOLATOR_* settings it runs with
        self._tokens: LabTokens | None = None
        self._fake_clock = self.spec.fake_isolator_clock
        self._lock: LabLock | None = None
        self._control_plane: ControlPlane | None = None
        self._monitoring: Monitoring | None = None
        self._isolator: ManagedProcess | None = None
        self._relay: ManagedProcess | None = None
        self._api: k8s.ApiClient | None = None

    async def __aenter__(self) -> Lab:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def api(self) -> k8s.ApiClient:
        assert self._api is not None, "the lab is not started"
        return self._api

    @property
    def monitoring(self) -> Monitoring:
        assert self._monitoring is not None, "the lab is not started"
        return self._monitoring

    @property
    def tokens(self) -> LabTokens:
        """The lab's API tokens: operator, viewer, Alertmanager and one per agent."""
        assert self._tokens is not None, "the lab is not started"
        return self._tokens

    @property
    def isolator_url(self) -> str:
        return f"http://127.0.0.1:{self.isolator_port}"

    @property
    def isolator_log(self) -> Path:
        """The log file of ``isolator serve``, JSON lines."""
        return self.work_dir / "logs" / "isolator.log"

    @property
    def kubeconfig(self) -> Path:
        assert self._control_plane is not None, "the lab is not started"
        return self._control_plane.kubeconfig

    @property
    def _isolator_kubeconfig(self) -> Path:
        """The kubeconfig ``isolator serve`` uses: through the relay when the spec requests it."""
        return self.work_dir / "isolator-kubeconfig.yaml" if self._relay else self.kubeconfig

    async def start(self) -> None:
        """Start every component and wait until each node is healthy and every Pod serves."""
        self._lock = LabLock.acquire()
        remove_stale_namespaces(self._lock.index)
        bin_dir = await asyncio.to_thread(locate_binaries, REPO_ROOT)
        self._control_plane = ControlPlane(self.work_dir / "controlplane", bin_dir)
        self._create_networks()
        await self._control_plane.start()
        self._api = await k8s_config.new_client_from_config(str(self.kubeconfig))
        await self._create_objects()
        if self.spec.apiserver_relay:
            await self._start_relay()
        owner = self.agent_uid if self.spec.per_node_uids else None
        self._tokens = LabTokens.create(self.work_dir / "auth", list(self.nodes), owner)

        self.isolator_port = free_port("0.0.0.0")
        self._monitoring = Monitoring(
            self.work_dir / "monitoring",
            list(self.networks.values()),
            self._targets(AGENT_PORT),
            webhook_url=f"{self.isolator_url}/v1/alerts/webhook",
            options=self.spec.monitoring,
            kubelet_targets=self._targets(nodesim.NODESIM_PORT),
            webhook_credentials_file=self.tokens.webhook_credentials,
            isolator_credentials_file=self.tokens.metrics_credentials,
        )
        await self._monitoring.start()
        self._start_isolator()
        for node in self.nodes:
            self.start_node_sim(node)
            self.start_agent(node)
        await self.wait_until_serving(timeout_s=60.0)

    async def stop(self) -> None:
        """Stop everything that was started; safe after a failed start and when called twice."""
        for process in [*self.agents.values(), *self.node_sims.values()]:
            process.stop(timeout_s=2.0)
        if self._isolator is not None:
            self._isolator.stop(timeout_s=5.0)
        if self._relay is not None:
            self._relay.stop(timeout_s=2.0)
        if self._monitoring is not None:
            await self._monitoring.stop()
        if self._api is not None:
            await self._api.close()
            self._api = None
        if self._control_plane is not None:
            await self._control_plane.stop()
        for network in self.networks.values():
            network.delete()
        if self._lock is not None:
            self._lock.release()
        if self._own_dir and not self.spec.keep_files:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _create_networks(self) -> None:
        assert self._lock is not None
        for index, region in enumerate(self.spec.regions):
            network = RegionNetwork(self._lock.index, index, region)
            self.networks[region] = network
            network.create(self.spec.nodes_per_region)
            for j in range(self.spec.nodes_per_region):
                self.nodes[node_name(index, j)] = region

    def _node_ip(self, node: str) -> str:
        region = self.nodes[node]
        index = int(node.split("-n")[1]) - 1
        return self.networks[region].node_ip(index)

    def _targets(self, port: int) -> dict[str, dict[str, str]]:
        """Return region -> node -> "ip:port" for a port that every node serves."""
        targets: dict[str, dict[str, str]] = {region: {} for region in self.spec.regions}
        for node, region in self.nodes.items():
            targets[region][node] = f"{self._node_ip(node)}:{port}"
        return targets

    async def _create_objects(self) -> None:
        spec = self.spec
        await cluster.create_service(
            self.api, spec.namespace, spec.service, {"app": spec.service}, 8080
        )
        for node, region in self.nodes.items():
            await cluster.create_edge_node(self.api, node, region, self._node_ip(node))
            for k in range(spec.pods_per_node):
                pod = f"{spec.service}-{node}-{k}"
                self.pods[pod] = node
                await cluster.create_pod(self.api, spec.namespace, pod, node, {"app": spec.service})

    def _start_isolator(self) -> None:
        env = {
            **self._faketime_env(),
            **_fast_isolator_settings(self.spec.heartbeat_interval_s),
            "ISOLATOR_LISTEN_HOST": "0.0.0.0",
            "ISOLATOR_LISTEN_PORT": str(self.isolator_port),
            "ISOLATOR_KUBECONFIG": str(self._isolator_kubeconfig),
            "ISOLATOR_PROMETHEUS_URL": self.monitoring.central_url,
            "ISOLATOR_ALERTMANAGER_URL": self.monitoring.alertmanager_url,
            "ISOLATOR_AGENT_PORT": str(AGENT_PORT),
            "ISOLATOR_LOG_JSON": "true",
            "ISOLATOR_AUTH_TOKEN_FILE": str(self.tokens.token_file),
            **self.spec.isolator_settings,
        }
        self.isolator_settings = {k: v for k, v in env.items() if k.startswith("ISOLATOR_")}
        self._isolator = ManagedProcess(
            "isolator",
            [sys.executable, "-m", "isolator", "serve"],
            self.isolator_log,
            env=env,
        )
        self._isolator.start()

    def _faketime_env(self) -> dict[str, str]:
        if not self._fake_clock:
            return {}
        if not LIBFAKETIME.is_file():
            raise FileNotFoundError(
                f"{LIBFAKETIME} not found: install the Debian package faketime to step the "
                "isolator's wall clock"
            )
        self._faketime_file.write_text("+0\n")
        return {
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(self._faketime_file),
            # Re-read the offset at most once a second. Reading it on every call made the lab's
            # API about three times slower still (measured on 2 loaded cores).
            "FAKETIME_CACHE_DURATION": "1",
            # A step of the system clock never moves CLOCK_MONOTONIC, so neither does this one.
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    @property
    def _faketime_file(self) -> Path:
        return self.work_dir / "isolator-faketime.rc"

    def step_isolator_wall_clock(self, offset_s: float) -> None:
        """Set the isolator's wall clock to real time plus ``offset_s``, as a clock step would.

        Needs the isolator started under libfaketime (LabSpec.fake_isolator_clock or
        restart_isolator); the monotonic clock keeps running unchanged.
        """
        if not self._fake_clock:
            raise RuntimeError("the isolator runs on the real clock: restart it on a fake one")
        self._faketime_file.write_text(f"{offset_s:+.0f}\n")
        logger.info("isolator wall clock stepped", extra={"offset_s": offset_s})

    @property
    def isolator_clock_faked(self) -> bool:
        """Whether ``isolator serve`` runs under libfaketime."""
        return self._fake_clock

    async def restart_isolator(self, fake_clock: bool | None = None, *, wait: bool = True) -> None:
        """Stop ``isolator serve`` (if it still runs) and start it again on the same port.

        With ``fake_clock`` true it runs under libfaketime, false on the real clock, and None
        keeps the clock it had. With ``wait`` it then waits until every node is healthy and
        every Pod serves.
        """
        assert self._isolator is not None, "the lab is not started"
        self._isolator.stop(timeout_s=5.0)
        if fake_clock is not None:
            self._fake_clock = fake_clock
        self._start_isolator()
        if wait:
            await self.wait_until_serving(timeout_s=60.0)

    async def _start_relay(self) -> None:
        assert self._control_plane is not None
        target = urllib.parse.urlsplit(self._control_plane.server_url)
        assert target.hostname is not None
        assert target.port is not None
        port = free_port("127.0.0.1")
        self._relay = ManagedProcess(
            "apiserver-relay",
            [
                sys.executable,
                "-m",
                "isolator.lab.relay",
                str(port),
                target.hostname,
                str(target.port),
            ],
            self.work_dir / "logs" / "apiserver-relay.log",
        )
        self._relay.start()
        document = yaml.safe_load(self.kubeconfig.read_text())
        for entry in document["clusters"]:
            entry["cluster"]["server"] = f"https://127.0.0.1:{port}"
        self._isolator_kubeconfig.write_text(yaml.safe_dump(document, sort_keys=False))
        self._isolator_kubeconfig.chmod(0o600)
        await wait_listening(self._relay, "127.0.0.1", port, timeout_s=10.0)

    def cut_apiserver_path(self) -> None:
        """Make the kube-apiserver unavailable to the isolator alone (LabSpec.apiserver_relay).

        Its open connections are reset and new ones hang unanswered; KWOK, the controllers and
        the tests keep their own direct connections.
        """
        assert self._relay is not None, "the lab runs without an apiserver relay"
        self._relay.send_signal(signal.SIGUSR1)
        logger.info("apiserver path of the isolator cut")

    def restore_apiserver_path(self) -> None:
        """Give the isolator its path to the kube-apiserver back."""
        assert self._relay is not None, "the lab runs without an apiserver relay"
        self._relay.send_signal(signal.SIGUSR2)
        logger.info("apiserver path of the isolator restored")

    def kill_isolator(self) -> None:
        """Kill ``isolator serve`` with SIGKILL, as a crash or an evicted Pod would end it."""
        assert self._isolator is not None, "the lab is not started"
        self._isolator.kill()
        logger.info("isolator killed", extra={"port": self.isolator_port})

    def agent_uid(self, node: str) -> int:
        """Return the user the agent of ``node`` runs as with LabSpec.per_node_uids."""
        region_index = self.spec.regions.index(self.nodes[node])
        return FIRST_AGENT_UID + 256 * region_index + int(node.split("-n")[1]) - 1

    def start_agent(self, node: str) -> None:
        """Start (or restart) the agent of ``node`` inside its region's namespace."""
        region = self.nodes[node]
        network = self.networks[region]
        env = {
            "ISOLATOR_AGENT_NODE": node,
            "ISOLATOR_AGENT_REGION": region,
            "ISOLATOR_AGENT_ISOLATOR_URL": f"http://{network.host_ip}:{self.isolator_port}",
            "ISOLATOR_AGENT_LISTEN_HOST": self._node_ip(node),
            "ISOLATOR_AGENT_LISTEN_PORT": str(AGENT_PORT),
            "ISOLATOR_AGENT_HEARTBEAT_INTERVAL_S": str(self.spec.heartbeat_interval_s),
            "ISOLATOR_AGENT_HEARTBEAT_TIMEOUT_S": str(self.spec.heartbeat_interval_s * 0.8),
            "ISOLATOR_AGENT_COMPONENTS": json.dumps(nodesim.component_urls(self._node_ip(node))),
            "ISOLATOR_AGENT_INGRESS_CHECK_URL": nodesim.ingress_url(self._node_ip(node)),
            "ISOLATOR_AGENT_CHECK_TIMEOUT_S": str(self.spec.heartbeat_interval_s * 0.6),
            "ISOLATOR_AGENT_TOKEN_FILE": str(self.tokens.agent_file(node)),
        }
        argv = [sys.executable, "-m", "isolator", "agent"]
        if self.spec.per_node_uids:
            uid = str(self.agent_uid(node))
            argv = ["setpriv", "--reuid", uid, "--regid", uid, "--clear-groups", *argv]
        agent = ManagedProcess(
            f"agent-{node}",
            network.wrap(argv),
            self.work_dir / "logs" / f"agent-{node}.log",
            env=env,
        )
        self._replace(self.agents, node, agent)

    def start_node_sim(self, node: str) -> None:
        """Start (or restart) the simulated components of ``node`` inside its region."""
        network = self.networks[self.nodes[node]]
        listen = f"{self._node_ip(node)}:{nodesim.NODESIM_PORT}"
        argv = [sys.executable, "-m", "isolator.lab.nodesim", "--listen", listen, "--node", node]
        process = ManagedProcess(
            f"nodesim-{node}", network.wrap(argv), self.work_dir / "logs" / f"nodesim-{node}.log"
        )
        self._replace(self.node_sims, node, process)

    @staticmethod
    def _replace(processes: dict[str, ManagedProcess], node: str, new: ManagedProcess) -> None:
        """Stop the node's previous process, if any is still running, then start ``new``.

        A running process that is only forgotten keeps serving as the node and is never reaped.
        """
        previous = processes.get(node)
        if previous is not None:
            previous.stop(timeout_s=2.0)
        new.start()
        processes[node] = new

    async def crash_node(self, node: str) -> None:
        """Crash a node: its agent and components are killed and the Node is marked down."""
        self.agents[node].kill()
        self.node_sims[node].kill()
        await cluster.set_node_down(self.api, node, True)

    async def recover_node(self, node: str) -> None:
        """Bring a crashed node back: the Node is marked up, its components and agent restart."""
        await cluster.set_node_down(self.api, node, False)
        self.start_node_sim(node)
        self.start_agent(node)

    def crash_agent(self, node: str) -> None:
        """Kill only the agent process; the node and its components keep serving."""
        self.agents[node].kill()

    async def set_component_faults(self, node: str, failed: list[str]) -> None:
        """Make the named components of ``node`` fail their checks (an empty list heals)."""
        url = f"http://{self._node_ip(node)}:{nodesim.NODESIM_PORT}/faults"
        timeout = aiohttp.ClientTimeout(total=5.0)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, json={"failed": failed}) as response,
        ):
            response.raise_for_status()

    def partition(self, region: str) -> None:
        self.networks[region].partition()

    def heal(self, region: str) -> None:
        self.networks[region].heal()

    # Faults finer than a partition, as packet filters inside the region's namespace. Each
    # helper names its rule group, and the matching helper removes exactly that group.

    def _filter(self, node: str, kind: str) -> tuple[RegionNetwork, str]:
        return self.networks[self.nodes[node]], f"{kind}:{node}"

    def cut_off_node(self, node: str) -> None:
        """Cut one node off from the cloud while the rest of its region stays connected.

        Its agent can no longer send heartbeats or answer probes, but the edge Prometheus,
        inside the region, still scrapes it. Needs LabSpec.per_node_uids.
        """
        if not self.spec.per_node_uids:
            raise RuntimeError("cutting single nodes off needs LabSpec.per_node_uids")
        network, name = self._filter(node, "cut-off")
        rules = [
            FilterRule("input", f"ip daddr {self._node_ip(node)}"),
            FilterRule("output", f"meta skuid {self.agent_uid(node)}"),
        ]
        network.set_filter(name, rules)

    def reconnect_node(self, node: str) -> None:
        network, name = self._filter(node, "cut-off")
        network.clear_filter(name)

    def drop_probes(self, node: str) -> None:
        """Drop the isolator's probes to one agent: a half-open link, heartbeats still arrive."""
        network, name = self._filter(node, "no-probes")
        match = f"ip daddr {self._node_ip(node)} tcp dport {AGENT_PORT}"
        network.set_filter(name, [FilterRule("input", match)])

    def restore_probes(self, node: str) -> None:
        network, name = self._filter(node, "no-probes")
        network.clear_filter(name)

    def break_federation(self, region: str) -> None:
        """Drop the central's scrapes of the region's edge Prometheus; agents still reach the
        isolator. Each scrape then times out, as an edge /federate that answers too slowly."""
        network = self.networks[region]
        match = f"ip daddr {network.prometheus_ip} tcp dport {EDGE_PORT}"
        network.set_filter("no-federation", [FilterRule("input", match)])

    def repair_federation(self, region: str) -> None:
        self.networks[region].clear_filter("no-federation")

    def silence_agents(self, region: str) -> None:
        """Drop every heartbeat and probe between the isolator and the region's agents, while
        federation keeps working: the isolator's own ingress looks broken from the site."""
        network = self.networks[region]
        rules = [
            FilterRule("output", f"ip daddr {network.host_ip} tcp dport {self.isolator_port}"),
            FilterRule("input", f"tcp dport {AGENT_PORT}"),
        ]
        network.set_filter("agents-silenced", rules)

    def unsilence_agents(self, region: str) -> None:
        self.networks[region].clear_filter("agents-silenced")

    def set_weak_link(self, region: str, loss_pct: float) -> None:
        """Drop ``loss_pct`` percent of the packets in each direction of a region's link.

        See RegionNetwork.set_weak_link for what this does and does not emulate.
        """
        self.networks[region].set_weak_link(delay_ms=0, jitter_ms=0, loss_pct=loss_pct)

    def clear_weak_link(self, region: str) -> None:
        self.networks[region].clear_weak_link()

    def clear_network_faults(self) -> None:
        """Heal every link and remove every packet filter and weak link of the lab."""
        for network in self.networks.values():
            network.heal()
            for name in network.filters():
                network.clear_filter(name)
            with contextlib.suppress(NetnsCommandError):
                network.clear_weak_link()

    def kill_node_components(self, node: str) -> None:
        """Kill the node's simulated components (kubelet, proxy, ingress) but not its agent."""
        self.node_sims[node].kill()

    async def ready_pods(self) -> set[str]:
        """Return the Pods that are ready endpoints of the lab's Service right now."""
        return await cluster.ready_endpoint_pods(self.api, self.spec.namespace, self.spec.service)

    def _token_for(self, path: str) -> str:
        """Return the token of the role that ``path`` needs: an agent's for heartbeats (the
        first node's), Alertmanager's for the webhook, the operator's for anything else."""
        if path.startswith("/v1/heartbeats"):
            return self.tokens.agents[next(iter(self.nodes))]
        if path.startswith("/v1/alerts/webhook"):
            return self.tokens.alertmanager
        return self.tokens.operator

    async def get(self, path: str) -> Any:
        """GET a JSON document from the isolator API with the viewer token."""
        timeout = aiohttp.ClientTimeout(total=5.0)
        headers = {"Authorization": f"Bearer {self.tokens.viewer}"}
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{self.isolator_url}{path}", headers=headers) as response,
        ):
            response.raise_for_status()
            return await response.json()

    async def post(
        self, path: str, body: bytes, content_type: str, token: str | None = None
    ) -> tuple[int, Any]:
        """POST a raw body to the isolator API and return the status and the JSON response.

        The request carries ``token``, or else the token of the role the path needs.
        """
        timeout = aiohttp.ClientTimeout(total=15.0)
        headers = {
            "content-type": content_type,
            "Authorization": f"Bearer {token or self._token_for(path)}",
        }
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(f"{self.isolator_url}{path}", data=body, headers=headers) as response,
        ):
            return response.status, await response.json(content_type=None)

    async def node_verdicts(self) -> dict[str, str]:
        return {item["node"]: item["verdict"] for item in await self.get("/v1/nodes")}

    async def region_verdicts(self) -> dict[str, str]:
        return {item["region"]: item["verdict"] for item in await self.get("/v1/regions")}

    def check_isolator_running(self) -> None:
        assert self._isolator is not None
        self._isolator.check_running()

    async def wait_until_serving(self, timeout_s: float) -> None:
        """Wait until every node is healthy and every Pod is a ready endpoint."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        verdicts: Mapping[str, str] = {}
        ready: set[str] = set()
        while loop.time() < deadline:
            self.check_isolator_running()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                verdicts = await self.node_verdicts()
                ready = await self.ready_pods()
                healthy = all(verdicts.get(node) == "healthy" for node in self.nodes)
                if healthy and ready == set(self.pods):
                    return
            await asyncio.sleep(0.25)
        unhealthy = {n: v for n, v in verdicts.items() if v != "healthy"}
        missing = sorted(set(self.pods) - ready)
        raise TimeoutError(
            f"lab not serving after {timeout_s:g} s: nodes not healthy {unhealthy}, "
            f"Pods not ready {missing}; logs in {self.work_dir / 'logs'}"
        )
