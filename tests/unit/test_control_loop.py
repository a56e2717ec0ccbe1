"""The control loop on fakes: what it cuts, what it holds, and when it restores."""

from __future__ import annotations

import pytest

from isolator.model import GlobalVerdict, NodeVerdict, RegionVerdict
from tests.unit.harness import Harness


async def test_all_nodes_healthy_after_start() -> None:
    harness = await Harness.start()

    assert {harness.node_verdict(n) for n in harness.controller.store.nodes} == {
        NodeVerdict.HEALTHY
    }
    assert harness.cluster.cuts == []


async def test_crashed_node_cut_once_after_correlation_window() -> None:
    harness = await Harness.start()
    harness.silent.add("r1-n01")
    harness.site_down.add("r1-n01")

    await harness.run_for(4.0)  # 3 s to miss three heartbeats, then part of the window
    assert harness.node_verdict("r1-n01") is NodeVerdict.FAILED
    assert harness.cluster.cuts == []

    await harness.run_for(2.0)
    assert harness.cluster.cuts == ["r1-n01"]
    assert harness.region_verdict("r1") is RegionVerdict.DEGRADED

    await harness.run_for(5.0)
    assert harness.cluster.cuts == ["r1-n01"], "a cut node must not be cut again"


async def test_silent_node_seen_up_inside_site_is_not_cut() -> None:
    harness = await Harness.start()
    harness.silent.add("r1-n07")

    await harness.run_for(10.0)

    assert harness.node_verdict("r1-n07") is NodeVerdict.UNREACHABLE
    assert harness.cluster.cuts == []


async def test_partitioned_region_not_cut() -> None:
    harness = await Harness.start()
    harness.silent.update(n for n in harness.controller.store.nodes if n.startswith("r2-"))
    harness.dark_regions.add("r2")

    await harness.run_for(60.0)

    assert harness.region_verdict("r2") is RegionVerdict.PARTITIONED
    assert harness.region_verdict("r1") is RegionVerdict.NORMAL
    assert harness.controller.state.assessment is not None
    assert harness.controller.state.assessment.verdict is GlobalVerdict.NORMAL
    assert harness.cluster.cuts == []


async def test_federation_broken_with_heartbeats_is_monitoring_degraded() -> None:
    harness = await Harness.start()
    harness.dark_regions.add("r3")

    await harness.run_for(10.0)

    assert harness.region_verdict("r3") is RegionVerdict.MONITORING_DEGRADED
    assert harness.cluster.cuts == []


async def test_most_regions_dark_trips_fail_safe() -> None:
    harness = await Harness.start()
    harness.silent.update(harness.controller.store.nodes)
    harness.site_down.update(harness.controller.store.nodes)

    await harness.run_for(10.0)

    assert harness.controller.state.assessment is not None
    assert harness.controller.state.assessment.verdict is GlobalVerdict.FAIL_SAFE
    assert harness.cluster.cuts == []


async def test_region_budget_holds_burst_of_failures() -> None:
    harness = await Harness.start()
    failed = [f"r1-n{j:02d}" for j in range(1, 5)]
    harness.silent.update(failed)
    harness.site_down.update(failed)

    await harness.run_for(8.0)

    # 10 nodes at a 0.34 share allow 3 cuts; the fourth is held for a person.
    assert len(harness.cluster.cuts) == 3
    holds = [d for d in harness.controller.state.holds if d.node in failed]
    assert len(holds) == 1
    assert "region budget" in holds[0].reason


async def test_restore_after_hold_time_healthy() -> None:
    harness = await Harness.start()
    harness.silent.add("r1-n01")
    harness.site_down.add("r1-n01")
    await harness.run_for(6.0)
    assert harness.cluster.cuts == ["r1-n01"]

    harness.silent.clear()
    harness.site_down.clear()
    await harness.run_for(9.0)
    assert harness.cluster.restores == []

    await harness.run_for(2.0)
    assert harness.cluster.restores == ["r1-n01"]
    assert "r1-n01" not in harness.controller.isolations


async def test_dry_run_records_isolation_once() -> None:
    harness = await Harness.start(dry_run=True)
    harness.silent.add("r1-n01")
    harness.site_down.add("r1-n01")

    await harness.run_for(6.0)

    # The adapter receives the cut once and, in dry-run mode, writes nothing.
    assert harness.cluster.cuts == ["r1-n01"]
    assert harness.controller.isolations["r1-n01"].dry_run is True
    assert harness.controller.audit[-1]["result"] == "dry_run"


@pytest.mark.parametrize("down", [True, False], ids=["prometheus-down", "prometheus-up"])
async def test_no_cut_without_in_site_evidence(down: bool) -> None:
    harness = await Harness.start()
    harness.silent.add("r1-n01")
    harness.site.down = down
    harness.dark_regions.add("r1") if not down else None

    await harness.run_for(10.0)

    assert harness.node_verdict("r1-n01") is NodeVerdict.SUSPECT
    assert harness.cluster.cuts == []
