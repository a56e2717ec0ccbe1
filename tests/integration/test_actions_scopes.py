"""Cut scopes, isolations of one Pod, writers that undo a cut, and the records a restarted
isolator reads, on the lab's control plane with the real EndpointSlice controller and KWOK."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient

from isolator.lab import cluster
from isolator.lab.controlplane import ControlPlane
from isolator.model import SERVING_CONDITION
from isolator.sources.kubernetes import CutScope, KubernetesError, KubernetesSource, TargetKind
from isolator.sources.kubernetes.source import MAX_REAPPLY
from tests.integration.test_kubernetes_actions import (
    DEADLINE_S,
    HOLD_S,
    SERVICE,
    Estate,
    cut_records,
    delete_nodes,
    eventually,
    identities,
    kill_kubelet,
    ready_endpoints,
    ready_reason,
    start_nodes,
    stays,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

AGENT_PORT = 9910
INGRESS_SELECTOR = "app.kubernetes.io/component=controller"


@pytest_asyncio.fixture(loop_scope="session")
async def source(control_plane: ControlPlane) -> AsyncIterator[KubernetesSource]:
    kube = await KubernetesSource.create(
        str(control_plane.kubeconfig), AGENT_PORT, verify_timeout_s=DEADLINE_S
    )
    try:
        yield kube
    finally:
        await kube.close()


async def serve(api: ApiClient, estate: Estate, source: KubernetesSource) -> None:
    for node in estate.nodes:
        await source.ensure_serving(node)
    everything = estate.names(*estate.nodes)
    await eventually(ready_endpoints(api, estate.namespace), lambda r: r == everything, "ready")


@pytest_asyncio.fixture(loop_scope="session")
async def gated(api: ApiClient, source: KubernetesSource) -> AsyncIterator[Estate]:
    """Two live nodes with two gated, serving Pods each."""
    estate = await start_nodes(api, 2)
    await serve(api, estate, source)
    yield estate
    await delete_nodes(api, estate)


@pytest_asyncio.fixture(loop_scope="session")
async def plain(api: ApiClient) -> AsyncIterator[Estate]:
    """Two live nodes with two Pods each that do not declare the serving gate."""
    estate = await start_nodes(api, 2, gated=False)
    everything = estate.names(*estate.nodes)
    await eventually(ready_endpoints(api, estate.namespace), lambda r: r == everything, "ready")
    yield estate
    await delete_nodes(api, estate)


async def conditions(api: ApiClient, namespace: str, pod: str) -> dict[str, str]:
    return await cluster.pod_conditions(api, namespace, pod)


async def test_component_cut_writes_gate_only(
    api: ApiClient, gated: Estate, source: KubernetesSource
) -> None:
    failed, healthy = gated.nodes
    before = await identities(api, gated.namespace)

    result = await source.cut_node(failed, "kube-proxy failed", "inc-comp", scope="component")

    assert result.verified, result.detail
    assert result.scope == "component"
    assert result.pods == gated.keys(failed)
    endpoints = ready_endpoints(api, gated.namespace)
    await stays(endpoints, lambda ready: ready == gated.names(healthy), 2.0)
    for pod in gated.names(failed):
        assert (await conditions(api, gated.namespace, pod))[SERVING_CONDITION] == "False"
        # The live kubelet (KWOK) recomputed Ready from the gate; the isolator did not write it.
        assert await ready_reason(api, gated.namespace, pod) == "ReadinessGatesNotReady"
        record = json.loads((await cut_records(api, gated.namespace))[pod])
        assert record["scope"] == "component"

    restored = await source.restore_node(failed, "inc-comp")

    assert restored.verified, restored.detail
    await eventually(endpoints, lambda ready: ready == gated.names(*gated.nodes), "all ready")
    assert await cut_records(api, gated.namespace) == {}
    after = await identities(api, gated.namespace)
    for pod in gated.names(failed):
        assert after[pod].uid == before[pod].uid
        assert after[pod].restarts == before[pod].restarts


async def test_component_cut_without_gate_undone_by_kubelet(
    api: ApiClient, plain: Estate, source: KubernetesSource
) -> None:
    failed, _ = plain.nodes

    result = await source.cut_node(failed, "kube-proxy failed", "inc-nogate", scope="component")

    # The live kubelet sets Ready back True on a Pod that has no gate to keep it False.
    assert not result.verified, result.detail
    assert "still ready" in result.detail
    assert f"applied again {MAX_REAPPLY} times" in result.detail
    assert set(await cut_records(api, plain.namespace)) == plain.names(failed)
    await source.restore_node(failed, "inc-nogate")
    assert await cut_records(api, plain.namespace) == {}


async def test_ingress_cut_takes_controller_pods_only(
    api: ApiClient, source: KubernetesSource
) -> None:
    estate = await start_nodes(api, 1)
    node = estate.nodes[0]
    controller_labels = {"app": "ingress", "app.kubernetes.io/component": "controller"}
    controller = f"{node}-ingress"
    await cluster.create_service(api, estate.namespace, "ingress", {"app": "ingress"}, 443)
    await cluster.create_pod(api, estate.namespace, controller, node, controller_labels)
    try:
        await source.ensure_serving(node)
        app_ready = ready_endpoints(api, estate.namespace)
        await eventually(app_ready, lambda r: r == estate.names(node), "app Pods ready")

        async def controller_ready() -> set[str]:
            return await cluster.ready_endpoint_pods(api, estate.namespace, "ingress")

        await eventually(controller_ready, lambda r: r == {controller}, "controller ready")

        result = await source.cut_node(
            node,
            "ingress path failed",
            "inc-ingress",
            scope="ingress",
            pod_selector=INGRESS_SELECTOR,
        )

        assert result.verified, result.detail
        assert result.pods == (f"{estate.namespace}/{controller}",)
        await eventually(controller_ready, lambda r: r == set(), "controller cut")
        await stays(app_ready, lambda ready: ready == estate.names(node), 2.0)

        restored = await source.restore_node(node, "inc-ingress")

        assert restored.pods == (f"{estate.namespace}/{controller}",)
        assert restored.verified, restored.detail
        assert await controller_ready() == {controller}
    finally:
        await delete_nodes(api, estate)


async def test_ingress_cut_needs_selector(source: KubernetesSource) -> None:
    with pytest.raises(ValueError, match="label selector"):
        await source.cut_node("any", "ingress path failed", "inc", scope=CutScope.INGRESS)


@dataclass
class RevertingController:
    """Sets Ready back True through the status subresource on every watched Pod that shows
    Ready False, as a misbehaving controller or admission webhook would."""

    api: ApiClient
    namespace: str
    pods: set[str]
    reverts: dict[str, int] = field(default_factory=dict)

    async def run(self) -> None:
        core = client.CoreV1Api(self.api)
        while True:
            listed = await core.list_namespaced_pod(self.namespace)
            for pod in listed.items:
                if pod.metadata.name not in self.pods:
                    continue
                ready = [c for c in pod.status.conditions or [] if c.type == "Ready"]
                if ready and ready[0].status == "False":
                    await cluster.set_pod_condition(
                        self.api, self.namespace, pod.metadata.name, "Ready", True, "Reverted"
                    )
                    self.reverts[pod.metadata.name] = self.reverts.get(pod.metadata.name, 0) + 1
            await asyncio.sleep(0.02)

    def total(self) -> int:
        return sum(self.reverts.values())


async def test_cut_undone_by_controller_reported_unverified(
    api: ApiClient, gated: Estate, source: KubernetesSource
) -> None:
    failed, healthy = gated.nodes
    await kill_kubelet(api, failed)
    reverter = RevertingController(api, gated.namespace, gated.names(failed))
    task = asyncio.create_task(reverter.run())
    try:
        result = await source.cut_node(failed, "node down", "inc-revert")

        assert not result.verified, result.detail
        assert f"applied again {MAX_REAPPLY} times" in result.detail
        for pod in gated.names(failed):
            # The first cut and each time it was applied again, never more.
            assert 2 <= reverter.reverts.get(pod, 0) <= 1 + MAX_REAPPLY, reverter.reverts
        settled = reverter.total()
        await asyncio.sleep(2.0)
        assert reverter.total() == settled, "the isolator kept fighting after it reported"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert set(await cut_records(api, gated.namespace)) == gated.names(failed)
    await cluster.set_node_down(api, failed, False)
    await source.restore_node(failed, "inc-revert")
    await eventually(
        ready_endpoints(api, gated.namespace),
        lambda ready: ready == gated.names(failed, healthy),
        "restored",
    )


async def test_pod_isolation_outlives_node_restore(
    api: ApiClient, gated: Estate, source: KubernetesSource
) -> None:
    failed, healthy = gated.nodes
    isolated, other = sorted(gated.names(failed))
    key = f"{gated.namespace}/{isolated}"
    endpoints = ready_endpoints(api, gated.namespace)

    single = await source.cut_pod(key, "bad release", "inc-pod", who="alice", expires_at=2e9)
    await source.cut_node(failed, "node down", "inc-node")
    await source.restore_node(failed, "inc-node")

    assert single.verified, single.detail
    assert single.node == failed
    await eventually(endpoints, lambda r: r == gated.names(healthy) | {other}, "node back")
    await stays(endpoints, lambda r: isolated not in r, HOLD_S / 5)
    record = json.loads((await cut_records(api, gated.namespace))[isolated])
    assert record["owner"] == "pod"
    assert record["who"] == "alice"
    assert record["expiresAt"] == "2033-05-18T03:33:20Z"

    back = await source.restore_pod(key, "inc-pod")

    assert back.pods == (key,)
    assert back.verified, back.detail
    assert await endpoints() == gated.names(*gated.nodes)


async def test_pod_isolation_of_missing_pod_raises(source: KubernetesSource) -> None:
    with pytest.raises(KubernetesError, match="not found") as info:
        await source.cut_pod(f"nowhere-{uuid.uuid4().hex[:6]}/nothing", "r", "inc")
    assert info.value.status == 404


async def test_recorded_isolations_describe_each_cut(
    api: ApiClient, gated: Estate, source: KubernetesSource
) -> None:
    failed, healthy = gated.nodes
    single = sorted(gated.names(healthy))[0]
    await source.cut_node(failed, "kube-proxy failed", "inc-rec", scope="component", who="bob")
    await source.cut_pod(f"{gated.namespace}/{single}", "bad release", "inc-rec-pod")

    found = {(i.kind, i.target): i for i in await source.recorded_isolations()}

    node = found[(TargetKind.NODE, failed)]
    assert node.scope == "component"
    assert node.who == "bob"
    assert node.incident == "inc-rec"
    assert node.objects == gated.keys(failed)
    assert node.complete
    pod = found[(TargetKind.POD, f"{gated.namespace}/{single}")]
    assert pod.node == healthy
    assert pod.who is None
    assert (TargetKind.NODE, healthy) not in found

    # A Pod of the node without a record, as after a cut that stopped halfway.
    late = f"{failed}-late"
    await cluster.create_pod(api, gated.namespace, late, failed, {"app": SERVICE})
    await eventually(
        lambda: cluster.pod_conditions(api, gated.namespace, late),
        lambda c: c.get("ContainersReady") == "True",
        "late Pod running",
    )
    half = {(i.kind, i.target): i for i in await source.recorded_isolations()}
    assert not half[(TargetKind.NODE, failed)].complete

    await source.cut_node(failed, "kube-proxy failed", "inc-rec", scope="component")
    assert {(i.kind, i.target): i for i in await source.recorded_isolations()}[
        (TargetKind.NODE, failed)
    ].complete
    await source.restore_node(failed, "inc-rec")
    await source.restore_pod(f"{gated.namespace}/{single}", "inc-rec-pod")
    assert await cut_records(api, gated.namespace) == {}


async def test_raw_patch_errors_keep_status(
    api: ApiClient, gated: Estate, source: KubernetesSource
) -> None:
    """Pod patches skip the client's model classes; errors still carry their HTTP status."""
    pod = sorted(gated.names(gated.nodes[0]))[0]
    stale = {"metadata": {"resourceVersion": "1", "annotations": {"example.com/x": "y"}}}

    with pytest.raises(KubernetesError) as conflict:
        await source._kube.patch_pod(gated.namespace, pod, stale)
    with pytest.raises(KubernetesError) as missing:
        await source._kube.patch_pod_status(gated.namespace, "no-such-pod", {"status": {}})

    assert conflict.value.status == 409
    assert "Conflict" in str(conflict.value)
    assert missing.value.status == 404
