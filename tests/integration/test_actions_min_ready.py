"""The minimum of ready endpoints per Service on the real control plane: the census that the
Kubernetes adapter counts from EndpointSlices, and a cut held so a Service keeps one endpoint.

Evidence is simulated on a manual clock (tests.unit.harness). The census and every cut go to
the lab's control plane, where the EndpointSlice controller and KWOK react for real.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient

from isolator.engine.decide import Kind
from isolator.lab import cluster
from isolator.lab.controlplane import ControlPlane
from isolator.sources.kubernetes import KubernetesSource
from tests.integration.test_actions_controller import (
    INGRESS_SELECTOR,
    run_settled,
    start_controller,
)
from tests.integration.test_kubernetes_actions import Estate, eventually, kill_kubelet

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.timeout(180),
]

AGENT_PORT = 9910
SERVICE = "checkout"
SERVICE_PORT = 8080


@pytest_asyncio.fixture(loop_scope="session")
async def source(control_plane: ControlPlane) -> AsyncIterator[KubernetesSource]:
    kube = await KubernetesSource.create(str(control_plane.kubeconfig), AGENT_PORT)
    try:
        yield kube
    finally:
        await kube.close()


@pytest_asyncio.fixture(loop_scope="session")
async def estate(api: ApiClient) -> AsyncIterator[Estate]:
    """Two edge Nodes in a region of their own, with one gated Pod of checkout on each."""
    suffix = uuid.uuid4().hex[:8]
    namespace = f"t-{suffix}"
    await cluster.create_namespace(api, namespace)
    await cluster.create_service(api, namespace, SERVICE, {"app": SERVICE}, SERVICE_PORT)
    pods_by_node = {}
    for index in range(2):
        node = f"edge-{suffix}-{index}"
        await cluster.create_edge_node(api, node, f"region-{suffix}", f"198.18.21.{index + 1}")
        pods_by_node[node] = [f"{node}-p0"]
        await cluster.create_pod(api, namespace, f"{node}-p0", node, {"app": SERVICE})
    yield Estate(namespace, pods_by_node)
    for node in pods_by_node:
        await client.CoreV1Api(api).delete_node(node)


async def test_one_of_two_replicas_cut_other_held(
    api: ApiClient, estate: Estate, source: KubernetesSource
) -> None:
    # The region budget and the fail-safe allow both cuts, so only the Service's minimum of
    # one ready endpoint (the default) can hold one of them back.
    harness = await start_controller(
        source, region_max_cut_fraction=1.0, fail_safe_region_fraction=1.0
    )
    first, second = sorted(estate.nodes)
    service = f"{estate.namespace}/{SERVICE}"
    both = estate.names(first, second)
    await eventually(
        lambda: cluster.ready_endpoint_pods(api, estate.namespace, SERVICE),
        lambda ready: ready == both,
        "both replicas ready",
    )

    census = await source.endpoint_census(INGRESS_SELECTOR)
    [checkout] = [s for s in census.services if s.service == service]
    assert checkout.ready_pods == {
        f"{estate.namespace}/{first}-p0": first,
        f"{estate.namespace}/{second}-p0": second,
    }
    assert checkout.min_ready is None
    assert checkout.other_ready == 0

    for node in (first, second):
        await kill_kubelet(api, node)
    harness.silent.update((first, second))
    harness.site_down.update((first, second))
    await run_settled(harness, 10.0)

    controller = harness.controller
    assert first in controller.isolations
    assert controller.isolations[first].verified is True
    assert second not in controller.isolations
    [hold] = [d for d in controller.state.holds if d.node == second and d.kind is Kind.HOLD]
    assert hold.reason.startswith("min ready endpoints: ")
    assert f"Service {service} would keep 0 ready endpoints, minimum 1" in hold.reason
    audited = [r for r in controller.audit if r["action"] == "hold" and r["target"] == second]
    assert len(audited) == 1
    assert service in audited[0]["reason"]
    ready = await cluster.ready_endpoint_pods(api, estate.namespace, SERVICE)
    assert ready == estate.names(second)

    await source.restore_node(first, controller.isolations[first].incident)
