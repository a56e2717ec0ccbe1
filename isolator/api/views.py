"""JSON views of the controller's state for the read endpoints."""

from __future__ import annotations

from typing import Any

from isolator.clock import Clock
from isolator.engine.loop import Controller
from isolator.model import SiteSample


def _ago(since: float | None, now: float) -> float | None:
    return None if since is None else round(now - since, 3)


def _sample(sample: SiteSample | None) -> dict[str, float] | None:
    if sample is None:
        return None
    return {"value": sample.value, "age_s": round(sample.age_s, 3)}


def _contributions(controller: Controller, name: str) -> dict[str, float] | None:
    score = controller.grey_scores.get(name)
    if score is None:
        return None
    return {k: round(v, 4) for k, v in score.contributions.items()}


def node_view(controller: Controller, name: str, clock: Clock) -> dict[str, Any]:
    """Return one node's verdict, with the evidence behind it."""
    evidence = controller.store.nodes[name]
    now = clock.monotonic()
    assessment = controller.state.assessment
    verdict = assessment.nodes.get(name) if assessment else None
    isolation = controller.isolations.get(name)
    return {
        "node": name,
        "region": evidence.region,
        "verdict": verdict.verdict.value if verdict else "unknown",
        "reason": verdict.reason if verdict else "no control-loop pass yet",
        "isolated": isolation is not None,
        # The safety checks that hold this node's cut in the latest pass.
        "holds": [d.reason for d in controller.state.holds if d.node == name],
        "evidence": {
            "heartbeat_age_s": _ago(evidence.last_heartbeat_at, now),
            "heartbeat_seq": evidence.heartbeat_seq,
            "heartbeats": evidence.heartbeat_count,
            "clock_skew_s": evidence.clock_skew_s,
            "probe_ok_age_s": _ago(evidence.last_probe_ok_at, now),
            "probe_failures": evidence.probe_failures,
            "site_up": _sample(evidence.site_up),
            "firing_alerts": sorted(evidence.firing_alerts),
            "component_failures": dict(sorted(evidence.component_failures.items())),
        },
        "component": verdict.component if verdict else None,
        "grey_score": verdict.grey_score if verdict else None,
        "grey_contributions": _contributions(controller, name),
    }


def region_view(controller: Controller, region: str) -> dict[str, Any]:
    """Return one region's verdict with its node counts and federation path."""
    evidence = controller.store.regions[region]
    assessment = controller.state.assessment
    verdict = assessment.regions.get(region) if assessment else None
    return {
        "region": region,
        "verdict": verdict.verdict.value if verdict else "unknown",
        "reason": verdict.reason if verdict else "no control-loop pass yet",
        "nodes": verdict.nodes if verdict else None,
        "silent": verdict.silent if verdict else None,
        "failed": verdict.failed if verdict else None,
        "federation_up": _sample(evidence.federation_up),
        "isolated": sorted(n for n, iso in controller.isolations.items() if iso.region == region),
        "holds": [d.reason for d in controller.state.holds if d.region == region],
    }


def status_view(controller: Controller) -> dict[str, Any]:
    """Return the global verdict and a summary of the estate."""
    assessment = controller.state.assessment
    return {
        "verdict": assessment.verdict.value if assessment else "unknown",
        "reason": assessment.reason if assessment else "no control-loop pass yet",
        "passes": controller.state.passes,
        "dry_run": controller.settings.dry_run,
        "regions": {r: v.verdict.value for r, v in assessment.regions.items()}
        if assessment
        else {},
        "isolations": sorted(controller.isolations),
    }
