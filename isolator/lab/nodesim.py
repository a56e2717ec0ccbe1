"""A stand-in for the components of one simulated edge node, run inside its region.

KWOK simulates Nodes and Pods for the API server, but nothing on the node's own address
answers. This server plays the node's local components for the agent's checks and the edge
Prometheus: a health endpoint per component, a path through the node's ingress, and a
``/metrics`` page scraped as the node's kubelet target. The lab injects faults through
``POST /faults``; killing the process is a node crash.

Run as ``python -m isolator.lab.nodesim --listen ADDRESS:PORT --node NAME``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from aiohttp import web

logger = logging.getLogger(__name__)

COMPONENTS = ("kubelet", "kube-proxy", "cni", "coredns", "ingress-controller")
NODESIM_PORT = 10250


def component_urls(address: str) -> dict[str, str]:
    """Return the health URL of every simulated component on a node address."""
    return {name: f"http://{address}:{NODESIM_PORT}/healthz/{name}" for name in COMPONENTS}


def ingress_url(address: str) -> str:
    return f"http://{address}:{NODESIM_PORT}/ingress/"


class NodeSimulator:
    """The node's components; each is healthy until a fault names it."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.failed: set[str] = set()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024)
        app.router.add_get("/healthz/{component}", self._health)
        app.router.add_get("/ingress/", self._ingress)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/faults", self._set_faults)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        component = request.match_info["component"]
        if component not in COMPONENTS:
            return web.Response(status=404, text=f"unknown component {component}")
        if component in self.failed:
            return web.Response(status=503, text=f"{component} failed")
        return web.Response(text="ok")

    async def _ingress(self, _: web.Request) -> web.Response:
        if "ingress-controller" in self.failed or "ingress-path" in self.failed:
            return web.Response(status=502, text="ingress path broken")
        return web.Response(text="served through the ingress")

    async def _metrics(self, _: web.Request) -> web.Response:
        lines = [
            "# HELP lab_node_component_up 1 while the simulated component is healthy.",
            "# TYPE lab_node_component_up gauge",
        ]
        for name in COMPONENTS:
            lines.append(
                f'lab_node_component_up{{component="{name}"}} {int(name not in self.failed)}'
            )
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def _set_faults(self, request: web.Request) -> web.Response:
        body = await request.json()
        failed = body.get("failed") if isinstance(body, dict) else None
        if not isinstance(failed, list) or not all(isinstance(x, str) for x in failed):
            return web.json_response({"error": "failed must be a list of names"}, status=422)
        self.failed = set(failed)
        logger.info("faults set", extra={"node": self.node, "failed": sorted(self.failed)})
        return web.json_response({"failed": sorted(self.failed)})


async def serve(listen: str, node: str) -> None:
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(NodeSimulator(node).app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, int(port)).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="ADDRESS:PORT to bind")
    parser.add_argument("--node", required=True, help="name of the simulated node")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    asyncio.run(serve(args.listen, args.node))


if __name__ == "__main__":
    main()
