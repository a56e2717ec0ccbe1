"""Reading an action back from the EndpointSlices, the only proof that traffic moved."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from isolator.clock import Clock
from isolator.sources.kubernetes import patches
from isolator.sources.kubernetes.client import KubernetesClient
from isolator.sources.kubernetes.endpoints import endpoint_readiness, pods_not_in_state
from isolator.sources.kubernetes.errors import KubernetesError
from isolator.sources.kubernetes.patches import Json

logger = logging.getLogger(__name__)

# Pods named in a detail line before the rest are only counted.
MAX_NAMED_PODS = 5


def name_pods(pods: Sequence[str]) -> str:
    shown = ", ".join(pods[:MAX_NAMED_PODS])
    if len(pods) <= MAX_NAMED_PODS:
        return shown
    return f"{shown} and {len(pods) - MAX_NAMED_PODS} more"


class EndpointReader:
    """Polls EndpointSlices until Pods show the intended readiness, within a deadline."""

    def __init__(self, kube: KubernetesClient, *, clock: Clock, poll_interval_s: float) -> None:
        self._kube = kube
        self._clock = clock
        self._poll_interval_s = poll_interval_s

    async def read_back(
        self, pods: Iterable[str], *, ready: bool, timeout_s: float
    ) -> tuple[bool, str]:
        """Poll until every Pod's endpoints show ``ready``; return the outcome and a phrase
        for a detail line. For ready=False a Pod without endpoints counts as done.

        A failed read is logged and polled again until the deadline: the writes already
        happened, so the caller still gets its result.
        """
        keys = sorted(set(pods))
        state = "ready" if ready else "not ready"
        if not keys:
            return True, "no endpoints to read back"
        namespaces = sorted({patches.split_pod_key(key)[0] for key in keys})
        deadline = self._clock.monotonic() + timeout_s
        pending = keys
        last_error: str | None = None
        while True:
            try:
                slices = await self._endpoint_slices(namespaces)
            except KubernetesError as err:
                logger.warning("Reading EndpointSlices failed", extra={"error": str(err)})
                last_error = str(err)
            else:
                last_error = None
                pending = pods_not_in_state(endpoint_readiness(slices), keys, ready=ready)
                if not pending:
                    return True, f"EndpointSlices show all {len(keys)} Pods {state}"
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                break
            await self._clock.sleep(min(self._poll_interval_s, remaining))
        if last_error is not None:
            return False, f"EndpointSlices could not be read within {timeout_s:g} s: {last_error}"
        logger.warning(
            "EndpointSlices did not reach the intended state in time",
            extra={"pods": name_pods(pending), "ready": ready, "timeout_s": timeout_s},
        )
        problem = "not ready or without an endpoint" if ready else "still ready"
        return False, (
            f"after {timeout_s:g} s EndpointSlices show {len(pending)} of {len(keys)} Pods "
            f"{problem}: {name_pods(pending)}"
        )

    async def expected_ready(self, pods: Sequence[Json]) -> list[str]:
        """Return the keys of the Pods that should get a ready endpoint: those with an IP that
        some Service in their namespace selects."""
        with_ip = [pod for pod in pods if (pod.get("status") or {}).get("podIP")]
        namespaces = sorted({patches.split_pod_key(patches.pod_key(pod))[0] for pod in with_ip})
        services = await asyncio.gather(*(self._kube.list_services(ns) for ns in namespaces))
        by_namespace = dict(zip(namespaces, services, strict=True))
        return sorted(
            patches.pod_key(pod)
            for pod in with_ip
            if patches.selected_by_any(
                pod, by_namespace[patches.split_pod_key(patches.pod_key(pod))[0]]
            )
        )

    async def _endpoint_slices(self, namespaces: Sequence[str]) -> list[Json]:
        pages = await asyncio.gather(*(self._kube.list_endpoint_slices(ns) for ns in namespaces))
        return [endpoint_slice for page in pages for endpoint_slice in page]
