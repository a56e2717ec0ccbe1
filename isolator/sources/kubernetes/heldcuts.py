"""Reading held cuts back after their verification, to notice a writer that undid one.

A cut is verified once, right after it is written. Something may undo it later: a kubelet that
marks a Pod ready again, a person who edits a Pod or an EndpointSlice, a deployment tool that
reapplies an Ingress. One check lists the Pods once, the EndpointSlices of each namespace that
contains a cut Pod once, and the Ingresses once, however many cuts it covers. Each object found
undone gets a Warning Event that names the last writer of the undone fields, taken from the
object's managedFields.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from isolator.model import SERVING_CONDITION
from isolator.sources.kubernetes import patches
from isolator.sources.kubernetes.client import FIELD_MANAGER, KubernetesClient
from isolator.sources.kubernetes.endpoints import endpoint_readiness
from isolator.sources.kubernetes.events import object_reference
from isolator.sources.kubernetes.horizon import INGRESS_API, Fallback, SplitRecord, split_spec
from isolator.sources.kubernetes.patches import CutScope, Json, Owner
from isolator.sources.kubernetes.readback import name_pods
from isolator.sources.kubernetes.recorded import TargetKind
from isolator.sources.kubernetes.selectorless import (
    ENDPOINTS_ANNOTATION,
    NODE_OWNER,
    POD_OWNER,
    SLICE_API,
    owned_still_ready,
)
from isolator.sources.kubernetes.writes import PodWriter

logger = logging.getLogger(__name__)

UNDONE_REASON = "IsolatorCutUndone"

# managedFields paths (FieldsV1 keys) of the fields that undo each kind of cut. A write that
# changes a field takes it over, so the manager of such a field is the writer that undid it.
_READY_FIELD = ("f:status", "f:conditions", 'k:{"type":"Ready"}', "f:status")
_SERVING_FIELD = ("f:status", "f:conditions", f'k:{{"type":"{SERVING_CONDITION}"}}', "f:status")
_SLICE_FIELD = ("f:endpoints",)  # an atomic list: its last writer owns all of it
_SPLIT_RECORD_FIELD = ("f:metadata", "f:annotations", "f:isolator.io/split-horizon")


class HeldCut(Protocol):
    """A verified isolation to read back: its kind, target, scope and the objects it cut."""

    @property
    def kind(self) -> str: ...  # a TargetKind value

    @property
    def target(self) -> str: ...  # node name, "namespace/name" of a Pod, or region

    @property
    def scope(self) -> str: ...  # a CutScope value; "split" for a region

    @property
    def objects(self) -> tuple[str, ...]: ...  # "namespace/name" of its Pods or Ingresses


@dataclass(frozen=True, slots=True)
class CutDrift:
    """A held cut that something undid after its verification."""

    kind: str  # a TargetKind value
    target: str
    objects: tuple[str, ...]  # "namespace/name", or "EndpointSlice namespace/name", undone
    writer: str | None  # managedFields manager of the last write that undid it; None if unknown
    detail: str  # one line for a person: what no longer shows the cut


@dataclass(frozen=True, slots=True)
class _Undone:
    """One object whose cut no longer holds."""

    key: str
    problem: str
    writer: str | None
    regarding: dict[str, Any]


def last_writer(obj: Json, paths: Iterable[Sequence[str]]) -> str | None:
    """Return the manager, other than the isolator, that last wrote one of ``paths``.

    Each path names a field in FieldsV1 form. Its owner in managedFields is the manager that
    last changed it, so the owner of an undone field undid it. Without such an owner the
    latest write by another manager is the best guess, though managedFields times have only
    one-second resolution. None means that only the isolator wrote the object.
    """
    entries = [
        entry
        for entry in (obj.get("metadata") or {}).get("managedFields") or []
        if entry.get("manager") and entry.get("manager") != FIELD_MANAGER
    ]
    entries.sort(key=lambda entry: str(entry.get("time") or ""), reverse=True)
    for entry in entries:
        fields = entry.get("fieldsV1") or {}
        if any(_owns(fields, path) for path in paths):
            return str(entry["manager"])
    return str(entries[0]["manager"]) if entries else None


def _owns(fields: Mapping[str, Any], path: Sequence[str]) -> bool:
    node: Any = fields
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True


def changed_fields(current: Any, wanted: Any, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Return the FieldsV1 paths where ``current`` differs from ``wanted``.

    Objects are followed key by key; a list is one field, as the atomic lists of an Ingress
    spec are.
    """
    if current == wanted:
        return []
    if not isinstance(current, Mapping) or not isinstance(wanted, Mapping):
        return [prefix]
    paths = []
    for key in sorted({*current, *wanted}):
        paths += changed_fields(current.get(key), wanted.get(key), (*prefix, f"f:{key}"))
    return paths


def pod_problem(pod: Json, scope: CutScope, endpoint_ready: bool) -> str | None:
    """Return what shows a Pod's cut undone, or None while the cut holds.

    The status must still show the cut in its scope, and no EndpointSlice may list the Pod
    ready. A Pod that lost only its record still counts as cut, so that a repeated cut does not
    record the cut state as the state to restore.
    """
    record = patches.read_record(pod)
    applied = patches.is_cut_applied(pod, record.scope if record is not None else scope)
    if not applied:
        ready = patches.condition_status(pod, patches.READY_CONDITION)
        serving = patches.condition_status(pod, SERVING_CONDITION)
        return f"status shows Ready {ready} and {SERVING_CONDITION} {serving}"
    if endpoint_ready:
        return "an EndpointSlice lists it ready"
    return None


def ingress_problem(ingress: Json) -> tuple[str, list[tuple[str, ...]]] | None:
    """Return what shows an Ingress's split undone and the fields that undid it, or None while
    its routes go to the fallback."""
    record = SplitRecord.of(ingress)
    if record is None:
        return "its split record is gone", [_SPLIT_RECORD_FIELD, ("f:spec",)]
    expected = split_spec(record.spec, Fallback.parse(record.fallback))
    if ingress.get("spec") == expected:
        return None
    fields = changed_fields(ingress.get("spec"), expected, ("f:spec",))
    return f"its routes no longer go to the fallback {record.fallback}", fields


class HeldCutReader:
    """Reads verified cuts back and reports, with an Event each, the objects found undone."""

    def __init__(self, kube: KubernetesClient, writer: PodWriter) -> None:
        self._kube = kube
        self._writer = writer

    async def check(self, held: Sequence[HeldCut]) -> list[CutDrift]:
        """Return the held cuts that no longer hold, one CutDrift per cut.

        Pods and Ingresses that no longer exist count as cut, since nothing routes to them.
        """
        cuts = [cut for cut in held if cut.kind != TargetKind.REGION]
        splits = [cut for cut in held if cut.kind == TargetKind.REGION]
        found: dict[tuple[str, str], list[_Undone]] = {}
        if cuts:
            for cut, undone in await self._undone_pods(cuts):
                found.setdefault((cut.kind, cut.target), []).extend(undone)
        if splits:
            ingresses = {_key(i): i for i in await self._kube.list_ingresses()}
            for cut in splits:
                undone = self._undone_ingresses(cut, ingresses)
                if undone:
                    found.setdefault((cut.kind, cut.target), []).extend(undone)
        drifts = [_drift(kind, target, undone) for (kind, target), undone in found.items()]
        await asyncio.gather(*(self._report(drift, found) for drift in drifts))
        return drifts

    async def _undone_pods(self, cuts: Sequence[HeldCut]) -> list[tuple[HeldCut, list[_Undone]]]:
        pods = {patches.pod_key(pod): pod for pod in await self._kube.list_pods()}
        covered = {cut.target: _covered(cut, pods) for cut in cuts}
        namespaces = sorted(
            {patches.split_pod_key(key)[0] for keys in covered.values() for key in keys}
        )
        pages = await asyncio.gather(*(self._kube.list_endpoint_slices(ns) for ns in namespaces))
        slices = [endpoint_slice for page in pages for endpoint_slice in page]
        readiness = endpoint_readiness(slices)
        result = []
        for cut in cuts:
            undone = []
            for key in covered[cut.target]:
                pod = pods[key]
                problem = pod_problem(pod, CutScope(cut.scope), any(readiness.get(key, ())))
                if problem is not None:
                    writer = last_writer(pod, (_READY_FIELD, _SERVING_FIELD))
                    undone.append(_Undone(key, problem, writer, _pod_reference(pod)))
            undone += _undone_slices(cut, slices)
            if undone:
                result.append((cut, undone))
        return result

    @staticmethod
    def _undone_ingresses(cut: HeldCut, ingresses: Mapping[str, Json]) -> list[_Undone]:
        undone = []
        for key in cut.objects:
            ingress = ingresses.get(key)
            if ingress is None:
                continue
            record = SplitRecord.of(ingress)
            if record is not None and record.region != cut.target:
                continue
            found = ingress_problem(ingress)
            if found is not None:
                problem, fields = found
                writer = last_writer(ingress, fields)
                reference = object_reference(ingress, *INGRESS_API)
                undone.append(_Undone(key, problem, writer, reference))
        return undone

    async def _report(
        self, drift: CutDrift, found: Mapping[tuple[str, str], list[_Undone]]
    ) -> None:
        logger.warning(
            "Verified cut was undone",
            extra={"kind": drift.kind, "target": drift.target, "writer": drift.writer},
        )
        for undone in found[(drift.kind, drift.target)]:
            note = (
                f"Cut of {drift.kind} {drift.target} undone after it was verified: "
                f"{undone.problem}; last written by {undone.writer or 'an unknown writer'}"
            )
            await self._writer.emit_object_event(
                undone.regarding, UNDONE_REASON, "Recheck", note, warning=True
            )


def _key(obj: Json) -> str:
    return patches.pod_key(obj)  # "namespace/name", the same for any namespaced object


def _covered(cut: HeldCut, pods: Mapping[str, Json]) -> list[str]:
    """Return the keys of the live Pods a held cut covers: those it cut, and for a node also
    every Pod of the node that carries the node's cut record."""
    keys = {key for key in cut.objects if key in pods}
    if cut.kind == TargetKind.NODE:
        for key, pod in pods.items():
            record = patches.read_record(pod)
            on_node = (pod.get("spec") or {}).get("nodeName") == cut.target
            if on_node and record is not None and record.owner is Owner.NODE:
                keys.add(key)
    return sorted(key for key in keys if not patches.is_terminal(pods[key]))


def _undone_slices(cut: HeldCut, slices: Sequence[Json]) -> list[_Undone]:
    """Return the edited selector-less EndpointSlices that list the cut's endpoints ready."""
    owner = f"{NODE_OWNER if cut.kind == TargetKind.NODE else POD_OWNER}{cut.target}"
    undone = []
    for endpoint_slice in slices:
        annotations = (endpoint_slice.get("metadata") or {}).get("annotations") or {}
        if ENDPOINTS_ANNOTATION not in annotations:
            continue
        ready = owned_still_ready(endpoint_slice, SLICE_API[1], owner)
        if ready:
            key = f"{SLICE_API[1]} {_key(endpoint_slice)}"
            problem = f"it lists {', '.join(ready)} ready"
            writer = last_writer(endpoint_slice, (_SLICE_FIELD,))
            reference = object_reference(endpoint_slice, *SLICE_API)
            undone.append(_Undone(key, problem, writer, reference))
    return undone


def _pod_reference(pod: Json) -> dict[str, Any]:
    return object_reference(pod, "v1", "Pod")


def _drift(kind: str, target: str, undone: Sequence[_Undone]) -> CutDrift:
    writers = sorted({item.writer for item in undone if item.writer is not None})
    keys = [item.key for item in undone]
    detail = f"{len(keys)} objects no longer show the cut: {name_pods(keys)} ({undone[0].problem})"
    return CutDrift(kind, target, tuple(keys), ", ".join(writers) or None, detail)
