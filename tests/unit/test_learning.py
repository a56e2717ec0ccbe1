"""Grey-failure scoring: corpus, peer features, the exported model and the committed model file."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from isolator.learning import simulate
from isolator.learning.__main__ import DEFAULT_CORPUS_PATH
from isolator.learning.features import (
    FEATURE_NAMES,
    NodeMeasurements,
    feature_matrix,
    group_spreads,
    peer_medians,
)
from isolator.learning.model import (
    DEFAULT_MODEL_PATH,
    GRADIENT_BOOSTING_PARAMS,
    GreyFailureModel,
    ModelFileError,
    corpus_arrays,
    export_gradient_boosting,
    split_regions,
    train,
    tune_rule,
)

SMALL_CORPUS_SCENARIOS = 120


def node(
    name: str,
    region: str = "r1",
    rtt: float | None = 0.040,
    failures: float = 0.0,
    jitter: float | None = 0.004,
    ingress: float | None = 0.0,
    restarts: int = 0,
) -> NodeMeasurements:
    return NodeMeasurements(name, region, rtt, failures, jitter, ingress, restarts)


def region_of(
    count: int,
    region: str = "r1",
    *,
    rtt_scale: float = 1.0,
    rtt_delay_s: float = 0.0,
    jitter_scale: float = 1.0,
    failures: float = 0.0,
    ingress: float | None = 0.0,
    restarts: int = 0,
) -> list[NodeMeasurements]:
    """Nodes alike but for a little spread in RTT and jitter, as real peers are."""
    return [
        node(
            f"{region}-n{i:02d}",
            region,
            rtt=0.040 * (1 + 0.02 * (i % 5)) * rtt_scale + rtt_delay_s,
            failures=failures,
            jitter=0.004 * (1 + 0.05 * (i % 3)) * jitter_scale,
            ingress=ingress,
            restarts=restarts,
        )
        for i in range(count)
    ]


def column(rows: np.ndarray, name: str) -> np.ndarray:
    return rows[:, FEATURE_NAMES.index(name)]


@pytest.fixture(scope="module")
def small_corpus() -> list[simulate.LabelledNode]:
    return simulate.generate(seed=11, scenarios=SMALL_CORPUS_SCENARIOS)


@pytest.fixture(scope="module")
def committed() -> GreyFailureModel:
    return GreyFailureModel.load(DEFAULT_MODEL_PATH)


# Corpus


def test_simulator_same_seed_same_corpus() -> None:
    first = simulate.to_csv(simulate.generate(seed=3, scenarios=40))
    again = simulate.to_csv(simulate.generate(seed=3, scenarios=40))
    other = simulate.to_csv(simulate.generate(seed=4, scenarios=40))

    assert first == again
    assert first != other


def test_committed_corpus_regenerates_from_seed(committed: GreyFailureModel) -> None:
    corpus = committed.metadata["corpus"]
    rows = simulate.generate(committed.metadata["seed"], corpus["scenarios"])

    assert simulate.to_csv(rows) == DEFAULT_CORPUS_PATH.read_text(encoding="utf-8")
    assert len(rows) == corpus["rows"]


def test_committed_corpus_under_two_megabytes() -> None:
    assert DEFAULT_CORPUS_PATH.stat().st_size < 2_000_000


def test_corpus_csv_round_trip(tmp_path: Path, small_corpus: list[simulate.LabelledNode]) -> None:
    path = tmp_path / "corpus.csv"
    simulate.write_corpus(small_corpus, path)

    assert simulate.read_corpus(path) == small_corpus


def test_corpus_contains_every_kind(small_corpus: list[simulate.LabelledNode]) -> None:
    kinds = {row.kind for row in simulate.generate(seed=11, scenarios=400)}

    assert kinds == set(simulate.NodeKind)
    assert all(row.grey == row.kind.startswith("grey_") for row in small_corpus)


def test_corpus_row_contradicting_kind_rejected(tmp_path: Path) -> None:
    path = tmp_path / "corpus.csv"
    text = simulate.to_csv(simulate.generate(seed=3, scenarios=5))
    path.write_text(text.replace(",healthy,0,", ",healthy,1,", 1), encoding="utf-8")

    with pytest.raises(ValueError, match="contradicts kind healthy"):
        simulate.read_corpus(path)


def test_split_keeps_regions_whole(small_corpus: list[simulate.LabelledNode]) -> None:
    test = split_regions(small_corpus, seed=5)
    held_out = {r.measurements.region for r, t in zip(small_corpus, test, strict=True) if t}
    trained = {r.measurements.region for r, t in zip(small_corpus, test, strict=True) if not t}

    assert held_out.isdisjoint(trained)
    assert len(held_out) == round(SMALL_CORPUS_SCENARIOS * 0.25)


# Feature normalisation


def test_peer_median_leaves_node_out() -> None:
    rows = feature_matrix([node("a", rtt=0.010), node("b", rtt=0.010), node("c", rtt=0.040)])

    # Medians are taken of log2 values, so the middle of two peers is their geometric mean.
    assert column(rows, "rtt_log_ratio").tolist() == pytest.approx(
        [math.log2(0.010 / 0.020), math.log2(0.010 / 0.020), math.log2(0.040 / 0.010)]
    )


def test_two_node_region_compares_each_with_other() -> None:
    rows = feature_matrix([node("a", rtt=0.010, restarts=3), node("b", rtt=0.020)])

    assert column(rows, "rtt_log_ratio").tolist() == pytest.approx([-1.0, 1.0])
    assert column(rows, "restarts_excess").tolist() == [3.0, -3.0]
    assert column(rows, "peers_log").tolist() == pytest.approx([math.log(2)] * 2)


def test_single_node_region_gets_neutral_peer_features() -> None:
    rows = feature_matrix([node("alone", rtt=0.500, jitter=0.2, ingress=0.3, restarts=2)])

    for name in ("rtt_log_ratio", "rtt_robust_z", "jitter_log_ratio", "jitter_robust_z"):
        assert column(rows, name)[0] == 0.0, name
    assert column(rows, "peers_log")[0] == 0.0
    assert column(rows, "ingress_error_ratio")[0] == pytest.approx(0.3)
    assert column(rows, "restarts_log")[0] == pytest.approx(math.log1p(2))


def test_region_wide_slowness_leaves_peer_features_unchanged() -> None:
    normal = feature_matrix(region_of(12))
    slow = feature_matrix(region_of(12, rtt_scale=6, jitter_scale=3))

    for name in ("rtt_log_ratio", "rtt_robust_z", "jitter_log_ratio", "jitter_robust_z"):
        np.testing.assert_allclose(column(slow, name), column(normal, name), atol=1e-12)


@pytest.mark.parametrize(
    "value", [None, math.nan, math.inf, -math.inf], ids=["none", "nan", "inf", "-inf"]
)
def test_unknown_or_non_finite_rtt_is_unknown(value: float | None) -> None:
    rows = feature_matrix([node("a", rtt=value), node("b"), node("c", rtt=0.080)])

    assert column(rows, "rtt_unknown").tolist() == [1.0, 0.0, 0.0]
    assert column(rows, "rtt_log_ratio")[0] == 0.0
    assert column(rows, "rtt_log_ratio")[2] == pytest.approx(1.0)  # its only known peer is b
    assert np.all(np.isfinite(rows))


def test_unknown_ingress_flagged_and_neutral() -> None:
    rows = feature_matrix([node("a", ingress=None), node("b", ingress=0.1), node("c")])

    assert column(rows, "ingress_unknown").tolist() == [1.0, 0.0, 0.0]
    assert column(rows, "ingress_error_ratio")[0] == 0.0
    assert column(rows, "ingress_error_excess")[0] == 0.0
    assert column(rows, "ingress_error_excess")[1] == pytest.approx(0.1)


def test_identical_peers_use_spread_floor() -> None:
    rows = feature_matrix([node(f"n{i}") for i in range(5)] + [node("slow", rtt=0.080)])

    # The region's log2 RTTs have a MAD of 0, so the floor of 0.1 divides the log2 ratio of 1.
    assert column(rows, "rtt_robust_z")[-1] == pytest.approx(10.0)


def test_features_independent_of_input_order() -> None:
    nodes = region_of(7, "r1") + region_of(3, "r2", restarts=1) + [node("x", region="r3")]
    nodes[4] = node("grey", rtt=0.300, ingress=0.2)
    order = np.random.default_rng(1).permutation(len(nodes))

    shuffled = feature_matrix([nodes[i] for i in order])

    np.testing.assert_array_equal(shuffled, feature_matrix(nodes)[order])


@pytest.mark.parametrize("seed", range(5))
def test_peer_medians_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 6, size=60)
    values = np.round(rng.normal(size=60), 1)  # rounding creates ties
    values[rng.random(60) < 0.25] = np.nan

    result = peer_medians(values, groups)

    for i in range(values.size):
        same = (groups == groups[i]) & ~np.isnan(values)
        others = values[same & (np.arange(values.size) != i)]
        expected = np.median(others) if others.size else np.nan
        if np.isnan(values[i]):
            expected = np.median(values[same]) if same.any() else np.nan
        assert result[i] == pytest.approx(expected, nan_ok=True), i


def test_group_spreads_robust_to_one_outlier() -> None:
    values = np.array([1.0, 1.1, 0.9, 1.0, 50.0, 2.0, 2.0])
    groups = np.array([0, 0, 0, 0, 0, 1, 1])

    spreads = group_spreads(values, groups, floor=0.01)

    assert spreads[0] == pytest.approx(1.4826 * 0.1)
    assert spreads[1] == 0.01


# Export and training


@pytest.fixture(scope="module")
def fitted(small_corpus: list[simulate.LabelledNode]) -> tuple[Any, np.ndarray]:
    from sklearn.ensemble import GradientBoostingClassifier

    features, labels = corpus_arrays(small_corpus)
    estimator = GradientBoostingClassifier(**GRADIENT_BOOSTING_PARAMS, random_state=3)
    estimator.fit(features, labels)
    return estimator, features


def test_export_matches_sklearn_probabilities(fitted: tuple[Any, np.ndarray]) -> None:
    estimator, features = fitted
    model = export_gradient_boosting(estimator, {})

    expected = estimator.predict_proba(features)[:, 1]

    np.testing.assert_allclose(model.probabilities(features), expected, rtol=0, atol=1e-12)


def test_contributions_add_up_to_log_odds(fitted: tuple[Any, np.ndarray]) -> None:
    model = export_gradient_boosting(fitted[0], {})
    nodes = [*region_of(9), node("grey", rtt=0.4, jitter=0.05, ingress=0.2, restarts=3)]

    for scored in model.score(nodes):
        log_odds = model.base_log_odds + sum(scored.contributions.values())
        assert scored.score == pytest.approx(1 / (1 + math.exp(-log_odds)), abs=1e-12)
        assert list(scored.contributions) == list(FEATURE_NAMES)


def test_saved_model_scores_like_original(tmp_path: Path, fitted: tuple[Any, np.ndarray]) -> None:
    model = export_gradient_boosting(fitted[0], {"seed": 3})
    path = tmp_path / "model.json"
    model.save(path)

    loaded = GreyFailureModel.load(path)

    np.testing.assert_array_equal(loaded.probabilities(fitted[1]), model.probabilities(fitted[1]))
    assert loaded.metadata["seed"] == 3


def test_training_same_seed_same_model(
    tmp_path: Path, small_corpus: list[simulate.LabelledNode]
) -> None:
    first, again = tmp_path / "first.json", tmp_path / "again.json"
    train(small_corpus, seed=9, corpus={"sha256": "x"}).save(first)
    train(small_corpus, seed=9, corpus={"sha256": "x"}).save(again)

    assert first.read_bytes() == again.read_bytes()
    features, _ = corpus_arrays(small_corpus)
    np.testing.assert_array_equal(
        GreyFailureModel.load(first).probabilities(features),
        GreyFailureModel.load(again).probabilities(features),
    )


def test_rule_tuning_finds_separating_threshold() -> None:
    signals = np.array([[0.1], [0.2], [0.3], [0.9], [1.0], [np.nan]] * 3)
    labels = np.array([0, 0, 0, 1, 1, 0] * 3)

    rule = tune_rule("peer_relative", np.hstack([signals] * 5), labels)

    flagged = rule.flags(np.hstack([signals] * 5))
    assert flagged.tolist() == (labels == 1).tolist()


# The committed model


def test_committed_model_records_provenance(committed: GreyFailureModel) -> None:
    import sklearn

    assert committed.metadata["features"] == list(FEATURE_NAMES)
    assert committed.metadata["sklearn_version"] == sklearn.__version__
    assert committed.metadata["seed"] == simulate.DEFAULT_SEED
    assert len(committed.metadata["corpus"]["sha256"]) == 64


def test_committed_model_scores_grey_above_healthy(committed: GreyFailureModel) -> None:
    nodes = region_of(10)
    nodes[3] = node("grey", rtt=0.250, jitter=0.030, ingress=0.25, restarts=4)

    scores = {s.node: s.score for s in committed.score(nodes)}

    assert scores["grey"] > 0.9
    assert max(v for k, v in scores.items() if k != "grey") < 0.1


def test_committed_model_explains_slow_node(committed: GreyFailureModel) -> None:
    nodes = region_of(10)
    nodes[0] = node("slow", rtt=0.400)

    slow = committed.score(nodes)[0]

    assert slow.score > 0.5
    assert max(slow.contributions, key=lambda f: slow.contributions[f]).startswith("rtt_")


@pytest.mark.parametrize(
    "nodes",
    [
        pytest.param(
            region_of(10, rtt_scale=6, jitter_scale=3, ingress=0.05, restarts=1),
            id="region-wide-slowness",
        ),
        pytest.param(region_of(10, rtt_delay_s=0.2, jitter_scale=10, failures=0.1), id="weak-link"),
        pytest.param(region_of(1, rtt_scale=8, ingress=None), id="single-slow-node"),
        pytest.param(region_of(2, rtt_scale=3), id="two-slow-nodes"),
        pytest.param(
            [node(f"n{i}", rtt=None, failures=1.0, jitter=None, ingress=None) for i in range(8)],
            id="partitioned",
        ),
    ],
)
def test_committed_model_scores_whole_region_conditions_low(
    committed: GreyFailureModel, nodes: list[NodeMeasurements]
) -> None:
    assert max(s.score for s in committed.score(nodes)) < 0.1


def test_committed_model_scores_nothing_for_no_nodes(committed: GreyFailureModel) -> None:
    assert committed.score([]) == []


def _rewrite_committed(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    document = json.loads(DEFAULT_MODEL_PATH.read_text(encoding="utf-8"))
    change(document)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "features",
    [
        list(reversed(FEATURE_NAMES)),
        list(FEATURE_NAMES[:-1]),
        [*FEATURE_NAMES, "cpu_steal_ratio"],
    ],
    ids=["reordered", "one-missing", "one-extra"],
)
def test_model_with_other_features_rejected(tmp_path: Path, features: list[str]) -> None:
    path = _rewrite_committed(tmp_path, lambda d: d.update(features=features))

    with pytest.raises(ModelFileError, match="trained on the features"):
        GreyFailureModel.load(path)


def test_model_with_looping_tree_rejected(tmp_path: Path) -> None:
    def loop_back(document: dict[str, Any]) -> None:
        document["trees"][0]["left"][1] = 0

    with pytest.raises(ModelFileError, match="tree 0, node 1: invalid children"):
        GreyFailureModel.load(_rewrite_committed(tmp_path, loop_back))


def test_model_of_unknown_format_rejected(tmp_path: Path) -> None:
    path = _rewrite_committed(tmp_path, lambda d: d.update(format="other/2"))

    with pytest.raises(ModelFileError, match="unsupported format"):
        GreyFailureModel.load(path)


def test_missing_model_file_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="cannot load"):
        GreyFailureModel.load(tmp_path / "absent.json")


def test_scoring_ten_thousand_nodes(committed: GreyFailureModel) -> None:
    # Only correctness at scale here: the time it takes belongs to the benchmark.
    nodes = [n for r in range(250) for n in region_of(40, f"r{r:03d}")]
    nodes[17] = node("grey", region="r000", rtt=0.4, ingress=0.3)

    scores = committed.score(nodes)

    assert len(scores) == 10_000
    assert scores[17].score > 0.5
