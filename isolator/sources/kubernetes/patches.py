"""Pure helpers that read Pods and build the patches of a cut, a restore and a serving update.

Pods, Services and EndpointSlices are handled in their JSON form (camelCase keys, as the API
server sends them), so these functions are tested with literal objects and no client.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from isolator.model import CUT_ANNOTATION, SERVING_CONDITION

Json = Mapping[str, Any]

READY_CONDITION = "Ready"
CUT_REASON = "IsolatorCut"
RESTORE_REASON = "IsolatorRestore"
SERVING_REASON = "IsolatorServing"

_CONDITION_STATUSES = frozenset({"True", "False", "Unknown"})
_TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


class InvalidCutRecordError(ValueError):
    """The cut annotation on a Pod is not a record that this version can read."""


@dataclass(frozen=True, slots=True)
class CutRecord:
    """Record of what a cut replaced on one Pod, kept in its CUT_ANNOTATION for an exact restore.

    ``previous_ready`` and ``previous_serving`` are condition statuses ("True", "False",
    "Unknown"), or None when the Pod had no such condition.
    """

    reason: str
    incident: str
    at: str  # RFC 3339, UTC
    previous_ready: str | None
    previous_serving: str | None

    def to_annotation(self) -> str:
        return json.dumps(
            {
                "reason": self.reason,
                "incident": self.incident,
                "at": self.at,
                "previousReady": self.previous_ready,
                "previousServing": self.previous_serving,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_annotation(cls, text: str) -> CutRecord:
        """Parse an annotation value; raise InvalidCutRecordError on anything malformed."""
        try:
            data = json.loads(text)
        except ValueError as err:
            raise InvalidCutRecordError(f"cut record is not JSON: {err}") from err
        if not isinstance(data, dict):
            raise InvalidCutRecordError("cut record is not a JSON object")
        return cls(
            reason=_required_string(data, "reason"),
            incident=_required_string(data, "incident"),
            at=_required_string(data, "at"),
            previous_ready=_condition_status_field(data, "previousReady"),
            previous_serving=_condition_status_field(data, "previousServing"),
        )


def _required_string(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise InvalidCutRecordError(f"cut record field {key!r} is missing or not a string")
    return value


def _condition_status_field(data: Mapping[str, Any], key: str) -> str | None:
    if key not in data:
        raise InvalidCutRecordError(f"cut record field {key!r} is missing")
    value = data[key]
    if value is not None and value not in _CONDITION_STATUSES:
        raise InvalidCutRecordError(
            f"cut record field {key!r} is {value!r}, expected True, False, Unknown or null"
        )
    return value if value is None else str(value)


def rfc3339(wall_s: float, *, micro: bool = False) -> str:
    """Format a wall-clock time in UTC as Kubernetes writes Time (or MicroTime) values."""
    moment = datetime.datetime.fromtimestamp(wall_s, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def pod_key(pod: Json) -> str:
    """Return "namespace/name" of a Pod."""
    metadata = pod.get("metadata") or {}
    return f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"


def split_pod_key(key: str) -> tuple[str, str]:
    """Split "namespace/name"; raise ValueError when either part is missing."""
    namespace, _, name = key.partition("/")
    if not namespace or not name:
        raise ValueError(f"invalid Pod key {key!r}, expected namespace/name")
    return namespace, name


def pod_annotations(pod: Json) -> Mapping[str, str]:
    return ((pod.get("metadata") or {}).get("annotations")) or {}


def is_cut(pod: Json) -> bool:
    return CUT_ANNOTATION in pod_annotations(pod)


def is_terminal(pod: Json) -> bool:
    """Tell whether the Pod has finished (Succeeded or Failed) and so serves nothing."""
    return (pod.get("status") or {}).get("phase") in _TERMINAL_PHASES


def declares_serving_gate(pod: Json) -> bool:
    """Tell whether the Pod lists SERVING_CONDITION among its readiness gates."""
    gates = (pod.get("spec") or {}).get("readinessGates") or []
    return any(gate.get("conditionType") == SERVING_CONDITION for gate in gates)


def find_condition(pod: Json, condition_type: str) -> Json | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == condition_type:
            return condition  # type: ignore[no-any-return]  # JSON from the API server
    return None


def condition_status(pod: Json, condition_type: str) -> str | None:
    """Return the status of a Pod condition, or None when the Pod has no such condition."""
    condition = find_condition(pod, condition_type)
    return None if condition is None else condition.get("status")


def needs_serving(pod: Json) -> bool:
    """Tell whether ensure_serving must set the serving condition True on this Pod."""
    return (
        declares_serving_gate(pod)
        and not is_cut(pod)
        and not is_terminal(pod)
        and condition_status(pod, SERVING_CONDITION) != "True"
    )


def cut_record(pod: Json, *, reason: str, incident: str, wall_s: float) -> CutRecord:
    """Build the record of what a cut of this Pod replaces."""
    return CutRecord(
        reason=reason,
        incident=incident,
        at=rfc3339(wall_s),
        previous_ready=condition_status(pod, READY_CONDITION),
        previous_serving=condition_status(pod, SERVING_CONDITION),
    )


def cut_annotation_patch(record: CutRecord, resource_version: str) -> dict[str, Any]:
    """Build the metadata patch that stores the record.

    The resourceVersion makes the API server reject the patch with 409 Conflict when the Pod
    changed since it was read, so the record never describes a state it did not see.
    """
    return {
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": {CUT_ANNOTATION: record.to_annotation()},
        }
    }


def remove_annotation_patch(resource_version: str) -> dict[str, Any]:
    """Build the metadata patch that deletes the record, guarded by resourceVersion."""
    return {
        "metadata": {"resourceVersion": resource_version, "annotations": {CUT_ANNOTATION: None}}
    }


def _condition(
    pod: Json, condition_type: str, status: str, reason: str, message: str, wall_s: float
) -> dict[str, Any]:
    """Build one condition, keeping lastTransitionTime when the status does not change."""
    current = find_condition(pod, condition_type)
    if (
        current is not None
        and current.get("status") == status
        and current.get("lastTransitionTime")
    ):
        transition = current["lastTransitionTime"]
    else:
        transition = rfc3339(wall_s)
    return {
        "type": condition_type,
        "status": status,
        "reason": reason,
        "message": message,
        "lastProbeTime": None,
        "lastTransitionTime": transition,
    }


def cut_status_patch(pod: Json, *, incident: str, wall_s: float) -> dict[str, Any]:
    """Build the status patch that takes the Pod out of its Services' ready endpoints.

    Ready is set False directly because a dead kubelet cannot recompute it from the gate. The
    serving condition is set False only when the Pod declares the gate. The patch is a strategic
    merge patch: Pod conditions merge by type, so other conditions are kept.
    """
    message = f"Traffic cut by the isolator for incident {incident}"
    conditions = [_condition(pod, READY_CONDITION, "False", CUT_REASON, message, wall_s)]
    if declares_serving_gate(pod):
        conditions.append(_condition(pod, SERVING_CONDITION, "False", CUT_REASON, message, wall_s))
    return {"status": {"conditions": conditions}}


def is_cut_applied(pod: Json) -> bool:
    """Tell whether the Pod's status already shows a cut (Ready and any serving gate False)."""
    if condition_status(pod, READY_CONDITION) != "False":
        return False
    return not declares_serving_gate(pod) or condition_status(pod, SERVING_CONDITION) == "False"


def restore_status_patch(
    pod: Json, record: CutRecord, *, incident: str, wall_s: float
) -> dict[str, Any]:
    """Build the status patch that puts back the conditions that the record stored.

    The serving condition becomes True when the Pod declares the gate: the isolator owns it and
    keeps it True on every Pod it has not cut. Ready goes back to its recorded status, or is
    deleted when the Pod had none before the cut.
    """
    message = f"Traffic restored by the isolator after incident {incident}"
    conditions: list[dict[str, Any]] = []
    if declares_serving_gate(pod):
        conditions.append(
            _condition(pod, SERVING_CONDITION, "True", RESTORE_REASON, message, wall_s)
        )
    if record.previous_ready is None:
        conditions.append({"type": READY_CONDITION, "$patch": "delete"})
    else:
        conditions.append(
            _condition(pod, READY_CONDITION, record.previous_ready, RESTORE_REASON, message, wall_s)
        )
    return {"status": {"conditions": conditions}}


def gate_only_restore_patch(pod: Json, *, incident: str, wall_s: float) -> dict[str, Any] | None:
    """Build the restore patch for a Pod whose record cannot be read: the serving gate only.

    Ready is left to the kubelet, which recomputes it from the gate while it is alive.
    """
    if not declares_serving_gate(pod):
        return None
    message = f"Traffic restored by the isolator after incident {incident}"
    condition = _condition(pod, SERVING_CONDITION, "True", RESTORE_REASON, message, wall_s)
    return {"status": {"conditions": [condition]}}


def serving_patch(pod: Json, *, wall_s: float) -> dict[str, Any]:
    """Build the status patch that sets the serving condition True on a Pod that is not cut.

    The resourceVersion makes the patch fail with 409 Conflict if a cut landed since the Pod
    was read, so a serving update never undoes a cut.
    """
    message = "No fault recorded by the isolator"
    condition = _condition(pod, SERVING_CONDITION, "True", SERVING_REASON, message, wall_s)
    resource_version = (pod.get("metadata") or {}).get("resourceVersion")
    return {
        "metadata": {"resourceVersion": resource_version},
        "status": {"conditions": [condition]},
    }


def selects(selector: Mapping[str, str] | None, labels: Mapping[str, str] | None) -> bool:
    """Tell whether a Service selector selects a Pod with these labels.

    An empty or missing selector selects nothing: the EndpointSlice controller ignores such
    Services.
    """
    if not selector:
        return False
    pod_labels = labels or {}
    return all(pod_labels.get(key) == value for key, value in selector.items())


def selected_by_any(pod: Json, services: Iterable[Json]) -> bool:
    """Tell whether some Service in the Pod's namespace gives it an endpoint."""
    labels = (pod.get("metadata") or {}).get("labels")
    for service in services:
        spec = service.get("spec") or {}
        if spec.get("type") == "ExternalName":
            continue
        if selects(spec.get("selector"), labels):
            return True
    return False
