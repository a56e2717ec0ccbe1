"""Link faults on the real components: partitions whole and partial, weak and half-open links,
broken federation and a silent estate. None of them may cut a Pod.

The scenarios are those of ``isolator demo --scenarios all``; each test runs one in the
module's lab and checks its expectations one by one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

import pytest
import pytest_asyncio

from isolator.lab.scenarios import faults, run_scenario, scenario_spec
from isolator.lab.scenarios.common import Context, EndpointWatch, Timeline, Timings
from tests.e2e.conftest import start_lab

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.xdist_group("scenarios-links"),
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


async def test_partitioned_region_kept_serving(ctx: Context) -> None:
    report = await run_scenario(ctx, "region-partition", faults.region_partition)

    assert report.pods_cut == []
    assert report.checks.get("no node cut or restored"), report.observed
    assert report.verdict == "partitioned"
    assert report.checks.get("other regions never partitioned"), report.observed
    assert report.restored
    assert report.passed, report.checks


async def test_partial_partition_unreachable_not_cut(ctx: Context) -> None:
    report = await run_scenario(ctx, "partial-partition", faults.partial_partition)

    assert report.pods_cut == []
    assert report.checks.get("r2-n01 unreachable"), report.verdict
    assert report.checks.get("r2-n02 unreachable"), report.verdict
    assert report.checks.get("region never partitioned"), report
    assert report.restored
    assert report.passed, report.checks


async def test_weak_link_does_not_flap(ctx: Context) -> None:
    report = await run_scenario(ctx, "weak-link", faults.weak_link)

    assert report.checks.get("packets were dropped"), report.observed
    assert report.pods_cut == []
    assert report.checks.get("no node cut or restored"), report.observed
    assert report.checks.get("no node failed"), report.observed
    assert report.checks.get("region never partitioned"), report.observed
    assert report.passed, report.checks


async def test_half_open_link_heals_within_two_intervals(ctx: Context) -> None:
    report = await run_scenario(ctx, "half-open-link", faults.half_open_link)

    assert report.checks.get("probes failed"), report.observed
    assert report.pods_cut == []
    assert report.checks.get("never failed"), report.observed
    healed = [held for name, held in report.checks.items() if name.startswith("healthy within")]
    assert healed == [True], report.observed
    assert report.passed, report.checks


async def test_broken_federation_degrades_monitoring_only(ctx: Context) -> None:
    report = await run_scenario(ctx, "broken-federation", faults.broken_federation)

    assert report.verdict == "monitoring_degraded"
    assert report.pods_cut == []
    assert report.checks.get("no node cut or restored"), report.observed
    assert report.checks.get("its nodes healthy"), report
    assert report.checks.get("alarm raised"), report.observed
    assert report.passed, report.checks


@pytest.mark.parametrize("all_links_down", [False, True], ids=["agents-silent", "links-down"])
async def test_central_fault_fail_safe_zero_writes(ctx: Context, all_links_down: bool) -> None:
    scenario = partial(faults.central_fault, all_links_down=all_links_down)
    report = await run_scenario(ctx, "central-fault", scenario)

    assert report.verdict == "fail_safe", report.observed
    assert report.pods_cut == []
    assert report.checks.get("no node cut or restored"), report.observed
    assert report.checks.get("no region action"), report.observed
    assert report.checks.get("alarm firing"), report.observed
    assert report.checks.get("API answers"), report
    assert report.checks.get("manual API answers"), report.observed
    assert report.restored
    assert report.passed, report.checks
