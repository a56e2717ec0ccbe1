"""Domain types shared by every layer: nodes, regions, evidence and verdicts."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

# Readiness-gate condition type that the isolator owns on every edge Pod that declares it.
SERVING_CONDITION = "isolator.io/serving"

# Annotation on a cut Pod that records what the cut replaced, so that restore is exact and a
# restarted isolator can rebuild its state from Kubernetes alone.
CUT_ANNOTATION = "isolator.io/cut"

# Service annotation that overrides ISOLATOR_MIN_READY_ENDPOINTS for that Service: the ready
# endpoints it must keep after an automatic cut. "0" means a person accepted that it may go dark.
MIN_READY_ANNOTATION = "isolator.io/min-ready-endpoints"

# Name under which the ingress check counts among a node's components.
INGRESS_COMPONENT = "ingress"

# Node label that places an edge node in its region.
REGION_LABEL = "topology.kubernetes.io/region"


class NodeVerdict(enum.StrEnum):
    """The isolator's verdict on one edge node."""

    UNKNOWN = "unknown"  # not yet seen both ways, or no usable evidence
    HEALTHY = "healthy"
    SUSPECT = "suspect"  # silent to the cloud, with no in-site evidence either way yet
    FAILED = "failed"  # silent to the cloud and confirmed down from inside the site
    UNREACHABLE = (
        "unreachable"  # silent to the cloud while evidence inside the site shows it serving
    )


class RegionVerdict(enum.StrEnum):
    """The isolator's verdict on one region."""

    NORMAL = "normal"
    DEGRADED = "degraded"  # some nodes failed, the region itself is reachable
    PARTITIONED = "partitioned"  # the cloud lost the region's link; the site may still serve
    MONITORING_DEGRADED = "monitoring_degraded"  # federation broken while heartbeats arrive


class GlobalVerdict(enum.StrEnum):
    """The isolator's verdict on the estate as a whole."""

    NORMAL = "normal"
    FAIL_SAFE = "fail_safe"  # most regions went dark at once: suspect the central side


@dataclass(frozen=True, slots=True)
class EdgeNode:
    """An edge node as the Kubernetes inventory lists it."""

    name: str
    region: str
    agent_url: str | None  # None while the Node has no InternalIP


@dataclass(frozen=True, slots=True)
class SiteSample:
    """One value read through federation, with the age of the sample on the central server."""

    value: float
    age_s: float


@dataclass(frozen=True, slots=True)
class SiteView:
    """One reading of the in-site view through the central Prometheus.

    A node or region missing from a mapping is unknown. Samples with a non-finite value never
    get here: the Prometheus adapter drops them.
    """

    agents: Mapping[str, SiteSample]  # node name -> the edge Prometheus's `up` for its agent
    federation: Mapping[str, SiteSample]  # region -> the central's `up` for its /federate
    kubelets: Mapping[str, SiteSample] = field(default_factory=dict)  # node -> kubelet `up`


@dataclass(slots=True)
class NodeEvidence:
    """Everything the isolator has seen of one node, on the receiver's monotonic clock."""

    node: str
    region: str
    last_heartbeat_at: float | None = None
    heartbeat_seq: int | None = None
    heartbeat_count: int = 0
    clock_skew_s: float | None = None
    last_probe_ok_at: float | None = None
    last_probe_failed_at: float | None = None
    probe_failures: int = 0
    site_up: SiteSample | None = None  # the edge Prometheus's `up` for this node's agent
    site_kubelet_up: SiteSample | None = None  # the edge Prometheus's `up` for its kubelet
    site_kubelet_down_scrapes: int = 0  # consecutive kubelet scrapes that found it down
    firing_alerts: set[str] = field(default_factory=set)  # alert names, from the map below
    # Firing alerts by fingerprint, so that one instance resolving leaves its namesakes firing.
    firing_fingerprints: dict[str, str] = field(default_factory=dict)
    # Consecutive heartbeats that reported each component (or the ingress path) failing.
    component_failures: dict[str, int] = field(default_factory=dict)
    # Recent history for grey-failure scoring, newest last and bounded by the store.
    probe_rtts: deque[float | None] = field(default_factory=deque)  # None for a failed probe
    heartbeat_gaps: deque[float] = field(default_factory=deque)  # seconds between arrivals
    ingress_results: deque[bool] = field(default_factory=deque)
    history_reset_at: float | None = None  # when the history last restarted after an outage


@dataclass(slots=True)
class RegionEvidence:
    """Health of the region's monitoring path, read from the central Prometheus."""

    region: str
    federation_up: SiteSample | None = None


@dataclass(frozen=True, slots=True)
class NodeAssessment:
    """A node verdict with the reason a person reads when asking why."""

    node: str
    region: str
    verdict: NodeVerdict
    reason: str
    silent_for_s: float | None
    component: str | None = None  # the failed component on a live node; None for the node
    silent: bool = False  # no heartbeat within the timeout
    grey_score: float | None = None  # the model's grey-failure probability, when scored


@dataclass(frozen=True, slots=True)
class RegionAssessment:
    """A region verdict with its reason and the node counts behind it."""

    region: str
    verdict: RegionVerdict
    reason: str
    nodes: int
    silent: int
    failed: int


@dataclass(frozen=True, slots=True)
class Assessment:
    """The outcome of one classification pass over the whole estate."""

    verdict: GlobalVerdict
    reason: str
    regions: dict[str, RegionAssessment]
    nodes: dict[str, NodeAssessment]
