"""The generated Grafana dashboards: valid against Grafana's schema, and usable on call."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from dashboards import build_all
from dashboards import common as c
from dashboards.export import LEGACY_KEYS, UNSET_KEYS, clean
from isolator.model import NodeVerdict, RegionVerdict
from tests.monitoring.metric_names import unknown_names
from tests.monitoring.queries import dashboard_queries, panels

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "dashboards" / "schema" / "dashboard.jsonschema.json"
JSON_DIR = REPO_ROOT / "dashboards" / "json"
EXPECTED_UIDS = {c.OVERVIEW_UID, c.REGION_UID, c.NODE_UID, c.HEALTH_UID}
CURRENT_PANEL_TYPES = {"timeseries", "stat", "table", "state-timeline"}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    # The file's root is a $ref to #/definitions/Dashboard, so validating against the whole
    # schema validates the dashboard root.
    assert schema["$ref"] == "#/definitions/Dashboard"
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return build_all()


def schema_errors(validator: jsonschema.Draft7Validator, data: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(str(p) for p in error.absolute_path)}: {error.message[:300]}"
        for error in validator.iter_errors(data)
    ]


def committed() -> list[Path]:
    return sorted(JSON_DIR.glob("*.json"))


@pytest.mark.parametrize("path", committed(), ids=lambda p: p.name)
def test_committed_dashboard_matches_schema(
    validator: jsonschema.Draft7Validator, path: Path
) -> None:
    data = json.loads(path.read_text())

    assert schema_errors(validator, data) == []


def test_every_dashboard_committed(dashboards: dict[str, dict[str, Any]]) -> None:
    assert {p.name for p in committed()} == set(dashboards)


def test_uids_stable_and_named_after_files(dashboards: dict[str, dict[str, Any]]) -> None:
    uids = {name: data["uid"] for name, data in dashboards.items()}

    assert set(uids.values()) == EXPECTED_UIDS
    for name, uid in uids.items():
        assert name == f"{uid}.json"


def test_every_panel_has_current_type_and_unit(dashboards: dict[str, dict[str, Any]]) -> None:
    for name, data in dashboards.items():
        for panel in panels(data):
            where = f"{name}: {panel['title']}"
            assert panel["type"] in CURRENT_PANEL_TYPES, where
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{where} has no unit"
            assert panel.get("description"), f"{where} has no description"


def test_panels_and_queries_use_datasource_variable(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    for name, data in dashboards.items():
        for panel in panels(data):
            where = f"{name}: {panel['title']}"
            assert panel["datasource"] == c.DATASOURCE, where
            assert panel["targets"], f"{where} has no query"
            for target in panel["targets"]:
                assert target["datasource"] == c.DATASOURCE, where


def test_panels_fit_grid_without_overlap(dashboards: dict[str, dict[str, Any]]) -> None:
    for name, data in dashboards.items():
        cells: dict[tuple[int, int], str] = {}
        for panel in panels(data):
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= c.GRID_WIDTH, f"{name}: {panel['title']}"
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in cells, f"{name}: {panel['title']} overlaps {cells[x, y]}"
                    cells[x, y] = panel["title"]


def variables(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in data["templating"]["list"]}


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        ("isolator-overview.json", {"datasource", "region"}),
        ("isolator-region.json", {"datasource", "region"}),
        ("isolator-node.json", {"datasource", "region", "node"}),
        ("isolator-health.json", {"datasource"}),
    ],
)
def test_template_variables(
    dashboards: dict[str, dict[str, Any]], file_name: str, expected: set[str]
) -> None:
    found = variables(dashboards[file_name])

    assert set(found) == expected
    assert found["datasource"]["type"] == "datasource"
    assert found["datasource"]["query"] == "prometheus"
    for name in expected - {"datasource"}:
        assert found[name]["datasource"] == c.DATASOURCE, name


def test_overview_region_variable_selects_all(dashboards: dict[str, dict[str, Any]]) -> None:
    region = variables(dashboards["isolator-overview.json"])["region"]

    assert region["multi"] is True
    assert region["includeAll"] is True
    assert region["current"]["value"] == "$__all"


def data_link_urls(data: dict[str, Any]) -> list[str]:
    return [
        link["url"]
        for panel in panels(data)
        for link in panel["fieldConfig"]["defaults"].get("links", [])
    ]


def test_overview_links_to_region_and_node(dashboards: dict[str, dict[str, Any]]) -> None:
    urls = data_link_urls(dashboards["isolator-overview.json"])

    assert any(url.startswith(f"/d/{c.REGION_UID}/") for url in urls), urls
    assert any(url.startswith(f"/d/{c.NODE_UID}/") for url in urls), urls
    for url in urls:
        assert "${datasource:queryparam}" in url, url


def test_region_links_to_node(dashboards: dict[str, dict[str, Any]]) -> None:
    urls = data_link_urls(dashboards["isolator-region.json"])

    assert any(url.startswith(f"/d/{c.NODE_UID}/") for url in urls), urls


def test_every_dashboard_links_the_others(dashboards: dict[str, dict[str, Any]]) -> None:
    for name, data in dashboards.items():
        [link] = data["links"]
        assert link["type"] == "dashboards", name
        assert link["tags"] == data["tags"] == c.TAGS, name
        assert link["includeVars"] is True, name


def test_queries_name_only_exported_metrics(dashboards: dict[str, dict[str, Any]]) -> None:
    expressions = [
        target["expr"]
        for data in dashboards.values()
        for panel in panels(data)
        for target in panel["targets"]
    ]
    expressions += [
        variable["query"] for data in dashboards.values() for variable in data["templating"]["list"]
    ]

    assert unknown_names(expressions) == set()


def test_verdict_codes_cover_every_verdict() -> None:
    assert set(c.REGION_VERDICT_CODES) == set(RegionVerdict)
    assert set(c.NODE_VERDICT_CODES) == set(NodeVerdict)
    region_codes = [code for code, _ in c.REGION_VERDICT_CODES.values()]
    node_codes = [code for code, _ in c.NODE_VERDICT_CODES.values()]
    assert len(set(region_codes)) == len(region_codes)
    assert len(set(node_codes)) == len(node_codes)


def test_verdict_code_expr_keeps_current_verdict() -> None:
    expr = c.verdict_code_expr("m", 'region="r1"', "region", {"normal": 0, "partitioned": 3})

    assert '(m{region="r1", verdict="normal"} == 1) * 0' in expr
    assert '(m{region="r1", verdict="partitioned"} == 1) * 3' in expr
    assert expr.startswith("max by (region) (")


def test_cleaning_keeps_unknown_keys_invalid(
    validator: jsonschema.Draft7Validator, dashboards: dict[str, dict[str, Any]]
) -> None:
    data = copy.deepcopy(dashboards["isolator-overview.json"])
    data["panels"][0]["legacyOption"] = True
    data["panels"][1]["title"] = None

    errors = schema_errors(validator, clean(data))

    # Panels validate against oneOf(Panel, RowPanel), so each error names only the panel.
    failing = sorted({error.split(":")[0] for error in errors})
    assert failing == ["panels/0", "panels/1"], errors


def test_cleaning_drops_only_named_keys() -> None:
    panel = {"type": "stat", "span": 4, "description": None, "title": None, "targets": []}
    data = {"panels": [panel], "templating": {"list": []}, "style": "dark", "gnetId": "x"}

    cleaned = clean(data)

    assert "style" not in cleaned
    assert cleaned["gnetId"] == "x"  # only a null gnetId is unset
    assert cleaned["panels"][0] == {"type": "stat", "title": None, "targets": []}
    assert "title" not in UNSET_KEYS["panel"]
    assert "span" in LEGACY_KEYS["panel"]


def test_threshold_base_becomes_null(dashboards: dict[str, dict[str, Any]]) -> None:
    for name, data in dashboards.items():
        for panel in panels(data):
            steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
            assert steps[0] == {"color": steps[0]["color"], "value": None}, name
            assert all(set(step) == {"color", "value"} for step in steps), name


def test_queries_parse_as_promql(dashboards: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    queries = list(dashboard_queries(dashboards).values())
    assert all("$" not in query for query in queries), queries
    rules = [{"record": f"dashboard:query_{i}:test", "expr": q} for i, q in enumerate(queries)]
    path = tmp_path / "queries.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))

    result = subprocess.run(
        ["promtool", "check", "rules", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
