"""Split horizon on the lab's control plane: a partitioned region's cloud-side Ingress routes
move to its fallback Service, exactly the original comes back, and nothing else is touched."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient

from isolator.lab import cluster
from isolator.lab.controlplane import ControlPlane
from isolator.sources.kubernetes import KubernetesSource, SplitResult, TargetKind
from isolator.sources.kubernetes.horizon import FALLBACK_ANNOTATION, SPLIT_ANNOTATION
from tests.integration.test_kubernetes_actions import DEADLINE_S

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

AGENT_PORT = 9910
REGION_LABEL = "isolator.io/region"


@dataclass
class Cloud:
    """A namespace of cloud-side Ingresses for two regions; ``region`` is unique per test."""

    namespace: str
    region: str
    other_region: str

    @property
    def fallbacks(self) -> dict[str, str]:
        return {self.region: "fallback"}


def rule_backend(service: str, port: int) -> dict[str, Any]:
    return {"service": {"name": service, "port": {"number": port}}}


def ingress(
    name: str, region: str, annotations: dict[str, str] | None = None, default: bool = False
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "rules": [
            {
                "host": f"{name}.example.com",
                "http": {
                    "paths": [
                        {"path": "/", "pathType": "Prefix", "backend": rule_backend("app", 80)},
                        {
                            "path": "/api",
                            "pathType": "Prefix",
                            "backend": rule_backend("api", 8080),
                        },
                    ]
                },
            }
        ]
    }
    if default:
        spec["defaultBackend"] = rule_backend("app", 80)
    metadata: dict[str, Any] = {"name": name, "labels": {REGION_LABEL: region}}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata,
        "spec": spec,
    }


async def read_ingress(api: ApiClient, namespace: str, name: str) -> dict[str, Any]:
    raw = await client.NetworkingV1Api(api).read_namespaced_ingress(
        name, namespace, _preload_content=False
    )
    data: dict[str, Any] = json.loads(await raw.read())
    return data


def backends(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = [
        (p["path"], p["backend"]["service"]) for r in spec["rules"] for p in r["http"]["paths"]
    ]
    if "defaultBackend" in spec:
        found.append(("default", spec["defaultBackend"]["service"]))
    return found


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
async def cloud(api: ApiClient) -> AsyncIterator[Cloud]:
    """Yield the namespace, then delete its Ingresses so no split record outlives the test."""
    suffix = uuid.uuid4().hex[:8]
    found = Cloud(f"cloud-{suffix}", f"north-{suffix}", f"south-{suffix}")
    await cluster.create_namespace(api, found.namespace)
    for service in ("app", "api", "fallback"):
        await cluster.create_service(api, found.namespace, service, {"app": service}, 80)
    networking = client.NetworkingV1Api(api)
    bodies = [
        ingress("annotated", found.region, {FALLBACK_ANNOTATION: "fallback:8443"}, default=True),
        ingress("configured", found.region),
        ingress("elsewhere", found.other_region),
    ]
    for body in bodies:
        await networking.create_namespaced_ingress(found.namespace, body)
    yield found
    await networking.delete_collection_namespaced_ingress(found.namespace)


async def test_split_moves_region_routes_to_fallback(
    api: ApiClient, cloud: Cloud, source: KubernetesSource
) -> None:
    elsewhere = await read_ingress(api, cloud.namespace, "elsewhere")

    result = await source.split_region(
        cloud.region,
        "region partitioned",
        "inc-split",
        region_label=REGION_LABEL,
        fallbacks=cloud.fallbacks,
    )

    assert result.verified, result.detail
    assert result.ingresses == (f"{cloud.namespace}/annotated", f"{cloud.namespace}/configured")
    annotated = (await read_ingress(api, cloud.namespace, "annotated"))["spec"]
    assert {service["name"] for _, service in backends(annotated)} == {"fallback"}
    assert {json.dumps(s["port"]) for _, s in backends(annotated)} == {'{"number": 8443}'}
    configured = (await read_ingress(api, cloud.namespace, "configured"))["spec"]
    assert backends(configured) == [
        ("/", {"name": "fallback", "port": {"number": 80}}),
        ("/api", {"name": "fallback", "port": {"number": 8080}}),
    ]
    assert await read_ingress(api, cloud.namespace, "elsewhere") == elsewhere


async def test_split_records_original_and_emits_events(
    api: ApiClient, cloud: Cloud, source: KubernetesSource
) -> None:
    original = (await read_ingress(api, cloud.namespace, "annotated"))["spec"]

    await source.split_region(
        cloud.region,
        "region partitioned",
        "inc-rec",
        region_label=REGION_LABEL,
        fallbacks=cloud.fallbacks,
        who="carol",
        expires_at=2e9,
    )

    annotations = (await read_ingress(api, cloud.namespace, "annotated"))["metadata"]["annotations"]
    record = json.loads(annotations[SPLIT_ANNOTATION])
    assert record["spec"] == original
    assert record["region"] == cloud.region
    assert record["fallback"] == "fallback:8443"
    assert record["who"] == "carol"
    assert annotations[FALLBACK_ANNOTATION] == "fallback:8443"
    reasons = {
        (e["regarding"]["kind"], e["regarding"]["name"], e["reason"])
        for e in await cluster.events(api, cloud.namespace)
    }
    assert ("Ingress", "annotated", "IsolatorSplitHorizon") in reasons
    recorded = {(i.kind, i.target): i for i in await source.recorded_isolations()}
    region = recorded[(TargetKind.REGION, cloud.region)]
    assert region.who == "carol"
    assert region.expires_at == 2e9
    assert region.complete


async def test_rejoin_puts_back_exactly(
    api: ApiClient, cloud: Cloud, source: KubernetesSource
) -> None:
    before = {
        name: await read_ingress(api, cloud.namespace, name) for name in ("annotated", "configured")
    }
    await source.split_region(
        cloud.region,
        "region partitioned",
        "inc-rejoin",
        region_label=REGION_LABEL,
        fallbacks=cloud.fallbacks,
    )

    result = await source.restore_region(cloud.region, "inc-rejoin")
    again = await source.restore_region(cloud.region, "inc-rejoin")

    assert result.verified, result.detail
    assert result.ingresses == (f"{cloud.namespace}/annotated", f"{cloud.namespace}/configured")
    assert again.ingresses == ()
    for name, old in before.items():
        now = await read_ingress(api, cloud.namespace, name)
        assert now["spec"] == old["spec"]
        assert (now["metadata"].get("annotations") or {}) == (
            old["metadata"].get("annotations") or {}
        )


async def test_reverted_routes_split_again_keeping_original(
    api: ApiClient, cloud: Cloud, source: KubernetesSource
) -> None:
    original = (await read_ingress(api, cloud.namespace, "configured"))["spec"]

    async def split() -> SplitResult:
        return await source.split_region(
            cloud.region,
            "partitioned",
            "inc-gitops",
            region_label=REGION_LABEL,
            fallbacks=cloud.fallbacks,
        )

    await split()
    # A deployment tool puts the original routes back while the region is still cut off.
    await client.NetworkingV1Api(api).patch_namespaced_ingress(
        "configured", cloud.namespace, [{"op": "replace", "path": "/spec", "value": original}]
    )

    again = await split()

    assert again.ingresses == (f"{cloud.namespace}/configured",)
    assert again.verified, again.detail
    now = await read_ingress(api, cloud.namespace, "configured")
    assert json.loads(now["metadata"]["annotations"][SPLIT_ANNOTATION])["spec"] == original
    await source.restore_region(cloud.region, "inc-gitops")
    assert (await read_ingress(api, cloud.namespace, "configured"))["spec"] == original


async def test_ingress_without_fallback_left_and_reported(
    api: ApiClient, cloud: Cloud, source: KubernetesSource
) -> None:
    networking = client.NetworkingV1Api(api)
    await networking.create_namespaced_ingress(
        cloud.namespace, ingress("orphan", cloud.region, {FALLBACK_ANNOTATION: "missing"})
    )
    orphan = await read_ingress(api, cloud.namespace, "orphan")

    result = await source.split_region(
        cloud.region, "partitioned", "inc-orphan", region_label=REGION_LABEL, fallbacks={}
    )

    assert not result.verified
    assert f"{cloud.namespace}/orphan: fallback Service missing not found" in result.detail
    assert "configured: no fallback Service" in result.detail
    assert result.ingresses == (f"{cloud.namespace}/annotated",)
    assert await read_ingress(api, cloud.namespace, "orphan") == orphan
    await source.restore_region(cloud.region, "inc-orphan")


async def test_split_dry_run_writes_nothing(
    api: ApiClient, cloud: Cloud, source: KubernetesSource
) -> None:
    before = await read_ingress(api, cloud.namespace, "configured")

    result = await source.split_region(
        cloud.region,
        "partitioned",
        "inc-dry",
        region_label=REGION_LABEL,
        fallbacks=cloud.fallbacks,
        dry_run=True,
    )

    assert not result.verified
    assert "dry run" in result.detail
    assert f"{cloud.namespace}/configured" in result.ingresses
    assert await read_ingress(api, cloud.namespace, "configured") == before
