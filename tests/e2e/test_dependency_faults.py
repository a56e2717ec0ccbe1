"""Faults of the isolator's own dependencies, on the real components: the kube-apiserver out of
reach for a minute, the central Prometheus down, and Alertmanager sending a storm of alerts.

In each case no cut is made on missing evidence, no action is lost or repeated, and the
isolator recovers by itself once the dependency is back.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from isolator.lab import cluster
from isolator.lab.environment import Lab, LabSpec
from tests.e2e.conftest import start_lab
from tests.e2e.test_actions import eventually, identities, pods_of, records

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(420),
]

# How long the kube-apiserver stays out of the isolator's reach.
APISERVER_OUTAGE_S = float(os.environ.get("ISOLATOR_TEST_APISERVER_OUTAGE_S", "60"))
# How long the central Prometheus stays down with a crashed node behind it.
PROMETHEUS_OUTAGE_S = float(os.environ.get("ISOLATOR_TEST_PROMETHEUS_OUTAGE_S", "15"))
STORM_ALERTS = 1000
STORM_BATCH = 100
# Generous for a loaded 2-core machine. `make bench` measures the latency itself.
CUT_DEADLINE_S = 30.0
CRASHED = "r1-n02"
# The node that a run of manual isolations and restores works on, with enough Pods that a kill
# can land between the first and the last write (16 Pods are written at once).
TARGET = "r2-n01"
TARGET_PODS = 40
KILL_ROUNDS = int(os.environ.get("ISOLATOR_TEST_KILL_ROUNDS", "6"))
# Kills land at a random point within this long after the request is sent.
KILL_WINDOW_S = 0.6
KILL_POINTS = random.Random(20261204)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def lab() -> AsyncIterator[Lab]:
    lab = await start_lab(LabSpec(regions=["r1", "r2"], nodes_per_region=3, apiserver_relay=True))
    try:
        yield lab
    finally:
        await lab.stop()


async def audit_of(lab: Lab, target: str) -> list[tuple[str, str]]:
    return [(r["action"], r["result"]) for r in await lab.get("/v1/audit") if r["target"] == target]


async def audit_details(lab: Lab, target: str) -> list[dict[str, Any]]:
    return [r for r in await lab.get("/v1/audit") if r["target"] == target]


async def recover(lab: Lab, node: str) -> None:
    await lab.recover_node(node)
    await lab.wait_until_serving(timeout_s=60.0)
    await eventually(
        lambda: lab.get("/v1/isolations"), lambda found: found == [], "restore done", 30.0
    )


async def watch_while(lab: Lab, seconds: float) -> tuple[set[str], float]:
    """Poll the Service and the read API for ``seconds``; return every Pod that was ever out of
    the ready endpoints, and the slowest /v1/status response."""
    everything = set(lab.pods)
    missing: set[str] = set()
    slowest = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lab.check_isolator_running()
        started = time.monotonic()
        await lab.get("/v1/status")
        slowest = max(slowest, time.monotonic() - started)
        missing |= everything - await lab.ready_pods()
        await asyncio.sleep(0.5)
    return missing, slowest


async def test_apiserver_unreachable_for_a_minute(lab: Lab) -> None:
    crashed = pods_of(lab, CRASHED)
    lab.cut_apiserver_path()
    try:
        await lab.crash_node(CRASHED)
        await eventually(
            lab.node_verdicts, lambda v: v[CRASHED] == "failed", "failed verdict", 15.0
        )
        # The verdict is in but no write can land, so nothing may be half done or lost.
        cut_early, slowest = await watch_while(lab, APISERVER_OUTAGE_S)
    finally:
        lab.restore_apiserver_path()

    assert cut_early == set(), "no Pod could be cut while the API was out of reach"
    assert slowest < 5.0, f"the read API stalled {slowest:.1f} s behind the apiserver"
    await eventually(
        lab.ready_pods, lambda ready: not crashed & ready, "cut after the outage", CUT_DEADLINE_S
    )
    assert set(lab.pods) - crashed <= await lab.ready_pods(), "only the crashed node is cut"
    audit = await eventually(
        lambda: audit_of(lab, CRASHED),
        lambda records: ("cut", "verified") in records,
        "the cut's audit record",
        10.0,
    )
    assert audit.count(("cut", "verified")) == 1, await audit_details(lab, CRASHED)
    await recover(lab, CRASHED)
    assert [a for a, _ in await audit_of(lab, CRASHED)].count("restore") >= 1


async def test_central_prometheus_down_never_cuts_a_silent_node(lab: Lab) -> None:
    crashed = pods_of(lab, CRASHED)
    lab.monitoring.kill_central()
    try:
        await lab.crash_node(CRASHED)
        node = await eventually(
            lambda: lab.get(f"/v1/nodes/{CRASHED}"),
            lambda n: n["verdict"] == "suspect",
            "suspect verdict",
            15.0,
        )
        assert "no fresh in-site view" in node["reason"], node
        cut_early, _ = await watch_while(lab, PROMETHEUS_OUTAGE_S)
        regions = await lab.region_verdicts()
    finally:
        await lab.monitoring.start_central()

    assert cut_early == set(), "a silent node without an in-site view must not be cut"
    assert set(regions.values()) == {"monitoring_degraded"}, regions
    await eventually(
        lab.ready_pods,
        lambda ready: not crashed & ready,
        "cut once the in-site view is back",
        CUT_DEADLINE_S,
    )
    assert set(lab.pods) - crashed <= await lab.ready_pods(), "only the crashed node is cut"
    await recover(lab, CRASHED)


def storm_alerts(lab: Lab, first: int, count: int, ends_at: datetime) -> list[dict[str, Any]]:
    nodes = sorted(lab.nodes)
    return [
        {
            "labels": {
                "alertname": "LabStorm",
                "region": lab.nodes[nodes[i % len(nodes)]],
                "node": nodes[i % len(nodes)],
                "seq": str(i),
            },
            "annotations": {"summary": f"storm alert {i}"},
            "endsAt": ends_at.isoformat(),
        }
        for i in range(first, first + count)
    ]


async def post_to_alertmanager(lab: Lab, alerts: list[dict[str, Any]]) -> None:
    url = f"{lab.monitoring.alertmanager_url}/api/v2/alerts"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10.0)) as session,
        session.post(url, json=alerts) as response,
    ):
        assert response.status == 200, await response.text()


async def alerts_recorded(lab: Lab) -> float:
    """Return how many alert states the webhook recorded; a duplicate delivery never counts."""
    headers = {"Authorization": f"Bearer {lab.tokens.viewer}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session,
        session.get(f"{lab.isolator_url}/metrics", headers=headers) as response,
    ):
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('isolator_webhook_alerts_total{outcome="recorded"}')
    )


async def test_alert_storm_of_a_thousand(lab: Lab) -> None:
    everything = set(lab.pods)
    before = await alerts_recorded(lab)
    ends_at = datetime.now(UTC) + timedelta(minutes=10)

    for first in range(0, STORM_ALERTS, STORM_BATCH):
        await post_to_alertmanager(lab, storm_alerts(lab, first, STORM_BATCH, ends_at))
    delivered = await eventually(
        lambda: alerts_recorded(lab),
        lambda total: total - before >= STORM_ALERTS,
        "every storm alert recorded",
        60.0,
    )
    cut, slowest = await watch_while(lab, 5.0)

    assert cut == set(), "alerts alone never cut"
    assert slowest < 5.0, f"the read API stalled {slowest:.1f} s under the storm"
    firing = await lab.get(f"/v1/nodes/{CRASHED}")
    assert "LabStorm" in firing["evidence"]["firing_alerts"], firing
    # Resolving the storm changes nothing either: a "resolved" alone never restores or cuts.
    now = datetime.now(UTC)
    for first in range(0, STORM_ALERTS, STORM_BATCH):
        await post_to_alertmanager(lab, storm_alerts(lab, first, STORM_BATCH, now))
    await eventually(
        lambda: alerts_recorded(lab),
        lambda total: total - delivered >= STORM_ALERTS,
        "every resolution recorded",
        60.0,
    )
    assert await lab.ready_pods() == everything
    assert await lab.get("/v1/isolations") == []


async def recorded_pods(lab: Lab, node: str) -> set[str]:
    """Return the node's Pods that carry a cut record."""
    return set(await records(lab, node))


async def request(lab: Lab, path: str, reason: str) -> int | None:
    """POST a manual action; None when the isolator died before it responded."""
    body = json.dumps({"reason": reason}).encode()
    try:
        status, _ = await lab.post(path, body, "application/json")
    except (aiohttp.ClientError, TimeoutError):
        return None
    return status


async def until_serving_api(lab: Lab) -> None:
    deadline = time.monotonic() + 60.0
    while True:
        try:
            if (await lab.get("/v1/status"))["passes"] >= 1:
                return
        except (aiohttp.ClientError, TimeoutError):
            pass  # still starting
        assert time.monotonic() < deadline, "the restarted isolator ran no pass within 60 s"
        await asyncio.sleep(0.1)


async def test_sigkill_at_random_points_of_manual_actions(lab: Lab) -> None:
    namespace, service = lab.spec.namespace, lab.spec.service
    for k in range(lab.spec.pods_per_node, TARGET_PODS):
        pod = f"{service}-{TARGET}-{k}"
        await cluster.create_pod(lab.api, namespace, pod, TARGET, {"app": service})
        lab.pods[pod] = TARGET
    await lab.wait_until_serving(timeout_s=60.0)
    pods = pods_of(lab, TARGET)
    before = await identities(lab)
    cut_path = f"/v1/isolations/nodes/{TARGET}"

    for round_index in range(KILL_ROUNDS):
        isolate = round_index % 2 == 0
        path = cut_path if isolate else f"{cut_path}/restore"
        sent = asyncio.create_task(request(lab, path, f"kill round {round_index}"))
        await asyncio.sleep(KILL_POINTS.uniform(0.0, KILL_WINDOW_S))
        lab.kill_isolator()
        answered = await sent
        at_kill = await recorded_pods(lab, TARGET)
        await lab.restart_isolator(wait=False)
        await until_serving_api(lab)

        # Whatever the kill interrupted, the restarted isolator ends in one whole state.
        settled = await eventually(
            lambda: recorded_pods(lab, TARGET),
            lambda found: found in (set(), pods),
            f"round {round_index}: a whole state after a kill with {len(at_kill)} records",
            30.0,
        )
        if answered == 200:
            assert settled == (pods if isolate else set()), f"round {round_index}: acknowledged"
        # A request the kill cut short is the caller's to repeat; repeating is harmless.
        status = await request(lab, path, f"kill round {round_index}, again")
        assert status in (200, 404), f"round {round_index}: repeat answered {status}"
        expected = pods if isolate else set()
        assert await recorded_pods(lab, TARGET) == expected, f"round {round_index}"

    if KILL_ROUNDS % 2:
        assert await request(lab, f"{cut_path}/restore", "end of the kill rounds") == 200
    await eventually(lab.ready_pods, lambda ready: pods <= ready, "every Pod serving", 30.0)
    assert await recorded_pods(lab, TARGET) == set()
    assert await identities(lab) == before, "no Pod was deleted, replaced or restarted"
