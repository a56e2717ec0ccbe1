"""Heartbeat load generator: simulated agents POST /v1/heartbeats at a fixed offered rate.

Run as a child process, so that its CPU time is its own::

    python -m bench.loadgen --url http://127.0.0.1:8080 --inventory nodes.json

It reads one step per line on standard input, ``{"rate": 1000, "duration_s": 10}``, and writes
one JSON result per line on standard output. End of input stops it, and so does
``--max-lifetime-s``.

The load is open-loop: request k of a step is due at ``k / rate`` seconds after the step starts,
whatever became of the earlier ones, up to ``--connections`` requests in flight. At that
limit the sender waits. It stops sending when the step's time is up, so a server that cannot
keep up shows as an achieved rate below the offered one. Every step ends on time, plus at most
DRAIN_TIMEOUT_S for the requests still in flight. Latency runs from the moment a
request is sent to the moment its whole response is read. Requests go round-robin over the
nodes of the inventory, each with its own increasing sequence number, in the shape the real
agent sends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from bench.stats import percentile

MAX_RATE_PER_S = 50_000
MAX_STEP_S = 900.0
# How often the sender wakes up to send what has fallen due, in seconds.
SEND_TICK_S = 0.002
REQUEST_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = REQUEST_TIMEOUT_S + 2.0
COMPONENTS = {"kubelet": True, "kube-proxy": True, "cni": True, "coredns": True}


class HeartbeatSender:
    """Sends the heartbeats of every simulated node over one pooled aiohttp session."""

    def __init__(self, url: str, nodes: list[dict[str, str]], connections: int) -> None:
        self._url = f"{url.rstrip('/')}/v1/heartbeats"
        self._nodes = nodes
        self._next = 0
        self._seq = [0] * len(nodes)
        # A node with a "token" sends it, as an agent sends its own token.
        self._headers = [
            {"Content-Type": "application/json"}
            | ({"Authorization": f"Bearer {node['token']}"} if node.get("token") else {})
            for node in nodes
        ]
        self._connections = connections
        self._slots = asyncio.Semaphore(connections)
        connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        )

    async def close(self) -> None:
        await self._session.close()

    def _next_request(self) -> tuple[bytes, dict[str, str]]:
        """Return the body and headers of the next node's next heartbeat."""
        index = self._next
        self._next = (index + 1) % len(self._nodes)
        self._seq[index] += 1
        node = self._nodes[index]
        beat = {
            "node": node["name"],
            "region": node["region"],
            "seq": self._seq[index],
            "sent_at": time.time(),
            "components": COMPONENTS,
            "ingress_ok": True,
        }
        return json.dumps(beat).encode(), self._headers[index]

    async def run_step(self, rate: float, duration_s: float) -> dict[str, Any]:
        """Offer ``rate`` heartbeats per second for ``duration_s`` seconds and report."""
        rate = min(max(rate, 1.0), MAX_RATE_PER_S)
        duration_s = min(max(duration_s, 0.1), MAX_STEP_S)
        total = max(1, round(rate * duration_s))
        latencies: list[float] = []
        lags: list[float] = []
        statuses: Counter[str] = Counter()
        tasks: set[asyncio.Task[None]] = set()

        async def send(body: bytes, headers: dict[str, str]) -> None:
            started = time.perf_counter()
            try:
                async with self._session.post(self._url, data=body, headers=headers) as response:
                    await response.read()
                    statuses[str(response.status)] += 1
            except (aiohttp.ClientError, TimeoutError) as err:
                statuses[type(err).__name__] += 1
            else:
                latencies.append(time.perf_counter() - started)
            finally:
                self._slots.release()

        cpu_before = time.process_time()
        start = time.perf_counter()
        deadline = start + duration_s
        sent = 0
        while sent < total and time.perf_counter() < deadline:
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            while sent < due:
                try:
                    async with asyncio.timeout_at(_loop_time_at(deadline)):
                        await self._slots.acquire()
                except TimeoutError:
                    break
                lags.append(time.perf_counter() - (start + sent / rate))
                task = asyncio.create_task(send(*self._next_request()))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.sleep(SEND_TICK_S)
        if tasks:
            # Requests still in flight get the client timeout to finish; cancelled ones count
            # as errors of their own kind.
            _, pending = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S)
            for task in pending:
                task.cancel()
            if pending:
                statuses["unfinished"] += len(pending)
        ok = statuses.get("200", 0)
        errors = sum(statuses.values()) - ok
        return {
            "rate": rate,
            "duration_s": duration_s,
            "sent": sent,
            "ok": ok,
            "errors": errors,
            "statuses": dict(statuses),
            # A sender held back by the connection limit sends fewer than offered by the end
            # of the step, so a server that falls behind shows here.
            "achieved_rate": round(sent / duration_s, 1),
            "latency_ms": _latency_summary(latencies),
            "send_lag_ms_p99": round(percentile(lags, 99) * 1000, 2) if lags else None,
            "loadgen_cpu_s": round(time.process_time() - cpu_before, 3),
            "connections": self._connections,
        }


def _loop_time_at(perf_counter_time: float) -> float:
    """Convert a time.perf_counter() reading into the event loop's clock."""
    return asyncio.get_running_loop().time() + perf_counter_time - time.perf_counter()


def _latency_summary(latencies: list[float]) -> dict[str, float] | None:
    if not latencies:
        return None
    return {
        name: round(percentile(latencies, q) * 1000, 3)
        for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
    }


async def serve(args: argparse.Namespace) -> None:
    nodes = args.nodes
    if not nodes:
        raise SystemExit(f"inventory {args.inventory} lists no nodes")
    sender = HeartbeatSender(args.url, nodes, args.connections)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        async with asyncio.timeout(args.max_lifetime_s):
            while line := await reader.readline():
                step = json.loads(line)
                result = await sender.run_step(float(step["rate"]), float(step["duration_s"]))
                print(json.dumps(result), flush=True)
    finally:
        await sender.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--url", required=True, help="base URL of the isolator API")
    parser.add_argument(
        "--inventory",
        required=True,
        help="JSON file: a list of {name, region, ip} with an optional API token per node",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=128,
        help="connections in the pool, and requests in flight",
    )
    parser.add_argument(
        "--max-lifetime-s",
        type=float,
        default=3600.0,
        help="seconds after which the generator stops by itself",
    )
    args = parser.parse_args()
    args.nodes = json.loads(Path(args.inventory).read_text())
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
