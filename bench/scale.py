"""Heartbeat ingest and control-loop cost at 1,000, 3,000 and 10,000 simulated nodes.

For each node count the run starts, on loopback only:

- a real control plane (etcd, kube-apiserver, the endpoint controllers, KWOK) holding one Node
  per simulated node. The Nodes carry a label that keeps KWOK away, so the isolator lists its
  inventory from the real API server while no kubelet simulation loads the machine;
- the simulated estate (``bench.estate``): every node's probe endpoint on its own loopback
  address, and one federation endpoint per region of REGION_SIZE nodes;
- a central Prometheus that federates those endpoints every FEDERATION_INTERVAL_S;
- ``isolator serve`` with its default settings, and API tokens where it has authentication;
- the heartbeat load generator (``bench.loadgen``) as a separate process.

It then warms up at one heartbeat per node per second until every node is heard both ways
(heartbeat and probe), measures a steady phase at that rate (CPU, loop duration, queries per
loop, memory, API requests), optionally profiles the isolator with py-spy, and finally offers
increasing heartbeat rates until one fails: errors, an achieved rate under ACHIEVED_FRACTION of
the offer, or a p99 latency of MAX_P99_MS or more.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench import procfs
from bench.estate import node_address
from bench.kubeapi import ApiServer, RequestCounts, SimulatedNode, describe, difference
from bench.pyspy import summarize_profile
from bench.stats import histogram_quantile, linear_fit
from isolator.lab.cluster import KUBELET_LABEL, KUBELET_STOPPED
from isolator.lab.controlplane import ControlPlane
from isolator.lab.monitoring import FEDERATE_JOB, PROMETHEUS_BINARY, free_port, wait_ready
from isolator.lab.process import ManagedProcess
from isolator.settings import Settings

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
REGION_SIZE = 100
FEDERATION_INTERVAL_S = 5
MAX_P99_MS = 50.0
ACHIEVED_FRACTION = 0.95
WARMUP_STEP_S = 5.0
READY_TIMEOUT_S = 60.0
# The isolator's default heartbeat interval (1 s) times its default miss count (3).
HEARTBEAT_TIMEOUT_S = 3.0
PROFILE_RATE_HZ = 100
STEP_GRACE_S = 60.0  # extra time a load step may take to report before it counts as hung

Sample = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class ScaleOptions:
    """Node counts, phase lengths and offered rates of the scale runs."""

    node_counts: list[int]
    rates: list[int]
    steady_s: float = 20.0
    step_s: float = 10.0
    warmup_timeout_s: float = 90.0
    connections: int = 128
    profile_s: float = 10.0  # 0 turns profiling off; it runs at the largest node count only


@dataclass
class Snapshot:
    """Counters of every process of interest at one instant."""

    at: float
    isolator_cpu_s: float
    estate_cpu_s: float
    isolator: dict[Sample, float]
    prometheus_queries: float
    apiserver: RequestCounts


@dataclass
class ScaleRun:
    """Every figure measured at one node count."""

    nodes: int
    regions: int
    create_nodes_s: float = 0.0
    live_after_warmup: int = 0  # nodes heard both ways within the heartbeat timeout
    warmup_s: float = 0.0
    steady: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    max_rate_per_s: int | None = None
    cpu_fit: dict[str, float] | None = None
    profile: dict[str, Any] | None = None
    # ISOLATOR_* settings beyond addresses and paths; every other setting has its default.
    isolator_settings: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # why the run stopped early, if it did
    authentication: bool = False  # whether every request carried an API token


def make_inventory(count: int) -> list[SimulatedNode]:
    """Return ``count`` nodes in regions of REGION_SIZE, each with its own loopback address."""
    return [
        SimulatedNode(
            name=f"e{index // REGION_SIZE + 1:03d}-n{index % REGION_SIZE + 1:03d}",
            region=f"e{index // REGION_SIZE + 1:03d}",
            ip=node_address(index),
        )
        for index in range(count)
    ]


def parse_samples(text: str) -> dict[Sample, float]:
    """Flatten a Prometheus text page into {(sample name, sorted labels): value}."""
    samples: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Mapping[Sample, float], name: str, **labels: str) -> float:
    """Sum the samples called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def loop_figures(before: Mapping[Sample, float], after: Mapping[Sample, float]) -> dict[str, Any]:
    """Return loop passes, mean and estimated p99 duration between two metric readings."""
    name = "isolator_loop_duration_seconds"
    passes = total(after, f"{name}_count") - total(before, f"{name}_count")
    seconds = total(after, f"{name}_sum") - total(before, f"{name}_sum")
    buckets: dict[float, float] = {}
    for (sample, labels), value in after.items():
        if sample == f"{name}_bucket":
            bound = float(dict(labels)["le"])
            buckets[bound] = value - before.get((sample, labels), 0.0)
    return {
        "passes": passes,
        "mean_s": round(seconds / passes, 4) if passes else None,
        "p99_s": _round(histogram_quantile(0.99, buckets), 4),
        "buckets": {("+Inf" if math.isinf(b) else str(b)): v for b, v in sorted(buckets.items())},
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def step_passed(result: Mapping[str, Any], rate: float) -> tuple[bool, str]:
    """Judge one load step; returns whether it passed and why not."""
    latency = result.get("latency_ms") or {}
    if result["errors"]:
        return False, f"{result['errors']} requests failed: {result['statuses']}"
    if result["achieved_rate"] < ACHIEVED_FRACTION * rate:
        return False, f"achieved {result['achieved_rate']}/s of the {rate}/s offered"
    if latency.get("p99", math.inf) >= MAX_P99_MS:
        return False, f"p99 latency {latency.get('p99')} ms"
    return True, ""


class LoadGenerator:
    """The ``bench.loadgen`` child process, driven one step at a time over its stdin."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @classmethod
    async def start(
        cls, url: str, inventory: Path, connections: int, log_path: Path
    ) -> LoadGenerator:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.loadgen",
                "--url",
                url,
                "--inventory",
                str(inventory),
                "--connections",
                str(connections),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=REPO_ROOT,
                start_new_session=True,
            )
        return cls(process)

    @property
    def pid(self) -> int:
        return self._process.pid

    async def step(self, rate: float, duration_s: float) -> dict[str, Any]:
        """Offer ``rate`` heartbeats per second for ``duration_s`` and return the result."""
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(json.dumps({"rate": rate, "duration_s": duration_s}).encode())
        self._process.stdin.write(b"\n")
        await self._process.stdin.drain()
        line = await asyncio.wait_for(
            self._process.stdout.readline(), timeout=duration_s + STEP_GRACE_S
        )
        if not line:
            raise RuntimeError(f"the load generator exited with code {await self._process.wait()}")
        result: dict[str, Any] = json.loads(line)
        return result

    async def stop(self) -> None:
        if self._process.returncode is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                await asyncio.wait_for(self._process.wait(), timeout=5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._process.send_signal(signal.SIGKILL)
                await self._process.wait()


class ScaleLab:
    """Everything one node count needs, started and stopped together."""

    def __init__(self, bin_dir: Path, work_dir: Path, nodes: int, options: ScaleOptions) -> None:
        self.work_dir = work_dir
        self.inventory = make_inventory(nodes)
        self.options = options
        self.plane = ControlPlane(work_dir / "controlplane", bin_dir)
        self.processes: list[ManagedProcess] = []
        self.loadgen: LoadGenerator | None = None
        self.apiserver: ApiServer | None = None
        self.isolator_url = ""
        self.prometheus_url = ""
        self.isolator_pid = 0
        self.isolator_settings: dict[str, str] = {}
        self.estate_pid = 0
        # Where the isolator has API authentication, it runs with it, as in production: every
        # simulated agent gets a token of its own, and the benchmark reads with a viewer token.
        self.authenticate = "auth_token_file" in Settings.model_fields
        self.tokens: dict[str, str] = {}
        headers: dict[str, str] = {}
        if self.authenticate:
            self.tokens = {node.name: secrets.token_urlsafe(24) for node in self.inventory}
            self.viewer_token = secrets.token_urlsafe(24)
            headers["Authorization"] = f"Bearer {self.viewer_token}"
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30.0), headers=headers
        )

    @property
    def logs(self) -> Path:
        return self.work_dir / "logs"

    async def start(self) -> float:
        """Start every part; returns the seconds that creating the Nodes took."""
        await self.plane.start()
        self.apiserver = ApiServer(self.plane.kubeconfig)
        await self.apiserver.__aenter__()
        started = time.monotonic()
        await self.apiserver.create_nodes(self.inventory, {KUBELET_LABEL: KUBELET_STOPPED})
        create_s = time.monotonic() - started
        inventory_file = self.work_dir / "inventory.json"
        entries = [{**vars(node), "token": self.tokens.get(node.name)} for node in self.inventory]
        inventory_file.write_text(json.dumps(entries))

        agent_port = free_port("0.0.0.0")
        federation_port = free_port()
        estate = self._launch(
            "estate",
            [
                sys.executable,
                "-m",
                "bench.estate",
                f"--inventory={inventory_file}",
                f"--agent-port={agent_port}",
                f"--federation-port={federation_port}",
            ],
        )
        self.estate_pid = estate.pid or 0
        await wait_ready(
            self.session, estate, f"http://127.0.0.1:{federation_port}/healthz", READY_TIMEOUT_S
        )
        await self._start_prometheus(federation_port)
        await self._start_isolator(agent_port)
        self.loadgen = await LoadGenerator.start(
            self.isolator_url, inventory_file, self.options.connections, self.logs / "loadgen.log"
        )
        return create_s

    def _launch(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> ManagedProcess:
        process = ManagedProcess(name, argv, self.logs / f"{name}.log", env=env, cwd=REPO_ROOT)
        self.processes.append(process)
        process.start()
        return process

    async def _start_prometheus(self, federation_port: int) -> None:
        port = free_port()
        folder = self.work_dir / "prometheus"
        folder.mkdir(parents=True, exist_ok=True)
        regions = sorted({node.region for node in self.inventory})
        config = {
            "global": {
                "scrape_interval": f"{FEDERATION_INTERVAL_S}s",
                "scrape_timeout": f"{FEDERATION_INTERVAL_S - 1}s",
                "evaluation_interval": f"{FEDERATION_INTERVAL_S}s",
            },
            "scrape_configs": [
                {
                    "job_name": FEDERATE_JOB,
                    "honor_labels": True,
                    "metrics_path": "/federate",
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{federation_port}"], "labels": {"region": r}}
                        for r in regions
                    ],
                    # The region becomes a URL parameter, so one endpoint serves every region.
                    "relabel_configs": [
                        {"source_labels": ["region"], "target_label": "__param_region"}
                    ],
                }
            ],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        process = self._launch(
            "central-prometheus",
            [
                PROMETHEUS_BINARY,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                "--storage.tsdb.retention.time=1h",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
        )
        self.prometheus_url = f"http://127.0.0.1:{port}"
        await wait_ready(self.session, process, f"{self.prometheus_url}/-/ready", READY_TIMEOUT_S)

    async def _start_isolator(self, agent_port: int) -> None:
        port = free_port()
        env = {
            "ISOLATOR_LISTEN_HOST": "127.0.0.1",
            "ISOLATOR_LISTEN_PORT": str(port),
            "ISOLATOR_KUBECONFIG": str(self.plane.kubeconfig),
            "ISOLATOR_PROMETHEUS_URL": self.prometheus_url,
            "ISOLATOR_AGENT_PORT": str(agent_port),
            "ISOLATOR_LOG_JSON": "true",
        }
        if self.authenticate:
            env["ISOLATOR_AUTH_TOKEN_FILE"] = str(self._write_token_file())
        addresses = ("LISTEN", "KUBECONFIG", "URL", "PORT", "TOKEN_FILE")
        self.isolator_settings = {
            k: v for k, v in env.items() if not any(part in k for part in addresses)
        }
        process = self._launch("isolator", [sys.executable, "-m", "isolator", "serve"], env=env)
        self.isolator_pid = process.pid or 0
        self.isolator_url = f"http://127.0.0.1:{port}"
        await wait_ready(self.session, process, f"{self.isolator_url}/healthz", READY_TIMEOUT_S)

    def _write_token_file(self) -> Path:
        """Write the isolator's token file: the SHA-256 of every token, its name and role."""
        entries = [(token, node, "agent") for node, token in self.tokens.items()]
        entries.append((self.viewer_token, "bench-viewer", "viewer"))
        lines = [
            f'"sha256:{hashlib.sha256(token.encode()).hexdigest()}": {{name: {name}, role: {role}}}'
            for token, name, role in entries
        ]
        path = self.work_dir / "tokens.yaml"
        path.touch(mode=0o600)
        path.write_text("\n".join(lines) + "\n")
        return path

    async def stop(self) -> None:
        if self.loadgen is not None:
            await self.loadgen.stop()
        for process in reversed(self.processes):
            await asyncio.to_thread(process.stop)
        if self.apiserver is not None:
            await self.apiserver.__aexit__(None, None, None)
        await self.session.close()
        await self.plane.stop()

    async def isolator_samples(self) -> dict[Sample, float]:
        async with self.session.get(f"{self.isolator_url}/metrics") as response:
            response.raise_for_status()
            return parse_samples(await response.text())

    async def node_states(self) -> tuple[int, dict[str, int]]:
        """Return how many nodes were heard both ways within the heartbeat timeout, and how
        many nodes have each verdict, from the isolator's /v1/nodes."""
        async with self.session.get(f"{self.isolator_url}/v1/nodes") as response:
            response.raise_for_status()
            nodes = await response.json()
        live = 0
        for node in nodes:
            evidence = node["evidence"]
            ages = (evidence["heartbeat_age_s"], evidence["probe_ok_age_s"])
            live += all(age is not None and age <= HEARTBEAT_TIMEOUT_S for age in ages)
        return live, dict(Counter(node["verdict"] for node in nodes))

    async def snapshot(self) -> Snapshot:
        assert self.apiserver is not None
        isolator = await self.isolator_samples()
        async with self.session.get(f"{self.prometheus_url}/metrics") as response:
            prometheus = parse_samples(await response.text())
        apiserver = await self.apiserver.request_counts()
        # CPU last, so the measured window hugs the load step.
        return Snapshot(
            at=time.monotonic(),
            isolator_cpu_s=procfs.cpu_seconds(self.isolator_pid),
            estate_cpu_s=procfs.cpu_seconds(self.estate_pid),
            isolator=isolator,
            prometheus_queries=total(
                prometheus, "prometheus_http_requests_total", handler="/api/v1/query"
            ),
            apiserver=apiserver,
        )

    async def measured_step(self, rate: float, duration_s: float) -> dict[str, Any]:
        """Run one load step between two snapshots and return every figure of the window."""
        assert self.loadgen is not None
        before = await self.snapshot()
        waits_before = self._run_queue_waits()
        cpu_before = procfs.cpu_seconds(self.isolator_pid)
        started = time.monotonic()
        result = await self.loadgen.step(rate, duration_s)
        # Requests still in flight at the end of the step stretch it beyond duration_s.
        result["wall_s"] = round(time.monotonic() - started, 3)
        cpu_after = procfs.cpu_seconds(self.isolator_pid)
        waits_after = self._run_queue_waits()
        result["load_average_1m"] = round(os.getloadavg()[0], 2)
        # Time each process was ready to run but had no CPU: high values mean the machine,
        # not the process, set the pace.
        for name, waited in waits_after.items():
            share = (waited - waits_before[name]) / result["wall_s"]
            result[f"{name}_cpu_wait_share"] = round(share, 3)
        after = await self.snapshot()
        return figures(result, before, after, cpu_after - cpu_before)

    def _run_queue_waits(self) -> dict[str, float]:
        assert self.loadgen is not None
        return {
            "isolator": procfs.run_queue_wait_seconds(self.isolator_pid),
            "loadgen": procfs.run_queue_wait_seconds(self.loadgen.pid),
        }


def figures(
    result: dict[str, Any], before: Snapshot, after: Snapshot, isolator_cpu_s: float
) -> dict[str, Any]:
    """Combine a load step's result with the counters read around it."""
    loop = loop_figures(before.isolator, after.isolator)
    passes = loop["passes"] or math.nan
    site_reads = total(after.isolator, "isolator_prometheus_queries_total") - total(
        before.isolator, "isolator_prometheus_queries_total"
    )
    queries = total(after.isolator, "isolator_prometheus_query_duration_seconds_count") - total(
        before.isolator, "isolator_prometheus_query_duration_seconds_count"
    )
    window_s = after.at - before.at
    requests = difference(after.apiserver, before.apiserver)
    accepted = result["ok"]
    return {
        **result,
        "isolator_cpu_s": round(isolator_cpu_s, 3),
        "isolator_cpu_s_per_1000": round(isolator_cpu_s / accepted * 1000, 4) if accepted else None,
        "isolator_cpu_share": round(isolator_cpu_s / result["wall_s"], 3),
        "loadgen_cpu_share": round(result["loadgen_cpu_s"] / result["wall_s"], 3),
        "estate_cpu_share": round((after.estate_cpu_s - before.estate_cpu_s) / window_s, 3),
        "loop": loop,
        "prometheus_queries_total_per_loop": round(site_reads / passes, 3),
        "prometheus_queries_sent_per_loop": round(queries / passes, 3),
        "prometheus_queries_served_per_loop": round(
            (after.prometheus_queries - before.prometheus_queries) / passes, 3
        ),
        "probes_per_s": round(
            (
                total(after.isolator, "isolator_probe_total")
                - total(before.isolator, "isolator_probe_total")
            )
            / window_s,
            1,
        ),
        "k8s_requests_per_s": {
            describe(key): round(value / window_s, 2) for key, value in sorted(requests.items())
        },
    }


async def warm_up(lab: ScaleLab, nodes: int, timeout_s: float) -> tuple[int, float]:
    """Send one heartbeat per node per second until every node is heard both ways or time
    runs out. Returns how many nodes were, and the seconds it took."""
    assert lab.loadgen is not None
    started = time.monotonic()
    live = 0
    while time.monotonic() - started < timeout_s:
        await lab.loadgen.step(nodes, WARMUP_STEP_S)
        live, _ = await lab.node_states()
        if live >= nodes:
            break
    return live, round(time.monotonic() - started, 1)


async def profile_isolator(lab: ScaleLab, nodes: int, seconds: float) -> dict[str, Any]:
    """Sample the isolator with py-spy while it takes one heartbeat per node per second."""
    assert lab.loadgen is not None
    py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if py_spy is None:
        return {"error": "py-spy is not installed; install the bench extra"}
    output = lab.work_dir / "profile.txt"
    process = await asyncio.create_subprocess_exec(
        py_spy,
        "record",
        "--pid",
        str(lab.isolator_pid),
        "--duration",
        str(round(seconds)),
        "--rate",
        str(PROFILE_RATE_HZ),
        "--format",
        "raw",
        "--threads",
        "--full-filenames",
        "--output",
        str(output),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    step = asyncio.create_task(lab.loadgen.step(nodes, seconds))
    _, stderr = await process.communicate()
    await step
    if process.returncode != 0 or not output.exists():
        return {"error": f"py-spy failed with code {process.returncode}: {stderr.decode()[-500:]}"}
    return summarize_profile(output.read_text(), seconds, PROFILE_RATE_HZ)


async def run_node_count(
    bin_dir: Path, work_dir: Path, nodes: int, options: ScaleOptions, profile: bool
) -> ScaleRun:
    """Measure one node count; every process is stopped before it returns.

    An error ends the run early. The figures measured so far are kept, and ``error`` contains
    the reason.
    """
    lab = ScaleLab(bin_dir, work_dir, nodes, options)
    run = ScaleRun(nodes=nodes, regions=len({n.region for n in lab.inventory}))
    try:
        run.create_nodes_s = round(await lab.start(), 1)
        run.isolator_settings = lab.isolator_settings
        run.authentication = lab.authenticate
        print(f"  {nodes} nodes: Nodes created in {run.create_nodes_s} s", flush=True)
        run.live_after_warmup, run.warmup_s = await warm_up(lab, nodes, options.warmup_timeout_s)
        print(f"  {nodes} nodes: {run.live_after_warmup} live after {run.warmup_s} s", flush=True)
        run.steady = await lab.measured_step(nodes, options.steady_s)
        run.steady["memory_mb"] = procfs.memory_mb(lab.isolator_pid)
        run.steady["live_nodes"], run.steady["verdicts"] = await lab.node_states()
        print(f"  {nodes} nodes: steady phase {_step_line(run.steady)}", flush=True)
        if profile and options.profile_s > 0:
            run.profile = await profile_isolator(lab, nodes, options.profile_s)
        await search_rates(lab, run, options)
    except Exception as err:
        logger.exception("scale run failed", extra={"nodes": nodes})
        run.error = f"{type(err).__name__}: {err}"
        print(f"  {nodes} nodes: stopped early: {run.error}", flush=True)
    finally:
        await lab.stop()
    return run


def _step_line(step: Mapping[str, Any]) -> str:
    latency = step.get("latency_ms") or {}
    return (
        f"offered {step['rate']:g}/s, achieved {step['achieved_rate']}/s, "
        f"p99 {latency.get('p99')} ms, errors {step['errors']}, "
        f"isolator CPU {step['isolator_cpu_share']:.0%}, loop mean {step['loop']['mean_s']} s"
    )


async def search_rates(lab: ScaleLab, run: ScaleRun, options: ScaleOptions) -> None:
    """Offer each rate in turn until one fails; the last that passed is the maximum."""
    for rate in options.rates:
        step = await lab.measured_step(rate, options.step_s)
        passed, failure = step_passed(step, rate)
        step["passed"], step["failure"] = passed, failure
        run.steps.append(step)
        print(f"  {run.nodes} nodes: {'pass' if passed else 'FAIL'} {_step_line(step)}", flush=True)
        if not passed:
            break
        run.max_rate_per_s = rate
    points = [(s["achieved_rate"], s["isolator_cpu_share"]) for s in run.steps if s["passed"]]
    fit = linear_fit([p[0] for p in points], [p[1] for p in points]) if len(points) >= 2 else None
    if fit is not None:
        # CPU share = fixed + per_heartbeat * rate; the slope is CPU seconds per heartbeat.
        run.cpu_fit = {
            "fixed_cpu_share": round(fit[0], 4),
            "cpu_s_per_1000_heartbeats": round(fit[1] * 1000, 4),
        }


async def run_scale(bin_dir: Path, work_dir: Path, options: ScaleOptions) -> dict[int, ScaleRun]:
    """Run every node count in turn, each on a fresh lab."""
    runs: dict[int, ScaleRun] = {}
    largest = max(options.node_counts)
    for nodes in options.node_counts:
        runs[nodes] = await run_node_count(
            bin_dir, work_dir / f"nodes-{nodes}", nodes, options, profile=nodes == largest
        )
    return runs
