"""Probes from the isolator to each node agent: the cloud-to-edge half of the heartbeat."""

from __future__ import annotations

import logging
import ssl

import aiohttp

logger = logging.getLogger(__name__)


class AgentProber:
    """Sends ``GET /probe`` to agents over one shared HTTP session.

    With ``ssl_context``, https URLs are verified against it; ``server_name`` then replaces the
    URL's host in that check, so that one certificate can serve every agent.
    """

    def __init__(
        self,
        timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._ssl_context = ssl_context
        self._server_name = server_name
        self._session: aiohttp.ClientSession | None = None
        # Nodes whose certificate failed verification since their last answered probe, so that
        # a wrong CA or server name logs one warning per node instead of one per probe.
        self._certificate_failures: set[str] = set()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def probe(self, node: str, url: str) -> bool:
        """Return True when the agent at ``url`` responds as ``node``; any failure is False."""
        if self._session is None:
            connector = None
            if self._ssl_context is not None:
                connector = aiohttp.TCPConnector(ssl=self._ssl_context)
            self._session = aiohttp.ClientSession(timeout=self._timeout, connector=connector)
        try:
            async with self._session.get(
                f"{url}/probe", server_hostname=self._server_name
            ) as response:
                if response.status != 200:
                    return False
                body = await response.json()
        except aiohttp.ClientConnectorCertificateError as err:
            self._warn_certificate(node, url, err)
            return False
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            logger.debug("probe failed", extra={"node": node, "error": repr(err)})
            return False
        self._certificate_failures.discard(node)
        # An agent answering for another node means the address moved: that is no proof of life.
        return isinstance(body, dict) and body.get("node") == node

    def _warn_certificate(
        self, node: str, url: str, err: aiohttp.ClientConnectorCertificateError
    ) -> None:
        if node in self._certificate_failures:
            return
        self._certificate_failures.add(node)
        logger.warning(
            "agent certificate not verified; check ISOLATOR_PROBE_CA_FILE and "
            "ISOLATOR_PROBE_TLS_SERVER_NAME against the agent's certificate",
            extra={"node": node, "url": url, "error": str(err.certificate_error)},
        )
