"""Pure reading of EndpointSlices: which Pods have endpoints, and whether those are ready."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Json = Mapping[str, Any]


def endpoint_readiness(slices: Iterable[Json]) -> dict[str, list[bool]]:
    """Map "namespace/name" of every Pod with an endpoint to the ready flag of each endpoint.

    A Pod has one endpoint per Service and address family, so it may have several. A missing
    ``conditions.ready`` counts as ready: the discovery.k8s.io/v1 API reference says a nil value
    "should be interpreted as true".
    """
    readiness: dict[str, list[bool]] = defaultdict(list)
    for endpoint_slice in slices:
        slice_namespace = (endpoint_slice.get("metadata") or {}).get("namespace", "")
        for endpoint in endpoint_slice.get("endpoints") or []:
            target = endpoint.get("targetRef") or {}
            if target.get("kind") != "Pod" or not target.get("name"):
                continue
            namespace = target.get("namespace") or slice_namespace
            ready = (endpoint.get("conditions") or {}).get("ready")
            readiness[f"{namespace}/{target['name']}"].append(ready is not False)
    return dict(readiness)


def pods_not_in_state(
    readiness: Mapping[str, Sequence[bool]], pods: Iterable[str], *, ready: bool
) -> list[str]:
    """Return the Pods whose endpoints do not all show ``ready`` yet, sorted.

    For ready=False a Pod without any endpoint is in the intended state, since nothing can
    route to it. For ready=True it is not: it serves nothing.
    """
    pending = []
    for pod in pods:
        flags = readiness.get(pod, ())
        in_state = (bool(flags) and all(flags)) if ready else not any(flags)
        if not in_state:
            pending.append(pod)
    return sorted(pending)
