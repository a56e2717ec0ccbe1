"""A controller on fakes and a manual clock, driven tick by tick."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from isolator.clock import ManualClock
from isolator.engine.loop import Controller
from isolator.metrics import Metrics
from isolator.model import NodeVerdict, RegionVerdict, SiteSample
from isolator.settings import Settings
from tests.unit.fakes import FakeCluster, FakeProber, FakeSite, estate

FAST: dict[str, Any] = {
    "heartbeat_interval_s": 1.0,
    "heartbeat_miss_count": 3,
    "probe_timeout_s": 0.5,
    "prometheus_timeout_s": 1.0,
    "loop_interval_s": 0.5,
    "correlation_window_s": 2.0,
    "restore_hold_s": 10.0,
    "site_max_age_s": 5.0,
    "startup_grace_s": 0.0,
    "region_cooldown_s": 30.0,
    "auth_disabled": True,
}


@dataclass
class Harness:
    """Simulated estate: every node beats and scrapes up unless the test sets otherwise."""

    controller: Controller
    cluster: FakeCluster
    site: FakeSite
    prober: FakeProber
    clock: ManualClock
    silent: set[str] = field(default_factory=set)  # no heartbeats, no probe answers
    site_down: set[str] = field(default_factory=set)  # edge Prometheus scrapes them down
    agent_down: set[str] = field(default_factory=set)  # agent target down, kubelet still up
    dark_regions: set[str] = field(default_factory=set)  # federation target down
    failing: dict[str, set[str]] = field(default_factory=dict)  # node -> components reported down

    @classmethod
    async def start(
        cls,
        regions: int = 3,
        nodes: int = 10,
        alert_reader: Any = None,
        grey_scorer: Any = None,
        **overrides: Any,
    ) -> Harness:
        clock = ManualClock()
        cluster = FakeCluster(nodes=estate(regions, nodes))
        site, prober = FakeSite(), FakeProber()
        settings = Settings(**{**FAST, **overrides})
        controller = Controller(
            settings,
            cluster,
            site,
            prober,
            Metrics(),
            clock,
            alert_reader=alert_reader,
            grey_scorer=grey_scorer,
        )
        harness = cls(controller, cluster, site, prober, clock)
        await controller.refresh()
        await harness.run_for(1.0)
        return harness

    def region_of(self, node: str) -> str:
        return self.controller.store.nodes[node].region

    async def step(self) -> None:
        """Advance one loop interval: heartbeats, probes, one site view and one pass."""
        self.clock.advance(self.controller.settings.loop_interval_s)
        now, wall = self.clock.monotonic(), self.clock.wall()
        self.prober.silent = set(self.silent)
        for name, ev in self.controller.store.nodes.items():
            if name not in self.silent:
                seq = (ev.heartbeat_seq or 0) + 1
                down = self.failing.get(name, set())
                health = {c: c not in down for c in ("kubelet", "kube-proxy", "ingress")}
                self.controller.store.record_heartbeat(
                    name, ev.region, seq, wall, now, wall, components=health
                )
        await self.controller.probe()
        visible = [
            name
            for name, ev in self.controller.store.nodes.items()
            if ev.region not in self.dark_regions
        ]
        self.site.agents = {
            name: SiteSample(0.0 if name in self.site_down | self.agent_down else 1.0, 0.5)
            for name in visible
        }
        self.site.kubelets = {
            name: SiteSample(0.0 if name in self.site_down else 1.0, 0.5) for name in visible
        }
        self.site.federation = {
            region: SiteSample(0.0 if region in self.dark_regions else 1.0, 0.5)
            for region in self.controller.store.regions
        }
        await self.controller.tick()
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    async def run_for(self, seconds: float) -> None:
        for _ in range(round(seconds / self.controller.settings.loop_interval_s)):
            await self.step()

    def node_verdict(self, node: str) -> NodeVerdict:
        assessment = self.controller.state.assessment
        assert assessment is not None
        return assessment.nodes[node].verdict

    def region_verdict(self, region: str) -> RegionVerdict:
        assessment = self.controller.state.assessment
        assert assessment is not None
        return assessment.regions[region].verdict
