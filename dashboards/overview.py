"""The on-call overview: what the isolator concludes about every region and what it did.

The first row shows whether anything is wrong right now, the second each region's verdict
over time, the third lists current isolations and the nodes whose heartbeats are oldest, and
the last shows decisions, cuts and safety holds over time.
"""

from __future__ import annotations

from grafanalib import core as g

from dashboards import common as c
from dashboards.common import Size

REGIONS = 'region=~"$region"'
REGION_LINK = c.data_link(
    "Region drill-down", c.dashboard_url(c.REGION_UID, "var-region=${__field.labels.region}")
)


def _status_row(layout: c.Layout) -> list[g.Panel]:
    size = Size(w=6, h=4)
    return [
        c.stat(
            layout,
            size,
            "Fail-safe",
            "ENGAGED while most regions went dark at once: every automatic change is held.",
            [c.target("max(isolator_fail_safe_engaged)")],
            "none",
            steps=c.thresholds(("green", 0), ("red", 1)),
            mappings=c.ON_OFF_MAPPINGS,
        ),
        c.stat(
            layout,
            size,
            "Isolated nodes",
            "Nodes whose Pod traffic the isolator has cut right now.",
            [c.target("sum(isolator_isolation_nodes)")],
            "short",
            steps=c.thresholds(("green", 0), ("orange", 1)),
        ),
        c.stat(
            layout,
            size,
            "Regions not normal",
            "Regions whose verdict is degraded, partitioned or monitoring degraded.",
            [c.target(f'count(isolator_region_verdict_info{{{REGIONS}, verdict!="normal"}} == 1)')],
            "short",
            steps=c.thresholds(("green", 0), ("orange", 1)),
        ),
        c.stat(
            layout,
            size,
            "Safety holds (5 min)",
            "Cut decisions held by a safety check in the last 5 minutes, all checks.",
            [c.target("sum(increase(isolator_action_held_total[5m]))")],
            "short",
            steps=c.thresholds(("green", 0), ("orange", 1)),
        ),
    ]


def _verdict_row(layout: c.Layout) -> list[g.Panel]:
    codes = {verdict: code for verdict, (code, _) in c.REGION_VERDICT_CODES.items()}
    return [
        c.state_timeline(
            layout,
            Size(w=24, h=8),
            "Region verdicts",
            "Each region's verdict over time. Click a region for its drill-down.",
            [
                c.target(
                    c.verdict_code_expr("isolator_region_verdict_info", REGIONS, "region", codes),
                    "{{region}}",
                )
            ],
            c.verdict_mappings(c.REGION_VERDICT_CODES),
            links=[REGION_LINK],
        )
    ]


def _isolation_row(layout: c.Layout) -> list[g.Panel]:
    return [
        c.table(
            layout,
            Size(w=14, h=9),
            "Current isolations",
            "Nodes whose Pods are cut, with the reason and whether the cut was verified by "
            "reading the EndpointSlices back. Click a node for its evidence.",
            [
                c.target(
                    f"max by (region, node, reason, state) (isolator_isolation_info{{{REGIONS}}})",
                    table=True,
                )
            ],
            "none",
            transformations=[c.hide_columns("Time", "Value")],
            links=[c.NODE_LINK],
        ),
        c.table(
            layout,
            Size(w=10, h=9),
            "Oldest heartbeats",
            "Time since each node's last accepted heartbeat, oldest first. A node turns "
            "silent after ISOLATOR_HEARTBEAT_MISS_COUNT missed heartbeats.",
            [
                c.target(
                    f"max by (region, node) (isolator_node_heartbeat_age_seconds{{{REGIONS}}})",
                    table=True,
                )
            ],
            "s",
            transformations=[c.hide_columns("Time", rename={"Value": "heartbeat age"})],
            links=[c.NODE_LINK],
            sort_by="heartbeat age",
        ),
    ]


def _history_row(layout: c.Layout) -> list[g.Panel]:
    size = Size(w=8, h=8)
    return [
        c.timeseries(
            layout,
            size,
            "Cuts and restores",
            "Actions per interval, by kind and result. Error and unverified need a person.",
            [
                c.target(
                    "sum by (kind, result) (increase(isolator_action_total[$__rate_interval]))",
                    "{{kind}} {{result}}",
                )
            ],
            "short",
        ),
        c.timeseries(
            layout,
            size,
            "Safety holds",
            "Cut decisions held per interval, by the safety check that held them.",
            [
                c.target(
                    "sum by (check) (increase(isolator_action_held_total[$__rate_interval]))",
                    "{{check}}",
                )
            ],
            "short",
        ),
        c.timeseries(
            layout,
            size,
            "Nodes per verdict",
            "Edge nodes in the selected regions, by the isolator's verdict.",
            [
                c.target(
                    f"sum by (verdict) (isolator_node_verdict_nodes{{{REGIONS}}})",
                    "{{verdict}}",
                )
            ],
            "short",
            stacked=True,
        ),
        c.state_timeline(
            layout,
            Size(w=24, h=4),
            "Fail-safe over time",
            "When the global fail-safe held every automatic change.",
            [c.target("max(isolator_fail_safe_engaged)", "fail-safe")],
            c.ON_OFF_MAPPINGS,
        ),
    ]


def build() -> g.Dashboard:
    """Build the on-call overview dashboard."""
    layout = c.Layout()
    panels = [
        *_status_row(layout),
        *_verdict_row(layout),
        *_isolation_row(layout),
        *_history_row(layout),
    ]
    return c.dashboard(
        "Isolator: on-call overview",
        c.OVERVIEW_UID,
        "Verdicts of every region, current isolations, heartbeat ages, and what the isolator "
        "decided, cut and held.",
        [c.datasource_variable(), c.region_variable(multi=True)],
        panels,
    )
