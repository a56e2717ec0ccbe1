"""Scenarios of the action paths on the real components: endpoints of a Service without a
selector, split horizon for a partitioned region, a manual isolation that expires, and an
isolator killed in the middle of a cut.

Each scenario creates the objects it needs (a selector-less Service, a cloud-side Ingress,
extra Pods) and removes them again before it returns, so the scenarios after it see the lab
as it was.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from isolator.lab import cluster
from isolator.lab.process import ProcessFailedError
from isolator.lab.scenarios.checks import (
    ENDPOINT_CONTROLLER,
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
    iso_time,
    pods_on,
    wait_for,
)
from isolator.lab.scenarios.faults import region
from isolator.model import CUT_ANNOTATION, SERVING_CONDITION
from isolator.sources.kubernetes.horizon import SPLIT_ANNOTATION
from isolator.sources.kubernetes.selectorless import ENDPOINTS_ANNOTATION, MANAGED_BY_LABEL

# Cloud-side objects of the split-horizon scenario. The scenario lab names FALLBACK_SERVICE
# as every region's fallback (ISOLATOR_REGION_FALLBACK_SERVICES), which changes nothing while
# no Ingress is labelled for a region.
CLOUD_NAMESPACE = "cloud"
PORTAL_SERVICE = "portal"
FALLBACK_SERVICE = "fallback"
INGRESS_REGION_LABEL = "isolator.io/region"  # the default of ISOLATOR_INGRESS_REGION_LABEL

# The selector-less Service's hand-written endpoints and the controller-style label they carry.
EXTERNAL_SERVICE = "external"
EXTERNAL_MANAGER = "operator.example.com"
SLICE_CONTROLLER = "endpointslice-controller.k8s.io"
UNRELATED_IP = "10.99.0.7"  # an endpoint address that is no Pod
EXTERNAL_PORT = {"name": "main", "port": 9000, "protocol": "TCP"}

# Pods on the node of the kill-and-recover scenario: a full node (the kubelet's default
# --max-pods). The isolator writes 16 Pods at once, so a SIGKILL right after the first cut
# record lands before the last status write of the cut.
CRASHED_PODS = 110
KILL_POLL_S = 0.01


async def _read_raw(call: Any, *args: str) -> dict[str, Any]:
    """Read an object as plain JSON, so that a comparison covers every field the API stores."""
    raw = await call(*args, _preload_content=False)
    data: dict[str, Any] = json.loads(await raw.read())
    return data


async def _ignore_missing(delete: Any, *args: Any, **kwargs: Any) -> None:
    """Delete an object the scenario created, or do nothing when it is already gone."""
    try:
        await delete(*args, **kwargs)
    except ApiException as err:
        if err.status != 404:
            raise


# --- selectorless-service


async def selectorless_service(
    ctx: Context, node: str = "r3-n03", peer: str = "r1-n04"
) -> ScenarioReport:
    """Crash a node whose Pod is an endpoint of a Service without a selector, written by hand
    as an EndpointSlice and an Endpoints object. The isolator must edit those two objects,
    mark only that Pod's endpoint not ready, leave the controller-managed slices to their
    controller, and put back exactly what was there after the recovery."""
    report = ScenarioReport(
        "selectorless-service",
        f"{node} crashes; its endpoint in hand-written slices cut, restored exactly",
    )
    lab = ctx.lab
    namespace = lab.spec.namespace
    ips = await _pod_ips(ctx, namespace)
    cut_ips = {ips[pod] for pod in pods_on(lab, {node})}
    kept_ips = {ips[pod] for pod in pods_on(lab, {peer})} | {UNRELATED_IP}
    owned = pods_on(lab, {node, peer})
    await _create_external(ctx, {pod: ips[pod] for pod in owned})
    try:
        slice_before = await _read_external_slice(ctx)
        endpoints_before = await _read_external_endpoints(ctx)
        await _crash_and_check_external(ctx, report, node, cut_ips, kept_ips)

        await lab.recover_node(node)
        ctx.say(f"{node}: Node marked up, components and agent restarted")
        await expect_restored(ctx, report)
        await _check_external_restored(ctx, report, slice_before, endpoints_before)
    finally:
        await _delete_external(ctx)
    return report.judge()


async def _crash_and_check_external(
    ctx: Context, report: ScenarioReport, node: str, cut_ips: set[str], kept_ips: set[str]
) -> None:
    fault = start(report)
    await ctx.lab.crash_node(node)
    ctx.say(f"{node}: agent and components killed, Node marked down")
    await expect_cut(ctx, report, {node}, fault)
    report.verdict = (await ctx.lab.node_verdicts()).get(node, "unknown")

    async def external_cut() -> bool:
        # The slice and the Endpoints are two writes, so both are waited for.
        endpoints = await _read_external_endpoints(ctx)
        slice_cut = _not_ready(await _read_external_slice(ctx)) == cut_ips
        return slice_cut and _endpoints_addresses(endpoints)[0] == cut_ips

    await wait_for(external_cut, ctx.timings.cut_deadline_s)
    edited = _not_ready(await _read_external_slice(ctx)) == cut_ips
    endpoints = await _read_external_endpoints(ctx)
    not_ready_addresses, ready_addresses = _endpoints_addresses(endpoints)
    managers = await endpoint_slice_managers(ctx)
    report.observed["not_ready_addresses"] = sorted(not_ready_addresses)
    report.observed["endpoint_slice_managers"] = sorted(managers)
    report.check("verdict failed", report.verdict == "failed")
    report.check("its endpoint in the hand-written slice not ready", edited)
    report.check("its address not ready in the Endpoints", not_ready_addresses == cut_ips)
    report.check("other addresses still ready", kept_ips <= ready_addresses)
    report.check(
        "controller-managed slices left to their controller", await _managed_untouched(ctx)
    )
    report.check(
        "the Service's slices written by their controller", managers == {ENDPOINT_CONTROLLER}
    )


async def _check_external_restored(
    ctx: Context,
    report: ScenarioReport,
    slice_before: dict[str, Any],
    endpoints_before: dict[str, Any],
) -> None:
    async def put_back() -> bool:
        current = await _read_external_slice(ctx)
        return bool(current["endpoints"] == slice_before["endpoints"])

    await wait_for(put_back, ctx.timings.recovery_s)
    slice_after = await _read_external_slice(ctx)
    endpoints_after = await _read_external_endpoints(ctx)
    report.check(
        "slice endpoints exactly as before", slice_after["endpoints"] == slice_before["endpoints"]
    )
    report.check(
        "Endpoints subsets exactly as before",
        endpoints_after["subsets"] == endpoints_before["subsets"],
    )
    report.check(
        "no cut record left",
        ENDPOINTS_ANNOTATION not in _annotations(slice_after)
        and ENDPOINTS_ANNOTATION not in _annotations(endpoints_after),
    )


async def _pod_ips(ctx: Context, namespace: str) -> dict[str, str]:
    pods = await k8s.CoreV1Api(ctx.lab.api).list_namespaced_pod(namespace)
    ips = {pod.metadata.name: pod.status.pod_ip for pod in pods.items if pod.status.pod_ip}
    missing = sorted(set(ctx.lab.pods) - set(ips))
    if missing:
        raise RuntimeError(f"Pods without an IP, so they cannot be endpoints: {missing}")
    return ips


async def _create_external(ctx: Context, ips: dict[str, str]) -> None:
    """Create the selector-less Service with one EndpointSlice and one Endpoints object that
    name ``ips`` (Pod -> IP) and UNRELATED_IP, each Pod by a targetRef."""
    namespace = ctx.lab.spec.namespace
    core = k8s.CoreV1Api(ctx.lab.api)
    discovery = k8s.DiscoveryV1Api(ctx.lab.api)
    service = {"metadata": {"name": EXTERNAL_SERVICE}, "spec": {"ports": [EXTERNAL_PORT]}}
    # The client sends a dict body as it is; its annotations name only the model classes.
    await core.create_namespaced_service(namespace, service)  # type: ignore[arg-type]
    endpoints, endpoint_slice = _endpoints_body(ips), _slice_body(namespace, ips)
    await core.create_namespaced_endpoints(namespace, endpoints)  # type: ignore[arg-type]
    await discovery.create_namespaced_endpoint_slice(namespace, endpoint_slice)  # type: ignore[arg-type]


async def _delete_external(ctx: Context) -> None:
    namespace = ctx.lab.spec.namespace
    core = k8s.CoreV1Api(ctx.lab.api)
    discovery = k8s.DiscoveryV1Api(ctx.lab.api)
    await _ignore_missing(discovery.delete_namespaced_endpoint_slice, EXTERNAL_SERVICE, namespace)
    await _ignore_missing(core.delete_namespaced_endpoints, EXTERNAL_SERVICE, namespace)
    await _ignore_missing(core.delete_namespaced_service, EXTERNAL_SERVICE, namespace)


def _slice_body(namespace: str, ips: dict[str, str]) -> dict[str, Any]:
    endpoints: list[dict[str, Any]] = [
        {
            "addresses": [ip],
            "conditions": {"ready": True, "serving": True},
            "targetRef": {"kind": "Pod", "namespace": namespace, "name": pod},
        }
        for pod, ip in sorted(ips.items())
    ]
    endpoints.append({"addresses": [UNRELATED_IP], "conditions": {"ready": True}})
    labels = {cluster.SERVICE_NAME_LABEL: EXTERNAL_SERVICE, MANAGED_BY_LABEL: EXTERNAL_MANAGER}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": EXTERNAL_SERVICE, "labels": labels},
        "addressType": "IPv4",
        "ports": [EXTERNAL_PORT],
        "endpoints": endpoints,
    }


def _endpoints_body(ips: dict[str, str]) -> dict[str, Any]:
    addresses = [{"ip": ip} for _, ip in sorted(ips.items())]
    addresses.append({"ip": UNRELATED_IP})
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": EXTERNAL_SERVICE},
        "subsets": [{"addresses": addresses, "ports": [EXTERNAL_PORT]}],
    }


async def _read_external_slice(ctx: Context) -> dict[str, Any]:
    discovery = k8s.DiscoveryV1Api(ctx.lab.api)
    namespace = ctx.lab.spec.namespace
    return await _read_raw(discovery.read_namespaced_endpoint_slice, EXTERNAL_SERVICE, namespace)


async def _read_external_endpoints(ctx: Context) -> dict[str, Any]:
    core = k8s.CoreV1Api(ctx.lab.api)
    namespace = ctx.lab.spec.namespace
    return await _read_raw(core.read_namespaced_endpoints, EXTERNAL_SERVICE, namespace)


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def _not_ready(endpoint_slice: dict[str, Any]) -> set[str]:
    """Return the addresses of the slice's endpoints whose ``ready`` condition is False."""
    return {
        endpoint["addresses"][0]
        for endpoint in endpoint_slice.get("endpoints") or []
        if (endpoint.get("conditions") or {}).get("ready") is False
    }


def _endpoints_addresses(endpoints: dict[str, Any]) -> tuple[set[str], set[str]]:
    """Return the not-ready and the ready addresses of an Endpoints object."""
    not_ready: set[str] = set()
    ready: set[str] = set()
    for subset in endpoints.get("subsets") or []:
        not_ready |= {a["ip"] for a in subset.get("notReadyAddresses") or []}
        ready |= {a["ip"] for a in subset.get("addresses") or []}
    return not_ready, ready


async def _managed_untouched(ctx: Context) -> bool:
    """Tell whether the namespace has EndpointSlices that the EndpointSlice controller manages,
    and none of them carries a cut record."""
    slices = await k8s.DiscoveryV1Api(ctx.lab.api).list_namespaced_endpoint_slice(
        ctx.lab.spec.namespace, label_selector=f"{MANAGED_BY_LABEL}={SLICE_CONTROLLER}"
    )
    return bool(slices.items) and not any(
        ENDPOINTS_ANNOTATION in (item.metadata.annotations or {}) for item in slices.items
    )


# --- ingress-split-horizon


async def ingress_split_horizon(ctx: Context, index: int = 1) -> ScenarioReport:
    """Partition a region that a cloud-side Ingress serves. Its routes must move to the
    configured fallback Service while the site's endpoints keep serving, and move back to
    exactly the spec they had after the heal."""
    name = region(ctx, index)
    ingress = f"{PORTAL_SERVICE}-{name}"
    report = ScenarioReport(
        "ingress-split-horizon",
        f"{name} partitioned; its cloud Ingress on the fallback, no Pod cut, spec back exactly",
    )
    await _create_portal(ctx, name, ingress)
    try:
        before = await _read_ingress(ctx, ingress)
        audit_before = len(await ctx.audit())
        fault = start(report)
        ctx.lab.partition(name)
        ctx.say(f"{name}: link to the cloud taken down")
        async with VerdictRecorder(ctx.lab) as recorder:
            await _check_split(ctx, report, name, ingress, fault)
            # Keep the partition for the whole observation time, so that a wrong cut of the
            # site's Pods would have time to show.
            await hold(ctx.timings.observe_s - (time.time() - fault))
        await expect_no_cut(ctx, report, fault, audit_before, region_actions_allowed=True)
        report.check("never fail-safe", not recorder.global_verdicts["fail_safe"])

        ctx.lab.heal(name)
        ctx.say(f"{name}: link back up")
        await _check_rejoined(ctx, report, ingress, before)
        await expect_restored(ctx, report)
    finally:
        await _delete_portal(ctx, ingress)
    return report.judge()


async def _check_split(
    ctx: Context, report: ScenarioReport, name: str, ingress: str, fault: float
) -> None:
    async def on_fallback() -> bool:
        return await _backends(ctx, ingress) == {FALLBACK_SERVICE}

    # The region is partitioned only once its in-site view has gone stale as well.
    moved = await wait_for(on_fallback, ctx.timings.observe_s + ctx.timings.cut_deadline_s)
    if moved:
        moved_at = time.time()
        report.cut_at = iso_time(moved_at)
        report.cut_latency_s = round(moved_at - fault, 2)
        ctx.say(f"{ingress}: routes on {FALLBACK_SERVICE} after {report.cut_latency_s} s")

    async def split_verified() -> bool:
        item = (await _isolations(ctx)).get(name)
        return item is not None and item["verified"] is True

    verified = await wait_for(split_verified, ctx.timings.cut_deadline_s)
    item = (await _isolations(ctx)).get(name, {})
    report.verdict = (await ctx.lab.region_verdicts()).get(name, "unknown")
    report.observed["isolation"] = item
    report.check("verdict partitioned", report.verdict == "partitioned")
    report.check("routes moved to the fallback", moved)
    report.check("split verified by reading back", verified)
    report.check("split automatic", item.get("kind") == "region" and item.get("manual") is False)
    report.check("only its Ingress moved", item.get("objects") == [f"{CLOUD_NAMESPACE}/{ingress}"])


async def _check_rejoined(
    ctx: Context, report: ScenarioReport, ingress: str, before: dict[str, Any]
) -> None:
    async def back() -> bool:
        return await _backends(ctx, ingress) == {PORTAL_SERVICE}

    moved_back = await wait_for(back, ctx.timings.recovery_s)
    after = await _read_ingress(ctx, ingress)
    report.check("routes back after the heal", moved_back)
    report.check("Ingress spec exactly as before", after["spec"] == before["spec"])
    report.check("no split record left", SPLIT_ANNOTATION not in _annotations(after))


async def _create_portal(ctx: Context, name: str, ingress: str) -> None:
    api = ctx.lab.api
    await cluster.create_namespace(api, CLOUD_NAMESPACE)
    for service in (PORTAL_SERVICE, FALLBACK_SERVICE):
        await cluster.create_service(api, CLOUD_NAMESPACE, service, {"app": service}, 80)
    labels = {INGRESS_REGION_LABEL: name}
    await cluster.create_ingress(api, CLOUD_NAMESPACE, ingress, PORTAL_SERVICE, 80, labels)


async def _delete_portal(ctx: Context, ingress: str) -> None:
    """Delete the Ingress and its Services. The namespace stays, because the lab runs no
    namespace controller to finish deleting one."""
    networking = k8s.NetworkingV1Api(ctx.lab.api)
    core = k8s.CoreV1Api(ctx.lab.api)
    await _ignore_missing(networking.delete_namespaced_ingress, ingress, CLOUD_NAMESPACE)
    for service in (PORTAL_SERVICE, FALLBACK_SERVICE):
        await _ignore_missing(core.delete_namespaced_service, service, CLOUD_NAMESPACE)


async def _read_ingress(ctx: Context, ingress: str) -> dict[str, Any]:
    networking = k8s.NetworkingV1Api(ctx.lab.api)
    return await _read_raw(networking.read_namespaced_ingress, ingress, CLOUD_NAMESPACE)


async def _backends(ctx: Context, ingress: str) -> set[str]:
    return await cluster.ingress_backends(ctx.lab.api, CLOUD_NAMESPACE, ingress)


async def _isolations(ctx: Context) -> dict[str, dict[str, Any]]:
    return {item["target"]: item for item in await ctx.get("/v1/isolations")}


# --- manual-isolate-ttl


async def manual_isolate_ttl(ctx: Context, node: str = "r3-n02") -> ScenarioReport:
    """Isolate a healthy node through the API with a reason and a short TTL. Its Pods must
    leave the ready endpoints, the TTL must end in a verified restore, and the audit must
    name the operator."""
    # Long enough for the cut, its read-back and the checks below to finish before it ends.
    ttl_s = round(2 * ctx.timings.cut_deadline_s, 1)
    reason = "firmware update"
    report = ScenarioReport(
        "manual-isolate-ttl", f"operator isolates healthy {node} for {ttl_s:g} s; restored after"
    )
    audit_before = len(await ctx.audit())
    fault = start(report)
    body = json.dumps({"reason": reason, "ttl_s": ttl_s}).encode()
    status, answer = await ctx.lab.post(
        f"/v1/isolations/nodes/{node}", body, "application/json", ctx.lab.tokens.operator
    )
    ctx.say(f"{node}: isolated by the operator for {ttl_s:g} s: {status} {answer.get('result')}")
    report.observed["answer"] = answer
    report.check(
        "isolation answered 200 verified", status == 200 and answer.get("result") == "verified"
    )

    async with VerdictRecorder(ctx.lab) as recorder:
        await expect_cut(ctx, report, {node}, fault)
        item = (await _isolations(ctx)).get(node, {})
        back_at = await _wait_back(ctx, node, ttl_s + ctx.timings.recovery_s)

    report.verdict = (await ctx.lab.node_verdicts()).get(node, "unknown")
    report.observed["isolation"] = item
    report.check(
        "listed as the operator's", (item.get("who"), item.get("manual")) == ("lab-operator", True)
    )
    report.check("reason kept", item.get("reason") == reason)
    report.check("expiry within the TTL", 0 < (item.get("expires_in_s") or 0) <= ttl_s)
    report.check("never failed", not recorder.node_saw(node, "failed"))
    if back_at is not None:
        report.observed["restored_after_s"] = round(back_at - fault, 2)
    report.check("Pods back after the TTL", back_at is not None and back_at - fault >= ttl_s)

    await _check_manual_audit(ctx, report, node, audit_before)
    await expect_restored(ctx, report)
    return report.judge()


async def _wait_back(ctx: Context, node: str, timeout_s: float) -> float | None:
    """Wait until the node's Pods serve again and its isolation has ended; return when."""
    pods = pods_on(ctx.lab, {node})

    async def back() -> bool:
        return pods <= ctx.watch.ready and node not in await _isolations(ctx)

    return time.time() if await wait_for(back, timeout_s) else None


async def _check_manual_audit(
    ctx: Context, report: ScenarioReport, node: str, audit_before: int
) -> None:
    records = [r for r in (await ctx.audit())[audit_before:] if r["target"] == node]
    actions = [(r["action"], r["who"]) for r in records]
    report.observed["audit"] = [f"{r['action']} by {r['who']} ({r['result']})" for r in records]
    report.check("audit: cut by the operator", actions[:1] == [("cut", "lab-operator")])
    report.check("audit: restore by the isolator", actions[1:] == [("restore", "isolator")])
    report.check("restore verified", bool(records) and records[-1]["result"] == "verified")


# --- kill-and-recover


async def kill_and_recover(ctx: Context, node: str = "r2-n02") -> ScenarioReport:
    """Crash a node with CRASHED_PODS Pods and kill the isolator with SIGKILL as soon as the
    first Pod carries its cut record. The restarted isolator must take the cut over from the
    records in Kubernetes and finish it. After the node recovers, every Pod must be restored
    with the UID and restart counts it had."""
    report = ScenarioReport(
        "kill-and-recover",
        f"isolator killed mid cut of {node} ({CRASHED_PODS} Pods); cut finished, then restored",
    )
    extra = await _add_pods(ctx, node)
    try:
        pods = pods_on(ctx.lab, {node})
        before = await _identities(ctx)
        fault = start(report)
        await _crash_and_kill(ctx, report, node, pods)
        await _check_cut_finished(ctx, report, node, pods, fault)

        await ctx.lab.recover_node(node)
        ctx.say(f"{node}: Node marked up, components and agent restarted")
        await expect_restored(ctx, report)
        report.check("no cut record left", not await _cut_records(ctx, node))
        report.check("no Pod deleted, replaced or restarted", await _identities(ctx) == before)
    finally:
        await _ensure_isolator(ctx)
        await _remove_pods(ctx, extra)
    return report.judge()


async def _crash_and_kill(ctx: Context, report: ScenarioReport, node: str, pods: set[str]) -> None:
    """Crash ``node`` and kill the isolator as soon as one of its Pods carries a cut record.

    The records are watched from before the crash, so that a cut that starts while the crash
    is still being marked on the Node is not missed.
    """
    killer = asyncio.create_task(_kill_at_first_record(ctx, node))
    try:
        await ctx.lab.crash_node(node)
        ctx.say(f"{node}: agent and components killed, Node marked down")
        at_kill = await killer
    finally:
        killer.cancel()
    served_off = await _serving_off(ctx, node)
    ctx.say(
        f"isolator killed with SIGKILL, {len(at_kill)} of {len(pods)} Pods carrying a record, "
        f"{len(served_off)} with the serving condition False"
    )
    await ctx.lab.restart_isolator(wait=False)
    report.observed["records_at_kill"] = len(at_kill)
    report.observed["serving_off_at_kill"] = len(served_off)
    # A cut writes each Pod's record, then its serving condition: it is half done while some
    # Pod lacks either.
    report.check(
        "killed before the cut finished",
        bool(at_kill) and len(served_off & at_kill.keys()) < len(pods),
    )
    report.check("records only on the node's Pods", set(at_kill) <= pods)

    listed = await _first_pass_isolation(ctx, node)
    report.observed["isolation_after_restart"] = listed
    report.check("cut taken over by the first pass", listed is not None)


async def _kill_at_first_record(ctx: Context, node: str) -> dict[str, str]:
    """Poll the node's Pods until one carries a cut record, or until twice the cut deadline
    passed, then kill the isolator. Return the records as they were after the kill."""
    loop = asyncio.get_running_loop()
    # The polling starts before the crash, which is marked on the Node within this time too.
    deadline = loop.time() + 2 * ctx.timings.cut_deadline_s
    # Poll ten times as often as the other waits, so that the kill lands before the last
    # write of the cut.
    while True:
        if await _cut_records(ctx, node) or loop.time() >= deadline:
            break
        await asyncio.sleep(KILL_POLL_S)
    ctx.lab.kill_isolator()
    return await _cut_records(ctx, node)


async def _check_cut_finished(
    ctx: Context, report: ScenarioReport, node: str, pods: set[str], fault: float
) -> None:
    await expect_cut(ctx, report, {node}, fault)

    async def verified() -> bool:
        return bool((await _isolations(ctx)).get(node, {}).get("verified"))

    done = await wait_for(verified, ctx.timings.cut_deadline_s)
    report.verdict = (await ctx.lab.node_verdicts()).get(node, "missing")
    item = (await _isolations(ctx)).get(node, {})
    namespace = ctx.lab.spec.namespace
    # The restarted isolator has never heard from the dead node, so its own verdict is unknown
    # and the cut rests only on the records it took over.
    report.check("verdict unknown after the restart", report.verdict == "unknown")
    report.check("cut verified by reading back", done)
    report.check(
        "every Pod in the isolation",
        set(item.get("objects", [])) == {f"{namespace}/{p}" for p in pods},
    )
    report.check("every Pod carries its record", set(await _cut_records(ctx, node)) == pods)


async def _first_pass_isolation(ctx: Context, node: str) -> dict[str, Any] | None:
    """Poll the restarted isolator until it has run one pass, then return its isolation of
    ``node``. Return None when the pass listed no such isolation or never came."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ctx.timings.recovery_s
    while loop.time() < deadline:
        try:
            if (await ctx.lab.get("/v1/status"))["passes"] >= 1:
                return (await _isolations(ctx)).get(node)
        except (aiohttp.ClientError, TimeoutError):
            pass  # still starting
        await asyncio.sleep(KILL_POLL_S)
    return None


async def _add_pods(ctx: Context, node: str) -> set[str]:
    """Create Pods of the lab's Service on ``node`` until it has CRASHED_PODS, and wait until
    they serve. Return the names of the new Pods."""
    lab = ctx.lab
    namespace, service = lab.spec.namespace, lab.spec.service
    extra = {f"{service}-{node}-{k}" for k in range(lab.spec.pods_per_node, CRASHED_PODS)}
    for pod in sorted(extra):
        await cluster.create_pod(lab.api, namespace, pod, node, {"app": service})
        lab.pods[pod] = node
    await lab.wait_until_serving(timeout_s=60.0)
    ctx.say(f"{node}: {len(extra)} Pods added, {CRASHED_PODS} in all")
    return extra


async def _remove_pods(ctx: Context, extra: set[str]) -> None:
    """Delete the Pods that ``_add_pods`` created and wait until they left the endpoints, so
    that the next scenario neither counts nor waits for them."""
    lab = ctx.lab
    core = k8s.CoreV1Api(lab.api)
    for pod in sorted(extra):
        lab.pods.pop(pod, None)
        await _ignore_missing(
            core.delete_namespaced_pod, pod, lab.spec.namespace, grace_period_seconds=0
        )

    async def gone() -> bool:
        return not extra & ctx.watch.ready

    await wait_for(gone, ctx.timings.recovery_s)
    for pod in extra:
        ctx.watch.left_at.pop(pod, None)


async def _ensure_isolator(ctx: Context) -> None:
    """Start the isolator again when the scenario stopped before it did."""
    try:
        ctx.lab.check_isolator_running()
    except ProcessFailedError:
        await ctx.lab.restart_isolator(wait=False)


async def _cut_records(ctx: Context, node: str) -> dict[str, str]:
    """Return Pod name -> cut record of the node's Pods that carry one."""
    pods = await k8s.CoreV1Api(ctx.lab.api).list_namespaced_pod(
        ctx.lab.spec.namespace, field_selector=f"spec.nodeName={node}"
    )
    return {
        pod.metadata.name: pod.metadata.annotations[CUT_ANNOTATION]
        for pod in pods.items
        if CUT_ANNOTATION in (pod.metadata.annotations or {})
    }


async def _serving_off(ctx: Context, node: str) -> set[str]:
    """Return the node's Pods whose serving condition is False."""
    pods = await k8s.CoreV1Api(ctx.lab.api).list_namespaced_pod(
        ctx.lab.spec.namespace, field_selector=f"spec.nodeName={node}"
    )
    return {
        pod.metadata.name
        for pod in pods.items
        for condition in (pod.status.conditions or [])
        if condition.type == SERVING_CONDITION and condition.status == "False"
    }


async def _identities(ctx: Context) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Return Pod name -> (UID, restart counts) of every Pod in the lab's namespace."""
    pods = await k8s.CoreV1Api(ctx.lab.api).list_namespaced_pod(ctx.lab.spec.namespace)
    return {
        pod.metadata.name: (
            pod.metadata.uid,
            tuple(s.restart_count for s in pod.status.container_statuses or []),
        )
        for pod in pods.items
    }
