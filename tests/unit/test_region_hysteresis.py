"""Hysteresis on region verdicts: severe at once, milder only after the hold time, on the
controller with a manual clock and on the class itself."""

from __future__ import annotations

from isolator.engine.hysteresis import RegionHysteresis
from isolator.model import Assessment, GlobalVerdict, RegionAssessment, RegionVerdict
from tests.unit.harness import Harness

HOLD_S = 5.0
PARTITIONED, NORMAL = RegionVerdict.PARTITIONED, RegionVerdict.NORMAL


def assessment(verdict: RegionVerdict, silent: int) -> Assessment:
    region = RegionAssessment("r1", verdict, f"{silent} of 10 nodes silent", 10, silent, 0)
    return Assessment(GlobalVerdict.NORMAL, "test", {"r1": region}, {})


def test_hovering_region_keeps_partitioned() -> None:
    hysteresis = RegionHysteresis(HOLD_S)
    seen = []
    # The silent count hovers at the threshold: 6 of 10 and 5 of 10 on alternate passes.
    for step in range(20):
        raw = assessment(PARTITIONED, 6) if step % 2 == 0 else assessment(NORMAL, 5)
        seen.append(hysteresis.apply(raw, now=step * 0.5).regions["r1"])

    assert {region.verdict for region in seen} == {PARTITIONED}
    assert [region.silent for region in seen[:2]] == [6, 5]  # counts stay current


def test_milder_verdict_after_hold() -> None:
    hysteresis = RegionHysteresis(HOLD_S)
    hysteresis.apply(assessment(PARTITIONED, 6), now=0.0)

    kept = hysteresis.apply(assessment(NORMAL, 0), now=1.0).regions["r1"]
    still = hysteresis.apply(assessment(NORMAL, 0), now=5.9).regions["r1"]
    eased = hysteresis.apply(assessment(NORMAL, 0), now=6.0).regions["r1"]

    assert kept.verdict is PARTITIONED
    assert "now points to normal" in kept.reason
    assert still.verdict is PARTITIONED
    assert eased.verdict is NORMAL
    assert eased.reason == "0 of 10 nodes silent"


def test_severe_verdict_at_once() -> None:
    hysteresis = RegionHysteresis(HOLD_S)
    hysteresis.apply(assessment(NORMAL, 0), now=0.0)

    region = hysteresis.apply(assessment(PARTITIONED, 6), now=0.5).regions["r1"]

    assert region.verdict is PARTITIONED


def test_severe_pass_restarts_hold() -> None:
    hysteresis = RegionHysteresis(HOLD_S)
    hysteresis.apply(assessment(PARTITIONED, 6), now=0.0)
    hysteresis.apply(assessment(NORMAL, 5), now=1.0)
    hysteresis.apply(assessment(PARTITIONED, 6), now=4.0)

    region = hysteresis.apply(assessment(NORMAL, 5), now=7.0).regions["r1"]

    assert region.verdict is PARTITIONED  # milder for 0 s, not for 6 s


def estate(verdict: GlobalVerdict) -> Assessment:
    region = RegionAssessment("r1", NORMAL, "all nodes accounted for", 10, 0, 0)
    return Assessment(verdict, f"estate {verdict.value}", {"r1": region}, {})


def test_fail_safe_kept_until_normal_held() -> None:
    hysteresis = RegionHysteresis(HOLD_S)
    hysteresis.apply(estate(GlobalVerdict.FAIL_SAFE), now=0.0)

    kept = hysteresis.apply(estate(GlobalVerdict.NORMAL), now=1.0)
    still = hysteresis.apply(estate(GlobalVerdict.NORMAL), now=5.9)
    eased = hysteresis.apply(estate(GlobalVerdict.NORMAL), now=6.0)

    assert kept.verdict is GlobalVerdict.FAIL_SAFE
    assert "now looks normal" in kept.reason
    assert still.verdict is GlobalVerdict.FAIL_SAFE
    assert eased.verdict is GlobalVerdict.NORMAL
    assert eased.reason == "estate normal"


def test_fail_safe_pass_restarts_global_hold() -> None:
    hysteresis = RegionHysteresis(HOLD_S)
    hysteresis.apply(estate(GlobalVerdict.FAIL_SAFE), now=0.0)
    hysteresis.apply(estate(GlobalVerdict.NORMAL), now=1.0)
    hysteresis.apply(estate(GlobalVerdict.FAIL_SAFE), now=4.0)

    settled = hysteresis.apply(estate(GlobalVerdict.NORMAL), now=7.0)

    assert settled.verdict is GlobalVerdict.FAIL_SAFE  # normal for 0 s, not for 6 s


def test_zero_hold_passes_verdicts_through() -> None:
    hysteresis = RegionHysteresis(0.0)
    hysteresis.apply(assessment(PARTITIONED, 6), now=0.0)

    region = hysteresis.apply(assessment(NORMAL, 5), now=0.5).regions["r1"]

    assert region.verdict is NORMAL


async def test_partition_eases_after_hold_on_controller() -> None:
    harness = await Harness.start(region_verdict_hold_s=HOLD_S)
    dark = [f"r1-n{i:02d}" for i in range(1, 7)]
    harness.silent.update(dark)  # 6 of 10 silent while the site still scrapes them up
    await harness.run_for(5.0)
    assert harness.region_verdict("r1") is PARTITIONED

    harness.silent.discard(dark[-1])  # 5 of 10: no longer most of the region
    await harness.run_for(HOLD_S - 1.0)
    kept = harness.region_verdict("r1")
    await harness.run_for(1.5)

    assert kept is PARTITIONED
    assert harness.region_verdict("r1") is not PARTITIONED


async def test_partition_split_waits_for_hold_to_end() -> None:
    harness = await Harness.start(region_verdict_hold_s=HOLD_S, restore_hold_s=1.0)
    dark = [f"r1-n{i:02d}" for i in range(1, 7)]
    harness.silent.update(dark)
    await harness.run_for(8.0)
    assert harness.cluster.called("split_region") == ["r1"]

    harness.silent.clear()
    await harness.run_for(HOLD_S - 1.0)
    early = harness.cluster.called("restore_region")
    await harness.run_for(3.0)

    assert early == []
    assert harness.cluster.called("restore_region") == ["r1"]
