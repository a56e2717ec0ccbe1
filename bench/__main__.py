"""``python -m bench``: run the benchmark sections and write the report and docs/BENCHMARKS.md.

Sections, in order:

- ``crash``: node crashes handled by the isolator in a lab, then the same crash handled by
  upstream's node lifecycle controller on a control plane of its own;
- ``weak-link``: one region's link delayed, jittered and lossy, counting wrong cuts (it shares
  the crash section's lab, and the upstream crashes run while it lasts);
- ``scale``: heartbeat ingest and control-loop cost at several simulated node counts.

Needs root (the lab creates network namespaces). The full run takes about 30 minutes; see
docs/BENCHMARKS.md for the latest figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import markdown
from bench.crash import run_crashes
from bench.kubeapi import ApiServer
from bench.machine import describe_machine, describe_versions
from bench.report import Results, build_report, write_plots
from bench.scale import ScaleOptions, run_scale
from bench.upstream import UpstreamResult, run_upstream
from bench.weaklink import WeakLinkResult, run_weak_link
from isolator.lab.controlplane import locate_binaries
from isolator.lab.environment import Lab, LabSpec, _fast_isolator_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("crash", "weak-link", "scale")


@dataclass(frozen=True)
class Preset:
    """Parameter defaults of one kind of run."""

    crashes: int
    upstream_crashes: int
    weak_link_s: float
    node_counts: str
    rates: str
    steady_s: float
    step_s: float
    profile_s: float


FULL = Preset(
    crashes=20,
    upstream_crashes=5,
    weak_link_s=600.0,
    node_counts="1000,3000,10000",
    rates="100,250,500,1000,1500,2000,3000,4000,6000,8000,10000,12000",
    steady_s=20.0,
    step_s=10.0,
    profile_s=10.0,
)
SMOKE = Preset(
    crashes=4,
    upstream_crashes=3,
    weak_link_s=60.0,
    node_counts="300,1000",
    rates="100,250,500,1000,2000,4000",
    steady_s=10.0,
    step_s=5.0,
    profile_s=5.0,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument

    add("--report", default="bench-report.json", help="path of the JSON report")
    add("--docs", default="docs/BENCHMARKS.md", help="page to write; plots go to its bench/ folder")
    add("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    add("--smoke", action="store_true", help="shortened defaults for a quick check of the harness")
    add(
        "--crashes",
        type=int,
        help=f"isolator crashes (default {FULL.crashes}, smoke {SMOKE.crashes})",
    )
    add(
        "--upstream-crashes",
        type=int,
        help=f"upstream crashes, about 60 s each round of 5 (default {FULL.upstream_crashes})",
    )
    add("--pods-per-node", type=int, default=2, help="Pods of the lab Service on every node")

    add(
        "--weak-link-s",
        type=float,
        help=f"seconds of weak link (default {FULL.weak_link_s:g}, smoke {SMOKE.weak_link_s:g})",
    )
    add("--weak-link-region", default="r2", help="lab region whose link turns weak")
    add("--weak-link-delay-ms", type=int, default=100, help="netem delay per direction, in ms")
    add("--weak-link-jitter-ms", type=int, default=50, help="netem jitter per direction, in ms")
    add("--weak-link-loss-pct", type=float, default=10.0, help="netem loss per direction, in %%")

    add("--node-counts", help=f"simulated node counts (default {FULL.node_counts})")
    add("--rates", help="offered heartbeat rates per second, tried in order until one fails")
    add("--steady-s", type=float, help="seconds of the steady phase at each node count")
    add("--step-s", type=float, help="seconds of each rate step")
    add("--profile-s", type=float, help="seconds of py-spy sampling at the largest count; 0: off")
    add("--connections", type=int, default=128, help="connections of the load generator")
    add("--seed", type=int, default=1, help="seed of the random pauses between crashes")
    add(
        "--rewrite-docs",
        action="store_true",
        help="measure nothing: write the page and plots again from the JSON report at --report",
    )
    return parser


def _resolve(args: argparse.Namespace) -> str:
    """Fill the unset parameters from the preset and return the run's profile name."""
    preset = SMOKE if args.smoke else FULL
    for name in (
        "crashes",
        "upstream_crashes",
        "weak_link_s",
        "node_counts",
        "rates",
        "steady_s",
        "step_s",
        "profile_s",
    ):
        if getattr(args, name) is None:
            setattr(args, name, getattr(preset, name))
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    args.node_counts = [int(n) for n in args.node_counts.split(",")]
    args.rates = [int(r) for r in args.rates.split(",")]
    full = (
        args.crashes >= FULL.crashes
        and args.upstream_crashes >= 3
        and args.weak_link_s >= FULL.weak_link_s
        and {1000, 3000, 10_000} <= set(args.node_counts)
        and set(args.sections) == set(SECTIONS)
    )
    if full:
        return "full"
    return "smoke" if args.smoke else "partial"


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"report", "docs", "smoke"}
    return {k: v for k, v in vars(args).items() if k not in skip}


async def _lab_sections(
    args: argparse.Namespace, results: Results, bin_dir: Path, work: Path
) -> None:
    spec = LabSpec(pods_per_node=args.pods_per_node)
    results.lab_settings = {
        "regions": len(spec.regions),
        "nodes_per_region": spec.nodes_per_region,
        "pods_per_node": spec.pods_per_node,
        **{
            k.removeprefix("ISOLATOR_").lower(): v
            for k, v in _fast_isolator_settings(spec.heartbeat_interval_s).items()
        },
    }
    rng = random.Random(args.seed)
    print("lab: starting", flush=True)
    async with Lab(spec) as lab, ApiServer(lab.kubeconfig) as apiserver:
        if "crash" in args.sections:
            print(f"crash: {args.crashes} isolator crashes", flush=True)
            results.crashes = []
            await run_crashes(lab, apiserver, args.crashes, rng, results.crashes)
        upstream = None
        if "crash" in args.sections:
            print(f"crash: {args.upstream_crashes} upstream crashes, in the background", flush=True)
            upstream = asyncio.create_task(
                run_upstream(bin_dir, work / "upstream", args.upstream_crashes, rng)
            )
        if "weak-link" in args.sections:
            print(
                f"weak link: {args.weak_link_s:g} s on region {args.weak_link_region} "
                f"({args.weak_link_delay_ms} ms delay, {args.weak_link_jitter_ms} ms jitter, "
                f"{args.weak_link_loss_pct:g}% loss)",
                flush=True,
            )
            results.weak_link = await run_weak_link(
                lab,
                args.weak_link_region,
                args.weak_link_s,
                args.weak_link_delay_ms,
                args.weak_link_jitter_ms,
                args.weak_link_loss_pct,
            )
            _print_weak_link(results.weak_link)
        if upstream is not None:
            try:
                results.upstream = await upstream
            except Exception as err:
                traceback.print_exc()
                results.upstream = UpstreamResult()
                results.upstream_error = f"{type(err).__name__}: {err}"


def _print_weak_link(result: WeakLinkResult) -> None:
    if result.wrong_cuts is None:
        print(f"weak link: not measured: {result.reason}", flush=True)
    else:
        print(f"weak link: {result.wrong_cuts} wrong cuts", flush=True)
    if result.loss_only is not None:
        print(f"weak link, loss only: {result.loss_only.wrong_cuts} wrong cuts", flush=True)


async def run(args: argparse.Namespace, profile: str) -> Results:
    command = shlex.join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]])
    if os.environ.get("MAKELEVEL"):
        command += "  # run by make bench"
    results = Results(
        command=command,
        profile=profile,
        parameters=_parameters(args),
        machine=describe_machine(),
        versions={},
        started_at=time.time(),
    )
    bin_dir = await asyncio.to_thread(locate_binaries, REPO_ROOT)
    results.versions = describe_versions(bin_dir)
    work = Path(tempfile.mkdtemp(prefix="isolator-bench-"))
    keep = os.environ.get("ISOLATOR_LAB_KEEP") == "1"
    try:
        if {"crash", "weak-link"} & set(args.sections):
            try:
                await _lab_sections(args, results, bin_dir, work)
            except Exception as err:
                # The report still shows what ran before the failure.
                traceback.print_exc()
                results.errors["lab"] = f"{type(err).__name__}: {err}"
        if "scale" in args.sections:
            options = ScaleOptions(
                node_counts=args.node_counts,
                rates=args.rates,
                steady_s=args.steady_s,
                step_s=args.step_s,
                profile_s=args.profile_s,
                connections=args.connections,
            )
            print(f"scale: node counts {args.node_counts}", flush=True)
            results.scale = await run_scale(bin_dir, work / "scale", options)
    finally:
        if keep:
            print(f"work files kept in {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    results.finished_at = time.time()
    results.load_average_end = [round(v, 2) for v in os.getloadavg()]
    return results


def write_outputs(results: Results, report_path: Path, docs_path: Path) -> dict[str, Any]:
    """Write the JSON report, the plots and the page; return the report."""
    report = build_report(results)
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_docs(report, docs_path)
    return report


def write_docs(report: dict[str, Any], docs_path: Path) -> None:
    """Draw the plots and write the page, keeping the page's analysis section."""
    plots = write_plots(report, docs_path.parent / "bench")
    analysis = markdown.kept_analysis(docs_path)
    docs_path.write_text(markdown.render(report, plots, analysis))


def main() -> int:
    args = build_parser().parse_args()
    if args.rewrite_docs:
        write_docs(json.loads(Path(args.report).read_text()), Path(args.docs))
        print(f"{args.docs} written again from {args.report}")
        return 0
    profile = _resolve(args)
    if os.geteuid() != 0 and {"crash", "weak-link"} & set(args.sections):
        print("the lab needs root: it creates network namespaces", file=sys.stderr)
        return 2
    results = asyncio.run(run(args, profile))
    report = write_outputs(results, Path(args.report), Path(args.docs))
    print(f"report written to {args.report} and {args.docs} ({profile} run)")
    for target in report["targets"]:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
        print(f"  {target['target']}: {verdict} ({target['figure']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
