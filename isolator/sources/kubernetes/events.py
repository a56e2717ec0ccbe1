"""Pure builders of the Kubernetes Events that record every cut and restore."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from isolator.sources.kubernetes.patches import rfc3339

# reportingController of every Event; it names the isolator in `kubectl events`.
REPORTING_CONTROLLER = "isolator"

# Events about cluster-scoped objects such as Nodes live in this namespace, as the API server
# requires.
NODE_EVENT_NAMESPACE = "default"

# The API server rejects an Event whose note is longer than 1 kB.
MAX_NOTE_CHARS = 1000

# Object names are DNS subdomains of at most 253 characters; the Event name appends 17.
_MAX_NAME_PREFIX = 236


def event_body(
    *,
    regarding: Mapping[str, Any],
    reason: str,
    action: str,
    note: str,
    warning: bool,
    instance: str,
    wall_s: float,
) -> dict[str, Any]:
    """Build an events.k8s.io/v1 Event about ``regarding`` (an ObjectReference in JSON form).

    The name carries a random suffix that stays fixed across retries of the same Event.
    """
    namespace = regarding.get("namespace") or NODE_EVENT_NAMESPACE
    name = f"{str(regarding['name'])[:_MAX_NAME_PREFIX]}.{uuid.uuid4().hex[:16]}"
    if len(note) > MAX_NOTE_CHARS:
        note = note[: MAX_NOTE_CHARS - 3] + "..."
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": namespace},
        "eventTime": rfc3339(wall_s, micro=True),
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": instance[:128],
        "action": action,
        "reason": reason,
        "regarding": dict(regarding),
        "note": note,
        "type": "Warning" if warning else "Normal",
    }


def pod_reference(pod: Mapping[str, Any]) -> dict[str, Any]:
    metadata = pod.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": metadata.get("namespace"),
        "name": metadata.get("name"),
        "uid": metadata.get("uid"),
    }


def object_reference(obj: Mapping[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    """Return the ObjectReference of a namespaced object in its JSON form."""
    metadata = obj.get("metadata") or {}
    return {
        "apiVersion": api_version,
        "kind": kind,
        "namespace": metadata.get("namespace"),
        "name": metadata.get("name"),
        "uid": metadata.get("uid"),
    }


def node_reference(name: str, uid: str | None) -> dict[str, Any]:
    reference: dict[str, Any] = {"apiVersion": "v1", "kind": "Node", "name": name}
    if uid:
        reference["uid"] = uid
    return reference
