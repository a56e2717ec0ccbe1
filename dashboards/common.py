"""Building blocks shared by the isolator's dashboards: variables, panels, layout and links.

Every panel queries the data source chosen in the ``datasource`` variable: the central
Prometheus, which federates the edge Prometheus servers and scrapes the isolator. Every panel
states its unit, so a person never has to guess whether a number is seconds or a count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from grafanalib import core as g

from isolator.lab.monitoring import AGENT_JOB
from isolator.model import NodeVerdict, RegionVerdict

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
TAGS = ["isolator"]
# The dashboard model version of Grafana 11.6; newer Grafana versions migrate it on import.
# The JSON validates against Grafana 12's schema in dashboards/schema/.
SCHEMA_VERSION = 41
GRID_WIDTH = 24

OVERVIEW_UID = "isolator-overview"
REGION_UID = "isolator-region"
NODE_UID = "isolator-node"
HEALTH_UID = "isolator-health"

# State colours: a verdict's code orders it from fine to worst, for state timelines.
REGION_VERDICT_CODES: Mapping[RegionVerdict, tuple[int, str]] = {
    RegionVerdict.NORMAL: (0, "green"),
    RegionVerdict.DEGRADED: (1, "orange"),
    RegionVerdict.MONITORING_DEGRADED: (2, "yellow"),
    RegionVerdict.PARTITIONED: (3, "red"),
}
NODE_VERDICT_CODES: Mapping[NodeVerdict, tuple[int, str]] = {
    NodeVerdict.HEALTHY: (0, "green"),
    NodeVerdict.UNKNOWN: (1, "blue"),
    NodeVerdict.SUSPECT: (2, "yellow"),
    NodeVerdict.UNREACHABLE: (3, "orange"),
    NodeVerdict.FAILED: (4, "red"),
}


def datasource_variable() -> g.Template:
    """Build the ``datasource`` variable: any Prometheus data source, the default first."""
    return g.Template(
        name="datasource",
        label="Data source",
        query="prometheus",
        type="datasource",
        default="default",
    )


def region_variable(*, multi: bool) -> g.Template:
    """Build the ``region`` variable from the regions the isolator publishes verdicts for."""
    variable = g.Template(
        name="region",
        label="Region",
        query="label_values(isolator_region_verdict_info, region)",
        dataSource=DATASOURCE,
        includeAll=multi,
        multi=multi,
        default="$__all" if multi else "",
    )
    if multi:
        # grafanalib shows the raw "$__all" as the option's text; Grafana labels it "All".
        variable._current = {"selected": True, "text": "All", "value": "$__all"}
    return variable


def node_variable() -> g.Template:
    """Build the ``node`` variable from the agents that the region's edge Prometheus scrapes."""
    return g.Template(
        name="node",
        label="Node",
        query=f'label_values(isolator_agent_info{{job="{AGENT_JOB}", region="$region"}}, node)',
        dataSource=DATASOURCE,
        default="",
    )


def target(expr: str, legend: str = "", ref: str = "A", *, table: bool = False) -> g.Target:
    """Build a Prometheus query; a table query is instant and returns one row per series."""
    return g.Target(
        expr=expr,
        legendFormat=legend,
        refId=ref,
        datasource=DATASOURCE,
        instant=table,
        format="table" if table else "time_series",
    )


def value_mappings(states: Mapping[int, tuple[str, str]]) -> list[dict[str, Any]]:
    """Map numeric states to text and colour: ``{value: (text, colour)}``."""
    options = {
        str(value): {"text": text, "color": color, "index": index}
        for index, (value, (text, color)) in enumerate(sorted(states.items()))
    }
    return [{"type": "value", "options": options}]


def verdict_mappings(codes: Mapping[Any, tuple[int, str]]) -> list[dict[str, Any]]:
    """Map verdict codes back to the verdict names a person reads."""
    return value_mappings({code: (str(verdict), color) for verdict, (code, color) in codes.items()})


def verdict_code_expr(metric: str, selector: str, by: str, codes: Mapping[Any, int]) -> str:
    """Turn a verdict info metric (1 for the current verdict) into one code per ``by`` group.

    Only the current verdict's series survives ``== 1``; multiplying it by its code and taking
    the max per group leaves that code.
    """
    prefix = f"{selector}, " if selector else ""
    parts = [
        f'({metric}{{{prefix}verdict="{verdict}"}} == 1) * {code}'
        for verdict, code in sorted(codes.items(), key=lambda item: item[1])
    ]
    return f"max by ({by}) (\n  " + "\n  or ".join(parts) + "\n)"


UP_MAPPINGS = value_mappings({0: ("down", "red"), 1: ("up", "green")})
ON_OFF_MAPPINGS = value_mappings({0: ("off", "green"), 1: ("ENGAGED", "red")})


def thresholds(*steps: tuple[str, float]) -> list[g.Threshold]:
    """Build threshold steps from (colour, lower bound); the first step is the base."""
    return [g.Threshold(color, index, float(value)) for index, (color, value) in enumerate(steps)]


GREEN_ONLY = thresholds(("green", 0))


def data_link(title: str, url: str) -> g.DashboardLink:
    """Build a link from a panel's values to another dashboard or page."""
    return g.DashboardLink(title=title, type="link", uri=url, icon="dashboard", keepTime=True)


def dashboard_url(uid: str, params: str) -> str:
    """Return the URL of one of these dashboards, keeping the data source and time range."""
    return f"/d/{uid}/{uid}?{params}&${{datasource:queryparam}}&${{__url_time_range}}"


NODE_LINK = data_link(
    "Node detail",
    dashboard_url(NODE_UID, "var-region=${__data.fields.region}&var-node=${__data.fields.node}"),
)


def dashboard_links() -> list[g.DashboardLink]:
    """Link every isolator dashboard to the others, keeping the variables and time range."""
    return [
        g.DashboardLink(
            title="Isolator dashboards",
            type="dashboards",
            tags=list(TAGS),
            asDropdown=True,
            includeVars=True,
            keepTime=True,
        )
    ]


@dataclass(frozen=True)
class Size:
    """A panel's width and height in Grafana grid units (24 columns wide)."""

    w: int
    h: int


class Layout:
    """Places panels left to right in rows of 24 grid columns, wrapping when a row is full."""

    def __init__(self) -> None:
        self._x = 0
        self._y = 0
        self._row_height = 0

    def place(self, size: Size) -> g.GridPos:
        if self._x + size.w > GRID_WIDTH:
            self.new_row()
        position = g.GridPos(h=size.h, w=size.w, x=self._x, y=self._y)
        self._x += size.w
        self._row_height = max(self._row_height, size.h)
        return position

    def new_row(self) -> None:
        self._x = 0
        self._y += self._row_height
        self._row_height = 0


def _field_defaults(
    unit: str,
    mappings: Sequence[dict[str, Any]] = (),
    links: Sequence[g.DashboardLink] = (),
) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit}
    if mappings:
        defaults["mappings"] = list(mappings)
    if links:
        defaults["links"] = [link.to_json_data() for link in links]
    return defaults


def timeseries(
    layout: Layout,
    size: Size,
    title: str,
    description: str,
    targets: list[g.Target],
    unit: str,
    *,
    stacked: bool = False,
    links: Sequence[g.DashboardLink] = (),
) -> g.TimeSeries:
    """Build a time-series panel."""
    return g.TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets,
        unit=unit,
        gridPos=layout.place(size),
        thresholds=GREEN_ONLY,
        fillOpacity=30 if stacked else 10,
        stacking={"mode": "normal", "group": "A"} if stacked else {"mode": "none"},
        legendDisplayMode="table",
        legendPlacement="right" if size.w >= 16 else "bottom",
        legendCalcs=["lastNotNull", "max"],
        tooltipMode="multi",
        extraJson={"fieldConfig": {"defaults": _field_defaults(unit, links=links)}}
        if links
        else None,
    )


def stat(
    layout: Layout,
    size: Size,
    title: str,
    description: str,
    targets: list[g.Target],
    unit: str,
    *,
    steps: list[g.Threshold] = GREEN_ONLY,
    mappings: Sequence[dict[str, Any]] = (),
    text_mode: str = "auto",
) -> g.Stat:
    """Build a stat panel showing the latest value, coloured by thresholds or mappings."""
    return g.Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets,
        format=unit,
        gridPos=layout.place(size),
        thresholds=steps,
        mappings=list(mappings),
        reduceCalc="lastNotNull",
        graphMode="none",
        colorMode="background",
        textMode=text_mode,
        noValue="no data",
        extraJson={"fieldConfig": {"defaults": {"color": {"mode": "thresholds"}}}},
    )


def table(
    layout: Layout,
    size: Size,
    title: str,
    description: str,
    targets: list[g.Target],
    unit: str,
    *,
    transformations: list[dict[str, Any]],
    links: Sequence[g.DashboardLink] = (),
    overrides: list[dict[str, Any]] | None = None,
    sort_by: str | None = None,
) -> g.Table:
    """Build a table of instant query results, one row per series."""
    return g.Table(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets,
        unit=unit,
        gridPos=layout.place(size),
        thresholds=GREEN_ONLY,
        transformations=transformations,
        overrides=overrides or [],
        filterable=True,
        sortBy=[g.TableSortByField(displayName=sort_by, desc=True)] if sort_by else [],
        extraJson={"fieldConfig": {"defaults": _field_defaults(unit, links=links)}},
    )


def state_timeline(
    layout: Layout,
    size: Size,
    title: str,
    description: str,
    targets: list[g.Target],
    mappings: Sequence[dict[str, Any]],
    *,
    links: Sequence[g.DashboardLink] = (),
) -> g.StateTimeline:
    """Build a state timeline: one row per series, coloured by the mapped state."""
    return g.StateTimeline(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets,
        gridPos=layout.place(size),
        thresholds=GREEN_ONLY,
        mappings=list(mappings),
        colorMode="thresholds",
        showValue="never",
        extraJson={
            "fieldConfig": {"defaults": _field_defaults("none", mappings=mappings, links=links)}
        },
    )


def hide_columns(*names: str, rename: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Build an ``organize`` transformation that hides and renames table columns."""
    return {
        "id": "organize",
        "options": {
            "excludeByName": dict.fromkeys(names, True),
            "renameByName": dict(rename or {}),
        },
    }


MERGE = {"id": "merge", "options": {}}


def dashboard(
    title: str,
    uid: str,
    description: str,
    variables: list[g.Template],
    panels: list[g.Panel],
) -> g.Dashboard:
    """Build a dashboard with the shared tags, links, refresh and time range."""
    return g.Dashboard(
        title=title,
        uid=uid,
        description=description,
        tags=list(TAGS),
        timezone="utc",
        refresh="30s",
        time=g.Time("now-3h", "now"),
        schemaVersion=SCHEMA_VERSION,
        graphTooltip=g.GRAPH_TOOLTIP_MODE_SHARED_CROSSHAIR,
        editable=False,
        links=dashboard_links(),
        templating=g.Templating(variables),
        panels=panels,
    ).auto_panel_ids()
