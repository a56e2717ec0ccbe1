"""Rebuilding the isolations from the records in Kubernetes, for a restarted isolator.

Every cut leaves a record on each object it changed, so the records alone say what is cut, by
whom, why and until when. A node whose records do not cover every Pod the cut covers, or whose
Pods' statuses do not show the cut, is reported incomplete: the isolator stopped in the middle
of a cut or a restore, and the caller finishes the cut.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from isolator.sources.kubernetes import patches
from isolator.sources.kubernetes.horizon import SplitRecord
from isolator.sources.kubernetes.patches import CutRecord, CutScope, Json, Owner


class TargetKind(enum.StrEnum):
    """What an isolation takes out of service."""

    NODE = "node"  # every Pod of a node in the cut's scope
    POD = "pod"  # one Pod
    REGION = "region"  # a region's cloud-side Ingress routes (split horizon)


@dataclass(frozen=True, slots=True)
class RecordedIsolation:
    """One isolation as its records in Kubernetes describe it."""

    kind: TargetKind
    target: str  # node name, "namespace/name" of the Pod, or region name
    node: str  # the node of a node or Pod isolation; "" for a region
    incident: str
    reason: str
    who: str | None  # the person behind a manual isolation; None when automatic
    started_at: float | None  # wall-clock seconds of the first record
    expires_at: float | None  # wall-clock seconds at which a manual isolation ends
    scope: str  # a CutScope value for nodes and Pods; "split" for a region
    objects: tuple[str, ...]  # "namespace/name" of the Pods or Ingresses carrying a record
    complete: bool  # every object the isolation covers carries its record and shows the cut


def _seconds(text: str | None) -> float | None:
    return None if text is None else patches.parse_rfc3339(text)


def isolations_from_pods(pods: Sequence[Json]) -> list[RecordedIsolation]:
    """Group the cut records of every Pod into node and Pod isolations."""
    by_node: dict[str, list[tuple[str, CutRecord, bool]]] = {}
    uncut: dict[str, int] = {}
    isolations = []
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName") or ""
        if patches.is_terminal(pod):
            continue
        record = patches.read_record(pod) if patches.is_cut(pod) else None
        if record is None:
            if not patches.is_cut(pod):
                uncut[node] = uncut.get(node, 0) + 1
                continue
            # An unreadable record still marks the Pod as cut with its node.
            record = CutRecord("unreadable cut record", "unknown", "", None, None)
        applied = patches.is_cut_applied(pod, record.scope)
        if record.owner is Owner.POD:
            key = patches.pod_key(pod)
            isolations.append(_isolation(TargetKind.POD, key, node, [record], [key], applied))
            continue
        by_node.setdefault(node, []).append((patches.pod_key(pod), record, applied))
    for node, entries in sorted(by_node.items()):
        records = [record for _, record, _ in entries]
        # A node cut covers every Pod of the node unless it was limited to ingress controllers.
        covers_all = any(record.scope is not CutScope.INGRESS for record in records)
        complete = all(applied for _, _, applied in entries)
        if covers_all and uncut.get(node):
            complete = False
        keys = [key for key, _, _ in entries]
        isolations.append(_isolation(TargetKind.NODE, node, node, records, keys, complete))
    return isolations


def _isolation(
    kind: TargetKind,
    target: str,
    node: str,
    records: Sequence[CutRecord],
    keys: Sequence[str],
    complete: bool,
) -> RecordedIsolation:
    first = min(records, key=lambda record: record.at)
    widest = CutScope.INGRESS
    for record in records:
        widest = patches.wider_scope(widest, record.scope)
    manual = [record for record in records if record.who is not None]
    source = manual[0] if manual else first
    return RecordedIsolation(
        kind=kind,
        target=target,
        node=node,
        incident=first.incident,
        reason=first.reason,
        who=source.who,
        started_at=_seconds(first.at),
        expires_at=_seconds(source.expires_at),
        scope=widest.value,
        objects=tuple(sorted(keys)),
        complete=complete,
    )


def isolations_from_ingresses(
    recorded: Sequence[tuple[str, SplitRecord, bool]],
) -> list[RecordedIsolation]:
    """Group the split records of the Ingresses into one isolation per region.

    Each item is ("namespace/name", record, whether the routes still go to the fallback).
    """
    by_region: dict[str, list[tuple[str, SplitRecord, bool]]] = {}
    for item in recorded:
        by_region.setdefault(item[1].region, []).append(item)
    isolations = []
    for region, entries in sorted(by_region.items()):
        first = min((record for _, record, _ in entries), key=lambda record: record.at)
        manual = [record for _, record, _ in entries if record.who is not None]
        source = manual[0] if manual else first
        keys = tuple(sorted(key for key, _, _ in entries))
        isolations.append(
            RecordedIsolation(
                kind=TargetKind.REGION,
                target=region,
                node="",
                incident=first.incident,
                reason=first.reason,
                who=source.who,
                started_at=_seconds(first.at),
                expires_at=_seconds(source.expires_at),
                scope="split",
                objects=keys,
                complete=all(split for _, _, split in entries),
            )
        )
    return isolations
