"""TokenReview authentication against the lab's real kube-apiserver.

A Pod-bound ServiceAccount token from the TokenRequest API carries the Pod's node name, and the
isolator admits it as the agent of that node only. The controller behind the API runs on fakes
(tests.unit.fakes); the tokens, the reviews and the node name all come from the API server.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient

from isolator.api.app import create_app
from isolator.clock import ManualClock, SystemClock
from isolator.engine.loop import Controller
from isolator.lab import cluster
from isolator.lab.controlplane import ControlPlane
from isolator.metrics import Metrics
from isolator.model import EdgeNode
from isolator.settings import Settings
from isolator.sources.kubernetes.tokenreview import KubernetesTokenReviewer
from tests.unit.fakes import FakeCluster, FakeProber, FakeSite
from tests.unit.harness import FAST

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.timeout(120),
]

REGION = "region-tr"
SERVICE_ACCOUNT = "isolator-agent"
AUDIENCE = "isolator"
TOKEN_LIFETIME_S = 600


@dataclass(frozen=True)
class AgentPod:
    """A ServiceAccount, the Node its Pod runs on, another Node, and a Pod-bound token."""

    namespace: str
    node: str
    other_node: str
    token: str
    default_audience_token: str


async def request_token(
    api: ApiClient, namespace: str, pod: client.V1Pod, audiences: list[str] | None
) -> str:
    """Request a token of SERVICE_ACCOUNT bound to ``pod`` through the TokenRequest API."""
    body = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(
            audiences=audiences or [],
            expiration_seconds=TOKEN_LIFETIME_S,
            bound_object_ref=client.V1BoundObjectReference(
                api_version="v1", kind="Pod", name=pod.metadata.name, uid=pod.metadata.uid
            ),
        )
    )
    response = await client.CoreV1Api(api).create_namespaced_service_account_token(
        SERVICE_ACCOUNT, namespace, body
    )
    token = response.status.token
    assert isinstance(token, str), response
    return token


@pytest_asyncio.fixture(loop_scope="session")
async def agent_pod(api: ApiClient) -> AsyncIterator[AgentPod]:
    suffix = uuid.uuid4().hex[:8]
    namespace = f"tr-{suffix}"
    node, other_node = f"edge-tr-{suffix}-0", f"edge-tr-{suffix}-1"
    core = client.CoreV1Api(api)

    await cluster.create_namespace(api, namespace)
    await core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=SERVICE_ACCOUNT))
    )
    for index, name in enumerate((node, other_node)):
        await cluster.create_edge_node(api, name, REGION, f"198.18.30.{index + 1}")

    # The lab's API server runs without the ServiceAccount admission plugin, so the Pod names
    # its ServiceAccount itself; TokenRequest binds only to a Pod of the same ServiceAccount.
    pod = await core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="agent"),
            spec=client.V1PodSpec(
                node_name=node,
                service_account_name=SERVICE_ACCOUNT,
                automount_service_account_token=False,
                containers=[client.V1Container(name="agent", image=cluster.LAB_IMAGE)],
            ),
        ),
    )

    token = await request_token(api, namespace, pod, [AUDIENCE])
    default_audience_token = await request_token(api, namespace, pod, None)
    yield AgentPod(namespace, node, other_node, token, default_audience_token)

    # No namespace controller runs, so the namespace and its Pod stay until the session's
    # control plane is thrown away. The Nodes go, so that later tests see only their own.
    for name in (node, other_node):
        await core.delete_node(name)


@pytest_asyncio.fixture(loop_scope="session")
async def isolator_api(
    control_plane: ControlPlane, agent_pod: AgentPod
) -> AsyncIterator[httpx.AsyncClient]:
    """The isolator's API with TokenReview on, its reviewer on the lab's API server."""
    clock = ManualClock(wall_start=SystemClock().wall())
    settings = Settings(
        **{
            **FAST,
            "auth_disabled": False,
            "auth_token_review": True,
            "auth_token_review_audiences": [AUDIENCE],
            "auth_token_review_service_accounts": {
                f"{agent_pod.namespace}:{SERVICE_ACCOUNT}": "agent"
            },
        }
    )
    nodes = [
        EdgeNode(agent_pod.node, REGION, "http://198.18.30.1:9910"),
        EdgeNode(agent_pod.other_node, REGION, "http://198.18.30.2:9910"),
    ]
    controller = Controller(
        settings, FakeCluster(nodes=nodes), FakeSite(), FakeProber(), Metrics(), clock
    )
    await controller.refresh()
    reviewer = await KubernetesTokenReviewer.create(
        str(control_plane.kubeconfig), audiences=settings.auth_token_review_audiences
    )
    app = create_app(controller, Metrics(), clock, token_reviewer=reviewer)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://isolator") as api:
            yield api
    finally:
        await reviewer.close()


def heartbeat(node: str) -> dict[str, Any]:
    return {"node": node, "region": REGION, "seq": 1, "sent_at": SystemClock().wall()}


async def test_pod_bound_token_beats_for_its_node(
    isolator_api: httpx.AsyncClient, agent_pod: AgentPod
) -> None:
    headers = {"Authorization": f"Bearer {agent_pod.token}"}

    own = await isolator_api.post("/v1/heartbeats", json=heartbeat(agent_pod.node), headers=headers)
    other = await isolator_api.post(
        "/v1/heartbeats", json=heartbeat(agent_pod.other_node), headers=headers
    )
    status = await isolator_api.get("/v1/status", headers=headers)

    assert own.status_code == 200, own.text
    assert other.status_code == 403, other.text
    assert other.json()["field"] == "node"
    assert f"for node {agent_pod.node!r} only" in other.json()["error"]
    assert status.status_code == 403, status.text


async def test_token_for_other_audience_rejected(
    isolator_api: httpx.AsyncClient, agent_pod: AgentPod
) -> None:
    headers = {"Authorization": f"Bearer {agent_pod.default_audience_token}"}

    response = await isolator_api.post(
        "/v1/heartbeats", json=heartbeat(agent_pod.node), headers=headers
    )

    assert response.status_code == 401, response.text


async def test_garbage_token_rejected_with_401(
    isolator_api: httpx.AsyncClient, agent_pod: AgentPod
) -> None:
    headers = {"Authorization": "Bearer not-a-token-the-api-server-issued-0123456789"}

    response = await isolator_api.post(
        "/v1/heartbeats", json=heartbeat(agent_pod.node), headers=headers
    )

    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid bearer token"
