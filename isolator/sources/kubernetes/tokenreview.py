"""Bearer tokens checked by the API server's TokenReview API (authentication.k8s.io/v1).

The token travels only in the request body. It is never part of an operation name, a log line
or an error message. A failed review is not logged here. The error raised masks the token, in
case a Status message quotes it, as an authenticating proxy in front of the API server might.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from isolator.sources.kubernetes.errors import (
    KubernetesError,
    KubernetesUnavailableError,
    map_error,
)
from isolator.sources.kubernetes.source import _load_api_client

# The user extra that a Pod-bound ServiceAccount token carries on Kubernetes 1.32 and later:
# the name of the Node that the Pod was scheduled to when the token was issued.
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"

OPERATION = "create TokenReview"


@dataclass(frozen=True, slots=True)
class TokenReview:
    """The API server's verdict on one token, and the user it belongs to when authenticated."""

    authenticated: bool
    username: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def _review_of(status: Any) -> TokenReview:
    if status is None or not status.authenticated or status.user is None:
        return TokenReview(authenticated=False)
    user = status.user
    extra = {str(key): tuple(values or ()) for key, values in (user.extra or {}).items()}
    return TokenReview(
        authenticated=True,
        username=user.username or "",
        groups=tuple(user.groups or ()),
        extra=extra,
    )


class KubernetesTokenReviewer:
    """Sends each token to the TokenReview API on a Kubernetes client of its own.

    A request is tried once. The authenticator in front of it caches reviews and waits
    between attempts while the API server is unavailable, so a retry here would only hold
    the caller's request longer.
    """

    def __init__(
        self,
        api_client: ApiClient,
        *,
        audiences: Sequence[str] = (),
        request_timeout_s: float = 5.0,
    ) -> None:
        self._api_client = api_client
        self._authentication = client.AuthenticationV1Api(api_client)
        self._audiences = list(audiences) or None
        self._timeout = request_timeout_s

    @classmethod
    async def create(
        cls,
        kubeconfig: str | None,
        *,
        audiences: Sequence[str] = (),
        request_timeout_s: float = 5.0,
    ) -> KubernetesTokenReviewer:
        """Connect with a kubeconfig file, or with the in-cluster service account when None.

        ``audiences`` empty accepts the API server's own audiences. Raises KubernetesError
        when the credentials cannot be loaded.
        """
        api_client = await _load_api_client(kubeconfig)
        return cls(
            api_client,
            audiences=audiences,
            request_timeout_s=request_timeout_s,
        )

    async def close(self) -> None:
        await self._api_client.close()

    async def review(self, token: str) -> TokenReview:
        """Send ``token`` to the TokenReview API and return its verdict.

        Raises KubernetesUnavailableError when the API server cannot be reached, times out or
        fails, and KubernetesError for any other failure, such as a ClusterRole without
        ``create`` on ``tokenreviews``.
        """
        body = client.V1TokenReview(
            api_version="authentication.k8s.io/v1",
            kind="TokenReview",
            spec=client.V1TokenReviewSpec(token=token, audiences=self._audiences),
        )

        try:
            response = await self._authentication.create_token_review(
                body, _request_timeout=self._timeout
            )
        except (ApiException, aiohttp.ClientError, TimeoutError) as err:
            raise _masked(map_error(err, OPERATION), token) from None
        return _review_of(response.status)


def _masked(error: KubernetesError, token: str) -> KubernetesError:
    """Return ``error`` with every copy of ``token`` in its message replaced.

    The original exception is not chained, because its body may quote the token too.
    """
    message = str(error).replace(token, "<token>")
    if isinstance(error, KubernetesUnavailableError):
        return KubernetesUnavailableError(
            message, status=error.status, retry_after_s=error.retry_after_s
        )
    return KubernetesError(message, status=error.status)
