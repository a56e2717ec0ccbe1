"""Protocols for everything the engine needs from outside systems; the sources implement them.

The engine depends on these shapes only, so it runs against fakes in unit tests and against the
real adapters in the service.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from isolator.model import EdgeNode, SiteView


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


class SiteViewReader(Protocol):
    """Reads the in-site view through the central Prometheus."""

    async def read_site_view(self) -> SiteView: ...


class Cluster(Protocol):
    """The Kubernetes operations the control loop performs."""

    async def list_edge_nodes(self) -> list[EdgeNode]: ...

    async def cut_node(self, node: str, reason: str, incident: str) -> ActionOutcome: ...

    async def restore_node(self, node: str, incident: str) -> ActionOutcome: ...

    async def ensure_serving(self, node: str) -> int: ...

    async def cut_nodes(self) -> dict[str, list[str]]: ...


class Prober(Protocol):
    """Sends one probe to an agent and returns whether the agent responded correctly."""

    async def probe(self, node: str, url: str) -> bool: ...


class AlertReader(Protocol):
    """Reads every active alert: fingerprint, start time, firing flag and labels."""

    async def active_alerts(self) -> list[tuple[str, datetime, bool, dict[str, str]]]: ...
