"""The ready endpoints of every Service, counted from EndpointSlices for the minimum-endpoints
check of automatic cuts.

One read takes four lists, each paged by the client, whatever the number of nodes: Services,
EndpointSlices and Pods in all namespaces, and the Pods that the ingress controller's label
selector matches, which the API server evaluates. The control loop reads only while a cut may
follow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from isolator.model import MIN_READY_ANNOTATION
from isolator.sources.kubernetes import patches
from isolator.sources.kubernetes.client import KubernetesClient
from isolator.sources.kubernetes.patches import Json

logger = logging.getLogger(__name__)

# Label by which the EndpointSlice controller ties a slice to its Service.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True, slots=True)
class ServiceEndpoints:
    """The ready endpoints of one Service; a Pod counts once, however many endpoints it has."""

    service: str  # "namespace/name"
    min_ready: int | None  # from MIN_READY_ANNOTATION; None when absent or invalid
    ready_pods: Mapping[str, str]  # "namespace/name" of each ready Pod -> its node
    other_ready: int = 0  # ready endpoints with no Pod behind them


@dataclass(frozen=True, slots=True)
class EndpointCensus:
    """The ready endpoints of every Service that has EndpointSlices."""

    services: tuple[ServiceEndpoints, ...]
    ingress_pods: frozenset[str]  # "namespace/name" of the ingress controller's Pods


def parse_min_ready(value: str | None) -> int | None:
    """Return the minimum that an annotation value sets; None when absent or not a count."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()):  # a sign is rejected too, so is "-1"
        return None
    return int(text)


@dataclass
class _Tally:
    ready_pods: dict[str, str] = field(default_factory=dict)
    other_ready: int = 0


def count_ready(
    services: Iterable[Json],
    slices: Iterable[Json],
    pods: Iterable[Json],
    ingress_pods: Iterable[Json],
) -> EndpointCensus:
    """Count each Service's ready endpoints from its EndpointSlices.

    A missing ``conditions.ready`` counts as ready, because the discovery.k8s.io/v1 API
    reference states that a nil value "should be interpreted as true". A Pod that carries the
    isolator's cut record counts as not ready, whatever its endpoint shows while the cut
    spreads.
    """
    cut = set()
    node_of = {}
    for pod in pods:
        key = patches.pod_key(pod)
        node_of[key] = (pod.get("spec") or {}).get("nodeName") or ""
        if patches.is_cut(pod):
            cut.add(key)
    tallies: dict[str, _Tally] = {}
    for endpoint_slice in slices:
        metadata = endpoint_slice.get("metadata") or {}
        name = (metadata.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not name:
            continue
        namespace = metadata.get("namespace", "")
        tally = tallies.setdefault(f"{namespace}/{name}", _Tally())
        for endpoint in endpoint_slice.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            target = endpoint.get("targetRef") or {}
            if target.get("kind") != "Pod" or not target.get("name"):
                tally.other_ready += 1
                continue
            key = f"{target.get('namespace') or namespace}/{target['name']}"
            if key not in cut:
                tally.ready_pods[key] = node_of.get(key) or endpoint.get("nodeName") or ""
    minimums = {_service_key(service): _min_ready(service) for service in services}
    counted = tuple(
        ServiceEndpoints(key, minimums.get(key), tally.ready_pods, tally.other_ready)
        for key, tally in sorted(tallies.items())
    )
    return EndpointCensus(counted, frozenset(patches.pod_key(pod) for pod in ingress_pods))


def _service_key(service: Json) -> str:
    metadata = service.get("metadata") or {}
    return f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"


def _min_ready(service: Json) -> int | None:
    annotations = (service.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(MIN_READY_ANNOTATION)
    minimum = parse_min_ready(value)
    if value is not None and minimum is None:
        # Logged on every read, which happens only while a cut may follow.
        logger.warning(
            "Invalid minimum of ready endpoints, the default applies",
            extra={
                "service": _service_key(service),
                "annotation": MIN_READY_ANNOTATION,
                "value": value[:64],
            },
        )
    return minimum


class CensusReader:
    """Reads the census with one list request per kind of object."""

    def __init__(self, kube: KubernetesClient) -> None:
        self._kube = kube

    async def read(self, ingress_selector: str) -> EndpointCensus:
        services, slices, pods, ingress = await asyncio.gather(
            self._kube.list_all_services(),
            self._kube.list_all_endpoint_slices(),
            self._kube.list_pods(),
            self._kube.list_pods(label_selector=ingress_selector),
        )
        return count_ready(services, slices, pods, ingress)
