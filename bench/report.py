"""The JSON report, the target verdicts, docs/BENCHMARKS.md and its plots."""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.crash import CrashResult
from bench.scale import MAX_P99_MS, ScaleRun
from bench.stats import summarize
from bench.upstream import UpstreamResult
from bench.weaklink import WeakLinkResult

TARGET_CUT_P99_S = 3.0
TARGET_SPEEDUP = 15.0
TARGET_NODES = 10_000
TARGET_LOOP_S = 1.0
TARGET_RSS_MB = 1024.0

# The part of BENCHMARKS.md between these markers is written by people and kept across runs.
ANALYSIS_START = "<!-- analysis: kept across runs -->"
ANALYSIS_END = "<!-- end of analysis -->"


@dataclass
class Results:
    """Everything one run measured, before it is turned into the report."""

    command: str
    profile: str  # "full", "smoke" or "partial"
    parameters: dict[str, Any]
    machine: dict[str, Any]
    versions: dict[str, str]
    lab_settings: dict[str, Any] = field(default_factory=dict)
    crashes: list[CrashResult] | None = None
    upstream: UpstreamResult | None = None
    upstream_error: str | None = None
    weak_link: WeakLinkResult | None = None
    scale: dict[int, ScaleRun] | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    load_average_end: list[float] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # section -> why it stopped early


def _iso(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, datetime.UTC).isoformat(timespec="seconds")


def _spread(prefix: str, values: Sequence[float]) -> dict[str, Any]:
    summary = summarize(values)
    keys = ("p50", "p99", "min", "max", "iqr")
    if summary is None:
        return {f"{prefix}_{key}_s": None for key in keys}
    data = summary.as_dict()
    return {f"{prefix}_{key}_s": data[key] for key in keys}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 1)


def build_report(results: Results) -> dict[str, Any]:
    """Return the JSON report: the key figures at the top level, details below them."""
    report: dict[str, Any] = {
        "run": {
            "profile": results.profile,
            "command": results.command,
            "started_at": _iso(results.started_at),
            "finished_at": _iso(results.finished_at),
            "wall_s": round(results.finished_at - results.started_at, 1),
            "parameters": results.parameters,
            "machine": results.machine,
            "load_average_end": results.load_average_end,
            "versions": results.versions,
            "errors": results.errors,
        }
    }
    report.update(_crash_figures(results))
    report.update(_weak_link_figures(results.weak_link))
    report.update(_scale_figures(results.scale))
    report["targets"] = evaluate_targets(report)
    return report


def _crash_figures(results: Results) -> dict[str, Any]:
    crashes = results.crashes or []
    upstream = results.upstream or UpstreamResult()
    cut = [c.cut_latency_s for c in crashes if c.cut_latency_s is not None]
    upstream_cut = [v for v in upstream.latencies_s if v is not None]
    figures: dict[str, Any] = {}
    figures.update(_spread("cut_latency", cut))
    figures.update(_spread("upstream_cut_latency", upstream_cut))
    figures["cut_speedup_p50"] = _ratio(
        figures["upstream_cut_latency_p50_s"], figures["cut_latency_p50_s"]
    )
    figures["cut_speedup_p99"] = _ratio(
        figures["upstream_cut_latency_p99_s"], figures["cut_latency_p99_s"]
    )

    writes = [sum(c.isolator_writes.values()) for c in crashes if c.isolator_writes]
    figures["k8s_writes_per_isolated_node"] = (
        round(sum(writes) / len(writes), 2) if writes else None
    )

    figures["crashes"] = {
        "count": len(crashes),
        "cut": len(cut),
        "not_cut": len(crashes) - len(cut),
        "wrong_cuts": sum(len(c.wrong_cut_pods) for c in crashes),
        "lab_settings": results.lab_settings,
        "stages_s": _stages(crashes),
        "samples": [c.as_dict() for c in crashes],
    }
    figures["upstream"] = {
        "count": len(upstream.latencies_s),
        "cut": len(upstream_cut),
        "error": results.upstream_error,
        "settings": upstream.settings,
        "samples": [
            {"node": node, "cut_latency_s": latency}
            for node, latency in zip(upstream.nodes, upstream.latencies_s, strict=True)
        ],
    }
    return figures


def _stages(crashes: Sequence[CrashResult]) -> dict[str, Any]:
    """Summarize the two stages of each cut: kill to decision, and decision to endpoints out."""
    decided = [c.decided_after_s for c in crashes if c.decided_after_s is not None]
    to_endpoints = [
        c.cut_latency_s - c.decided_after_s
        for c in crashes
        if c.cut_latency_s is not None and c.decided_after_s is not None
    ]
    summaries = {"kill_to_decision": summarize(decided), "decision_to_cut": summarize(to_endpoints)}
    return {name: summary.as_dict() if summary else None for name, summary in summaries.items()}


def _weak_link_figures(weak: WeakLinkResult | None) -> dict[str, Any]:
    if weak is None:
        return {
            "weak_link_wrong_cuts": None,
            "weak_link_loss_only_wrong_cuts": None,
            "weak_link": {"reason": "not run (section skipped)", "loss_only": None},
        }
    loss_only = weak.loss_only.wrong_cuts if weak.loss_only else None
    return {
        "weak_link_wrong_cuts": weak.wrong_cuts,
        "weak_link_loss_only_wrong_cuts": loss_only,
        "weak_link": asdict(weak),
    }


def _scale_figures(runs: Mapping[int, ScaleRun] | None) -> dict[str, Any]:
    runs = runs or {}
    figures: dict[str, Any] = {
        "heartbeat_max_rate_per_s": {str(n): r.max_rate_per_s for n, r in runs.items()},
        "heartbeat_cpu_s_per_1000": {
            str(n): r.steady.get("isolator_cpu_s_per_1000") for n, r in runs.items()
        },
        "loop_seconds": {str(n): r.steady.get("loop", {}).get("mean_s") for n, r in runs.items()},
        "loop_seconds_p99": {
            str(n): r.steady.get("loop", {}).get("p99_s") for n, r in runs.items()
        },
        "prometheus_queries_per_loop": {
            str(n): r.steady.get("prometheus_queries_sent_per_loop") for n, r in runs.items()
        },
    }
    largest = runs.get(TARGET_NODES)
    memory = largest.steady.get("memory_mb", {}) if largest else {}
    figures["rss_mb_at_10000_nodes"] = round(memory["rss"], 1) if "rss" in memory else None
    figures["scale"] = {str(n): asdict(r) for n, r in runs.items()}
    return figures


def _target(name: str, figure: str, met: bool | None, reason: str) -> dict[str, Any]:
    return {"target": name, "figure": figure, "met": met, "reason": reason}


def evaluate_targets(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Judge every target against the report; ``met`` is None when the run did not measure it."""
    targets = []
    p99 = report["cut_latency_p99_s"]
    count = report["crashes"]["count"]
    not_cut = report["crashes"]["not_cut"]
    if p99 is None:
        targets.append(_target("p99 fault to cut <= 3 s", "none", None, "no crash was cut"))
    else:
        met = p99 <= TARGET_CUT_P99_S and not_cut == 0
        reason = f"p99 {p99} s over {count} crashes"
        if not_cut:
            reason += f"; {not_cut} crashes were never cut, so the p99 leaves them out"
        targets.append(_target("p99 fault to cut <= 3 s", f"{p99} s", met, reason))

    p50_ratio, p99_ratio = report["cut_speedup_p50"], report["cut_speedup_p99"]
    if p50_ratio is None or p99_ratio is None:
        targets.append(
            _target(
                ">= 15x faster than upstream", "none", None, "upstream or isolator not measured"
            )
        )
    else:
        met = p50_ratio >= TARGET_SPEEDUP and p99_ratio >= TARGET_SPEEDUP
        targets.append(
            _target(
                ">= 15x faster than upstream",
                f"{p50_ratio}x at p50, {p99_ratio}x at p99",
                met,
                f"upstream p50 {report['upstream_cut_latency_p50_s']} s over "
                f"{report['upstream']['cut']} crashes; both ratios must reach 15",
            )
        )

    wrong = report["weak_link_wrong_cuts"]
    weak = report["weak_link"]
    if wrong is None:
        reason = weak["reason"]
        loss_only = weak["loss_only"]
        if loss_only is not None:
            reason += (
                f". Loss alone ({loss_only['loss_pct']:g}% each way, no delay, "
                f"{loss_only['duration_s']:g} s): {loss_only['wrong_cuts']} wrong cuts"
            )
        targets.append(_target("zero wrong cuts under a weak link", "null", None, reason))
    else:
        targets.append(
            _target(
                "zero wrong cuts under a weak link",
                str(wrong),
                wrong == 0,
                f"{weak['duration_s']:g} s of {weak['delay_ms']} ms delay, {weak['jitter_ms']} ms "
                f"jitter and {weak['loss_pct']:g}% loss on region {weak['region']}",
            )
        )
    targets += _scale_targets(report)
    return targets


SCALE_TARGETS = (
    "10,000 nodes heartbeating 1/s on one replica",
    "loop < 1 s at 10,000 nodes",
    "memory < 1 GB at 10,000 nodes",
)


def _scale_targets(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    run = report["scale"].get(str(TARGET_NODES))
    if run is None:
        reason = "this run did not simulate 10,000 nodes"
        return [_target(name, "none", None, reason) for name in SCALE_TARGETS]
    steady = run["steady"]
    if not steady:
        reason = f"the run stopped before its steady phase: {run['error']}"
        return [_target(name, "none", None, reason) for name in SCALE_TARGETS]

    p99 = (steady.get("latency_ms") or {}).get("p99")
    live = steady.get("live_nodes", 0)
    achieved = steady.get("achieved_rate", 0)
    met = (
        steady.get("errors") == 0
        and achieved >= 0.95 * TARGET_NODES
        and p99 is not None
        and p99 < MAX_P99_MS
        and live == TARGET_NODES
    )
    heartbeats = _target(
        SCALE_TARGETS[0],
        f"{achieved}/s achieved, p99 {p99} ms, {live} of {TARGET_NODES} nodes live",
        met,
        f"errors {steady.get('errors')}, isolator CPU {steady.get('isolator_cpu_share')} cores "
        f"and {steady.get('isolator_cpu_wait_share')} waiting for one, verdicts "
        f"{steady.get('verdicts')}. It needs 95% of 10,000/s, p99 < 50 ms, no errors, and "
        "every node heard both ways (heartbeat and probe) within 3 s",
    )

    loop = steady.get("loop", {})
    loop_p99 = loop.get("p99_s")
    rss = report["rss_mb_at_10000_nodes"]
    return [
        heartbeats,
        _target(
            SCALE_TARGETS[1],
            f"mean {loop.get('mean_s')} s, p99 {loop_p99} s",
            None if loop_p99 is None else loop_p99 < TARGET_LOOP_S,
            "p99 estimated from the isolator_loop_duration_seconds buckets",
        ),
        _target(
            SCALE_TARGETS[2],
            f"{rss} MiB",
            None if rss is None else rss < TARGET_RSS_MB,
            "resident set size of the isolator process after the steady phase",
        ),
    ]


# --- plots ----------------------------------------------------------------------------------


def write_plots(report: Mapping[str, Any], folder: Path) -> list[str]:
    """Draw the plots into ``folder`` and return their file names; none without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    if report["crashes"]["count"] or report["upstream"]["count"]:
        names.append(_plot_cut_latency(plt, report, folder / "cut-latency.png"))
    if report["scale"]:
        names.append(_plot_heartbeats(plt, report, folder / "heartbeat-latency.png"))
        names.append(_plot_loop(plt, report, folder / "loop-cost.png"))
    return names


def _plot_cut_latency(plt: Any, report: Mapping[str, Any], path: Path) -> str:
    isolator = [s["cut_latency_s"] for s in report["crashes"]["samples"] if s["cut_latency_s"]]
    upstream = [s["cut_latency_s"] for s in report["upstream"]["samples"] if s["cut_latency_s"]]
    figure, axis = plt.subplots(figsize=(7, 4))
    for x, (label, values) in enumerate((("isolator", isolator), ("upstream", upstream))):
        spread = [x + 0.15 * ((i % 7) - 3) / 3 for i in range(len(values))]
        axis.scatter(spread, values, alpha=0.7, label=f"{label} ({len(values)} crashes)")
        if values:
            median = sorted(values)[len(values) // 2]
            axis.hlines(median, x - 0.25, x + 0.25, colors="black")
    axis.axhline(TARGET_CUT_P99_S, linestyle="--", color="red", label="target p99 3 s")
    axis.set_yscale("log")
    axis.set_xticks([0, 1], ["isolator", "upstream node lifecycle controller"])
    axis.set_ylabel("fault to traffic cut (s, log scale)")
    axis.set_title("Node crash to Pods out of the ready endpoints (black: median)")
    axis.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path.name


def _plot_heartbeats(plt: Any, report: Mapping[str, Any], path: Path) -> str:
    figure, (latency, cpu) = plt.subplots(1, 2, figsize=(11, 4))
    for nodes, run in report["scale"].items():
        # The steady phase is one more offered rate: one heartbeat per node per second.
        steps = [s for s in [run["steady"], *run["steps"]] if s.get("latency_ms")]
        steps.sort(key=lambda s: s["rate"])
        rates = [s["rate"] for s in steps]
        latency.plot(
            rates, [s["latency_ms"]["p99"] for s in steps], marker="o", label=f"{nodes} nodes"
        )
        cpu.plot(
            [s["achieved_rate"] for s in steps],
            [s["isolator_cpu_share"] for s in steps],
            marker="o",
            label=f"{nodes} nodes",
        )

    latency.axhline(MAX_P99_MS, linestyle="--", color="red", label="limit 50 ms")
    latency.set_yscale("log")
    latency.set_xscale("log")
    latency.set_xlabel("offered heartbeats per second (log scale)")
    latency.set_ylabel("p99 handling latency (ms, log scale)")
    latency.set_title("Heartbeat latency by offered rate")
    latency.legend(fontsize="small")

    cpu.set_xscale("log")
    cpu.set_xlabel("achieved heartbeats per second (log scale)")
    cpu.set_ylabel("isolator CPU (cores)")
    cpu.set_title("Isolator CPU by heartbeat rate")
    cpu.legend(fontsize="small")

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path.name


def _plot_loop(plt: Any, report: Mapping[str, Any], path: Path) -> str:
    counts = sorted(int(n) for n in report["scale"])
    mean = [report["loop_seconds"][str(n)] or math.nan for n in counts]
    p99 = [report["loop_seconds_p99"][str(n)] or math.nan for n in counts]
    cpu = [report["heartbeat_cpu_s_per_1000"][str(n)] or math.nan for n in counts]
    figure, (loop, per_beat) = plt.subplots(1, 2, figsize=(11, 4))
    loop.plot(counts, mean, marker="o", label="mean")
    loop.plot(counts, p99, marker="o", label="p99 (from histogram buckets)")
    loop.axhline(TARGET_LOOP_S, linestyle="--", color="red", label="target 1 s")
    loop.set_xscale("log")
    loop.set_xlabel("nodes")
    loop.set_ylabel("control-loop pass (s)")
    loop.set_title("Loop duration at one heartbeat per node per second")
    loop.legend(fontsize="small")
    per_beat.plot(counts, cpu, marker="o")
    per_beat.set_xscale("log")
    per_beat.set_xlabel("nodes")
    per_beat.set_ylabel("isolator CPU s per 1,000 heartbeats")
    per_beat.set_title("Whole-process CPU per 1,000 heartbeats")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path.name
