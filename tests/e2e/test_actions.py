"""The action layer end to end: tokens on the API, a manual isolation that expires, and split
horizon for a partitioned region. An isolator killed with SIGKILL in the middle of a cut, and
of a restore, rebuilds its state from Kubernetes and finishes the job."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import pytest
import pytest_asyncio
from kubernetes_asyncio import client

from isolator.lab import cluster
from isolator.lab.environment import Lab, LabSpec
from isolator.model import CUT_ANNOTATION
from tests.e2e.conftest import start_lab

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.xdist_group("actions"),
    pytest.mark.timeout(420),
]

PARTITIONED = "r3"
CRASHED = "r2-n02"
CLOUD = "cloud"
# Long enough that the cut and its read-back finish well before it, even on a loaded machine.
TTL_S = 30
# Pods on the crashed node, so that a SIGKILL lands between the first and the last write of a
# cut or restore: 16 Pods are written at once.
CRASHED_PODS = 48
T = TypeVar("T")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def lab() -> AsyncIterator[Lab]:
    spec = LabSpec(
        regions=["r1", "r2", "r3"],
        nodes_per_region=3,
        pods_per_node=2,
        isolator_settings={
            "ISOLATOR_REGION_FALLBACK_SERVICES": json.dumps({PARTITIONED: "fallback"}),
        },
    )
    lab = await start_lab(spec)
    try:
        await cluster.create_namespace(lab.api, CLOUD)
        for service in ("portal", "fallback"):
            await cluster.create_service(lab.api, CLOUD, service, {"app": service}, 80)
        for region in ("r1", PARTITIONED):
            labels = {"isolator.io/region": region}
            await cluster.create_ingress(lab.api, CLOUD, f"portal-{region}", "portal", 80, labels)
        namespace, service = lab.spec.namespace, lab.spec.service
        for k in range(lab.spec.pods_per_node, CRASHED_PODS):
            pod = f"{service}-{CRASHED}-{k}"
            await cluster.create_pod(lab.api, namespace, pod, CRASHED, {"app": service})
            lab.pods[pod] = CRASHED
        await lab.wait_until_serving(timeout_s=60.0)
        yield lab
    finally:
        await lab.stop()


async def eventually(
    read: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    what: str,
    timeout_s: float,
    poll_s: float = 0.1,
) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await read()
        if accept(value):
            return value
        assert time.monotonic() < deadline, f"{what} not reached in {timeout_s} s: {value!r}"
        await asyncio.sleep(poll_s)


async def post(lab: Lab, path: str, body: dict[str, Any], token: str | None = None) -> Any:
    return await lab.post(path, json.dumps(body).encode(), "application/json", token)


def pods_of(lab: Lab, node: str) -> set[str]:
    return {pod for pod, on in lab.pods.items() if on == node}


async def records(lab: Lab, node: str) -> dict[str, str]:
    """Return Pod name -> cut record of the node's Pods that carry one."""
    pods = await client.CoreV1Api(lab.api).list_namespaced_pod(
        lab.spec.namespace, field_selector=f"spec.nodeName={node}"
    )
    return {
        p.metadata.name: p.metadata.annotations[CUT_ANNOTATION]
        for p in pods.items
        if CUT_ANNOTATION in (p.metadata.annotations or {})
    }


async def identities(lab: Lab) -> dict[str, tuple[str, tuple[int, ...]]]:
    pods = await client.CoreV1Api(lab.api).list_namespaced_pod(lab.spec.namespace)
    return {
        p.metadata.name: (
            p.metadata.uid,
            tuple(s.restart_count for s in p.status.container_statuses or []),
        )
        for p in pods.items
    }


async def isolations(lab: Lab) -> dict[str, dict[str, Any]]:
    return {item["target"]: item for item in await lab.get("/v1/isolations")}


async def test_api_rejects_missing_and_wrong_tokens(lab: Lab) -> None:
    body = {"reason": "not allowed"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{lab.isolator_url}/v1/status") as response,
    ):
        anonymous = response.status
    viewer, _ = await post(lab, "/v1/isolations/nodes/r1-n03", body, lab.tokens.viewer)
    agent, _ = await post(lab, "/v1/heartbeats", body, lab.tokens.agents["r1-n01"])
    stranger, _ = await post(lab, "/v1/isolations/nodes/r1-n03", body, "not-a-token" * 3)

    assert anonymous == 401
    assert viewer == 403
    assert agent == 422, "a valid agent token gets as far as the body check"
    assert stranger == 401
    assert "r1-n03" not in await isolations(lab)


async def test_manual_isolation_expires_into_restore(lab: Lab) -> None:
    node = "r1-n02"
    pods = pods_of(lab, node)

    status, answer = await post(
        lab, f"/v1/isolations/nodes/{node}", {"reason": "firmware update", "ttl_s": TTL_S}
    )

    assert status == 200, answer
    assert answer["result"] == "verified"
    assert not pods & await lab.ready_pods()
    item = (await isolations(lab))[node]
    assert (item["who"], item["manual"], item["reason"]) == (
        "lab-operator",
        True,
        "firmware update",
    )
    assert 0 < item["expires_in_s"] <= TTL_S
    await eventually(lab.ready_pods, lambda ready: pods <= ready, "restored after TTL", 60.0)
    await eventually(lambda: isolations(lab), lambda found: node not in found, "ended", 10.0)
    audit = [r for r in await lab.get("/v1/audit") if r["target"] == node]
    assert [(r["action"], r["who"]) for r in audit] == [
        ("cut", "lab-operator"),
        ("restore", "isolator"),
    ]
    assert audit[-1]["result"] == "verified"


async def test_partition_moves_cloud_routes_only(lab: Lab) -> None:
    everything = set(lab.pods)
    lab.partition(PARTITIONED)
    try:
        moved = await eventually(
            lambda: cluster.ingress_backends(lab.api, CLOUD, f"portal-{PARTITIONED}"),
            lambda backends: backends == {"fallback"},
            "cloud route on its fallback",
            30.0,
        )
        assert moved == {"fallback"}
        assert await cluster.ingress_backends(lab.api, CLOUD, "portal-r1") == {"portal"}
        assert await lab.ready_pods() == everything, "the site's endpoints are never touched"
        listed = await eventually(
            lambda: isolations(lab),
            lambda found: found.get(PARTITIONED, {}).get("verified") is True,
            "split read back",
            10.0,
        )
        item = listed[PARTITIONED]
        assert (item["kind"], item["manual"]) == ("region", False)
        assert item["objects"] == [f"{CLOUD}/portal-{PARTITIONED}"]
    finally:
        lab.heal(PARTITIONED)

    await eventually(
        lambda: cluster.ingress_backends(lab.api, CLOUD, f"portal-{PARTITIONED}"),
        lambda backends: backends == {"portal"},
        "cloud route back after the restore hold",
        40.0,
    )
    await eventually(
        lambda: isolations(lab), lambda found: PARTITIONED not in found, "split ended", 10.0
    )
    await lab.wait_until_serving(timeout_s=30.0)


async def recovered_before_first_pass(lab: Lab, node: str) -> dict[str, Any]:
    """Poll the restarted isolator until it has run one pass; return its isolation of
    ``node`` as listed right after that pass. Fails if the pass came without it."""
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        try:
            status = await lab.get("/v1/status")
            if status["passes"] >= 1:
                listed = await isolations(lab)
                assert node in listed, f"first pass ran without the recovered cut: {listed}"
                return listed[node]
        except (aiohttp.ClientError, TimeoutError):
            pass  # still starting
        await asyncio.sleep(0.05)
    raise AssertionError("the restarted isolator ran no pass within 60 s")


async def test_sigkill_mid_cut_recovered(lab: Lab) -> None:
    pods = pods_of(lab, CRASHED)
    before = await identities(lab)

    await lab.crash_node(CRASHED)
    await eventually(lambda: records(lab, CRASHED), bool, "first cut record", 15.0, 0.01)
    lab.kill_isolator()
    at_kill = await records(lab, CRASHED)
    await lab.restart_isolator(wait=False)

    isolation = await recovered_before_first_pass(lab, CRASHED)
    assert isolation["who"] == "isolator"
    assert set(at_kill) <= pods, at_kill
    await eventually(lab.ready_pods, lambda ready: not pods & ready, "cut finished", 20.0)
    finished = await eventually(
        lambda: isolations(lab), lambda found: found[CRASHED]["verified"], "verified", 20.0
    )
    assert set(finished[CRASHED]["objects"]) == {f"{lab.spec.namespace}/{p}" for p in pods}
    assert set(await records(lab, CRASHED)) == pods
    assert await identities(lab) == before, "no Pod was deleted, replaced or restarted"


async def test_sigkill_mid_restore_recovered(lab: Lab) -> None:
    pods = pods_of(lab, CRASHED)
    before = await identities(lab)

    await lab.recover_node(CRASHED)
    await eventually(
        lambda: records(lab, CRASHED),
        lambda left: 0 < len(left) < len(pods),
        "restore under way",
        40.0,
        0.01,
    )
    lab.kill_isolator()
    await lab.restart_isolator(wait=False)

    await recovered_before_first_pass(lab, CRASHED)
    await eventually(lab.ready_pods, lambda ready: pods <= ready, "restore finished", 40.0)
    await eventually(lambda: isolations(lab), lambda found: not found, "no isolation", 20.0)
    assert await records(lab, CRASHED) == {}
    assert await identities(lab) == before
    await lab.wait_until_serving(timeout_s=30.0)
