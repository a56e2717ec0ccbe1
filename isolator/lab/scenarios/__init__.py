"""The scenario matrix: faults injected into one running lab, in sequence, each judged.

``run_all`` runs every scenario of ``ALL`` in one lab, recovering between them, and returns
their reports. A scenario that raises is reported failed, and the lab is reset before the next.
"""

from __future__ import annotations

import contextlib
import json
import logging
import traceback
from collections.abc import Awaitable, Callable
from functools import partial

import aiohttp

from isolator.lab.environment import Lab, LabSpec
from isolator.lab.netns import NetnsCommandError
from isolator.lab.scenarios import actions, faults, field
from isolator.lab.scenarios.common import (
    Context,
    EndpointWatch,
    ScenarioReport,
    Timeline,
    Timings,
)

logger = logging.getLogger(__name__)

Scenario = Callable[[Context], Awaitable[ScenarioReport]]

# Region names of the scenario lab. They are Node label values, which Kubernetes limits to
# ASCII letters, digits, "-", "_" and ".", so a site called 华东-1 needs an ASCII region name.
SCENARIO_REGIONS = ["r1", "r2", "r3"]

# In this order the disruptive scenarios come after the quiet ones. The burst comes last
# because it leaves its region in a cooldown.
ALL: list[tuple[str, Scenario]] = [
    ("webhook-deliveries", field.webhook_deliveries),
    ("truncated-notification", field.truncated_notification),
    ("node-crash", faults.node_crash),
    ("agent-crash", faults.agent_crash),
    ("failed-component", faults.failed_component),
    ("broken-ingress-path", faults.broken_ingress),
    ("dead-kubelet-live-agent", field.dead_kubelet_live_agent),
    ("half-open-link", faults.half_open_link),
    ("partial-partition", faults.partial_partition),
    ("weak-link", faults.weak_link),
    ("broken-federation", faults.broken_federation),
    ("lingering-federated-series", field.lingering_federated_series),
    ("region-partition", faults.region_partition),
    ("region-cut-node-by-node", field.region_cut_node_by_node),
    ("flapping-node", faults.flapping_node),
    ("manual-isolate-ttl", actions.manual_isolate_ttl),
    ("selectorless-service", actions.selectorless_service),
    ("ingress-split-horizon", actions.ingress_split_horizon),
    ("kill-and-recover", actions.kill_and_recover),
    ("wall-clock-step", faults.wall_clock_step),
    ("central-fault-agents-silent", partial(faults.central_fault, all_links_down=False)),
    ("central-fault-all-links-down", partial(faults.central_fault, all_links_down=True)),
    ("burst-over-budget", field.burst_over_budget),
]


def scenario_spec() -> LabSpec:
    """Return the shape of the lab that every scenario of ALL can run in."""
    return LabSpec(
        regions=list(SCENARIO_REGIONS),
        per_node_uids=True,
        isolator_settings={
            # Long enough for the burst scenario to crash a node within the cooldown, and
            # short enough for it to wait for the cooldown's end.
            "ISOLATOR_REGION_COOLDOWN_S": "20",
            # Only the split-horizon scenario labels an Ingress for a region, so a partition
            # in any other scenario has no route to move.
            "ISOLATOR_REGION_FALLBACK_SERVICES": json.dumps(
                {name: actions.FALLBACK_SERVICE for name in SCENARIO_REGIONS}
            ),
        },
    )


async def run_scenario(ctx: Context, name: str, scenario: Scenario) -> ScenarioReport:
    """Run one scenario; an error becomes a failed report and the lab is reset."""
    ctx.say(f"--- {name}")
    try:
        report = await scenario(ctx)
    except Exception as err:
        logger.exception("scenario raised", extra={"scenario": name})
        report = ScenarioReport(name, "scenario ran to the end")
        report.check("ran without error", False)
        report.observed["error"] = "".join(traceback.format_exception_only(err)).strip()
        await reset(ctx)
        report.restored = await ctx.wait_restored()
        return report.judge()
    ctx.say(f"{name}: {'PASS' if report.passed else 'FAIL'} {_failed(report)}")
    if not report.restored:
        await reset(ctx)
    return report


def _failed(report: ScenarioReport) -> str:
    failed = [name for name, held in report.checks.items() if not held]
    return f"(failed: {'; '.join(failed)})" if failed else ""


async def reset(ctx: Context) -> None:
    """Undo every fault the scenarios inject: links, filters, the clock, processes, Nodes."""
    lab = ctx.lab
    with contextlib.suppress(NetnsCommandError):
        lab.clear_network_faults()
    if lab.isolator_clock_faked:
        await lab.restart_isolator(fake_clock=False)
    for node in lab.nodes:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            await lab.set_component_faults(node, [])
        if not lab.agents[node].running() or not lab.node_sims[node].running():
            await lab.recover_node(node)


async def run_all(
    lab: Lab, timeline: Timeline, only: list[str] | None = None
) -> list[ScenarioReport]:
    """Run the scenarios of ALL (or the named ones) in ``lab`` and return their reports."""
    chosen = [(name, s) for name, s in ALL if only is None or name in only]
    unknown = set(only or []) - {name for name, _ in ALL}
    if unknown:
        raise ValueError(f"unknown scenarios {sorted(unknown)}; known: {[n for n, _ in ALL]}")
    reports = []
    async with EndpointWatch(lab) as watch:
        ctx = Context(lab, watch, timeline, Timings.of(lab))
        for name, scenario in chosen:
            reports.append(await run_scenario(ctx, name, scenario))
    return reports
