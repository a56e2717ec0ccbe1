"""The generated Prometheus, Alertmanager and prometheus-operator configs, and the lab's."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from alert_rules.rules import RULES_FILE_NAME
from isolator.lab.environment import REPO_ROOT as LAB_REPO_ROOT
from isolator.lab.environment import LabSpec
from isolator.lab.monitoring import (
    AGENT_JOB,
    FEDERATE_JOB,
    FEDERATE_MATCHERS,
    ISOLATOR_JOB,
    MonitoringOptions,
    alertmanager_config,
    central_prometheus_config,
    generated_rule_files,
    write_yaml,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy" / "monitoring"
RULES_PATH = REPO_ROOT / "alert_rules" / RULES_FILE_NAME


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)


def load(name: str) -> Any:
    return yaml.safe_load((DEPLOY / name).read_text())


def test_central_config_passes_promtool() -> None:
    result = run("promtool", "check", "config", str(DEPLOY / "central-prometheus.yml"))

    assert result.returncode == 0, result.stdout + result.stderr
    # promtool also checks the rule files that the config names.
    assert "1 rule files found" in result.stdout + result.stderr


def test_edge_config_passes_promtool() -> None:
    result = run("promtool", "check", "config", str(DEPLOY / "edge-prometheus.yml"))

    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_config_passes_amtool() -> None:
    result = run("amtool", "check-config", str(DEPLOY / "alertmanager.yml"))

    assert result.returncode == 0, result.stdout + result.stderr


def test_central_federates_with_region_labels() -> None:
    config = load("central-prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}

    federate = jobs[FEDERATE_JOB]
    assert federate["honor_labels"] is True
    assert federate["metrics_path"] == "/federate"
    assert federate["params"]["match[]"] == FEDERATE_MATCHERS
    assert all(static["labels"]["region"] for static in federate["static_configs"])
    assert ISOLATOR_JOB in jobs
    assert (DEPLOY / config["rule_files"][0]).resolve() == RULES_PATH


def test_edge_sets_region_external_label() -> None:
    config = load("edge-prometheus.yml")

    assert config["global"]["external_labels"] == {"region": "r1"}
    [job] = config["scrape_configs"]
    assert job["job_name"] == AGENT_JOB
    assert all(static["labels"]["node"] for static in job["static_configs"])


def test_alertmanager_routes_to_isolator_webhook() -> None:
    config = load("alertmanager.yml")
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}

    [webhook] = receivers[config["route"]["receiver"]]["webhook_configs"]
    assert webhook["url"].endswith("/v1/alerts/webhook")
    assert webhook["send_resolved"] is True
    authorization = webhook["http_config"]["authorization"]
    assert authorization["credentials_file"].startswith("/")
    assert "credentials" not in authorization


def test_alertmanager_without_credentials_has_no_http_config() -> None:
    config = alertmanager_config("http://127.0.0.1:8080/v1/alerts/webhook", MonitoringOptions())

    [webhook] = config["receivers"][0]["webhook_configs"]
    assert "http_config" not in webhook


def test_prometheus_rule_carries_generated_rules() -> None:
    manifest = load("prometheus-rule.yml")

    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["spec"] == yaml.safe_load(RULES_PATH.read_text())


def test_service_monitors_set_rule_job_names() -> None:
    monitors = list(yaml.safe_load_all((DEPLOY / "service-monitors.yml").read_text()))

    assert [m["kind"] for m in monitors] == ["ServiceMonitor", "ServiceMonitor"]
    jobs = {m["spec"]["selector"]["matchLabels"][m["spec"]["jobLabel"]] for m in monitors}
    assert jobs == {ISOLATOR_JOB, AGENT_JOB}


def test_lab_central_loads_generated_rules() -> None:
    options = LabSpec().monitoring

    assert options.rule_files == [RULES_PATH]
    assert options.scrape_isolator is True
    assert LAB_REPO_ROOT == REPO_ROOT


def test_generated_rule_files_rejects_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make generate"):
        generated_rule_files(tmp_path)


def test_lab_central_config_with_isolator_passes_promtool(tmp_path: Path) -> None:
    options = MonitoringOptions(rule_files=generated_rule_files(REPO_ROOT))
    config = central_prometheus_config(
        {"r1": "198.18.0.2:9090"}, "127.0.0.1:9093", options, ["127.0.0.1:8080"]
    )
    path = write_yaml(tmp_path / "central.yml", config)

    result = run("promtool", "check", "config", str(path))

    assert result.returncode == 0, result.stdout + result.stderr
    [isolator] = [job for job in config["scrape_configs"] if job["job_name"] == ISOLATOR_JOB]
    assert isolator["static_configs"] == [{"targets": ["127.0.0.1:8080"]}]
