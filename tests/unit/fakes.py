"""In-memory stand-ins for the engine's ports, for unit tests only."""

from __future__ import annotations

from dataclasses import dataclass, field

from isolator.model import EdgeNode, SiteSample, SiteView
from isolator.sources.errors import SourceUnavailableError


@dataclass(frozen=True)
class Outcome:
    node: str
    pods: tuple[str, ...]
    verified: bool
    detail: str


@dataclass
class FakeCluster:
    """Records every call; Pods are named after their node."""

    nodes: list[EdgeNode]
    cuts: list[str] = field(default_factory=list)
    restores: list[str] = field(default_factory=list)
    serving: list[str] = field(default_factory=list)
    existing_cuts: dict[str, list[str]] = field(default_factory=dict)
    unavailable: bool = False

    async def list_edge_nodes(self) -> list[EdgeNode]:
        if self.unavailable:
            raise SourceUnavailableError("kube-apiserver refused the connection")
        return list(self.nodes)

    async def cut_node(self, node: str, reason: str, incident: str) -> Outcome:
        self.cuts.append(node)
        return Outcome(node, (f"default/{node}-pod",), True, "cut")

    async def restore_node(self, node: str, incident: str) -> Outcome:
        self.restores.append(node)
        return Outcome(node, (f"default/{node}-pod",), True, "restored")

    async def ensure_serving(self, node: str) -> int:
        self.serving.append(node)
        return 0

    async def cut_nodes(self) -> dict[str, list[str]]:
        if self.unavailable:
            raise SourceUnavailableError("kube-apiserver refused the connection")
        return dict(self.existing_cuts)


@dataclass
class FakeSite:
    """The in-site view, set by the test; ``down`` makes every read fail."""

    agents: dict[str, SiteSample] = field(default_factory=dict)
    federation: dict[str, SiteSample] = field(default_factory=dict)
    kubelets: dict[str, SiteSample] = field(default_factory=dict)
    down: bool = False

    async def read_site_view(self) -> SiteView:
        if self.down:
            raise SourceUnavailableError("central Prometheus timed out")
        return SiteView(
            agents=dict(self.agents), federation=dict(self.federation), kubelets=dict(self.kubelets)
        )


@dataclass
class FakeProber:
    """Agents that answer unless their node is in ``silent``."""

    silent: set[str] = field(default_factory=set)

    async def probe(self, node: str, url: str) -> bool:
        return node not in self.silent


def estate(regions: int, nodes_per_region: int) -> list[EdgeNode]:
    """Return nodes named r<i>-n<j> with agent URLs."""
    return [
        EdgeNode(f"r{i}-n{j:02d}", f"r{i}", f"http://198.18.{i}.{10 + j}:9910")
        for i in range(1, regions + 1)
        for j in range(1, nodes_per_region + 1)
    ]
