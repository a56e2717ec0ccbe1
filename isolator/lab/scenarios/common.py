"""Parts every scenario uses: its report, the endpoint watch, the timeline and the timings."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from isolator.lab.environment import Lab

POLL_S = 0.1
# How a node verdict's reason starts when only the grey-failure model made it suspect.
GREY_SUSPECT_REASON = "grey failure suspected"


def iso_time(wall: float | None) -> str | None:
    """Format a wall-clock time for the report, or None."""
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")


@dataclass
class ScenarioReport:
    """One scenario's outcome, in the shape of the JSON report.

    ``checks`` names every expectation of the scenario and whether it held, so a failed
    scenario names the part that failed. ``passed`` is true when all of them held.
    """

    scenario: str
    expected: str
    verdict: str = "unknown"
    fault_at: str | None = None
    cut_at: str | None = None
    cut_latency_s: float | None = None
    pods_cut: list[str] = field(default_factory=list)
    wrong_cuts: int = 0
    wrong_cut_pods: list[str] = field(default_factory=list)
    restored: bool = False
    passed: bool = False
    field_cases: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    observed: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, held: bool) -> bool:
        """Record one expectation and whether it held."""
        self.checks[name] = bool(held)
        return bool(held)

    def judge(self) -> ScenarioReport:
        """Set ``passed`` from the checks; a scenario without checks never passes."""
        self.passed = bool(self.checks) and all(self.checks.values())
        return self


class EndpointWatch:
    """Polls the Service's ready endpoints and remembers when each Pod left and came back."""

    def __init__(self, lab: Lab) -> None:
        self._lab = lab
        self.left_at: dict[str, float] = {}  # Pod -> wall time it last left the ready set
        self.ready: set[str] = set(lab.pods)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EndpointWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                ready = await self._lab.ready_pods()
                now = time.time()
                for pod in self.ready - ready:
                    self.left_at[pod] = now
                for pod in ready - self.ready:
                    self.left_at.pop(pod, None)
                self.ready = ready
            await asyncio.sleep(POLL_S)

    def cut_since(self, since: float) -> dict[str, float]:
        """Return the Pods that left the ready endpoints at or after ``since``."""
        return {pod: at for pod, at in self.left_at.items() if at >= since}


class Timeline:
    """Prints what happens, with the seconds since the demo started."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self._start:7.1f} s] {text}", flush=True)


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    """Poll ``condition`` until it is true or ``timeout_s`` passes; return its last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await condition():
            return True
        await asyncio.sleep(POLL_S)
    return False


@dataclass(frozen=True)
class Timings:
    """Every wait of the scenarios, derived from the isolator settings the lab runs with.

    Scaling the lab's heartbeat interval or restore hold scales the scenarios with it, so no
    scenario sleeps for a fixed number of seconds of its own.
    """

    heartbeat_interval_s: float
    heartbeat_timeout_s: float
    correlation_window_s: float
    component_checks_s: float  # failed checks in a row before a live node counts as failed
    restore_hold_s: float
    site_max_age_s: float
    region_cooldown_s: float

    @classmethod
    def of(cls, lab: Lab) -> Timings:
        settings = lab.isolator_settings
        interval = float(settings["ISOLATOR_HEARTBEAT_INTERVAL_S"])
        misses = int(settings.get("ISOLATOR_HEARTBEAT_MISS_COUNT", "3"))
        checks = int(settings.get("ISOLATOR_COMPONENT_FAILURE_COUNT", "3"))
        return cls(
            heartbeat_interval_s=interval,
            heartbeat_timeout_s=interval * misses,
            correlation_window_s=float(settings["ISOLATOR_CORRELATION_WINDOW_S"]),
            component_checks_s=interval * checks,
            restore_hold_s=float(settings["ISOLATOR_RESTORE_HOLD_S"]),
            site_max_age_s=float(settings["ISOLATOR_SITE_MAX_AGE_S"]),
            region_cooldown_s=float(settings.get("ISOLATOR_REGION_COOLDOWN_S", "120")),
        )

    @property
    def cut_deadline_s(self) -> float:
        """Maximum time a confirmed failure may take to leave the ready endpoints."""
        detect = max(self.heartbeat_timeout_s, self.component_checks_s)
        return 2 * (detect + self.correlation_window_s) + 2.0

    @property
    def observe_s(self) -> float:
        """How long a fault that must not cause a cut is held: long enough for a wrong cut
        to happen twice over, and for the in-site view to go stale."""
        return max(self.cut_deadline_s * 2, self.site_max_age_s * 3)

    @property
    def recovery_s(self) -> float:
        """Maximum time from a healed fault until every node is healthy and restored."""
        return self.restore_hold_s + self.cut_deadline_s + 20.0


@dataclass
class Context:
    """A running lab with its endpoint watch, timeline and timings."""

    lab: Lab
    watch: EndpointWatch
    timeline: Timeline
    timings: Timings
    unsettled: dict[str, Any] = field(default_factory=dict)  # see wait_restored

    def say(self, text: str) -> None:
        self.timeline.say(text)

    async def get(self, path: str, attempts: int = 3) -> Any:
        """GET from the isolator API, trying again after a timeout or a connection error.

        A loaded lab (or the isolator under libfaketime) sometimes needs longer than one
        request's timeout to respond.
        """
        for attempt in range(1, attempts + 1):
            try:
                return await self.lab.get(path)
            except (aiohttp.ClientError, TimeoutError):
                if attempt == attempts:
                    raise
                await asyncio.sleep(POLL_S)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def audit(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = await self.get("/v1/audit")
        return records

    async def actions_since(self, count_before: int, node: str) -> Counter[str]:
        """Count the cuts and restores of ``node`` added to the audit after ``count_before``."""
        records = await self.audit()
        return Counter(str(r["action"]) for r in records[count_before:] if r["node"] == node)

    async def query_central(self, expression: str) -> list[dict[str, Any]]:
        """Run an instant query on the central Prometheus and return its result vector."""
        url = f"{self.lab.monitoring.central_url}/api/v1/query"
        timeout = aiohttp.ClientTimeout(total=5.0)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, params={"query": expression}) as response,
        ):
            response.raise_for_status()
            body = await response.json()
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def wait_restored(self) -> bool:
        """Wait until every node is healthy, every Pod serves and nothing is isolated.

        A node that only the grey-failure model calls suspect counts as healthy here: the
        model scores nodes against their peers, and on a loaded lab machine it flags a live
        node now and then. When that does not happen in time, ``unsettled`` describes what
        was still missing.
        """
        missing: dict[str, Any] = {}

        async def settled() -> bool:
            nodes = await self.get("/v1/nodes")
            missing["nodes"] = {n["node"]: n["verdict"] for n in nodes if not _rules_healthy(n)}
            missing["isolations"] = [i.get("target") for i in await self.get("/v1/isolations")]
            missing["pods"] = sorted(set(self.lab.pods) - self.watch.ready)
            missing["region_actions"] = await self._unrestored_region_actions()
            return not any(missing.values())

        done = await wait_for(settled, self.timings.recovery_s)
        self.unsettled = {} if done else {k: v for k, v in missing.items() if v}
        return done

    async def _unrestored_region_actions(self) -> int:
        """Return how many region-level cuts the audit shows without their restore. A region
        whose Ingress routes had nothing to move is not listed among the isolations."""
        actions: Counter[str] = Counter()
        for record in await self.audit():
            if not record["node"]:
                actions[str(record["action"])] += 1
        return actions["cut"] - actions["restore"]


def _rules_healthy(node: dict[str, Any]) -> bool:
    """Return whether a node view is healthy, or suspect only by its grey-failure score."""
    if node["verdict"] == "healthy":
        return True
    return node["verdict"] == "suspect" and str(node["reason"]).startswith(GREY_SUSPECT_REASON)


class VerdictRecorder:
    """Samples node, region and global verdicts in the background while a fault is held."""

    def __init__(self, lab: Lab) -> None:
        self._lab = lab
        self.nodes: dict[str, Counter[str]] = {}
        self.regions: dict[str, Counter[str]] = {}
        self.global_verdicts: Counter[str] = Counter()
        self.region_changes: Counter[str] = Counter()
        # Why nodes were not healthy: "verdict: reason" up to the first colon of the reason.
        self.reasons: Counter[str] = Counter()
        self._last_region: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> VerdictRecorder:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await self.sample()
            await asyncio.sleep(POLL_S * 2)

    async def sample(self) -> None:
        for item in await self._lab.get("/v1/nodes"):
            node, verdict = item["node"], item["verdict"]
            self.nodes.setdefault(node, Counter())[verdict] += 1
            if verdict != "healthy":
                self.reasons[f"{verdict}: {str(item['reason']).split(':')[0]}"] += 1
        for region, verdict in (await self._lab.region_verdicts()).items():
            self.regions.setdefault(region, Counter())[verdict] += 1
            if self._last_region.get(region, verdict) != verdict:
                self.region_changes[region] += 1
            self._last_region[region] = verdict
        self.global_verdicts[(await self._lab.get("/v1/status"))["verdict"]] += 1

    def node_saw(self, node: str, verdict: str) -> bool:
        return self.nodes.get(node, Counter())[verdict] > 0

    def region_saw(self, region: str, verdict: str) -> bool:
        return self.regions.get(region, Counter())[verdict] > 0


async def hold(seconds: float) -> None:
    """Let the lab run for ``seconds`` while a fault is in force."""
    await asyncio.sleep(seconds)


def pods_on(lab: Lab, nodes: set[str]) -> set[str]:
    return {pod for pod, node in lab.pods.items() if node in nodes}
