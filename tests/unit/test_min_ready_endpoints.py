"""The minimum of ready endpoints per Service: automatic cuts held whole, the annotation that
overrides the setting, the scopes that count, and the manual API's 409 and force flag."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from isolator.api.app import create_app
from isolator.engine.capacity import ServiceCapacity
from isolator.engine.decide import Kind
from isolator.engine.ports import CutScope
from isolator.metrics import Metrics
from isolator.sources.kubernetes.census import EndpointCensus, ServiceEndpoints
from tests.unit.harness import Harness

CHECKOUT = "shop/checkout"
REPLICAS = ["r1-n01", "r1-n02", "r1-n03"]


def fail(harness: Harness, *nodes: str) -> None:
    harness.silent.update(nodes)
    harness.site_down.update(nodes)


def holds(harness: Harness) -> dict[str, str]:
    return {d.node: d.reason for d in harness.controller.state.holds if d.kind is Kind.HOLD}


async def test_last_replica_held_with_service_named() -> None:
    harness = await Harness.start()
    harness.cluster.services[CHECKOUT] = REPLICAS
    fail(harness, *REPLICAS)

    await harness.run_for(10.0)

    assert harness.cluster.cuts == ["r1-n01", "r1-n02"]
    reason = holds(harness)["r1-n03"]
    assert reason.startswith("min ready endpoints: ")
    assert "Service shop/checkout would keep 0 ready endpoints, minimum 1" in reason
    assert "ISOLATOR_MIN_READY_ENDPOINTS" in reason


async def test_hold_audited_once_and_in_region_view() -> None:
    harness = await Harness.start()
    harness.cluster.services[CHECKOUT] = REPLICAS
    fail(harness, *REPLICAS)

    await harness.run_for(10.0)

    app = create_app(harness.controller, Metrics(), harness.clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://isolator") as client:
        regions = await client.get("/v1/regions")
        audit = await client.get("/v1/audit")
    assert regions.status_code == 200, regions.text
    assert audit.status_code == 200, audit.text
    [r1] = [region for region in regions.json() if region["region"] == "r1"]
    assert any(CHECKOUT in reason for reason in r1["holds"])
    [record] = [r for r in audit.json() if r["action"] == "hold"]
    assert record["target"] == "r1-n03"
    assert record["result"] == "held"
    assert CHECKOUT in record["reason"]


async def test_annotation_zero_lets_service_go_dark() -> None:
    harness = await Harness.start()
    harness.cluster.services[CHECKOUT] = REPLICAS
    harness.cluster.min_ready[CHECKOUT] = 0
    fail(harness, *REPLICAS)

    await harness.run_for(10.0)

    assert harness.cluster.cuts == REPLICAS
    assert holds(harness) == {}


async def test_annotation_raises_minimum_above_setting() -> None:
    harness = await Harness.start()
    harness.cluster.services[CHECKOUT] = REPLICAS
    harness.cluster.min_ready[CHECKOUT] = 3
    fail(harness, "r1-n01")

    await harness.run_for(10.0)

    assert harness.cluster.cuts == []
    reason = holds(harness)["r1-n01"]
    assert "would keep 2 ready endpoints, minimum 3" in reason
    assert "isolator.io/min-ready-endpoints" in reason


async def test_setting_zero_turns_check_off() -> None:
    harness = await Harness.start(min_ready_endpoints=0)
    harness.cluster.services[CHECKOUT] = REPLICAS
    fail(harness, *REPLICAS)

    await harness.run_for(10.0)

    assert harness.cluster.cuts == REPLICAS


async def test_node_without_ready_endpoints_cut() -> None:
    harness = await Harness.start()
    harness.cluster.services[CHECKOUT] = ["r1-n01"]
    fail(harness, "r1-n02")

    await harness.run_for(10.0)

    assert harness.cluster.cuts == ["r1-n02"]


async def test_unknown_endpoints_hold_every_cut() -> None:
    harness = await Harness.start()
    harness.cluster.census_unavailable = True
    fail(harness, "r1-n01")

    await harness.run_for(10.0)

    assert harness.cluster.cuts == []
    reason = holds(harness)["r1-n01"]
    assert reason.startswith("ready endpoints unknown: ")
    assert "refused the connection" in reason

    harness.cluster.census_unavailable = False
    await harness.run_for(1.0)

    assert harness.cluster.cuts == ["r1-n01"]


async def test_census_read_only_while_cut_may_follow() -> None:
    harness = await Harness.start()
    harness.cluster.services[CHECKOUT] = REPLICAS

    await harness.run_for(30.0)
    quiet = harness.cluster.census_reads
    fail(harness, *REPLICAS)
    await harness.run_for(30.0)  # r1-n03 stays held all along

    assert quiet == 0
    # One read per new candidate set and one per inventory period, never one per pass.
    assert 1 <= harness.cluster.census_reads <= 5
    assert harness.cluster.cuts == ["r1-n01", "r1-n02"]


async def test_ingress_cut_counts_only_ingress_pods() -> None:
    harness = await Harness.start()
    # The node runs the only replica of checkout, which its ingress cut leaves serving.
    harness.cluster.services[CHECKOUT] = ["r1-n01"]
    harness.cluster.services["ingress/controller"] = ["r1-n01", "r1-n02"]
    harness.cluster.ingress_services.add("ingress/controller")
    harness.failing["r1-n01"] = {"ingress"}

    await harness.run_for(6.0)

    assert harness.cluster.cuts == ["r1-n01"]
    [(_, _, options)] = [c for c in harness.cluster.calls if c[0] == "cut_node"]
    assert options["scope"] == "ingress"


async def test_ingress_cut_held_for_last_ingress_pod() -> None:
    harness = await Harness.start()
    harness.cluster.services["ingress/controller"] = ["r1-n01"]
    harness.cluster.ingress_services.add("ingress/controller")
    harness.failing["r1-n01"] = {"ingress"}

    await harness.run_for(6.0)

    assert harness.cluster.cuts == []
    assert "Service ingress/controller would keep 0" in holds(harness)["r1-n01"]


async def test_widening_held_for_last_replica() -> None:
    harness = await Harness.start()
    harness.cluster.services[CHECKOUT] = ["r1-n01"]
    harness.cluster.services["ingress/controller"] = ["r1-n01", "r1-n02"]
    harness.cluster.ingress_services.add("ingress/controller")
    harness.failing["r1-n01"] = {"ingress"}
    await harness.run_for(6.0)
    assert harness.controller.isolations["r1-n01"].scope == "ingress"

    harness.failing["r1-n01"] = {"ingress", "kube-proxy"}
    await harness.run_for(6.0)

    assert harness.controller.isolations["r1-n01"].scope == "ingress"
    assert harness.cluster.cuts == ["r1-n01"]


def test_capacity_counts_cuts_already_made() -> None:
    service = ServiceEndpoints(CHECKOUT, None, {"shop/a": "n1", "shop/b": "n2", "shop/c": "n3"})
    capacity = ServiceCapacity(EndpointCensus((service,), frozenset()), default_min=1)

    capacity.remove(capacity.removed_by("n1", CutScope.NODE))

    assert capacity.hold_reason(capacity.removed_by("n2", CutScope.COMPONENT)) is None
    capacity.remove(capacity.removed_by("n2", CutScope.COMPONENT))
    reason = capacity.hold_reason(capacity.removed_by("n3", CutScope.NODE))
    assert reason is not None
    assert "would keep 0 ready endpoints" in reason


def test_capacity_counts_endpoints_without_pod() -> None:
    service = ServiceEndpoints(CHECKOUT, 1, {"shop/a": "n1"}, other_ready=1)
    capacity = ServiceCapacity(EndpointCensus((service,), frozenset()), default_min=1)

    assert capacity.hold_reason({"shop/a"}) is None


def test_capacity_names_first_services_only() -> None:
    services = tuple(ServiceEndpoints(f"shop/s{i}", None, {f"shop/p{i}": "n1"}) for i in range(5))
    capacity = ServiceCapacity(EndpointCensus(services, frozenset()), default_min=1)

    reason = capacity.hold_reason(capacity.removed_by("n1", CutScope.NODE))

    assert reason is not None
    assert "shop/s0" in reason
    assert "shop/s2" in reason
    assert "shop/s3" not in reason
    assert reason.endswith("; and 2 more Services")


# The manual API


@pytest.fixture
async def harness() -> Harness:
    harness = await Harness.start(regions=3, nodes=4)
    harness.cluster.services[CHECKOUT] = ["r1-n01"]
    return harness


@pytest.fixture
async def client(harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(harness.controller, Metrics(), harness.clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://isolator") as client:
        yield client


async def test_manual_cut_of_last_replica_conflicts(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    response = await client.post("/v1/isolations/nodes/r1-n01", json={"reason": "disk"})

    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert "Service shop/checkout would keep 0 ready endpoints" in error
    assert "force" in error
    assert harness.cluster.cuts == []
    assert harness.controller.isolations == {}


async def test_manual_dry_run_conflicts_too(client: httpx.AsyncClient, harness: Harness) -> None:
    body = {"reason": "disk", "dry_run": True}

    response = await client.post("/v1/isolations/nodes/r1-n01", json=body)

    assert response.status_code == 409, response.text
    assert harness.cluster.calls == []


async def test_manual_force_cuts_and_audits_override(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    body = {"reason": "disk", "force": True}

    response = await client.post("/v1/isolations/nodes/r1-n01", json=body)

    assert response.status_code == 200, response.text
    assert harness.cluster.cuts == ["r1-n01"]
    override, cut = [r for r in harness.controller.audit if r["target"] == "r1-n01"]
    assert override["action"] == "override"
    assert override["result"] == "forced"
    assert override["who"] == "anonymous"
    assert "Service shop/checkout would keep 0" in override["detail"]
    assert cut["action"] == "cut"


async def test_manual_pod_cut_conflicts(client: httpx.AsyncClient, harness: Harness) -> None:
    path = "/v1/isolations/pods/shop/checkout-r1-n01"

    refused = await client.post(path, json={"reason": "debug"})
    forced = await client.post(path, json={"reason": "debug", "force": True})

    assert refused.status_code == 409, refused.text
    assert forced.status_code == 200, forced.text


async def test_manual_cut_with_spare_replica_needs_no_force(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    harness.cluster.services[CHECKOUT] = ["r1-n01", "r1-n02"]

    response = await client.post("/v1/isolations/nodes/r1-n01", json={"reason": "disk"})

    assert response.status_code == 200, response.text


async def test_manual_region_split_needs_no_force(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/isolations/regions/r1", json={"reason": "link"})

    assert response.status_code == 200, response.text


async def test_force_rejected_on_region_split(client: httpx.AsyncClient) -> None:
    body = {"reason": "link", "force": True}

    response = await client.post("/v1/isolations/regions/r1", json=body)

    assert response.status_code == 422, response.text
    assert "force" in response.text
