"""Example monitoring configs for a real estate, built with the lab's own config builders.

The example has two regions; an operator copies the files and replaces the addresses. The
intervals keep a federated sample younger than the isolator's default ISOLATOR_SITE_MAX_AGE_S
of 15 s: an edge scrape every 5 s plus a federation scrape every 5 s.
"""

from __future__ import annotations

from typing import Any

from alert_rules.rules import rule_groups
from isolator.lab.monitoring import (
    AGENT_JOB,
    ISOLATOR_JOB,
    MonitoringOptions,
    alertmanager_config,
    central_prometheus_config,
    edge_prometheus_config,
)

NAMESPACE = "isolator-system"
ISOLATOR_SERVICE = "isolator"
ISOLATOR_PORT = 8080
AGENT_SERVICE = "isolator-agent"
AGENT_PORT = 9910
HTTP_PORT_NAME = "http"
METRICS_PORT_NAME = "metrics"
# Labels that each prometheus-operator instance selects its PrometheusRule and ServiceMonitor
# objects by: the central one evaluates the rules and scrapes the isolator, each edge one
# scrapes its region's agents.
CENTRAL_SELECTOR = {"prometheus": "central"}
EDGE_SELECTOR = {"prometheus": "edge"}

OPTIONS = MonitoringOptions(
    scrape_interval_s=5.0,
    scrape_timeout_s=4.0,
    federation_interval_s=5.0,
    federation_timeout_s=4.0,
    evaluation_interval_s=5.0,
    group_wait_s=5.0,
    group_interval_s=10.0,
    repeat_interval_s=3600.0,
)

EXAMPLE_REGION = "r1"
EXAMPLE_AGENTS = {"r1-n01": f"198.18.0.10:{AGENT_PORT}", "r1-n02": f"198.18.0.11:{AGENT_PORT}"}
EXAMPLE_EDGES = {"r1": "198.18.0.2:9090", "r2": "198.18.1.2:9090"}
ALERTMANAGER = "alertmanager.monitoring.svc:9093"
ISOLATOR_ADDRESS = f"{ISOLATOR_SERVICE}.{NAMESPACE}.svc:{ISOLATOR_PORT}"
WEBHOOK_URL = f"http://{ISOLATOR_ADDRESS}/v1/alerts/webhook"
WEBHOOK_CREDENTIALS_FILE = "/etc/alertmanager/secrets/isolator-webhook/token"
# The isolator's /metrics needs a viewer token. prometheus-operator mounts a Secret named in
# the Prometheus resource's spec.secrets under /etc/prometheus/secrets/<name>/.
METRICS_TOKEN_SECRET = "isolator-metrics-token"
METRICS_CREDENTIALS_FILE = f"/etc/prometheus/secrets/{METRICS_TOKEN_SECRET}/token"
# Relative to central-prometheus.yml, so that `promtool check config` also checks the rules.
CENTRAL_RULE_FILE = "../../alert_rules/isolator.rules.yml"


def edge_prometheus() -> dict[str, Any]:
    """Return the example edge Prometheus config of region r1, scraping its agents."""
    return edge_prometheus_config(EXAMPLE_REGION, EXAMPLE_AGENTS, OPTIONS)


def central_prometheus() -> dict[str, Any]:
    """Return the example central Prometheus config: federation, the isolator, the rules."""
    # NOTE: the isolator's /metrics needs a viewer token. This example leaves out
    # `isolator_credentials_file=METRICS_CREDENTIALS_FILE` only because `promtool check config`
    # fails on a credentials file that does not exist on the checking host; add it when
    # deploying, as the ServiceMonitor below does.
    config = central_prometheus_config(
        EXAMPLE_EDGES, ALERTMANAGER, OPTIONS, isolator_targets=[ISOLATOR_ADDRESS]
    )
    config["rule_files"] = [CENTRAL_RULE_FILE]
    return config


def alertmanager() -> dict[str, Any]:
    """Return the example Alertmanager config: every alert to the isolator's webhook."""
    return alertmanager_config(WEBHOOK_URL, OPTIONS, credentials_file=WEBHOOK_CREDENTIALS_FILE)


def _metadata(name: str, component: str, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": NAMESPACE,
        "labels": {
            "app.kubernetes.io/name": "isolator",
            "app.kubernetes.io/component": component,
            **selector,
        },
    }


def prometheus_rule() -> dict[str, Any]:
    """Return the rules as a prometheus-operator PrometheusRule."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": _metadata("isolator", "rules", CENTRAL_SELECTOR),
        "spec": rule_groups(),
    }


def service_monitors() -> list[dict[str, Any]]:
    """Return the ServiceMonitors for the isolator (central) and the agents (edge).

    Each sets ``jobLabel`` so that the job label matches the static configs' job names, which
    the alert rules and dashboards select on.
    """
    interval = f"{OPTIONS.scrape_interval_s:g}s"
    timeout = f"{OPTIONS.scrape_timeout_s:g}s"
    isolator = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _metadata(ISOLATOR_JOB, "controller", CENTRAL_SELECTOR),
        "spec": {
            "jobLabel": "app.kubernetes.io/name",
            "selector": {"matchLabels": {"app.kubernetes.io/name": ISOLATOR_JOB}},
            "namespaceSelector": {"matchNames": [NAMESPACE]},
            "endpoints": [
                {
                    "port": HTTP_PORT_NAME,
                    "path": "/metrics",
                    "interval": interval,
                    "scrapeTimeout": timeout,
                    # The isolator's /metrics needs a viewer token, kept in this Secret.
                    "authorization": {
                        "type": "Bearer",
                        "credentials": {"name": METRICS_TOKEN_SECRET, "key": "token"},
                    },
                }
            ],
        },
    }
    agents = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _metadata(AGENT_JOB, "agent", EDGE_SELECTOR),
        "spec": {
            "jobLabel": "app.kubernetes.io/name",
            "selector": {"matchLabels": {"app.kubernetes.io/name": AGENT_JOB}},
            "namespaceSelector": {"matchNames": [NAMESPACE]},
            "endpoints": [
                {
                    "port": METRICS_PORT_NAME,
                    "path": "/metrics",
                    "interval": interval,
                    "scrapeTimeout": timeout,
                    # The agent's Pod runs on the node it reports for; the node label is what
                    # the isolator and the rules join on.
                    "relabelings": [
                        {
                            "sourceLabels": ["__meta_kubernetes_pod_node_name"],
                            "targetLabel": "node",
                            "action": "replace",
                        }
                    ],
                }
            ],
        },
    }
    return [isolator, agents]
