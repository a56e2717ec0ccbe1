"""KubernetesSource on the lab's control plane: serving, cut, restore and read-back of Pod
traffic, judged by the EndpointSlices that the real EndpointSlice controller writes."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import pytest
import pytest_asyncio
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient

from isolator.lab import cluster
from isolator.lab.controlplane import ControlPlane
from isolator.model import CUT_ANNOTATION, SERVING_CONDITION
from isolator.sources.kubernetes import KubernetesSource

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

# How long a state change may take to show; KWOK and the controllers react within about a second.
DEADLINE_S = float(os.environ.get("ISOLATOR_TEST_DEADLINE_S", "10"))
# How long a cut must keep holding once the EndpointSlices show it.
HOLD_S = float(os.environ.get("ISOLATOR_TEST_CUT_HOLD_S", "10"))
POLL_S = 0.1
SERVICE = "web"
SERVICE_PORT = 8080
PODS_PER_NODE = 2
AGENT_PORT = 9910

T = TypeVar("T")


async def eventually(
    read: Callable[[], Awaitable[T]], accept: Callable[[T], bool], description: str
) -> T:
    """Poll ``read`` until ``accept`` holds; fail with the last value at the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = await read()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{description} not reached within {DEADLINE_S} s; last value: {value!r}")
        await asyncio.sleep(POLL_S)


async def stays(read: Callable[[], Awaitable[T]], accept: Callable[[T], bool], seconds: float) -> T:
    """Poll ``read`` for ``seconds`` and fail as soon as ``accept`` does not hold."""
    end = time.monotonic() + seconds
    while True:
        value = await read()
        assert accept(value), value
        if time.monotonic() > end:
            return value
        await asyncio.sleep(POLL_S)


@dataclass
class Estate:
    """A Service whose Pods run on several edge Nodes of one region."""

    namespace: str
    pods_by_node: dict[str, list[str]]  # node -> Pod names

    @property
    def nodes(self) -> list[str]:
        return list(self.pods_by_node)

    def keys(self, node: str) -> tuple[str, ...]:
        return tuple(sorted(f"{self.namespace}/{pod}" for pod in self.pods_by_node[node]))

    def names(self, *nodes: str) -> set[str]:
        return {pod for node in nodes for pod in self.pods_by_node[node]}


@dataclass(frozen=True)
class PodIdentity:
    uid: str
    restarts: tuple[int, ...]
    resource_version: str


async def identities(api: ApiClient, namespace: str) -> dict[str, PodIdentity]:
    pods = await client.CoreV1Api(api).list_namespaced_pod(namespace)
    return {
        pod.metadata.name: PodIdentity(
            uid=pod.metadata.uid,
            restarts=tuple(s.restart_count for s in pod.status.container_statuses or []),
            resource_version=pod.metadata.resource_version,
        )
        for pod in pods.items
    }


async def cut_records(api: ApiClient, namespace: str) -> dict[str, str]:
    pods = await client.CoreV1Api(api).list_namespaced_pod(namespace)
    return {
        pod.metadata.name: pod.metadata.annotations[CUT_ANNOTATION]
        for pod in pods.items
        if CUT_ANNOTATION in (pod.metadata.annotations or {})
    }


async def event_reasons(api: ApiClient, namespace: str) -> list[tuple[str, str, str]]:
    """Return (kind, name, reason) of every Event about objects in ``namespace``."""
    return sorted(
        (event["regarding"]["kind"], event["regarding"]["name"], event["reason"])
        for event in await cluster.events(api, namespace)
        if event.get("reportingController") == "isolator"
    )


def ready_endpoints(api: ApiClient, namespace: str) -> Callable[[], Awaitable[set[str]]]:
    return lambda: cluster.ready_endpoint_pods(api, namespace, SERVICE)


async def pod_condition(api: ApiClient, namespace: str, pod: str, kind: str) -> str | None:
    return (await cluster.pod_conditions(api, namespace, pod)).get(kind)


async def ready_reason(api: ApiClient, namespace: str, pod: str) -> str | None:
    """Return the reason of the Pod's Ready condition, which names the writer of a cut."""
    read = await client.CoreV1Api(api).read_namespaced_pod_status(pod, namespace)
    for condition in read.status.conditions or []:
        if condition.type == "Ready":
            return str(condition.reason) if condition.reason is not None else None
    return None


async def kill_kubelet(api: ApiClient, node: str) -> None:
    """Mark the Node down and wait until KWOK reports it Unknown, as after a kubelet death.

    From then on nothing but the isolator writes the Node's Pods, so a Ready=False found on
    them afterwards is the isolator's own write.
    """
    await cluster.set_node_down(api, node, True)
    await eventually(lambda: cluster.node_condition(api, node), lambda s: s == "Unknown", "down")


@pytest_asyncio.fixture(loop_scope="session")
async def source(control_plane: ControlPlane) -> AsyncIterator[KubernetesSource]:
    kube = await KubernetesSource.create(
        str(control_plane.kubeconfig), AGENT_PORT, verify_timeout_s=DEADLINE_S
    )
    try:
        yield kube
    finally:
        await kube.close()


@pytest_asyncio.fixture(loop_scope="session")
async def dry_source(control_plane: ControlPlane) -> AsyncIterator[KubernetesSource]:
    kube = await KubernetesSource.create(
        str(control_plane.kubeconfig), AGENT_PORT, dry_run=True, verify_timeout_s=DEADLINE_S
    )
    try:
        yield kube
    finally:
        await kube.close()


async def start_nodes(api: ApiClient, count: int, *, gated: bool = True) -> Estate:
    """Create ``count`` edge Nodes with PODS_PER_NODE Pods each behind one Service."""
    suffix = uuid.uuid4().hex[:8]
    namespace = f"t-{suffix}"
    await cluster.create_namespace(api, namespace)
    await cluster.create_service(api, namespace, SERVICE, {"app": SERVICE}, SERVICE_PORT)
    pods_by_node: dict[str, list[str]] = {}
    for index in range(count):
        node = f"edge-{suffix}-{index}"
        await cluster.create_edge_node(api, node, "region-a", f"198.18.20.{index + 1}")
        pods_by_node[node] = [f"{node}-p{p}" for p in range(PODS_PER_NODE)]
        for pod in pods_by_node[node]:
            await cluster.create_pod(
                api, namespace, pod, node, {"app": SERVICE}, readiness_gate=gated
            )
    estate = Estate(namespace, pods_by_node)

    async def running() -> set[str]:
        pods = await client.CoreV1Api(api).list_namespaced_pod(namespace)
        return {
            p.metadata.name for p in pods.items if p.status.pod_ip and p.status.phase == "Running"
        }

    await eventually(running, lambda names: names == estate.names(*estate.nodes), "Pods running")
    return estate


async def delete_nodes(api: ApiClient, estate: Estate) -> None:
    # No namespace controller runs, so the namespace and its Pods stay until the session's
    # control plane is thrown away. The Nodes go, so that later tests see only their own.
    for node in estate.nodes:
        await client.CoreV1Api(api).delete_node(node)


@pytest_asyncio.fixture(loop_scope="session")
async def estate(api: ApiClient) -> AsyncIterator[Estate]:
    """Three edge Nodes with two gated Pods each behind the Service "web"."""
    created = await start_nodes(api, 3)
    yield created
    await delete_nodes(api, created)


@pytest_asyncio.fixture(loop_scope="session")
async def serving(api: ApiClient, estate: Estate, source: KubernetesSource) -> Estate:
    """The estate with every Pod made ready by ensure_serving."""
    for node in estate.nodes:
        await source.ensure_serving(node)
    all_pods = estate.names(*estate.nodes)
    await eventually(ready_endpoints(api, estate.namespace), lambda r: r == all_pods, "all ready")
    return estate


async def test_list_edge_nodes_has_agent_urls(estate: Estate, source: KubernetesSource) -> None:
    nodes = {node.name: node for node in await source.list_edge_nodes()}

    for index, name in enumerate(estate.nodes):
        assert nodes[name].region == "region-a"
        assert nodes[name].agent_url == f"http://198.18.20.{index + 1}:{AGENT_PORT}"


async def test_ensure_serving_makes_gated_pods_ready(
    api: ApiClient, estate: Estate, source: KubernetesSource
) -> None:
    endpoints = ready_endpoints(api, estate.namespace)
    assert await endpoints() == set(), "gated Pods stay unready until the isolator serves them"

    changed = [await source.ensure_serving(node) for node in estate.nodes]

    assert changed == [PODS_PER_NODE] * len(estate.nodes)
    all_pods = estate.names(*estate.nodes)
    await eventually(endpoints, lambda ready: ready == all_pods, "every Pod ready")
    assert [await source.ensure_serving(node) for node in estate.nodes] == [0, 0, 0]


async def test_ensure_serving_nodes_serves_only_those_named(
    api: ApiClient, estate: Estate, source: KubernetesSource
) -> None:
    endpoints = ready_endpoints(api, estate.namespace)
    assert await endpoints() == set(), "gated Pods stay unready until the isolator serves them"
    first, second, third = estate.nodes

    changed = await source.ensure_serving_nodes([first, second])

    assert changed == 2 * PODS_PER_NODE
    served = estate.names(first, second)
    await eventually(endpoints, lambda ready: ready == served, "the two nodes' Pods ready")
    assert await source.ensure_serving_nodes([first, second]) == 0
    assert await source.ensure_serving_nodes([third]) == PODS_PER_NODE


async def test_cut_drops_exactly_one_nodes_pods(
    api: ApiClient, serving: Estate, source: KubernetesSource
) -> None:
    failed, *healthy = serving.nodes
    before = await identities(api, serving.namespace)
    await kill_kubelet(api, failed)

    result = await source.cut_node(failed, "node down", "inc-cut")

    assert result.node == failed
    assert result.pods == serving.keys(failed)
    assert result.verified, result.detail
    endpoints = ready_endpoints(api, serving.namespace)
    assert await endpoints() == serving.names(*healthy)
    await stays(endpoints, lambda ready: ready == serving.names(*healthy), HOLD_S)
    after = await identities(api, serving.namespace)
    for pod in serving.names(*healthy):
        assert after[pod] == before[pod], f"{pod} on a healthy node was changed"
    for pod in serving.names(failed):
        assert await pod_condition(api, serving.namespace, pod, "Ready") == "False"
        assert await ready_reason(api, serving.namespace, pod) == "IsolatorCut"
        assert await pod_condition(api, serving.namespace, pod, SERVING_CONDITION) == "False"


async def test_cut_records_what_it_replaced(
    api: ApiClient, serving: Estate, source: KubernetesSource
) -> None:
    failed = serving.nodes[0]

    await source.cut_node(failed, "node down", "inc-record")

    records = await cut_records(api, serving.namespace)
    assert set(records) == serving.names(failed)
    for text in records.values():
        record = json.loads(text)
        assert record["reason"] == "node down"
        assert record["incident"] == "inc-record"
        assert record["at"].endswith("Z")
        assert record["previousReady"] == "True"
        assert record["previousServing"] == "True"
    reasons = await event_reasons(api, serving.namespace)
    assert reasons == sorted(("Pod", pod, "IsolatorCut") for pod in serving.names(failed))
    node_events = await event_reasons(api, "default")
    assert ("Node", failed, "IsolatorCut") in node_events


async def test_restore_brings_pods_back_unchanged(
    api: ApiClient, serving: Estate, source: KubernetesSource
) -> None:
    failed = serving.nodes[0]
    before = await identities(api, serving.namespace)
    await kill_kubelet(api, failed)
    await source.cut_node(failed, "node down", "inc-restore")
    await cluster.set_node_down(api, failed, False)

    result = await source.restore_node(failed, "inc-restore")

    assert result.pods == serving.keys(failed)
    assert result.verified, result.detail
    all_pods = serving.names(*serving.nodes)
    assert await ready_endpoints(api, serving.namespace)() == all_pods
    assert await cut_records(api, serving.namespace) == {}
    after = await identities(api, serving.namespace)
    for pod in all_pods:
        assert after[pod].uid == before[pod].uid, f"{pod} was replaced"
        assert after[pod].restarts == before[pod].restarts, f"{pod} restarted"
    restore_events = [
        r for r in await event_reasons(api, serving.namespace) if r[2] != "IsolatorCut"
    ]
    assert restore_events == sorted(
        ("Pod", pod, "IsolatorRestore") for pod in serving.names(failed)
    )


async def test_second_restore_changes_nothing(
    api: ApiClient, serving: Estate, source: KubernetesSource
) -> None:
    failed = serving.nodes[0]
    await source.cut_node(failed, "node down", "inc-twice")
    await source.restore_node(failed, "inc-twice")
    before = await identities(api, serving.namespace)

    again = await source.restore_node(failed, "inc-twice")

    assert again.pods == ()
    assert again.verified, again.detail
    assert await identities(api, serving.namespace) == before


async def test_cut_nodes_rebuilds_state(
    api: ApiClient, serving: Estate, source: KubernetesSource, control_plane: ControlPlane
) -> None:
    failed, *healthy = serving.nodes
    await source.cut_node(failed, "node down", "inc-rebuild")

    restarted = await KubernetesSource.create(str(control_plane.kubeconfig), AGENT_PORT)
    try:
        state = await restarted.cut_nodes()
    finally:
        await restarted.close()

    assert state[failed] == list(serving.keys(failed))
    for node in healthy:
        assert node not in state


async def test_dry_run_writes_nothing(
    api: ApiClient, estate: Estate, dry_source: KubernetesSource
) -> None:
    node = estate.nodes[0]
    before = await identities(api, estate.namespace)

    served = await dry_source.ensure_serving(node)
    result = await dry_source.cut_node(node, "node down", "inc-dry")
    restored = await dry_source.restore_node(node, "inc-dry")

    assert served == 0
    assert result.pods == estate.keys(node)
    assert not result.verified
    assert "dry run" in result.detail
    assert restored.pods == ()
    assert "dry run" in restored.detail
    # KWOK has nothing left to do on these Pods, so any change would be the isolator's.
    await stays(lambda: identities(api, estate.namespace), lambda now: now == before, 2.0)
    assert await event_reasons(api, estate.namespace) == []
    assert await ready_endpoints(api, estate.namespace)() == set()


async def test_pod_without_gate_cut_through_ready(api: ApiClient, source: KubernetesSource) -> None:
    plain = await start_nodes(api, 2, gated=False)
    try:
        failed, healthy = plain.nodes
        endpoints = ready_endpoints(api, plain.namespace)
        all_pods = plain.names(failed, healthy)
        await eventually(endpoints, lambda ready: ready == all_pods, "Pods without gate ready")
        assert await source.ensure_serving(failed) == 0, "nothing to serve without the gate"
        await kill_kubelet(api, failed)

        result = await source.cut_node(failed, "node down", "inc-plain")

        assert result.pods == plain.keys(failed)
        assert result.verified, result.detail
        await stays(endpoints, lambda ready: ready == plain.names(healthy), HOLD_S)
        for pod in plain.names(failed):
            conditions = await cluster.pod_conditions(api, plain.namespace, pod)
            assert conditions["Ready"] == "False"
            assert SERVING_CONDITION not in conditions
            assert await ready_reason(api, plain.namespace, pod) == "IsolatorCut"

        restored = await source.restore_node(failed, "inc-plain")

        assert restored.pods == plain.keys(failed)
        assert restored.verified, restored.detail
        assert await endpoints() == all_pods
    finally:
        await delete_nodes(api, plain)
