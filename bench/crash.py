"""Fault to traffic cut: node crashes handled by the isolator, in a running lab.

Each crash is what ``Lab.crash_node`` does: the node's agent and components are killed and the
Node is marked down. The latency runs from the kill to the moment the last of the node's Pods
left the Service's ready endpoints, as read from the EndpointSlices.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from bench.kubeapi import ApiServer, RequestKey, difference, write_summary, writes
from bench.watch import ReadyEndpoints
from isolator.lab.environment import Lab

logger = logging.getLogger(__name__)

CUT_TIMEOUT_S = 30.0
AUDIT_TIMEOUT_S = 15.0
SERVING_TIMEOUT_S = 90.0
# Pause after the lab serves again and before the next crash, drawn uniformly from this range
# in seconds, so that crashes land at every phase of the heartbeat and loop timers.
PAUSE_RANGE_S = (1.0, 3.0)


@dataclass
class CrashResult:
    """One crash: when, how long until its Pods were cut, and what else happened."""

    node: str
    fault_at: float  # wall-clock seconds
    pods: list[str]
    cut_latency_s: float | None  # None when the Pods were not all cut within CUT_TIMEOUT_S
    verdict: str | None  # the isolator's verdict on the node once cut
    decided_after_s: float | None = None  # from the kill to the isolator's decision to cut
    wrong_cut_pods: list[str] = field(default_factory=list)
    isolator_writes: dict[str, float] = field(default_factory=dict)
    other_writes: dict[str, float] = field(default_factory=dict)
    serving_again_s: float | None = None  # from recovery to every Pod serving again

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_isolator_write(key: RequestKey) -> bool:
    """Return whether a write in a crash window comes from the isolator.

    During the window only the isolator writes Pods and Events: KWOK does not play the Pods of
    a Node marked down, and the lab, KWOK and the controllers write Nodes, Leases, Endpoints
    and EndpointSlices.
    """
    _, group, resource, _ = key
    return (group == "" and resource == "pods") or resource == "events"


def crash_order(lab: Lab) -> list[str]:
    """Return the nodes in the order they crash: one per region in turn, then the next one."""
    by_region: dict[str, list[str]] = {}
    for node, region in sorted(lab.nodes.items()):
        by_region.setdefault(region, []).append(node)
    order = []
    for index in range(max(len(nodes) for nodes in by_region.values())):
        order += [nodes[index] for nodes in by_region.values() if index < len(nodes)]
    return order


async def _wait_for_cut_record(lab: Lab, node: str, since: float) -> bool:
    deadline = time.monotonic() + AUDIT_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            records = await lab.get("/v1/audit")
        except (aiohttp.ClientError, TimeoutError):
            records = []
        if any(r["action"] == "cut" and r["node"] == node and r["at"] >= since for r in records):
            return True
        await asyncio.sleep(0.1)
    return False


async def crash_once(
    lab: Lab, watch: ReadyEndpoints, apiserver: ApiServer, node: str
) -> CrashResult:
    """Crash ``node``, measure the cut, count the writes, then recover it and wait."""
    pods = sorted(pod for pod, on in lab.pods.items() if on == node)
    before = await apiserver.request_counts()
    fault = time.time()
    await lab.crash_node(node)

    await watch.wait_until(lambda: set(pods) <= watch.left_since(fault).keys(), CUT_TIMEOUT_S)
    left = watch.left_since(fault)
    result = CrashResult(node=node, fault_at=fault, pods=pods, cut_latency_s=None, verdict=None)
    if set(pods) <= left.keys():
        result.cut_latency_s = round(max(left[pod] for pod in pods) - fault, 3)
    result.wrong_cut_pods = sorted(set(left) - set(pods))
    recorded = await _wait_for_cut_record(lab, node, fault)
    after = await apiserver.request_counts()
    counted = writes(difference(after, before))
    if recorded:
        result.isolator_writes = write_summary(
            (key, value) for key, value in counted.items() if is_isolator_write(key)
        )
    result.other_writes = write_summary(
        (key, value) for key, value in counted.items() if not is_isolator_write(key)
    )
    result.verdict = (await lab.node_verdicts()).get(node)
    isolations = {item["node"]: item for item in await lab.get("/v1/isolations")}
    if node in isolations:
        result.decided_after_s = round(isolations[node]["started_at"] - fault, 3)

    recovered = time.monotonic()
    await lab.recover_node(node)
    await lab.wait_until_serving(timeout_s=SERVING_TIMEOUT_S)
    result.serving_again_s = round(time.monotonic() - recovered, 2)
    return result


async def run_crashes(
    lab: Lab, apiserver: ApiServer, count: int, rng: random.Random, results: list[CrashResult]
) -> None:
    """Crash ``count`` nodes one after another, each recovered before the next.

    Each result is appended to ``results`` as soon as it is measured, so the crashes before an
    error are kept.
    """
    order = crash_order(lab)
    async with ReadyEndpoints(lab.ready_pods, set(lab.pods)) as watch:
        for index in range(count):
            await lab.wait_until_serving(timeout_s=SERVING_TIMEOUT_S)
            await asyncio.sleep(rng.uniform(*PAUSE_RANGE_S))
            node = order[index % len(order)]
            result = await crash_once(lab, watch, apiserver, node)
            results.append(result)
            latency = "not cut" if result.cut_latency_s is None else f"{result.cut_latency_s} s"
            print(
                f"  crash {index + 1}/{count}: {node} cut after {latency}, "
                f"verdict {result.verdict}, wrong cuts {len(result.wrong_cut_pods)}",
                flush=True,
            )
