"""Field cases that run on the real components: federation, region events, safety limits and
Alertmanager deliveries, as people who run these systems reported them."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from isolator.lab.scenarios.checks import (
    alert_states,
    expect_cut,
    expect_no_cut,
    expect_restored,
    start,
)
from isolator.lab.scenarios.common import Context, ScenarioReport, VerdictRecorder, hold, wait_for
from isolator.lab.scenarios.faults import region

ZERO_TIME = "0001-01-01T00:00:00Z"


# Age below which a federated sample counts as fresh: an edge scrape plus a federation
# interval, with slack for a loaded machine.
FRESH_FEDERATED_S = 3.0


async def lingering_federated_series(ctx: Context, node: str = "r1-n03") -> ScenarioReport:
    """Cut a region's central-to-edge path, then crash one of its nodes. The central keeps
    returning the node's last `up` of 1 for minutes, but the isolator judges by sample age,
    so the node must be suspect, never unreachable on that stale data, and never cut."""
    name = ctx.lab.nodes[node]
    report = ScenarioReport(
        "lingering-federated-series", f"{node} dies behind a stale federation; suspect, no cut"
    )
    report.field_cases = ["F05"]
    audit_before = len(await ctx.audit())
    up_query = f'up{{job="isolator-agent", node="{node}"}}'
    fresh_query = f"time() - timestamp({up_query}) < {FRESH_FEDERATED_S} and {up_query} == 1"

    async def federated_fresh() -> bool:
        return bool(await ctx.query_central(fresh_query))

    # Only a series that reached the central before the break can linger there.
    report.check(
        "central had a fresh up of 1 before the break",
        await wait_for(federated_fresh, ctx.timings.cut_deadline_s),
    )
    fault = start(report)
    ctx.lab.break_federation(name)
    await ctx.lab.crash_node(node)
    ctx.say(f"{name}: federation dropped; {node}: crashed behind it")
    # The last federated sample is current evidence that the node served until it ages past
    # the site's maximum age, so the check starts once it is stale.
    timings = ctx.timings
    await hold(timings.site_max_age_s + timings.heartbeat_timeout_s + timings.heartbeat_interval_s)
    async with VerdictRecorder(ctx.lab) as recorder:
        await hold(timings.observe_s)
    lingering = await ctx.query_central(up_query)
    values = [float(item["value"][1]) for item in lingering]
    view = await ctx.lab.get(f"/v1/nodes/{node}")
    report.verdict = view["verdict"]
    report.observed["central_up_values"] = values
    report.observed["site_up"] = view["evidence"]["site_up"]
    await expect_no_cut(ctx, report, fault, audit_before)
    report.check("central still returns the stale up of 1", values == [1.0])
    report.check("verdict suspect", report.verdict == "suspect")
    report.check("never unreachable or healthy on stale data", _never_served(recorder, node))

    await ctx.lab.recover_node(node)
    ctx.lab.repair_federation(name)
    await expect_restored(ctx, report)
    return report.judge()


def _never_served(recorder: VerdictRecorder, node: str) -> bool:
    """Return whether ``node`` was judged suspect all along, never unreachable or healthy."""
    counts = recorder.nodes.get(node)
    return counts is not None and set(counts) == {"suspect"}


async def region_cut_node_by_node(ctx: Context, index: int = 2) -> ScenarioReport:
    """Silence a region's nodes one heartbeat interval apart, then make its edge Prometheus
    unreachable. Expect one region-level verdict, and not a single node cut."""
    name = region(ctx, index)
    nodes = sorted(n for n, r in ctx.lab.nodes.items() if r == name)
    report = ScenarioReport(
        "region-cut-node-by-node", f"{name}'s nodes go silent one by one; partitioned, no cut"
    )
    report.field_cases = ["F13"]
    audit_before = len(await ctx.audit())
    fault = start(report)
    async with VerdictRecorder(ctx.lab) as recorder:
        for node in nodes:
            ctx.lab.cut_off_node(node)
            await hold(ctx.timings.heartbeat_interval_s)
        ctx.lab.partition(name)
        ctx.say(f"{name}: nodes cut off one per heartbeat interval, then the link taken down")
        await hold(ctx.timings.observe_s)
    report.verdict = (await ctx.lab.region_verdicts()).get(name, "unknown")
    await expect_no_cut(ctx, report, fault, audit_before, region_actions_allowed=True)
    report.check("verdict partitioned", report.verdict == "partitioned")
    report.check("no node failed", not any(recorder.node_saw(n, "failed") for n in nodes))

    ctx.lab.heal(name)
    for node in nodes:
        ctx.lab.reconnect_node(node)
    await expect_restored(ctx, report)
    return report.judge()


async def dead_kubelet_live_agent(ctx: Context, node: str = "r1-n04") -> ScenarioReport:
    """Kill a node's kubelet and applications while its agent heartbeats on time. The live
    heartbeat must not veto the failure, so the node's Pods are cut."""
    report = ScenarioReport(
        "dead-kubelet-live-agent", f"{node}'s components dead, agent alive; its Pods cut"
    )
    report.field_cases = ["F15c"]
    fault = start(report)
    ctx.lab.kill_node_components(node)
    ctx.say(f"{node}: kubelet, proxy and ingress killed; the agent heartbeats on")
    await expect_cut(ctx, report, {node}, fault)
    detail = await ctx.lab.get(f"/v1/nodes/{node}")
    report.verdict = detail["verdict"]
    report.observed["reason"] = detail["reason"]
    report.check("verdict failed", report.verdict == "failed")
    report.check("heartbeats still on time", (detail["evidence"]["heartbeat_age_s"] or 99) < 2)

    ctx.lab.start_node_sim(node)
    await expect_restored(ctx, report)
    return report.judge()


async def burst_over_budget(ctx: Context, index: int = 0) -> ScenarioReport:
    """Crash more nodes of a region at once than its cut budget allows. Expect nothing cut,
    the cuts held with an alarm, and a new failure within the cooldown held until its end."""
    name = region(ctx, index)
    members = sorted(n for n, r in ctx.lab.nodes.items() if r == name)
    burst, late = members[:2], members[-1]
    report = ScenarioReport(
        "burst-over-budget", f"{len(burst)} of {len(members)} {name} nodes fail at once; held"
    )
    report.field_cases = ["F10b", "F16b", "F16c"]
    audit_before = len(await ctx.audit())
    fault = start(report)
    for node in burst:
        await ctx.lab.crash_node(node)
    ctx.say(f"{', '.join(burst)}: crashed together")
    await hold(ctx.timings.cut_deadline_s)
    holds = await ctx.lab.get("/v1/regions")
    reasons = [r for item in holds if item["region"] == name for r in item["holds"]]
    states = await alert_states(
        ctx, "IsolatorSafetyBudgetExhausted", {"pending", "firing"}, ctx.timings.cut_deadline_s
    )
    report.observed["holds"] = sorted(set(reasons))
    report.observed["alert_states"] = sorted(states)
    await expect_no_cut(ctx, report, fault, audit_before)
    report.check("held for the region budget", any("region budget" in r for r in reasons))
    report.check("alarm raised", bool(states & {"pending", "firing"}))

    for node in burst:
        await ctx.lab.recover_node(node)
    # The cooldown counts from the last pass that saw both nodes failed, so the late failure
    # is injected as soon as they are no longer failed.
    back = await wait_for(lambda: _none_failed(ctx, burst), ctx.timings.recovery_s)
    report.check("burst nodes back", back)
    late_fault = time.time()
    await ctx.lab.crash_node(late)
    ctx.say(f"{late}: crashed within {name}'s cooldown")
    held_reason = await _wait_for_hold(ctx, name, "region cooldown")
    report.observed["late_hold"] = held_reason
    report.check("late failure held for the cooldown", held_reason is not None)
    cut = await _wait_cut(ctx, late, late_fault, ctx.timings.region_cooldown_s * 2)
    report.check("late failure cut after the cooldown", cut)
    report.verdict = (await ctx.lab.region_verdicts()).get(name, "unknown")
    await ctx.lab.recover_node(late)
    await expect_restored(ctx, report)
    return report.judge()


async def _none_failed(ctx: Context, nodes: list[str]) -> bool:
    verdicts = await ctx.lab.node_verdicts()
    return all(verdicts.get(node) not in (None, "failed") for node in nodes)


async def _wait_for_hold(ctx: Context, name: str, reason: str) -> str | None:
    found: list[str] = []

    async def held() -> bool:
        for item in await ctx.lab.get("/v1/regions"):
            found.extend(r for r in item["holds"] if item["region"] == name and reason in r)
        return bool(found)

    await wait_for(held, ctx.timings.cut_deadline_s)
    return found[0] if found else None


async def _wait_cut(ctx: Context, node: str, since: float, timeout_s: float) -> bool:
    pods = {pod for pod, on in ctx.lab.pods.items() if on == node}

    async def cut() -> bool:
        return pods <= ctx.watch.cut_since(since).keys()

    return await wait_for(cut, timeout_s)


def _alert(node: str, status: str, fingerprint: str, **labels: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "EdgeProbeFailing", "node": node, **labels},
        "annotations": {},
        "startsAt": "2026-12-04T10:00:00Z",
        "endsAt": ZERO_TIME if status == "firing" else "2026-12-04T10:05:00Z",
        "fingerprint": fingerprint,
    }


def _notification(alerts: list[dict[str, Any]], **extra: Any) -> bytes:
    body = {
        "version": "4",
        "groupKey": '{}:{alertname="EdgeProbeFailing"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "isolator",
        "groupLabels": {"alertname": "EdgeProbeFailing"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.invalid",
        "alerts": alerts,
        **extra,
    }
    return json.dumps(body).encode()


async def webhook_deliveries(ctx: Context) -> ScenarioReport:
    """Send Alertmanager's delivery quirks to the running service: a firing alert with a
    year-0001 endsAt next to a resolved one under a "firing" group status, the same body
    delivered 20 times, and Unicode labels with an invalid node name."""
    report = ScenarioReport(
        "webhook-deliveries", "mixed, repeated and Unicode notifications; each alert once"
    )
    report.field_cases = ["F01", "F03", "F04"]
    audit_before = len(await ctx.audit())
    fault = start(report)
    ingest = ctx.lab.spec.regions[1]
    tag = f"{int(time.time() * 1000)}"
    mixed = _notification(
        [_alert("r1-n01", "firing", f"a{tag}"), _alert("r1-n02", "resolved", f"b{tag}")]
    )
    status, answer = await ctx.lab.post("/v1/alerts/webhook", mixed, "application/json")
    nodes = {n["node"]: n for n in await ctx.lab.get("/v1/nodes")}
    report.check("mixed notification accepted", status == 200)
    report.check("firing alert counted firing", "EdgeProbeFailing" in _firing(nodes, "r1-n01"))
    report.check(
        "resolved alert counted resolved", "EdgeProbeFailing" not in _firing(nodes, "r1-n02")
    )

    repeated = _notification([_alert("r1-n03", "firing", f"c{tag}")])
    outcomes, slowest = await _deliver(ctx, repeated, times=20)
    report.observed["repeated_outcomes"] = outcomes
    report.observed["slowest_answer_s"] = round(slowest, 3)
    report.check("recorded once", outcomes.get("recorded") == 1)
    report.check("19 duplicates", outcomes.get("duplicate") == 19)
    report.check("every delivery answered within 1 s", slowest < 1.0)

    unicode_body = (
        '{"version": "4", "status": "firing", "receiver": "isolator", "groupKey": "g",'
        ' "truncatedAlerts": 0, "alerts": ['
        '{"status": "firing", "labels": {"alertname": "EdgeLinkSlow", "node": "r2-n02",'
        f' "region": {json.dumps(ingest)}, "site": "Z\\u00fcrich"}},'
        ' "annotations": {"description": "rtt \\u003e 500ms \\u0026 loss \\u003c 5%"},'
        ' "startsAt": "2026-12-04T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",'
        f' "fingerprint": "u{tag}"}},'
        '{"status": "firing", "labels": {"alertname": "EdgeLinkSlow", "node": "Edge_01"},'
        f' "startsAt": "2026-12-04T10:00:00Z", "fingerprint": "v{tag}"}}]}}'
    )
    status, answer = await ctx.lab.post(
        "/v1/alerts/webhook", unicode_body.encode(), "application/json"
    )
    nodes = {n["node"]: n for n in await ctx.lab.get("/v1/nodes")}
    report.observed["unicode_answer"] = answer
    report.check("Unicode notification accepted", status == 200)
    report.check("invalid node reported unmapped", answer.get("unmapped_nodes") == ["Edge_01"])
    report.check("Unicode alert mapped", "EdgeLinkSlow" in _firing(nodes, "r2-n02"))

    await _resolve(ctx, tag)
    report.verdict = (await ctx.lab.get("/v1/status"))["verdict"]
    await expect_no_cut(ctx, report, fault, audit_before)
    report.restored = True
    return report.judge()


def _firing(nodes: dict[str, Any], node: str) -> list[str]:
    return list(nodes[node]["evidence"]["firing_alerts"])


async def _deliver(ctx: Context, body: bytes, times: int) -> tuple[dict[str, int], float]:
    """Post ``body`` ``times`` times, two at once as from an HA pair. Return the outcome counts
    and the slowest response time in seconds."""
    outcomes: dict[str, int] = {}
    slowest = 0.0
    for _ in range(times // 2):
        started = time.monotonic()
        answers = await asyncio.gather(
            ctx.lab.post("/v1/alerts/webhook", body, "application/json"),
            ctx.lab.post("/v1/alerts/webhook", body, "application/json"),
        )
        slowest = max(slowest, time.monotonic() - started)
        for status, answer in answers:
            if status != 200:
                outcomes[f"status {status}"] = outcomes.get(f"status {status}", 0) + 1
                continue
            for outcome, count in answer["alerts"].items():
                outcomes[outcome] = outcomes.get(outcome, 0) + count
    return outcomes, slowest


async def _resolve(ctx: Context, tag: str) -> None:
    """Resolve the alerts a scenario sent, so they leave no evidence behind."""
    link = _alert("r2-n02", "resolved", f"u{tag}")
    link["labels"]["alertname"] = "EdgeLinkSlow"
    resolved = [
        _alert("r1-n01", "resolved", f"a{tag}"),
        _alert("r1-n03", "resolved", f"c{tag}"),
        link,
    ]
    body = _notification(resolved, status="resolved")
    await ctx.lab.post("/v1/alerts/webhook", body, "application/json")


async def truncated_notification(ctx: Context) -> ScenarioReport:
    """Post 40 alerts of one group to the real Alertmanager, 12 about one region and 28 about
    another, then a notification that carries 5 of them with a misleading commonLabels region.
    The isolator must re-read the full set from Alertmanager and record all 40."""
    report = ScenarioReport(
        "truncated-notification", "5 of 40 alerts delivered; full set re-read from Alertmanager"
    )
    report.field_cases = ["F02"]
    first, second = ctx.lab.spec.regions[0], ctx.lab.spec.regions[1]
    tag = f"{int(time.time() * 1000)}"
    suffix = f"x{tag}"
    members = {
        first: sorted(n for n, r in ctx.lab.nodes.items() if r == first),
        second: sorted(n for n, r in ctx.lab.nodes.items() if r == second),
    }
    held = []
    for i in range(40):
        name = first if i < 12 else second
        node = members[name][i % len(members[name])]
        held.append({"alertname": f"EdgeProbe{i:02d}{suffix}", "node": node, "region": name})
    audit_before = len(await ctx.audit())
    fault = start(report)
    await _post_to_alertmanager(ctx, held, hold_s=ctx.timings.observe_s * 4)
    delivered = [
        {**_alert(str(a["node"]), "firing", f"t{tag}-{i}"), "labels": a}
        for i, a in enumerate(held[:5])
    ]
    body = _notification(delivered, truncatedAlerts=35, commonLabels={"region": first})
    status, answer = await ctx.lab.post("/v1/alerts/webhook", body, "application/json")
    report.observed["answer"] = answer
    report.check("notification accepted", status == 200)
    report.check("re-read scheduled", answer.get("reread") == "scheduled")

    async def all_recorded() -> bool:
        return await _firing_count(ctx, suffix) == {first: 12, second: 28}

    report.check("all 40 recorded", await wait_for(all_recorded, ctx.timings.cut_deadline_s))
    report.observed["recorded"] = await _firing_count(ctx, suffix)
    rereads = _logged(ctx, "alerts re-read")
    report.observed["rereads"] = rereads
    report.check("re-read from Alertmanager", any(r.get("recorded", 0) >= 40 for r in rereads))
    report.verdict = (await ctx.lab.get("/v1/status"))["verdict"]
    await expect_no_cut(ctx, report, fault, audit_before)
    report.restored = True
    return report.judge()


async def _post_to_alertmanager(ctx: Context, alerts: list[dict[str, str]], hold_s: float) -> None:
    """Post firing alerts to the lab's Alertmanager API; they resolve by themselves after
    ``hold_s`` seconds."""
    now = datetime.now(UTC)
    body = [
        {
            "labels": labels,
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(seconds=hold_s)).isoformat(),
        }
        for labels in alerts
    ]
    url = f"{ctx.lab.monitoring.alertmanager_url}/api/v2/alerts"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session,
        session.post(url, json=body) as response,
    ):
        response.raise_for_status()


async def _firing_count(ctx: Context, suffix: str) -> dict[str, int]:
    """Count, per region, the nodes' firing alerts whose name ends with ``suffix``."""
    counts: dict[str, int] = {}
    for node in await ctx.lab.get("/v1/nodes"):
        names = [a for a in node["evidence"]["firing_alerts"] if a.endswith(suffix)]
        counts[node["region"]] = counts.get(node["region"], 0) + len(names)
    return {k: v for k, v in counts.items() if v}


def _logged(ctx: Context, message: str) -> list[dict[str, Any]]:
    """Return the isolator's JSON log records with ``message``."""
    records = []
    for line in ctx.lab.isolator_log.read_text(errors="replace").splitlines():
        if message not in line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("message") == message:
            records.append(record)
    return records
