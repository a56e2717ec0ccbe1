"""``isolator demo``: scenarios on real components, told as a timeline and a JSON report.

The main set runs in three regions of four nodes each, with a Service with Pods on every node:
it crashes one node, partitions one region, then recovers both, and checks what the isolator
did to the Service's ready endpoints at every step. The set "all" runs the scenario matrix of
isolator.lab.scenarios in one lab of the same size.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

from isolator.lab.environment import Lab, LabSpec
from isolator.lab.scenarios import ALL, run_all, scenario_spec
from isolator.lab.scenarios.common import (
    EndpointWatch,
    ScenarioReport,
    Timeline,
    iso_time,
    wait_for,
)

logger = logging.getLogger(__name__)


async def node_crash(lab: Lab, watch: EndpointWatch, say: Timeline, node: str) -> ScenarioReport:
    """Crash one node and expect exactly its Pods to leave the ready endpoints."""
    expected_pods = {pod for pod, on in lab.pods.items() if on == node}
    report = ScenarioReport("node-crash", f"node {node} failed; its {len(expected_pods)} Pods cut")
    fault = time.time()
    report.fault_at = iso_time(fault)
    await lab.crash_node(node)
    say.say(f"{node}: agent killed and Node marked down")

    await wait_for(lambda: _all_cut(watch, expected_pods, fault), timeout_s=20.0)
    cut = watch.cut_since(fault)
    report.pods_cut = sorted(cut)
    report.wrong_cut_pods = sorted(set(cut) - expected_pods)
    report.wrong_cuts = len(report.wrong_cut_pods)
    if expected_pods <= cut.keys():
        cut_at = max(cut[pod] for pod in expected_pods)
        report.cut_at = iso_time(cut_at)
        report.cut_latency_s = round(cut_at - fault, 2)
        say.say(f"{node}: its Pods left the ready endpoints after {report.cut_latency_s} s")
    else:
        say.say(f"{node}: Pods still serving 20 s after the crash")
    report.verdict = (await lab.node_verdicts()).get(node, "unknown")
    say.say(f"{node}: isolator verdict {report.verdict}")
    return report


async def _all_cut(watch: EndpointWatch, pods: set[str], since: float) -> bool:
    return pods <= watch.cut_since(since).keys()


async def region_partition(
    lab: Lab, watch: EndpointWatch, say: Timeline, region: str, hold_s: float
) -> ScenarioReport:
    """Take a region's link down and expect nothing to be cut for ``hold_s`` seconds."""
    report = ScenarioReport(
        "region-partition", f"region {region} partitioned; no Pod cut for {hold_s:g} s"
    )
    fault = time.time()
    report.fault_at = iso_time(fault)
    lab.partition(region)
    say.say(f"{region}: link to the cloud taken down")

    deadline = time.monotonic() + hold_s
    announced = ""
    while time.monotonic() < deadline:
        verdict = (await lab.region_verdicts()).get(region, "unknown")
        if verdict != announced:
            say.say(f"{region}: isolator verdict {verdict}")
            announced = verdict
        await asyncio.sleep(1.0)
    cut = watch.cut_since(fault)
    report.pods_cut = sorted(cut)
    report.wrong_cut_pods = sorted(cut)
    report.wrong_cuts = len(cut)
    report.verdict = (await lab.region_verdicts()).get(region, "unknown")
    say.say(f"{region}: {hold_s:g} s later, {len(cut)} Pods cut, verdict {report.verdict}")
    return report


async def recovery(
    lab: Lab, watch: EndpointWatch, say: Timeline, node: str, region: str
) -> ScenarioReport:
    """Bring the crashed node and the partitioned region back; expect every Pod to serve."""
    report = ScenarioReport("recovery", f"{node} and region {region} back; every Pod serving")
    report.fault_at = iso_time(time.time())
    await lab.recover_node(node)
    lab.heal(region)
    say.say(f"{node}: agent restarted and Node marked up; {region}: link back up")

    report.restored = await wait_for(lambda: _all_ready(watch, set(lab.pods)), timeout_s=60.0)
    missing = sorted(set(lab.pods) - watch.ready)
    say.say("every Pod is a ready endpoint again" if report.restored else f"not ready: {missing}")
    verdicts = await lab.node_verdicts()
    report.verdict = "healthy" if set(verdicts.values()) == {"healthy"} else json.dumps(verdicts)
    return report


async def _all_ready(watch: EndpointWatch, pods: set[str]) -> bool:
    return pods <= watch.ready


def _judge(reports: list[ScenarioReport]) -> None:
    crash, partition, back = reports
    crash.restored = partition.restored = back.restored
    crash.passed = (
        crash.verdict == "failed"
        and crash.cut_latency_s is not None
        and crash.wrong_cuts == 0
        and crash.restored
    )
    partition.passed = (
        partition.verdict == "partitioned" and partition.wrong_cuts == 0 and partition.restored
    )
    back.passed = back.restored and back.wrong_cuts == 0


async def run_main(say: Timeline) -> list[ScenarioReport]:
    """Run the main job: one node crash, one region partition, then recovery of both."""
    hold_s = float(os.environ.get("DEMO_PARTITION_HOLD_S", "60"))
    say.say("starting the lab: control plane, 3 regions x 4 nodes, monitoring, isolator")
    async with Lab(LabSpec()) as lab:
        say.say(f"lab ready: {len(lab.nodes)} nodes healthy, {len(lab.pods)} Pods serving")
        async with EndpointWatch(lab) as watch:
            reports = [
                await node_crash(lab, watch, say, "r1-n02"),
                await region_partition(lab, watch, say, "r3", hold_s),
                await recovery(lab, watch, say, "r1-n02", "r3"),
            ]
    _judge(reports)
    return reports


async def run_matrix(say: Timeline, only: list[str] | None) -> list[ScenarioReport]:
    """Run the scenario matrix (every scenario, or the named ones) in one lab."""
    spec = scenario_spec()
    shape = f"{len(spec.regions)} regions x {spec.nodes_per_region} nodes"
    say.say(f"starting the lab: control plane, {shape}, monitoring, isolator")
    async with Lab(spec) as lab:
        say.say(f"lab ready: {len(lab.nodes)} nodes healthy, {len(lab.pods)} Pods serving")
        return await run_all(lab, say, only)


async def run_demo(report: Path, scenarios: str = "main") -> int:
    """Run a scenario set and write the report; returns 0 when every scenario passed.

    ``scenarios`` is "main", "all", or a comma-separated list of scenario names from "all".
    """
    names = [n for n, _ in ALL]
    only = None if scenarios in ("main", "all") else scenarios.split(",")
    if only is not None and not set(only) <= set(names):
        print(f"unknown scenario set {scenarios!r}; available: main, all, or some of {names}")
        return 2
    say = Timeline()
    started = time.monotonic()
    reports = await (run_main(say) if scenarios == "main" else run_matrix(say, only))
    text = json.dumps([asdict(r) for r in reports], indent=2, ensure_ascii=False) + "\n"
    await asyncio.to_thread(report.write_text, text)
    for item in reports:
        say.say(f"{item.scenario}: {'PASS' if item.passed else 'FAIL'} ({item.expected})")
    say.say(f"report written to {report}; {time.monotonic() - started:.0f} s in all")
    return 0 if all(r.passed for r in reports) else 1
