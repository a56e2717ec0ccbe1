"""Faults reported from the field, on the real components: Alertmanager deliveries, stale
federated data, region cuts node by node, a dead kubelet under a live agent, and a burst over
the region's budget.

Each test runs one scenario of ``isolator demo --scenarios all`` in the module's lab. Cases
that need no real component run in tests/unit/test_field_cases.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from isolator.lab.scenarios import field, run_scenario, scenario_spec
from isolator.lab.scenarios.common import Context, EndpointWatch, Timeline, Timings
from tests.e2e.conftest import start_lab

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.xdist_group("field-cases"),
    pytest.mark.timeout(300),
]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def ctx() -> AsyncIterator[Context]:
    lab = await start_lab(scenario_spec())
    try:
        async with EndpointWatch(lab) as watch:
            yield Context(lab, watch, Timeline(), Timings.of(lab))
    finally:
        await lab.stop()


# F01, F03 and F04: Alertmanager sends year-0001 endsAt on firing alerts, delivers the same
# notification again from retries and HA peers, and passes Unicode labels and escapes through.
async def test_webhook_quirks_each_alert_once(ctx: Context) -> None:
    report = await run_scenario(ctx, "webhook-deliveries", field.webhook_deliveries)

    assert report.checks.get("firing alert counted firing"), report
    assert report.checks.get("resolved alert counted resolved"), report
    assert report.checks.get("recorded once"), report.observed
    assert report.checks.get("19 duplicates"), report.observed
    assert report.checks.get("every delivery answered within 1 s"), report.observed
    assert report.checks.get("invalid node reported unmapped"), report.observed
    assert report.passed, report.checks


# F02: max_alerts truncation leaves a notification with a few alerts and misleading
# commonLabels.
async def test_truncated_notification_rereads_alertmanager(ctx: Context) -> None:
    report = await run_scenario(ctx, "truncated-notification", field.truncated_notification)

    assert report.checks.get("re-read scheduled"), report.observed
    assert report.checks.get("all 40 recorded"), report.observed
    assert report.checks.get("re-read from Alertmanager"), report.observed
    assert report.passed, report.checks


# F05: federated series outlive their source by up to five minutes.
async def test_stale_federated_up_never_vouches(ctx: Context) -> None:
    report = await run_scenario(ctx, "lingering-federated-series", field.lingering_federated_series)

    assert report.checks.get("central still returns the stale up of 1"), report.observed
    assert report.verdict == "suspect", report.observed
    assert report.pods_cut == []
    assert report.checks.get("never unreachable or healthy on stale data"), report.observed
    assert report.passed, report.checks


# F13: a region cut arrives node by node, then the site's Prometheus becomes unreachable.
async def test_region_cut_node_by_node_not_cut(ctx: Context) -> None:
    report = await run_scenario(ctx, "region-cut-node-by-node", field.region_cut_node_by_node)

    assert report.verdict == "partitioned"
    assert report.pods_cut == []
    assert report.checks.get("no node failed"), report
    assert report.passed, report.checks


# F15c: the kubelet and applications die while the agent still heartbeats.
async def test_dead_kubelet_under_live_agent_cut(ctx: Context) -> None:
    report = await run_scenario(ctx, "dead-kubelet-live-agent", field.dead_kubelet_live_agent)

    assert report.checks.get("cut within deadline"), report
    assert report.checks.get("heartbeats still on time"), report.observed
    assert report.verdict == "failed"
    assert report.wrong_cuts == 0, report.wrong_cut_pods
    assert report.passed, report.checks


# F10b, F16b and F16c: more nodes of a region flagged at once than it may lose, then a new
# flag within the cooldown.
async def test_burst_over_budget_held_with_alarm(ctx: Context) -> None:
    report = await run_scenario(ctx, "burst-over-budget", field.burst_over_budget)

    assert report.checks.get("no Pod cut"), report.pods_cut
    assert report.checks.get("held for the region budget"), report.observed
    assert report.checks.get("alarm raised"), report.observed
    assert report.checks.get("late failure held for the cooldown"), report.observed
    assert report.checks.get("late failure cut after the cooldown"), report.observed
    assert report.passed, report.checks
