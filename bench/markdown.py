"""docs/BENCHMARKS.md, written from the JSON report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.report import ANALYSIS_END, ANALYSIS_START
from bench.scale import ACHIEVED_FRACTION, FEDERATION_INTERVAL_S, MAX_P99_MS, REGION_SIZE
from isolator.settings import Settings

# Defaults that shape the cost of the scale runs, named in the page.
KEY_SETTINGS = (
    "heartbeat_interval_s",
    "heartbeat_miss_count",
    "loop_interval_s",
    "inventory_refresh_s",
    "grey_scoring",
    "grey_score_interval_s",
)

DEFAULT_ANALYSIS = f"""{ANALYSIS_START}
## Analysis

No analysis written yet.
{ANALYSIS_END}"""


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join("" if v is None else str(v) for v in row) + " |")
    return "\n".join(lines)


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def kept_analysis(path: Path) -> str:
    """Return the analysis block of an existing BENCHMARKS.md, or a placeholder."""
    if not path.exists():
        return DEFAULT_ANALYSIS
    text = path.read_text()
    start, end = text.find(ANALYSIS_START), text.find(ANALYSIS_END)
    if start < 0 or end < start:
        return DEFAULT_ANALYSIS
    return text[start : end + len(ANALYSIS_END)]


def render(report: Mapping[str, Any], plots: Sequence[str], analysis: str) -> str:
    """Return the whole page."""
    run = report["run"]
    parts = [_header(report), _targets(report), _machine(run)]
    if report["crashes"]["count"] or report["upstream"]["count"] or report["upstream"]["error"]:
        parts.append(_crashes(report, plots))
    else:
        parts.append("## 1. Fault to traffic cut\n\nNot run.")
    parts.append(_weak_link(report))
    if report["scale"]:
        parts.append(_heartbeats(report, plots))
        parts.append(_loop(report, plots))
        parts.append(_profile(report))
    else:
        parts.append("## 3. Heartbeat ingest\n\nNot run.\n\n## 4. Control-loop cost\n\nNot run.")
    parts.append(analysis)
    return "\n\n".join(parts) + "\n"


def _header(report: Mapping[str, Any]) -> str:
    run = report["run"]
    lines = ["# Benchmarks", ""]
    if run["profile"] != "full":
        lines += [
            f"> **{run['profile'].capitalize()} run.** These figures come from a shortened run "
            "(fewer crashes, a shorter weak link, smaller node counts or skipped sections) on a "
            "machine shared with other test runs. They check the harness and show the order of "
            "magnitude; they are not the benchmark. `make bench` on a quiet machine replaces "
            "this page.",
            "",
        ]
    lines += [
        f"Written by `python -m bench` from {run['started_at']} to {run['finished_at']} "
        f"({run['wall_s'] / 60:.1f} minutes). The exact command:",
        "",
        "```sh",
        run["command"],
        "```",
        "",
        "Every figure below is also in the JSON report, with every sample.",
    ]
    errors = {**run["errors"]}
    for nodes, scale_run in report["scale"].items():
        if scale_run["error"]:
            errors[f"scale run at {nodes} nodes"] = scale_run["error"]
    for section, error in errors.items():
        lines += ["", f"**The {section} section stopped early:** {error}"]
    return "\n".join(lines)


def _targets(report: Mapping[str, Any]) -> str:
    rows = [[t["target"], t["figure"], _verdict(t["met"]), t["reason"]] for t in report["targets"]]
    return "## Targets\n\n" + _table(["target", "figure", "verdict", "why"], rows)


def _machine(run: Mapping[str, Any]) -> str:
    machine = run["machine"]
    cpu = machine["lscpu"]
    versions = [[name, version] for name, version in run["versions"].items()]
    return "\n".join(
        [
            "## Machine and versions",
            "",
            f"- `nproc`: {machine['nproc']}; `lscpu`: "
            + "; ".join(f"{k}: {v}" for k, v in cpu.items()),
            f"- kernel {machine['kernel']}; load average (1, 5, 15 min) "
            f"{machine['load_average']} at the start and {run['load_average_end']} at the end",
            "",
            "`free -m` at the start:",
            "",
            "```",
            machine["free_m"],
            "```",
            "",
            _table(["component", "version"], versions),
        ]
    )


def _spread_row(name: str, report: Mapping[str, Any], prefix: str, count: int) -> list[Any]:
    keys = ("p50", "p99", "min", "max", "iqr")
    return [name, count, *(report[f"{prefix}_{key}_s"] for key in keys)]


def _crashes(report: Mapping[str, Any], plots: Sequence[str]) -> str:
    crashes, upstream = report["crashes"], report["upstream"]
    settings = crashes["lab_settings"]
    rows = [
        _spread_row("isolator", report, "cut_latency", crashes["cut"]),
        _spread_row(
            "upstream node lifecycle controller", report, "upstream_cut_latency", upstream["cut"]
        ),
    ]
    lines = [
        "## 1. Fault to traffic cut",
        "",
        f"{crashes['count']} node crashes in the lab, one after another: the agent and the node's "
        "components killed and the Node marked down, as `Lab.crash_node` does, then recovered "
        "and left serving again before the next crash. The latency runs from the kill to the "
        "moment the last of the node's Pods left the Service's ready endpoints, read from the "
        "EndpointSlices every 50 ms. Lab settings: "
        + ", ".join(f"{k}={v}" for k, v in settings.items())
        + ".",
        "",
        f"Upstream: {upstream['count']} crashes of the same kind on a control plane of its own "
        "that runs kube-controller-manager's node lifecycle controller with its defaults, "
        "while KWOK renews each Lease as a kubelet with its defaults does. A crash stops the "
        "Node's Lease renewals and nothing else. Settings: "
        + ", ".join(f"{k}={v}" for k, v in upstream["settings"].items())
        + ".",
    ]
    if upstream["error"]:
        lines += ["", f"The upstream run failed: {upstream['error']}"]
    lines += [
        "",
        _table(["handled by", "crashes cut", "p50 s", "p99 s", "min s", "max s", "IQR s"], rows),
        "",
        f"Speed-up (upstream over isolator): {_times(report['cut_speedup_p50'])} at p50, "
        f"{_times(report['cut_speedup_p99'])} at p99. Crashes never cut: {crashes['not_cut']}; "
        f"Pods of other nodes cut during a crash: {crashes['wrong_cuts']}.",
    ]
    stages = crashes["stages_s"]
    if stages["kill_to_decision"] and stages["decision_to_cut"]:
        lines += [
            "",
            "Where the isolator's time goes (p50, p99 in s): from the kill to its decision to "
            f"cut {stages['kill_to_decision']['p50']}, {stages['kill_to_decision']['p99']}; from "
            "the decision to the Pods out of the ready endpoints (writes, the EndpointSlice "
            f"controller, the 50 ms poll) {stages['decision_to_cut']['p50']}, "
            f"{stages['decision_to_cut']['p99']}. The decision cannot come sooner than the "
            "heartbeat timeout (interval times miss count) plus the correlation window.",
        ]
    if "cut-latency.png" in plots:
        lines += ["", "![fault to cut latency](bench/cut-latency.png)"]
    lines += ["", *_writes(report)]
    return "\n".join(lines)


def _times(ratio: float | None) -> str:
    return "not measured" if ratio is None else f"{ratio}x"


def _writes(report: Mapping[str, Any]) -> list[str]:
    samples = [s for s in report["crashes"]["samples"] if s["isolator_writes"]]
    if not samples:
        return ["Kubernetes writes per isolated node: not measured."]
    totals: dict[str, float] = {}
    for sample in samples:
        for name, value in sample["isolator_writes"].items():
            totals[name] = totals.get(name, 0.0) + value
    rows = [[name, round(value / len(samples), 2)] for name, value in sorted(totals.items())]
    pods = len(samples[0]["pods"])
    return [
        f"Kubernetes writes per isolated node: **{report['k8s_writes_per_isolated_node']}** on "
        f"average over {len(samples)} cuts of nodes with {pods} Pods each, counted from the API "
        "server's `apiserver_request_total` between the crash and the isolator's audit record "
        "of the cut. Only Pod and Event writes count, because in that window nothing else "
        "writes them (KWOK stops playing a Node marked down and its Pods).",
        "",
        _table(["request", "per isolated node"], rows),
    ]


def _weak_link(report: Mapping[str, Any]) -> str:
    weak = report["weak_link"]
    lines = ["## 2. No false cuts under a weak link", ""]
    if report["weak_link_wrong_cuts"] is None:
        lines.append(f"`weak_link_wrong_cuts` is null: {weak['reason']}")
        if weak["loss_only"] is None:
            return "\n".join(lines)
        lines += [
            "",
            "In its place, and not counted as the result: the same window with the loss "
            "alone (`weak_link_loss_only_wrong_cuts`).",
            "",
            *_weak_link_window(weak["loss_only"]),
        ]
        return "\n".join(lines)
    lines += _weak_link_window(weak)
    return "\n".join(lines)


def _weak_link_window(weak: Mapping[str, Any]) -> list[str]:
    return [
        f"Region {weak['region']}'s link had {weak['delay_ms']} ms delay, {weak['jitter_ms']} ms "
        f"jitter and {weak['loss_pct']:g}% loss in each direction for {weak['duration_s']:g} s. "
        f"Pods cut: **{weak['wrong_cuts']}** {weak['wrong_cut_pods'] or ''}; cut records in the "
        f"isolator's audit log: {weak['cuts_decided']}.",
        "",
        "Verdicts sampled once a second in that region: nodes "
        + ", ".join(f"{k} {v}" for k, v in sorted(weak["node_verdicts"].items()))
        + "; region "
        + ", ".join(f"{k} {v}" for k, v in sorted(weak["region_verdicts"].items()))
        + ".",
    ]


def _heartbeats(report: Mapping[str, Any], plots: Sequence[str]) -> str:
    first = next(iter(report["scale"].values()))
    lines = [
        "## 3. Heartbeat ingest",
        "",
        "Each node count runs on a fresh lab. A real control plane's API server holds one "
        "Node per simulated node, and KWOK leaves them alone, so no kubelet simulation loads "
        "the machine. A simulated estate process answers every node's probe on its own "
        f"loopback address and serves one federation endpoint per region of {REGION_SIZE} "
        f"nodes, a central Prometheus federates it every {FEDERATION_INTERVAL_S} s, and "
        "`isolator serve` runs with its default settings. The load generator is its own process: "
        "open-loop, round-robin over the nodes, over a pool of keep-alive connections. A "
        f"rate passes with no failed request, at least {ACHIEVED_FRACTION:.0%} of the offered "
        f"rate achieved and a p99 under {MAX_P99_MS:g} ms, measured by the sender from request "
        "to whole response. CPU is the isolator process's user plus system time.",
        "",
        "Isolator settings beyond addresses and paths: "
        + (", ".join(f"{k}={v}" for k, v in first["isolator_settings"].items()) or "none")
        + (
            "; API authentication on, with a token per simulated agent"
            if first["authentication"]
            else "; API authentication off"
        )
        + "; everything else has its default, among them "
        + ", ".join(f"{name}={Settings.model_fields[name].default}" for name in KEY_SETTINGS)
        + ".",
        "",
    ]
    rows = []
    for nodes, run in report["scale"].items():
        steady = run["steady"]
        latency = steady.get("latency_ms") or {}
        fit = run.get("cpu_fit") or {}
        rows.append(
            [
                nodes,
                run["max_rate_per_s"] if run["max_rate_per_s"] is not None else "none passed",
                f"{steady.get('achieved_rate')}/s",
                latency.get("p99"),
                steady.get("errors"),
                f"{run['live_after_warmup']} / {steady.get('live_nodes')}",
                steady.get("isolator_cpu_s_per_1000"),
                fit.get("cpu_s_per_1000_heartbeats"),
                steady.get("isolator_cpu_share"),
                steady.get("isolator_cpu_wait_share"),
                steady.get("loadgen_cpu_share"),
                steady.get("estate_cpu_share"),
                steady.get("probes_per_s"),
            ]
        )
    lines.append(
        _table(
            [
                "nodes",
                "max rate passed (/s)",
                "achieved at 1/s per node",
                "p99 ms",
                "errors",
                "live after warm-up / after steady",
                "CPU s per 1,000 (whole process)",
                "CPU s per 1,000 (slope)",
                "isolator cores",
                "isolator waiting for a CPU",
                "load generator cores",
                "estate cores",
                "probes/s",
            ],
            rows,
        )
    )
    lines += [
        "",
        '"whole process" divides all the isolator\'s CPU in the steady phase (probes, the '
        'control loop and inventory included) by the heartbeats it accepted; "slope" is the '
        'extra CPU per heartbeat fitted over the rate steps that passed. "waiting for a CPU" '
        "is the time the isolator's threads were ready to run but had no core (from "
        "/proc/<pid>/task/*/schedstat), as a share of the step: where it approaches the "
        "isolator's own cores, the machine and not the isolator set the pace.",
        "",
    ]
    for nodes, run in report["scale"].items():
        step_rows = [
            [
                s["rate"],
                s["achieved_rate"],
                (s.get("latency_ms") or {}).get("p50"),
                (s.get("latency_ms") or {}).get("p99"),
                s["errors"],
                s["isolator_cpu_share"],
                s["loadgen_cpu_share"],
                s["isolator_cpu_wait_share"],
                s["load_average_1m"],
                "pass" if s["passed"] else f"fail: {s['failure']}",
            ]
            for s in run["steps"]
        ]
        lines += [
            f"Rate steps at {nodes} nodes:",
            "",
            _table(
                [
                    "offered/s",
                    "achieved/s",
                    "p50 ms",
                    "p99 ms",
                    "errors",
                    "isolator cores",
                    "load generator cores",
                    "isolator waiting for a CPU",
                    "load average",
                    "result",
                ],
                step_rows,
            ),
            "",
        ]
    if "heartbeat-latency.png" in plots:
        lines.append("![heartbeat latency and CPU](bench/heartbeat-latency.png)")
    return "\n".join(lines).rstrip()


def _loop(report: Mapping[str, Any], plots: Sequence[str]) -> str:
    rows = []
    for nodes, run in report["scale"].items():
        steady = run["steady"]
        loop = steady.get("loop", {})
        memory = steady.get("memory_mb", {})
        requests = steady.get("k8s_requests_per_s", {})
        busiest = sorted(requests.items(), key=lambda item: -item[1])[:3]
        rows.append(
            [
                nodes,
                loop.get("passes"),
                loop.get("mean_s"),
                loop.get("p99_s"),
                steady.get("prometheus_queries_sent_per_loop"),
                steady.get("prometheus_queries_served_per_loop"),
                steady.get("prometheus_queries_total_per_loop"),
                round(memory.get("rss", 0), 1),
                round(memory.get("hwm", 0), 1),
                "; ".join(f"{name} {value}/s" for name, value in busiest),
            ]
        )
    lines = [
        "## 4. Control-loop cost",
        "",
        "Measured in the steady phase above (one heartbeat per node per second). Loop figures "
        "come from `isolator_loop_duration_seconds` (the p99 is interpolated inside its "
        "buckets, as PromQL's histogram_quantile does). Queries per loop are counted three "
        "ways: sent (observations of `isolator_prometheus_query_duration_seconds`), served "
        "(the central Prometheus's own `prometheus_http_requests_total` for /api/v1/query) "
        "and `isolator_prometheus_queries_total`. API requests per second are the API "
        "server's `apiserver_request_total` over the phase, and at that point the isolator is "
        "the only client that sends more than a trickle.",
        "",
        _table(
            [
                "nodes",
                "loop passes",
                "loop mean s",
                "loop p99 s",
                "queries sent per loop",
                "queries served per loop",
                "isolator_prometheus_queries_total per loop",
                "RSS MiB",
                "peak RSS MiB",
                "busiest API requests",
            ],
            rows,
        ),
    ]
    if "loop-cost.png" in plots:
        lines += ["", "![loop cost](bench/loop-cost.png)"]
    return "\n".join(lines)


def _profile(report: Mapping[str, Any]) -> str:
    profiled = [(n, r["profile"]) for n, r in report["scale"].items() if r.get("profile")]
    lines = ["## Where the isolator's time goes", ""]
    if not profiled:
        return "\n".join([*lines, "Not profiled in this run."])
    nodes, profile = profiled[-1]
    if "error" in profile:
        return "\n".join([*lines, f"Profiling failed: {profile['error']}"])
    if not profile["busy_samples"]:
        return "\n".join([*lines, "py-spy recorded no busy sample."])
    lines += [
        f"py-spy sampled every thread of the isolator at 100 Hz for {profile['seconds']:g} s "
        f"while {nodes} nodes heartbeat once a second, and kept {profile['busy_samples']} "
        'busy samples (a thread waiting in epoll or on its pool\'s queue is idle). "self" is '
        "where the innermost frame was; percentages are of the busy samples.",
        "",
        _table(["thread", "share of a core"], profile["core_share_by_thread"]),
        "",
        _table(["package or module (self)", "% of busy samples"], profile["self_by_package_pct"]),
        "",
        _table(["function (self)", "% of busy samples"], profile["self_by_function_pct"]),
        "",
        _table(
            ["isolator function (anywhere on the stack)", "% of busy samples"],
            profile["total_by_isolator_function_pct"],
        ),
    ]
    return "\n".join(lines)
