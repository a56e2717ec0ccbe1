"""The isolator's own health: its control loop, its inputs and the results of its actions.

When this dashboard is red, the overview cannot be trusted: a slow loop, failing Prometheus
queries or a stalled heartbeat ingest all make healthy nodes look silent.
"""

from __future__ import annotations

from grafanalib import core as g

from alert_rules import rules
from dashboards import common as c
from dashboards.common import Size
from isolator.lab.monitoring import AGENT_JOB, ISOLATOR_JOB

ISOLATOR = f'job="{ISOLATOR_JOB}"'


def _quantiles(bucket_rate: str) -> list[g.Target]:
    return [
        c.target(
            f"histogram_quantile({q}, sum by (le) ({bucket_rate}{{{ISOLATOR}}}))",
            f"p{round(q * 100)}",
            ref,
        )
        for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))
    ]


def _status_row(layout: c.Layout) -> list[g.Panel]:
    size = Size(w=6, h=4)
    return [
        c.stat(
            layout,
            size,
            "Scrape up",
            "Whether Prometheus scrapes each isolator instance.",
            [c.target(f"up{{{ISOLATOR}}}", "{{instance}}")],
            "none",
            steps=c.thresholds(("red", 0), ("green", 1)),
            mappings=c.UP_MAPPINGS,
        ),
        c.stat(
            layout,
            size,
            "Version",
            "The version each isolator instance runs.",
            [
                c.target(
                    f"max by (instance, version) (isolator_build_info{{{ISOLATOR}}})", "{{version}}"
                )
            ],
            "none",
            text_mode="name",
        ),
        c.stat(
            layout,
            size,
            "Control-loop errors (5 min)",
            "Control-loop passes that raised in the last 5 minutes.",
            [c.target(f"sum(increase(isolator_loop_errors_total{{{ISOLATOR}}}[5m]))")],
            "short",
            steps=c.thresholds(("green", 0), ("orange", 1)),
        ),
        c.stat(
            layout,
            size,
            "Heartbeats accepted",
            "Share of the heartbeats the agents report sending that the isolator accepted, "
            "over 2 minutes.",
            [
                c.target(
                    f"sum({rules.HEARTBEAT_RECEIVED_RATE}) / sum({rules.AGENT_HEARTBEATS_RATE})"
                )
            ],
            "percentunit",
            steps=c.thresholds(
                ("red", 0), ("orange", 0.5), ("green", rules.INGEST_MIN_ACCEPTED_RATIO)
            ),
        ),
    ]


def _loop_row(layout: c.Layout) -> list[g.Panel]:
    size = Size(w=12, h=8)
    return [
        c.timeseries(
            layout,
            size,
            "Control-loop pass duration",
            "Quantiles of one pass: read the site view, classify, decide, start the actions.",
            _quantiles(rules.LOOP_DURATION_BUCKET_RATE),
            "s",
        ),
        c.timeseries(
            layout,
            size,
            "Heartbeat ingest",
            "Heartbeats accepted and rejected by the isolator, next to those the agents "
            "report sending.",
            [
                c.target(
                    f"sum(rate(isolator_heartbeat_received_total{{{ISOLATOR}}}[$__rate_interval]))",
                    "accepted",
                    "A",
                ),
                c.target(
                    "sum by (reason) "
                    f"(rate(isolator_heartbeat_rejected_total{{{ISOLATOR}}}[$__rate_interval]))",
                    "rejected {{reason}}",
                    "B",
                ),
                c.target(
                    "sum by (result) (rate(isolator_agent_heartbeats_total"
                    f'{{job="{AGENT_JOB}"}}[$__rate_interval]))',
                    "agents sent, {{result}}",
                    "C",
                ),
            ],
            "reqps",
        ),
    ]


def _inputs_row(layout: c.Layout) -> list[g.Panel]:
    size = Size(w=8, h=8)
    return [
        c.timeseries(
            layout,
            size,
            "Prometheus query latency",
            "Quantiles of one query to the central Prometheus.",
            _quantiles(rules.QUERY_DURATION_BUCKET_RATE),
            "s",
        ),
        c.timeseries(
            layout,
            size,
            "Prometheus query errors",
            "Share of the isolator's queries to the central Prometheus that failed, over "
            "5 minutes.",
            [c.target(f"{rules.QUERY_ERROR_RATIO_RATE}{{{ISOLATOR}}}", "errors")],
            "percentunit",
        ),
        c.timeseries(
            layout,
            size,
            "Kubernetes API errors",
            "Failed requests to the Kubernetes API per second, by operation.",
            [
                c.target(
                    "sum by (operation) (rate(isolator_kubernetes_requests_total"
                    f'{{{ISOLATOR}, result="error"}}[$__rate_interval]))',
                    "{{operation}}",
                )
            ],
            "reqps",
        ),
    ]


def _results_row(layout: c.Layout) -> list[g.Panel]:
    size = Size(w=8, h=8)
    return [
        c.timeseries(
            layout,
            size,
            "Action results",
            "Cuts and restores per interval, by result. Verified means read back from the "
            "EndpointSlices.",
            [
                c.target(
                    "sum by (kind, result) "
                    f"(increase(isolator_action_total{{{ISOLATOR}}}[$__rate_interval]))",
                    "{{kind}} {{result}}",
                )
            ],
            "short",
        ),
        c.timeseries(
            layout,
            size,
            "Probes",
            "Probes of the agents per second, by result.",
            [
                c.target(
                    f"sum by (result) (rate(isolator_probe_total{{{ISOLATOR}}}[$__rate_interval]))",
                    "{{result}}",
                )
            ],
            "reqps",
        ),
        c.timeseries(
            layout,
            size,
            "Webhook alerts",
            "Alerts received from Alertmanager per second, by what became of them.",
            [
                c.target(
                    "sum by (outcome) "
                    f"(rate(isolator_webhook_alerts_total{{{ISOLATOR}}}[$__rate_interval]))",
                    "{{outcome}}",
                )
            ],
            "reqps",
        ),
    ]


def build() -> g.Dashboard:
    """Build the isolator health dashboard."""
    layout = c.Layout()
    panels = [
        *_status_row(layout),
        *_loop_row(layout),
        *_inputs_row(layout),
        *_results_row(layout),
    ]
    return c.dashboard(
        "Isolator: service health",
        c.HEALTH_UID,
        "The isolator's control loop, heartbeat ingest, queries to Prometheus and Kubernetes, "
        "and the results of its actions.",
        [c.datasource_variable()],
        panels,
    )
