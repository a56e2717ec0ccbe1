"""The action paths on the real components: a Service without a selector, split horizon, a
manual isolation with a TTL, and an isolator killed in the middle of a cut.

The scenarios are those of ``isolator demo --scenarios all``; each test runs one in the
module's lab and checks its expectations one by one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from isolator.lab.scenarios import actions, run_scenario, scenario_spec
from isolator.lab.scenarios.common import Context, EndpointWatch, Timeline, Timings
from tests.e2e.conftest import start_lab

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.xdist_group("scenarios-actions"),
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


async def test_manual_isolation_expires_into_restore(ctx: Context) -> None:
    report = await run_scenario(ctx, "manual-isolate-ttl", actions.manual_isolate_ttl)

    assert report.checks.get("isolation answered 200 verified"), report.observed
    assert report.checks.get("cut within deadline"), report
    assert report.wrong_cuts == 0, report.wrong_cut_pods
    assert report.checks.get("listed as the operator's"), report.observed
    assert report.checks.get("Pods back after the TTL"), report.observed
    assert report.checks.get("audit: cut by the operator"), report.observed
    assert report.checks.get("audit: restore by the isolator"), report.observed
    assert report.checks.get("restore verified"), report.observed
    assert report.restored
    assert report.passed, report.checks


async def test_selectorless_endpoints_cut_and_restored(ctx: Context) -> None:
    report = await run_scenario(ctx, "selectorless-service", actions.selectorless_service)

    assert report.checks.get("cut within deadline"), report
    assert report.wrong_cuts == 0, report.wrong_cut_pods
    assert report.checks.get("its endpoint in the hand-written slice not ready"), report
    assert report.checks.get("its address not ready in the Endpoints"), report.observed
    assert report.checks.get("other addresses still ready"), report.observed
    assert report.checks.get("controller-managed slices left to their controller"), report
    assert report.checks.get("slice endpoints exactly as before"), report
    assert report.checks.get("Endpoints subsets exactly as before"), report
    assert report.checks.get("no cut record left"), report
    assert report.restored
    assert report.passed, report.checks


async def test_partition_moves_ingress_and_back(ctx: Context) -> None:
    report = await run_scenario(ctx, "ingress-split-horizon", actions.ingress_split_horizon)

    assert report.verdict == "partitioned"
    assert report.checks.get("routes moved to the fallback"), report.observed
    assert report.checks.get("split verified by reading back"), report.observed
    assert report.checks.get("only its Ingress moved"), report.observed
    assert report.pods_cut == []
    assert report.checks.get("no node cut or restored"), report.observed
    assert report.checks.get("Ingress spec exactly as before"), report
    assert report.checks.get("no split record left"), report
    assert report.restored
    assert report.passed, report.checks


async def test_killed_isolator_finishes_cut(ctx: Context) -> None:
    report = await run_scenario(ctx, "kill-and-recover", actions.kill_and_recover)

    assert report.checks.get("killed before the cut finished"), report.observed
    assert report.checks.get("cut taken over by the first pass"), report.observed
    assert report.checks.get("cut within deadline"), report
    assert report.wrong_cuts == 0, report.wrong_cut_pods
    assert report.checks.get("every Pod in the isolation"), report
    assert report.verdict == "unknown", "the restarted isolator never heard from the node"
    assert report.checks.get("no Pod deleted, replaced or restarted"), report
    assert report.restored
    assert report.passed, report.checks
    assert len(ctx.lab.pods) == len(ctx.lab.nodes) * ctx.lab.spec.pods_per_node, (
        "the scenario's extra Pods are gone again"
    )
