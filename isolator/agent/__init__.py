"""The node agent that runs on every edge node."""
