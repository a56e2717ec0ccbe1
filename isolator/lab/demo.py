"""``isolator demo``: the main job on real components, told as a timeline and a JSON report.

Three regions of four nodes each, a Service with Pods on every node. The demo crashes one node,
partitions one region, then recovers both, and checks what the isolator did to the Service's
ready endpoints at every step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from isolator.lab.environment import Lab, LabSpec

logger = logging.getLogger(__name__)

POLL_S = 0.1


def _iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")


@dataclass
class ScenarioReport:
    """One scenario's outcome, in the shape of the JSON report."""

    scenario: str
    expected: str
    verdict: str = "unknown"
    fault_at: str | None = None
    cut_at: str | None = None
    cut_latency_s: float | None = None
    pods_cut: list[str] = field(default_factory=list)
    wrong_cuts: int = 0
    wrong_cut_pods: list[str] = field(default_factory=list)
    restored: bool = False
    passed: bool = False


class EndpointWatch:
    """Polls the Service's ready endpoints and remembers when each Pod left and came back."""

    def __init__(self, lab: Lab) -> None:
        self._lab = lab
        self.left_at: dict[str, float] = {}  # Pod -> wall time it last left the ready set
        self.ready: set[str] = set(lab.pods)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EndpointWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            ready = await self._lab.ready_pods()
            now = time.time()
            for pod in self.ready - ready:
                self.left_at[pod] = now
            for pod in ready - self.ready:
                self.left_at.pop(pod, None)
            self.ready = ready
            await asyncio.sleep(POLL_S)

    def cut_since(self, since: float) -> dict[str, float]:
        """Return the Pods that left the ready endpoints at or after ``since``."""
        return {pod: at for pod, at in self.left_at.items() if at >= since}


class Timeline:
    """Prints what happens, with the seconds since the demo started."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self._start:7.1f} s] {text}", flush=True)


async def _wait_for(condition: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await condition():
            return True
        await asyncio.sleep(POLL_S)
    return False


async def node_crash(lab: Lab, watch: EndpointWatch, say: Timeline, node: str) -> ScenarioReport:
    """Crash one node and expect exactly its Pods to leave the ready endpoints."""
    expected_pods = {pod for pod, on in lab.pods.items() if on == node}
    report = ScenarioReport("node-crash", f"node {node} failed; its {len(expected_pods)} Pods cut")
    fault = time.time()
    report.fault_at = _iso(fault)
    await lab.crash_node(node)
    say.say(f"{node}: agent killed and Node marked down")

    await _wait_for(lambda: _all_cut(watch, expected_pods, fault), timeout_s=20.0)
    cut = watch.cut_since(fault)
    report.pods_cut = sorted(cut)
    report.wrong_cut_pods = sorted(set(cut) - expected_pods)
    report.wrong_cuts = len(report.wrong_cut_pods)
    if expected_pods <= cut.keys():
        cut_at = max(cut[pod] for pod in expected_pods)
        report.cut_at = _iso(cut_at)
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
    report.fault_at = _iso(fault)
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
    report.fault_at = _iso(time.time())
    await lab.recover_node(node)
    lab.heal(region)
    say.say(f"{node}: agent restarted and Node marked up; {region}: link back up")

    report.restored = await _wait_for(lambda: _all_ready(watch, set(lab.pods)), timeout_s=60.0)
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


async def run_demo(report: Path, scenarios: str = "main") -> int:
    """Run the demo and write the report; returns 0 when every scenario passed."""
    if scenarios != "main":
        print(f"unknown scenario set {scenarios!r}; available: main")
        return 2
    hold_s = float(os.environ.get("DEMO_PARTITION_HOLD_S", "60"))
    say = Timeline()
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
    text = json.dumps([asdict(r) for r in reports], indent=2, ensure_ascii=False) + "\n"
    await asyncio.to_thread(report.write_text, text)
    for item in reports:
        say.say(f"{item.scenario}: {'PASS' if item.passed else 'FAIL'} ({item.expected})")
    say.say(f"report written to {report}")
    return 0 if all(r.passed for r in reports) else 1
