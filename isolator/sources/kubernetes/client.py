"""The requests the adapter sends, each through the bounded retry and the one error mapping.

Objects come back in their JSON form (camelCase keys, as the API server sends them) so that the
pure helpers in ``patches`` and ``endpoints`` read them without the generated model classes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from kubernetes_asyncio import client
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.client.rest import RESTResponse

from isolator.clock import Clock
from isolator.sources.kubernetes.errors import KubernetesError, call_with_retry

T = TypeVar("T")

# Objects per page when listing: large enough that a node's Pods fit in one page.
PAGE_SIZE = 500

# Field manager recorded in managedFields for every patch, so `kubectl get -o yaml
# --show-managed-fields` shows which fields the isolator owns.
FIELD_MANAGER = "isolator"

NOT_FOUND = 404
CONFLICT = 409

# Share of each retry pause added at random: up to as long again. A node's Pods are written
# 16 at once, and an API server that throttles them all sends each the same Retry-After.
RETRY_JITTER = 1.0


class KubernetesClient:
    """Typed requests to the core, discovery and events APIs, with retries and error mapping."""

    def __init__(self, api_client: ApiClient, *, clock: Clock, request_timeout_s: float) -> None:
        self._api_client = api_client
        self._clock = clock
        self._timeout = request_timeout_s
        self._core = client.CoreV1Api(api_client)
        self._discovery = client.DiscoveryV1Api(api_client)
        self._events = client.EventsV1Api(api_client)
        self._networking = client.NetworkingV1Api(api_client)

    async def close(self) -> None:
        await self._api_client.close()

    def _to_json(self, obj: object) -> dict[str, Any]:
        data = self._api_client.sanitize_for_serialization(obj)
        if not isinstance(data, dict):
            raise KubernetesError(f"expected a JSON object from the API, got {type(data)}")
        return data

    @staticmethod
    async def _raw_json(response: Any) -> dict[str, Any]:
        """Read a response requested with ``_preload_content=False`` as a JSON object.

        Patches of a node's Pods come back by the hundred, and turning each into the client's
        model classes and back costs about 1 ms of CPU (measured with kubernetes-asyncio 36),
        which the cut pays on its critical path. Raises ApiException for a non-2xx status,
        as the client itself would.
        """
        data = await response.read()
        if not 200 <= response.status <= 299:
            # The client's own REST layer passes a RESTResponse here too; the annotation of
            # ``http_resp`` names aiohttp's response, which has no ``data`` to read the body.
            raise ApiException(http_resp=RESTResponse(response, data))  # type: ignore[arg-type]
        decoded = json.loads(data)
        if not isinstance(decoded, dict):
            raise KubernetesError(f"expected a JSON object from the API, got {type(decoded)}")
        return decoded

    async def _call(
        self, operation: str, request: Callable[[], Awaitable[T]], extra: Mapping[str, Any]
    ) -> T:
        return await call_with_retry(
            operation, request, clock=self._clock, log_extra=extra, jitter=RETRY_JITTER
        )

    async def _list_all(
        self, operation: str, list_page: Callable[..., Awaitable[Any]], **kwargs: Any
    ) -> list[dict[str, Any]]:
        """Follow `continue` tokens until the list is complete."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page_kwargs = {**kwargs, "limit": PAGE_SIZE, "_request_timeout": self._timeout}
            if token:
                page_kwargs["_continue"] = token

            async def request(arguments: dict[str, Any] = page_kwargs) -> Any:
                return await list_page(**arguments)

            page = await self._call(operation, request, {})
            items.extend(self._to_json(item) for item in page.items or [])
            token = page.metadata._continue if page.metadata else None
            if not token:
                return items

    async def list_nodes(self, label_selector: str) -> list[dict[str, Any]]:
        return await self._list_all(
            "list Nodes", self._core.list_node, label_selector=label_selector
        )

    async def list_pods(
        self, field_selector: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """List Pods in all namespaces, optionally narrowed by a field and a label selector."""
        kwargs = {"field_selector": field_selector} if field_selector else {}
        if label_selector:
            kwargs["label_selector"] = label_selector
        return await self._list_all("list Pods", self._core.list_pod_for_all_namespaces, **kwargs)

    async def list_endpoints(self, namespace: str) -> list[dict[str, Any]]:
        return await self._list_all(
            f"list Endpoints in {namespace}",
            self._core.list_namespaced_endpoints,
            namespace=namespace,
        )

    async def list_ingresses(self, label_selector: str | None = None) -> list[dict[str, Any]]:
        """List Ingresses in all namespaces, optionally narrowed by a label selector."""
        kwargs = {"label_selector": label_selector} if label_selector else {}
        return await self._list_all(
            "list Ingresses", self._networking.list_ingress_for_all_namespaces, **kwargs
        )

    async def patch_endpoint_slice(self, namespace: str, name: str, body: Any) -> dict[str, Any]:
        """Apply a strategic merge patch to an EndpointSlice."""

        async def request() -> Any:
            return await self._discovery.patch_namespaced_endpoint_slice(
                name, namespace, body, field_manager=FIELD_MANAGER, _request_timeout=self._timeout
            )

        operation = f"patch EndpointSlice {namespace}/{name}"
        return self._to_json(await self._call(operation, request, {"object": operation}))

    async def patch_endpoints(self, namespace: str, name: str, body: Any) -> dict[str, Any]:
        """Apply a strategic merge patch to an Endpoints object."""

        async def request() -> Any:
            return await self._core.patch_namespaced_endpoints(
                name, namespace, body, field_manager=FIELD_MANAGER, _request_timeout=self._timeout
            )

        operation = f"patch Endpoints {namespace}/{name}"
        return self._to_json(await self._call(operation, request, {"object": operation}))

    async def patch_ingress(self, namespace: str, name: str, body: Any) -> dict[str, Any]:
        """Apply a JSON patch (a list of operations) to an Ingress."""

        async def request() -> Any:
            return await self._networking.patch_namespaced_ingress(
                name, namespace, body, field_manager=FIELD_MANAGER, _request_timeout=self._timeout
            )

        operation = f"patch Ingress {namespace}/{name}"
        return self._to_json(await self._call(operation, request, {"object": operation}))

    async def list_services(self, namespace: str) -> list[dict[str, Any]]:
        return await self._list_all(
            f"list Services in {namespace}",
            self._core.list_namespaced_service,
            namespace=namespace,
        )

    async def list_all_services(self) -> list[dict[str, Any]]:
        return await self._list_all("list Services", self._core.list_service_for_all_namespaces)

    async def list_all_endpoint_slices(self) -> list[dict[str, Any]]:
        return await self._list_all(
            "list EndpointSlices", self._discovery.list_endpoint_slice_for_all_namespaces
        )

    async def list_endpoint_slices(self, namespace: str) -> list[dict[str, Any]]:
        return await self._list_all(
            f"list EndpointSlices in {namespace}",
            self._discovery.list_namespaced_endpoint_slice,
            namespace=namespace,
        )

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Read one Pod; return None when it no longer exists."""
        extra = {"pod": f"{namespace}/{name}"}

        async def request() -> Any:
            return await self._core.read_namespaced_pod(
                name, namespace, _request_timeout=self._timeout
            )

        try:
            pod = await self._call(f"read Pod {namespace}/{name}", request, extra)
        except KubernetesError as err:
            if err.status == NOT_FOUND:
                return None
            raise
        return self._to_json(pod)

    async def patch_pod(self, namespace: str, name: str, body: Any) -> dict[str, Any]:
        """Apply a strategic merge patch to the Pod's metadata or spec."""

        async def request() -> dict[str, Any]:
            response = await self._core.patch_namespaced_pod(
                name,
                namespace,
                body,
                field_manager=FIELD_MANAGER,
                _request_timeout=self._timeout,
                _preload_content=False,
            )
            return await self._raw_json(response)

        return await self._call(
            f"patch Pod {namespace}/{name}", request, {"pod": f"{namespace}/{name}"}
        )

    async def patch_pod_status(self, namespace: str, name: str, body: Any) -> dict[str, Any]:
        """Apply a strategic merge patch to the Pod's status subresource."""

        async def request() -> dict[str, Any]:
            response = await self._core.patch_namespaced_pod_status(
                name,
                namespace,
                body,
                field_manager=FIELD_MANAGER,
                _request_timeout=self._timeout,
                _preload_content=False,
            )
            return await self._raw_json(response)

        operation = f"patch Pod status {namespace}/{name}"
        return await self._call(operation, request, {"pod": f"{namespace}/{name}"})

    async def read_node_uid(self, name: str) -> str | None:
        """Return the Node's UID, or None when the Node does not exist."""

        async def request() -> Any:
            return await self._core.read_node(name, _request_timeout=self._timeout)

        try:
            node = await self._call(f"read Node {name}", request, {"node": name})
        except KubernetesError as err:
            if err.status == NOT_FOUND:
                return None
            raise
        uid = self._to_json(node).get("metadata", {}).get("uid")
        return uid if isinstance(uid, str) else None

    async def create_event(self, event: dict[str, Any]) -> None:
        """Create an events.k8s.io/v1 Event; one that already exists counts as created.

        The Event's name is fixed before the first attempt, so a retry after a lost response
        gets 409 Conflict instead of creating a duplicate.
        """
        namespace = event["metadata"]["namespace"]

        async def request() -> Any:
            # The body is a dict, not an EventsV1Event: the client would serialize a datetime
            # eventTime without microseconds when they are zero, and the API server rejects
            # a MicroTime without them.
            return await self._events.create_namespaced_event(
                namespace,
                event,  # type: ignore[arg-type]
                field_manager=FIELD_MANAGER,
                _request_timeout=self._timeout,
            )

        try:
            await self._call(f"create Event in {namespace}", request, {})
        except KubernetesError as err:
            if err.status != CONFLICT:
                raise
