"""The manual API on a controller with fakes: isolate and restore nodes, Pods and regions,
who and why in the list and the audit, TTL expiry, and what the control loop leaves alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from isolator.api.app import create_app
from isolator.metrics import Metrics
from isolator.sources.errors import SourceUnavailableError
from tests.unit.harness import Harness

WALL_START = 1_780_000_000.0


@pytest.fixture
async def harness() -> Harness:
    return await Harness.start(regions=3, nodes=4, restore_hold_s=5.0)


@pytest.fixture
async def client(harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(harness.controller, Metrics(), harness.clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://isolator") as client:
        yield client


def listed(body: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["target"]: item for item in body}


async def isolations(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    response = await client.get("/v1/isolations")
    assert response.status_code == 200, response.text
    return listed(response.json())


async def test_isolate_node_lists_who_why_when(client: httpx.AsyncClient, harness: Harness) -> None:
    wall = harness.clock.wall()

    response = await client.post(
        "/v1/isolations/nodes/r1-n02", json={"reason": "disk replacement", "ttl_s": 600}
    )

    assert response.status_code == 200, response.text
    assert response.json()["result"] == "verified"
    [(method, target, options)] = harness.cluster.calls
    assert (method, target) == ("cut_node", "r1-n02")
    assert options["who"] == "anonymous"
    assert options["expires_at"] == pytest.approx(wall + 600)
    item = (await isolations(client))["r1-n02"]
    assert item["kind"] == "node"
    assert item["manual"] is True
    assert item["who"] == "anonymous"
    assert item["reason"] == "disk replacement"
    assert item["started_at"] == pytest.approx(wall)
    assert item["expires_at"] == pytest.approx(wall + 600)
    assert item["expires_in_s"] == pytest.approx(600)
    assert item["verified"] is True


async def test_manual_isolation_never_restored_automatically(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    await client.post("/v1/isolations/nodes/r1-n02", json={"reason": "hold", "ttl_s": 3600})

    await harness.run_for(30.0)  # healthy all along, far past the restore hold

    assert harness.cluster.restores == []
    assert "r1-n02" in harness.controller.isolations


async def test_ttl_expires_into_verified_restore(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    await client.post("/v1/isolations/nodes/r1-n02", json={"reason": "short", "ttl_s": 10})
    harness.cluster.unverified.add("r1-n02")

    await harness.run_for(11.0)
    await harness.controller.settle()

    assert harness.cluster.restores == ["r1-n02"], "expired once, restore not yet confirmed"
    assert "r1-n02" in harness.controller.isolations

    harness.cluster.unverified.clear()
    await harness.run_for(6.0)
    await harness.controller.settle()

    assert harness.cluster.restores == ["r1-n02", "r1-n02"]
    assert "r1-n02" not in harness.controller.isolations
    last = harness.controller.audit[-1]
    assert (last["action"], last["result"], last["who"]) == ("restore", "verified", "isolator")
    assert "TTL" in last["reason"]


async def test_default_ttl_and_maximum(client: httpx.AsyncClient, harness: Harness) -> None:
    wall = harness.clock.wall()
    default = harness.controller.settings.manual_default_ttl_s

    unset = await client.post("/v1/isolations/nodes/r1-n03", json={"reason": "r"})
    too_long = await client.post("/v1/isolations/nodes/r1-n04", json={"reason": "r", "ttl_s": 1e9})

    assert unset.json()["isolation"]["expires_at"] == pytest.approx(wall + default)
    assert too_long.status_code == 422, too_long.text
    assert "ISOLATOR_MANUAL_MAX_TTL_S" in too_long.json()["error"]
    assert "r1-n04" not in harness.controller.isolations


async def test_manual_restore_of_automatic_cut_holds_cuts(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    harness.silent.add("r2-n01")
    harness.site_down.add("r2-n01")
    await harness.run_for(6.0)
    assert harness.cluster.cuts == ["r2-n01"]

    response = await client.post(
        "/v1/isolations/nodes/r2-n01/restore", json={"reason": "false alarm, checked on site"}
    )
    await harness.run_for(10.0)

    assert response.status_code == 200, response.text
    assert response.json()["isolation"] is None
    assert harness.cluster.restores == ["r2-n01"]
    assert harness.cluster.cuts == ["r2-n01"], "the control loop must not undo a person"
    holds = [d.reason for d in harness.controller.state.holds if d.node == "r2-n01"]
    assert holds
    assert holds[0].startswith("manual restore")
    restore = [r for r in harness.controller.audit if r["action"] == "restore"][-1]
    assert restore["who"] == "anonymous"
    assert restore["reason"] == "false alarm, checked on site"


async def test_manual_takes_over_automatic_cut(client: httpx.AsyncClient, harness: Harness) -> None:
    harness.silent.add("r2-n01")
    harness.site_down.add("r2-n01")
    await harness.run_for(6.0)
    incident = harness.controller.isolations["r2-n01"].incident

    response = await client.post(
        "/v1/isolations/nodes/r2-n01", json={"reason": "keep it out", "ttl_s": 3600}
    )
    harness.silent.clear()
    harness.site_down.clear()
    await harness.run_for(20.0)

    assert response.status_code == 200, response.text
    isolation = harness.controller.isolations["r2-n01"]
    assert isolation.incident == incident
    assert isolation.who == "anonymous"
    assert harness.cluster.restores == []


async def test_manual_works_in_fail_safe(client: httpx.AsyncClient, harness: Harness) -> None:
    for region in ("r1", "r2"):
        harness.dark_regions.add(region)
        harness.silent.update(n for n in harness.controller.store.nodes if n.startswith(region))
    await harness.run_for(5.0)
    assert (await client.get("/v1/status")).json()["verdict"] == "fail_safe"

    response = await client.post("/v1/isolations/nodes/r3-n01", json={"reason": "by hand"})

    assert response.status_code == 200, response.text
    assert harness.cluster.cuts == ["r3-n01"]


async def test_dry_run_plans_without_state(client: httpx.AsyncClient, harness: Harness) -> None:
    response = await client.post(
        "/v1/isolations/nodes/r1-n02", json={"reason": "what if", "dry_run": True}
    )

    assert response.status_code == 200, response.text
    assert response.json()["result"] == "dry_run"
    assert harness.cluster.calls[0][2]["dry_run"] is True
    assert await isolations(client) == {}
    last = harness.controller.audit[-1]
    assert (last["result"], last["who"], last["dry_run"]) == ("dry_run", "anonymous", True)


async def test_dry_run_over_isolation_changes_nothing(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    await client.post("/v1/isolations/nodes/r1-n02", json={"reason": "first", "ttl_s": 60})

    planned = await client.post(
        "/v1/isolations/nodes/r1-n02", json={"reason": "second", "ttl_s": 600, "dry_run": True}
    )
    restore_plan = await client.post(
        "/v1/isolations/nodes/r1-n02/restore", json={"reason": "plan", "dry_run": True}
    )

    assert planned.json()["result"] == "dry_run"
    assert restore_plan.json()["result"] == "dry_run"
    isolation = harness.controller.isolations["r1-n02"]
    assert isolation.reason == "first"
    assert isolation.dry_run is False
    assert "r1-n02" in await isolations(client)
    assert [c[2].get("dry_run", False) for c in harness.cluster.calls] == [False, True, True]


async def test_isolate_and_restore_pod(client: httpx.AsyncClient, harness: Harness) -> None:
    isolated = await client.post(
        "/v1/isolations/pods/edge/web-7", json={"reason": "bad release", "ttl_s": 60}
    )
    item = (await isolations(client))["edge/web-7"]
    restored = await client.post("/v1/isolations/pods/edge/web-7/restore", json={"reason": "fixed"})

    assert isolated.status_code == 200, isolated.text
    assert (item["kind"], item["node"], item["manual"]) == ("pod", "r1-n01", True)
    assert restored.status_code == 200, restored.text
    assert harness.cluster.called("cut_pod") == ["edge/web-7"]
    assert harness.cluster.called("restore_pod") == ["edge/web-7"]
    assert await isolations(client) == {}


async def test_isolate_and_restore_region(client: httpx.AsyncClient, harness: Harness) -> None:
    isolated = await client.post("/v1/isolations/regions/r3", json={"reason": "link flapping"})
    item = (await isolations(client))["r3"]
    restored = await client.post("/v1/isolations/regions/r3/restore", json={"reason": "stable"})

    assert isolated.status_code == 200, isolated.text
    assert (item["kind"], item["region"], item["objects"]) == ("region", "r3", ["cloud/r3-web"])
    [(_, region, options)] = [c for c in harness.cluster.calls if c[0] == "split_region"]
    assert region == "r3"
    assert options["region_label"] == "isolator.io/region"
    assert options["who"] == "anonymous"
    assert restored.status_code == 200, restored.text
    assert await isolations(client) == {}


async def test_manual_region_split_not_rejoined_automatically(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    await client.post("/v1/isolations/regions/r3", json={"reason": "link flapping"})

    await harness.run_for(20.0)

    assert harness.cluster.called("restore_region") == []


async def test_unverified_cut_accepted_and_retried(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    harness.cluster.unverified.add("r1-n02")

    response = await client.post("/v1/isolations/nodes/r1-n02", json={"reason": "r"})
    await harness.run_for(30.0)
    await harness.controller.settle()

    assert response.status_code == 202, response.text
    assert response.json()["result"] == "unverified"
    limit = harness.controller.settings.action_retry_limit
    assert harness.cluster.called("cut_node") == ["r1-n02"] * (1 + limit)
    assert harness.controller.isolations["r1-n02"].verified is False


async def test_failed_kubernetes_request_502(client: httpx.AsyncClient, harness: Harness) -> None:
    async def refuse(*_: Any, **__: Any) -> Any:
        raise SourceUnavailableError("patch Pod status edge/web-1 failed: HTTP 503")

    harness.cluster.cut_pod = refuse  # type: ignore[method-assign]

    response = await client.post("/v1/isolations/pods/edge/web-1", json={"reason": "r"})

    assert response.status_code == 502, response.text
    assert "HTTP 503" in response.json()["detail"]
    assert "edge/web-1" not in harness.controller.pod_isolations


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/isolations/nodes/r9-n99", {"reason": "r"}, 404),
        ("/v1/isolations/regions/r9", {"reason": "r"}, 404),
        ("/v1/isolations/nodes/r1-n01/restore", {"reason": "r"}, 404),
        ("/v1/isolations/pods/edge/web-1/restore", {"reason": "r"}, 404),
        ("/v1/isolations/nodes/r1-n01", {}, 422),
        ("/v1/isolations/nodes/r1-n01", {"reason": ""}, 422),
        ("/v1/isolations/nodes/r1-n01", {"reason": "r", "ttl_s": -1}, 422),
        ("/v1/isolations/nodes/r1-n01", {"reason": "r", "scope": "all"}, 422),
        ("/v1/isolations/nodes/r1-n01", {"reason": "r", "extra": 1}, 422),
        ("/v1/isolations/nodes/Not_A_Node", {"reason": "r"}, 422),
        ("/v1/isolations/pods/Edge/web-1", {"reason": "r"}, 422),
    ],
    ids=[
        "unknown-node",
        "unknown-region",
        "node-not-isolated",
        "pod-not-isolated",
        "no-reason",
        "empty-reason",
        "negative-ttl",
        "unknown-scope",
        "unknown-field",
        "invalid-node-name",
        "invalid-namespace",
    ],
)
async def test_invalid_request_rejected(
    client: httpx.AsyncClient, harness: Harness, path: str, body: dict[str, Any], status: int
) -> None:
    response = await client.post(path, json=body)

    assert response.status_code == status, response.text
    assert harness.cluster.calls == []


async def test_component_scope_passed_to_cluster(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    response = await client.post(
        "/v1/isolations/nodes/r1-n02", json={"reason": "kube-proxy flaky", "scope": "ingress"}
    )

    assert response.status_code == 200, response.text
    [(_, _, options)] = harness.cluster.calls
    assert options["scope"] == "ingress"
    assert options["pod_selector"] == "app.kubernetes.io/component=controller"
