"""Verified cuts that another writer undoes later, on the real control plane: the controller
reads its held cuts back, applies an undone one again, emits an Event naming the writer and
counts it.

Evidence is simulated on a manual clock (tests.unit.harness); the undoing writes are real API
requests under their own field manager, so managedFields name them as the API server does.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient

from isolator.lab import cluster
from isolator.model import SERVING_CONDITION
from isolator.sources.kubernetes import KubernetesSource
from isolator.sources.kubernetes.heldcuts import UNDONE_REASON
from isolator.sources.kubernetes.horizon import FALLBACK_ANNOTATION
from tests.integration.test_actions_controller import (
    audit_of,
    estate,  # noqa: F401  # a fixture, used by name
    read_spec,
    run_settled,
    source,  # noqa: F401  # a fixture, used by name
    start_controller,
)
from tests.integration.test_kubernetes_actions import (
    Estate,
    eventually,
    kill_kubelet,
    ready_endpoints,
)
from tests.unit.harness import Harness

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.timeout(180),
]

RECHECK_S = 2.0
WRITER = "drift-test-editor"


def drift_count(harness: Harness, kind: str, outcome: str) -> float | None:
    registry = harness.controller._metrics.registry
    labels = {"kind": kind, "outcome": outcome}
    return registry.get_sample_value("isolator_cut_drift_total", labels)


async def undone_notes(api: ApiClient, namespace: str, name: str) -> list[str]:
    """Return the notes of the isolator's IsolatorCutUndone Events about object ``name``."""
    return [
        str(event.get("note"))
        for event in await cluster.events(api, namespace)
        if event.get("reason") == UNDONE_REASON and event["regarding"]["name"] == name
    ]


async def mark_ready(api: ApiClient, namespace: str, pod: str) -> None:
    """Undo a cut the way a person or a stray kubelet would: Ready and the gate True."""
    conditions: list[dict[str, Any]] = [
        {"type": "Ready", "status": "True", "reason": "", "message": ""},
        {"type": SERVING_CONDITION, "status": "True", "reason": "", "message": ""},
    ]
    await client.CoreV1Api(api).patch_namespaced_pod_status(
        pod, namespace, {"status": {"conditions": conditions}}, field_manager=WRITER
    )


async def test_undone_pod_cut_applied_again(
    api: ApiClient,
    estate: Estate,  # noqa: F811
    source: KubernetesSource,  # noqa: F811
) -> None:
    harness = await start_controller(source, cut_recheck_interval_s=RECHECK_S)
    failed = estate.nodes[0]
    pod = sorted(estate.names(failed))[0]
    await kill_kubelet(api, failed)
    harness.silent.add(failed)
    harness.site_down.add(failed)
    await run_settled(harness, 6.0)
    isolation = harness.controller.isolations[failed]
    assert isolation.verified, isolation.detail

    await mark_ready(api, estate.namespace, pod)
    await eventually(
        ready_endpoints(api, estate.namespace), lambda ready: pod in ready, "cut undone"
    )
    await run_settled(harness, RECHECK_S + 1.0)

    assert isolation.drifts == 1
    assert isolation.verified, isolation.detail
    assert isolation.attempts == 2
    await eventually(
        ready_endpoints(api, estate.namespace),
        lambda ready: not ready & estate.names(failed),
        "cut applied again",
    )
    undone = [r for r in harness.controller.audit if r["action"] == "undone"]
    assert [(r["target"], r["who"], r["result"]) for r in undone] == [(failed, WRITER, "reapplied")]
    assert audit_of(harness, failed)[-1] == ("cut", "verified")
    notes = await undone_notes(api, estate.namespace, pod)
    assert len(notes) == 1
    assert WRITER in notes[0]
    assert drift_count(harness, "node", "reapplied") == 1
    await source.restore_node(failed, isolation.incident)


async def test_undone_split_moved_again(api: ApiClient, source: KubernetesSource) -> None:  # noqa: F811
    suffix = uuid.uuid4().hex[:6]
    # Two calm regions, so that one dark region of three stays below the global fail-safe.
    regions = [f"drift-{suffix}", f"calm-{suffix}", f"still-{suffix}"]
    region = regions[0]
    namespace = f"cloud-{suffix}"
    created: list[str] = []
    networking = client.NetworkingV1Api(api)
    try:
        for index, name in enumerate(regions):
            node = f"{name}-n0"
            await cluster.create_edge_node(api, node, name, f"198.18.31.{index + 1}")
            created.append(node)
        await cluster.create_namespace(api, namespace)
        for service in ("app", "fallback"):
            await cluster.create_service(api, namespace, service, {"app": service}, 80)
        original = {"defaultBackend": {"service": {"name": "app", "port": {"number": 80}}}}
        body = {
            "metadata": {
                "name": "portal",
                "labels": {"isolator.io/region": region},
                "annotations": {FALLBACK_ANNOTATION: "fallback"},
            },
            "spec": original,
        }
        await networking.create_namespaced_ingress(namespace, body)
        harness = await start_controller(source, cut_recheck_interval_s=RECHECK_S)
        harness.silent.add(f"{region}-n0")
        harness.dark_regions.add(region)
        await run_settled(harness, 6.0)
        split = harness.controller.splits[region]
        assert split.verified, split.detail

        # A deployment tool puts the routes of its manifest back.
        await networking.patch_namespaced_ingress(
            "portal", namespace, {"spec": original}, field_manager=WRITER
        )
        assert (await read_spec(api, namespace, "portal")) == original
        await run_settled(harness, RECHECK_S + 1.0)

        assert split.drifts == 1
        assert split.verified, split.detail
        moved = await read_spec(api, namespace, "portal")
        assert moved["defaultBackend"]["service"]["name"] == "fallback"
        notes = await undone_notes(api, namespace, "portal")
        assert len(notes) == 1
        assert WRITER in notes[0]
        assert drift_count(harness, "region", "reapplied") == 1
        await source.restore_region(region, split.incident)
    finally:
        for node in created:
            await client.CoreV1Api(api).delete_node(node)
