"""Ready endpoints of a Service over time: which Pod left the ready set, and when."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

logger = logging.getLogger(__name__)

# Seconds between two reads of the EndpointSlices; it bounds the resolution of every latency.
POLL_S = 0.05


class ReadyEndpoints:
    """Polls a Service's ready endpoints and records the wall time of every change.

    Use it as ``async with ReadyEndpoints(read, initial) as ready``. ``read`` returns the names
    of the Pods that are ready endpoints right now.
    """

    def __init__(
        self, read: Callable[[], Awaitable[set[str]]], initial: set[str], poll_s: float = POLL_S
    ) -> None:
        self._read = read
        self._poll_s = poll_s
        self.ready = set(initial)
        self.left_at: dict[str, float] = {}  # Pod -> wall time it last left the ready set
        self.read_errors = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ReadyEndpoints:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                ready = await self._read()
            except (ApiException, aiohttp.ClientError, TimeoutError) as err:
                self.read_errors += 1
                logger.warning("reading the ready endpoints failed", extra={"error": repr(err)})
            else:
                now = time.time()
                for pod in self.ready - ready:
                    self.left_at[pod] = now
                for pod in ready - self.ready:
                    self.left_at.pop(pod, None)
                self.ready = ready
            await asyncio.sleep(self._poll_s)

    def left_since(self, since: float) -> dict[str, float]:
        """Return the Pods that left the ready set at or after wall time ``since`` and are
        still out, with the time each left."""
        return {pod: at for pod, at in self.left_at.items() if at >= since}

    async def wait_until(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``condition()`` holds, checked after every read; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(self._poll_s / 2)
        return True
