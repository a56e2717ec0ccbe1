"""Pure helpers that read Pods and build the patches of a cut, a restore and a serving update.

Pods, Services and EndpointSlices are handled in their JSON form (camelCase keys, as the API
server sends them), so these functions are tested with literal objects and no client.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from isolator.model import CUT_ANNOTATION, SERVING_CONDITION

Json = Mapping[str, Any]

READY_CONDITION = "Ready"
CUT_REASON = "IsolatorCut"
RESTORE_REASON = "IsolatorRestore"
SERVING_REASON = "IsolatorServing"

_CONDITION_STATUSES = frozenset({"True", "False", "Unknown"})
_TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


class CutScope(enum.StrEnum):
    """Which Pods of a node a cut takes out, and which conditions it writes on them."""

    # The kubelet is dead and cannot process readiness gates: Ready and the serving gate go
    # False through the status subresource on every Pod of the node.
    NODE = "node"
    # A component of a live node failed: the serving gate goes False and the kubelet recomputes
    # Ready. A Pod without the gate has Ready set False, which the live kubelet may set back.
    COMPONENT = "component"
    # The node's ingress path failed: as COMPONENT, on the node's ingress-controller Pods only.
    INGRESS = "ingress"


# Widest last: a record keeps the widest scope that any cut of its Pod asked for.
_SCOPE_ORDER = (CutScope.INGRESS, CutScope.COMPONENT, CutScope.NODE)


def wider_scope(first: CutScope, second: CutScope) -> CutScope:
    return max(first, second, key=_SCOPE_ORDER.index)


class Owner(enum.StrEnum):
    """What a Pod's cut belongs to, and so which restore puts it back."""

    NODE = "node"  # the cut of the Pod's node
    POD = "pod"  # an isolation of this Pod alone, which a node restore leaves in place


class InvalidCutRecordError(ValueError):
    """The cut annotation on a Pod is not a record that this version can read."""


@dataclass(frozen=True, slots=True)
class CutRecord:
    """Record of what a cut replaced on one Pod, kept in its CUT_ANNOTATION for an exact restore.

    ``previous_ready`` and ``previous_serving`` are condition statuses ("True", "False",
    "Unknown"), or None when the Pod had no such condition. ``who`` names the person behind a
    manual isolation and is None for an automatic cut; ``expires_at`` (RFC 3339) ends a manual
    isolation. Fields at their defaults are left out of the annotation, so records written
    before they existed read back unchanged.
    """

    reason: str
    incident: str
    at: str  # RFC 3339, UTC
    previous_ready: str | None
    previous_serving: str | None
    scope: CutScope = CutScope.NODE
    owner: Owner = Owner.NODE
    who: str | None = None
    expires_at: str | None = None

    def to_annotation(self) -> str:
        data: dict[str, Any] = {
            "reason": self.reason,
            "incident": self.incident,
            "at": self.at,
            "previousReady": self.previous_ready,
            "previousServing": self.previous_serving,
        }
        if self.scope is not CutScope.NODE:
            data["scope"] = self.scope.value
        if self.owner is not Owner.NODE:
            data["owner"] = self.owner.value
        if self.who is not None:
            data["who"] = self.who
        if self.expires_at is not None:
            data["expiresAt"] = self.expires_at
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def merged(
        self,
        scope: CutScope,
        who: str | None,
        expires_at: str | None,
        owner: Owner,
        reason: str,
    ) -> CutRecord:
        """Return the record after another cut of the same Pod, keeping what the first replaced.

        The scope only widens. A manual isolation takes over any cut with its ``who``, reason
        and expiry, and an isolation of the Pod alone takes over a node's cut.
        """
        manual = who is not None
        return dataclasses.replace(
            self,
            scope=wider_scope(self.scope, scope),
            who=who if manual else self.who,
            reason=reason if manual else self.reason,
            expires_at=expires_at if manual else self.expires_at,
            owner=Owner.POD if owner is Owner.POD else self.owner,
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
            scope=_enum_field(data, "scope", CutScope, CutScope.NODE),
            owner=_enum_field(data, "owner", Owner, Owner.NODE),
            who=_optional_string(data, "who"),
            expires_at=_optional_string(data, "expiresAt"),
        )


def _required_string(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise InvalidCutRecordError(f"cut record field {key!r} is missing or not a string")
    return value


def _optional_string(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidCutRecordError(f"cut record field {key!r} is not a string")
    return value


E = TypeVar("E", CutScope, Owner)


def _enum_field(data: Mapping[str, Any], key: str, kind: type[E], default: E) -> E:
    value = data.get(key, default.value)
    try:
        return kind(value)
    except ValueError as err:
        choices = ", ".join(member.value for member in kind)
        raise InvalidCutRecordError(
            f"cut record field {key!r} is {value!r}, expected one of {choices}"
        ) from err


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


def parse_rfc3339(text: str) -> float | None:
    """Return the wall-clock seconds of an RFC 3339 time, or None when it is not one."""
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


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


def cut_record(
    pod: Json,
    *,
    reason: str,
    incident: str,
    wall_s: float,
    scope: CutScope = CutScope.NODE,
    owner: Owner = Owner.NODE,
    who: str | None = None,
    expires_at: str | None = None,
) -> CutRecord:
    """Build the record of what a cut of this Pod replaces."""
    return CutRecord(
        reason=reason,
        incident=incident,
        at=rfc3339(wall_s),
        previous_ready=condition_status(pod, READY_CONDITION),
        previous_serving=condition_status(pod, SERVING_CONDITION),
        scope=scope,
        owner=owner,
        who=who,
        expires_at=expires_at,
    )


def read_record(pod: Json) -> CutRecord | None:
    """Return the Pod's cut record, or None when it has none or the record is unreadable."""
    text = pod_annotations(pod).get(CUT_ANNOTATION)
    if text is None:
        return None
    try:
        return CutRecord.from_annotation(text)
    except InvalidCutRecordError:
        return None


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


def _writes_ready(pod: Json, scope: CutScope) -> bool:
    """Tell whether a cut in ``scope`` sets Ready itself instead of leaving it to the kubelet."""
    return scope is CutScope.NODE or not declares_serving_gate(pod)


def cut_status_patch(
    pod: Json, *, incident: str, wall_s: float, scope: CutScope = CutScope.NODE
) -> dict[str, Any]:
    """Build the status patch that takes the Pod out of its Services' ready endpoints.

    In the NODE scope Ready is set False directly, because a dead kubelet cannot recompute it
    from the gate. In the other scopes the live kubelet recomputes Ready from the gate, so only
    a Pod without the gate gets Ready False. The serving condition is set False whenever the
    Pod declares the gate. The patch is a strategic merge patch: Pod conditions merge by type,
    so other conditions are kept.
    """
    message = f"Traffic cut by the isolator for incident {incident}"
    conditions = []
    if _writes_ready(pod, scope):
        conditions.append(_condition(pod, READY_CONDITION, "False", CUT_REASON, message, wall_s))
    if declares_serving_gate(pod):
        conditions.append(_condition(pod, SERVING_CONDITION, "False", CUT_REASON, message, wall_s))
    return {"status": {"conditions": conditions}}


def is_cut_applied(pod: Json, scope: CutScope = CutScope.NODE) -> bool:
    """Tell whether the Pod's status already shows a cut in ``scope``: the conditions that
    scope writes are all False."""
    if _writes_ready(pod, scope) and condition_status(pod, READY_CONDITION) != "False":
        return False
    return not declares_serving_gate(pod) or condition_status(pod, SERVING_CONDITION) == "False"


def restore_status_patch(
    pod: Json, record: CutRecord, *, incident: str, wall_s: float
) -> dict[str, Any]:
    """Build the status patch that puts back the conditions that the record stored.

    The serving condition becomes True when the Pod declares the gate: the isolator owns it and
    keeps it True on every Pod it has not cut. Ready goes back to its recorded status, or is
    deleted when the Pod had none before the cut, but only when the cut wrote it: after a cut
    of the gate alone the live kubelet recomputes Ready.
    """
    message = f"Traffic restored by the isolator after incident {incident}"
    conditions: list[dict[str, Any]] = []
    if declares_serving_gate(pod):
        conditions.append(
            _condition(pod, SERVING_CONDITION, "True", RESTORE_REASON, message, wall_s)
        )
    if _writes_ready(pod, record.scope):
        conditions.append(_ready_restore(pod, record, message, wall_s))
    return {"status": {"conditions": conditions}}


def _ready_restore(pod: Json, record: CutRecord, message: str, wall_s: float) -> dict[str, Any]:
    if record.previous_ready is None:
        return {"type": READY_CONDITION, "$patch": "delete"}
    return _condition(pod, READY_CONDITION, record.previous_ready, RESTORE_REASON, message, wall_s)


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
