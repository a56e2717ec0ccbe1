"""The HTTP API on a controller with fakes: heartbeats, the webhook and the read endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from isolator.api.app import create_app
from isolator.metrics import Metrics
from isolator.model import EdgeNode
from isolator.sources.errors import SourceUnavailableError
from tests.unit.harness import Harness

ZERO_TIME = "0001-01-01T00:00:00Z"


@pytest.fixture
async def harness() -> Harness:
    return await Harness.start(regions=2, nodes=3)


@pytest.fixture
async def client(harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(harness.controller, Metrics(), harness.clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://isolator") as client:
        yield client


def alert(
    node: str, status: str = "firing", fingerprint: str = "f1", **labels: str
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "NodeDown", "node": node, **labels},
        "annotations": {},
        "startsAt": "2026-12-04T10:00:00Z",
        "endsAt": ZERO_TIME if status == "firing" else "2026-12-04T10:05:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint,
    }


def notification(*alerts: dict[str, Any], status: str = "firing", **extra: Any) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="NodeDown"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "isolator",
        "groupLabels": {"alertname": "NodeDown"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager",
        "alerts": list(alerts),
        **extra,
    }


async def test_heartbeat_accepted(client: httpx.AsyncClient, harness: Harness) -> None:
    body = {"node": "r1-n01", "region": "r1", "seq": 10_000, "sent_at": 1_780_000_000.0}

    response = await client.post("/v1/heartbeats", json=body)

    assert response.status_code == 200, response.text
    assert response.json() == {"outcome": "accepted"}
    assert harness.controller.store.nodes["r1-n01"].heartbeat_seq == 10_000


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"node": "r1-n01", "region": "r1", "seq": -1, "sent_at": 1.0}, "seq"),
        ({"node": "r1-n01", "region": "r1", "seq": "x", "sent_at": 1.0}, "seq"),
        ({"node": "Edge_01", "region": "r1", "seq": 1, "sent_at": 1.0}, "node"),
        ({"node": "r1-n01", "region": "", "seq": 1, "sent_at": 1.0}, "region"),
        ({"region": "r1", "seq": 1, "sent_at": 1.0}, "node"),
        ({"node": "r1-n01", "region": "r1", "seq": 1, "sent_at": 1.0, "x": 1}, "x"),
    ],
    ids=["negative-seq", "string-seq", "invalid-node-name", "empty-region", "no-node", "extra"],
)
async def test_heartbeat_invalid_field_named(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/v1/heartbeats", json=body)

    assert response.status_code == 422, response.text
    assert field in [f["field"] for f in response.json()["fields"]]


async def test_heartbeat_non_finite_time_rejected(client: httpx.AsyncClient) -> None:
    body = '{"node": "r1-n01", "region": "r1", "seq": 1, "sent_at": NaN}'

    response = await client.post(
        "/v1/heartbeats", content=body, headers={"content-type": "application/json"}
    )

    assert response.status_code == 422, response.text


async def test_heartbeat_not_json_rejected(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/heartbeats", content=b"\xff{not json", headers={"content-type": "application/json"}
    )

    assert response.status_code == 400, response.text
    assert "parsing the body" in response.json()["error"]


async def test_heartbeat_unknown_node_404(client: httpx.AsyncClient) -> None:
    body = {"node": "r9-n01", "region": "r9", "seq": 1, "sent_at": 1.0}

    response = await client.post("/v1/heartbeats", json=body)

    assert response.status_code == 404, response.text
    assert response.json()["field"] == "node"


async def test_heartbeat_wrong_region_422(client: httpx.AsyncClient) -> None:
    body = {"node": "r1-n01", "region": "r2", "seq": 1, "sent_at": 1.0}

    response = await client.post("/v1/heartbeats", json=body)

    assert response.status_code == 422, response.text
    assert "r1" in response.json()["error"]


async def test_oversized_body_413(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/heartbeats", content=b"x" * (2 << 20), headers={"content-type": "application/json"}
    )

    assert response.status_code == 413, response.text


async def test_webhook_zero_end_time_and_mixed_status(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    body = notification(
        alert("r1-n01", "firing", "a"), alert("r1-n02", "resolved", "b"), status="firing"
    )

    response = await client.post("/v1/alerts/webhook", json=body)

    assert response.status_code == 200, response.text
    nodes = harness.controller.store.nodes
    assert nodes["r1-n01"].firing_alerts == {"NodeDown"}
    assert nodes["r1-n02"].firing_alerts == set()


async def test_webhook_duplicates_counted_once(client: httpx.AsyncClient) -> None:
    body = notification(alert("r1-n01"))

    first = await client.post("/v1/alerts/webhook", json=body)
    second = await client.post("/v1/alerts/webhook", json=body)

    assert first.json()["alerts"] == {"recorded": 1}
    assert second.json()["alerts"] == {"duplicate": 1}


async def test_webhook_one_namesake_resolving_leaves_the_other_firing(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    first = alert("r1-n01", fingerprint="disk-a", device="sda")
    second = alert("r1-n01", fingerprint="disk-b", device="sdb")
    await client.post("/v1/alerts/webhook", json=notification(first, second))

    resolved = alert("r1-n01", "resolved", fingerprint="disk-a", device="sda")
    await client.post("/v1/alerts/webhook", json=notification(resolved, second))

    evidence = harness.controller.store.nodes["r1-n01"]
    assert evidence.firing_alerts == {"NodeDown"}
    assert evidence.firing_fingerprints == {"disk-b": "NodeDown"}


async def test_webhook_stale_firing_after_resolved_ignored(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    await client.post("/v1/alerts/webhook", json=notification(alert("r1-n01", "resolved")))

    response = await client.post("/v1/alerts/webhook", json=notification(alert("r1-n01")))

    assert response.json()["alerts"] == {"stale": 1}
    assert harness.controller.store.nodes["r1-n01"].firing_alerts == set()


async def test_webhook_unicode_and_invalid_node(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    harness.cluster.nodes.append(EdgeNode("hd1-n01", "华东-1", None))
    await harness.controller.refresh()
    raw = (
        '{"version": "4", "status": "firing", "receiver": "isolator", "groupKey": "g",'
        ' "truncatedAlerts": 0, "alerts": ['
        '{"status": "firing", "labels": {"alertname": "NodeDown", "node": "hd1-n01",'
        ' "region": "\\u534e\\u4e1c-1", "site": "Z\\u00fcrich"},'
        ' "annotations": {"description": "rtt \\u003e 500ms \\u0026 loss \\u003c 5%"},'
        ' "startsAt": "2026-12-04T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",'
        ' "fingerprint": "u1"},'
        '{"status": "firing", "labels": {"alertname": "NodeDown", "node": "Edge_01"},'
        ' "startsAt": "2026-12-04T10:00:00Z", "fingerprint": "u2"}]}'
    )

    response = await client.post(
        "/v1/alerts/webhook", content=raw.encode(), headers={"content-type": "application/json"}
    )

    assert response.status_code == 200, response.text
    assert response.json()["unmapped_nodes"] == ["Edge_01"]
    assert harness.controller.store.nodes["hd1-n01"].firing_alerts == {"NodeDown"}


async def test_webhook_wrong_version_names_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/alerts/webhook", json=notification(version="3"))

    assert response.status_code == 422, response.text
    assert "version" in [f["field"] for f in response.json()["fields"]]


async def test_read_endpoints_list_nodes_and_regions(client: httpx.AsyncClient) -> None:
    nodes = await client.get("/v1/nodes")
    regions = await client.get("/v1/regions")
    status = await client.get("/v1/status")

    assert nodes.status_code == 200, nodes.text
    assert len(nodes.json()) == 6
    assert nodes.json()[0]["verdict"] == "healthy"
    assert [r["verdict"] for r in regions.json()] == ["normal", "normal"]
    assert status.json()["verdict"] == "normal"


async def test_healthz_tracks_control_loop(client: httpx.AsyncClient, harness: Harness) -> None:
    assert (await client.get("/healthz")).status_code == 200

    harness.clock.advance(60.0)

    assert (await client.get("/healthz")).status_code == 503


async def test_metrics_exposed(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")

    assert response.status_code == 200
    assert "isolator_heartbeat_received_total" in response.text


class FakeAlertmanager:
    """Holds the full alert set; ``fail`` makes every read raise."""

    def __init__(self, alerts: list[tuple[str, datetime, bool, dict[str, str]]]) -> None:
        self.alerts = alerts
        self.fail = False
        self.reads = 0

    async def active_alerts(self) -> list[tuple[str, datetime, bool, dict[str, str]]]:
        self.reads += 1
        if self.fail:
            raise SourceUnavailableError("Alertmanager timed out")
        return self.alerts


def full_alert_set() -> list[tuple[str, datetime, bool, dict[str, str]]]:
    """40 firing alerts in one group: 12 about r1 nodes and 28 about r2 nodes."""
    started = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
    alerts = []
    for i in range(40):
        region, j = ("r1", i % 3 + 1) if i < 12 else ("r2", i % 3 + 1)
        labels = {"alertname": f"Probe{i}", "node": f"{region}-n{j:02d}", "region": region}
        alerts.append((f"fp{i}", started, True, labels))
    return alerts


async def test_truncated_notification_rereads_full_set() -> None:
    source = FakeAlertmanager(full_alert_set())
    harness = await Harness.start(regions=2, nodes=3, alert_reader=source)
    app = create_app(harness.controller, Metrics(), harness.clock)
    payload = [alert(f"r1-n{i % 3 + 1:02d}", fingerprint=f"fp{i}") for i in range(5)]
    body = notification(*payload, truncatedAlerts=35, commonLabels={"region": "r1"})

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://isolator"
    ) as client:
        response = await client.post("/v1/alerts/webhook", json=body)
        await harness.controller.wait_for_alert_reread()

    assert response.status_code == 200, response.text
    assert response.json()["reread"] == "scheduled"
    assert source.reads == 1
    firing = {n: len(ev.firing_alerts) for n, ev in harness.controller.store.nodes.items()}
    assert sum(firing.values()) == 40
    assert sum(v for n, v in firing.items() if n.startswith("r2-")) == 28


async def test_failed_reread_changes_nothing() -> None:
    source = FakeAlertmanager(full_alert_set())
    source.fail = True
    harness = await Harness.start(regions=2, nodes=3, alert_reader=source)
    app = create_app(harness.controller, Metrics(), harness.clock)
    body = notification(alert("r1-n01"), truncatedAlerts=35)

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://isolator"
    ) as client:
        response = await client.post("/v1/alerts/webhook", json=body)
        await harness.controller.wait_for_alert_reread()
    await harness.run_for(5.0)

    assert response.status_code == 200, response.text
    assert harness.cluster.cuts == []
    assert harness.controller.store.nodes["r2-n01"].firing_alerts == set()


async def test_truncated_without_alertmanager_reports_unavailable(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/alerts/webhook", json=notification(alert("r1-n01"), truncatedAlerts=3)
    )

    assert response.json()["reread"] == "unavailable"
