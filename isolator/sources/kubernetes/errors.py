"""Errors of the Kubernetes adapter, the one function that maps transport errors to them, and
the bounded retry that every request goes through."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from isolator.clock import Clock
from isolator.logs import truncate
from isolator.sources.errors import SourceError, SourceUnavailableError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Requests are tried this many times in all when the API server is unavailable or throttles.
MAX_ATTEMPTS = 3

# Pause before the second attempt, doubled before each later one, in seconds.
FIRST_BACKOFF_S = 0.2

# Upper bound on a server's Retry-After, in seconds. A cut must land within seconds, so a longer
# pause is not worth waiting for: the caller sees the error and decides again on its next pass.
MAX_RETRY_AFTER_S = 5.0


class KubernetesError(SourceError):
    """A failure talking to Kubernetes; the cause is chained and ``status`` is the HTTP code."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KubernetesUnavailableError(KubernetesError, SourceUnavailableError):
    """The API server refused the connection, timed out, throttled or failed (5xx): retry later.

    ``retry_after_s`` is the server's Retry-After, already bounded, when it sent one.
    """

    def __init__(
        self, message: str, *, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after_s = retry_after_s


def map_error(err: BaseException, operation: str) -> KubernetesError:
    """Translate a kubernetes-asyncio or aiohttp error into this adapter's error classes.

    ``operation`` names the request, for example "patch Pod status edge/web-1".
    """
    if isinstance(err, KubernetesError):
        return err
    if isinstance(err, ApiException):
        return _map_api_exception(err, operation)
    if isinstance(err, ConfigException):
        return KubernetesError(f"{operation} failed: invalid client configuration: {err}")
    if isinstance(err, aiohttp.ClientSSLError):
        # A certificate problem does not go away by waiting, so it is not "unavailable".
        return KubernetesError(f"{operation} failed: TLS error: {err}")
    if isinstance(err, TimeoutError):
        return KubernetesUnavailableError(f"{operation} timed out")
    if isinstance(err, aiohttp.ClientError):
        return KubernetesUnavailableError(f"{operation} failed: {type(err).__name__}: {err}")
    return KubernetesError(f"{operation} failed: {type(err).__name__}: {err}")


def _map_api_exception(err: ApiException, operation: str) -> KubernetesError:
    status = int(err.status or 0)
    message = f"{operation} failed: HTTP {status} {err.reason or ''}".rstrip()
    detail = _status_message(err.body)
    if detail:
        message = f"{message}: {detail}"
    if status == 429:
        retry_after = parse_retry_after(err.headers)
        return KubernetesUnavailableError(message, status=status, retry_after_s=retry_after)
    # Status 0 is how kubernetes-asyncio reports a request it could not send.
    if status == 0 or status == 408 or status >= 500:
        return KubernetesUnavailableError(message, status=status)
    return KubernetesError(message, status=status)


def _status_message(body: object) -> str:
    """Return the ``message`` of a Kubernetes Status body, or the body itself, shortened."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if not isinstance(body, str) or not body:
        return ""
    try:
        decoded = json.loads(body)
    except ValueError:
        return truncate(body)
    if isinstance(decoded, dict) and isinstance(decoded.get("message"), str):
        return truncate(decoded["message"])
    return truncate(body)


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Return the Retry-After header in seconds, bounded by MAX_RETRY_AFTER_S, or None.

    The API server sends whole seconds; the HTTP-date form is treated as absent.
    """
    if not headers:
        return None
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return min(seconds, MAX_RETRY_AFTER_S)


async def call_with_retry(
    operation: str,
    request: Callable[[], Awaitable[T]],
    *,
    clock: Clock,
    attempts: int = MAX_ATTEMPTS,
    log_extra: Mapping[str, Any] | None = None,
    jitter: float = 0.0,
) -> T:
    """Await ``request()``, retrying while Kubernetes is unavailable, at most ``attempts`` times.

    Every other error is raised at once. Errors are raised as KubernetesError with the
    original chained. Each pause (the server's Retry-After, else the backoff) grows by a
    random share of up to ``jitter`` of itself, so that requests throttled together do not
    all come back at the same instant.
    """
    backoff = FIRST_BACKOFF_S
    for attempt in range(1, attempts + 1):
        try:
            return await request()
        except (ApiException, aiohttp.ClientError, TimeoutError) as err:
            error = map_error(err, operation)
            if not isinstance(error, KubernetesUnavailableError):
                raise error from err
            extra = {
                **(log_extra or {}),
                "operation": operation,
                "attempt": f"{attempt} of {attempts}",
                "error": str(error),
            }
            if attempt == attempts:
                logger.warning("Kubernetes request failed, giving up", extra=extra)
                raise error from err
            delay = error.retry_after_s if error.retry_after_s is not None else backoff
            delay *= 1.0 + jitter * random.random()  # spreading, not secrecy
            logger.warning(
                "Kubernetes request failed, will retry", extra={**extra, "delay_s": delay}
            )
            await clock.sleep(delay)
            backoff *= 2
    # Reached only with attempts < 1.
    raise ValueError(f"attempts must be at least 1, got {attempts}")
