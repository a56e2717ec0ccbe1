"""The lab: a real control plane, regions as network namespaces, and real monitoring."""
