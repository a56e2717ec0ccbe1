"""Grey-failure suspicion: the model adds suspicion and never causes a cut."""

from __future__ import annotations

from collections import deque

from isolator.engine.evidence import EvidenceStore
from isolator.engine.grey import GreyScorer, measure
from isolator.learning import DEFAULT_MODEL_PATH, GreyFailureModel, GreyScore
from isolator.model import EdgeNode, NodeEvidence, NodeVerdict, RegionVerdict
from tests.unit.harness import Harness


class FixedScores:
    """Scores chosen by the test; every other node scores 0."""

    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores

    async def score(self, nodes: dict[str, NodeEvidence]) -> dict[str, GreyScore]:
        return {
            name: GreyScore(name, self.scores.get(name, 0.0), {"rtt_log_ratio": 1.0})
            for name in nodes
        }


async def test_high_score_makes_healthy_node_suspect_without_cut() -> None:
    harness = await Harness.start(grey_scorer=FixedScores({"r1-n03": 0.97}))
    await harness.controller.score_grey()

    await harness.run_for(10.0)

    assessment = harness.controller.state.assessment
    assert assessment is not None
    assert assessment.nodes["r1-n03"].verdict is NodeVerdict.SUSPECT
    assert assessment.nodes["r1-n03"].grey_score == 0.97
    assert harness.cluster.cuts == []


async def test_many_grey_nodes_do_not_look_partitioned() -> None:
    scores = {f"r2-n{j:02d}": 0.9 for j in range(1, 9)}
    harness = await Harness.start(grey_scorer=FixedScores(scores))
    await harness.controller.score_grey()

    await harness.run_for(2.0)

    assert harness.region_verdict("r2") is RegionVerdict.NORMAL
    assert harness.cluster.cuts == []


async def test_score_below_threshold_keeps_verdict() -> None:
    harness = await Harness.start(grey_scorer=FixedScores({"r1-n03": 0.5}))
    await harness.controller.score_grey()

    await harness.run_for(1.0)

    assert harness.node_verdict("r1-n03") is NodeVerdict.HEALTHY


def test_measure_summarises_history() -> None:
    evidence = NodeEvidence(node="a", region="r1")
    evidence.probe_rtts = deque([0.01, None, 0.03, 0.02])
    evidence.heartbeat_gaps = deque([1.0, 1.0, 1.0])
    evidence.ingress_results = deque([True, False, True, True])

    row = measure(evidence)

    assert row.probe_rtt_s == 0.02
    assert row.probe_failure_ratio == 0.25
    assert row.heartbeat_jitter_s == 0.0
    assert row.ingress_error_ratio == 0.25


def test_measure_without_history_is_unknown() -> None:
    row = measure(NodeEvidence(node="a", region="r1"))

    assert row.probe_rtt_s is None
    assert row.heartbeat_jitter_s is None
    assert row.ingress_error_ratio is None


async def test_bundled_model_scores_slow_node_above_peers() -> None:
    scorer = GreyScorer(GreyFailureModel.load(DEFAULT_MODEL_PATH))
    nodes = {}
    for j in range(8):
        evidence = NodeEvidence(node=f"n{j}", region="r1")
        slow = j == 0
        evidence.probe_rtts = deque([0.4 if slow else 0.02] * 20)
        evidence.heartbeat_gaps = deque([1.0, 1.3, 0.7, 1.2] if slow else [1.0, 1.01, 0.99, 1.0])
        evidence.ingress_results = deque([False, True, False, True] if slow else [True] * 4)
        nodes[evidence.node] = evidence

    scores = await scorer.score(nodes)

    assert scores["n0"].score > 0.8
    assert max(scores[f"n{j}"].score for j in range(1, 8)) < 0.2


async def test_score_from_before_an_outage_dropped() -> None:
    harness = await Harness.start(grey_scorer=FixedScores({"r1-n03": 0.97}))
    await harness.controller.score_grey()
    harness.silent.add("r1-n03")
    await harness.run_for(5.0)

    harness.silent.clear()
    await harness.run_for(1.0)

    assert harness.node_verdict("r1-n03") is NodeVerdict.HEALTHY


def test_probe_outage_restarts_history() -> None:
    store = EvidenceStore(outage_gap_s=3.0)
    store.sync_inventory([EdgeNode("n1", "r1", "http://n1")])
    store.record_probe("n1", True, now=0.0, rtt_s=0.01)
    for second in range(1, 6):
        store.record_probe("n1", False, now=float(second))

    store.record_probe("n1", True, now=6.0, rtt_s=0.01)

    evidence = store.nodes["n1"]
    assert evidence.history_reset_at == 6.0
    assert list(evidence.probe_rtts) == [0.01]


def test_short_probe_gap_keeps_history() -> None:
    store = EvidenceStore(outage_gap_s=3.0)
    store.sync_inventory([EdgeNode("n1", "r1", "http://n1")])
    store.record_probe("n1", True, now=0.0, rtt_s=0.01)
    store.record_probe("n1", False, now=1.0)

    store.record_probe("n1", True, now=2.0, rtt_s=0.02)

    evidence = store.nodes["n1"]
    assert evidence.history_reset_at is None
    assert list(evidence.probe_rtts) == [0.01, None, 0.02]
