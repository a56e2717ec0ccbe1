"""The isolator's Kubernetes adapter: edge-node inventory, and cut, restore and read-back of
Pod traffic, selector-less endpoints and cloud-side Ingress routes. It is the only module of the
isolator service that talks to Kubernetes."""

from isolator.sources.kubernetes.errors import KubernetesError, KubernetesUnavailableError
from isolator.sources.kubernetes.horizon import SplitResult
from isolator.sources.kubernetes.patches import CutScope
from isolator.sources.kubernetes.recorded import RecordedIsolation, TargetKind
from isolator.sources.kubernetes.source import ActionResult, KubernetesSource

__all__ = [
    "ActionResult",
    "CutScope",
    "KubernetesError",
    "KubernetesSource",
    "KubernetesUnavailableError",
    "RecordedIsolation",
    "SplitResult",
    "TargetKind",
]
