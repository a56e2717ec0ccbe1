"""Plain-text views of the API's responses for the on-call commands: tables and explanations."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# The rule behind each verdict and what it allows, as the README's "How it decides" states
# it. The API returns only the verdict and its reason.
NODE_RULES = {
    "healthy": "heartbeats arrive on time and no component fails its checks: nothing to do",
    "unreachable": (
        "silent to the cloud, but probes are answered or the edge Prometheus scrapes it up: "
        "the node serves, so it is never cut"
    ),
    "suspect": "silent to the cloud with no fresh in-site view: never cut automatically",
    "failed": (
        "confirmed down from inside the site (scraped down with a fresh sample, or a component "
        "failed its checks in a row): cut after the correlation window, within the region's "
        "cut budget, unless a safety check holds it"
    ),
    "unknown": "not yet seen both ways (heartbeat and probe): never cut automatically",
}
REGION_RULES = {
    "normal": "every node accounted for: failed nodes are cut within the region's budget",
    "degraded": "some nodes failed, the region is reachable: they are cut within its budget",
    "partitioned": (
        "most nodes silent without being confirmed dead: the link is probably down, so "
        "nothing in the region is cut"
    ),
    "monitoring_degraded": (
        "federation path down while heartbeats arrive: no node can be confirmed dead, so "
        "nothing in the region is cut"
    ),
    "unknown": "no control-loop pass yet: nothing is cut",
}
GLOBAL_RULES = {
    "normal": "regions fail independently: automatic cuts are allowed",
    "fail_safe": (
        "too many regions silent at once, probably a central fault: no automatic change "
        "anywhere (manual actions still work)"
    ),
    "unknown": "no control-loop pass yet: nothing is cut",
}


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Render rows as left-aligned columns under upper-case headers."""
    cells = [[_cell(value) for value in row] for row in rows]
    lines = [[header.upper() for header in headers], *cells]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g} s"


def _fields(pairs: Sequence[tuple[str, object]], indent: str = "") -> list[str]:
    width = max(len(name) for name, _ in pairs)
    return [f"{indent}{name.ljust(width)}  {_cell(value)}" for name, value in pairs]


def isolations_table(isolations: Sequence[Mapping[str, Any]]) -> str:
    """Render isolations: what, who, why and until when."""
    if not isolations:
        return "no isolations"
    rows = [
        (
            item["kind"],
            item["target"],
            item.get("region"),
            item.get("scope"),
            item.get("who"),
            item.get("reason"),
            _seconds(item.get("expires_in_s")),
            "dry run" if item.get("dry_run") else item.get("verified"),
        )
        for item in isolations
    ]
    headers = ("kind", "target", "region", "scope", "who", "reason", "expires in", "verified")
    return table(headers, rows)


def status_text(
    status: Mapping[str, Any],
    regions: Sequence[Mapping[str, Any]],
    isolations: Sequence[Mapping[str, Any]],
) -> str:
    """Render the global verdict, one row per region and the current isolations."""
    verdict = status["verdict"]
    header = _fields(
        [
            ("verdict", f"{verdict}: {status['reason']}"),
            ("passes", status.get("passes")),
            ("dry run", status.get("dry_run")),
        ]
    )
    if verdict == "fail_safe":
        header.append(f"fail-safe: {GLOBAL_RULES['fail_safe']}")
    rows = [
        (
            item["region"],
            item["verdict"],
            item.get("nodes"),
            item.get("silent"),
            item.get("failed"),
            len(item.get("isolated") or []),
            len(item.get("holds") or []),
            item.get("reason"),
        )
        for item in regions
    ]
    headers = ("region", "verdict", "nodes", "silent", "failed", "isolated", "holds", "reason")
    regions_text = table(headers, rows) if rows else "no regions"
    return "\n\n".join(["\n".join(header), regions_text, isolations_table(isolations)])


def _evidence_lines(evidence: Mapping[str, Any]) -> list[str]:
    site_up = evidence.get("site_up")
    site = None if site_up is None else f"{site_up['value']:g} (age {site_up['age_s']:g} s)"
    failures = evidence.get("component_failures") or {}
    pairs: list[tuple[str, object]] = [
        ("last heartbeat", _ago(evidence.get("heartbeat_age_s"))),
        ("heartbeat seq", evidence.get("heartbeat_seq")),
        ("heartbeats", evidence.get("heartbeats")),
        ("clock skew", _seconds(evidence.get("clock_skew_s"))),
        ("last probe answered", _ago(evidence.get("probe_ok_age_s"))),
        ("probe failures", evidence.get("probe_failures")),
        ("in-site up", site),
        ("firing alerts", ", ".join(evidence.get("firing_alerts") or []) or None),
        ("component failures", ", ".join(f"{k}={v}" for k, v in failures.items()) or None),
    ]
    return _fields(pairs, indent="  ")


def _ago(age_s: float | None) -> str:
    return "never" if age_s is None else f"{age_s:g} s ago"


def _safety_lines(
    status: Mapping[str, Any], region: Mapping[str, Any] | None, holds: Sequence[str]
) -> list[str]:
    verdict = status["verdict"]
    lines = [f"  global {verdict}: {GLOBAL_RULES.get(verdict, status['reason'])}"]
    if region is not None:
        name, value = region["region"], region["verdict"]
        rule = REGION_RULES.get(value, region.get("reason"))
        lines.append(f"  region {name} {value} ({region.get('reason')}): {rule}")
    lines += [f"  held: {reason}" for reason in holds] or ["  no cut held by a safety check"]
    return lines


def _audit_lines(records: Sequence[Mapping[str, Any]]) -> list[str]:
    if not records:
        return ["  no actions recorded"]
    return [
        f"  {r.get('action')} {r.get('kind')} {r.get('target')} by {r.get('who')}: "
        f"{r.get('result')} ({r.get('reason')})"
        for r in records
    ]


def node_text(
    node: Mapping[str, Any],
    status: Mapping[str, Any],
    region: Mapping[str, Any] | None,
    isolations: Sequence[Mapping[str, Any]],
    audit: Sequence[Mapping[str, Any]],
) -> str:
    """Explain one node: its verdict and the rule behind it, the evidence, the safety checks
    that apply and what was done to it."""
    verdict = node["verdict"]
    holds = node.get("holds") or []
    lines = [
        f"node {node['node']} in region {node['region']}",
        f"verdict: {verdict} ({node['reason']})",
        f"rule: {NODE_RULES.get(verdict, 'no rule known for this verdict')}",
    ]
    if node.get("component"):
        lines.append(f"failed component: {node['component']}")
    if node.get("grey_score") is not None:
        lines.append(f"grey-failure score: {node['grey_score']:g}")
    lines += ["evidence:", *_evidence_lines(node.get("evidence") or {})]
    lines += ["safety checks:", *_safety_lines(status, region, holds)]
    lines += ["isolations:", *_indent(isolations_table(isolations))]
    lines += ["recent actions:", *_audit_lines(audit)]
    return "\n".join(lines)


def region_text(
    region: Mapping[str, Any],
    status: Mapping[str, Any],
    nodes: Sequence[Mapping[str, Any]],
    isolations: Sequence[Mapping[str, Any]],
) -> str:
    """Explain one region: its verdict and rule, its nodes, the safety checks and isolations."""
    verdict = region["verdict"]
    federation = region.get("federation_up")
    path = "unknown" if federation is None else f"{federation['value']:g}"
    if federation is not None:
        path += f" (age {federation['age_s']:g} s)"
    lines = [
        f"region {region['region']}",
        f"verdict: {verdict} ({region['reason']})",
        f"rule: {REGION_RULES.get(verdict, 'no rule known for this verdict')}",
        *_fields(
            [
                ("nodes", region.get("nodes")),
                ("silent", region.get("silent")),
                ("failed", region.get("failed")),
                ("federation up", path),
            ]
        ),
        "safety checks:",
        *_safety_lines(status, region, region.get("holds") or []),
        "nodes:",
    ]
    rows = [(n["node"], n["verdict"], n.get("isolated"), n.get("reason")) for n in nodes]
    lines += _indent(table(("node", "verdict", "isolated", "reason"), rows))
    lines += ["isolations:", *_indent(isolations_table(isolations))]
    return "\n".join(lines)


def action_text(action: str, target: str, status: int, body: Mapping[str, Any]) -> str:
    """Render the response to a manual isolate or restore."""
    result = body.get("result")
    lines = [f"{action} {target}: {result} (HTTP {status})"]
    if body.get("detail"):
        lines.append(f"detail: {body['detail']}")
    if result == "unverified":
        lines.append("written but not yet confirmed by reading back; the control loop retries")
    isolation = body.get("isolation")
    if isolation:
        lines += ["isolation:", *_indent(isolations_table([isolation]))]
    return "\n".join(lines)


def _indent(text: str) -> list[str]:
    return ["  " + line for line in text.splitlines()]
