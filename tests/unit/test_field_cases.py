"""Faults reported from the field, on the controller with fakes and on the HTTP API.

Each test feeds the input shape of one reported fault and checks the behaviour that fixes its
whole kind. Cases that need the real components run in tests/e2e/test_field_cases.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import requests
from pydantic import ValidationError

from isolator.api.app import create_app
from isolator.clock import ManualClock
from isolator.engine.decide import Kind
from isolator.engine.grey import GreyScorer
from isolator.learning import GreyScore, NodeMeasurements
from isolator.metrics import Metrics
from isolator.model import GlobalVerdict, NodeVerdict, RegionVerdict, SiteSample, SiteView
from isolator.settings import Settings
from isolator.sources.errors import SourceError
from isolator.sources.prometheus import PrometheusSource, PrometheusUnavailableError
from tests.unit.fakes import Outcome
from tests.unit.harness import Harness
from tests.unit.test_api import alert, notification


def region_nodes(harness: Harness, region: str) -> list[str]:
    return sorted(n for n in harness.controller.store.nodes if harness.region_of(n) == region)


def rewrite_site_view(harness: Harness, change: Callable[[SiteView], SiteView]) -> None:
    """Pass every site view the controller reads through ``change`` first."""
    read = harness.site.read_site_view

    async def read_changed() -> SiteView:
        return change(await read())

    harness.site.read_site_view = read_changed  # type: ignore[method-assign]


def without_region(view: SiteView, region: str) -> SiteView:
    """Return ``view`` as the central returns it when every series of ``region`` is absent."""
    prefix = f"{region}-"
    return SiteView(
        agents={n: s for n, s in view.agents.items() if not n.startswith(prefix)},
        federation={r: s for r, s in view.federation.items() if r != region},
        kubelets={n: s for n, s in view.kubelets.items() if not n.startswith(prefix)},
    )


async def record_verdicts(harness: Harness, seconds: float) -> dict[str, set[NodeVerdict]]:
    """Step the harness for ``seconds`` and return every verdict each node had."""
    seen: dict[str, set[NodeVerdict]] = {}
    for _ in range(round(seconds / harness.controller.settings.loop_interval_s)):
        await harness.step()
        for name in harness.controller.store.nodes:
            seen.setdefault(name, set()).add(harness.node_verdict(name))
    return seen


@pytest.fixture
async def api_harness() -> Harness:
    return await Harness.start(regions=2, nodes=3)


@pytest.fixture
async def client(api_harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(api_harness.controller, Metrics(), api_harness.clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://isolator") as client:
        yield client


# Alertmanager webhook


# F01: Alertmanager sends year-0001 endsAt on firing alerts, and a group status that
# disagrees with its members.
async def test_member_status_wins_over_resolved_group_status(
    client: httpx.AsyncClient, api_harness: Harness
) -> None:
    body = notification(
        alert("r1-n01", "firing", "a"), alert("r1-n02", "resolved", "b"), status="resolved"
    )

    response = await client.post("/v1/alerts/webhook", json=body)

    assert response.status_code == 200, response.text
    assert response.json()["alerts"] == {"recorded": 2}
    nodes = api_harness.controller.store.nodes
    assert nodes["r1-n01"].firing_alerts == {"NodeDown"}
    assert nodes["r1-n02"].firing_alerts == set()


# F02: max_alerts truncation leaves commonLabels describing only the alerts that were sent.
async def test_truncated_group_labels_never_scope_anything(
    client: httpx.AsyncClient, api_harness: Harness
) -> None:
    payload = [alert(f"r1-n0{i}", fingerprint=f"fp{i}") for i in (1, 2, 3)]
    body = notification(*payload, truncatedAlerts=35, commonLabels={"region": "r1"})

    response = await client.post("/v1/alerts/webhook", json=body)
    await api_harness.run_for(10.0)

    assert response.status_code == 200, response.text
    assert response.json()["reread"] == "unavailable"
    nodes = api_harness.controller.store.nodes
    assert all(nodes[n].firing_alerts == {"NodeDown"} for n in ("r1-n01", "r1-n02", "r1-n03"))
    assert all(nodes[n].firing_alerts == set() for n in ("r2-n01", "r2-n02", "r2-n03"))
    assert api_harness.cluster.cuts == []
    assert {api_harness.region_verdict(r) for r in ("r1", "r2")} == {RegionVerdict.NORMAL}


# F03a: two Alertmanager HA peers deliver the identical notification within one second.
async def test_identical_body_from_two_peers_recorded_once(
    client: httpx.AsyncClient, api_harness: Harness
) -> None:
    body = notification(alert("r1-n01"), alert("r2-n01", fingerprint="f2"))

    first, second = await asyncio.gather(
        client.post("/v1/alerts/webhook", json=body), client.post("/v1/alerts/webhook", json=body)
    )

    answers = sorted([first.json()["alerts"], second.json()["alerts"]], key=json.dumps)
    assert first.status_code == second.status_code == 200
    assert answers == [{"duplicate": 2}, {"recorded": 2}]


# F03b: retries after the isolator already recorded a notification, 20 deliveries of one
# body in three minutes.
async def test_twenty_retries_record_once_and_act_never(
    client: httpx.AsyncClient, api_harness: Harness
) -> None:
    body = notification(alert("r1-n02"))
    outcomes: list[dict[str, int]] = []

    for _ in range(20):
        response = await client.post("/v1/alerts/webhook", json=body)
        assert response.status_code == 200, response.text
        outcomes.append(response.json()["alerts"])
        api_harness.clock.advance(9.0)

    assert outcomes[0] == {"recorded": 1}
    assert outcomes[1:] == [{"duplicate": 1}] * 19
    assert api_harness.controller.store.nodes["r1-n02"].firing_alerts == {"NodeDown"}
    assert list(api_harness.controller.audit) == []
    assert api_harness.cluster.cuts == []


# F03, same kind: an alert that fires again after it was resolved is a new occurrence with a
# new startsAt, not a duplicate.
async def test_refired_alert_with_new_start_recorded(
    client: httpx.AsyncClient, api_harness: Harness
) -> None:
    fired = alert("r1-n01")
    resolved = alert("r1-n01", "resolved")
    refired = {**alert("r1-n01"), "startsAt": "2026-12-04T11:00:00Z"}

    answers = []
    for item in (fired, resolved, fired, refired):
        response = await client.post("/v1/alerts/webhook", json=notification(item))
        answers.append(response.json()["alerts"])

    assert answers == [{"recorded": 1}, {"recorded": 1}, {"stale": 1}, {"recorded": 1}]
    assert api_harness.controller.store.nodes["r1-n01"].firing_alerts == {"NodeDown"}


# F04: Unicode labels and JSON escapes from Alertmanager templates. An invalid node name
# must never reach Kubernetes.
async def test_invalid_node_name_never_reaches_kubernetes(
    client: httpx.AsyncClient, api_harness: Harness
) -> None:
    raw = (
        '{"version": "4", "status": "firing", "receiver": "isolator", "groupKey": "g",'
        ' "truncatedAlerts": 0, "alerts": ['
        '{"status": "firing", "labels": {"alertname": "NodeDown", "node": "Edge_01",'
        ' "region": "\\u534e\\u4e1c-1", "site": "Z\\u00fcrich"},'
        ' "annotations": {"summary": "rtt \\u003e 500ms \\u0026 loss \\u003c 5%"},'
        ' "startsAt": "2026-12-04T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",'
        ' "fingerprint": "u2"}]}'
    )

    response = await client.post(
        "/v1/alerts/webhook", content=raw.encode(), headers={"content-type": "application/json"}
    )
    await api_harness.run_for(5.0)

    assert response.status_code == 200, response.text
    assert response.json() == {
        "alerts": {"unmapped": 1},
        "unmapped_nodes": ["Edge_01"],
        "reread": None,
    }
    cluster = api_harness.cluster
    touched = [*cluster.cuts, *cluster.restores, *cluster.serving]
    assert "Edge_01" not in touched
    assert cluster.cuts == []


# Federated Prometheus


# F05: federated series outlive their source by up to five minutes.
@pytest.mark.parametrize("age_s", [6.0, 60.0, 290.0], ids=["just-stale", "1m", "almost-5m"])
async def test_stale_federated_up_never_vouches_for_node(age_s: float) -> None:
    harness = await Harness.start()
    members = region_nodes(harness, "r1")

    def stale_r1(view: SiteView) -> SiteView:
        stale = SiteSample(1.0, age_s)
        return SiteView(
            agents={n: stale if n in members else s for n, s in view.agents.items()},
            federation={**view.federation, "r1": SiteSample(1.0, age_s)},
            kubelets={n: stale if n in members else s for n, s in view.kubelets.items()},
        )

    rewrite_site_view(harness, stale_r1)
    harness.silent.add("r1-n04")
    seen = await record_verdicts(harness, 60.0)

    assert NodeVerdict.UNREACHABLE not in seen["r1-n04"]
    assert harness.node_verdict("r1-n04") is NodeVerdict.SUSPECT
    assert harness.region_verdict("r1") is RegionVerdict.MONITORING_DEGRADED
    assert harness.cluster.cuts == []


# F06: a federation scrape that times out drops a whole region.
async def test_central_query_timeout_is_unknown_never_down() -> None:
    harness = await Harness.start()
    harness.site.down = True  # every query of the central Prometheus times out

    seen = await record_verdicts(harness, 30.0)

    assert all(verdicts == {NodeVerdict.HEALTHY} for verdicts in seen.values())
    regions = {harness.region_verdict(r) for r in ("r1", "r2", "r3")}
    assert regions == {RegionVerdict.MONITORING_DEGRADED}
    assert harness.cluster.cuts == []


# F06: the isolator's own query that times out is reported as unavailable evidence.
async def test_prometheus_query_timeout_raises_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = PrometheusSource(
        "http://127.0.0.1:9", 0.05, "isolator-agent", "federate", Metrics(), ManualClock()
    )

    def time_out(query: str, params: dict[str, str] | None = None) -> list[Any]:
        raise requests.exceptions.ReadTimeout(f"read timed out: {query}")

    monkeypatch.setattr(source._client, "custom_query", time_out)
    try:
        with pytest.raises(PrometheusUnavailableError, match="read timed out"):
            await source.read_site_view()
    finally:
        source.close()
    assert issubclass(PrometheusUnavailableError, SourceError)


# F07: absent is not zero.
async def test_absent_region_silent_nodes_one_region_verdict() -> None:
    harness = await Harness.start()
    rewrite_site_view(harness, lambda view: without_region(view, "r1"))
    harness.silent.update(region_nodes(harness, "r1"))

    seen = await record_verdicts(harness, 30.0)

    assert harness.region_verdict("r1") is RegionVerdict.PARTITIONED
    assert all(NodeVerdict.FAILED not in seen[n] for n in region_nodes(harness, "r1"))
    assert [d for d in harness.controller.state.holds if d.region == "r1"] == []
    assert harness.cluster.cuts == []
    assert {harness.region_verdict(r) for r in ("r2", "r3")} == {RegionVerdict.NORMAL}


# F07b: the region's series are absent while every heartbeat arrives.
async def test_absent_region_live_heartbeats_monitoring_degraded() -> None:
    harness = await Harness.start()
    rewrite_site_view(harness, lambda view: without_region(view, "r1"))

    seen = await record_verdicts(harness, 30.0)

    assert harness.region_verdict("r1") is RegionVerdict.MONITORING_DEGRADED
    assert all(seen[n] == {NodeVerdict.HEALTHY} for n in region_nodes(harness, "r1"))
    assert harness.cluster.cuts == []


# F08: NaN and +Inf pass through federation as JSON strings.
async def test_non_finite_federated_values_are_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    source = PrometheusSource(
        "http://127.0.0.1:9", 1.0, "isolator-agent", "federate", Metrics(), ManualClock()
    )
    values = {"r1-n01": "NaN", "r1-n02": "+Inf", "r1-n03": "0.02"}

    def answer(query: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        if query.startswith("time()"):
            if "federate" in query:
                return [{"metric": {"region": "r1"}, "value": [1.0, "0.5"]}]
            return [{"metric": {"node": n}, "value": [1.0, "0.5"]} for n in values]
        if "federate" in query:
            return [{"metric": {"region": "r1"}, "value": [1.0, "1"]}]
        return [{"metric": {"node": n}, "value": [1.0, v]} for n, v in values.items()]

    monkeypatch.setattr(source._client, "custom_query", answer)
    try:
        view = await source.read_site_view()
    finally:
        source.close()

    assert view.agents == {"r1-n03": SiteSample(0.02, 0.5)}
    assert view.kubelets == {"r1-n03": SiteSample(0.02, 0.5)}
    assert view.federation == {"r1": SiteSample(1.0, 0.5)}


# F08: a region whose in-site values are all non-finite has no coverage: silent nodes there
# are never confirmed dead, and never vouched for.
async def test_region_without_finite_values_never_cut() -> None:
    harness = await Harness.start()
    members = region_nodes(harness, "r1")

    def drop_r1_nodes(view: SiteView) -> SiteView:
        # The adapter has already dropped the non-finite values: only the region's
        # federation target remains.
        return dataclasses.replace(
            without_region(view, "r1"), federation={**view.federation, "r1": SiteSample(1, 0.5)}
        )

    rewrite_site_view(harness, drop_r1_nodes)
    harness.silent.update(members[:3])
    harness.site_down.update(members[:3])

    seen = await record_verdicts(harness, 30.0)

    assert all(seen[n] & {NodeVerdict.FAILED, NodeVerdict.UNREACHABLE} == set() for n in members)
    assert all(harness.node_verdict(n) is NodeVerdict.SUSPECT for n in members[:3])
    assert harness.cluster.cuts == []


# Kubernetes and the control loop


# F09: everything looks dead at once.
@pytest.mark.parametrize("edge_view", ["edges-see-up", "edges-dark"])
async def test_everything_silent_at_once_fail_safe(edge_view: str) -> None:
    harness = await Harness.start()
    app = create_app(harness.controller, Metrics(), harness.clock)
    harness.silent.update(harness.controller.store.nodes)
    if edge_view == "edges-dark":
        harness.dark_regions.update({"r1", "r2", "r3"})

    await harness.run_for(10.0)

    assessment = harness.controller.state.assessment
    assert assessment is not None
    assert assessment.verdict is GlobalVerdict.FAIL_SAFE
    assert "suspect central" in assessment.reason
    assert harness.cluster.cuts == []
    assert harness.cluster.restores == []
    assert list(harness.controller.audit) == []
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://isolator"
    ) as client:
        status = await client.get("/v1/status")
    assert status.status_code == 200, status.text
    assert status.json()["verdict"] == "fail_safe"


# F09, same kind: confirmed failures during a fail-safe are held, not cut, until it ends.
async def test_failures_during_fail_safe_held_then_cut() -> None:
    harness = await Harness.start()
    harness.silent.update(harness.controller.store.nodes)
    harness.site_down.add("r2-n05")

    await harness.run_for(10.0)
    holds = {d.node: d.reason for d in harness.controller.state.holds}
    assert harness.cluster.cuts == []
    assert holds["r2-n05"].startswith("global fail-safe")

    harness.silent = {"r2-n05"}
    await harness.run_for(6.0)
    assert harness.cluster.cuts == ["r2-n05"]


# F11: heartbeat timeout close to the period.
def test_heartbeat_timeout_below_twice_period_rejected() -> None:
    with pytest.raises(ValidationError, match="heartbeat_miss_count"):
        Settings(heartbeat_interval_s=10.0, heartbeat_miss_count=1)


# F11: heartbeats every 10.0, 10.3, 9.8, 10.6 and 10.2 s for ten minutes.
@pytest.mark.parametrize("miss_count", [2, 3], ids=["timeout-2x", "timeout-3x"])
async def test_jittered_heartbeats_never_isolated(miss_count: int) -> None:
    harness = await Harness.start(
        regions=1, nodes=10, heartbeat_interval_s=10.0, heartbeat_miss_count=miss_count
    )
    controller, clock = harness.controller, harness.clock
    gaps = [10.0, 10.3, 9.8, 10.6, 10.2]
    next_beat = {name: clock.monotonic() + gaps[0] for name in controller.store.nodes}
    beats = dict.fromkeys(controller.store.nodes, 0)
    seen: set[NodeVerdict] = set()

    for _ in range(1200):  # ten minutes of 0.5 s passes
        clock.advance(controller.settings.loop_interval_s)
        for name, evidence in controller.store.nodes.items():
            if clock.monotonic() >= next_beat[name]:
                beats[name] += 1
                seq = (evidence.heartbeat_seq or 0) + 1
                now, wall = clock.monotonic(), clock.wall()
                controller.store.record_heartbeat(name, "r1", seq, wall, now, wall)
                next_beat[name] += gaps[beats[name] % len(gaps)]
        await controller.probe()
        await controller.tick()
        seen |= {n.verdict for n in controller.state.assessment.nodes.values()}  # type: ignore[union-attr]

    assert seen == {NodeVerdict.HEALTHY}
    assert harness.cluster.cuts == []
    assert min(beats.values()) >= 58


# F12: controller-managed EndpointSlices are rebuilt, so a cut that the read-back does not
# confirm is reported as unverified, never as done.
async def test_unconfirmed_cut_reported_unverified() -> None:
    harness = await Harness.start()

    async def cut_undone(node: str, reason: str, incident: str) -> Outcome:
        harness.cluster.cuts.append(node)
        return Outcome(node, (f"default/{node}-pod",), False, "endpoint still ready after 5 s")

    harness.cluster.cut_node = cut_undone  # type: ignore[method-assign]
    harness.silent.add("r1-n01")
    harness.site_down.add("r1-n01")

    await harness.run_for(8.0)

    isolation = harness.controller.isolations["r1-n01"]
    assert isolation.verified is False
    assert [r["result"] for r in harness.controller.audit] == ["unverified"]


# Edge


# F13: a region cut arrives node by node.
async def test_region_cut_node_by_node_one_region_verdict() -> None:
    harness = await Harness.start()
    members = region_nodes(harness, "r1")
    seen: dict[str, set[NodeVerdict]] = {}

    for node in reversed(members):  # last heartbeats at T0-9 s, T0-8 s, ... T0
        harness.silent.add(node)
        for name, verdicts in (await record_verdicts(harness, 1.0)).items():
            seen.setdefault(name, set()).update(verdicts)
    harness.dark_regions.add("r1")  # the edge Prometheus unreachable from T0
    for name, verdicts in (await record_verdicts(harness, 60.0)).items():
        seen.setdefault(name, set()).update(verdicts)

    assert harness.region_verdict("r1") is RegionVerdict.PARTITIONED
    assert all(NodeVerdict.FAILED not in seen[n] for n in members)
    assert harness.cluster.cuts == []
    assert [d for d in harness.controller.state.holds if d.region == "r1"] == []


# F14: half-open link, probes dropped while heartbeats arrive.
async def test_half_open_link_never_cut_and_heals_fast() -> None:
    harness = await Harness.start()
    half_open = "r2-n03"
    dropped = True

    async def probe(node: str, url: str) -> bool:
        return not (dropped and node == half_open)

    harness.prober.probe = probe  # type: ignore[method-assign]
    seen = await record_verdicts(harness, 60.0)
    assert seen[half_open] == {NodeVerdict.HEALTHY}
    assert harness.controller.store.nodes[half_open].probe_failures > 0

    dropped = False
    interval = harness.controller.settings.heartbeat_interval_s
    await harness.run_for(2 * interval)

    assert harness.controller.store.nodes[half_open].probe_failures == 0
    assert harness.node_verdict(half_open) is NodeVerdict.HEALTHY
    assert harness.cluster.cuts == []


class ProbeFailureModel:
    """A grey-failure model that flags a node while a fifth of its recent probes failed."""

    def score(self, rows: list[NodeMeasurements]) -> list[GreyScore]:
        return [
            GreyScore(row.node, 0.95 if row.probe_failure_ratio > 0.2 else 0.05, {}) for row in rows
        ]


# F14 with grey scoring: a half-open link makes the node a grey-failure suspect, which is
# right while probes fail, but the suspicion must end with the heal like every other verdict.
async def test_half_open_grey_suspicion_ends_with_heal() -> None:
    scorer = GreyScorer(ProbeFailureModel())  # type: ignore[arg-type]
    harness = await Harness.start(grey_scorer=scorer)
    half_open = "r2-n03"
    dropped = True

    async def probe(node: str, url: str) -> bool:
        return not (dropped and node == half_open)

    harness.prober.probe = probe  # type: ignore[method-assign]
    interval = harness.controller.settings.grey_score_interval_s
    for _ in range(6):
        await harness.run_for(interval)
        await harness.controller.score_grey()
    assert harness.node_verdict(half_open) is NodeVerdict.SUSPECT
    assert harness.cluster.cuts == []

    dropped = False
    await harness.run_for(2 * harness.controller.settings.heartbeat_interval_s)

    assert harness.node_verdict(half_open) is NodeVerdict.HEALTHY


# F15c: heartbeats on time while the edge Prometheus scrapes the node's kubelet and
# application targets down.
async def test_kubelet_target_down_with_live_heartbeat_cut() -> None:
    harness = await Harness.start()

    def kubelet_down(view: SiteView) -> SiteView:
        return dataclasses.replace(view, kubelets={**view.kubelets, "r1-n07": SiteSample(0.0, 0.5)})

    rewrite_site_view(harness, kubelet_down)
    await harness.run_for(8.0)

    assert harness.node_verdict("r1-n07") is NodeVerdict.FAILED
    assert harness.cluster.cuts == ["r1-n07"]


# F16a: fail open when cutting would remove the last capacity.
async def test_last_ready_endpoints_of_service_kept() -> None:
    harness = await Harness.start()
    # Service checkout has its three replicas on these nodes, all in r1; the region budget
    # of 10 nodes at a 0.34 share allows all three to be cut.
    checkout = ["r1-n01", "r1-n02", "r1-n03"]
    harness.cluster.services["shop/checkout"] = checkout
    harness.silent.update(checkout)
    harness.site_down.update(checkout)

    await harness.run_for(10.0)

    assert len(harness.cluster.cuts) < len(checkout)
    holds = [d for d in harness.controller.state.holds if d.kind is Kind.HOLD]
    assert any("ready endpoints" in d.reason for d in holds)
