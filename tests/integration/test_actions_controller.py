"""The control loop acting through the real Kubernetes adapter: retries within a budget, cuts
that widen, recovery of a cut that stopped halfway, and split horizon for a partitioned region.

Evidence is simulated on a manual clock (tests.unit.harness); every action goes to the lab's
control plane, where the EndpointSlice controller and KWOK react for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import pytest_asyncio
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient

from isolator.clock import ManualClock
from isolator.engine.loop import Controller
from isolator.lab import cluster
from isolator.lab.controlplane import ControlPlane
from isolator.metrics import Metrics
from isolator.settings import Settings
from isolator.sources.kubernetes import KubernetesSource
from isolator.sources.kubernetes.horizon import FALLBACK_ANNOTATION
from tests.integration.test_actions_scopes import RevertingController
from tests.integration.test_kubernetes_actions import (
    Estate,
    cut_records,
    delete_nodes,
    eventually,
    kill_kubelet,
    ready_endpoints,
    start_nodes,
)
from tests.unit.fakes import FakeCluster, FakeProber, FakeSite
from tests.unit.harness import FAST, Harness

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.timeout(180),
]

AGENT_PORT = 9910
# Short, because a cut that something keeps undoing waits the whole read-back every attempt.
VERIFY_TIMEOUT_S = 1.5
RETRY_LIMIT = 2
INGRESS_SELECTOR = "app.kubernetes.io/component=controller"


@pytest_asyncio.fixture(loop_scope="session")
async def source(control_plane: ControlPlane) -> AsyncIterator[KubernetesSource]:
    kube = await KubernetesSource.create(
        str(control_plane.kubeconfig), AGENT_PORT, verify_timeout_s=VERIFY_TIMEOUT_S
    )
    try:
        yield kube
    finally:
        await kube.close()


async def start_controller(source: KubernetesSource, **overrides: Any) -> Harness:
    """Start a controller on the real adapter, recover its state and run it for a second."""
    clock = ManualClock()
    settings = Settings(
        **{
            **FAST,
            "action_retry_limit": RETRY_LIMIT,
            "action_retry_interval_s": 2.0,
            "ingress_controller_selector": INGRESS_SELECTOR,
            **overrides,
        }
    )
    site, prober = FakeSite(), FakeProber()
    controller = Controller(settings, source, site, prober, Metrics(), clock)
    # The harness only drives evidence and ticks; its cluster is the real adapter here.
    harness = Harness(controller, cast(FakeCluster, source), site, prober, clock)
    await controller._recover_isolations()
    await controller.refresh()
    await controller.settle()
    await harness.run_for(1.0)
    await controller.settle()
    return harness


async def run_settled(harness: Harness, seconds: float) -> None:
    """Advance the simulated evidence, letting every action finish after each pass."""
    for _ in range(round(seconds / harness.controller.settings.loop_interval_s)):
        await harness.step()
        await harness.controller.settle()


def audit_of(harness: Harness, target: str) -> list[tuple[str, str]]:
    return [(r["action"], r["result"]) for r in harness.controller.audit if r["target"] == target]


@pytest_asyncio.fixture(loop_scope="session")
async def estate(api: ApiClient, source: KubernetesSource) -> AsyncIterator[Estate]:
    created = await start_nodes(api, 3)
    yield created
    await delete_nodes(api, created)


async def test_undone_cut_retried_within_budget(
    api: ApiClient, estate: Estate, source: KubernetesSource
) -> None:
    harness = await start_controller(source)
    failed = estate.nodes[0]
    await kill_kubelet(api, failed)
    reverter = RevertingController(api, estate.namespace, estate.names(failed))
    task = asyncio.create_task(reverter.run())
    try:
        harness.silent.add(failed)
        harness.site_down.add(failed)
        await run_settled(harness, 30.0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    isolation = harness.controller.isolations[failed]
    assert isolation.verified is False
    assert isolation.attempts == 1 + RETRY_LIMIT
    assert audit_of(harness, failed) == [("cut", "unverified")] * (1 + RETRY_LIMIT)
    await source.restore_node(failed, isolation.incident)


async def test_half_done_cut_completed_after_restart(
    api: ApiClient, estate: Estate, source: KubernetesSource
) -> None:
    node = estate.nodes[1]
    await source.cut_node(node, "node down", "inc-half")
    late = f"{node}-late"
    await cluster.create_pod(api, estate.namespace, late, node, {"app": "web"})
    await eventually(
        lambda: cluster.pod_conditions(api, estate.namespace, late),
        lambda conditions: conditions.get("ContainersReady") == "True",
        "late Pod running",
    )

    harness = await start_controller(source)

    isolation = harness.controller.isolations[node]
    assert isolation.incident == "inc-half"
    assert isolation.verified, isolation.detail
    assert set(await cut_records(api, estate.namespace)) == estate.names(node) | {late}
    assert audit_of(harness, node)[0] == ("cut", "verified")


async def test_ingress_cut_widens_when_node_dies(
    api: ApiClient, estate: Estate, source: KubernetesSource
) -> None:
    node = estate.nodes[2]
    ingress_pod = f"{node}-ingress"
    labels = {"app": "ingress", "app.kubernetes.io/component": "controller"}
    await cluster.create_pod(api, estate.namespace, ingress_pod, node, labels)
    harness = await start_controller(source)
    await eventually(
        lambda: cluster.pod_conditions(api, estate.namespace, ingress_pod),
        lambda conditions: conditions.get("Ready") == "True",
        "ingress controller ready",
    )
    # The serving gates go True in the controller's first pass, and the EndpointSlice
    # controller lists the Pods a moment later. The ingress cut must be seen to leave them.
    await eventually(
        ready_endpoints(api, estate.namespace),
        lambda ready: estate.names(node) <= ready,
        "node's Pods serving",
    )

    harness.failing[node] = {"ingress"}
    await run_settled(harness, 4.0)

    assert harness.controller.isolations[node].scope == "ingress"
    assert set(await cut_records(api, estate.namespace)) == {ingress_pod}
    assert estate.names(node) <= await ready_endpoints(api, estate.namespace)()

    harness.silent.add(node)
    harness.site_down.add(node)
    await run_settled(harness, 5.0)

    assert harness.controller.isolations[node].scope == "node"
    assert set(await cut_records(api, estate.namespace)) == estate.names(node) | {ingress_pod}
    await eventually(
        ready_endpoints(api, estate.namespace),
        lambda ready: not ready & estate.names(node),
        "node's Pods cut",
    )


async def read_spec(api: ApiClient, namespace: str, name: str) -> dict[str, Any]:
    raw = await client.NetworkingV1Api(api).read_namespaced_ingress(
        name, namespace, _preload_content=False
    )
    data: dict[str, Any] = json.loads(await raw.read())["spec"]
    return data


async def test_partitioned_region_split_and_rejoined(
    api: ApiClient, source: KubernetesSource
) -> None:
    suffix = uuid.uuid4().hex[:6]
    regions = [f"{name}-{suffix}" for name in ("north", "south", "east")]
    namespace = f"cloud-{suffix}"
    created: list[str] = []
    core = client.CoreV1Api(api)
    try:
        for index, region in enumerate(regions):
            for j in range(2):
                node = f"{region}-n{j}"
                await cluster.create_edge_node(api, node, region, f"198.18.30.{index * 2 + j + 1}")
                created.append(node)
        await cluster.create_namespace(api, namespace)
        for service in ("app", "fallback"):
            await cluster.create_service(api, namespace, service, {"app": service}, 80)
        body = {
            "metadata": {
                "name": "portal",
                "labels": {"isolator.io/region": regions[0]},
                "annotations": {FALLBACK_ANNOTATION: "fallback"},
            },
            "spec": {"defaultBackend": {"service": {"name": "app", "port": {"number": 80}}}},
        }
        await client.NetworkingV1Api(api).create_namespaced_ingress(namespace, body)
        original = await read_spec(api, namespace, "portal")
        harness = await start_controller(source)

        harness.silent.update(n for n in created if n.startswith(regions[0]))
        harness.dark_regions.add(regions[0])
        await run_settled(harness, 6.0)

        split = harness.controller.splits[regions[0]]
        assert split.verified, split.detail
        moved = await read_spec(api, namespace, "portal")
        assert moved["defaultBackend"]["service"]["name"] == "fallback"
        # Other tests share the control plane; only this test's regions are its concern.
        assert set(harness.controller.splits) & set(regions) == {regions[0]}

        harness.silent.clear()
        harness.dark_regions.clear()
        # The region verdict eases after its hold, then the rejoin waits out the restore hold.
        settings = harness.controller.settings
        await run_settled(harness, settings.region_verdict_hold_s + 12.0)

        assert regions[0] not in harness.controller.splits
        assert await read_spec(api, namespace, "portal") == original
        assert [a for a, _ in audit_of(harness, regions[0])] == ["cut", "restore"]
    finally:
        for node in created:
            await core.delete_node(node)
