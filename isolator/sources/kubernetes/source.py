"""KubernetesSource: the edge-node inventory, and the cut, restore and read-back of Pod traffic.

Nothing here deletes or evicts a Pod. A cut first writes a record of what it replaces into an
annotation, then sets Pod conditions False through the status subresource, so the EndpointSlice
controller marks the Pod's endpoints not ready. A restore puts back what the record contains
and then removes it.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.config.config_exception import ConfigException

from isolator.clock import Clock, SystemClock
from isolator.model import CUT_ANNOTATION, REGION_LABEL, EdgeNode
from isolator.sources.kubernetes import patches
from isolator.sources.kubernetes.client import CONFLICT, NOT_FOUND, KubernetesClient
from isolator.sources.kubernetes.errors import MAX_ATTEMPTS, KubernetesError
from isolator.sources.kubernetes.patches import Json
from isolator.sources.kubernetes.readback import EndpointReader
from isolator.sources.kubernetes.writes import PodWriter, log_conflict

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActionResult:
    """Outcome of a cut or restore: the Pods changed and whether the EndpointSlices confirm it."""

    node: str
    pods: tuple[str, ...]  # "namespace/name" of every Pod changed (or, on restore, put back)
    verified: bool  # the EndpointSlices read back show the intended state
    detail: str  # one line for a person: what was done and what was read back


async def _load_api_client(kubeconfig: str | None) -> ApiClient:
    try:
        if kubeconfig is not None:
            return await config.new_client_from_config(config_file=kubeconfig, persist_config=False)
        configuration = client.Configuration()
        # The library leaves this function unannotated.
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return ApiClient(configuration)
    except (ConfigException, OSError) as err:
        source = kubeconfig or "the in-cluster service account"
        raise KubernetesError(f"cannot load Kubernetes credentials from {source}: {err}") from err


class KubernetesSource:
    """The isolator's only path to Kubernetes: inventory, cut, restore and verification."""

    def __init__(
        self,
        kube: KubernetesClient,
        *,
        agent_port: int,
        dry_run: bool,
        clock: Clock,
        verify_timeout_s: float,
        poll_interval_s: float,
        instance: str,
    ) -> None:
        self._kube = kube
        self._agent_port = agent_port
        self._dry_run = dry_run
        self._clock = clock
        self._verify_timeout_s = verify_timeout_s
        self._writer = PodWriter(kube, clock=clock, instance=instance)
        self._reader = EndpointReader(kube, clock=clock, poll_interval_s=poll_interval_s)

    @classmethod
    async def create(
        cls,
        kubeconfig: str | None,
        agent_port: int,
        dry_run: bool = False,
        *,
        clock: Clock | None = None,
        verify_timeout_s: float = 5.0,
        request_timeout_s: float = 5.0,
        poll_interval_s: float = 0.25,
    ) -> KubernetesSource:
        """Connect with a kubeconfig file, or with the in-cluster service account when None.

        ``verify_timeout_s`` bounds the read-back after a cut or restore, ``request_timeout_s``
        each request, and ``poll_interval_s`` is the pause between EndpointSlice reads, all in
        seconds.
        """
        clock = clock or SystemClock()
        api_client = await _load_api_client(kubeconfig)
        kube = KubernetesClient(api_client, clock=clock, request_timeout_s=request_timeout_s)
        return cls(
            kube,
            agent_port=agent_port,
            dry_run=dry_run,
            clock=clock,
            verify_timeout_s=verify_timeout_s,
            poll_interval_s=poll_interval_s,
            instance=f"isolator-{socket.gethostname()}",
        )

    async def close(self) -> None:
        await self._kube.close()

    # Inventory

    async def list_edge_nodes(self) -> list[EdgeNode]:
        """List Nodes with the region label; agent_url is None while a Node has no InternalIP."""
        nodes = await self._kube.list_nodes(label_selector=REGION_LABEL)
        return sorted((self._edge_node(node) for node in nodes), key=lambda node: node.name)

    def _edge_node(self, node: Json) -> EdgeNode:
        metadata = node.get("metadata") or {}
        addresses = (node.get("status") or {}).get("addresses") or []
        internal = [a.get("address") for a in addresses if a.get("type") == "InternalIP"]
        url = None
        if internal and internal[0]:
            host = f"[{internal[0]}]" if ":" in internal[0] else internal[0]
            url = f"http://{host}:{self._agent_port}"
        return EdgeNode(
            name=metadata.get("name", ""),
            region=(metadata.get("labels") or {}).get(REGION_LABEL, ""),
            agent_url=url,
        )

    async def cut_nodes(self) -> dict[str, list[str]]:
        """Map each node to the "namespace/name" of its Pods that carry the cut record."""
        result: dict[str, list[str]] = {}
        for pod in await self._kube.list_pods():
            node = (pod.get("spec") or {}).get("nodeName")
            if node and patches.is_cut(pod):
                result.setdefault(node, []).append(patches.pod_key(pod))
        return {node: sorted(pods) for node, pods in sorted(result.items())}

    async def _pods_on(self, node: str) -> Sequence[Json]:
        return await self._kube.list_pods(field_selector=f"spec.nodeName={node}")

    # Serving gate

    async def ensure_serving(self, node: str) -> int:
        """Set the serving condition True on the node's gated Pods that are not cut.

        The isolator owns the readiness gate, so a Pod that declares it never becomes ready
        unless the isolator sets it. Returns how many Pods were changed. In dry run it only
        logs them and returns 0, so gated Pods stay unready under a dry-run isolator.
        """
        targets = [pod for pod in await self._pods_on(node) if patches.needs_serving(pod)]
        if self._dry_run:
            for pod in targets:
                logger.info(
                    "Dry run: would set the serving condition",
                    extra={"node": node, "pod": patches.pod_key(pod)},
                )
            return 0
        operation = f"set the serving condition on node {node}"
        changed = await self._writer.for_each(targets, self._set_serving, operation, node)
        return sum(changed)

    async def _set_serving(self, pod: Json) -> bool:
        namespace, name = patches.split_pod_key(patches.pod_key(pod))
        current: Json | None = pod
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if current is None or not patches.needs_serving(current):
                return False
            body = patches.serving_patch(current, wall_s=self._clock.wall())
            try:
                await self._kube.patch_pod_status(namespace, name, body)
            except KubernetesError as err:
                if err.status == NOT_FOUND:
                    return False
                if err.status != CONFLICT or attempt == MAX_ATTEMPTS:
                    raise
                log_conflict(current, attempt)
                current = await self._kube.read_pod(namespace, name)
                continue
            logger.info("Serving condition set", extra={"pod": f"{namespace}/{name}"})
            return True
        return False

    # Cut

    async def cut_node(self, node: str, reason: str, incident: str) -> ActionResult:
        """Take every Pod on the node out of its Services' ready endpoints, and read it back.

        A Pod already cut keeps its record, and its status is cut again if something reverted
        it. Pods that have finished (Succeeded or Failed) are left alone.
        """
        extra = {"node": node, "incident": incident}
        pods = [pod for pod in await self._pods_on(node) if not patches.is_terminal(pod)]
        if self._dry_run:
            planned = sorted(
                patches.pod_key(pod)
                for pod in pods
                if not (patches.is_cut(pod) and patches.is_cut_applied(pod))
            )
            for key in planned:
                logger.info("Dry run: would cut Pod", extra={**extra, "pod": key})
            detail = (
                f"dry run: would cut {len(planned)} of {len(pods)} Pods on node {node} for "
                f"incident {incident}; nothing was written"
            )
            return ActionResult(node, tuple(planned), verified=False, detail=detail)

        async def cut(pod: Json) -> str | None:
            return await self._cut_pod(pod, node=node, reason=reason, incident=incident)

        changed = await self._writer.for_each(pods, cut, f"cut node {node}", node)
        changed_keys = tuple(sorted(key for key in changed if key))
        if changed_keys:
            note = f"Traffic cut to {len(changed_keys)} Pods for incident {incident}: {reason}"
            await self._writer.emit_node_event(node, patches.CUT_REASON, "Cut", note, warning=True)

        keys = [patches.pod_key(pod) for pod in pods]
        verified, seen = await self._reader.read_back(
            keys, ready=False, timeout_s=self._verify_timeout_s
        )
        detail = (
            f"cut {len(changed_keys)} of {len(keys)} Pods on node {node} for incident "
            f"{incident}; {seen}"
        )
        logger.info("Node cut", extra={**extra, "pods": len(changed_keys), "verified": verified})
        return ActionResult(node, changed_keys, verified=verified, detail=detail)

    async def _cut_pod(self, pod: Json, *, node: str, reason: str, incident: str) -> str | None:
        """Cut one Pod; return its key when anything was written, None when nothing was."""
        key = patches.pod_key(pod)
        extra = {"node": node, "pod": key, "incident": incident}
        wall_s = self._clock.wall()

        def record(current: Json) -> dict[str, Any] | None:
            if patches.is_cut(current):
                return None
            cut = patches.cut_record(current, reason=reason, incident=incident, wall_s=wall_s)
            return patches.cut_annotation_patch(cut, current["metadata"]["resourceVersion"])

        # The record goes first: if the status patch then fails, the next cut finds the
        # record and cuts the status again, and restore can still read what to put back.
        outcome = await self._writer.patch_metadata(pod, record)
        if outcome is None:
            logger.info("Pod disappeared before it was cut", extra=extra)
            return None
        pod, wrote_record = outcome
        if not wrote_record:
            if patches.is_cut_applied(pod):
                return None
            logger.warning(
                "Pod is recorded as cut but its status is not, cutting again", extra=extra
            )

        body = patches.cut_status_patch(pod, incident=incident, wall_s=self._clock.wall())
        if await self._writer.patch_status(pod, body) is None:
            logger.info("Pod disappeared before it was cut", extra=extra)
            return None
        note = f"Traffic cut by the isolator for incident {incident}: {reason}"
        await self._writer.emit_pod_event(pod, patches.CUT_REASON, "Cut", note, warning=True)
        logger.info("Pod cut", extra=extra)
        return key

    # Restore

    async def restore_node(self, node: str, incident: str) -> ActionResult:
        """Put back the conditions recorded on the node's cut Pods, remove the records, read back.

        Only Pods whose Ready was True before the cut, and that some Service selects, are
        expected back in the ready endpoints. A second call finds no record and changes nothing.
        """
        extra = {"node": node, "incident": incident}
        pods = [pod for pod in await self._pods_on(node) if patches.is_cut(pod)]
        if self._dry_run:
            planned = sorted(patches.pod_key(pod) for pod in pods)
            for key in planned:
                logger.info("Dry run: would restore Pod", extra={**extra, "pod": key})
            detail = (
                f"dry run: would restore {len(planned)} Pods on node {node} for incident "
                f"{incident}; nothing was written"
            )
            return ActionResult(node, tuple(planned), verified=False, detail=detail)

        async def restore(pod: Json) -> tuple[str, Json, bool] | None:
            return await self._restore_pod(pod, node=node, incident=incident)

        outcomes = await self._writer.for_each(pods, restore, f"restore node {node}", node)
        restored = [outcome for outcome in outcomes if outcome is not None]
        keys = tuple(sorted(key for key, _, _ in restored))
        if keys:
            note = f"Traffic restored to {len(keys)} Pods after incident {incident}"
            await self._writer.emit_node_event(
                node, patches.RESTORE_REASON, "Restore", note, warning=False
            )

        expected = await self._reader.expected_ready([pod for _, pod, ready in restored if ready])
        verified, seen = await self._reader.read_back(
            expected, ready=True, timeout_s=self._verify_timeout_s
        )
        detail = f"restored {len(keys)} Pods on node {node} for incident {incident}; {seen}"
        logger.info("Node restored", extra={**extra, "pods": len(keys), "verified": verified})
        return ActionResult(node, keys, verified=verified, detail=detail)

    async def _restore_pod(
        self, pod: Json, *, node: str, incident: str
    ) -> tuple[str, Json, bool] | None:
        """Restore one Pod; return its key, its latest state and whether Ready was True before
        the cut, or None when the Pod disappeared."""
        key = patches.pod_key(pod)
        extra = {"node": node, "pod": key, "incident": incident}
        text = patches.pod_annotations(pod)[CUT_ANNOTATION]
        wall_s = self._clock.wall()
        was_ready = False
        body: dict[str, Any] | None
        try:
            record = patches.CutRecord.from_annotation(text)
        except patches.InvalidCutRecordError as err:
            logger.warning(
                "Cut record is unreadable, restoring the serving condition only",
                extra={**extra, "error": str(err)},
            )
            body = patches.gate_only_restore_patch(pod, incident=incident, wall_s=wall_s)
        else:
            was_ready = record.previous_ready == "True"
            body = patches.restore_status_patch(pod, record, incident=incident, wall_s=wall_s)
        if patches.is_terminal(pod):
            body = None  # A finished Pod serves nothing, so only its record is removed.

        if body is not None:
            patched = await self._writer.patch_status(pod, body)
            if patched is None:
                return None
            pod = patched

        def remove(current: Json) -> dict[str, Any] | None:
            # A different record means the Pod was cut again meanwhile: that one stays.
            if patches.pod_annotations(current).get(CUT_ANNOTATION) != text:
                return None
            return patches.remove_annotation_patch(current["metadata"]["resourceVersion"])

        outcome = await self._writer.patch_metadata(pod, remove)
        if outcome is None:
            return None
        pod = outcome[0]
        note = f"Traffic restored by the isolator after incident {incident}"
        await self._writer.emit_pod_event(
            pod, patches.RESTORE_REASON, "Restore", note, warning=False
        )
        logger.info("Pod restored", extra=extra)
        return key, pod, was_ready

    # Read-back

    async def verify(self, pods: Sequence[str], ready: bool, timeout_s: float) -> bool:
        """Poll the EndpointSlices in each Pod's namespace until every Pod's endpoints show
        ``ready``, or until ``timeout_s`` seconds pass. For ready=False a Pod without endpoints
        counts as done."""
        verified, _ = await self._reader.read_back(pods, ready=ready, timeout_s=timeout_s)
        return verified
