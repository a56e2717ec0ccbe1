"""The panel queries of the generated dashboards, ready to run outside Grafana."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# Values for Grafana's variables, so that Prometheus can run the queries.
VARIABLE_VALUES = {
    "$__rate_interval": "1m",
    "$__range": "1h",
    "$region": "r1",
    "$node": "r1-n01",
}


def panels(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield every panel of a dashboard, including those inside rows."""
    for panel in data["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboards: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Return every panel query by "dashboard: panel (ref)", with variables replaced."""
    queries = {}
    for name, data in dashboards.items():
        for panel in panels(data):
            for target in panel["targets"]:
                expr = target["expr"]
                for variable, value in VARIABLE_VALUES.items():
                    expr = expr.replace(variable, value)
                queries[f"{name}: {panel['title']} ({target['refId']})"] = expr
    return queries
