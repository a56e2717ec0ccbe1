"""A real fault fires a generated alert that reaches the isolator as evidence, in the lab.

The lab's central Prometheus loads alert_rules/isolator.rules.yml and scrapes the isolator.
Crashing a node makes its edge Prometheus scrape the agent down, so the generated
IsolatorEdgeAgentDown alert fires on the central. Alertmanager delivers it to the isolator's
webhook, and the isolator lists it in the node's firing alerts until the node recovers.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import pytest
import pytest_asyncio

from dashboards import build_all
from dashboards.common import REGION_VERDICT_CODES
from isolator.lab.environment import Lab, LabSpec
from tests.e2e.conftest import start_lab
from tests.monitoring.queries import dashboard_queries

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.xdist_group("alert-delivery"),
    pytest.mark.timeout(300),
]

DEADLINE_S = float(os.environ.get("ISOLATOR_TEST_DEADLINE_S", "60"))
ALERT = "IsolatorEdgeAgentDown"
CRASHED = "r1-n02"

T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T | None]], what: str) -> T:
    """Poll ``check`` until it returns something other than None, or fail at the deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE_S
    while True:
        result = await check()
        if result is not None:
            return result
        assert loop.time() < end, f"timed out after {DEADLINE_S} s waiting for {what}"
        await asyncio.sleep(0.5)


async def get_json(url: str, params: dict[str, str] | None = None) -> Any:
    timeout = aiohttp.ClientTimeout(total=5.0)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, params=params) as response,
    ):
        body = await response.json()
    assert response.status == 200, body
    return body


async def query(lab: Lab, promql: str) -> list[dict[str, Any]]:
    body = await get_json(f"{lab.monitoring.central_url}/api/v1/query", {"query": promql})
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def firing_alerts(lab: Lab) -> dict[str, list[str]]:
    nodes = await lab.get("/v1/nodes")
    return {node["node"]: node["evidence"]["firing_alerts"] for node in nodes}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def lab() -> AsyncIterator[Lab]:
    lab = await start_lab(LabSpec(regions=["r1", "r2"], nodes_per_region=3))
    try:
        yield lab
    finally:
        await lab.stop()


async def test_central_loads_generated_rules(lab: Lab) -> None:
    body = await get_json(f"{lab.monitoring.central_url}/api/v1/rules")

    groups = {group["name"]: group for group in body["data"]["groups"]}
    assert {"isolator.recording", "isolator.alerts"} <= set(groups), sorted(groups)
    alerts = {rule["name"] for rule in groups["isolator.alerts"]["rules"]}
    assert ALERT in alerts
    assert all(rule["health"] == "ok" for rule in groups["isolator.alerts"]["rules"]), groups


async def test_central_scrapes_isolator(lab: Lab) -> None:
    async def isolator_up() -> list[dict[str, Any]] | None:
        return await query(lab, 'up{job="isolator"} == 1') or None

    async def verdicts_scraped() -> list[dict[str, Any]] | None:
        return await query(lab, "isolator_region_verdict_info == 1") or None

    await eventually(isolator_up, "the central's up{job=isolator} == 1")
    verdicts = await eventually(verdicts_scraped, "region verdicts on the central")

    assert {sample["metric"]["region"] for sample in verdicts} == {"r1", "r2"}


async def test_dashboard_queries_run_on_central(lab: Lab) -> None:
    queries = dashboard_queries(build_all())
    # The query selects region=~"r1", the value VARIABLE_VALUES gives $region.
    verdict_query = queries["isolator-overview.json: Region verdicts (A)"]
    names = {str(code): verdict.value for verdict, (code, _) in REGION_VERDICT_CODES.items()}

    async def verdict_matches_api() -> str | None:
        samples = await query(lab, verdict_query)
        shown = {s["metric"]["region"]: names[s["value"][1]] for s in samples}
        expected = (await lab.region_verdicts())["r1"]
        return expected if shown == {"r1": expected} else None

    for expr in queries.values():
        await query(lab, expr)  # fails unless Prometheus accepts the query
    verdict = await eventually(verdict_matches_api, "the overview's verdict of r1 to match the API")

    assert verdict in names.values()


async def test_crash_delivers_alert_to_isolator(lab: Lab) -> None:
    before = await firing_alerts(lab)
    assert all(ALERT not in alerts for alerts in before.values()), before

    await lab.crash_node(CRASHED)

    async def firing_on_central() -> list[dict[str, Any]] | None:
        promql = f'ALERTS{{alertname="{ALERT}", alertstate="firing"}}'
        return await query(lab, promql) or None

    async def in_alertmanager() -> list[dict[str, Any]] | None:
        url = f"{lab.monitoring.alertmanager_url}/api/v2/alerts"
        alerts: list[dict[str, Any]] = await get_json(url, {"filter": f'alertname="{ALERT}"'})
        return alerts or None

    async def recorded_by_isolator() -> dict[str, list[str]] | None:
        alerts = await firing_alerts(lab)
        return alerts if ALERT in alerts.get(CRASHED, []) else None

    fired = await eventually(firing_on_central, f"{ALERT} firing on the central")
    received = await eventually(in_alertmanager, f"{ALERT} in Alertmanager")
    recorded = await eventually(recorded_by_isolator, f"{ALERT} in the isolator's /v1/nodes")

    assert {sample["metric"]["node"] for sample in fired} == {CRASHED}
    assert {alert["labels"]["node"] for alert in received} == {CRASHED}
    assert recorded[CRASHED] == [ALERT]
    others = {node: alerts for node, alerts in recorded.items() if node != CRASHED}
    assert all(ALERT not in alerts for alerts in others.values()), others


async def test_recovery_resolves_alert_in_isolator(lab: Lab) -> None:
    await lab.recover_node(CRASHED)

    async def resolved_in_isolator() -> dict[str, list[str]] | None:
        alerts = await firing_alerts(lab)
        return alerts if ALERT not in alerts.get(CRASHED, [ALERT]) else None

    resolved = await eventually(resolved_in_isolator, f"{ALERT} resolved in /v1/nodes")

    assert ALERT not in resolved[CRASHED]
