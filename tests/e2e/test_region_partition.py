"""A region that only lost its link to the cloud is reported partitioned and never cut."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from isolator.lab.environment import Lab
from tests.e2e.conftest import start_lab

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.xdist_group("partition"),
    pytest.mark.timeout(240),
]

REGION = "r3"
HOLD_S = 60.0
# The region verdict hold (5 s by default) plus slack for a loaded machine.
NORMAL_AFTER_HEAL_S = 15.0


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def lab() -> AsyncIterator[Lab]:
    lab = await start_lab()
    try:
        yield lab
    finally:
        await lab.stop()


async def test_partitioned_region_keeps_every_pod(lab: Lab) -> None:
    everything = set(lab.pods)
    lab.partition(REGION)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + HOLD_S
    while loop.time() < deadline:
        assert await lab.ready_pods() == everything
        await asyncio.sleep(0.5)

    assert (await lab.region_verdicts())[REGION] == "partitioned"
    assert await lab.get("/v1/isolations") == []
    assert {r: v for r, v in (await lab.region_verdicts()).items() if r != REGION} == {
        "r1": "normal",
        "r2": "normal",
    }


async def test_healed_region_back_to_normal(lab: Lab) -> None:
    lab.heal(REGION)

    await lab.wait_until_serving(timeout_s=30.0)

    # A milder region verdict applies only after it held for ISOLATOR_REGION_VERDICT_HOLD_S.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + NORMAL_AFTER_HEAL_S
    verdict = (await lab.region_verdicts())[REGION]
    while verdict != "normal" and loop.time() < deadline:
        await asyncio.sleep(0.5)
        verdict = (await lab.region_verdicts())[REGION]
    assert verdict == "normal"
