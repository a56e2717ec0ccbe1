"""Steps that many scenarios share: wait for a cut, assert that nothing was cut, recover."""

from __future__ import annotations

import time
from typing import Any

from kubernetes_asyncio import client as k8s

from isolator.lab.cluster import SERVICE_NAME_LABEL
from isolator.lab.scenarios.common import Context, ScenarioReport, iso_time, pods_on, wait_for

# Controller-managed EndpointSlices are rebuilt from Pod state within seconds, so a cut that
# only edited a slice would be undone well within this window.
ENDPOINT_REBUILD_WINDOW_S = 10.0
ENDPOINT_CONTROLLER = "kube-controller-manager"


def start(report: ScenarioReport) -> float:
    """Stamp the fault time on the report and return it as wall-clock seconds."""
    fault = time.time()
    report.fault_at = iso_time(fault)
    return fault


async def expect_cut(ctx: Context, report: ScenarioReport, nodes: set[str], fault: float) -> bool:
    """Wait for exactly the Pods of ``nodes`` to leave the ready endpoints; record the cut."""
    expected = pods_on(ctx.lab, nodes)

    async def all_cut() -> bool:
        return expected <= ctx.watch.cut_since(fault).keys()

    await wait_for(all_cut, ctx.timings.cut_deadline_s)
    cut = ctx.watch.cut_since(fault)
    report.pods_cut = sorted(cut)
    report.wrong_cut_pods = sorted(set(cut) - expected)
    report.wrong_cuts = len(report.wrong_cut_pods)
    done = expected <= cut.keys()
    if done:
        cut_at = max(cut[pod] for pod in expected)
        report.cut_at = iso_time(cut_at)
        report.cut_latency_s = round(cut_at - fault, 2)
        ctx.say(f"{', '.join(sorted(nodes))}: Pods cut after {report.cut_latency_s} s")
    else:
        ctx.say(f"{', '.join(sorted(nodes))}: Pods still serving {ctx.timings.cut_deadline_s} s on")
    report.check("cut within deadline", done)
    report.check("nothing else cut", report.wrong_cuts == 0)
    return done


async def expect_no_cut(
    ctx: Context,
    report: ScenarioReport,
    fault: float,
    audit_before: int,
    region_actions_allowed: bool = False,
) -> None:
    """Record every Pod cut since ``fault`` as wrong, and check the audit records since
    ``audit_before``: no node may be cut or restored. Region-level actions (moving a
    partitioned region's Ingress routes to its fallback) count only when
    ``region_actions_allowed`` is false."""
    cut = ctx.watch.cut_since(fault)
    report.pods_cut = sorted(cut)
    report.wrong_cut_pods = sorted(cut)
    report.wrong_cuts = len(cut)
    records = (await ctx.audit())[audit_before:]
    node_actions = [r for r in records if r["node"]]
    region_actions = [r for r in records if not r["node"]]
    report.observed["node_actions"] = [describe(r) for r in node_actions]
    report.observed["region_actions"] = [describe(r) for r in region_actions]
    report.check("no Pod cut", not cut)
    report.check("no node cut or restored", not node_actions)
    if not region_actions_allowed:
        report.check("no region action", not region_actions)


def describe(record: dict[str, Any]) -> str:
    """Describe one audit record in a line."""
    target = record["node"] or f"region {record['region']}"
    return f"{record['action']} {target} ({record['result']}): {record['reason']}"


async def expect_restored(ctx: Context, report: ScenarioReport) -> None:
    report.restored = await ctx.wait_restored()
    if report.restored:
        ctx.say("every node healthy and every Pod serving")
    else:
        report.observed["not_restored"] = ctx.unsettled
        ctx.say(f"not restored: {ctx.unsettled}")
    report.check("restored", report.restored)


async def endpoint_slice_managers(ctx: Context) -> set[str]:
    """Return the field managers of every EndpointSlice of the lab's Service."""
    slices = await k8s.DiscoveryV1Api(ctx.lab.api).list_namespaced_endpoint_slice(
        ctx.lab.spec.namespace, label_selector=f"{SERVICE_NAME_LABEL}={ctx.lab.spec.service}"
    )
    managers: set[str] = set()
    for item in slices.items:
        for entry in item.metadata.managed_fields or []:
            managers.add(str(entry.manager))
    return managers


async def alert_states(
    ctx: Context, alertname: str, wanted: set[str], timeout_s: float, **labels: str
) -> set[str]:
    """Poll the central Prometheus until an alert is in one of the ``wanted`` states (pending,
    firing) or ``timeout_s`` passes, and return the states seen last.

    The central evaluates rules on the isolator's own metrics, which it scrapes, so an alert
    trails the verdict by a scrape and an evaluation interval.
    """
    matchers = [f'alertname="{alertname}"', *(f'{k}="{v}"' for k, v in labels.items())]
    states: set[str] = set()

    async def in_wanted_state() -> bool:
        series = await ctx.query_central(f"ALERTS{{{', '.join(matchers)}}}")
        states.clear()
        states.update(str(item["metric"].get("alertstate")) for item in series)
        return bool(states & wanted)

    await wait_for(in_wanted_state, timeout_s)
    return states
