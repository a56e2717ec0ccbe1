"""Grey-failure suspicion: the learned model's view of nodes that heartbeat but serve badly.

The model only ever adds suspicion. A healthy node that scores above the threshold becomes
suspect, which the decision step never cuts; every cut still needs the rules' evidence.
Scoring is CPU work, so it runs in an executor and never on the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
from collections.abc import Mapping
from concurrent.futures import Executor

from isolator.learning import GreyFailureModel, GreyScore, NodeMeasurements
from isolator.model import Assessment, NodeEvidence, NodeVerdict

MIN_GAPS_FOR_JITTER = 3
# Probe results a node needs before it is scored: fewer, right after start-up or an outage,
# say too little to compare it with its peers.
MIN_PROBES_FOR_SCORE = 10


def measure(evidence: NodeEvidence) -> NodeMeasurements:
    """Summarise a node's recent history into the model's measurements."""
    answered = [rtt for rtt in evidence.probe_rtts if rtt is not None]
    probes = len(evidence.probe_rtts)
    gaps = list(evidence.heartbeat_gaps)
    ingress = list(evidence.ingress_results)
    return NodeMeasurements(
        node=evidence.node,
        region=evidence.region,
        probe_rtt_s=statistics.median(answered) if answered else None,
        probe_failure_ratio=(probes - len(answered)) / probes if probes else 0.0,
        heartbeat_jitter_s=statistics.pstdev(gaps) if len(gaps) >= MIN_GAPS_FOR_JITTER else None,
        ingress_error_ratio=ingress.count(False) / len(ingress) if ingress else None,
        component_restarts=0,  # TODO: report restarts from the agent, then count them here.
    )


class GreyScorer:
    """Scores every node against its region's peers with a loaded model."""

    def __init__(self, model: GreyFailureModel, executor: Executor | None = None) -> None:
        self._model = model
        self._executor = executor

    async def score(self, nodes: Mapping[str, NodeEvidence]) -> dict[str, GreyScore]:
        """Return each node's score; the model runs in the executor."""
        rows = [
            measure(evidence)
            for evidence in nodes.values()
            if len(evidence.probe_rtts) >= MIN_PROBES_FOR_SCORE
        ]
        if not rows:
            return {}
        loop = asyncio.get_running_loop()
        scores = await loop.run_in_executor(self._executor, self._model.score, rows)
        return {score.node: score for score in scores}


def apply_grey_scores(
    assessment: Assessment, scores: Mapping[str, GreyScore], threshold: float
) -> Assessment:
    """Attach scores to the node verdicts and turn healthy nodes above ``threshold`` suspect."""
    nodes = {}
    for name, node in assessment.nodes.items():
        score = scores.get(name)
        if score is None:
            nodes[name] = node
            continue
        changes: dict[str, object] = {"grey_score": round(score.score, 4)}
        if node.verdict is NodeVerdict.HEALTHY and score.score >= threshold:
            top = max(score.contributions, key=lambda k: score.contributions[k], default="")
            changes["verdict"] = NodeVerdict.SUSPECT
            changes["reason"] = f"grey failure suspected: score {score.score:.2f}, mostly {top}"
        nodes[name] = dataclasses.replace(node, **changes)  # type: ignore[arg-type]
    return dataclasses.replace(assessment, nodes=nodes)
