"""KubernetesSource: the edge-node inventory, and the cut, restore and read-back of traffic.

Nothing here deletes or evicts a Pod. A cut takes Pods out of their Services' ready endpoints
through Pod conditions (see ``pods``), edits the endpoints of Services without a selector
directly (see ``selectorless``), and a split horizon moves a region's cloud-side Ingress routes
to a fallback (see ``horizon``). Every change records what it replaced on the object it changed,
so restore is exact and a restarted isolator rebuilds its state from those records alone.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.config.config_exception import ConfigException

from isolator.clock import Clock, SystemClock
from isolator.model import REGION_LABEL, EdgeNode
from isolator.sources.kubernetes import patches, recorded
from isolator.sources.kubernetes.census import CensusReader, EndpointCensus
from isolator.sources.kubernetes.client import CONFLICT, NOT_FOUND, KubernetesClient
from isolator.sources.kubernetes.errors import MAX_ATTEMPTS, KubernetesError
from isolator.sources.kubernetes.heldcuts import CutDrift, HeldCut, HeldCutReader
from isolator.sources.kubernetes.horizon import IngressHorizon, SplitRequest, SplitResult
from isolator.sources.kubernetes.patches import CutScope, Json, Owner
from isolator.sources.kubernetes.pods import CutRequest, PodCuts, Restored
from isolator.sources.kubernetes.readback import EndpointReader, name_pods
from isolator.sources.kubernetes.recorded import RecordedIsolation
from isolator.sources.kubernetes.selectorless import NODE_OWNER, POD_OWNER, SelectorlessEndpoints
from isolator.sources.kubernetes.writes import PendingEvents, PodWriter, log_conflict

logger = logging.getLogger(__name__)

# Times a cut is applied again within one read-back after another writer undid it. More than
# that is a fight with a controller or webhook, which a person must settle.
MAX_REAPPLY = 2


@dataclass(frozen=True)
class ActionResult:
    """Outcome of a cut or restore: the Pods changed and whether reading back confirms it."""

    node: str  # the node of the Pods acted on
    pods: tuple[str, ...]  # "namespace/name" of every Pod changed (or, on restore, put back)
    verified: bool  # the EndpointSlices and edited endpoints read back show the intended state
    detail: str  # one line for a person: what was done and what was read back
    objects: tuple[str, ...] = ()  # "Kind namespace/name" of selector-less endpoints edited
    scope: str = CutScope.NODE.value  # the CutScope of a cut


def _rfc3339(wall_s: float | None) -> str | None:
    return None if wall_s is None else patches.rfc3339(wall_s)


def _owned_by_pod(pod: Json) -> bool:
    record = patches.read_record(pod)
    return record is not None and record.owner is Owner.POD


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
        agent_scheme: str = "http",
        dry_run: bool,
        clock: Clock,
        verify_timeout_s: float,
        poll_interval_s: float,
        instance: str,
    ) -> None:
        self._kube = kube
        self._agent_port = agent_port
        self._agent_scheme = agent_scheme
        self._dry_run = dry_run
        self._clock = clock
        self._verify_timeout_s = verify_timeout_s
        self._poll_interval_s = poll_interval_s
        self._writer = PodWriter(kube, clock=clock, instance=instance)
        self._reader = EndpointReader(kube, clock=clock, poll_interval_s=poll_interval_s)
        self._pods = PodCuts(self._writer, clock=clock)
        self._endpoints = SelectorlessEndpoints(kube, self._writer)
        self._horizon = IngressHorizon(kube, self._writer, clock=clock)
        self._held = HeldCutReader(kube, self._writer)
        self._census = CensusReader(kube)

    @classmethod
    async def create(
        cls,
        kubeconfig: str | None,
        agent_port: int,
        dry_run: bool = False,
        *,
        agent_scheme: str = "http",
        clock: Clock | None = None,
        verify_timeout_s: float = 5.0,
        request_timeout_s: float = 5.0,
        poll_interval_s: float = 0.25,
    ) -> KubernetesSource:
        """Connect with a kubeconfig file, or with the in-cluster service account when None.

        ``verify_timeout_s`` bounds the read-back after a cut or restore, ``request_timeout_s``
        each request, and ``poll_interval_s`` is the pause between EndpointSlice reads, all in
        seconds. ``agent_scheme`` is the scheme of the agents' URLs: https when they serve TLS.
        """
        clock = clock or SystemClock()
        api_client = await _load_api_client(kubeconfig)
        kube = KubernetesClient(api_client, clock=clock, request_timeout_s=request_timeout_s)
        return cls(
            kube,
            agent_port=agent_port,
            agent_scheme=agent_scheme,
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
            url = f"{self._agent_scheme}://{host}:{self._agent_port}"
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

    async def _pods_on(self, node: str, label_selector: str | None = None) -> Sequence[Json]:
        field_selector = f"spec.nodeName={node}"
        if label_selector:
            return await self._kube.list_pods(field_selector, label_selector)
        return await self._kube.list_pods(field_selector=field_selector)

    async def endpoint_census(self, ingress_selector: str) -> EndpointCensus:
        """Count every Service's ready endpoints; Pods the isolator cut count as not ready.

        ``ingress_selector`` is the label selector of the ingress controller's Pods, the only
        Pods that an ingress-scope cut takes out.
        """
        return await self._census.read(ingress_selector)

    # Serving gate

    async def ensure_serving(self, node: str) -> int:
        """Set the serving condition True on the node's gated Pods that are not cut.

        The isolator owns the readiness gate, so a Pod that declares it never becomes ready
        unless the isolator sets it. Returns how many Pods were changed. In dry run it only
        logs them and returns 0, so gated Pods stay unready under a dry-run isolator.
        """
        targets = [pod for pod in await self._pods_on(node) if patches.needs_serving(pod)]
        return await self._serve(targets, f"node {node}")

    async def ensure_serving_nodes(self, nodes: Collection[str]) -> int:
        """Do what ensure_serving does for every node in ``nodes``, from one list of all Pods.

        The periodic pass over every healthy node uses this: one list per node would cost as
        many requests as there are nodes, every inventory refresh.
        """
        if not nodes:
            return 0
        wanted = set(nodes)
        targets = [
            pod
            for pod in await self._kube.list_pods()
            if (pod.get("spec") or {}).get("nodeName") in wanted and patches.needs_serving(pod)
        ]
        return await self._serve(targets, f"{len(wanted)} healthy nodes")

    async def _serve(self, targets: Sequence[Json], where: str) -> int:
        if self._dry_run:
            for pod in targets:
                logger.info(
                    "Dry run: would set the serving condition",
                    extra={"where": where, "pod": patches.pod_key(pod)},
                )
            return 0
        operation = f"set the serving condition on {where}"
        changed = await self._writer.for_each(targets, self._set_serving, operation, where)
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

    async def cut_node(
        self,
        node: str,
        reason: str,
        incident: str,
        *,
        scope: str = CutScope.NODE,
        pod_selector: str | None = None,
        who: str | None = None,
        expires_at: float | None = None,
        dry_run: bool = False,
    ) -> ActionResult:
        """Take the node's Pods in ``scope`` out of their Services' ready endpoints, read back.

        ``scope`` is a CutScope value. In the INGRESS scope only the Pods that match
        ``pod_selector`` (a label selector naming the ingress controller's Pods) are cut.
        ``who`` names the person behind a manual isolation, which ends at ``expires_at``
        (wall-clock seconds). A Pod already cut keeps its record, and its status is cut again
        if something reverted it. Pods that have finished (Succeeded or Failed) are left alone.
        """
        cut_scope = CutScope(scope)
        if cut_scope is CutScope.INGRESS and not pod_selector:
            raise ValueError("an ingress cut needs the label selector of the controller's Pods")
        selector = pod_selector if cut_scope is CutScope.INGRESS else None
        pods = [pod for pod in await self._pods_on(node, selector) if not patches.is_terminal(pod)]
        request = CutRequest(reason, incident, cut_scope, Owner.NODE, who, _rfc3339(expires_at))
        return await self._cut(
            pods, request, node=node, owner=f"{NODE_OWNER}{node}", dry_run=dry_run
        )

    async def cut_pod(
        self,
        pod: str,
        reason: str,
        incident: str,
        *,
        who: str | None = None,
        expires_at: float | None = None,
        dry_run: bool = False,
    ) -> ActionResult:
        """Take one Pod ("namespace/name") out of its Services' ready endpoints, read back.

        The cut sets Ready and the serving gate False, as for a dead kubelet, and belongs to the
        Pod alone: a restore of its node leaves it in place. Raises KubernetesError with status
        404 when the Pod does not exist.
        """
        namespace, name = patches.split_pod_key(pod)
        found = await self._kube.read_pod(namespace, name)
        if found is None:
            raise KubernetesError(f"Pod {pod} not found", status=NOT_FOUND)
        node = (found.get("spec") or {}).get("nodeName") or ""
        request = CutRequest(reason, incident, CutScope.NODE, Owner.POD, who, _rfc3339(expires_at))
        pods = [] if patches.is_terminal(found) else [found]
        return await self._cut(pods, request, node=node, owner=f"{POD_OWNER}{pod}", dry_run=dry_run)

    async def _cut(
        self, pods: Sequence[Json], request: CutRequest, *, node: str, owner: str, dry_run: bool
    ) -> ActionResult:
        extra = {"node": node, "incident": request.incident, "scope": request.scope.value}
        subject = owner.replace(":", " ", 1)
        if self._dry_run or dry_run:
            planned = sorted(
                patches.pod_key(pod)
                for pod in pods
                if not (patches.is_cut(pod) and patches.is_cut_applied(pod, request.scope))
            )
            for key in planned:
                logger.info("Dry run: would cut Pod", extra={**extra, "pod": key})
            detail = (
                f"dry run: would cut {len(planned)} of {len(pods)} Pods of {subject} "
                f"({request.scope.value} scope) for incident {request.incident}; "
                "nothing was written"
            )
            return ActionResult(node, tuple(planned), False, detail, scope=request.scope.value)

        events = PendingEvents(self._writer)

        async def cut(pod: Json) -> str | None:
            return await self._pods.cut(pod, request, node=node, events=events)

        changed = await self._writer.for_each(pods, cut, f"cut {subject}", node)
        changed_keys = tuple(sorted(key for key in changed if key))
        at = patches.rfc3339(self._clock.wall())
        objects = await self._endpoints.cut(
            pods, owner=owner, incident=request.incident, at=at, note=request.describe()
        )
        if changed_keys and owner.startswith(NODE_OWNER):
            note = (
                f"Traffic cut to {len(changed_keys)} Pods ({request.scope.value} scope) for "
                f"incident {request.incident}: {request.reason}"
            )
            events.add_node(node, patches.CUT_REASON, "Cut", note, warning=True)

        keys = [patches.pod_key(pod) for pod in pods]
        # The Events are created while the cut is read back: neither waits for the other.
        (verified, seen), _ = await asyncio.gather(
            self._read_back_cut(keys, request, node=node), events.flush()
        )
        namespaces = {patches.split_pod_key(key)[0] for key in keys}
        pending = await self._endpoints.pending(namespaces, owner=owner, cut=True)
        if pending:
            verified = False
            seen = f"{seen}; endpoints still ready in {name_pods(pending)}"
        edits = f", {len(objects)} selector-less endpoint objects" if objects else ""
        detail = (
            f"cut {len(changed_keys)} of {len(keys)} Pods{edits} of {subject} "
            f"({request.scope.value} scope) for incident {request.incident}; {seen}"
        )
        logger.info(
            "Cut finished", extra={**extra, "pods": len(changed_keys), "verified": verified}
        )
        return ActionResult(
            node, changed_keys, verified, detail, objects=tuple(objects), scope=request.scope.value
        )

    async def _read_back_cut(
        self, keys: Sequence[str], request: CutRequest, *, node: str
    ) -> tuple[bool, str]:
        """Read the cut back, applying it again when another writer undid it, at most
        MAX_REAPPLY times within the verify timeout.

        The verify timeout is split into rounds. A round succeeds when the EndpointSlices show
        every Pod not ready and, one poll interval later, every Pod's status still shows the
        cut: a controller or an admission webhook that sets Ready back does so within moments
        of the cut. After a round that fails, the Pods whose record is there but whose status
        no longer shows the cut are cut again.
        """
        rounds = MAX_REAPPLY + 1
        reapplied = 0
        verified, seen = False, ""
        for round_number in range(1, rounds + 1):
            verified, seen = await self._reader.read_back(
                keys, ready=False, timeout_s=self._verify_timeout_s / rounds
            )
            if verified:
                await self._clock.sleep(self._poll_interval_s)
            elif round_number == rounds:
                break
            reverted = await self._reverted(keys, node)
            if verified and not reverted:
                break
            if reverted:
                verified = False
                seen = f"{len(reverted)} of {len(keys)} Pods no longer show the cut"
            if not reverted or round_number == rounds:
                continue
            logger.warning(
                "Cut was undone by another writer, applying it again",
                extra={"node": node, "pods": name_pods(sorted(map(patches.pod_key, reverted)))},
            )

            await self._cut_again(reverted, request, node)
            reapplied += 1
        if reapplied:
            seen = (
                f"{seen}; another writer undid the cut, applied again {reapplied} times "
                f"(at most {MAX_REAPPLY})"
            )
        return verified, seen

    async def _cut_again(self, pods: Sequence[Json], request: CutRequest, node: str) -> None:
        events = PendingEvents(self._writer)

        async def cut(pod: Json) -> str | None:
            return await self._pods.cut(pod, request, node=node, events=events)

        await self._writer.for_each(pods, cut, f"cut node {node} again", node)
        await events.flush()

    async def _reverted(self, keys: Sequence[str], node: str) -> list[Json]:
        """Return the Pods among ``keys`` that carry a record but whose status is not cut."""
        wanted = set(keys)
        if node:
            pods = [p for p in await self._pods_on(node) if patches.pod_key(p) in wanted]
        else:
            read = [await self._kube.read_pod(*patches.split_pod_key(key)) for key in keys]
            pods = [pod for pod in read if pod is not None]
        reverted = []
        for pod in pods:
            record = patches.read_record(pod)
            if record is not None and not patches.is_cut_applied(pod, record.scope):
                reverted.append(pod)
        return reverted

    # Restore

    async def restore_node(
        self, node: str, incident: str, *, dry_run: bool = False
    ) -> ActionResult:
        """Put back the conditions recorded on the node's cut Pods, remove the records, read back.

        Pods isolated on their own keep their cut. Only Pods whose Ready was True before the
        cut, and that some Service selects, are expected back in the ready endpoints. A second
        call finds no record and changes nothing.
        """
        on_node = await self._pods_on(node)
        pods = [pod for pod in on_node if patches.is_cut(pod) and not _owned_by_pod(pod)]
        namespaces = {patches.split_pod_key(patches.pod_key(pod))[0] for pod in on_node}
        return await self._restore(
            pods,
            node=node,
            owner=f"{NODE_OWNER}{node}",
            namespaces=namespaces,
            incident=incident,
            dry_run=dry_run,
        )

    async def restore_pod(self, pod: str, incident: str, *, dry_run: bool = False) -> ActionResult:
        """Put back what the cut of one Pod ("namespace/name") replaced, and read it back.

        This also ends a node cut's hold on the Pod. Raises KubernetesError with status 404 when
        the Pod does not exist.
        """
        namespace, name = patches.split_pod_key(pod)
        found = await self._kube.read_pod(namespace, name)
        if found is None:
            raise KubernetesError(f"Pod {pod} not found", status=NOT_FOUND)
        node = (found.get("spec") or {}).get("nodeName") or ""
        pods = [found] if patches.is_cut(found) else []
        return await self._restore(
            pods,
            node=node,
            owner=f"{POD_OWNER}{pod}",
            namespaces={namespace},
            incident=incident,
            dry_run=dry_run,
        )

    async def _restore(
        self,
        pods: Sequence[Json],
        *,
        node: str,
        owner: str,
        namespaces: set[str],
        incident: str,
        dry_run: bool,
    ) -> ActionResult:
        extra = {"node": node, "incident": incident}
        subject = owner.replace(":", " ", 1)
        if self._dry_run or dry_run:
            planned = sorted(patches.pod_key(pod) for pod in pods)
            for key in planned:
                logger.info("Dry run: would restore Pod", extra={**extra, "pod": key})
            detail = (
                f"dry run: would restore {len(planned)} Pods of {subject} for incident "
                f"{incident}; nothing was written"
            )
            return ActionResult(node, tuple(planned), verified=False, detail=detail)

        events = PendingEvents(self._writer)

        async def restore(pod: Json) -> Restored | None:
            return await self._pods.restore(pod, node=node, incident=incident, events=events)

        outcomes = await self._writer.for_each(pods, restore, f"restore {subject}", node)
        restored = [outcome for outcome in outcomes if outcome is not None]
        keys = tuple(sorted(outcome.key for outcome in restored))
        note = f"Traffic restored by the isolator after incident {incident}"
        objects = await self._endpoints.restore(namespaces, owner=owner, note=note)
        if keys and owner.startswith(NODE_OWNER):
            note = f"Traffic restored to {len(keys)} Pods after incident {incident}"
            events.add_node(node, patches.RESTORE_REASON, "Restore", note, warning=False)

        expected = await self._reader.expected_ready(
            [outcome.pod for outcome in restored if outcome.was_ready]
        )
        (verified, seen), _ = await asyncio.gather(
            self._reader.read_back(expected, ready=True, timeout_s=self._verify_timeout_s),
            events.flush(),
        )
        pending = await self._endpoints.pending(namespaces, owner=owner, cut=False)
        if pending:
            verified = False
            seen = f"{seen}; endpoint records left in {name_pods(pending)}"
        edits = f", {len(objects)} selector-less endpoint objects" if objects else ""
        detail = f"restored {len(keys)} Pods{edits} of {subject} for incident {incident}; {seen}"
        logger.info("Restore finished", extra={**extra, "pods": len(keys), "verified": verified})
        return ActionResult(node, keys, verified=verified, detail=detail, objects=tuple(objects))

    # Split horizon

    async def split_region(
        self,
        region: str,
        reason: str,
        incident: str,
        *,
        region_label: str,
        fallbacks: Mapping[str, str],
        who: str | None = None,
        expires_at: float | None = None,
        dry_run: bool = False,
    ) -> SplitResult:
        """Move the region's cloud-side Ingress routes to its fallback Service, and read back.

        Ingresses are those labelled ``region_label=<region>``; ``fallbacks`` maps a region to
        "service" or "service:port". Nothing inside the site is touched.
        """
        request = SplitRequest(region, reason, incident, who, _rfc3339(expires_at))
        return await self._horizon.split(
            request,
            region_label=region_label,
            fallbacks=fallbacks,
            dry_run=self._dry_run or dry_run,
        )

    async def restore_region(
        self, region: str, incident: str, *, dry_run: bool = False
    ) -> SplitResult:
        """Put back exactly the Ingress specs that a split of the region replaced."""
        return await self._horizon.rejoin(region, incident, dry_run=self._dry_run or dry_run)

    async def recorded_isolations(self) -> list[RecordedIsolation]:
        """Rebuild every isolation from the cut and split records that Kubernetes holds."""
        isolations = recorded.isolations_from_pods(await self._kube.list_pods())
        return isolations + recorded.isolations_from_ingresses(await self._horizon.recorded())

    # Read-back

    async def check_held_cuts(self, held: Sequence[HeldCut]) -> list[CutDrift]:
        """Read verified cuts back; return those that something undid since.

        Every object found undone gets a Warning Event naming its last writer (see
        ``heldcuts``).
        """
        return await self._held.check(held)

    async def verify(self, pods: Sequence[str], ready: bool, timeout_s: float) -> bool:
        """Poll the EndpointSlices in each Pod's namespace until every Pod's endpoints show
        ``ready``, or until ``timeout_s`` seconds pass. For ready=False a Pod without endpoints
        counts as done."""
        verified, _ = await self._reader.read_back(pods, ready=ready, timeout_s=timeout_s)
        return verified
