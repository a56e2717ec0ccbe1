"""Metric names that queries may use: the service's, the agent's, the recording rules', and
the series that Prometheus writes itself."""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client import CollectorRegistry

from alert_rules.rules import RECORDING_RULES
from isolator.agent.app import AgentMetrics
from isolator.metrics import Metrics
from isolator.settings import AgentSettings

# Series that Prometheus writes itself: the scrape's up, and the rule evaluator's ALERTS.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS"})

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}
# A name inside a recorded series name (job:isolator_x:rate5m) is not a series of its own.
_ISOLATOR_NAME = re.compile(r"(?<![\w:])isolator_[a-z0-9_]+(?![\w:])")
_RECORDED_NAME = re.compile(r"(?<![\w:])[a-z_]+:[a-z0-9_]+:[a-z0-9_]+")


def _exported(registry: CollectorRegistry) -> set[str]:
    names = set()
    for family in registry.collect():
        for suffix in _SUFFIXES[family.type]:
            names.add(family.name + suffix)
    return names


def known_names() -> set[str]:
    """Return every series name the queries may select."""
    agent_settings = AgentSettings(node="n1", region="r1", isolator_url="http://127.0.0.1:1")
    return (
        _exported(Metrics().registry)
        | _exported(AgentMetrics(agent_settings).registry)
        | {rule["record"] for rule in RECORDING_RULES}
        | PROMETHEUS_SERIES
    )


def unknown_names(expressions: Iterable[str]) -> set[str]:
    """Return the isolator and recorded series names in ``expressions`` that nothing exports."""
    known = known_names()
    used: set[str] = set()
    for expr in expressions:
        used.update(_ISOLATOR_NAME.findall(expr))
        used.update(_RECORDED_NAME.findall(expr))
    return used - known
