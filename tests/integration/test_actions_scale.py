"""Cuts at scale on the lab's control plane: a full node (110 Pods) behind a Service with 1,000
endpoints over many EndpointSlices, and an API server that throttles with 429 Retry-After.

The elapsed times are logged (``-o log_cli=true --log-cli-level=INFO`` shows them); the
bounds asserted here are generous on purpose, since the figures depend on the machine.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client import ApiClient

from isolator.lab import cluster
from isolator.lab.controlplane import ControlPlane, ControlPlaneOptions
from isolator.sources.kubernetes import KubernetesSource, KubernetesUnavailableError
from isolator.sources.kubernetes.writes import MAX_CONCURRENT_PODS
from tests.integration.test_kubernetes_actions import eventually, kill_kubelet

logger = logging.getLogger(__name__)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.timeout(420),
]

AGENT_PORT = 9910
SERVICE = "big"
PODS_ON_FULL_NODE = 110  # the kubelet's default --max-pods
ENDPOINTS = 1000
OTHER_NODES = 9
# Generous bounds for a loaded 2-core test machine; the measured figures are far lower.
MAX_CUT_S = 20.0
CREATE_CONCURRENCY = 32


class ConcurrencyProbe:
    """Wraps a client method and records how many of its calls were in flight at most."""

    def __init__(self, method: Callable[..., Awaitable[Any]]) -> None:
        self._method = method
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls = 0
        self.last_done = 0.0  # monotonic time at which the latest call returned

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.in_flight += 1
        self.calls += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._method(*args, **kwargs)
        finally:
            self.in_flight -= 1
            self.last_done = time.monotonic()


async def create_pods(
    api: ApiClient, namespace: str, placement: dict[str, str], gated: bool
) -> None:
    """Create every Pod of ``placement`` (Pod -> node), a bounded number at a time."""
    limit = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def one(pod: str, node: str) -> None:
        async with limit:
            await cluster.create_pod(
                api, namespace, pod, node, {"app": SERVICE}, readiness_gate=gated
            )

    await asyncio.gather(*(one(pod, node) for pod, node in placement.items()))


async def ready_endpoints(api: ApiClient, namespace: str) -> tuple[int, int]:
    """Return (ready endpoints, EndpointSlices) of the Service."""
    slices = await client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={SERVICE}"
    )
    ready = sum(
        1
        for s in slices.items
        for e in s.endpoints or []
        if e.conditions is not None and e.conditions.ready is True
    )
    return ready, len(slices.items)


@pytest_asyncio.fixture(loop_scope="session")
async def source(control_plane: ControlPlane) -> AsyncIterator[KubernetesSource]:
    kube = await KubernetesSource.create(str(control_plane.kubeconfig), AGENT_PORT)
    try:
        yield kube
    finally:
        await kube.close()


async def test_full_node_cut_behind_large_service(
    api: ApiClient,
    source: KubernetesSource,
) -> None:
    suffix = uuid.uuid4().hex[:6]
    namespace = f"scale-{suffix}"
    full = f"full-{suffix}"
    others = [f"other-{suffix}-{i}" for i in range(OTHER_NODES)]
    await cluster.create_namespace(api, namespace)
    await cluster.create_service(api, namespace, SERVICE, {"app": SERVICE}, 8080)
    for index, node in enumerate([full, *others]):
        await cluster.create_edge_node(api, node, f"scale-{suffix}", f"198.18.40.{index + 1}")
    try:
        on_full = {f"{full}-p{k}": full for k in range(PODS_ON_FULL_NODE)}
        rest = ENDPOINTS - PODS_ON_FULL_NODE
        elsewhere = {
            f"{others[k % OTHER_NODES]}-p{k}": others[k % OTHER_NODES] for k in range(rest)
        }
        started = time.monotonic()
        await create_pods(api, namespace, on_full, gated=True)
        await create_pods(api, namespace, elsewhere, gated=False)
        await eventually(
            lambda: source.ensure_serving(full), lambda changed: changed == 0, "full node served"
        )
        _, slices = await wait_for(
            lambda: ready_endpoints(api, namespace), lambda seen: seen[0] == ENDPOINTS, 180.0
        )
        logger.info("1,000 endpoints ready after %.1f s", time.monotonic() - started)
        assert slices >= ENDPOINTS // 100, "the EndpointSlice controller puts 100 per slice"
        await kill_kubelet(api, full)
        probe = ConcurrencyProbe(source._kube.patch_pod_status)
        source._kube.patch_pod_status = probe  # type: ignore[method-assign]

        started = time.monotonic()
        cut = await source.cut_node(full, "node down", f"inc-{suffix}")
        cut_s = time.monotonic() - started

        writes_s = probe.last_done - started
        logger.info(
            "cut of %d Pods: writes %.3f s, with read-back %.3f s", probe.calls, writes_s, cut_s
        )
        assert cut.verified, cut.detail
        assert len(cut.pods) == PODS_ON_FULL_NODE
        assert probe.calls == PODS_ON_FULL_NODE
        assert probe.max_in_flight <= MAX_CONCURRENT_PODS
        assert cut_s < MAX_CUT_S
        assert (await ready_endpoints(api, namespace))[0] == ENDPOINTS - PODS_ON_FULL_NODE

        await cluster.set_node_down(api, full, False)
        started = time.monotonic()
        restored = await source.restore_node(full, f"inc-{suffix}")
        restore_s = time.monotonic() - started

        logger.info("restore took %.3f s, read-back included", restore_s)
        assert restored.verified, restored.detail
        assert len(restored.pods) == PODS_ON_FULL_NODE
        assert restore_s < MAX_CUT_S
    finally:
        for node in [full, *others]:
            await client.CoreV1Api(api).delete_node(node)


async def wait_for(
    read: Callable[[], Awaitable[Any]], accept: Callable[[Any], bool], timeout_s: float
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await read()
        if accept(value):
            return value
        assert time.monotonic() < deadline, f"not reached in {timeout_s} s: {value!r}"
        await asyncio.sleep(0.5)


THROTTLED_USER = "throttled-isolator"
# Without priority and fairness, the API server lets this many mutating requests run at once
# and rejects the rest with 429 and Retry-After: 1. Members of system:masters are never
# throttled, so the isolator connects as a user of its own.
THROTTLE_FLAGS = [
    "--enable-priority-and-fairness=false",
    "--max-mutating-requests-inflight=1",
    "--max-requests-inflight=2",
]


@pytest_asyncio.fixture(loop_scope="session")
async def throttled(
    tmp_path_factory: pytest.TempPathFactory, control_plane_bin_dir: Path
) -> AsyncIterator[ControlPlane]:
    options = ControlPlaneOptions(extra_apiserver_flags=THROTTLE_FLAGS)
    plane = ControlPlane(tmp_path_factory.mktemp("throttled"), control_plane_bin_dir, options)
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop()


async def test_throttled_cut_completes(
    throttled: ControlPlane,
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = await config.new_client_from_config(
        config_file=str(throttled.kubeconfig), persist_config=False
    )
    binding = {
        "metadata": {"name": THROTTLED_USER},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "cluster-admin",
        },
        "subjects": [
            {"kind": "User", "name": THROTTLED_USER, "apiGroup": "rbac.authorization.k8s.io"}
        ],
    }
    pods = {f"throttled-p{k}": "throttled-node" for k in range(40)}
    try:
        await client.RbacAuthorizationV1Api(admin).create_cluster_role_binding(binding)
        await cluster.create_namespace(admin, "throttled")
        await cluster.create_service(admin, "throttled", SERVICE, {"app": SERVICE}, 8080)
        await cluster.create_edge_node(admin, "throttled-node", "throttled", "198.18.41.1")
        await create_pods(admin, "throttled", pods, gated=False)
        await wait_for(
            lambda: ready_endpoints(admin, "throttled"), lambda seen: seen[0] == len(pods), 60.0
        )
        await kill_kubelet(admin, "throttled-node")
        kubeconfig = throttled.user_kubeconfig(THROTTLED_USER, [])
        source = await KubernetesSource.create(str(kubeconfig), AGENT_PORT, verify_timeout_s=10.0)
        caplog.set_level(logging.WARNING, logger="isolator.sources.kubernetes.errors")
        try:
            # The control loop cuts a failed node again on its next pass after an error;
            # these attempts stand in for those passes.
            result = None
            for attempt in range(1, 4):
                try:
                    result = await source.cut_node("throttled-node", "node down", "inc-429")
                    break
                except KubernetesUnavailableError as err:
                    logger.info("throttled cut attempt %d failed: %s", attempt, err)
        finally:
            await source.close()
    finally:
        await admin.close()

    throttled_retries = [
        r
        for r in caplog.records
        if r.getMessage().endswith("will retry") and "429" in str(getattr(r, "error", ""))
    ]
    assert throttled_retries, "the API server never throttled: the test proves nothing"
    assert all(getattr(r, "delay_s", 0.0) >= 1.0 for r in throttled_retries), "Retry-After"
    assert result is not None
    assert result.verified, result.detail
