"""Feature rows for grey-failure scoring: each node's measurements against its region's peers.

A grey node still responds to probes, so its absolute numbers often look fine. What gives it
away is how far it sits from the other nodes of its site, which share its WAN link, its power and
its load. Every comparison here is therefore against the node's peers: the other nodes of the
same region.

Peer statistics leave the node itself out, so in a region of two nodes each node is compared with
the other one. A node without peers (a region of one) gets neutral peer features, and the
``peers_log`` feature tells the model how much the peer features can be trusted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class NodeMeasurements:
    """Measurements of one node over the last window, taken for one loop pass."""

    node: str
    region: str
    probe_rtt_s: float | None  # median probe round-trip; None when no probe succeeded
    probe_failure_ratio: float  # 0..1
    heartbeat_jitter_s: float | None  # stddev of heartbeat inter-arrival times; None = unknown
    ingress_error_ratio: float | None  # 0..1, from the agent's ingress check; None = unknown
    component_restarts: int  # restarts of kubelet, kube-proxy, CNI, CoreDNS or ingress


# Meaning of each feature column; "peers" are the other nodes of the node's region.
FEATURE_DESCRIPTIONS: dict[str, str] = {
    "rtt_log_ratio": "log2 of the probe RTT minus the median of the peers' log2 RTTs",
    "rtt_robust_z": "rtt_log_ratio over 1.4826 times the MAD of the region's log2 RTTs",
    "jitter_log_ratio": "log2 of the heartbeat jitter minus the median of the peers' log2 jitters",
    "jitter_robust_z": "jitter_log_ratio over 1.4826 times the MAD of the region's log2 jitters",
    "probe_failure_ratio": "share of failed probes in the window",
    "probe_failure_excess": "probe failure ratio minus the peers' median",
    "ingress_error_ratio": "share of failed ingress checks in the window",
    "ingress_error_excess": "ingress error ratio minus the peers' median",
    "restarts_log": "log(1 + component restarts in the window)",
    "restarts_excess": "component restarts minus the peers' median",
    "region_probe_failure_median": "median probe failure ratio of the whole region",
    "peers_log": "log(1 + number of peers with a known probe RTT)",
    "rtt_unknown": "1 when no probe succeeded in the window",
    "jitter_unknown": "1 when too few heartbeats arrived to measure jitter",
    "ingress_unknown": "1 when the agent reports no ingress check",
}

# Order of the columns of every feature matrix. A model file stores this list and the loader
# rejects a file whose list differs, because a tree that splits on column 3 must see the same
# feature in column 3.
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURE_DESCRIPTIONS)

# Lower bounds on the spread of a region's log2 values. Without them a region whose nodes agree
# to the microsecond (MAD near 0) would turn a 1 % difference into a huge z-score.
_MIN_LOG2_SPREAD = 0.1  # about 7 % relative
# Jitter below 1 ms is timer noise, so smaller values are raised to it before taking logs.
_MIN_JITTER_S = 0.001
# Round trips below 0.1 ms are loopback noise; the same floor keeps log2 finite.
_MIN_RTT_S = 0.0001
# Scale factor that makes the median absolute deviation estimate a normal standard deviation.
_MAD_TO_SIGMA = 1.4826

_COLUMN = {name: i for i, name in enumerate(FEATURE_NAMES)}


def feature_matrix(measurements: Sequence[NodeMeasurements]) -> FloatArray:
    """Build one feature row per node, in the order of ``measurements`` and ``FEATURE_NAMES``.

    Unknown and non-finite values become neutral features (0, as if the node sat at its peers'
    median) plus an ``*_unknown`` indicator, so the result never contains NaN. Ratios outside
    0..1 are clipped into it.
    """
    rows = np.zeros((len(measurements), len(FEATURE_NAMES)))
    if not measurements:
        return rows
    codes = _region_codes(measurements)
    raw = _raw_columns(measurements)
    rtt, jitter = raw["rtt_log"], raw["jitter_log"]
    failure, ingress, restarts = raw["failure"], raw["ingress"], raw["restarts"]

    rows[:, _COLUMN["rtt_log_ratio"]], rows[:, _COLUMN["rtt_robust_z"]] = _log_deviation(rtt, codes)
    jitter_ratio, jitter_z = _log_deviation(jitter, codes)
    rows[:, _COLUMN["jitter_log_ratio"]], rows[:, _COLUMN["jitter_robust_z"]] = (
        jitter_ratio,
        jitter_z,
    )
    rows[:, _COLUMN["probe_failure_ratio"]] = np.nan_to_num(failure)
    rows[:, _COLUMN["probe_failure_excess"]] = _excess(failure, codes)
    rows[:, _COLUMN["ingress_error_ratio"]] = np.nan_to_num(ingress)
    rows[:, _COLUMN["ingress_error_excess"]] = _excess(ingress, codes)
    rows[:, _COLUMN["restarts_log"]] = np.log1p(np.nan_to_num(restarts))
    rows[:, _COLUMN["restarts_excess"]] = _excess(restarts, codes)
    rows[:, _COLUMN["region_probe_failure_median"]] = np.nan_to_num(
        group_medians(failure, codes)[codes]
    )
    rtt_known = ~np.isnan(rtt)
    known_in_region = np.bincount(codes, weights=rtt_known)[codes]
    rows[:, _COLUMN["peers_log"]] = np.log1p(known_in_region - rtt_known)
    rows[:, _COLUMN["rtt_unknown"]] = ~rtt_known
    rows[:, _COLUMN["jitter_unknown"]] = np.isnan(jitter)
    rows[:, _COLUMN["ingress_unknown"]] = np.isnan(ingress)
    return rows


def group_medians(values: FloatArray, groups: IntArray) -> FloatArray:
    """Return the median of the known (non-NaN) values of each group; NaN for a group without.

    ``groups`` contains a group number from 0 up for each value.
    """
    sorted_values, start, count = _sort_in_groups(values, groups)
    medians = np.full(count.size, np.nan)
    some = count > 0
    low = start[some] + (count[some] - 1) // 2
    high = start[some] + count[some] // 2
    medians[some] = (sorted_values[low] + sorted_values[high]) / 2
    return medians


def peer_medians(values: FloatArray, groups: IntArray) -> FloatArray:
    """Return, for each element, the median of the other known elements of its group.

    An unknown (NaN) element gets the median of every known element of its group. An element
    with no other known element in its group gets NaN. Runs in O(n log n) for all groups at once.
    """
    result = group_medians(values, groups)[groups]
    known = np.flatnonzero(~np.isnan(values))
    sorted_values, start, count = _sort_in_groups(values, groups)
    order = np.lexsort((values[known], groups[known]))
    position = np.empty(known.size, dtype=np.int64)
    position[order] = np.arange(known.size)
    group = groups[known]
    rank = position - start[group]
    others = count[group] - 1
    has_peers = others > 0
    # Removing the element at rank r shifts every later rank down by one, so the k-th smallest
    # of the others sits at rank k below r and at rank k + 1 from r on.
    low_k = np.maximum((others - 1) // 2, 0)
    high_k = others // 2
    last = count[group] - 1  # keeps the index inside the group where no peer exists
    low = sorted_values[start[group] + np.minimum(low_k + (low_k >= rank), last)]
    high = sorted_values[start[group] + np.minimum(high_k + (high_k >= rank), last)]
    result[known] = np.where(has_peers, (low + high) / 2, np.nan)
    return result


def group_spreads(values: FloatArray, groups: IntArray, floor: float) -> FloatArray:
    """Return 1.4826 times each group's median absolute deviation, at least ``floor``.

    The factor makes the deviation estimate a normal standard deviation. Groups with fewer than
    two known values get ``floor``.
    """
    centre = group_medians(values, groups)
    deviation = np.abs(values - centre[groups])
    mad = group_medians(deviation, groups)
    count = np.bincount(groups, weights=~np.isnan(values))
    spread = np.where(count >= 2, _MAD_TO_SIGMA * np.nan_to_num(mad), floor)
    result: FloatArray = np.maximum(spread, floor)
    return result


def _sort_in_groups(values: FloatArray, groups: IntArray) -> tuple[FloatArray, IntArray, IntArray]:
    """Sort the known values by group, then value; return them with each group's start and count."""
    known = ~np.isnan(values)
    order = np.lexsort((values[known], groups[known]))
    sorted_values = values[known][order]
    size = int(groups.max()) + 1 if groups.size else 0
    count = np.bincount(groups[known], minlength=size).astype(np.int64)
    start = np.concatenate(([0], np.cumsum(count)[:-1])).astype(np.int64)
    return sorted_values, start, count


def _region_codes(measurements: Sequence[NodeMeasurements]) -> IntArray:
    numbers: dict[str, int] = {}
    return np.array(
        [numbers.setdefault(m.region, len(numbers)) for m in measurements], dtype=np.int64
    )


def _raw_columns(measurements: Sequence[NodeMeasurements]) -> dict[str, FloatArray]:
    def column(values: list[float | None], low: float, high: float) -> FloatArray:
        array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        array[~np.isfinite(array)] = np.nan
        return np.clip(array, low, high)

    rtt = column([m.probe_rtt_s for m in measurements], _MIN_RTT_S, np.inf)
    jitter = column([m.heartbeat_jitter_s for m in measurements], _MIN_JITTER_S, np.inf)
    return {
        "rtt_log": np.log2(rtt),
        "jitter_log": np.log2(jitter),
        "failure": column([m.probe_failure_ratio for m in measurements], 0.0, 1.0),
        "ingress": column([m.ingress_error_ratio for m in measurements], 0.0, 1.0),
        "restarts": column([m.component_restarts for m in measurements], 0.0, np.inf),
    }


def _log_deviation(log_values: FloatArray, groups: IntArray) -> tuple[FloatArray, FloatArray]:
    """Return the log2 ratio to the peer median and the robust z-score; 0 where unknown."""
    deviation = np.nan_to_num(log_values - peer_medians(log_values, groups))
    spread = group_spreads(log_values, groups, _MIN_LOG2_SPREAD)[groups]
    return deviation, deviation / spread


def _excess(values: FloatArray, groups: IntArray) -> FloatArray:
    return np.nan_to_num(values - peer_medians(values, groups))
