"""Two `isolator serve` processes on the real control plane: one leads, the other takes over
when the leader is killed, recovers the leader's cut from the cluster and does not cut again.

Each replica labels a Pod object of its own, as it would label its Pod in a cluster. Those Pods
are never scheduled; they only carry the isolator.io/leader label that a Service selects.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient

from isolator.lab.controlplane import ControlPlane
from isolator.lab.environment import LabTokens
from isolator.lab.monitoring import PROMETHEUS_BINARY, free_port, wait_ready
from isolator.lab.process import ManagedProcess
from isolator.sources.leader import LEADER_LABEL
from tests.integration.test_kubernetes_actions import (
    Estate,
    cut_records,
    delete_nodes,
    eventually,
    kill_kubelet,
    ready_endpoints,
    start_nodes,
    stays,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.timeout(180),
]

LEASE_S = 3.0
RENEW_DEADLINE_S = 2.0
RETRY_S = 0.5
LOOP_S = 0.5
START_TIMEOUT_S = 30.0
# The test polls /readyz every 0.1 s (POLL_S of test_kubernetes_actions), and the request
# itself takes time on a loaded machine.
OBSERVATION_MARGIN_S = 0.5


class Replica:
    """One `isolator serve` process with leader election, and a Pod object it labels."""

    def __init__(self, identity: str, port: int, process: ManagedProcess) -> None:
        self.identity = identity
        self.port = port
        self.process = process
        self.url = f"http://127.0.0.1:{port}"


def replica_env(
    control_plane: ControlPlane,
    tokens: LabTokens,
    namespace: str,
    lease: str,
    identity: str,
    port: int,
    prometheus_port: int,
) -> dict[str, str]:
    return {
        "ISOLATOR_LISTEN_HOST": "127.0.0.1",
        "ISOLATOR_LISTEN_PORT": str(port),
        "ISOLATOR_KUBECONFIG": str(control_plane.kubeconfig),
        # A Prometheus that scrapes nothing: every node's site view is unknown, so nothing is
        # cut automatically, and each pass still reads it as fast as a real one.
        "ISOLATOR_PROMETHEUS_URL": f"http://127.0.0.1:{prometheus_port}",
        "ISOLATOR_AUTH_TOKEN_FILE": str(tokens.token_file),
        "ISOLATOR_LOG_JSON": "true",
        "ISOLATOR_LOOP_INTERVAL_S": str(LOOP_S),
        "ISOLATOR_INVENTORY_REFRESH_S": "1",
        "ISOLATOR_LEADER_ELECTION": "true",
        "ISOLATOR_LEADER_ELECTION_NAMESPACE": namespace,
        "ISOLATOR_LEADER_ELECTION_LEASE_NAME": lease,
        "ISOLATOR_LEADER_ELECTION_IDENTITY": identity,
        "ISOLATOR_LEADER_ELECTION_POD_NAME": f"isolator-{identity}",
        "ISOLATOR_LEADER_ELECTION_LEASE_DURATION_S": str(LEASE_S),
        "ISOLATOR_LEADER_ELECTION_RENEW_DEADLINE_S": str(RENEW_DEADLINE_S),
        "ISOLATOR_LEADER_ELECTION_RETRY_PERIOD_S": str(RETRY_S),
    }


async def create_replica_pod(api: ApiClient, namespace: str, identity: str) -> None:
    body = client.V1Pod(
        metadata=client.V1ObjectMeta(name=f"isolator-{identity}", labels={"app": "isolator"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="isolator", image="isolator")]),
    )
    await client.CoreV1Api(api).create_namespaced_pod(namespace, body)


async def leader_labels(api: ApiClient, namespace: str) -> dict[str, str | None]:
    pods = await client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector="app=isolator")
    return {p.metadata.name: (p.metadata.labels or {}).get(LEADER_LABEL) for p in pods.items}


async def readiness(session: aiohttp.ClientSession, replica: Replica) -> dict[str, Any]:
    try:
        async with session.get(f"{replica.url}/readyz") as response:
            body: dict[str, Any] = await response.json()
            return {"http": response.status, **body}
    except aiohttp.ClientError as err:
        return {"http": None, "error": repr(err)}


@pytest.fixture
def processes() -> Iterator[list[ManagedProcess]]:
    started: list[ManagedProcess] = []
    yield started
    for process in started:
        process.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def prometheus_port(tmp_path: Path, processes: list[ManagedProcess]) -> int:
    """A real Prometheus with no scrape targets."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 15s\n")
    argv = [
        PROMETHEUS_BINARY,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    process = ManagedProcess("prometheus", argv, tmp_path / "prometheus.log")
    processes.append(process)
    process.start()
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}/-/ready"
        await wait_ready(session, process, url, START_TIMEOUT_S)
    return port


@pytest_asyncio.fixture(loop_scope="session")
async def estate(api: ApiClient) -> AsyncIterator[Estate]:
    """Two edge Nodes with two Pods each, serving without a readiness gate, so that cutting
    one node leaves the Service its minimum of ready endpoints."""
    created = await start_nodes(api, 2, gated=False)
    yield created
    await delete_nodes(api, created)


async def test_killed_leader_replaced_without_second_cut(
    api: ApiClient,
    control_plane: ControlPlane,
    estate: Estate,
    processes: list[ManagedProcess],
    prometheus_port: int,
    tmp_path: Path,
) -> None:
    namespace, node = estate.namespace, estate.nodes[0]
    tokens = LabTokens.create(tmp_path / "tokens", [])
    lease = f"isolator-{uuid.uuid4().hex[:8]}"
    operator = {"Authorization": f"Bearer {tokens.operator}"}
    await eventually(ready_endpoints(api, namespace), lambda pods: len(pods) == 4, "endpoints")

    def start(identity: str) -> Replica:
        port = free_port()
        env = replica_env(control_plane, tokens, namespace, lease, identity, port, prometheus_port)
        process = ManagedProcess(
            f"isolator-{identity}",
            [sys.executable, "-m", "isolator", "serve"],
            tmp_path / f"isolator-{identity}.log",
            env=env,
        )
        processes.append(process)
        process.start()
        return Replica(identity, port, process)

    for identity in ("first", "second"):
        await create_replica_pod(api, namespace, identity)
    first = start("first")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        await wait_ready(session, first.process, f"{first.url}/readyz", START_TIMEOUT_S)

        async def ready(replica: Replica) -> dict[str, Any]:
            return await readiness(session, replica)

        await eventually(lambda: ready(first), lambda r: r.get("leader") is True, "first leads")
        second = start("second")
        await wait_ready(session, second.process, f"{second.url}/readyz", START_TIMEOUT_S)
        # Ready once its loop has run a pass; the holder is known once it has read the Lease.
        follower = await eventually(
            lambda: ready(second),
            lambda r: r["http"] == 200 and r["leader_identity"] is not None,
            "second ready, Lease read",
        )

        # Exactly one leads, and each replica reports which.
        assert follower["leader"] is False
        assert follower["leader_identity"] == "first"
        assert (await ready(first))["leader"] is True
        labels = await eventually(
            lambda: leader_labels(api, namespace),
            lambda got: got == {"isolator-first": "true", "isolator-second": "false"},
            "leader labels",
        )
        assert labels["isolator-first"] == "true"

        # A follower rejects manual actions and names the leader. The leader cuts.
        isolate = {"reason": "failover test", "ttl_s": 600}
        path = f"/v1/isolations/nodes/{node}"
        async with session.post(second.url + path, json=isolate, headers=operator) as refused:
            assert refused.status == 503, await refused.text()
            assert (await refused.json())["leader"] == "first"
        assert await cut_records(api, namespace) == {}

        async def node_known() -> int:
            async with session.get(f"{first.url}/v1/nodes/{node}", headers=operator) as response:
                return response.status

        await eventually(node_known, lambda status: status == 200, "node in the inventory")
        # A node cut is for a dead kubelet; a live one (KWOK here) would set Ready back.
        await kill_kubelet(api, node)
        async with session.post(first.url + path, json=isolate, headers=operator) as cut:
            assert cut.status == 200, await cut.text()
            incident = (await cut.json())["isolation"]["incident"]
        records = await cut_records(api, namespace)
        assert len(records) == 2
        # Other tests may have left isolations on the shared control plane: the new leader
        # must take over exactly the set the first one held, whatever it contains.
        async with session.get(f"{first.url}/v1/isolations", headers=operator) as listed:
            held = {(i["target"], i["incident"]) for i in await listed.json()}
        assert (node, incident) in held

        # SIGKILL: no release, so the follower must wait out the Lease.
        first.process.kill()
        killed_at = time.monotonic()
        await eventually(lambda: ready(second), lambda r: r.get("leader") is True, "takeover")
        takeover_s = time.monotonic() - killed_at

        # The follower notices a renewal up to one retry period after it happened, counts the
        # lease duration from then, takes over at its next attempt, and acts from its next
        # pass. The leader renewed at most one retry period before it was killed.
        assert takeover_s >= LEASE_S - RETRY_S, f"took over after {takeover_s:.2f} s"
        bound = LEASE_S + 2 * RETRY_S + LOOP_S + OBSERVATION_MARGIN_S
        assert takeover_s <= bound, f"took over after {takeover_s:.2f} s, bound {bound} s"

        async with session.get(f"{second.url}/v1/isolations", headers=operator) as listed:
            isolations = await listed.json()
        assert {(i["target"], i["incident"]) for i in isolations} == held
        [taken_over] = [i for i in isolations if i["target"] == node]
        assert taken_over["who"] == "lab-operator"
        await eventually(
            lambda: leader_labels(api, namespace),
            lambda got: got == {"isolator-first": "false", "isolator-second": "true"},
            "leader labels after the takeover",
        )

        # Not cut a second time: the records stay as the first leader wrote them.
        await stays(lambda: cut_records(api, namespace), lambda now: now == records, 3.0)
        async with session.get(f"{second.url}/v1/audit", headers=operator) as audit:
            actions = [record["action"] for record in await audit.json()]
        assert "cut" not in actions

        # The new leader restores the old leader's cut exactly.
        restore = {"reason": "failover test done"}
        async with session.post(
            f"{second.url}{path}/restore", json=restore, headers=operator
        ) as restored:
            assert restored.status == 200, await restored.text()
        assert await cut_records(api, namespace) == {}
        await eventually(ready_endpoints(api, namespace), lambda pods: len(pods) == 4, "restored")
