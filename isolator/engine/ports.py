"""Protocols for everything the engine needs from outside systems; the sources implement them.

The engine depends on these shapes only, so it runs against fakes in unit tests and against the
real adapters in the service.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from isolator.model import EdgeNode, SiteView


class CutScope(enum.StrEnum):
    """How much of a node a cut takes out; the Kubernetes adapter defines the same values."""

    NODE = "node"  # the kubelet is dead: Ready and the serving gate False on every Pod
    COMPONENT = "component"  # a component of a live node failed: the serving gate False
    INGRESS = "ingress"  # the node's ingress path failed: its ingress-controller Pods only


class TargetKind(enum.StrEnum):
    """The kind of target an isolation takes out of service; the adapter has the same values."""

    NODE = "node"
    POD = "pod"
    REGION = "region"  # the region's cloud-side Ingress routes (split horizon)


class ActionOutcome(Protocol):
    """Result of a cut or restore: the Pods changed, and whether reading back confirmed it."""

    @property
    def node(self) -> str: ...

    @property
    def pods(self) -> tuple[str, ...]: ...

    @property
    def verified(self) -> bool: ...

    @property
    def detail(self) -> str: ...


class SplitOutcome(Protocol):
    """Result of a split horizon or its restore, and whether reading back confirmed it."""

    @property
    def region(self) -> str: ...

    @property
    def ingresses(self) -> tuple[str, ...]: ...

    @property
    def verified(self) -> bool: ...

    @property
    def detail(self) -> str: ...


class RecordedIsolation(Protocol):
    """One isolation as the records in Kubernetes describe it, for a restarted isolator."""

    @property
    def kind(self) -> str: ...  # a TargetKind value

    @property
    def target(self) -> str: ...  # node name, "namespace/name" of a Pod, or region

    @property
    def node(self) -> str: ...

    @property
    def incident(self) -> str: ...

    @property
    def reason(self) -> str: ...

    @property
    def who(self) -> str | None: ...

    @property
    def started_at(self) -> float | None: ...

    @property
    def expires_at(self) -> float | None: ...

    @property
    def scope(self) -> str: ...

    @property
    def objects(self) -> tuple[str, ...]: ...

    @property
    def complete(self) -> bool: ...


class ServiceEndpoints(Protocol):
    """The ready endpoints of one Service, as its EndpointSlices show them.

    A Pod counts once however many endpoints it has (one per address family), and a Pod that
    carries the isolator's cut record counts as not ready.
    """

    @property
    def service(self) -> str: ...  # "namespace/name"

    @property
    def min_ready(self) -> int | None: ...  # from the Service's annotation; None: the setting

    @property
    def ready_pods(self) -> Mapping[str, str]: ...  # "namespace/name" of a ready Pod -> its node

    @property
    def other_ready(self) -> int: ...  # ready endpoints with no Pod behind them


class EndpointCensus(Protocol):
    """The ready endpoints of every Service that has any, read at one moment."""

    @property
    def services(self) -> Sequence[ServiceEndpoints]: ...

    @property
    def ingress_pods(self) -> Set[str]: ...  # Pods the ingress controller's selector matches


@dataclass(frozen=True, slots=True)
class HeldCut:
    """A verified isolation for the adapter to read back: what it cut, and in which scope."""

    kind: str  # a TargetKind value
    target: str  # node name, "namespace/name" of a Pod, or region
    scope: str  # a CutScope value; "split" for a region
    objects: tuple[str, ...]  # "namespace/name" of its Pods or Ingresses


class CutDrift(Protocol):
    """A held cut that something undid after reading back had verified it."""

    @property
    def kind(self) -> str: ...  # a TargetKind value

    @property
    def target(self) -> str: ...

    @property
    def objects(self) -> tuple[str, ...]: ...  # the objects found undone

    @property
    def writer(self) -> str | None: ...  # field manager of the undoing write; None if unknown

    @property
    def detail(self) -> str: ...


class SiteViewReader(Protocol):
    """Reads the in-site view through the central Prometheus."""

    async def read_site_view(self) -> SiteView: ...


class Cluster(Protocol):
    """The Kubernetes operations the control loop and the manual API perform.

    ``who`` names the person behind a manual isolation (None when automatic), ``expires_at``
    is its end in wall-clock seconds, and ``dry_run`` requests a plan without writes.
    """

    async def list_edge_nodes(self) -> list[EdgeNode]: ...

    async def cut_node(
        self,
        node: str,
        reason: str,
        incident: str,
        *,
        scope: str = ...,
        pod_selector: str | None = ...,
        who: str | None = ...,
        expires_at: float | None = ...,
        dry_run: bool = ...,
    ) -> ActionOutcome: ...

    async def restore_node(
        self, node: str, incident: str, *, dry_run: bool = ...
    ) -> ActionOutcome: ...

    async def cut_pod(
        self,
        pod: str,
        reason: str,
        incident: str,
        *,
        who: str | None = ...,
        expires_at: float | None = ...,
        dry_run: bool = ...,
    ) -> ActionOutcome: ...

    async def restore_pod(
        self, pod: str, incident: str, *, dry_run: bool = ...
    ) -> ActionOutcome: ...

    async def split_region(
        self,
        region: str,
        reason: str,
        incident: str,
        *,
        region_label: str,
        fallbacks: Mapping[str, str],
        who: str | None = ...,
        expires_at: float | None = ...,
        dry_run: bool = ...,
    ) -> SplitOutcome: ...

    async def restore_region(
        self, region: str, incident: str, *, dry_run: bool = ...
    ) -> SplitOutcome: ...

    async def endpoint_census(self, ingress_selector: str) -> EndpointCensus: ...

    async def check_held_cuts(self, held: Sequence[HeldCut]) -> Sequence[CutDrift]: ...

    async def ensure_serving(self, node: str) -> int: ...

    async def ensure_serving_nodes(self, nodes: Collection[str]) -> int: ...

    async def recorded_isolations(self) -> Sequence[RecordedIsolation]: ...


class Prober(Protocol):
    """Sends one probe to an agent and returns whether the agent responded correctly."""

    async def probe(self, node: str, url: str) -> bool: ...


class AlertReader(Protocol):
    """Reads every active alert: fingerprint, start time, firing flag and labels."""

    async def active_alerts(self) -> list[tuple[str, datetime, bool, dict[str, str]]]: ...
