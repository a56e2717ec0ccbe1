"""The lab's control plane on the real binaries: KWOK stages, endpoints, Nodes and teardown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import pytest_asyncio
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from isolator.lab import cluster
from isolator.lab.controlplane import ControlPlane, ControlPlaneOptions
from isolator.lab.process import ProcessFailedError
from isolator.model import SERVING_CONDITION

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

# How long a state change may take to show. KWOK and the controllers react within about a second.
DEADLINE_S = float(os.environ.get("ISOLATOR_TEST_DEADLINE_S", "10"))
POLL_S = 0.1
SERVICE_PORT = 8080
FLIPS = 40
# Short, so that the test of the node lifecycle controller stays short. The controller checks
# Nodes every --node-monitor-period, 5 s by default.
LIFECYCLE_GRACE_S = 8
LIFECYCLE_MONITOR_PERIOD_S = 5

T = TypeVar("T")


async def eventually(
    read: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    what: str,
    deadline_s: float = DEADLINE_S,
) -> T:
    """Poll ``read`` until ``accept`` holds for its value, and fail at the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = await read()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {deadline_s} s; last value: {value!r}")
        await asyncio.sleep(POLL_S)


async def stays(read: Callable[[], Awaitable[T]], accept: Callable[[T], bool], seconds: float) -> T:
    """Poll ``read`` for ``seconds`` and fail as soon as ``accept`` does not hold."""
    end = time.monotonic() + seconds
    while True:
        value = await read()
        assert accept(value), value
        if time.monotonic() > end:
            return value
        await asyncio.sleep(POLL_S)


@pytest_asyncio.fixture(loop_scope="session")
async def namespace(api: ApiClient) -> str:
    # No namespace controller runs, so a deleted namespace would never go away. The session's
    # control plane is thrown away whole instead.
    name = f"t-{uuid.uuid4().hex[:8]}"
    await cluster.create_namespace(api, name)
    return name


@pytest_asyncio.fixture(loop_scope="session")
async def node(api: ApiClient) -> AsyncIterator[str]:
    """A fresh Ready edge Node for one test."""
    name = f"edge-{uuid.uuid4().hex[:8]}"
    await cluster.create_edge_node(api, name, "region-a", "198.18.10.1")
    await eventually(lambda: cluster.node_condition(api, name), lambda s: s == "True", "Node Ready")
    yield name
    await client.CoreV1Api(api).delete_node(name)


async def read_pod(api: ApiClient, namespace: str, name: str) -> client.V1Pod:
    return await client.CoreV1Api(api).read_namespaced_pod(name, namespace)


async def start_gated_pod(api: ApiClient, namespace: str, node: str, name: str) -> None:
    """Create a Service "web" and a gated Pod behind it, and wait until the Pod runs."""
    await cluster.create_service(api, namespace, "web", {"app": "web"}, SERVICE_PORT)
    await cluster.create_pod(api, namespace, name, node, {"app": "web"})
    await eventually(
        lambda: read_pod(api, namespace, name), lambda p: p.status.phase == "Running", "Running"
    )


def ready_of(api: ApiClient, namespace: str, pod: str) -> Callable[[], Awaitable[str | None]]:
    async def read() -> str | None:
        return (await cluster.pod_conditions(api, namespace, pod)).get("Ready")

    return read


def pod_not_ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "False" for c in pod.status.conditions or [])


def endpoints_of(api: ApiClient, namespace: str) -> Callable[[], Awaitable[set[str]]]:
    return lambda: cluster.ready_endpoint_pods(api, namespace, "web")


async def endpoint_readiness(api: ApiClient, namespace: str) -> dict[str, bool | None]:
    """Map each Pod listed in the EndpointSlices of "web" to its endpoint's ready condition."""
    slices = await client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
        namespace, label_selector="kubernetes.io/service-name=web"
    )
    return {
        endpoint.target_ref.name: endpoint.conditions.ready
        for endpoint_slice in slices.items
        for endpoint in endpoint_slice.endpoints or []
    }


class ConditionHistory:
    """The Ready and gate statuses of one Pod at every version the API server's watch reports.

    The watch starts at the namespace's current resourceVersion, so it misses no version of a
    Pod created after ``start`` returns, however short-lived.
    """

    def __init__(self, api: ApiClient, namespace: str, pod: str) -> None:
        self._core = client.CoreV1Api(api)
        self._namespace = namespace
        self._pod = pod
        # One (Ready, SERVING_CONDITION) pair of statuses per version, with None for an absent one.
        self.versions: list[tuple[str | None, str | None]] = []
        self.last_version = ""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        listing = await self._core.list_namespaced_pod(self._namespace)
        self._task = asyncio.create_task(self._watch(listing.metadata.resource_version))

    async def _watch(self, resource_version: str) -> None:
        async with watch.Watch() as stream:
            async for event in stream.stream(
                self._core.list_namespaced_pod,
                self._namespace,
                field_selector=f"metadata.name={self._pod}",
                resource_version=resource_version,
                timeout_seconds=int(DEADLINE_S * 6),
            ):
                pod = event["object"]
                statuses = {c.type: c.status for c in pod.status.conditions or []}
                self.versions.append((statuses.get("Ready"), statuses.get(SERVING_CONDITION)))
                self.last_version = pod.metadata.resource_version

    async def stop_at(self, resource_version: str) -> None:
        """Wait until the watch has reported ``resource_version``, then stop watching."""

        async def last_version() -> str:
            return self.last_version

        await eventually(last_version, lambda v: v == resource_version, "watch caught up")
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def ready_turned_true_without_gate(self) -> list[int]:
        """Return the indexes of versions where Ready turned True while the gate was not True."""
        return [
            i
            for i in range(1, len(self.versions))
            if self.versions[i][0] == "True"
            and self.versions[i - 1][0] != "True"
            and self.versions[i][1] != "True"
        ]


@pytest.mark.timeout(120)  # a control plane of its own, plus the controller's grace period
async def test_lifecycle_controller_marks_silent_node(
    tmp_path: Path, control_plane_bin_dir: Path
) -> None:
    """With the node lifecycle controller, a down Node only falls silent and upstream reacts."""
    options = ControlPlaneOptions(
        node_lifecycle_controller=True,
        node_monitor_grace_period_s=LIFECYCLE_GRACE_S,
        remove_work_dir=True,
    )
    async with ControlPlane(tmp_path / "plane", control_plane_bin_dir, options) as plane:
        other = await config.new_client_from_config(
            config_file=str(plane.kubeconfig), persist_config=False
        )
        async with other:
            await cluster.create_namespace(other, "lab")
            await cluster.create_edge_node(other, "edge-1", "region-a", "198.18.10.2")
            await cluster.create_pod(other, "lab", "plain", "edge-1", {}, readiness_gate=False)
            await eventually(ready_of(other, "lab", "plain"), lambda s: s == "True", "Ready")
            await cluster.set_node_down(other, "edge-1", True)

            await stays(
                lambda: cluster.node_condition(other, "edge-1"),
                lambda s: s == "True",
                LIFECYCLE_GRACE_S / 2,
            )
            await eventually(
                lambda: cluster.node_condition(other, "edge-1"),
                lambda s: s == "Unknown",
                "Node Unknown after the grace period",
                LIFECYCLE_GRACE_S + LIFECYCLE_MONITOR_PERIOD_S + DEADLINE_S,
            )
            await eventually(
                ready_of(other, "lab", "plain"), lambda s: s == "False", "Pod marked NotReady"
            )


def processes_mentioning(path: Path) -> list[str]:
    """Return the command lines of running processes that mention ``path``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # the process ended while we looked
        command = " ".join(arg.decode(errors="replace") for arg in argv)
        if str(path) in command:
            found.append(command)
    return found


async def test_gated_pod_ready_only_when_serving(api: ApiClient, namespace: str, node: str) -> None:
    history = ConditionHistory(api, namespace, "p1")
    await history.start()
    await start_gated_pod(api, namespace, node, "p1")

    pod = await read_pod(api, namespace, "p1")
    await history.stop_at(pod.metadata.resource_version)
    assert [ready for ready, _ in history.versions if ready == "True"] == [], history.versions
    conditions = await cluster.pod_conditions(api, namespace, "p1")
    assert pod.status.pod_ip, "KWOK gives a running Pod an IP"
    assert all(status.ready for status in pod.status.container_statuses)
    assert conditions["ContainersReady"] == "True"
    assert conditions["Ready"] == "False"
    assert SERVING_CONDITION not in conditions, "no stage writes the isolator's gate"
    await eventually(
        lambda: endpoint_readiness(api, namespace),
        lambda endpoints: endpoints.get("p1") is False,
        "not-ready endpoint",
    )

    await cluster.set_pod_condition(api, namespace, "p1", SERVING_CONDITION, True)

    await eventually(ready_of(api, namespace, "p1"), lambda s: s == "True", "Ready=True")
    await eventually(endpoints_of(api, namespace), lambda ready: "p1" in ready, "ready endpoint")


async def test_serving_false_makes_pod_not_ready(api: ApiClient, namespace: str, node: str) -> None:
    await start_gated_pod(api, namespace, node, "p1")
    await cluster.set_pod_condition(api, namespace, "p1", SERVING_CONDITION, True)
    await eventually(endpoints_of(api, namespace), lambda ready: "p1" in ready, "ready endpoint")

    await cluster.set_pod_condition(api, namespace, "p1", SERVING_CONDITION, False)

    await eventually(ready_of(api, namespace, "p1"), lambda s: s == "False", "Ready=False")
    await eventually(
        endpoints_of(api, namespace), lambda ready: "p1" not in ready, "endpoint not ready"
    )
    conditions = await cluster.pod_conditions(api, namespace, "p1")
    assert conditions[SERVING_CONDITION] == "False"
    assert conditions["ContainersReady"] == "True"


async def test_ready_follows_gate_flips(api: ApiClient, namespace: str, node: str) -> None:
    """Rapid gate flips race KWOK's Ready writes: Ready never turns True on a gate that is not."""
    await start_gated_pod(api, namespace, node, "p1")
    history = ConditionHistory(api, namespace, "p1")
    await history.start()

    for flip in range(FLIPS):
        await cluster.set_pod_condition(api, namespace, "p1", SERVING_CONDITION, flip % 2 == 0)
    await cluster.set_pod_condition(api, namespace, "p1", SERVING_CONDITION, False)

    await eventually(ready_of(api, namespace, "p1"), lambda s: s == "False", "Ready=False")
    last = await stays(lambda: read_pod(api, namespace, "p1"), pod_not_ready, 2.0)
    await history.stop_at(last.metadata.resource_version)
    assert history.ready_turned_true_without_gate() == [], history.versions
    await eventually(
        endpoints_of(api, namespace), lambda ready: "p1" not in ready, "endpoint not ready"
    )


async def test_cut_with_gate_false_holds(api: ApiClient, namespace: str, node: str) -> None:
    """The isolator's cut of a dead kubelet's Pod: Ready and the gate False in one status write."""
    await start_gated_pod(api, namespace, node, "p1")
    await cluster.set_pod_condition(api, namespace, "p1", SERVING_CONDITION, True)
    await eventually(ready_of(api, namespace, "p1"), lambda s: s == "True", "Ready=True")

    patch = {
        "status": {
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "NodeFailed"},
                {"type": SERVING_CONDITION, "status": "False", "reason": "NodeFailed"},
            ]
        }
    }
    await client.CoreV1Api(api).patch_namespaced_pod_status("p1", namespace, patch)

    await stays(ready_of(api, namespace, "p1"), lambda s: s == "False", 2.0)
    await eventually(
        endpoints_of(api, namespace), lambda ready: "p1" not in ready, "endpoint not ready"
    )


async def test_pod_without_gate_becomes_ready(api: ApiClient, namespace: str, node: str) -> None:
    await cluster.create_service(api, namespace, "web", {"app": "web"}, SERVICE_PORT)
    await cluster.create_pod(api, namespace, "plain", node, {"app": "web"}, readiness_gate=False)

    await eventually(ready_of(api, namespace, "plain"), lambda s: s == "True", "Ready=True")
    await eventually(endpoints_of(api, namespace), lambda ready: "plain" in ready, "endpoint")


async def test_node_down_leaves_pods_alone(api: ApiClient, namespace: str, node: str) -> None:
    await start_gated_pod(api, namespace, node, "p1")
    await cluster.set_pod_condition(api, namespace, "p1", SERVING_CONDITION, True)
    await eventually(ready_of(api, namespace, "p1"), lambda s: s == "True", "Ready=True")
    before = (await read_pod(api, namespace, "p1")).status.conditions

    await cluster.set_node_down(api, node, True)

    await eventually(lambda: cluster.node_condition(api, node), lambda s: s == "Unknown", "down")
    # Give KWOK time to act on the Pod if a stage wrongly did.
    await stays(
        lambda: read_pod(api, namespace, "p1"), lambda p: p.status.conditions == before, 1.0
    )
    await eventually(endpoints_of(api, namespace), lambda ready: "p1" in ready, "endpoint kept")

    await cluster.set_node_down(api, node, False)

    await eventually(lambda: cluster.node_condition(api, node), lambda s: s == "True", "up")


async def test_down_node_pods_keep_isolator_cut(api: ApiClient, namespace: str, node: str) -> None:
    """A dead kubelet recomputes nothing: Ready=False written by the isolator holds until it
    comes back, and the Lease stops being renewed."""
    await cluster.create_service(api, namespace, "web", {"app": "web"}, SERVICE_PORT)
    await cluster.create_pod(api, namespace, "plain", node, {"app": "web"}, readiness_gate=False)
    await eventually(ready_of(api, namespace, "plain"), lambda s: s == "True", "Ready=True")
    await cluster.set_node_down(api, node, True)
    lease = await client.CoordinationV1Api(api).read_namespaced_lease(node, "kube-node-lease")

    await cluster.set_pod_condition(api, namespace, "plain", "Ready", False, reason="NodeFailed")

    # Longer than KWOK's Lease renewal interval of 2.5 s, so a renewal would show.
    await stays(ready_of(api, namespace, "plain"), lambda s: s == "False", 3.0)
    frozen = await client.CoordinationV1Api(api).read_namespaced_lease(node, "kube-node-lease")
    assert frozen.spec.renew_time == lease.spec.renew_time

    await cluster.set_node_down(api, node, False)

    await eventually(ready_of(api, namespace, "plain"), lambda s: s == "True", "Ready=True again")
    await eventually(lambda: cluster.node_condition(api, node), lambda s: s == "True", "up")


async def test_node_keeps_internal_ip(api: ApiClient, node: str) -> None:
    await cluster.set_node_down(api, node, True)
    await eventually(lambda: cluster.node_condition(api, node), lambda s: s == "Unknown", "down")
    await cluster.set_node_down(api, node, False)
    await eventually(lambda: cluster.node_condition(api, node), lambda s: s == "True", "up")

    read = await client.CoreV1Api(api).read_node(node)
    addresses = {a.type: a.address for a in read.status.addresses}
    assert addresses["InternalIP"] == "198.18.10.1"
    assert read.metadata.labels["topology.kubernetes.io/region"] == "region-a"


async def test_node_lease_renewed(api: ApiClient, node: str) -> None:
    leases = client.CoordinationV1Api(api)

    async def renew_time() -> object:
        try:
            lease = await leases.read_namespaced_lease(node, "kube-node-lease")
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return lease.spec.renew_time

    first = await eventually(renew_time, lambda t: t is not None, "Lease created")
    await eventually(renew_time, lambda t: t != first, "Lease renewed")


async def test_deleted_pod_with_finalizer_goes(api: ApiClient, namespace: str, node: str) -> None:
    core = client.CoreV1Api(api)
    await start_gated_pod(api, namespace, node, "p1")
    await core.patch_namespaced_pod(
        "p1", namespace, {"metadata": {"finalizers": ["isolator.lab/test"]}}
    )

    await core.delete_namespaced_pod("p1", namespace)

    async def exists() -> bool:
        try:
            await read_pod(api, namespace, "p1")
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    await eventually(exists, lambda present: not present, "Pod deleted")


async def test_user_identity_has_no_rights(control_plane: ControlPlane) -> None:
    kubeconfig = control_plane.user_kubeconfig("lab-viewer", ["lab-group"])
    viewer = await config.new_client_from_config(config_file=str(kubeconfig), persist_config=False)

    async with viewer:
        with pytest.raises(ApiException) as raised:
            await client.CoreV1Api(viewer).list_namespaced_pod("default")

    assert raised.value.status == 403
    assert "lab-viewer" in str(raised.value.body)


async def test_stop_leaves_no_process(tmp_path: Path, control_plane_bin_dir: Path) -> None:
    work_dir = tmp_path / "plane"
    plane = ControlPlane(work_dir, control_plane_bin_dir, ControlPlaneOptions(remove_work_dir=True))
    await plane.start()
    assert len(plane.pids) == 4
    assert len(processes_mentioning(work_dir)) == 4

    await plane.stop()
    await plane.stop()

    assert processes_mentioning(work_dir) == []
    assert plane.pids == []
    assert not work_dir.exists()


async def test_failed_start_stops_everything(tmp_path: Path, control_plane_bin_dir: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("etcd", "kube-controller-manager", "kwok"):
        (bin_dir / name).symlink_to(control_plane_bin_dir / name)
    broken = bin_dir / "kube-apiserver"
    broken.write_text("#!/bin/sh\necho 'unknown flag: --broken' >&2\nexit 1\n")
    broken.chmod(broken.stat().st_mode | stat.S_IXUSR)
    work_dir = tmp_path / "plane"
    plane = ControlPlane(work_dir, bin_dir)

    with pytest.raises(ProcessFailedError, match="unknown flag: --broken"):
        await plane.start()

    assert (work_dir / "logs" / "etcd.log").exists(), "etcd ran before the API server failed"
    assert processes_mentioning(work_dir) == []
