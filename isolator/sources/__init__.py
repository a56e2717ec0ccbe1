"""Adapters to the outside systems: Kubernetes, Prometheus and the node agents."""
