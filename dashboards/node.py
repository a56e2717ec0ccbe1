"""The node detail: every signal of one edge node, as the isolator weighs it.

One stat per signal (heartbeat in, probe out, the in-site scrape read through federation,
clock skew, Alertmanager alerts), then the same signals over time, and the node's isolation.
"""

from __future__ import annotations

from grafanalib import core as g

from dashboards import common as c
from dashboards.common import Size
from isolator.lab.monitoring import AGENT_JOB

NODE = 'region="$region", node="$node"'
AGENT = f'job="{AGENT_JOB}", {NODE}'
AGE_STEPS = c.thresholds(("green", 0), ("orange", 2), ("red", 5))


def _signal_row(layout: c.Layout) -> list[g.Panel]:
    codes = {verdict: code for verdict, (code, _) in c.NODE_VERDICT_CODES.items()}
    size = Size(w=3, h=4)
    return [
        c.stat(
            layout,
            size,
            "Verdict",
            "The isolator's current verdict for the node.",
            [c.target(c.verdict_code_expr("isolator_node_verdict_info", NODE, "node", codes))],
            "none",
            mappings=c.verdict_mappings(c.NODE_VERDICT_CODES),
        ),
        c.stat(
            layout,
            size,
            "Heartbeat age",
            "Time since the last heartbeat the isolator accepted from the node's agent.",
            [c.target(f"max(isolator_node_heartbeat_age_seconds{{{NODE}}})")],
            "s",
            steps=AGE_STEPS,
        ),
        c.stat(
            layout,
            size,
            "Probe age",
            "Time since the agent last answered a probe from the isolator (the return path).",
            [c.target(f"max(isolator_node_probe_age_seconds{{{NODE}}})")],
            "s",
            steps=AGE_STEPS,
        ),
        c.stat(
            layout,
            size,
            "Failed probes",
            "Probes that failed in a row since the last answered one.",
            [c.target(f"max(isolator_node_probe_consecutive_failures{{{NODE}}})")],
            "short",
            steps=c.thresholds(("green", 0), ("orange", 1), ("red", 3)),
        ),
        c.stat(
            layout,
            size,
            "In-site up",
            "The edge Prometheus's up for the agent, as the isolator last read it.",
            [c.target(f"max(isolator_node_site_up{{{NODE}}})")],
            "none",
            steps=c.thresholds(("red", 0), ("green", 1)),
            mappings=c.UP_MAPPINGS,
        ),
        c.stat(
            layout,
            size,
            "In-site sample age",
            "Age of that federated sample when the isolator read it. An old sample counts as "
            "unknown, never as up or down.",
            [c.target(f"max(isolator_node_site_sample_age_seconds{{{NODE}}})")],
            "s",
            steps=c.thresholds(("green", 0), ("orange", 5), ("red", 15)),
        ),
        c.stat(
            layout,
            size,
            "Clock skew",
            "Isolator wall clock minus the agent's send time of its last heartbeat. It never "
            "decides freshness, which uses the isolator's monotonic clock.",
            [c.target(f"max(isolator_node_clock_skew_seconds{{{NODE}}})")],
            "s",
        ),
        c.stat(
            layout,
            size,
            "Firing alerts",
            "Alertmanager alerts that the isolator recorded as firing for the node.",
            [c.target(f"max(isolator_node_firing_alerts{{{NODE}}})")],
            "short",
            steps=c.thresholds(("green", 0), ("orange", 1)),
        ),
    ]


def _history_row(layout: c.Layout) -> list[g.Panel]:
    codes = {verdict: code for verdict, (code, _) in c.NODE_VERDICT_CODES.items()}
    return [
        c.state_timeline(
            layout,
            Size(w=24, h=5),
            "Verdict and in-site view over time",
            "The isolator's verdict next to the edge Prometheus's up for the agent.",
            [
                c.target(
                    c.verdict_code_expr("isolator_node_verdict_info", NODE, "node", codes),
                    "verdict",
                    ref="A",
                ),
                # Shifted by 10 so that one set of value mappings serves both rows.
                c.target(f"max(up{{{AGENT}}}) + 10", "in-site scrape", ref="B"),
            ],
            [
                *c.verdict_mappings(c.NODE_VERDICT_CODES),
                *c.value_mappings({10: ("down", "red"), 11: ("up", "green")}),
            ],
        ),
        c.timeseries(
            layout,
            Size(w=12, h=8),
            "Heartbeat and probe age",
            "Both directions of the WAN path, on the isolator's clock.",
            [
                c.target(f"max(isolator_node_heartbeat_age_seconds{{{NODE}}})", "heartbeat", "A"),
                c.target(f"max(isolator_node_probe_age_seconds{{{NODE}}})", "probe", "B"),
            ],
            "s",
        ),
        c.timeseries(
            layout,
            Size(w=12, h=8),
            "Federated sample age",
            "Age of the agent's newest up sample on the central Prometheus. It grows while "
            "the region's federation is broken, even though the series is still present.",
            [c.target(f"max(time() - timestamp(up{{{AGENT}}}))", "in-site sample age")],
            "s",
        ),
        c.timeseries(
            layout,
            Size(w=12, h=8),
            "Agent heartbeats and probes",
            "What the agent itself reports: heartbeats sent by result, and probes answered.",
            [
                c.target(
                    "sum by (result) "
                    f"(rate(isolator_agent_heartbeats_total{{{AGENT}}}[$__rate_interval]))",
                    "heartbeats {{result}}",
                    "A",
                ),
                c.target(
                    f"sum(rate(isolator_agent_probes_total{{{AGENT}}}[$__rate_interval]))",
                    "probes answered",
                    "B",
                ),
            ],
            "reqps",
        ),
        c.table(
            layout,
            Size(w=12, h=8),
            "Isolation and firing alerts",
            "The node's current isolation, if any, and the alerts the central Prometheus "
            "fires for it.",
            [
                c.target(
                    f"max by (reason, state) (isolator_isolation_info{{{NODE}}})",
                    ref="A",
                    table=True,
                ),
                c.target(
                    f'max by (alertname, severity) (ALERTS{{{NODE}, alertstate="firing"}})',
                    ref="B",
                    table=True,
                ),
            ],
            "none",
            transformations=[c.hide_columns("Time", "Value #A", "Value #B")],
        ),
    ]


def build() -> g.Dashboard:
    """Build the node detail dashboard."""
    layout = c.Layout()
    panels = [*_signal_row(layout), *_history_row(layout)]
    return c.dashboard(
        "Isolator: node",
        c.NODE_UID,
        "Every signal the isolator weighs for one edge node: heartbeats, probes, the in-site "
        "view through federation, clock skew and alerts.",
        [c.datasource_variable(), c.region_variable(multi=False), c.node_variable()],
        panels,
    )
