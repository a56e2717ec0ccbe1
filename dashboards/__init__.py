"""Grafana dashboards for the isolator, built with grafanalib; ``make generate`` writes JSON."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grafanalib import core as g

from dashboards import health, node, overview, region
from dashboards.export import to_json_data

BUILDERS: dict[str, Callable[[], g.Dashboard]] = {
    "isolator-overview.json": overview.build,
    "isolator-region.json": region.build,
    "isolator-node.json": node.build,
    "isolator-health.json": health.build,
}


def build_all() -> dict[str, dict[str, Any]]:
    """Return every dashboard's JSON data by file name."""
    return {name: to_json_data(build()) for name, build in BUILDERS.items()}
