"""The generated Prometheus rules: valid for promtool, unit-tested, and documented."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from alert_rules.rules import ALERTS, BUDGET_CHECKS, RECORDING_RULES, RULES_FILE_NAME
from isolator.engine.capacity import MIN_READY_CHECK, UNKNOWN_CHECK
from isolator.engine.decide import Kind, Memory, Policy, decide
from isolator.model import (
    Assessment,
    GlobalVerdict,
    NodeAssessment,
    NodeVerdict,
    RegionAssessment,
    RegionVerdict,
)
from tests.monitoring.metric_names import unknown_names

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES_PATH = REPO_ROOT / "alert_rules" / RULES_FILE_NAME
UNIT_TESTS = sorted((REPO_ROOT / "alert_rules" / "tests").glob("*.test.yml"))
RUNBOOKS = REPO_ROOT / "docs" / "runbooks.md"
RECORD_NAME = re.compile(r"^[a-z_]+:[a-z0-9_]+:[a-z0-9_]+$")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)


def committed_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES_PATH.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_check_rules_passes() -> None:
    result = run("promtool", "check", "rules", str(RULES_PATH))

    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    assert UNIT_TESTS, "no promtool unit tests in alert_rules/tests"

    result = run("promtool", "test", "rules", *map(str, UNIT_TESTS))

    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_fail_on_changed_rule(tmp_path: Path) -> None:
    """A changed `for` duration makes the unit tests fail, so they check the rules."""
    changed = RULES_PATH.read_text().replace("for: 30s", "for: 10m")
    assert changed != RULES_PATH.read_text()
    (tmp_path / RULES_FILE_NAME).write_text(changed)
    (tmp_path / "tests").mkdir()
    for test in UNIT_TESTS:
        (tmp_path / "tests" / test.name).write_text(test.read_text())

    result = run("promtool", "test", "rules", *map(str, (tmp_path / "tests").glob("*.yml")))

    assert result.returncode != 0, result.stdout
    assert "IsolatorRegionPartitioned" in result.stdout + result.stderr


def alert_cases() -> dict[str, dict[str, int]]:
    """Count, per alert name, the unit-test evaluations that expect it firing and silent."""
    cases: dict[str, dict[str, int]] = {}
    for path in UNIT_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                counts = cases.setdefault(case["alertname"], {"firing": 0, "silent": 0})
                counts["firing" if case.get("exp_alerts") else "silent"] += 1
    return cases


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a.name)
def test_alert_unit_tested_firing_and_silent(alert: Any) -> None:
    counts = alert_cases().get(alert.name, {"firing": 0, "silent": 0})

    assert counts["firing"] >= 1, f"{alert.name} is never shown firing"
    assert counts["silent"] >= 1, f"{alert.name} is never shown not firing"


def test_every_alert_committed() -> None:
    names = [rule["alert"] for rule in committed_rules() if "alert" in rule]

    assert names == [alert.name for alert in ALERTS]


@pytest.mark.parametrize(
    "rule", [r for r in committed_rules() if "alert" in r], ids=lambda r: r["alert"]
)
def test_alert_labels_and_annotations(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning"}
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    assert annotations["runbook_url"] == f"docs/runbooks.md#{rule['alert'].lower()}"


def runbook_anchors() -> list[str]:
    """Return the anchors GitHub gives the level-2 headings of docs/runbooks.md."""
    headings = re.findall(r"^## (.+)$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    return [re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings]


def test_runbook_has_one_section_per_alert() -> None:
    anchors = runbook_anchors()
    expected = [
        rule["annotations"]["runbook_url"].split("#", 1)[1]
        for rule in committed_rules()
        if "alert" in rule
    ]

    assert sorted(anchors) == sorted(expected)


def test_recording_rules_follow_naming_convention() -> None:
    for rule in RECORDING_RULES:
        assert RECORD_NAME.match(rule["record"]), rule["record"]


def test_rules_name_only_exported_metrics() -> None:
    expressions = [rule["expr"] for rule in committed_rules()]

    assert unknown_names(expressions) == set()


def _assessment(region_verdict: RegionVerdict, verdicts: dict[str, NodeVerdict]) -> Assessment:
    nodes = {
        name: NodeAssessment(name, "r1", verdict, "test", 10.0)
        for name, verdict in verdicts.items()
    }
    failed = sum(v is NodeVerdict.FAILED for v in verdicts.values())
    region = RegionAssessment("r1", region_verdict, "test", len(nodes), failed, failed)
    return Assessment(GlobalVerdict.NORMAL, "test", {"r1": region}, nodes)


def _held_checks(decisions: list[Any]) -> set[str]:
    # The control loop labels isolator_action_held_total with the reason before its colon.
    return {d.reason.split(":")[0] for d in decisions if d.kind is Kind.HOLD}


def test_budget_checks_match_engine_hold_reasons() -> None:
    policy = Policy(
        correlation_window_s=0.0,
        restore_hold_s=10.0,
        region_max_cut_fraction=0.34,
        region_min_cut_nodes=1,
        region_cooldown_s=60.0,
        cuts_per_minute=0,
    )
    memory = Memory.empty()
    healthy, failed = NodeVerdict.HEALTHY, NodeVerdict.FAILED
    every_node_failed = _assessment(RegionVerdict.DEGRADED, dict.fromkeys(["a", "b", "c"], failed))
    one_node_failed = _assessment(RegionVerdict.DEGRADED, {"a": failed, "b": healthy, "c": healthy})

    memory.update(every_node_failed, 0.0)
    budget = _held_checks(decide(every_node_failed, {}, memory, 0.0, policy))
    memory.update(one_node_failed, 1.0)
    cooldown = _held_checks(decide(one_node_failed, {}, memory, 1.0, policy))
    memory = Memory.empty()
    memory.update(one_node_failed, 0.0)
    rate = _held_checks(decide(one_node_failed, {}, memory, 0.0, policy))

    assert budget == {"region budget exceeded"}
    assert cooldown == {"region cooldown"}
    assert rate == {"rate limit"}
    assert set(BUDGET_CHECKS) == budget | cooldown | rate | {MIN_READY_CHECK, UNKNOWN_CHECK}
