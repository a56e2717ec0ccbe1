"""The grey-failure model: train a gradient-boosted tree ensemble, save it as JSON, load, score.

The model file contains metadata and the trees' numbers (split feature, threshold, children,
node value), never a pickle. Loading it needs numpy alone, so a newer scikit-learn cannot break
it. Scoring walks every tree for every node at once with numpy and reproduces
``GradientBoostingClassifier.predict_proba`` of the estimator it was exported from.

A score is evidence only: the caller adds it to its suspicion of a node and never cuts a node on
a score alone.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from isolator.learning.features import (
    FEATURE_NAMES,
    FloatArray,
    IntArray,
    NodeMeasurements,
    feature_matrix,
)
from isolator.learning.simulate import LabelledNode, NodeKind

logger = logging.getLogger(__name__)

FORMAT = "isolator.grey-failure/1"
# The committed model file. It sits in the repository next to the package, so only a checkout
# or an editable install finds it at this path.
DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[2] / "models" / "grey-failure-v1.json"


class ModelFileError(ValueError):
    """A model file that is unreadable, malformed, or built for other features."""


@dataclass(frozen=True, slots=True)
class GreyScore:
    """The grey-failure score of one node, with the share of each feature in it.

    ``contributions`` are in log-odds: their sum plus the model's ``base_log_odds`` is the
    logit of ``score``. A positive value pushed the score up.
    """

    node: str
    score: float  # 0..1 probability of a grey failure
    contributions: dict[str, float]


@dataclass(frozen=True, slots=True)
class Tree:
    """One regression tree as lists indexed by node id; -1 marks a leaf's missing parts.

    A row goes left when ``feature_value <= threshold``. ``value`` is the node's log-odds output
    with the learning rate applied: at a leaf the tree's prediction, at a split the
    sample-weighted mean of the leaves below it.
    """

    feature: list[int]
    threshold: list[float | None]
    left: list[int]
    right: list[int]
    value: list[float]


class GreyFailureModel:
    """A loaded grey-failure model. ``score`` is CPU-bound and keeps no state between calls."""

    def __init__(
        self, trees: Sequence[Tree], base_log_odds: float, metadata: Mapping[str, Any]
    ) -> None:
        for index, tree in enumerate(trees):
            _validate_tree(tree, index)
        if not trees or not math.isfinite(base_log_odds):
            raise ModelFileError("a model needs at least one tree and a finite base_log_odds")
        self.trees = tuple(trees)
        self.base_log_odds = base_log_odds
        self.metadata = dict(metadata)
        self._flat = _FlatTrees.of(self.trees)

    @classmethod
    def load(cls, path: Path) -> GreyFailureModel:
        """Load a model file written by ``save``.

        Raises ModelFileError when the file is unreadable or malformed, or when its feature list
        differs from ``FEATURE_NAMES``. A model with other features was trained on other
        columns: rebuild it with ``python -m isolator.learning train``.
        """
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            model = _from_document(document)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise ModelFileError(f"cannot load the grey-failure model {path}: {err}") from err
        logger.info(
            "grey-failure model loaded",
            extra={
                "path": str(path),
                "trees": len(model.trees),
                "sklearn_version": model.metadata.get("sklearn_version"),
            },
        )
        return model

    def save(self, path: Path) -> None:
        """Write the model as JSON: metadata first, then one tree per line."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_to_json(self), encoding="utf-8")

    def score(self, measurements: Sequence[NodeMeasurements]) -> list[GreyScore]:
        """Score every node against the other nodes of its region, in the order given.

        Peers are the nodes of the same region within this call, so pass a region's nodes
        together. A node alone in its region gets neutral peer features.
        """
        if not measurements:
            return []
        contributions = self.contributions(feature_matrix(measurements))
        probabilities = _sigmoid(self.base_log_odds + contributions.sum(axis=1))
        return [
            GreyScore(m.node, p, dict(zip(FEATURE_NAMES, row, strict=True)))
            for m, p, row in zip(
                measurements, probabilities.tolist(), contributions.tolist(), strict=True
            )
        ]

    def probabilities(self, features: FloatArray) -> FloatArray:
        """Return the grey-failure probability of each feature row."""
        return _sigmoid(self.base_log_odds + self.contributions(features).sum(axis=1))

    def contributions(self, features: FloatArray) -> FloatArray:
        """Split each row's log-odds, less ``base_log_odds``, into one share per feature.

        Every split on a row's path through a tree adds the change of ``value`` from the split
        node to the child taken to the split's feature (Saabas's path attribution). Features
        must be finite. They are cast to float32 first, as scikit-learn's trees do, so that
        every comparison with a threshold goes the same way as in the exported estimator.
        """
        trees = self._flat
        count, width = features.shape
        if width != len(FEATURE_NAMES):
            raise ValueError(f"expected {len(FEATURE_NAMES)} feature columns, got {width}")
        x = features.astype(np.float32).astype(np.float64).ravel()
        cell_of_row = (np.arange(count, dtype=np.int64) * width)[np.newaxis, :]
        node = np.repeat(trees.roots[:, np.newaxis], count, axis=1)
        node_value = trees.value.take(node)
        totals = np.zeros(count * width)
        for _ in range(trees.depth):
            cells = cell_of_row + trees.feature.take(node)
            go_right = x.take(cells) > trees.threshold.take(node)
            node = trees.first_child.take(node) + go_right
            child_value = trees.value.take(node)
            change = child_value - node_value
            totals += np.bincount(cells.ravel(), weights=change.ravel(), minlength=count * width)
            node_value = child_value
        return totals.reshape(count, width)


@dataclass(frozen=True, slots=True)
class _FlatTrees:
    """Every node of every tree in flat arrays indexed by a global node id, for numpy walks.

    Nodes are numbered breadth-first, so a split's right child directly follows its left child
    at ``first_child``. A leaf's ``first_child`` is itself and its threshold +inf, so a walk
    that reached a leaf stays there and adds nothing.
    """

    roots: IntArray
    feature: IntArray
    threshold: FloatArray
    first_child: IntArray
    value: FloatArray
    depth: int

    @classmethod
    def of(cls, trees: Sequence[Tree]) -> _FlatTrees:
        roots: list[int] = []
        feature: list[int] = []
        threshold: list[float | None] = []
        first_child: list[int] = []
        value: list[float] = []
        for tree in trees:
            offset = len(value)
            roots.append(offset)
            order = _breadth_first(tree)
            new_id = {old: offset + new for new, old in enumerate(order)}
            for old in order:
                split = tree.left[old] >= 0
                feature.append(tree.feature[old] if split else 0)
                threshold.append(tree.threshold[old] if split else math.inf)
                first_child.append(new_id[tree.left[old]] if split else new_id[old])
                value.append(tree.value[old])
        return cls(
            roots=np.array(roots, dtype=np.int64),
            feature=np.array(feature, dtype=np.int64),
            threshold=np.array(threshold, dtype=np.float64),
            first_child=np.array(first_child, dtype=np.int64),
            value=np.array(value, dtype=np.float64),
            depth=max(_depth(t) for t in trees),
        )


def _breadth_first(tree: Tree) -> list[int]:
    """Return the node ids reachable from the root in breadth-first order, left child first."""
    order = [0]
    for node in order:  # the list grows while it is walked
        if tree.left[node] >= 0:
            order += [tree.left[node], tree.right[node]]
    return order


def _depth(tree: Tree) -> int:
    levels = [0] * len(tree.left)
    for node, (left, right) in enumerate(zip(tree.left, tree.right, strict=True)):
        if left >= 0:
            levels[left] = levels[right] = levels[node] + 1
    return max(levels)


def _sigmoid(log_odds: FloatArray) -> FloatArray:
    # The tanh form equals 1 / (1 + exp(-x)) but cannot overflow for large negative log-odds.
    result: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * log_odds))
    return result


def _validate_tree(tree: Tree, index: int) -> None:
    """Raise ModelFileError unless every walk through the tree ends at a leaf.

    Children must have higher ids than their parent, which rules out cycles.
    """
    size = len(tree.left)
    lengths = {len(tree.feature), len(tree.threshold), len(tree.right), len(tree.value)}
    if size == 0 or lengths != {size}:
        raise ModelFileError(f"tree {index}: node lists are empty or differ in length")
    for node in range(size):
        left, right, threshold = tree.left[node], tree.right[node], tree.threshold[node]
        if not math.isfinite(tree.value[node]):
            raise ModelFileError(f"tree {index}, node {node}: value is not finite")
        if left < 0 and right < 0:
            continue
        if not (node < left < size and node < right < size):
            raise ModelFileError(f"tree {index}, node {node}: invalid children {left}, {right}")
        if not 0 <= tree.feature[node] < len(FEATURE_NAMES):
            raise ModelFileError(f"tree {index}, node {node}: invalid feature {tree.feature[node]}")
        if threshold is None or not math.isfinite(threshold):
            raise ModelFileError(f"tree {index}, node {node}: split without a finite threshold")


def _from_document(document: Any) -> GreyFailureModel:
    if not isinstance(document, dict):
        raise ModelFileError("expected a JSON object")
    if document.get("format") != FORMAT:
        raise ModelFileError(f"unsupported format {document.get('format')!r}, expected {FORMAT}")
    features = document.get("features")
    if features != list(FEATURE_NAMES):
        raise ModelFileError(
            f"the model was trained on the features {features}, but this version computes "
            f"{list(FEATURE_NAMES)}; retrain it with `python -m isolator.learning train`"
        )
    trees = [
        Tree(
            feature=[int(f) for f in t["feature"]],
            threshold=[None if v is None else float(v) for v in t["threshold"]],
            left=[int(c) for c in t["left"]],
            right=[int(c) for c in t["right"]],
            value=[float(v) for v in t["value"]],
        )
        for t in document["trees"]
    ]
    metadata = {k: v for k, v in document.items() if k not in ("trees", "base_log_odds")}
    return GreyFailureModel(trees, float(document["base_log_odds"]), metadata)


def _to_json(model: GreyFailureModel) -> str:
    # One tree per line keeps the file small and its diffs readable; Python's float repr
    # round-trips every threshold exactly.
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in model.metadata.items()]
    lines.append(f'  "base_log_odds": {json.dumps(model.base_log_odds)}')
    trees = [
        "    "
        + json.dumps(
            {
                "feature": t.feature,
                "threshold": t.threshold,
                "left": t.left,
                "right": t.right,
                "value": t.value,
            },
            separators=(",", ":"),
        )
        for t in model.trees
    ]
    lines.append('  "trees": [\n' + ",\n".join(trees) + "\n  ]")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def export_gradient_boosting(estimator: Any, metadata: Mapping[str, Any]) -> GreyFailureModel:
    """Turn a fitted binary scikit-learn ``GradientBoostingClassifier`` into a model.

    ``metadata`` is stored in the model file as given, next to the feature list and format.
    """
    learning_rate = float(estimator.learning_rate)
    fitted = list(estimator.estimators_[:, 0])
    trees = [_export_tree(t.tree_, learning_rate) for t in fitted]
    # The init estimator's log-odds: the decision function less what the trees add to it.
    zeros = np.zeros((1, estimator.n_features_in_))
    init_log_odds = float(estimator.decision_function(zeros)[0]) - learning_rate * sum(
        float(t.predict(zeros)[0]) for t in fitted
    )
    base = init_log_odds + sum(t.value[0] for t in trees)
    header = {"format": FORMAT, "features": list(FEATURE_NAMES), **metadata}
    return GreyFailureModel(trees, base, {**header, "init_log_odds": init_log_odds})


def _export_tree(tree: Any, learning_rate: float) -> Tree:
    """Copy one fitted scikit-learn tree, with expected values filled in at every split."""
    left = [int(i) for i in tree.children_left]
    right = [int(i) for i in tree.children_right]
    weight = [float(w) for w in tree.weighted_n_node_samples]
    value = [learning_rate * float(v) for v in tree.value[:, 0, 0]]
    # Children always have higher ids than their parent, so a reverse pass reaches them first.
    for node in reversed(range(len(left))):
        if left[node] >= 0:
            a, b = left[node], right[node]
            value[node] = (weight[a] * value[a] + weight[b] * value[b]) / (weight[a] + weight[b])
    splits = [child >= 0 for child in left]
    return Tree(
        feature=[int(f) if s else -1 for f, s in zip(tree.feature, splits, strict=True)],
        threshold=[float(t) if s else None for t, s in zip(tree.threshold, splits, strict=True)],
        left=left,
        right=right,
        value=value,
    )


# Training and evaluation. scikit-learn is imported inside these functions only, so the control
# loop, which only loads and scores, never imports it.

# Hyperparameters of the committed model. docs/MODEL.md compares them with other estimators.
GRADIENT_BOOSTING_PARAMS: dict[str, Any] = {
    "n_estimators": 200,
    "learning_rate": 0.1,
    "max_depth": 3,
    "min_samples_leaf": 10,
    "subsample": 1.0,
}
TEST_SHARE = 0.25  # share of the corpus's regions held out for evaluation
DECISION_THRESHOLD = 0.5  # a node counts as flagged by the model at or above this score
CV_FOLDS = 4
BOOTSTRAP_RESAMPLES = 2000


def split_regions(rows: Sequence[LabelledNode], seed: int) -> npt.NDArray[np.bool_]:
    """Return a mask of the rows held out for testing: every node of ``TEST_SHARE`` of regions.

    Splitting by region, never by node, keeps a node's peers on the same side of the split.
    """
    regions = sorted({r.measurements.region for r in rows})
    rng = np.random.default_rng([seed, 1])
    held_out = set(rng.permutation(regions)[: round(len(regions) * TEST_SHARE)].tolist())
    return np.array([r.measurements.region in held_out for r in rows])


def corpus_arrays(rows: Sequence[LabelledNode]) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Return the feature matrix and the 0/1 grey labels of the corpus rows."""
    features = feature_matrix([r.measurements for r in rows])
    labels = np.array([int(r.grey) for r in rows], dtype=np.int64)
    return features, labels


def train(rows: Sequence[LabelledNode], seed: int, corpus: Mapping[str, Any]) -> GreyFailureModel:
    """Fit gradient boosting on the training regions of the corpus and export it.

    ``corpus`` describes the corpus file (path, digest, rows) for the model's metadata.
    """
    import sklearn
    from sklearn.ensemble import GradientBoostingClassifier

    features, labels = corpus_arrays(rows)
    train_rows = ~split_regions(rows, seed)
    estimator = GradientBoostingClassifier(**GRADIENT_BOOSTING_PARAMS, random_state=seed)
    estimator.fit(features[train_rows], labels[train_rows])
    metadata = {
        "estimator": "sklearn.ensemble.GradientBoostingClassifier",
        "params": GRADIENT_BOOSTING_PARAMS,
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
        "seed": seed,
        "corpus": dict(corpus),
        "training_rows": int(train_rows.sum()),
        "test_share": TEST_SHARE,
    }
    return export_gradient_boosting(estimator, metadata)


@dataclass(frozen=True, slots=True)
class Confusion:
    """A confusion matrix of flagged against grey nodes."""

    tn: int
    fp: int
    fn: int
    tp: int

    @classmethod
    def of(cls, labels: npt.NDArray[np.int64], flagged: npt.NDArray[np.bool_]) -> Confusion:
        grey = labels == 1
        return cls(
            tn=int(np.sum(~grey & ~flagged)),
            fp=int(np.sum(~grey & flagged)),
            fn=int(np.sum(grey & ~flagged)),
            tp=int(np.sum(grey & flagged)),
        )

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        return float(_f1(self.tp, self.fp, self.fn))


def _f1(tp: Any, fp: Any, fn: Any) -> Any:
    """Return F1 from counts; works element-wise on arrays, and an empty denominator gives 0."""
    denominator = np.asarray(2 * tp + fp + fn, dtype=np.float64)
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator), where=denominator > 0)


# Signals of the two families of fixed-threshold rules. A rule flags a node when any signal
# exceeds its threshold. "absolute" reads the measurements as they arrive. "peer_relative" reads
# the same features as the model, so it can compare a node with its region's median.
RULE_SIGNALS: dict[str, tuple[str, ...]] = {
    "absolute": (
        "probe_rtt_s",
        "probe_failure_ratio",
        "heartbeat_jitter_s",
        "ingress_error_ratio",
        "component_restarts",
    ),
    "peer_relative": (
        "rtt_log_ratio",
        "jitter_log_ratio",
        "probe_failure_excess",
        "ingress_error_excess",
        "restarts_excess",
    ),
}


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    """A fixed-threshold rule: flag a node when any signal is above its threshold.

    A threshold of +inf leaves its signal unused.
    """

    family: str
    thresholds: dict[str, float]

    def flags(self, signals: FloatArray) -> npt.NDArray[np.bool_]:
        limits = np.array([self.thresholds[s] for s in RULE_SIGNALS[self.family]])
        with np.errstate(invalid="ignore"):
            flagged: npt.NDArray[np.bool_] = np.any(signals > limits, axis=1)
        return flagged  # NaN compares False, so an unknown signal never flags


def rule_signals(rows: Sequence[LabelledNode], features: FloatArray, family: str) -> FloatArray:
    """Return the signals of a rule family, one column per name in ``RULE_SIGNALS``."""
    if family == "peer_relative":
        return features[:, [FEATURE_NAMES.index(s) for s in RULE_SIGNALS[family]]]

    def value(m: NodeMeasurements, name: str) -> float:
        raw = getattr(m, name)
        return np.nan if raw is None else float(raw)

    return np.array(
        [[value(r.measurements, s) for s in RULE_SIGNALS[family]] for r in rows], dtype=np.float64
    )


def tune_rule(family: str, signals: FloatArray, labels: npt.NDArray[np.int64]) -> ThresholdRule:
    """Pick the thresholds that maximise F1 on the given rows by coordinate ascent.

    Each round tries, for one signal at a time, every candidate threshold (quantiles of the
    signal above its median, and +inf) with the other thresholds fixed. It stops when a round
    changes nothing, or after ten rounds.
    """
    names = RULE_SIGNALS[family]
    limits = np.full(len(names), np.inf)
    candidates = [_threshold_candidates(signals[:, j]) for j in range(len(names))]
    grey = labels == 1
    with np.errstate(invalid="ignore"):
        above = [signals[:, [j]] > candidates[j][np.newaxis, :] for j in range(len(names))]
    for _ in range(10):
        changed = False
        for j in range(len(names)):
            with np.errstate(invalid="ignore"):
                others = np.any(np.delete(signals, j, axis=1) > np.delete(limits, j), axis=1)
            flagged = others[:, np.newaxis] | above[j]
            tp = (flagged & grey[:, np.newaxis]).sum(axis=0)
            fp = flagged.sum(axis=0) - tp
            fn = grey.sum() - tp
            best = candidates[j][int(np.argmax(_f1(tp, fp, fn)))]
            changed |= bool(best != limits[j])
            limits[j] = best
        if not changed:
            break
    # A threshold at or above every value seen flags nothing, so it is shown as unused.
    with np.errstate(invalid="ignore"):
        idle = ~np.any(signals > limits, axis=0)
    limits[idle] = np.inf
    return ThresholdRule(family, {n: float(t) for n, t in zip(names, limits, strict=True)})


def _threshold_candidates(values: FloatArray) -> FloatArray:
    known = values[~np.isnan(values)]
    quantiles = np.quantile(known, np.linspace(0.5, 0.999, 80)) if known.size else np.array([])
    return np.concatenate((np.unique(quantiles), [np.inf]))


@dataclass(frozen=True, slots=True)
class KindRates:
    """How often the model and the best rule flag the held-out nodes of one kind."""

    kind: NodeKind
    nodes: int
    model_flagged: float  # share, 0..1
    rule_flagged: float
    model_mean_score: float


@dataclass(frozen=True, slots=True)
class CandidateScore:
    """Cross-validated quality of one estimator on the training regions."""

    name: str
    average_precision: float
    f1: float


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The model against the best fixed-threshold rule on the held-out regions."""

    seed: int
    train_rows: int
    train_regions: int
    train_grey: int
    test_rows: int
    test_regions: int
    test_grey: int
    model: Confusion
    model_average_precision: float
    rules: dict[str, tuple[ThresholdRule, float, Confusion]]  # family -> rule, training F1, test
    best_rule: str  # the family with the higher training F1
    f1_gain: float  # model F1 minus best rule F1 on the held-out regions
    f1_gain_interval: tuple[float, float]  # 95 % region-bootstrap interval of f1_gain
    kinds: list[KindRates]
    candidates: list[CandidateScore]


def evaluate(rows: Sequence[LabelledNode], model: GreyFailureModel, seed: int) -> Evaluation:
    """Score the held-out regions with the model and with the best fixed-threshold rule.

    Rules are tuned on the training regions only, like the model, and the rule family with the
    higher training F1 is the one compared. The estimator comparison runs on the training
    regions only too, so the held-out regions take no part in any choice.
    """
    from sklearn.metrics import average_precision_score

    features, labels = corpus_arrays(rows)
    test = split_regions(rows, seed)
    train_rows = ~test
    scores = model.probabilities(features[test])
    flagged = scores >= DECISION_THRESHOLD

    rules: dict[str, tuple[ThresholdRule, float, Confusion]] = {}
    rule_flags: dict[str, npt.NDArray[np.bool_]] = {}
    for family in RULE_SIGNALS:
        signals = rule_signals(rows, features, family)
        rule = tune_rule(family, signals[train_rows], labels[train_rows])
        train_f1 = Confusion.of(labels[train_rows], rule.flags(signals[train_rows])).f1
        rule_flags[family] = rule.flags(signals[test])
        rules[family] = (rule, train_f1, Confusion.of(labels[test], rule_flags[family]))
    best = max(rules, key=lambda family: rules[family][1])

    regions = np.array([r.measurements.region for r in rows])
    gain, interval = _bootstrap_f1_gain(
        labels[test], flagged, rule_flags[best], regions[test], seed
    )
    kinds = np.array([r.kind for r in rows])[test]
    return Evaluation(
        seed=seed,
        train_rows=int(train_rows.sum()),
        train_regions=len(set(regions[train_rows].tolist())),
        train_grey=int(labels[train_rows].sum()),
        test_rows=int(test.sum()),
        test_regions=len(set(regions[test].tolist())),
        test_grey=int(labels[test].sum()),
        model=Confusion.of(labels[test], flagged),
        model_average_precision=float(average_precision_score(labels[test], scores)),
        rules=rules,
        best_rule=best,
        f1_gain=gain,
        f1_gain_interval=interval,
        kinds=[
            KindRates(
                kind=kind,
                nodes=int(np.sum(kinds == kind)),
                model_flagged=float(flagged[kinds == kind].mean()),
                rule_flagged=float(rule_flags[best][kinds == kind].mean()),
                model_mean_score=float(scores[kinds == kind].mean()),
            )
            for kind in NodeKind
            if np.any(kinds == kind)
        ],
        candidates=compare_estimators(
            features[train_rows], labels[train_rows], regions[train_rows], seed
        ),
    )


def _bootstrap_f1_gain(
    labels: npt.NDArray[np.int64],
    model_flags: npt.NDArray[np.bool_],
    rule_flags: npt.NDArray[np.bool_],
    regions: npt.NDArray[np.str_],
    seed: int,
) -> tuple[float, tuple[float, float]]:
    """Return the F1 gain of the model over the rule and its 95 % interval.

    The interval resamples whole regions with replacement, because nodes of one region share
    their conditions and are not independent.
    """
    _, region_index = np.unique(regions, return_inverse=True)
    size = int(region_index.max()) + 1
    grey = labels == 1

    def counts(flags: npt.NDArray[np.bool_]) -> tuple[FloatArray, FloatArray, FloatArray]:
        def per_region(mask: npt.NDArray[np.bool_]) -> FloatArray:
            sums: FloatArray = np.bincount(region_index, weights=mask, minlength=size).astype(float)
            return sums

        return per_region(flags & grey), per_region(flags & ~grey), per_region(~flags & grey)

    model_counts, rule_counts = counts(model_flags), counts(rule_flags)
    rng = np.random.default_rng([seed, 2])
    picks = rng.integers(0, size, size=(BOOTSTRAP_RESAMPLES, size))
    gains = _f1(*(c[picks].sum(axis=1) for c in model_counts)) - _f1(
        *(c[picks].sum(axis=1) for c in rule_counts)
    )
    point = float(_f1(*(c.sum() for c in model_counts)) - _f1(*(c.sum() for c in rule_counts)))
    low, high = np.quantile(gains, [0.025, 0.975])
    return point, (float(low), float(high))


def compare_estimators(
    features: FloatArray, labels: npt.NDArray[np.int64], regions: npt.NDArray[np.str_], seed: int
) -> list[CandidateScore]:
    """Cross-validate the candidate estimators with folds that keep each region whole.

    IsolationForest is fitted without labels and stands for the unsupervised option. Its F1
    uses the threshold that flags the training fold's share of grey nodes.
    """
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        IsolationForest,
        RandomForestClassifier,
    )
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    candidates: dict[str, Any] = {
        "gradient boosting (committed)": GradientBoostingClassifier(
            **GRADIENT_BOOSTING_PARAMS, random_state=seed
        ),
        "random forest, 200 trees": RandomForestClassifier(
            n_estimators=200, min_samples_leaf=2, random_state=seed, n_jobs=1
        ),
        "logistic regression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "isolation forest (unsupervised)": IsolationForest(n_estimators=200, random_state=seed),
    }
    results = []
    for name, estimator in candidates.items():
        scores = np.zeros(labels.size)
        flags = np.zeros(labels.size, dtype=bool)
        for fit_rows, test_rows in GroupKFold(n_splits=CV_FOLDS).split(features, labels, regions):
            estimator.fit(features[fit_rows], labels[fit_rows])
            if isinstance(estimator, IsolationForest):
                fitted = -estimator.score_samples(features[fit_rows])
                cut = np.quantile(fitted, 1 - labels[fit_rows].mean())
                scores[test_rows] = -estimator.score_samples(features[test_rows])
                flags[test_rows] = scores[test_rows] >= cut
            else:
                scores[test_rows] = estimator.predict_proba(features[test_rows])[:, 1]
                flags[test_rows] = scores[test_rows] >= DECISION_THRESHOLD
        results.append(
            CandidateScore(
                name,
                float(average_precision_score(labels, scores)),
                Confusion.of(labels, flags).f1,
            )
        )
    return results
