"""isolator: a cloud-side fault-isolation controller for edge Kubernetes sites."""

__version__ = "0.1.0"
