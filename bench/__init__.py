"""``make bench``: speed, scale and cost of the isolator on the real control plane.

Run ``python -m bench --help`` for the sections and their flags. The run writes a JSON report and
docs/BENCHMARKS.md with its plots in docs/bench/.
"""
