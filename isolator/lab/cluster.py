"""Lab objects on the lab's control plane: edge Nodes that KWOK plays, Services and Pods.

Every helper takes a kubernetes-asyncio ``ApiClient`` or the path of a kubeconfig file. With a
path it opens a client for the call and closes it afterwards. kubernetes-asyncio sends a dict
body of a PATCH as a strategic merge patch.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from isolator.clock import SystemClock
from isolator.model import REGION_LABEL, SERVING_CONDITION

# Node label that the KWOK stages read: "true" means the Node's kubelet is dead.
DOWN_LABEL = "isolator.lab/down"
# The annotation and label that KWOK's own documentation puts on the Nodes it plays. The lab's
# KWOK selects Nodes by KUBELET_LABEL instead, so these only mark lab Nodes for people.
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_TYPE_LABEL = "type"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
NODE_LEASE_NAMESPACE = "kube-node-lease"
# KWOK plays only Nodes without KUBELET_LABEL=KUBELET_STOPPED. The stages in node-down*.yaml
# set that label on a Node marked down.
KUBELET_LABEL = "isolator.lab/kubelet"
KUBELET_STOPPED = "stopped"
POLL_INTERVAL_S = 0.05

_clock = SystemClock()

# KWOK never pulls images, so the name only has to be valid.
LAB_IMAGE = "registry.invalid/isolator-lab/app:1"

Api = ApiClient | Path


@asynccontextmanager
async def api_client(api: Api) -> AsyncIterator[ApiClient]:
    """Yield ``api`` itself, or a client for the kubeconfig at that path, closed on exit."""
    if isinstance(api, ApiClient):
        yield api
        return
    opened = await config.new_client_from_config(config_file=str(api), persist_config=False)
    try:
        yield opened
    finally:
        await opened.close()


def _now() -> str:
    now = datetime.datetime.fromtimestamp(_clock.wall(), datetime.UTC)
    return now.isoformat(timespec="seconds").replace("+00:00", "Z")


async def create_namespace(api: Api, name: str) -> None:
    """Create a namespace, or leave it as it is when it already exists."""
    async with api_client(api) as c:
        body = client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
        try:
            await client.CoreV1Api(c).create_namespace(body)
        except ApiException as err:
            if err.status != 409:
                raise


async def create_edge_node(api: Api, name: str, region: str, internal_ip: str) -> None:
    """Create a Node in ``region`` for KWOK to play, with ``internal_ip`` as its InternalIP."""
    addresses = [
        client.V1NodeAddress(type="InternalIP", address=internal_ip),
        client.V1NodeAddress(type="Hostname", address=name),
    ]
    node = client.V1Node(
        metadata=client.V1ObjectMeta(
            name=name,
            labels={REGION_LABEL: region, KWOK_TYPE_LABEL: "kwok"},
            annotations={KWOK_NODE_ANNOTATION: "fake"},
        ),
        status=client.V1NodeStatus(addresses=addresses),
    )
    async with api_client(api) as c:
        core = client.CoreV1Api(c)
        created = await core.create_node(node)
        if _internal_ip(created) == internal_ip:
            return
        # The API server may drop the status of a create, but a status subresource patch keeps it.
        patch = {"status": {"addresses": [c.sanitize_for_serialization(a) for a in addresses]}}
        await core.patch_node_status(name, patch)


def _internal_ip(node: client.V1Node) -> str | None:
    for address in (node.status and node.status.addresses) or []:
        if address.type == "InternalIP":
            return str(address.address)
    return None


async def set_node_down(api: Api, name: str, down: bool, timeout_s: float = 10.0) -> None:
    """Mark a Node down, as if its kubelet died, or bring it back, and wait until KWOK follows.

    Down, a KWOK stage labels the Node KUBELET_LABEL=KUBELET_STOPPED, after which KWOK neither
    renews its Lease nor plays the Node or its Pods, so their conditions stay as they were.
    Without the node lifecycle controller the same stage marks the Node's conditions Unknown at
    once. With it, the controller does so after its grace period. Up, both labels go, and KWOK
    plays the Node and its Pods again from its next Lease renewal on.

    Raises TimeoutError when KWOK has not followed within ``timeout_s``.
    """
    async with api_client(api) as c:
        core = client.CoreV1Api(c)
        if down:
            await core.patch_node(name, {"metadata": {"labels": {DOWN_LABEL: "true"}}})
            await _wait_for(lambda: _kubelet_stopped(c, name), timeout_s, f"Node {name} down")
            return
        frozen = await _lease_renew_time(c, name)
        # null deletes a label
        await core.patch_node(
            name, {"metadata": {"labels": {DOWN_LABEL: None, KUBELET_LABEL: None}}}
        )

        async def renewed() -> bool:
            return await _lease_renew_time(c, name) not in (None, frozen)

        await _wait_for(renewed, timeout_s, f"Node {name} up")


async def _kubelet_stopped(c: ApiClient, name: str) -> bool:
    node = await client.CoreV1Api(c).read_node(name)
    return (node.metadata.labels or {}).get(KUBELET_LABEL) == KUBELET_STOPPED


async def _lease_renew_time(c: ApiClient, name: str) -> datetime.datetime | None:
    try:
        lease = await client.CoordinationV1Api(c).read_namespaced_lease(name, NODE_LEASE_NAMESPACE)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    renew_time: datetime.datetime | None = lease.spec.renew_time
    return renew_time


async def _wait_for(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll ``check`` until it returns True, and raise TimeoutError after ``timeout_s``."""
    deadline = _clock.monotonic() + timeout_s
    while not await check():
        if _clock.monotonic() > deadline:
            raise TimeoutError(
                f"timed out after {timeout_s} s waiting for KWOK to mark {what}. Check that "
                "KWOK runs with the lab's stages, as ControlPlane starts it."
            )
        await _clock.sleep(POLL_INTERVAL_S)


async def node_condition(api: Api, name: str, condition_type: str = "Ready") -> str | None:
    """Return the status ("True", "False", "Unknown") of a Node condition, or None if absent."""
    async with api_client(api) as c:
        node = await client.CoreV1Api(c).read_node_status(name)
    for condition in (node.status and node.status.conditions) or []:
        if condition.type == condition_type:
            return str(condition.status)
    return None


async def create_service(
    api: Api, namespace: str, name: str, selector: dict[str, str], port: int
) -> None:
    """Create a ClusterIP Service that sends TCP ``port`` to the same port of the selected Pods."""
    service = client.V1Service(
        metadata=client.V1ObjectMeta(name=name, namespace=namespace),
        spec=client.V1ServiceSpec(
            selector=selector,
            ports=[client.V1ServicePort(name="main", port=port, target_port=port, protocol="TCP")],
        ),
    )
    async with api_client(api) as c:
        await client.CoreV1Api(c).create_namespaced_service(namespace, service)


async def create_pod(
    api: Api,
    namespace: str,
    name: str,
    node: str,
    labels: dict[str, str],
    readiness_gate: bool = True,
) -> None:
    """Create a Pod bound to ``node``, where KWOK starts it.

    With ``readiness_gate`` the Pod declares the isolator's gate (SERVING_CONDITION), so it
    becomes Ready only once that condition is True.
    """
    gates = None
    if readiness_gate:
        gates = [client.V1PodReadinessGate(condition_type=SERVING_CONDITION)]
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=labels),
        spec=client.V1PodSpec(
            node_name=node,
            containers=[client.V1Container(name="app", image=LAB_IMAGE)],
            readiness_gates=gates,
            automount_service_account_token=False,
        ),
    )
    async with api_client(api) as c:
        await client.CoreV1Api(c).create_namespaced_pod(namespace, pod)


async def set_pod_condition(
    api: Api,
    namespace: str,
    name: str,
    condition_type: str,
    status: bool,
    reason: str = "",
    message: str = "",
) -> None:
    """Write one Pod condition through the status subresource, as a gate's controller does.

    A strategic merge keyed by condition type leaves every other condition as it is.
    """
    condition: dict[str, Any] = {
        "type": condition_type,
        "status": "True" if status else "False",
        "lastTransitionTime": _now(),
        "reason": reason,
        "message": message,
    }
    patch = {"status": {"conditions": [condition]}}
    async with api_client(api) as c:
        await client.CoreV1Api(c).patch_namespaced_pod_status(name, namespace, patch)


async def pod_conditions(api: Api, namespace: str, name: str) -> dict[str, str]:
    """Return the Pod's conditions as a map from condition type to status."""
    async with api_client(api) as c:
        pod = await client.CoreV1Api(c).read_namespaced_pod_status(name, namespace)
    conditions = (pod.status and pod.status.conditions) or []
    return {str(cond.type): str(cond.status) for cond in conditions}


async def ready_endpoint_pods(api: Api, namespace: str, service: str) -> set[str]:
    """Return the names of the Pods with a ready endpoint in any EndpointSlice of the Service."""
    async with api_client(api) as c:
        slices = await client.DiscoveryV1Api(c).list_namespaced_endpoint_slice(
            namespace, label_selector=f"{SERVICE_NAME_LABEL}={service}"
        )
    ready: set[str] = set()
    for endpoint_slice in slices.items:
        for endpoint in endpoint_slice.endpoints or []:
            target = endpoint.target_ref
            if target is None or target.kind != "Pod":
                continue
            if endpoint.conditions is not None and endpoint.conditions.ready is True:
                ready.add(str(target.name))
    return ready


async def create_ingress(
    api: Api,
    namespace: str,
    name: str,
    service: str,
    port: int,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> None:
    """Create an Ingress whose default backend and one rule send everything to ``service``.

    No ingress controller runs in the lab: the object is what the isolator's split horizon
    edits, and what a cloud-side controller would route by.
    """
    backend = {"service": {"name": service, "port": {"number": port}}}
    body = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
        "spec": {
            "defaultBackend": backend,
            "rules": [
                {
                    "host": f"{name}.example.com",
                    "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]},
                }
            ],
        },
    }
    async with api_client(api) as c:
        # The client sends a dict body as it is; its annotation names only the model class.
        await client.NetworkingV1Api(c).create_namespaced_ingress(namespace, body)  # type: ignore[arg-type]


async def ingress_backends(api: Api, namespace: str, name: str) -> set[str]:
    """Return the names of the Services an Ingress routes to, default backend included."""
    async with api_client(api) as c:
        ingress = await client.NetworkingV1Api(c).read_namespaced_ingress(name, namespace)
    spec = ingress.spec
    backends = [spec.default_backend] if spec.default_backend else []
    for rule in spec.rules or []:
        backends += [path.backend for path in (rule.http.paths if rule.http else [])]
    return {str(backend.service.name) for backend in backends if backend.service}


async def events(api: Api, namespace: str) -> list[dict[str, Any]]:
    """Return the namespace's events.k8s.io/v1 Events as plain JSON documents.

    Events that core/v1 writers recorded carry no ``eventTime``, which the client's Event model
    refuses to load, so the list is read raw.
    """
    async with api_client(api) as c:
        # Without preloading, the call returns the HTTP response, not the typed list.
        raw: Any = await client.EventsV1Api(c).list_namespaced_event(
            namespace, _preload_content=False
        )
        document: dict[str, Any] = json.loads(await raw.read())
    items: list[dict[str, Any]] = document.get("items", [])
    return items
