"""Writes shared by cut, restore and the serving update: guarded patches, bounded fan-out and
Events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from isolator.clock import Clock
from isolator.sources.kubernetes import patches
from isolator.sources.kubernetes.client import CONFLICT, NOT_FOUND, KubernetesClient
from isolator.sources.kubernetes.errors import (
    MAX_ATTEMPTS,
    KubernetesError,
    KubernetesUnavailableError,
)
from isolator.sources.kubernetes.events import event_body, node_reference, pod_reference
from isolator.sources.kubernetes.patches import Json

logger = logging.getLogger(__name__)

R = TypeVar("R")

# Pods written at once. Enough to cut a full node (110 Pods by default) in a few round trips
# without flooding the API server's priority-and-fairness queues.
MAX_CONCURRENT_PODS = 16


class PodWriter:
    """Pod patches with optimistic concurrency, bounded concurrency across Pods, and Events."""

    def __init__(self, kube: KubernetesClient, *, clock: Clock, instance: str) -> None:
        self._kube = kube
        self._clock = clock
        self._instance = instance
        self._semaphore = asyncio.Semaphore(MAX_CONCURRENT_PODS)

    async def patch_metadata(
        self, pod: Json, build: Callable[[Json], dict[str, Any] | None]
    ) -> tuple[Json, bool] | None:
        """Apply ``build(pod)`` as a metadata patch that carries the Pod's resourceVersion.

        On 409 Conflict the Pod is read again and the patch rebuilt, MAX_ATTEMPTS times in
        all. Returns the latest Pod and whether a patch was written (False when ``build``
        returned None), or None when the Pod no longer exists.
        """
        namespace, name = patches.split_pod_key(patches.pod_key(pod))
        current: Json | None = pod
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if current is None:
                return None
            body = build(current)
            if body is None:
                return current, False
            try:
                return await self._kube.patch_pod(namespace, name, body), True
            except KubernetesError as err:
                if err.status == NOT_FOUND:
                    return None
                if err.status != CONFLICT or attempt == MAX_ATTEMPTS:
                    raise
                log_conflict(current, attempt)
                current = await self._kube.read_pod(namespace, name)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def patch_status(self, pod: Json, body: dict[str, Any]) -> Json | None:
        """Patch the Pod's status subresource; return the new Pod, or None when it is gone."""
        namespace, name = patches.split_pod_key(patches.pod_key(pod))
        try:
            return await self._kube.patch_pod_status(namespace, name, body)
        except KubernetesError as err:
            if err.status == NOT_FOUND:
                return None
            raise

    async def for_each(
        self,
        pods: Sequence[Json],
        action: Callable[[Json], Awaitable[R]],
        operation: str,
        node: str,
    ) -> list[R]:
        """Run ``action`` on every Pod, at most MAX_CONCURRENT_PODS at once.

        Every Pod is attempted even when some fail, so one broken Pod does not block the rest.
        The failures are then raised as one error, which is "unavailable" only if every
        failure was.
        """

        async def guarded(pod: Json) -> R:
            async with self._semaphore:
                return await action(pod)

        outcomes = await asyncio.gather(*(guarded(pod) for pod in pods), return_exceptions=True)
        results: list[R] = []
        errors: list[KubernetesError] = []
        for pod, outcome in zip(pods, outcomes, strict=True):
            if isinstance(outcome, KubernetesError):
                logger.error(
                    "Kubernetes request for a Pod failed",
                    extra={"node": node, "pod": patches.pod_key(pod), "error": str(outcome)},
                )
                errors.append(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                results.append(outcome)
        if errors:
            message = f"{operation} failed on {len(errors)} of {len(pods)} Pods: {errors[0]}"
            if all(isinstance(err, KubernetesUnavailableError) for err in errors):
                raise KubernetesUnavailableError(message) from errors[0]
            raise KubernetesError(message, status=errors[0].status) from errors[0]
        return results

    async def emit_pod_event(
        self, pod: Json, reason: str, action: str, note: str, *, warning: bool
    ) -> None:
        await self._emit(pod_reference(pod), reason, action, note, warning=warning)

    async def emit_node_event(
        self, node: str, reason: str, action: str, note: str, *, warning: bool
    ) -> None:
        try:
            uid = await self._kube.read_node_uid(node)
        except KubernetesError as err:
            logger.warning(
                "Reading the Node for its Event failed", extra={"node": node, "error": str(err)}
            )
            uid = None
        await self._emit(node_reference(node, uid), reason, action, note, warning=warning)

    async def emit_object_event(
        self, regarding: dict[str, Any], reason: str, action: str, note: str, *, warning: bool
    ) -> None:
        """Create an Event about any object, given its ObjectReference in JSON form."""
        await self._emit(regarding, reason, action, note, warning=warning)

    async def _emit(
        self, regarding: dict[str, Any], reason: str, action: str, note: str, *, warning: bool
    ) -> None:
        """Create an Event; a failure is only logged, because the change is already written."""
        body = event_body(
            regarding=regarding,
            reason=reason,
            action=action,
            note=note,
            warning=warning,
            instance=self._instance,
            wall_s=self._clock.wall(),
        )
        try:
            await self._kube.create_event(body)
        except KubernetesError as err:
            logger.warning(
                "Creating an Event failed",
                extra={"object": f"{regarding['kind']}/{regarding['name']}", "error": str(err)},
            )


class PendingEvents:
    """Pod Events held back until an action's writes are done, then created together.

    Events are not on the traffic path, so a cut writes every Pod first and creates the
    Events while it reads the cut back.
    """

    def __init__(self, writer: PodWriter) -> None:
        self._writer = writer
        self._pods: list[tuple[Json, str, str, str, bool]] = []
        self._nodes: list[tuple[str, str, str, str, bool]] = []

    def add(self, pod: Json, reason: str, action: str, note: str, *, warning: bool) -> None:
        self._pods.append((pod, reason, action, note, warning))

    def add_node(self, node: str, reason: str, action: str, note: str, *, warning: bool) -> None:
        self._nodes.append((node, reason, action, note, warning))

    async def flush(self) -> None:
        """Create every held Event, at most MAX_CONCURRENT_PODS at once; failures are logged."""
        pods, self._pods = self._pods, []
        nodes, self._nodes = self._nodes, []
        limit = asyncio.Semaphore(MAX_CONCURRENT_PODS)

        async def pod_event(pod: Json, reason: str, action: str, note: str, warn: bool) -> None:
            async with limit:
                await self._writer.emit_pod_event(pod, reason, action, note, warning=warn)

        async def node_event(node: str, reason: str, action: str, note: str, warn: bool) -> None:
            async with limit:
                await self._writer.emit_node_event(node, reason, action, note, warning=warn)

        await asyncio.gather(
            *(pod_event(*item) for item in pods), *(node_event(*item) for item in nodes)
        )


def log_conflict(pod: Json, attempt: int) -> None:
    logger.info(
        "Pod changed since it was read, reading it again",
        extra={"pod": patches.pod_key(pod), "attempt": f"{attempt} of {MAX_ATTEMPTS}"},
    )
