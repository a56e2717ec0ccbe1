"""Probes from the isolator to each node agent: the cloud-to-edge half of the heartbeat."""

from __future__ import annotations

import logging

import aiohttp

logger = logging.getLogger(__name__)


class AgentProber:
    """Sends ``GET /probe`` to agents over one shared HTTP session."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def probe(self, node: str, url: str) -> bool:
        """Return True when the agent at ``url`` responds as ``node``; any failure is False."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(f"{url}/probe") as response:
                if response.status != 200:
                    return False
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            logger.debug("probe failed", extra={"node": node, "error": repr(err)})
            return False
        # An agent answering for another node means the address moved: that is no proof of life.
        return isinstance(body, dict) and body.get("node") == node
