"""A crashed node is cut within seconds, nothing else is touched, and recovery restores it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from isolator.lab.environment import Lab
from tests.e2e.conftest import start_lab

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.xdist_group("node-crash"),
    pytest.mark.timeout(240),
]

CRASHED = "r1-n02"
CUT_DEADLINE_S = 5.0


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def lab() -> AsyncIterator[Lab]:
    lab = await start_lab()
    try:
        yield lab
    finally:
        await lab.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def crash_latency(lab: Lab) -> float | None:
    """Crash CRASHED once for the module; return the seconds until its Pods were cut, or None
    if they still served after CUT_DEADLINE_S.

    Every test that needs the crashed node takes this fixture, so each one also runs alone
    (``-k``, ``--lf``) instead of finding the node up because the test that crashed it did not
    run in its lab.
    """
    crashed_pods = {pod for pod, node in lab.pods.items() if node == CRASHED}
    await lab.crash_node(CRASHED)
    return await _wait_until_not_ready(lab, crashed_pods, timeout_s=CUT_DEADLINE_S)


async def _wait_until_not_ready(lab: Lab, pods: set[str], timeout_s: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if not pods & await lab.ready_pods():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return None


async def _poll_isolations(lab: Lab, until_empty_s: float) -> list[object]:
    deadline = time.monotonic() + until_empty_s
    isolations: list[object] = await lab.get("/v1/isolations")
    while isolations and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        isolations = await lab.get("/v1/isolations")
    return isolations


async def test_malformed_bodies_rejected_loop_alive(lab: Lab) -> None:
    bad_heartbeat = json.dumps({"node": "r1-n01", "region": "r1", "seq": "one"}).encode()
    bad_webhook = json.dumps({"version": "4", "alerts": "not-a-list"}).encode()

    heartbeat_status, heartbeat_answer = await lab.post(
        "/v1/heartbeats", bad_heartbeat, "application/json"
    )
    webhook_status, webhook_answer = await lab.post(
        "/v1/alerts/webhook", bad_webhook, "application/json"
    )
    garbage_status, _ = await lab.post("/v1/heartbeats", b"\x00\xff{", "application/json")

    assert heartbeat_status == 422, heartbeat_answer
    assert {"seq", "sent_at"} <= {f["field"] for f in heartbeat_answer["fields"]}
    assert webhook_status == 422, webhook_answer
    assert "alerts" in {f["field"] for f in webhook_answer["fields"]}
    assert 400 <= garbage_status < 500
    passes_before = (await lab.get("/v1/status"))["passes"]
    await asyncio.sleep(1.0)
    assert (await lab.get("/v1/status"))["passes"] > passes_before
    lab.check_isolator_running()


async def test_crashed_node_cut_within_deadline(lab: Lab, crash_latency: float | None) -> None:
    crashed_pods = {pod for pod, node in lab.pods.items() if node == CRASHED}
    others = set(lab.pods) - crashed_pods

    assert crash_latency is not None, f"{CRASHED} still serving {CUT_DEADLINE_S} s after the crash"
    assert await lab.ready_pods() == others
    assert (await lab.node_verdicts())[CRASHED] == "failed"


async def test_cut_holds_against_endpoint_controller(lab: Lab, crash_latency: float | None) -> None:
    crashed_pods = {pod for pod, node in lab.pods.items() if node == CRASHED}
    assert crash_latency is not None, f"{CRASHED} was not cut after the crash"

    await asyncio.sleep(10.0)

    assert not crashed_pods & await lab.ready_pods()
    isolations = await lab.get("/v1/isolations")
    assert [iso["node"] for iso in isolations] == [CRASHED]
    assert isolations[0]["verified"] is True
    # Reading the held cut back found nothing that undid it and had to be applied again.
    assert isolations[0]["drifts"] == 0, isolations[0]["detail"]


@pytest.mark.usefixtures("crash_latency")
async def test_recovered_node_restored(lab: Lab) -> None:
    await lab.recover_node(CRASHED)

    await lab.wait_until_serving(timeout_s=30.0)
    # The isolation ends once the restore has been read back from the EndpointSlices.
    isolations = await _poll_isolations(lab, until_empty_s=10.0)

    assert await lab.ready_pods() == set(lab.pods)
    assert isolations == []


async def test_agent_crash_on_serving_node_not_cut(lab: Lab) -> None:
    lab.crash_agent("r2-n01")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 8.0
    while loop.time() < deadline:
        assert await lab.ready_pods() == set(lab.pods)
        await asyncio.sleep(0.25)

    assert (await lab.node_verdicts())["r2-n01"] == "unreachable"

    lab.start_agent("r2-n01")
    await lab.wait_until_serving(timeout_s=15.0)


async def test_failed_component_on_live_node_cut(lab: Lab) -> None:
    node = "r3-n04"
    pods = {pod for pod, on in lab.pods.items() if on == node}

    await lab.set_component_faults(node, ["kube-proxy"])
    latency = await _wait_until_not_ready(lab, pods, timeout_s=CUT_DEADLINE_S)

    assert latency is not None, f"{node} still serving {CUT_DEADLINE_S} s after kube-proxy failed"
    assert await lab.ready_pods() == set(lab.pods) - pods
    detail = await lab.get(f"/v1/nodes/{node}")
    assert detail["verdict"] == "failed"
    assert detail["component"] == "kube-proxy"

    await lab.set_component_faults(node, [])
    await lab.wait_until_serving(timeout_s=30.0)
    assert await _poll_isolations(lab, until_empty_s=10.0) == []
