"""No false cuts under a weak link: one region's link delayed, jittered and lossy for a while.

A Pod that leaves the ready endpoints during the window is a wrong cut, because every node is
alive and serves inside its site the whole time.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.watch import ReadyEndpoints
from isolator.lab.environment import Lab
from isolator.lab.netns import NetnsCommandError, WeakLinkUnsupportedError

SAMPLE_S = 1.0


@dataclass
class WeakLinkResult:
    """Outcome of one weak-link window; ``wrong_cuts`` is None when the window never ran."""

    region: str
    duration_s: float
    delay_ms: int
    jitter_ms: int
    loss_pct: float
    wrong_cuts: int | None = None
    wrong_cut_pods: list[str] = field(default_factory=list)
    reason: str | None = None  # why the run did not happen, when wrong_cuts is None
    node_verdicts: dict[str, int] = field(default_factory=dict)  # samples per verdict
    region_verdicts: dict[str, int] = field(default_factory=dict)
    cuts_decided: int = 0  # cut records in the isolator's audit log during the window
    # When delay and jitter cannot be emulated: the same window with the loss alone. It is
    # reported beside the result, never in its place.
    loss_only: WeakLinkResult | None = None


async def run_weak_link(
    lab: Lab,
    region: str,
    duration_s: float,
    delay_ms: int,
    jitter_ms: int,
    loss_pct: float,
) -> WeakLinkResult:
    """Make ``region``'s link weak for ``duration_s`` seconds and count the Pods cut.

    When the kernel cannot delay packets, ``reason`` contains the error and ``loss_only`` a
    loss-only window of the same length.
    """
    result = WeakLinkResult(region, duration_s, delay_ms, jitter_ms, loss_pct)
    network = lab.networks[region]
    await lab.wait_until_serving(timeout_s=90.0)
    try:
        network.set_weak_link(delay_ms, jitter_ms, loss_pct)
    except WeakLinkUnsupportedError as err:
        result.reason = f"weak link unsupported on this kernel: {err}"
        if delay_ms or jitter_ms:
            print(f"weak link: delay unsupported; {duration_s:g} s of loss only", flush=True)
            result.loss_only = await run_weak_link(lab, region, duration_s, 0, 0, loss_pct)
        return result
    except NetnsCommandError as err:
        result.reason = f"setting the weak link failed: {err}"
        return result
    started = time.time()
    nodes: Counter[str] = Counter()
    regions: Counter[str] = Counter()
    try:
        async with ReadyEndpoints(lab.ready_pods, set(lab.pods)) as watch:
            deadline = time.monotonic() + duration_s
            while time.monotonic() < deadline:
                await _sample(lab, region, nodes, regions)
                await asyncio.sleep(SAMPLE_S)
            cut = watch.left_since(started)
    finally:
        network.clear_weak_link()
    result.wrong_cuts = len(cut)
    result.wrong_cut_pods = sorted(cut)
    result.node_verdicts = dict(nodes)
    result.region_verdicts = dict(regions)
    records: list[dict[str, Any]] = await lab.get("/v1/audit")
    result.cuts_decided = sum(1 for r in records if r["action"] == "cut" and r["at"] >= started)
    return result


async def _sample(lab: Lab, region: str, nodes: Counter[str], regions: Counter[str]) -> None:
    try:
        node_verdicts = await lab.node_verdicts()
        region_verdicts = await lab.region_verdicts()
    except (aiohttp.ClientError, TimeoutError):
        nodes["isolator API unavailable"] += 1
        return
    for node, verdict in node_verdicts.items():
        if lab.nodes.get(node) == region:
            nodes[verdict] += 1
    regions[region_verdicts.get(region, "unknown")] += 1
