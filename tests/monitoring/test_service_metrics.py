"""The per-node and isolation metrics that the dashboards and alert rules read."""

from __future__ import annotations

from prometheus_client import generate_latest

from isolator.metrics import Metrics
from isolator.model import NodeAssessment, NodeEvidence, NodeVerdict, SiteSample

LABELS = {"region": "r1", "node": "r1-n01"}


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_set_node_publishes_each_signal() -> None:
    metrics = Metrics()
    evidence = NodeEvidence(
        node="r1-n01",
        region="r1",
        last_heartbeat_at=100.0,
        last_probe_ok_at=104.0,
        probe_failures=2,
        clock_skew_s=-0.25,
        site_up=SiteSample(value=0.0, age_s=1.5),
        firing_alerts={"IsolatorEdgeAgentDown"},
    )
    node = NodeAssessment("r1-n01", "r1", NodeVerdict.FAILED, "silent", 7.0)

    metrics.set_node(node, evidence, now=107.0)

    assert value(metrics, "isolator_node_heartbeat_age_seconds", **LABELS) == 7.0
    assert value(metrics, "isolator_node_probe_age_seconds", **LABELS) == 3.0
    assert value(metrics, "isolator_node_probe_consecutive_failures", **LABELS) == 2
    assert value(metrics, "isolator_node_site_up", **LABELS) == 0.0
    assert value(metrics, "isolator_node_site_sample_age_seconds", **LABELS) == 1.5
    assert value(metrics, "isolator_node_clock_skew_seconds", **LABELS) == -0.25
    assert value(metrics, "isolator_node_firing_alerts", **LABELS) == 1
    assert value(metrics, "isolator_node_verdict_info", **LABELS, verdict="failed") == 1
    assert value(metrics, "isolator_node_verdict_info", **LABELS, verdict="healthy") == 0


def test_unseen_signals_have_no_series() -> None:
    metrics = Metrics()
    evidence = NodeEvidence(node="r1-n01", region="r1", last_heartbeat_at=1.0)
    node = NodeAssessment("r1-n01", "r1", NodeVerdict.UNKNOWN, "not yet seen", None)
    metrics.set_node(node, evidence, now=2.0)
    assert value(metrics, "isolator_node_probe_age_seconds", **LABELS) is None
    assert value(metrics, "isolator_node_site_up", **LABELS) is None

    evidence.last_heartbeat_at = None
    metrics.set_node(node, evidence, now=3.0)

    assert value(metrics, "isolator_node_heartbeat_age_seconds", **LABELS) is None


def test_forget_node_removes_its_series() -> None:
    metrics = Metrics()
    evidence = NodeEvidence(node="r1-n01", region="r1", last_heartbeat_at=1.0)
    node = NodeAssessment("r1-n01", "r1", NodeVerdict.HEALTHY, "on time", 0.0)
    metrics.set_node(node, evidence, now=2.0)

    metrics.forget_node("r1", "r1-n01")

    assert value(metrics, "isolator_node_heartbeat_age_seconds", **LABELS) is None
    assert value(metrics, "isolator_node_verdict_info", **LABELS, verdict="healthy") is None


def test_node_series_exposed_as_gauges_with_help() -> None:
    metrics = Metrics()
    evidence = NodeEvidence(node="r1-n01", region="r1", last_heartbeat_at=1.0)
    node = NodeAssessment("r1-n01", "r1", NodeVerdict.HEALTHY, "on time", 0.0)
    before = generate_latest(metrics.registry).decode()
    metrics.set_node(node, evidence, now=4.5)

    text = generate_latest(metrics.registry).decode()

    assert "# TYPE isolator_node_heartbeat_age_seconds gauge" in before
    assert 'isolator_node_heartbeat_age_seconds{node="r1-n01",region="r1"} 3.5' in text
    assert "# HELP isolator_node_verdict_info 1 for the current verdict" in text
    assert "r1-n01" not in before


def test_set_isolations_replaces_previous() -> None:
    metrics = Metrics()
    metrics.set_isolations([("r1", "r1-n01", "silent", "pending")])

    metrics.set_isolations([("r1", "r1-n01", "silent", "verified")])

    labels = {**LABELS, "reason": "silent"}
    assert value(metrics, "isolator_isolation_info", **labels, state="verified") == 1
    assert value(metrics, "isolator_isolation_info", **labels, state="pending") is None


def test_build_info_carries_version() -> None:
    metrics = Metrics()

    [family] = [f for f in metrics.registry.collect() if f.name == "isolator_build_info"]
    [sample] = family.samples
    assert sample.value == 1
    assert sample.labels["version"]
