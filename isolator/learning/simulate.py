"""A seeded simulator of labelled edge regions, and the CSV corpus it writes.

Each scenario is one region measured over one window of ``PROBES_PER_WINDOW`` one-second probes.
The region kinds follow the faults of an edge estate: healthy sites, sites with grey nodes of
several kinds, nodes that failed outright, partitioned sites, weak WAN links (netem-style delay,
jitter and 10 % loss on every node, with no grey node) and region-wide slowness. Only grey nodes
are labelled positive. A failed or partitioned node is not grey: the fixed rules own it.

The numbers are invented to be plausible, not measured on a real estate, so a model trained here
shows what the features can separate, not how it will do in production.
"""

from __future__ import annotations

import csv
import enum
import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from isolator.learning.features import NodeMeasurements

DEFAULT_SEED = 20_260_501
DEFAULT_SCENARIOS = 1500
PROBES_PER_WINDOW = 30  # one probe per second over a 30 s window
INGRESS_CHECKS_PER_WINDOW = 30
# Share of nodes that run no ingress controller, so their agent reports no ingress check.
NO_INGRESS_SHARE = 0.08


class NodeKind(enum.StrEnum):
    """The true condition of a simulated node."""

    HEALTHY = "healthy"
    GREY_SLOW = "grey_slow"  # responds, but far slower than its peers
    GREY_INGRESS = "grey_ingress"  # its ingress path returns errors
    GREY_RESTARTS = "grey_restarts"  # components crash-loop
    GREY_JITTER = "grey_jitter"  # CPU starvation or a bad NIC: irregular heartbeats
    GREY_MIXED = "grey_mixed"  # mild degradation of every signal at once, none extreme
    FAILED = "failed"  # silent for the whole window
    PARTITIONED = "partitioned"  # healthy, but its region lost the cloud link
    WEAK_LINK = "weak_link"  # healthy, behind a slow and lossy WAN link
    REGION_SLOW = "region_slow"  # healthy, in a region that is slow as a whole

    @property
    def grey(self) -> bool:
        return self.value.startswith("grey_")


GREY_KINDS = tuple(kind for kind in NodeKind if kind.grey)


class Scenario(enum.StrEnum):
    """The condition of a simulated region as a whole."""

    HEALTHY = "healthy"
    GREY = "grey"  # one or more grey nodes in an otherwise healthy region
    FAILED = "failed"  # one or two failed nodes
    PARTITIONED = "partitioned"
    WEAK_LINK = "weak_link"
    WEAK_LINK_GREY = "weak_link_grey"  # a weak link and one grey node behind it
    REGION_SLOW = "region_slow"


# Probability of each scenario. Grey regions are over-represented compared with a real estate so
# that the corpus contains enough positives of every kind.
SCENARIO_WEIGHTS: dict[Scenario, float] = {
    Scenario.HEALTHY: 0.18,
    Scenario.GREY: 0.34,
    Scenario.FAILED: 0.10,
    Scenario.PARTITIONED: 0.06,
    Scenario.WEAK_LINK: 0.12,
    Scenario.WEAK_LINK_GREY: 0.06,
    Scenario.REGION_SLOW: 0.14,
}


# A grey region of at least this many nodes always gets a grey node. A smaller one gets one
# with probability size / _GREY_SHARE_SIZE and otherwise turns into the scenario below. The value
# is about the number of nodes per grey node in a grey region of 5-25 nodes.
_GREY_SHARE_SIZE = 8
_WITHOUT_GREY = {Scenario.GREY: Scenario.HEALTHY, Scenario.WEAK_LINK_GREY: Scenario.WEAK_LINK}


@dataclass(frozen=True, slots=True)
class LabelledNode:
    """One corpus row: a node's measurements with the truth behind them."""

    scenario: Scenario
    kind: NodeKind
    measurements: NodeMeasurements

    @property
    def grey(self) -> bool:
        return self.kind.grey


@dataclass(frozen=True, slots=True)
class _Region:
    """The shared state of one simulated site."""

    base_rtt_s: float
    base_jitter_s: float
    probe_loss: float
    ingress_error: float
    restart_rate: float  # expected component restarts per node per window


@dataclass(frozen=True, slots=True)
class _Condition:
    """The departure of one node's signals from its region's, before sampling noise."""

    rtt_factor: float = 1.0
    extra_rtt_s: float = 0.0
    jitter_factor: float = 1.0
    extra_jitter_s: float = 0.0
    extra_probe_loss: float = 0.0
    extra_ingress_error: float = 0.0
    extra_restart_rate: float = 0.0
    silent: bool = False
    silent_after: int | None = None  # probes that succeeded before the link went down


def generate(seed: int = DEFAULT_SEED, scenarios: int = DEFAULT_SCENARIOS) -> list[LabelledNode]:
    """Generate ``scenarios`` regions from one seeded random stream; the same seed, same rows.

    Values are rounded to four significant digits as they are drawn, so a corpus read back from
    its CSV equals the generated one exactly.
    """
    rng = np.random.default_rng(seed)
    kinds = list(SCENARIO_WEIGHTS)
    weights = np.array([SCENARIO_WEIGHTS[k] for k in kinds])
    rows: list[LabelledNode] = []
    for index in range(scenarios):
        scenario = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
        rows.extend(_simulate_region(rng, f"r{index:04d}", scenario))
    return rows


def _region_size(rng: np.random.Generator) -> int:
    """Draw a site size: mostly tens of nodes, with a tail of tiny sites of one to four."""
    draw = rng.random()
    if draw < 0.08:
        return 1
    if draw < 0.22:
        return int(rng.integers(2, 5))
    if draw < 0.80:
        return int(rng.integers(5, 26))
    return int(rng.integers(26, 51))


def _simulate_region(
    rng: np.random.Generator, region: str, scenario: Scenario
) -> list[LabelledNode]:
    size = _region_size(rng)
    # A grey node is as rare in a small region as in a large one. Without this step every grey
    # region of one node would be all grey. The model would then learn that a lone node, which
    # has no peers to compare with, is likely grey.
    if rng.random() >= size / _GREY_SHARE_SIZE:
        scenario = _WITHOUT_GREY.get(scenario, scenario)
    site = _Region(
        base_rtt_s=math.exp(rng.uniform(math.log(0.005), math.log(0.2))),
        base_jitter_s=math.exp(rng.uniform(math.log(0.001), math.log(0.01))),
        probe_loss=rng.uniform(0.0, 0.01),
        ingress_error=rng.uniform(0.0, 0.005),
        restart_rate=0.03,
    )
    kinds = [NodeKind.HEALTHY] * size
    conditions = [_Condition()] * size
    plan = _SCENARIO_PLANS[scenario]
    plan(rng, site, kinds, conditions)
    return [
        LabelledNode(scenario, kind, _measure(rng, region, f"{region}-n{i:02d}", site, condition))
        for i, (kind, condition) in enumerate(zip(kinds, conditions, strict=True))
    ]


_Plan = Callable[[np.random.Generator, _Region, list[NodeKind], list[_Condition]], None]


def _plan_healthy(
    rng: np.random.Generator, site: _Region, kinds: list[NodeKind], conditions: list[_Condition]
) -> None:
    del rng, site, kinds, conditions  # every node stays healthy


def _plan_grey(
    rng: np.random.Generator, site: _Region, kinds: list[NodeKind], conditions: list[_Condition]
) -> None:
    del site
    count = 1 + int(rng.integers(0, max(1, len(kinds) // 5)))
    for i in _pick_nodes(rng, len(kinds), count):
        kinds[i], conditions[i] = _grey_condition(rng)


def _plan_failed(
    rng: np.random.Generator, site: _Region, kinds: list[NodeKind], conditions: list[_Condition]
) -> None:
    del site
    for i in _pick_nodes(rng, len(kinds), 1 + int(rng.random() < 0.3)):
        kinds[i], conditions[i] = NodeKind.FAILED, _Condition(silent=True)


def _plan_partitioned(
    rng: np.random.Generator, site: _Region, kinds: list[NodeKind], conditions: list[_Condition]
) -> None:
    del site
    # Half the partitions start inside the window, so the window's first probes succeeded.
    answered = int(rng.integers(1, PROBES_PER_WINDOW - 3)) if rng.random() < 0.5 else None
    for i in range(len(kinds)):
        kinds[i] = NodeKind.PARTITIONED
        conditions[i] = _Condition(silent=answered is None, silent_after=answered)


def _plan_weak_link(
    rng: np.random.Generator, site: _Region, kinds: list[NodeKind], conditions: list[_Condition]
) -> None:
    del site
    # tc netem on the site's uplink: added delay, delay variation and 10 % loss on every node.
    link = _Condition(
        extra_rtt_s=rng.uniform(0.05, 0.4),
        extra_jitter_s=rng.uniform(0.01, 0.1),
        extra_probe_loss=0.10,
    )
    for i in range(len(kinds)):
        kinds[i], conditions[i] = NodeKind.WEAK_LINK, link


def _plan_weak_link_grey(
    rng: np.random.Generator, site: _Region, kinds: list[NodeKind], conditions: list[_Condition]
) -> None:
    _plan_weak_link(rng, site, kinds, conditions)
    link = conditions[0]
    (i,) = _pick_nodes(rng, len(kinds), 1)
    kinds[i], grey = _grey_condition(rng)
    conditions[i] = replace(
        grey,
        extra_rtt_s=grey.extra_rtt_s + link.extra_rtt_s,
        extra_jitter_s=grey.extra_jitter_s + link.extra_jitter_s,
        extra_probe_loss=grey.extra_probe_loss + link.extra_probe_loss,
    )


def _plan_region_slow(
    rng: np.random.Generator, site: _Region, kinds: list[NodeKind], conditions: list[_Condition]
) -> None:
    del site
    # A site-wide cause (saturated uplink, shared storage, a noisy neighbour on every host) slows
    # all nodes together, with some errors and restarts, but singles out none.
    slow = _Condition(
        rtt_factor=rng.uniform(2.0, 8.0),
        jitter_factor=rng.uniform(1.5, 4.0),
        extra_probe_loss=rng.uniform(0.0, 0.05),
        extra_ingress_error=rng.uniform(0.0, 0.1),
        extra_restart_rate=rng.uniform(0.0, 0.5),
    )
    for i in range(len(kinds)):
        kinds[i], conditions[i] = NodeKind.REGION_SLOW, slow


_SCENARIO_PLANS: dict[Scenario, _Plan] = {
    Scenario.HEALTHY: _plan_healthy,
    Scenario.GREY: _plan_grey,
    Scenario.FAILED: _plan_failed,
    Scenario.PARTITIONED: _plan_partitioned,
    Scenario.WEAK_LINK: _plan_weak_link,
    Scenario.WEAK_LINK_GREY: _plan_weak_link_grey,
    Scenario.REGION_SLOW: _plan_region_slow,
}


def _pick_nodes(rng: np.random.Generator, size: int, count: int) -> list[int]:
    return sorted(int(i) for i in rng.choice(size, size=min(count, size), replace=False))


def _grey_condition(rng: np.random.Generator) -> tuple[NodeKind, _Condition]:
    """Draw a grey kind and a severity from barely visible (0) to blatant (1)."""
    kind = GREY_KINDS[int(rng.integers(0, len(GREY_KINDS)))]
    s = rng.random()
    if kind is NodeKind.GREY_SLOW:
        condition = _Condition(rtt_factor=1.5 + 10 * s**2, extra_probe_loss=0.2 * s**2)
    elif kind is NodeKind.GREY_INGRESS:
        condition = _Condition(rtt_factor=1 + 0.3 * s, extra_ingress_error=0.03 + 0.5 * s**2)
    elif kind is NodeKind.GREY_RESTARTS:
        condition = _Condition(extra_restart_rate=1 + 6 * s, extra_ingress_error=0.02 * s)
    elif kind is NodeKind.GREY_JITTER:
        condition = _Condition(
            rtt_factor=1 + 0.5 * s, jitter_factor=2 + 10 * s, extra_probe_loss=0.05 * s
        )
    else:
        condition = _Condition(
            rtt_factor=1.3 + 1.2 * s,
            jitter_factor=1.5 + 2 * s,
            extra_probe_loss=0.01 + 0.05 * s,
            extra_ingress_error=0.01 + 0.06 * s,
            extra_restart_rate=0.3 + 1.5 * s,
        )
    return kind, condition


def _measure(
    rng: np.random.Generator, region: str, node: str, site: _Region, condition: _Condition
) -> NodeMeasurements:
    """Sample one window of measurements for a node."""
    # Every draw happens whatever the outcome, so one node's condition never shifts the random
    # stream of the nodes after it.
    rtt_noise = rng.lognormal(0.0, 0.12)
    jitter_noise = rng.lognormal(0.0, 0.25)
    loss = min(site.probe_loss + condition.extra_probe_loss, 1.0)
    failures = int(rng.binomial(PROBES_PER_WINDOW, loss))
    has_ingress = rng.random() >= NO_INGRESS_SHARE
    error_rate = min(site.ingress_error + condition.extra_ingress_error, 1.0)
    ingress_errors = int(rng.binomial(INGRESS_CHECKS_PER_WINDOW, error_rate))
    restarts = int(rng.poisson(site.restart_rate + condition.extra_restart_rate))

    if condition.silent:
        return NodeMeasurements(node, region, None, 1.0, None, None, 0)
    if condition.silent_after is not None:
        failures = max(failures, PROBES_PER_WINDOW - condition.silent_after)

    rtt = (site.base_rtt_s * condition.rtt_factor + condition.extra_rtt_s) * rtt_noise
    jitter = math.hypot(site.base_jitter_s * condition.jitter_factor, condition.extra_jitter_s)
    return NodeMeasurements(
        node=node,
        region=region,
        probe_rtt_s=None if failures == PROBES_PER_WINDOW else _round(rtt),
        probe_failure_ratio=_round(failures / PROBES_PER_WINDOW),
        heartbeat_jitter_s=_round(jitter * jitter_noise),
        ingress_error_ratio=_round(ingress_errors / INGRESS_CHECKS_PER_WINDOW)
        if has_ingress
        else None,
        component_restarts=restarts,
    )


def _round(value: float) -> float:
    return float(f"{value:.4g}")


# Columns of the corpus CSV, in order.
CSV_COLUMNS = (
    "region",
    "node",
    "scenario",
    "kind",
    "grey",
    "probe_rtt_s",
    "probe_failure_ratio",
    "heartbeat_jitter_s",
    "ingress_error_ratio",
    "component_restarts",
)


def to_csv(rows: Iterable[LabelledNode]) -> str:
    """Render corpus rows as CSV text with ``\\n`` line ends; an empty cell is an unknown value."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        m = row.measurements
        writer.writerow(
            [
                m.region,
                m.node,
                row.scenario.value,
                row.kind.value,
                int(row.grey),
                _cell(m.probe_rtt_s),
                _cell(m.probe_failure_ratio),
                _cell(m.heartbeat_jitter_s),
                _cell(m.ingress_error_ratio),
                m.component_restarts,
            ]
        )
    return buffer.getvalue()


def write_corpus(rows: Sequence[LabelledNode], path: Path) -> None:
    """Write corpus rows to ``path`` as CSV, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_csv(rows), encoding="utf-8")


def read_corpus(path: Path) -> list[LabelledNode]:
    """Read a corpus CSV written by ``write_corpus``.

    Raises ValueError naming the line when a row is malformed or its ``grey`` column contradicts
    its kind.
    """
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise ValueError(f"{path}: expected the columns {','.join(CSV_COLUMNS)}")
        return [_parse_row(path, reader.line_num, record) for record in reader]


def _parse_row(path: Path, line: int, record: dict[str, str]) -> LabelledNode:
    try:
        kind = NodeKind(record["kind"])
        row = LabelledNode(
            scenario=Scenario(record["scenario"]),
            kind=kind,
            measurements=NodeMeasurements(
                node=record["node"],
                region=record["region"],
                probe_rtt_s=_optional(record["probe_rtt_s"]),
                probe_failure_ratio=float(record["probe_failure_ratio"]),
                heartbeat_jitter_s=_optional(record["heartbeat_jitter_s"]),
                ingress_error_ratio=_optional(record["ingress_error_ratio"]),
                component_restarts=int(record["component_restarts"]),
            ),
        )
    except ValueError as err:
        raise ValueError(f"{path}:{line}: invalid corpus row: {err}") from err
    if record["grey"] != str(int(kind.grey)):
        raise ValueError(f"{path}:{line}: grey={record['grey']} contradicts kind {kind}")
    return row


def _cell(value: float | None) -> str:
    return "" if value is None else repr(value)


def _optional(cell: str) -> float | None:
    return None if cell == "" else float(cell)
