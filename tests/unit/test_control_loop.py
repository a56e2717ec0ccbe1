"""The control loop on fakes: what it cuts, what it holds, and when it restores."""

from __future__ import annotations

import pytest

from isolator.engine.decide import cut_scope
from isolator.engine.ports import CutScope
from isolator.model import GlobalVerdict, NodeVerdict, RegionVerdict
from tests.unit.harness import Harness


async def test_all_nodes_healthy_after_start() -> None:
    harness = await Harness.start()

    assert {harness.node_verdict(n) for n in harness.controller.store.nodes} == {
        NodeVerdict.HEALTHY
    }
    assert harness.cluster.cuts == []


async def test_estate_turning_healthy_served_from_one_list() -> None:
    harness = await Harness.start()
    await harness.controller.settle()

    assert set(harness.cluster.serving) == set(harness.controller.store.nodes)
    assert harness.cluster.per_node_serving_calls == 0, "30 nodes at once: one list, not 30"


async def test_few_nodes_turning_healthy_served_one_by_one() -> None:
    harness = await Harness.start(regions=1, nodes=3)
    await harness.controller.settle()

    assert sorted(harness.cluster.serving) == sorted(harness.controller.store.nodes)
    assert harness.cluster.per_node_serving_calls == 3


async def test_crashed_node_cut_once_after_correlation_window() -> None:
    harness = await Harness.start()
    harness.silent.add("r1-n01")
    harness.site_down.add("r1-n01")

    # Three kubelet scrapes found down fail the node before its heartbeats time out, and
    # the correlation window then holds the cut for another 2 s.
    await harness.run_for(2.0)
    assert harness.node_verdict("r1-n01") is NodeVerdict.FAILED
    assert harness.cluster.cuts == []

    await harness.run_for(4.0)
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


async def test_burst_within_budget_cut() -> None:
    harness = await Harness.start()
    failed = ["r1-n01", "r1-n02", "r1-n03"]
    harness.silent.update(failed)
    harness.site_down.update(failed)

    await harness.run_for(8.0)

    # 10 nodes at a 0.34 share allow 3 cuts.
    assert sorted(harness.cluster.cuts) == failed


async def test_burst_over_budget_holds_whole_region() -> None:
    harness = await Harness.start()
    failed = [f"r2-n{j:02d}" for j in range(1, 7)]
    harness.silent.update(failed)
    harness.site_down.update(failed)

    await harness.run_for(8.0)

    assert harness.cluster.cuts == []
    holds = {d.node: d.reason for d in harness.controller.state.holds}
    assert sorted(holds) == failed
    assert all("region budget exceeded" in reason for reason in holds.values())


async def test_new_flag_within_cooldown_held() -> None:
    harness = await Harness.start()
    burst = [f"r2-n{j:02d}" for j in range(1, 5)]
    harness.silent.update(burst)
    harness.site_down.update(burst)
    await harness.run_for(5.0)
    harness.silent.clear()
    harness.site_down.clear()
    await harness.run_for(2.0)

    harness.silent.add("r2-n09")
    harness.site_down.add("r2-n09")
    await harness.run_for(6.0)

    assert harness.cluster.cuts == []
    holds = {d.node: d.reason for d in harness.controller.state.holds}
    assert holds["r2-n09"].startswith("region cooldown")

    await harness.run_for(25.0)
    assert harness.cluster.cuts == ["r2-n09"]


async def test_start_up_grace_holds_cuts() -> None:
    harness = await Harness.start(startup_grace_s=10.0)
    harness.silent.add("r1-n01")
    harness.site_down.add("r1-n01")

    await harness.run_for(6.0)
    assert harness.cluster.cuts == []
    assert harness.controller.state.holds[0].reason.startswith("start-up grace")

    await harness.run_for(4.0)
    assert harness.cluster.cuts == ["r1-n01"]


async def test_rate_limit_spreads_cuts() -> None:
    harness = await Harness.start(cuts_per_minute=2)
    failed = ["r1-n01", "r2-n01", "r3-n01"]
    harness.silent.update(failed)
    harness.site_down.update(failed)

    await harness.run_for(8.0)
    assert len(harness.cluster.cuts) == 2
    assert any(d.reason.startswith("rate limit") for d in harness.controller.state.holds)

    await harness.run_for(60.0)
    assert sorted(harness.cluster.cuts) == failed


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


async def test_live_node_with_failed_component_cut() -> None:
    harness = await Harness.start()
    harness.failing["r2-n04"] = {"kube-proxy"}

    await harness.run_for(1.0)
    assert harness.node_verdict("r2-n04") is NodeVerdict.HEALTHY, "one failed check is noise"

    await harness.run_for(3.0)
    assessment = harness.controller.state.assessment
    assert assessment is not None
    assert assessment.nodes["r2-n04"].verdict is NodeVerdict.FAILED
    assert assessment.nodes["r2-n04"].component == "kube-proxy"
    assert harness.cluster.cuts == ["r2-n04"]


async def test_component_recovering_between_checks_not_cut() -> None:
    harness = await Harness.start()

    for _ in range(10):
        harness.failing["r2-n04"] = {"ingress"}
        await harness.run_for(0.5)
        harness.failing.clear()
        await harness.run_for(0.5)

    assert harness.cluster.cuts == []


async def test_agent_crash_on_serving_node_not_cut() -> None:
    harness = await Harness.start()
    harness.silent.add("r3-n05")
    harness.agent_down.add("r3-n05")

    await harness.run_for(10.0)

    assert harness.node_verdict("r3-n05") is NodeVerdict.UNREACHABLE
    assert harness.cluster.cuts == []


async def test_node_series_published_and_forgotten() -> None:
    harness = await Harness.start(regions=1, nodes=2)
    registry = harness.controller._metrics.registry
    labels = {"region": "r1", "node": "r1-n02", "verdict": "healthy"}

    assert registry.get_sample_value("isolator_node_verdict_info", labels) == 1.0

    harness.cluster.nodes = [n for n in harness.cluster.nodes if n.name != "r1-n02"]
    await harness.controller.refresh()
    await harness.run_for(0.5)

    assert registry.get_sample_value("isolator_node_verdict_info", labels) is None


@pytest.mark.parametrize(
    ("component", "scope"),
    [
        (None, CutScope.NODE),
        ("kubelet", CutScope.NODE),
        ("edgecore", CutScope.NODE),
        ("kube-proxy", CutScope.COMPONENT),
        ("ingress", CutScope.INGRESS),
    ],
    ids=["whole-node", "kubelet", "edgecore", "kube-proxy", "ingress"],
)
def test_cut_scope_by_failed_component(component: str | None, scope: CutScope) -> None:
    assert cut_scope(component, ("ingress", "ingress-controller")) is scope
