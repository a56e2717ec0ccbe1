"""Scenarios of single faults on the real components, each injected, judged and recovered.

Every scenario returns a judged ScenarioReport and leaves the lab as it found it: every node
healthy, every Pod serving, nothing isolated. Node names are those of the lab's default shape
(three regions, four nodes each). Regions are looked up by position, so they may have any name.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

from isolator.lab.scenarios.checks import (
    ENDPOINT_CONTROLLER,
    ENDPOINT_REBUILD_WINDOW_S,
    alert_states,
    describe,
    endpoint_slice_managers,
    expect_cut,
    expect_no_cut,
    expect_restored,
    start,
)
from isolator.lab.scenarios.common import (
    Context,
    ScenarioReport,
    VerdictRecorder,
    hold,
    pods_on,
    wait_for,
)

WALL_CLOCK_STEP_S = 3 * 3600.0


def region(ctx: Context, index: int) -> str:
    return ctx.lab.spec.regions[index]


async def node_crash(ctx: Context, node: str = "r1-n02") -> ScenarioReport:
    """Crash a node (agent and components killed, Node marked down) and expect its Pods, and
    only they, to leave the ready endpoints, stay out against the endpoint controller, and
    come back after the recovery."""
    report = ScenarioReport("node-crash", f"node {node} failed; only its Pods cut, then restored")
    report.field_cases = ["F12", "F15b"]
    fault = start(report)
    await ctx.lab.crash_node(node)
    ctx.say(f"{node}: agent and components killed, Node marked down")
    await expect_cut(ctx, report, {node}, fault)
    report.verdict = (await ctx.lab.node_verdicts()).get(node, "unknown")
    report.check("verdict failed", report.verdict == "failed")

    await hold(ENDPOINT_REBUILD_WINDOW_S)
    still_out = not pods_on(ctx.lab, {node}) & await ctx.lab.ready_pods()
    isolations = await ctx.lab.get("/v1/isolations")
    managers = await endpoint_slice_managers(ctx)
    report.observed["endpoint_slice_managers"] = sorted(managers)
    report.check("still cut after the endpoint controller resynced", still_out)
    report.check("cut verified by reading back", [i["verified"] for i in isolations] == [True])
    report.check("EndpointSlices left to their controller", managers == {ENDPOINT_CONTROLLER})

    await ctx.lab.recover_node(node)
    ctx.say(f"{node}: Node marked up, components and agent restarted")
    await expect_restored(ctx, report)
    return report.judge()


async def agent_crash(ctx: Context, node: str = "r2-n01") -> ScenarioReport:
    """Only the agent dies; the node's components serve on. Nothing is cut."""
    report = ScenarioReport("agent-crash", f"agent of {node} killed on a serving node; no cut")
    audit_before = len(await ctx.audit())
    fault = start(report)
    ctx.lab.crash_agent(node)
    ctx.say(f"{node}: agent killed, components still serving")
    async with VerdictRecorder(ctx.lab) as recorder:
        await hold(ctx.timings.observe_s)
    report.verdict = (await ctx.lab.node_verdicts()).get(node, "unknown")
    await expect_no_cut(ctx, report, fault, audit_before)
    report.check("verdict unreachable", report.verdict == "unreachable")
    report.check("never failed", not recorder.node_saw(node, "failed"))

    ctx.lab.start_agent(node)
    await expect_restored(ctx, report)
    return report.judge()


async def failed_component(
    ctx: Context, node: str = "r3-n04", component: str = "kube-proxy"
) -> ScenarioReport:
    """Fail one component of a live node and expect its Pods cut, then restored."""
    return await _component_fault(ctx, "failed-component", node, component)


async def broken_ingress(ctx: Context, node: str = "r1-n03") -> ScenarioReport:
    """Break the path through a node's ingress while every process passes its health check.

    The node is failed with component ingress, and the isolator cuts only the node's
    ingress-controller Pods, because its other Pods still serve traffic that does not enter
    through its ingress. The lab runs no ingress controller, so the Service's Pods must all
    keep serving while the cut is recorded.
    """
    report = ScenarioReport(
        "broken-ingress-path", f"ingress path of {node} fails; only its ingress controller cut"
    )
    audit_before = len(await ctx.audit())
    fault = start(report)
    await ctx.lab.set_component_faults(node, ["ingress-path"])
    ctx.say(f"{node}: ingress path failing")

    async def cut_recorded() -> bool:
        records = (await ctx.audit())[audit_before:]
        return any(r["node"] == node and r["action"] == "cut" for r in records)

    recorded = await wait_for(cut_recorded, ctx.timings.cut_deadline_s)
    detail = await ctx.lab.get(f"/v1/nodes/{node}")
    report.verdict = detail["verdict"]
    report.observed["component"] = detail["component"]
    cut = ctx.watch.cut_since(fault)
    report.pods_cut = sorted(cut)
    report.wrong_cut_pods = sorted(cut)
    report.wrong_cuts = len(cut)
    records = (await ctx.audit())[audit_before:]
    report.observed["actions"] = [describe(r) for r in records]
    report.check("cut recorded within deadline", recorded)
    report.check("verdict failed", report.verdict == "failed")
    report.check("component ingress named", detail["component"] == "ingress")
    report.check("the Service's Pods keep serving", not cut)

    await ctx.lab.set_component_faults(node, [])
    await expect_restored(ctx, report)
    return report.judge()


async def _component_fault(
    ctx: Context, scenario: str, node: str, component: str
) -> ScenarioReport:
    report = ScenarioReport(scenario, f"{component} fails on live node {node}; its Pods cut")
    fault = start(report)
    await ctx.lab.set_component_faults(node, [component])
    ctx.say(f"{node}: {component} failing")
    await expect_cut(ctx, report, {node}, fault)
    detail = await ctx.lab.get(f"/v1/nodes/{node}")
    report.verdict = detail["verdict"]
    report.observed["component"] = detail["component"]
    report.check("verdict failed", report.verdict == "failed")
    report.check(f"component {component} named", detail["component"] == component)

    await ctx.lab.set_component_faults(node, [])
    await expect_restored(ctx, report)
    return report.judge()


async def region_partition(ctx: Context, index: int = 2) -> ScenarioReport:
    """Take a region's link down and expect it partitioned, nothing cut, normal after the
    heal."""
    name = region(ctx, index)
    report = ScenarioReport("region-partition", f"region {name} partitioned; no Pod cut")
    report.field_cases = ["F07a", "F10c"]
    audit_before = len(await ctx.audit())
    fault = start(report)
    ctx.lab.partition(name)
    ctx.say(f"{name}: link to the cloud taken down")
    async with VerdictRecorder(ctx.lab) as recorder:
        await hold(ctx.timings.observe_s)
    regions = await ctx.lab.region_verdicts()
    report.verdict = regions.get(name, "unknown")
    # Moving the region's Ingress routes to its fallback is what a partition calls for.
    await expect_no_cut(ctx, report, fault, audit_before, region_actions_allowed=True)
    report.check("verdict partitioned", report.verdict == "partitioned")
    others = {r: v for r, v in regions.items() if r != name}
    report.observed["other_regions"] = others
    # A lost federation scrape elsewhere may flip another region to monitoring_degraded for
    # a moment; the partition must never spread to it.
    report.check(
        "other regions never partitioned",
        not any(recorder.region_saw(r, "partitioned") for r in others),
    )
    other_nodes = [n for n, r in ctx.lab.nodes.items() if r != name]
    report.check(
        "no node failed elsewhere", not any(recorder.node_saw(n, "failed") for n in other_nodes)
    )
    report.check("never fail-safe", not recorder.global_verdicts["fail_safe"])

    ctx.lab.heal(name)
    await expect_restored(ctx, report)
    return report.judge()


async def partial_partition(
    ctx: Context, nodes: tuple[str, ...] = ("r2-n01", "r2-n02")
) -> ScenarioReport:
    """Some nodes of a region lose the cloud while the rest, and the site, stay connected.

    The edge Prometheus still scrapes the cut-off nodes, so they are unreachable, not failed,
    and the region is neither partitioned nor cut.
    """
    name = ctx.lab.nodes[nodes[0]]
    report = ScenarioReport(
        "partial-partition", f"{', '.join(nodes)} cut off from the cloud; unreachable, no cut"
    )
    report.field_cases = ["F15a"]
    audit_before = len(await ctx.audit())
    fault = start(report)
    for node in nodes:
        ctx.lab.cut_off_node(node)
    ctx.say(f"{', '.join(nodes)}: cut off from the cloud, the rest of {name} connected")
    async with VerdictRecorder(ctx.lab) as recorder:
        await hold(ctx.timings.observe_s)
    verdicts = await ctx.lab.node_verdicts()
    report.verdict = ", ".join(f"{node} {verdicts.get(node)}" for node in nodes)
    await expect_no_cut(ctx, report, fault, audit_before)
    for node in nodes:
        report.check(f"{node} unreachable", verdicts.get(node) == "unreachable")
    report.check("region never partitioned", not recorder.region_saw(name, "partitioned"))
    report.check("no node failed", not any(recorder.node_saw(n, "failed") for n in ctx.lab.nodes))

    for node in nodes:
        ctx.lab.reconnect_node(node)
    await expect_restored(ctx, report)
    return report.judge()


async def weak_link(ctx: Context, index: int = 0, loss_pct: float = 10.0) -> ScenarioReport:
    """Drop packets in both directions of a region's link. Heartbeats and scrapes get lost
    now and then, but no node may be cut, restored or reported failed, and the region is
    never partitioned."""
    name = region(ctx, index)
    report = ScenarioReport(
        "weak-link", f"{loss_pct:g} % loss each way on {name}'s link; no cut, no flapping"
    )
    audit_before = len(await ctx.audit())
    fault = start(report)
    ctx.lab.set_weak_link(name, loss_pct)
    ctx.say(f"{name}: {loss_pct:g} % of the packets dropped in each direction")
    async with VerdictRecorder(ctx.lab) as recorder:
        await hold(ctx.timings.observe_s * 2)
    report.observed["dropped_packets"] = ctx.lab.networks[name].dropped_packets()
    report.observed["node_verdicts"] = {
        node: dict(counts)
        for node, counts in recorder.nodes.items()
        if ctx.lab.nodes.get(node) == name
    }
    report.observed["region_verdicts"] = dict(recorder.regions.get(name, {}))
    report.observed["not_healthy_reasons"] = dict(recorder.reasons.most_common(5))
    report.observed["region_verdict_changes"] = recorder.region_changes[name]
    report.verdict = (await ctx.lab.region_verdicts()).get(name, "unknown")
    await expect_no_cut(ctx, report, fault, audit_before)
    report.check("packets were dropped", sum(report.observed["dropped_packets"].values()) > 0)
    region_nodes = [n for n, r in ctx.lab.nodes.items() if r == name]
    report.check("no node failed", not any(recorder.node_saw(n, "failed") for n in region_nodes))
    report.check("region never partitioned", not recorder.region_saw(name, "partitioned"))
    report.check("never fail-safe", not recorder.global_verdicts["fail_safe"])

    ctx.lab.clear_weak_link(name)
    await expect_restored(ctx, report)
    return report.judge()


async def half_open_link(ctx: Context, node: str = "r2-n03") -> ScenarioReport:
    """Drop the isolator's probes to one agent while its heartbeats arrive and the site
    scrapes it. Expect no cut, and the node healthy within two heartbeat intervals of the
    heal."""
    report = ScenarioReport(
        "half-open-link", f"probes to {node} dropped, heartbeats arrive; no cut, healthy after"
    )
    report.field_cases = ["F14"]
    audit_before = len(await ctx.audit())
    fault = start(report)
    ctx.lab.drop_probes(node)
    ctx.say(f"{node}: the isolator's probes dropped, heartbeats still arrive")
    async with VerdictRecorder(ctx.lab) as recorder:
        await hold(ctx.timings.observe_s)
    during = await ctx.lab.get(f"/v1/nodes/{node}")
    report.observed["probe_failures"] = during["evidence"]["probe_failures"]
    report.observed["verdicts"] = dict(recorder.nodes.get(node, {}))
    report.observed["not_healthy_reasons"] = dict(recorder.reasons.most_common(3))
    await expect_no_cut(ctx, report, fault, audit_before)
    report.check("probes failed", during["evidence"]["probe_failures"] > 0)
    report.check("never failed", not recorder.node_saw(node, "failed"))

    ctx.lab.restore_probes(node)
    loop = asyncio.get_running_loop()
    healed = loop.time()

    async def healthy_both_ways() -> bool:
        view = await ctx.lab.get(f"/v1/nodes/{node}")
        return bool(view["verdict"] == "healthy" and view["evidence"]["probe_failures"] == 0)

    back = await wait_for(healthy_both_ways, ctx.timings.recovery_s)
    took = round(loop.time() - healed, 2)
    report.observed["healthy_after_heal_s"] = took
    after = await ctx.get(f"/v1/nodes/{node}")
    report.verdict = after["verdict"]
    report.observed["reason_after_heal"] = after["reason"]
    limit = 2 * ctx.timings.heartbeat_interval_s
    ctx.say(f"{node}: probes answered and healthy {took} s after the heal")
    report.check(f"healthy within {limit:g} s of the heal", back and took <= limit)
    await expect_restored(ctx, report)
    return report.judge()


async def broken_federation(ctx: Context, index: int = 2) -> ScenarioReport:
    """Drop the central's scrapes of a region's edge Prometheus, so each one times out, while
    every agent heartbeats. Expect monitoring degraded, an alarm, and no action."""
    name = region(ctx, index)
    report = ScenarioReport(
        "broken-federation", f"{name}'s federation scrapes time out; monitoring degraded, no cut"
    )
    report.field_cases = ["F06", "F07b"]
    audit_before = len(await ctx.audit())
    fault = start(report)
    ctx.lab.break_federation(name)
    ctx.say(f"{name}: the central's scrapes of its edge Prometheus dropped")
    async with VerdictRecorder(ctx.lab) as recorder:
        await hold(ctx.timings.observe_s)
    report.verdict = (await ctx.lab.region_verdicts()).get(name, "unknown")
    verdicts = await ctx.lab.node_verdicts()
    states = await alert_states(
        ctx,
        "IsolatorMonitoringPathDegraded",
        {"pending", "firing"},
        ctx.timings.cut_deadline_s,
        region=name,
    )
    report.observed["alert_states"] = sorted(states)
    await expect_no_cut(ctx, report, fault, audit_before)
    report.check("verdict monitoring_degraded", report.verdict == "monitoring_degraded")
    region_nodes = [n for n, r in ctx.lab.nodes.items() if r == name]
    report.check("its nodes healthy", all(verdicts.get(n) == "healthy" for n in region_nodes))
    report.check("never partitioned", not recorder.region_saw(name, "partitioned"))
    report.check("alarm raised", bool(states & {"pending", "firing"}))

    ctx.lab.repair_federation(name)
    await expect_restored(ctx, report)
    return report.judge()


async def central_fault(ctx: Context, all_links_down: bool) -> ScenarioReport:
    """Silence every region at once and expect what a central fault calls for: global
    fail-safe, zero Kubernetes writes, an alarm, and an API, the manual one included, that
    keeps responding.

    With ``all_links_down`` every link goes down, the federation too. Otherwise only the
    agents' traffic to and from the isolator is dropped, and every edge Prometheus still
    reports its nodes up.
    """
    variant = "all-links-down" if all_links_down else "agents-silent"
    report = ScenarioReport(
        f"central-fault-{variant}", "every region silent at once; fail-safe, zero writes"
    )
    report.field_cases = ["F09b", "F10d"] if all_links_down else ["F09a"]
    audit_before = len(await ctx.audit())
    fault = start(report)
    for name in ctx.lab.spec.regions:
        if all_links_down:
            ctx.lab.partition(name)
        else:
            ctx.lab.silence_agents(name)
    ctx.say(f"every region silent ({variant})")
    async with VerdictRecorder(ctx.lab):
        await hold(ctx.timings.observe_s)
    status = await ctx.lab.get("/v1/status")
    nodes = await ctx.lab.get("/v1/nodes")
    report.verdict = status["verdict"]
    states = await alert_states(
        ctx, "IsolatorFailSafeEngaged", {"firing"}, ctx.timings.cut_deadline_s
    )
    report.observed["alert_states"] = sorted(states)
    report.observed["reason"] = status["reason"]
    await expect_no_cut(ctx, report, fault, audit_before)
    report.check("verdict fail_safe", report.verdict == "fail_safe")
    report.check("alarm firing", "firing" in states)
    report.check("API answers", len(nodes) == len(ctx.lab.nodes))
    # A person can still act during the fail-safe; a dry run keeps the zero-write check true.
    manual = json.dumps({"reason": "manual isolation during a fail-safe", "dry_run": True})
    node = sorted(ctx.lab.nodes)[0]
    code, answer = await ctx.lab.post(
        f"/v1/isolations/nodes/{node}", manual.encode(), "application/json"
    )
    report.observed["manual_api"] = {"status": code, "result": answer.get("result")}
    report.check("manual API answers", code == 200 and answer.get("result") == "dry_run")

    for name in ctx.lab.spec.regions:
        if all_links_down:
            ctx.lab.heal(name)
        else:
            ctx.lab.unsilence_agents(name)
    await expect_restored(ctx, report)
    return report.judge()


async def flapping_node(ctx: Context, node: str = "r2-n04", cycles: int = 5) -> ScenarioReport:
    """Fail and heal a component again and again. Expect at most one cut, and no restore
    while the node keeps flapping, because the restore hold outlasts each healthy spell."""
    report = ScenarioReport("flapping-node", f"{node} flaps {cycles} times; one cut at most")
    timings = ctx.timings
    failing_s = (timings.component_checks_s + timings.correlation_window_s) * 1.5
    healthy_s = timings.restore_hold_s * 0.5
    audit_before = len(await ctx.audit())
    fault = start(report)
    for _ in range(cycles):
        await ctx.lab.set_component_faults(node, ["kube-proxy"])
        await hold(failing_s)
        await ctx.lab.set_component_faults(node, [])
        await hold(healthy_s)
    ctx.say(f"{node}: {cycles} cycles of {failing_s:g} s failing, {healthy_s:g} s healthy")
    during = await ctx.actions_since(audit_before, node)
    report.observed["actions_while_flapping"] = dict(during)
    cut = ctx.watch.cut_since(fault)
    report.pods_cut = sorted(cut)
    report.wrong_cut_pods = sorted(set(cut) - pods_on(ctx.lab, {node}))
    report.wrong_cuts = len(report.wrong_cut_pods)
    report.verdict = (await ctx.lab.node_verdicts()).get(node, "unknown")
    report.check("at most one cut", during["cut"] <= 1)
    report.check("no restore while flapping", during["restore"] == 0)
    report.check("nothing else cut", report.wrong_cuts == 0)

    await expect_restored(ctx, report)
    total = await ctx.actions_since(audit_before, node)
    report.observed["actions"] = dict(total)
    report.check("at most one restore", total["restore"] <= 1)
    return report.judge()


async def wall_clock_step(ctx: Context, offset_s: float = WALL_CLOCK_STEP_S) -> ScenarioReport:
    """Step the isolator host's wall clock ahead by hours and back. Expect no cut and no
    restore, because freshness is measured on the monotonic clock.

    The isolator is restarted under libfaketime for this scenario only, because intercepting
    every clock read slows it down, and restarted on the real clock afterwards.
    """
    report = ScenarioReport(
        "wall-clock-step", f"isolator wall clock stepped {offset_s / 3600:+g} h and back; no action"
    )
    await ctx.lab.restart_isolator(fake_clock=True)
    ctx.say("isolator restarted under libfaketime")
    audit_before = len(await ctx.audit())
    fault = start(report)
    skews: list[float] = []
    reasons: Counter[str] = Counter()
    failed_or_fail_safe = False
    for offset in (offset_s, 0.0):
        ctx.lab.step_isolator_wall_clock(offset)
        ctx.say(f"isolator wall clock at real time {offset / 3600:+g} h")
        async with VerdictRecorder(ctx.lab) as recorder:
            await hold(ctx.timings.observe_s / 2)
        nodes = await ctx.get("/v1/nodes")
        skews.append(max(abs(n["evidence"]["clock_skew_s"] or 0.0) for n in nodes))
        reasons.update(recorder.reasons)
        failed_or_fail_safe |= bool(recorder.global_verdicts["fail_safe"]) or any(
            recorder.node_saw(n, "failed") for n in ctx.lab.nodes
        )
    report.observed["max_clock_skew_s"] = [round(s, 1) for s in skews]
    # Under libfaketime the isolator is slow enough that a loaded lab may see a heartbeat
    # late now and then; a step read as elapsed time would silence every node at once.
    report.observed["not_healthy_reasons"] = dict(reasons.most_common(5))
    report.verdict = (await ctx.get("/v1/status"))["verdict"]
    await expect_no_cut(ctx, report, fault, audit_before)
    report.check("step seen as clock skew", abs(skews[0] - offset_s) < 60)
    report.check("no node failed, never fail-safe", not failed_or_fail_safe)
    report.check("verdict normal", report.verdict == "normal")

    await ctx.lab.restart_isolator(fake_clock=False)
    await expect_restored(ctx, report)
    return report.judge()
