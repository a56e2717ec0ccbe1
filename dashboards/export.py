"""Turn a grafanalib dashboard into the JSON that Grafana imports and the schema accepts.

grafanalib 0.7.1 writes some keys of Grafana's old dashboard model that the current JSON
schema (dashboards/schema/) rejects and that Grafana ignores when it imports a dashboard. Each
key dropped here is named with where it appears and why it can go, so that any other schema
error, for example from a newer grafanalib, still fails the validation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from grafanalib import core as g
from grafanalib._gen import DashboardEncoder

# Keys dropped wherever they appear at a location, whatever their value.
LEGACY_KEYS: Mapping[str, Mapping[str, str]] = {
    "dashboard": {
        "__inputs": "import inputs for dashboards shared on grafana.com; a variable is used here",
        "hideControls": "old option; the current model hides controls in the time picker",
        "rows": "old row layout; every panel here sits in the panels list",
        "sharedCrosshair": "replaced by graphTooltip, which is set",
        "style": "old dashboard theme; the current model has no theme",
    },
    "timepicker": {
        "time_options": "old list of time ranges; the current model has quick_ranges",
    },
    "panel": {
        "editable": "per-panel flag of the old model; the dashboard's editable applies",
        "error": "runtime state that old Grafana versions saved with the panel",
        "height": "old row layout; gridPos sets the size",
        "minSpan": "old row layout; gridPos sets the size",
        "span": "old row layout; gridPos sets the size",
    },
    "table": {
        "color": "the Angular table's option; fieldConfig.defaults.color applies",
        "columns": "the Angular table's column list; the table shows every field",
        "fontSize": "the Angular table's option",
        "mappings": "the Angular table's mappings; fieldConfig.defaults.mappings applies",
    },
    "variable": {
        "useTags": "old tag options of variables; the current model has none",
        "tagsQuery": "old tag options of variables; the current model has none",
        "tagValuesQuery": "old tag options of variables; the current model has none",
    },
    "variable.current": {
        "tags": "old tag options of variables; the current model has none",
    },
    "threshold": {
        "index": "the Graph panel's threshold model; a step has only a colour and a value",
        "line": "the Graph panel's threshold model",
        "op": "the Graph panel's threshold model",
        "yaxis": "the Graph panel's threshold model",
    },
}

# Keys that grafanalib writes as null when the attribute was left unset. The schema has no null
# for them, so they are dropped, and only when null: a missing key also means unset.
UNSET_KEYS: Mapping[str, frozenset[str]] = {
    "dashboard": frozenset({"gnetId", "id"}),
    "timepicker": frozenset({"nowDelay"}),
    "panel": frozenset(
        {
            "cacheTimeout",
            "description",
            "interval",
            "maxPerRow",
            "repeat",
            "repeatDirection",
            "timeFrom",
            "timeShift",
        }
    ),
    "field defaults": frozenset({"color", "decimals", "max", "min"}),
    "variable": frozenset({"allValue", "datasource", "label", "regex"}),
}


def _drop(obj: dict[str, Any], location: str) -> None:
    for key in LEGACY_KEYS.get(location, {}):
        obj.pop(key, None)
    for key in UNSET_KEYS.get(location, frozenset()):
        if key in obj and obj[key] is None:
            del obj[key]


def _panels(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in data.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def _clean_thresholds(defaults: dict[str, Any]) -> None:
    for step in defaults.get("thresholds", {}).get("steps", []):
        _drop(step, "threshold")
        # grafanalib writes the base step's value as the string "null"; Grafana's model has
        # JSON null there, standing for minus infinity.
        if step.get("value") == "null":
            step["value"] = None


def clean(data: dict[str, Any]) -> dict[str, Any]:
    """Drop the legacy and unset keys named above from encoded dashboard JSON, in place."""
    _drop(data, "dashboard")
    _drop(data.get("timepicker", {}), "timepicker")
    for variable in data.get("templating", {}).get("list", []):
        _drop(variable, "variable")
        _drop(variable.get("current", {}), "variable.current")
    for panel in _panels(data):
        _drop(panel, "panel")
        if panel.get("type") == "table":
            _drop(panel, "table")
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        _drop(defaults, "field defaults")
        _clean_thresholds(defaults)
    return data


def to_json_data(dashboard: g.Dashboard) -> dict[str, Any]:
    """Encode a grafanalib dashboard as plain JSON data without the legacy keys."""
    encoded: dict[str, Any] = json.loads(json.dumps(dashboard.to_json_data(), cls=DashboardEncoder))
    return clean(encoded)


def render(data: Mapping[str, Any]) -> str:
    """Render dashboard JSON as committed: two-space indent, UTF-8, a final newline."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
