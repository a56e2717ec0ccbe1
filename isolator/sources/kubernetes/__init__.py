"""The isolator's Kubernetes adapter: edge-node inventory, and cut, restore and read-back of
Pod traffic. It is the only module of the isolator service that talks to Kubernetes."""

from isolator.sources.kubernetes.errors import KubernetesError, KubernetesUnavailableError
from isolator.sources.kubernetes.source import ActionResult, KubernetesSource

__all__ = ["ActionResult", "KubernetesError", "KubernetesSource", "KubernetesUnavailableError"]
