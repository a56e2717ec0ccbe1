"""Lab monitoring on the real binaries: edge Prometheus in each namespace, central, Alertmanager."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from isolator.lab.monitoring import (
    Monitoring,
    MonitoringOptions,
    alertmanager_config,
    central_prometheus_config,
    edge_prometheus_config,
    write_yaml,
)
from isolator.lab.netns import LabLock, RegionNetwork, remove_stale_namespaces
from isolator.lab.process import ManagedProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

DEADLINE_S = float(os.environ.get("ISOLATOR_TEST_DEADLINE_S", "30"))
AGENT_PORT = 9100
NODES_PER_REGION = 2
# How long after federation fails the test still expects the cut region's old series.
LINGER_CHECK_S = 5.0
# Max age of a healthy federated sample: edge scrape plus federation interval, with slack.
FRESH_AGE_S = 4.0
REGION_NAMES = ["r1", "华东-1"]
AGENT_METRICS = """\
# HELP isolator_agent_heartbeat_ok Whether the last heartbeat reached the cloud.
# TYPE isolator_agent_heartbeat_ok gauge
isolator_agent_heartbeat_ok 1
"""
ALWAYS_FIRING_RULES = """\
groups:
  - name: lab
    rules:
      - alert: LabAlwaysFiring
        expr: vector(1)
        labels:
          region: r1
"""

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T | None]], what: str, deadline_s: float = DEADLINE_S
) -> T:
    """Poll ``check`` until it returns something other than None, or fail after the deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        result = await check()
        if result is not None:
            return result
        assert loop.time() < end, f"timed out after {deadline_s} s waiting for {what}"
        await asyncio.sleep(0.2)


async def query(base_url: str, promql: str) -> list[dict[str, Any]]:
    """Run an instant query and return the vector result."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url}/api/v1/query", params={"query": promql}) as response,
    ):
        body = await response.json()
    assert response.status == 200, body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def by_region(samples: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for sample in samples:
        grouped.setdefault(sample["metric"].get("region", ""), []).append(sample)
    return grouped


def node_labels(samples: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(s["metric"].get("region", ""), s["metric"].get("node", "")) for s in samples}


# Runs inside a namespace: one HTTP GET without proxies, the body on stdout.
FETCH_SCRIPT = """
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with opener.open(sys.argv[1], timeout=5) as response:
    sys.stdout.write(response.read().decode())
"""


def query_in_namespace(region: RegionNetwork, base_url: str, promql: str) -> list[dict[str, Any]]:
    """Run an instant query from inside the region, where the edge stays reachable."""
    url = f"{base_url}/api/v1/query?{urlencode({'query': promql})}"
    argv = region.wrap([sys.executable, "-c", FETCH_SCRIPT, url])
    output = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30)
    result: list[dict[str, Any]] = json.loads(output.stdout)["data"]["result"]
    return result


@pytest.fixture(scope="module")
def lab() -> Iterator[int]:
    with LabLock.acquire(preferred=2) as lock:
        remove_stale_namespaces(lock.index)
        yield lock.index
        remove_stale_namespaces(lock.index)


@pytest.fixture
def regions(lab: int) -> Iterator[list[RegionNetwork]]:
    networks = [RegionNetwork(lab, i, name) for i, name in enumerate(REGION_NAMES)]
    try:
        for network in networks:
            network.create(node_count=NODES_PER_REGION)
        yield networks
    finally:
        for network in networks:
            network.delete()


@pytest.fixture
def agent_targets(
    regions: list[RegionNetwork], tmp_path: Path
) -> Iterator[dict[str, dict[str, str]]]:
    """Start one static /metrics server per node, inside its region's namespace."""
    site = tmp_path / "agent"
    site.mkdir()
    (site / "metrics").write_text(AGENT_METRICS)
    targets: dict[str, dict[str, str]] = {}
    processes = []
    for region in regions:
        for j in range(NODES_PER_REGION):
            ip = region.node_ip(j)
            argv = [sys.executable, "-m", "http.server", "--bind", ip, "--directory", str(site)]
            process = ManagedProcess(
                f"agent-{ip}", region.wrap([*argv, str(AGENT_PORT)]), tmp_path / f"agent-{ip}.log"
            )
            process.start()
            processes.append(process)
            targets.setdefault(region.region, {})[f"node-{region.index}-{j}"] = f"{ip}:{AGENT_PORT}"
    yield targets
    for process in processes:
        process.stop()


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[str, asyncio.Queue[dict[str, Any]]]]:
    """An HTTP receiver on loopback that queues every webhook payload it gets."""
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receive(request: web.Request) -> web.Response:
        await received.put(await request.json())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/alerts", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/alerts", received
    finally:
        await runner.cleanup()


@pytest.fixture
async def monitoring(
    regions: list[RegionNetwork],
    agent_targets: dict[str, dict[str, str]],
    webhook: tuple[str, asyncio.Queue[dict[str, Any]]],
    tmp_path: Path,
) -> AsyncIterator[Monitoring]:
    rules = tmp_path / "rules.yml"
    rules.write_text(ALWAYS_FIRING_RULES)
    options = MonitoringOptions(rule_files=[rules])
    stack = Monitoring(tmp_path / "monitoring", regions, agent_targets, webhook[0], options)
    try:
        await stack.start()
        yield stack
    finally:
        await stack.stop()


def test_generated_configs_pass_promtool_and_amtool(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(ALWAYS_FIRING_RULES)
    options = MonitoringOptions(rule_files=[rules], scrape_timeout_s=0.5)
    configs = {
        "edge.yml": edge_prometheus_config(
            "华东-1", {"node-a": "198.18.0.10:9100", "node-b": "198.18.0.11:9100"}, options
        ),
        "central.yml": central_prometheus_config(
            {"r1": "198.18.0.2:9090", "华东-1": "198.18.1.2:9090"}, "127.0.0.1:9093", options
        ),
    }
    for name, config in configs.items():
        path = write_yaml(tmp_path / name, config)
        result = subprocess.run(
            ["promtool", "check", "config", str(path)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
    alertmanager = write_yaml(
        tmp_path / "alertmanager.yml", alertmanager_config("http://127.0.0.1:8080/alerts", options)
    )
    result = subprocess.run(
        ["amtool", "check-config", str(alertmanager)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_invalid_scrape_timeout_fails_promtool(tmp_path: Path) -> None:
    options = MonitoringOptions(scrape_interval_s=1.0, scrape_timeout_s=2.0)
    path = write_yaml(tmp_path / "edge.yml", edge_prometheus_config("r1", {}, options))

    result = subprocess.run(
        ["promtool", "check", "config", str(path)], capture_output=True, text=True, check=False
    )

    assert result.returncode != 0, result.stdout


async def test_central_federates_every_agent(
    monitoring: Monitoring, agent_targets: dict[str, dict[str, str]]
) -> None:
    expected = {(region, node) for region, nodes in agent_targets.items() for node in nodes}

    async def agents_up() -> list[dict[str, Any]] | None:
        samples = await query(monitoring.central_url, 'up{job="isolator-agent"} == 1')
        return samples if node_labels(samples) == expected else None

    async def federation_up() -> list[dict[str, Any]] | None:
        samples = await query(monitoring.central_url, 'up{job="federate"} == 1')
        return samples if set(by_region(samples)) == set(agent_targets) else None

    agents = await eventually(agents_up, "every agent's up == 1 on the central")
    federation = await eventually(federation_up, "up{job=federate} == 1 for each region")

    assert len(agents) == len(expected)
    assert len(federation) == len(agent_targets)
    custom = await query(monitoring.central_url, "isolator_agent_heartbeat_ok")
    assert node_labels(custom) == expected


async def test_alert_reaches_webhook(
    monitoring: Monitoring, webhook: tuple[str, asyncio.Queue[dict[str, Any]]]
) -> None:
    _, received = webhook

    payload = await asyncio.wait_for(received.get(), timeout=DEADLINE_S)

    assert payload["version"] == "4", payload
    assert payload["receiver"] == "isolator", payload
    assert payload["status"] == "firing", payload
    assert payload["truncatedAlerts"] == 0, payload
    [alert] = payload["alerts"]
    assert alert["labels"]["alertname"] == "LabAlwaysFiring", alert
    assert alert["labels"]["region"] == "r1", alert


async def test_partition_leaves_stale_federated_series(
    monitoring: Monitoring,
    regions: list[RegionNetwork],
    agent_targets: dict[str, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    cut, other = regions
    loop = asyncio.get_running_loop()
    age_query = 'time() - timestamp(up{job="isolator-agent"})'

    expected = {(region, node) for region, nodes in agent_targets.items() for node in nodes}

    async def fresh_everywhere() -> list[dict[str, Any]] | None:
        samples = await query(monitoring.central_url, f"{age_query} < {FRESH_AGE_S}")
        return samples if node_labels(samples) == expected else None

    async def federation_down() -> list[dict[str, Any]] | None:
        promql = f'up{{job="federate",region="{cut.region}"}} == 0'
        return await query(monitoring.central_url, promql) or None

    await eventually(fresh_everywhere, "fresh agent series from every region")
    cut.partition()
    started = loop.time()
    await eventually(federation_down, "the cut region's federation up == 0")
    down_after_s = loop.time() - started
    await asyncio.sleep(LINGER_CHECK_S)  # let the last federated samples of the cut region age
    ages = by_region(await query(monitoring.central_url, age_query))
    lingering_s = loop.time() - started

    cut_ages = [float(s["value"][1]) for s in ages.get(cut.region, [])]
    other_ages = [float(s["value"][1]) for s in ages.get(other.region, [])]
    assert len(cut_ages) == NODES_PER_REGION, ages
    assert min(cut_ages) >= LINGER_CHECK_S, cut_ages
    assert len(other_ages) == NODES_PER_REGION, ages
    assert max(other_ages) < FRESH_AGE_S, other_ages
    # Inside the site, the edge Prometheus still scrapes every agent.
    inside = query_in_namespace(
        cut, f"http://{cut.prometheus_ip}:9090", 'up{job="isolator-agent"} == 1'
    )
    assert len(inside) == NODES_PER_REGION, inside
    with capsys.disabled():
        print(
            f"\npartition of {cut.region}: federation up == 0 after {down_after_s:.1f} s; "
            f"{lingering_s:.1f} s after the cut its agent series were still present with "
            f"timestamp() ages {sorted(round(a, 1) for a in cut_ages)} s "
            f"(other region {sorted(round(a, 1) for a in other_ages)} s)"
        )


async def test_central_restarts_on_the_same_url(monitoring: Monitoring) -> None:
    url = monitoring.central_url

    monitoring.kill_central()
    with pytest.raises(aiohttp.ClientConnectionError):
        await query(url, "up")
    await monitoring.start_central()

    async def federation_up() -> list[dict[str, Any]] | None:
        return await query(monitoring.central_url, 'up{job="federate"} == 1') or None

    assert monitoring.central_url == url
    await eventually(federation_up, "federation up after the restart")
