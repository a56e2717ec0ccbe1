"""Cut and restore of the endpoints of Services without a selector.

No controller derives these endpoints from Pod state, so a Pod cut alone leaves them ready.
The isolator edits them directly: in an EndpointSlice the endpoint of a cut Pod gets
``conditions.ready: false``, and in an Endpoints object its address moves to
``notReadyAddresses``. Each edited object keeps a record of what the cut replaced in
ENDPOINTS_ANNOTATION, keyed by address, so that restore puts back exactly that.

Only objects of a selector-less Service in the cut Pod's own namespace are edited, and never an
EndpointSlice that a controller manages: the EndpointSlice controller and the mirroring
controller rebuild theirs from Pods and Endpoints within seconds. With the mirroring controller
running, the slices it mirrors from an edited Endpoints object follow that edit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from isolator.sources.kubernetes import patches
from isolator.sources.kubernetes.client import CONFLICT, NOT_FOUND, KubernetesClient
from isolator.sources.kubernetes.errors import MAX_ATTEMPTS, KubernetesError
from isolator.sources.kubernetes.events import object_reference
from isolator.sources.kubernetes.patches import Json
from isolator.sources.kubernetes.writes import PodWriter

logger = logging.getLogger(__name__)

# Record of the endpoints a cut changed in one EndpointSlice or Endpoints object.
ENDPOINTS_ANNOTATION = "isolator.io/cut-endpoints"

MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# EndpointSlices that these controllers write are rebuilt from Pods or Endpoints: never edited.
CONTROLLER_MANAGERS = frozenset(
    {"endpointslice-controller.k8s.io", "endpointslicemirroring-controller.k8s.io"}
)

# Owners of record entries: "node:<name>" for a node's cut, "pod:<namespace>/<name>" for a
# Pod isolated on its own.
NODE_OWNER = "node:"
POD_OWNER = "pod:"

SLICE_API = ("discovery.k8s.io/v1", "EndpointSlice")
ENDPOINTS_API = ("v1", "Endpoints")


@dataclass(frozen=True, slots=True)
class PodTarget:
    """A cut Pod as endpoints name it: by a Pod targetRef or by one of its IPs."""

    key: str  # "namespace/name"
    ips: frozenset[str]

    @classmethod
    def of(cls, pod: Json) -> PodTarget:
        status = pod.get("status") or {}
        ips = {item.get("ip") for item in status.get("podIPs") or []}
        ips.add(status.get("podIP"))
        return cls(patches.pod_key(pod), frozenset(ip for ip in ips if ip))


def selectorless_services(services: Iterable[Json]) -> set[str]:
    """Return the names of the Services without a selector, ExternalName Services aside."""
    names = set()
    for service in services:
        spec = service.get("spec") or {}
        if spec.get("type") != "ExternalName" and not spec.get("selector"):
            names.add((service.get("metadata") or {}).get("name", ""))
    return names


def editable_slice(endpoint_slice: Json, selectorless: set[str]) -> bool:
    """Tell whether the isolator may edit this EndpointSlice: it belongs to a selector-less
    Service and no endpoint controller manages it."""
    labels = (endpoint_slice.get("metadata") or {}).get("labels") or {}
    return (
        labels.get(SERVICE_NAME_LABEL) in selectorless
        and labels.get(MANAGED_BY_LABEL) not in CONTROLLER_MANAGERS
    )


def endpoint_records(obj: Json) -> dict[str, dict[str, Any]]:
    """Return the object's record, address -> entry; an unreadable record counts as empty."""
    text = ((obj.get("metadata") or {}).get("annotations") or {}).get(ENDPOINTS_ANNOTATION)
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        logger.warning("Endpoint record is unreadable, ignoring it", extra={"object": _name(obj)})
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, dict)}


def _name(obj: Json) -> str:
    metadata = obj.get("metadata") or {}
    return f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"


def _match(item: Json, ip: str | None, targets: Sequence[PodTarget]) -> PodTarget | None:
    """Return the target that an endpoint or address names, by its Pod targetRef or its IP."""
    reference = item.get("targetRef") or {}
    if reference.get("kind") == "Pod":
        key = f"{reference.get('namespace', '')}/{reference.get('name', '')}"
        for target in targets:
            if target.key == key:
                return target
    for target in targets:
        if ip is not None and ip in target.ips:
            return target
    return None


def _entry(target: PodTarget, owner: str, incident: str, at: str) -> dict[str, Any]:
    return {"pod": target.key, "owner": owner, "incident": incident, "at": at}


def _take_over(records: dict[str, dict[str, Any]], owner: str) -> bool:
    """Hand the entries of a Pod that is now isolated on its own to that isolation, so that
    its node's restore leaves them cut. Returns whether any entry changed hands."""
    if not owner.startswith(POD_OWNER):
        return False
    changed = False
    for entry in records.values():
        if entry.get("pod") == owner.removeprefix(POD_OWNER) and entry.get("owner") != owner:
            entry["owner"] = owner
            changed = True
    return changed


def _body(obj: Json, records: Mapping[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Build a strategic merge patch guarded by resourceVersion that also stores the record."""
    text = json.dumps(records, sort_keys=True, separators=(",", ":")) if records else None
    metadata = {
        "resourceVersion": (obj.get("metadata") or {}).get("resourceVersion"),
        "annotations": {ENDPOINTS_ANNOTATION: text},
    }
    return {"metadata": metadata, **changes}


def slice_cut_patch(
    endpoint_slice: Json, targets: Sequence[PodTarget], owner: str, incident: str, at: str
) -> dict[str, Any] | None:
    """Build the patch that marks the targets' endpoints not ready, or None when they are.

    The first cut of an endpoint records its conditions as they were; a later cut only sets
    ``ready`` False again. An isolation of one Pod takes the entry over from its node's cut.
    The endpoints list has no merge key, so the patch carries it whole.
    """
    records = endpoint_records(endpoint_slice)
    changed = False
    endpoints = []
    for endpoint in endpoint_slice.get("endpoints") or []:
        addresses = endpoint.get("addresses") or []
        target = _match(endpoint, addresses[0] if addresses else None, targets)
        if target is None or not addresses:
            endpoints.append(endpoint)
            continue
        if addresses[0] not in records:
            entry = {**_entry(target, owner, incident, at), "previous": endpoint.get("conditions")}
            records[addresses[0]] = entry
            changed = True
        conditions = dict(endpoint.get("conditions") or {})
        if conditions.get("ready") is not False:
            endpoint = {**endpoint, "conditions": {**conditions, "ready": False}}
            changed = True
        endpoints.append(endpoint)
    changed = _take_over(records, owner) or changed
    return _body(endpoint_slice, records, {"endpoints": endpoints}) if changed else None


def slice_restore_patch(endpoint_slice: Json, owner: str) -> dict[str, Any] | None:
    """Build the patch that puts back the recorded conditions of ``owner``'s endpoints."""
    records = endpoint_records(endpoint_slice)
    mine = {address for address, entry in records.items() if entry.get("owner") == owner}
    if not mine:
        return None
    endpoints = []
    for endpoint in endpoint_slice.get("endpoints") or []:
        addresses = endpoint.get("addresses") or []
        if addresses and addresses[0] in mine:
            previous = records[addresses[0]].get("previous")
            endpoint = {k: v for k, v in endpoint.items() if k != "conditions"}
            if previous is not None:
                endpoint["conditions"] = previous
        endpoints.append(endpoint)
    rest = {address: entry for address, entry in records.items() if address not in mine}
    return _body(endpoint_slice, rest, {"endpoints": endpoints})


def _uncut_order(subset: Json, records: Mapping[str, Any]) -> list[Any]:
    """Return the subset's addresses in the order they had before any recorded cut: each
    recorded address goes back to its recorded position among them."""
    full = list(subset.get("addresses") or [])
    moved = []
    for address in subset.get("notReadyAddresses") or []:
        index = (records.get(address.get("ip", "")) or {}).get("index")
        if isinstance(index, int):
            moved.append((index, address))
    for index, address in sorted(moved, key=lambda item: item[0]):
        full.insert(min(index, len(full)), address)
    return full


def _subset(subset: Json, ready: list[Any], not_ready: list[Any]) -> dict[str, Any]:
    rebuilt = {k: v for k, v in subset.items() if k not in ("addresses", "notReadyAddresses")}
    if ready:
        rebuilt["addresses"] = ready
    if not_ready:
        rebuilt["notReadyAddresses"] = not_ready
    return rebuilt


def endpoints_cut_patch(
    endpoints: Json, targets: Sequence[PodTarget], owner: str, incident: str, at: str
) -> dict[str, Any] | None:
    """Build the patch that moves the targets' addresses to notReadyAddresses, or None.

    Only addresses that were ready are recorded, since only those moved.
    """
    records = endpoint_records(endpoints)
    changed = False
    subsets = []
    for subset in endpoints.get("subsets") or []:
        ready, not_ready = [], list(subset.get("notReadyAddresses") or [])
        full = _uncut_order(subset, records)
        for address in subset.get("addresses") or []:
            target = _match(address, address.get("ip"), targets)
            if target is None:
                ready.append(address)
                continue
            # The position among the addresses as they were before any cut lets restore put
            # the address back where it was, whatever order cuts and restores come in.
            entry = {**_entry(target, owner, incident, at), "index": full.index(address)}
            records.setdefault(address.get("ip", ""), entry)
            not_ready.append(address)
            changed = True
        subsets.append(_subset(subset, ready, not_ready))
    changed = _take_over(records, owner) or changed
    return _body(endpoints, records, {"subsets": subsets}) if changed else None


def endpoints_restore_patch(endpoints: Json, owner: str) -> dict[str, Any] | None:
    """Build the patch that moves ``owner``'s recorded addresses back to ``addresses``."""
    records = endpoint_records(endpoints)
    mine = {address for address, entry in records.items() if entry.get("owner") == owner}
    if not mine:
        return None
    subsets = []
    for subset in endpoints.get("subsets") or []:
        # Addresses that other cuts keep in notReadyAddresses stay there.
        others = {
            address.get("ip")
            for address in subset.get("notReadyAddresses") or []
            if address.get("ip") in records and address.get("ip") not in mine
        }
        ready = [a for a in _uncut_order(subset, records) if a.get("ip") not in others]
        not_ready = [
            address
            for address in subset.get("notReadyAddresses") or []
            if address.get("ip") not in mine
        ]
        subsets.append(_subset(subset, ready, not_ready))
    rest = {address: entry for address, entry in records.items() if address not in mine}
    return _body(endpoints, rest, {"subsets": subsets})


def owned_still_ready(obj: Json, kind: str, owner: str) -> list[str]:
    """Return the addresses that ``owner`` recorded as cut but that the object shows ready."""
    mine = {a for a, entry in endpoint_records(obj).items() if entry.get("owner") == owner}
    if kind == SLICE_API[1]:
        ready = {
            (endpoint.get("addresses") or [""])[0]
            for endpoint in obj.get("endpoints") or []
            if (endpoint.get("conditions") or {}).get("ready") is not False
        }
    else:
        ready = {
            address.get("ip", "")
            for subset in obj.get("subsets") or []
            for address in subset.get("addresses") or []
        }
    return sorted(mine & ready)


def owned_entries(obj: Json, owner: str) -> int:
    return sum(1 for entry in endpoint_records(obj).values() if entry.get("owner") == owner)


Build = Callable[[Json], dict[str, Any] | None]


class SelectorlessEndpoints:
    """Edits, restores and reads back the endpoints of selector-less Services."""

    def __init__(self, kube: KubernetesClient, writer: PodWriter) -> None:
        self._kube = kube
        self._writer = writer

    async def editable(self, namespace: str) -> list[tuple[str, Json]]:
        """Return (kind, object) of every EndpointSlice and Endpoints object in the namespace
        that belongs to a Service without a selector. Nothing is listed beyond the Services
        when the namespace has no such Service."""
        names = selectorless_services(await self._kube.list_services(namespace))
        if not names:
            return []
        slices = await self._kube.list_endpoint_slices(namespace)
        endpoints = await self._kube.list_endpoints(namespace)
        found: list[tuple[str, Json]] = [
            (SLICE_API[1], s) for s in slices if editable_slice(s, names)
        ]
        found += [
            (ENDPOINTS_API[1], e)
            for e in endpoints
            if (e.get("metadata") or {}).get("name") in names
        ]
        return found

    async def cut(
        self, pods: Sequence[Json], *, owner: str, incident: str, at: str, note: str
    ) -> list[str]:
        """Mark the Pods' endpoints not ready; return "Kind namespace/name" of each edit."""
        by_namespace: dict[str, list[PodTarget]] = {}
        for pod in pods:
            target = PodTarget.of(pod)
            by_namespace.setdefault(patches.split_pod_key(target.key)[0], []).append(target)
        edited = []
        for namespace, targets in sorted(by_namespace.items()):
            for kind, obj in await self.editable(namespace):

                def build(
                    current: Json, kind: str = kind, targets: list[PodTarget] = targets
                ) -> Any:
                    if kind == SLICE_API[1]:
                        return slice_cut_patch(current, targets, owner, incident, at)
                    return endpoints_cut_patch(current, targets, owner, incident, at)

                if await self._patch(kind, obj, build, patches.CUT_REASON, "Cut", note):
                    edited.append(f"{kind} {_name(obj)}")
        return edited

    async def restore(self, namespaces: Iterable[str], *, owner: str, note: str) -> list[str]:
        """Put back what ``owner``'s cuts replaced; return "Kind namespace/name" of each edit."""
        edited = []
        for namespace in sorted(set(namespaces)):
            for kind, obj in await self.editable(namespace):

                def build(current: Json, kind: str = kind) -> Any:
                    if kind == SLICE_API[1]:
                        return slice_restore_patch(current, owner)
                    return endpoints_restore_patch(current, owner)

                if await self._patch(kind, obj, build, patches.RESTORE_REASON, "Restore", note):
                    edited.append(f"{kind} {_name(obj)}")
        return edited

    async def pending(self, namespaces: Iterable[str], *, owner: str, cut: bool) -> list[str]:
        """Read the objects back; return the ones not yet in the intended state.

        For a cut, every endpoint that ``owner`` recorded must show not ready. For a restore,
        no record of ``owner`` may remain.
        """
        pending = []
        for namespace in sorted(set(namespaces)):
            for kind, obj in await self.editable(namespace):
                unfinished = (
                    owned_still_ready(obj, kind, owner) if cut else owned_entries(obj, owner)
                )
                if unfinished:
                    pending.append(f"{kind} {_name(obj)}")
        return pending

    async def _patch(
        self, kind: str, obj: Json, build: Build, reason: str, action: str, note: str
    ) -> bool:
        """Apply ``build(obj)`` guarded by resourceVersion; on 409 Conflict read it again and
        rebuild, MAX_ATTEMPTS times in all. Returns whether anything was written."""
        namespace, name = patches.split_pod_key(_name(obj))
        current: Json | None = obj
        write = (
            self._kube.patch_endpoint_slice if kind == SLICE_API[1] else self._kube.patch_endpoints
        )
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if current is None:
                return False
            body = build(current)
            if body is None:
                return False
            try:
                written = await write(namespace, name, body)
            except KubernetesError as err:
                if err.status == NOT_FOUND:
                    return False
                if err.status != CONFLICT or attempt == MAX_ATTEMPTS:
                    raise
                logger.info(
                    "Endpoints changed since they were read, reading them again",
                    extra={"object": f"{kind} {namespace}/{name}", "attempt": attempt},
                )
                current = await self._reread(kind, namespace, name)
                continue
            api_version = SLICE_API[0] if kind == SLICE_API[1] else ENDPOINTS_API[0]
            reference = object_reference(written, api_version, kind)
            warning = reason == patches.CUT_REASON
            await self._writer.emit_object_event(reference, reason, action, note, warning=warning)
            logger.info("Endpoints edited", extra={"object": f"{kind} {namespace}/{name}"})
            return True
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _reread(self, kind: str, namespace: str, name: str) -> Json | None:
        listing: Callable[[str], Awaitable[list[dict[str, Any]]]] = (
            self._kube.list_endpoint_slices if kind == SLICE_API[1] else self._kube.list_endpoints
        )
        for obj in await listing(namespace):
            if (obj.get("metadata") or {}).get("name") == name:
                return obj
        return None
