"""Endpoints of Services without a selector: edited directly on a cut, restored exactly, and
never a slice that an endpoint controller manages; on the lab's control plane."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient

from isolator.lab import cluster
from isolator.lab.controlplane import ControlPlane
from isolator.sources.kubernetes import KubernetesSource
from isolator.sources.kubernetes.selectorless import ENDPOINTS_ANNOTATION, MANAGED_BY_LABEL
from tests.integration.test_kubernetes_actions import (
    DEADLINE_S,
    Estate,
    delete_nodes,
    eventually,
    kill_kubelet,
    ready_endpoints,
    start_nodes,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

AGENT_PORT = 9910
EXTERNAL = "external"
CUSTOM_MANAGER = "operator.example.com"
UNRELATED_IP = "10.99.0.7"


@dataclass
class Selectorless:
    """The estate plus a selector-less Service whose endpoints name its Pods."""

    estate: Estate
    ips: dict[str, str]  # Pod name -> IP

    @property
    def namespace(self) -> str:
        return self.estate.namespace


async def pod_ips(api: ApiClient, namespace: str) -> dict[str, str]:
    pods = await client.CoreV1Api(api).list_namespaced_pod(namespace)
    return {pod.metadata.name: pod.status.pod_ip for pod in pods.items}


async def read_slice(api: ApiClient, namespace: str, name: str = EXTERNAL) -> dict[str, Any]:
    raw = await client.DiscoveryV1Api(api).read_namespaced_endpoint_slice(
        name, namespace, _preload_content=False
    )
    data: dict[str, Any] = json.loads(await raw.read())
    return data


async def read_endpoints(api: ApiClient, namespace: str) -> dict[str, Any]:
    raw = await client.CoreV1Api(api).read_namespaced_endpoints(
        EXTERNAL, namespace, _preload_content=False
    )
    data: dict[str, Any] = json.loads(await raw.read())
    return data


def slice_body(namespace: str, estate: Estate, ips: dict[str, str]) -> dict[str, Any]:
    """A slice with one endpoint per Pod: the first node's by targetRef, the second's by IP
    alone, and one address that is no Pod at all."""
    first, second = estate.nodes
    endpoints: list[dict[str, Any]] = [
        {
            "addresses": [ips[pod]],
            "conditions": {"ready": True, "serving": True},
            "targetRef": {"kind": "Pod", "namespace": namespace, "name": pod},
        }
        for pod in sorted(estate.names(first))
    ]
    endpoints += [{"addresses": [ips[pod]]} for pod in sorted(estate.names(second))]
    endpoints.append({"addresses": [UNRELATED_IP], "conditions": {"ready": True}})
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": EXTERNAL,
            "labels": {"kubernetes.io/service-name": EXTERNAL, MANAGED_BY_LABEL: CUSTOM_MANAGER},
        },
        "addressType": "IPv4",
        "ports": [{"name": "main", "port": 9000, "protocol": "TCP"}],
        "endpoints": endpoints,
    }


def endpoints_body(estate: Estate, ips: dict[str, str]) -> dict[str, Any]:
    addresses = [{"ip": ips[pod]} for pod in sorted(estate.names(*estate.nodes))]
    addresses.append({"ip": UNRELATED_IP})
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": EXTERNAL},
        "subsets": [
            {"addresses": addresses, "ports": [{"name": "main", "port": 9000, "protocol": "TCP"}]}
        ],
    }


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
async def external(api: ApiClient, source: KubernetesSource) -> AsyncIterator[Selectorless]:
    estate = await start_nodes(api, 2)
    namespace = estate.namespace
    for node in estate.nodes:
        await source.ensure_serving(node)
    everything = estate.names(*estate.nodes)
    await eventually(ready_endpoints(api, namespace), lambda r: r == everything, "ready")
    ips = await pod_ips(api, namespace)
    service = {
        "metadata": {"name": EXTERNAL},
        "spec": {"ports": [{"name": "main", "port": 9000, "protocol": "TCP"}]},
    }
    core = client.CoreV1Api(api)
    await core.create_namespaced_service(namespace, service)
    await core.create_namespaced_endpoints(namespace, endpoints_body(estate, ips))
    await client.DiscoveryV1Api(api).create_namespaced_endpoint_slice(
        namespace, slice_body(namespace, estate, ips)
    )
    yield Selectorless(estate, ips)
    await delete_nodes(api, estate)


def conditions_by_address(endpoint_slice: dict[str, Any]) -> dict[str, Any]:
    return {e["addresses"][0]: e.get("conditions") for e in endpoint_slice["endpoints"]}


def ready_addresses(endpoints: dict[str, Any]) -> set[str]:
    return {a["ip"] for subset in endpoints["subsets"] for a in subset.get("addresses", [])}


def not_ready_addresses(endpoints: dict[str, Any]) -> set[str]:
    return {a["ip"] for subset in endpoints["subsets"] for a in subset.get("notReadyAddresses", [])}


async def test_cut_marks_selectorless_endpoints_not_ready(
    api: ApiClient, external: Selectorless, source: KubernetesSource
) -> None:
    estate, ips = external.estate, external.ips
    first, second = estate.nodes
    await kill_kubelet(api, first)
    before = conditions_by_address(await read_slice(api, external.namespace))

    result = await source.cut_node(first, "node down", "inc-ext")

    assert result.verified, result.detail
    assert sorted(result.objects) == [
        f"EndpointSlice {external.namespace}/{EXTERNAL}",
        f"Endpoints {external.namespace}/{EXTERNAL}",
    ]
    edited = conditions_by_address(await read_slice(api, external.namespace))
    for pod in estate.names(first):
        assert edited[ips[pod]] == {"ready": False, "serving": True}
    for pod in estate.names(second):
        assert edited[ips[pod]] == before[ips[pod]], "the other node's endpoints stay"
    assert edited[UNRELATED_IP] == {"ready": True}
    endpoints = await read_endpoints(api, external.namespace)
    assert not_ready_addresses(endpoints) == {ips[pod] for pod in estate.names(first)}
    assert UNRELATED_IP in ready_addresses(endpoints)


async def test_cut_records_and_reports_each_object(
    api: ApiClient, external: Selectorless, source: KubernetesSource
) -> None:
    estate, ips = external.estate, external.ips
    first = estate.nodes[0]

    await source.cut_node(first, "node down", "inc-ext-rec")

    annotations = (await read_slice(api, external.namespace))["metadata"]["annotations"]
    record = json.loads(annotations[ENDPOINTS_ANNOTATION])
    assert set(record) == {ips[pod] for pod in estate.names(first)}
    for pod in estate.names(first):
        entry = record[ips[pod]]
        assert entry["pod"] == f"{external.namespace}/{pod}"
        assert entry["owner"] == f"node:{first}"
        assert entry["incident"] == "inc-ext-rec"
        assert entry["previous"] == {"ready": True, "serving": True}
    touched = {
        (e["regarding"]["kind"], e["regarding"]["name"], e["reason"])
        for e in await cluster.events(api, external.namespace)
        if e.get("reportingController") == "isolator"
    }
    assert ("EndpointSlice", EXTERNAL, "IsolatorCut") in touched
    assert ("Endpoints", EXTERNAL, "IsolatorCut") in touched


async def test_controller_managed_slice_never_edited(
    api: ApiClient, external: Selectorless, source: KubernetesSource
) -> None:
    first = external.estate.nodes[0]

    await source.cut_node(first, "node down", "inc-ext-managed")

    slices = await client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
        external.namespace, label_selector=f"{MANAGED_BY_LABEL}=endpointslice-controller.k8s.io"
    )
    assert slices.items, "the selector Service has controller-managed slices"
    for managed in slices.items:
        assert ENDPOINTS_ANNOTATION not in (managed.metadata.annotations or {})
        assert all(e.conditions.ready is not None for e in managed.endpoints)


async def test_restore_puts_back_exactly(
    api: ApiClient, external: Selectorless, source: KubernetesSource
) -> None:
    first, second = external.estate.nodes
    slice_before = await read_slice(api, external.namespace)
    endpoints_before = await read_endpoints(api, external.namespace)
    await source.cut_node(first, "node down", "inc-ext-restore")
    await source.cut_node(second, "node down", "inc-ext-restore-2")

    first_back = await source.restore_node(first, "inc-ext-restore")
    after_first = await read_slice(api, external.namespace)
    second_back = await source.restore_node(second, "inc-ext-restore-2")

    assert first_back.verified, first_back.detail
    assert second_back.verified, second_back.detail
    record = json.loads(after_first["metadata"]["annotations"][ENDPOINTS_ANNOTATION])
    assert {entry["owner"] for entry in record.values()} == {f"node:{second}"}
    slice_after = await read_slice(api, external.namespace)
    assert slice_after["endpoints"] == slice_before["endpoints"]
    assert ENDPOINTS_ANNOTATION not in (slice_after["metadata"].get("annotations") or {})
    endpoints_after = await read_endpoints(api, external.namespace)
    assert endpoints_after["subsets"] == endpoints_before["subsets"]
    assert ENDPOINTS_ANNOTATION not in (endpoints_after["metadata"].get("annotations") or {})


async def test_reverted_endpoint_cut_again(
    api: ApiClient, external: Selectorless, source: KubernetesSource
) -> None:
    estate, ips = external.estate, external.ips
    first = estate.nodes[0]
    await source.cut_node(first, "node down", "inc-ext-again")
    current = await read_slice(api, external.namespace)
    reverted = [
        {**e, "conditions": {"ready": True, "serving": True}} if "targetRef" in e else e
        for e in current["endpoints"]
    ]
    await client.DiscoveryV1Api(api).patch_namespaced_endpoint_slice(
        EXTERNAL, external.namespace, {"endpoints": reverted}
    )

    again = await source.cut_node(first, "node down", "inc-ext-again")

    assert again.verified, again.detail
    assert again.objects == (f"EndpointSlice {external.namespace}/{EXTERNAL}",)
    edited = conditions_by_address(await read_slice(api, external.namespace))
    assert all(edited[ips[pod]]["ready"] is False for pod in estate.names(first))
    record = json.loads(
        (await read_slice(api, external.namespace))["metadata"]["annotations"][ENDPOINTS_ANNOTATION]
    )
    # The record still contains what the first cut replaced.
    assert all(entry["previous"] == {"ready": True, "serving": True} for entry in record.values())
