"""Node faults on the real components: what is cut, what is left alone, and what comes back.

The scenarios are those of ``isolator demo --scenarios all``; each test runs one in the
module's lab and checks its expectations one by one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from isolator.lab.scenarios import faults, run_scenario, scenario_spec
from isolator.lab.scenarios.common import Context, EndpointWatch, Timeline, Timings
from tests.e2e.conftest import start_lab

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.xdist_group("scenarios-nodes"),
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


async def test_crashed_node_cut_and_restored(ctx: Context) -> None:
    report = await run_scenario(ctx, "node-crash", faults.node_crash)

    assert report.checks.get("cut within deadline"), report
    assert report.wrong_cuts == 0, report.wrong_cut_pods
    assert report.verdict == "failed"
    assert report.checks.get("still cut after the endpoint controller resynced"), report
    assert report.checks.get("EndpointSlices left to their controller"), report.observed
    assert report.restored
    assert report.passed, report.checks


async def test_agent_crash_on_serving_node_not_cut(ctx: Context) -> None:
    report = await run_scenario(ctx, "agent-crash", faults.agent_crash)

    assert report.pods_cut == []
    assert report.checks.get("no node cut or restored"), report.observed
    assert report.verdict == "unreachable"
    assert report.restored
    assert report.passed, report.checks


async def test_failed_component_cuts_live_node(ctx: Context) -> None:
    report = await run_scenario(ctx, "failed-component", faults.failed_component)

    assert report.checks.get("cut within deadline"), report
    assert report.wrong_cuts == 0, report.wrong_cut_pods
    assert report.observed.get("component") == "kube-proxy"
    assert report.restored
    assert report.passed, report.checks


async def test_broken_ingress_path_cuts_ingress_only(ctx: Context) -> None:
    report = await run_scenario(ctx, "broken-ingress-path", faults.broken_ingress)

    assert report.checks.get("cut recorded within deadline"), report.observed
    assert report.observed.get("component") == "ingress"
    assert report.pods_cut == []
    assert report.restored
    assert report.passed, report.checks


async def test_flapping_node_cut_at_most_once(ctx: Context) -> None:
    report = await run_scenario(ctx, "flapping-node", faults.flapping_node)

    assert report.checks.get("at most one cut"), report.observed
    assert report.checks.get("no restore while flapping"), report.observed
    assert report.checks.get("at most one restore"), report.observed
    assert report.wrong_cuts == 0, report.wrong_cut_pods
    assert report.passed, report.checks


async def test_wall_clock_step_changes_nothing(ctx: Context) -> None:
    report = await run_scenario(ctx, "wall-clock-step", faults.wall_clock_step)

    assert report.checks.get("step seen as clock skew"), report.observed
    assert report.pods_cut == []
    assert report.checks.get("no node cut or restored"), report.observed
    assert report.checks.get("no node failed, never fail-safe"), report.observed
    assert report.passed, report.checks
