"""Regions as network namespaces: reachability, partition, weak link and cleanup, as root."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from isolator.lab.netns import (
    GUARD_ROUTE_METRIC,
    WEAK_LINK_FILTER,
    LabLock,
    RegionNetwork,
    WeakLinkUnsupportedError,
    list_namespaces,
    remove_stale_namespaces,
)
from isolator.lab.process import ManagedProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

DEADLINE_S = float(os.environ.get("ISOLATOR_TEST_DEADLINE_S", "10"))
SERVER_PORT = 8000

# Runs in the namespace or the root: one HTTP GET without proxies, printed as a JSON line.
FETCH_SCRIPT = """
import json, sys, time, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
start = time.monotonic()
try:
    with opener.open(sys.argv[1], timeout=float(sys.argv[2])) as response:
        result = {"ok": True, "status": response.status}
except OSError as err:
    result = {"ok": False, "error": str(err)}
result["elapsed_s"] = time.monotonic() - start
print(json.dumps(result))
"""


def fetch(url: str, region: RegionNetwork | None = None, timeout_s: float = 2.0) -> dict[str, Any]:
    """GET ``url`` from inside ``region``'s namespace, or from the root namespace if None."""
    argv = [sys.executable, "-c", FETCH_SCRIPT, url, str(timeout_s)]
    if region is not None:
        argv = region.wrap(argv)
    output = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30)
    result: dict[str, Any] = json.loads(output.stdout)
    return result


def connect_time_s(host: str, port: int) -> float:
    """Return the time a TCP connect from the root namespace takes: one round trip."""
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=5.0):
        return time.monotonic() - start


def root_route(address: str) -> str:
    result = subprocess.run(
        ["ip", "route", "get", address], capture_output=True, text=True, check=False
    )
    return result.stdout + result.stderr


class Servers:
    """HTTP servers that a test starts, stopped when the test ends."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._processes: list[ManagedProcess] = []

    def start(self, host: str, region: RegionNetwork | None = None) -> str:
        """Serve a directory on ``host``:SERVER_PORT and return the URL once it responds."""
        directory = self._root / f"site-{len(self._processes)}"
        directory.mkdir()
        (directory / "index.html").write_text("ok\n")
        argv = [sys.executable, "-m", "http.server", "--bind", host, "--directory"]
        argv += [str(directory), str(SERVER_PORT)]
        process = ManagedProcess(
            f"http-{host}",
            region.wrap(argv) if region else argv,
            directory.with_suffix(".log"),
        )
        self._processes.append(process)
        process.start()
        url = f"http://{host}:{SERVER_PORT}/"
        deadline = time.monotonic() + DEADLINE_S
        while not fetch(url, region, timeout_s=0.5)["ok"]:
            process.check_running()
            assert time.monotonic() < deadline, f"{url} did not answer within {DEADLINE_S} s"
            time.sleep(0.05)
        return url

    def stop_all(self) -> None:
        for process in self._processes:
            process.stop()


@pytest.fixture(scope="module")
def lab() -> Iterator[int]:
    with LabLock.acquire(preferred=1) as lock:
        remove_stale_namespaces(lock.index)
        yield lock.index
        remove_stale_namespaces(lock.index)


@pytest.fixture
def regions(lab: int) -> Iterator[list[RegionNetwork]]:
    networks = [RegionNetwork(lab, 0, "r1"), RegionNetwork(lab, 1, "r2")]
    try:
        for network in networks:
            network.create(node_count=4)
        yield networks
    finally:
        for network in networks:
            network.delete()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    started = Servers(tmp_path)
    yield started
    started.stop_all()


def test_addresses_follow_lab_and_index() -> None:
    region = RegionNetwork(lab=3, index=2, region="r3")

    assert region.namespace == "iso3-2"
    assert region.host_veth == "iso3r2h"
    assert region.ns_veth == "iso3r2n"
    assert region.host_ip == "198.18.26.1"
    assert region.prometheus_ip == "198.18.26.2"
    assert region.node_ip(0) == "198.18.26.10"
    assert region.node_ip(5) == "198.18.26.15"
    longest = RegionNetwork(lab=31, index=7, region="r8")
    assert str(longest.subnet) == "198.18.255.0/24"
    assert len(longest.host_veth.encode()) <= 15


def test_root_and_namespace_reach_each_other(
    regions: list[RegionNetwork], servers: Servers
) -> None:
    for region in regions:
        node_url = servers.start(region.node_ip(1), region)
        host_url = servers.start(region.host_ip)

        from_root = fetch(node_url)
        from_namespace = fetch(host_url, region)

        assert from_root["ok"], from_root
        assert from_namespace["ok"], from_namespace


def test_regions_cannot_reach_each_other(regions: list[RegionNetwork], servers: Servers) -> None:
    first, second = regions
    url = servers.start(second.node_ip(0), second)

    result = fetch(url, first, timeout_s=1.0)

    assert not result["ok"], result


def test_partition_blocks_both_directions(regions: list[RegionNetwork], servers: Servers) -> None:
    region = regions[0]
    node_url = servers.start(region.node_ip(0), region)
    host_url = servers.start(region.host_ip)

    region.partition()
    from_root = fetch(node_url, timeout_s=1.0)
    from_namespace = fetch(host_url, region, timeout_s=1.0)
    inside = fetch(node_url, region, timeout_s=1.0)

    assert not from_root["ok"], from_root
    assert not from_namespace["ok"], from_namespace
    assert inside["ok"], inside
    # The guard route keeps lab traffic off the root's default route while the link is down.
    assert "No route to host" in root_route(region.node_ip(0))
    assert from_root["elapsed_s"] < 0.5, from_root


def test_partition_leaves_other_regions_alone(
    regions: list[RegionNetwork], servers: Servers
) -> None:
    first, second = regions
    url = servers.start(second.node_ip(0), second)

    first.partition()
    result = fetch(url)

    assert result["ok"], result


def test_heal_restores_both_directions(regions: list[RegionNetwork], servers: Servers) -> None:
    region = regions[0]
    node_url = servers.start(region.node_ip(0), region)
    host_url = servers.start(region.host_ip)
    region.partition()

    region.heal()
    from_root = fetch(node_url)
    from_namespace = fetch(host_url, region)

    assert from_root["ok"], from_root
    assert from_namespace["ok"], from_namespace
    assert f"dev {region.host_veth}" in root_route(region.node_ip(0))


def test_weak_link_adds_delay_or_refuses_it_whole(
    regions: list[RegionNetwork], servers: Servers
) -> None:
    """Check that netem slows the link by the delay where the kernel has it.

    Without netem the request is rejected before anything changes, so no test runs on a link
    it did not request."""
    region = regions[0]
    servers.start(region.node_ip(0), region)
    host, delay_ms = region.node_ip(0), 50

    baseline = statistics.median(connect_time_s(host, SERVER_PORT) for _ in range(5))
    refusal = ""
    try:
        region.set_weak_link(delay_ms=delay_ms, jitter_ms=0, loss_pct=50.0)
    except WeakLinkUnsupportedError as err:
        refusal = str(err)
    if refusal:
        assert "sch_netem" in refusal, refusal
        ruleset = subprocess.run(
            ["ip", "netns", "exec", region.namespace, "nft", "list", "ruleset"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert region.filters() == [], "the loss rule must not go in without its delay"
        assert WEAK_LINK_FILTER not in ruleset, ruleset
        return
    region.set_weak_link(delay_ms=delay_ms, jitter_ms=0, loss_pct=0.0)
    weak = statistics.median(connect_time_s(host, SERVER_PORT) for _ in range(5))
    region.clear_weak_link()
    cleared = statistics.median(connect_time_s(host, SERVER_PORT) for _ in range(5))

    # netem delays each direction, so one connect (SYN, SYN-ACK) waits about twice the delay.
    assert weak >= baseline + 2 * delay_ms / 1000 * 0.9, (baseline, weak)
    assert cleared < baseline + delay_ms / 1000, (baseline, cleared)


def test_weak_link_rejects_invalid_values(regions: list[RegionNetwork]) -> None:
    with pytest.raises(ValueError, match=r"loss within 0\.\.100"):
        regions[0].set_weak_link(delay_ms=10, jitter_ms=0, loss_pct=120.0)


def test_delete_removes_everything(lab: int, servers: Servers) -> None:
    region = RegionNetwork(lab, 5, "r6")
    region.create(node_count=1)
    servers.start(region.node_ip(0), region)

    region.delete()

    assert region.namespace not in list_namespaces()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    assert region.host_veth not in links.stdout
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True)
    guard = f"unreachable {region.subnet} metric {GUARD_ROUTE_METRIC}"
    assert guard not in routes.stdout
    region.delete()  # a second delete is harmless


def test_create_replaces_a_stale_region(lab: int, servers: Servers) -> None:
    region = RegionNetwork(lab, 6, "r7")
    region.create(node_count=1)
    try:
        region.create(node_count=2)
        url = servers.start(region.node_ip(1), region)
        result = fetch(url)
    finally:
        region.delete()

    assert result["ok"], result


def test_remove_stale_namespaces_clears_the_lab(lab: int) -> None:
    for index in (2, 3):
        RegionNetwork(lab, index, f"crashed-{index}").create(node_count=1)

    remove_stale_namespaces(lab)

    remaining = [name for name in list_namespaces() if name.startswith(f"iso{lab}-")]
    assert remaining == []


def test_non_ascii_region_name(lab: int, servers: Servers) -> None:
    region = RegionNetwork(lab, 4, "华东-1")
    region.create(node_count=1)
    try:
        url = servers.start(region.node_ip(0), region)
        result = fetch(url)
    finally:
        region.delete()

    assert region.namespace == f"iso{lab}-4"
    assert result["ok"], result
