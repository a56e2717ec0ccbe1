"""A simulated edge estate for the scale runs: the agents' probe endpoint and each region's
federation endpoint, for thousands of nodes in one process.

Run as a child process::

    python -m bench.estate --inventory nodes.json --agent-port 9910 --federation-port 9911

Every node has its own loopback address (127.20.0.0/16 and up). One listener on
0.0.0.0:<agent-port> returns, for ``GET /probe``, the name of the node that owns the local
address the connection came in on, as the real agent does. It closes any connection from
outside 127.0.0.0/8. The federation endpoint (``GET /federate?region=R`` on 127.0.0.1) returns
what an edge Prometheus federates for region R: ``up`` of every agent and kubelet target,
value 1, stamped with the current time.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import signal
import time
from collections import defaultdict
from pathlib import Path

from aiohttp import web

from isolator.lab.monitoring import AGENT_JOB, KUBELET_JOB

LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
# Requests larger than this without a blank line are not HTTP from the isolator's prober.
MAX_REQUEST_BYTES = 8192
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


def node_address(index: int) -> str:
    """Return the loopback address of simulated node ``index`` (0-based)."""
    return str(ipaddress.IPv4Address("127.20.0.1") + index)


def _probe_response(node: str) -> bytes:
    body = json.dumps({"node": node}).encode()
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


class ProbeProtocol(asyncio.Protocol):
    """A minimal HTTP/1.1 server: GET /probe with keep-alive, nothing else.

    It is far cheaper per request than a full web framework, so that the estate, not the
    isolator, is the lighter side of the benchmark.
    """

    def __init__(self, responses: dict[str, bytes]) -> None:
        self._responses = responses
        self._transport: asyncio.Transport | None = None
        self._response = NOT_FOUND
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        if not peer or ipaddress.IPv4Address(peer[0]) not in LOOPBACK:
            transport.close()
            return
        self._response = self._responses.get(local[0], NOT_FOUND)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_REQUEST_BYTES:
                    self._transport.close()
                return
            request, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            if request.startswith(b"GET /probe "):
                self._transport.write(self._response)
            else:
                self._transport.write(NOT_FOUND)


class Federation:
    """Builds each region's /federate page from the inventory."""

    def __init__(self, nodes: list[dict[str, str]], agent_port: int) -> None:
        self._prefixes: dict[str, list[str]] = defaultdict(list)
        for node in nodes:
            name, region, ip = node["name"], node["region"], node["ip"]
            for job, port in ((AGENT_JOB, agent_port), (KUBELET_JOB, 10250)):
                self._prefixes[region].append(
                    f'up{{instance="{ip}:{port}",job="{job}",node="{name}",region="{region}"}} 1 '
                )

    async def handle(self, request: web.Request) -> web.Response:
        region = request.query.get("region", "")
        prefixes = self._prefixes.get(region)
        if prefixes is None:
            return web.Response(status=404, text=f"unknown region {region!r}\n")
        stamp = f"{round(time.time() * 1000)}\n"
        text = "# TYPE up untyped\n" + "".join(prefix + stamp for prefix in prefixes)
        return web.Response(text=text, content_type="text/plain")


async def run(args: argparse.Namespace) -> None:
    nodes = args.nodes
    responses = {node["ip"]: _probe_response(node["name"]) for node in nodes}
    loop = asyncio.get_running_loop()
    probe_server = await loop.create_server(
        lambda: ProbeProtocol(responses), "0.0.0.0", args.agent_port, backlog=4096
    )
    app = web.Application()
    app.router.add_get("/federate", Federation(nodes, args.agent_port).handle)
    app.router.add_get("/healthz", lambda _: _ok())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.federation_port).start()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        async with asyncio.timeout(args.max_lifetime_s):
            await stop.wait()
    finally:
        probe_server.close()
        await runner.cleanup()


async def _ok() -> web.Response:
    return web.Response(text="ok\n")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.estate", description=__doc__)
    parser.add_argument(
        "--inventory", required=True, help="JSON file: a list of {name, region, ip}"
    )
    parser.add_argument("--agent-port", type=int, required=True, help="TCP port of every agent")
    parser.add_argument("--federation-port", type=int, required=True, help="TCP port of /federate")
    parser.add_argument(
        "--max-lifetime-s",
        type=float,
        default=3600.0,
        help="seconds after which it stops by itself",
    )
    args = parser.parse_args()
    args.nodes = json.loads(Path(args.inventory).read_text())
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
