"""Raw HTTPS access to a lab API server with the client certificate of a kubeconfig.

The benchmark creates thousands of Nodes and reads the API server's own request counters,
and plain aiohttp does both with less overhead than the generated client.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from isolator.model import REGION_LABEL

# The verbs that apiserver_request_total reports for requests that change nothing.
READ_VERBS = frozenset({"GET", "LIST", "WATCH", "WATCHLIST", "CONNECT"})

# A request key: (verb, API group, resource, subresource); "" stands for the core group or for
# no subresource.
RequestKey = tuple[str, str, str, str]
RequestCounts = dict[RequestKey, float]


@dataclass(frozen=True)
class SimulatedNode:
    """A Node of a simulated estate: its name, region and InternalIP."""

    name: str
    region: str
    ip: str


def _write_pem(folder: Path, name: str, data: str) -> Path:
    path = folder / name
    path.touch(mode=0o600)
    path.write_bytes(base64.b64decode(data))
    return path


def ssl_context_from_kubeconfig(kubeconfig: Path) -> tuple[str, ssl.SSLContext]:
    """Return the server URL of the kubeconfig's first cluster and an SSL context for its user.

    Only inline certificate data (``*-data`` fields) is supported, as the lab writes it.
    """
    document = yaml.safe_load(kubeconfig.read_text())
    cluster = document["clusters"][0]["cluster"]
    user = document["users"][0]["user"]
    with tempfile.TemporaryDirectory(prefix="bench-kubeconfig-") as folder:
        root = Path(folder)
        ca = _write_pem(root, "ca.crt", cluster["certificate-authority-data"])
        cert = _write_pem(root, "client.crt", user["client-certificate-data"])
        key = _write_pem(root, "client.key", user["client-key-data"])
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
    return str(cluster["server"]), context


def parse_request_counts(metrics_text: str) -> RequestCounts:
    """Sum apiserver_request_total by verb, group, resource and subresource."""
    lines = [line for line in metrics_text.splitlines() if line.startswith("apiserver_request_")]
    counts: RequestCounts = {}
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            if sample.name != "apiserver_request_total":
                continue
            labels = sample.labels
            key = (
                labels.get("verb", ""),
                labels.get("group", ""),
                labels.get("resource", ""),
                labels.get("subresource", ""),
            )
            counts[key] = counts.get(key, 0.0) + sample.value
    return counts


def difference(after: RequestCounts, before: RequestCounts) -> RequestCounts:
    """Return the requests counted between two readings; keys that did not grow are left out."""
    grown = {key: value - before.get(key, 0.0) for key, value in after.items()}
    return {key: value for key, value in grown.items() if value > 0}


def writes(counts: RequestCounts) -> RequestCounts:
    """Keep only the requests that change state."""
    return {key: value for key, value in counts.items() if key[0] not in READ_VERBS}


def describe(key: RequestKey) -> str:
    """Format a request key as "PATCH pods/status" or "POST events.k8s.io/events"."""
    verb, group, resource, subresource = key
    name = f"{group}/{resource}" if group else resource
    return f"{verb} {name}/{subresource}" if subresource else f"{verb} {name}"


class ApiServer:
    """An aiohttp session to the API server of a kubeconfig; use ``async with``."""

    def __init__(self, kubeconfig: Path, connections: int = 32) -> None:
        self.url, self._ssl = ssl_context_from_kubeconfig(kubeconfig)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiServer:
        connector = aiohttp.TCPConnector(limit=self._connections, ssl=self._ssl)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=30.0)
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use ApiServer in an async with block"
        return self._session

    async def request_counts(self) -> RequestCounts:
        """Read apiserver_request_total from the API server's /metrics."""
        async with self.session.get(f"{self.url}/metrics") as response:
            response.raise_for_status()
            text = await response.text()
        return await asyncio.to_thread(parse_request_counts, text)

    async def create_nodes(self, nodes: Sequence[SimulatedNode], labels: dict[str, str]) -> None:
        """Create a Node with an InternalIP for each entry, ``self._connections`` at a time.

        Each Node gets the region label plus ``labels``. The status is written through the
        status subresource when the create dropped it.
        """
        queue: asyncio.Queue[SimulatedNode] = asyncio.Queue()
        for node in nodes:
            queue.put_nowait(node)

        async def worker() -> None:
            while not queue.empty():
                await self._create_node(queue.get_nowait(), labels)

        await asyncio.gather(*(worker() for _ in range(self._connections)))

    async def _create_node(self, node: SimulatedNode, labels: dict[str, str]) -> None:
        status = {"addresses": [{"type": "InternalIP", "address": node.ip}]}
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node.name, "labels": {REGION_LABEL: node.region, **labels}},
            "status": status,
        }
        async with self.session.post(f"{self.url}/api/v1/nodes", json=body) as response:
            if response.status != 201:
                text = await response.text()
                raise RuntimeError(
                    f"creating Node {node.name} failed: HTTP {response.status}: {text[:300]}"
                )
            created = await response.json()
        if (created.get("status") or {}).get("addresses"):
            return
        url = f"{self.url}/api/v1/nodes/{node.name}/status"
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self.session.patch(url, json={"status": status}, headers=headers) as response:
            if response.status != 200:
                text = await response.text()
                raise RuntimeError(
                    f"setting the address of Node {node.name} failed: "
                    f"HTTP {response.status}: {text[:300]}"
                )


def write_summary(counts: Iterable[tuple[RequestKey, float]]) -> dict[str, float]:
    """Return {"PATCH pods/status": n, ...} sorted by request, for the JSON report."""
    return {describe(key): round(value, 1) for key, value in sorted(counts)}
