"""Leader election in the service: settings validation, a follower that acts on nothing, a
take-over that recovers the recorded cuts first, and the API of a follower."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from isolator.api.app import create_app
from isolator.clock import ManualClock
from isolator.engine.loop import Controller
from isolator.metrics import Metrics
from isolator.settings import Settings
from tests.unit.fakes import FakeCluster, FakeProber, FakeSite, Recorded, estate
from tests.unit.harness import FAST, Harness

LEADER_TIMINGS: dict[str, Any] = {
    "leader_election_lease_duration_s": 15.0,
    "leader_election_renew_deadline_s": 10.0,
    "leader_election_retry_period_s": 2.0,
}


class Lease:
    """Stands in for the elector: the test sets whether this replica leads."""

    def __init__(self) -> None:
        self.held = False

    def __call__(self) -> bool:
        return self.held


async def start_replica(lease: Lease, **overrides: Any) -> tuple[Harness, Metrics]:
    clock = ManualClock()
    cluster = FakeCluster(nodes=estate(3, 10))
    site, prober = FakeSite(), FakeProber()
    metrics = Metrics()
    settings = Settings(**{**FAST, **overrides})
    controller = Controller(settings, cluster, site, prober, metrics, clock, leading=lease)
    harness = Harness(controller, cluster, site, prober, clock)
    await controller.refresh()
    await harness.run_for(1.0)
    return harness, metrics


def leader_gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("isolator_leader")


def test_settings_accept_kube_controller_manager_timings() -> None:
    settings = Settings(auth_disabled=True, leader_election=True, **LEADER_TIMINGS)

    assert settings.leader_election_lease_duration_s == 15.0
    assert settings.leader_election_renew_deadline_s == 10.0
    assert settings.leader_election_retry_period_s == 2.0


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"leader_election_renew_deadline_s": 15.0}, "leader_election_renew_deadline_s"),
        ({"leader_election_renew_deadline_s": 20.0}, "leader_election_renew_deadline_s"),
        ({"leader_election_retry_period_s": 10.0}, "leader_election_retry_period_s"),
        ({"leader_election_retry_period_s": 12.0}, "leader_election_retry_period_s"),
        ({"leader_election_lease_duration_s": 0.5}, "leader_election_lease_duration_s"),
        ({"leader_election_retry_period_s": 0.0}, "leader_election_retry_period_s"),
    ],
    ids=[
        "renew-equals-lease",
        "renew-above-lease",
        "retry-equals-renew",
        "retry-above-renew",
        "lease-below-one-second",
        "retry-zero",
    ],
)
def test_settings_reject_unsafe_timings(overrides: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(auth_disabled=True, **{**LEADER_TIMINGS, **overrides})

    assert named in str(raised.value)


def test_default_identities_differ_per_replica() -> None:
    first = Settings(auth_disabled=True)
    second = Settings(auth_disabled=True)

    assert first.leader_election_identity != second.leader_election_identity


def test_identity_set_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOLATOR_LEADER_ELECTION_IDENTITY", "isolator-7d9f-abcde")

    assert Settings(auth_disabled=True).leader_election_identity == "isolator-7d9f-abcde"


async def test_follower_classifies_but_cuts_nothing() -> None:
    lease = Lease()
    harness, metrics = await start_replica(lease)
    harness.silent.add("r1-n01")
    harness.site_down.add("r1-n01")

    await harness.run_for(8.0)

    assert harness.node_verdict("r1-n01").value == "failed"
    assert harness.cluster.cuts == []
    assert harness.cluster.serving == [], "a follower must not set serving gates either"
    assert harness.cluster.called("recorded_isolations") == []
    assert not harness.controller.acting
    assert leader_gauge(metrics) == 0


async def test_new_leader_recovers_before_cutting() -> None:
    lease = Lease()
    harness, metrics = await start_replica(lease, startup_grace_s=3.0)
    harness.cluster.recorded.append(Recorded("node", "r2-n03", "r2-n03", incident="old-leader"))
    harness.silent.add("r1-n01")
    harness.site_down.add("r1-n01")
    await harness.run_for(5.0)

    lease.held = True
    await harness.step()

    assert harness.controller.acting
    assert leader_gauge(metrics) == 1
    assert harness.controller.isolations["r2-n03"].incident == "old-leader"
    assert harness.cluster.cuts == [], "the pass that takes over decided on old tables"

    await harness.run_for(2.0)
    assert harness.cluster.cuts == [], "the start-up grace applies again after a take-over"

    await harness.run_for(3.0)
    assert harness.cluster.cuts == ["r1-n01"]
    assert "r2-n03" not in harness.cluster.cuts, "a recovered cut is not cut again"


async def test_lost_lease_stops_acting_at_once() -> None:
    lease = Lease()
    lease.held = True
    harness, metrics = await start_replica(lease)
    assert harness.controller.acting

    lease.held = False
    harness.controller.stand_down()
    harness.silent.add("r1-n01")
    harness.site_down.add("r1-n01")
    await harness.run_for(8.0)

    assert not harness.controller.acting
    assert leader_gauge(metrics) == 0
    assert harness.cluster.cuts == []
    assert harness.controller.all_isolations() == []


async def test_replica_without_election_acts() -> None:
    harness = await Harness.start()

    assert harness.controller.acting


@pytest.fixture
async def follower() -> Harness:
    harness, _ = await start_replica(Lease())
    return harness


@pytest.fixture
async def client(follower: Harness) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(follower.controller, Metrics(), follower.clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://isolator") as client:
        yield client


async def test_follower_rejects_manual_isolation(
    client: httpx.AsyncClient, follower: Harness
) -> None:
    response = await client.post(
        "/v1/isolations/nodes/r1-n01", json={"reason": "maintenance", "ttl_s": 60}
    )

    assert response.status_code == 503, response.text
    assert "not the leader" in response.json()["error"]
    assert "leader" in response.json()
    assert follower.cluster.cuts == []


async def test_follower_rejects_manual_restore(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/isolations/regions/r1/restore", json={"reason": "done"})

    assert response.status_code == 503, response.text


async def test_follower_serves_read_api(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/nodes")

    assert response.status_code == 200, response.text
    assert len(response.json()) == 30


async def test_readyz_tells_follower_apart(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")

    assert response.status_code == 200, response.text
    assert response.json()["leader"] is False
