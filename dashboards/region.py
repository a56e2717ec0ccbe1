"""The region drill-down: one region's verdict, its nodes, and its monitoring path.

The isolator's own view (verdicts, heartbeat ages) sits next to the in-site view read through
federation (the edge Prometheus's ``up`` for each agent), because telling the two apart is
the isolator's whole job.
"""

from __future__ import annotations

from grafanalib import core as g

from dashboards import common as c
from dashboards.common import Size
from isolator.lab.monitoring import AGENT_JOB, FEDERATE_JOB

REGION = 'region="$region"'
AGENTS = f'job="{AGENT_JOB}", {REGION}'


def _summary_row(layout: c.Layout) -> list[g.Panel]:
    codes = {verdict: code for verdict, (code, _) in c.REGION_VERDICT_CODES.items()}
    size = Size(w=6, h=4)
    return [
        c.stat(
            layout,
            size,
            "Region verdict",
            "The isolator's current verdict for the region.",
            [
                c.target(
                    c.verdict_code_expr("isolator_region_verdict_info", REGION, "region", codes)
                )
            ],
            "none",
            mappings=c.verdict_mappings(c.REGION_VERDICT_CODES),
        ),
        c.stat(
            layout,
            size,
            "Federation up",
            "The central Prometheus's up for this region's /federate target.",
            [c.target(f'max(up{{job="{FEDERATE_JOB}", {REGION}}})')],
            "none",
            steps=c.thresholds(("red", 0), ("green", 1)),
            mappings=c.UP_MAPPINGS,
        ),
        c.stat(
            layout,
            size,
            "Freshest in-site sample",
            "Age of the newest agent sample federated from the region. Federated series linger "
            "for minutes after the link fails, so age, not presence, tells freshness.",
            [c.target(f"min(time() - timestamp(up{{{AGENTS}}}))")],
            "s",
            steps=c.thresholds(("green", 0), ("orange", 10), ("red", 30)),
        ),
        c.stat(
            layout,
            size,
            "Agents up in the site",
            "Agents that the region's edge Prometheus scrapes up, of all it scrapes.",
            [c.target(f"sum(up{{{AGENTS}}}) / count(up{{{AGENTS}}})")],
            "percentunit",
            steps=c.thresholds(("red", 0), ("orange", 0.5), ("green", 1)),
        ),
    ]


def _nodes_table(layout: c.Layout) -> g.Panel:
    return c.table(
        layout,
        Size(w=24, h=9),
        "Nodes",
        "Every node of the region: the isolator's verdict, the age of its last heartbeat and "
        "answered probe, and the age of its agent's newest sample federated from the site. "
        "Click a node for its evidence.",
        [
            c.target(
                f"max by (region, node, verdict) (isolator_node_verdict_info{{{REGION}}} == 1)",
                ref="A",
                table=True,
            ),
            c.target(
                f"max by (region, node) (isolator_node_heartbeat_age_seconds{{{REGION}}})",
                ref="B",
                table=True,
            ),
            c.target(
                f"max by (region, node) (isolator_node_probe_age_seconds{{{REGION}}})",
                ref="C",
                table=True,
            ),
            c.target(
                f"max by (region, node) (time() - timestamp(up{{{AGENTS}}}))",
                ref="D",
                table=True,
            ),
        ],
        "s",
        transformations=[
            c.MERGE,
            c.hide_columns(
                "Time",
                "Value #A",
                rename={
                    "Value #B": "heartbeat age",
                    "Value #C": "probe age",
                    "Value #D": "in-site sample age",
                },
            ),
        ],
        links=[c.NODE_LINK],
        sort_by="heartbeat age",
    )


def _history_row(layout: c.Layout) -> list[g.Panel]:
    return [
        c.timeseries(
            layout,
            Size(w=12, h=8),
            "Nodes per verdict",
            "The region's nodes by the isolator's verdict.",
            [
                c.target(
                    f"sum by (verdict) (isolator_node_verdict_nodes{{{REGION}}})", "{{verdict}}"
                )
            ],
            "short",
            stacked=True,
        ),
        c.timeseries(
            layout,
            Size(w=12, h=8),
            "Heartbeat age",
            "Time since each node's last accepted heartbeat, on the isolator's clock.",
            [c.target(f"isolator_node_heartbeat_age_seconds{{{REGION}}}", "{{node}}")],
            "s",
        ),
        c.state_timeline(
            layout,
            Size(w=12, h=8),
            "Agents seen from inside the site",
            "The edge Prometheus's up for each agent, read through federation.",
            [c.target(f"max by (node) (up{{{AGENTS}}})", "{{node}}")],
            c.UP_MAPPINGS,
        ),
        c.timeseries(
            layout,
            Size(w=12, h=8),
            "Heartbeats sent by the agents",
            "Heartbeats per second that the region's agents report, by result. Errors with "
            "in-site scrapes up point at the WAN link, not at the nodes.",
            [
                c.target(
                    "sum by (result) "
                    f"(rate(isolator_agent_heartbeats_total{{{AGENTS}}}[$__rate_interval]))",
                    "{{result}}",
                )
            ],
            "reqps",
        ),
    ]


def build() -> g.Dashboard:
    """Build the region drill-down dashboard."""
    layout = c.Layout()
    panels = [*_summary_row(layout), _nodes_table(layout), *_history_row(layout)]
    return c.dashboard(
        "Isolator: region",
        c.REGION_UID,
        "One region's verdict, its nodes as the isolator and the site see them, and its "
        "monitoring path.",
        [c.datasource_variable(), c.region_variable(multi=False)],
        panels,
    )
