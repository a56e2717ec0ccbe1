"""In-memory stand-ins for the engine's ports, for unit tests only."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from isolator.model import EdgeNode, SiteSample, SiteView
from isolator.sources.errors import SourceUnavailableError
from isolator.sources.kubernetes.census import EndpointCensus, ServiceEndpoints


@dataclass(frozen=True)
class Outcome:
    node: str
    pods: tuple[str, ...]
    verified: bool
    detail: str


@dataclass(frozen=True)
class SplitOutcome:
    region: str
    ingresses: tuple[str, ...]
    verified: bool
    detail: str


@dataclass(frozen=True)
class Drift:
    kind: str
    target: str
    objects: tuple[str, ...]
    writer: str | None
    detail: str


@dataclass(frozen=True)
class Recorded:
    """A recorded isolation as the Kubernetes adapter rebuilds it."""

    kind: str
    target: str
    node: str
    incident: str = "inc-recorded"
    reason: str = "recorded"
    who: str | None = None
    started_at: float | None = None
    expires_at: float | None = None
    scope: str = "node"
    objects: tuple[str, ...] = ()
    complete: bool = True


@dataclass
class FakeCluster:
    """Records every call; Pods are named after their node.

    ``unverified`` holds targets (node, "namespace/name" or region) whose cuts and restores
    read back unconfirmed; ``calls`` lists (method, target, keyword arguments).
    """

    nodes: list[EdgeNode]
    cuts: list[str] = field(default_factory=list)
    restores: list[str] = field(default_factory=list)
    serving: list[str] = field(default_factory=list)
    per_node_serving_calls: int = 0  # ensure_serving calls, each a Pod list of one node
    existing_cuts: dict[str, list[str]] = field(default_factory=dict)
    recorded: list[Recorded] = field(default_factory=list)
    unverified: set[str] = field(default_factory=set)
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    unavailable: bool = False
    # Targets whose held cuts read back undone, mapped to the writer that undid them.
    undone: dict[str, str | None] = field(default_factory=dict)
    checks: list[list[str]] = field(default_factory=list)  # targets read back by each check
    # Service "namespace/name" -> the nodes that run one ready replica of it, which is named
    # "namespace/name-node". A cut node's replicas are not ready.
    services: dict[str, list[str]] = field(default_factory=dict)
    min_ready: dict[str, int] = field(default_factory=dict)  # the Services' annotation values
    ingress_services: set[str] = field(default_factory=set)  # run the ingress controller
    census_unavailable: bool = False
    census_reads: int = 0
    cut_scopes: dict[str, str] = field(default_factory=dict)  # node -> scope of its cut

    async def list_edge_nodes(self) -> list[EdgeNode]:
        if self.unavailable:
            raise SourceUnavailableError("kube-apiserver refused the connection")
        return list(self.nodes)

    async def cut_node(self, node: str, reason: str, incident: str, **options: Any) -> Outcome:
        self.cuts.append(node)
        self.calls.append(("cut_node", node, options))
        if not options.get("dry_run"):
            self.cut_scopes[node] = options.get("scope", "node")
        return Outcome(node, (f"default/{node}-pod",), node not in self.unverified, "cut")

    async def restore_node(self, node: str, incident: str, **options: Any) -> Outcome:
        self.restores.append(node)
        self.calls.append(("restore_node", node, options))
        if not options.get("dry_run"):
            self.cut_scopes.pop(node, None)
        return Outcome(node, (f"default/{node}-pod",), node not in self.unverified, "restored")

    async def cut_pod(self, pod: str, reason: str, incident: str, **options: Any) -> Outcome:
        self.calls.append(("cut_pod", pod, options))
        return Outcome("r1-n01", (pod,), pod not in self.unverified, "cut")

    async def restore_pod(self, pod: str, incident: str, **options: Any) -> Outcome:
        self.calls.append(("restore_pod", pod, options))
        return Outcome("r1-n01", (pod,), pod not in self.unverified, "restored")

    async def split_region(
        self, region: str, reason: str, incident: str, **options: Any
    ) -> SplitOutcome:
        self.calls.append(("split_region", region, options))
        verified = region not in self.unverified
        return SplitOutcome(region, (f"cloud/{region}-web",), verified, "split")

    async def restore_region(self, region: str, incident: str, **options: Any) -> SplitOutcome:
        self.calls.append(("restore_region", region, options))
        verified = region not in self.unverified
        return SplitOutcome(region, (f"cloud/{region}-web",), verified, "rejoined")

    async def endpoint_census(self, ingress_selector: str) -> EndpointCensus:
        self.census_reads += 1
        if self.census_unavailable:
            raise SourceUnavailableError("kube-apiserver refused the connection")
        services = tuple(
            ServiceEndpoints(service, self.min_ready.get(service), self._ready(service))
            for service in sorted(self.services)
        )
        ingress = {
            f"{service}-{node}"
            for service in self.ingress_services
            for node in self.services.get(service, [])
        }
        return EndpointCensus(services, frozenset(ingress))

    def _ready(self, service: str) -> dict[str, str]:
        ingress = service in self.ingress_services
        ready = {}
        for node in self.services[service]:
            scope = self.cut_scopes.get(node)
            if scope is None or (scope == "ingress" and not ingress):
                ready[f"{service}-{node}"] = node
        return ready

    async def check_held_cuts(self, held: Sequence[Any]) -> list[Drift]:
        self.checks.append([cut.target for cut in held])
        return [
            Drift(cut.kind, cut.target, cut.objects, self.undone[cut.target], "Ready True")
            for cut in held
            if cut.target in self.undone
        ]

    async def ensure_serving(self, node: str) -> int:
        self.serving.append(node)
        self.per_node_serving_calls += 1
        return 0

    async def ensure_serving_nodes(self, nodes: Collection[str]) -> int:
        self.serving.extend(nodes)
        return 0

    async def recorded_isolations(self) -> list[Recorded]:
        if self.unavailable:
            raise SourceUnavailableError("kube-apiserver refused the connection")
        from_cuts = [
            Recorded("node", node, node, objects=tuple(pods))
            for node, pods in self.existing_cuts.items()
        ]
        return [*from_cuts, *self.recorded]

    def called(self, method: str) -> list[str]:
        """Return the targets of every call of ``method``, in order."""
        return [target for name, target, _ in self.calls if name == method]


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
