"""The same node crash handled by upstream Kubernetes: the node lifecycle controller.

A control plane of its own runs kube-controller-manager's node lifecycle controller with its
defaults (--node-monitor-grace-period 50 s, --node-monitor-period 5 s) and KWOK renewing each
Node's Lease as a kubelet with its defaults does (40 s Lease, renewed every 10 s). A crash marks
the Node down: KWOK stops renewing its Lease and stops playing it, and the controller gets no
other signal. The latency runs from the crash to the moment the node's Pod left the Service's
ready endpoints.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes_asyncio import config as k8s_config

from bench.watch import ReadyEndpoints
from isolator.lab import cluster
from isolator.lab.controlplane import ControlPlane, ControlPlaneOptions

NAMESPACE = "default"
SERVICE = "media"
REGION = "upstream"
# Nodes that never crash, so that the zone never has every Node down at once.
SPARE_NODES = 2
# Crashes that run at once, staggered; more rounds follow, each after the last recovered.
ROUND_SIZE = 5
STAGGER_S = 2.5
CUT_TIMEOUT_S = 150.0
READY_TIMEOUT_S = 120.0
# The kubelet's default Lease duration; it renews every quarter of it, as KWOK does.
KUBELET_LEASE_S = 40
GRACE_PERIOD_S = 50


@dataclass
class UpstreamResult:
    """The upstream crashes and the settings they ran with."""

    latencies_s: list[float | None] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


def _node(index: int) -> str:
    return f"upstream-n{index + 1:02d}"


async def _crash(api: Any, watch: ReadyEndpoints, node: str, delay_s: float) -> float | None:
    await asyncio.sleep(delay_s)
    pod = f"{SERVICE}-{node}"
    fault = time.time()
    await cluster.set_node_down(api, node, True)
    cut = await watch.wait_until(lambda: pod in watch.left_since(fault), CUT_TIMEOUT_S)
    if not cut:
        return None
    latency = round(watch.left_since(fault)[pod] - fault, 3)
    print(f"  upstream crash: {node} cut after {latency} s", flush=True)
    return latency


async def run_upstream(
    bin_dir: Path, work_dir: Path, count: int, rng: random.Random
) -> UpstreamResult:
    """Start the upstream control plane, crash ``count`` nodes and return the latencies."""
    options = ControlPlaneOptions(
        node_lifecycle_controller=True,
        node_monitor_grace_period_s=GRACE_PERIOD_S,
        kwok_node_lease_seconds=KUBELET_LEASE_S,
    )
    result = UpstreamResult(
        settings={
            "node_monitor_grace_period_s": GRACE_PERIOD_S,
            "node_monitor_period_s": 5,
            "lease_duration_s": KUBELET_LEASE_S,
            "lease_renew_interval_s": KUBELET_LEASE_S / 4,
            "concurrent_crashes": min(count, ROUND_SIZE),
            "stagger_s": STAGGER_S,
        }
    )
    async with ControlPlane(work_dir, bin_dir, options) as plane:
        api = await k8s_config.new_client_from_config(
            config_file=str(plane.kubeconfig), persist_config=False
        )
        async with api:
            pods = await _create_objects(api, count + SPARE_NODES)

            async def ready() -> set[str]:
                return await cluster.ready_endpoint_pods(api, NAMESPACE, SERVICE)

            async with ReadyEndpoints(ready, set()) as watch:
                if not await watch.wait_until(lambda: watch.ready == pods, READY_TIMEOUT_S):
                    raise TimeoutError(f"upstream Pods not ready: {sorted(pods - watch.ready)}")
                for first in range(0, count, ROUND_SIZE):
                    nodes = [_node(i) for i in range(first, min(count, first + ROUND_SIZE))]
                    delays = [i * STAGGER_S + rng.uniform(0, 1) for i in range(len(nodes))]
                    latencies = await asyncio.gather(
                        *(_crash(api, watch, n, d) for n, d in zip(nodes, delays, strict=True))
                    )
                    result.nodes += nodes
                    result.latencies_s += latencies
                    if first + ROUND_SIZE < count:
                        for node in nodes:
                            await cluster.set_node_down(api, node, False)
                        await watch.wait_until(lambda: watch.ready == pods, READY_TIMEOUT_S)
    return result


async def _create_objects(api: Any, nodes: int) -> set[str]:
    await cluster.create_service(api, NAMESPACE, SERVICE, {"app": SERVICE}, 8080)
    pods = set()
    for index in range(nodes):
        node = _node(index)
        # The address is only a field of the Node: nothing in this control plane dials it.
        await cluster.create_edge_node(api, node, REGION, f"198.19.254.{10 + index}")
        pod = f"{SERVICE}-{node}"
        await cluster.create_pod(api, NAMESPACE, pod, node, {"app": SERVICE}, readiness_gate=False)
        pods.add(pod)
    return pods
